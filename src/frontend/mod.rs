//! The client side: listeners, login, and the per-client session that
//! batches requests, routes them, leases server connections and relays.

mod cancel;
mod checkout;
mod control;
mod error;
mod lifecycle;
mod listener;
mod preauth;
mod prepared;
mod registry;
mod server_state;
mod session;
mod startup;

pub use cancel::CancelRegistry;
pub use error::SessionError;
pub use lifecycle::{Lifecycle, StopMode};
pub use listener::serve;
pub use preauth::PreAuth;
pub use registry::{ClientActivity, ClientEntry, ClientRegistry, ClientState, ServerLink};
pub use startup::{application_name, AdminLogin, ADMIN_DATABASES};

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::UserDb;
use crate::backend::{ServerParams, StatementRegistry};
use crate::cluster::ClusterView;
use crate::config::Config;
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
    pub statements: StatementRegistry,
    /// One shared copy of each distinct set of client startup settings.
    pub settings: SettingsInterner,
    /// The ParameterStatus messages logins are welcomed with, encoded once.
    pub welcomes: WelcomeCache,
    /// Round-robin position for reads.
    pub round_robin: AtomicUsize,
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
        Arc::new(Context {
            client_slots: Arc::new(Semaphore::new(config.pool.max_client_conn)),
            pre_auth: PreAuth::default(),
            config_generation: 0.into(),
            config: ArcSwap::new(config),
            users: ArcSwap::from_pointee(users),
            config_path,
            cluster,
            metrics: Arc::new(Metrics::new()),
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            settings: SettingsInterner::default(),
            welcomes: WelcomeCache::default(),
            round_robin: AtomicUsize::new(0),
            clients: Arc::default(),
            lifecycle: Lifecycle::default(),
            monitors: std::sync::Mutex::new(shutdown.child_token()),
            shutdown,
            tasks: TaskTracker::new(),
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

/// Clients with the same startup settings share one `Arc`, so a server
/// connection that already has them is recognised by pointer, not by value.
#[derive(Debug, Default)]
pub struct SettingsInterner {
    known:
        std::sync::Mutex<std::collections::HashMap<ClientSettings, Arc<ClientSettings>, foldhash::fast::RandomState>>,
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

/// The encoded ParameterStatus messages for each (server parameters, client
/// settings) pair seen, so a login copies one block instead of encoding a
/// dozen messages. Both keys are shared `Arc`s (interned settings), compared
/// by pointer; the entries keep them alive, so a pointer is never reused.
#[derive(Debug, Default)]
pub struct WelcomeCache {
    known: std::sync::Mutex<Vec<(ServerParams, Arc<ClientSettings>, Bytes)>>,
}

/// Distinct welcomes kept.
const MAX_CACHED_WELCOMES: usize = 64;

impl WelcomeCache {
    pub fn get_or_encode(&self, server: &ServerParams, client: &Arc<ClientSettings>) -> Bytes {
        let mut known = self.known.lock().expect("welcome lock");
        if let Some((.., block)) = known.iter().find(|(s, c, _)| Arc::ptr_eq(s, server) && Arc::ptr_eq(c, client)) {
            return block.clone();
        }
        let mut block = BytesMut::new();
        for (name, value) in server.iter() {
            // The client's own startup value wins: the session applies it on every server connection.
            let own = client.iter().find(|(k, _)| k.as_bytes() == &name[..]).map(|(_, v)| v.as_bytes());
            crate::wire::put_parameter_status(&mut block, name, own.unwrap_or(value));
        }
        let block = block.freeze();
        // Oldest out: after failovers, pools (and their parameters) are new.
        if known.len() == MAX_CACHED_WELCOMES {
            known.remove(0);
        }
        known.push((server.clone(), client.clone(), block.clone()));
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: &str) -> (Bytes, Bytes) {
        (Bytes::copy_from_slice(name.as_bytes()), Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn welcome_is_encoded_once_per_pair_with_the_clients_own_values() {
        let server: ServerParams = Arc::new(vec![param("TimeZone", "UTC"), param("application_name", "")]);
        let interner = SettingsInterner::default();
        let client = interner.intern(vec![("application_name".into(), "psql".into())]);
        let cache = WelcomeCache::default();
        let first = cache.get_or_encode(&server, &client);
        let mut expected = BytesMut::new();
        crate::wire::put_parameter_status(&mut expected, b"TimeZone", b"UTC");
        crate::wire::put_parameter_status(&mut expected, b"application_name", b"psql");
        assert_eq!(first, expected.freeze());
        let again = cache.get_or_encode(&server, &interner.intern(vec![("application_name".into(), "psql".into())]));
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same pair is served from the cache");
        let other = cache.get_or_encode(&server, &interner.intern(Vec::new()));
        assert_ne!(first, other);
    }
}
