//! What SHOW STATS and the Prometheus metrics count as a query and as a
//! transaction, timed as PgBouncer (1.18) times them:
//!
//! - A query begins when the client's first message that needs a server
//!   arrives while none of its requests is in flight there, and ends with
//!   the ReadyForQuery that leaves none in flight. For a client that waits
//!   for each answer, that is one simple Query (however many statements its
//!   text holds), one FunctionCall, or one extended-protocol batch up to its
//!   Sync (Parse, Bind, Describe, Execute, ... Sync), a COPY included.
//!   Requests a client pipelines behind unanswered ones belong to the query
//!   in flight, so one client's query time never exceeds the time that
//!   passed (PgBouncer: "we count the time that PgBouncer is occupied").
//! - A transaction begins with its first query and ends with the
//!   ReadyForQuery that reports the connection idle; an autocommit query is
//!   a transaction of its own.
//! - Both include the wait for a server connection. What pgrelay answers
//!   without a server (a Sync or Parse between transactions) is no query,
//!   and one cut short (the client leaves, the server connection fails) is
//!   not counted: counts and times are recorded together, when they end.
//!
//! Clock reads: one at each boundary, none per message.

use std::time::{Duration, Instant};

/// The query and transaction a session has in flight.
#[derive(Debug, Default)]
pub(super) struct Timing {
    query_start: Option<Instant>,
    transaction_start: Option<Instant>,
}

/// What a ReadyForQuery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ended {
    pub query: Duration,
    pub transaction: Option<Duration>,
    /// When (the clock reading taken).
    pub at: Instant,
}

impl Timing {
    /// Something of the client's goes to the server (or waits for one): it
    /// begins a query, at `now()`, unless one is in flight.
    #[inline]
    pub fn sending(&mut self, now: impl FnOnce() -> Instant) {
        if self.query_start.is_none() {
            let start = now();
            self.query_start = Some(start);
            self.transaction_start.get_or_insert(start);
        }
    }

    /// The server's ReadyForQuery reached the client, which is now `idle`
    /// or in a transaction. Unless `more_owed()` (the client has another
    /// request in flight, pipelined), it ends the query, and when idle the
    /// transaction, at `now()`; read only then.
    pub fn ready(
        &mut self,
        idle: bool,
        more_owed: impl FnOnce() -> bool,
        now: impl FnOnce() -> Instant,
    ) -> Option<Ended> {
        let start = self.query_start?;
        if more_owed() {
            return None;
        }
        self.query_start = None;
        let now = now();
        let query = now.saturating_duration_since(start);
        let transaction = match idle {
            // An autocommit query is its transaction: no second subtraction.
            true => {
                self.transaction_start.take().map(|t| if t == start { query } else { now.saturating_duration_since(t) })
            }
            false => None,
        };
        Some(Ended { query, transaction, at: now })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn an_autocommit_query_is_a_transaction() {
        let t0 = Instant::now();
        let mut timing = Timing::default();
        timing.sending(|| at(t0, 0));
        // Further messages of the same request take no clock reading.
        timing.sending(|| unreachable!("a query is in flight"));
        let ended = timing.ready(true, || false, || at(t0, 50));
        assert_eq!(ended, Some(Ended { query: ms(50), transaction: Some(ms(50)), at: at(t0, 50) }));
        assert_eq!(timing.query_start, None);
    }

    #[test]
    fn a_transaction_spans_its_queries_and_the_time_between() {
        let t0 = Instant::now();
        let mut timing = Timing::default();
        timing.sending(|| at(t0, 0)); // BEGIN
        let ended = timing.ready(false, || false, || at(t0, 1));
        assert_eq!(ended.map(|e| (e.query, e.transaction)), Some((ms(1), None)));
        timing.sending(|| at(t0, 10)); // SELECT
        let ended = timing.ready(false, || false, || at(t0, 30));
        assert_eq!(ended.map(|e| (e.query, e.transaction)), Some((ms(20), None)));
        timing.sending(|| at(t0, 40)); // COMMIT
        let ended = timing.ready(true, || false, || at(t0, 42));
        assert_eq!(ended, Some(Ended { query: ms(2), transaction: Some(ms(42)), at: at(t0, 42) }));
        // The next transaction starts afresh.
        timing.sending(|| at(t0, 100));
        assert_eq!(timing.ready(true, || false, || at(t0, 105)).and_then(|e| e.transaction), Some(ms(5)));
    }

    #[test]
    fn pipelined_requests_are_one_query() {
        let t0 = Instant::now();
        let mut timing = Timing::default();
        timing.sending(|| at(t0, 0));
        // Three Syncs in flight: the first two answers leave more owed.
        assert_eq!(timing.ready(true, || true, || unreachable!("no clock reading")), None);
        assert_eq!(timing.ready(true, || true, || unreachable!("no clock reading")), None);
        let ended = timing.ready(true, || false, || at(t0, 9));
        assert_eq!(ended, Some(Ended { query: ms(9), transaction: Some(ms(9)), at: at(t0, 9) }));
    }

    #[test]
    fn a_ready_for_query_without_a_query_ends_nothing() {
        let mut timing = Timing::default();
        let ended = timing.ready(true, || unreachable!("not asked"), || unreachable!("no clock reading"));
        assert_eq!(ended, None);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
