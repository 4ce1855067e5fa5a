//! Read-your-writes for one client. A read on the ro listener that must see
//! a WAL position (its `pgrelay.min_lsn`, or the last commit of its
//! `pgrelay.causal_id`) goes to a replica the monitors saw that far; else
//! it waits up to `[routing] read_your_writes_wait`, asking the replica
//! furthest along for its replay position, then follows `ro_fallback`.
//! The rw side notes when a causal id's transactions complete; the primary's
//! position is asked only when a read needs it (see `app::commits`).
//! pgrelay's own settings (`SET`/`SHOW pgrelay.*`) are answered here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{own, Session};
use crate::app::{CausalFloor, CausalLimits, Context, Sample};
use crate::cluster::Topology;
use crate::config::{Config, Prefer, RoFallback};
use crate::frontend::checkout::route_waiting;
use crate::frontend::error::SessionError;
use crate::metrics::ReadReason;
use crate::pool::Lease;
use crate::router::{self, format_lsn, parse_lsn, ListenerKind, LsnRead, PgrelayCommand, RouteInput};
use crate::wire::{self, sqlstate, Severity, TxStatus};

/// The primary's position: the insert position, which is at or past the
/// end of every record already inserted, commits included (the write
/// position may lag behind an asynchronous commit).
const PRIMARY_POSITION_SQL: &str = "select (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8";
/// A replica's replay position.
const REPLAY_POSITION_SQL: &str = "select (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8";
/// How soon a replica waited for is asked again for its replay position:
/// after 1 ms at first (a replica streaming the WAL is usually that close
/// behind), doubling up to every 10 ms.
const REPLAY_POLL_FIRST: Duration = Duration::from_millis(1);
const REPLAY_POLL_MAX: Duration = Duration::from_millis(10);
/// The longest causal id accepted (PostgreSQL's identifier length).
const MAX_CAUSAL_ID: usize = 63;
/// Beyond the wait, how long one position query may take before its
/// connection is given up.
const POSITION_QUERY_SLACK: Duration = Duration::from_secs(1);

/// A client's read-your-writes settings: startup options, or SET on the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadYourWrites {
    /// Reads go only where the WAL was replayed this far (`pgrelay.min_lsn`).
    pub min_lsn: Option<u64>,
    /// Reads see the commits of rw clients of the same id (`pgrelay.causal_id`).
    pub causal_id: Option<Arc<str>>,
    /// Each transaction on rw is followed by a ParameterStatus
    /// `pgrelay.commit_lsn` before its ReadyForQuery (`pgrelay.report_commit_lsn`).
    pub report_commit_lsn: bool,
}

impl ReadYourWrites {
    /// Takes pgrelay's own settings (`pgrelay.*`) out of a client's startup
    /// settings, which go to servers: none of them does.
    pub fn from_startup(settings: &mut Vec<(String, String)>) -> Result<ReadYourWrites, (&'static str, String)> {
        let mut ryw = ReadYourWrites::default();
        for (name, value) in settings.iter().filter(|(name, _)| is_pgrelay_setting(name)) {
            ryw.set(&name.to_ascii_lowercase(), Some(value))?;
        }
        settings.retain(|(name, _)| !is_pgrelay_setting(name));
        Ok(ryw)
    }

    /// Applies one setting; the error is a SQLSTATE and a message.
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), (&'static str, String)> {
        match name {
            "pgrelay.min_lsn" => {
                self.min_lsn = match value.filter(|v| !v.is_empty()) {
                    None => None,
                    Some(text) => Some(parse_lsn(text).ok_or_else(|| {
                        let message =
                            format!("invalid value for parameter \"pgrelay.min_lsn\": \"{text}\" (a WAL position X/Y)");
                        (sqlstate::INVALID_PARAMETER_VALUE, message)
                    })?),
                };
            }
            "pgrelay.causal_id" => {
                self.causal_id = match value.filter(|v| !v.is_empty()) {
                    None => None,
                    Some(id) if id.len() > MAX_CAUSAL_ID => {
                        let message = format!("pgrelay.causal_id is longer than {MAX_CAUSAL_ID} bytes");
                        return Err((sqlstate::INVALID_PARAMETER_VALUE, message));
                    }
                    Some(id) => Some(id.into()),
                };
            }
            "pgrelay.report_commit_lsn" => {
                self.report_commit_lsn = match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("off" | "false" | "0") => false,
                    Some("on" | "true" | "1") => true,
                    Some(other) => {
                        let message = format!(
                            "parameter \"pgrelay.report_commit_lsn\" requires a Boolean value (got \"{other}\")"
                        );
                        return Err((sqlstate::INVALID_PARAMETER_VALUE, message));
                    }
                };
            }
            _ => return Err((sqlstate::UNDEFINED_OBJECT, format!("unrecognized configuration parameter \"{name}\""))),
        }
        Ok(())
    }
}

fn is_pgrelay_setting(name: &str) -> bool {
    name.get(..8).is_some_and(|p| p.eq_ignore_ascii_case("pgrelay."))
}

/// How the next read was routed, for what remains to do and to count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadPlan {
    /// As any read (or any write): no position to see, or no replica in the read set.
    Plain,
    /// A replica known to have replayed far enough.
    CaughtUp,
    /// A replica to ask until it has replayed this far.
    Check(u64),
    /// No replica replayed far enough in time: the primary.
    Primary,
}

impl ReadPlan {
    /// The metric's reason for a read routed this way to `node`.
    pub(super) fn reason(self, node: usize, topology: &Topology) -> ReadReason {
        match self {
            ReadPlan::Plain if topology.read_set.contains(&node) => ReadReason::Replica,
            ReadPlan::Plain => ReadReason::FallbackPrimary,
            ReadPlan::CaughtUp => ReadReason::ReadYourWritesReplica,
            ReadPlan::Check(_) => ReadReason::ReadYourWritesWait,
            ReadPlan::Primary => ReadReason::ReadYourWritesPrimary,
        }
    }
}

/// Routes a read that must see `min_lsn` by [`router::route_at_lsn`], or
/// to the fallback once `gave_up` waiting.
pub(super) async fn route_at(
    ctx: &Context,
    input: RouteInput<'_>,
    fallback: RoFallback,
    deadline: tokio::time::Instant,
    min_lsn: u64,
    gave_up: Option<Duration>,
) -> Result<(Arc<Topology>, usize, bool, ReadPlan), SessionError> {
    let plain = |(topology, node, waited)| (topology, node, waited, ReadPlan::Plain);
    // An unknown position (the primary did not say) no replica can be shown to have.
    if let Some(wait) = gave_up.or((min_lsn == u64::MAX).then_some(Duration::ZERO)) {
        let listener = router::after_lsn_wait(fallback, min_lsn, wait)?;
        let (topology, node, waited) = route_waiting(ctx, RouteInput { listener, ..input }, fallback, deadline).await?;
        return Ok((topology, node, waited, ReadPlan::Primary));
    }
    let topology = ctx.cluster.load();
    match router::route_at_lsn(input, min_lsn, &topology) {
        LsnRead::CaughtUp(node) => Ok((topology, node, false, ReadPlan::CaughtUp)),
        LsnRead::Check(node) => Ok((topology, node, false, ReadPlan::Check(min_lsn))),
        LsnRead::NoReplica => route_waiting(ctx, input, fallback, deadline).await.map(plain),
    }
}

/// Asks the leased replica for its replay position until it reaches
/// `min_lsn` (true) or `wait` is over (false). A connection that fails or
/// does not answer in time is given up, and so is the wait.
pub(super) async fn replayed_within(lease: &mut Lease, min_lsn: u64, wait: Duration) -> bool {
    let until = tokio::time::Instant::now() + wait;
    let mut pause = REPLAY_POLL_FIRST;
    loop {
        let asked = lease.conn_mut().query_int8(REPLAY_POSITION_SQL);
        match tokio::time::timeout_at(until + POSITION_QUERY_SLACK, asked).await {
            Ok(Ok(Some(replayed))) if replayed >= 0 && replayed as u64 >= min_lsn => return true,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                lease.poison();
                return false;
            }
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return false;
        }
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(REPLAY_POLL_MAX);
    }
}

impl Session {
    /// The position the next transaction must see: on the ro listener, the
    /// client's `pgrelay.min_lsn` and its causal id's last commit, the later
    /// of the two. A causal commit no known position covers costs one
    /// question to the primary (shared with every client asking meanwhile);
    /// when that fails, no replica can be proven far enough (`u64::MAX`).
    pub(super) async fn read_floor(&mut self, deadline: tokio::time::Instant) -> Option<u64> {
        if self.listener != ListenerKind::ReadOnly {
            return None;
        }
        let Some(id) = self.ryw.causal_id.clone() else { return self.ryw.min_lsn };
        let limits = causal_limits(self.config());
        let committed = match self.ctx.commits.causal_floor(&id, Instant::now(), limits) {
            CausalFloor::Nothing => return self.ryw.min_lsn,
            CausalFloor::Lsn(lsn) => return Some(lsn.max(self.ryw.min_lsn.unwrap_or(0))),
            CausalFloor::After(epoch) => epoch,
        };
        let lsn = match self.primary_position(committed, deadline).await {
            Some(sample) => {
                self.ctx.commits.causal_covered(&id, sample);
                sample.lsn
            }
            None => u64::MAX,
        };
        Some(lsn.max(self.ryw.min_lsn.unwrap_or(0)))
    }

    /// A primary position sampled after `epoch`, asked on a connection of
    /// this client's pool on the primary if no sample is recent enough.
    async fn primary_position(&mut self, epoch: u64, deadline: tokio::time::Instant) -> Option<Sample> {
        let ctx = self.ctx.clone();
        let asked = ctx.commits.position_after(epoch, deadline, || self.ask_primary_position(deadline)).await;
        asked.unwrap_or_else(|e| {
            tracing::info!(parent: &self.span, error = %e, "could not learn the primary's WAL position");
            None
        })
    }

    async fn ask_primary_position(&mut self, deadline: tokio::time::Instant) -> Result<u64, SessionError> {
        let fallback = self.config().routing.ro_fallback;
        let input =
            RouteInput { listener: ListenerKind::ReadWrite, turn: 0, load: router::NO_LOAD, prefer: Prefer::Any };
        let (topology, node, _) = route_waiting(&self.ctx, input, fallback, deadline).await?;
        let pool = self.pool_for_node(&topology.nodes[node]);
        let mut lease = pool.checkout(deadline.saturating_duration_since(tokio::time::Instant::now())).await?;
        let asked = lease.conn_mut().query_int8(PRIMARY_POSITION_SQL);
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(Some(lsn))) if lsn >= 0 => Ok(lsn as u64),
            Ok(Ok(_)) => Err(SessionError::ServerDesync("no WAL position in the primary's answer")),
            Ok(Err(e)) => {
                lease.poison();
                Err(SessionError::Pool(e.into()))
            }
            Err(_) => {
                lease.poison();
                Err(SessionError::Route(router::RouteError::NoPrimary("the primary did not answer in time".into())))
            }
        }
    }

    /// Answers a simple Query that is a statement about a `pgrelay.`
    /// setting, between transactions.
    pub(super) async fn answer_pgrelay_command(&mut self, command: PgrelayCommand) -> Result<(), SessionError> {
        match self.run_pgrelay_command(&command).await {
            Ok(row) => {
                if let Some(value) = &row {
                    own::describe(&mut self.out, &command, false);
                    wire::put_data_row(&mut self.out, [Some(value.as_bytes())].into_iter());
                }
                wire::put_command_complete(&mut self.out, own::command_tag(&command));
            }
            Err((code, message)) => wire::put_error_response(&mut self.out, Severity::Error, code, &message, None),
        }
        wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
        Ok(())
    }

    /// Runs a statement about a `pgrelay.` setting: a SHOW's value, or
    /// nothing for a SET; the error is a SQLSTATE and a message.
    pub(super) async fn run_pgrelay_command(
        &mut self,
        command: &PgrelayCommand,
    ) -> Result<Option<String>, (&'static str, String)> {
        match command {
            PgrelayCommand::Set { name, .. }
                if self.pinned.is_some()
                    && self.listener == ListenerKind::ReadOnly
                    && matches!(name.as_str(), "pgrelay.min_lsn" | "pgrelay.causal_id") =>
            {
                let message = format!(
                    "{name} cannot apply: this connection keeps its server connection (session state), so its \
                     reads are no longer routed; give it as a startup option instead"
                );
                Err((sqlstate::FEATURE_NOT_SUPPORTED, message))
            }
            PgrelayCommand::Set { name, value } => self.ryw.set(name, value.as_deref()).map(|()| None),
            PgrelayCommand::Show { name } => match name.as_str() {
                "pgrelay.commit_lsn" => self.commit_lsn().await.map(Some),
                "pgrelay.min_lsn" => Ok(Some(self.ryw.min_lsn.map(format_lsn).unwrap_or_default())),
                "pgrelay.causal_id" => Ok(Some(self.ryw.causal_id.as_deref().unwrap_or_default().to_owned())),
                "pgrelay.report_commit_lsn" => {
                    Ok(Some(if self.ryw.report_commit_lsn { "on" } else { "off" }.to_owned()))
                }
                _ => Err((sqlstate::UNDEFINED_OBJECT, format!("unrecognized configuration parameter \"{name}\""))),
            },
        }
    }

    /// A primary position covering every transaction this client completed
    /// before asking: any sampled after the question arrived.
    async fn commit_lsn(&mut self) -> Result<String, (&'static str, String)> {
        let deadline = tokio::time::Instant::now() + self.config().pool.query_wait_timeout;
        let asked_at = self.ctx.commits.epoch();
        match self.primary_position(asked_at, deadline).await {
            Some(sample) => Ok(format_lsn(sample.lsn)),
            None => Err((sqlstate::CONNECTION_FAILURE, "could not learn the primary's WAL position".to_owned())),
        }
    }

    /// Puts a ParameterStatus `pgrelay.commit_lsn` before the ReadyForQuery
    /// that ended the client's transaction, with the primary's position
    /// asked on the same connection (idle now, still leased): one round
    /// trip per transaction, for the clients that asked for it only.
    pub(super) async fn report_commit_lsn(&mut self) {
        let Some(at) = self.commit_report.take() else { return };
        let timeout = self.config().pool.query_wait_timeout;
        let Some(lease) = self.lease.as_mut() else { return };
        if lease.conn().tracker().has_outstanding() || at > self.out.len() {
            return;
        }
        let asked = lease.conn_mut().query_int8(PRIMARY_POSITION_SQL);
        let lsn = match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(Some(lsn))) if lsn >= 0 => lsn as u64,
            other => {
                if !matches!(other, Ok(Ok(_))) {
                    lease.poison();
                }
                tracing::info!(parent: &self.span, "could not learn the primary's WAL position to report");
                return;
            }
        };
        let ready = self.out.split_off(at);
        wire::put_parameter_status(&mut self.out, b"pgrelay.commit_lsn", format_lsn(lsn).as_bytes());
        self.out.unsplit(ready);
    }

    /// A `pgrelay.` statement inside a transaction: refused in order (it
    /// is never run as a server setting).
    pub(super) fn refuse_pgrelay_command(&mut self) -> Result<(), SessionError> {
        self.raise_in_query(sqlstate::FEATURE_NOT_SUPPORTED, own::ONLY_BETWEEN_TRANSACTIONS)
    }
}

/// On the rw listener, a transaction of a causal id completed: noted
/// before the client can see its ReadyForQuery.
pub(super) fn note_commit(ctx: &Context, ryw: &ReadYourWrites, config: &Config) {
    if let Some(id) = &ryw.causal_id {
        ctx.commits.note_commit(id, Instant::now(), causal_limits(config));
    }
}

fn causal_limits(config: &Config) -> CausalLimits {
    CausalLimits { expiry: config.routing.causal_expiry, max_ids: config.routing.causal_max_ids.get() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgrelay_startup_settings_are_taken_out() {
        let mut settings = vec![
            ("application_name".to_owned(), "app".to_owned()),
            ("pgrelay.causal_id".to_owned(), "user-42".to_owned()),
            ("PGRELAY.min_lsn".to_owned(), "1/A0".to_owned()),
        ];
        let ryw = ReadYourWrites::from_startup(&mut settings).expect("valid");
        assert_eq!(ryw.min_lsn, Some((1 << 32) | 0xA0));
        assert_eq!(ryw.causal_id.as_deref(), Some("user-42"));
        assert_eq!(settings, [("application_name".to_owned(), "app".to_owned())]);

        for (name, value, code) in [
            ("pgrelay.min_lsn", "soon", sqlstate::INVALID_PARAMETER_VALUE),
            ("pgrelay.causal_id", &"x".repeat(64), sqlstate::INVALID_PARAMETER_VALUE),
            ("pgrelay.colour", "blue", sqlstate::UNDEFINED_OBJECT),
        ] {
            let mut settings = vec![(name.to_owned(), value.to_owned())];
            let error = ReadYourWrites::from_startup(&mut settings).expect_err(name);
            assert_eq!(error.0, code, "{name}: {}", error.1);
        }
    }
}
