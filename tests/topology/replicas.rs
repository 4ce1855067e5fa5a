//! A replica that stops leaves the read set and, once restarted, comes
//! back on its own: no reload. Then, with the primary gone and nobody
//! promoted, writes wait query_wait_timeout and fail saying why.

use std::time::Duration;

use pgrelay::localcluster::StopMode;

use crate::common::{self, blocking, config, read_ports, read_set, wait_topology};
use crate::support::relay::{self, message, sqlstate};

const BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_leaves_and_rejoins_the_read_set() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg1, pg2) = (&cluster.replicas()[0], &cluster.replicas()[1]);
    let app = relay::start(config(&cluster, "", "query_wait_timeout = \"1s\"")).await;
    wait_topology(&app, "both replicas in", BOUND, |t| read_set(t) == ["pg1", "pg2"]).await;

    blocking(|| cluster.stop(pg2, StopMode::Fast)).expect("stop pg2");
    let took = wait_topology(&app, "pg2 leaves", BOUND, |t| read_set(t) == ["pg1"]).await;
    println!("stopped replica left the read set after {took:?}");
    let why = app.context().cluster.load().nodes[2].excluded.clone().unwrap_or_default();
    assert!(why.starts_with("unreachable ("), "{why}");
    let seen = read_ports(app.ro_addr, 6).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg1.port], "{seen:?}");

    blocking(|| cluster.start_node(pg2)).expect("restart pg2");
    let took = wait_topology(&app, "pg2 rejoins", BOUND, |t| read_set(t) == ["pg1", "pg2"]).await;
    println!("restarted replica rejoined the read set after {took:?}");
    let seen = read_ports(app.ro_addr, 10).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), common::ports(&[pg1, pg2]), "{seen:?}");

    let writer = relay::connect(app.rw_addr).await;
    blocking(|| cluster.stop(cluster.primary(), StopMode::Immediate)).expect("kill the primary");
    wait_topology(&app, "no primary", BOUND, |t| t.primary.is_none()).await;
    let started = std::time::Instant::now();
    let error = writer.simple_query("select 1").await.expect_err("no primary to write to");
    let waited = started.elapsed();
    let text = message(&error);
    assert_eq!(sqlstate(&error), "08006", "{text}");
    assert!(text.starts_with("no primary available: pg0 unreachable ("), "{text}");
    assert!(text.contains("pg1 in recovery, pg2 in recovery"), "{text}");
    assert!(waited >= Duration::from_millis(900), "waited query_wait_timeout first: {waited:?}");
    println!("without a primary, a write waited {waited:?}, then: {text}");
    // Reads carry on from the replicas.
    let seen = read_ports(app.ro_addr, 4).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), common::ports(&[pg1, pg2]), "{seen:?}");
    app.shutdown(Duration::from_secs(5)).await;
}
