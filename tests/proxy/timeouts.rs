//! The client timeouts: `idle_transaction_timeout` disconnects a client idle
//! in a transaction and rolls it back, `query_timeout` cancels a query on the
//! server and the client carries on, `client_idle_timeout` disconnects an
//! idle client; busy clients (a long query, a COPY streaming in, a slow
//! reader) and the admin console are left alone; RELOAD turns them on for
//! connected clients.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pgrelay::config::Config;
use pgrelay::pool::Pool;
use pgrelay::{wire, RunningApp};
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

use crate::support::relay::{self, error_fields, msg, scalar, sqlstate, tags, Raw};
use crate::support::{cluster, connect_string};

const GRACE: Duration = Duration::from_secs(5);
/// The timeout the tests set, and how late pgrelay may act on it (a loaded
/// machine runs two PostgreSQL replicas and other tests meanwhile).
const TIMEOUT: Duration = Duration::from_millis(500);
const LATE: Duration = Duration::from_millis(1500);

/// A tokio-postgres client, and the error its connection ended with (the
/// FATAL pgrelay sent while the client was not running a query), if any.
struct Watched {
    client: Client,
    ended: oneshot::Receiver<Option<tokio_postgres::Error>>,
}

async fn connect_watched(addr: SocketAddr) -> Watched {
    let (client, mut connection) =
        tokio_postgres::connect(&relay::conn_string(addr, "app", "app"), NoTls).await.expect("connect through pgrelay");
    let (tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let end = loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        // Dropped first: the client is closed by the time the end is reported.
        drop(connection);
        let _ = tx.send(end);
    });
    Watched { client, ended }
}

impl Watched {
    /// Waits (bounded) for pgrelay to end the connection; returns its error and when it came.
    async fn ended_with(self) -> (tokio_postgres::Error, Instant) {
        let end = tokio::time::timeout(TIMEOUT + LATE + GRACE, self.ended).await;
        let error =
            end.expect("pgrelay ended the connection").expect("the connection task reported").expect("an error");
        assert!(self.client.is_closed(), "the client is disconnected");
        (error, Instant::now())
    }
}

/// The superuser, straight to the primary: what the server itself shows.
async fn primary() -> Client {
    let port = cluster().primary().port;
    let (client, connection) =
        tokio_postgres::connect(&connect_string(port, "postgres", "", "app"), NoTls).await.expect("connect to primary");
    tokio::spawn(connection);
    client
}

/// Creates `table (id int)` anew, writable by every test user.
async fn create_table(table: &str) {
    let sql = format!("drop table if exists {table}; create table {table} (id int); grant all on {table} to public");
    primary().await.batch_execute(&sql).await.expect("create table");
}

/// Polls pg_stat_activity until the backend `pid` is in `state` (bounded).
async fn wait_for_backend_state(pid: &str, state: &str) {
    let server = primary().await;
    let sql = format!("select coalesce((select state from pg_stat_activity where pid = {pid}), 'gone')");
    let deadline = Instant::now() + GRACE;
    loop {
        let now = scalar(&server, &sql).await;
        if now == state {
            return;
        }
        assert!(Instant::now() < deadline, "backend {pid} stays '{now}', not '{state}'");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The app database's pool of `user` on the primary.
fn pool(app: &RunningApp, user: &str) -> Arc<Pool> {
    let pools = app.context().pools.all();
    pools.into_iter().find(|p| p.key.node == "pg0" && p.key.user == user).expect("the pool exists")
}

/// Polls until the pool has no connection leased (nor being reset) and,
/// if given, `idle` idle ones (bounded).
async fn wait_for_pool(pool: &Pool, idle: Option<usize>) {
    let deadline = Instant::now() + GRACE;
    while pool.in_use() != 0 || idle.is_some_and(|idle| pool.idle_count() != idle) {
        assert!(Instant::now() < deadline, "pool: {} in use, {} idle", pool.in_use(), pool.idle_count());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn query(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_query(&mut out, sql);
    out
}

/// Sends `sql` and returns the answer up to ReadyForQuery.
async fn run(raw: &mut Raw, sql: &str) -> Vec<(u8, bytes::Bytes)> {
    raw.send(&query(sql)).await;
    raw.until_ready().await
}

/// Reads until pgrelay closes the connection; returns the last error's
/// (SQLSTATE, message) and when it arrived.
async fn farewell(raw: &mut Raw) -> ((String, String), Instant) {
    // Each recv waits 5 s at most, and the server sends nothing unasked.
    let mut last_error = None;
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'E' {
            last_error = Some((error_fields(&body), Instant::now()));
        }
    }
    last_error.expect("an error before the close")
}

/// Asserts that what happened at `at` came `expected` after `since`, give
/// or take: pgrelay starts its clock when it sees the client's or server's
/// last message, a moment before the test does, and may act late.
fn assert_took(since: Instant, at: Instant, expected: Duration, what: &str) {
    let took = at - since;
    let early = Duration::from_millis(50);
    assert!(took + early >= expected && took < expected + LATE, "{what} after {took:?} (expected {expected:?})");
}

#[tokio::test]
async fn idle_in_a_transaction_too_long_is_rolled_back_and_its_connection_reused_clean() {
    create_table("tmo_idle_tx").await;
    let app = relay::start_default(cluster(), "default_pool_size = 1\nidle_transaction_timeout = \"500ms\"").await;
    let a = connect_watched(app.rw_addr).await;
    // Session state too (it pins the client): the reset must take it away.
    a.client
        .batch_execute("set application_name = 'tmo_dirty'; begin; insert into tmo_idle_tx values (1)")
        .await
        .unwrap();
    let idle_since = Instant::now();
    let pid = scalar(&a.client, "select pg_backend_pid()").await;
    let (error, at) = a.ended_with().await;
    assert_took(idle_since, at, TIMEOUT, "25P03");
    let db = error.as_db_error().expect("pgrelay's FATAL");
    assert_eq!((db.code().code(), db.severity()), ("25P03", "FATAL"), "{db:?}");
    assert!(db.message().contains("idle_transaction_timeout = 500ms"), "{}", db.message());
    assert!(db.message().contains("rolled back"), "{}", db.message());

    // Rolled back and reset, then pooled: the next client gets the same
    // backend, outside any transaction and without the first one's settings.
    wait_for_backend_state(&pid, "idle").await;
    let b = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&b, "select count(*) from tmo_idle_tx").await, "0", "the insert was rolled back");
    let sql = "select pg_backend_pid() || ' ' || (now() = statement_timestamp()) || ' ' || \
               (txid_current_if_assigned() is null) || ' ' || current_setting('application_name')";
    assert_eq!(scalar(&b, sql).await, format!("{pid} true true "), "the same connection, clean");
    b.batch_execute("begin").await.unwrap();
    assert_eq!(scalar(&b, "select now() = statement_timestamp()").await, "f", "a transaction of its own");
    b.batch_execute("commit").await.unwrap();
    wait_for_pool(&pool(&app, "app"), Some(1)).await;
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn an_extended_batch_left_without_sync_counts_as_idle_in_a_transaction() {
    create_table("tmo_batch").await;
    let app = relay::start_default(cluster(), "default_pool_size = 1\nidle_transaction_timeout = \"500ms\"").await;
    let backend_pid = |answer: &[(u8, bytes::Bytes)]| String::from_utf8_lossy(&answer[1].1[6..]).into_owned();
    let (mut probe, _) = Raw::login(app.rw_addr, &[]).await;
    let before = backend_pid(&run(&mut probe, "select pg_backend_pid()").await);
    drop(probe);
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    msg::parse(&mut out, "", "insert into tmo_batch values (1)");
    msg::bind_execute(&mut out, "");
    msg::flush(&mut out);
    raw.send(&out).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(raw.recv().await.expect("an answer"));
    }
    assert_eq!(tags(&answers), "1 2 C");
    let idle_since = Instant::now();
    let ((code, message), at) = farewell(&mut raw).await;
    assert_took(idle_since, at, TIMEOUT, "25P03");
    assert_eq!(code, "25P03", "{message}");
    // A Sync would have committed what the client never confirmed: the
    // connection was closed instead, which rolls it back.
    let (mut next, _) = Raw::login(app.rw_addr, &[]).await;
    let count = run(&mut next, "select count(*) from tmo_batch").await;
    assert_eq!(count[1].1[6..], b"0"[..], "{count:?}");
    assert_ne!(backend_pid(&run(&mut next, "select pg_backend_pid()").await), before, "a fresh server connection");
    wait_for_backend_state(&before, "gone").await;
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn query_timeout_cancels_the_query_and_the_client_carries_on() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nquery_timeout = \"500ms\"").await;
    let client = relay::connect(app.rw_addr).await;
    let pid = scalar(&client, "select pg_backend_pid()").await;
    let cancelled = |what: &str, result: Result<(), tokio_postgres::Error>, started: Instant| {
        let error = result.expect_err(what);
        assert_took(started, Instant::now(), TIMEOUT, what);
        assert_eq!(sqlstate(&error), "57014", "{what}: {error}");
    };
    let started = Instant::now();
    cancelled("simple protocol", client.simple_query("select pg_sleep(10)").await.map(drop), started);
    assert_eq!(scalar(&client, "select 'next'").await, "next", "the same client connection runs the next query");
    wait_for_backend_state(&pid, "idle").await;

    let started = Instant::now();
    let extended = client.query("select pg_sleep($1)", &[&10.0f64]).await.map(drop);
    cancelled("extended protocol", extended, started);

    // Inside a transaction, the transaction fails, as with statement_timeout.
    client.batch_execute("begin").await.unwrap();
    let started = Instant::now();
    cancelled("in a transaction", client.simple_query("select pg_sleep(10)").await.map(drop), started);
    let error = client.simple_query("select 1").await.expect_err("the transaction failed");
    assert_eq!(sqlstate(&error), "25P02", "{error}");
    client.batch_execute("rollback").await.unwrap();
    let sql = "select pg_backend_pid() || ' ' || (now() = statement_timestamp())";
    assert_eq!(scalar(&client, sql).await, format!("{pid} true"), "the same server connection, out of the transaction");
    wait_for_backend_state(&pid, "idle").await;
    // Queries that end in time are left alone, however many.
    for _ in 0..3 {
        client.simple_query("select pg_sleep(0.3)").await.expect("in time");
    }
    let metrics = app.context().metrics.render();
    let counted = r#"pgrelay_client_timeouts_total{action="cancel",timeout="query_timeout"} 3"#;
    assert!(metrics.contains(counted), "{counted} in:\n{metrics}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn query_timeout_times_each_request_of_a_pipeline_from_when_the_one_before_ended() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nquery_timeout = \"500ms\"").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    // Four queries of 300 ms each, sent at once: 1.2 s in all, none over the limit.
    let mut out = BytesMut::new();
    for _ in 0..4 {
        wire::put_query(&mut out, "select pg_sleep(0.3)");
    }
    raw.send(&out).await;
    for n in 0..4 {
        let answer = raw.until_ready().await;
        assert_eq!(tags(&answer), "T D C Z", "query {n}: {answer:?}");
    }
    // A quick one then a slow one, in simple and in extended protocol: the
    // slow one is cancelled 500 ms after the quick one ended. (Nothing
    // follows a cancelled request here: PostgreSQL signals a cancel twice,
    // and the second may cancel the next request of a pipeline too.)
    let mut out = query("select pg_sleep(0.3)");
    wire::put_query(&mut out, "select pg_sleep(10)");
    let mut extended = BytesMut::new();
    for sql in ["select pg_sleep(0.3)", "select pg_sleep(10)"] {
        msg::parse(&mut extended, "", sql);
        msg::bind_execute(&mut extended, "");
        wire::put_sync(&mut extended);
    }
    for (what, pipeline, quick_tags, cancelled_tags) in
        [("simple", out, "T D C Z", "T E Z"), ("extended", extended, "1 2 D C Z", "1 2 E Z")]
    {
        raw.send(&pipeline).await;
        let quick = raw.until_ready().await;
        assert_eq!(tags(&quick), quick_tags, "{what}: {quick:?}");
        let quick_ended = Instant::now();
        let slow = raw.until_ready().await;
        assert_took(quick_ended, Instant::now(), TIMEOUT, what);
        assert_eq!(tags(&slow), cancelled_tags, "{what}: {slow:?}");
        assert_eq!(error_fields(&slow[slow.len() - 2].1).0, "57014", "{what}");
    }
    assert_eq!(tags(&run(&mut raw, "select 'carries on'").await), "T D C Z");
    app.shutdown(GRACE).await;
}

/// Resumes a stopped backend when dropped, whatever the test did.
struct Stopped(String);

impl Stopped {
    fn new(pid: &str) -> Stopped {
        signal(pid, "-STOP");
        Stopped(pid.to_owned())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(&self.0, "-CONT");
    }
}

fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, pid]).status().expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn a_query_that_ignores_its_cancel_costs_its_server_connection_not_the_pool() {
    let extra = "default_pool_size = 1\nquery_timeout = \"300ms\"\nserver_reset_timeout = \"1s\"";
    let app = relay::start_default(cluster(), extra).await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let answer = run(&mut raw, "select pg_backend_pid()").await;
    let pid = String::from_utf8_lossy(&answer[1].1[6..]).into_owned();
    // A stopped backend cannot act on a cancel (as one stuck in the kernel).
    let stopped = Stopped::new(&pid);
    let started = Instant::now();
    raw.send(&query("select 'never answered'")).await;
    let ((code, message), at) = farewell(&mut raw).await;
    assert_took(started, at, Duration::from_millis(1300), "the close");
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("query_timeout (300ms)"), "{message}");
    drop(stopped);
    // The connection was closed, never pooled: the next client gets another.
    let pool = pool(&app, "app_trust");
    wait_for_pool(&pool, Some(0)).await;
    let (mut next, _) = Raw::login(app.rw_addr, &[]).await;
    let answer = run(&mut next, "select pg_backend_pid()").await;
    assert_eq!(tags(&answer), "T D C Z");
    assert_ne!(String::from_utf8_lossy(&answer[1].1[6..]), pid);
    wait_for_backend_state(&pid, "gone").await;
    app.shutdown(GRACE).await;
}

/// A trust client whose socket takes 64 kB at most before it reads.
async fn slow_reader(addr: SocketAddr) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connect");
    let mut raw = Raw { stream, buf: BytesMut::new() };
    let mut out = BytesMut::new();
    wire::put_startup_message(&mut out, [(&b"user"[..], b"app_trust".as_slice()), (b"database", b"app")]);
    raw.send(&out).await;
    assert_eq!(raw.until_ready().await.last().map(|m| m.0), Some(b'Z'), "logged in");
    raw
}

/// `app` may use the admin console.
fn config_text(pool_extra: &str) -> String {
    relay::config_toml(cluster(), pool_extra, "") + "\n[admin]\nadmin_users = [\"app\"]\n"
}

#[tokio::test]
async fn client_idle_timeout_disconnects_idle_clients_only() {
    let app = relay::start(Config::parse(&config_text("client_idle_timeout = \"500ms\"")).unwrap()).await;
    let idle = connect_watched(app.rw_addr).await;
    scalar(&idle.client, "select 1").await;
    let idle_since = Instant::now();
    let pinned = connect_watched(app.rw_addr).await;
    pinned.client.batch_execute("select set_config('application_name', 'tmo_pinned', false)").await.unwrap();
    let pinned_since = Instant::now();
    let console = relay::connect_with(&connect_string(app.rw_addr.port(), "app", "app", "pgrelay")).await.unwrap();

    let (error, at) = idle.ended_with().await;
    assert_took(idle_since, at, TIMEOUT, "57P05");
    let db = error.as_db_error().expect("pgrelay's FATAL");
    assert_eq!((db.code().code(), db.severity()), ("57P05", "FATAL"), "{db:?}");
    assert!(db.message().contains("client_idle_timeout = 500ms"), "{}", db.message());
    // Pinned to its server connection, but idle outside a transaction all the same.
    let (error, at) = pinned.ended_with().await;
    assert_took(pinned_since, at, TIMEOUT, "57P05 (pinned)");
    assert_eq!(sqlstate(&error), "57P05");

    // Busy for longer than the timeout: a query, a transaction, the console
    // (idle since the start).
    let long_query = relay::connect(app.rw_addr).await;
    let in_transaction = relay::connect(app.rw_addr).await;
    in_transaction.batch_execute("begin").await.unwrap();
    let sleep = long_query.simple_query("select pg_sleep(1.2)");
    let (slept, _) = tokio::join!(sleep, tokio::time::sleep(Duration::from_millis(1200)));
    slept.expect("a running query is not idle");
    in_transaction.batch_execute("commit").await.expect("a client in a transaction is not idle");
    assert_eq!(scalar(&long_query, "select 'still here'").await, "still here");
    console.client.simple_query("show pools").await.expect("the admin console has no idle timeout");

    // The pinned client's connection went back to the pool, reset: no
    // connection of the pool has its setting.
    let pool = pool(&app, "app");
    wait_for_pool(&pool, None).await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        let holder = relay::connect(app.rw_addr).await;
        holder.batch_execute("begin").await.unwrap();
        assert_eq!(scalar(&holder, "select current_setting('application_name')").await, "");
        holders.push(holder);
    }
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_client_streaming_copy_or_reading_slowly_is_not_idle() {
    create_table("tmo_copy").await;
    let timeouts = "client_idle_timeout = \"500ms\"\nidle_transaction_timeout = \"500ms\"";
    let app = relay::start_default(cluster(), timeouts).await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&query("begin; copy tmo_copy from stdin")).await;
    assert_eq!(raw.recv().await.expect("BEGIN's CommandComplete").0, b'C');
    assert_eq!(raw.recv().await.expect("CopyInResponse").0, b'G');
    // Six rows, 200 ms apart: 1.2 s in all.
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut data = BytesMut::new();
        data.put_u8(b'd');
        data.put_u32(4 + 2);
        data.put_slice(format!("{n}\n").as_bytes());
        raw.send(&data).await;
    }
    let mut done = BytesMut::new();
    done.put_u8(b'c');
    done.put_u32(4);
    raw.send(&done).await;
    assert_eq!(tags(&raw.until_ready().await), "C Z");
    assert_eq!(tags(&run(&mut raw, "commit").await), "C Z");
    let answer = run(&mut raw, "select count(*) from tmo_copy").await;
    assert_eq!(answer[1].1[6..], b"6"[..], "{answer:?}");

    // 32 MB of rows, not read for 1.2 s, by a client with a small receive
    // buffer: more than the sockets between the server and the client
    // hold, so pgrelay holds the rest back and the client is not idle.
    let mut slow = slow_reader(app.rw_addr).await;
    let rows = 32_000;
    slow.send(&query(&format!("select repeat('x', 1000) from generate_series(1, {rows})"))).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pool(&app, "app_trust").in_use(), 1, "the server is still sending: the test holds");
    let mut received = 0;
    while let Some((tag, _)) = slow.recv().await {
        received += 1;
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(received, rows + 3, "every row, then C and Z");
    assert_eq!(tags(&run(&mut slow, "select 1").await), "T D C Z");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_copy_whose_client_stalls_ends_after_query_timeout_and_the_cancel_wait() {
    // A COPY waiting for its data is a statement in progress (PostgreSQL's
    // idle_in_transaction_session_timeout does not fire then either), so
    // query_timeout is what bounds it. PostgreSQL acts on a cancel only once
    // more data arrives, so the cancel fails, and server_reset_timeout later
    // the server connection is closed: the client's hold on it is bounded.
    create_table("tmo_copy_stall").await;
    let timeouts = "default_pool_size = 1\nidle_transaction_timeout = \"200ms\"\n\
                    query_timeout = \"300ms\"\nserver_reset_timeout = \"500ms\"";
    let app = relay::start_default(cluster(), timeouts).await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let pid = run(&mut raw, "select pg_backend_pid()").await;
    let pid = String::from_utf8_lossy(&pid[1].1[6..]).into_owned();
    raw.send(&query("begin; copy tmo_copy_stall from stdin")).await;
    assert_eq!(raw.recv().await.expect("BEGIN's CommandComplete").0, b'C');
    assert_eq!(raw.recv().await.expect("CopyInResponse").0, b'G');
    let mut data = BytesMut::new();
    data.put_u8(b'd');
    data.put_u32(4 + 2);
    data.put_slice(b"7\n");
    raw.send(&data).await;
    // The client sends no more.
    let stalled_since = Instant::now();
    let ((code, message), at) = farewell(&mut raw).await;
    assert_took(stalled_since, at, Duration::from_millis(800), "the close");
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("query_timeout (300ms)"), "{message}");

    // The connection was closed mid-COPY, never pooled: the row is gone
    // with its transaction, and the next client gets a fresh connection.
    wait_for_backend_state(&pid, "gone").await;
    let (mut next, _) = Raw::login(app.rw_addr, &[]).await;
    let count = run(&mut next, "select count(*), pg_backend_pid()::text from tmo_copy_stall").await;
    assert_eq!(tags(&count), "T D C Z", "{count:?}");
    let row = String::from_utf8_lossy(&count[1].1).into_owned();
    assert!(row.as_bytes()[6..].starts_with(b"0"), "the COPY's row was rolled back: {row:?}");
    assert!(!row.contains(&pid), "another server connection: {row:?} ({pid})");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn reload_turns_each_timeout_on_for_connected_clients_without_dropping_others() {
    let off = "default_pool_size = 4";
    let app = relay::start(Config::parse(&config_text(off)).unwrap()).await;
    let queries = relay::connect(app.rw_addr).await;
    let in_transaction = connect_watched(app.rw_addr).await;
    let idle = connect_watched(app.rw_addr).await;
    let bystander = relay::connect(app.rw_addr).await;
    // Still off: idle for longer than the timeouts will be.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(scalar(&idle.client, "select 'alive'").await, "alive");

    let on = "default_pool_size = 4\nquery_timeout = \"500ms\"\nidle_transaction_timeout = \"500ms\"\n\
              client_idle_timeout = \"2s\"";
    let summary = app.context().apply_config(Config::parse(&config_text(on)).unwrap()).expect("reload");
    assert_eq!(summary.pools_retired, 0, "the timeouts are no pool settings");

    let keep_busy = async {
        // Never idle for long: never disconnected.
        for _ in 0..25 {
            assert_eq!(scalar(&bystander, "select 'busy'").await, "busy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let cancelled = async {
        let started = Instant::now();
        let error = queries.simple_query("select pg_sleep(10)").await.expect_err("cancelled");
        assert_took(started, Instant::now(), TIMEOUT, "57014");
        assert_eq!(sqlstate(&error), "57014");
        assert_eq!(scalar(&queries, "select 'carries on'").await, "carries on");
    };
    let rolled_back = async {
        in_transaction.client.batch_execute("begin").await.unwrap();
        let since = Instant::now();
        let (error, at) = in_transaction.ended_with().await;
        assert_took(since, at, TIMEOUT, "25P03");
        assert_eq!(sqlstate(&error), "25P03");
    };
    let disconnected = async {
        scalar(&idle.client, "select 1").await;
        let since = Instant::now();
        let (error, at) = idle.ended_with().await;
        assert_took(since, at, Duration::from_secs(2), "57P05");
        assert_eq!(sqlstate(&error), "57P05");
    };
    tokio::join!(keep_busy, cancelled, rolled_back, disconnected);

    // And off again.
    app.context().apply_config(Config::parse(&config_text(off)).unwrap()).expect("reload");
    bystander.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    bystander.simple_query("select pg_sleep(0.7)").await.expect("no query_timeout");
    bystander.batch_execute("commit").await.expect("no idle_transaction_timeout");
    app.shutdown(GRACE).await;
}
