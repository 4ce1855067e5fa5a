//! The HTTP endpoints: /livez, /readyz, /topology, /metrics.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster;
use crate::support::relay;

pub use crate::support::relay::http_get as get;

#[tokio::test]
async fn health_topology_and_metrics_endpoints() {
    let cluster = cluster();
    let app = relay::start_default(cluster, "").await;
    assert_eq!(get(app.http_addr, "/livez").await, (200, "ok\n".to_owned()));
    assert_eq!(get(app.http_addr, "/readyz").await.0, 200, "a static primary is known");
    let (status, body) = get(app.http_addr, "/topology").await;
    assert_eq!(status, 200);
    let topology: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(topology["primary"], "pg0");
    let nodes = topology["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[1]["role"], "replica");
    assert_eq!(nodes[1]["in_read_set"], true);
    assert_eq!(nodes[0]["port"], cluster.primary().port);
    assert_eq!(topology["last_failover"], serde_json::Value::Null);
    let (status, body) = get(app.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("pgrelay_primary_changes_total 0"), "a static primary never changes: {body}");
    assert!(body.contains(r#"pgrelay_node_is_primary{node="pg0"} 1"#), "{body}");
    assert!(body.contains(r#"pgrelay_node_in_read_set{node="pg2"} 1"#), "{body}");
    assert!(body.contains("pgrelay_split_brain 0"), "{body}");
    // The failover figures exist from the start (a static primary never fails over).
    for series in [
        r#"pgrelay_failovers_total{kind="unplanned"} 0"#,
        r#"pgrelay_failovers_total{kind="switchover"} 0"#,
        "pgrelay_primary_unavailable_current_seconds 0",
        "pgrelay_primary_unavailable_seconds_count 0",
    ] {
        assert!(body.contains(series), "{series} in {body}");
    }
    assert_eq!(get(app.http_addr, "/nope").await.0, 404);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_probe_command_checks_an_endpoint() {
    let app = relay::start_default(cluster(), "").await;
    let probe = |path: &str| {
        let url = format!("http://{}{path}", app.http_addr);
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgrelay")).args(["probe", &url]).output();
            tokio::time::timeout(Duration::from_secs(10), output).await.unwrap().unwrap()
        }
    };
    let ok = probe("/readyz").await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let missing = probe("/nope").await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{missing:?}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// One sample's value from a parsed scrape (0 when absent, as for a counter never touched).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
            prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

#[tokio::test]
async fn metrics_follow_known_traffic() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(relay::scalar(&client, "select 1").await, "1");
    let pool = [("node", "pg0"), ("database", "app"), ("user", "app")];
    let before = scrape(app.http_addr).await;
    for _ in 0..100 {
        client.simple_query("select 1").await.unwrap();
    }
    let err = client.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(relay::sqlstate(&err), "22012");
    let wrong = relay::connect_as(app.rw_addr, "app", "wrong").await.err().expect("wrong password");
    assert_eq!(relay::sqlstate(&wrong), "28P01");
    let after = scrape(app.http_addr).await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);

    assert_eq!(delta("pgrelay_transactions_total", &pool), 101.0, "100 selects and the failing one");
    assert_eq!(delta("pgrelay_queries_total", &pool), 101.0);
    assert_eq!(delta("pgrelay_checkout_wait_seconds_count", &pool), 101.0);
    assert_eq!(delta("pgrelay_transaction_duration_seconds_count", &pool), 101.0);
    assert_eq!(delta("pgrelay_errors_total", &[("class", "22"), ("origin", "server")]), 1.0);
    assert_eq!(delta("pgrelay_errors_total", &[("class", "28"), ("origin", "pgrelay")]), 1.0);
    assert_eq!(delta("pgrelay_client_logins_total", &[("result", "auth_failed")]), 1.0);
    let labels = [("database", "app"), ("user", "app")];
    assert!(delta("pgrelay_client_bytes_received_total", &labels) >= 101.0 * 14.0, "a Query is 14+ bytes");
    assert!(delta("pgrelay_client_bytes_sent_total", &labels) > 0.0);
    assert_eq!(sample(&after, "pgrelay_clients", &[("database", "app"), ("user", "app"), ("listener", "rw")]), 1.0);
    assert_eq!(sample(&after, "pgrelay_server_connections", &[("node", "pg0"), ("state", "idle")]), 1.0);
    assert_eq!(sample(&after, "pgrelay_server_connections", &[("node", "pg0"), ("state", "active")]), 0.0);
    assert_eq!(sample(&after, "pgrelay_node_is_primary", &[("node", "pg0")]), 1.0);
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = scrape(app.http_addr).await;
    assert_eq!(sample(&gone, "pgrelay_clients", &[("database", "app"), ("user", "app"), ("listener", "rw")]), 0.0);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http_connections_are_capped_and_unfinished_requests_time_out() {
    let toml = relay::config_toml(cluster(), "", "")
        .replace("http = \"127.0.0.1:0\"\n", "http = \"127.0.0.1:0\"\nhttp_header_timeout = \"1s\"\n");
    let app = relay::start(pgrelay::config::Config::parse(&toml).expect("config")).await;
    let cap = pgrelay::admin::MAX_HTTP_CONNECTIONS;
    // Every connection the cap allows, half silent, half with headers never finished.
    let mut stalled = Vec::new();
    for i in 0..cap {
        let mut stream = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(b"GET /livez HTTP/1.1\r\nHost: pgrelay\r\n").await.unwrap();
        }
        stalled.push(stream);
    }
    // One more is closed at once.
    let mut extra = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(500), extra.read_to_end(&mut sink)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection beyond the cap is closed at once: {read:?}");
    // Once the header timeout closed the stalled ones, a fresh connection is served.
    let started = std::time::Instant::now();
    for stream in &mut stalled {
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await.expect("closed");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(app.http_addr, "/livez").await, (200, "ok\n".to_owned()));
    app.shutdown(Duration::from_secs(5)).await;
}
