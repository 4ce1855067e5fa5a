//! Routing decisions as pure functions: which node runs the next
//! transaction, given the listener, the policy and a topology snapshot.

mod statement;
#[cfg(test)]
mod tests;

pub use statement::{session_state_effect, SessionStateEffect};

use crate::cluster::Topology;
use crate::config::RoFallback;

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
#[derive(Debug, Clone, Copy)]
pub struct RouteInput {
    pub listener: ListenerKind,
    /// A counter that advances per routed transaction, for round-robin.
    pub tick: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no primary available: {0}")]
    NoPrimary(String),
    #[error("no replica available for reads: {0}")]
    NoReplica(String),
}

/// The node index that serves this transaction.
pub fn route(input: RouteInput, fallback: RoFallback, topology: &Topology) -> Result<usize, RouteError> {
    let primary = || {
        topology.primary.ok_or_else(|| {
            RouteError::NoPrimary(topology.no_primary_reason.clone().unwrap_or_else(|| "none is known".into()))
        })
    };
    match input.listener {
        ListenerKind::ReadWrite => primary(),
        ListenerKind::ReadOnly if !topology.read_set.is_empty() => {
            Ok(topology.read_set[input.tick % topology.read_set.len()])
        }
        ListenerKind::ReadOnly => match fallback {
            RoFallback::Primary => primary(),
            RoFallback::Error => {
                Err(RouteError::NoReplica("no replica is in the read set (ro_fallback = \"error\")".into()))
            }
        },
    }
}
