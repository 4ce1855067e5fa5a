//! Lag: a replica whose replay is paused leaves the read set once it is
//! over max_replica_lag_bytes, and comes back after replay resumes; with
//! both replicas out, :5433 follows ro_fallback.

use std::time::Duration;

use crate::common::{self, config, psql, read_ports, read_set, wait_topology, CHECK_INTERVAL};
use crate::support::relay::{self, message, sqlstate};

/// Within a few checks: the hysteresis (2) plus slack for a loaded machine.
const FEW_CHECKS: Duration = Duration::from_secs(5);

/// Writes about 20 MB of WAL on the primary.
fn write_wal(cluster: &pgrelay::localcluster::LocalCluster, table: &str) {
    let sql = format!(
        "create table {table} (a text); insert into {table} select repeat('x', 1000) from generate_series(1, 20000)"
    );
    psql(cluster, cluster.primary(), &sql);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replicas_leave_the_read_set_and_come_back() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1, pg2) = (cluster.primary(), &cluster.replicas()[0], &cluster.replicas()[1]);
    let routing = "max_replica_lag_bytes = \"1MB\"\nmax_replica_lag = \"1h\"\nro_fallback = \"primary\"";
    let app = relay::start(config(&cluster, routing, "")).await;
    // The same cluster behind a second pgrelay that answers with an error instead.
    let strict_routing = routing.replace("ro_fallback = \"primary\"", "ro_fallback = \"error\"");
    let strict = relay::start(config(&cluster, &strict_routing, "")).await;
    for relay in [&app, &strict] {
        wait_topology(relay, "both replicas in the read set", FEW_CHECKS, |t| read_set(t) == ["pg1", "pg2"]).await;
    }
    let seen = read_ports(app.ro_addr, 10).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), common::ports(&[pg1, pg2]), "{seen:?}");
    let strict_client = relay::connect(strict.ro_addr).await;

    psql(&cluster, pg1, "select pg_wal_replay_pause()");
    write_wal(&cluster, "lag_one");
    let took = wait_topology(&app, "pg1 leaves the read set", FEW_CHECKS, |t| read_set(t) == ["pg2"]).await;
    println!("paused replica left the read set {took:?} after the write (check_interval {CHECK_INTERVAL:?})");
    let topology = app.context().cluster.load();
    let why = topology.nodes[1].excluded.clone().unwrap_or_default();
    assert!(why.starts_with("lag ") && why.contains("max_replica_lag_bytes"), "{why}");
    let seen = read_ports(app.ro_addr, 6).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg2.port], "reads avoid the lagging replica: {seen:?}");

    // Both paused: no replica qualifies.
    psql(&cluster, pg2, "select pg_wal_replay_pause()");
    write_wal(&cluster, "lag_two");
    for relay in [&app, &strict] {
        wait_topology(relay, "read set empties", FEW_CHECKS, |t| t.read_set.is_empty()).await;
    }
    let seen = read_ports(app.ro_addr, 4).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg0.port], "ro_fallback = primary: {seen:?}");

    let error = strict_client.simple_query("select 1").await.expect_err("ro_fallback = error");
    let text = message(&error);
    assert_eq!(sqlstate(&error), "08006", "{text}");
    for part in ["no replica available for reads", "pg1: lag ", "pg2: lag ", "ro_fallback = \"error\""] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    println!("ro_fallback = error answers: {text}");
    // A new client still logs in (the servers' parameters are known); its
    // first read gets the same explanation.
    let late = relay::connect_as(strict.ro_addr, "app", "app").await.expect("login needs no replica").client;
    let error = late.simple_query("select 1").await.expect_err("no replica for the new client either");
    assert!(message(&error).contains("pg2: lag "), "{}", message(&error));

    psql(&cluster, pg1, "select pg_wal_replay_resume()");
    psql(&cluster, pg2, "select pg_wal_replay_resume()");
    let took = wait_topology(&app, "both replicas back", FEW_CHECKS * 2, |t| read_set(t) == ["pg1", "pg2"]).await;
    println!("resumed replicas rejoined the read set after {took:?}");
    let seen = read_ports(app.ro_addr, 10).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), common::ports(&[pg1, pg2]), "{seen:?}");
    tokio::join!(app.shutdown(Duration::from_secs(5)), strict.shutdown(Duration::from_secs(5)));
}
