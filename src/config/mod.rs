//! Configuration: raw TOML types (`raw`) become one validated [`Config`] that
//! every component receives in its constructor. Nothing reads config globally.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

/// The validated configuration. Built by [`Config::load`] / [`Config::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub pool: Pool,
    pub routing: Routing,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
    pub users: Vec<User>,
    pub databases: Vec<Database>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub rw: SocketAddr,
    pub ro: SocketAddr,
    pub http: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

/// What transaction pooling does with session state (SET outside a
/// transaction, LISTEN, session advisory locks, SQL PREPARE, temp tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatePolicy {
    /// Keep the client on its server connection until it disconnects.
    Pin,
    /// Answer the statement with an error.
    Refuse,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub mode: PoolMode,
    pub default_pool_size: NonZeroUsize,
    pub max_client_conn: usize,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_reset_timeout: Duration,
    pub server_idle_timeout: Option<Duration>,
    pub client_login_timeout: Duration,
    pub max_message_size: usize,
    pub session_state: SessionStatePolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoFallback {
    Primary,
    Error,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub max_replica_lag_bytes: u64,
    pub max_replica_lag: Duration,
    pub ro_fallback: RoFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Postgres,
    Patroni,
    Static,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub source: Source,
    pub check_interval: Duration,
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Option<Role>,
    pub patroni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    ScramSha256,
    Md5,
    Trust,
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    /// Plain text, `SCRAM-SHA-256$...` or `md5...`; `None` only with trust.
    pub password: Option<String>,
    pub auth_type: AuthType,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub name: String,
    pub server_dbname: String,
    pub pool_size: Option<NonZeroUsize>,
}

/// A configuration error, rendered with the key (and line) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    pub fn parse(_text: &str) -> Result<Config, ConfigError> {
        Err(ConfigError("config parsing is not built yet".into()))
    }
}
