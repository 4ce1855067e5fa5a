//! `source = "postgres"` and `"patroni"`: one monitor task per node polls
//! the node over its own small tokio-postgres connection (never a pooled
//! one, so a saturated pool cannot blind it), with Patroni one more task
//! polls `GET /cluster`, and one coordinator task folds their reports into
//! [`ClusterState`] and publishes each new [`Topology`] to the
//! [`ClusterView`]. When the primary moves, the coordinator calls the
//! fencing hook with the old primary's name after publishing the new view.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::decide::{ClusterState, Fencer, Hysteresis, LagLimits, Observation, Probe, Standby};
use super::patroni::{self, PatroniView};
use super::{ClusterView, StandbyPositions, SyncState, Topology};
use crate::config::{connect_tokio_postgres, Config, Source};

/// What a monitor asks each node. LSNs as byte positions (`lsn - '0/0'`),
/// timestamps as microseconds since the epoch, so no date types are needed.
/// The standbys streaming from the node come as one JSON array, so the list
/// is one consistent read of `pg_stat_replication` (its sync_state and
/// positions are NULL to a user without pg_read_all_stats: such standbys
/// read as unknown).
const CHECK_SQL: &str = "select pg_is_in_recovery(), \
     (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end - '0/0'::pg_lsn)::int8, \
     (extract(epoch from pg_last_xact_replay_timestamp()) * 1000000)::int8, \
     (extract(epoch from now()) * 1000000)::int8, \
     (select coalesce(json_agg(json_build_array(application_name, sync_state, \
         (write_lsn - '0/0'::pg_lsn)::int8, (flush_lsn - '0/0'::pg_lsn)::int8, (replay_lsn - '0/0'::pg_lsn)::int8)), '[]') \
         from pg_stat_replication)::text, \
     current_setting('synchronous_standby_names')";

/// The database the monitors log in to.
const MONITOR_DATABASE: &str = "postgres";

/// Called with a node's name when its server connections must be closed.
pub type FenceHook = Box<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no answer within check_timeout ({0:?})")]
    Timeout(Duration),
    #[error("negative WAL position")]
    BadLsn,
    #[error("unexpected pg_stat_replication list: {0}")]
    Standbys(#[from] serde_json::Error),
}

/// What the pollers tell the coordinator.
#[derive(Debug)]
enum Report {
    Node(usize, Observation),
    Patroni(Result<PatroniView, String>),
}

/// How one monitor reaches its node.
#[derive(Clone)]
struct MonitorTarget {
    index: usize,
    name: String,
    connect: tokio_postgres::Config,
    /// `server_tls_*`'s rustls settings; `None` with `disable`.
    tls: Option<MakeRustlsConnect>,
    interval: Duration,
    timeout: Duration,
}

/// Which monitors these are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// The first, at start-up: the view knows nothing yet, so each report is published.
    First,
    /// After a reload: the view holds what the previous monitors knew (with
    /// `primary`, to fence if it moves), and is only replaced once every
    /// node has been checked again, or after two check_timeouts.
    Reloaded { primary: Option<usize> },
}

/// Starts the monitors and the coordinator on `tasks`; `shutdown` stops
/// them. The receiver fires once every node has been checked at least once.
pub fn start(
    config: &Config,
    view: Arc<ClusterView>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    fence: FenceHook,
    generation: Generation,
) -> oneshot::Receiver<()> {
    let (reports, inbox) = mpsc::channel(config.nodes.len() * 4 + 4);
    for (index, node) in config.nodes.iter().enumerate() {
        let mut connect = tokio_postgres::Config::new();
        connect
            .host(&node.host)
            .port(node.port)
            .user(&config.cluster.user)
            .dbname(MONITOR_DATABASE)
            .application_name("pgrelay-monitor")
            .connect_timeout(config.cluster.check_timeout);
        if !config.cluster.password.is_empty() {
            connect.password(&config.cluster.password);
        }
        let tls = config.tls.server.tokio_postgres(&mut connect);
        let target = MonitorTarget {
            index,
            name: node.name.clone(),
            connect,
            tls,
            interval: config.cluster.check_interval,
            timeout: config.cluster.check_timeout,
        };
        let span = tracing::info_span!("monitor", node = %node.name);
        let task = monitor_node(target, reports.clone(), shutdown.clone(), tasks.clone());
        tasks.spawn(task.instrument(span));
    }
    if config.cluster.source == Source::Patroni {
        let poller = poll_patroni(config, reports, shutdown.clone());
        tasks.spawn(poller.instrument(tracing::info_span!("patroni-poller")));
    }
    let names = config.nodes.iter().map(|n| n.name.clone()).collect();
    let hysteresis =
        Hysteresis { leave_after: config.cluster.leave_after_checks, rejoin_after: config.cluster.rejoin_after_checks };
    let limits = LagLimits { bytes: config.routing.max_replica_lag_bytes, time: config.routing.max_replica_lag };
    let mut state = ClusterState::new(names, hysteresis, limits);
    if config.cluster.source == Source::Patroni {
        state = state.with_patroni();
    }
    let (ready, ready_rx) = oneshot::channel();
    let (fencer, hold_until) = match generation {
        Generation::First => (Fencer::default(), None),
        Generation::Reloaded { primary } => {
            (Fencer::remembering(primary), Some(tokio::time::Instant::now() + config.cluster.check_timeout * 2))
        }
    };
    let coordinator = Coordinator { state, view, fence, fencer, ready: Some(ready), hold_until };
    tasks.spawn(coordinator.run(inbox, shutdown).instrument(tracing::info_span!("topology-coordinator")));
    ready_rx
}

/// Polls one node every check_interval until shutdown.
async fn monitor_node(
    target: MonitorTarget,
    reports: mpsc::Sender<Report>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ticker = tokio::time::interval(target.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let checked = tokio::time::timeout(target.timeout, check(&target, &mut client, &tasks)).await;
        let observation = match checked.unwrap_or(Err(CheckError::Timeout(target.timeout))) {
            Ok(probe) => Observation::Up(probe),
            Err(e) => {
                // Reconnect on the next check: the connection may be half dead.
                client = None;
                tracing::debug!(error = %e, "check failed");
                Observation::Unreachable(e.to_string())
            }
        };
        if reports.send(Report::Node(target.index, observation)).await.is_err() {
            return;
        }
    }
}

/// Asks Patroni for `/cluster` every check_interval until shutdown.
fn poll_patroni(
    config: &Config,
    reports: mpsc::Sender<Report>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let urls: Vec<String> = config.nodes.iter().filter_map(|n| n.patroni.clone()).collect();
    let nodes: Vec<(String, String, u16)> =
        config.nodes.iter().map(|n| (n.name.clone(), n.host.clone(), n.port)).collect();
    let (interval, timeout) = (config.cluster.check_interval, config.cluster.check_timeout);
    async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let answer = ask_patroni(&urls, &nodes, timeout).await;
            if let Err(why) = &answer {
                tracing::debug!(error = %why, "no member's REST API answered");
            }
            if reports.send(Report::Patroni(answer)).await.is_err() {
                return;
            }
        }
    }
}

/// The first member whose REST API answers decides; the errors of all otherwise.
async fn ask_patroni(
    urls: &[String],
    nodes: &[(String, String, u16)],
    timeout: Duration,
) -> Result<PatroniView, String> {
    let mut errors = Vec::new();
    for url in urls {
        match patroni::fetch_cluster(url, timeout).await.and_then(|body| patroni::parse_cluster(&body, nodes)) {
            Ok(view) => return Ok(view),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!("Patroni REST API: {}", errors.join("; ")))
}

/// One check, connecting first when there is no connection.
async fn check(
    target: &MonitorTarget,
    client: &mut Option<tokio_postgres::Client>,
    tasks: &TaskTracker,
) -> Result<Probe, CheckError> {
    let live = match client.take() {
        Some(live) if !live.is_closed() => live,
        _ => {
            let span = tracing::debug_span!("monitor-connection", node = %target.name);
            // The connection task ends when the client is dropped or the server goes away.
            let (live, connection) = connect_tokio_postgres(&target.connect, target.tls.as_ref()).await?;
            tasks.spawn(connection.instrument(span));
            live
        }
    };
    let row = live.query_one(CHECK_SQL, &[]).await?;
    // Kept only after a successful query; a cancelled check reconnects.
    *client = Some(live);
    let lsn: Option<i64> = row.try_get(1)?;
    type Row = (Option<String>, Option<String>, Option<u64>, Option<u64>, Option<u64>);
    let standbys: Vec<Row> = serde_json::from_str(row.try_get(4)?)?;
    Ok(Probe {
        in_recovery: row.try_get(0)?,
        wal_lsn: lsn.map(u64::try_from).transpose().map_err(|_| CheckError::BadLsn)?,
        replay_micros: row.try_get(2)?,
        now_micros: row.try_get(3)?,
        standbys: standbys
            .into_iter()
            .filter_map(|(name, state, write_lsn, flush_lsn, replay_lsn)| {
                Some(Standby {
                    application_name: name?,
                    sync_state: SyncState::parse(state.as_deref().unwrap_or("")),
                    positions: StandbyPositions { write_lsn, flush_lsn, replay_lsn },
                })
            })
            .collect(),
        synchronous_standby_names: row.try_get(5)?,
    })
}

/// Folds observations into the state and publishes what changed.
struct Coordinator {
    state: ClusterState,
    view: Arc<ClusterView>,
    fence: FenceHook,
    fencer: Fencer,
    ready: Option<oneshot::Sender<()>>,
    /// Publish nothing before every node was checked, or until then.
    hold_until: Option<tokio::time::Instant>,
}

impl Coordinator {
    async fn run(mut self, mut inbox: mpsc::Receiver<Report>, shutdown: CancellationToken) {
        loop {
            let report = tokio::select! {
                _ = shutdown.cancelled() => return,
                received = inbox.recv() => match received {
                    Some(received) => received,
                    None => return,
                },
            };
            match report {
                Report::Node(node, observation) => {
                    // A node out of recovery answered: if it is the primary, its latest sign of life.
                    if matches!(&observation, Observation::Up(probe) if !probe.in_recovery) {
                        if let Some(status) = self.view.load().nodes.get(node) {
                            self.view.primary_checked(&status.name);
                        }
                    }
                    self.state.observe(node, observation)
                }
                Report::Patroni(answer) => self.state.observe_patroni(answer),
            }
            if let Some(until) = self.hold_until {
                if !self.state.all_checked() && tokio::time::Instant::now() < until {
                    continue;
                }
                self.hold_until = None;
            }
            let current = self.view.load();
            let next = self.state.topology(&current.nodes);
            if next != *current {
                self.publish(&current, next);
            }
            if self.state.all_checked() {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
            }
        }
    }

    /// Swaps the new view in first, so no new transaction goes to the old
    /// primary, then fences the old primary's connections.
    fn publish(&mut self, current: &Topology, next: Topology) {
        if !current.routes_like(&next) {
            log_change(&next);
        }
        let fenced = self.fencer.update(&next).map(|i| next.nodes[i].name.clone());
        self.view.store(next);
        if let Some(name) = fenced {
            tracing::warn!(node = %name, "closing server connections of the former primary");
            (self.fence)(&name);
        }
    }
}

fn log_change(topology: &Topology) {
    let primary = topology.primary.map(|p| topology.nodes[p].name.as_str());
    let read_set: Vec<&str> = topology.read_set.iter().map(|&i| topology.nodes[i].name.as_str()).collect();
    match (&topology.no_primary_reason, topology.split_brain) {
        (Some(why), true) => tracing::error!(reason = %why, "split brain: refusing writes"),
        (Some(why), false) => tracing::warn!(reason = %why, ?read_set, "no primary"),
        (None, _) => {
            let excluded = topology.excluded_replicas();
            tracing::info!(primary, ?read_set, excluded = excluded.as_deref().unwrap_or("none"), "topology changed")
        }
    }
}
