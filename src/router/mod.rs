//! Routing decisions as pure functions: which node runs the next
//! transaction, given the listener, the policy and a topology snapshot; and
//! (`sql`) what a client's SQL leaves on the server connection it runs on.

mod sql;
#[cfg(test)]
mod tests;

pub use sql::tracked_set;
pub use sql::{
    classify, format_lsn, parse_lsn, pgrelay_command, prepared_command, session_state_effect, Opaque, PgrelayCommand,
    PreparedCommand, SessionStateEffect, SqlEffects,
};

use crate::cluster::{NodeStatus, Topology};
use crate::config::{Prefer, RoFallback};

/// Which port the client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    ReadWrite,
    ReadOnly,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::ReadWrite => "rw",
            ListenerKind::ReadOnly => "ro",
        }
    }
}

/// What the router needs to know about the request.
#[derive(Clone, Copy)]
pub struct RouteInput<'a> {
    pub listener: ListenerKind,
    /// Where a read starts looking among the replicas: each client keeps its
    /// own turn (from a random start, advanced per read it routes), so one
    /// client's reads take the replicas in turn and nothing another client
    /// does, on either port, moves it.
    pub turn: usize,
    /// Transactions in progress on a node for this client's pool (0 when
    /// not known): a read goes to the least busy replica, the first of
    /// equals from `turn`.
    pub load: &'a (dyn Fn(&NodeStatus) -> usize + Sync),
    /// `[routing] prefer`: which standbys of the read set a read tries first.
    pub prefer: Prefer,
}

impl std::fmt::Debug for RouteInput<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("RouteInput");
        debug.field("listener", &self.listener).field("turn", &self.turn).field("prefer", &self.prefer).finish()
    }
}

/// For a [`RouteInput`] that knows no node's load.
pub const NO_LOAD: &(dyn Fn(&NodeStatus) -> usize + Sync) = &|_| 0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Worth waiting for: a primary may be elected soon.
    #[error("no primary available: {0}")]
    NoPrimary(String),
    /// Two nodes claim the primary role: refused at once, waiting rarely helps.
    #[error("no primary available: {0}")]
    SplitBrain(String),
    #[error("no replica available for reads: {0}")]
    NoReplica(String),
}

/// The node index that serves this transaction.
pub fn route(input: RouteInput, fallback: RoFallback, topology: &Topology) -> Result<usize, RouteError> {
    let primary = || match topology.primary {
        Some(primary) => Ok(primary),
        None => {
            let reason = topology.no_primary_reason.clone().unwrap_or_else(|| "none is known".into());
            Err(if topology.split_brain { RouteError::SplitBrain(reason) } else { RouteError::NoPrimary(reason) })
        }
    };
    match input.listener {
        ListenerKind::ReadWrite => primary(),
        ListenerKind::ReadOnly if !topology.read_set.is_empty() => {
            Ok(least_busy_replica(input, topology, preferred(input.prefer, topology)))
        }
        ListenerKind::ReadOnly => match fallback {
            RoFallback::Primary => primary(),
            RoFallback::Error => {
                Err(RouteError::NoReplica(format!("{} (ro_fallback = \"error\")", topology.read_set_exclusions())))
            }
        },
    }
}

/// The replicas of the (non-empty) read set that `prefer` asks for, when
/// the read set has any; else the whole read set: a preference never keeps
/// a read from a replica the lag limits let serve it.
fn preferred(prefer: Prefer, topology: &Topology) -> impl Fn(usize) -> bool + Copy + '_ {
    let wanted = move |node: usize| {
        let state = topology.nodes[node].sync_state;
        match prefer {
            Prefer::Any => true,
            Prefer::Sync => state.is_synchronous(),
            Prefer::Async => state.is_asynchronous(),
        }
    };
    let all = prefer == Prefer::Any || !topology.read_set.iter().any(|&node| wanted(node));
    move |node| all || wanted(node)
}

/// Among the `candidates` of the read set (at least one), the replica with
/// the fewest transactions in progress, the first of equals counting from
/// the client's turn.
fn least_busy_replica(input: RouteInput, topology: &Topology, candidates: impl Fn(usize) -> bool + Copy) -> usize {
    let replicas = topology.read_set.iter().copied().filter(move |&node| candidates(node));
    let start = input.turn % replicas.clone().count();
    let mut rotated = replicas.clone().skip(start).chain(replicas.take(start));
    let first = rotated.next().expect("the read set has a candidate");
    let mut best = ((input.load)(&topology.nodes[first]), first);
    for node in rotated {
        let load = (input.load)(&topology.nodes[node]);
        if load < best.0 {
            best = (load, node);
        }
    }
    best.1
}

/// Where a read that must see WAL position `min_lsn` (read-your-writes) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsnRead {
    /// A replica of the read set the monitors saw at or past `min_lsn`.
    CaughtUp(usize),
    /// None is known to be: the replica furthest along, whose replay
    /// position is to be asked directly until it gets there or the wait ends.
    Check(usize),
    /// No replica is in the read set: [`route`] decides (ro_fallback).
    NoReplica,
}

/// Read-your-writes routing beside [`least_busy_replica`]: the least busy
/// of the replicas known to have replayed `min_lsn`, else the one furthest
/// along (the least busy of equals), to check.
pub fn route_at_lsn(input: RouteInput, min_lsn: u64, topology: &Topology) -> LsnRead {
    let replicas = &topology.read_set;
    if replicas.is_empty() {
        return LsnRead::NoReplica;
    }
    let replayed = |node: usize| topology.nodes[node].wal_lsn.unwrap_or(0);
    let start = input.turn % replicas.len();
    // Among the replicas far enough, `prefer`'s first, then the least busy.
    let wanted = preferred(input.prefer, topology);
    let mut caught_up: Option<((bool, usize), usize)> = None;
    let mut furthest: Option<(u64, usize, usize)> = None;
    for i in (start..replicas.len()).chain(0..start) {
        let node = replicas[i];
        let load = (input.load)(&topology.nodes[node]);
        if replayed(node) >= min_lsn {
            let rank = (!wanted(node), load);
            if caught_up.is_none_or(|(best, _)| rank < best) {
                caught_up = Some((rank, node));
            }
        } else if furthest.is_none_or(|(lsn, best, _)| replayed(node) > lsn || (replayed(node) == lsn && load < best)) {
            furthest = Some((replayed(node), load, node));
        }
    }
    match (caught_up, furthest) {
        (Some((_, node)), _) => LsnRead::CaughtUp(node),
        (None, Some((_, _, node))) => LsnRead::Check(node),
        (None, None) => LsnRead::NoReplica,
    }
}

/// Where a read goes when no replica replayed `min_lsn` within
/// read_your_writes_wait: the primary, or an error under `ro_fallback = "error"`.
pub fn after_lsn_wait(
    fallback: RoFallback,
    min_lsn: u64,
    wait: std::time::Duration,
) -> Result<ListenerKind, RouteError> {
    match fallback {
        RoFallback::Primary => Ok(ListenerKind::ReadWrite),
        RoFallback::Error => Err(RouteError::NoReplica(format!(
            "no replica replayed the WAL up to {} within read_your_writes_wait ({wait:?}) (ro_fallback = \"error\")",
            format_lsn(min_lsn)
        ))),
    }
}
