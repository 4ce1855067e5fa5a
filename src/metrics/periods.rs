//! SHOW STATS' averages over `[admin] stats_period` (PgBouncer's key): at
//! the end of every period the per-database totals are recorded, and the
//! averages are those of the last completed period, as PgBouncer documents
//! them: counts and bytes per second, query and transaction times per query
//! and per transaction, and wait time per second (PgBouncer 1.18's unit:
//! microseconds clients spent waiting per second of the period). Integer
//! arithmetic, truncating, as PgBouncer's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The seven figures of a SHOW STATS_TOTALS or SHOW STATS_AVERAGES row, in
/// PgBouncer's column order; times in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub xact_count: u64,
    pub query_count: u64,
    /// Bytes received from clients.
    pub bytes_received: u64,
    /// Bytes sent to clients.
    pub bytes_sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

impl Figures {
    fn since(&self, earlier: &Figures) -> Figures {
        Figures {
            xact_count: self.xact_count.saturating_sub(earlier.xact_count),
            query_count: self.query_count.saturating_sub(earlier.query_count),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            xact_time: self.xact_time.saturating_sub(earlier.xact_time),
            query_time: self.query_time.saturating_sub(earlier.query_time),
            wait_time: self.wait_time.saturating_sub(earlier.wait_time),
        }
    }
}

/// The averages of the `delta` of totals that accrued over `elapsed`.
pub fn averages(delta: &Figures, elapsed: Duration) -> Figures {
    let micros = elapsed.as_micros();
    if micros == 0 {
        return Figures::default();
    }
    let per_second = |n: u64| u64::try_from(u128::from(n) * 1_000_000 / micros).unwrap_or(u64::MAX);
    let per = |total: u64, count: u64| total.checked_div(count).unwrap_or(0);
    Figures {
        xact_count: per_second(delta.xact_count),
        query_count: per_second(delta.query_count),
        bytes_received: per_second(delta.bytes_received),
        bytes_sent: per_second(delta.bytes_sent),
        xact_time: per(delta.xact_time, delta.xact_count),
        query_time: per(delta.query_time, delta.query_count),
        wait_time: per_second(delta.wait_time),
    }
}

/// Each database's totals at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub totals: BTreeMap<String, Figures>,
}

/// The snapshots at the start and the end of the last completed period.
#[derive(Debug, Default)]
pub struct Periods {
    start: Option<Snapshot>,
    end: Option<Snapshot>,
}

impl Periods {
    /// A period ends with `snapshot`, and the next begins.
    pub fn close(&mut self, snapshot: Snapshot) {
        self.start = self.end.replace(snapshot);
    }

    /// Each database's averages over the last completed period; zeros
    /// until one has completed. A database first seen in the period
    /// averages all it did.
    pub fn averages(&self) -> BTreeMap<String, Figures> {
        let (Some(start), Some(end)) = (&self.start, &self.end) else { return BTreeMap::new() };
        let elapsed = end.at.saturating_duration_since(start.at);
        end.totals
            .iter()
            .map(|(database, totals)| {
                let before = start.totals.get(database).copied().unwrap_or_default();
                (database.clone(), averages(&totals.since(&before), elapsed))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(
        xacts: u64,
        queries: u64,
        received: u64,
        sent: u64,
        xact_us: u64,
        query_us: u64,
        wait_us: u64,
    ) -> Figures {
        Figures {
            xact_count: xacts,
            query_count: queries,
            bytes_received: received,
            bytes_sent: sent,
            xact_time: xact_us,
            query_time: query_us,
            wait_time: wait_us,
        }
    }

    #[test]
    fn rates_per_second_and_times_per_query_and_transaction() {
        // 10 s: 200 transactions of 3 queries, 50 ms each transaction, 2 s of waiting.
        let delta = figures(200, 600, 120_000, 480_000, 200 * 50_000, 600 * 15_000, 2_000_000);
        let avg = averages(&delta, Duration::from_secs(10));
        assert_eq!(avg, figures(20, 60, 12_000, 48_000, 50_000, 15_000, 200_000));
    }

    #[test]
    fn truncates_as_pgbouncer_and_never_divides_by_zero() {
        let avg = averages(&figures(7, 0, 1, 0, 10, 0, 5), Duration::from_millis(1500));
        assert_eq!(avg, figures(4, 0, 0, 0, 1, 0, 3), "7/1.5 s = 4.67 -> 4; 10 µs / 7 -> 1");
        assert_eq!(averages(&figures(1, 1, 1, 1, 1, 1, 1), Duration::ZERO), Figures::default());
    }

    #[test]
    fn averages_cover_the_last_completed_period_only() {
        let t0 = Instant::now();
        let snapshot = |secs: u64, xacts: u64, xact_us: u64| Snapshot {
            at: t0 + Duration::from_secs(secs),
            totals: BTreeMap::from([("app".to_owned(), figures(xacts, xacts, 0, 0, xact_us, xact_us, 0))]),
        };
        let mut periods = Periods::default();
        assert!(periods.averages().is_empty(), "no period has completed");
        periods.close(snapshot(0, 0, 0));
        assert!(periods.averages().is_empty(), "the first period is still running");
        periods.close(snapshot(60, 600, 600 * 1_000));
        assert_eq!(periods.averages()["app"], figures(10, 10, 0, 0, 1_000, 1_000, 0));
        // A quieter, slower second period: only it counts now.
        periods.close(snapshot(120, 660, 600 * 1_000 + 60 * 5_000));
        assert_eq!(periods.averages()["app"], figures(1, 1, 0, 0, 5_000, 5_000, 0));
    }

    #[test]
    fn a_database_new_in_the_period_averages_all_it_did() {
        let t0 = Instant::now();
        let mut periods = Periods::default();
        periods.close(Snapshot { at: t0, totals: BTreeMap::new() });
        let totals = BTreeMap::from([("new".to_owned(), figures(20, 40, 0, 0, 0, 0, 0))]);
        periods.close(Snapshot { at: t0 + Duration::from_secs(2), totals });
        assert_eq!(periods.averages()["new"].xact_count, 10);
        assert_eq!(periods.averages()["new"].query_count, 20);
    }
}
