//! A server connection leased to a client. Dropping the lease gives the
//! connection back: clean, it goes idle; dirty, it is reset in the
//! background (or closed); past `server_lifetime`, closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::{Pool, Pooled, Tally};
use crate::backend::ServerConn;
use crate::config::PoolMode;

/// A checked-out server connection. Dropping it returns the connection.
#[derive(Debug)]
pub struct Lease {
    pub(super) conn: Option<Box<Pooled>>,
    /// When the client got the connection.
    pub(super) started: Instant,
    /// Getting it took a wait for a slot, a check or a new connection's login.
    pub(super) waited: bool,
    /// When the connection's last answer came, if the holder noted it: it
    /// is idle as of then (saves a clock reading when it goes back).
    pub(super) idle_since: Option<Instant>,
    /// Counted in the pool's `pinned` gauge while held.
    pub(super) pinned: bool,
    pub(super) pool: Arc<Pool>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// The worker whose share the slot (permit) came from ...
    pub(super) owner: usize,
    /// ... and the one whose client holds it, whose share it joins; for a
    /// slot of the reserve, both are the reserve (it stays there).
    pub(super) holder: usize,
    pub(super) discard: bool,
    pub(super) poisoned: bool,
}

impl Lease {
    pub fn conn(&self) -> &ServerConn {
        self.conn.as_ref().expect("lease holds a connection until dropped")
    }

    pub fn conn_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("lease holds a connection until dropped")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The connection and its pool, borrowed together.
    pub fn parts_mut(&mut self) -> (&mut ServerConn, &Arc<Pool>) {
        let conn: &mut ServerConn = self.conn.as_mut().expect("lease holds a connection until dropped");
        (conn, &self.pool)
    }

    /// When the client got the connection (after any wait, check, and
    /// login of a new one).
    pub fn assigned_at(&self) -> Instant {
        self.started
    }

    /// Whether getting it took a wait for a slot, a check or a new
    /// connection's login; otherwise it was there at once.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// The connection answered its last request at `at` (its ReadyForQuery).
    pub fn went_idle_at(&mut self, at: Instant) {
        self.idle_since = Some(at);
    }

    /// The client keeps this connection until it disconnects (session state).
    pub fn set_pinned(&mut self) {
        if !self.pinned {
            self.pinned = true;
            self.pool.metrics.pinned.inc();
        }
    }

    /// The client left session state behind: DISCARD ALL before reuse.
    pub fn require_discard(&mut self) {
        self.discard = true;
    }

    /// The connection must not be reused at all.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let metrics = &self.pool.metrics;
        metrics.active.dec();
        let now = self.idle_since.unwrap_or_else(Instant::now);
        if self.pinned {
            metrics.pinned.dec();
        }
        let (Some(conn), Some(permit)) = (self.conn.take(), self.permit.take()) else { return };
        let (pool, owner, holder) = (&self.pool, self.owner, self.holder);
        // Closed rather than reset when past server_lifetime: never in the
        // middle of a transaction, since a lease ends only between them.
        if self.poisoned || pool.is_closed() || pool.lifetime_over(&conn, now) {
            drop(conn);
            return pool.release(permit, owner, holder);
        }
        let discard = self.discard || pool.settings.mode == PoolMode::Session;
        let cancelled = conn.cancels_in_flight.load(std::sync::atomic::Ordering::Acquire) > 0;
        if conn.is_clean() && !discard && !cancelled {
            pool.put_idle(conn, holder, now);
            return pool.release(permit, owner, holder);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            drop(conn);
            return pool.release(permit, owner, holder);
        };
        let pool = pool.clone();
        runtime.spawn(async move {
            // The connection goes back idle (or is closed) before its slot
            // is free, so the pool never has more connections than its size.
            let cancels_done = !cancelled || {
                let _held = Tally::new(&pool.being_canceled);
                wait_for_cancels(&conn).await
            };
            if !cancels_done {
                // The server never confirmed the cancel: the connection may
                // still get it, so nobody else may.
                drop(conn);
            } else {
                let reset = {
                    let _testing = Tally::new(&pool.testing);
                    pool.reset(conn, discard).await
                };
                if let Some(conn) = reset {
                    pool.put_idle(conn, holder, Instant::now());
                }
            }
            pool.release(permit, owner, holder);
        });
    }
}

/// Waits (bounded) until no cancel request aimed at `conn` is under way.
async fn wait_for_cancels(conn: &ServerConn) -> bool {
    const STEP: Duration = Duration::from_millis(2);
    for _ in 0..(CANCEL_WAIT.as_millis() / STEP.as_millis()) {
        if conn.cancels_in_flight.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return true;
        }
        tokio::time::sleep(STEP).await;
    }
    false
}

/// How long a connection that a cancel is aimed at waits for it to be done.
const CANCEL_WAIT: Duration = Duration::from_secs(6);
