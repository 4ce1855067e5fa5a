//! PostgreSQL's lexical rules, as far as they decide where tokens, and so
//! statements, begin and end: whitespace, `--` and nested `/* */` comments,
//! every kind of string literal (with `''` doubling, `E'\''` escapes and
//! newline-separated continuation), quoted identifiers, dollar quotes,
//! parameters, numbers, words and punctuation.
//!
//! The lexer yields tokens without allocating; whitespace and comments are
//! skipped. Anything left open at the end of the text (a literal, a quoted
//! identifier, a comment, a dollar quote) becomes one `Unterminated` token.
//! Where PostgreSQL versions read a form differently (`1e'x'` is junk since
//! 15, an integer and an escape string before), the lexer takes the older
//! reading: a newer server rejects the text, so only the older reading runs.

use memchr::{memchr, memchr2, memchr3, memmem};

/// How backslashes in a plain `'...'` literal are read: as ordinary
/// characters (`standard_conforming_strings = on`, the default since 9.1) or
/// as escapes, as in `E'...'` (`standard_conforming_strings = off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backslashes {
    Literal,
    Escape,
}

/// The kind of a string literal, which decides how its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrKind {
    /// `'...'` and `N'...'`.
    Plain,
    /// `E'...'`: a backslash escapes the next byte.
    Escape,
    /// `B'...'` and `X'...'`.
    Bit,
    /// `U&'...'`.
    Unicode,
    /// `$$...$$` and `$tag$...$tag$`.
    Dollar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"..."`.
    QuotedIdent,
    /// `U&"..."`, with the escape character of its `UESCAPE` clause (the
    /// clause, if present, is part of the token).
    UnicodeIdent {
        escape: u8,
    },
    Str(StrKind),
    Number,
    /// `$1`.
    Param,
    Semicolon,
    /// `(` or `[`.
    Open,
    /// `)` or `]`.
    Close,
    Comma,
    Dot,
    /// Any other byte: an operator character or something the server rejects.
    Operator,
    /// A literal, quoted identifier, comment or dollar quote that runs to the end.
    Unterminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Token {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const DIGIT: u8 = 4;
const DOLLAR: u8 = 8;

/// Byte classes, after PostgreSQL's scan.l: `space`, `ident_start` (letters,
/// `_` and every non-ASCII byte), digits, and `$` (an identifier may contain
/// it, a dollar-quote tag may not).
const CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            SPACE
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            IDENT_START
        } else if c.is_ascii_digit() {
            DIGIT
        } else if c == b'$' {
            DOLLAR
        } else {
            0
        };
        b += 1;
    }
    table
};

fn is(b: u8, class: u8) -> bool {
    CLASS[b as usize] & class != 0
}

/// Whether `b` may start an identifier: a letter, `_` or non-ASCII byte.
pub(super) fn is_ident_start(b: u8) -> bool {
    is(b, IDENT_START)
}

/// Where a `--` comment whose body starts at `from` ends: at its newline,
/// which stays, or at a NUL, which ends the text.
pub(super) fn line_end(sql: &[u8], from: usize) -> usize {
    memchr3(b'\n', b'\r', 0, &sql[from..]).map_or(sql.len(), |i| from + i)
}

/// The end of a block comment whose body starts at `from`, if it has one
/// before the text ends (at its end or a NUL). Block comments nest:
/// `/* /* */ still comment */`.
pub(super) fn block_comment_end(sql: &[u8], mut from: usize) -> Option<usize> {
    let mut depth = 1usize;
    loop {
        let i = from + memchr3(b'*', b'/', 0, &sql[from..])?;
        match (sql[i], sql.get(i + 1)) {
            (0, _) => return None,
            (b'*', Some(b'/')) => {
                depth -= 1;
                from = i + 2;
                if depth == 0 {
                    return Some(from);
                }
            }
            (b'/', Some(b'*')) => {
                depth += 1;
                from = i + 2;
            }
            _ => from = i + 1,
        }
    }
}

pub(super) fn is_space(b: u8) -> bool {
    is(b, SPACE)
}

/// Whether `b` continues an identifier: a letter, digit, `_`, `$` or non-ASCII byte.
pub(super) fn is_ident_cont(b: u8) -> bool {
    is(b, IDENT_START | DIGIT | DOLLAR)
}

#[derive(Debug, Clone)]
pub(super) struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
    backslashes: Backslashes,
    depth: usize,
    plain_backslash: bool,
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql` up to its first NUL byte: the server reads a
    /// query as a C string, so nothing after a NUL is ever run.
    pub fn new(sql: &'a [u8], backslashes: Backslashes) -> Self {
        let sql = memchr(0, sql).map_or(sql, |nul| &sql[..nul]);
        Lexer { sql, pos: 0, backslashes, depth: 0, plain_backslash: false }
    }

    /// Parentheses and brackets open before the current position; a `;`
    /// closes them all, since it always ends a statement here.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Whether a plain literal held a backslash so far: only then may
    /// `standard_conforming_strings = off` read the text differently.
    pub fn saw_plain_backslash(&self) -> bool {
        self.plain_backslash
    }

    /// The byte at `i`, or NUL past the end (the text holds no NUL).
    fn at(&self, i: usize) -> u8 {
        self.sql.get(i).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments; false if a block comment is left open.
    fn skip_trivia(&mut self) -> bool {
        loop {
            while self.pos < self.sql.len() && is(self.sql[self.pos], SPACE) {
                self.pos += 1;
            }
            match (self.at(self.pos), self.at(self.pos + 1)) {
                (b'-', b'-') => self.pos = self.line_end(self.pos + 2),
                (b'/', b'*') => match block_comment_end(self.sql, self.pos + 2) {
                    Some(end) => self.pos = end,
                    None => return false,
                },
                _ => return true,
            }
        }
    }

    fn line_end(&self, from: usize) -> usize {
        line_end(self.sql, from)
    }

    /// Scans a `'...'` body starting at `self.pos`; false if it runs to the end.
    fn quoted_string(&mut self, kind: StrKind) -> bool {
        let escapes = kind == StrKind::Escape || (kind == StrKind::Plain && self.backslashes == Backslashes::Escape);
        let watch_backslash = escapes || kind == StrKind::Plain;
        loop {
            let rest = &self.sql[self.pos..];
            let found = if watch_backslash { memchr2(b'\'', b'\\', rest) } else { memchr(b'\'', rest) };
            let Some(i) = found else {
                self.pos = self.sql.len();
                return false;
            };
            let at = self.pos + i;
            if self.sql[at] == b'\\' {
                self.plain_backslash |= kind == StrKind::Plain;
                self.pos = if escapes { (at + 2).min(self.sql.len()) } else { at + 1 };
            } else if self.at(at + 1) == b'\'' {
                self.pos = at + 2;
            } else {
                self.pos = at + 1;
                match self.continuation() {
                    Some(next) => self.pos = next,
                    None => return true,
                }
            }
        }
    }

    /// PostgreSQL joins `'a'` and `'b'` into one literal when only
    /// whitespace and `--` comments, including a newline, separate them; the
    /// continued part is read like the first (so `E'a'\n'\''` is one literal).
    /// Returns where the continued body starts.
    fn continuation(&self) -> Option<usize> {
        let mut i = self.pos;
        let mut newline = false;
        loop {
            match self.at(i) {
                b'\n' | b'\r' => newline = true,
                b if is(b, SPACE) => {}
                b'-' if self.at(i + 1) == b'-' => {
                    i = self.line_end(i + 2);
                    continue;
                }
                b'\'' if newline => return Some(i + 1),
                _ => return None,
            }
            i += 1;
        }
    }

    /// `"..."` with `""` doubling, body starting at `self.pos`.
    fn quoted_ident(&mut self) -> bool {
        loop {
            let Some(i) = memchr(b'"', &self.sql[self.pos..]) else {
                self.pos = self.sql.len();
                return false;
            };
            self.pos += i + 1;
            if self.at(self.pos) != b'"' {
                return true;
            }
            self.pos += 1;
        }
    }

    /// An optional `UESCAPE 'c'` after a `U&"..."`; the escape character.
    fn uescape(&mut self) -> u8 {
        let saved = self.pos;
        if self.skip_trivia() {
            let word = self.pos;
            let end = self.word_end(word);
            if self.sql[word..end].eq_ignore_ascii_case(b"uescape") {
                self.pos = end;
                if self.skip_trivia() {
                    let p = self.pos;
                    if let (b'\'', c, b'\'') = (self.at(p), self.at(p + 1), self.at(p + 2)) {
                        if c != b'\'' {
                            self.pos = p + 3;
                            return c;
                        }
                    }
                }
            }
        }
        self.pos = saved;
        b'\\'
    }

    fn word_end(&self, mut i: usize) -> usize {
        while i < self.sql.len() && is(self.sql[i], IDENT_START | DIGIT | DOLLAR) {
            i += 1;
        }
        i
    }

    /// A word, or a literal that starts with a letter: `E'`, `B'`, `X'`,
    /// `N'`, `U&'`, `U&"`.
    fn word(&mut self, start: usize) -> Kind {
        let (first, second, third) = (self.at(start).to_ascii_lowercase(), self.at(start + 1), self.at(start + 2));
        let literal = match (first, second, third) {
            (b'e', b'\'', _) => Some((2, StrKind::Escape)),
            (b'b' | b'x', b'\'', _) => Some((2, StrKind::Bit)),
            (b'n', b'\'', _) => Some((2, StrKind::Plain)),
            (b'u', b'&', b'\'') => Some((3, StrKind::Unicode)),
            (b'u', b'&', b'"') => {
                self.pos = start + 3;
                if !self.quoted_ident() {
                    return Kind::Unterminated;
                }
                return Kind::UnicodeIdent { escape: self.uescape() };
            }
            _ => None,
        };
        match literal {
            Some((skip, kind)) => {
                self.pos = start + skip;
                self.string_kind(kind)
            }
            None => {
                self.pos = self.word_end(start + 1);
                Kind::Word
            }
        }
    }

    fn string_kind(&mut self, kind: StrKind) -> Kind {
        if self.quoted_string(kind) {
            Kind::Str(kind)
        } else {
            Kind::Unterminated
        }
    }

    /// `$1`, `$$...$$`, `$tag$...$tag$`, or a lone `$`. A tag is an
    /// identifier without `$`, and does not start with a digit.
    fn dollar(&mut self, start: usize) -> Kind {
        let next = self.at(start + 1);
        if is(next, DIGIT) {
            self.pos = self.digits_end(start + 1);
            return Kind::Param;
        }
        let mut tag_end = start + 1;
        if is(next, IDENT_START) {
            while tag_end < self.sql.len() && is(self.sql[tag_end], IDENT_START | DIGIT) {
                tag_end += 1;
            }
        }
        if self.at(tag_end) != b'$' {
            // Not a delimiter: PostgreSQL reads the `$` alone, then what follows.
            self.pos = start + 1;
            return Kind::Operator;
        }
        let delimiter = &self.sql[start..=tag_end];
        let body = tag_end + 1;
        match memmem::find(&self.sql[body..], delimiter) {
            Some(i) => {
                self.pos = body + i + delimiter.len();
                Kind::Str(StrKind::Dollar)
            }
            None => {
                self.pos = self.sql.len();
                Kind::Unterminated
            }
        }
    }

    fn digits_end(&self, mut i: usize) -> usize {
        while i < self.sql.len() && is(self.sql[i], DIGIT) {
            i += 1;
        }
        i
    }

    /// `12`, `1.5`, `.5`, `1e-3`: digits, an optional fraction and exponent.
    /// Letters after them start a new token.
    fn number(&mut self, start: usize) -> Kind {
        let mut i = self.digits_end(start);
        if self.at(i) == b'.' && self.at(i + 1) != b'.' {
            i = self.digits_end(i + 1);
        }
        if matches!(self.at(i), b'e' | b'E') {
            let sign = usize::from(matches!(self.at(i + 1), b'+' | b'-'));
            if is(self.at(i + 1 + sign), DIGIT) {
                i = self.digits_end(i + 1 + sign);
            }
        }
        self.pos = i;
        Kind::Number
    }

    fn punctuation(&mut self, start: usize) -> Kind {
        self.pos = start + 1;
        match self.sql[start] {
            b';' => {
                self.depth = 0;
                Kind::Semicolon
            }
            b'(' | b'[' => {
                self.depth += 1;
                Kind::Open
            }
            b')' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                Kind::Close
            }
            b',' => Kind::Comma,
            b'.' if is(self.at(start + 1), DIGIT) => self.number(start),
            b'.' => Kind::Dot,
            _ => Kind::Operator,
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.pos;
        if !self.skip_trivia() {
            self.pos = self.sql.len();
            return Some(Token { kind: Kind::Unterminated, start, end: self.pos });
        }
        let start = self.pos;
        let &byte = self.sql.get(start)?;
        let kind = match byte {
            b'\'' => {
                self.pos = start + 1;
                self.string_kind(StrKind::Plain)
            }
            b'"' => {
                self.pos = start + 1;
                if self.quoted_ident() {
                    Kind::QuotedIdent
                } else {
                    Kind::Unterminated
                }
            }
            b'$' => self.dollar(start),
            b if is(b, IDENT_START) => self.word(start),
            b if is(b, DIGIT) => self.number(start),
            _ => self.punctuation(start),
        };
        Some(Token { kind, start, end: self.pos })
    }
}
