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
use crate::pool::Pools;

/// What every client connection shares.
#[derive(Debug)]
pub struct Context {
    pub config: Arc<Config>,
    pub users: UserDb,
    pub cluster: Arc<ClusterView>,
    pub pools: Pools,
    pub cancels: Arc<CancelRegistry>,
    pub statements: StatementRegistry,
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
            pools: Pools::default(),
            cancels: Arc::new(CancelRegistry::default()),
            statements: StatementRegistry::default(),
            round_robin: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        })
    }
}
