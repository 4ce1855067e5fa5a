//! Every Prometheus metric pgrelay exports, as one struct of typed handles
//! registered once at start-up. Hot paths hold handles resolved in advance
//! ([`PoolMetrics`] per pool, [`ClientMetrics`] per login); nothing is looked
//! up by name per message. Label values are bounded: node, database and user
//! come from the configuration, SQLSTATE classes are two characters.
//! Each pool's queries, transactions and waits are counted per worker
//! ([`traffic`]); SHOW STATS' averages are kept by [`periods`].

pub mod failovers;
pub mod periods;
pub mod traffic;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use periods::{Figures, Periods, Snapshot};
use traffic::{PoolTraffic, TrafficFamilies, TrafficTotals};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    clients: IntGaugeVec,
    clients_waiting: IntGaugeVec,
    client_logins: IntCounterVec,
    /// `client_logins` per [`LoginResult`], resolved on first use.
    logins_by_result: [OnceLock<IntCounter>; 4],
    /// Handles per (database, user, listener), resolved once: a login costs a
    /// short scan instead of four label lookups. Bounded by the configuration.
    clients_by_labels: Mutex<Vec<(String, String, &'static str, ClientMetrics)>>,
    client_bytes_received: IntCounterVec,
    client_bytes_sent: IntCounterVec,
    server_connections: IntGaugeVec,
    server_moves: IntCounterVec,
    /// Each pool's queries, transactions and waits.
    traffic: TrafficFamilies,
    /// The last completed `[admin] stats_period`, for SHOW STATS' averages.
    periods: Mutex<Periods>,
    errors: IntCounterVec,
    pinned_clients: IntCounterVec,
    client_timeouts: IntCounterVec,
    /// Statements pgrelay prepared on a server connection on a client's behalf.
    pub statements_reprepared: IntCounter,
    pub node_up: IntGaugeVec,
    pub node_is_primary: IntGaugeVec,
    pub node_in_read_set: IntGaugeVec,
    pub node_lag_bytes: IntGaugeVec,
    pub node_lag_seconds: prometheus::GaugeVec,
    /// Each replica's sync_state on the primary, as a number (see its help).
    pub node_sync_state: IntGaugeVec,
    pub primary_changes: IntCounter,
    /// Periods without a writable primary, and failovers by kind.
    pub failovers: failovers::FailoverMetrics,
    /// Reads routed on the ro listener, by node and [`ReadReason`].
    reads_routed: IntCounterVec,
    pub split_brain: IntGauge,
    pub config_reloads: IntCounterVec,
    /// `[auth]` user lookups by result: found, not_found, error, and
    /// throttled (refused by the rate or concurrency cap, no query run).
    pub auth_queries: IntCounterVec,
    /// 1 while PAUSE holds new transactions.
    pub paused: IntGauge,
    /// 1 from the start of a drain (SIGTERM, SIGINT, SHUTDOWN WAIT_FOR_*) on.
    pub draining: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

/// Registers each collector, failing only on a programming error (a name used twice).
macro_rules! register {
    ($registry:expr, $metric:expr) => {{
        let metric = $metric.expect("valid metric definition");
        $registry.register(Box::new(metric.clone())).expect("metric registered once");
        metric
    }};
}

const POOL: &[&str] = &["node", "database", "user"];
const CLIENT: &[&str] = &["database", "user"];

impl Metrics {
    /// Metrics for one worker (tests).
    pub fn new() -> Metrics {
        Metrics::with_workers(1)
    }

    /// Metrics whose per-pool traffic counters keep a shard per worker.
    pub fn with_workers(workers: usize) -> Metrics {
        let r = Registry::new();
        let traffic = TrafficFamilies::new(workers);
        r.register(Box::new(traffic.clone())).expect("metric registered once");
        Metrics {
            traffic,
            periods: Mutex::default(),
            clients: register!(
                r,
                IntGaugeVec::new(
                    opts("pgrelay_clients", "Client connections logged in."),
                    &["database", "user", "listener"]
                )
            ),
            clients_waiting: register!(
                r,
                IntGaugeVec::new(opts("pgrelay_clients_waiting", "Clients waiting for a server connection."), CLIENT)
            ),
            client_logins: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_client_logins_total",
                        "Client login attempts by result (ok, auth_failed, rejected, error)."
                    ),
                    &["result"]
                )
            ),
            client_bytes_received: register!(
                r,
                IntCounterVec::new(opts("pgrelay_client_bytes_received_total", "Bytes received from clients."), CLIENT)
            ),
            client_bytes_sent: register!(
                r,
                IntCounterVec::new(opts("pgrelay_client_bytes_sent_total", "Bytes sent to clients."), CLIENT)
            ),
            server_connections: register!(
                r,
                IntGaugeVec::new(
                    opts("pgrelay_server_connections", "Server connections by state (idle, active, pinned)."),
                    &["node", "database", "user", "state"]
                )
            ),
            server_moves: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_server_connection_moves_total",
                        "Idle server connections moved from one worker to another to be leased there ([pool] workers)."
                    ),
                    POOL
                )
            ),
            errors: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_errors_total",
                        "Errors sent to clients by SQLSTATE class and origin (server, pgrelay)."
                    ),
                    &["class", "origin"]
                )
            ),
            pinned_clients: register!(
                r,
                IntCounterVec::new(
                    opts("pgrelay_pinned_clients_total", "Clients pinned to a server connection by session state."),
                    &["reason"]
                )
            ),
            client_timeouts: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_client_timeouts_total",
                        "Client timeouts that ran out, by key and what pgrelay did (disconnect, cancel)."
                    ),
                    &["timeout", "action"]
                )
            ),
            statements_reprepared: register!(
                r,
                IntCounter::with_opts(opts(
                    "pgrelay_prepared_statements_reprepared_total",
                    "Statements prepared on a server connection for a client that prepared them on another."
                ))
            ),
            node_up: register!(
                r,
                IntGaugeVec::new(opts("pgrelay_node_up", "1 when the node answered its last check."), &["node"])
            ),
            node_is_primary: register!(
                r,
                IntGaugeVec::new(opts("pgrelay_node_is_primary", "1 for the node that takes writes."), &["node"])
            ),
            node_in_read_set: register!(
                r,
                IntGaugeVec::new(
                    opts("pgrelay_node_in_read_set", "1 when the node serves the read-only port."),
                    &["node"]
                )
            ),
            node_lag_bytes: register!(
                r,
                IntGaugeVec::new(opts("pgrelay_node_lag_bytes", "Replay lag behind the primary in bytes."), &["node"])
            ),
            node_lag_seconds: register!(
                r,
                prometheus::GaugeVec::new(
                    opts("pgrelay_node_lag_seconds", "Replay lag behind the primary in seconds (0 while caught up)."),
                    &["node"]
                )
            ),
            node_sync_state: register!(
                r,
                IntGaugeVec::new(
                    opts(
                        "pgrelay_node_sync_state",
                        "The replica's sync_state on the primary: 4 sync, 3 quorum, 2 potential, 1 async, 0 unknown \
                         (or the node is no replica)."
                    ),
                    &["node"]
                )
            ),
            primary_changes: register!(
                r,
                IntCounter::with_opts(opts("pgrelay_primary_changes_total", "Times the primary changed."))
            ),
            failovers: failovers::FailoverMetrics::register(
                &r,
                &crate::cluster::failover::FailoverKind::ALL.map(|kind| kind.as_str()),
            ),
            reads_routed: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_reads_routed_total",
                        "Transactions of the ro listener by the node that served them and why: replica, \
                         fallback_primary (no replica in the read set), read_your_writes_replica (known to have \
                         replayed the position asked for), read_your_writes_wait (caught up while waited for), \
                         read_your_writes_primary (none did within read_your_writes_wait)."
                    ),
                    &["node", "reason"]
                )
            ),
            split_brain: register!(
                r,
                IntGauge::with_opts(opts(
                    "pgrelay_split_brain",
                    "1 while more than one node claims to be the primary (writes refused)."
                ))
            ),
            config_reloads: register!(
                r,
                IntCounterVec::new(
                    opts("pgrelay_config_reloads_total", "Configuration reloads by result (ok, error)."),
                    &["result"]
                )
            ),
            auth_queries: register!(
                r,
                IntCounterVec::new(
                    opts(
                        "pgrelay_auth_query_total",
                        "User lookups with auth_query by result (found, not_found, error; throttled: refused \
                         without a query)."
                    ),
                    &["result"]
                )
            ),
            paused: register!(r, IntGauge::with_opts(opts("pgrelay_paused", "1 while PAUSE holds new transactions."))),
            draining: register!(
                r,
                IntGauge::with_opts(opts("pgrelay_draining", "1 while pgrelay drains before stopping."))
            ),
            logins_by_result: Default::default(),
            clients_by_labels: Mutex::default(),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    pub fn pool(&self, node: &str, database: &str, user: &str) -> PoolMetrics {
        let labels = [node, database, user];
        let state = |s: &str| self.server_connections.with_label_values(&[node, database, user, s]);
        PoolMetrics {
            idle: state("idle"),
            active: state("active"),
            pinned: state("pinned"),
            moves: self.server_moves.with_label_values(&labels),
            traffic: self.traffic.pool(node, database, user),
            reads: Arc::new(ReadCounters {
                node: node.to_owned(),
                family: self.reads_routed.clone(),
                by_reason: Default::default(),
            }),
        }
    }

    /// Each database's totals since start (SHOW STATS), summed over its
    /// users and nodes, from the series that exist: reading creates none.
    /// Pools a failover or reload has closed are included (their series
    /// stay), so a total never drops.
    pub fn database_totals(&self) -> BTreeMap<String, Figures> {
        let mut traffic: BTreeMap<String, TrafficTotals> = BTreeMap::new();
        for (labels, totals) in self.traffic.totals() {
            traffic.entry(labels.database).or_default().add(&totals);
        }
        let mut figures: BTreeMap<String, Figures> = traffic
            .into_iter()
            .map(|(database, t)| {
                let f = Figures {
                    xact_count: t.transactions.count,
                    query_count: t.queries.count,
                    xact_time: t.transactions.sum_us,
                    query_time: t.queries.sum_us,
                    wait_time: t.waits.sum_us,
                    ..Figures::default()
                };
                (database, f)
            })
            .collect();
        use prometheus::core::Collector;
        let mut add_bytes = |counters: &IntCounterVec, apply: fn(&mut Figures, u64)| {
            for family in counters.collect() {
                for metric in family.get_metric() {
                    if let Some(database) = metric.get_label().iter().find(|l| l.name() == "database") {
                        let entry = figures.entry(database.value().to_owned()).or_default();
                        apply(entry, metric.get_counter().get_value() as u64);
                    }
                }
            }
        };
        add_bytes(&self.client_bytes_received, |f, n| f.bytes_received += n);
        add_bytes(&self.client_bytes_sent, |f, n| f.bytes_sent += n);
        figures
    }

    /// Ends a `[admin] stats_period` now: SHOW STATS' averages are those of
    /// the period that ends here until the next one ends.
    pub fn close_stats_period(&self, now: Instant) {
        let snapshot = Snapshot { at: now, totals: self.database_totals() };
        self.periods.lock().expect("metrics lock").close(snapshot);
    }

    /// Each database's averages over the last completed stats_period.
    pub fn stats_averages(&self) -> BTreeMap<String, Figures> {
        self.periods.lock().expect("metrics lock").averages()
    }

    pub fn client(&self, database: &str, user: &str, listener: &'static str) -> ClientMetrics {
        let mut known = self.clients_by_labels.lock().expect("metrics lock");
        if let Some((.., metrics)) = known.iter().find(|(d, u, l, _)| d == database && u == user && *l == listener) {
            return metrics.clone();
        }
        let metrics = ClientMetrics {
            connected: self.clients.with_label_values(&[database, user, listener]),
            waiting: self.clients_waiting.with_label_values(&[database, user]),
            bytes_received: self.client_bytes_received.with_label_values(&[database, user]),
            bytes_sent: self.client_bytes_sent.with_label_values(&[database, user]),
        };
        known.push((database.to_owned(), user.to_owned(), listener, metrics.clone()));
        metrics
    }

    pub fn login(&self, result: LoginResult) {
        self.logins_by_result[result.index()]
            .get_or_init(|| self.client_logins.with_label_values(&[result.as_str()]))
            .inc();
    }

    /// Counts an error a client was sent; `sqlstate` is the five-character code.
    pub fn error(&self, sqlstate: &[u8], origin: ErrorOrigin) {
        let class = match sqlstate.get(..2) {
            Some(c) if c.iter().all(u8::is_ascii_alphanumeric) => std::str::from_utf8(c).unwrap_or("??"),
            _ => "??",
        };
        self.errors.with_label_values(&[class, origin.as_str()]).inc();
    }

    /// Sets the per-node gauges from a topology snapshot (done at scrape
    /// time, so the monitors need not know about metrics).
    pub fn observe_topology(&self, topology: &crate::cluster::Topology) {
        for (i, node) in topology.nodes.iter().enumerate() {
            let name = [node.name.as_str()];
            self.node_up.with_label_values(&name).set(i64::from(node.role.is_some()));
            self.node_is_primary.with_label_values(&name).set(i64::from(topology.primary == Some(i)));
            self.node_in_read_set.with_label_values(&name).set(i64::from(topology.read_set.contains(&i)));
            let lag_bytes = node.lag_bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX));
            self.node_lag_bytes.with_label_values(&name).set(lag_bytes);
            self.node_lag_seconds.with_label_values(&name).set(node.lag.map_or(0.0, |d| d.as_secs_f64()));
            let sync_state = match node.role {
                Some(crate::config::Role::Replica) => i64::from(node.sync_state.rank()),
                _ => 0,
            };
            self.node_sync_state.with_label_values(&name).set(sync_state);
        }
        self.split_brain.set(i64::from(topology.split_brain));
    }

    /// Brings `pgrelay_primary_changes_total` up to `changes` (the
    /// cluster view's count, read at scrape time).
    pub fn observe_primary_changes(&self, changes: u64) {
        let counted = self.primary_changes.get();
        if changes > counted {
            self.primary_changes.inc_by(changes - counted);
        }
    }

    pub fn pinned(&self, reason: &str) {
        self.pinned_clients.with_label_values(&[reason]).inc();
    }

    /// Counts a client timeout that ran out (rare: looked up by label each time).
    pub fn client_timeout(&self, timeout: ClientTimeout) {
        self.client_timeouts.with_label_values(&timeout.labels()).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    Ok,
    AuthFailed,
    Rejected,
    Error,
}

impl LoginResult {
    fn index(self) -> usize {
        match self {
            LoginResult::Ok => 0,
            LoginResult::AuthFailed => 1,
            LoginResult::Rejected => 2,
            LoginResult::Error => 3,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            LoginResult::Ok => "ok",
            LoginResult::AuthFailed => "auth_failed",
            LoginResult::Rejected => "rejected",
            LoginResult::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorOrigin {
    Server,
    Pgrelay,
}

impl ErrorOrigin {
    fn as_str(self) -> &'static str {
        match self {
            ErrorOrigin::Server => "server",
            ErrorOrigin::Pgrelay => "pgrelay",
        }
    }
}

/// A client timeout that ran out, and what was done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTimeout {
    ClientIdle,
    IdleTransaction,
    /// query_timeout: the query was cancelled on the server.
    QueryCancelled,
    /// query_timeout: the cancelled query did not end, and its connection was closed.
    QueryClosed,
}

impl ClientTimeout {
    fn labels(self) -> [&'static str; 2] {
        match self {
            ClientTimeout::ClientIdle => ["client_idle_timeout", "disconnect"],
            ClientTimeout::IdleTransaction => ["idle_transaction_timeout", "disconnect"],
            ClientTimeout::QueryCancelled => ["query_timeout", "cancel"],
            ClientTimeout::QueryClosed => ["query_timeout", "disconnect"],
        }
    }
}

/// One pool's handles.
#[derive(Debug, Clone)]
pub struct PoolMetrics {
    pub idle: IntGauge,
    pub active: IntGauge,
    pub pinned: IntGauge,
    /// Idle server connections moved to another worker to be leased there.
    pub moves: IntCounter,
    /// Queries, transactions and waits for a server connection.
    pub traffic: Arc<PoolTraffic>,
    /// `pgrelay_reads_routed_total` of this pool's node.
    pub reads: Arc<ReadCounters>,
}

/// Why a read of the ro listener went where it went (`pgrelay_reads_routed_total`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadReason {
    /// A replica of the read set, no WAL position asked for.
    Replica,
    /// No replica in the read set: the primary, under `ro_fallback = "primary"`.
    FallbackPrimary,
    /// A replica the monitors saw at or past the position the read must see.
    ReadYourWritesReplica,
    /// A replica asked directly until it replayed that far.
    ReadYourWritesWait,
    /// The primary: no replica replayed that far within read_your_writes_wait.
    ReadYourWritesPrimary,
}

impl ReadReason {
    const ALL: [ReadReason; 5] = [
        ReadReason::Replica,
        ReadReason::FallbackPrimary,
        ReadReason::ReadYourWritesReplica,
        ReadReason::ReadYourWritesWait,
        ReadReason::ReadYourWritesPrimary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadReason::Replica => "replica",
            ReadReason::FallbackPrimary => "fallback_primary",
            ReadReason::ReadYourWritesReplica => "read_your_writes_replica",
            ReadReason::ReadYourWritesWait => "read_your_writes_wait",
            ReadReason::ReadYourWritesPrimary => "read_your_writes_primary",
        }
    }
}

/// One node's `pgrelay_reads_routed_total` series, resolved on first use
/// (a node that serves no read has none).
#[derive(Debug)]
pub struct ReadCounters {
    node: String,
    family: IntCounterVec,
    by_reason: [OnceLock<IntCounter>; ReadReason::ALL.len()],
}

impl ReadCounters {
    pub fn routed(&self, reason: ReadReason) -> &IntCounter {
        let slot = ReadReason::ALL.iter().position(|r| *r == reason).expect("every reason is listed");
        self.by_reason[slot].get_or_init(|| self.family.with_label_values(&[&self.node, reason.as_str()]))
    }
}

/// Holds a gauge up by one while it lives.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn new(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One logged-in client's handles.
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    pub connected: IntGauge,
    pub waiting: IntGauge,
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_bounded_labels() {
        let metrics = Metrics::new();
        let pool = metrics.pool("pg0", "app", "alice");
        pool.moves.inc_by(3);
        pool.traffic.wait(std::time::Duration::from_millis(2));
        metrics.error(b"28P01", ErrorOrigin::Pgrelay);
        metrics.error(b"\xff\xff000", ErrorOrigin::Server);
        metrics.login(LoginResult::AuthFailed);
        let text = metrics.render();
        assert!(text.contains(r#"pgrelay_server_connection_moves_total{database="app",node="pg0",user="alice"} 3"#));
        assert!(text.contains(r#"pgrelay_checkout_wait_seconds_count{database="app",node="pg0",user="alice"} 1"#));
        assert!(text.contains(r#"pgrelay_errors_total{class="28",origin="pgrelay"} 1"#));
        assert!(text.contains(r#"pgrelay_errors_total{class="??",origin="server"} 1"#));
        assert!(text.contains(r#"pgrelay_client_logins_total{result="auth_failed"} 1"#));
    }
}
