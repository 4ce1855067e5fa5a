//! A throw-away local PostgreSQL cluster, one primary and N streaming
//! replicas built with initdb and pg_basebackup from the server binaries on
//! the machine, for `pgrelay demo` and the integration tests.
//!
//! Everything here blocks (std::process, no async) and every step is bounded
//! in time. When this process is root, the servers and every PostgreSQL tool
//! run as the `postgres` OS user, since PostgreSQL refuses root.
//!
//! Cleanup has two layers: `Drop` stops the servers and removes the
//! directory, and a detached reaper process (see `reaper`) does the same if
//! this process ends without dropping the cluster (a `static`, an abort).

mod error;
mod exec;
mod reaper;
mod setup;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use error::LocalClusterError;

use exec::Runner;
pub use reaper::Reaper;
use setup::PortPicker;

/// The superuser; trusted over the Unix socket and from 127.0.0.1.
pub const SUPERUSER: &str = "postgres";
/// The application database, owned by [`APP_USER`].
pub const APP_DATABASE: &str = "app";
/// Logs in with SCRAM-SHA-256.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
/// Its password is stored as an md5 hash and pg_hba asks for md5.
pub const MD5_USER: &str = "app_md5";
pub const MD5_PASSWORD: &str = "app_md5";
/// Has no password; pg_hba trusts it from 127.0.0.1.
pub const TRUST_USER: &str = "app_trust";
/// The only address the servers listen on.
pub const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long dropping the cluster waits for its reaper to notice and exit.
const REAPER_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// How long `start` and `wait_streaming` wait for every replica to stream.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);

/// What cluster to build.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// Streaming replicas besides the primary.
    pub replicas: usize,
    pub max_connections: u32,
    /// The cluster's own directory (created, must be empty); default: a
    /// fresh directory under the system temp dir.
    pub base_dir: Option<PathBuf>,
    /// Lines appended to postgresql.conf (before the per-node port settings).
    pub extra_conf: Vec<String>,
    /// Leave the data directories in place when the cluster is dropped (the
    /// servers are still stopped).
    pub keep: bool,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions { replicas: 2, max_connections: 100, base_dir: None, extra_conf: Vec::new(), keep: false }
    }
}

/// One server of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHandle {
    /// "pg0" for the primary, "pg1", "pg2", ... for the replicas; also the
    /// server's `cluster_name` and so its `application_name` as a standby.
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl NodeHandle {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((HOST, self.port))
    }

    /// The server's log (`pg_ctl -l`), inside its data directory.
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join(setup::LOG_FILE)
    }
}

/// `pg_ctl stop -m <mode>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for clients to disconnect.
    Smart,
    /// Disconnects clients, shuts down cleanly.
    Fast,
    /// Kills the server without a checkpoint: a crash, as far as clients and
    /// replicas can tell.
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running primary plus streaming replicas, stopped and removed on drop.
#[derive(Debug)]
pub struct LocalCluster {
    runner: Runner,
    base_dir: PathBuf,
    /// `nodes[0]` is the primary the cluster was built with.
    nodes: Vec<NodeHandle>,
    keep: bool,
    reaper: Option<Reaper>,
}

impl LocalCluster {
    /// Builds and starts the cluster, and returns once every replica streams.
    pub fn start(opts: LocalClusterOptions) -> Result<LocalCluster, LocalClusterError> {
        let started = Instant::now();
        let bin_dir = exec::find_bin_dir()?;
        let os_user = exec::server_user()?;
        let base_dir = setup::create_base_dir(opts.base_dir.as_deref(), os_user.as_ref())?;
        let runner = Runner::new(bin_dir, os_user, base_dir.clone());
        let data_dirs: Vec<PathBuf> = (0..=opts.replicas).map(|i| base_dir.join(format!("pg{i}"))).collect();
        let reaper = match Reaper::spawn(&runner, &base_dir, &data_dirs, opts.keep) {
            Ok(reaper) => reaper,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&base_dir);
                return Err(e);
            }
        };
        // From here on, an early return drops `cluster`, which cleans up.
        let mut cluster = LocalCluster { runner, base_dir, nodes: Vec::new(), keep: opts.keep, reaper: Some(reaper) };
        let ports = PortPicker::default();
        cluster.start_primary(&opts, &ports, data_dirs[0].clone())?;
        cluster.start_replicas(&data_dirs[1..], &ports)?;
        cluster.wait_streaming()?;
        tracing::info!(
            base_dir = %cluster.base_dir.display(),
            bin_dir = %cluster.runner.bin_dir().display(),
            ports = ?cluster.nodes.iter().map(|n| n.port).collect::<Vec<_>>(),
            elapsed = ?started.elapsed(),
            "local PostgreSQL cluster is up"
        );
        Ok(cluster)
    }

    fn start_primary(
        &mut self,
        opts: &LocalClusterOptions,
        ports: &PortPicker,
        data_dir: PathBuf,
    ) -> Result<(), LocalClusterError> {
        let node = NodeHandle { name: "pg0".into(), port: ports.pick()?, data_dir };
        setup::init_primary(&self.runner, &node, opts, &self.base_dir)?;
        self.nodes.push(node);
        let node = self.nodes.last_mut().expect("just pushed");
        setup::start_new_server(&self.runner, node, ports)?;
        setup::create_roles(&self.runner, &self.nodes[0], &self.base_dir)
    }

    /// Base backups and starts of all replicas side by side: a base backup
    /// is mostly the kernel writing files, and two at once take about as
    /// long as one here.
    fn start_replicas(&mut self, data_dirs: &[PathBuf], ports: &PortPicker) -> Result<(), LocalClusterError> {
        if data_dirs.is_empty() {
            return Ok(());
        }
        let slots: Vec<String> = (1..=data_dirs.len()).map(slot_name).collect();
        setup::create_slots(&self.runner, &self.nodes[0], &self.base_dir, &slots)?;
        let (runner, primary) = (&self.runner, &self.nodes[0]);
        let started: Vec<(NodeHandle, Result<(), LocalClusterError>)> = std::thread::scope(|scope| {
            let threads: Vec<_> = (data_dirs.iter().enumerate())
                .map(|(i, dir)| scope.spawn(move || start_replica(runner, primary, i + 1, dir.clone(), ports)))
                .collect();
            threads.into_iter().map(|thread| thread.join().expect("a replica's start thread panicked")).collect()
        });
        // Every node goes into the list, failed or not, so that Drop stops it.
        let mut first_error = None;
        for (node, result) in started {
            self.nodes.push(node);
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The node the cluster was built with as primary (after a promotion it
    /// may no longer be one).
    pub fn primary(&self) -> &NodeHandle {
        &self.nodes[0]
    }

    /// The nodes built as replicas.
    pub fn replicas(&self) -> &[NodeHandle] {
        &self.nodes[1..]
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> &[NodeHandle] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeHandle> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The cluster's own directory: data directories and Unix sockets.
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Where every node's Unix socket lives (`psql -h <socket_dir>`).
    pub fn socket_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The PostgreSQL binaries in use (psql, pgbench, ... of the same version).
    pub fn bin_dir(&self) -> &Path {
        self.runner.bin_dir()
    }

    /// Runs `sql` as the superuser in database `postgres`; trimmed, unaligned,
    /// tuples-only output (`t`/`f` for booleans, `|` between columns).
    pub fn psql(&self, node: &NodeHandle, sql: &str) -> Result<String, LocalClusterError> {
        self.psql_db(node, "postgres", sql)
    }

    /// [`LocalCluster::psql`] in another database.
    pub fn psql_db(&self, node: &NodeHandle, db: &str, sql: &str) -> Result<String, LocalClusterError> {
        setup::psql(&self.runner, node, &self.base_dir, db, &[sql])
    }

    /// Puts `rules` (pg_hba.conf lines) ahead of the node's own, so they
    /// win, and reloads its configuration. The reload is asynchronous: a
    /// caller that depends on it waits until a login shows the change.
    pub fn prepend_hba_rules(&self, node: &NodeHandle, rules: &str) -> Result<(), LocalClusterError> {
        setup::prepend_hba_rules(&self.runner, node, rules)?;
        self.psql(node, "SELECT pg_reload_conf()").map(drop)
    }

    /// Turns TLS on for `node` with this certificate and key (PEM): writes
    /// them into its data directory (the key private to the server's user,
    /// as PostgreSQL demands) and reloads. Like a pg_hba change, the reload
    /// is asynchronous.
    pub fn enable_ssl(&self, node: &NodeHandle, cert_pem: &str, key_pem: &str) -> Result<(), LocalClusterError> {
        setup::write_private_file(&self.runner, &node.data_dir.join("server.crt"), cert_pem)?;
        setup::write_private_file(&self.runner, &node.data_dir.join("server.key"), key_pem)?;
        for sql in [
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            self.psql(node, sql)?;
        }
        Ok(())
    }

    /// `pg_ctl stop -m <mode> -w`.
    pub fn stop(&self, node: &NodeHandle, mode: StopMode) -> Result<(), LocalClusterError> {
        let mut cmd = self.runner.pg_command("pg_ctl");
        cmd.args(["stop", "-m", mode.as_str(), "-w", "-t", "60", "-D"]).arg(&node.data_dir);
        let what = format!("stopping {} (pg_ctl stop -m {})", node.name, mode.as_str());
        self.runner.run(&what, cmd, setup::PG_CTL_BOUND).map(drop).map_err(|e| e.with_server_log(&node.log_file()))
    }

    /// Starts a stopped node again on its port (`pg_ctl start -w`).
    /// (Named `start_node` because `start` builds the cluster.)
    pub fn start_node(&self, node: &NodeHandle) -> Result<(), LocalClusterError> {
        setup::start_server(&self.runner, node)
    }

    /// Promotes a replica to primary and waits until it accepts writes.
    pub fn promote(&self, node: &NodeHandle) -> Result<(), LocalClusterError> {
        let mut cmd = self.runner.pg_command("pg_ctl");
        cmd.args(["promote", "-w", "-t", "60", "-D"]).arg(&node.data_dir);
        let what = format!("promoting {} (pg_ctl promote)", node.name);
        self.runner.run(&what, cmd, setup::PG_CTL_BOUND).map(drop).map_err(|e| e.with_server_log(&node.log_file()))
    }

    /// Whether the node's postmaster is running (`postmaster.pid` present).
    pub fn is_running(&self, node: &NodeHandle) -> bool {
        node.data_dir.join("postmaster.pid").exists()
    }

    /// Waits (30 s at most) until the built primary streams to every built replica.
    pub fn wait_streaming(&self) -> Result<(), LocalClusterError> {
        let replicas: Vec<&NodeHandle> = self.replicas().iter().collect();
        self.wait_streaming_to(self.primary(), &replicas, STREAMING_TIMEOUT)
    }

    /// Waits until `primary`'s pg_stat_replication shows each of `replicas`
    /// (by its application_name, which is its node name) as 'streaming' and
    /// each replica answers `pg_is_in_recovery()` = true.
    pub fn wait_streaming_to(
        &self,
        primary: &NodeHandle,
        replicas: &[&NodeHandle],
        timeout: Duration,
    ) -> Result<(), LocalClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let detail = match self.streaming_gap(primary, replicas) {
                Ok(None) => return Ok(()),
                Ok(Some(gap)) => gap,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(LocalClusterError::NotStreaming { timeout, detail, base_dir: self.base_dir.clone() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What still keeps replication from being complete, or `None`.
    fn streaming_gap(
        &self,
        primary: &NodeHandle,
        replicas: &[&NodeHandle],
    ) -> Result<Option<String>, LocalClusterError> {
        let sql =
            "select coalesce(string_agg(application_name, ','), '') from pg_stat_replication where state = 'streaming'";
        let streaming = self.psql(primary, sql)?;
        let streaming: Vec<&str> = streaming.split(',').collect();
        if let Some(missing) = replicas.iter().find(|r| !streaming.contains(&r.name.as_str())) {
            let seen = if streaming == [""] { "none".to_string() } else { streaming.join(", ") };
            return Ok(Some(format!("{} does not stream from {} (streaming: {seen})", missing.name, primary.name)));
        }
        for replica in replicas {
            if self.psql(replica, "select pg_is_in_recovery()")? != "t" {
                return Ok(Some(format!("{} is not in recovery", replica.name)));
            }
        }
        Ok(None)
    }
}

/// The physical replication slot on the primary of replica number `index`.
fn slot_name(index: usize) -> String {
    format!("replica{index}")
}

/// One replica: a base backup of `primary` with its own slot, then start.
fn start_replica(
    runner: &Runner,
    primary: &NodeHandle,
    index: usize,
    data_dir: PathBuf,
    ports: &PortPicker,
) -> (NodeHandle, Result<(), LocalClusterError>) {
    let mut node = NodeHandle { name: format!("pg{index}"), port: 0, data_dir };
    let result = ports.pick().and_then(|port| {
        node.port = port;
        setup::base_backup(runner, primary, &node, &slot_name(index))?;
        setup::start_new_server(runner, &mut node, ports)
    });
    (node, result)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter().rev() {
            if self.is_running(node) {
                if let Err(e) = self.stop(node, StopMode::Immediate) {
                    tracing::warn!(node = %node.name, error = %e, "could not stop a local cluster node");
                }
            }
        }
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.base_dir) {
                tracing::warn!(dir = %self.base_dir.display(), error = %e, "could not remove the local cluster");
            }
        }
        if let Some(reaper) = self.reaper.take() {
            // After Drop cleaned up, the reaper finds nothing left to do.
            if !reaper.release(REAPER_RELEASE_WAIT) {
                tracing::warn!("cluster cleanup process still running; leaving it to finish");
            }
        }
    }
}
