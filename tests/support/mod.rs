//! The fixture every integration test binary shares: one real PostgreSQL
//! primary with two streaming replicas, started on first use and shared by
//! all the tests of the binary.
//!
//! The cluster lives in a `static`, which Rust never drops; the cluster's
//! reaper process stops the servers and removes the directory when the test
//! binary exits, panics or aborts. Set `PGRELAY_TEST_KEEP=1` to keep the data
//! directories (and server logs) for a look after the run.

#![allow(dead_code)]

pub mod mock_server;
pub mod relay;

use std::sync::OnceLock;

use pgrelay::localcluster::{LocalCluster, LocalClusterOptions};

static CLUSTER: OnceLock<Result<LocalCluster, String>> = OnceLock::new();

/// The binary's cluster, started on the first call. A failure to start is
/// remembered, so every test reports it instead of each trying again.
pub fn cluster() -> &'static LocalCluster {
    let started = CLUSTER.get_or_init(|| {
        let keep = std::env::var_os("PGRELAY_TEST_KEEP").is_some_and(|v| v == "1");
        let cluster = LocalCluster::start(LocalClusterOptions { keep, ..LocalClusterOptions::default() })
            .map_err(|e| e.to_string())?;
        if keep {
            eprintln!("test cluster kept in {}", cluster.base_dir().display());
        }
        Ok(cluster)
    });
    match started {
        Ok(cluster) => cluster,
        Err(e) => panic!("the test PostgreSQL cluster could not start: {e}"),
    }
}

/// `[pool] workers` for every pgrelay the tests start: `PGRELAY_TEST_WORKERS`
/// (default 1), so that the whole suite runs with one worker and with several.
pub fn test_workers() -> usize {
    std::env::var("PGRELAY_TEST_WORKERS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(1)
}

/// A tokio-postgres connection string for a server of the cluster (or
/// anything else on 127.0.0.1); an empty password is left out.
pub fn connect_string(port: u16, user: &str, password: &str, db: &str) -> String {
    let mut conn = format!(
        "host=127.0.0.1 port={port} user={} dbname={} sslmode=disable connect_timeout=10",
        quote(user),
        quote(db)
    );
    if !password.is_empty() {
        conn.push_str(&format!(" password={}", quote(password)));
    }
    conn
}

/// A libpq-style connection-string value: quoted, with `'` and `\` escaped.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
