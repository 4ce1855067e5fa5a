//! Server connection pools, one per (node, database, user). A checkout waits
//! for a slot (FIFO, with a deadline) and returns a [`Lease`]; dropping the
//! lease puts a clean connection back, or resets a dirty one in the
//! background (bounded by `server_reset_timeout`) and closes it if that fails.
//!
//! With several workers (`[pool] workers`), the pool size is split into one
//! share per worker: a slot (a semaphore permit) and the idle connections
//! that go with it. A worker's clients take its own slots, so under an even
//! load no connection changes threads and no worker wakes another. A worker
//! whose share is used up borrows, after waiting a moment for its own (see
//! [`BORROW_DEFERRAL`]), a free slot of another worker (one no
//! client of that worker waits for), together with that slot's idle
//! connection, which then moves to the borrowing worker's event loop; the
//! slot then stays in the borrower's share, so the shares follow the
//! clients. A slot freed with none of its own clients waiting wakes the
//! clients other workers have waiting. So the size holds for the whole
//! process and nobody waits longer than `BORROW_DEFERRAL` while a slot is
//! free anywhere.
//!
//! PgBouncer's pool controls live beside: the reserve (`reserve_pool_size`)
//! is one more share, of no worker, that a client may use after waiting
//! `reserve_pool_timeout`; `open` checks idle connections
//! (`server_check_delay`) and opens new ones within the caps
//! (`max_db_connections`, `max_user_connections`, in `caps`); `upkeep` is
//! what the janitor does between leases (`min_pool_size`, and the marks
//! that make `server_lifetime` and `server_check_delay` one comparison on
//! the forwarding path); `tuning` holds what a reload changes in place.

mod caps;
mod idle;
mod inspect;
mod lease;
mod open;
mod registry;
mod tuning;
mod upkeep;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, ServerConn, ServerParams, ServerTarget};
use crate::config::PoolMode;
use crate::metrics::PoolMetrics;
use crate::worker;
use caps::{Cap, Counted};
pub use caps::{CapKind, CapLimits};
use idle::Idle;
pub use lease::Lease;
pub use registry::{PoolUser, Pools};
pub use tuning::PoolTuning;
use tuning::Tunables;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Nothing came free in time; `cap` names the cap on the node's
    /// connections of the database or user that stayed reached, if one did.
    #[error("no server connection available within query_wait_timeout ({wait:?}){}", reached(cap))]
    Timeout { wait: Duration, cap: Option<(&'static str, usize)> },
    #[error("{0}")]
    Connect(#[from] BackendError),
    #[error("pool is closed")]
    Closed,
}

fn reached(cap: &Option<(&'static str, usize)>) -> String {
    cap.map(|(key, limit)| format!(": {key} = {limit} reached")).unwrap_or_default()
}

/// A server connection of a pool, counted under the pool's caps
/// (`max_db_connections`, `max_user_connections`) for as long as it lives.
#[derive(Debug)]
pub(crate) struct Pooled {
    conn: ServerConn,
    /// When it was opened, in nanoseconds after its pool was made (see `Pool::retire_before`).
    born: u64,
    /// The janitor found it idle for `server_check_delay`: it is checked
    /// before it is leased (and the mark cleared when it passes).
    check_due: bool,
    _counted: Counted,
}

impl std::ops::Deref for Pooled {
    type Target = ServerConn;
    #[inline]
    fn deref(&self) -> &ServerConn {
        &self.conn
    }
}

impl std::ops::DerefMut for Pooled {
    #[inline]
    fn deref_mut(&mut self) -> &mut ServerConn {
        &mut self.conn
    }
}

impl Pooled {
    /// This connection, registered with the current worker's reactor (see
    /// [`ServerConn::moved_to_this_worker`]).
    fn into_this_worker(self: Box<Self>) -> std::io::Result<Box<Self>> {
        let Pooled { conn, born, check_due, _counted } = *self;
        Ok(Box::new(Pooled { conn: conn.moved_to_this_worker()?, born, check_due, _counted }))
    }
}

/// One worker's share of a pool's size: slots (permits) its clients take
/// first, and how many of its clients wait for one.
#[derive(Debug)]
struct Share {
    permits: Arc<Semaphore>,
    /// Slots in this share; a slot another worker borrowed moves to it.
    size: AtomicUsize,
    waiting: AtomicUsize,
}

impl Share {
    fn new(size: usize) -> Share {
        Share { permits: Arc::new(Semaphore::new(size)), size: AtomicUsize::new(size), waiting: AtomicUsize::new(0) }
    }
}

/// How long a client waits for a slot of its own worker's share before it
/// borrows a free one of another worker. Under a steady load each worker's
/// clients fill its share and a slot comes free within a transaction or
/// two, while a borrowed slot moves its connection to another thread (two
/// `epoll_ctl` calls and a cache-cold socket): borrowing at once, a share
/// whose clients briefly want fewer slots than it has lends them out to be
/// moved and moved back, which cost a quarter of a move per transaction
/// (and 15 % more CPU per transaction) on the read-only port's replica pools.
const BORROW_DEFERRAL: Duration = Duration::from_millis(1);

/// Worker `worker`'s share of `size` slots among `workers`: an even split,
/// the first workers taking one more of what does not divide.
fn share_of(size: usize, workers: usize, worker: usize) -> usize {
    size / workers + usize::from(worker < size % workers)
}

/// Whether a connection past `lifetime` in a pool of `size` may be closed
/// now, `since_last` after the last one closed for its age (`None`: none
/// yet): closes are spaced `lifetime / size` apart.
fn lifetime_turn(lifetime: Duration, size: usize, since_last: Option<Duration>) -> bool {
    let gap = lifetime / u32::try_from(size.max(1)).unwrap_or(u32::MAX);
    since_last.is_none_or(|since| since >= gap)
}

/// Counts one of something in `count` while it lives: a client waiting in
/// its worker's share (or at a cap), or a slot's connection logging in,
/// being checked or reset, or held back for a cancel (SHOW POOLS).
struct Tally<'a>(&'a AtomicUsize);

impl<'a> Tally<'a> {
    fn new(count: &'a AtomicUsize) -> Tally<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Tally(count)
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub node: String,
    pub database: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub size: usize,
    /// `reserve_pool_size`: slots on top of `size` for clients that waited
    /// `reserve_pool_timeout` (see [`Pool::wait_for_slot_or_reserve`]).
    pub reserve_size: usize,
    /// Workers (`[pool] workers`): each has a share of `size` (see the module docs).
    pub workers: usize,
    pub mode: PoolMode,
    pub reset_timeout: Duration,
    pub idle_timeout: Option<Duration>,
}

/// What a new pool is made of (see [`Pools::get_fitting`]).
#[derive(Debug)]
pub struct PoolParts {
    pub target: ServerTarget,
    pub settings: PoolSettings,
    pub tuning: PoolTuning,
    pub metrics: PoolMetrics,
    /// The caps on its node's connections of its database and of its user.
    pub limits: CapLimits,
}

/// Connections to one node for one (database, user).
#[derive(Debug)]
pub struct Pool {
    pub key: PoolKey,
    target: ServerTarget,
    settings: PoolSettings,
    /// What a reload changes without retiring the pool.
    tuning: Tunables,
    /// When the pool was made: the origin of `lifetime_closed`, `retire_before` and `Pooled::born`.
    born: Instant,
    /// Connections opened before this (nanoseconds after `born`) have
    /// outlived `server_lifetime`; 0 while none can have. Kept by the
    /// janitor a few times a second (and at a reload), so that a lease's
    /// end tells an old connection with one load and one comparison.
    retire_before: AtomicU64,
    /// When (nanoseconds after `born`) a connection was last closed for
    /// its age (`server_lifetime`), or `u64::MAX`: see [`Pool::lifetime_over`].
    lifetime_closed: AtomicU64,
    /// Each worker's share of the pool size (see `checkout`), and last the
    /// reserve's slots, which belong to no worker and never move.
    shares: Vec<Share>,
    /// How many of `shares` are workers' (the reserve's index).
    workers: usize,
    /// Fired when a slot is freed that no client of its own worker waits
    /// for while clients of another worker do: they try to borrow it.
    spare: Notify,
    /// Idle connections, one list per worker's share.
    idle: Mutex<Idle>,
    /// What the first connection reported at startup; clients see these at login.
    server_params: Mutex<Option<ServerParams>>,
    metrics: PoolMetrics,
    /// Slots whose connection is logging in, being checked or reset, or
    /// held back until a cancel aimed at it is done (SHOW POOLS).
    logging_in: AtomicUsize,
    testing: AtomicUsize,
    being_canceled: AtomicUsize,
    /// Cancelled by [`Pool::close`]: the node must not be used any more.
    closed: CancellationToken,
    /// The caps this pool's connections count under: its database's and its user's on its node.
    caps: [Arc<Cap>; 2],
    /// Opening connections for `min_pool_size` failed this many times in a row ...
    fill_failures: std::sync::atomic::AtomicU32,
    /// ... so the next try waits until then (nanoseconds after `born`).
    fill_after: AtomicU64,
}

impl Pool {
    fn new(key: PoolKey, parts: PoolParts, caps: [Arc<Cap>; 2]) -> Arc<Pool> {
        let PoolParts { target, settings, tuning, metrics, limits: _ } = parts;
        let workers = settings.workers.max(1);
        let mut shares: Vec<Share> = (0..workers).map(|w| Share::new(share_of(settings.size, workers, w))).collect();
        shares.push(Share::new(settings.reserve_size));
        Arc::new(Pool {
            key,
            metrics,
            target,
            tuning: Tunables::new(tuning),
            born: Instant::now(),
            lifetime_closed: AtomicU64::new(u64::MAX),
            retire_before: AtomicU64::new(0),
            shares,
            workers,
            spare: Notify::new(),
            settings,
            idle: Mutex::new(Idle::new(workers)),
            server_params: Mutex::new(None),
            logging_in: AtomicUsize::new(0),
            testing: AtomicUsize::new(0),
            being_canceled: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            caps,
            fill_failures: Default::default(),
            fill_after: AtomicU64::new(0),
        })
    }

    /// Closes the pool for good: idle connections are dropped, waiting and
    /// later checkouts fail with [`PoolError::Closed`], leases returned later
    /// are closed instead of pooled, and [`Pool::closed`] fires for holders.
    pub fn close(&self) {
        // Retired first: a holder woken by the token finds `is_closed` already true.
        self.retire();
        self.closed.cancel();
    }

    /// Takes the pool out of service without interrupting anyone: idle
    /// connections are dropped, checkouts fail with [`PoolError::Closed`]
    /// (the client routes again, to a fresh pool), and leases close their
    /// connection when they end. A reload retires pools whose settings changed.
    pub fn retire(&self) {
        self.shares.iter().for_each(|share| share.permits.close());
        self.drop_idle();
    }

    /// Whether the pool was closed or retired.
    pub fn is_closed(&self) -> bool {
        self.shares[0].permits.is_closed()
    }

    /// Closes the idle connections (PAUSE does, so a paused pgrelay holds none).
    pub fn drop_idle(&self) {
        self.idle.lock().expect("pool lock").clear();
        self.metrics.idle.set(0);
    }

    /// Of [`Pool::in_use`]: connections logging in, being checked
    /// (`server_check_delay`) or reset after a client, and held back until a
    /// cancel aimed at them is done.
    pub fn in_transition(&self) -> (usize, usize, usize) {
        let count = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        (count(&self.logging_in), count(&self.testing), count(&self.being_canceled))
    }

    /// Connections leased to clients (or logging in, being checked or reset,
    /// or waiting for a cancel) right now, reserve ones included.
    pub fn in_use(&self) -> usize {
        let size = |share: &Share| share.size.load(Ordering::Relaxed);
        self.shares.iter().map(|share| size(share).saturating_sub(share.permits.available_permits())).sum()
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The settings a reload may change without retiring the pool.
    pub fn tuning(&self) -> PoolTuning {
        self.tuning.load()
    }

    /// Applies a reload's [`PoolTuning`] from the next lease on.
    pub fn retune(&self, tuning: PoolTuning) {
        self.tuning.store(tuning);
        self.age_connections(Instant::now());
    }

    /// Moves `retire_before` to `now` less `server_lifetime` (the janitor
    /// calls it every round).
    pub(crate) fn age_connections(&self, now: Instant) {
        let before = self.tuning.lifetime().map_or(0, |lifetime| {
            let lifetime = u64::try_from(lifetime.as_nanos()).unwrap_or(u64::MAX);
            self.nanos_since_born(now).saturating_sub(lifetime)
        });
        self.retire_before.store(before, Ordering::Relaxed);
    }

    fn nanos_since_born(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Whether `conn` has outlived `server_lifetime` (as of the janitor's
    /// last round) and is to be closed now. As PgBouncer does, such closes
    /// are spaced at least `server_lifetime / pool size` apart, so that
    /// connections opened together (a burst, a failover) are not all
    /// replaced at once; a connection whose turn has not come yet serves on
    /// meanwhile. A `true` takes the turn: act on it.
    #[inline]
    fn lifetime_over(&self, conn: &Pooled, now: Instant) -> bool {
        conn.born < self.retire_before.load(Ordering::Relaxed) && self.lifetime_turn_now(now)
    }

    #[cold]
    fn lifetime_turn_now(&self, now: Instant) -> bool {
        let Some(lifetime) = self.tuning.lifetime() else { return false };
        let now = self.nanos_since_born(now);
        let last = self.lifetime_closed.load(Ordering::Relaxed);
        let since_last = (last != u64::MAX).then(|| Duration::from_nanos(now.saturating_sub(last)));
        lifetime_turn(lifetime, self.settings.size, since_last)
            && self.lifetime_closed.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Cancelled when the pool is closed (its node must not be used any more).
    pub fn closed_token(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn target(&self) -> &ServerTarget {
        &self.target
    }

    pub fn mode(&self) -> PoolMode {
        self.settings.mode
    }

    pub fn server_params(&self) -> Option<ServerParams> {
        self.server_params.lock().expect("pool lock").clone()
    }

    /// Idle connections right now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").total
    }

    /// Waits up to `wait` (the client's query_wait_timeout) for a connection of this pool.
    pub async fn checkout(self: &Arc<Self>, wait: Duration) -> Result<Lease, PoolError> {
        let here = worker::current().min(self.workers - 1);
        // A free slot needs no timer: only a real wait arms one. A slot of
        // the reserve goes back to it: its holder is the reserve.
        let (permit, owner, holder, waited_since) = match self.shares[here].permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, here, here, None),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(PoolError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => match self.borrow_at_once(here) {
                Some((permit, owner)) => (permit, owner, here, None),
                None => {
                    let since = Instant::now();
                    // Boxed: a timer is large, and only a real wait needs one; inline,
                    // it would be part of every client task's size.
                    match Box::pin(tokio::time::timeout(wait, self.wait_for_slot_or_reserve(here))).await {
                        Ok(Ok((permit, owner))) if owner == self.workers => (permit, owner, owner, Some(since)),
                        Ok(Ok((permit, owner))) => (permit, owner, here, Some(since)),
                        Ok(Err(closed)) => return Err(closed),
                        Err(_) => return Err(PoolError::Timeout { wait, cap: None }),
                    }
                }
            },
        };
        if self.is_closed() {
            return Err(PoolError::Closed);
        }
        let mut now = Instant::now();
        let mut waited = waited_since.is_some();
        let conn = match self.take_idle(owner, here, now) {
            Some(conn) if !self.check_due(&conn) => conn,
            // Boxed: a check's or a connect's state is large and rare, and
            // would otherwise be part of every client task's size.
            found => {
                let since = waited_since.unwrap_or(now);
                match Box::pin(self.checked_or_new(found, owner, here, (since, wait))).await {
                    Ok(conn) => {
                        // The client waited for the check or the login too.
                        (now, waited) = (Instant::now(), true);
                        conn
                    }
                    Err(e) => {
                        // Given back as a lease's slot is, so a client another worker has waiting hears of it.
                        self.release(permit, owner, holder);
                        return Err(e);
                    }
                }
            }
        };
        self.metrics.active.inc();
        Ok(Lease {
            started: now,
            waited,
            idle_since: None,
            pinned: false,
            conn: Some(conn),
            pool: self.clone(),
            permit: Some(permit),
            owner,
            holder,
            discard: false,
            poisoned: false,
        })
    }

    /// Whether an idle connection is to be checked before it is leased
    /// (`server_check_delay`): always with a delay of 0, else when the
    /// janitor found it idle that long.
    #[inline]
    fn check_due(&self, conn: &Pooled) -> bool {
        conn.check_due || self.tuning.check_always()
    }

    /// A free slot of another worker for a client that found none of its
    /// own, taken at once only when this worker's share has no slot at all:
    /// otherwise one of its own is soon free, and waiting for it (up to
    /// [`BORROW_DEFERRAL`]) costs less than moving a connection.
    fn borrow_at_once(&self, here: usize) -> Option<(OwnedSemaphorePermit, usize)> {
        if self.workers == 1 || self.shares[here].size.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.borrow(here)
    }

    /// A free slot of another worker, without waiting: that worker has no
    /// client waiting for it (a semaphore with waiters has no free permits).
    fn borrow(&self, here: usize) -> Option<(OwnedSemaphorePermit, usize)> {
        let workers = self.workers;
        (1..workers).map(|step| (here + step) % workers).find_map(|owner| {
            let permit = self.shares[owner].permits.clone().try_acquire_owned().ok()?;
            Some((permit, owner))
        })
    }

    /// Waits for a slot of this worker's share, or, after
    /// [`BORROW_DEFERRAL`], for one another worker has free or frees while
    /// none of its own clients waits (then borrowed).
    async fn wait_for_slot(&self, here: usize) -> Result<(OwnedSemaphorePermit, usize), PoolError> {
        let share = &self.shares[here];
        let _waiting = Tally::new(&share.waiting);
        if self.workers > 1 && share.size.load(Ordering::Relaxed) > 0 {
            let own = tokio::time::timeout(BORROW_DEFERRAL, share.permits.clone().acquire_owned());
            if let Ok(permit) = own.await {
                return permit.map(|permit| (permit, here)).map_err(|_| PoolError::Closed);
            }
        }
        loop {
            // Registered before looking, so a slot freed in between still wakes us.
            let spare = self.spare.notified();
            let mut spare = std::pin::pin!(spare);
            spare.as_mut().enable();
            if let Some(borrowed) = self.borrow(here) {
                return Ok(borrowed);
            }
            tokio::select! {
                permit = share.permits.clone().acquire_owned() => {
                    return permit.map(|permit| (permit, here)).map_err(|_| PoolError::Closed);
                }
                _ = spare => {}
            }
        }
    }

    /// Waits for a slot as [`Pool::wait_for_slot`] does; once the client
    /// has waited `reserve_pool_timeout`, a slot of the reserve
    /// (`reserve_pool_size`) does as well, whichever comes first. A reserve
    /// slot's connection goes back to the reserve's own idle list, for the
    /// next client that waits that long.
    async fn wait_for_slot_or_reserve(&self, here: usize) -> Result<(OwnedSemaphorePermit, usize), PoolError> {
        let reserve = &self.shares[self.workers];
        let timeout = self.tuning.reserve_timeout().filter(|_| reserve.size.load(Ordering::Relaxed) > 0);
        let Some(timeout) = timeout else { return self.wait_for_slot(here).await };
        let from_reserve = async {
            tokio::time::sleep(timeout).await;
            let permit = reserve.permits.clone().acquire_owned().await.map_err(|_| PoolError::Closed)?;
            Ok((permit, self.workers))
        };
        tokio::select! {
            biased;
            slot = self.wait_for_slot(here) => slot,
            reserved = from_reserve => reserved,
        }
    }

    /// A slot of `owner`'s share is free again: when no client of `owner`
    /// waits for it but clients of other workers do, they may borrow it.
    fn slot_freed(&self, owner: usize) {
        // The reserve's waiters wait on its semaphore itself.
        if self.workers == 1 || owner == self.workers || self.shares[owner].waiting.load(Ordering::SeqCst) > 0 {
            return;
        }
        if self.shares[..self.workers].iter().any(|share| share.waiting.load(Ordering::SeqCst) > 0) {
            self.spare.notify_waiters();
        }
    }

    /// Gives back a slot of `owner`'s share that `holder`'s client used,
    /// after its connection, if any, went back idle (to `holder`'s list). A
    /// borrowed slot stays with the borrower from now on: the shares follow
    /// where the clients are, so a worker with more clients than its share
    /// does not borrow (and move a connection) for every transaction.
    fn release(&self, permit: OwnedSemaphorePermit, owner: usize, holder: usize) {
        if owner == holder {
            drop(permit);
        } else {
            permit.forget();
            self.shares[owner].size.fetch_sub(1, Ordering::Relaxed);
            self.shares[holder].size.fetch_add(1, Ordering::Relaxed);
            self.shares[holder].permits.add_permits(1);
        }
        self.slot_freed(holder);
    }

    /// Pops the most recently used healthy idle connection of `owner`'s
    /// share, moved to worker `here` (this one) when it was last used on another.
    fn take_idle(&self, owner: usize, here: usize, now: Instant) -> Option<Box<Pooled>> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().expect("pool lock");
                let found = idle.pop_healthy(owner, now, self.settings.idle_timeout, || self.idle_floor(0));
                self.metrics.idle.set(idle.total as i64);
                found?
            };
            if conn.worker() == here {
                return Some(conn);
            }
            match conn.into_this_worker() {
                Ok(conn) => {
                    self.metrics.moves.inc();
                    return Some(conn);
                }
                // Closed on the way: the next idle one, or a new one.
                Err(error) => tracing::debug!(pool = ?self.key, %error, "an idle server connection could not move"),
            }
        }
    }

    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Puts a clean connection on the idle list of `owner`'s share (whose slot it goes with).
    /// Its slot is still taken: the caller releases it afterwards.
    fn put_idle(&self, mut conn: Box<Pooled>, owner: usize, now: Instant) {
        conn.last_used = now;
        let mut idle = self.idle.lock().expect("pool lock");
        // Checked under the lock that `close` clears, so nothing slips in after it.
        if self.is_closed() {
            return;
        }
        idle.push(conn, owner, now, self.settings.idle_timeout, || self.idle_floor(1));
        self.metrics.idle.set(idle.total as i64);
    }

    /// Resets a connection a client left dirty; returns it when it is clean again.
    async fn reset(&self, mut conn: Box<Pooled>, discard: bool) -> Option<Box<Pooled>> {
        if conn.tracker().batch_open() {
            // The client left in the middle of an extended-protocol batch:
            // a Sync would commit what it never confirmed. Closing the
            // connection rolls it back, as the server does for a client that
            // vanishes.
            tracing::debug!(pool = ?self.key, "closing server connection left in the middle of a batch");
            return None;
        }
        let work = async {
            conn.finish_pending().await?;
            let mut queries = Vec::new();
            if conn.tracker().tx_status() != crate::wire::TxStatus::Idle {
                queries.push("ROLLBACK");
            }
            if discard {
                queries.push("DISCARD ALL");
            }
            if !queries.is_empty() {
                conn.run_reset(&queries).await?;
            }
            Ok::<_, BackendError>(())
        };
        match tokio::time::timeout(self.settings.reset_timeout, work).await {
            Ok(Ok(())) if conn.tracker().is_idle() => {
                if discard {
                    conn.discarded();
                }
                Some(conn)
            }
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                tracing::debug!(pool = ?self.key, error = %e, "closing server connection that could not be reset");
                None
            }
            Err(_) => {
                tracing::warn!(pool = ?self.key, timeout = ?self.settings.reset_timeout, "closing server connection: reset timed out");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool_parts(config: &Config) -> PoolParts {
        let users = crate::auth::UserDb::from_config(config).expect("valid users");
        let target = ServerTarget {
            node: "pg0".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            database: "app".into(),
            credentials: users.get("alice").expect("configured").clone(),
            auth_policy: config.server_auth_policy("pg0"),
            connect_timeout: Duration::from_secs(1),
            tls: config.tls.server.clone(),
            max_prepared: 200,
            tcp: Arc::new(arc_swap::ArcSwap::from_pointee(config.pool.tcp)),
        };
        let settings = PoolSettings {
            size: 2,
            reserve_size: 0,
            workers: 1,
            mode: PoolMode::Transaction,
            reset_timeout: Duration::from_secs(1),
            idle_timeout: None,
        };
        let metrics = crate::metrics::Metrics::new().pool("pg0", "app", "alice");
        PoolParts { target, settings, tuning: PoolTuning::default(), metrics, limits: CapLimits::default() }
    }

    #[test]
    fn lifetime_closes_are_spaced_over_the_pool() {
        let hour = Duration::from_secs(3600);
        let cases = [
            (hour, 20, None, true),
            (hour, 20, Some(Duration::from_secs(179)), false),
            (hour, 20, Some(Duration::from_secs(180)), true),
            (hour, 1, Some(Duration::from_secs(3599)), false),
            (Duration::from_secs(1), 4, Some(Duration::from_millis(250)), true),
            (Duration::ZERO, 4, Some(Duration::ZERO), true),
        ];
        for (lifetime, size, since_last, due) in cases {
            assert_eq!(lifetime_turn(lifetime, size, since_last), due, "{lifetime:?} {size} {since_last:?}");
        }
    }

    #[test]
    fn pools_are_created_once_per_key_and_forgotten_when_closed() {
        let config = Config::parse(
            "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\n\
             [cluster]\nsource = \"static\"\nuser = \"postgres\"\npassword = \"\"\n\n\
             [[nodes]]\nname = \"pg0\"\nhost = \"127.0.0.1\"\nport = 5432\nrole = \"primary\"\n\n\
             [[users]]\nname = \"alice\"\nauth_type = \"trust\"\n\n[[databases]]\nname = \"app\"\n",
        )
        .expect("valid config");
        let pools = Pools::default();
        let mut made = 0;
        let first = pools.get_or_create(("pg0", "app", "alice"), || {
            made += 1;
            pool_parts(&config)
        });
        let again = pools.get_or_create(("pg0", "app", "alice"), || {
            made += 1;
            pool_parts(&config)
        });
        let other = pools.get_or_create(("pg1", "app", "alice"), || {
            made += 1;
            pool_parts(&config)
        });
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(made, 2);
        assert_eq!(first.key, PoolKey { node: "pg0".into(), database: "app".into(), user: "alice".into() });
        pools.close_node("pg0");
        let fresh = pools.get_or_create(("pg0", "app", "alice"), || pool_parts(&config));
        assert!(!Arc::ptr_eq(&first, &fresh), "a closed node's pools are forgotten");
    }
}
