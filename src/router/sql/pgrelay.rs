//! pgrelay's own settings, which pgrelay answers and never sends to a
//! server: `SET pgrelay.min_lsn = 'X/Y'` (and `TO`, `DEFAULT`, `RESET`),
//! `SHOW pgrelay.min_lsn` and `SHOW pgrelay.commit_lsn`; and WAL positions
//! written as PostgreSQL writes a `pg_lsn`.

/// A statement about a `pgrelay.` setting: one statement, nothing else in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgrelayCommand {
    /// SET to a value (as written, unquoted), or `None` for DEFAULT / RESET.
    Set {
        name: String,
        value: Option<String>,
    },
    Show {
        name: String,
    },
}

/// Recognises a statement about a `pgrelay.` setting. Costs a byte or two
/// for other texts: only SET, SHOW and RESET are looked at further.
pub fn pgrelay_command(sql: &[u8]) -> Option<PgrelayCommand> {
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    // The verb and the name's prefix first: no other text is read further
    // (`| 0x20` lowercases an ASCII letter; two bytes tell the verbs apart).
    let sql = &sql[start..];
    let verb: &[u8] = match (sql[0] | 0x20, sql.get(1).map(|b| b | 0x20)) {
        (b's', Some(b'e')) => b"set",
        (b's', Some(b'h')) => b"show",
        (b'r', Some(b'e')) => b"reset",
        _ => return None,
    };
    let verb_end = verb.len();
    if sql.len() <= verb_end || !sql[..verb_end].eq_ignore_ascii_case(verb) || !sql[verb_end].is_ascii_whitespace() {
        return None;
    }
    let name_start = verb_end + sql[verb_end..].iter().position(|b| !b.is_ascii_whitespace())?;
    if !sql[name_start..].get(..8).is_some_and(|p| p.eq_ignore_ascii_case(b"pgrelay.")) {
        return None;
    }
    // The server reads a query up to its first NUL.
    let sql = sql.split(|&b| b == 0).next().unwrap_or_default();
    let text = std::str::from_utf8(sql).ok()?;
    let text = text.trim_end().trim_end_matches(';').trim_end();
    let (verb, rest) = split_word(text);
    let (name, rest) = split_name(rest.trim_start());
    if name.len() <= "pgrelay.".len() {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let rest = rest.trim();
    match verb.to_ascii_lowercase().as_str() {
        "show" if rest.is_empty() => Some(PgrelayCommand::Show { name }),
        "reset" if rest.is_empty() => Some(PgrelayCommand::Set { name, value: None }),
        "set" => {
            let value = rest.strip_prefix('=').or_else(|| strip_keyword(rest, "to"))?.trim();
            let value = match value {
                v if v.eq_ignore_ascii_case("default") => None,
                v => Some(unquote(v)?),
            };
            Some(PgrelayCommand::Set { name, value })
        }
        _ => None,
    }
}

fn split_word(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(text.len());
    text.split_at(end)
}

/// A setting name: letters, digits, `_` and `.`.
fn split_name(text: &str) -> (&str, &str) {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(text.len());
    text.split_at(end)
}

fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let (word, rest) = split_word(text);
    (word.eq_ignore_ascii_case(keyword) && rest.starts_with(|c: char| c.is_ascii_whitespace() || c == '\''))
        .then_some(rest)
}

/// `'text'` (with `''` for a quote) or a bare word; nothing after it.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('\'') else {
        let (word, rest) = split_name(value);
        return (!word.is_empty() && rest.is_empty()).then(|| word.to_owned()).or_else(|| {
            // A bare LSN: digits and letters around one slash.
            value.chars().all(|c| c.is_ascii_hexdigit() || c == '/').then(|| value.to_owned())
        });
    };
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return chars.next().is_none().then_some(out);
        }
        out.push(c);
    }
    None
}

/// A WAL position as PostgreSQL writes a `pg_lsn` (`16/B374D848`, hexadecimal).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let valid = |part: &str| !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(high) || !valid(low) {
        return None;
    }
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// The inverse of [`parse_lsn`].
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: Option<&str>) -> Option<PgrelayCommand> {
        Some(PgrelayCommand::Set { name: name.into(), value: value.map(Into::into) })
    }

    #[test]
    fn recognises_pgrelay_settings_only() {
        let cases: &[(&str, Option<PgrelayCommand>)] = &[
            ("SET pgrelay.min_lsn = '0/3000060'", set("pgrelay.min_lsn", Some("0/3000060"))),
            ("  set PGRELAY.MIN_LSN to '1/A' ;", set("pgrelay.min_lsn", Some("1/A"))),
            ("set pgrelay.min_lsn=0/16", set("pgrelay.min_lsn", Some("0/16"))),
            ("set pgrelay.min_lsn to default", set("pgrelay.min_lsn", None)),
            ("reset pgrelay.min_lsn", set("pgrelay.min_lsn", None)),
            ("set pgrelay.causal_id = 'it''s'", set("pgrelay.causal_id", Some("it's"))),
            ("SHOW pgrelay.commit_lsn;", Some(PgrelayCommand::Show { name: "pgrelay.commit_lsn".into() })),
            ("show pgrelay.commit_lsn\0junk", Some(PgrelayCommand::Show { name: "pgrelay.commit_lsn".into() })),
            ("select 'set pgrelay.min_lsn = 1'", None),
            ("set search_path = public", None),
            ("show pgrelay", None),
            ("show pgrelay.commit_lsn; select 1", None),
            ("set pgrelay.min_lsn = '0/1' , '0/2'", None),
            ("set pgrelay.min_lsn '0/1'", None),
            ("reset all", None),
        ];
        for (sql, expected) in cases {
            assert_eq!(&pgrelay_command(sql.as_bytes()), expected, "{sql}");
        }
    }

    #[test]
    fn lsns_read_and_write_as_postgres_does() {
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        for bad in ["", "0", "/1", "1/", "g/1", "123456789/0", "0/1/2", "-1/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
        for lsn in [0, 1, 0x1_0000_0000, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn((0x16 << 32) | 0xB374_D848), "16/B374D848");
    }
}
