//! The client side: listeners, login, and the per-client session that
//! batches requests, routes them, leases server connections and relays.

mod cancel;
mod error;
mod listener;
mod prepared;
mod session;
mod startup;

pub use cancel::CancelRegistry;
pub use error::SessionError;
pub use listener::serve;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::UserDb;
use crate::backend::StatementRegistry;
use crate::cluster::ClusterView;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;

/// What every client connection shares.
#[derive(Debug)]
pub struct Context {
    pub config: Arc<Config>,
    pub users: UserDb,
    pub cluster: Arc<ClusterView>,
    pub metrics: Arc<Metrics>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    pub statements: StatementRegistry,
    /// One shared copy of each distinct set of client startup settings.
    pub settings: SettingsInterner,
    /// Round-robin position for reads.
    pub round_robin: AtomicUsize,
    /// One permit per client connection (max_client_conn).
    pub client_slots: Arc<Semaphore>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

impl Context {
    pub fn new(config: Arc<Config>, users: UserDb, cluster: Arc<ClusterView>) -> Arc<Context> {
        Arc::new(Context {
            client_slots: Arc::new(Semaphore::new(config.pool.max_client_conn)),
            config,
            users,
            cluster,
            metrics: Arc::new(Metrics::new()),
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            settings: SettingsInterner::default(),
            round_robin: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }
}

/// Clients with the same startup settings share one `Arc`, so a server
/// connection that already has them is recognised by pointer, not by value.
#[derive(Debug, Default)]
pub struct SettingsInterner {
    known: std::sync::Mutex<std::collections::HashMap<ClientSettings, Arc<ClientSettings>>>,
}

/// A client's startup settings as (name, value), sorted by name.
pub type ClientSettings = Vec<(String, String)>;

/// Distinct setting sets kept; beyond this each client gets its own copy.
const MAX_INTERNED_SETTINGS: usize = 1024;

impl SettingsInterner {
    pub fn intern(&self, settings: ClientSettings) -> Arc<ClientSettings> {
        let mut known = self.known.lock().expect("settings lock");
        if let Some(shared) = known.get(&settings) {
            return shared.clone();
        }
        let shared = Arc::new(settings);
        if known.len() < MAX_INTERNED_SETTINGS {
            known.insert(shared.as_ref().clone(), shared.clone());
        }
        shared
    }
}
