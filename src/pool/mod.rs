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

mod caps;
mod inspect;
mod tuning;
mod upkeep;

use std::collections::HashMap;

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
pub use tuning::PoolTuning;
use tuning::Tunables;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection available within query_wait_timeout ({0:?})")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(#[from] BackendError),
    #[error("pool is closed")]
    Closed,
    /// The cap on the node's connections of the database or user stayed
    /// reached for the whole of query_wait_timeout.
    #[error("no server connection available within query_wait_timeout: {cap} = {limit} reached on node {node}")]
    Capped { cap: &'static str, limit: usize, node: String },
}

/// A server connection of a pool, counted under the pool's caps
/// (`max_db_connections`, `max_user_connections`) for as long as it lives.
#[derive(Debug)]
pub(crate) struct Pooled {
    conn: ServerConn,
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
        let Pooled { conn, _counted } = *self;
        Ok(Box::new(Pooled { conn: conn.moved_to_this_worker()?, _counted }))
    }
}

/// One worker's idle connections. Boxed: a connection changes hands twice
/// per transaction, and moving a pointer is cheaper than copying the
/// connection's few hundred bytes (callgrind: ~900 fewer instructions per
/// transaction).
#[allow(clippy::vec_box)]
type IdleList = Vec<Box<Pooled>>;

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

/// The longest an idle connection's check (`server_check_delay`) may take
/// (or `server_connect_timeout`, when shorter): a healthy server answers a
/// Sync at once, and a connection that does not is replaced by a new one.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a checkout waiting for room under a cap looks again for an
/// idle connection to close or to take, besides waking at every close.
const CAP_POLL: Duration = Duration::from_millis(10);

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

/// A pool's idle connections: one list per worker's share, each ordered by last
/// use (pushed at the end, taken from the end, so expired ones are at the
/// front), and their total.
#[derive(Debug)]
struct Idle {
    lists: Vec<IdleList>,
    total: usize,
}

impl Idle {
    /// One list per worker, and one for the reserve (the last).
    fn new(workers: usize) -> Idle {
        Idle { lists: (0..workers.max(1) + 1).map(|_| Vec::new()).collect(), total: 0 }
    }

    #[inline]
    fn list(&mut self, worker: usize) -> &mut IdleList {
        let last = self.lists.len() - 1;
        &mut self.lists[worker.min(last)]
    }

    /// The most recently used connection of `worker`'s list that has not
    /// expired and has nothing unasked-for to read; the others are closed.
    /// Expired connections stay usable while the pool would otherwise keep
    /// fewer than `floor` idle (`min_pool_size`).
    #[inline]
    fn pop_healthy(
        &mut self,
        worker: usize,
        now: Instant,
        timeout: Option<Duration>,
        floor: usize,
    ) -> Option<Box<Pooled>> {
        let total = self.total;
        let list = self.list(worker);
        let mut popped = 0;
        let mut found = None;
        while let Some(mut conn) = list.pop() {
            // Idle connections left, this one included.
            let left = total - popped;
            popped += 1;
            let expired = timeout.is_some_and(|t| now.saturating_duration_since(conn.last_used) > t) && left > floor;
            if !expired && !conn.has_unsolicited_input() {
                found = Some(conn);
                break;
            }
        }
        self.total -= popped;
        found
    }

    /// Adds `conn` to `owner`'s list, closing that list's expired ones (but
    /// keeping `floor` idle connections in the pool).
    #[inline]
    fn push(&mut self, conn: Box<Pooled>, owner: usize, now: Instant, timeout: Option<Duration>, floor: usize) {
        let total = self.total;
        let list = self.list(owner);
        let mut expired = 0;
        if let Some(timeout) = timeout {
            expired = list.iter().take_while(|c| now.duration_since(c.last_used) > timeout).count();
            expired = expired.min((total + 1).saturating_sub(floor));
            if expired > 0 {
                list.drain(..expired);
            }
        }
        list.push(conn);
        self.total = self.total + 1 - expired;
    }

    fn clear(&mut self) {
        self.lists.iter_mut().for_each(Vec::clear);
        self.total = 0;
    }

    fn iter(&self) -> impl Iterator<Item = &Box<Pooled>> {
        self.lists.iter().flatten()
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
    /// When the pool was made: the origin of `lifetime_closed`.
    born: Instant,
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
    }

    /// Whether `conn` has outlived `server_lifetime` and is to be closed
    /// now. As PgBouncer does, such closes are spaced at least
    /// `server_lifetime / pool size` apart, so that connections opened
    /// together (a burst, a failover) are not all replaced at once; a
    /// connection whose turn has not come yet serves on meanwhile. A `true`
    /// takes the turn: act on it.
    #[inline]
    fn lifetime_over(&self, conn: &ServerConn, now: Instant) -> bool {
        let Some(lifetime) = self.tuning.lifetime() else { return false };
        if now.saturating_duration_since(conn.created) < lifetime {
            return false;
        }
        let now = u64::try_from(now.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX - 1);
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
                        Err(_) => return Err(PoolError::Timeout(wait)),
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
            Some(conn) if !self.check_due(&conn, now) => conn,
            // Boxed: a check's or a connect's state is large and rare, and
            // would otherwise be part of every client task's size.
            found => {
                let deadline = waited_since.unwrap_or(now) + wait;
                match Box::pin(self.checked_or_new(found, owner, here, deadline)).await {
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

    /// Whether an idle connection unused since `conn.last_used` is to be
    /// checked before it is leased (`server_check_delay`).
    #[inline]
    fn check_due(&self, conn: &ServerConn, now: Instant) -> bool {
        now.saturating_duration_since(conn.last_used) >= self.tuning.check_delay()
    }

    /// A connection for a lease that found `found` idle (due a check) or
    /// none: an idle connection that passes its check, or a new one. One
    /// that fails is closed and the next idle one tried, so a connection
    /// broken while idle (a server restart, a killed backend, a network
    /// cut) costs the client the check's time, never an error. At a cap
    /// (`max_db_connections`, `max_user_connections`), an idle connection of
    /// another pool under it is closed to make room, or the lease waits
    /// (until `deadline`) for a close or for a connection of its own pool.
    async fn checked_or_new(
        &self,
        mut found: Option<Box<Pooled>>,
        owner: usize,
        here: usize,
        deadline: Instant,
    ) -> Result<Box<Pooled>, PoolError> {
        loop {
            while let Some(mut conn) = found {
                if !self.check_due(&conn, Instant::now()) {
                    return Ok(conn);
                }
                let timeout = self.target.connect_timeout.min(CHECK_TIMEOUT);
                let _testing = Tally::new(&self.testing);
                match conn.check_alive(timeout).await {
                    Ok(()) => return Ok(conn),
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
                    let node = self.key.node.clone();
                    return Err(PoolError::Capped { cap: full.kind.key(), limit: full.limit(), node });
                }
                full.closed_or(CAP_POLL.min(deadline - now)).await;
            }
            found = self.take_idle(owner, here, Instant::now());
        }
    }

    /// Places for one more connection under the pool's caps, or the cap that is full.
    fn try_count(&self) -> Result<Counted, &Arc<Cap>> {
        let database = self.caps[0].try_take().ok_or(&self.caps[0])?;
        let user = self.caps[1].try_take().ok_or(&self.caps[1])?;
        Ok([database, user])
    }

    /// Opens a new connection (the caller holds a slot for it, and its places under the caps).
    async fn connect(&self, counted: Counted) -> Result<Box<Pooled>, PoolError> {
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
        Ok(Box::new(Pooled { conn, _counted: counted }))
    }

    /// Closes the least recently used idle connection, to make room under a
    /// cap for another pool; whether there was one.
    fn close_oldest_idle(&self) -> bool {
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
                let found = idle.pop_healthy(owner, now, self.settings.idle_timeout, self.idle_floor(0));
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
        idle.push(conn, owner, now, self.settings.idle_timeout, self.idle_floor(1));
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

/// A checked-out server connection. Dropping it returns the connection.
#[derive(Debug)]
pub struct Lease {
    conn: Option<Box<Pooled>>,
    /// When the client got the connection.
    started: Instant,
    /// Getting it took a wait for a slot, a check or a new connection's login.
    waited: bool,
    /// When the connection's last answer came, if the holder noted it: it
    /// is idle as of then (saves a clock reading when it goes back).
    idle_since: Option<Instant>,
    /// Counted in the pool's `pinned` gauge while held.
    pinned: bool,
    pool: Arc<Pool>,
    permit: Option<OwnedSemaphorePermit>,
    /// The worker whose share the slot (permit) came from ...
    owner: usize,
    /// ... and the one whose client holds it, whose share it joins; for a
    /// slot of the reserve, both are the reserve (it stays there).
    holder: usize,
    discard: bool,
    poisoned: bool,
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

/// A cap's (node, what, database or user name).
type CapKey = (String, CapKind, String);

/// The user a pool logs in as, as its credentials came.
pub type PoolUser = Arc<crate::auth::UserEntry>;

/// All pools, created on first use.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>>,
    /// The (database, user) pairs that have had a pool on the primary,
    /// with the user's credentials: `min_pool_size` gives them a pool on
    /// whichever node is the primary, also after it moved.
    primary_pairs: Mutex<HashMap<(String, String), PoolUser, foldhash::fast::RandomState>>,
    /// The caps by (node, what, database or user name). Locked after `pools`, never before.
    caps: Mutex<HashMap<CapKey, Arc<Cap>, foldhash::fast::RandomState>>,
}

impl Pools {
    /// Notes that `database` and `user` had a pool on the primary.
    pub fn remember_primary_pair(&self, database: &str, user: &PoolUser) {
        let mut pairs = self.primary_pairs.lock().expect("pools lock");
        pairs.insert((database.to_owned(), user.name.clone()), user.clone());
    }

    /// Every (database, user) that has had a pool on the primary.
    pub fn primary_pairs(&self) -> Vec<(String, PoolUser)> {
        let pairs = self.primary_pairs.lock().expect("pools lock");
        pairs.iter().map(|((database, _), user)| (database.clone(), user.clone())).collect()
    }

    /// Forgets a pair whose database or user is gone from the configuration.
    pub fn forget_primary_pair(&self, database: &str, user: &str) {
        self.primary_pairs.lock().expect("pools lock").remove(&(database.to_owned(), user.to_owned()));
    }

    pub fn get_or_create(&self, key: (&str, &str, &str), make: impl FnOnce() -> PoolParts) -> Arc<Pool> {
        self.get_fitting(key, |_| true, make)
    }

    /// [`Pools::get_or_create`], retiring the pool there is when `fits` says
    /// it no longer serves (its credentials changed) and creating another.
    pub fn get_fitting(
        &self,
        key: (&str, &str, &str),
        fits: impl FnOnce(&Pool) -> bool,
        make: impl FnOnce() -> PoolParts,
    ) -> Arc<Pool> {
        let (node, database, user) = key;
        let key = PoolKey { node: node.to_owned(), database: database.to_owned(), user: user.to_owned() };
        let mut pools = self.pools.lock().expect("pools lock");
        if let Some(pool) = pools.get(&key) {
            if fits(pool) {
                return pool.clone();
            }
            pool.retire();
        }
        let parts = make();
        let caps = [
            self.cap(node, CapKind::Database, database, parts.limits.database),
            self.cap(node, CapKind::User, user, parts.limits.user),
        ];
        let pool = Pool::new(key.clone(), parts, caps);
        pool.caps.iter().for_each(|cap| cap.join(&pool));
        pools.insert(key, pool.clone());
        pool
    }

    /// The cap on `node`'s connections of a database or user, with `limit` in force.
    fn cap(&self, node: &str, kind: CapKind, name: &str, limit: usize) -> Arc<Cap> {
        let mut caps = self.caps.lock().expect("caps lock");
        let key = (node.to_owned(), kind, name.to_owned());
        let cap = caps.entry(key).or_insert_with(|| Arc::new(Cap::new(kind, limit)));
        cap.set_limit(limit);
        cap.clone()
    }

    /// Applies a reload's caps (`limit` of each database's and user's) to
    /// the pools there are; forgets the caps no connection counts under.
    pub fn set_cap_limits(&self, limit: impl Fn(CapKind, &str) -> usize) {
        let mut caps = self.caps.lock().expect("caps lock");
        caps.retain(|_, cap| cap.open() > 0 || Arc::strong_count(cap) > 1);
        for ((_, kind, name), cap) in caps.iter() {
            cap.set_limit(limit(*kind, name));
        }
    }

    /// The connections open on `node` under the cap of a database or user
    /// and its limit (0: none), if any pool counts under it.
    pub fn cap_state(&self, node: &str, kind: CapKind, name: &str) -> Option<(usize, usize)> {
        let caps = self.caps.lock().expect("caps lock");
        caps.get(&(node.to_owned(), kind, name.to_owned())).map(|cap| (cap.open(), cap.limit()))
    }

    /// Closes and forgets every pool of `node` (its server connections must
    /// not be used any more); the next use creates fresh pools.
    pub fn close_node(&self, node: &str) {
        let mut pools = self.pools.lock().expect("pools lock");
        pools.retain(|key, pool| {
            if key.node == node {
                pool.close();
            }
            key.node != node
        });
    }

    /// Retires and forgets every pool for which `keep` says no.
    pub fn retire_unless(&self, mut keep: impl FnMut(&Pool) -> bool) -> usize {
        let mut pools = self.pools.lock().expect("pools lock");
        let before = pools.len();
        pools.retain(|_, pool| {
            let kept = keep(pool);
            if !kept {
                pool.retire();
            }
            kept
        });
        before - pools.len()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.lock().expect("pools lock").values().cloned().collect()
    }

    /// What any server of this (database, user) reported at startup: the
    /// nodes of one cluster report the same values.
    pub fn server_params_for(&self, database: &str, user: &str) -> Option<ServerParams> {
        let pools = self.pools.lock().expect("pools lock");
        pools.iter().filter(|(k, _)| k.database == database && k.user == user).find_map(|(_, p)| p.server_params())
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
