//! `min_pool_size` follows the primary: connections the pool keeps open
//! without any client reappear on the new primary right after a
//! switchover, before any client comes back.

use std::time::Duration;

use pgrelay::localcluster::{LocalCluster, NodeHandle, StopMode};

use crate::common::{self, blocking, config, psql, wait_topology};
use crate::support::relay::{self, scalar};

/// pgrelay's server connections for user `app` on `node`.
fn app_connections(cluster: &LocalCluster, node: &NodeHandle) -> usize {
    let sql = "select count(*) from pg_stat_activity where usename = 'app' and backend_type = 'client backend'";
    psql(cluster, node, sql).trim().parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_connections_reappear_on_the_new_primary() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    let app = relay::start(config(&cluster, "", "min_pool_size = 2")).await;
    wait_topology(&app, "pg0 is the primary", Duration::from_secs(5), |t| t.primary == Some(0)).await;
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&client, "select 1").await, "1");
    drop(client);
    let (count, _) = common::wait_for("min_pool_size connections on pg0", Duration::from_secs(10), || {
        let count = app_connections(&cluster, pg0);
        (count == 2).then_some(count)
    })
    .await;
    assert_eq!(count, 2);
    assert!(app.context().clients.is_empty(), "no client is connected");

    blocking(|| cluster.stop(pg0, StopMode::Fast)).expect("stop the old primary cleanly");
    blocking(|| cluster.promote(pg1)).expect("promote pg1");
    wait_topology(&app, "pgrelay sees pg1 as the primary", Duration::from_secs(10), |t| t.primary == Some(1)).await;
    let (_, took) = common::wait_for("min_pool_size connections on pg1", Duration::from_secs(10), || {
        (app_connections(&cluster, pg1) == 2).then_some(())
    })
    .await;
    println!("min_pool_size: 2 connections open on the new primary {took:?} after pgrelay saw it");
    assert!(app.context().clients.is_empty(), "still no client");
    // Stable: the janitor opens no more than min_pool_size.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app_connections(&cluster, pg1), 2);
    app.shutdown(Duration::from_secs(5)).await;
}
