//! The SHOW tables about pools and traffic, with PgBouncer's column names
//! and order (1.18), so tools written for PgBouncer (psql habits,
//! prometheus-community/pgbouncer_exporter) read them unchanged.
//!
//! PgBouncer has one pool per (database, user); pgrelay has one per (node,
//! database, user). Every table here aggregates over the nodes, so a
//! (database, user) appears once and an exporter never sees a label set twice.
//! Each table is built by a pure function from plain samples, read from the
//! running pgrelay first by the `sample_*` functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::table::{num, text, ColumnType as T, Table, Value};
use crate::app::{ClientState, Context};
use crate::config::PoolMode;
use crate::metrics::periods::Figures;

/// SHOW POOLS columns, PgBouncer 1.18.
pub const POOLS: [(&str, T); 16] = [
    ("database", T::Text),
    ("user", T::Text),
    ("cl_active", T::Int4),
    ("cl_waiting", T::Int4),
    ("cl_active_cancel_req", T::Int4),
    ("cl_waiting_cancel_req", T::Int4),
    ("sv_active", T::Int4),
    ("sv_active_cancel", T::Int4),
    ("sv_being_canceled", T::Int4),
    ("sv_idle", T::Int4),
    ("sv_used", T::Int4),
    ("sv_tested", T::Int4),
    ("sv_login", T::Int4),
    ("maxwait", T::Int4),
    ("maxwait_us", T::Int4),
    ("pool_mode", T::Text),
];

/// SHOW STATS columns, PgBouncer 1.18.
pub const STATS: [(&str, T); 15] = [
    ("database", T::Text),
    ("total_xact_count", T::Numeric),
    ("total_query_count", T::Numeric),
    ("total_received", T::Numeric),
    ("total_sent", T::Numeric),
    ("total_xact_time", T::Numeric),
    ("total_query_time", T::Numeric),
    ("total_wait_time", T::Numeric),
    ("avg_xact_count", T::Numeric),
    ("avg_query_count", T::Numeric),
    ("avg_recv", T::Numeric),
    ("avg_sent", T::Numeric),
    ("avg_xact_time", T::Numeric),
    ("avg_query_time", T::Numeric),
    ("avg_wait_time", T::Numeric),
];

/// SHOW STATS_TOTALS and SHOW STATS_AVERAGES columns, PgBouncer 1.18.
pub const STATS_PARTS: [(&str, T); 8] = [
    ("database", T::Text),
    ("xact_count", T::Numeric),
    ("query_count", T::Numeric),
    ("bytes_received", T::Numeric),
    ("bytes_sent", T::Numeric),
    ("xact_time", T::Numeric),
    ("query_time", T::Numeric),
    ("wait_time", T::Numeric),
];

/// SHOW DATABASES columns, PgBouncer 1.18.
pub const DATABASES: [(&str, T); 13] = [
    ("name", T::Text),
    ("host", T::Text),
    ("port", T::Int4),
    ("database", T::Text),
    ("force_user", T::Text),
    ("pool_size", T::Int4),
    ("min_pool_size", T::Int4),
    ("reserve_pool", T::Int4),
    ("pool_mode", T::Text),
    ("max_connections", T::Int4),
    ("current_connections", T::Int4),
    ("paused", T::Int4),
    ("disabled", T::Int4),
];

/// What one (node, database, user) pool holds right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSample {
    pub database: String,
    pub user: String,
    pub mode: PoolMode,
    pub idle: usize,
    /// Of `idle`: unused for server_check_delay, to be checked before use.
    pub due_check: usize,
    /// Leased to clients, or logging in, being checked or reset, or waiting for a cancel.
    pub in_use: usize,
    /// Of `in_use`: logging in, being checked or reset after a client, held
    /// back until a cancel aimed at it is done.
    pub logging_in: usize,
    pub testing: usize,
    pub being_canceled: usize,
}

/// What one client is doing right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSample {
    pub database: String,
    pub user: String,
    pub state: ClientState,
    /// When it entered `state`.
    pub since: Instant,
    /// The server connection it holds (address, server pid).
    pub server: Option<(SocketAddr, u32)>,
}

/// One database's traffic, summed over its users and nodes: totals since
/// start, and averages over the last completed `[admin] stats_period`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSample {
    pub totals: Figures,
    pub averages: Figures,
}

pub fn pool_mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

pub fn sample_pools(ctx: &Context) -> Vec<PoolSample> {
    let now = Instant::now();
    ctx.pools
        .all()
        .iter()
        .map(|pool| {
            let (logging_in, testing, being_canceled) = pool.in_transition();
            PoolSample {
                database: pool.key.database.clone(),
                user: pool.key.user.clone(),
                mode: pool.mode(),
                idle: pool.idle_count(),
                due_check: pool.idle_due_check(now),
                in_use: pool.in_use(),
                logging_in,
                testing,
                being_canceled,
            }
        })
        .collect()
}

pub fn sample_clients(ctx: &Context) -> Vec<ClientSample> {
    ctx.clients
        .snapshot()
        .iter()
        .map(|client| {
            let activity = client.activity();
            ClientSample {
                database: client.info.database.clone(),
                user: client.info.user.clone(),
                state: activity.state,
                since: activity.since,
                server: activity.server.map(|link| (link.addr, link.pid)),
            }
        })
        .collect()
}

/// SHOW POOLS: one row per (database, user) that has a pool or a client.
/// cl_active counts clients holding a server, cl_waiting those waiting for
/// one; sv_active counts leased connections, sv_idle idle ones and sv_used
/// those idle for server_check_delay (checked before their next lease),
/// sv_login those logging in, sv_tested those being checked or reset after a
/// client (PgBouncer's server_check_query and server_reset_query),
/// sv_being_canceled those held back until a cancel aimed at them is done;
/// cl_active_cancel_req and sv_active_cancel count
/// the cancels being forwarded (each on a connection of its own) to the
/// connection a client of the pool holds; maxwait (seconds) and maxwait_us
/// (the microseconds part) are the longest current wait. pgrelay never
/// queues a cancel: cl_waiting_cancel_req is 0.
pub fn pools_table(
    pools: &[PoolSample],
    clients: &[ClientSample],
    cancels: &[(SocketAddr, u32)],
    default_mode: PoolMode,
    now: Instant,
) -> Table {
    #[derive(Default)]
    struct Row {
        active: usize,
        waiting: usize,
        sv_active: usize,
        sv_idle: usize,
        sv_used: usize,
        sv_login: usize,
        sv_tested: usize,
        sv_being_canceled: usize,
        cancels: usize,
        max_wait: Duration,
        mode: Option<PoolMode>,
    }
    let mut rows: BTreeMap<(&str, &str), Row> = BTreeMap::new();
    for pool in pools {
        let row = rows.entry((&pool.database, &pool.user)).or_default();
        let transitions = pool.logging_in + pool.testing + pool.being_canceled;
        row.sv_active += pool.in_use.saturating_sub(transitions);
        row.sv_idle += pool.idle.saturating_sub(pool.due_check);
        row.sv_used += pool.due_check;
        row.sv_login += pool.logging_in;
        row.sv_tested += pool.testing;
        row.sv_being_canceled += pool.being_canceled;
        row.mode = Some(pool.mode);
    }
    for client in clients {
        let row = rows.entry((&client.database, &client.user)).or_default();
        if let Some(server) = client.server {
            row.cancels += cancels.iter().filter(|c| **c == server).count();
        }
        match client.state {
            ClientState::Idle => {}
            ClientState::Active => row.active += 1,
            ClientState::Waiting => {
                row.waiting += 1;
                row.max_wait = row.max_wait.max(now.saturating_duration_since(client.since));
            }
        }
    }
    let mut table = Table::new(&POOLS);
    for ((database, user), row) in rows {
        table.push(vec![
            text(database),
            text(user),
            num(row.active),
            num(row.waiting),
            num(row.cancels),
            num(0),
            num(row.sv_active),
            num(row.cancels),
            num(row.sv_being_canceled),
            num(row.sv_idle),
            num(row.sv_used),
            num(row.sv_tested),
            num(row.sv_login),
            num(row.max_wait.as_secs()),
            num(row.max_wait.subsec_micros()),
            text(pool_mode_name(row.mode.unwrap_or(default_mode))),
        ]);
    }
    table
}

/// Every database's figures, from the metrics: totals since start (which
/// include pools a failover or reload has since closed, so a total never
/// drops) and the last completed period's averages (zeros until one has
/// completed, and for a database idle all period).
pub fn sample_stats(ctx: &Context) -> BTreeMap<String, StatsSample> {
    let averages = ctx.metrics.stats_averages();
    ctx.metrics
        .database_totals()
        .into_iter()
        .map(|(database, totals)| {
            let averages = averages.get(&database).copied().unwrap_or_default();
            (database, StatsSample { totals, averages })
        })
        .collect()
}

/// SHOW STATS: per database, the totals since start, then the averages
/// (see `metrics::periods` for their units).
pub fn stats_table(stats: &BTreeMap<String, StatsSample>) -> Table {
    let mut table = Table::new(&STATS);
    for (database, s) in stats {
        let mut row = vec![text(database.as_str())];
        row.extend(figures(&s.totals));
        row.extend(figures(&s.averages));
        table.push(row);
    }
    table
}

/// SHOW STATS_TOTALS: the totals of SHOW STATS.
pub fn stats_totals_table(stats: &BTreeMap<String, StatsSample>) -> Table {
    figures_table(stats, |s| &s.totals)
}

/// SHOW STATS_AVERAGES: the averages of SHOW STATS.
pub fn stats_averages_table(stats: &BTreeMap<String, StatsSample>) -> Table {
    figures_table(stats, |s| &s.averages)
}

fn figures_table(stats: &BTreeMap<String, StatsSample>, part: fn(&StatsSample) -> &Figures) -> Table {
    let mut table = Table::new(&STATS_PARTS);
    for (database, s) in stats {
        let mut row = vec![text(database.as_str())];
        row.extend(figures(part(s)));
        table.push(row);
    }
    table
}

/// A row's seven figures, in PgBouncer's column order.
fn figures(f: &Figures) -> [Value; 7] {
    [
        num(f.xact_count),
        num(f.query_count),
        num(f.bytes_received),
        num(f.bytes_sent),
        num(f.xact_time),
        num(f.query_time),
        num(f.wait_time),
    ]
}

/// SHOW DATABASES: one row per configured database; host and port are the
/// current primary's (NULL while there is none); current_connections counts
/// the server connections of every node; paused is pgrelay's PAUSE.
pub fn databases_table(ctx: &Context, pools: &[PoolSample]) -> Table {
    let config = ctx.config();
    let topology = ctx.cluster.load();
    let primary = topology.primary.and_then(|i| topology.nodes.get(i));
    let paused = i32::from(ctx.lifecycle.is_paused());
    let mut table = Table::new(&DATABASES);
    for database in &config.databases {
        let connections: usize = pools.iter().filter(|p| p.database == database.name).map(|p| p.idle + p.in_use).sum();
        let pool_size = database.pool_size.unwrap_or(config.pool.default_pool_size);
        let pool_mode = database.pool_mode.unwrap_or(config.pool.mode);
        table.push(vec![
            text(database.name.as_str()),
            primary.map(|node| node.host.clone()),
            primary.map(|node| node.port.to_string()),
            text(database.server_dbname.as_str()),
            None,
            num(pool_size),
            num(config.pool.min_pool_size.min(pool_size.get())),
            num(config.pool.reserve_pool_size),
            text(pool_mode_name(pool_mode)),
            num(crate::app::cap_limit(&config, crate::pool::CapKind::Database, &database.name)),
            num(connections),
            num(paused),
            num(0),
        ]);
    }
    table
}

/// SHOW LISTS: PgBouncer's counts of its internal lists, as far as pgrelay has them.
pub fn lists_table(ctx: &Context, pools: &[PoolSample], clients: &[ClientSample]) -> Table {
    let config = ctx.config();
    let pairs: BTreeSet<(&str, &str)> = pools.iter().map(|p| (p.database.as_str(), p.user.as_str())).collect();
    let servers: usize = pools.iter().map(|p| p.idle + p.in_use).sum();
    let counts = [
        ("databases", config.databases.len()),
        ("users", config.users.len()),
        ("pools", pairs.len()),
        ("free_clients", ctx.client_slots.available_permits()),
        ("used_clients", clients.len()),
        ("login_clients", ctx.pre_auth.logging_in()),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    let mut table = Table::new(&[("list", T::Text), ("items", T::Int4)]);
    for (list, items) in counts {
        table.push(vec![text(list), num(items)]);
    }
    table
}

/// SHOW USERS: the configured users, and the pool mode of their own (NULL: none).
pub fn users_table(ctx: &Context) -> Table {
    let mut table = Table::new(&[("name", T::Text), ("pool_mode", T::Text)]);
    for user in &ctx.config().users {
        table.push(vec![text(user.name.as_str()), user.pool_mode.map(|mode| pool_mode_name(mode).to_owned())]);
    }
    table
}

/// SHOW VERSION.
pub fn version_table() -> Table {
    let mut table = Table::new(&[("version", T::Text)]);
    table.push(vec![text(format!("pgrelay {}", env!("CARGO_PKG_VERSION")))]);
    table
}
