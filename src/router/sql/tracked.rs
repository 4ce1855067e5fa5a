//! Recognises the plain session `SET` pgrelay can follow instead of pinning
//! the client: one statement `SET [SESSION] name {= | TO} value`, nothing
//! else in the text. pgrelay learns the value the server then has and gives
//! it to the client on every later connection (see the session's `tracked`).

use super::lexer::{Backslashes, Kind, Lexer};

/// Settings whose `SET` is not a plain session setting: the role and
/// session authorization change who the session is, the transaction ones
/// concern one transaction only.
const UNTRACKED: [&str; 5] =
    ["role", "session_authorization", "transaction_isolation", "transaction_read_only", "transaction_deferrable"];

/// Longest setting name followed (a custom `prefix.name` included).
const MAX_NAME: usize = 127;

/// The setting (lower case) that `sql` sets for the session, when the text
/// is exactly one plain `SET`: not `LOCAL`, not `TO DEFAULT`, none of the
/// special forms (`TIME ZONE`, `ROLE`, `SESSION AUTHORIZATION`,
/// `TRANSACTION`, `CONSTRAINTS`, ...), not a `pgrelay.` name. A text whose
/// plain literals hold a backslash (read differently under
/// `standard_conforming_strings = off`) is never one.
pub fn tracked_set(sql: &[u8]) -> Option<String> {
    let mut lexer = Lexer::new(sql, Backslashes::Literal);
    let mut next = || lexer.next().map(|t| (t.kind, &sql[t.start..t.end]));
    let word = |token: Option<(Kind, &[u8])>, keyword: &str| matches!(token, Some((Kind::Word, text)) if text.eq_ignore_ascii_case(keyword.as_bytes()));
    if !word(next(), "set") {
        return None;
    }
    let mut token = next();
    if word(token, "session") {
        token = next();
    }
    if word(token, "local") {
        return None;
    }
    let mut name = name_part(token?)?;
    token = next();
    if matches!(token, Some((Kind::Dot, _))) {
        name.push('.');
        name.push_str(&name_part(next()?)?);
        token = next();
    }
    if !(matches!(token, Some((Kind::Operator, b"="))) || word(token, "to")) {
        return None;
    }
    let mut values = 0;
    loop {
        match next() {
            None => break,
            Some((Kind::Semicolon, _)) => {
                if next().is_some() {
                    return None;
                }
                break;
            }
            Some((Kind::Word, text)) if text.eq_ignore_ascii_case(b"default") => return None,
            Some((Kind::Word | Kind::Str(_) | Kind::Number | Kind::Comma | Kind::QuotedIdent, _)) => values += 1,
            Some((Kind::Operator, b"-" | b"+")) => values += 1,
            Some(_) => return None,
        }
    }
    let plain = values > 0 && !lexer.saw_plain_backslash();
    let ours = name.starts_with("pgrelay.") || UNTRACKED.contains(&name.as_str());
    (plain && !ours && name.len() <= MAX_NAME).then_some(name)
}

/// One part of a setting's name, lower case: a word, or a quoted
/// identifier of printable ASCII (setting names are matched ignoring case).
fn name_part((kind, text): (Kind, &[u8])) -> Option<String> {
    let text = match kind {
        Kind::Word => text,
        Kind::QuotedIdent => &text[1..text.len() - 1],
        _ => return None,
    };
    let printable = !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic() && *b != b'"');
    printable.then(|| String::from_utf8_lossy(text).to_ascii_lowercase())
}
