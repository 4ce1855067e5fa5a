//! The failover clock's end mark: while a period without a writable
//! primary is open, a read-write transaction watches its server's answers
//! and reports the first transaction the new primary accepted (ended in
//! ReadyForQuery idle without an ErrorResponse). Outside such a period the
//! hook costs one atomic load per read-write checkout.

use crate::cluster::ClusterView;
use crate::wire::TxStatus;

/// Watching one leased connection's transactions.
#[derive(Debug, Clone, Copy)]
pub(super) struct FirstWrite {
    /// The node the transaction was routed to (an index into the snapshot).
    node: usize,
    /// The current transaction saw an error: it does not count.
    failed: bool,
}

impl FirstWrite {
    /// At a read-write checkout on `node`: a watch while the cluster awaits a first write.
    pub(super) fn at_checkout(cluster: &ClusterView, node: usize) -> Option<FirstWrite> {
        cluster.awaiting_first_write().then_some(FirstWrite { node, failed: false })
    }

    pub(super) fn on_error(&mut self) {
        self.failed = true;
    }

    /// At a ReadyForQuery: reports a transaction ended without an error and
    /// returns true (the watch is done); a failed one resets the watch for the next.
    pub(super) fn on_ready(&mut self, status: TxStatus, cluster: &ClusterView) -> bool {
        if status != TxStatus::Idle {
            return false;
        }
        if std::mem::take(&mut self.failed) {
            return false;
        }
        cluster.first_write(self.node);
        true
    }
}
