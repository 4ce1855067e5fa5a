//! A pool's idle connections: one list per worker's share, and one for the
//! reserve. Only the pool touches them, under its lock.

use std::time::{Duration, Instant};

use super::Pooled;

/// One worker's idle connections. Boxed: a connection changes hands twice
/// per transaction, and moving a pointer is cheaper than copying the
/// connection's few hundred bytes (callgrind: ~900 fewer instructions per
/// transaction).
#[allow(clippy::vec_box)]
pub(super) type IdleList = Vec<Box<Pooled>>;

/// A pool's idle connections: one list per worker's share, each ordered by last
/// use (pushed at the end, taken from the end, so expired ones are at the
/// front), and their total.
#[derive(Debug)]
pub(super) struct Idle {
    pub(super) lists: Vec<IdleList>,
    pub(super) total: usize,
}

impl Idle {
    /// One list per worker, and one for the reserve (the last).
    pub(super) fn new(workers: usize) -> Idle {
        Idle { lists: (0..workers.max(1) + 1).map(|_| Vec::new()).collect(), total: 0 }
    }

    #[inline]
    pub(super) fn list(&mut self, worker: usize) -> &mut IdleList {
        let last = self.lists.len() - 1;
        &mut self.lists[worker.min(last)]
    }

    /// The most recently used connection of `worker`'s list that has not
    /// expired and has nothing unasked-for to read; the others are closed.
    /// Expired connections stay usable while the pool would otherwise keep
    /// fewer than `floor()` idle (`min_pool_size`; asked only then).
    #[inline]
    pub(super) fn pop_healthy(
        &mut self,
        worker: usize,
        now: Instant,
        timeout: Option<Duration>,
        floor: impl Fn() -> usize,
    ) -> Option<Box<Pooled>> {
        let total = self.total;
        let list = self.list(worker);
        let mut popped = 0;
        let mut found = None;
        while let Some(mut conn) = list.pop() {
            // Idle connections left, this one included.
            let left = total - popped;
            popped += 1;
            let expired = timeout.is_some_and(|t| now.saturating_duration_since(conn.last_used) > t) && left > floor();
            if !expired && !conn.has_unsolicited_input() {
                found = Some(conn);
                break;
            }
        }
        self.total -= popped;
        found
    }

    /// Adds `conn` to `owner`'s list, closing that list's expired ones (but
    /// keeping `floor()` idle connections in the pool; asked only then).
    #[inline]
    pub(super) fn push(
        &mut self,
        conn: Box<Pooled>,
        owner: usize,
        now: Instant,
        timeout: Option<Duration>,
        floor: impl FnOnce() -> usize,
    ) {
        let total = self.total;
        let list = self.list(owner);
        let mut expired = 0;
        if let Some(timeout) = timeout {
            expired = list.iter().take_while(|c| now.duration_since(c.last_used) > timeout).count();
            if expired > 0 {
                expired = expired.min((total + 1).saturating_sub(floor()));
            }
            if expired > 0 {
                list.drain(..expired);
            }
        }
        list.push(conn);
        self.total = self.total + 1 - expired;
    }

    pub(super) fn clear(&mut self) {
        self.lists.iter_mut().for_each(Vec::clear);
        self.total = 0;
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Box<Pooled>> {
        self.lists.iter().flatten()
    }
}
