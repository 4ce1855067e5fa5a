//! A client whose server connection is lost under it (the server crashed
//! or shut down, or pgrelay fenced a primary that stopped being one) keeps
//! its connection, unless session state it relies on died with the server.
//!
//! Each request in flight gets the answer a server that failed it would
//! have given: an ErrorResponse, then ReadyForQuery where the request ends.
//! The SQLSTATE says what is known of the outcome: `40001` when nothing in
//! flight could have committed (retrying is safe), `08007` when a COMMIT or
//! a statement outside a block was in flight (it may have committed). A
//! client that was in a block is then in a failed block: pgrelay answers
//! its ROLLBACK itself and refuses everything else with `25P02`, as a
//! server does, and its next transaction goes to whichever node is primary.
//! What cannot be answered exactly (a COPY or a large row under way, a
//! ROLLBACK bound to a named portal, a Query that ends the failed block and
//! goes on) ends the connection as before.

mod sql;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub(super) use sql::{query_effect, statement_effect};

use super::forward::sql_of;
use super::Session;
use crate::backend::{CopyState, Expect, Origin, ServerConn, StatementKind, TxEffect, Verdict};
use crate::config::PoolMode;
use crate::frontend::error::SessionError;
use crate::metrics::ErrorOrigin;
use crate::wire::{self, frontend, sqlstate, Severity, TxStatus, WireError};

/// The client's block died with its server: until the client ends it, the
/// block is failed.
#[derive(Debug)]
pub(super) struct LostBlock {
    /// The error the client has not seen yet: its block was idle when the
    /// server was lost, so its next request is the first to hear of it.
    unreported: Option<Bytes>,
    /// The unnamed portal is bound to a ROLLBACK or COMMIT (extended
    /// protocol, as pgJDBC ends a block), until the batch's Sync.
    bound_end: Option<StatementKind>,
}

/// The requests in flight up to one ReadyForQuery (or the batch not yet
/// ended by a Sync), as far as the lost server's fate goes.
#[derive(Debug, Default)]
struct Unit {
    effect: TxEffect,
    /// Ends with the client's request (not one of pgrelay's own).
    client: bool,
    /// A simple Query (or FunctionCall): one ReadyForQuery, no batch to skip.
    simple: bool,
    /// Ends with ReadyForQuery; false for the batch the client has not synced yet.
    closed: bool,
    /// Requests in flight in it.
    requests: usize,
    /// The batch not yet synced, which the server already failed and said
    /// so: it skips to the Sync, with no second error.
    failed: bool,
}

/// What one unit is answered with.
enum Answer {
    /// ErrorResponse, then (when the unit is closed) ReadyForQuery with this status.
    Error(Bytes, TxStatus),
    /// CommandComplete ROLLBACK and ReadyForQuery idle: a ROLLBACK of a block
    /// that cannot have committed.
    RolledBack,
    /// pgrelay's own request: nothing reaches the client.
    Quiet,
    /// The client heard of its batch's failure from the server: nothing
    /// more until its Sync, after which the client's status is this.
    Told(TxStatus),
}

/// The loss cannot be answered as a server would: the connection ends.
struct Inexact;

impl Session {
    /// Carries the client on past the loss of its server connection when
    /// `error` is one and the client can go on without it; otherwise (or
    /// when the loss cannot be answered exactly) returns the error that
    /// ends the session.
    pub(super) fn outlive(&mut self, error: SessionError) -> Result<(), SessionError> {
        let cause = match &error {
            SessionError::ServerClosed { .. } => "the server closed it".to_owned(),
            SessionError::ServerIo(e) => e.to_string(),
            SessionError::NodeFenced { .. } => "the node is no longer the primary".to_owned(),
            SessionError::ServerGone { fields, .. } => fields.message.clone(),
            _ => return Err(error),
        };
        let Some(lease) = self.lease.as_ref() else { return Err(error) };
        let node = lease.pool().key.node.clone();
        if let Some(state) = self.pinned {
            return Err(SessionError::PinnedStateLost { node, state: state.describe(), cause });
        }
        let tracker = lease.conn().tracker();
        let streaming = tracker.copy_state() != CopyState::None || tracker.client_copy_open() || self.passthrough > 0;
        if lease.pool().mode() == PoolMode::Session || streaming {
            return Err(error);
        }
        let answered = self.answer_in_flight(&node, &cause);
        self.apply_undone();
        self.forget_lost_lease();
        match answered {
            Ok(code) => {
                tracing::info!(parent: &self.span, %node, %cause, code, "server connection lost; the client carries on");
                Ok(())
            }
            Err(Inexact) => Err(error),
        }
    }

    /// Answers every request in flight on the lost connection; returns the
    /// SQLSTATE the client was told.
    fn answer_in_flight(&mut self, node: &str, cause: &str) -> Result<&'static str, Inexact> {
        let units = self.units_in_flight();
        let conn = self.lease.as_mut().expect("leased").conn_mut();
        let before = conn.tracker().tx_status();
        // Had every request in flight run: could something have committed?
        let may_commit = units
            .iter()
            .try_fold(before, |state, unit| {
                let step = unit.effect.from(state);
                if step.may_commit {
                    Err(())
                } else {
                    Ok(step.after)
                }
            })
            .is_err();
        let code = if may_commit { sqlstate::TRANSACTION_RESOLUTION_UNKNOWN } else { sqlstate::SERIALIZATION_FAILURE };
        let lost = lost_error(code, node, cause);
        // The server's state had every request run, and the client's as it is told.
        let (mut server, mut client) = (before, before);
        for unit in &units {
            let step = unit.effect.from(server);
            server = step.after;
            let answer = answer_for(unit, step.may_commit, client, &lost)?;
            client = feed(conn, &mut self.out, unit, &answer)?;
            if !unit.closed {
                // The client's messages up to its Sync are skipped, as the server would.
                self.discard_until_sync = true;
            }
            if let Answer::Error(..) = answer {
                self.ctx.metrics.error(code.as_bytes(), ErrorOrigin::Pgrelay);
            }
        }
        self.lost = match client {
            TxStatus::Idle => None,
            TxStatus::Failed => Some(LostBlock { unreported: None, bound_end: None }),
            // A block with nothing in flight: the client hears of it next.
            TxStatus::InTransaction => Some(LostBlock { unreported: Some(lost), bound_end: None }),
        };
        Ok(code)
    }

    /// The requests in flight, grouped by the ReadyForQuery that ends them.
    fn units_in_flight(&self) -> Vec<Unit> {
        let Some(lease) = self.lease.as_ref() else { return Vec::new() };
        let tracker = lease.conn().tracker();
        let mut units = Vec::new();
        let mut unit = Unit { effect: TxEffect::NONE, ..Unit::default() };
        for request in tracker.in_flight() {
            let client = request.origin == Origin::Client;
            unit.effect = match request.expect {
                // The Sync carries its whole batch's effect, Executes already answered included.
                Expect::Sync => request.effect,
                _ => unit.effect.then(request.effect),
            };
            unit.client |= client;
            unit.requests += 1;
            if matches!(request.expect, Expect::Sync | Expect::Query) {
                unit.client = client;
                unit.simple = matches!(request.expect, Expect::Query);
                unit.closed = true;
                units.push(std::mem::replace(&mut unit, Unit { effect: TxEffect::NONE, ..Unit::default() }));
            }
        }
        if tracker.batch_open() || unit.client {
            unit.client = true;
            unit.effect = tracker.open_batch_effect();
            unit.failed = tracker.skipping();
            units.push(unit);
        }
        units
    }

    /// The lost connection goes (closed, never pooled), and with it what
    /// the session knew of it.
    fn forget_lost_lease(&mut self) {
        self.drop_lease_after_error(true);
        self.settings_changed = false;
        self.unnamed.on_lease = false;
        self.verifying = false;
        self.stalled = false;
        self.drops_pending = false;
        self.server_fatal = false;
        self.parsed_here.clear();
        self.idle_since = None;
        self.timing = Default::default();
        // A commit position learned on the lost connection is not reported.
        self.commit_report = None;
        self.registered.set_idle();
        // Messages held back for the lost server's answers are read again.
        self.recheck_input = true;
    }

    /// Answers a message of a client in a [`LostBlock`], as a server answers
    /// in a failed block: ROLLBACK (or COMMIT, which rolls back) ends it,
    /// everything else is refused with 25P02 up to the next Sync. The first
    /// answer of a block lost while idle is the loss itself.
    pub(super) fn answer_in_lost_block(&mut self, msg_tag: u8, msg: &[u8]) -> Result<(), SessionError> {
        let body = wire::body(msg);
        let kind = match msg_tag {
            frontend::QUERY => query_kind(sql_of(body)),
            frontend::PARSE => wire::read_cstr(body)
                .map_or(Ok(StatementKind::Other), |(_, definition)| statement_kind_or_other(sql_of(definition))),
            frontend::BIND => Ok(self.bound_kind(body)),
            frontend::DESCRIBE => Ok(match body.split_first() {
                Some((b'S', rest)) => self.statement_kind(wire::read_cstr(rest).map(|(name, _)| name)),
                _ => self.lost.as_ref().and_then(|block| block.bound_end).unwrap_or(StatementKind::Other),
            }),
            frontend::EXECUTE => Ok(match body.first() {
                Some(0) => self.lost.as_ref().and_then(|block| block.bound_end).unwrap_or(StatementKind::Other),
                _ => StatementKind::Other,
            }),
            frontend::SYNC => {
                // The batch ends; a Sync alone still tells the client its block failed, and why.
                let unreported = self.lost.as_mut().and_then(|block| {
                    block.bound_end = None;
                    block.unreported.take()
                });
                if unreported.is_some() {
                    self.put_lost_block_error(unreported);
                }
                wire::put_ready_for_query(&mut self.out, TxStatus::Failed);
                return Ok(());
            }
            frontend::FLUSH | frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL => return Ok(()),
            frontend::CLOSE => {
                self.answer_without_server(msg_tag, msg)?;
                return Ok(());
            }
            _ => Ok(StatementKind::Other),
        };
        let simple = matches!(msg_tag, frontend::QUERY | frontend::FUNCTION_CALL);
        let ends_block = matches!(kind, Ok(StatementKind::Rollback | StatementKind::Commit));
        if ends_block && !simple && msg_tag != frontend::EXECUTE {
            return self.prepare_end_of_lost_block(msg_tag, body, kind.unwrap_or(StatementKind::Other));
        }
        let Some(block) = self.lost.as_mut() else { return Ok(()) };
        if msg_tag == frontend::QUERY && block.unreported.is_none() && is_blank(sql_of(body)) {
            // No statement: nothing to refuse, as a server answers in a failed block.
            wire::put_empty_query_response(&mut self.out);
            wire::put_ready_for_query(&mut self.out, TxStatus::Failed);
            return Ok(());
        }
        let unreported = block.unreported.take();
        match (kind, simple) {
            (Ok(StatementKind::Rollback), true) => {
                wire::put_command_complete(&mut self.out, "ROLLBACK");
                wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
                self.lost = None;
            }
            // The Execute of a ROLLBACK (or COMMIT) bound in extended
            // protocol: the block ends here, the batch's Sync says idle.
            (Ok(kind @ (StatementKind::Rollback | StatementKind::Commit)), false) => {
                match unreported.filter(|_| kind == StatementKind::Commit) {
                    Some(error) => {
                        self.put_lost_block_error(Some(error));
                        self.discard_until_sync = true;
                    }
                    None => wire::put_command_complete(&mut self.out, "ROLLBACK"),
                }
                self.lost = None;
            }
            // A COMMIT of a failed block rolls it back; of one whose loss
            // the client has not heard of yet, it fails.
            (Ok(StatementKind::Commit), true) => {
                match unreported {
                    Some(error) => self.put_lost_block_error(Some(error)),
                    None => wire::put_command_complete(&mut self.out, "ROLLBACK"),
                }
                wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
                self.lost = None;
            }
            // Ends the block in extended protocol, or does more after it.
            _ if ends_block => return Err(SessionError::LostBlockUnanswerable),
            (Err(()), _) => return Err(SessionError::LostBlockUnanswerable),
            (Ok(_), _) => {
                self.put_lost_block_error(unreported);
                match simple {
                    true => wire::put_ready_for_query(&mut self.out, TxStatus::Failed),
                    false => self.discard_until_sync = true,
                }
            }
        }
        Ok(())
    }

    /// The error a request in the lost block gets: the loss itself (40001:
    /// the block was idle) when the client has not heard of it yet, else 25P02.
    fn put_lost_block_error(&mut self, unreported: Option<Bytes>) {
        let (error, code) = match unreported {
            Some(error) => (error, sqlstate::SERIALIZATION_FAILURE),
            None => (in_failed_block(), sqlstate::IN_FAILED_SQL_TRANSACTION),
        };
        self.out.extend_from_slice(&error);
        self.ctx.metrics.error(code.as_bytes(), ErrorOrigin::Pgrelay);
    }

    /// The Parse, Bind or Describe of a ROLLBACK or COMMIT in a lost block,
    /// answered as a server answers them in a failed block; its Execute
    /// ends the block (see `answer_in_lost_block`).
    fn prepare_end_of_lost_block(&mut self, msg_tag: u8, body: &[u8], kind: StatementKind) -> Result<(), SessionError> {
        match msg_tag {
            frontend::PARSE => {
                let (name, definition) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
                if name.is_empty() {
                    // Prepared on the next server connection the client's Bind lands on.
                    self.replace_unnamed(definition, false);
                    wire::put_parse_complete(&mut self.out);
                } else if let Some((code, message)) = self.parse_refusal(name) {
                    self.error_without_server(code, &message, true);
                } else {
                    // A ROLLBACK or COMMIT is valid anywhere: kept as if a server accepted it.
                    self.register_parsed(name, definition, true);
                }
            }
            frontend::BIND => {
                if body.first() != Some(&0) {
                    // A named portal for a ROLLBACK: not worth answering exactly.
                    return Err(SessionError::LostBlockUnanswerable);
                }
                if let Some(block) = self.lost.as_mut() {
                    block.bound_end = Some(kind);
                }
                wire::put_bind_complete(&mut self.out);
            }
            _ => {
                if body.first() == Some(&b'S') {
                    wire::put_no_parameters(&mut self.out);
                }
                wire::put_no_data(&mut self.out);
            }
        }
        Ok(())
    }

    /// The kind of the statement a Bind names.
    fn bound_kind(&self, body: &[u8]) -> StatementKind {
        let name = wire::read_cstr(body).and_then(|(_, rest)| wire::read_cstr(rest)).map(|(name, _)| name);
        self.statement_kind(name)
    }

    /// The kind of the client's statement of this name (empty: the unnamed one).
    fn statement_kind(&self, name: Option<&[u8]>) -> StatementKind {
        let definition = match name {
            Some([]) => self.unnamed.definition.as_deref(),
            Some(name) => self.statements.get(name).map(|stmt| &stmt.definition()[..]),
            None => None,
        };
        definition.map_or(StatementKind::Other, |d| statement_kind_or_other(sql_of(d)).unwrap_or(StatementKind::Other))
    }
}

/// The answer to one unit in flight, given whether it may have committed
/// and what the client was last told of its transaction.
fn answer_for(unit: &Unit, may_commit: bool, client: TxStatus, lost: &Bytes) -> Result<Answer, Inexact> {
    let failed_block = |after: TxStatus| if after == TxStatus::Idle { TxStatus::Idle } else { TxStatus::Failed };
    let rolls_back = unit.effect == TxEffect::of(StatementKind::Rollback)
        || (unit.effect == TxEffect::of(StatementKind::Commit) && client == TxStatus::Failed);
    if unit.simple && unit.requests > 1 {
        // Extended-protocol messages ahead of a Query in one batch: the
        // server would skip them and the Query with them.
        return Err(Inexact);
    }
    Ok(match () {
        _ if !unit.client => Answer::Quiet,
        _ if unit.failed => Answer::Told(failed_block(unit.effect.from(client).after)),
        _ if may_commit => Answer::Error(lost.clone(), failed_block(unit.effect.from(client).after)),
        _ if unit.simple && rolls_back => Answer::RolledBack,
        _ if client == TxStatus::Failed => {
            // Nothing in it ends the block (that is answered above, for a simple Query).
            if unit.effect.from(TxStatus::Failed).after != TxStatus::Failed {
                return Err(Inexact);
            }
            Answer::Error(in_failed_block(), TxStatus::Failed)
        }
        _ => Answer::Error(lost.clone(), failed_block(unit.effect.from(client).after)),
    })
}

/// Passes one unit's answer through the lost connection's tracker, which
/// skips what a server skips after an error (and takes back the client's
/// statement commands skipped with it); relays what it says the client is
/// owed. Returns the client's transaction status after it.
fn feed(conn: &mut ServerConn, out: &mut BytesMut, unit: &Unit, answer: &Answer) -> Result<TxStatus, Inexact> {
    let mut buf = BytesMut::new();
    let (first, status, to_client) = match answer {
        Answer::Error(error, status) => (error.clone(), *status, true),
        Answer::RolledBack => {
            wire::put_command_complete(&mut buf, "ROLLBACK");
            (buf.split().freeze(), TxStatus::Idle, true)
        }
        Answer::Quiet => (in_failed_block(), conn.tracker().tx_status(), false),
        Answer::Told(status) => return Ok(*status),
    };
    if unit.requests == 0 {
        // A batch whose requests were all answered: its Sync is still to come.
        out.extend_from_slice(&first);
        return Ok(status);
    }
    let mut pass = |message: &[u8]| -> Result<(), Inexact> {
        match conn.on_server_message(message[0], &message[5..]) {
            Verdict::Relay if to_client => out.extend_from_slice(message),
            Verdict::Desync(_) => return Err(Inexact),
            _ => {}
        }
        conn.emit_synthetic(out);
        Ok(())
    };
    pass(&first)?;
    if unit.closed {
        wire::put_ready_for_query(&mut buf, status);
        pass(&buf.split())?;
    }
    Ok(if to_client { status } else { TxStatus::Idle })
}

/// A Query text without a statement (spaces and semicolons).
fn is_blank(sql: &[u8]) -> bool {
    sql.iter().all(|b| b.is_ascii_whitespace() || *b == b';')
}

/// The error that tells the client its server was lost, and what is known
/// of its transaction.
fn lost_error(code: &'static str, node: &str, cause: &str) -> Bytes {
    let message = match code {
        sqlstate::TRANSACTION_RESOLUTION_UNKNOWN => format!(
            "the server connection to {node} was lost ({cause}) while a COMMIT or a statement outside a \
             transaction block was in progress: whether it committed is unknown"
        ),
        _ => format!(
            "the server connection to {node} was lost ({cause}); the transaction was rolled back \
             and may be retried"
        ),
    };
    let hint = "pgrelay kept this connection: the next transaction goes to the current primary \
                (after a ROLLBACK, when a transaction block was open)";
    wire::error_response(Severity::Error, code, &message, Some(hint))
}

fn in_failed_block() -> Bytes {
    wire::error_response(
        Severity::Error,
        sqlstate::IN_FAILED_SQL_TRANSACTION,
        "current transaction is aborted, commands ignored until end of transaction block",
        None,
    )
}

/// The kind of a simple Query's text in a failed block: its first statement
/// decides, unless it ends the block and others follow (Err: not answerable).
fn query_kind(sql: &[u8]) -> Result<StatementKind, ()> {
    let effect = query_effect(sql);
    for kind in [StatementKind::Rollback, StatementKind::Commit] {
        if effect == TxEffect::of(kind) {
            return Ok(kind);
        }
    }
    // The savepoint died with the block: the block stays failed.
    if effect == TxEffect::of(StatementKind::RollbackTo) {
        return Ok(StatementKind::Other);
    }
    match effect.from(TxStatus::Failed) {
        // Every statement is refused: the first one fails the text.
        step if step.after == TxStatus::Failed && !step.may_commit => Ok(StatementKind::Other),
        _ => Err(()),
    }
}

fn statement_kind_or_other(sql: &[u8]) -> Result<StatementKind, ()> {
    sql::statement_kind(sql).ok_or(())
}
