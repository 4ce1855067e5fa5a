//! Unplanned failover under load: the primary is killed (`pg_ctl -m
//! immediate`), a replica is promoted, and writes through :5432 reach the
//! new primary within 2 × check_interval (plus slack) of the promotion.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrelay::localcluster::StopMode;

use crate::common::{self, blocking, config, psql, read_set, wait_topology, Load, CHECK_INTERVAL};
use crate::support::relay::{self, scalar};

const WRITERS: usize = 4;
/// Slack on top of 2 × check_interval for a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// One writer: autocommit inserts in a loop, reconnecting after a lost connection.
async fn writer(addr: SocketAddr, load: Arc<Load>) {
    let mut client = None;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(live) = client.as_ref() else {
            match relay::connect_as(addr, "app", "app").await {
                Ok(conn) => client = Some(conn.client),
                Err(e) => {
                    load.failed_logins.fetch_add(1, Ordering::Relaxed);
                    load.errors.lock().expect("errors").insert(format!("login: {}", relay::message(&e)));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            continue;
        };
        if !load.insert_next(live, "failover_t").await {
            client = None;
        }
    }
}

/// A reader on :5433, to show reads carry on through the failover.
async fn reader(addr: SocketAddr, load: Arc<Load>) -> (usize, usize) {
    let (mut ok, mut failed) = (0, 0);
    let mut client = None;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(live) = client.as_ref() else {
            client = relay::connect_as(addr, "app", "app").await.ok().map(|c| c.client);
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        match live.simple_query("select count(*) from failover_t").await {
            Ok(_) => ok += 1,
            Err(_) => {
                failed += 1;
                if live.is_closed() {
                    client = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplanned_failover_under_load() {
    let _serial = common::serial().await;
    // The fixture turns synchronous_commit off for speed; an acknowledged
    // commit is then not even flushed, which would overstate what a crash loses.
    let cluster = common::start_cluster_with(&["synchronous_commit = on"]);
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    psql(&cluster, pg0, "create table failover_t (id bigint primary key); grant all on failover_t to public");
    // Clients wait for the new primary rather than fail while none is known.
    let app = relay::start(config(&cluster, "", "query_wait_timeout = \"10s\"")).await;
    wait_topology(&app, "primary and both replicas", Duration::from_secs(5), |t| {
        t.primary == Some(0) && read_set(t) == ["pg1", "pg2"]
    })
    .await;
    let idle = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&idle, "select inet_server_port()").await, pg0.port.to_string());
    let changes = "pgrelay_primary_changes_total";
    assert_eq!(relay::metric(app.http_addr, changes).await, Some(0.0), "no change before the failover");
    let periods = "pgrelay_primary_unavailable_seconds_count";
    assert_eq!(relay::metric(app.http_addr, periods).await, Some(0.0), "no period before the failover");

    let load = Arc::new(Load::default());
    let writers: Vec<_> = (0..WRITERS).map(|_| tokio::spawn(writer(app.rw_addr, load.clone()))).collect();
    let reads = tokio::spawn(reader(app.ro_addr, load.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let kill_started = Instant::now();
    blocking(|| cluster.stop(pg0, StopMode::Immediate)).expect("kill the primary");
    let killed = Instant::now();
    let promote_started = Instant::now();
    let view = app.context().cluster.clone();
    let seen = tokio::spawn(async move {
        common::wait_for("pgrelay sees pg1 as the primary", Duration::from_secs(10), || {
            (view.load().primary == Some(1)).then(Instant::now)
        })
        .await
        .0
    });
    blocking(|| cluster.promote(pg1)).expect("promote pg1");
    // pg_ctl promote -w returns once pg1 accepts writes: the promotion's moment.
    let promoted = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop.store(true, Ordering::Relaxed);
    for task in writers {
        common::bounded("writer stops", Duration::from_secs(15), task).await.expect("writer task");
    }
    let (reads_ok, reads_failed) =
        common::bounded("reader stops", Duration::from_secs(15), reads).await.expect("reader");

    let seen = common::bounded("topology watcher", Duration::from_secs(15), seen).await.expect("watcher");
    let acked = load.acked.lock().expect("acked").clone();
    let after: Vec<&(i64, Instant, u16)> = acked.iter().filter(|(_, _, port)| *port == pg1.port).collect();
    let first = after.iter().map(|(_, at, _)| *at).min().expect("a write succeeded on the new primary");
    let to_first_write = first.saturating_duration_since(promoted);
    let late_on_pg0 = acked.iter().filter(|(_, at, port)| *at > promoted && *port != pg1.port).count();
    assert_eq!(late_on_pg0, 0, "no write may be acknowledged elsewhere after the promotion");

    let on_pg1: BTreeSet<i64> =
        psql(&cluster, pg1, "select id from failover_t").lines().map(|l| l.parse().expect("an id")).collect();
    let lost_after: Vec<i64> = after.iter().map(|(id, _, _)| *id).filter(|id| !on_pg1.contains(id)).collect();
    let before = acked.len() - after.len();
    let lost_before = acked.iter().filter(|(id, _, port)| *port != pg1.port && !on_pg1.contains(id)).count();
    println!(
        "unplanned failover: pg_ctl promote took {:?}; promotion -> pgrelay routes to pg1: {:?}; promotion -> \
         first successful write through pgrelay: {to_first_write:?} (bound {:?}); failed client transactions: {}; failed logins: {}; acknowledged writes: {} by the old \
         primary ({} of them lost with it: async replication), {} by the new one (none may be lost); \
         reads through :5433: {reads_ok} ok, {reads_failed} failed; errors seen: {:?}",
        promoted - promote_started,
        seen.saturating_duration_since(promoted),
        CHECK_INTERVAL * 2 + SLACK,
        load.failed.load(Ordering::Relaxed),
        load.failed_logins.load(Ordering::Relaxed),
        before,
        lost_before,
        after.len(),
        load.errors.lock().expect("errors"),
    );
    assert!(lost_after.is_empty(), "acknowledged after the promotion but missing on pg1: {lost_after:?}");
    assert!(to_first_write <= CHECK_INTERVAL * 2 + SLACK, "first write after {to_first_write:?}");

    // The idle client kept its pgrelay connection; its next transaction reaches the new primary.
    assert_eq!(scalar(&idle, "select inet_server_port()").await, pg1.port.to_string());
    let topology = app.context().cluster.load();
    assert_eq!(topology.primary, Some(1), "{topology:?}");
    assert_eq!(relay::metric(app.http_addr, changes).await, Some(1.0), "pg0 -> pg1 is one change");
    // pg0's last check as primary came before it died (at most a check
    // interval and a check_timeout before the kill began); the first write
    // pg1 accepted, after its promotion began and by the first one a writer saw.
    let at_least = promote_started - killed;
    let at_most = first - kill_started + CHECK_INTERVAL + Duration::from_secs(1);
    let unavailable = common::assert_one_failover(&app, ("pg0", "pg1"), "unplanned", at_least, at_most).await;
    println!(
        "pgrelay_primary_unavailable_seconds: {unavailable:.3} s (the test saw {:?} from the kill to the first \
         acknowledged write on pg1)",
        first - kill_started
    );
    app.shutdown(Duration::from_secs(5)).await;
}
