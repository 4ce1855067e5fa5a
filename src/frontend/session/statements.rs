//! The session's handling of named prepared statements and of what needs no
//! server: Parse under a shared server-side name, the answers pgrelay gives
//! between transactions, and refusing session state when configured to.

use std::sync::Arc;

use super::Session;
use crate::backend::{Expect, Origin, Statement, Synthetic};
use crate::frontend::error::SessionError;
use crate::router::{self, SessionStateEffect};
use crate::wire::{self, frontend as tag, TxStatus, WireError};

impl Session {
    /// Without a leased server connection the client is between transactions,
    /// so some messages need no server: Parse of a statement a server has
    /// already accepted (it is prepared wherever the client's Bind lands),
    /// Close, Flush, and Sync (ReadyForQuery 'I'). Besides saving a round
    /// trip, this keeps a client that prepares synchronously from waiting for
    /// a connection that its own other connections hold.
    pub(super) fn answer_without_server(&mut self, msg_tag: u8, msg: &[u8]) -> Result<bool, SessionError> {
        let body = wire::body(msg);
        match msg_tag {
            tag::SYNC => wire::put_ready_for_query(&mut self.out, TxStatus::Idle),
            tag::FLUSH => {}
            tag::CLOSE => {
                let (&kind, rest) = body.split_first().ok_or(WireError::Malformed("Close"))?;
                let (name, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("Close"))?;
                if kind == b'S' {
                    self.statements.remove(name);
                }
                wire::put_close_complete(&mut self.out);
            }
            tag::PARSE => {
                let (name, definition) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
                let sql = wire::read_cstr(definition).map_or(definition, |(sql, _)| sql);
                if name.is_empty() || router::session_state_effect(sql).is_some() {
                    return Ok(false);
                }
                let stmt = self.ctx.statements.intern(definition);
                if !stmt.is_validated() {
                    return Ok(false);
                }
                self.statements.insert(name, stmt);
                wire::put_parse_complete(&mut self.out);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(super) fn forward_parse(&mut self, msg: &[u8], body: &[u8]) -> Result<(), SessionError> {
        let (name, definition) = wire::read_cstr(body).ok_or(WireError::Malformed("Parse"))?;
        if let Some(effect) = wire::read_cstr(definition).and_then(|(sql, _)| router::session_state_effect(sql)) {
            self.pin(effect);
        }
        if name.is_empty() {
            self.send(msg, Expect::Parse { registers: None });
            return Ok(());
        }
        let stmt = self.ctx.statements.intern(definition);
        self.statements.insert(name, stmt.clone());
        let lease = self.lease.as_mut().expect("leased");
        let conn = lease.conn_mut();
        if conn.tracker.is_prepared(&stmt.server_name) {
            conn.tracker.synthetic(Synthetic::ParseComplete, &mut self.out);
        } else {
            wire::put_parse_renamed(&mut conn.wbuf, stmt.server_name.as_bytes(), &stmt.definition);
            conn.tracker.sent(Expect::Parse { registers: Some(stmt.clone()) }, Origin::Client);
        }
        Ok(())
    }

    /// Answers a statement that would leave session state, under
    /// `session_state = "refuse"`, with an error raised by the server itself so
    /// it arrives in order with everything else.
    pub(super) fn refuse_query(&mut self, effect: SessionStateEffect) -> Result<(), SessionError> {
        let sql = format!(
            "DO $pgrelay$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', MESSAGE = '{} is not allowed through pgrelay in transaction pooling (session_state = \"refuse\")'; END $pgrelay$",
            effect.describe()
        );
        let conn = self.conn();
        wire::put_query(&mut conn.wbuf, &sql);
        conn.tracker.sent(Expect::Query, Origin::Client);
        Ok(())
    }

    pub(super) fn client_statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            return None;
        }
        self.statements.get(name).cloned()
    }
}
