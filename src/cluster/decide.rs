//! Pure decisions that turn the monitors' observations into a [`Topology`]:
//! primary election (split brain included), replica lag, read-set
//! membership with hysteresis, and which node's connections to fence when
//! the primary moves. No IO and no clock: everything comes in as arguments,
//! so each rule has a table-driven test.
//!
//! A replica is checked against the latest observation of the elected
//! primary. While no primary is known a reachable replica in recovery
//! counts as good: nothing is being written that it could lag behind.

use std::fmt;
use std::time::Duration;

use super::patroni::PatroniView;
use super::{NodeStatus, StandbyPositions, SyncState, Topology};
use crate::config::Role;

/// What one check of a node saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()` on a primary, `pg_last_wal_replay_lsn()` on a replica.
    pub wal_lsn: Option<u64>,
    /// `pg_last_xact_replay_timestamp()`, microseconds since the Unix epoch.
    pub replay_micros: Option<i64>,
    /// The server's `now()`, microseconds since the Unix epoch.
    pub now_micros: i64,
    /// `pg_stat_replication`: the standbys streaming from this node; empty
    /// on a replica without cascading ones.
    pub standbys: Vec<Standby>,
    /// This node's `synchronous_standby_names`.
    pub synchronous_standby_names: String,
}

/// One row of a node's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    pub application_name: String,
    pub sync_state: SyncState,
    /// Where the standby says it has written, flushed and replayed the WAL.
    pub positions: StandbyPositions,
}

/// The latest result of checking one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Unchecked,
    Unreachable(String),
    Up(Probe),
}

impl Observation {
    fn probe(&self) -> Option<&Probe> {
        match self {
            Observation::Up(probe) => Some(probe),
            _ => None,
        }
    }
}

/// Who takes writes, decided from observations alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Election {
    Primary(usize),
    /// No reachable node is out of recovery; the text says what each node is.
    NoPrimary(String),
    /// Two or more nodes are out of recovery: nobody gets writes.
    SplitBrain(Vec<usize>),
}

/// Exactly one reachable node out of recovery is the primary.
pub fn elect(names: &[String], observations: &[Observation]) -> Election {
    let claimants: Vec<usize> =
        (0..observations.len()).filter(|&i| observations[i].probe().is_some_and(|p| !p.in_recovery)).collect();
    match claimants[..] {
        [primary] => Election::Primary(primary),
        [] => {
            let states: Vec<String> = names
                .iter()
                .zip(observations)
                .map(|(name, observation)| match observation {
                    Observation::Unchecked => format!("{name} not checked yet"),
                    Observation::Unreachable(why) => format!("{name} unreachable ({why})"),
                    Observation::Up(_) => format!("{name} in recovery"),
                })
                .collect();
            Election::NoPrimary(states.join(", "))
        }
        _ => Election::SplitBrain(claimants),
    }
}

/// With Patroni the leader key decides, but the leader gets writes only
/// once its own server says it is out of recovery.
pub fn elect_leader(
    names: &[String],
    observations: &[Observation],
    view: Option<&PatroniView>,
    error: Option<&str>,
) -> Election {
    let Some(view) = view else {
        let why = error.map(|e| format!(" ({e})")).unwrap_or_default();
        return Election::NoPrimary(format!("no answer from the Patroni REST API yet{why}"));
    };
    let Some(leader) = view.leader else {
        return Election::NoPrimary(view.no_leader_reason.clone().unwrap_or_else(|| "no Patroni leader".into()));
    };
    let name = &names[leader];
    match &observations[leader] {
        Observation::Up(probe) if !probe.in_recovery => Election::Primary(leader),
        Observation::Up(_) => Election::NoPrimary(format!("{name} is the Patroni leader but still in recovery")),
        Observation::Unreachable(why) => {
            Election::NoPrimary(format!("{name} is the Patroni leader but unreachable ({why})"))
        }
        Observation::Unchecked => Election::NoPrimary(format!("{name} is the Patroni leader, not checked yet")),
    }
}

/// The text of a split-brain refusal, naming the claimants.
pub fn split_brain_reason(names: &[String], claimants: &[usize]) -> String {
    let named: Vec<&str> = claimants.iter().map(|&i| names[i].as_str()).collect();
    format!(
        "split brain: {} all report they are not in recovery; writes are refused until only one of them is",
        named.join(" and ")
    )
}

/// The read-set lag limits (`[routing] max_replica_lag_bytes`, `max_replica_lag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    pub bytes: u64,
    pub time: Duration,
}

/// How far a replica is behind, as far as it could be measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    pub bytes: Option<u64>,
    pub time: Option<Duration>,
}

/// Byte lag from the LSNs; time lag only while the LSNs differ, since an
/// idle primary writes nothing a replica could replay.
pub fn measure_lag(replica: &Probe, primary: &Probe) -> Lag {
    let (Some(replayed), Some(written)) = (replica.wal_lsn, primary.wal_lsn) else { return Lag::default() };
    let bytes = written.saturating_sub(replayed);
    let time = match replica.replay_micros {
        Some(replayed_at) if bytes > 0 => {
            Some(Duration::from_micros(u64::try_from(primary.now_micros - replayed_at).unwrap_or(0)))
        }
        _ if bytes > 0 => None,
        _ => Some(Duration::ZERO),
    };
    Lag { bytes: Some(bytes), time }
}

/// What the primary says of the standby streaming as `application_name`.
/// Two walsenders under one name (a standby reconnecting) count as the
/// most synchronous of them, as PostgreSQL itself picks among equals.
pub fn streaming<'a>(application_name: &str, primary: &'a Probe) -> Option<&'a Standby> {
    let listed = primary.standbys.iter().filter(|s| s.application_name == application_name);
    listed.max_by_key(|s| s.sync_state.rank())
}

/// Why a node may not serve reads, as of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    NotChecked,
    Unreachable(String),
    NotInRecovery,
    LagBytes { lag: u64, limit: u64 },
    LagTime { lag: Duration, limit: Duration },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NotChecked => f.write_str("not checked yet"),
            Exclusion::Unreachable(why) => write!(f, "unreachable ({why})"),
            Exclusion::NotInRecovery => f.write_str("not in recovery"),
            Exclusion::LagBytes { lag, limit } => {
                write!(f, "lag {lag} bytes > max_replica_lag_bytes ({limit} bytes)")
            }
            Exclusion::LagTime { lag, limit } => {
                write!(f, "lag {:.1}s > max_replica_lag ({:.1}s)", lag.as_secs_f64(), limit.as_secs_f64())
            }
        }
    }
}

/// One check of a would-be replica against the primary's latest probe.
pub fn check_replica(observation: &Observation, primary: Option<&Probe>, limits: LagLimits) -> Result<(), Exclusion> {
    let probe = match observation {
        Observation::Unchecked => return Err(Exclusion::NotChecked),
        Observation::Unreachable(why) => return Err(Exclusion::Unreachable(why.clone())),
        Observation::Up(probe) if !probe.in_recovery => return Err(Exclusion::NotInRecovery),
        Observation::Up(probe) => probe,
    };
    let Some(primary) = primary else { return Ok(()) };
    let lag = measure_lag(probe, primary);
    match lag {
        Lag { bytes: Some(lag), .. } if lag > limits.bytes => Err(Exclusion::LagBytes { lag, limit: limits.bytes }),
        Lag { time: Some(lag), .. } if lag > limits.time => Err(Exclusion::LagTime { lag, limit: limits.time }),
        _ => Ok(()),
    }
}

/// `[cluster] leave_after_checks` / `rejoin_after_checks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub leave_after: u32,
    pub rejoin_after: u32,
}

/// A node's place in the read set; it flips only after a run of checks
/// that all disagree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Never checked: the first check decides at once.
    Unknown,
    /// In the read set, after `bad` consecutive bad checks.
    In { bad: u32 },
    /// Out of the read set, after `good` consecutive good checks.
    Out { good: u32 },
}

impl Membership {
    pub fn next(self, good: bool, rule: Hysteresis) -> Membership {
        match (self, good) {
            (Membership::Unknown, true) | (Membership::In { .. }, true) => Membership::In { bad: 0 },
            (Membership::Unknown, false) | (Membership::Out { .. }, false) => Membership::Out { good: 0 },
            (Membership::In { bad }, false) if bad + 1 >= rule.leave_after => Membership::Out { good: 0 },
            (Membership::In { bad }, false) => Membership::In { bad: bad + 1 },
            (Membership::Out { good }, true) if good + 1 >= rule.rejoin_after => Membership::In { bad: 0 },
            (Membership::Out { good }, true) => Membership::Out { good: good + 1 },
        }
    }

    pub fn serves_reads(self) -> bool {
        matches!(self, Membership::In { .. })
    }
}

/// Who decides which node is the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Authority {
    /// `pg_is_in_recovery()` on every node ([`elect`]).
    Sql,
    /// Patroni's leader key ([`elect_leader`]); the latest answer is kept
    /// while the REST API is unreachable.
    Patroni { view: Option<PatroniView>, error: Option<String> },
}

/// Everything the coordinator knows, and the snapshot it implies.
#[derive(Debug, Clone)]
pub struct ClusterState {
    authority: Authority,
    names: Vec<String>,
    observations: Vec<Observation>,
    membership: Vec<Membership>,
    /// The verdict of each node's latest check as a replica.
    last_check: Vec<Result<(), Exclusion>>,
    hysteresis: Hysteresis,
    limits: LagLimits,
}

impl ClusterState {
    pub fn new(names: Vec<String>, hysteresis: Hysteresis, limits: LagLimits) -> ClusterState {
        let n = names.len();
        ClusterState {
            authority: Authority::Sql,
            names,
            observations: vec![Observation::Unchecked; n],
            membership: vec![Membership::Unknown; n],
            last_check: vec![Err(Exclusion::NotChecked); n],
            hysteresis,
            limits,
        }
    }

    /// Lets Patroni's leader key decide the primary.
    pub fn with_patroni(mut self) -> ClusterState {
        self.authority = Authority::Patroni { view: None, error: None };
        self
    }

    /// Records one poll of Patroni's `/cluster`.
    pub fn observe_patroni(&mut self, result: Result<PatroniView, String>) {
        if let Authority::Patroni { view, error } = &mut self.authority {
            match result {
                Ok(new) => (*view, *error) = (Some(new), None),
                Err(why) => *error = Some(why),
            }
        }
    }

    fn election(&self) -> Election {
        match &self.authority {
            Authority::Sql => elect(&self.names, &self.observations),
            Authority::Patroni { view, error } => {
                elect_leader(&self.names, &self.observations, view.as_ref(), error.as_deref())
            }
        }
    }

    /// Whether Patroni says to keep `node` out of the read set.
    fn noloadbalance(&self, node: usize) -> bool {
        match &self.authority {
            Authority::Patroni { view: Some(view), .. } => view.noloadbalance.get(node).copied().unwrap_or(false),
            _ => false,
        }
    }

    /// Records one check of `node`; each check counts once for its hysteresis.
    pub fn observe(&mut self, node: usize, observation: Observation) {
        self.observations[node] = observation;
        let primary = match self.election() {
            Election::Primary(p) => self.observations[p].probe(),
            _ => None,
        };
        let verdict = check_replica(&self.observations[node], primary, self.limits);
        self.membership[node] = self.membership[node].next(verdict.is_ok(), self.hysteresis);
        self.last_check[node] = verdict;
    }

    /// Whether every node has been checked at least once.
    pub fn all_checked(&self) -> bool {
        let authority_heard = self.authority != Authority::Patroni { view: None, error: None };
        authority_heard && self.observations.iter().all(|o| *o != Observation::Unchecked)
    }

    /// The snapshot these observations imply, on the addresses of `base`.
    pub fn topology(&self, base: &[NodeStatus]) -> Topology {
        let election = self.election();
        let primary = match election {
            Election::Primary(p) => Some(p),
            _ => None,
        };
        let primary_probe = primary.and_then(|p| self.observations[p].probe());
        let nodes: Vec<NodeStatus> =
            base.iter().enumerate().map(|(i, node)| self.node_status(i, node, primary, primary_probe)).collect();
        let read_set = (0..nodes.len()).filter(|&i| nodes[i].excluded.is_none() && Some(i) != primary).collect();
        let (no_primary_reason, split_brain) = match &election {
            Election::Primary(_) => (None, false),
            Election::NoPrimary(why) => (Some(why.clone()), false),
            Election::SplitBrain(claimants) => (Some(split_brain_reason(&self.names, claimants)), true),
        };
        let synchronous_standby_names = primary_probe.map(|p| p.synchronous_standby_names.clone());
        Topology { nodes, primary, read_set, no_primary_reason, split_brain, synchronous_standby_names }
    }

    fn node_status(
        &self,
        i: usize,
        base: &NodeStatus,
        primary: Option<usize>,
        primary_probe: Option<&Probe>,
    ) -> NodeStatus {
        let probe = self.observations[i].probe();
        let role = probe.map(|p| if p.in_recovery { Role::Replica } else { Role::Primary });
        let lag = match (probe, primary_probe) {
            (Some(replica), Some(primary)) if replica.in_recovery => measure_lag(replica, primary),
            _ => Lag::default(),
        };
        // Out of recovery is a role, not a health blip: no hysteresis for it.
        let excluded = if Some(i) == primary {
            None
        } else if role == Some(Role::Primary) {
            Some(Exclusion::NotInRecovery.to_string())
        } else if self.noloadbalance(i) {
            Some("Patroni tag noloadbalance".to_owned())
        } else {
            match (self.membership[i], &self.last_check[i]) {
                (Membership::In { .. }, _) => None,
                (_, Err(why)) => Some(why.to_string()),
                (Membership::Out { good }, Ok(())) => {
                    Some(format!("rejoining: {} of {} good checks", good, self.hysteresis.rejoin_after))
                }
                (Membership::Unknown, Ok(())) => Some(Exclusion::NotChecked.to_string()),
            }
        };
        let standby = match (probe, primary_probe) {
            (Some(replica), Some(primary)) if replica.in_recovery => streaming(&base.application_name, primary),
            _ => None,
        };
        let wal_lsn = probe.and_then(|p| p.wal_lsn).or(base.wal_lsn);
        NodeStatus {
            role,
            lag_bytes: lag.bytes,
            lag: lag.time,
            wal_lsn,
            excluded,
            sync_state: standby.map_or(SyncState::Unknown, |s| s.sync_state),
            streamed: standby.map(|s| s.positions),
            ..base.clone()
        }
    }
}

/// Remembers the last primary across periods without one, to say whose
/// server connections to close when the primary moves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fencer {
    last_primary: Option<usize>,
}

impl Fencer {
    /// A fencer that knows `primary` as the current primary.
    pub fn remembering(primary: Option<usize>) -> Fencer {
        Fencer { last_primary: primary }
    }

    /// The node to fence after `next` is published: the previous primary,
    /// once another node is elected, it is seen in recovery, or a split
    /// brain leaves nobody in charge. A primary that is merely unreachable
    /// is not fenced (its connections fail on their own), only remembered.
    pub fn update(&mut self, next: &Topology) -> Option<usize> {
        let previous = self.last_primary;
        match (previous, next.primary) {
            (_, Some(now)) => {
                self.last_primary = Some(now);
                previous.filter(|&p| p != now)
            }
            (Some(p), None) if next.split_brain || next.nodes[p].role == Some(Role::Replica) => {
                self.last_primary = None;
                Some(p)
            }
            (_, None) => None,
        }
    }
}
