//! Recognises statements that leave state on a server connection beyond the
//! transaction, which transaction pooling must not hand to another client.

/// Session state a statement creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStateEffect {
    Set,
    Listen,
    Prepare,
    AdvisoryLock,
    TempTable,
    HoldCursor,
    Load,
    Deallocate,
    Discard,
    Dblink,
    /// A DO block or CALL: what it does cannot be proved harmless.
    Unprovable,
}

impl SessionStateEffect {
    /// Whether the statement may deallocate prepared statements pgrelay
    /// keeps on the connection.
    pub fn may_deallocate(self) -> bool {
        matches!(self, SessionStateEffect::Deallocate | SessionStateEffect::Discard | SessionStateEffect::Unprovable)
    }

    pub fn describe(self) -> &'static str {
        match self {
            SessionStateEffect::Set => "SET",
            SessionStateEffect::Listen => "LISTEN",
            SessionStateEffect::Prepare => "PREPARE",
            SessionStateEffect::AdvisoryLock => "a session advisory lock",
            SessionStateEffect::TempTable => "a temporary table",
            SessionStateEffect::HoldCursor => "a cursor WITH HOLD",
            SessionStateEffect::Load => "LOAD",
            SessionStateEffect::Deallocate => "DEALLOCATE",
            SessionStateEffect::Discard => "DISCARD",
            SessionStateEffect::Dblink => "a dblink connection",
            SessionStateEffect::Unprovable => "a DO block or CALL",
        }
    }
}

/// Skips whitespace and SQL comments.
fn skip_noise(mut s: &[u8]) -> &[u8] {
    loop {
        let trimmed = s.trim_ascii_start();
        if let Some(rest) = trimmed.strip_prefix(b"--") {
            s = rest.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &rest[i + 1..]);
        } else if let Some(rest) = trimmed.strip_prefix(b"/*") {
            s = rest.windows(2).position(|w| w == b"*/").map_or(&[][..], |i| &rest[i + 2..]);
        } else {
            return trimmed;
        }
    }
}

/// The next word (letters, digits, underscore), lowercased into `buf`.
fn next_word<'a>(s: &'a [u8], buf: &mut [u8; 16]) -> (usize, &'a [u8]) {
    let s = skip_noise(s);
    let end = s.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(s.len());
    let n = end.min(buf.len());
    for (dst, src) in buf.iter_mut().zip(&s[..n]) {
        *dst = src.to_ascii_lowercase();
    }
    (n, &s[end..])
}

/// Case-insensitive search that compares only where a rare byte of the
/// needle (at `anchor` in it) occurs, found with memchr: this runs on every
/// query, so it must not cost a comparison per byte.
fn contains_ci(haystack: &[u8], needle: &[u8], anchor: usize) -> bool {
    let rare = needle[anchor];
    memchr::memchr2_iter(rare.to_ascii_lowercase(), rare.to_ascii_uppercase(), haystack).any(|pos| {
        pos.checked_sub(anchor)
            .and_then(|start| haystack.get(start..start + needle.len()))
            .is_some_and(|window| window.eq_ignore_ascii_case(needle))
    })
}

/// What session state the statement(s) in `sql` create, if any. Looks at
/// the first statement's leading words and, for advisory locks, the whole text.
pub fn session_state_effect(sql: &[u8]) -> Option<SessionStateEffect> {
    let mut word = [0u8; 16];
    let (n, rest) = next_word(sql, &mut word);
    let first = &word[..n];
    let effect = match first {
        b"set" => {
            let mut second = [0u8; 16];
            let (m, _) = next_word(rest, &mut second);
            match &second[..m] {
                b"local" | b"transaction" => None,
                _ => Some(SessionStateEffect::Set),
            }
        }
        b"reset" => Some(SessionStateEffect::Set),
        b"listen" => Some(SessionStateEffect::Listen),
        b"prepare" => Some(SessionStateEffect::Prepare),
        b"load" => Some(SessionStateEffect::Load),
        b"create" => {
            let mut second = [0u8; 16];
            let (m, _) = next_word(rest, &mut second);
            matches!(&second[..m], b"temp" | b"temporary").then_some(SessionStateEffect::TempTable)
        }
        b"declare" if contains_ci(rest, b"with hold", 0) => Some(SessionStateEffect::HoldCursor),
        _ => None,
    };
    effect.or_else(|| takes_session_advisory_lock(sql).then_some(SessionStateEffect::AdvisoryLock))
}

/// Whether `sql` calls `pg_advisory_lock` or `pg_try_advisory_lock` (the
/// `_xact_` variants end with the transaction): one memchr pass for the
/// 'v' of "advisory_lock", then a look at what precedes it.
fn takes_session_advisory_lock(sql: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"advisory_lock";
    memchr::memchr2_iter(b'v', b'V', sql).any(|pos| {
        let Some(start) = pos.checked_sub(2) else { return false };
        let called = sql.get(start..start + NEEDLE.len()).is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE));
        let prefixed =
            |prefix: &[u8]| start.checked_sub(prefix.len()).is_some_and(|p| sql[p..start].eq_ignore_ascii_case(prefix));
        called && (prefixed(b"pg_") || prefixed(b"pg_try_"))
    })
}

/// What a text does beyond its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SqlEffects {
    pub session_state: Option<SessionStateEffect>,
    /// Any SET, SET LOCAL, RESET or set_config(...).
    pub changes_settings: bool,
}

pub fn classify(sql: &[u8]) -> SqlEffects {
    let session_state = session_state_effect(sql);
    SqlEffects { session_state, changes_settings: session_state == Some(SessionStateEffect::Set) }
}

/// A whole text that is one statement of these forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedCommand {
    Deallocate(Vec<u8>),
    DeallocateAll,
    DiscardAll,
    DiscardPlans,
}

pub fn prepared_command(_sql: &[u8]) -> Option<PreparedCommand> {
    None
}
