//! `sql`: the statement classifier (router::classify, prepared_command,
//! session_state_effect) over arbitrary bytes.
//!
//! Input: the text of a Query (or of a Parse).

use crate::router::{self, PreparedCommand, SessionStateEffect};

/// Properties every classifier must have, for any text.
pub fn check(sql: &[u8]) {
    let effects = router::classify(sql);
    assert_eq!(router::session_state_effect(sql), effects.session_state, "classify agrees with session_state_effect");
    if effects.session_state == Some(SessionStateEffect::Set) {
        assert!(effects.changes_settings, "SET and RESET change settings");
    }
    match router::prepared_command(sql) {
        // The session consults prepared_command only for texts classified so.
        Some(PreparedCommand::Deallocate(_) | PreparedCommand::DeallocateAll) => {
            assert_eq!(effects.session_state, Some(SessionStateEffect::Deallocate), "a DEALLOCATE is classified so");
        }
        Some(PreparedCommand::DiscardAll | PreparedCommand::DiscardPlans) => {
            assert_eq!(effects.session_state, Some(SessionStateEffect::Discard), "a DISCARD is classified so");
        }
        None => {}
    }
    // Whitespace and a comment before a text do not change what it does.
    for prefix in [&b" \n\t"[..], b"/* a comment */ ", b"-- a comment\n"] {
        let prefixed = [prefix, sql].concat();
        assert_eq!(router::classify(&prefixed), effects, "{prefix:?} in front changed the classification");
        assert_eq!(router::prepared_command(&prefixed), router::prepared_command(sql));
    }
}

/// A statement that follows a complete first one is classified too. For a
/// first statement that can hide nothing (ASCII letters, digits, spaces and
/// balanced parentheses: no quote, comment, dollar quote or BEGIN ATOMIC
/// body to continue into the next), what a second statement does must show:
/// the server runs it unless the whole text fails.
pub fn check_statement_split(sql: &[u8]) {
    if !is_plain_statement(sql) {
        return;
    }
    let text = |suffix: &str| [sql, suffix.as_bytes()].concat();
    let set = router::classify(&text("; SET a = 1"));
    assert!(set.session_state.is_some(), "a SET after {:?} leaves no session state", String::from_utf8_lossy(sql));
    assert!(set.changes_settings, "a SET after {:?} changes no setting", String::from_utf8_lossy(sql));
    for second in ["; SET LOCAL a = 1", "; select set_config('a', '1', false)"] {
        let effects = router::classify(&text(second));
        assert!(effects.changes_settings, "{second:?} after {:?} changes no setting", String::from_utf8_lossy(sql));
    }
}

fn is_plain_statement(sql: &[u8]) -> bool {
    let mut depth = 0usize;
    for &b in sql {
        match b {
            b'(' => depth += 1,
            b')' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            b' ' => {}
            b if b.is_ascii_alphanumeric() => {}
            _ => return false,
        }
    }
    depth == 0 && !sql.to_ascii_lowercase().windows(6).any(|w| w == b"atomic")
}
