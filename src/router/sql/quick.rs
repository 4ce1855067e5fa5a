//! A cheap proof that a text leaves no session state and changes no
//! setting, for the texts that make up nearly all traffic: statements of
//! words, numbers, operators, parentheses, comments, plain literals that end
//! at the same quote whether backslashes escape or not, quoted identifiers
//! and `$n` parameters, none of them starting with a word that matters.
//!
//! One table-driven pass stops only at bytes that could start a literal, a
//! comment or another statement, open a call, or be the `m` of a TEMP.
//! Whatever it cannot prove at a glance it leaves to the full lexer, so it
//! may only answer "harmless" where [`super::classify::scan`] finds nothing.

use memchr::{memchr2, memchr3};

use super::classify::{callee, first_word_is_plain, is_pg_temp_name};
use super::lexer::{block_comment_end, is_ident_cont, is_ident_start, is_space, line_end};

/// The bytes the scan looks at: `'`, `"`, `$`, `;`, `(`, `-`, `/`, `m`,
/// which TEMP, TEMPORARY and pg_temp have, and NUL, where the server stops
/// reading (a simple Query's text ends with one).
const STOP: [u8; 256] = {
    let mut table = [0u8; 256];
    let stops = b"'\"$;(-/mM\0";
    let mut i = 0;
    while i < stops.len() {
        table[stops[i] as usize] = 1;
        i += 1;
    }
    table
};

/// True if `sql`, up to its first NUL, certainly leaves no session state and
/// changes no setting; false if the full lexer must decide.
pub(super) fn harmless(sql: &[u8]) -> bool {
    scan(sql).is_some()
}

/// Where the scan stands: the last quoted identifier and comment seen, to
/// tell what stands before a `(`.
struct Seen {
    quoted: (usize, usize),
    comment: (usize, usize),
}

fn scan(sql: &[u8]) -> Option<()> {
    let mut seen = Seen { quoted: (0, usize::MAX), comment: (0, 0) };
    let mut i = statement_start(sql, 0)?;
    loop {
        i = next_stop(sql, i);
        let Some(&byte) = sql.get(i) else { return Some(()) };
        let before = i.checked_sub(1).map_or(b' ', |p| sql[p]);
        let next = sql.get(i + 1).copied().unwrap_or(0);
        i = match byte {
            // A letter or `&` before the quote makes it E'', B'', U&'' ...
            b'\'' if !is_ident_cont(before) && before != b'&' => plain_literal_end(sql, i + 1)?,
            b'"' if before != b'&' => {
                let end = quoted_ident_end(sql, i + 1)?;
                if is_pg_temp_name(&sql[i + 1..end - 1], false) {
                    return None;
                }
                seen.quoted = (i, end);
                end
            }
            // `$1`; a `$` right after it (`$1$$`) stops the scan, after a digit.
            b'$' if !is_ident_cont(before) && next.is_ascii_digit() => digits_end(sql, i + 1),
            b'(' if calls_listed(sql, i, &seen) => return None,
            b'(' => i + 1,
            b';' if sql[i + 1..].iter().take_while(|&&b| b != 0).all(|&b| is_space(b)) => return Some(()),
            b';' => statement_start(sql, i + 1)?,
            0 => return Some(()),
            b'-' if next == b'-' => {
                seen.comment = (i, line_end(sql, i + 2));
                seen.comment.1
            }
            b'/' if next == b'*' => {
                seen.comment = (i, block_comment_end(sql, i + 2)?);
                seen.comment.1
            }
            b'-' | b'/' => i + 1,
            // TEMP, TEMPORARY and pg_temp all have "te" before the `m`.
            b'm' | b'M' if !i.checked_sub(2).is_some_and(|t| sql[t..i].eq_ignore_ascii_case(b"te")) => i + 1,
            b'm' | b'M' => temp_free_word_end(sql, i)?,
            _ => return None,
        };
    }
}

/// Skips to a statement's first word and past it, if that word is none that
/// matters here.
fn statement_start(sql: &[u8], from: usize) -> Option<usize> {
    let start = skip_trivia(sql, from)?;
    let end = if sql.get(start).is_some_and(|&b| is_ident_start(b)) { word_end(sql, start) } else { start };
    first_word_is_plain(&sql[start..end]).then_some(end)
}

/// The end of the word around the `m` at `i`, unless the word is TEMP,
/// TEMPORARY or pg_temp, or starts with a digit or `$` (`1temp` is `1` and
/// `temp` to older servers).
fn temp_free_word_end(sql: &[u8], i: usize) -> Option<usize> {
    let mut start = i;
    while start > 0 && is_ident_cont(sql[start - 1]) {
        start -= 1;
    }
    let end = word_end(sql, i);
    let word = &sql[start..end];
    let temp = word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary");
    (is_ident_start(sql[start]) && !temp && !is_pg_temp_name(word, true)).then_some(end)
}

/// The next byte from `i` on that the scan must look at, eight bytes at a
/// time while none is.
fn next_stop(sql: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = sql.get(i..i + 8) {
        if chunk.iter().fold(0, |any, &b| any | STOP[usize::from(b)]) != 0 {
            break;
        }
        i += 8;
    }
    while i < sql.len() && STOP[usize::from(sql[i])] == 0 {
        i += 1;
    }
    i
}

/// Skips whitespace and comments; None if a block comment is left open.
fn skip_trivia(sql: &[u8], mut i: usize) -> Option<usize> {
    loop {
        while i < sql.len() && is_space(sql[i]) {
            i += 1;
        }
        i = match sql.get(i..i + 2) {
            Some(b"--") => line_end(sql, i + 2),
            Some(b"/*") => block_comment_end(sql, i + 2)?,
            _ => return Some(i),
        };
    }
}

fn digits_end(sql: &[u8], mut i: usize) -> usize {
    while i < sql.len() && sql[i].is_ascii_digit() {
        i += 1;
    }
    i
}

fn word_end(sql: &[u8], mut i: usize) -> usize {
    while i < sql.len() && is_ident_cont(sql[i]) {
        i += 1;
    }
    i
}

/// The end of a `'...'` body starting at `from`, if the literal ends there
/// whether backslashes escape (`standard_conforming_strings = off`) or not,
/// and before any NUL.
fn plain_literal_end(sql: &[u8], from: usize) -> Option<usize> {
    let (end, backslash) = literal_end(sql, from, false)?;
    if backslash && literal_end(sql, from, true)?.0 != end {
        return None;
    }
    Some(end)
}

/// The end of a `'...'` body and whether it holds a backslash.
fn literal_end(sql: &[u8], mut from: usize, escapes: bool) -> Option<(usize, bool)> {
    let mut backslash = false;
    loop {
        let at = from + memchr3(b'\'', b'\\', 0, &sql[from..])?;
        match sql[at] {
            0 => return None,
            b'\\' => {
                backslash = true;
                from = if escapes { (at + 2).min(sql.len()) } else { at + 1 };
            }
            _ if sql.get(at + 1) == Some(&b'\'') => from = at + 2,
            _ => return Some((at + 1, backslash)),
        }
    }
}

fn quoted_ident_end(sql: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr2(b'"', 0, &sql[from..])?;
        if sql[at] == 0 {
            return None;
        }
        if sql.get(at + 1) != Some(&b'"') {
            return Some(at + 1);
        }
        from = at + 2;
    }
}

/// Whether the name before the `(` at `open` may be a listed function.
fn calls_listed(sql: &[u8], open: usize, seen: &Seen) -> bool {
    let mut end = open;
    while end > 0 && is_space(sql[end - 1]) {
        end -= 1;
    }
    if end == seen.quoted.1 {
        return callee(&sql[seen.quoted.0 + 1..end - 1], false).is_some();
    }
    // `f /* c */ (`: the name is further back than this scan looks.
    if seen.comment.0 < end && end <= seen.comment.1 {
        return true;
    }
    let mut start = end;
    while start > 0 && is_ident_cont(sql[start - 1]) {
        start -= 1;
    }
    // A run that starts with a digit or `$` may split into several tokens
    // (`1f(` is `1` and `f(` to older servers): the full lexer decides.
    let word = &sql[start..end];
    word.first().is_some_and(|&b| !is_ident_start(b)) || callee(word, true).is_some()
}
