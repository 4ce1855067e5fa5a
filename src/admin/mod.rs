//! What operators use to watch pgrelay: the HTTP endpoints (Prometheus
//! metrics, liveness, readiness, the topology as JSON), the admin console,
//! and the periods SHOW STATS averages over.

pub mod console;
mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use http::{serve, topology_json, HttpState, MAX_HTTP_CONNECTIONS};

use crate::app::Context;

/// Ends an `[admin] stats_period` every period until pgrelay stops. The
/// length in force is looked at every [`STATS_LOOK`] at least, so a RELOAD
/// that shortens a long period applies within that.
pub async fn close_stats_periods(ctx: Arc<Context>) {
    let mut started = Instant::now();
    ctx.metrics.close_stats_period(started);
    loop {
        let due = started + ctx.config().admin.stats_period;
        let now = Instant::now();
        if now >= due {
            ctx.metrics.close_stats_period(now);
            started = now;
            continue;
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep((due - now).min(STATS_LOOK)) => {}
        }
    }
}

/// How often the stats_period task looks at the configuration.
const STATS_LOOK: Duration = Duration::from_secs(1);
