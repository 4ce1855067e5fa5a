//! How long writes were unavailable, as numbers: each period without a
//! writable primary runs from the last sign of the old primary (its last
//! successful check as primary) to the first transaction the server
//! accepted on the new one, and is kept with its timeline (primary lost,
//! new primary seen, first write). No IO and no clock: every event comes
//! with its [`Stamp`].

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use super::Topology;
use crate::config::Role;

/// Completed periods kept for the metrics to observe; a scrape more than
/// this many periods late misses the oldest ones in the histogram.
const KEPT_PERIODS: usize = 64;

/// How the old primary was lost (`pgrelay_failovers_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverKind {
    /// It stopped answering its checks (a crash, a network cut, or a stop
    /// before a replica was promoted, as `patronictl switchover` does:
    /// pgrelay cannot tell those apart).
    Unplanned,
    /// It was still answering: seen back in recovery (demoted), or another
    /// node was elected while it ran (Patroni moved the leader key).
    Switchover,
}

impl FailoverKind {
    pub const ALL: [FailoverKind; 2] = [FailoverKind::Unplanned, FailoverKind::Switchover];

    pub fn as_str(self) -> &'static str {
        match self {
            FailoverKind::Unplanned => "unplanned",
            FailoverKind::Switchover => "switchover",
        }
    }
}

/// A moment on the monotonic clock (for durations) and the wall clock (for operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub at: Instant,
    pub wall: SystemTime,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp { at: Instant::now(), wall: SystemTime::now() }
    }
}

/// One period without a writable primary, and how it ended (or has not yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub lost_primary: String,
    pub kind: FailoverKind,
    /// The old primary's last successful check as primary: the period's start.
    pub last_seen: Stamp,
    /// When pgrelay stopped routing writes to it.
    pub lost_at: Stamp,
    /// The node that took over (possibly the old primary, back again) and when pgrelay saw it.
    pub new_primary: Option<(String, Stamp)>,
    /// The first transaction the new primary accepted: the period's end.
    pub first_write: Option<Stamp>,
    /// Whether this period was counted as a failover (another node took over).
    pub counted: bool,
}

impl Outage {
    /// From the last sign of the old primary to the first write, or to `now` while there was none.
    pub fn duration(&self, now: Instant) -> Duration {
        self.first_write.map_or(now, |s| s.at).saturating_duration_since(self.last_seen.at)
    }

    /// Whether another node has taken over, rather than the old primary coming back.
    pub fn changed_primary(&self) -> bool {
        self.new_primary.as_ref().is_some_and(|(name, _)| *name != self.lost_primary)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No primary seen yet since start: not an outage.
    Starting,
    Serving {
        primary: String,
        last_seen: Stamp,
    },
    Unavailable(Outage),
}

/// Everything the failover metrics and `/topology` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverClock {
    state: State,
    /// The last period that ended.
    last: Option<Outage>,
    /// Failovers by [`FailoverKind`], in the order of `FailoverKind::ALL`.
    failovers: [u64; 2],
    /// Periods ended since start.
    periods: u64,
    /// The latest periods' durations, oldest first.
    recent: VecDeque<Duration>,
}

impl Default for FailoverClock {
    fn default() -> Self {
        FailoverClock { state: State::Starting, last: None, failovers: [0; 2], periods: 0, recent: VecDeque::new() }
    }
}

impl FailoverClock {
    /// Follows a new snapshot: a primary that leaves opens a period, a
    /// primary seen during one is recorded as the one that took over.
    pub fn on_topology(&mut self, topology: &Topology, now: Stamp) {
        let primary = topology.primary.map(|p| topology.nodes[p].name.as_str());
        match (&mut self.state, primary) {
            (State::Starting, Some(name)) => self.state = State::Serving { primary: name.to_owned(), last_seen: now },
            (State::Starting, None) => {}
            (State::Serving { primary: serving, .. }, Some(name)) if serving == name => {}
            (State::Serving { primary: serving, last_seen }, next) => {
                let kind = match topology.nodes.iter().find(|n| n.name == *serving).and_then(|n| n.role) {
                    None => FailoverKind::Unplanned,
                    Some(Role::Replica | Role::Primary) => FailoverKind::Switchover,
                };
                let mut outage = Outage {
                    lost_primary: std::mem::take(serving),
                    kind,
                    last_seen: *last_seen,
                    lost_at: now,
                    new_primary: None,
                    first_write: None,
                    counted: false,
                };
                self.failovers[kind as usize] += u64::from(see_new_primary(&mut outage, next, now));
                self.state = State::Unavailable(outage);
            }
            (State::Unavailable(outage), next) => {
                self.failovers[outage.kind as usize] += u64::from(see_new_primary(outage, next, now));
            }
        }
    }

    /// Records a successful check of `node` as primary: the latest sign of it.
    pub fn on_primary_checked(&mut self, node: &str, now: Stamp) {
        if let State::Serving { primary, last_seen } = &mut self.state {
            if primary == node {
                *last_seen = now;
            }
        }
    }

    /// A transaction on `node` was accepted: ends the period when `node` is
    /// the primary pgrelay saw take over. Returns whether it did.
    pub fn on_first_write(&mut self, node: &str, now: Stamp) -> bool {
        let State::Unavailable(outage) = &mut self.state else { return false };
        if outage.new_primary.as_ref().is_none_or(|(name, _)| name != node) {
            return false;
        }
        outage.first_write = Some(now);
        let duration = outage.duration(now.at);
        self.last = Some(outage.clone());
        self.periods += 1;
        if self.recent.len() == KEPT_PERIODS {
            self.recent.pop_front();
        }
        self.recent.push_back(duration);
        self.state = State::Serving { primary: node.to_owned(), last_seen: now };
        true
    }

    /// Whether a period is open, so the next accepted transaction may end it.
    pub fn awaiting_first_write(&self) -> bool {
        matches!(self.state, State::Unavailable(_))
    }

    /// How long the open period has lasted so far; zero while a primary serves.
    pub fn current(&self, now: Instant) -> Duration {
        match &self.state {
            State::Unavailable(outage) => outage.duration(now),
            _ => Duration::ZERO,
        }
    }

    /// The open period, else the last one that ended.
    pub fn latest(&self) -> Option<&Outage> {
        match &self.state {
            State::Unavailable(outage) => Some(outage),
            _ => self.last.as_ref(),
        }
    }

    /// Failovers so far, by kind.
    pub fn failovers(&self) -> impl Iterator<Item = (FailoverKind, u64)> + '_ {
        FailoverKind::ALL.into_iter().zip(self.failovers)
    }

    /// Periods ended since start, and the latest ones' durations, oldest first.
    pub fn periods(&self) -> (u64, impl DoubleEndedIterator<Item = Duration> + '_) {
        (self.periods, self.recent.iter().copied())
    }
}

/// Records `next` as the primary that took over (none: it left again).
/// Returns whether the period just became a failover: once per period, at
/// the first node other than the lost primary, whatever follows.
fn see_new_primary(outage: &mut Outage, next: Option<&str>, now: Stamp) -> bool {
    match next {
        Some(name) if outage.new_primary.as_ref().is_some_and(|(seen, _)| seen == name) => {}
        Some(name) => outage.new_primary = Some((name.to_owned(), now)),
        None => outage.new_primary = None,
    }
    let first = outage.changed_primary() && !outage.counted;
    outage.counted |= first;
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pg0..pg2 with `roles` (None: unreachable) and `primary`.
    fn topology(roles: [Option<Role>; 3], primary: Option<usize>) -> Topology {
        Topology::with_roles(&roles, primary, &[])
    }

    const P: Option<Role> = Some(Role::Primary);
    const R: Option<Role> = Some(Role::Replica);

    /// Stamps `ms` milliseconds after one origin.
    fn clock_at() -> impl Fn(u64) -> Stamp {
        let origin = Stamp::now();
        move |ms| Stamp { at: origin.at + Duration::from_millis(ms), wall: origin.wall + Duration::from_millis(ms) }
    }

    #[test]
    fn an_unplanned_failover_runs_from_the_last_check_to_the_first_write() {
        let t = clock_at();
        let mut clock = FailoverClock::default();
        clock.on_topology(&topology([P, R, R], Some(0)), t(0));
        clock.on_primary_checked("pg0", t(1000));
        clock.on_primary_checked("pg1", t(1100));
        assert!(!clock.awaiting_first_write());
        assert_eq!(clock.current(t(1200).at), Duration::ZERO);

        clock.on_topology(&topology([None, R, R], None), t(1300));
        assert!(clock.awaiting_first_write());
        assert_eq!(clock.current(t(1500).at), Duration::from_millis(500), "counted from the last check");
        assert!(!clock.on_first_write("pg1", t(1600)), "pg1 was not seen as the primary yet");
        clock.on_topology(&topology([None, P, R], Some(1)), t(2000));
        assert_eq!(
            clock.failovers().collect::<Vec<_>>(),
            [(FailoverKind::Unplanned, 1), (FailoverKind::Switchover, 0)]
        );
        assert!(!clock.on_first_write("pg0", t(2100)), "only the new primary ends it");
        assert!(clock.on_first_write("pg1", t(2250)));
        assert!(!clock.awaiting_first_write());
        assert_eq!(clock.current(t(3000).at), Duration::ZERO);
        let (periods, recent) = clock.periods();
        assert_eq!((periods, recent.collect::<Vec<_>>()), (1, vec![Duration::from_millis(1250)]));
        let outage = clock.latest().expect("the last period");
        assert_eq!((outage.lost_primary.as_str(), outage.kind), ("pg0", FailoverKind::Unplanned));
        assert_eq!(outage.new_primary.as_ref().map(|(n, s)| (n.as_str(), *s)), Some(("pg1", t(2000))));
        assert_eq!((outage.last_seen, outage.lost_at, outage.first_write), (t(1000), t(1300), Some(t(2250))));
        // Later checks of pg1 start the next period's clock.
        clock.on_primary_checked("pg1", t(4000));
        clock.on_topology(&topology([None, None, R], None), t(4500));
        assert_eq!(clock.current(t(5000).at), Duration::from_secs(1));
    }

    #[test]
    fn a_primary_still_answering_makes_a_switchover_and_one_coming_back_no_failover() {
        let t = clock_at();
        let mut clock = FailoverClock::default();
        clock.on_topology(&topology([None, None, None], None), t(0));
        assert!(!clock.awaiting_first_write(), "no primary since start is no outage");
        clock.on_topology(&topology([P, R, R], Some(0)), t(10));
        // Patroni moves the leader: pg0 still runs as primary, pg1 takes over directly.
        clock.on_topology(&topology([P, P, R], Some(1)), t(100));
        assert!(clock.on_first_write("pg1", t(150)));
        // pg1 is seen demoted, then comes back: a period, no failover.
        clock.on_topology(&topology([R, R, R], None), t(200));
        assert_eq!(clock.latest().map(|o| o.kind), Some(FailoverKind::Switchover));
        clock.on_topology(&topology([R, P, R], Some(1)), t(300));
        assert!(clock.on_first_write("pg1", t(400)));
        assert_eq!(
            clock.failovers().collect::<Vec<_>>(),
            [(FailoverKind::Unplanned, 0), (FailoverKind::Switchover, 1)]
        );
        assert!(!clock.latest().expect("a period").changed_primary());
        assert_eq!(clock.periods().0, 2);
        // A period whose new primary leaves and another takes over is one failover.
        clock.on_topology(&topology([R, None, R], None), t(500));
        clock.on_topology(&topology([P, None, R], Some(0)), t(600));
        clock.on_topology(&topology([None, None, R], None), t(700));
        clock.on_topology(&topology([None, None, P], Some(2)), t(800));
        assert!(!clock.on_first_write("pg0", t(850)));
        assert!(clock.on_first_write("pg2", t(900)));
        assert_eq!(clock.failovers().map(|(_, n)| n).sum::<u64>(), 2);
        assert_eq!(clock.periods().1.last(), Some(Duration::from_millis(900 - 400)), "from pg1's last sign");
    }
}
