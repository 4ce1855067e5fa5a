//! Synchronous standbys: with `synchronous_standby_names = 'pg1'` on the
//! primary, pgrelay reads pg1's sync_state (and pg2's async one) from
//! `pg_stat_replication`, shows them in /topology, SHOW NODES and the
//! metrics, and `[routing] prefer` sends reads to pg1 ("sync") or pg2
//! ("async"), switched by a reload. With `synchronous_commit =
//! remote_apply`, a write through :5432 then a read through :5433 with no
//! token never misses the write, while the async standby (replay paused)
//! would.

use std::time::{Duration, Instant};

use pgrelay::cluster::SyncState;
use pgrelay::config::Prefer;
use tokio_postgres::SimpleQueryMessage;

use crate::common::{self, config, psql, read_ports, read_set, wait_topology};
use crate::support::relay::{self, scalar};

const BOUND: Duration = Duration::from_secs(10);
/// Write-then-read rounds through pgrelay.
const ROUNDS: i64 = 500;

/// `ALTER SYSTEM SET name = value` on `node` (one statement per psql: it cannot run in a transaction).
fn alter_system(cluster: &pgrelay::localcluster::LocalCluster, name: &str, value: &str) {
    psql(cluster, cluster.primary(), &format!("alter system set {name} = '{value}'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_standby_is_identified_preferred_and_read_your_writes_under_remote_apply() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1, pg2) = (cluster.primary(), &cluster.replicas()[0], &cluster.replicas()[1]);
    psql(&cluster, pg0, "create table sync_t (id bigint primary key); grant all on sync_t to public");
    alter_system(&cluster, "synchronous_standby_names", "pg1");
    alter_system(&cluster, "synchronous_commit", "remote_apply");
    psql(&cluster, pg0, "select pg_reload_conf()");
    // pgrelay starts after the reload took effect, so every server connection it opens has it.
    common::wait_for("the primary applies remote_apply and names pg1 synchronous", BOUND, || {
        let setting = psql(&cluster, pg0, "show synchronous_commit");
        let states = "select string_agg(application_name || '=' || sync_state, ',' order by application_name) \
                      from pg_stat_replication";
        let sync = psql(&cluster, pg0, states);
        let ready = setting.trim() == "remote_apply" && sync.trim() == "pg1=sync,pg2=async";
        if !ready {
            println!("waiting: synchronous_commit = {setting:?}, pg_stat_replication: {sync:?}");
        }
        ready.then_some(())
    })
    .await;

    let mut config = config(&cluster, "prefer = \"sync\"", "");
    config.admin.admin_users = vec!["app".into()];
    let app = relay::start(config).await;
    let ctx = app.context().clone();
    wait_topology(&app, "pg1 sync, pg2 async, both serving reads", BOUND, |t| {
        t.primary == Some(0)
            && read_set(t) == ["pg1", "pg2"]
            && t.nodes[1].sync_state == SyncState::Sync
            && t.nodes[2].sync_state == SyncState::Async
    })
    .await;

    let (status, body) = relay::http_get(app.http_addr, "/topology").await;
    assert_eq!(status, 200);
    let topology: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(topology["synchronous_standby_names"], "pg1", "{body}");
    let states: Vec<&serde_json::Value> = (0..3).map(|i| &topology["nodes"][i]["sync_state"]).collect();
    assert_eq!(states, [&serde_json::Value::Null, &"sync".into(), &"async".into()], "{body}");
    assert_eq!(topology["last_failover"], serde_json::Value::Null, "no failover yet: {body}");
    // Each replica's positions as the primary's pg_stat_replication reports them, in order.
    let lsn = |v: &serde_json::Value| pgrelay::router::parse_lsn(v.as_str().unwrap_or("")).expect("an X/Y position");
    for i in 1..3 {
        let on_primary = &topology["nodes"][i]["on_primary"];
        let (write, flush, replay) =
            (lsn(&on_primary["write_lsn"]), lsn(&on_primary["flush_lsn"]), lsn(&on_primary["replay_lsn"]));
        assert!(replay <= flush && flush <= write, "{body}");
        assert!(replay > 0 && lsn(&topology["nodes"][i]["wal_lsn"]) > 0, "{body}");
    }
    assert_eq!(topology["nodes"][0]["on_primary"], serde_json::Value::Null, "the primary streams from nobody");

    let console_url = crate::support::connect_string(app.rw_addr.port(), "app", "app", "pgrelay");
    let console = relay::connect_with(&console_url).await.expect("admin console login").client;
    let rows = console.simple_query("SHOW NODES").await.expect("SHOW NODES");
    let nodes: Vec<(String, Option<String>)> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                let replica = row.get("name") != Some("pg0");
                assert_eq!(row.get("replay_lsn").is_some(), replica, "replay_lsn on the primary of replicas only");
                assert!(row.get("wal_lsn").is_some(), "every node's own position");
                Some((row.get("name").unwrap_or("").to_owned(), row.get("sync_state").map(str::to_owned)))
            }
            _ => None,
        })
        .collect();
    let want = [("pg0", None), ("pg1", Some("sync")), ("pg2", Some("async"))];
    let want: Vec<(String, Option<String>)> = want.iter().map(|(n, s)| (n.to_string(), s.map(str::to_owned))).collect();
    assert_eq!(nodes, want);
    for (node, code) in [("pg0", 0.0), ("pg1", 4.0), ("pg2", 1.0)] {
        let series = format!("pgrelay_node_sync_state{{node=\"{node}\"}}");
        assert_eq!(relay::metric(app.http_addr, &series).await, Some(code), "{series}");
    }

    // prefer = "sync": every read on pg1; a reload to "async": every read on pg2.
    let seen = read_ports(app.ro_addr, 12).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg1.port], "prefer = sync: {seen:?}");
    let reload = |prefer: Prefer| {
        let mut new = pgrelay::config::Config::clone(&ctx.config());
        new.routing.prefer = prefer;
        ctx.apply_config(new).expect("reload");
    };
    reload(Prefer::Async);
    wait_topology(&app, "the new monitors know the sync states again", BOUND, |t| {
        read_set(t) == ["pg1", "pg2"] && t.nodes[1].sync_state == SyncState::Sync
    })
    .await;
    let seen = read_ports(app.ro_addr, 12).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg2.port], "prefer = async: {seen:?}");
    reload(Prefer::Sync);
    wait_topology(&app, "sync states after the second reload", BOUND, |t| {
        read_set(t) == ["pg1", "pg2"] && t.nodes[1].sync_state == SyncState::Sync
    })
    .await;

    // pg2 stops replaying: it still serves reads under prefer = "any", and would miss writes.
    psql(&cluster, pg2, "select pg_wal_replay_pause()");
    let writer = relay::connect(app.rw_addr).await;
    let reader = relay::connect(app.ro_addr).await;
    let started = Instant::now();
    let (mut misses, mut elsewhere) = (Vec::new(), 0);
    for id in 0..ROUNDS {
        writer.execute("insert into sync_t (id) values ($1)", &[&id]).await.expect("insert through :5432");
        let row = reader
            .query_one("select exists (select 1 from sync_t where id = $1), inet_server_port()", &[&id])
            .await
            .expect("read through :5433");
        let (seen, port): (bool, i32) = (row.get(0), row.get(1));
        if !seen {
            misses.push(id);
        }
        elsewhere += usize::from(port != i32::from(pg1.port));
    }
    let took = started.elapsed();
    let on_pg2: i64 = psql(&cluster, pg2, "select count(*) from sync_t").trim().parse().expect("a count");
    psql(&cluster, pg2, "select pg_wal_replay_resume()");
    println!(
        "remote_apply: {ROUNDS} write-then-read rounds in {took:?}, {} missed, {elsewhere} read elsewhere than pg1; \
         the paused async standby had {on_pg2} of the rows",
        misses.len()
    );
    assert_eq!(elsewhere, 0, "prefer = sync sends every read to pg1");
    assert!(misses.is_empty(), "reads that missed the write just acknowledged: {misses:?}");
    assert!(on_pg2 < ROUNDS, "the async standby, paused, missed writes: a read there would have been stale");
    assert_eq!(scalar(&writer, "select count(*) from sync_t").await, ROUNDS.to_string());
    app.shutdown(Duration::from_secs(5)).await;
}
