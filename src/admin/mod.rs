//! What operators use to watch pgrelay: the HTTP endpoints (Prometheus
//! metrics, liveness, readiness, the topology as JSON), the admin console,
//! and the periods SHOW STATS averages over.

pub mod console;
mod http;

use std::sync::Arc;
use std::time::Instant;

pub use http::{serve, topology_json, HttpState, MAX_HTTP_CONNECTIONS};

use crate::app::Context;

/// Ends an `[admin] stats_period` every period until pgrelay stops. The
/// length is read again for each period, so a RELOAD applies from the next.
pub async fn close_stats_periods(ctx: Arc<Context>) {
    ctx.metrics.close_stats_period(Instant::now());
    loop {
        let period = ctx.config().admin.stats_period;
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => ctx.metrics.close_stats_period(Instant::now()),
        }
    }
}
