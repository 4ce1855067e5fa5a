//! SHOW CONFIG and SHOW NODES. CONFIG keeps PgBouncer's columns (key, value,
//! default, changeable) with pgrelay's own keys as `section.key`; passwords
//! are never listed. NODES is pgrelay's own: the topology as routing sees it.

use std::time::Duration;

use super::table::{boolean, num, text, ColumnType as T, Table};
use crate::cluster::Topology;
use crate::config::{AuthType, Config, Prefer, RoFallback, Role, SessionStatePolicy, Source};
use crate::router::format_lsn;

/// SHOW CONFIG columns, PgBouncer 1.18.
pub const CONFIG: [(&str, T); 4] =
    [("key", T::Text), ("value", T::Text), ("default", T::Text), ("changeable", T::Text)];

/// SHOW NODES columns.
pub const NODES: [(&str, T); 15] = [
    ("name", T::Text),
    ("host", T::Text),
    ("port", T::Int4),
    ("role", T::Text),
    ("reachable", T::Bool),
    ("lag_bytes", T::Int8),
    ("lag_seconds", T::Float8),
    ("in_read_set", T::Bool),
    ("excluded_reason", T::Text),
    ("sync_state", T::Text),
    ("application_name", T::Text),
    ("wal_lsn", T::Text),
    ("write_lsn", T::Text),
    ("flush_lsn", T::Text),
    ("replay_lsn", T::Text),
];

/// The smallest valid configuration: every setting at its default.
const DEFAULTS_TOML: &str = r#"
[[nodes]]
name = "default"
host = "localhost"

[[users]]
name = "default"
password = "default"

[[databases]]
name = "default"
"#;

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn optional_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_owned(), duration)
}

/// A value handed to the kernel; "0" leaves the system's own.
fn system_default(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".to_owned(), duration)
}

/// Bytes in the largest unit that divides them evenly, as the config file takes them.
fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)];
    match UNITS.iter().find(|(_, unit)| bytes != 0 && bytes % unit == 0) {
        Some((name, unit)) => format!("{}{name}", bytes / unit),
        None => bytes.to_string(),
    }
}

/// Every setting of the single-table sections, as `section.key` and the
/// value written the way the config file takes it. Passwords are left out.
pub fn config_values(config: &Config) -> Vec<(&'static str, String)> {
    let pool = &config.pool;
    let keepalive = pool.tcp.keepalive.unwrap_or_default();
    let list = |names: &[String]| names.join(",");
    let mut values = vec![
        ("listen.rw", config.listen.rw.to_string()),
        ("listen.ro", config.listen.ro.to_string()),
        ("listen.http", config.listen.http.to_string()),
        ("listen.http_header_timeout", duration(config.listen.http_header_timeout)),
        ("pool.mode", super::show::pool_mode_name(pool.mode).to_owned()),
        ("pool.default_pool_size", pool.default_pool_size.to_string()),
        ("pool.max_client_conn", pool.max_client_conn.to_string()),
        ("pool.max_pre_auth_conn", pool.max_pre_auth_conn.to_string()),
        ("pool.max_pre_auth_conn_per_addr", pool.max_pre_auth_conn_per_addr.to_string()),
        ("pool.query_wait_timeout", duration(pool.query_wait_timeout)),
        ("pool.server_connect_timeout", duration(pool.server_connect_timeout)),
        ("pool.server_reset_timeout", duration(pool.server_reset_timeout)),
        ("pool.server_idle_timeout", optional_duration(pool.server_idle_timeout)),
        ("pool.server_lifetime", optional_duration(pool.server_lifetime)),
        ("pool.server_check_delay", duration(pool.server_check_delay)),
        ("pool.min_pool_size", pool.min_pool_size.to_string()),
        ("pool.reserve_pool_size", pool.reserve_pool_size.to_string()),
        ("pool.reserve_pool_timeout", optional_duration(pool.reserve_pool_timeout)),
        ("pool.max_db_connections", pool.max_db_connections.to_string()),
        ("pool.max_user_connections", pool.max_user_connections.to_string()),
        ("pool.client_login_timeout", duration(pool.client_login_timeout)),
        ("pool.max_message_size", size(pool.max_message_size as u64)),
        (
            "pool.session_state",
            match pool.session_state {
                SessionStatePolicy::Pin => "pin",
                SessionStatePolicy::Refuse => "refuse",
            }
            .to_owned(),
        ),
        ("pool.max_prepared_statements", pool.max_prepared_statements.to_string()),
        ("pool.max_client_prepared_statements", pool.max_client_prepared_statements.to_string()),
        ("pool.shutdown_grace", duration(pool.shutdown_grace)),
        ("pool.workers", pool.workers.to_string()),
        ("pool.tcp_keepalive", pool.tcp.keepalive.is_some().to_string()),
        ("pool.tcp_keepidle", system_default(keepalive.idle)),
        ("pool.tcp_keepintvl", system_default(keepalive.interval)),
        ("pool.tcp_keepcnt", keepalive.count.unwrap_or(0).to_string()),
        ("pool.tcp_user_timeout", system_default(pool.tcp.user_timeout)),
        ("pool.application_name_add_host", pool.application_name_add_host.to_string()),
        ("pool.client_idle_timeout", optional_duration(pool.client_timeouts.client_idle)),
        ("pool.idle_transaction_timeout", optional_duration(pool.client_timeouts.idle_transaction)),
        ("pool.query_timeout", optional_duration(pool.client_timeouts.query)),
        ("routing.max_replica_lag_bytes", size(config.routing.max_replica_lag_bytes)),
        ("routing.max_replica_lag", duration(config.routing.max_replica_lag)),
        (
            "routing.ro_fallback",
            match config.routing.ro_fallback {
                RoFallback::Primary => "primary",
                RoFallback::Error => "error",
            }
            .to_owned(),
        ),
        ("routing.read_your_writes_wait", duration(config.routing.read_your_writes_wait)),
        ("routing.causal_expiry", duration(config.routing.causal_expiry)),
        ("routing.causal_max_ids", config.routing.causal_max_ids.to_string()),
        (
            "routing.prefer",
            match config.routing.prefer {
                Prefer::Any => "any",
                Prefer::Sync => "sync",
                Prefer::Async => "async",
            }
            .to_owned(),
        ),
        (
            "cluster.source",
            match config.cluster.source {
                Source::Postgres => "postgres",
                Source::Patroni => "patroni",
                Source::Static => "static",
            }
            .to_owned(),
        ),
        ("cluster.check_interval", duration(config.cluster.check_interval)),
        ("cluster.check_timeout", duration(config.cluster.check_timeout)),
        ("cluster.leave_after_checks", config.cluster.leave_after_checks.to_string()),
        ("cluster.rejoin_after_checks", config.cluster.rejoin_after_checks.to_string()),
        ("cluster.user", config.cluster.user.clone()),
        ("cluster.server_require_auth", config.cluster.server_require_auth.to_string()),
        ("cluster.server_scram_max_iterations", config.cluster.server_scram_max_iterations.to_string()),
        ("admin.admin_users", list(&config.admin.admin_users)),
        ("admin.stats_users", list(&config.admin.stats_users)),
        ("admin.stats_period", duration(config.admin.stats_period)),
    ];
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map_or_else(String::new, |p| p.display().to_string());
    let client = &config.tls.client;
    values.extend([
        ("tls.client_tls_sslmode", client.sslmode.name().to_owned()),
        ("tls.client_tls_cert_file", path(&client.cert_file)),
        ("tls.client_tls_key_file", path(&client.key_file)),
        ("tls.client_tls_ca_file", path(&client.ca_file)),
        ("tls.client_tls_protocols", client.protocols.name().to_owned()),
    ]);
    let tls = &config.tls.server;
    values.extend([
        ("tls.server_tls_sslmode", tls.sslmode.name().to_owned()),
        ("tls.server_tls_ca_file", path(&tls.ca_file)),
        ("tls.server_tls_cert_file", path(&tls.cert_file)),
        ("tls.server_tls_key_file", path(&tls.key_file)),
        ("tls.server_tls_protocols", tls.protocols.name().to_owned()),
    ]);
    // Users from the database: off (no auth_user) lists auth_user alone.
    match &config.auth {
        None => values.push(("auth.auth_user", String::new())),
        Some(auth) => values.extend([
            ("auth.auth_user", auth.user.clone()),
            ("auth.auth_dbname", auth.dbname.clone()),
            ("auth.auth_query", auth.query.clone()),
            (
                "auth.auth_type",
                match auth.auth_type {
                    AuthType::Md5 => "md5",
                    _ => "scram-sha-256",
                }
                .to_owned(),
            ),
            ("auth.auth_cache_ttl", duration(auth.cache_ttl)),
            ("auth.auth_cache_size", auth.cache_size.to_string()),
            ("auth.auth_query_concurrency", auth.concurrency.to_string()),
            ("auth.auth_query_rate", auth.rate.to_string()),
        ]),
    }
    values
}

/// SHOW CONFIG. Every key but the listen addresses takes effect on RELOAD.
/// Keys PgBouncer has with the same meaning are listed again under
/// PgBouncer's name, in its format (see [`pgbouncer_name`]).
pub fn config_table(config: &Config) -> Table {
    let defaults = Config::parse(DEFAULTS_TOML).map(|c| config_values(&c)).unwrap_or_default();
    let mut rows = Vec::new();
    for (key, value) in config_values(config) {
        // check_timeout defaults to check_interval, whatever that is.
        let default = match key {
            "cluster.check_timeout" => Some(duration(config.cluster.check_interval)),
            _ => defaults.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
        };
        let changeable = if key.starts_with("listen.") || key == "pool.workers" { "no" } else { "yes" };
        rows.push((key, value, default, changeable));
    }
    let mut table = Table::new(&CONFIG);
    for (key, value, default, changeable) in &rows {
        table.push(vec![text(*key), text(value.as_str()), default.clone(), text(*changeable)]);
    }
    for (key, value, default, changeable) in &rows {
        if let Some(name) = pgbouncer_name(key) {
            let default = default.as_deref().map(pgbouncer_value);
            table.push(vec![text(name), text(pgbouncer_value(value)), default, text(*changeable)]);
        }
    }
    table
}

/// PgBouncer's keys (1.18, and 1.21's max_prepared_statements) that pgrelay
/// may have under the same name and with the same meaning, in any section.
const PGBOUNCER_KEYS: [&str; 38] = [
    "max_client_conn",
    "default_pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "reserve_pool_timeout",
    "max_db_connections",
    "max_user_connections",
    "max_prepared_statements",
    "query_timeout",
    "query_wait_timeout",
    "client_idle_timeout",
    "client_login_timeout",
    "idle_transaction_timeout",
    "server_lifetime",
    "server_idle_timeout",
    "server_connect_timeout",
    "server_reset_query",
    "server_check_delay",
    "server_check_query",
    "tcp_keepalive",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_user_timeout",
    "application_name_add_host",
    "stats_period",
    "admin_users",
    "stats_users",
    "auth_user",
    "auth_query",
    "client_tls_sslmode",
    "client_tls_ca_file",
    "client_tls_cert_file",
    "client_tls_key_file",
    "server_tls_sslmode",
    "server_tls_ca_file",
    "server_tls_cert_file",
    "server_tls_key_file",
];

/// PgBouncer's name for a pgrelay key (`pool.max_client_conn` ->
/// `max_client_conn`), so tools that look keys up by PgBouncer's names find
/// them: pgbouncer_exporter reads max_client_conn and max_user_connections.
fn pgbouncer_name(key: &str) -> Option<&'static str> {
    if key == "pool.mode" {
        return Some("pool_mode");
    }
    let (_, name) = key.split_once('.')?;
    PGBOUNCER_KEYS.iter().copied().find(|k| *k == name)
}

/// A value as PgBouncer shows it: durations in seconds, off and on as 0 and 1.
fn pgbouncer_value(value: &str) -> String {
    match value {
        "off" => return "0".to_owned(),
        "on" => return "1".to_owned(),
        _ => {}
    }
    match humantime::parse_duration(value) {
        Ok(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Ok(d) => format!("{:.3}", d.as_secs_f64()).trim_end_matches('0').to_owned(),
        Err(_) => value.to_owned(),
    }
}

/// SHOW NODES: every configured node with its role (primary, replica, or
/// unknown while unreachable or unchecked), lag, why a node that is not
/// the primary is out of the read set, and a replica's sync_state on the primary.
pub fn nodes_table(topology: &Topology) -> Table {
    let mut table = Table::new(&NODES);
    for (i, node) in topology.nodes.iter().enumerate() {
        let role = match node.role {
            Some(Role::Primary) => "primary",
            Some(Role::Replica) => "replica",
            None => "unknown",
        };
        table.push(vec![
            text(node.name.as_str()),
            text(node.host.as_str()),
            num(node.port),
            text(role),
            boolean(node.role.is_some()),
            node.lag_bytes.map(|b| b.to_string()),
            node.lag.map(|d| format!("{:.3}", d.as_secs_f64())),
            boolean(topology.read_set.contains(&i)),
            node.excluded.clone(),
            (node.role == Some(Role::Replica)).then(|| node.sync_state.as_str().to_owned()),
            text(node.application_name.as_str()),
            node.wal_lsn.map(format_lsn),
            node.streamed.and_then(|s| s.write_lsn).map(format_lsn),
            node.streamed.and_then(|s| s.flush_lsn).map(format_lsn),
            node.streamed.and_then(|s| s.replay_lsn).map(format_lsn),
        ]);
    }
    table
}
