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

mod inspect;

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, ServerConn, ServerParams, ServerTarget};
use crate::config::PoolMode;
use crate::metrics::PoolMetrics;
use crate::worker;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("no server connection available within query_wait_timeout ({0:?})")]
    Timeout(Duration),
    #[error("{0}")]
    Connect(#[from] BackendError),
    #[error("pool is closed")]
    Closed,
}

/// One worker's idle connections. Boxed: a connection changes hands twice
/// per transaction, and moving a pointer is cheaper than copying the
/// connection's few hundred bytes (callgrind: ~900 fewer instructions per
/// transaction).
#[allow(clippy::vec_box)]
type IdleList = Vec<Box<ServerConn>>;

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

/// Counts something (a waiting client, a connection logging in) while it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
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
    fn new(workers: usize) -> Idle {
        Idle { lists: (0..workers.max(1)).map(|_| Vec::new()).collect(), total: 0 }
    }

    #[inline]
    fn list(&mut self, worker: usize) -> &mut IdleList {
        let last = self.lists.len() - 1;
        &mut self.lists[worker.min(last)]
    }

    /// The most recently used connection of `worker`'s list that has not
    /// expired and has nothing unasked-for to read; the others are closed.
    #[inline]
    fn pop_healthy(&mut self, worker: usize, now: Instant, timeout: Option<Duration>) -> Option<Box<ServerConn>> {
        let list = self.list(worker);
        let mut popped = 0;
        let mut found = None;
        while let Some(mut conn) = list.pop() {
            popped += 1;
            let expired = timeout.is_some_and(|t| now.saturating_duration_since(conn.last_used) > t);
            if !expired && !conn.has_unsolicited_input() {
                found = Some(conn);
                break;
            }
        }
        self.total -= popped;
        found
    }

    /// Adds `conn` to `owner`'s list, closing that list's expired ones.
    #[inline]
    fn push(&mut self, conn: Box<ServerConn>, owner: usize, now: Instant, timeout: Option<Duration>) {
        let list = self.list(owner);
        let mut expired = 0;
        if let Some(timeout) = timeout {
            expired = list.iter().take_while(|c| now.duration_since(c.last_used) > timeout).count();
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

    fn iter(&self) -> impl Iterator<Item = &Box<ServerConn>> {
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
    /// Workers (`[pool] workers`): each has a share of `size` (see the module docs).
    pub workers: usize,
    pub mode: PoolMode,
    pub reset_timeout: Duration,
    pub idle_timeout: Option<Duration>,
}

/// Connections to one node for one (database, user).
#[derive(Debug)]
pub struct Pool {
    pub key: PoolKey,
    target: ServerTarget,
    settings: PoolSettings,
    /// Each worker's share of the pool size (see `checkout`).
    shares: Vec<Share>,
    /// Fired when a slot is freed that no client of its own worker waits
    /// for while clients of another worker do: they try to borrow it.
    spare: Notify,
    /// Idle connections, one list per worker's share.
    idle: Mutex<Idle>,
    /// What the first connection reported at startup; clients see these at login.
    server_params: Mutex<Option<ServerParams>>,
    metrics: PoolMetrics,
    /// Slots whose connection is logging in, being reset after a client,
    /// or held back until a cancel aimed at it is done (SHOW POOLS).
    logging_in: AtomicUsize,
    resetting: AtomicUsize,
    being_canceled: AtomicUsize,
    /// Cancelled by [`Pool::close`]: the node must not be used any more.
    closed: CancellationToken,
}

impl Pool {
    pub fn new(key: PoolKey, target: ServerTarget, settings: PoolSettings, metrics: PoolMetrics) -> Arc<Pool> {
        let workers = settings.workers;
        Arc::new(Pool {
            key,
            metrics,
            target,
            shares: (0..workers.max(1)).map(|w| Share::new(share_of(settings.size, workers.max(1), w))).collect(),
            spare: Notify::new(),
            settings,
            idle: Mutex::new(Idle::new(workers)),
            server_params: Mutex::new(None),
            logging_in: AtomicUsize::new(0),
            resetting: AtomicUsize::new(0),
            being_canceled: AtomicUsize::new(0),
            closed: CancellationToken::new(),
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

    /// Of [`Pool::in_use`]: connections logging in, being reset after a
    /// client, and held back until a cancel aimed at them is done.
    pub fn in_transition(&self) -> (usize, usize, usize) {
        let count = |n: &AtomicUsize| n.load(Ordering::Relaxed);
        (count(&self.logging_in), count(&self.resetting), count(&self.being_canceled))
    }

    /// Connections leased to clients (or logging in, being reset, or
    /// waiting for a cancel) right now.
    pub fn in_use(&self) -> usize {
        let size = |share: &Share| share.size.load(Ordering::Relaxed);
        self.shares.iter().map(|share| size(share).saturating_sub(share.permits.available_permits())).sum()
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
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
        let here = worker::current().min(self.shares.len() - 1);
        // A free slot needs no timer: only a real wait arms one.
        let (permit, owner, mut waited) = match self.shares[here].permits.clone().try_acquire_owned() {
            Ok(permit) => (permit, here, false),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(PoolError::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => match self.borrow_at_once(here) {
                Some((permit, owner)) => (permit, owner, false),
                None => {
                    // Boxed: a timer is large, and only a real wait needs one; inline,
                    // it would be part of every client task's size.
                    match Box::pin(tokio::time::timeout(wait, self.wait_for_slot(here))).await {
                        Ok(Ok((permit, owner))) => (permit, owner, true),
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
        let conn = match self.take_idle(owner, here, now) {
            Some(conn) => conn,
            None => {
                let login = Counted::new(&self.logging_in);
                // Boxed: a connect's state is large and rare, and would
                // otherwise be part of every client task's size.
                let conn = match Box::pin(ServerConn::connect(&self.target)).await {
                    Ok(conn) => Box::new(conn),
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
                drop(login);
                // The client waited for the login too.
                now = Instant::now();
                waited = true;
                conn
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
            holder: here,
            discard: false,
            poisoned: false,
        })
    }

    /// A free slot of another worker for a client that found none of its
    /// own, taken at once only when this worker's share has no slot at all:
    /// otherwise one of its own is soon free, and waiting for it (up to
    /// [`BORROW_DEFERRAL`]) costs less than moving a connection.
    fn borrow_at_once(&self, here: usize) -> Option<(OwnedSemaphorePermit, usize)> {
        if self.shares.len() == 1 || self.shares[here].size.load(Ordering::Relaxed) > 0 {
            return None;
        }
        self.borrow(here)
    }

    /// A free slot of another worker, without waiting: that worker has no
    /// client waiting for it (a semaphore with waiters has no free permits).
    fn borrow(&self, here: usize) -> Option<(OwnedSemaphorePermit, usize)> {
        let workers = self.shares.len();
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
        let _waiting = Counted::new(&share.waiting);
        if self.shares.len() > 1 && share.size.load(Ordering::Relaxed) > 0 {
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

    /// A slot of `owner`'s share is free again: when no client of `owner`
    /// waits for it but clients of other workers do, they may borrow it.
    fn slot_freed(&self, owner: usize) {
        if self.shares.len() == 1 || self.shares[owner].waiting.load(Ordering::SeqCst) > 0 {
            return;
        }
        if self.shares.iter().any(|share| share.waiting.load(Ordering::SeqCst) > 0) {
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
    fn take_idle(&self, owner: usize, here: usize, now: Instant) -> Option<Box<ServerConn>> {
        loop {
            let conn = {
                let mut idle = self.idle.lock().expect("pool lock");
                let found = idle.pop_healthy(owner, now, self.settings.idle_timeout);
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
    fn put_idle(&self, mut conn: Box<ServerConn>, owner: usize, now: Instant) {
        conn.last_used = now;
        let mut idle = self.idle.lock().expect("pool lock");
        // Checked under the lock that `close` clears, so nothing slips in after it.
        if self.is_closed() {
            return;
        }
        idle.push(conn, owner, now, self.settings.idle_timeout);
        self.metrics.idle.set(idle.total as i64);
    }

    /// Resets a connection a client left dirty; returns it when it is clean again.
    async fn reset(&self, mut conn: Box<ServerConn>, discard: bool) -> Option<Box<ServerConn>> {
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
    conn: Option<Box<ServerConn>>,
    /// When the client got the connection.
    started: Instant,
    /// Getting it took a wait for a slot, or a new connection's login.
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
    /// ... and the one whose client holds it, whose share it joins.
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
        (self.conn.as_mut().expect("lease holds a connection until dropped"), &self.pool)
    }

    /// When the client got the connection (after any wait, and after
    /// logging in a new one).
    pub fn assigned_at(&self) -> Instant {
        self.started
    }

    /// Whether getting it took a wait for a slot or a new connection's
    /// login; otherwise it was there at once.
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
        if self.poisoned || pool.is_closed() {
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
                let _held = Counted::new(&pool.being_canceled);
                wait_for_cancels(&conn).await
            };
            if !cancels_done {
                // The server never confirmed the cancel: the connection may
                // still get it, so nobody else may.
                drop(conn);
            } else {
                let reset = {
                    let _resetting = Counted::new(&pool.resetting);
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

/// All pools, created on first use.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>, foldhash::fast::RandomState>>,
}

impl Pools {
    pub fn get_or_create(
        &self,
        (node, database, user): (&str, &str, &str),
        make: impl FnOnce() -> (ServerTarget, PoolSettings, PoolMetrics),
    ) -> Arc<Pool> {
        let key = PoolKey { node: node.to_owned(), database: database.to_owned(), user: user.to_owned() };
        let mut pools = self.pools.lock().expect("pools lock");
        pools
            .entry(key)
            .or_insert_with_key(|key| {
                let (target, settings, metrics) = make();
                Pool::new(key.clone(), target, settings, metrics)
            })
            .clone()
    }

    /// [`Pools::get_or_create`], retiring the pool there is when `fits` says
    /// it no longer serves (its credentials changed) and creating another.
    pub fn get_fitting(
        &self,
        key: (&str, &str, &str),
        fits: impl FnOnce(&Pool) -> bool,
        make: impl FnOnce() -> (ServerTarget, PoolSettings, PoolMetrics),
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
        let (target, settings, metrics) = make();
        let pool = Pool::new(key.clone(), target, settings, metrics);
        pools.insert(key, pool.clone());
        pool
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

    fn pool_parts(config: &Config) -> (ServerTarget, PoolSettings, PoolMetrics) {
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
        };
        let settings = PoolSettings {
            size: 2,
            workers: 1,
            mode: PoolMode::Transaction,
            reset_timeout: Duration::from_secs(1),
            idle_timeout: None,
        };
        (target, settings, crate::metrics::Metrics::new().pool("pg0", "app", "alice"))
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
