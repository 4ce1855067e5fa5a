//! Walks the tokens of every statement in a text and records the first
//! session state it leaves and whether it may change a setting.
//!
//! Most statements only need their first word or two. Everywhere else a few
//! token patterns matter: a call of a listed function (a name followed by
//! `(`), `TEMP` after `CREATE`/`GLOBAL`/`LOCAL`/`REPLACE` or after a
//! `SELECT ... INTO`, `pg_temp.` in a `CREATE` or `SELECT ... INTO`, and
//! `WITH HOLD` in a `DECLARE`. Ordinary texts never get here: the quick
//! scan (`quick.rs`) clears them first.

use super::lexer::{Backslashes, Kind, Lexer, StrKind, Token};
use super::{Opaque, SessionStateEffect};

/// What one reading of a text found.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Findings {
    pub effect: Option<SessionStateEffect>,
    pub changes_settings: bool,
    /// The text ended inside a literal, identifier, comment or dollar quote.
    pub unterminated: bool,
    /// A plain literal held a backslash before the scan stopped.
    pub plain_backslash: bool,
}

impl Findings {
    /// Nothing further in the text could change the answer.
    pub fn settled(&self) -> bool {
        self.effect.is_some() && self.changes_settings
    }

    fn found(&mut self, effect: SessionStateEffect) {
        self.effect.get_or_insert(effect);
    }
}

/// Reads `sql` with the given treatment of backslashes in plain literals.
pub(super) fn scan(sql: &[u8], backslashes: Backslashes) -> Findings {
    let mut lexer = Lexer::new(sql, backslashes);
    let mut findings = Findings::default();
    let mut statement = Statement::default();
    while let Some(token) = lexer.next() {
        match token.kind {
            Kind::Semicolon => statement = Statement::default(),
            Kind::Unterminated => {
                findings.unterminated = true;
                break;
            }
            _ => statement.token(sql, token, &lexer, &mut findings),
        }
        if findings.settled() {
            break;
        }
    }
    findings.plain_backslash = lexer.saw_plain_backslash();
    findings
}

/// What a statement's first words said that later tokens depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Leading {
    #[default]
    Other,
    Set,
    Prepare,
    PrepareTransaction,
    /// `DECLARE`, or `EXPLAIN`, which may wrap one.
    Declare,
}

/// One statement's tokens so far.
#[derive(Debug, Default)]
struct Statement {
    tokens: usize,
    leading: Leading,
    prev: Option<Token>,
    prev2: Option<Token>,
    /// A `CREATE` was seen: `pg_temp.x` names what it creates.
    creates: bool,
    /// An `INTO` not after `INSERT`/`MERGE`: a `SELECT ... INTO` creates a table.
    into_select: bool,
}

impl Statement {
    fn token(&mut self, sql: &[u8], token: Token, lexer: &Lexer, findings: &mut Findings) {
        let text = &sql[token.start..token.end];
        match (self.tokens, self.leading, token.kind) {
            (0, _, Kind::Word) => self.leading = first_word(text, findings),
            (1, Leading::Set, Kind::Word) if is_any(text, &[b"local", b"transaction", b"constraints"]) => {}
            (1, Leading::Set, _) => findings.found(SessionStateEffect::Set),
            (1, Leading::Prepare, Kind::Word) if is(text, b"transaction") => {
                self.leading = Leading::PrepareTransaction;
            }
            (1, Leading::Prepare, _) => findings.found(SessionStateEffect::Prepare),
            (2, Leading::PrepareTransaction, Kind::Str(_)) => {}
            (2, Leading::PrepareTransaction, _) => findings.found(SessionStateEffect::Prepare),
            _ => {}
        }
        match token.kind {
            Kind::Word => self.word(sql, text, findings),
            Kind::Open => {
                if let Some(callee) = self.prev.and_then(|name| callee_of(sql, name)) {
                    call(sql, callee, lexer.clone(), findings);
                }
            }
            Kind::Dot if (self.creates || self.into_select) && self.prev.is_some_and(|t| is_pg_temp(sql, t)) => {
                findings.found(SessionStateEffect::TempTable);
            }
            _ => {}
        }
        self.prev2 = self.prev;
        self.prev = Some(token);
        self.tokens += 1;
    }

    /// The patterns keyed on a word anywhere in the statement.
    fn word(&mut self, sql: &[u8], word: &[u8], findings: &mut Findings) {
        let prev_is = |token: Option<Token>, words: &[&[u8]]| {
            token.is_some_and(|t| t.kind == Kind::Word && is_any(&sql[t.start..t.end], words))
        };
        let temp = is(word, b"temp") || is(word, b"temporary");
        if temp
            && (prev_is(self.prev, &[b"create", b"global", b"local", b"replace"])
                || (prev_is(self.prev, &[b"into"]) && !prev_is(self.prev2, &[b"insert", b"merge"])))
        {
            findings.found(SessionStateEffect::TempTable);
        } else if is(word, b"into") && !prev_is(self.prev, &[b"insert", b"merge"]) {
            self.into_select = true;
        } else if is(word, b"create") {
            self.creates = true;
        } else if is(word, b"hold") && self.leading == Leading::Declare && prev_is(self.prev, &[b"with"]) {
            findings.found(SessionStateEffect::HoldCursor);
        }
    }
}

/// Whether a statement's first word is none that matters here.
pub(super) fn first_word_is_plain(word: &[u8]) -> bool {
    !(2..=10).contains(&word.len()) || !LEADING.iter().any(|(keyword, ..)| is(word, keyword))
}

/// The first words that matter: the effect they record at once, whether
/// they change settings, and what the following tokens must decide.
const LEADING: [(&[u8], Option<SessionStateEffect>, bool, Leading); 11] = [
    (b"set", None, true, Leading::Set),
    (b"reset", Some(SessionStateEffect::Set), true, Leading::Other),
    (b"listen", Some(SessionStateEffect::Listen), false, Leading::Other),
    (b"prepare", None, false, Leading::Prepare),
    (b"deallocate", Some(SessionStateEffect::Deallocate), false, Leading::Other),
    (b"discard", Some(SessionStateEffect::Discard), true, Leading::Other),
    (b"load", Some(SessionStateEffect::Load), false, Leading::Other),
    (b"do", Some(SessionStateEffect::Unprovable(Opaque::DoBlock)), true, Leading::Other),
    (b"call", Some(SessionStateEffect::Unprovable(Opaque::Call)), true, Leading::Other),
    (b"declare", None, false, Leading::Declare),
    (b"explain", None, false, Leading::Declare),
];

/// Classifies a statement by its first word; what later tokens must decide.
fn first_word(word: &[u8], findings: &mut Findings) -> Leading {
    let Some(&(_, effect, changes_settings, leading)) = LEADING.iter().find(|(keyword, ..)| is(word, keyword)) else {
        return Leading::Other;
    };
    if let Some(effect) = effect {
        findings.found(effect);
    }
    findings.changes_settings |= changes_settings;
    leading
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Callee {
    SetConfig,
    AdvisoryLock,
    Dblink,
}

const CALLEES: [(&[u8], Callee); 8] = [
    (b"set_config", Callee::SetConfig),
    (b"pg_advisory_lock", Callee::AdvisoryLock),
    (b"pg_advisory_lock_shared", Callee::AdvisoryLock),
    (b"pg_try_advisory_lock", Callee::AdvisoryLock),
    (b"pg_try_advisory_lock_shared", Callee::AdvisoryLock),
    (b"dblink_connect", Callee::Dblink),
    (b"dblink_connect_u", Callee::Dblink),
    (b"dblink_open", Callee::Dblink),
];

/// The listed function a name before `(` calls, whatever its schema.
fn callee_of(sql: &[u8], name: Token) -> Option<Callee> {
    let mut buf = [0u8; 32];
    let (name, folded) = name_of(sql, name, &mut buf)?;
    callee(name, folded)
}

/// The listed function `name` is; `folded` for an unquoted name, which
/// PostgreSQL folds to lower case.
pub(super) fn callee(name: &[u8], folded: bool) -> Option<Callee> {
    if !(10..=27).contains(&name.len()) {
        return None;
    }
    let matches = |listed: &[u8]| if folded { listed.eq_ignore_ascii_case(name) } else { listed == name };
    CALLEES.iter().find(|(listed, _)| matches(listed)).map(|&(_, callee)| callee)
}

/// Records a call's effect; `lexer` stands just after its `(`.
fn call(sql: &[u8], callee: Callee, lexer: Lexer, findings: &mut Findings) {
    match callee {
        Callee::SetConfig => {
            findings.changes_settings = true;
            if !third_argument_is_true(sql, lexer) {
                findings.found(SessionStateEffect::Set);
            }
        }
        Callee::AdvisoryLock => findings.found(SessionStateEffect::AdvisoryLock),
        Callee::Dblink => findings.found(SessionStateEffect::Dblink),
    }
}

/// Whether a call's third argument is a literal true and nothing else, so
/// `set_config` changes the setting for the transaction only. Anything else
/// (`false`, `$1`, an expression, named arguments) may outlive it.
fn third_argument_is_true(sql: &[u8], mut lexer: Lexer) -> bool {
    let depth = lexer.depth();
    let (mut commas, mut tokens, mut third) = (0, 0, None);
    while let Some(token) = lexer.next() {
        match token.kind {
            Kind::Close if lexer.depth() < depth => {
                return commas == 2 && tokens == 1 && third.is_some_and(|t| is_true(sql, t));
            }
            Kind::Semicolon | Kind::Unterminated => return false,
            Kind::Comma if lexer.depth() == depth => {
                commas += 1;
                continue;
            }
            _ => {}
        }
        if commas == 2 {
            tokens += 1;
            third = Some(token);
        }
    }
    false
}

/// `TRUE`, or a plain literal PostgreSQL reads as true.
fn is_true(sql: &[u8], token: Token) -> bool {
    let text = &sql[token.start..token.end];
    match token.kind {
        Kind::Word => is(text, b"true"),
        Kind::Str(StrKind::Plain) => {
            let body = text.strip_prefix(b"'").and_then(|t| t.strip_suffix(b"'"));
            body.is_some_and(|b| is_any(b, &[b"t", b"true", b"y", b"yes", b"on", b"1"]))
        }
        _ => false,
    }
}

/// An identifier naming the session's temporary schema.
fn is_pg_temp(sql: &[u8], token: Token) -> bool {
    let mut buf = [0u8; 32];
    name_of(sql, token, &mut buf).is_some_and(|(name, folded)| is_pg_temp_name(name, folded))
}

/// `pg_temp` or `pg_temp_N`; `folded` for an unquoted name.
pub(super) fn is_pg_temp_name(name: &[u8], folded: bool) -> bool {
    let Some((schema, rest)) = name.split_at_checked(7) else { return false };
    let schema = if folded { schema.eq_ignore_ascii_case(b"pg_temp") } else { schema == b"pg_temp" };
    schema
        && (rest.is_empty()
            || rest.strip_prefix(b"_").is_some_and(|n| !n.is_empty() && n.iter().all(u8::is_ascii_digit)))
}

/// An identifier's name and whether it is compared case-insensitively
/// (unquoted). `U&"..."` names are decoded into `buf`; one that does not fit
/// or is not ASCII cannot be a name looked for here.
fn name_of<'a>(sql: &'a [u8], token: Token, buf: &'a mut [u8; 32]) -> Option<(&'a [u8], bool)> {
    match token.kind {
        Kind::Word => Some((&sql[token.start..token.end], true)),
        Kind::QuotedIdent => Some((&sql[token.start + 1..token.end - 1], false)),
        Kind::UnicodeIdent { escape } => Some((decode_unicode(&sql[token.start + 3..token.end], escape, buf)?, false)),
        _ => None,
    }
}

/// Decodes the body of a `U&"..."` (up to its closing quote) with escape
/// character `escape`: `\XXXX`, `\+XXXXXX`, `\\`, and `""`.
fn decode_unicode<'a>(text: &[u8], escape: u8, buf: &'a mut [u8; 32]) -> Option<&'a [u8]> {
    let (mut i, mut n) = (0, 0);
    loop {
        let byte = *text.get(i)?;
        let next = text.get(i + 1).copied();
        let decoded = if byte == b'"' && next != Some(b'"') {
            return Some(&buf[..n]);
        } else if byte == b'"' || (byte == escape && next == Some(escape)) {
            i += 2;
            byte
        } else if byte == escape {
            let (skip, digits) = if next == Some(b'+') { (2, 6) } else { (1, 4) };
            let hex = text.get(i + skip..i + skip + digits)?;
            i += skip + digits;
            let code = hex.iter().try_fold(0u32, |acc, &h| Some(acc * 16 + char::from(h).to_digit(16)?))?;
            u8::try_from(code).ok().filter(u8::is_ascii)?
        } else {
            i += 1;
            byte
        };
        *buf.get_mut(n)? = decoded;
        n += 1;
    }
}

fn is(word: &[u8], keyword: &[u8]) -> bool {
    word.eq_ignore_ascii_case(keyword)
}

fn is_any(word: &[u8], keywords: &[&[u8]]) -> bool {
    keywords.iter().any(|k| word.eq_ignore_ascii_case(k))
}
