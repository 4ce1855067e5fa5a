//! `source = "patroni"` against the real cluster, with a stand-in for
//! Patroni's REST API (no Patroni here): the leader key decides the
//! primary, `noloadbalance` keeps a replica out of reads, and a leader
//! change is followed once the new leader is out of recovery, even though
//! the old primary still runs (the leader key is not a split brain).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgrelay::config::Config;
use pgrelay::localcluster::LocalCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{self, blocking, psql, read_ports, read_set, wait_topology};
use crate::support::relay::{self, scalar, Raw};

const BOUND: Duration = Duration::from_secs(5);

/// A `/cluster` body naming `leader`, with pg2 tagged noloadbalance.
fn cluster_body(cluster: &LocalCluster, leader: &str) -> String {
    let members: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| {
            let role = if n.name == leader { "leader" } else { "replica" };
            let tags = if n.name == "pg2" { r#", "tags": {"noloadbalance": true}"# } else { "" };
            format!(r#"{{"name": "{}", "role": "{role}", "host": "127.0.0.1", "port": {}{tags}}}"#, n.name, n.port)
        })
        .collect();
    format!(r#"{{"members": [{}], "scope": "test"}}"#, members.join(", "))
}

/// Serves `GET /cluster` with whatever `body` holds, HTTP/1.0 style as Patroni does.
async fn fake_patroni(body: Arc<Mutex<String>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0; 2048];
            let _ = socket.read(&mut request).await;
            let body = body.lock().expect("body").clone();
            let head =
                format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = socket.write_all(format!("{head}{body}").as_bytes()).await;
        }
    });
    port
}

fn patroni_config(cluster: &LocalCluster, api_port: u16) -> Config {
    let mut config = common::config(cluster, "", "query_wait_timeout = \"10s\"");
    config.cluster.source = pgrelay::config::Source::Patroni;
    for node in &mut config.nodes {
        node.patroni = Some(format!("http://127.0.0.1:{api_port}"));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_patroni_leader() {
    let _serial = common::serial().await;
    let cluster = common::start_cluster();
    let (pg0, pg1) = (cluster.primary(), &cluster.replicas()[0]);
    psql(&cluster, pg0, "create table patroni_t (a int); grant all on patroni_t to public");
    let body = Arc::new(Mutex::new(cluster_body(&cluster, "pg0")));
    let api_port = fake_patroni(body.clone()).await;
    let app = relay::start(patroni_config(&cluster, api_port)).await;
    wait_topology(&app, "pg0 leads, pg2 not balanced", BOUND, |t| t.primary == Some(0) && read_set(t) == ["pg1"]).await;
    let excluded = app.context().cluster.load().nodes[2].excluded.clone();
    assert_eq!(excluded.as_deref(), Some("Patroni tag noloadbalance"));
    let seen = read_ports(app.ro_addr, 4).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), [pg1.port], "{seen:?}");

    let (mut in_transaction, _) = Raw::login(app.rw_addr, &[]).await;
    let mut query = BytesMut::new();
    pgrelay::wire::put_query(&mut query, "begin; insert into patroni_t values (1)");
    in_transaction.send(&query).await;
    in_transaction.until_ready().await;

    // An idle client, connected while there is a primary (a login does not wait for one).
    let writer = relay::connect(app.rw_addr).await;

    // Patroni moves the leader key to pg1 before pg1 is promoted: writes wait.
    let leader_moved = Instant::now();
    *body.lock().expect("body") = cluster_body(&cluster, "pg1");
    wait_topology(&app, "leader pg1 not yet promoted", BOUND, |t| {
        t.primary.is_none() && t.no_primary_reason.as_deref() == Some("pg1 is the Patroni leader but still in recovery")
    })
    .await;
    let leader_move_seen = Instant::now();
    let write = tokio::spawn(async move {
        let port = scalar(&writer, "insert into patroni_t values (2) returning inet_server_port()").await;
        (port, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write waits for the new leader");
    let promote_started = Instant::now();
    blocking(|| cluster.promote(pg1)).expect("promote pg1 (pg0 still runs)");
    let promoted = Instant::now();
    let (port, done) = common::bounded("waiting write", BOUND, write).await.expect("writer task");
    assert_eq!(port, pg1.port.to_string());
    println!(
        "patroni leader change: pg_ctl promote ran {:?}; the waiting write finished {:?} after it started \
         ({:?} after it returned)",
        promoted - promote_started,
        done.saturating_duration_since(promote_started),
        done.saturating_duration_since(promoted)
    );
    let topology = app.context().cluster.load();
    assert!(!topology.split_brain && topology.primary == Some(1), "{topology:?}");
    // pg0 still ran when the leader key moved: a switchover, unavailable
    // from pg0's last check as primary (before pgrelay showed the move; at
    // most a check interval and a check_timeout before the key moved) to
    // the waiting write pg1 accepted (after its promotion began).
    let at_least = promote_started - leader_move_seen;
    let at_most = done - leader_moved + common::CHECK_INTERVAL + Duration::from_secs(1);
    let unavailable = common::assert_one_failover(&app, ("pg0", "pg1"), "switchover", at_least, at_most).await;
    println!("pgrelay_primary_unavailable_seconds: {unavailable:.3} s");

    // The transaction left open on pg0 is ended.
    common::lost_block_is_reported(&cluster, pg0, &mut in_transaction, "no longer the primary").await;
    app.shutdown(Duration::from_secs(5)).await;
}
