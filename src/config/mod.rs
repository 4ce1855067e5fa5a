//! Configuration: raw TOML types (`raw`) become one validated [`Config`] that
//! every component receives in its constructor. Nothing reads config globally.
//!
//! Parsing runs in this order: TOML syntax, unknown sections and keys (with
//! the line of each key recorded in `locate`), `PGRELAY_<SECTION>_<KEY>`
//! environment overrides (`env`), deserialization into the `raw` types, then
//! validation with defaults (`validate`, `members`). Every error is one line
//! naming the key and, when it came from the file, its line.

mod client_tls;
mod env;
mod locate;
mod members;
mod raw;
mod require_auth;
#[cfg(test)]
mod tests;
mod tls;
mod units;
mod validate;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use serde::de::IntoDeserializer as _;
use serde::Deserialize as _;

pub use client_tls::{ClientSslMode, ClientTls, ClientTlsAcceptor, ALPN_POSTGRESQL};
use locate::Locations;
use raw::RawConfig;
pub use require_auth::{RequireAuth, ServerAuthMethod};
pub use tls::{connect_tokio_postgres, ServerSslMode, ServerTls, TlsProtocols};
pub use validate::default_workers;

/// The validated configuration. Built by [`Config::load`] / [`Config::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub pool: Pool,
    pub routing: Routing,
    pub cluster: Cluster,
    pub admin: Admin,
    pub tls: Tls,
    /// `[auth]`: users looked up in the database, when `auth_user` is set.
    pub auth: Option<AuthQuery>,
    pub nodes: Vec<Node>,
    pub users: Vec<User>,
    pub databases: Vec<Database>,
}

/// `[tls]`: TLS between clients and pgrelay, and between pgrelay and the servers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tls {
    pub client: ClientTls,
    pub server: ServerTls,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub rw: SocketAddr,
    pub ro: SocketAddr,
    pub http: SocketAddr,
    /// How long an HTTP client may take to send a request's headers (also
    /// how long an idle keep-alive connection stays). Read at start-up only.
    pub http_header_timeout: Duration,
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
    /// Logged-in clients at once; a connection takes a slot once authenticated.
    pub max_client_conn: usize,
    /// Connections still logging in (not yet authenticated) at once.
    pub max_pre_auth_conn: usize,
    /// The share of `max_pre_auth_conn` one client address may hold (an IPv6
    /// client's /64 counts as one address).
    pub max_pre_auth_conn_per_addr: usize,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_reset_timeout: Duration,
    pub server_idle_timeout: Option<Duration>,
    /// A server connection older than this is closed when its lease ends
    /// (`None`: no limit). A reload applies it to running pools.
    pub server_lifetime: Option<Duration>,
    /// An idle connection unused this long is checked before it is leased (zero: always).
    pub server_check_delay: Duration,
    /// Server connections each pool keeps open, opened in the background (0: none).
    pub min_pool_size: usize,
    /// Extra server connections a pool may open for clients that waited
    /// `reserve_pool_timeout` (0: none).
    pub reserve_pool_size: usize,
    /// `None`: the reserve is not used.
    pub reserve_pool_timeout: Option<Duration>,
    /// Server connections to one node for one database, all its users'
    /// pools together (0: no limit); a database may set its own.
    pub max_db_connections: usize,
    /// Server connections to one node for one user, all its databases'
    /// pools together (0: no limit); a user may set its own.
    pub max_user_connections: usize,
    pub client_login_timeout: Duration,
    pub max_message_size: usize,
    pub session_state: SessionStatePolicy,
    /// Shared statements kept prepared per server connection (least recently used closed first).
    pub max_prepared_statements: usize,
    /// Named prepared statements one client may hold at once.
    pub max_client_prepared_statements: usize,
    /// How long SIGTERM / SIGINT let clients finish before closing them.
    pub shutdown_grace: Duration,
    /// Threads that accept clients and run their sessions, each with a
    /// runtime of its own (a restart changes it, not a reload).
    pub workers: usize,
    /// Set on every client socket when it is accepted and on every server
    /// connection when it is opened (a reload changes them for new sockets).
    pub tcp: TcpOptions,
    /// Servers see a client's application_name with its address appended
    /// (PgBouncer's `application_name_add_host`), from its login on.
    pub application_name_add_host: bool,
    pub client_timeouts: ClientTimeouts,
}

/// PgBouncer's `tcp_*` socket options. `None` leaves the operating
/// system's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// Keepalive probes on an idle connection; `None`: off (`tcp_keepalive = false`).
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT` (Linux): how long sent data may stay unacknowledged
    /// before the connection is dropped.
    pub user_timeout: Option<Duration>,
}

/// When keepalive probes are sent, and when a peer that answers none is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive {
    /// Idle time before the first probe (`tcp_keepidle`).
    pub idle: Option<Duration>,
    /// Time between probes (`tcp_keepintvl`).
    pub interval: Option<Duration>,
    /// Unanswered probes after which the connection is dropped (`tcp_keepcnt`).
    pub count: Option<u32>,
}

/// How long a client may wait in each way before pgrelay acts (`None`: no
/// limit). A reload applies to each client's next wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientTimeouts {
    /// Idle outside a transaction: the client is disconnected (57P05).
    pub client_idle: Option<Duration>,
    /// Idle inside a transaction: the client is disconnected (25P03) and
    /// its transaction rolled back.
    pub idle_transaction: Option<Duration>,
    /// A query running: it is cancelled on the server (57014).
    pub query: Option<Duration>,
}

impl ClientTimeouts {
    pub fn any(&self) -> bool {
        self.client_idle.is_some() || self.idle_transaction.is_some() || self.query.is_some()
    }
}

/// Who may use the admin console (database `pgrelay` or `pgbouncer`), and
/// what its statistics average over.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// May run every command.
    pub admin_users: Vec<String>,
    /// May run SHOW commands only.
    pub stats_users: Vec<String>,
    /// SHOW STATS' averages cover the last completed period of this length
    /// (PgBouncer's `stats_period`).
    pub stats_period: Duration,
}

impl Default for Admin {
    fn default() -> Admin {
        Admin { admin_users: Vec::new(), stats_users: Vec::new(), stats_period: validate::DEFAULT_STATS_PERIOD }
    }
}

/// How users that `[[users]]` does not list are looked up on the primary
/// (`[auth]`, PgBouncer's `auth_user` / `auth_query`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthQuery {
    /// The role pgrelay runs `query` as.
    pub user: String,
    pub password: String,
    /// The database the lookup connects to.
    pub dbname: String,
    /// Takes the user name as `$1`; returns one row (name, password) or none.
    pub query: String,
    /// How looked-up users authenticate: `ScramSha256` or `Md5` (PostgreSQL's
    /// meaning of the pg_hba method: a SCRAM verifier still answers SCRAM).
    pub auth_type: AuthType,
    /// How long a result (found or not) is used before it is looked up again.
    pub cache_ttl: Duration,
    /// User names kept in the cache at most.
    pub cache_size: NonZeroUsize,
    /// Lookups running at once (each holds one connection to the primary).
    pub concurrency: NonZeroUsize,
    /// Lookups started per second at most, after a burst of as many.
    pub rate: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoFallback {
    Primary,
    Error,
}

/// Which standbys reads go to first (`[routing] prefer`), by their
/// `sync_state` on the primary; the others take reads when none of those
/// is in the read set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    /// Every replica in the read set alike (the default).
    Any,
    /// Synchronous standbys (`sync` or `quorum`).
    Sync,
    /// Asynchronous standbys (`async` or `potential`), to keep reads off the synchronous ones.
    Async,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub max_replica_lag_bytes: u64,
    pub max_replica_lag: Duration,
    pub ro_fallback: RoFallback,
    pub prefer: Prefer,
    /// How long a read that must see a WAL position waits for a replica to
    /// replay that far before it falls back (0: no wait).
    pub read_your_writes_wait: Duration,
    /// How long a causal id's last commit is remembered after its last use.
    pub causal_expiry: Duration,
    /// Causal ids remembered at most.
    pub causal_max_ids: NonZeroUsize,
}

/// Who says which node is the primary (`[cluster] source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The default: monitors poll `pg_is_in_recovery()` on every node.
    Postgres,
    /// Patroni's `GET /cluster` leader; each node needs a `patroni` URL.
    Patroni,
    /// Roles as written in `[[nodes]] role`, the only source that allows them.
    Static,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub source: Source,
    pub check_interval: Duration,
    /// Limit on one monitor check (connect, log in, query); default: check_interval.
    pub check_timeout: Duration,
    /// Consecutive bad checks after which a replica leaves the read set.
    pub leave_after_checks: u32,
    /// Consecutive good checks after which a replica that left comes back.
    pub rejoin_after_checks: u32,
    pub user: String,
    pub password: String,
    /// What a server may ask for when pgrelay logs in, unless a node says otherwise.
    pub server_require_auth: RequireAuth,
    /// The most SCRAM iterations pgrelay runs PBKDF2 for when a server asks.
    pub server_scram_max_iterations: NonZeroU32,
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
    /// The node's own `server_require_auth`, else `[cluster]`'s.
    pub server_require_auth: RequireAuth,
    /// The name this node streams under as a standby (its
    /// `pg_stat_replication.application_name` on the primary); default: `name`.
    pub application_name: String,
}

/// How pgrelay logs in to one node: what the node may ask for, and how much
/// SCRAM work it may demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAuthPolicy {
    pub require_auth: RequireAuth,
    pub scram_max_iterations: NonZeroU32,
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
    /// Log in to the servers with `[cluster] password` (never implied).
    pub server_password_from_cluster: bool,
    /// This user's own pool size, which wins over its database's and `[pool]`'s (as in PgBouncer).
    pub pool_size: Option<NonZeroUsize>,
    /// This user's own pool mode, which wins over its database's and `[pool]`'s.
    pub pool_mode: Option<PoolMode>,
    /// This user's own `max_user_connections`, else `[pool]`'s.
    pub max_user_connections: Option<NonZeroUsize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub name: String,
    pub server_dbname: String,
    pub pool_size: Option<NonZeroUsize>,
    /// This database's own pool mode, else `[pool]`'s (a user's own wins over it).
    pub pool_mode: Option<PoolMode>,
    /// This database's own `max_db_connections`, else `[pool]`'s.
    pub max_db_connections: Option<NonZeroUsize>,
}

/// A configuration error, rendered with the key (and line) it is about.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Reads and validates `path`, with `PGRELAY_*` overrides from the
    /// process environment. Errors start with the path.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let in_file = |e: ConfigError| ConfigError(format!("{}: {}", path.display(), e.0));
        Self::parse_with_process_env(&text).map_err(in_file)
    }

    /// Validates a config's text with the `PGRELAY_<SECTION>_<KEY>`
    /// overrides of this process's environment, as [`Config::load`] does.
    pub fn parse_with_process_env(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, env::process_env()?)
    }

    /// Validates a config file's text, without environment overrides.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(text, std::iter::empty())
    }

    /// Validates a config file's text with the `PGRELAY_<SECTION>_<KEY>`
    /// overrides found in `env` (other variables are ignored).
    pub fn parse_with_env(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let document = toml_edit::ImDocument::parse(text).map_err(|e| locate::syntax_error(text, &e))?;
        let mut locations = Locations::scan(text, document.as_table())?;
        let overrides = env::overrides(env)?;
        // A clone of the parsed document keeps every value's span, so errors
        // about values from the file still carry their line after the edit.
        let mut root = document.as_item().clone();
        env::apply(&mut root, overrides, &mut locations);
        let raw = match root.into_value() {
            Ok(value) => RawConfig::deserialize(value.into_deserializer()).map_err(|e| locations.serde_error(&e))?,
            Err(_) => RawConfig::default(),
        };
        Self::from_raw(raw, &locations)
    }

    fn from_raw(raw: RawConfig, locations: &Locations<'_>) -> Result<Config, ConfigError> {
        let listen = validate::listen(&raw.listen, locations)?;
        let pool = validate::pool(&raw.pool, locations)?;
        let routing = validate::routing(&raw.routing, locations)?;
        let cluster = validate::cluster(raw.cluster, locations)?;
        let admin = validate::admin(raw.admin, locations)?;
        let tls = Tls { client: client_tls::client(&raw.tls, locations)?, server: tls::server(&raw.tls, locations)? };
        let auth = validate::auth(raw.auth, locations)?;
        let nodes = members::nodes(raw.nodes, &cluster, locations)?;
        let users = members::users(raw.users, &cluster, locations, auth.is_some())?;
        let databases = members::databases(raw.databases, locations)?;
        Ok(Config { listen, pool, routing, cluster, admin, tls, auth, nodes, users, databases })
    }

    /// How pgrelay logs in to the node named `node` (`[cluster]`'s rules for
    /// a node this configuration does not list).
    pub fn server_auth_policy(&self, node: &str) -> ServerAuthPolicy {
        let require_auth = self.nodes.iter().find(|n| n.name == node).map(|n| n.server_require_auth);
        ServerAuthPolicy {
            require_auth: require_auth.unwrap_or(self.cluster.server_require_auth),
            scram_max_iterations: self.cluster.server_scram_max_iterations,
        }
    }
}
