//! pgrelay: a replication-aware PostgreSQL proxy. Clients connect to a
//! read-write and a read-only port; transactions go to the primary or
//! round-robin to replicas over pooled server connections.

#![forbid(unsafe_code)]

pub mod auth;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod frontend;
pub mod localcluster;
pub mod pool;
pub mod router;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use cluster::{ClusterView, Topology};
use config::Config;
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
    pub ro_addr: SocketAddr,
    ctx: Arc<Context>,
}

pub struct App;

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<RunningApp, StartError> {
        let users = auth::UserDb::from_config(&config).map_err(StartError::Config)?;
        let cluster = Arc::new(ClusterView::new(Topology::from_static(&config)));
        let config = Arc::new(config);
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
        };
        let rw = bind(config.listen.rw, "listen.rw").await?;
        let ro = bind(config.listen.ro, "listen.ro").await?;
        let (rw_addr, ro_addr) = (rw.local_addr().expect("bound"), ro.local_addr().expect("bound"));
        let ctx = Context::new(config, users, cluster);
        ctx.tasks.spawn(frontend::serve(ctx.clone(), rw, ListenerKind::ReadWrite));
        ctx.tasks.spawn(frontend::serve(ctx.clone(), ro, ListenerKind::ReadOnly));
        tracing::info!(rw = %rw_addr, ro = %ro_addr, "pgrelay listening");
        Ok(RunningApp { rw_addr, ro_addr, ctx })
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
