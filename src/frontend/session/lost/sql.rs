//! What a client's SQL does to its transaction, read from the first words of
//! each statement (see [`TxEffect`]). A simple Query's text is read as it is
//! forwarded: one statement (nearly all texts) costs a search for `;` and
//! its first words; a text of several is split at its semicolons, and what
//! cannot be split with certainty is [`TxEffect::UNKNOWN`]. A prepared
//! statement's text is read only when its server is lost.

use memchr::{memchr, memmem};

use crate::backend::{StatementKind, TxEffect};

/// What the statements of a simple Query's text (without its NUL) do.
pub fn query_effect(sql: &[u8]) -> TxEffect {
    match memchr(b';', sql) {
        Some(at) if !sql[at + 1..].iter().all(u8::is_ascii_whitespace) => statements_effect(sql),
        _ => effect_of(statement_kind(sql)),
    }
}

/// What one statement's text (a Parse's) does; read from its first words,
/// so the text may go on past its NUL (a Parse body's parameter types).
pub fn statement_effect(sql: &[u8]) -> TxEffect {
    effect_of(statement_kind(sql))
}

/// The kind of the one statement in `sql`, or None when its first words
/// leave it open (`COMMIT AND CHAIN`).
pub fn statement_kind(sql: &[u8]) -> Option<StatementKind> {
    if !may_control_transactions(sql) {
        return Some(StatementKind::Other);
    }
    let Some((first, at)) = next_word(sql, 0) else { return Some(StatementKind::Other) };
    let word = |w: &[u8]| first.eq_ignore_ascii_case(w);
    if word(b"begin") || word(b"start") {
        return Some(StatementKind::Begin);
    }
    if word(b"prepare") {
        let next = next_word(sql, at).map(|(w, _)| w);
        let ends = next.is_some_and(|w| w.eq_ignore_ascii_case(b"transaction"));
        return Some(if ends { StatementKind::Commit } else { StatementKind::Other });
    }
    let (ends, rolls_back) = match () {
        _ if word(b"commit") || word(b"end") => (StatementKind::Commit, false),
        _ if word(b"rollback") || word(b"abort") => (StatementKind::Rollback, true),
        _ => return Some(StatementKind::Other),
    };
    // [WORK | TRANSACTION], then TO (a savepoint), PREPARED (a prepared
    // transaction's own command) or AND [NO] CHAIN.
    let mut next = next_word(sql, at);
    if let Some((w, end)) = next {
        if w.eq_ignore_ascii_case(b"work") || w.eq_ignore_ascii_case(b"transaction") {
            next = next_word(sql, end);
        }
    }
    match next.map(|(w, _)| w) {
        Some(w) if rolls_back && w.eq_ignore_ascii_case(b"to") => Some(StatementKind::RollbackTo),
        Some(w) if w.eq_ignore_ascii_case(b"prepared") => Some(StatementKind::Other),
        Some(w) if w.eq_ignore_ascii_case(b"and") => None,
        _ => Some(ends),
    }
}

/// False when the first word is certainly none of BEGIN, START, COMMIT,
/// END, PREPARE, ROLLBACK, ABORT: a look at its first two letters, which
/// settles nearly every statement (SELECT, INSERT, UPDATE, SET, ...).
fn may_control_transactions(sql: &[u8]) -> bool {
    let Some(start) = sql.iter().position(|b| !b.is_ascii_whitespace()) else { return false };
    let second = sql.get(start + 1).map_or(0, u8::to_ascii_lowercase);
    match sql[start].to_ascii_lowercase() {
        // A comment first: read on.
        b'-' | b'/' => true,
        b's' => second == b't',
        b'a' | b'b' | b'c' | b'e' | b'p' | b'r' => true,
        _ => false,
    }
}

fn effect_of(kind: Option<StatementKind>) -> TxEffect {
    kind.map_or(TxEffect::UNKNOWN, TxEffect::of)
}

/// A text of several statements: each one's effect, in order. Literals,
/// quoted names, dollar quotes and comments are skipped; a backslash in a
/// literal (whose end then depends on the server's settings), an
/// unterminated one, or a `BEGIN ATOMIC` body (whose semicolons do not end
/// the statement) make the text unknown.
fn statements_effect(sql: &[u8]) -> TxEffect {
    if memmem::find(&sql.to_ascii_lowercase(), b"atomic").is_some() {
        return TxEffect::UNKNOWN;
    }
    let mut effect = TxEffect::NONE;
    let mut start = 0;
    let mut i = 0;
    while i < sql.len() {
        let next = sql.get(i + 1).copied();
        i = match (sql[i], next) {
            (b'\'', _) => match quoted_end(sql, i + 1, b'\'') {
                Some(end) if !sql[i..end].contains(&b'\\') => end,
                _ => return TxEffect::UNKNOWN,
            },
            (b'"', _) => match quoted_end(sql, i + 1, b'"') {
                Some(end) => end,
                None => return TxEffect::UNKNOWN,
            },
            (b'-', Some(b'-')) => memchr(b'\n', &sql[i..]).map_or(sql.len(), |n| i + n + 1),
            (b'/', Some(b'*')) => match comment_end(sql, i + 2) {
                Some(end) => end,
                None => return TxEffect::UNKNOWN,
            },
            (b'$', _) if i == 0 || !is_ident_cont(sql[i - 1]) => match dollar_quote_end(sql, i) {
                Ok(end) => end,
                Err(()) => return TxEffect::UNKNOWN,
            },
            (b';', _) => {
                effect = effect.then(one_statement(&sql[start..i]));
                start = i + 1;
                i + 1
            }
            _ => i + 1,
        };
    }
    effect.then(one_statement(&sql[start..]))
}

/// A statement between semicolons; an empty one runs nothing.
fn one_statement(sql: &[u8]) -> TxEffect {
    match skip_trivia(sql, 0) {
        Some(at) if at >= sql.len() => TxEffect::NONE,
        Some(_) => effect_of(statement_kind(sql)),
        None => TxEffect::UNKNOWN,
    }
}

/// The next word from `from` on, after whitespace and comments, with where
/// it ends; None when something else comes first.
fn next_word(sql: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let start = skip_trivia(sql, from)?;
    let mut end = start;
    while end < sql.len() && (sql[end].is_ascii_alphabetic() || sql[end] == b'_') {
        end += 1;
    }
    (end > start).then(|| (&sql[start..end], end))
}

/// Skips whitespace and comments; None if a block comment is left open.
fn skip_trivia(sql: &[u8], mut i: usize) -> Option<usize> {
    loop {
        while i < sql.len() && sql[i].is_ascii_whitespace() {
            i += 1;
        }
        i = match sql.get(i..i + 2) {
            Some(b"--") => memchr(b'\n', &sql[i..]).map_or(sql.len(), |n| i + n + 1),
            Some(b"/*") => comment_end(sql, i + 2)?,
            _ => return Some(i),
        };
    }
}

/// The end of a block comment whose body starts at `from` (they nest).
fn comment_end(sql: &[u8], mut from: usize) -> Option<usize> {
    let mut depth = 1;
    while from + 1 < sql.len() {
        match &sql[from..from + 2] {
            b"*/" => {
                depth -= 1;
                from += 2;
                if depth == 0 {
                    return Some(from);
                }
            }
            b"/*" => {
                depth += 1;
                from += 2;
            }
            _ => from += 1,
        }
    }
    None
}

/// The end of a literal or quoted name whose body starts at `from` (a
/// doubled quote stands for one).
fn quoted_end(sql: &[u8], mut from: usize, quote: u8) -> Option<usize> {
    loop {
        let at = from + memchr(quote, &sql[from..])?;
        if sql.get(at + 1) != Some(&quote) {
            return Some(at + 1);
        }
        from = at + 2;
    }
}

/// The end of the dollar-quoted string starting at `start`, or the byte
/// after the `$` when it starts none (`$1`).
fn dollar_quote_end(sql: &[u8], start: usize) -> Result<usize, ()> {
    let mut end = start + 1;
    while end < sql.len() && (sql[end].is_ascii_alphanumeric() || sql[end] == b'_' || sql[end] >= 0x80) {
        end += 1;
    }
    let tag_starts_well = sql.get(start + 1).is_none_or(|b| !b.is_ascii_digit());
    if sql.get(end) != Some(&b'$') || !tag_starts_well {
        return Ok(start + 1);
    }
    let tag = &sql[start..=end];
    match memmem::find(&sql[end + 1..], tag) {
        Some(at) => Ok(end + 1 + at + tag.len()),
        None => Err(()),
    }
}

fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}
