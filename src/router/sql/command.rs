//! Recognises a text that is exactly one `DEALLOCATE` or `DISCARD ALL|PLANS`,
//! for a caller that answers these itself instead of sending them to a
//! server connection.

use super::lexer::{Backslashes, Kind, Lexer, Token};

/// A command about prepared statements, with the statement name decoded as
/// PostgreSQL would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedCommand {
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(Vec<u8>),
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    DiscardAll,
    DiscardPlans,
}

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENTIFIER: usize = 63;

/// The command, if `sql` is exactly one of them, optionally followed by `;`
/// (whitespace and comments aside).
pub fn prepared_command(sql: &[u8]) -> Option<PreparedCommand> {
    let mut lexer = Lexer::new(sql, Backslashes::Literal);
    let mut tokens = [None; 3];
    let mut count = 0;
    for token in lexer.by_ref() {
        if token.kind == Kind::Semicolon {
            break;
        }
        *tokens.get_mut(count)? = Some(token);
        count += 1;
    }
    if lexer.next().is_some() {
        return None;
    }
    let word = |i: usize, keyword: &[u8]| {
        tokens[i].is_some_and(|t: Token| t.kind == Kind::Word && sql[t.start..t.end].eq_ignore_ascii_case(keyword))
    };
    let name_at = |i: usize| match tokens[i] {
        _ if word(i, b"all") => Some(PreparedCommand::DeallocateAll),
        Some(token) => identifier(sql, token).map(PreparedCommand::Deallocate),
        None => None,
    };
    match count {
        2 if word(0, b"discard") && word(1, b"all") => Some(PreparedCommand::DiscardAll),
        2 if word(0, b"discard") && word(1, b"plans") => Some(PreparedCommand::DiscardPlans),
        // `DEALLOCATE prepare` deallocates a statement named "prepare".
        2 if word(0, b"deallocate") => name_at(1),
        3 if word(0, b"deallocate") && word(1, b"prepare") => name_at(2),
        _ => None,
    }
}

/// An identifier's name: unquoted ones folded to ASCII lower case, quoted
/// ones with `""` undoubled, both truncated like PostgreSQL does. `U&"..."`
/// names are left to the server.
fn identifier(sql: &[u8], token: Token) -> Option<Vec<u8>> {
    let text = &sql[token.start..token.end];
    let mut name = match token.kind {
        Kind::Word => text.to_ascii_lowercase(),
        Kind::QuotedIdent if text.len() > 2 => {
            let mut name = Vec::with_capacity(text.len() - 2);
            let mut body = &text[1..text.len() - 1];
            while let Some(quote) = body.iter().position(|&b| b == b'"') {
                name.extend_from_slice(&body[..=quote]);
                body = &body[quote + 2..];
            }
            name.extend_from_slice(body);
            name
        }
        _ => return None,
    };
    if name.len() > MAX_IDENTIFIER {
        // Cut at a character boundary, as pg_mbcliplen does for UTF-8.
        let mut end = MAX_IDENTIFIER;
        while end > 0 && name[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        name.truncate(end);
    }
    Some(name)
}
