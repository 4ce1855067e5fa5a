//! The cluster as pgrelay sees it: nodes, their roles and health, held as one
//! immutable [`Topology`] snapshot that sessions read without locks and that
//! a source of truth replaces as a whole.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Role};

/// One node's address and what is known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: Option<Role>,
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
}

impl Topology {
    /// The topology a static configuration describes: roles as written.
    pub fn from_static(config: &Config) -> Topology {
        let nodes: Vec<NodeStatus> = config
            .nodes
            .iter()
            .map(|n| NodeStatus { name: n.name.clone(), host: n.host.clone(), port: n.port, role: n.role })
            .collect();
        let primary = nodes.iter().position(|n| n.role == Some(Role::Primary));
        let read_set = (0..nodes.len()).filter(|&i| nodes[i].role == Some(Role::Replica)).collect();
        let no_primary_reason = primary.is_none().then(|| "no node has role = \"primary\"".to_owned());
        Topology { nodes, primary, read_set, no_primary_reason }
    }
}

/// The shared, atomically replaced topology snapshot.
#[derive(Debug)]
pub struct ClusterView {
    current: ArcSwap<Topology>,
}

impl ClusterView {
    pub fn new(initial: Topology) -> ClusterView {
        ClusterView { current: ArcSwap::from_pointee(initial) }
    }

    pub fn load(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    pub fn store(&self, topology: Topology) {
        self.current.store(Arc::new(topology));
    }
}
