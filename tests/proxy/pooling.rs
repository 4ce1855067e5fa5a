//! Transaction and session pooling: sharing, settings that follow the
//! client, limits, and clients that vanish in the middle of a transaction.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgrelay::wire;

use crate::support::cluster;
use crate::support::relay::{self, error_fields, scalar, sqlstate, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn clients_share_one_server_connection_in_transaction_mode() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(relay::connect(app.rw_addr).await);
    }
    let mut pids = std::collections::HashSet::new();
    for round in 0..3 {
        for client in &clients {
            pids.insert(scalar(client, &format!("select pg_backend_pid() + {round} - {round}")).await);
        }
    }
    assert_eq!(pids.len(), 1, "one server connection serves all four clients: {pids:?}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn startup_settings_follow_the_client_to_any_server_connection() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let connect = |name: &'static str, tz: &'static str, path: &'static str| {
        let conn_str = format!(
            "{} application_name={name} options='-c TimeZone={tz} -c search_path={path}'",
            relay::conn_string(app.rw_addr, "app", "app")
        );
        async move { relay::connect_with(&conn_str).await.unwrap().client }
    };
    let a = connect("client-a", "UTC", "a_schema").await;
    let b = connect("client-b", "Asia/Tokyo", "b_schema,public").await;
    let query = "select current_setting('application_name') || '|' || current_setting('TimeZone') || '|' || current_setting('search_path') || '|' || pg_backend_pid()";
    for _ in 0..3 {
        let got_a = scalar(&a, query).await;
        let got_b = scalar(&b, query).await;
        assert!(got_a.starts_with("client-a|UTC|a_schema|"), "{got_a}");
        assert!(got_b.starts_with("client-b|Asia/Tokyo|b_schema,public|"), "{got_b}");
        assert_eq!(got_a.rsplit('|').next(), got_b.rsplit('|').next(), "same server connection");
    }
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn session_mode_resets_the_connection_before_the_next_client() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nmode = \"session\"").await;
    let a = relay::connect(app.rw_addr).await;
    a.batch_execute("set work_mem = '77MB'; prepare p as select 1").await.unwrap();
    let pid = scalar(&a, "select pg_backend_pid()").await;
    drop(a);
    let b = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&b, "select pg_backend_pid()").await, pid, "the same server connection");
    assert_eq!(scalar(&b, "select current_setting('work_mem')").await, "4MB", "DISCARD ALL ran");
    assert_eq!(scalar(&b, "select count(*) from pg_prepared_statements").await, "0");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn session_state_pins_the_client_and_is_discarded_afterwards() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let pinned = relay::connect(app.rw_addr).await;
    // set_config(..., false) pins (a plain SET is followed instead: tracked_settings.rs).
    pinned.batch_execute("select set_config('work_mem', '77MB', false)").await.unwrap();
    let other = relay::connect(app.rw_addr).await;
    for _ in 0..3 {
        assert_eq!(scalar(&pinned, "select current_setting('work_mem')").await, "77MB");
        assert_eq!(scalar(&other, "select current_setting('work_mem')").await, "4MB");
    }
    drop(pinned);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..4 {
        let c = relay::connect(app.rw_addr).await;
        assert_eq!(scalar(&c, "select current_setting('work_mem')").await, "4MB");
    }
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn session_state_can_be_refused() {
    let app = relay::start_default(cluster(), "session_state = \"refuse\"").await;
    let client = relay::connect(app.rw_addr).await;
    let err = client.batch_execute("reset work_mem").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err}");
    assert!(err.as_db_error().unwrap().message().contains("SET"), "{err}");
    // A plain SET is followed, not refused.
    client.batch_execute("set work_mem = '77MB'").await.unwrap();
    assert_eq!(scalar(&client, "select current_setting('work_mem')").await, "77MB");
    client.batch_execute("set work_mem = '4MB'").await.unwrap();
    client.batch_execute("begin; set local work_mem = '77MB'; commit").await.unwrap();
    assert_eq!(scalar(&client, "select current_setting('work_mem')").await, "4MB");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn max_client_conn_refuses_the_extra_client_with_53300() {
    let app = relay::start_default(cluster(), "max_client_conn = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(relay::connect(app.rw_addr).await);
    }
    let err = relay::connect_as(app.rw_addr, "app", "app").await.err().expect("fourth client refused");
    assert_eq!(sqlstate(&err), "53300", "{err}");
    assert!(relay::message(&err).contains("max_client_conn"), "{err:?}");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&again, "select 1").await, "1");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn query_wait_timeout_gives_a_clear_error_and_the_proxy_stays_healthy() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nquery_wait_timeout = \"1s\"").await;
    let holder = relay::connect(app.rw_addr).await;
    holder.batch_execute("begin").await.unwrap();
    let waiter = relay::connect(app.rw_addr).await;
    let started = Instant::now();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "{waited:?}");
    assert!(relay::message(&err).contains("query_wait_timeout"), "{err:?}");
    holder.batch_execute("commit").await.unwrap();
    let next = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&next, "select 1").await, "1");
    app.shutdown(GRACE).await;
}

/// Logs in as the trust user and leaves a transaction with an uncommitted
/// row open, then drops the socket without Terminate.
async fn vanish_mid_transaction(addr: std::net::SocketAddr, tag: &str, then: &str) {
    let (mut raw, _) = Raw::login(addr, &[]).await;
    let mut out = BytesMut::new();
    wire::put_query(&mut out, &format!("begin; insert into vanish_test values ('{tag}')"));
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(answer.last().unwrap().1[..], b"T"[..], "in a transaction: {}", tags(&answer));
    if !then.is_empty() {
        out.clear();
        wire::put_query(&mut out, then);
        raw.send(&out).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(raw);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_transaction_leaves_nothing_behind() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nserver_reset_timeout = \"3s\"").await;
    let setup = relay::connect_as(app.rw_addr, "app_trust", "").await.unwrap().client;
    setup.batch_execute("drop table if exists vanish_test; create table vanish_test (tag text)").await.unwrap();
    drop(setup);
    // Idle in a transaction, and in the middle of a query.
    vanish_mid_transaction(app.rw_addr, "idle", "").await;
    vanish_mid_transaction(app.rw_addr, "busy", "select pg_sleep(1)").await;
    for _ in 0..3 {
        let (mut next, _) = Raw::login(app.rw_addr, &[]).await;
        let mut out = BytesMut::new();
        wire::put_query(&mut out, "select count(*) from vanish_test");
        next.send(&out).await;
        let answer = next.until_ready().await;
        assert_eq!(tags(&answer), "T D C Z", "{answer:?}");
        assert!(answer[1].1.ends_with(b"0"), "no row was committed: {answer:?}");
        assert_eq!(answer[3].1[..], b"I"[..], "the next client is not inside someone else's transaction");
    }
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn an_error_inside_a_transaction_keeps_the_client_in_it_until_rollback() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "begin; select 1/0");
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(error_fields(&answer[answer.len() - 2].1).0, "22012");
    assert_eq!(answer.last().unwrap().1[..], b"E"[..]);
    // Another client waits for the connection, then gets it clean.
    let other = relay::connect_as(app.rw_addr, "app_trust", "").await.unwrap().client;
    let waiting = tokio::spawn(async move { scalar(&other, "select 'other'").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the failed transaction still holds the only connection");
    out.clear();
    wire::put_query(&mut out, "rollback");
    raw.send(&out).await;
    assert_eq!(raw.until_ready().await.last().unwrap().1[..], b"I"[..]);
    assert_eq!(waiting.await.unwrap(), "other");
    app.shutdown(GRACE).await;
}

/// A pinned client's `DISCARD ALL` / `RESET ALL` bring its settings back to
/// its startup values, as on a direct connection (not to the server's).
#[tokio::test]
async fn a_pinned_clients_reset_returns_to_its_startup_settings() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) =
        Raw::login(app.rw_addr, &[("search_path", "pg_catalog, public"), ("application_name", "mine")]).await;
    let run = |sql: &'static str| {
        let mut out = BytesMut::new();
        wire::put_query(&mut out, sql);
        out
    };
    for reset in ["discard all", "reset all", "reset search_path"] {
        raw.send(&run("select set_config('app.x', 'pinned', false)")).await;
        raw.until_ready().await;
        raw.send(&run(reset)).await;
        let answer = raw.until_ready().await;
        assert_eq!(answer.iter().filter(|(t, _)| *t != b'S').count(), 2, "{reset}: CommandComplete, ReadyForQuery");
        raw.send(&run("select current_setting('search_path'), current_setting('application_name')")).await;
        let mut answer = raw.until_ready().await;
        // The last application_name the client was told of is its own again.
        let reported: Vec<_> =
            answer.iter().filter(|(t, b)| *t == b'S' && b.starts_with(b"application_name\0")).collect();
        if let Some((_, last)) = reported.last() {
            assert_eq!(&last[..], b"application_name\0mine\0", "{reset}");
        }
        answer.retain(|(t, _)| *t != b'S');
        assert_eq!(tags(&answer), "T D C Z", "{reset}");
        assert!(answer[1].1.windows(18).any(|w| w == b"pg_catalog, public"), "{reset}: {answer:?}");
        assert!(answer[1].1.ends_with(b"mine"), "{reset}: {answer:?}");
    }
    app.shutdown(GRACE).await;
}
