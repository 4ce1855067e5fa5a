//! The expected-response queue, driven with the message sequences a real
//! server sends.

use bytes::{Bytes, BytesMut};

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

fn send(tracker: &mut Tracker, expect: Expect, origin: Origin) {
    tracker.sent(expect, origin).expect("accepted");
}

/// A shared statement recorded as prepared, the way the connection sends a Parse.
fn parse_shared(tracker: &mut Tracker, stmt: &std::sync::Arc<super::Statement>, origin: Origin) {
    assert!(tracker.prepared().insert(stmt.server_name.clone(), 0).is_none());
    send(
        tracker,
        Expect::Parse { registers: Some(stmt.clone()), client_name: Some(Bytes::from_static(b"s1")) },
        origin,
    );
}

fn extended(tracker: &mut Tracker, origin: Origin) {
    send(tracker, Expect::Parse { registers: None, client_name: None }, origin);
    send(tracker, Expect::Bind { statement: None }, origin);
    send(tracker, Expect::Execute, origin);
    send(tracker, Expect::Sync, origin);
}

#[test]
fn pipelined_syncs_are_answered_in_order() {
    let mut t = Tracker::new(200);
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
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    let registry = StatementRegistry::default();
    let stmt = registry.intern(0, b"select 1/0\0\0\0");
    let name = stmt.server_name.clone();
    parse_shared(&mut t, &stmt, Origin::Client);
    send(&mut t, Expect::Bind { statement: None }, Origin::Client);
    send(&mut t, Expect::Execute, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    extended(&mut t, Origin::Client);
    assert!(t.is_prepared(&name));
    feed(&mut t, &mut out, "E ZI");
    assert!(!t.is_prepared(&name), "the failed Parse created nothing");
    assert!(!stmt.is_validated());
    let undone = t.take_undone().expect("undone");
    assert!(matches!(&undone[..], [super::Undone::Parse(name)] if name == "s1"), "the client's name is undone");
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "1 2 D C ZI");
    assert!(t.is_idle());
}

#[test]
fn messages_sent_after_an_error_but_before_sync_expect_nothing() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Parse { registers: None, client_name: None }, Origin::Client);
    send(&mut t, Expect::Bind { statement: None }, Origin::Client);
    // Flush: the error arrives while the batch is still open.
    feed(&mut t, &mut out, "E");
    send(&mut t, Expect::Execute, Origin::Client);
    t.synthetic(Synthetic::ParseComplete(Bytes::from_static(b"s2")), &mut out);
    assert!(out.is_empty(), "a synthetic answer for a skipped message is never sent");
    send(&mut t, Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "ZI");
    assert!(t.is_idle());
}

#[test]
fn synthetic_answers_wait_for_what_is_ahead_of_them() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Parse { registers: None, client_name: None }, Origin::Client);
    t.synthetic(Synthetic::ParseComplete(Bytes::from_static(b"s2")), &mut out);
    assert!(out.is_empty(), "must follow the real ParseComplete");
    send(&mut t, Expect::Sync, Origin::Client);
    let verdicts = feed(&mut t, &mut out, "1");
    assert_eq!(verdicts, [Verdict::Relay]);
    assert_eq!(&out[..], b"1\0\0\0\x04", "emitted right after the server's answer");
    feed(&mut t, &mut out, "ZI");
    assert!(t.is_idle());
}

#[test]
fn injected_requests_are_swallowed_and_client_ones_relayed() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::InjectedSetup);
    let registry = StatementRegistry::default();
    let stmt = registry.intern(0, b"select 1\0\0\0");
    parse_shared(&mut t, &stmt, Origin::Injected);
    send(&mut t, Expect::Bind { statement: None }, Origin::Client);
    send(&mut t, Expect::Execute, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    let verdicts = feed(&mut t, &mut out, "S C ZI 1 2 D C ZI");
    use Verdict::{Relay, Swallow};
    assert_eq!(verdicts, [Swallow, Swallow, Swallow, Swallow, Relay, Relay, Relay, Relay]);
    assert!(stmt.is_validated() && t.is_prepared(&stmt.server_name));
}

#[test]
fn ready_for_query_owed_to_the_client_ignores_pgrelay_s_own() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    assert!(!t.client_ready_owed());
    send(&mut t, Expect::Query, Origin::InjectedSetup);
    assert!(!t.client_ready_owed(), "the settings pgrelay applies");
    extended(&mut t, Origin::Client);
    extended(&mut t, Origin::Client);
    send(&mut t, Expect::Query, Origin::InjectedQuiet);
    feed(&mut t, &mut out, "C ZI 1 2 D C ZI");
    assert!(t.client_ready_owed(), "the second batch");
    // A COPY FROM STDIN drops the Syncs pipelined behind it: none is owed for them.
    feed(&mut t, &mut out, "1 2 D C ZI");
    assert!(!t.client_ready_owed(), "only pgrelay's own query is left");
    feed(&mut t, &mut out, "C ZI");
    send(&mut t, Expect::Query, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "G");
    assert!(t.client_ready_owed(), "the COPY's own");
    feed(&mut t, &mut out, "C ZI");
    assert!(!t.client_ready_owed(), "the Sync behind the COPY went unanswered");
}

#[test]
fn a_failed_setup_query_is_reported() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::InjectedSetup);
    send(&mut t, Expect::Query, Origin::Client);
    assert_eq!(feed(&mut t, &mut out, "E"), [Verdict::SetupFailed]);
}

#[test]
fn transaction_and_copy_state_follow_the_server() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "C ZT");
    assert_eq!(t.tx_status(), TxStatus::InTransaction);
    assert!(!t.is_idle() && t.at_sync_point());
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "G");
    assert_eq!(t.copy_state(), CopyState::In);
    assert!(!t.at_sync_point());
    feed(&mut t, &mut out, "C ZT");
    assert_eq!(t.copy_state(), CopyState::None);
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "E ZE");
    assert_eq!(t.tx_status(), TxStatus::Failed);
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
}

#[test]
fn describe_statement_waits_for_row_description() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::DescribeStatement { got_parameters: false, shape_of: None, fork_for: None }, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "t");
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "n ZI");
    assert!(t.is_idle());
}

#[test]
fn syncs_pipelined_into_copy_in_are_ignored_like_the_server_does() {
    // tokio-postgres: Bind Execute Sync, then CopyData.. CopyDone Sync.
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Bind { statement: None }, Origin::Client);
    send(&mut t, Expect::Execute, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    feed(&mut t, &mut out, "2 G");
    assert_eq!(t.pending_ready(), 0, "the server ignores that Sync");
    assert!(t.batch_open(), "the batch stays open until a Sync after CopyDone");
    send(&mut t, Expect::Sync, Origin::Client);
    assert_eq!(t.pending_ready(), 0, "a Sync during COPY IN is ignored too");
    send(&mut t, Expect::CopyEnd, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
}

#[test]
fn copy_in_by_simple_query_with_copy_done_already_sent() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::Client);
    send(&mut t, Expect::CopyEnd, Origin::Client);
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "G C ZI");
    assert_eq!(t.pending_ready(), 1);
    feed(&mut t, &mut out, "C ZI");
    assert!(t.is_idle());
    // A stray CopyDone after a failed COPY expects nothing.
    send(&mut t, Expect::CopyEnd, Origin::Client);
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
    let refused = crate::auth::server_login::LoginRefused::Unsupported(7);
    assert!(!BackendError::Login { node: "pg0".into(), user: "app".into(), reason: refused }.is_transient());
}

/// An ErrorResponse body with severity, SQLSTATE and message.
fn error_body(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    body
}

#[test]
fn answers_to_nothing_outstanding_are_never_relayed() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    assert!(matches!(feed(&mut t, &mut out, "ZI")[..], [Verdict::Desync(_)]), "ReadyForQuery with nothing owed");
    let mut t = Tracker::new(200);
    assert!(matches!(feed(&mut t, &mut out, "D")[..], [Verdict::Desync(_)]), "a row with nothing owed");
    let mut t = Tracker::new(200);
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "T D C ZI");
    assert!(matches!(feed(&mut t, &mut out, "D")[..], [Verdict::Desync(_)]), "a row after the last Sync's answer");
    let mut t = Tracker::new(200);
    send(&mut t, Expect::Parse { registers: None, client_name: None }, Origin::Client);
    assert!(matches!(feed(&mut t, &mut out, "2")[..], [Verdict::Desync(_)]), "BindComplete answering a Parse");
    let mut t = Tracker::new(200);
    send(&mut t, Expect::Bind { statement: None }, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    assert!(matches!(feed(&mut t, &mut out, "ZI")[..], [Verdict::Desync(_)]), "ReadyForQuery before BindComplete");
}

#[test]
fn an_unasked_fatal_is_relayed_but_an_unasked_error_is_not() {
    let mut t = Tracker::new(200);
    let fatal = error_body("FATAL", "57P01", "terminating connection due to administrator command");
    assert_eq!(t.on_server_message(b'E', &fatal), Verdict::Relay);
    let error = error_body("ERROR", "42601", "syntax error");
    assert!(matches!(t.on_server_message(b'E', &error), Verdict::Desync(_)));
}

#[test]
fn nothing_but_copy_messages_may_follow_copy_data() {
    // A COPY FROM STDIN whose data may already have failed on the server:
    // whether it would answer a Sync (or run a Query) cannot be known.
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "G");
    send(&mut t, Expect::CopyData, Origin::Client);
    send(&mut t, Expect::CopyData, Origin::Client);
    send(&mut t, Expect::Flush, Origin::Client);
    assert!(t.client_copy_open());
    assert_eq!(t.sent(Expect::Sync, Origin::Client), Err(super::CopyInterleaved));
    assert_eq!(t.sent(Expect::Query, Origin::Client), Err(super::CopyInterleaved));
    assert_eq!(
        t.sent(Expect::Parse { registers: None, client_name: None }, Origin::Client),
        Err(super::CopyInterleaved)
    );
    // Once the server's error is seen, the COPY is over and the client may go on.
    let bad_row = error_body("ERROR", "22P02", "invalid input syntax for type integer");
    assert_eq!(t.on_server_message(b'E', &bad_row), Verdict::Relay);
    assert!(!t.client_copy_open());
    send(&mut t, Expect::Sync, Origin::Client);
    send(&mut t, Expect::Query, Origin::Client);
    feed(&mut t, &mut out, "ZI ZI T D C ZI");
    assert!(t.is_idle());
}

#[test]
fn a_pipelined_copy_with_its_end_is_predictable() {
    // Query, data and CopyDone in one write, then a Sync and a Query: after
    // CopyDone the server answers both whether the COPY failed or not.
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::Client);
    send(&mut t, Expect::CopyData, Origin::Client);
    send(&mut t, Expect::CopyEnd, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    send(&mut t, Expect::Query, Origin::Client);
    assert!(!t.client_copy_open());
    let bad_row = error_body("ERROR", "22P02", "invalid input syntax for type integer");
    feed(&mut t, &mut out, "G");
    assert_eq!(t.on_server_message(b'E', &bad_row), Verdict::Relay);
    feed(&mut t, &mut out, "ZI ZI T D C ZI");
    assert!(t.is_idle());
}

#[test]
fn requests_pipelined_behind_a_copy_without_its_data_are_refused() {
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Query, Origin::Client);
    send(&mut t, Expect::Query, Origin::Client);
    assert!(matches!(feed(&mut t, &mut out, "G")[..], [Verdict::Desync(_)]));
}

#[test]
fn a_statement_whose_result_type_changed_is_no_longer_shared() {
    let registry = StatementRegistry::default();
    let stmt = registry.intern(7, b"select * from t\0\0\0");
    let mut t = Tracker::new(200);
    let mut out = BytesMut::new();
    send(&mut t, Expect::Bind { statement: Some(stmt.clone()) }, Origin::Client);
    send(&mut t, Expect::Execute, Origin::Client);
    send(&mut t, Expect::Sync, Origin::Client);
    let stale = error_body("ERROR", "0A000", "cached plan must not change result type");
    assert_eq!(t.on_server_message(b'E', &stale), Verdict::Relay);
    feed(&mut t, &mut out, "ZI");
    assert!(t.is_idle());
    let fresh = registry.intern(7, b"select * from t\0\0\0");
    assert_ne!(fresh.server_name, stmt.server_name, "the next Parse gets a new server-side statement");
    assert!(!std::sync::Arc::ptr_eq(&fresh, &stmt));
}

#[test]
fn statements_are_shared_within_a_context_only_and_freed_with_their_last_client() {
    let registry = StatementRegistry::default();
    let a = registry.intern(1, b"insert into t values ($1)\0\0\0");
    let again = registry.intern(1, b"insert into t values ($1)\0\0\0");
    let other = registry.intern(2, b"insert into t values ($1)\0\0\0");
    assert!(std::sync::Arc::ptr_eq(&a, &again));
    assert_ne!(a.server_name, other.server_name, "another search_path or settings: another statement");
    assert!(a.server_name.starts_with("pgrelay_") && a.server_name.len() == "pgrelay_".len() + 16);
    assert_eq!(registry.len(), 2);
    drop((a, again));
    assert_eq!(registry.len(), 1, "no client refers to it any more");
    drop(other);
    assert!(registry.is_empty());
}

#[test]
fn the_connections_statements_are_bounded_least_recently_used_first() {
    let mut statements = super::ServerStatements::new(2);
    assert_eq!(statements.insert("a".into(), 0), None);
    assert_eq!(statements.insert("b".into(), 0), None);
    assert_eq!(statements.touch("a"), super::server_statements::Presence::Pending { batch: 0 }, "no ParseComplete yet");
    statements.confirm("a");
    assert_eq!(statements.touch("a"), super::server_statements::Presence::Confirmed);
    assert_eq!(statements.insert("c".into(), 0).as_deref(), Some("b"));
    assert!(statements.contains("a") && statements.contains("c") && !statements.contains("b"));
}
