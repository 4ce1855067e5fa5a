//! What a pool needs done in the background, between clients' leases (the
//! caller, `app`'s janitor, decides when and runs the work): opening
//! connections up to `min_pool_size`, and keeping `server_lifetime` and
//! `server_check_delay` (see [`Pool::tend`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Pool, Pooled};

/// After a failed attempt to open a connection for `min_pool_size`, the
/// next waits this long, doubled for every further failure in a row ...
const FILL_RETRY: Duration = Duration::from_secs(1);
/// ... up to this.
const FILL_RETRY_MAX: Duration = Duration::from_secs(30);

impl Pool {
    /// `min_pool_size` as it applies to this pool: at most its size.
    fn min_size(&self) -> usize {
        self.tuning.min_size().min(self.settings.size)
    }

    /// How many idle connections the pool keeps even past
    /// `server_idle_timeout`, so that it keeps `min_pool_size` open;
    /// `returning` of the leased ones are about to go idle. Without a
    /// `min_pool_size` (the default) this costs one load.
    #[inline]
    pub(super) fn idle_floor(&self, returning: usize) -> usize {
        match self.tuning.min_size() {
            0 => 0,
            _ => self.min_size().saturating_sub(self.in_use().saturating_sub(returning)),
        }
    }

    /// How many connections the pool lacks for `min_pool_size` (idle and
    /// leased ones count, and so do those being opened); 0 while it is
    /// closed or waits to try again after a failure.
    pub fn fill_wanted(&self, now: Instant) -> usize {
        let min = self.min_size();
        if min == 0 || self.is_closed() || self.nanos_since_born(now) < self.fill_after.load(Ordering::Relaxed) {
            return 0;
        }
        min.saturating_sub(self.idle_count() + self.in_use())
    }

    /// Takes a free slot for one more connection towards `min_pool_size`
    /// (in the worker share with the most room, so each worker gets its
    /// part) and returns the work of opening it: it goes idle in that
    /// share. The slot is held while connecting, so the pool's size holds
    /// and a client that wants the slot meanwhile gets the connection. A
    /// cap that is full, or that clients wait on, leaves the room to them.
    pub fn fill_one(self: &Arc<Self>) -> Option<impl Future<Output = ()> + Send + 'static> {
        if self.caps.iter().any(|cap| cap.has_waiters()) {
            return None;
        }
        let owner = {
            let idle = self.idle.lock().expect("pool lock");
            let room = |w: usize| self.shares[w].permits.available_permits().saturating_sub(idle.lists[w].len());
            (0..self.workers).filter(|&w| room(w) > 0).max_by_key(|&w| room(w))?
        };
        // Counted first: a slot taken and given back without a release would wake no borrower.
        let counted = self.try_count().ok()?;
        let permit = self.shares[owner].permits.clone().try_acquire_owned().ok()?;
        let pool = self.clone();
        Some(async move {
            match pool.connect(counted).await {
                Ok(conn) => {
                    pool.fill_failures.store(0, Ordering::Relaxed);
                    pool.put_idle(conn, owner, Instant::now());
                }
                Err(error) => pool.fill_failed(&error),
            }
            pool.release(permit, owner, owner);
        })
    }

    /// A connection for `min_pool_size` could not be opened: try again
    /// later, each time later (the server may be down, or refuse the user).
    fn fill_failed(&self, error: &super::PoolError) {
        let failures = self.fill_failures.fetch_add(1, Ordering::Relaxed);
        let wait = FILL_RETRY.saturating_mul(1 << failures.min(5)).min(FILL_RETRY_MAX);
        let after = self.nanos_since_born(Instant::now()).saturating_add(wait.as_nanos() as u64);
        self.fill_after.store(after, Ordering::Relaxed);
        if failures == 0 {
            tracing::warn!(pool = ?self.key, %error, "could not open a connection for min_pool_size; trying again later");
        } else {
            tracing::debug!(pool = ?self.key, %error, ?wait, "could not open a connection for min_pool_size");
        }
    }

    /// The janitor's round over the pool's connections: moves the line past
    /// which a connection has outlived `server_lifetime` (for the leases
    /// that end until the next round), closes the idle ones past it (spaced
    /// as [`Pool::lifetime_over`] says), and marks those idle for
    /// `server_check_delay` to be checked before they are leased (as
    /// PgBouncer's janitor does).
    pub fn tend(&self, now: Instant) {
        self.age_connections(now);
        let delay = self.tuning.check_delay();
        let mut aged: Vec<Box<Pooled>> = Vec::new();
        {
            let mut idle = self.idle.lock().expect("pool lock");
            for list in &mut idle.lists {
                let mut i = 0;
                while i < list.len() {
                    if self.lifetime_over(&list[i], now) {
                        aged.push(list.remove(i));
                        continue;
                    }
                    let conn = &mut list[i];
                    if !conn.check_due && now.saturating_duration_since(conn.last_used) >= delay {
                        conn.check_due = true;
                    }
                    i += 1;
                }
            }
            if !aged.is_empty() {
                idle.total -= aged.len();
                self.metrics.idle.set(idle.total as i64);
            }
        }
        // Closed outside the lock.
        drop(aged);
    }
}
