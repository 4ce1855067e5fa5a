//! The pools' upkeep in the background, PgBouncer's janitor: a few times a
//! second it gives every (database, user) that has had a pool on the
//! primary a pool on the current one (`min_pool_size`, also right after a
//! failover), opens connections up to `min_pool_size` in every pool,
//! marks the connections past `server_lifetime` (closing the idle ones) and
//! the idle ones due a check (`server_check_delay`). It rests while pgrelay
//! is paused or draining.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::Context;

/// How often the janitor looks at the pools.
const INTERVAL: Duration = Duration::from_millis(250);
/// Connections the janitor opens at once, for all pools together: a
/// failover or a start with many pools must not flood the new primary.
const OPENING_AT_ONCE: usize = 4;

/// Starts the janitor on this runtime (worker 0), stopped by the shutdown token.
pub fn start_janitor(ctx: &Arc<Context>) {
    ctx.tasks.spawn(run(ctx.clone()));
}

async fn run(ctx: Arc<Context>) {
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // PAUSE closes idle connections and holds transactions: no new ones now.
        if ctx.lifecycle.is_paused() || ctx.lifecycle.drain_mode().is_some() {
            continue;
        }
        upkeep(&ctx, &opening);
    }
}

/// One round over the pools.
fn upkeep(ctx: &Arc<Context>, opening: &Arc<Semaphore>) {
    if ctx.config().pool.min_pool_size > 0 {
        ctx.keep_primary_pools();
    }
    let now = Instant::now();
    for pool in ctx.pools.all() {
        pool.tend(now);
        for _ in 0..pool.fill_wanted(now) {
            let Ok(permit) = opening.clone().try_acquire_owned() else { return };
            let Some(open) = pool.fill_one() else { break };
            let shutdown = ctx.shutdown.clone();
            ctx.tasks.spawn(async move {
                tokio::select! {
                    _ = open => {}
                    _ = shutdown.cancelled() => {}
                }
                drop(permit);
            });
        }
    }
}
