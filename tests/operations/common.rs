//! What the operations tests share: a configuration file that a test can
//! rewrite and that is removed afterwards, the HTTP endpoints, and bounded
//! waits.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A configuration file under the temp directory, removed when dropped.
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// A new file named after `what`, unique within and across test runs.
    pub fn new(what: &str, text: &str) -> ConfigFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pgrelay-ops-{}-{what}-{n}.toml", std::process::id());
        let file = ConfigFile { path: std::env::temp_dir().join(name) };
        file.write(text);
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content.
    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap_or_else(|e| panic!("write {}: {e}", self.path.display()));
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A bounded HTTP/1.1 GET; returns (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: pgrelay\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within 5 s"))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of one sample of `/metrics`, named with its labels exactly as
/// exposed (`name{label="value"}`); 0 when absent, as for a counter never touched.
pub async fn metric(http: SocketAddr, sample: &str) -> f64 {
    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|value| value.trim().parse::<f64>().unwrap_or_else(|e| panic!("{sample}: {value}: {e}")))
        .next()
        .unwrap_or(0.0)
}

/// Polls the async `probe` every 20 ms until it returns Some, for at most
/// `limit`; returns the value and how long it took.
pub async fn wait_until<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return (value, started.elapsed());
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a future with a bound, naming it in the panic.
pub async fn bounded<T>(what: &str, limit: Duration, work: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}
