//! A server that refuses new connections for a moment (restarting, or a
//! demoted leader shutting down) costs a client nothing but time: nothing
//! ran, so pgrelay routes again until query_wait_timeout instead of failing.

use std::time::{Duration, Instant};

use pgrelay::localcluster::StopMode;

use crate::common::{self, blocking};
use crate::support::relay::{self, scalar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_waits_for_a_restarting_primary() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let pool = "query_wait_timeout = \"20s\"\nserver_connect_timeout = \"1s\"";
    let toml = relay::config_toml(&cluster, pool, "");
    let app = relay::start(pgrelay::config::Config::parse(&toml).expect("valid config")).await;
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&client, "select 1").await, "1");

    let primary = cluster.primary().clone();
    blocking(|| cluster.stop(&primary, StopMode::Fast)).expect("stop the primary");
    let started = Instant::now();
    let query = tokio::spawn(async move { client.simple_query("select 'after restart'").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!query.is_finished(), "the transaction waits for a server instead of failing");
    blocking(|| cluster.start_node(&primary)).expect("restart the primary");
    let result = tokio::time::timeout(Duration::from_secs(20), query).await.expect("bounded").expect("no panic");
    assert!(result.is_ok(), "the waiting transaction ran once the server was back: {result:?}");
    println!("the transaction waited {:?} for the restarted primary", started.elapsed());
    app.shutdown(Duration::from_secs(5)).await;
}
