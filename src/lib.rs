//! pgrelay: a replication-aware PostgreSQL proxy. Clients connect to a
//! read-write and a read-only port; transactions go to the primary or
//! to the least busy replica over pooled server connections.
//!
//! # Layers
//!
//! Each module uses only the ones below it; none names one that uses it.
//!
//! - This file, the entry point ([`App`], [`RunningApp`]): builds the
//!   `Context`, binds the listeners, starts the workers, and wires the two
//!   sides together: every listener is given the admin console as the
//!   handler for admin logins. It alone names both `frontend` and `admin`.
//! - `frontend` (the client side: listeners, login, sessions) and `admin`
//!   (HTTP endpoints, admin console): side by side, neither names the other.
//!   A login that names the console returns an `app::AdminLogin`, which the
//!   listener hands to the `frontend::ConsoleHandler` it was started with.
//! - `app`: what the whole process shares (`Context`, lifecycle, client
//!   registry, cancel keys, admission counts) and the operator's controls
//!   (pause, resume, reload). It knows nothing of sessions or the console.
//! - `pool`, `backend`, `cluster`, `router`, `auth`, `metrics`: pools and
//!   server connections, topology, routing decisions, authentication.
//! - `config`, `wire`, `stream`, `worker` (which worker thread this is):
//!   the leaves. `localcluster` and `demo` serve `pgrelay demo` and the tests.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod frontend;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod localcluster;
pub mod metrics;
pub mod pool;
pub mod router;
pub mod stream;
pub mod wire;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpListener;

pub use app::StopMode;
use app::{AdminLogin, Context};
use cluster::monitor::Generation;
use cluster::{ClusterView, Topology};
use config::{Config, Source};
use frontend::{Accepted, Dispatch};
use router::ListenerKind;
use stream::Stream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error("cannot start the workers ([pool] workers): {0}")]
    Workers(std::io::Error),
}

/// A running pgrelay: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct RunningApp {
    pub rw_addr: SocketAddr,
    /// The HTTP endpoints (/metrics /livez /readyz /topology).
    pub http_addr: SocketAddr,
    pub ro_addr: SocketAddr,
    ctx: Arc<Context>,
    /// One per worker thread (workers 1 and up), fired when it has finished.
    workers: Vec<tokio::sync::oneshot::Receiver<()>>,
}

pub struct App;

impl App {
    /// Loads `path` and starts serving; RELOAD and SIGHUP read `path` again.
    pub async fn start_from(path: &std::path::Path) -> Result<RunningApp, StartError> {
        let config = Config::load(path).map_err(|e| StartError::Config(e.to_string()))?;
        Self::start_with(config, Some(path.to_owned())).await
    }

    /// Binds the listeners and starts serving (no file to reload from).
    pub async fn start(config: Config) -> Result<RunningApp, StartError> {
        Self::start_with(config, None).await
    }

    async fn start_with(config: Config, path: Option<std::path::PathBuf>) -> Result<RunningApp, StartError> {
        let users = auth::UserDb::from_config(&config).map_err(StartError::Config)?;
        let initial = match config.cluster.source {
            Source::Static => Topology::from_static(&config),
            Source::Postgres | Source::Patroni => Topology::unchecked(&config),
        };
        let cluster = Arc::new(ClusterView::new(initial));
        let config = Arc::new(config);
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
        };
        let rw = bind(config.listen.rw, "listen.rw").await?;
        let ro = bind(config.listen.ro, "listen.ro").await?;
        let http = bind(config.listen.http, "listen.http").await?;
        let (rw_addr, ro_addr) = (rw.local_addr().expect("bound"), ro.local_addr().expect("bound"));
        let http_addr = http.local_addr().expect("bound");
        let ctx = Context::new(config, users, cluster, path);
        if ctx.config().cluster.source != Source::Static {
            // The first clients should see a real topology: wait (bounded) for a first check of every node.
            let ready = ctx.start_monitors(Generation::First);
            let bound = ctx.config().cluster.check_timeout + Duration::from_millis(100);
            if tokio::time::timeout(bound, ready).await.is_err() {
                tracing::warn!(?bound, "not every node answered its first check in time; serving anyway");
            }
        }
        app::start_janitor(&ctx);
        let (dispatch, workers) = start_workers(&ctx).map_err(StartError::Workers)?;
        ctx.tasks.spawn(frontend::serve(ctx.clone(), rw, ListenerKind::ReadWrite, admin_console, dispatch.clone()));
        ctx.tasks.spawn(frontend::serve(ctx.clone(), ro, ListenerKind::ReadOnly, admin_console, dispatch));
        let http_state = Arc::new(admin::HttpState {
            metrics: ctx.metrics.clone(),
            cluster: ctx.cluster.clone(),
            draining: ctx.lifecycle.draining().clone(),
            header_timeout: ctx.config().listen.http_header_timeout,
        });
        ctx.tasks.spawn(admin::serve(http, http_state, ctx.shutdown.clone(), ctx.tasks.clone()));
        ctx.tasks.spawn(admin::close_stats_periods(ctx.clone()));
        let worker_count = ctx.config().pool.workers;
        tracing::info!(rw = %rw_addr, ro = %ro_addr, http = %http_addr, workers = worker_count, "pgrelay listening");
        Ok(RunningApp { rw_addr, ro_addr, http_addr, ctx, workers })
    }
}

/// The admin console, as the listeners hand it its logins.
fn admin_console(
    ctx: Arc<Context>,
    client: Stream,
    buf: BytesMut,
    login: AdminLogin,
    span: tracing::Span,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(admin::console::serve(ctx, client, buf, login, span))
}

/// With `[pool] workers` above 1, starts workers 1 and up, each serving
/// the connections the acceptors (on this runtime, worker 0) hand it;
/// returns the acceptors' way to them and one receiver per worker that
/// fires when the worker's thread has finished.
fn start_workers(ctx: &Arc<Context>) -> std::io::Result<(Arc<Dispatch>, Vec<tokio::sync::oneshot::Receiver<()>>)> {
    let (dispatch, queues) = frontend::dispatch(ctx.config().pool.workers);
    let mut finished = Vec::with_capacity(queues.len());
    for (id, queue) in (1..).zip(queues) {
        let ctx = ctx.clone();
        finished.push(worker::spawn(id, move || run_worker(ctx, queue))?);
    }
    Ok((dispatch, finished))
}

/// One worker: serves the connections handed to it until pgrelay drains,
/// keeps running its sessions until pgrelay stops, then lets them finish
/// (bounded).
async fn run_worker(ctx: Arc<Context>, queue: tokio::sync::mpsc::Receiver<Accepted>) {
    frontend::serve_handed(ctx.clone(), queue, admin_console).await;
    ctx.shutdown.cancelled().await;
    let _ = tokio::time::timeout(FINAL_WAIT, ctx.client_tasks.wait()).await;
}

impl RunningApp {
    /// The shared state, for inspection.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Resolves when the admin console asks pgrelay to stop (SHUTDOWN).
    pub async fn stop_requested(&self) -> StopMode {
        self.ctx.lifecycle.stop_requested().await
    }

    /// Stops at once: every session ends (clients get 57P01), then waits
    /// (bounded by `grace`) for the tasks.
    pub async fn shutdown(self, grace: Duration) {
        self.stop(StopMode::Immediate, grace).await;
    }

    /// Stops as `mode` says. Draining modes stop accepting connections
    /// (and /readyz turns 503) at once, let each client reach its next
    /// boundary, and close whatever is left once `grace` has passed.
    pub async fn stop(mut self, mode: StopMode, grace: Duration) {
        let ctx = &self.ctx;
        if mode != StopMode::Immediate {
            ctx.metrics.draining.set(1);
            ctx.lifecycle.begin_drain(mode);
            ctx.client_tasks.close();
            let clients = ctx.clients.len();
            tracing::info!(?mode, clients, ?grace, "draining: no new connections");
            if tokio::time::timeout(grace, ctx.client_tasks.wait()).await.is_err() {
                tracing::warn!(?grace, clients = ctx.clients.len(), "grace period over: closing the remaining clients");
            }
        }
        ctx.lifecycle.begin_drain(mode);
        ctx.shutdown.cancel();
        ctx.client_tasks.close();
        ctx.tasks.close();
        let wait_all = async {
            ctx.client_tasks.wait().await;
            ctx.tasks.wait().await;
        };
        if tokio::time::timeout(FINAL_WAIT, wait_all).await.is_err() {
            tracing::warn!("some connections did not finish in time");
        }
        // The workers end once their sessions have (or FINAL_WAIT has passed).
        let workers = std::mem::take(&mut self.workers);
        let all_finished = async {
            for finished in workers {
                let _ = finished.await;
            }
        };
        if tokio::time::timeout(FINAL_WAIT * 2, all_finished).await.is_err() {
            tracing::warn!("some workers did not finish in time");
        }
    }
}

impl Drop for RunningApp {
    /// A pgrelay dropped without [`RunningApp::stop`] stops its worker
    /// threads too, as its tasks on the caller's runtime stop with it.
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.ctx.lifecycle.begin_drain(StopMode::Immediate);
            self.ctx.shutdown.cancel();
            self.ctx.client_tasks.close();
        }
    }
}

/// How long the last farewells may take once everything was told to stop.
const FINAL_WAIT: Duration = Duration::from_secs(2);
