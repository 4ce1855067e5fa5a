//! The signals of the real binary, as PgBouncer defines them: SIGTERM lets
//! each client finish its transaction, SIGINT waits only for running
//! queries, SIGQUIT (or a second stop signal) stops at once, SIGHUP reloads,
//! SIGUSR1 / SIGUSR2 pause and resume.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::common::{bounded, get, metric, wait_until};
use crate::process::Relay;
use crate::support::cluster;
use crate::support::relay::{self, error_fields, scalar, tags, Raw};

/// The drain's bound in these tests' configs.
const GRACE: Duration = Duration::from_secs(5);
/// What "promptly" means for a client that a drain may end at once: well
/// inside the grace, so a client closed only when the grace ran out fails.
const PROMPTLY: Duration = Duration::from_secs(2);

fn config(grace: Duration) -> String {
    relay::config_toml(cluster(), &format!("shutdown_grace = \"{}s\"", grace.as_secs()), "")
}

/// Creates a table of ids on the primary, writable by every test user.
fn create_table(name: &str) {
    let sql = format!("create table {name} (id bigint primary key); grant all on {name} to public");
    tokio::task::block_in_place(|| cluster().psql_db(cluster().primary(), "app", &sql))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// How many rows of `table` the primary has.
fn rows(table: &str) -> usize {
    let sql = format!("select count(*) from {table}");
    let out = tokio::task::block_in_place(|| cluster().psql_db(cluster().primary(), "app", &sql))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    out.trim().parse().unwrap_or_else(|e| panic!("{sql}: {out}: {e}"))
}

/// A logged-in raw client (the trust user) on `addr`.
async fn login(addr: SocketAddr) -> Raw {
    Raw::login(addr, &[]).await.0
}

/// Sends a simple Query without waiting for its answer.
async fn send_query(raw: &mut Raw, sql: &str) {
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_u32((4 + sql.len() + 1) as u32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
    raw.send(&buf).await;
}

/// Runs `sql` and returns the answer up to ReadyForQuery; panics on an
/// ErrorResponse and returns the transaction status ReadyForQuery reported.
async fn query(raw: &mut Raw, sql: &str) -> (Vec<(u8, Bytes)>, u8) {
    send_query(raw, sql).await;
    let answer = raw.until_ready().await;
    if let Some((_, body)) = answer.iter().find(|(tag, _)| *tag == b'E') {
        panic!("{sql}: {:?}", error_fields(body));
    }
    let status = match answer.last() {
        Some((b'Z', body)) => body[0],
        _ => panic!("{sql}: no ReadyForQuery in {}", tags(&answer)),
    };
    (answer, status)
}

/// Expects pgrelay's FATAL 57P01 within `limit`, then the connection's close.
async fn expect_shutdown_farewell(raw: &mut Raw, who: &str, limit: Duration) {
    let message = bounded(&format!("{who} is told pgrelay shuts down"), limit, raw.recv()).await;
    let (tag, body) = message.unwrap_or_else(|| panic!("{who}: closed without an error message"));
    assert_eq!(tag, b'E', "{who}: expected an ErrorResponse, got {}", char::from(tag));
    let (code, text) = error_fields(&body);
    assert_eq!(code, "57P01", "{who}: {text}");
    assert!(raw.closed().await, "{who}: the connection closes");
}

/// Whether a new TCP connection to `addr` is refused now.
async fn refused(addr: SocketAddr) -> Option<()> {
    match tokio::net::TcpStream::connect(addr).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_and_exits_cleanly() {
    create_table("ops_sigterm_t");
    let mut pgrelay = Relay::start("sigterm", &config(GRACE)).await;
    let mut in_transaction = login(pgrelay.rw).await;
    let (_, status) = query(&mut in_transaction, "begin; insert into ops_sigterm_t values (1)").await;
    assert_eq!(status, b'T');
    let mut idle = login(pgrelay.rw).await;
    assert_eq!(query(&mut idle, "select 1").await.1, b'I');

    pgrelay.signal("TERM");
    let signalled = Instant::now();
    wait_until("/readyz turns 503", PROMPTLY, || async { (get(pgrelay.http, "/readyz").await.0 == 503).then_some(()) })
        .await;
    wait_until("new connections are refused", PROMPTLY, || refused(pgrelay.rw)).await;
    expect_shutdown_farewell(&mut idle, "an idle client", PROMPTLY).await;
    let idle_gone = signalled.elapsed();

    // The open transaction carries on to its end, and then the client is let go.
    assert_eq!(query(&mut in_transaction, "insert into ops_sigterm_t values (2)").await.1, b'T');
    let (answer, status) = query(&mut in_transaction, "commit").await;
    assert_eq!((tags(&answer).as_str(), status), ("C Z", b'I'));
    expect_shutdown_farewell(&mut in_transaction, "a client after its commit", PROMPTLY).await;
    let status = pgrelay.exit_status(GRACE).await;
    let exited = signalled.elapsed();
    assert!(status.success(), "SIGTERM ends with status 0, got {status}");
    assert!(exited < GRACE, "exit {exited:?} after SIGTERM, not after the grace ({GRACE:?})");
    assert_eq!(rows("ops_sigterm_t"), 2, "the transaction committed during the drain is on the primary");
    println!("SIGTERM: idle client let go after {idle_gone:?}; exit 0 after {exited:?} (grace {GRACE:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_rolls_back_idle_transactions_and_waits_for_running_queries() {
    create_table("ops_sigint_t");
    let mut pgrelay = Relay::start("sigint", &config(GRACE)).await;
    let mut idle_in_transaction = login(pgrelay.rw).await;
    let (_, status) = query(&mut idle_in_transaction, "begin; insert into ops_sigint_t values (1)").await;
    assert_eq!(status, b'T');
    let mut busy = login(pgrelay.rw).await;
    send_query(&mut busy, "select pg_sleep(2), 'slept'").await;
    // The query must be running on the server before the signal.
    let running = "select count(*) from pg_stat_activity where query like 'select pg_sleep(2)%' and state = 'active'";
    wait_until("the slow query runs", Duration::from_secs(5), || async {
        let out = tokio::task::block_in_place(|| cluster().psql_db(cluster().primary(), "app", running));
        (out.ok()?.trim() == "1").then_some(())
    })
    .await;

    pgrelay.signal("INT");
    let signalled = Instant::now();
    expect_shutdown_farewell(&mut idle_in_transaction, "a client idle in a transaction", PROMPTLY).await;
    let idle_gone = signalled.elapsed();
    let answer = busy.until_ready().await;
    assert_eq!(tags(&answer), "T D C Z", "the running query finishes: {answer:?}");
    let query_done = signalled.elapsed();
    expect_shutdown_farewell(&mut busy, "a client after its query", PROMPTLY).await;
    assert!(idle_gone < query_done, "the idle transaction did not wait for the running query");
    let status = pgrelay.exit_status(GRACE).await;
    assert!(status.success(), "SIGINT ends with status 0, got {status}");
    assert_eq!(rows("ops_sigint_t"), 0, "the abandoned transaction was rolled back");
    println!("SIGINT: idle transaction ended after {idle_gone:?}, running query finished after {query_done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let mut pgrelay = Relay::start("sighup", &config(GRACE)).await;
    let ok = r#"pgrelay_config_reloads_total{result="ok"}"#;
    let failed = r#"pgrelay_config_reloads_total{result="error"}"#;
    let (ok_before, failed_before) = (metric(pgrelay.http, ok).await, metric(pgrelay.http, failed).await);
    let changed = relay::config_toml(cluster(), "shutdown_grace = \"5s\"\ndefault_pool_size = 7", "");
    pgrelay.config.write(&changed);
    pgrelay.signal("HUP");
    wait_until("the reload is counted", PROMPTLY, || async {
        (metric(pgrelay.http, ok).await == ok_before + 1.0).then_some(())
    })
    .await;
    pgrelay.config.write(&changed.replacen("[pool]", "[pool", 1));
    pgrelay.signal("HUP");
    wait_until("the failed reload is counted", PROMPTLY, || async {
        (metric(pgrelay.http, failed).await == failed_before + 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(pgrelay.http, ok).await, ok_before + 1.0);
    assert!(pgrelay.log_text().contains("keeping the running configuration"), "{}", pgrelay.log_text());
    // Still serving, with the configuration of the good reload.
    let client = relay::connect(pgrelay.rw).await;
    assert_eq!(scalar(&client, "select 1").await, "1");
    drop(client);
    pgrelay.signal("TERM");
    assert!(pgrelay.exit_status(GRACE).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let mut pgrelay = Relay::start("sigusr", &config(GRACE)).await;
    let client = relay::connect(pgrelay.rw).await;
    assert_eq!(scalar(&client, "select 1").await, "1");
    pgrelay.signal("USR1");
    wait_until("pgrelay pauses", PROMPTLY, || async {
        (metric(pgrelay.http, "pgrelay_paused").await == 1.0).then_some(())
    })
    .await;
    let held = tokio::spawn(async move { scalar(&client, "select 2").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "a paused pgrelay holds the next transaction");
    pgrelay.signal("USR2");
    let answer = bounded("the held query is answered after SIGUSR2", PROMPTLY, held).await;
    assert_eq!(answer.expect("held query task"), "2");
    assert_eq!(metric(pgrelay.http, "pgrelay_paused").await, 0.0);
    pgrelay.signal("TERM");
    assert!(pgrelay.exit_status(GRACE).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_stops_at_once() {
    create_table("ops_sigquit_t");
    let mut pgrelay = Relay::start("sigquit", &config(GRACE)).await;
    let mut in_transaction = login(pgrelay.rw).await;
    assert_eq!(query(&mut in_transaction, "begin; insert into ops_sigquit_t values (1)").await.1, b'T');
    pgrelay.signal("QUIT");
    let signalled = Instant::now();
    expect_shutdown_farewell(&mut in_transaction, "a client in a transaction", PROMPTLY).await;
    let status = pgrelay.exit_status(PROMPTLY).await;
    assert!(status.success(), "SIGQUIT ends with status 0, got {status}");
    assert!(signalled.elapsed() < PROMPTLY);
    assert_eq!(rows("ops_sigquit_t"), 0, "the open transaction was rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_a_drain_stops_at_once() {
    // A long grace: only the second signal can end this drain quickly.
    let long_grace = Duration::from_secs(60);
    let mut pgrelay = Relay::start("sigterm2", &config(long_grace)).await;
    let mut in_transaction = login(pgrelay.rw).await;
    assert_eq!(query(&mut in_transaction, "begin; select 1").await.1, b'T');
    pgrelay.signal("TERM");
    wait_until("/readyz turns 503", PROMPTLY, || async { (get(pgrelay.http, "/readyz").await.0 == 503).then_some(()) })
        .await;
    let waited = tokio::time::timeout(Duration::from_millis(300), in_transaction.recv()).await;
    assert!(waited.is_err(), "the drain waits for the open transaction: {waited:?}");
    pgrelay.signal("TERM");
    let signalled = Instant::now();
    expect_shutdown_farewell(&mut in_transaction, "a client in a transaction", PROMPTLY).await;
    let status = pgrelay.exit_status(PROMPTLY).await;
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < PROMPTLY, "{:?}", signalled.elapsed());
}
