//! The session's prepared statements: the client's names mapped to shared
//! server-side statements, its unnamed statement, SQL DEALLOCATE / DISCARD
//! of its own statements, and the errors a server would raise for them.

use std::sync::Arc;

use bytes::Bytes;

use super::forward::{sql_of, Named};
use super::{lost, Session, UnnamedStatement};
use crate::backend::{Expect, Origin, Statement, Synthetic, TxEffect, Undone};
use crate::frontend::error::SessionError;
use crate::frontend::prepared::ClientStatements;
use crate::router::{self, PreparedCommand, SessionStateEffect};
use crate::wire::{self, frontend as tag, sqlstate, Severity, TxStatus, WireError};

/// Names kept in `parsed_here` per batch (a batch may Parse more; those
/// beyond are not told apart after a schema change).
const PARSED_HERE_KEPT: usize = 16;
/// prepared statement "name" already exists
const DUPLICATE_STATEMENT: &str = "42P05";
/// prepared statement "name" does not exist
const UNDEFINED_STATEMENT: &str = "26000";
/// too many prepared statements
const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
/// cached plan must not change result type
const FEATURE_NOT_SUPPORTED: &str = "0A000";

impl Session {
    /// A Parse between transactions: answered at once when a server has
    /// accepted the same statement (in the same context), refused when the
    /// name is taken or the client is at its limit.
    pub(super) fn parse_without_server(&mut self, body: &[u8]) -> Result<bool, SessionError> {
        let (name, definition) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
        if name.is_empty() {
            return Ok(false);
        }
        if let Some((code, message)) = self.parse_refusal(name) {
            self.error_without_server(code, &message, true);
            return Ok(true);
        }
        let effects = router::classify(sql_of(definition));
        if effects.session_state.is_some() || effects.changes_settings {
            return Ok(false);
        }
        Ok(self.register_parsed(name, definition, false))
    }

    /// A named Parse answered without a server, its name free: the
    /// statement is the client's, prepared wherever its Bind lands. Unless
    /// `valid` is known, only a text some server has accepted in this
    /// context is (false otherwise: the Parse goes to a server).
    pub(super) fn register_parsed(&mut self, name: &[u8], definition: &[u8], valid: bool) -> bool {
        let context = self.statement_context();
        let stmt = self.ctx.statements.intern(context, definition);
        if !valid && !stmt.is_validated() {
            return false;
        }
        let name = Bytes::copy_from_slice(name);
        if self.parsed_here.len() < PARSED_HERE_KEPT {
            self.parsed_here.push(name.clone());
        }
        self.statements.insert(name, stmt);
        wire::put_parse_complete(&mut self.out);
        true
    }

    /// The client's unnamed statement is `definition` now; `on_lease` when
    /// its Parse goes to the leased connection.
    pub(super) fn replace_unnamed(&mut self, definition: &[u8], on_lease: bool) {
        let unnamed = &mut self.unnamed;
        match &mut unnamed.definition {
            Some(kept) => {
                kept.clear();
                kept.extend_from_slice(definition);
            }
            None => unnamed.definition = Some(definition.to_vec()),
        }
        // Its first words are all that is read: no need to find where the text ends.
        unnamed.effect = lost::statement_effect(definition);
        unnamed.on_lease = on_lease;
        unnamed.sets = false;
        self.own.unnamed = None;
    }

    /// Bind or Describe of a statement the client does not have, between
    /// transactions: the error a server would give, without one.
    pub(super) fn check_statement_without_server(&mut self, msg_tag: u8, body: &[u8]) -> Result<bool, SessionError> {
        let name = match msg_tag {
            tag::BIND => wire::read_cstr(body).and_then(|(_, rest)| wire::read_cstr(rest)),
            _ => match body.split_first() {
                Some((b'S', rest)) => wire::read_cstr(rest),
                _ => return Ok(false),
            },
        };
        let (name, _) = name.ok_or(WireError::Malformed("Bind/Describe"))?;
        let exists = if name.is_empty() { self.unnamed.definition.is_some() } else { self.statements.contains(name) };
        if exists {
            return Ok(false);
        }
        self.error_without_server(UNDEFINED_STATEMENT, &undefined_statement(name), true);
        Ok(true)
    }

    /// `pgrelay_checked`: the text is known not to be a `pgrelay.` statement
    /// (asked between transactions, see `parse_own`).
    pub(super) fn forward_parse(&mut self, msg: &[u8], body: &[u8], pgrelay_checked: bool) -> Result<(), SessionError> {
        let (name, definition) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
        if !pgrelay_checked && router::pgrelay_command(definition).is_some() {
            // Never a server setting; pgrelay answers them between transactions.
            return self.refuse_own_in_batch();
        }
        let effects = router::classify(sql_of(definition));
        self.note_settings_change(effects.changes_settings);
        let mut tracked = false;
        if let Some(effect) = effects.session_state {
            tracked = effect == SessionStateEffect::Set
                && name.is_empty()
                && self.track_set(tag::PARSE, router::tracked_set(sql_of(definition)));
            if !tracked {
                self.drops_pending |= matches!(effect, SessionStateEffect::Deallocate | SessionStateEffect::Discard);
                self.pin(effect);
            }
        }
        if name.is_empty() {
            self.replace_unnamed(definition, true);
            self.unnamed.sets = tracked;
            {
                self.send(msg, Expect::Parse { registers: None, client_name: None });
                return Ok(());
            }
        }
        if let Some((code, message)) = self.parse_refusal(name) {
            return self.raise_in_batch(code, &message);
        }
        let context = self.statement_context();
        let stmt = self.ctx.statements.intern(context, definition);
        let name = Bytes::copy_from_slice(name);
        self.statements.insert(name.clone(), stmt.clone());
        // Parsed now, in the context of the client's settings now: the
        // statement itself, never a private copy.
        let conn = self.lease.as_mut().expect("leased").conn_mut();
        if !conn.prepare(&stmt, Origin::Client, Some(name.clone())) {
            conn.synthetic(Synthetic::ParseComplete(name), &mut self.out);
        } else {
            // Its result description, to check later preparations against;
            // or, when other clients prepared the text before, whether it
            // still gives theirs (not after a schema change: then the
            // client's name gets a statement of its own).
            conn.describe_shape(&stmt, Some(name));
        }
        // A Parse the server will skip (its batch already failed) creates nothing.
        self.apply_undone();
        Ok(())
    }

    /// Takes back the client's Parses and Closes the server skipped.
    pub(super) fn apply_undone(&mut self) {
        let Some(lease) = self.lease.as_mut() else { return };
        let conn = lease.conn_mut();
        let Some(undone) = conn.take_undone() else { return };
        // In reverse, each back to what the name stood for before it.
        for command in undone.into_iter().rev() {
            match command {
                Undone::Parse(name) => {
                    self.statements.remove(&name);
                }
                Undone::Close(name, stmt) => self.statements.insert(name, stmt),
                Undone::Fork(name, stmt, msg_tag, shape) => {
                    if self.statements.get(&name).is_some_and(|held| Arc::ptr_eq(held, &stmt)) {
                        let forked = self.ctx.statements.fork(&stmt, msg_tag, &shape);
                        self.statements.insert(name, forked);
                    }
                }
            }
        }
    }

    /// Why a Parse of `name` must fail, as PostgreSQL (or the client's limit) says.
    pub(super) fn parse_refusal(&mut self, name: &[u8]) -> Option<(&'static str, String)> {
        if self.statements.contains(name) {
            let name = String::from_utf8_lossy(name);
            return Some((DUPLICATE_STATEMENT, format!("prepared statement \"{name}\" already exists")));
        }
        let limit = self.config().pool.max_client_prepared_statements;
        (self.statements.len() >= limit).then(|| {
            (
                CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "too many prepared statements (max_client_prepared_statements = {limit}); \
                     close or DEALLOCATE some first"
                ),
            )
        })
    }

    pub(super) fn forward_bind(&mut self, msg: &[u8], body: &[u8], named: Named) -> Result<(), SessionError> {
        let (portal, rest) = wire::read_cstr(body).ok_or(WireError::Malformed("Bind"))?;
        let (name, params) = wire::read_cstr(rest).ok_or(WireError::Malformed("Bind"))?;
        let portal_unnamed = portal.is_empty();
        if portal_unnamed {
            // The unnamed portal is this Bind's now.
            self.own.portal = None;
        }
        if name.is_empty() {
            if self.own.unnamed.is_some() {
                return self.refuse_own_in_batch();
            }
            if self.unnamed.sets && self.tracked.is_none() {
                // The tracked SET again, in a batch of its own: not followed.
                self.pin(SessionStateEffect::Set);
            }
            self.ensure_unnamed()?;
            if portal_unnamed {
                self.bound_effect = self.unnamed.effect;
            }
            {
                self.send(msg, Expect::Bind { statement: None });
                return Ok(());
            }
        }
        let stmt = match self.known_statement(name, named)? {
            Known::Statement(stmt) => stmt,
            Known::Forward => {
                if portal_unnamed {
                    self.bound_effect = TxEffect::UNKNOWN;
                }
                self.send(msg, Expect::Bind { statement: None });
                return Ok(());
            }
            Known::Raised => return Ok(()),
            Known::Changed(_) => {
                return self.raise_in_batch(FEATURE_NOT_SUPPORTED, "cached plan must not change result type")
            }
        };
        if portal_unnamed {
            self.bound_effect = stmt.tx_effect(lost::statement_effect);
        }
        let conn = self.conn();
        conn.send_built(Expect::Bind { statement: Some(stmt.clone()) }, Origin::Client, |b| {
            wire::put_bind_renamed(b, portal, stmt.server_name.as_bytes(), params)
        });
        Ok(())
    }

    pub(super) fn forward_describe(&mut self, msg: &[u8], body: &[u8], named: Named) -> Result<(), SessionError> {
        let (&kind, rest) = body.split_first().ok_or(WireError::Malformed("Describe"))?;
        let (name, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("Describe"))?;
        if kind != b'S' {
            if name.is_empty() && self.own.portal.is_some() {
                return self.refuse_own_in_batch();
            }
            {
                self.send(msg, Expect::DescribePortal);
                return Ok(());
            }
        }
        let describe = Expect::DescribeStatement { got_parameters: false, shape_of: None, fork_for: None };
        if name.is_empty() {
            if self.own.unnamed.is_some() {
                return self.refuse_own_in_batch();
            }
            self.ensure_unnamed()?;
            {
                self.send(msg, describe);
                return Ok(());
            }
        }
        let stmt = match self.known_statement(name, named)? {
            Known::Statement(stmt) => stmt,
            Known::Forward => {
                self.send(msg, describe);
                return Ok(());
            }
            Known::Raised => return Ok(()),
            Known::Changed(stmt) => {
                // PostgreSQL describes the parameters before it finds the
                // result type changed.
                if let Some(parameters) = stmt.parameters().cloned() {
                    let conn = self.lease.as_mut().expect("leased").conn_mut();
                    conn.synthetic(Synthetic::Message(parameters), &mut self.out);
                }
                return self.raise_in_batch(FEATURE_NOT_SUPPORTED, "cached plan must not change result type");
            }
        };
        let conn = self.conn();
        conn.send_built(describe, Origin::Client, |b| {
            wire::put_statement_op(b, tag::DESCRIBE, stmt.server_name.as_bytes())
        });
        Ok(())
    }

    pub(super) fn forward_close(&mut self, msg: &[u8], body: &[u8]) -> Result<(), SessionError> {
        let (&kind, rest) = body.split_first().ok_or(WireError::Malformed("Close"))?;
        let (name, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("Close"))?;
        self.close_own(kind, name);
        if kind != b'S' || self.pinned.is_some() && !self.statements.contains(name) {
            {
                self.send(msg, Expect::Close { closes: None });
                return Ok(());
            }
        }
        if name.is_empty() {
            self.unnamed.definition = None;
            {
                self.send(msg, Expect::Close { closes: None });
                return Ok(());
            }
        }
        // The server-side statement stays for other clients; the client's
        // name goes (closing a name that does not exist is no error).
        let closed = self.statements.remove(name).map(|stmt| (Bytes::copy_from_slice(name), stmt));
        let conn = self.lease.as_mut().expect("leased").conn_mut();
        conn.synthetic(Synthetic::CloseComplete(closed), &mut self.out);
        self.apply_undone();
        Ok(())
    }

    /// The statement the client named (`named`, looked up when the message
    /// was read), prepared on the leased connection.
    fn known_statement(&mut self, name: &[u8], named: Named) -> Result<Known, SessionError> {
        let Named::Known(stmt) = named else {
            if self.statements.own(name).is_some() {
                self.refuse_own_in_batch()?;
                return Ok(Known::Raised);
            }
            if self.pinned.is_some() {
                return Ok(Known::Forward);
            }
            self.raise_in_batch(UNDEFINED_STATEMENT, &undefined_statement(name))?;
            return Ok(Known::Raised);
        };
        let stmt = self.statement_for_server(&stmt);
        if self.conn().take_mismatch(&stmt) {
            if !self.parsed_here.iter().any(|n| n[..] == *name) {
                return Ok(Known::Changed(stmt));
            }
            // Prepared by the client after the change (in this batch): a
            // statement of the text as it is now (the changed one is retired).
            let context = self.statement_context();
            let fresh = self.ctx.statements.intern(context, stmt.definition());
            self.statements.insert(Bytes::copy_from_slice(name), fresh.clone());
            let conn = self.conn();
            if conn.prepare(&fresh, Origin::Injected, None) {
                conn.describe_shape(&fresh, None);
            }
            return Ok(Known::Statement(fresh));
        }
        if self.conn().prepare(&stmt, Origin::Injected, None) {
            self.ctx.metrics.statements_reprepared.inc();
        }
        Ok(Known::Statement(stmt))
    }

    /// The statement to run on the leased connection. A client that changed
    /// settings in this transaction gets a private copy of a statement not
    /// yet prepared there, so that what is parsed under its transient
    /// settings is never shared.
    pub(super) fn statement_for_server(&mut self, stmt: &Arc<Statement>) -> Arc<Statement> {
        if !self.settings_changed || self.lease.as_ref().is_some_and(|l| l.conn().has_statement(stmt)) {
            return stmt.clone();
        }
        if let Some(copy) = self.private_copies.get(&stmt.server_name) {
            return copy.clone();
        }
        // A context of its own: neither a fresh Parse of the same text nor a
        // copy of another statement of that text (prepared before or after a
        // schema change) is this copy (each is checked against its own
        // description).
        let copy = self.ctx.statements.intern(self.ctx.settings.private_context(), stmt.definition());
        // Checked against what the client prepared, not what it gives now.
        copy.inherit_shape(stmt);
        // Kept while the client may bind it, so it is prepared once.
        if self.private_copies.len() < self.config().pool.max_client_prepared_statements {
            self.private_copies.insert(stmt.server_name.clone(), copy.clone());
        }
        copy
    }

    /// Makes the client's unnamed statement exist on the leased connection,
    /// or makes sure none does (so the server reports it missing).
    fn ensure_unnamed(&mut self) -> Result<(), SessionError> {
        if self.unnamed.on_lease {
            return Ok(());
        }
        let conn = self.lease.as_mut().expect("leased").conn_mut();
        match &self.unnamed.definition {
            Some(definition) => {
                conn.send_built(Expect::Parse { registers: None, client_name: None }, Origin::Injected, |b| {
                    wire::put_parse_renamed(b, b"", definition)
                })
            }
            None => conn.send_built(Expect::Close { closes: None }, Origin::Injected, |b| {
                wire::put_statement_op(b, tag::CLOSE, b"")
            }),
        }
        self.unnamed.on_lease = true;
        Ok(())
    }

    /// A Query that is one DEALLOCATE or DISCARD, between transactions:
    /// it concerns only the client's own statements.
    pub(super) fn prepared_command_without_server(&mut self, command: PreparedCommand) -> bool {
        let tag = match command {
            PreparedCommand::Deallocate(name) => {
                if self.statements.remove(&name).is_none() && !self.statements.remove_own(&name) {
                    self.error_without_server(UNDEFINED_STATEMENT, &undefined_statement(&name), false);
                    return true;
                }
                "DEALLOCATE"
            }
            PreparedCommand::DeallocateAll => {
                self.statements.clear();
                "DEALLOCATE ALL"
            }
            PreparedCommand::DiscardAll => {
                self.statements.clear();
                self.unnamed.definition = None;
                "DISCARD ALL"
            }
            PreparedCommand::DiscardPlans => return false,
        };
        wire::put_command_complete(&mut self.out, tag);
        wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
        true
    }

    /// The same commands within a transaction (or a pipeline).
    pub(super) fn forward_prepared_command(
        &mut self,
        command: PreparedCommand,
        msg: &[u8],
    ) -> Result<(), SessionError> {
        match command {
            PreparedCommand::Deallocate(name) => {
                let Some(stmt) = self.statements.remove(&name) else {
                    return self.raise_in_query(UNDEFINED_STATEMENT, &undefined_statement(&name));
                };
                // The server's own answer, from the shared statement (or a
                // stand-in); if the command fails (an aborted transaction),
                // pgrelay does not know whether it still exists there.
                let conn = self.conn();
                conn.prepare_to_deallocate(&stmt);
                let sql = format!("DEALLOCATE {}", stmt.server_name);
                conn.send_built(Expect::Query, Origin::Client, |b| wire::put_query(b, &sql));
                return Ok(());
            }
            // The client's statements go when the server reports the
            // command ran (see `on_command_complete`): not if it fails.
            PreparedCommand::DeallocateAll => {}
            PreparedCommand::DiscardAll => {
                self.conn().statements_uncertain();
                self.send(msg, Expect::Query);
                self.restore_reset_settings();
                return Ok(());
            }
            PreparedCommand::DiscardPlans => {}
        }
        self.conn().statements_uncertain();
        self.send(msg, Expect::Query);
        Ok(())
    }

    /// Answers a statement that would leave session state, under
    /// `session_state = "refuse"`, with an error raised by the server itself
    /// so it arrives in order with everything else.
    pub(super) fn refuse_query(&mut self, effect: SessionStateEffect) -> Result<(), SessionError> {
        let message = format!(
            "{} is not allowed through pgrelay in transaction pooling (session_state = \"refuse\")",
            effect.describe()
        );
        self.raise_in_query(sqlstate::FEATURE_NOT_SUPPORTED, &message)
    }

    /// An error for the client's simple Query, raised by the server so that
    /// it comes in order and with the transaction state a server gives it.
    pub(super) fn raise_in_query(&mut self, code: &str, message: &str) -> Result<(), SessionError> {
        let sql = raise_sql(code, message);
        self.conn().send_built(Expect::Query, Origin::Client, |b| wire::put_query(b, &sql));
        Ok(())
    }

    /// The same for an extended-protocol message: the server skips the rest
    /// of the batch, and so does pgrelay with the client's messages.
    pub(super) fn raise_in_batch(&mut self, code: &str, message: &str) -> Result<(), SessionError> {
        let sql = raise_sql(code, message);
        let conn = self.conn();
        conn.send_built(Expect::Parse { registers: None, client_name: None }, Origin::Injected, |b| {
            wire::put_parse(b, b"", &sql, &[])
        });
        conn.send_built(Expect::Bind { statement: None }, Origin::Injected, |b| wire::put_bind_text(b, b"", b"", &[]));
        conn.send_built(Expect::Execute, Origin::Injected, |b| wire::put_execute(b, b""));
        // The client's unnamed statement was replaced on this connection.
        self.unnamed.on_lease = false;
        self.discard_until_sync = true;
        Ok(())
    }

    /// An error between transactions; in a batch, the client's messages are
    /// discarded up to its Sync, which is answered as a server would.
    pub(super) fn error_without_server(&mut self, code: &str, message: &str, in_batch: bool) {
        wire::put_error_response(&mut self.out, Severity::Error, code, message, None);
        if in_batch {
            self.discard_until_sync = true;
        } else {
            wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
        }
    }
}

/// What a client's statement name stands for on the leased connection.
enum Known {
    Statement(Arc<Statement>),
    /// A pinned client's own SQL-prepared statement: the server knows it.
    Forward,
    /// The client has no such statement; the server is raising 26000.
    Raised,
    /// Prepared here, it showed a result type other than the one the client
    /// prepared (a schema change since): it must fail with 0A000.
    Changed(Arc<Statement>),
}

/// The server ran a statement of the client's (CommandComplete `body`):
/// DEALLOCATE ALL and DISCARD ALL, in a query of several statements or in
/// the extended protocol as well as alone, drop the client's statements as
/// they would on a direct connection. pgrelay's own requests never come here.
pub(super) fn on_command_complete(statements: &mut ClientStatements, unnamed: &mut UnnamedStatement, body: &[u8]) {
    match body {
        b"DEALLOCATE ALL\0" => statements.clear(),
        b"DISCARD ALL\0" => {
            statements.clear();
            unnamed.definition = None;
        }
        _ => {}
    }
}

fn undefined_statement(name: &[u8]) -> String {
    if name.is_empty() {
        return "unnamed prepared statement does not exist".into();
    }
    format!("prepared statement \"{}\" does not exist", String::from_utf8_lossy(name))
}

/// A DO block that raises `message` with SQLSTATE `code`. The message is
/// dollar-quoted with tags that occur nowhere in it, so no text in it can
/// end the quote, whatever the connection's string settings.
fn raise_sql(code: &str, message: &str) -> String {
    let tag = |base: &str, text: &str| {
        (0u32..).map(|n| format!("{base}{n}")).find(|t| !text.contains(&format!("${t}$"))).expect("a free tag")
    };
    let inner = tag("m", message);
    let body = format!(" BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = ${inner}${message}${inner}$; END ");
    let outer = tag("pgrelay", &body);
    format!("DO ${outer}${body}${outer}$")
}

#[cfg(test)]
mod tests {
    #[test]
    fn raised_messages_cannot_end_their_quotes() {
        let sql = super::raise_sql("26000", "prepared statement \"$m0$; drop table t; $pgrelay0$\" does not exist");
        assert!(sql.starts_with("DO $pgrelay1$"), "{sql}");
        assert!(sql.contains("MESSAGE = $m1$prepared statement"), "{sql}");
        assert!(sql.ends_with("$pgrelay1$"), "{sql}");
    }
}
