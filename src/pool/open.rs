//! How a lease gets its connection when no idle one is ready at once: an
//! idle connection due a check (`server_check_delay`) is checked first, a
//! new one is opened within the caps (`max_db_connections`,
//! `max_user_connections`), making room or waiting for it at a cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::caps::{Cap, Counted};
use super::{Pool, PoolError, Pooled, Tally};
use crate::backend::{BackendError, ServerConn};

/// The longest an idle connection's check (`server_check_delay`) may take
/// (or `server_connect_timeout`, when shorter): a healthy server answers a
/// Sync at once, and a connection that does not is replaced by a new one.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a checkout waiting for room under a cap looks again for an
/// idle connection to close or to take, besides waking at every close.
const CAP_POLL: Duration = Duration::from_millis(10);

impl Pool {
    /// A connection for a lease that found `found` idle (due a check) or
    /// none: an idle connection that passes its check, or a new one. One
    /// that fails is closed and the next idle one tried, so a connection
    /// broken while idle (a server restart, a killed backend, a network
    /// cut) costs the client the check's time, never an error. At a cap
    /// (`max_db_connections`, `max_user_connections`), an idle connection of
    /// another pool under it is closed to make room, or the lease waits
    /// (`wait` from `since` in all) for a close or for a connection of its own pool.
    pub(super) async fn checked_or_new(
        &self,
        mut found: Option<Box<Pooled>>,
        owner: usize,
        here: usize,
        (since, wait): (Instant, Duration),
    ) -> Result<Box<Pooled>, PoolError> {
        let deadline = since + wait;
        loop {
            while let Some(mut conn) = found {
                if !self.check_due(&conn) {
                    return Ok(conn);
                }
                let timeout = self.target.connect_timeout.min(CHECK_TIMEOUT);
                let _testing = Tally::new(&self.testing);
                match conn.check_alive(timeout).await {
                    Ok(()) => {
                        conn.check_due = false;
                        return Ok(conn);
                    }
                    Err(error) => {
                        let idle = conn.last_used.elapsed();
                        tracing::info!(pool = ?self.key, %error, ?idle, "closing an idle server connection that failed its check");
                    }
                }
                found = self.take_idle(owner, here, Instant::now());
            }
            let full = match self.try_count() {
                Ok(counted) => return self.connect(counted).await,
                Err(full) => full,
            };
            if !full.close_an_idle(self) {
                let now = Instant::now();
                if now >= deadline {
                    return Err(PoolError::Timeout { wait, cap: Some((full.kind.key(), full.limit())) });
                }
                full.closed_or(CAP_POLL.min(deadline - now)).await;
            }
            found = self.take_idle(owner, here, Instant::now());
        }
    }

    /// Places for one more connection under the pool's caps, or the cap that is full.
    pub(super) fn try_count(&self) -> Result<Counted, &Arc<Cap>> {
        let database = self.caps[0].try_take().ok_or(&self.caps[0])?;
        let user = self.caps[1].try_take().ok_or(&self.caps[1])?;
        Ok([database, user])
    }

    /// Opens a new connection (the caller holds a slot for it, and its places under the caps).
    pub(super) async fn connect(&self, counted: Counted) -> Result<Box<Pooled>, PoolError> {
        let _login = Tally::new(&self.logging_in);
        let conn = match ServerConn::connect(&self.target).await {
            Ok(conn) => conn,
            Err(e) => {
                if matches!(e, BackendError::Login { .. }) {
                    // The configuration or the server needs a look: say so
                    // louder than the client's own error line.
                    tracing::warn!(pool = ?self.key, error = %e, "server login refused");
                }
                return Err(e.into());
            }
        };
        self.server_params.lock().expect("pool lock").get_or_insert_with(|| conn.startup_params.clone());
        let born = self.nanos_since_born(conn.created);
        Ok(Box::new(Pooled { conn, born, check_due: false, _counted: counted }))
    }

    /// Closes the least recently used idle connection, to make room under a
    /// cap for another pool; whether there was one.
    pub(super) fn close_oldest_idle(&self) -> bool {
        let oldest = {
            let mut idle = self.idle.lock().expect("pool lock");
            let lists = idle.lists.iter().enumerate().filter(|(_, list)| !list.is_empty());
            let Some((i, _)) = lists.min_by_key(|(_, list)| list[0].last_used) else { return false };
            let oldest = idle.lists[i].remove(0);
            idle.total -= 1;
            self.metrics.idle.set(idle.total as i64);
            oldest
        };
        // Closed outside the lock.
        drop(oldest);
        true
    }
}
