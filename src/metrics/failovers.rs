//! Failover time as numbers: `pgrelay_primary_unavailable_seconds` (a
//! histogram of each period without a writable primary), the current
//! period's length, and `pgrelay_failovers_total{kind}`. The cluster view
//! keeps the periods; a scrape brings these up to date from plain figures.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, Registry};

/// Bucket upper bounds in seconds: a fast failover takes well under a
/// second, Patroni's a few seconds to tens of seconds.
const BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 300.0];

/// The cluster view's failover figures at one moment.
#[derive(Debug, Clone, Default)]
pub struct FailoverFigures {
    /// Periods ended since start.
    pub periods: u64,
    /// The latest periods' durations, oldest first (the newest `periods` ones, or fewer).
    pub recent: Vec<Duration>,
    /// The open period so far; zero while a primary serves.
    pub current: Duration,
    /// Failovers since start by kind.
    pub failovers: Vec<(&'static str, u64)>,
}

#[derive(Debug)]
pub struct FailoverMetrics {
    unavailable: Histogram,
    current: Gauge,
    failovers: IntCounterVec,
    /// Periods observed in the histogram; a lock so two scrapes cannot observe one twice.
    observed: Mutex<u64>,
}

impl FailoverMetrics {
    /// Registers the three metrics, each kind of failover at 0.
    pub fn register(registry: &Registry, kinds: &[&str]) -> FailoverMetrics {
        let unavailable = Histogram::with_opts(
            HistogramOpts::new(
                "pgrelay_primary_unavailable_seconds",
                "Each period without a writable primary: from the old primary's last successful check to the \
                 first transaction the new one accepted.",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        let current = Gauge::with_opts(Opts::new(
            "pgrelay_primary_unavailable_current_seconds",
            "How long the current period without a writable primary has lasted; 0 while a primary serves.",
        ))
        .expect("valid gauge");
        let failovers = IntCounterVec::new(
            Opts::new(
                "pgrelay_failovers_total",
                "Times another node took over as primary, by kind: unplanned (the old primary stopped answering), \
                 switchover (it still answered: demoted, or Patroni moved the leader).",
            ),
            &["kind"],
        )
        .expect("valid counter");
        for kind in kinds {
            failovers.with_label_values(&[kind]);
        }
        registry.register(Box::new(unavailable.clone())).expect("metric registered once");
        registry.register(Box::new(current.clone())).expect("metric registered once");
        registry.register(Box::new(failovers.clone())).expect("metric registered once");
        FailoverMetrics { unavailable, current, failovers, observed: Mutex::new(0) }
    }

    /// Observes the periods that ended since the last scrape and sets the
    /// gauge and the counters.
    pub fn update(&self, figures: &FailoverFigures) {
        let mut observed = self.observed.lock().expect("failover metrics");
        let new = figures.periods.saturating_sub(*observed);
        let skip = figures.recent.len().saturating_sub(usize::try_from(new).unwrap_or(usize::MAX));
        for duration in &figures.recent[skip..] {
            self.unavailable.observe(duration.as_secs_f64());
        }
        *observed = (*observed).max(figures.periods);
        self.current.set(figures.current.as_secs_f64());
        for (kind, count) in &figures.failovers {
            let counter = self.failovers.with_label_values(&[kind]);
            counter.inc_by(count.saturating_sub(counter.get()));
        }
    }
}
