//! The cluster as pgrelay sees it: nodes, their roles and health, held as one
//! immutable [`Topology`] snapshot that sessions read without locks and that
//! a source of truth replaces as a whole. With `source = "static"` the
//! snapshot is built once from the config; with `source = "postgres"` the
//! monitors (`monitor`) poll every node and the pure decisions (`decide`)
//! turn their observations into a new snapshot; with `source = "patroni"`
//! Patroni's leader key (`patroni`) decides the primary on top of that.

pub mod decide;
pub mod failover;
pub mod monitor;
pub mod patroni;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, Role};
use failover::{FailoverClock, Stamp};

/// One node's address and what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The configured (static) or observed role; `None` while unknown or unreachable.
    pub role: Option<Role>,
    /// How far behind the primary this replica's replay is, when measured.
    pub lag_bytes: Option<u64>,
    /// Same in time; only counted while the LSNs differ.
    pub lag: Option<Duration>,
    /// The WAL position the last check saw: replayed on a replica, written
    /// on the primary (a replica's only grows, so it is a lower bound of now).
    pub wal_lsn: Option<u64>,
    /// Why a node that is not the primary is not in the read set.
    pub excluded: Option<String>,
    /// The name the primary lists this standby under (`[[nodes]] application_name`).
    pub application_name: String,
    /// This standby's `sync_state` on the primary.
    pub sync_state: SyncState,
    /// This standby's positions in the primary's `pg_stat_replication`.
    pub streamed: Option<StandbyPositions>,
}

/// A standby's WAL positions as its primary's `pg_stat_replication` shows
/// them (`write_lsn`, `flush_lsn`, `replay_lsn`): what the standby last
/// reported, so at most `wal_receiver_status_interval` old when it is idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StandbyPositions {
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

impl NodeStatus {
    fn from_config(node: &crate::config::Node) -> NodeStatus {
        NodeStatus {
            name: node.name.clone(),
            host: node.host.clone(),
            port: node.port,
            role: node.role,
            lag_bytes: None,
            lag: None,
            wal_lsn: None,
            excluded: None,
            application_name: node.application_name.clone(),
            sync_state: SyncState::Unknown,
            streamed: None,
        }
    }
}

/// A standby's `pg_stat_replication.sync_state` as the primary reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// A synchronous standby (`FIRST n` or a plain list in `synchronous_standby_names`).
    Sync,
    /// A candidate of `ANY n (...)`: a commit waits for n of them.
    Quorum,
    /// Listed, and would become synchronous if a synchronous one left.
    Potential,
    Async,
    /// Not listed by the primary (not streaming, no primary known, the
    /// monitor user may not read it), or the node is the primary.
    Unknown,
}

impl SyncState {
    pub fn parse(text: &str) -> SyncState {
        match text {
            "sync" => SyncState::Sync,
            "quorum" => SyncState::Quorum,
            "potential" => SyncState::Potential,
            "async" => SyncState::Async,
            _ => SyncState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Sync => "sync",
            SyncState::Quorum => "quorum",
            SyncState::Potential => "potential",
            SyncState::Async => "async",
            SyncState::Unknown => "unknown",
        }
    }

    /// How synchronous: 4 sync, 3 quorum, 2 potential, 1 async, 0 unknown.
    pub fn rank(self) -> u8 {
        match self {
            SyncState::Sync => 4,
            SyncState::Quorum => 3,
            SyncState::Potential => 2,
            SyncState::Async => 1,
            SyncState::Unknown => 0,
        }
    }

    /// A commit on the primary waits for this standby (alone or in a quorum).
    pub fn is_synchronous(self) -> bool {
        matches!(self, SyncState::Sync | SyncState::Quorum)
    }

    /// A commit on the primary does not wait for this standby now.
    pub fn is_asynchronous(self) -> bool {
        matches!(self, SyncState::Async | SyncState::Potential)
    }
}

/// A consistent view of the whole cluster at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub nodes: Vec<NodeStatus>,
    /// Index into `nodes` of the node that takes writes, if one is known.
    pub primary: Option<usize>,
    /// Indexes of the replicas that may serve reads, in node order.
    pub read_set: Vec<usize>,
    /// Why there is no primary, when there is none.
    pub no_primary_reason: Option<String>,
    /// Two or more nodes claim to be the primary: writes are refused, not delayed.
    pub split_brain: bool,
    /// The primary's `synchronous_standby_names`, once it has been checked.
    pub synchronous_standby_names: Option<String>,
}

impl Topology {
    /// The topology a static configuration describes: roles as written.
    pub fn from_static(config: &Config) -> Topology {
        let nodes: Vec<NodeStatus> = config.nodes.iter().map(NodeStatus::from_config).collect();
        let primary = nodes.iter().position(|n| n.role == Some(Role::Primary));
        let read_set = (0..nodes.len()).filter(|&i| nodes[i].role == Some(Role::Replica)).collect();
        let no_primary_reason = primary.is_none().then(|| "no node has role = \"primary\"".to_owned());
        Topology { nodes, primary, read_set, no_primary_reason, split_brain: false, synchronous_standby_names: None }
    }

    /// The topology before any monitor has reported: nothing is known yet.
    pub fn unchecked(config: &Config) -> Topology {
        let mut nodes: Vec<NodeStatus> = config.nodes.iter().map(NodeStatus::from_config).collect();
        for node in &mut nodes {
            node.role = None;
            node.excluded = Some("not checked yet".to_owned());
        }
        Topology {
            nodes,
            primary: None,
            read_set: Vec::new(),
            no_primary_reason: Some("no node has been checked yet".to_owned()),
            split_brain: false,
            synchronous_standby_names: None,
        }
    }

    /// This snapshot on a reloaded node list: a node that kept its name and
    /// address keeps what is known about it, a new one starts unchecked.
    pub fn rebased(&self, nodes: &[crate::config::Node]) -> Topology {
        let mut primary = None;
        let statuses: Vec<NodeStatus> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let known =
                    self.nodes.iter().position(|n| n.name == node.name && n.host == node.host && n.port == node.port);
                match known {
                    Some(old) => {
                        if self.primary == Some(old) {
                            primary = Some(i);
                        }
                        NodeStatus { application_name: node.application_name.clone(), ..self.nodes[old].clone() }
                    }
                    None => NodeStatus {
                        role: None,
                        excluded: Some("not checked yet".to_owned()),
                        ..NodeStatus::from_config(node)
                    },
                }
            })
            .collect();
        let read_set = (0..statuses.len()).filter(|&i| statuses[i].excluded.is_none() && Some(i) != primary).collect();
        let no_primary_reason = match primary {
            Some(_) => None,
            None => {
                Some(self.no_primary_reason.clone().unwrap_or_else(|| "the primary left the configuration".to_owned()))
            }
        };
        Topology {
            nodes: statuses,
            primary,
            read_set,
            no_primary_reason,
            split_brain: self.split_brain && primary.is_none(),
            synchronous_standby_names: primary.and(self.synchronous_standby_names.clone()),
        }
    }

    /// Whether routing would decide differently between the two snapshots
    /// (lag figures alone do not count; sync states do, for `prefer`).
    pub fn routes_like(&self, other: &Topology) -> bool {
        self.primary == other.primary
            && self.read_set == other.read_set
            && self.no_primary_reason == other.no_primary_reason
            && self.split_brain == other.split_brain
            && self.nodes.iter().zip(&other.nodes).all(|(a, b)| a.role == b.role && a.sync_state == b.sync_state)
    }

    /// Why no replica may serve reads: one clause per node that is not the primary.
    pub fn read_set_exclusions(&self) -> String {
        self.excluded_replicas().unwrap_or_else(|| "no replica is in the read set".to_owned())
    }

    /// The nodes other than the primary kept out of reads, each with its
    /// reason; `None` when none is.
    pub fn excluded_replicas(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.primary)
            .filter_map(|(_, n)| n.excluded.as_ref().map(|why| format!("{}: {why}", n.name)))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

#[cfg(test)]
impl Topology {
    /// Nodes pg0, pg1, ... on ports 6000 and up with `roles`, nothing else known.
    pub(crate) fn with_roles(roles: &[Option<Role>], primary: Option<usize>, read_set: &[usize]) -> Topology {
        let nodes = roles
            .iter()
            .enumerate()
            .map(|(i, role)| NodeStatus {
                name: format!("pg{i}"),
                host: "127.0.0.1".into(),
                port: 6000 + i as u16,
                role: *role,
                lag_bytes: None,
                lag: None,
                wal_lsn: None,
                excluded: None,
                application_name: format!("pg{i}"),
                sync_state: SyncState::Unknown,
                streamed: None,
            })
            .collect();
        Topology {
            nodes,
            primary,
            read_set: read_set.to_vec(),
            no_primary_reason: primary.is_none().then(|| "down".into()),
            split_brain: false,
            synchronous_standby_names: None,
        }
    }
}

/// What [`ClusterView::wait_for`] does after a snapshot did not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait<E> {
    /// Wait for the next change (e.g. no primary is known yet).
    Retry(E),
    /// Give up now (e.g. a split brain).
    Fail(E),
}

/// The shared, atomically replaced topology snapshot, plus a change signal
/// that sessions waiting for a primary can await.
#[derive(Debug)]
pub struct ClusterView {
    current: ArcSwap<Topology>,
    /// Advances whenever routing would decide differently.
    changes: watch::Sender<u64>,
    /// The last primary seen, by name.
    last_primary: Mutex<Option<String>>,
    /// Times the primary was another node than the last one seen (a
    /// primary that comes back after an outage is no change).
    primary_changes: AtomicU64,
    /// Periods without a writable primary, and failovers.
    failovers: Mutex<FailoverClock>,
    /// Mirrors the clock's `awaiting_first_write`, so a read-write checkout
    /// pays one atomic load for the "first write" hook.
    awaiting_first_write: AtomicBool,
}

impl ClusterView {
    pub fn new(initial: Topology) -> ClusterView {
        // The first primary the monitors confirm is no change, whatever the
        // configuration said before they looked.
        ClusterView {
            current: ArcSwap::from_pointee(initial),
            changes: watch::Sender::new(0),
            last_primary: Mutex::new(None),
            primary_changes: AtomicU64::new(0),
            failovers: Mutex::default(),
            awaiting_first_write: AtomicBool::new(false),
        }
    }

    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// The current primary, without taking a reference to the snapshot.
    pub fn primary(&self) -> Option<usize> {
        self.current.load().primary
    }

    /// Times the primary changed to another node since pgrelay started.
    pub fn primary_changes(&self) -> u64 {
        self.primary_changes.load(Ordering::Relaxed)
    }

    /// Replaces the snapshot; wakes subscribers when routing changed.
    pub fn store(&self, topology: Topology) {
        let routing_changed = !self.current.load().routes_like(&topology);
        if let Some(primary) = topology.primary.map(|p| &topology.nodes[p].name) {
            let mut last = self.last_primary.lock().expect("last primary");
            if last.as_ref() != Some(primary) {
                if last.is_some() {
                    self.primary_changes.fetch_add(1, Ordering::Relaxed);
                }
                *last = Some(primary.clone());
            }
        }
        self.update_failovers(|clock| clock.on_topology(&topology, Stamp::now()));
        self.current.store(Arc::new(topology));
        if routing_changed {
            self.changes.send_modify(|version| *version += 1);
        }
    }

    /// Runs `update` on the failover clock, keeping the hook's flag in step.
    fn update_failovers<T>(&self, update: impl FnOnce(&mut FailoverClock) -> T) -> T {
        let mut clock = self.failovers.lock().expect("failover clock");
        let result = update(&mut clock);
        self.awaiting_first_write.store(clock.awaiting_first_write(), Ordering::Relaxed);
        result
    }

    /// The failover clock as of now, for the metrics and `/topology`.
    pub fn failovers(&self) -> FailoverClock {
        self.failovers.lock().expect("failover clock").clone()
    }

    /// A monitor's check found `node` out of recovery: the latest sign of the primary.
    pub fn primary_checked(&self, node: &str) {
        self.update_failovers(|clock| clock.on_primary_checked(node, Stamp::now()));
    }

    /// Whether a period without a writable primary is open: then a
    /// read-write transaction watches for its server's acceptance, to
    /// report it with [`ClusterView::first_write`]. One relaxed load.
    pub fn awaiting_first_write(&self) -> bool {
        self.awaiting_first_write.load(Ordering::Relaxed)
    }

    /// A transaction routed to `node` (an index into the current snapshot)
    /// was accepted by its server: ends the open period if `node` is the
    /// primary that took over.
    pub fn first_write(&self, node: usize) {
        let topology = self.load();
        if topology.primary != Some(node) {
            return;
        }
        let name = &topology.nodes[node].name;
        if self.update_failovers(|clock| clock.on_first_write(name, Stamp::now())) {
            tracing::info!(primary = %name, "first write accepted by the new primary: writes are available again");
        }
    }

    /// Applies `decide` to the current snapshot, and again after each routing
    /// change for as long as it answers [`Wait`], until `deadline`; then
    /// returns the last answer's error (with the reason of that moment).
    pub async fn wait_for<T, E>(
        &self,
        deadline: tokio::time::Instant,
        mut decide: impl FnMut(&Arc<Topology>) -> Result<T, Wait<E>>,
    ) -> Result<T, E> {
        // Subscribed before each load, so no change slips in between.
        let mut changes = self.subscribe();
        loop {
            match decide(&self.load()) {
                Ok(value) => return Ok(value),
                Err(Wait::Fail(e)) => return Err(e),
                Err(Wait::Retry(e)) => {
                    if !matches!(tokio::time::timeout_at(deadline, changes.changed()).await, Ok(Ok(()))) {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A receiver that sees every routing change made after this call;
    /// subscribe before `load` so no change can slip in between.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
