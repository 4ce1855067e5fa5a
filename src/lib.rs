//! pgrelay: a replication-aware PostgreSQL proxy. Clients connect to a
//! read-write and a read-only port; transactions go to the primary or
//! round-robin to replicas over pooled server connections.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod localcluster;
pub mod metrics;
pub mod pool;
pub mod router;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use cluster::{ClusterView, Topology};
use config::{Config, Source};
use frontend::Context;
use router::ListenerKind;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
}

/// A running pgrelay: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct RunningApp {
    pub rw_addr: SocketAddr,
    /// The HTTP endpoints (/metrics /livez /readyz /topology).
    pub http_addr: SocketAddr,
    pub ro_addr: SocketAddr,
    ctx: Arc<Context>,
}

pub struct App;

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<RunningApp, StartError> {
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
        let ctx = Context::new(config, users, cluster);
        start_monitors(&ctx).await;
        ctx.tasks.spawn(frontend::serve(ctx.clone(), rw, ListenerKind::ReadWrite));
        ctx.tasks.spawn(frontend::serve(ctx.clone(), ro, ListenerKind::ReadOnly));
        let http_state = Arc::new(admin::HttpState {
            metrics: ctx.metrics.clone(),
            cluster: ctx.cluster.clone(),
            draining: ctx.shutdown.clone(),
        });
        ctx.tasks.spawn(admin::serve(http, http_state, ctx.shutdown.clone(), ctx.tasks.clone()));
        tracing::info!(rw = %rw_addr, ro = %ro_addr, http = %http_addr, "pgrelay listening");
        Ok(RunningApp { rw_addr, ro_addr, http_addr, ctx })
    }
}

/// With `source = "postgres"` or `"patroni"`: starts the monitors, whose fencing hook
/// closes a former primary's pools, and waits (bounded by check_timeout) for
/// a first check of every node so the first clients see a real topology.
async fn start_monitors(ctx: &Arc<Context>) {
    if ctx.config.cluster.source == Source::Static {
        return;
    }
    let weak = Arc::downgrade(ctx);
    let fence = Box::new(move |node: &str| {
        if let Some(ctx) = weak.upgrade() {
            ctx.pools.close_node(node);
        }
    });
    let ready = cluster::monitor::start(&ctx.config, ctx.cluster.clone(), &ctx.tasks, ctx.shutdown.clone(), fence);
    let bound = ctx.config.cluster.check_timeout + Duration::from_millis(100);
    if tokio::time::timeout(bound, ready).await.is_err() {
        tracing::warn!(?bound, "not every node answered its first check in time; serving anyway");
    }
}

impl RunningApp {
    /// The shared state, for inspection.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Stops accepting, ends every session, and waits (bounded) for the tasks.
    pub async fn shutdown(self, grace: Duration) {
        self.ctx.shutdown.cancel();
        self.ctx.tasks.close();
        if tokio::time::timeout(grace, self.ctx.tasks.wait()).await.is_err() {
            tracing::warn!(?grace, "some connections did not finish in time");
        }
    }
}
