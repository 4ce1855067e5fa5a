//! What the whole process shares, and the operator's controls over it:
//! the [`Context`] every connection is served with (configuration in force,
//! users, topology view, pools, metrics, tasks), the stop/drain
//! [`Lifecycle`], the registry of logged-in clients, the cancel keys, the
//! pre-auth admission counts, the interned client settings and the cache of
//! encoded welcomes; which pool serves a (node, database, user) (`pools`)
//! and the pools' upkeep in the background (`janitor`); and pause, resume
//! and reload (`control`).
//!
//! Everything here is state that outlives any one connection and is reached
//! through the `Context`. How a client is read, logged in and served is the
//! client side's (`frontend`), which uses this module; so does the admin
//! console (`admin`). This module knows neither: it names no session, no
//! listener, no console. Where a file holds both shared state and the logic
//! that fills it, the state came here and the client-side logic stayed:
//! `welcome` keeps only the cache (deciding what goes in it takes a server
//! connection and a login, `frontend::welcome`); `cancel` and `preauth` came
//! whole, since nothing in them reads from a client (the client side reads a
//! CancelRequest and hands over its key; the admission counts are given an
//! address and limits).

mod admin_login;
mod cancel;
mod commits;
mod control;
mod janitor;
mod lifecycle;
mod pools;
mod preauth;
mod registry;
mod welcome;

pub use admin_login::{application_name, AdminLogin};
pub use cancel::CancelRegistry;
pub use commits::{CausalFloor, CausalLimits, Commits, Sample};
pub use janitor::start_janitor;
pub use lifecycle::{Lifecycle, StopMode};
pub use pools::cap_limit;
pub use preauth::PreAuth;
pub use registry::{ClientActivity, ClientEntry, ClientRegistry, ClientState, ServerLink};
pub use welcome::WelcomeCache;

// For the client side only: what one connection holds, and how it is admitted.
pub(crate) use cancel::CancelHandle;
pub(crate) use preauth::{Admission, Limits, Refusal, Slot, CANCEL_WINDOW};
pub(crate) use registry::{ClientInfo, Registered};

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{LookupCounters, UserDb, UserLookup};
use crate::backend::{StatementContext, StatementRegistry};
use crate::cluster::ClusterView;
use crate::config::{Config, TcpOptions};
use crate::metrics::Metrics;
use crate::pool::Pools;

/// What every client connection shares.
#[derive(Debug)]
pub struct Context {
    /// Replaced as a whole by a reload; see [`Context::config`].
    config: ArcSwap<Config>,
    /// Advances with every reload, so a session can keep its own snapshot
    /// of `config` and look at one atomic instead of loading it each time.
    config_generation: std::sync::atomic::AtomicU64,
    users: ArcSwap<UserDb>,
    /// The file a reload reads, when pgrelay was started from one.
    pub config_path: Option<PathBuf>,
    pub cluster: Arc<ClusterView>,
    pub metrics: Arc<Metrics>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    /// Read-your-writes: primary positions covering commits, causal ids' last commits.
    pub commits: Commits,
    pub statements: StatementRegistry,
    /// One shared copy of each distinct set of client startup settings.
    pub settings: SettingsInterner,
    /// The ParameterStatus messages logins are welcomed with, encoded once.
    pub welcomes: WelcomeCache,
    /// Connections each worker serves right now (see [`WorkerLoad`]).
    pub worker_load: Arc<WorkerLoad>,
    /// `[pool]`'s TCP options for server connections, shared with every
    /// pool's target (see `ServerTarget::tcp`); a reload stores new ones.
    pub server_tcp: Arc<ArcSwap<TcpOptions>>,
    /// One permit per logged-in client (max_client_conn).
    pub client_slots: Arc<Semaphore>,
    /// Connections still logging in (max_pre_auth_conn, max_pre_auth_conn_per_addr).
    pub pre_auth: PreAuth,
    /// Logged-in clients, for the admin console.
    pub clients: Arc<ClientRegistry>,
    pub lifecycle: Lifecycle,
    /// Ends everything at once: sessions, monitors, HTTP.
    pub shutdown: CancellationToken,
    /// Every task but the client connections'.
    pub tasks: TaskTracker,
    /// One task per client connection: a drain waits for these alone.
    pub client_tasks: TaskTracker,
    /// Stops the current generation of topology monitors (a reload restarts them).
    pub(crate) monitors: std::sync::Mutex<CancellationToken>,
}

impl Context {
    pub fn new(
        config: Arc<Config>,
        users: UserDb,
        cluster: Arc<ClusterView>,
        config_path: Option<PathBuf>,
    ) -> Arc<Context> {
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::with_workers(config.pool.workers));
        let tasks = TaskTracker::new();
        let users = users.with_lookup(user_lookup(&config, &metrics, &tasks, &shutdown));
        let workers = config.pool.workers;
        Arc::new(Context {
            client_slots: Arc::new(Semaphore::new(config.pool.max_client_conn)),
            server_tcp: Arc::new(ArcSwap::from_pointee(config.pool.tcp)),
            pre_auth: PreAuth::default(),
            config_generation: 0.into(),
            config: ArcSwap::new(config),
            users: ArcSwap::from_pointee(users),
            config_path,
            cluster,
            metrics,
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            commits: Commits::default(),
            statements: StatementRegistry::default(),
            settings: SettingsInterner::default(),
            welcomes: WelcomeCache::default(),
            worker_load: Arc::new(WorkerLoad::new(workers)),
            clients: Arc::default(),
            lifecycle: Lifecycle::default(),
            monitors: std::sync::Mutex::new(shutdown.child_token()),
            shutdown,
            tasks,
            client_tasks: TaskTracker::new(),
        })
    }

    /// The configuration in force (a reload replaces it; hold the guard briefly).
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// How many times the configuration was replaced.
    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The configuration in force with its generation (read first, so a
    /// reload in between is seen again at the next look, never missed).
    pub fn config_snapshot(&self) -> (u64, Arc<Config>) {
        let generation = self.config_generation();
        (generation, self.config.load_full())
    }

    /// Replaces the configuration in force.
    fn store_config(&self, config: Arc<Config>) {
        self.config.store(config);
        self.config_generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// The configured users in force.
    pub fn users(&self) -> Guard<Arc<UserDb>> {
        self.users.load()
    }
}

/// The user lookup `[auth]` asks for, with an empty cache.
fn user_lookup(
    config: &Config,
    metrics: &Metrics,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<Arc<UserLookup>> {
    let settings = config.auth.clone()?;
    let counter = |result| metrics.auth_queries.with_label_values(&[result]);
    let counters = LookupCounters {
        found: counter("found"),
        not_found: counter("not_found"),
        error: counter("error"),
        throttled: counter("throttled"),
    };
    let connect_timeout = config.pool.server_connect_timeout;
    let tls = config.tls.server.clone();
    Some(Arc::new(UserLookup::new(settings, tls, connect_timeout, counters, tasks.clone(), shutdown.clone())))
}

/// Clients with the same startup settings share one `Arc`, so a server
/// connection that already has them is recognised by pointer, not by value.
/// Each shared set also names a statement context: clients with the same
/// settings may share prepared statements.
#[derive(Debug, Default)]
pub struct SettingsInterner {
    known: std::sync::Mutex<
        std::collections::HashMap<ClientSettings, (Arc<ClientSettings>, StatementContext), foldhash::fast::RandomState>,
    >,
    next_context: std::sync::atomic::AtomicU64,
}

pub use crate::backend::ClientSettings;

/// Distinct setting sets kept; beyond this each client gets its own copy.
const MAX_INTERNED_SETTINGS: usize = 1024;

impl SettingsInterner {
    pub fn intern(&self, settings: ClientSettings) -> Arc<ClientSettings> {
        let mut known = self.known.lock().expect("settings lock");
        if let Some((shared, _)) = known.get(&settings) {
            return shared.clone();
        }
        let shared = Arc::new(settings);
        if known.len() < MAX_INTERNED_SETTINGS {
            known.insert(shared.as_ref().clone(), (shared.clone(), self.private_context()));
        }
        shared
    }

    /// The statement context of clients with these settings: shared when
    /// they were interned, this client's own otherwise.
    pub fn statement_context(&self, settings: &Arc<ClientSettings>) -> StatementContext {
        let known = self.known.lock().expect("settings lock");
        match known.get(settings.as_ref()) {
            Some((shared, context)) if Arc::ptr_eq(shared, settings) => *context,
            _ => self.private_context(),
        }
    }

    /// A statement context no other client has.
    pub fn private_context(&self) -> StatementContext {
        self.next_context.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Connections each worker serves (accepted, not yet closed, counted from
/// the moment the acceptor picks the worker). The acceptor gives each new
/// connection to the least busy worker, so clients spread evenly and each
/// worker's share of the pools fits its clients.
#[derive(Debug)]
pub struct WorkerLoad {
    counts: Vec<AtomicUsize>,
}

impl WorkerLoad {
    fn new(workers: usize) -> WorkerLoad {
        WorkerLoad { counts: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect() }
    }

    /// Connections served by all workers together.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|w| w.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// The worker serving the fewest connections (the first of equals).
    pub fn least_busy(&self) -> usize {
        let load = |w: usize| self.counts[w].load(std::sync::atomic::Ordering::Relaxed);
        (0..self.counts.len()).min_by_key(|&w| load(w)).unwrap_or(0)
    }

    /// Counts a connection on `worker` while the guard lives.
    pub fn enter(self: &Arc<Self>, worker: usize) -> LoadGuard {
        let worker = worker.min(self.counts.len() - 1);
        self.counts[worker].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LoadGuard { load: self.clone(), worker }
    }
}

/// One connection counted in [`WorkerLoad`].
#[derive(Debug)]
pub struct LoadGuard {
    load: Arc<WorkerLoad>,
    worker: usize,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.load.counts[self.worker].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
