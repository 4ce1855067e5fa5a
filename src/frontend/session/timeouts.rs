//! The client timeouts: `client_idle_timeout`, `idle_transaction_timeout`
//! and `query_timeout`. Each time the session is about to wait, it tells its
//! [`Watchdog`] what it waits for; the watchdog notes when that wait began
//! (a clock read, and only when a timeout applies to it) and keeps one timer
//! for the session. The timer is moved only when a wait must end earlier
//! than it is set to fire; one that fires for a wait that has ended since is
//! set again for the wait in progress. A busy client so costs a clock read
//! per timed wait and about one timer operation per timeout period, never a
//! timer per transaction. A session gets its watchdog when its configuration
//! first turns a timeout on; until then, a wait costs one test of an Option.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::Session;
use crate::config::ClientTimeouts;
use crate::frontend::error::SessionError;
use crate::metrics::ClientTimeout;
use crate::wire::TxStatus;

impl Session {
    /// Gives the session its watchdog once its configuration turns a
    /// timeout on (it keeps it from then on, whatever later reloads say).
    pub(super) fn start_watchdog_if_needed(&mut self) {
        if self.watchdog.is_none() && self.config.1.pool.client_timeouts.any() {
            self.watchdog = Some(Box::new(Watchdog::new()));
        }
    }

    /// Tells the watchdog, if there is one, what the session is about to wait for.
    #[inline]
    pub(super) fn watch(&mut self) {
        if self.watchdog.is_some() {
            self.enter_wait();
        }
    }

    #[inline]
    fn enter_wait(&mut self) {
        let (wait, progress) = self.wait_kind();
        let Session { watchdog, config, .. } = self;
        if let Some(watchdog) = watchdog {
            watchdog.enter(wait, progress, &config.1.pool.client_timeouts);
        }
    }

    /// What the session is about to wait for, and a number that changes
    /// when a new wait of that kind begins: for a query, each ReadyForQuery
    /// (so each request of a pipeline gets its own time, from when the one
    /// before it ended) on each server connection leased; for an idle
    /// client, each read from it (anything it sends, a partial message too).
    #[inline]
    fn wait_kind(&self) -> (Wait, u64) {
        let reads = u64::from(self.client_reads);
        let client_reading = !self.out.is_empty() || self.client.has_buffered_output();
        let Some(lease) = &self.lease else {
            return if client_reading { (Wait::Untimed, 0) } else { (Wait::ClientIdle, reads) };
        };
        let tracker = lease.conn().tracker();
        if tracker.has_outstanding() {
            // COPY FROM STDIN included: like statement_timeout, query_timeout covers the whole COPY.
            return (Wait::Query, u64::from(self.leases) << 32 | u64::from(tracker.readies()));
        }
        if client_reading {
            (Wait::Untimed, 0)
        } else if tracker.tx_status() != TxStatus::Idle || tracker.batch_open() {
            (Wait::IdleInTransaction, reads)
        } else {
            // A pinned client (or one in session mode) between transactions.
            (Wait::ClientIdle, reads)
        }
    }

    /// The watchdog's timer fired: ends the session, or cancels the query, if a timeout ran out.
    pub(super) fn on_timeout(&mut self) -> Result<(), SessionError> {
        let (timeouts, cancel_wait) = {
            let pool = &self.config().pool;
            (pool.client_timeouts, pool.server_reset_timeout)
        };
        let Some(watchdog) = self.watchdog.as_mut() else { return Ok(()) };
        let Some(expired) = watchdog.fired(&timeouts, cancel_wait) else { return Ok(()) };
        match expired {
            Expired::ClientIdle(timeout) => {
                self.ctx.metrics.client_timeout(ClientTimeout::ClientIdle);
                Err(SessionError::ClientIdleTimeout(timeout))
            }
            Expired::IdleInTransaction(timeout) => {
                self.ctx.metrics.client_timeout(ClientTimeout::IdleTransaction);
                Err(SessionError::IdleTransactionTimeout(timeout))
            }
            Expired::Query(timeout) => {
                self.ctx.metrics.client_timeout(ClientTimeout::QueryCancelled);
                self.cancel_query(timeout);
                Ok(())
            }
            Expired::QueryNotCancelled(timeout) => {
                self.ctx.metrics.client_timeout(ClientTimeout::QueryClosed);
                Err(SessionError::QueryNotCancelled { timeout, waited: cancel_wait })
            }
        }
    }

    /// Sends the server running this client's query a CancelRequest, as the
    /// client's own cancel would be (see `app::cancel`): aimed at the lease
    /// in progress only, and the connection is not pooled until it is done.
    fn cancel_query(&self, timeout: Duration) {
        tracing::info!(parent: &self.span, ?timeout, "query_timeout expired; cancelling the query on the server");
        let (cancels, pid, secret) = (self.ctx.cancels.clone(), self.cancel.pid, self.cancel.secret);
        self.ctx.client_tasks.spawn(async move { cancels.cancel(pid, secret).await });
    }
}

/// What the session waits for, as the timeouts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// For the client, outside a transaction: `client_idle_timeout`.
    ClientIdle,
    /// For the client, inside a transaction (or an extended-protocol batch
    /// it has not closed with Sync) on a server connection it holds:
    /// `idle_transaction_timeout`.
    IdleInTransaction,
    /// For the server to finish what it was sent: `query_timeout`.
    Query,
    /// For the client to read what it was sent: a slow reader is not idle.
    Untimed,
}

impl Wait {
    #[inline]
    fn timeout(self, timeouts: &ClientTimeouts) -> Option<Duration> {
        match self {
            Wait::ClientIdle => timeouts.client_idle,
            Wait::IdleInTransaction => timeouts.idle_transaction,
            Wait::Query => timeouts.query,
            Wait::Untimed => None,
        }
    }
}

/// A timeout that ran out, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// The client is to be disconnected.
    ClientIdle(Duration),
    /// The client is to be disconnected and its transaction rolled back.
    IdleInTransaction(Duration),
    /// The query is to be cancelled on the server.
    Query(Duration),
    /// The query cancelled for `query_timeout` did not end within the
    /// bound given to [`Watchdog::fired`]: its server connection is to be closed.
    QueryNotCancelled(Duration),
}

/// The wait in progress.
#[derive(Debug, Clone, Copy)]
struct Current {
    wait: Wait,
    /// Tells a new wait of the same kind from this one (the session's count
    /// of client reads, or of the server's ReadyForQuery messages).
    progress: u64,
    /// When it began, if a timeout applied to it then.
    since: Option<Instant>,
    /// When its query was cancelled for `query_timeout`.
    cancelled: Option<Instant>,
}

/// When the timer is to fire, decided from the waits the session reports
/// and the time, which is given (so the decisions are tested without a clock).
#[derive(Debug)]
struct Schedule {
    current: Current,
    /// When the timer fires, while it is set.
    armed: Option<Instant>,
}

impl Schedule {
    fn new() -> Schedule {
        Schedule { current: Current { wait: Wait::Untimed, progress: 0, since: None, cancelled: None }, armed: None }
    }

    /// See [`Watchdog::enter`]; returns when the timer must now fire, if it must be set.
    #[inline]
    fn enter(
        &mut self,
        wait: Wait,
        progress: u64,
        timeouts: &ClientTimeouts,
        now: impl FnOnce() -> Instant,
    ) -> Option<Instant> {
        if wait == self.current.wait && progress == self.current.progress {
            return None;
        }
        let timeout = wait.timeout(timeouts);
        let since = timeout.map(|_| now());
        self.current = Current { wait, progress, since, cancelled: None };
        self.arm(since? + timeout?)
    }

    /// The timer is to fire at `deadline` at the latest: returns the
    /// deadline when the timer must be set for it (a later one it is set for
    /// is left alone; firing early only sets it again).
    fn arm(&mut self, deadline: Instant) -> Option<Instant> {
        if self.armed.is_some_and(|armed| armed <= deadline) {
            return None;
        }
        self.armed = Some(deadline);
        Some(deadline)
    }

    /// See [`Watchdog::fired`]; also returns when the timer must fire next, if at all.
    fn fired(
        &mut self,
        timeouts: &ClientTimeouts,
        cancel_wait: Duration,
        now: Instant,
    ) -> (Option<Expired>, Option<Instant>) {
        self.armed = None;
        let current = self.current;
        let (Some(since), Some(timeout)) = (current.since, current.wait.timeout(timeouts)) else { return (None, None) };
        let deadline = match current.cancelled {
            Some(cancelled) => cancelled + cancel_wait,
            None => since + timeout,
        };
        if now < deadline {
            return (None, self.arm(deadline));
        }
        let expired = match (current.wait, current.cancelled) {
            (Wait::Query, None) => {
                self.current.cancelled = Some(now);
                return (Some(Expired::Query(timeout)), self.arm(now + cancel_wait));
            }
            (Wait::Query, Some(_)) => Expired::QueryNotCancelled(timeout),
            (Wait::IdleInTransaction, _) => Expired::IdleInTransaction(timeout),
            (Wait::ClientIdle | Wait::Untimed, _) => Expired::ClientIdle(timeout),
        };
        (Some(expired), None)
    }
}

/// One session's timer for its client timeouts.
#[derive(Debug)]
pub(super) struct Watchdog {
    timer: Pin<Box<Sleep>>,
    schedule: Schedule,
    /// The timer has been polled since it was set, so it wakes the session's
    /// task when it fires and need not be polled again until then.
    registered: bool,
}

impl Watchdog {
    pub(super) fn new() -> Watchdog {
        Watchdog {
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            schedule: Schedule::new(),
            registered: false,
        }
    }

    /// The session is about to wait: a wait of another kind, or with other
    /// `progress`, starts now, under the timeouts in force now.
    #[inline]
    pub(super) fn enter(&mut self, wait: Wait, progress: u64, timeouts: &ClientTimeouts) {
        if let Some(deadline) = self.schedule.enter(wait, progress, timeouts, Instant::now) {
            self.set(deadline);
        }
    }

    fn set(&mut self, deadline: Instant) {
        self.timer.as_mut().reset(deadline);
        self.registered = false;
    }

    /// Ready once the timer fired; then see [`Watchdog::fired`]. Until it
    /// fires, this is one atomic load (the timer is polled only to register
    /// the task's waker after it was set).
    #[inline]
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.schedule.armed.is_none() || (self.registered && !self.timer.is_elapsed()) {
            return Poll::Pending;
        }
        // Unconstrained: a poll refused for lack of budget would not
        // register the waker, and the timer's firing would go unnoticed.
        let poll = std::pin::pin!(tokio::task::unconstrained(self.timer.as_mut())).poll(cx);
        self.registered = true;
        poll
    }

    /// The timer fired: what ran out, under the timeouts in force now (a
    /// reload may have changed them), if anything; otherwise the timer is
    /// set for the wait in progress. A query cancelled for `query_timeout`
    /// gets `cancel_wait` to end.
    pub(super) fn fired(&mut self, timeouts: &ClientTimeouts, cancel_wait: Duration) -> Option<Expired> {
        let (expired, next) = self.schedule.fired(timeouts, cancel_wait, Instant::now());
        if let Some(deadline) = next {
            self.set(deadline);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const CANCEL_WAIT: Duration = Duration::from_secs(2);

    fn timeouts(client_idle: u64, idle_transaction: u64, query: u64) -> ClientTimeouts {
        let on = |secs| (secs > 0).then(|| Duration::from_secs(secs));
        ClientTimeouts { client_idle: on(client_idle), idle_transaction: on(idle_transaction), query: on(query) }
    }

    /// A schedule driven by hand: `at(s)` is `s` seconds after the start.
    struct Driven {
        schedule: Schedule,
        start: Instant,
    }

    impl Driven {
        fn new() -> Driven {
            Driven { schedule: Schedule::new(), start: Instant::now() }
        }

        fn at(&self, secs: u64) -> Instant {
            self.start + Duration::from_secs(secs)
        }

        /// Enters `wait` at `secs`; returns when the timer is set to fire, in seconds.
        fn enter(&mut self, secs: u64, wait: Wait, progress: u64, timeouts: &ClientTimeouts) -> Option<u64> {
            let now = self.at(secs);
            self.schedule.enter(wait, progress, timeouts, || now).map(|d| (d - self.start).as_secs())
        }

        /// Fires the timer at the time it was set for; returns that time,
        /// what ran out and the next time it is set for, in seconds.
        fn fire(&mut self, timeouts: &ClientTimeouts) -> (u64, Option<Expired>, Option<u64>) {
            let when = self.schedule.armed.expect("the timer is set");
            let (expired, next) = self.schedule.fired(timeouts, CANCEL_WAIT, when);
            ((when - self.start).as_secs(), expired, next.map(|d| (d - self.start).as_secs()))
        }
    }

    #[test]
    fn a_wait_expires_after_its_own_timeout_from_its_own_start() {
        let timeouts = timeouts(30, 10, 5);
        let mut d = Driven::new();
        assert_eq!(d.enter(0, Wait::ClientIdle, 1, &timeouts), Some(30));
        // A query at 20 s must end by 25 s: the timer moves earlier ...
        assert_eq!(d.enter(20, Wait::Query, 0, &timeouts), Some(25));
        // ... and not for the idle transaction after it, which would end later.
        assert_eq!(d.enter(21, Wait::IdleInTransaction, 2, &timeouts), None);
        assert_eq!(d.fire(&timeouts), (25, None, Some(31)), "fired early: set for the wait in progress");
        assert_eq!(d.fire(&timeouts), (31, Some(Expired::IdleInTransaction(10 * SECOND)), None));
    }

    #[test]
    fn the_same_wait_seen_again_keeps_its_start_and_a_new_one_restarts_it() {
        let timeouts = timeouts(10, 0, 0);
        let mut d = Driven::new();
        d.enter(0, Wait::ClientIdle, 1, &timeouts);
        assert_eq!(d.enter(6, Wait::ClientIdle, 1, &timeouts), None);
        assert_eq!(d.fire(&timeouts), (10, Some(Expired::ClientIdle(10 * SECOND)), None));

        let mut d = Driven::new();
        d.enter(0, Wait::ClientIdle, 1, &timeouts);
        assert_eq!(d.enter(6, Wait::ClientIdle, 2, &timeouts), None, "the client sent something");
        assert_eq!(d.fire(&timeouts), (10, None, Some(16)));
        assert_eq!(d.fire(&timeouts), (16, Some(Expired::ClientIdle(10 * SECOND)), None));
    }

    #[test]
    fn a_query_is_cancelled_then_given_up_on_unless_it_ends() {
        let timeouts = timeouts(0, 0, 5);
        let mut d = Driven::new();
        d.enter(0, Wait::Query, 7, &timeouts);
        assert_eq!(d.fire(&timeouts), (5, Some(Expired::Query(5 * SECOND)), Some(7)));
        assert_eq!(d.enter(6, Wait::Query, 7, &timeouts), None, "still the same query");
        assert_eq!(d.fire(&timeouts), (7, Some(Expired::QueryNotCancelled(5 * SECOND)), None));

        // The cancelled query ended, and the next one of the pipeline runs: a fresh start.
        let mut d = Driven::new();
        d.enter(0, Wait::Query, 7, &timeouts);
        d.fire(&timeouts);
        assert_eq!(d.enter(6, Wait::Query, 8, &timeouts), None);
        assert_eq!(d.fire(&timeouts), (7, None, Some(11)));
        assert_eq!(d.fire(&timeouts), (11, Some(Expired::Query(5 * SECOND)), Some(13)));
    }

    #[test]
    fn untimed_waits_and_timeouts_turned_off_by_a_reload_never_expire() {
        let on = timeouts(10, 10, 0);
        let mut d = Driven::new();
        assert_eq!(d.enter(0, Wait::Query, 1, &on), None, "query_timeout is off");
        assert_eq!(d.enter(1, Wait::Untimed, 0, &on), None, "a slow reader is not idle");
        assert_eq!(d.enter(2, Wait::IdleInTransaction, 3, &on), Some(12));
        let off = timeouts(10, 0, 0);
        assert_eq!(d.fire(&off), (12, None, None), "turned off meanwhile");
        let shorter = timeouts(10, 4, 0);
        let mut d = Driven::new();
        d.enter(0, Wait::IdleInTransaction, 3, &on);
        assert_eq!(d.fire(&shorter), (10, Some(Expired::IdleInTransaction(4 * SECOND)), None), "shortened meanwhile");
    }
}
