//! What the topology tests share: a private cluster per test, a pgrelay
//! config with `source = "postgres"`, bounded waits on the topology, and
//! reading which server answered.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgrelay::cluster::Topology;
use pgrelay::config::Config;
use pgrelay::localcluster::{LocalCluster, LocalClusterOptions, NodeHandle};
use pgrelay::RunningApp;
use tokio::sync::{Mutex, MutexGuard};

use crate::support::relay::{self, scalar, LISTEN_ANY};

/// The monitors' check interval in these tests.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Held for the whole of a test: only one cluster runs at a time.
pub async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A fresh primary (pg0) + replicas (pg1, pg2), removed when dropped.
pub fn start_cluster() -> LocalCluster {
    start_cluster_with(&[])
}

/// Same, with extra postgresql.conf lines.
pub fn start_cluster_with(conf: &[&str]) -> LocalCluster {
    let extra_conf = conf.iter().map(|line| line.to_string()).collect();
    let options = LocalClusterOptions { extra_conf, ..LocalClusterOptions::default() };
    blocking(|| LocalCluster::start(options).expect("test cluster starts"))
}

/// Runs blocking work (pg_ctl, psql) without stalling the runtime's other tasks.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// `psql` as the superuser in database `app`; panics with the error.
pub fn psql(cluster: &LocalCluster, node: &NodeHandle, sql: &str) -> String {
    blocking(|| cluster.psql_db(node, "app", sql)).unwrap_or_else(|e| panic!("{sql} on {}: {e}", node.name))
}

/// A config following `cluster` with `source = "postgres"`; `routing` and
/// `pool` are extra lines for those sections.
pub fn config(cluster: &LocalCluster, routing: &str, pool: &str) -> Config {
    let nodes: String = cluster
        .nodes()
        .iter()
        .map(|n| format!("[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n\n", n.name, n.port))
        .collect();
    let text = format!(
        r#"
{LISTEN_ANY}
[pool]
default_pool_size = 4
client_login_timeout = "2s"
{pool}

[routing]
{routing}

[cluster]
source = "postgres"
check_interval = "{}ms"
check_timeout = "1s"
user = "postgres"

{nodes}
[[users]]
name = "app"
password = "app"

[[users]]
name = "app_trust"
auth_type = "trust"

[[databases]]
name = "app"
"#,
        CHECK_INTERVAL.as_millis()
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// Polls `probe` every 20 ms until it returns Some, for at most `limit`;
/// returns the value and how long it took.
pub async fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until pgrelay's topology satisfies `test`.
pub async fn wait_topology(
    app: &RunningApp,
    what: &str,
    limit: Duration,
    test: impl Fn(&Topology) -> bool,
) -> Duration {
    let cluster = app.context().cluster.clone();
    let ((), took) = wait_for(what, limit, || {
        let topology = cluster.load();
        test(&topology).then_some(())
    })
    .await;
    took
}

/// Names of the nodes in the read set.
pub fn read_set(topology: &Topology) -> Vec<&str> {
    topology.read_set.iter().map(|&i| topology.nodes[i].name.as_str()).collect()
}

/// How many of `n` one-statement transactions through `addr` each server port answered.
pub async fn read_ports(addr: SocketAddr, n: usize) -> BTreeMap<u16, usize> {
    let client = relay::connect(addr).await;
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let port: u16 = scalar(&client, "select inet_server_port()").await.parse().expect("a port");
        *seen.entry(port).or_default() += 1;
    }
    seen
}

/// The ports of `nodes` in ascending order, as the keys of [`read_ports`] are.
pub fn ports(nodes: &[&NodeHandle]) -> Vec<u16> {
    let mut ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    ports.sort_unstable();
    ports
}

/// Runs a future with a bound, naming it in the panic.
pub async fn bounded<T>(what: &str, limit: Duration, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// What a write load saw (the failover and switchover tests).
#[derive(Default)]
pub struct Load {
    pub stop: std::sync::atomic::AtomicBool,
    pub next_id: std::sync::atomic::AtomicUsize,
    pub attempted: std::sync::atomic::AtomicUsize,
    pub failed: std::sync::atomic::AtomicUsize,
    pub failed_logins: std::sync::atomic::AtomicUsize,
    /// (id, when acknowledged, the server port that acknowledged it)
    pub acked: std::sync::Mutex<Vec<(i64, Instant, u16)>>,
    pub errors: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Load {
    /// One autocommit insert of the next id into `table`, recording the
    /// acknowledgement (with the answering server's port) or the error.
    /// Returns whether the connection is still open.
    pub async fn insert_next(&self, client: &tokio_postgres::Client, table: &str) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let id = self.next_id.fetch_add(1, Relaxed) as i64;
        self.attempted.fetch_add(1, Relaxed);
        let sql = format!("insert into {table} (id) values ($1) returning inet_server_port()");
        match client.query_one(&sql, &[&id]).await {
            Ok(row) => {
                let port: i32 = row.get(0);
                self.acked.lock().expect("acked").push((id, Instant::now(), port as u16));
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                self.errors.lock().expect("errors").insert(relay::message(&e));
            }
        }
        !client.is_closed()
    }
}

/// A client whose block was open on `node` when pgrelay fenced it: once its
/// server connection there is gone, the client's next request gets 40001
/// (naming the node and `cause`) and ReadyForQuery 'E', and its ROLLBACK is
/// answered; the connection stays.
pub async fn lost_block_is_reported(cluster: &LocalCluster, node: &NodeHandle, client: &mut relay::Raw, cause: &str) {
    let open =
        "select count(*) from pg_stat_activity where usename = 'app_trust' and state like 'idle in transaction%'";
    wait_for("the fenced connection closes", Duration::from_secs(5), || {
        (psql(cluster, node, open) == "0").then_some(())
    })
    .await;
    let mut query = bytes::BytesMut::new();
    pgrelay::wire::put_query(&mut query, "select 1");
    client.send(&query).await;
    let answer = client.until_ready().await;
    assert_eq!(relay::tags(&answer), "E Z");
    let (code, text) = relay::error_fields(&answer[0].1);
    assert_eq!(code, "40001", "{text}");
    assert!(text.contains(&node.name) && text.contains(cause), "{text}");
    assert_eq!(&answer[1].1[..], b"E");
    let mut rollback = bytes::BytesMut::new();
    pgrelay::wire::put_query(&mut rollback, "rollback");
    client.send(&rollback).await;
    assert_eq!(relay::tags(&client.until_ready().await), "C Z");
}

/// The value of `series` in one /metrics scrape `body`; 0 when absent.
fn sample(body: &str, series: &str) -> f64 {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Asserts pgrelay counted exactly one period without a writable primary,
/// a failover of `kind`, lasting between `at_least` and `at_most` (bounds
/// the test measured itself), that none is open now, and that /topology's
/// timeline says the same. Returns the period's length in seconds.
pub async fn assert_one_failover(
    app: &RunningApp,
    (lost, took_over): (&str, &str),
    kind: &str,
    at_least: Duration,
    at_most: Duration,
) -> f64 {
    let (_, body) = relay::http_get(app.http_addr, "/metrics").await;
    let count = sample(&body, "pgrelay_primary_unavailable_seconds_count");
    let sum = sample(&body, "pgrelay_primary_unavailable_seconds_sum");
    let current = sample(&body, "pgrelay_primary_unavailable_current_seconds");
    let kinds = ["unplanned", "switchover"].map(|k| sample(&body, &format!("pgrelay_failovers_total{{kind=\"{k}\"}}")));
    let want_kinds = ["unplanned", "switchover"].map(|k| if k == kind { 1.0 } else { 0.0 });
    assert_eq!(count, 1.0, "one period without a writable primary");
    assert_eq!(kinds, want_kinds, "one {kind} failover");
    assert_eq!(current, 0.0, "a primary serves again");
    let window = at_least.as_secs_f64()..=at_most.as_secs_f64();
    assert!(window.contains(&sum), "unavailable for {sum} s, outside the {window:?} s the test observed");

    let (_, body) = relay::http_get(app.http_addr, "/topology").await;
    let topology: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let last = &topology["last_failover"];
    assert_eq!((last["lost_primary"].as_str(), last["new_primary"].as_str()), (Some(lost), Some(took_over)), "{last}");
    assert_eq!((last["kind"].as_str(), last["ongoing"].as_bool()), (Some(kind), Some(false)), "{last}");
    let seconds = |step: &str| last[step]["seconds"].as_f64().unwrap_or_else(|| panic!("{step} in {last}"));
    let steps = ["last_seen_as_primary", "lost", "new_primary_seen", "first_write_routed"].map(seconds);
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "timeline in order: {steps:?}");
    let unavailable = last["unavailable_seconds"].as_f64().expect("unavailable_seconds");
    assert!((unavailable - sum).abs() < 1e-6 && (steps[3] - sum).abs() < 1e-6, "{last} vs the histogram's {sum}");
    sum
}
