//! The expected-response queue, driven with the message sequences a real
//! server sends.

use bytes::BytesMut;

use super::statements::StatementRegistry;
use super::tracker::{CopyState, Expect, Origin, Synthetic, Tracker, Verdict};
use crate::wire::TxStatus;

fn feed(tracker: &mut Tracker, out: &mut BytesMut, server: &str) -> Vec<Verdict> {
    server
        .split(' ')
        .map(|m| {
            let (tag, body): (u8, &[u8]) = match m {
                "ZI" => (b'Z', b"I"),
                "ZT" => (b'Z', b"T"),
                "ZE" => (b'Z', b"E"),
                other => (other.as_bytes()[0], b""),
            };
            let verdict = tracker.on_server_message(tag, body);
            tracker.emit_synthetic(out);
            verdict
        })
        .collect()
}

fn extended(tracker: &mut Tracker, origin: Origin) {
    tracker.sent(Expect::Parse { registers: None }, origin);
    tracker.sent(Expect::Bind, origin);
    tracker.sent(Expect::Execute, origin);
    tracker.sent(Expect::Sync, origin);
}

#[test]
fn pipelined_syncs_are_answered_in_order() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    extended(&mut t, Origin::Client);
    extended(&mut t, Origin::Client);
    assert_eq!(t.pending_ready(), 2);
    feed(&mut t, &mut out, "1 2 D C ZI");
    assert!(!t.is_idle(), "one batch still owed");
    feed(&mut t, &mut out, "1 2 D C ZI");
    assert!(t.is_idle());
}

#[test]
fn an_error_skips_the_rest_of_the_batch() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    let stmt = StatementRegistry::default().intern(b"select 1/0\0\0\0");
    let name = stmt.server_name.clone();
    t.sent(Expect::Parse { registers: Some(stmt.clone()) }, Origin::Client);
    t.sent(Expect::Bind, Origin::Client);
    t.sent(Expect::Execute, Origin::Client);
    t.sent(Expect::Sync, Origin::Client);
    extended(&mut t, Origin::Client);
    assert!(t.is_prepared(&name));
    feed(&mut t, &mut out, "E ZI");
    assert!(!t.is_prepared(&name), "the failed Parse created nothing");
    assert!(!stmt.is_validated());
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "1 2 D C ZI");
    assert!(t.is_idle());
}

#[test]
fn messages_sent_after_an_error_but_before_sync_expect_nothing() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Parse { registers: None }, Origin::Client);
    t.sent(Expect::Bind, Origin::Client);
    // Flush: the error arrives while the batch is still open.
    feed(&mut t, &mut out, "E");
    t.sent(Expect::Execute, Origin::Client);
    t.synthetic(Synthetic::ParseComplete, &mut out);
    assert!(out.is_empty(), "a synthetic answer for a skipped message is never sent");
    t.sent(Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "ZI");
    assert!(t.is_idle());
}

#[test]
fn synthetic_answers_wait_for_what_is_ahead_of_them() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Parse { registers: None }, Origin::Client);
    t.synthetic(Synthetic::ParseComplete, &mut out);
    assert!(out.is_empty(), "must follow the real ParseComplete");
    t.sent(Expect::Sync, Origin::Client);
    let verdicts = feed(&mut t, &mut out, "1");
    assert_eq!(verdicts, [Verdict::Relay]);
    assert_eq!(&out[..], b"1\0\0\0\x04", "emitted right after the server's answer");
    feed(&mut t, &mut out, "ZI");
    assert!(t.is_idle());
}

#[test]
fn injected_requests_are_swallowed_and_client_ones_relayed() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Query, Origin::InjectedSetup);
    let stmt = StatementRegistry::default().intern(b"select 1\0\0\0");
    t.sent(Expect::Parse { registers: Some(stmt.clone()) }, Origin::InjectedParse);
    t.sent(Expect::Bind, Origin::Client);
    t.sent(Expect::Execute, Origin::Client);
    t.sent(Expect::Sync, Origin::Client);
    let verdicts = feed(&mut t, &mut out, "S T D C ZI 1 2 D C ZI");
    use Verdict::{Relay, Swallow};
    assert_eq!(verdicts, [Swallow, Swallow, Swallow, Swallow, Swallow, Swallow, Relay, Relay, Relay, Relay]);
    assert!(stmt.is_validated() && t.is_prepared(&stmt.server_name));
}

#[test]
fn a_failed_setup_query_is_reported() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Query, Origin::InjectedSetup);
    t.sent(Expect::Query, Origin::Client);
    assert_eq!(feed(&mut t, &mut out, "E"), [Verdict::SetupFailed]);
}

#[test]
fn transaction_and_copy_state_follow_the_server() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "C ZT");
    assert_eq!(t.tx_status(), TxStatus::InTransaction);
    assert!(!t.is_idle() && t.at_sync_point());
    t.sent(Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "G");
    assert_eq!(t.copy_state(), CopyState::In);
    assert!(!t.at_sync_point());
    feed(&mut t, &mut out, "C ZT");
    assert_eq!(t.copy_state(), CopyState::None);
    t.sent(Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "E ZE");
    assert_eq!(t.tx_status(), TxStatus::Failed);
    t.sent(Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
}

#[test]
fn describe_statement_waits_for_row_description() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::DescribeStatement { got_parameters: false }, Origin::Client);
    t.sent(Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "t");
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "n ZI");
    assert!(t.is_idle());
}

#[test]
fn syncs_pipelined_into_copy_in_are_ignored_like_the_server_does() {
    // tokio-postgres: Bind Execute Sync, then CopyData.. CopyDone Sync.
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Bind, Origin::Client);
    t.sent(Expect::Execute, Origin::Client);
    t.sent(Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "2 G");
    assert_eq!(t.pending_ready(), 0, "the server ignores that Sync");
    assert!(t.batch_open(), "the batch stays open until a Sync after CopyDone");
    t.sent(Expect::Sync, Origin::Client);
    assert_eq!(t.pending_ready(), 0, "a Sync during COPY IN is ignored too");
    t.sent(Expect::CopyEnd, Origin::Client);
    t.sent(Expect::Sync, Origin::Client);
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
}

#[test]
fn copy_in_by_simple_query_with_copy_done_already_sent() {
    let mut t = Tracker::default();
    let mut out = BytesMut::new();
    t.sent(Expect::Query, Origin::Client);
    t.sent(Expect::CopyEnd, Origin::Client);
    t.sent(Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "G C ZI");
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
    // A stray CopyDone after a failed COPY expects nothing.
    t.sent(Expect::CopyEnd, Origin::Client);
    assert!(t.is_idle());
}

#[test]
fn only_passing_connect_failures_are_retried() {
    use super::BackendError;
    use crate::wire::ErrorFields;
    let server = |code: &str| BackendError::Server(ErrorFields { code: code.into(), ..Default::default() });
    let refused =
        BackendError::Connect { addr: "127.0.0.1:1".into(), source: std::io::ErrorKind::ConnectionRefused.into() };
    assert!(refused.is_transient());
    assert!(BackendError::Closed.is_transient());
    assert!(server("57P03").is_transient(), "the database system is starting up / shutting down");
    assert!(server("57P01").is_transient());
    assert!(server("08006").is_transient());
    assert!(!server("28P01").is_transient(), "a wrong password does not pass by waiting");
    assert!(!server("3D000").is_transient(), "nor does an unknown database");
    assert!(!BackendError::UnsupportedAuth(7).is_transient());
}
