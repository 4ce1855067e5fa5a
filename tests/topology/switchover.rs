//! A planned switchover under a steady write load, as an operator runs it:
//! PAUSE on the admin console, a clean stop of the primary, promotion of a
//! replica, RESUME once pgrelay follows it. The clients see no error at
//! all: their held transactions run on the new primary, and every write
//! they saw acknowledged is there.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrelay::app::ClientState;
use pgrelay::localcluster::StopMode;

use crate::common::{self, blocking, bounded, config, psql, read_set, wait_topology, Load};
use crate::support::relay;

const WRITERS: usize = 4;
/// Inserts per writer at most, whatever the phases take.
const MAX_WRITES: usize = 50_000;
/// How long a writer runs at most.
const MAX_LOAD_TIME: Duration = Duration::from_secs(60);

/// One writer: autocommit inserts of unique ids through one connection.
async fn writer(addr: SocketAddr, load: Arc<Load>) {
    let client = match relay::connect_as(addr, "app", "app").await {
        Ok(conn) => conn.client,
        Err(e) => {
            load.failed_logins.fetch_add(1, Ordering::Relaxed);
            load.errors.lock().expect("errors").insert(format!("login: {}", relay::message(&e)));
            return;
        }
    };
    let started = Instant::now();
    for _ in 0..MAX_WRITES {
        if load.stop.load(Ordering::Relaxed) || started.elapsed() > MAX_LOAD_TIME {
            return;
        }
        if !load.insert_next(&client, "switchover_t").await {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchover_without_client_errors() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    psql(&cluster, pg0, "create table switchover_t (id bigint primary key); grant all on switchover_t to public");
    let mut config = config(&cluster, "", "query_wait_timeout = \"10s\"");
    config.admin.admin_users = vec!["app".into()];
    let app = relay::start(config).await;
    let ctx = app.context().clone();
    let console_url = crate::support::connect_string(app.rw_addr.port(), "app", "app", "pgrelay");
    let console = relay::connect_with(&console_url).await.expect("admin console login").client;
    let command = |sql: &'static str| {
        let console = &console;
        async move { console.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) }
    };
    wait_topology(&app, "primary and both replicas", Duration::from_secs(5), |t| {
        t.primary == Some(0) && read_set(t) == ["pg1", "pg2"]
    })
    .await;

    let load = Arc::new(Load::default());
    let writers: Vec<_> = (0..WRITERS).map(|_| tokio::spawn(writer(app.rw_addr, load.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_pause = load.acked.lock().expect("acked").len();
    assert!(before_pause > 0, "the load runs before the switchover");

    let pause_started = Instant::now();
    bounded("PAUSE waits for the transactions in flight", Duration::from_secs(5), command("PAUSE")).await;
    assert!(ctx.lifecycle.is_paused());
    let paused = Instant::now();
    blocking(|| cluster.stop(pg0, StopMode::Fast)).expect("stop the old primary cleanly");
    let stopped = Instant::now();
    // A client arriving mid-switchover logs in, and its first transaction is held too.
    let mut writers = writers;
    writers.push(tokio::spawn(writer(app.rw_addr, load.clone())));
    blocking(|| cluster.promote(pg1)).expect("promote pg1");
    wait_topology(&app, "pgrelay sees pg1 as the primary", Duration::from_secs(10), |t| t.primary == Some(1)).await;
    let waiting = || ctx.clients.snapshot().iter().filter(|c| c.activity().state == ClientState::Waiting).count();
    let (held, _) = common::wait_for("every writer is held", Duration::from_secs(10), || {
        let held = waiting();
        (held == WRITERS + 1).then_some(held)
    })
    .await;
    let acked_while_paused = load.acked.lock().expect("acked").iter().filter(|(_, at, _)| *at > paused).count();
    let resume_sent = Instant::now();
    command("RESUME").await;
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop.store(true, Ordering::Relaxed);
    for task in writers {
        bounded("a writer stops", Duration::from_secs(15), task).await.expect("writer task");
    }

    let acked = load.acked.lock().expect("acked").clone();
    let after_resume: Vec<_> = acked.iter().filter(|(_, at, _)| *at > resumed).collect();
    let elsewhere = after_resume.iter().filter(|(_, _, port)| *port != pg1.port).count();
    let early_not_pg0 = acked.iter().filter(|(_, at, port)| *at < pause_started && *port != pg0.port).count();
    let on_pg1: BTreeSet<i64> =
        psql(&cluster, pg1, "select id from switchover_t").lines().map(|l| l.parse().expect("an id")).collect();
    let missing: Vec<i64> = acked.iter().map(|(id, _, _)| *id).filter(|id| !on_pg1.contains(id)).collect();
    let (attempted, failed) = (load.attempted.load(Ordering::Relaxed), load.failed.load(Ordering::Relaxed));
    let failed_logins = load.failed_logins.load(Ordering::Relaxed);
    println!(
        "planned switchover: {attempted} transactions attempted, {failed} failed, {failed_logins} failed logins, {} \
         acknowledged ({} after RESUME), {} verified on the new primary; pause-to-resume {:?} (PAUSE itself {:?}); \
         {held} clients held; errors seen: {:?}",
        acked.len(),
        after_resume.len(),
        acked.len() - missing.len(),
        resumed - pause_started,
        paused - pause_started,
        load.errors.lock().expect("errors"),
    );
    assert_eq!((failed, failed_logins), (0, 0), "errors: {:?}", load.errors.lock().expect("errors"));
    assert_eq!(held, WRITERS + 1, "every writer's next transaction was held by PAUSE");
    // An answer already on its way when PAUSE returned may land a moment later; nothing after that.
    assert!(acked_while_paused <= WRITERS, "{acked_while_paused} writes acknowledged while paused");
    assert!(after_resume.len() >= WRITERS, "the held transactions and more completed after RESUME");
    assert_eq!(early_not_pg0, 0, "before PAUSE, pg0 acknowledged every write");
    assert_eq!(elsewhere, 0, "every write after RESUME is acknowledged by pg1");
    assert!(missing.is_empty(), "acknowledged but missing on pg1: {missing:?}");
    assert_eq!(attempted, acked.len(), "every attempted transaction was acknowledged");
    assert_eq!(ctx.cluster.load().primary, Some(1));
    let changes = relay::metric(app.http_addr, "pgrelay_primary_changes_total").await;
    assert_eq!(changes, Some(1.0), "the switchover is one change of primary");
    // Writes were unavailable from pg0's last check (before its stop
    // returned, at most a check interval and a check_timeout before PAUSE
    // began) to the first write after RESUME, by the first one a writer saw.
    // pg0 stopped before pg1 was promoted: to pgrelay, a primary that
    // stopped answering, so the kind is "unplanned".
    let first_on_pg1 = after_resume.iter().map(|(_, at, _)| *at).min().expect("a write after RESUME");
    let at_least = resume_sent - stopped;
    let at_most = first_on_pg1 - pause_started + common::CHECK_INTERVAL + Duration::from_secs(1);
    let unavailable = common::assert_one_failover(&app, ("pg0", "pg1"), "unplanned", at_least, at_most).await;
    println!("pgrelay_primary_unavailable_seconds: {unavailable:.3} s (pause to resume {:?})", resumed - pause_started);
    app.shutdown(Duration::from_secs(5)).await;
}
