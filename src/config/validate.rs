//! Raw single-table sections (`[listen]`, `[pool]`, `[routing]`, `[cluster]`)
//! -> validated types, with the defaults. Each value is parsed by a helper
//! that knows its key, so every error names the key and where it was set.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use super::locate::{error_at, Locations, Origin};
use super::raw::{RawAdmin, RawAuth, RawCluster, RawInt, RawListen, RawPool, RawRouting, RawSize};
use super::units::{listeners_collide, parse_addr, parse_duration, parse_size, size_from_int};
use super::{
    Admin, AuthQuery, AuthType, ClientTimeouts, Cluster, ConfigError, Keepalive, Listen, Pool, PoolMode, Prefer,
    RequireAuth, RoFallback, Routing, SessionStatePolicy, Source, TcpOptions,
};

/// PostgreSQL 15's default is 4096 (`scram_iterations` came in 16); managed
/// services ask for up to a few tens of thousands.
const DEFAULT_SCRAM_MAX_ITERATIONS: u32 = 100_000;
const MIN_MESSAGE_SIZE: u64 = 64 * 1024;
/// PgBouncer's `stats_period` default.
pub(super) const DEFAULT_STATS_PERIOD: Duration = Duration::from_secs(60);
/// Shorter periods average over too few transactions to mean much (and a
/// zero one would spin the task that closes them).
const MIN_STATS_PERIOD: Duration = Duration::from_millis(100);
const MAX_MESSAGE_SIZE: u64 = 1024 * 1024 * 1024;
/// Linux's limits on TCP_KEEPIDLE / TCP_KEEPINTVL (seconds) and TCP_KEEPCNT.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
const MAX_KEEPALIVE_PROBES: i64 = 127;
/// TCP_USER_TIMEOUT takes milliseconds in a C int.
const MAX_USER_TIMEOUT_MS: u64 = i32::MAX as u64;

/// One key of a single-table section, for parsing its value and reporting
/// errors about it.
struct Field {
    section: &'static str,
    key: &'static str,
    origin: Origin,
}

impl Field {
    fn new(locations: &Locations<'_>, section: &'static str, key: &'static str) -> Field {
        Field { section, key, origin: locations.key(section, key) }
    }

    fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        error_at(&self.origin, format!("[{}] {}", self.section, self.key), message)
    }

    fn duration(&self, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
        parse_duration(value.unwrap_or(default)).map_err(|e| self.error(e))
    }

    /// A duration that must not be zero (a timeout of 0 would fire at once).
    fn positive_duration(&self, value: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
        let duration = self.duration(value, default)?;
        if duration.is_zero() {
            return Err(self.error(format!("must be greater than 0 (got {:?})", value.unwrap_or(default))));
        }
        Ok(duration)
    }

    /// A duration where `"0"` or `"off"` means never.
    fn optional_duration(&self, value: Option<&str>, default: &str) -> Result<Option<Duration>, ConfigError> {
        let text = value.unwrap_or(default);
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let duration = parse_duration(text).map_err(|e| self.error(format!("{e}, or \"off\"")))?;
        Ok(Some(duration).filter(|d| !d.is_zero()))
    }

    /// A duration handed to the kernel in whole `unit`s, at most `max`;
    /// `"0"` (the default) leaves the operating system's value.
    fn os_duration(&self, value: Option<&str>, unit: Duration, max: Duration) -> Result<Option<Duration>, ConfigError> {
        let Some(text) = value else { return Ok(None) };
        let duration = parse_duration(text).map_err(|e| self.error(format!("{e}, or \"0\" for the system default")))?;
        if duration.is_zero() {
            return Ok(None);
        }
        let whole = duration.as_nanos() % unit.as_nanos() == 0;
        if !whole || duration > max {
            let unit_name = if unit == Duration::from_secs(1) { "seconds" } else { "milliseconds" };
            return Err(self.error(format!(
                "must be a whole number of {unit_name} up to {}, or \"0\" for the system default (got {text:?})",
                humantime::format_duration(max)
            )));
        }
        Ok(Some(duration))
    }

    fn size(&self, value: Option<&RawSize>, default: &str) -> Result<u64, ConfigError> {
        match value {
            Some(RawSize::Bytes(bytes)) => size_from_int(*bytes),
            Some(RawSize::Text(text)) => parse_size(text),
            None => parse_size(default),
        }
        .map_err(|e| self.error(e))
    }

    fn addr(&self, value: Option<&str>, default: &str) -> Result<SocketAddr, ConfigError> {
        parse_addr(value.unwrap_or(default)).map_err(|e| self.error(e))
    }

    fn positive(&self, value: Option<i64>, default: usize) -> Result<NonZeroUsize, ConfigError> {
        let Some(value) = value else {
            return NonZeroUsize::new(default).ok_or_else(|| self.error("default must be greater than 0"));
        };
        usize::try_from(value)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| self.error(format!("must be greater than 0 (got {value})")))
    }

    /// A count where 0 is allowed (and usually means none or no limit).
    fn count(&self, value: Option<i64>, default: usize) -> Result<usize, ConfigError> {
        let Some(value) = value else { return Ok(default) };
        usize::try_from(value).map_err(|_| self.error(format!("must not be negative (got {value})")))
    }

    fn choice<T: Copy>(&self, value: Option<&str>, default: T, options: &[(&str, T)]) -> Result<T, ConfigError> {
        choice(value, default, options, |message| self.error(message))
    }
}

/// Picks one of `options` by its spelling in the file.
pub(super) fn choice<T: Copy>(
    value: Option<&str>,
    default: T,
    options: &[(&str, T)],
    error: impl FnOnce(String) -> ConfigError,
) -> Result<T, ConfigError> {
    let Some(text) = value else { return Ok(default) };
    match options.iter().find(|(name, _)| *name == text) {
        Some((_, choice)) => Ok(*choice),
        None => {
            let names: Vec<String> = options.iter().map(|(name, _)| format!("{name:?}")).collect();
            Err(error(format!("invalid value {text:?} (expected {})", names.join(" or "))))
        }
    }
}

pub(super) fn listen(raw: &RawListen, locations: &Locations<'_>) -> Result<Listen, ConfigError> {
    let field = |key| Field::new(locations, "listen", key);
    let listen = Listen {
        rw: field("rw").addr(raw.rw.as_deref(), "0.0.0.0:5432")?,
        ro: field("ro").addr(raw.ro.as_deref(), "0.0.0.0:5433")?,
        http: field("http").addr(raw.http.as_deref(), "0.0.0.0:9930")?,
        http_header_timeout: field("http_header_timeout")
            .positive_duration(raw.http_header_timeout.as_deref(), "10s")?,
    };
    let named = [("rw", listen.rw), ("ro", listen.ro), ("http", listen.http)];
    for (i, (key, addr)) in named.iter().enumerate() {
        for (other_key, other_addr) in &named[..i] {
            if listeners_collide(*addr, *other_addr) {
                // Blame a key that was set rather than one left at its default.
                let (mut this, mut other) = (field(key), field(other_key));
                if this.origin == Origin::Default {
                    std::mem::swap(&mut this, &mut other);
                }
                let (this_addr, other_addr) = if this.key == *key { (addr, other_addr) } else { (other_addr, addr) };
                return Err(this.error(format!(
                    "{this_addr} collides with [listen] {} = {other_addr} ({}); each listener needs its own \
                     address (port 0 picks a free port)",
                    other.key,
                    other.origin.describe()
                )));
            }
        }
    }
    Ok(listen)
}

pub(super) fn pool(raw: &RawPool, locations: &Locations<'_>) -> Result<Pool, ConfigError> {
    let field = |key| Field::new(locations, "pool", key);
    let max_message_size = field("max_message_size").size(raw.max_message_size.as_ref(), "16MB")?;
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&max_message_size) {
        return Err(field("max_message_size")
            .error(format!("{max_message_size} bytes is out of range: must be between 64kB and 1GB")));
    }
    let modes = [("transaction", PoolMode::Transaction), ("session", PoolMode::Session)];
    let policies = [("pin", SessionStatePolicy::Pin), ("refuse", SessionStatePolicy::Refuse)];
    Ok(Pool {
        mode: field("mode").choice(raw.mode.as_deref(), PoolMode::Transaction, &modes)?,
        default_pool_size: field("default_pool_size").positive(raw.default_pool_size.map(|n| n.0), 20)?,
        max_client_conn: field("max_client_conn").positive(raw.max_client_conn.map(|n| n.0), 1000)?.get(),
        max_pre_auth_conn: field("max_pre_auth_conn").positive(raw.max_pre_auth_conn.map(|n| n.0), 256)?.get(),
        max_pre_auth_conn_per_addr: field("max_pre_auth_conn_per_addr")
            .positive(raw.max_pre_auth_conn_per_addr.map(|n| n.0), 64)?
            .get(),
        query_wait_timeout: field("query_wait_timeout").positive_duration(raw.query_wait_timeout.as_deref(), "30s")?,
        server_connect_timeout: field("server_connect_timeout")
            .positive_duration(raw.server_connect_timeout.as_deref(), "5s")?,
        server_reset_timeout: field("server_reset_timeout")
            .positive_duration(raw.server_reset_timeout.as_deref(), "5s")?,
        server_idle_timeout: field("server_idle_timeout")
            .optional_duration(raw.server_idle_timeout.as_deref(), "10m")?,
        server_lifetime: field("server_lifetime").optional_duration(raw.server_lifetime.as_deref(), "1h")?,
        server_check_delay: field("server_check_delay").duration(raw.server_check_delay.as_deref(), "30s")?,
        min_pool_size: field("min_pool_size").count(raw.min_pool_size.map(|n| n.0), 0)?,
        reserve_pool_size: field("reserve_pool_size").count(raw.reserve_pool_size.map(|n| n.0), 0)?,
        reserve_pool_timeout: field("reserve_pool_timeout")
            .optional_duration(raw.reserve_pool_timeout.as_deref(), "5s")?,
        max_db_connections: field("max_db_connections").count(raw.max_db_connections.map(|n| n.0), 0)?,
        max_user_connections: field("max_user_connections").count(raw.max_user_connections.map(|n| n.0), 0)?,
        client_login_timeout: field("client_login_timeout")
            .positive_duration(raw.client_login_timeout.as_deref(), "15s")?,
        max_message_size: usize::try_from(max_message_size)
            .map_err(|_| field("max_message_size").error("too large for this platform"))?,
        session_state: field("session_state").choice(
            raw.session_state.as_deref(),
            SessionStatePolicy::Pin,
            &policies,
        )?,
        max_prepared_statements: field("max_prepared_statements")
            .positive(raw.max_prepared_statements.map(|n| n.0), 200)?
            .get(),
        max_client_prepared_statements: field("max_client_prepared_statements")
            .positive(raw.max_client_prepared_statements.map(|n| n.0), 1000)?
            .get(),
        shutdown_grace: field("shutdown_grace").duration(raw.shutdown_grace.as_deref(), "30s")?,
        workers: field("workers").positive(raw.workers.map(|n| n.0), default_workers())?.get(),
        tcp: tcp(raw, locations)?,
        application_name_add_host: raw.application_name_add_host.unwrap_or(false),
        client_timeouts: ClientTimeouts {
            client_idle: field("client_idle_timeout").optional_duration(raw.client_idle_timeout.as_deref(), "off")?,
            idle_transaction: field("idle_transaction_timeout")
                .optional_duration(raw.idle_transaction_timeout.as_deref(), "off")?,
            query: field("query_timeout").optional_duration(raw.query_timeout.as_deref(), "off")?,
        },
    })
}

/// `tcp_keepalive` (on by default, as in PgBouncer) and the values that tune
/// it, each "0" or unset for the system default, and `tcp_user_timeout`.
fn tcp(raw: &RawPool, locations: &Locations<'_>) -> Result<TcpOptions, ConfigError> {
    let field = |key| Field::new(locations, "pool", key);
    let (second, millisecond) = (Duration::from_secs(1), Duration::from_millis(1));
    let keepalive_max = Duration::from_secs(MAX_KEEPALIVE_SECS);
    let tuning = Keepalive {
        idle: field("tcp_keepidle").os_duration(raw.tcp_keepidle.as_deref(), second, keepalive_max)?,
        interval: field("tcp_keepintvl").os_duration(raw.tcp_keepintvl.as_deref(), second, keepalive_max)?,
        count: match raw.tcp_keepcnt.map(|n| n.0) {
            None | Some(0) => None,
            Some(n @ 1..=MAX_KEEPALIVE_PROBES) => Some(n as u32),
            Some(n) => {
                return Err(field("tcp_keepcnt").error(format!(
                    "must be between 1 and {MAX_KEEPALIVE_PROBES}, or 0 for the system default (got {n})"
                )))
            }
        },
    };
    let keepalive = match raw.tcp_keepalive.unwrap_or(true) {
        true => Some(tuning),
        false => {
            // A value that tunes keepalive would silently do nothing.
            let set = [
                ("tcp_keepidle", tuning.idle.is_some()),
                ("tcp_keepintvl", tuning.interval.is_some()),
                ("tcp_keepcnt", tuning.count.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, is_set)| *is_set) {
                return Err(field(key).error("has no effect with tcp_keepalive = false"));
            }
            None
        }
    };
    let user_timeout_max = Duration::from_millis(MAX_USER_TIMEOUT_MS);
    let user_timeout =
        field("tcp_user_timeout").os_duration(raw.tcp_user_timeout.as_deref(), millisecond, user_timeout_max)?;
    if user_timeout.is_some() && !cfg!(target_os = "linux") {
        return Err(field("tcp_user_timeout").error("is only supported on Linux"));
    }
    Ok(TcpOptions { keepalive, user_timeout })
}

/// `[pool] workers` when the file does not say: the cores this process may
/// use (CPU affinity and cgroup quotas included), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

pub(super) fn admin(raw: RawAdmin, locations: &Locations<'_>) -> Result<Admin, ConfigError> {
    let list = |key, names: Option<Vec<String>>| {
        let names = names.unwrap_or_default();
        match names.iter().find(|n| n.trim().is_empty()) {
            Some(_) => Err(Field::new(locations, "admin", key).error("user names must not be empty")),
            None => Ok(names),
        }
    };
    let period = Field::new(locations, "admin", "stats_period");
    let stats_period = period.duration(raw.stats_period.as_deref(), "60s")?;
    if stats_period < MIN_STATS_PERIOD {
        return Err(period.error(format!("must be at least 100ms (got {stats_period:?})")));
    }
    Ok(Admin {
        admin_users: list("admin_users", raw.admin_users)?,
        stats_users: list("stats_users", raw.stats_users)?,
        stats_period,
    })
}

/// Upper bounds of `[routing] read_your_writes_wait` and `causal_max_ids`.
const MAX_READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(60);
const MAX_CAUSAL_IDS: usize = 10_000_000;

pub(super) fn routing(raw: &RawRouting, locations: &Locations<'_>) -> Result<Routing, ConfigError> {
    let field = |key| Field::new(locations, "routing", key);
    let fallbacks = [("primary", RoFallback::Primary), ("error", RoFallback::Error)];
    let preferences = [("any", Prefer::Any), ("sync", Prefer::Sync), ("async", Prefer::Async)];
    let wait = field("read_your_writes_wait");
    let read_your_writes_wait = wait.duration(raw.read_your_writes_wait.as_deref(), "300ms")?;
    // The wait holds a replica's server connection: a bound, not a timeout to tune up.
    if read_your_writes_wait > MAX_READ_YOUR_WRITES_WAIT {
        return Err(wait.error(format!("must be at most 1m (got {read_your_writes_wait:?})")));
    }
    let max_ids = field("causal_max_ids");
    let causal_max_ids = max_ids.positive(raw.causal_max_ids.map(|n| n.0), 10_000)?;
    if causal_max_ids.get() > MAX_CAUSAL_IDS {
        return Err(max_ids.error(format!("must be at most {MAX_CAUSAL_IDS} (got {causal_max_ids})")));
    }
    Ok(Routing {
        max_replica_lag_bytes: field("max_replica_lag_bytes").size(raw.max_replica_lag_bytes.as_ref(), "16MB")?,
        max_replica_lag: field("max_replica_lag").duration(raw.max_replica_lag.as_deref(), "10s")?,
        ro_fallback: field("ro_fallback").choice(raw.ro_fallback.as_deref(), RoFallback::Primary, &fallbacks)?,
        prefer: field("prefer").choice(raw.prefer.as_deref(), Prefer::Any, &preferences)?,
        read_your_writes_wait,
        causal_expiry: field("causal_expiry").positive_duration(raw.causal_expiry.as_deref(), "5m")?,
        causal_max_ids,
    })
}

pub(super) fn cluster(raw: RawCluster, locations: &Locations<'_>) -> Result<Cluster, ConfigError> {
    let field = |key| Field::new(locations, "cluster", key);
    let sources = [("postgres", Source::Postgres), ("patroni", Source::Patroni), ("static", Source::Static)];
    let user = raw.user.unwrap_or_else(|| "postgres".to_owned());
    if user.is_empty() {
        return Err(field("user").error("must not be empty"));
    }
    let server_require_auth = match raw.server_require_auth.as_deref() {
        Some(text) => RequireAuth::parse(text).map_err(|e| field("server_require_auth").error(e))?,
        None => RequireAuth::DEFAULT,
    };
    let server_scram_max_iterations = match raw.server_scram_max_iterations.map(|n| n.0) {
        None => NonZeroU32::new(DEFAULT_SCRAM_MAX_ITERATIONS).expect("not zero"),
        Some(n) => u32::try_from(n).ok().and_then(NonZeroU32::new).ok_or_else(|| {
            field("server_scram_max_iterations").error(format!("must be between 1 and {} (got {n})", u32::MAX))
        })?,
    };
    let check_interval = field("check_interval").positive_duration(raw.check_interval.as_deref(), "1s")?;
    let check_timeout = match raw.check_timeout.as_deref() {
        Some(text) => field("check_timeout").positive_duration(Some(text), "1s")?,
        None => check_interval,
    };
    // A check count is small; anything above u32 is as good as "never".
    let checks = |key, value: Option<RawInt>| {
        field(key).positive(value.map(|n| n.0), 2).map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    };
    Ok(Cluster {
        source: field("source").choice(raw.source.as_deref(), Source::Postgres, &sources)?,
        check_interval,
        check_timeout,
        leave_after_checks: checks("leave_after_checks", raw.leave_after_checks)?,
        rejoin_after_checks: checks("rejoin_after_checks", raw.rejoin_after_checks)?,
        user,
        password: raw.password.unwrap_or_default(),
        server_require_auth,
        server_scram_max_iterations,
    })
}

/// PgBouncer's default `auth_query`.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM pg_shadow WHERE usename = $1";

pub(super) fn auth(raw: RawAuth, locations: &Locations<'_>) -> Result<Option<AuthQuery>, ConfigError> {
    let field = |key| Field::new(locations, "auth", key);
    let Some(user) = raw.auth_user else {
        // Any other key without auth_user would silently do nothing.
        let set = [
            ("auth_password", raw.auth_password.is_some()),
            ("auth_dbname", raw.auth_dbname.is_some()),
            ("auth_query", raw.auth_query.is_some()),
            ("auth_type", raw.auth_type.is_some()),
            ("auth_cache_ttl", raw.auth_cache_ttl.is_some()),
            ("auth_cache_size", raw.auth_cache_size.is_some()),
            ("auth_query_concurrency", raw.auth_query_concurrency.is_some()),
            ("auth_query_rate", raw.auth_query_rate.is_some()),
        ];
        return match set.iter().find(|(_, is_set)| *is_set) {
            Some((key, _)) => Err(field(key).error("has no effect without [auth] auth_user (set it to look users up)")),
            None => Ok(None),
        };
    };
    if user.is_empty() {
        return Err(field("auth_user").error("must not be empty"));
    }
    let query = raw.auth_query.unwrap_or_else(|| DEFAULT_AUTH_QUERY.to_owned());
    if !query.contains("$1") {
        return Err(field("auth_query").error("must take the user name as $1"));
    }
    let types = [("scram-sha-256", AuthType::ScramSha256), ("md5", AuthType::Md5)];
    let rate = field("auth_query_rate").positive(raw.auth_query_rate.map(|n| n.0), 50)?;
    Ok(Some(AuthQuery {
        user,
        password: raw.auth_password.unwrap_or_default(),
        dbname: raw.auth_dbname.unwrap_or_else(|| "postgres".to_owned()),
        query,
        auth_type: field("auth_type").choice(raw.auth_type.as_deref(), AuthType::ScramSha256, &types)?,
        cache_ttl: field("auth_cache_ttl").positive_duration(raw.auth_cache_ttl.as_deref(), "60s")?,
        cache_size: field("auth_cache_size").positive(raw.auth_cache_size.map(|n| n.0), 10_000)?,
        concurrency: field("auth_query_concurrency").positive(raw.auth_query_concurrency.map(|n| n.0), 4)?,
        rate: u32::try_from(rate.get())
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| field("auth_query_rate").error(format!("must be at most {}", u32::MAX)))?,
    }))
}
