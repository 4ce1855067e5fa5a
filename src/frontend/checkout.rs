//! Where a client's next transaction goes and which pool serves it: routing
//! that waits for a primary, the (node, database, user) pools, and the pause
//! before routing again after a server refused a connection.

use std::sync::Arc;

use super::error::SessionError;
use crate::app::Context;
use crate::auth::UserEntry;
use crate::cluster::{NodeStatus, Topology, Wait};
use crate::config::{Database, RoFallback};
use crate::pool::Pool;
use crate::router::{self, ListenerKind, RouteError, RouteInput};

/// The pool for (node, database, user), created on first use.
pub fn pool_for(ctx: &Context, node: &NodeStatus, database: &Database, user: &Arc<UserEntry>) -> Arc<Pool> {
    ctx.pool_for(node, database, user)
}

/// How long to wait before routing again after a server refused a new
/// connection (the topology may change meanwhile).
const CONNECT_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

pub async fn pause_before_retry(deadline: tokio::time::Instant) {
    let now = tokio::time::Instant::now();
    tokio::time::sleep(CONNECT_RETRY_PAUSE.min(deadline.saturating_duration_since(now))).await;
}

/// A server connection (or only its pool) for a login's own needs.
pub enum LoginServer {
    Pool(Arc<Pool>),
    Lease(crate::pool::Lease),
}

/// Routes a login like its first query would go, within query_wait_timeout,
/// and leases a connection of the pool it lands on unless `lease_needed`
/// says the pool alone will do.
pub async fn login_server(
    ctx: &Context,
    listener: ListenerKind,
    user: &Arc<UserEntry>,
    database: &Database,
    lease_needed: impl Fn(&Pool) -> bool,
) -> Result<LoginServer, SessionError> {
    let config = ctx.config();
    let (fallback, prefer, deadline) = (
        config.routing.ro_fallback,
        config.routing.prefer,
        tokio::time::Instant::now() + config.pool.query_wait_timeout,
    );
    drop(config);
    loop {
        let input = RouteInput { listener, turn: rand::random(), load: router::NO_LOAD, prefer };
        let (topology, node, _) = route_waiting(ctx, input, fallback, deadline).await?;
        let pool = pool_for(ctx, &topology.nodes[node], database, user);
        if !lease_needed(&pool) {
            return Ok(LoginServer::Pool(pool));
        }
        match pool.checkout(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Ok(lease) => return Ok(LoginServer::Lease(lease)),
            Err(crate::pool::PoolError::Closed) => continue,
            Err(crate::pool::PoolError::Connect(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                pause_before_retry(deadline).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Routes a transaction on `listener` (a read by `turn` and `load`, see
/// [`RouteInput`]). While no primary is known it waits for the topology to
/// change, until `deadline`; a split brain and a missing replica under
/// `ro_fallback = "error"` are answered at once. Returns the topology, the
/// node, and whether it had to wait.
pub async fn route_waiting(
    ctx: &Context,
    input: RouteInput<'_>,
    fallback: RoFallback,
    deadline: tokio::time::Instant,
) -> Result<(Arc<Topology>, usize, bool), SessionError> {
    let decide = |topology: &Arc<Topology>| match router::route(input, fallback, topology) {
        Ok(node) => Ok((topology.clone(), node)),
        Err(e @ RouteError::NoPrimary(_)) => Err(Wait::Retry(e)),
        Err(e) => Err(Wait::Fail(e)),
    };
    // The common case costs one snapshot load: no subscription, no timer.
    match decide(&ctx.cluster.load()) {
        Ok((topology, node)) => return Ok((topology, node, false)),
        Err(Wait::Fail(e)) => return Err(e.into()),
        Err(Wait::Retry(_)) => {}
    }
    tokio::select! {
        _ = ctx.shutdown.cancelled() => Err(SessionError::Shutdown),
        // Boxed: only a client that waits for a primary needs this state.
        routed = Box::pin(ctx.cluster.wait_for(deadline, decide)) => {
            let (topology, node) = routed?;
            Ok((topology, node, true))
        }
    }
}
