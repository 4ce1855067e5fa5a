//! A client's server connection lost under it (`pg_terminate_backend`, the
//! server's FATAL 57P01): raw protocol pipelines lost at different points,
//! the failed block pgrelay answers afterwards, and what the next server
//! connection knows of the client's statements. Each answer is counted and
//! its status byte checked against what PostgreSQL sends; every wait is
//! bounded (see `Raw::recv`). The failover case is in tests/topology/survive.rs.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pgrelay::wire;

use crate::support::cluster;
use crate::support::relay::msg::{bind, bind_execute, execute, flush, parse};
use crate::support::relay::{self, error_fields, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// Ends the backend that `condition` (on pg_stat_activity) picks, once
/// there is one.
async fn terminate_when(condition: &str) {
    let sql =
        format!("select pg_terminate_backend(pid) from pg_stat_activity where {condition} and pid <> pg_backend_pid()");
    let deadline = Instant::now() + GRACE;
    while !cluster().psql(cluster().primary(), &sql).expect("psql").contains('t') {
        assert!(Instant::now() < deadline, "no backend where {condition}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ends the backend whose statement (its text contains `marker`) sleeps in
/// `pg_sleep`, once it does.
async fn terminate_sleeping(marker: &str) {
    terminate_when(&format!("query like '%{marker}%' and wait_event = 'PgSleep'")).await;
}

/// Ends the backend of the raw client's server connection (its pid is the
/// one `select pg_backend_pid()` gave).
fn terminate_pid(pid: &str) {
    let out = cluster().psql(cluster().primary(), &format!("select pg_terminate_backend({pid})")).expect("psql");
    assert_eq!(out.trim(), "t", "backend {pid} ended");
}

fn query(out: &mut BytesMut, sql: &str) {
    wire::put_query(out, sql);
}

/// A request a test sends, written into a buffer.
type Request = Box<dyn Fn(&mut BytesMut)>;

fn simple(sql: &'static str) -> Request {
    Box::new(move |out| query(out, sql))
}

/// Parse, Bind, Execute and Sync of `sql` as the unnamed statement.
fn extended(sql: &'static str) -> Request {
    extended_named("", sql)
}

fn extended_named(name: &'static str, sql: &'static str) -> Request {
    Box::new(move |out| {
        parse(out, name, sql);
        bind_execute(out, name);
        wire::put_sync(out);
    })
}

/// The tags of one request's answers, each error with its SQLSTATE and the
/// ReadyForQuery with its status: "1 2 E[40001] Z[E]".
fn answers(messages: &[(u8, Bytes)]) -> String {
    messages
        .iter()
        .map(|(tag, body)| match tag {
            b'E' => format!("E[{}]", error_fields(body).0),
            b'Z' => format!("Z[{}]", char::from(body[0])),
            _ => char::from(*tag).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A raw client in a block, and the pid of the server it holds.
async fn in_block(app: &pgrelay::RunningApp) -> (Raw, String) {
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    query(&mut out, "begin");
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "C Z[T]");
    let pid = backend_pid(&mut raw).await;
    (raw, pid)
}

/// The server pid behind the raw client's current transaction.
async fn backend_pid(raw: &mut Raw) -> String {
    let mut out = BytesMut::new();
    query(&mut out, "select pg_backend_pid()");
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    let row = answer.iter().find(|(t, _)| *t == b'D').expect("a row");
    String::from_utf8_lossy(&row.1[6..]).into_owned()
}

/// A pipeline in a block, lost while its first batch runs: every Sync and
/// Query behind it gets exactly one ReadyForQuery, with the status a server
/// in a failed block sends; a Parse skipped with its batch creates nothing,
/// and a statement prepared before the loss works on the next server.
#[tokio::test]
async fn a_pipeline_lost_in_a_block_is_answered_request_by_request() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    query(&mut out, "begin");
    parse(&mut out, "before", "select 'before'");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "C Z[T]");
    assert_eq!(answers(&raw.until_ready().await), "1 Z[T]");

    let mut out = BytesMut::new();
    parse(&mut out, "answered", "select 'answered'");
    parse(&mut out, "", "select pg_sleep(30) -- lost pipeline");
    bind_execute(&mut out, "");
    wire::put_statement_op(&mut out, b'C', b"before");
    wire::put_sync(&mut out);
    parse(&mut out, "skipped", "select 1");
    bind_execute(&mut out, "skipped");
    wire::put_sync(&mut out);
    query(&mut out, "select 2");
    wire::put_sync(&mut out);
    flush(&mut out);
    bind_execute(&mut out, "before");
    wire::put_sync(&mut out);
    query(&mut out, "rollback to savepoint nowhere");
    query(&mut out, " ;");
    query(&mut out, "abort");
    raw.send(&out).await;
    terminate_sleeping("lost pipeline").await;

    let first = raw.until_ready().await;
    assert_eq!(answers(&first), "1 1 2 E[40001] Z[E]", "the Parses' answers, then the loss");
    for what in ["named Parse", "Query", "Sync alone", "Bind of an existing statement", "ROLLBACK TO"] {
        let expected = if what == "Sync alone" { "Z[E]" } else { "E[25P02] Z[E]" };
        assert_eq!(answers(&raw.until_ready().await), expected, "{what}");
    }
    assert_eq!(answers(&raw.until_ready().await), "I Z[E]", "an empty query refuses nothing");
    assert_eq!(answers(&raw.until_ready().await), "C Z[I]", "ABORT ends the block");

    // On the next server: the statements prepared before the loss run (the
    // Close skipped with its batch closed nothing), the one whose Parse was
    // skipped does not exist.
    let mut out = BytesMut::new();
    for name in ["before", "answered"] {
        bind_execute(&mut out, name);
        wire::put_sync(&mut out);
    }
    bind(&mut out, "skipped");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    for name in ["before", "answered"] {
        let got = raw.until_ready().await;
        assert_eq!(answers(&got), "2 D C Z[I]", "{name}");
        assert!(got[1].1.ends_with(name.as_bytes()), "{name}");
    }
    assert_eq!(answers(&raw.until_ready().await), "E[26000] Z[I]");
    app.shutdown(GRACE).await;
}

/// Batches lost with their answers partly relayed, and a batch without a
/// Sync (Flush only): the error comes where the server's would, and the
/// client's later Sync gets the one ReadyForQuery, in a block ('E') and
/// outside one ('I', the implicit transaction's fate unknown: 08007).
#[tokio::test]
async fn an_unsynced_batch_lost_after_its_first_answers() {
    let app = relay::start_default(cluster(), "").await;
    for in_block in [false, true] {
        let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
        if in_block {
            let mut out = BytesMut::new();
            query(&mut out, "begin");
            raw.send(&out).await;
            assert_eq!(answers(&raw.until_ready().await), "C Z[T]");
        }
        let marker = format!("unsynced {in_block}");
        let mut out = BytesMut::new();
        parse(&mut out, "", &format!("select pg_sleep(30) -- {marker}"));
        bind(&mut out, "");
        flush(&mut out);
        raw.send(&out).await;
        assert_eq!(raw.recv().await.map(|m| m.0), Some(b'1'));
        assert_eq!(raw.recv().await.map(|m| m.0), Some(b'2'));
        let mut out = BytesMut::new();
        execute(&mut out);
        flush(&mut out);
        raw.send(&out).await;
        terminate_sleeping(&marker).await;
        let (code, expected) = if in_block { ("40001", "Z[E]") } else { ("08007", "Z[I]") };
        let error = raw.recv().await.expect("the error");
        assert_eq!(answers(&[error]), format!("E[{code}]"));
        // Skipped up to the Sync, as a server skips after an error.
        let mut out = BytesMut::new();
        bind_execute(&mut out, "");
        wire::put_sync(&mut out);
        raw.send(&out).await;
        assert_eq!(answers(&raw.until_ready().await), expected);
        let mut out = BytesMut::new();
        query(&mut out, "rollback");
        query(&mut out, "select 1");
        raw.send(&out).await;
        let rollback = raw.until_ready().await;
        assert!(answers(&rollback).ends_with("Z[I]"), "{}", answers(&rollback));
        assert_eq!(answers(&raw.until_ready().await), "T D C Z[I]");
    }
    app.shutdown(GRACE).await;
}

/// A block lost while idle: its next request hears of it, whatever it is;
/// a transaction-control statement pgrelay cannot answer without a server
/// ends the connection with an error saying so, never a hang.
#[tokio::test]
async fn a_block_lost_while_idle_hears_of_it_at_its_next_request() {
    let app = relay::start_default(cluster(), "").await;
    // The next request: a Sync alone, an extended-protocol statement,
    // extended-protocol ROLLBACK and COMMIT as pgJDBC ends a block (they
    // end it: a COMMIT first hears of the loss), and a Query that ends the
    // block and goes on.
    let described_rollback: Request = Box::new(|out| {
        parse(out, "", "ROLLBACK");
        wire::put_statement_op(out, wire::frontend::DESCRIBE, b"");
        bind(out, "");
        execute(out);
        wire::put_sync(out);
    });
    let cases: [(&str, Request, &str); 7] = [
        ("Sync alone", Box::new(wire::put_sync), "E[40001] Z[E]"),
        ("extended", extended("select 1"), "E[40001] Z[E]"),
        ("extended ROLLBACK", extended("rollback"), "1 2 C Z[I]"),
        ("extended ROLLBACK, described", described_rollback, "1 t n 2 C Z[I]"),
        ("named extended ROLLBACK", extended_named("S_7", "ROLLBACK"), "1 2 C Z[I]"),
        ("extended COMMIT", extended("commit"), "1 2 E[40001] Z[I]"),
        ("ROLLBACK; SELECT", simple("rollback; select 1"), "E[08006]"),
    ];
    for (what, request, expected) in cases {
        let (mut raw, pid) = in_block(&app).await;
        terminate_pid(&pid);
        wait_noticed(&app).await;
        let mut out = BytesMut::new();
        request(&mut out);
        raw.send(&out).await;
        assert_eq!(answers(&raw.until_ready().await), expected, "{what}");
        if expected == "E[08006]" {
            assert!(raw.closed().await, "{what}");
            continue;
        }
        if expected.ends_with("Z[E]") {
            let mut out = BytesMut::new();
            query(&mut out, "rollback");
            raw.send(&out).await;
            assert_eq!(answers(&raw.until_ready().await), "C Z[I]", "{what}");
        }
        // The client carries on outside a block, on a new server connection.
        assert_ne!(backend_pid(&mut raw).await, pid, "{what}");
    }
    app.shutdown(GRACE).await;
}

/// Every way of spelling a COMMIT, in a simple Query or in extended
/// protocol, held in flight by a deferred trigger that sleeps and lost
/// there: the client is told 08007 (it may have committed), never 40001.
#[tokio::test]
async fn a_commit_in_flight_is_never_called_rolled_back_however_it_is_spelled() {
    let app = relay::start_default(cluster(), "").await;
    let setup = "drop table if exists lost_commit; create table lost_commit (a int); \
        create or replace function lost_commit_sleep() returns trigger language plpgsql as \
        $$ begin perform pg_sleep(30); return null; end $$; \
        create constraint trigger lost_commit_sleep after insert on lost_commit \
        deferrable initially deferred for each row execute function lost_commit_sleep(); \
        grant all on lost_commit to app_trust";
    cluster().psql_db(cluster().primary(), "app", setup).expect("setup");
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let cases: Vec<(&str, Request)> = vec![
        ("commit", simple("commit")),
        ("comment first", simple("/* a; b */ COMMIT")),
        ("and chain", simple("Commit And Chain")),
        ("after a statement", simple("insert into lost_commit values (3); commit")),
        ("prepare transaction", simple("prepare transaction 'lost'")),
        ("extended", extended("commit")),
        ("extended, named", extended_named("lost_end", "END")),
    ];
    for (what, commit) in cases {
        let mut out = BytesMut::new();
        query(&mut out, "begin; insert into lost_commit values (1)");
        raw.send(&out).await;
        assert_eq!(answers(&raw.until_ready().await), "C C Z[T]", "{what}");
        let pid = backend_pid(&mut raw).await;
        let mut out = BytesMut::new();
        commit(&mut out);
        raw.send(&out).await;
        terminate_when(&format!("pid = {pid} and wait_event = 'PgSleep'")).await;
        let answer = answers(&raw.until_ready().await);
        assert!(!answer.contains("40001"), "{what}: {answer}");
        if what == "and chain" {
            // The chained block died with the server: failed until ROLLBACK.
            assert!(answer.ends_with("E[08007] Z[E]"), "{what}: {answer}");
            let mut out = BytesMut::new();
            query(&mut out, "rollback");
            raw.send(&out).await;
            assert_eq!(answers(&raw.until_ready().await), "C Z[I]");
            continue;
        }
        assert!(answer.ends_with("E[08007] Z[I]"), "{what}: {answer}");
    }
    // Outside a block: an autocommit statement, simple and extended.
    for extended in [false, true] {
        let mut out = BytesMut::new();
        match extended {
            false => query(&mut out, "insert into lost_commit values (2)"),
            true => {
                parse(&mut out, "", "insert into lost_commit values (2)");
                bind_execute(&mut out, "");
                wire::put_sync(&mut out);
            }
        }
        // The pid of the connection the insert gets: the only one of this pool.
        raw.send(&out).await;
        terminate_sleeping("insert into lost_commit values (2)").await;
        let answer = answers(&raw.until_ready().await);
        assert!(answer.ends_with("E[08007] Z[I]"), "autocommit, extended {extended}: {answer}");
    }
    app.shutdown(GRACE).await;
}

/// A client that does not read a large result while its server is lost:
/// the rows relayed before the loss, then one error and one ReadyForQuery.
#[tokio::test]
async fn a_slow_reader_loses_its_server_mid_result() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, pid) = in_block(&app).await;
    let mut out = BytesMut::new();
    query(&mut out, "select repeat('x', 100) from generate_series(1, 100000)");
    raw.send(&out).await;
    // The server blocks writing rows the client does not read.
    terminate_when(&format!("pid = {pid} and wait_event = 'ClientWrite'")).await;
    let result = raw.until_ready().await;
    let rows = result.iter().filter(|(t, _)| *t == b'D').count();
    assert!(rows < 100_000, "the result was cut short");
    let rest: Vec<_> = result.into_iter().filter(|(t, _)| *t != b'D').collect();
    assert_eq!(answers(&rest), "T E[40001] Z[E]", "after {rows} rows");
    let mut out = BytesMut::new();
    query(&mut out, "rollback");
    query(&mut out, "select 1");
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "C Z[I]");
    assert_eq!(answers(&raw.until_ready().await), "T D C Z[I]");
    app.shutdown(GRACE).await;
}

/// Two clients of a pool of one: the one whose server is lost frees the
/// slot at once (the other, waiting for it, gets a new connection) and
/// hears of the loss itself at its next statement; the other sees nothing
/// of it.
#[tokio::test]
async fn a_lost_connection_frees_its_pool_slot_for_the_next_client() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let a = relay::connect(app.rw_addr).await;
    a.batch_execute("begin").await.expect("begin");
    let pid = relay::scalar(&a, "select pg_backend_pid()").await;
    let b = relay::connect(app.rw_addr).await;
    let waiting = tokio::spawn(async move {
        let value = relay::scalar(&b, "select 'b:' || pg_backend_pid()").await;
        (b, value)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "b waits for the only server connection");
    terminate_pid(&pid);
    let (b, value) = tokio::time::timeout(GRACE, waiting).await.expect("b got a connection").expect("b");
    assert_ne!(value, format!("b:{pid}"));
    let lost = a.simple_query("select 1").await.expect_err("the lost block");
    assert_eq!(relay::sqlstate(&lost), "40001", "{}", relay::message(&lost));
    a.batch_execute("rollback").await.expect("rollback");
    assert_eq!(relay::scalar(&a, "select 'a'").await, "a");
    assert_eq!(relay::scalar(&b, "select 'b'").await, "b");
    app.shutdown(GRACE).await;
}

/// Waits until pgrelay holds no active server connection for app_trust:
/// it noticed the loss of the one it held.
async fn wait_noticed(app: &pgrelay::RunningApp) {
    let deadline = Instant::now() + GRACE;
    loop {
        let (_, body) = relay::http_get(app.http_addr, "/metrics").await;
        let active = body.lines().any(|l| {
            l.starts_with("pgrelay_server_connections{")
                && l.contains("user=\"app_trust\"")
                && l.contains("state=\"active\"")
                && !l.ends_with(" 0")
        });
        if !active {
            return;
        }
        assert!(Instant::now() < deadline, "pgrelay never noticed the loss");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A batch the server failed (and said so) before the client's Sync, its
/// server lost then: the Sync gets the ReadyForQuery a server gives after
/// that error, with no second error.
#[tokio::test]
async fn a_batch_the_server_failed_gets_no_second_error_when_lost() {
    let app = relay::start_default(cluster(), "").await;
    for in_block in [true, false] {
        let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
        let mut out = BytesMut::new();
        query(&mut out, if in_block { "begin" } else { "select 1" });
        raw.send(&out).await;
        raw.until_ready().await;
        let mut out = BytesMut::new();
        parse(&mut out, "", "select pg_backend_pid() / g from generate_series(0, 0) g");
        bind_execute(&mut out, "");
        flush(&mut out);
        raw.send(&out).await;
        let mut failed = vec![];
        for _ in 0..3 {
            failed.push(raw.recv().await.expect("an answer"));
        }
        assert_eq!(answers(&failed), "1 2 E[22012]");
        // The failed statement ran on the one connection the test pool holds.
        let pid = cluster()
            .psql(
                cluster().primary(),
                "select pid from pg_stat_activity where query like 'select pg_backend_pid() / g%'",
            )
            .expect("psql");
        terminate_pid(pid.trim());
        wait_noticed(&app).await;
        let mut out = BytesMut::new();
        wire::put_sync(&mut out);
        query(&mut out, "rollback");
        raw.send(&out).await;
        let status = if in_block { "Z[E]" } else { "Z[I]" };
        assert_eq!(answers(&raw.until_ready().await), status, "in a block: {in_block}");
        assert!(answers(&raw.until_ready().await).ends_with("Z[I]"));
    }
    app.shutdown(GRACE).await;
}

/// Protocol statements prepared before the loss, on a server connection
/// that no longer exists: SQL DEALLOCATE of one in a later block gets one
/// answer and one ReadyForQuery, in a failed block (25P02, as a server
/// says) and in a healthy one. (The failed block's was never answered:
/// pgrelay prepared the statement first, the server refused that Parse
/// and skipped the DEALLOCATE behind it.)
#[tokio::test]
async fn deallocate_of_a_statement_prepared_before_the_loss_is_answered() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, pid) = in_block(&app).await;
    let mut out = BytesMut::new();
    parse(&mut out, "gone", "select 'gone'");
    parse(&mut out, "kept", "select 'kept'");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "1 1 Z[T]");
    terminate_pid(&pid);
    wait_noticed(&app).await;
    let mut out = BytesMut::new();
    query(&mut out, "rollback");
    query(&mut out, "begin");
    query(&mut out, "select 1/0");
    query(&mut out, "deallocate gone");
    query(&mut out, "rollback");
    query(&mut out, "begin");
    query(&mut out, "deallocate kept");
    query(&mut out, "commit");
    raw.send(&out).await;
    let expected = ["C Z[I]", "C Z[T]", "E[22012] Z[E]", "E[25P02] Z[E]", "C Z[I]", "C Z[T]", "C Z[T]", "C Z[I]"];
    for (i, expected) in expected.iter().enumerate() {
        assert_eq!(answers(&raw.until_ready().await), *expected, "answer {i}");
    }
    let mut out = BytesMut::new();
    bind_execute(&mut out, "kept");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "E[26000] Z[I]", "deallocated");
    app.shutdown(GRACE).await;
}

/// pgJDBC's ROLLBACK once it is a named server statement: prepared before
/// the loss, only bound and executed after it. pgrelay ends the block.
#[tokio::test]
async fn a_rollback_prepared_before_the_loss_ends_the_lost_block() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, pid) = in_block(&app).await;
    let mut out = BytesMut::new();
    parse(&mut out, "S_3", "ROLLBACK");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "1 Z[T]");
    terminate_pid(&pid);
    wait_noticed(&app).await;
    // A statement of the block first: the loss is reported.
    let mut out = BytesMut::new();
    extended("select 1")(&mut out);
    bind_execute(&mut out, "S_3");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "E[40001] Z[E]");
    assert_eq!(answers(&raw.until_ready().await), "2 C Z[I]");
    // The statement is still the client's on the next server.
    let mut out = BytesMut::new();
    query(&mut out, "begin");
    bind_execute(&mut out, "S_3");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(answers(&raw.until_ready().await), "C Z[T]");
    assert_eq!(answers(&raw.until_ready().await), "2 C Z[I]");
    assert_ne!(backend_pid(&mut raw).await, pid);
    app.shutdown(GRACE).await;
}
