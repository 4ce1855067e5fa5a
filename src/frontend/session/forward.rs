//! The client's messages: what pgrelay answers itself between transactions,
//! and forwarding the rest to the leased server connection, each with the
//! answer it is owed.

use std::sync::Arc;
use std::time::Instant;

use super::{lost, Session, HIGH_WATER};
use crate::backend::{Expect, Origin, ServerConn, Statement, StatementKind, TxEffect};
use crate::config::{PoolMode, SessionStatePolicy};
use crate::frontend::error::SessionError;
use crate::router::{self, PreparedCommand, SessionStateEffect};
use crate::wire::{self, frontend as tag, Frame, TxStatus, WireError};

impl Session {
    pub(super) async fn handle_client_messages(&mut self) -> Result<(), SessionError> {
        let max = self.config().pool.max_message_size;
        // A Flush is requested once per wait: again only when more was sent.
        let mut flush_requested = std::mem::take(&mut self.stalled);
        // Stops while the client's output is full: it is not reading.
        while self.out.len() < HIGH_WATER {
            let Some(frame) = Frame::peek(&self.cbuf, max)? else { break };
            if self.lost.is_some() {
                self.handle_in_lost_block(frame.tag, frame.total_len)?;
                if self.terminated {
                    return Ok(());
                }
                continue;
            }
            // The client statement a Bind or Describe names, looked up once.
            let named = self.named_statement(frame.tag, frame.total_len);
            let waits = self.must_wait(frame.tag, frame.total_len, &named);
            if !waits && self.lease.is_none() && !self.discard_until_sync && checked(&named).is_some() {
                // It needs a server connection anyway, and the check needs it first.
                self.acquire().await?;
            }
            if waits || self.verify_ahead(&named) {
                // Something new was sent to be answered, or nothing asked yet.
                if !waits || !flush_requested {
                    self.conn().request_flush();
                    self.flush_server()?;
                }
                self.stalled = true;
                break;
            }
            if frame.tag == tag::TERMINATE {
                self.terminated = true;
                return Ok(());
            }
            let msg = self.cbuf.split_to(frame.total_len);
            if self.discard_until_sync {
                if frame.tag != tag::SYNC {
                    continue;
                }
                self.discard_until_sync = false;
            }
            // Whether a Query or Parse is a `pgrelay.` statement is asked once.
            let mut pgrelay_checked = false;
            if self.lease.is_none() {
                if self.answer_without_server(frame.tag, &msg)? {
                    continue;
                }
                if let Some(command) = pgrelay_command_of(frame.tag, &msg) {
                    self.answer_pgrelay_command(command).await?;
                    continue;
                }
                if let Some(command) = self.own_execute(frame.tag, &msg) {
                    self.execute_own(command).await?;
                    continue;
                }
                pgrelay_checked = true;
                self.acquire().await?;
            } else if self.pinned.is_some() && frame.tag == tag::QUERY && self.pinned_idle() {
                // A pinned client between its transactions.
                if let Some(command) = pgrelay_command_of(frame.tag, &msg) {
                    self.answer_pgrelay_command(command).await?;
                    continue;
                }
                pgrelay_checked = true;
            }
            self.forward_client_message(frame.tag, &msg, named, pgrelay_checked)?;
            flush_requested = false;
            // Keep the server busy while the rest of a large batch is handled.
            if self.lease.as_ref().is_some_and(|l| l.conn().pending_write() >= HIGH_WATER) {
                self.flush_server()?;
            }
        }
        Ok(())
    }

    /// A message of a client whose block was lost with its server (see `lost`).
    fn handle_in_lost_block(&mut self, msg_tag: u8, len: usize) -> Result<(), SessionError> {
        let msg = self.cbuf.split_to(len);
        if msg_tag == tag::TERMINATE {
            self.terminated = true;
        } else if !self.discard_until_sync || msg_tag == tag::SYNC {
            self.discard_until_sync = false;
            self.answer_in_lost_block(msg_tag, &msg)?;
        }
        Ok(())
    }

    /// Some messages wait until the answers outstanding on the leased
    /// connection are in, because what they mean depends on them:
    /// - a named Parse: whether an earlier Parse of that name failed (so the
    ///   name is free again), and whether a shared statement it maps to
    ///   turned out stale (its result type changed);
    /// - a Bind or Describe of a statement whose Parse went in an earlier,
    ///   still unanswered batch: if that batch failed, the statement does
    ///   not exist; of a name the client closed: if that batch failed, the
    ///   statement still does;
    /// - a Close of a statement whose Parse or Close went in an earlier,
    ///   still unanswered batch: taken back when that batch fails, it would
    ///   otherwise undo this Close;
    /// - a Bind or Describe of a statement behind an unanswered DEALLOCATE
    ///   ALL or DISCARD ALL: the statement is gone if that ran;
    /// - a `pgrelay.` statement (a Query or an unnamed Parse): answered by
    ///   pgrelay between transactions, refused within one.
    ///
    /// Clients rarely pipeline these behind unanswered requests, so this
    /// costs nothing in the common case.
    fn must_wait(&mut self, msg_tag: u8, len: usize, named: &Named) -> bool {
        if msg_tag == tag::QUERY {
            // A `pgrelay.` statement is answered by pgrelay if the
            // transaction before it turns out over (see `answer_pgrelay_command`).
            let outstanding = self.lease.as_ref().is_some_and(|l| l.conn().tracker().has_outstanding());
            return outstanding && pgrelay_command_of(msg_tag, &self.cbuf[..len]).is_some();
        }
        if !matches!(msg_tag, tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE) {
            return false;
        }
        let Some(lease) = &self.lease else { return false };
        let tracker = lease.conn().tracker();
        if !tracker.has_outstanding() || tracker.client_copy_open() || self.discard_until_sync {
            self.verifying = false;
            self.drops_pending = false;
            return false;
        }
        if self.verifying {
            return true;
        }
        match named {
            Named::Known(_) if self.drops_pending => true,
            Named::Known(stmt) => tracker.parse_unanswered_before_this_batch(&stmt.server_name),
            // Unknown now, it may be known again once a Close the server
            // skips (its batch failed) is taken back.
            Named::Unknown => true,
            // A named Parse; or a pgrelay statement, answered by pgrelay if
            // the transaction before it turns out over.
            Named::Other if msg_tag == tag::PARSE => match wire::body(&self.cbuf[..len]).split_first() {
                Some((0, text)) => router::pgrelay_command(text).is_some(),
                other => other.is_some(),
            },
            Named::Other if msg_tag == tag::CLOSE => match wire::body(&self.cbuf[..len]).split_first() {
                Some((b'S', rest)) => wire::read_cstr(rest)
                    .is_some_and(|(name, _)| !name.is_empty() && tracker.name_unsettled_before_this_batch(name)),
                _ => false,
            },
            Named::Other => false,
        }
    }

    /// A Bind or Describe of a shared statement that is not yet on the leased
    /// connection, and whose result description a server gave before: it is
    /// prepared and described here first, and the message waits for the
    /// answer. A description that changed (a schema change since the client
    /// prepared it) makes the statement stale, and the client gets the 0A000
    /// a direct connection gives, not rows of another shape.
    fn verify_ahead(&mut self, named: &Named) -> bool {
        if self.discard_until_sync || self.lease.is_none() {
            return false;
        }
        let Some(stmt) = checked(named) else { return false };
        let stmt = self.statement_for_server(stmt);
        let Some(lease) = self.lease.as_mut() else { return false };
        let conn = lease.conn_mut();
        // The server skips to the Sync after an error: the message goes
        // nowhere, and neither would a Parse sent for it.
        let tracker = conn.tracker();
        if conn.has_statement(&stmt)
            || tracker.client_copy_open()
            || tracker.skipping()
            || tracker.has_mismatch(&stmt.server_name)
        {
            return false;
        }
        conn.prepare(&stmt, Origin::Injected, None);
        conn.describe_shape(&stmt, None);
        self.ctx.metrics.statements_reprepared.inc();
        self.verifying = true;
        true
    }

    /// What the Bind or Describe at the head of the input names: the
    /// client's statement, or a name it does not have. The unnamed statement
    /// and everything else are `Other`.
    fn named_statement(&self, msg_tag: u8, len: usize) -> Named {
        if !matches!(msg_tag, tag::BIND | tag::DESCRIBE) {
            return Named::Other;
        }
        let body = wire::body(&self.cbuf[..len]);
        let name = match msg_tag {
            tag::BIND => wire::read_cstr(body).and_then(|(_, rest)| wire::read_cstr(rest)),
            _ if body.first() == Some(&b'S') => wire::read_cstr(&body[1..]),
            _ => None,
        };
        match name {
            Some((name, _)) if !name.is_empty() => {
                self.statements.get(name).map_or(Named::Unknown, |stmt| Named::Known(stmt.clone()))
            }
            _ => Named::Other,
        }
    }

    /// Without a leased server connection the client is between transactions,
    /// so some messages need no server: Parse of a statement a server has
    /// already accepted (it is prepared wherever the client's Bind lands),
    /// Close, Flush, Sync (ReadyForQuery 'I'), and the prepared-statement
    /// commands that concern only the client's own statements. Besides saving
    /// a round trip, this keeps a client that prepares synchronously from
    /// waiting for a connection that its own other connections hold.
    pub(super) fn answer_without_server(&mut self, msg_tag: u8, msg: &[u8]) -> Result<bool, SessionError> {
        let body = wire::body(msg);
        match msg_tag {
            tag::SYNC => {
                self.parsed_here.clear();
                self.own.portal = None;
                wire::put_ready_for_query(&mut self.out, TxStatus::Idle);
            }
            tag::FLUSH => {}
            tag::CLOSE => {
                let (&kind, rest) = body.split_first().ok_or(WireError::Malformed("Close"))?;
                let (name, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("Close"))?;
                self.close_own(kind, name);
                match (kind, name.is_empty()) {
                    (b'S', true) => self.unnamed.definition = None,
                    (b'S', false) => {
                        self.statements.remove(name);
                    }
                    _ => {}
                }
                wire::put_close_complete(&mut self.out);
            }
            tag::PARSE => return Ok(self.parse_own(body)? || self.parse_without_server(body)?),
            tag::BIND => return Ok(self.bind_own(body)? || self.check_statement_without_server(msg_tag, body)?),
            tag::DESCRIBE => return Ok(self.describe_own(body)? || self.check_statement_without_server(msg_tag, body)?),
            // Only a text that starts with D can be DEALLOCATE or DISCARD.
            tag::QUERY if starts_with_d(body) => {
                let Some(command) = router::prepared_command(sql_of(body)) else { return Ok(false) };
                return Ok(self.prepared_command_without_server(command));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn forward_client_message(
        &mut self,
        msg_tag: u8,
        msg: &[u8],
        named: Named,
        pgrelay_checked: bool,
    ) -> Result<(), SessionError> {
        let body = wire::body(msg);
        tracing::trace!(parent: &self.span, tag = %char::from(msg_tag), len = msg.len(), "client message");
        // With a server leased, everything the client sends reaches it (what
        // pgrelay refuses is raised by the server, in order): a query begins.
        self.timing.sending(Instant::now);
        if self.tracked.is_some() {
            self.tracked_batch_message(msg_tag, body);
        }
        match msg_tag {
            tag::QUERY => self.forward_query(msg, body, pgrelay_checked)?,
            tag::PARSE => self.forward_parse(msg, body, pgrelay_checked)?,
            tag::BIND => self.forward_bind(msg, body, named)?,
            tag::DESCRIBE => self.forward_describe(msg, body, named)?,
            tag::CLOSE => self.forward_close(msg, body)?,
            tag::EXECUTE => {
                // The unnamed portal runs the statement last bound to it.
                let portal_unnamed = body.first() == Some(&0);
                if portal_unnamed && self.own.portal.is_some() {
                    return self.refuse_own_in_batch();
                }
                let effect = if portal_unnamed { self.bound_effect } else { TxEffect::UNKNOWN };
                self.conn().send_running(msg, Expect::Execute, effect)
            }
            tag::SYNC => {
                self.parsed_here.clear();
                self.own.portal = None;
                self.send(msg, Expect::Sync);
            }
            tag::FUNCTION_CALL => self.conn().send_running(msg, Expect::Query, TxEffect::of(StatementKind::Other)),
            tag::FLUSH => self.send(msg, Expect::Flush),
            tag::COPY_DATA => self.send(msg, Expect::CopyData),
            tag::COPY_DONE | tag::COPY_FAIL => self.send(msg, Expect::CopyEnd),
            other => return Err(WireError::UnexpectedTag(other).into()),
        }
        Ok(())
    }

    fn forward_query(&mut self, msg: &[u8], body: &[u8], pgrelay_checked: bool) -> Result<(), SessionError> {
        let sql = sql_of(body);
        if !pgrelay_checked && router::pgrelay_command(sql).is_some() {
            return self.refuse_pgrelay_command();
        }
        let effects = router::classify(sql);
        self.note_settings_change(effects.changes_settings);
        let Some(effect) = effects.session_state else {
            self.conn().send_running(msg, Expect::Query, lost::query_effect(sql));
            return Ok(());
        };
        if effect == SessionStateEffect::Set && self.track_set(tag::QUERY, router::tracked_set(sql)) {
            self.conn().send_running(msg, Expect::Query, lost::query_effect(sql));
            return Ok(());
        }
        if matches!(effect, SessionStateEffect::Deallocate | SessionStateEffect::Discard) {
            // Any statement of the text may drop the client's statements
            // (see `on_command_complete`).
            self.drops_pending = true;
            match router::prepared_command(sql) {
                Some(command) if self.pinned.is_none() => return self.forward_prepared_command(command, msg),
                // A pinned client's own SQL-prepared statements live on its
                // connection under their names; its protocol ones do not.
                Some(PreparedCommand::Deallocate(name)) if self.statements.contains(&name) => {
                    return self.forward_prepared_command(PreparedCommand::Deallocate(name), msg)
                }
                _ => {}
            }
        }
        let config = self.config();
        let (refuse, default_mode) = (config.pool.session_state == SessionStatePolicy::Refuse, config.pool.mode);
        // The pool's own mode: a database or user may have its own.
        let mode = self.lease.as_ref().map_or(default_mode, |lease| lease.pool().mode());
        if refuse && mode == PoolMode::Transaction {
            return self.refuse_query(effect);
        }
        self.pin(effect);
        if effect.may_deallocate() {
            self.conn().statements_uncertain();
        }
        self.conn().send_running(msg, Expect::Query, lost::query_effect(sql));
        if effect.may_reset_settings() {
            self.restore_reset_settings();
        }
        Ok(())
    }

    /// Behind a statement that may have reset settings to the server's
    /// defaults, brings back the client's startup settings it reset (as a
    /// server brings back those of its startup packet, not earlier `SET`s).
    pub(super) fn restore_reset_settings(&mut self) {
        if self.origin.startup.is_empty() || self.conn().tracker().batch_open() {
            return;
        }
        let settings = self.origin.startup.clone();
        self.conn().restore_reset_settings(&settings);
        // That used the unnamed statement.
        self.unnamed.on_lease = false;
    }

    pub(super) fn conn(&mut self) -> &mut ServerConn {
        self.lease.as_mut().expect("leased").conn_mut()
    }

    /// Forwards a client message unchanged.
    pub(super) fn send(&mut self, msg: &[u8], expect: Expect) {
        self.conn().send(msg, expect, Origin::Client)
    }
}

/// The client statement a Bind or Describe names (see `named_statement`).
pub(super) enum Named {
    /// Not a Bind or Describe of a named statement.
    Other,
    /// A name the client has not prepared (or closed).
    Unknown,
    Known(Arc<Statement>),
}

/// The statement named, when its result description is known and worth
/// checking before it runs on another connection (see `verify_ahead`).
fn checked(named: &Named) -> Option<&Arc<Statement>> {
    match named {
        Named::Known(stmt) if stmt.has_shape() => Some(stmt),
        _ => None,
    }
}

/// The query text of a Query message (or of a Parse after its name).
pub(super) fn sql_of(body: &[u8]) -> &[u8] {
    wire::read_cstr(body).map_or(body, |(sql, _)| sql)
}

/// The `pgrelay.` statement a simple Query is, if it is one.
fn pgrelay_command_of(msg_tag: u8, msg: &[u8]) -> Option<router::PgrelayCommand> {
    // The text up to its NUL: pgrelay_command stops there itself.
    (msg_tag == tag::QUERY).then(|| router::pgrelay_command(wire::body(msg))).flatten()
}

/// Whether the first word of `sql` (after spaces and comments) may start with D.
fn starts_with_d(sql: &[u8]) -> bool {
    let first = sql.iter().find(|b| !b.is_ascii_whitespace());
    matches!(first, Some(b'd' | b'D' | b'-' | b'/'))
}
