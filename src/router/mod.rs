//! Routing decisions as pure functions: which node runs the next
//! transaction, given the listener, the policy and a topology snapshot; and
//! (`sql`) what a client's SQL leaves on the server connection it runs on.

mod sql;
#[cfg(test)]
mod tests;

pub use sql::{
    classify, prepared_command, session_state_effect, Opaque, PreparedCommand, SessionStateEffect, SqlEffects,
};

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
            Ok(topology.read_set[input.tick % topology.read_set.len()])
        }
        ListenerKind::ReadOnly => match fallback {
            RoFallback::Primary => primary(),
            RoFallback::Error => {
                Err(RouteError::NoReplica(format!("{} (ro_fallback = \"error\")", topology.read_set_exclusions())))
            }
        },
    }
}
