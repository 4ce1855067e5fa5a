//! Recognises SQL that leaves state on a server connection beyond the
//! transaction, which transaction pooling must not hand to another client,
//! and the few commands about prepared statements that pgrelay may answer
//! itself.
//!
//! The text is split into tokens by PostgreSQL's lexical rules and every
//! statement in it is classified, so a `SET` after `select 1;` or a
//! `set_config(..., false)` deep in a `WHERE` clause is found, and nothing
//! inside a literal or a comment is mistaken for a statement. This runs on
//! every Query and Parse, so a quick scan without tokens (`quick.rs`) first
//! clears the ordinary texts; only the rest are lexed.
//!
//! Choices that keep the classifier from missing an effect:
//! - Plain `'...'` literals are read with `standard_conforming_strings = on`;
//!   when one holds a backslash, the text is read again with backslashes as
//!   escapes (the `off` reading) and what either reading finds is reported.
//! - A literal, quoted identifier, comment or dollar quote left open at the
//!   end proves nothing: unless an earlier statement already left state, the
//!   text is reported as [`Opaque::Unterminated`] (the server rejects such
//!   text whole, but the lexer will not bet on agreeing with it). Under the
//!   backslash-escape reading an open literal is expected (`'C:\'`) and only
//!   means the server would reject the text, so it adds nothing.
//! - `DO` blocks and `CALL` run code the classifier cannot see. Functions
//!   the text calls by other names than the ones listed on
//!   [`SessionStateEffect`] are trusted, as are views and defaults.
//! - Any `;` ends a statement, even inside parentheses.
//! - Everything after a NUL byte is ignored: the server reads a query as a
//!   C string.

mod classify;
mod command;
mod lexer;
mod pgrelay;
mod quick;
#[cfg(test)]
mod tests;
mod tracked;

pub use command::{prepared_command, PreparedCommand};
pub use pgrelay::{format_lsn, parse_lsn, pgrelay_command, PgrelayCommand};
pub use tracked::tracked_set;

use lexer::Backslashes;

/// Session state a statement creates, or why it cannot be proved not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStateEffect {
    /// `SET` (not `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`), `RESET`,
    /// or `set_config(name, value, is_local)` unless `is_local` is a literal
    /// true: `TRUE`, or `'t'`, `'true'`, `'y'`, `'yes'`, `'on'`, `'1'` in any case.
    Set,
    Listen,
    /// SQL `PREPARE` (not `PREPARE TRANSACTION`).
    Prepare,
    Deallocate,
    Discard,
    /// `pg_advisory_lock`, `pg_try_advisory_lock` and their `_shared` forms.
    AdvisoryLock,
    /// `CREATE TEMP ...`, `CREATE ... pg_temp.x`, `SELECT ... INTO TEMP`.
    TempTable,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    Load,
    /// `dblink_connect`, `dblink_connect_u`, `dblink_open`.
    Dblink,
    /// Code or text whose effect the classifier cannot see.
    Unprovable(Opaque),
}

/// Why a text cannot be proved to leave no session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opaque {
    DoBlock,
    Call,
    /// A literal, quoted identifier, comment or dollar quote left open.
    Unterminated,
}

impl SessionStateEffect {
    /// Whether the statement may reset settings to the server's defaults
    /// (`RESET`, `DISCARD ALL`, `SET x TO DEFAULT`, or code pgrelay cannot see).
    pub fn may_reset_settings(self) -> bool {
        matches!(self, SessionStateEffect::Set | SessionStateEffect::Discard | SessionStateEffect::Unprovable(_))
    }

    /// Whether the statement may deallocate prepared statements pgrelay
    /// keeps on the connection.
    pub fn may_deallocate(self) -> bool {
        matches!(self, SessionStateEffect::Deallocate | SessionStateEffect::Discard | SessionStateEffect::Unprovable(_))
    }

    /// A short name for logs, metrics labels and error messages; never
    /// contains a quote.
    pub fn describe(self) -> &'static str {
        match self {
            SessionStateEffect::Set => "SET",
            SessionStateEffect::Listen => "LISTEN",
            SessionStateEffect::Prepare => "PREPARE",
            SessionStateEffect::Deallocate => "DEALLOCATE",
            SessionStateEffect::Discard => "DISCARD",
            SessionStateEffect::AdvisoryLock => "a session advisory lock",
            SessionStateEffect::TempTable => "a temporary table",
            SessionStateEffect::HoldCursor => "a cursor WITH HOLD",
            SessionStateEffect::Load => "LOAD",
            SessionStateEffect::Dblink => "a dblink connection",
            SessionStateEffect::Unprovable(Opaque::DoBlock) => "a DO block",
            SessionStateEffect::Unprovable(Opaque::Call) => "CALL",
            SessionStateEffect::Unprovable(Opaque::Unterminated) => "an unterminated literal or comment",
        }
    }
}

/// What a text does to the server connection beyond its own statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlEffects {
    /// The first session state the text leaves, in text order.
    pub session_state: Option<SessionStateEffect>,
    /// Whether any statement may change a run-time setting, even for the
    /// transaction only: any `SET` or `RESET`, `set_config`, `DISCARD`, `DO`,
    /// `CALL`, or unterminated text. A statement parsed after such a change
    /// may resolve names differently (`search_path`).
    pub changes_settings: bool,
}

/// Classifies every statement in `sql` (a simple Query's text or a Parse's).
pub fn classify(sql: &[u8]) -> SqlEffects {
    if quick::harmless(sql) {
        return SqlEffects::default();
    }
    // The server reads a query as a C string: nothing after a NUL runs.
    lex_and_classify(memchr::memchr(0, sql).map_or(sql, |nul| &sql[..nul]))
}

/// The full classification, under both readings of backslashes.
fn lex_and_classify(sql: &[u8]) -> SqlEffects {
    let standard = classify::scan(sql, Backslashes::Literal);
    let escaped = if standard.plain_backslash && !standard.settled() {
        classify::scan(sql, Backslashes::Escape)
    } else {
        classify::Findings::default()
    };
    let unterminated = standard.unterminated.then_some(SessionStateEffect::Unprovable(Opaque::Unterminated));
    SqlEffects {
        session_state: standard.effect.or(escaped.effect).or(unterminated),
        changes_settings: standard.changes_settings || escaped.changes_settings || standard.unterminated,
    }
}

/// What session state the statement(s) in `sql` create, if any.
pub fn session_state_effect(sql: &[u8]) -> Option<SessionStateEffect> {
    classify(sql).session_state
}
