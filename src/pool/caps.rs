//! Caps on the server connections of several pools of one node:
//! `max_db_connections` (every pool of a database) and
//! `max_user_connections` (every pool of a user). A cap counts every open
//! connection of its pools, idle or leased, from the moment it is opened
//! to its close; the count lives in the connection ([`Counted`]), so no
//! path that closes one can forget it. Counting costs a pool nothing per
//! transaction: only opening and closing a connection touch a cap.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::{Pool, Tally};

/// What a cap is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapKind {
    /// `max_db_connections`: the pools of one database (as clients name it).
    Database,
    /// `max_user_connections`: the pools of one user (as it logs in to pgrelay).
    User,
}

impl CapKind {
    pub fn key(self) -> &'static str {
        match self {
            CapKind::Database => "max_db_connections",
            CapKind::User => "max_user_connections",
        }
    }
}

/// The limits that apply to a new pool (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapLimits {
    pub database: usize,
    pub user: usize,
}

/// One cap: the connections open under it, and its limit.
#[derive(Debug)]
pub struct Cap {
    pub kind: CapKind,
    /// 0: no limit (the connections are counted all the same, so that a
    /// reload that sets one finds the right count).
    limit: AtomicUsize,
    open: AtomicUsize,
    /// Checkouts waiting for room under this cap.
    waiting: AtomicUsize,
    /// Fired when a connection under this cap closes while some wait.
    closed: Notify,
    /// The pools counted here, to make room by closing an idle connection of one.
    members: Mutex<Vec<Weak<Pool>>>,
}

impl Cap {
    pub(super) fn new(kind: CapKind, limit: usize) -> Cap {
        Cap {
            kind,
            limit: AtomicUsize::new(limit),
            open: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            closed: Notify::new(),
            members: Mutex::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub(super) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Connections open under this cap right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(super) fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    pub(super) fn join(&self, pool: &Arc<Pool>) {
        self.members.lock().expect("cap lock").push(Arc::downgrade(pool));
    }

    /// A place for one more connection, when the cap has room.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<CapSlot> {
        let limit = self.limit();
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (limit == 0 || open < limit).then_some(open + 1));
        taken.ok().map(|_| CapSlot(self.clone()))
    }

    /// Makes room by closing the least recently used idle connection of
    /// one of the cap's pools, other pools' first; whether one was closed.
    pub(super) fn close_an_idle(&self, asking: &Pool) -> bool {
        let members: Vec<Arc<Pool>> = {
            let mut members = self.members.lock().expect("cap lock");
            members.retain(|pool| pool.strong_count() > 0);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        let others = members.iter().filter(|pool| !std::ptr::eq(pool.as_ref(), asking));
        let own = members.iter().filter(|pool| std::ptr::eq(pool.as_ref(), asking));
        others.chain(own).any(|pool| pool.close_oldest_idle())
    }

    /// Waits until a connection under the cap closes, or `poll` passes (an
    /// idle connection to close may have appeared meanwhile).
    pub(super) async fn closed_or(&self, poll: std::time::Duration) {
        let closed = self.closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        let _waiting = Tally::new(&self.waiting);
        tokio::select! {
            _ = closed => {}
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// One connection's place under a cap, given back when it is dropped.
#[derive(Debug)]
pub(super) struct CapSlot(Arc<Cap>);

impl Drop for CapSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        if self.0.has_waiters() {
            self.0.closed.notify_waiters();
        }
    }
}

/// A connection's places under its pool's caps (database, user).
pub(super) type Counted = [CapSlot; 2];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_counts_open_connections_and_refuses_beyond_its_limit() {
        let cap = Arc::new(Cap::new(CapKind::Database, 2));
        let first = cap.try_take().expect("room for one");
        let second = cap.try_take().expect("room for two");
        assert!(cap.try_take().is_none(), "full at the limit");
        assert_eq!(cap.open(), 2);
        drop(first);
        let third = cap.try_take().expect("room again after a close");
        cap.set_limit(0);
        let unlimited: Vec<CapSlot> = (0..5).map(|_| cap.try_take().expect("no limit")).collect();
        assert_eq!(cap.open(), 7, "counted without a limit too");
        cap.set_limit(3);
        assert!(cap.try_take().is_none(), "a lower limit refuses until enough have closed");
        drop((second, third, unlimited));
        assert_eq!(cap.open(), 0);
    }
}
