//! A plain session `SET` between transactions is followed, not pinned: the
//! client keeps its value on whichever server connection runs its next
//! transaction, and no other client ever sees it (pgJDBC's login SETs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pgrelay::wire;

use crate::support::cluster;
use crate::support::relay::msg::{bind, execute, parse};
use crate::support::relay::{self, error_fields, metric, scalar, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// `sql` as pgJDBC sends it: Parse (unnamed), Bind, Describe (portal), Execute, Sync.
async fn extended(raw: &mut Raw, sql: &str) -> Vec<(u8, Bytes)> {
    let mut out = BytesMut::new();
    parse(&mut out, "", sql);
    bind(&mut out, "");
    out.put_u8(b'D');
    out.put_u32(6);
    out.put_slice(b"P\0");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    raw.until_ready().await
}

/// Bind, Execute and Sync of the client's statement `name`.
async fn bound_again(raw: &mut Raw, name: &str) -> Vec<(u8, Bytes)> {
    let mut out = BytesMut::new();
    bind(&mut out, name);
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    raw.until_ready().await
}

async fn query(raw: &mut Raw, sql: &str) -> Vec<(u8, Bytes)> {
    let mut out = BytesMut::new();
    wire::put_query(&mut out, sql);
    raw.send(&out).await;
    raw.until_ready().await
}

/// The first row of `sql`'s answer, as text.
async fn row(raw: &mut Raw, sql: &str) -> Vec<String> {
    let answer = query(raw, sql).await;
    let (_, body) = answer.iter().find(|(t, _)| *t == b'D').unwrap_or_else(|| panic!("{sql}: {}", tags(&answer)));
    let mut rest = &body[2..];
    let mut values = Vec::new();
    while rest.len() >= 4 {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        let len = usize::try_from(len).unwrap_or(0);
        values.push(String::from_utf8_lossy(&rest[4..4 + len]).into_owned());
        rest = &rest[4 + len..];
    }
    values
}

/// Whether the answer reports `name` as `value` in a ParameterStatus.
fn reports(answer: &[(u8, Bytes)], name: &str, value: &str) -> bool {
    let wanted = format!("{name}\0{value}\0");
    answer.iter().any(|(t, body)| *t == b'S' && body[..] == *wanted.as_bytes())
}

async fn pinned_by_set(app: &pgrelay::RunningApp) -> f64 {
    metric(app.http_addr, "pgrelay_pinned_clients_total{reason=\"SET\"}").await.unwrap_or(0.0)
}

/// Polls until `in_use` server connections of the trust user's pool are leased (bounded).
async fn wait_in_use(app: &pgrelay::RunningApp, in_use: usize) {
    let deadline = Instant::now() + GRACE;
    loop {
        let pools = app.context().pools.all();
        let leased: usize = pools.iter().filter(|p| p.key.node == "pg0").map(|p| p.in_use()).sum();
        if leased == in_use {
            return;
        }
        assert!(Instant::now() < deadline, "{leased} server connections in use, not {in_use}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn login(addr: SocketAddr) -> Raw {
    Raw::login(addr, &[]).await.0
}

#[tokio::test]
async fn pgjdbc_login_settings_do_not_pin_and_follow_the_client() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let defaults = row(&mut login(app.rw_addr).await, "select current_setting('extra_float_digits')").await;
    // One connection held, so the client's SETs run on the other.
    let mut holder = login(app.rw_addr).await;
    assert_eq!(tags(&query(&mut holder, "begin").await), "C Z");
    let held = row(&mut holder, "select pg_backend_pid()").await;

    let mut jdbc = login(app.rw_addr).await;
    let answer = extended(&mut jdbc, "SET extra_float_digits = 3").await;
    assert_eq!(tags(&answer), "1 2 n C Z");
    let answer = extended(&mut jdbc, "SET application_name = 'PostgreSQL JDBC Driver'").await;
    assert_eq!(tags(&answer), "1 2 n C S Z");
    assert!(reports(&answer, "application_name", "PostgreSQL JDBC Driver"), "its own SET is reported once");
    assert_eq!(pinned_by_set(&app).await, 0.0, "not pinned");
    // Its connection went back to the pool: only the holder's is leased.
    wait_in_use(&app, 1).await;

    // The other connection taken, the holder's given back: the client's
    // next transaction runs where it never ran a SET.
    let mut other = login(app.rw_addr).await;
    assert_eq!(tags(&query(&mut other, "begin").await), "C Z");
    let set_on = row(&mut other, "select pg_backend_pid()").await;
    assert_ne!(set_on, held);
    let other_sees =
        row(&mut other, "select current_setting('extra_float_digits'), current_setting('application_name')");
    assert_eq!(other_sees.await, [defaults[0].as_str(), ""], "the SETs' connection, reset for another client");
    assert_eq!(tags(&query(&mut holder, "commit").await), "C Z");
    let sql = "select pg_backend_pid(), current_setting('extra_float_digits'), current_setting('application_name')";
    let answer = query(&mut jdbc, sql).await;
    assert!(!answer.iter().any(|(t, _)| *t == b'S'), "no stray ParameterStatus: {}", tags(&answer));
    let seen = row(&mut jdbc, sql).await;
    assert_eq!(seen, [held[0].as_str(), "3", "PostgreSQL JDBC Driver"], "its settings on the other connection");
    assert_eq!(tags(&query(&mut other, "commit").await), "C Z");
    // And back on the first.
    assert_eq!(tags(&query(&mut holder, "begin").await), "C Z");
    let pid = row(&mut holder, "select pg_backend_pid()").await;
    let seen = row(&mut jdbc, sql).await;
    assert_ne!(seen[0], pid[0]);
    assert_eq!(seen[1..], ["3", "PostgreSQL JDBC Driver"]);
    assert_eq!(row(&mut holder, "select current_setting('extra_float_digits')").await, defaults);
    assert_eq!(pinned_by_set(&app).await, 0.0);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn clients_sharing_one_connection_never_see_each_others_settings() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let (mut a, mut b, mut c) = (login(app.rw_addr).await, login(app.rw_addr).await, login(app.rw_addr).await);
    let default_path = row(&mut c, "select current_setting('search_path')").await;
    assert_eq!(tags(&query(&mut a, "SET search_path = a_schema").await), "C Z");
    let pid = row(&mut a, "select pg_backend_pid()").await;
    assert_eq!(row(&mut b, "select current_setting('search_path')").await, default_path);
    assert_eq!(row(&mut a, "select current_setting('search_path')").await, ["a_schema"]);
    assert_eq!(row(&mut b, "begin; select current_setting('search_path')").await, default_path);
    assert_eq!(tags(&query(&mut b, "commit").await), "C Z");
    assert_eq!(row(&mut a, "select current_setting('search_path')").await, ["a_schema"]);

    // The same setting, different values, alternating on one connection.
    for round in 1..=20 {
        let (ours, theirs) = (format!("{}ms", 1000 + round), format!("{}ms", 2000 + round));
        assert_eq!(tags(&query(&mut a, &format!("SET statement_timeout = '{ours}'")).await), "C Z");
        let answer = extended(&mut b, &format!("set session statement_timeout to '{theirs}'")).await;
        assert_eq!(tags(&answer), "1 2 n C Z");
        let sql = "select pg_backend_pid(), current_setting('statement_timeout')";
        assert_eq!(row(&mut a, sql).await, [pid[0].clone(), ours.clone()], "round {round}");
        assert_eq!(row(&mut b, sql).await, [pid[0].clone(), theirs.clone()], "round {round}");
        assert_eq!(row(&mut c, sql).await, [pid[0].clone(), "0".to_owned()], "round {round}");
        assert_eq!(row(&mut a, "select current_setting('search_path')").await, ["a_schema"]);
    }
    assert_eq!(pinned_by_set(&app).await, 0.0);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_failed_set_changes_nothing_and_other_sets_still_pin() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let mut client = login(app.rw_addr).await;
    let default = row(&mut client, "select current_setting('extra_float_digits')").await;
    let answer = query(&mut client, "SET extra_float_digits = 99").await;
    let (_, body) = answer.iter().find(|(t, _)| *t == b'E').expect("the server's error");
    assert_eq!(error_fields(body).0, "22023");
    let answer = extended(&mut client, "SET extra_float_digits = 99").await;
    assert!(answer.iter().any(|(t, _)| *t == b'E'), "{}", tags(&answer));
    assert_eq!(row(&mut client, "select current_setting('extra_float_digits')").await, default);
    // SET LOCAL ends with its transaction.
    assert_eq!(tags(&query(&mut client, "begin; set local statement_timeout = '7s'; commit").await), "C C C Z");
    assert_eq!(row(&mut client, "select current_setting('statement_timeout')").await, ["0"]);
    assert_eq!(pinned_by_set(&app).await, 0.0);

    // With other statements, in a block, or behind an unanswered query: pinned.
    for (round, sql) in ["SET work_mem = '5MB'; select 1", "begin; SET work_mem = '5MB'; commit"].iter().enumerate() {
        let mut client = login(app.rw_addr).await;
        assert_eq!(query(&mut client, sql).await.last().map(|(t, _)| *t), Some(b'Z'));
        assert_eq!(pinned_by_set(&app).await, round as f64 + 1.0, "{sql}");
    }
    let mut client = login(app.rw_addr).await;
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "SET work_mem = '5MB'");
    wire::put_query(&mut out, "select current_setting('work_mem')");
    client.send(&out).await;
    assert_eq!(tags(&client.until_ready().await), "C Z");
    assert_eq!(tags(&client.until_ready().await), "T D C Z");
    assert_eq!(pinned_by_set(&app).await, 3.0, "a SET pipelined with more");

    // The unnamed SET statement, bound again in a later batch, runs where
    // pgrelay would not follow it: that pins.
    let mut client = login(app.rw_addr).await;
    assert_eq!(tags(&extended(&mut client, "SET work_mem = '6MB'").await), "1 2 n C Z");
    assert_eq!(pinned_by_set(&app).await, 3.0);
    assert_eq!(tags(&bound_again(&mut client, "").await), "2 C Z");
    assert_eq!(pinned_by_set(&app).await, 4.0, "the unnamed SET bound again");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_set_application_name_keeps_the_client_address_under_add_host() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\napplication_name_add_host = true").await;
    let mut client = login(app.rw_addr).await;
    let answer = extended(&mut client, "SET application_name = 'jdbc'").await;
    assert!(reports(&answer, "application_name", "jdbc"), "{}", tags(&answer));
    let mut other = login(app.rw_addr).await;
    let theirs = row(&mut other, "select current_setting('application_name')").await;
    assert!(theirs[0].starts_with("app - 127.0.0.1:"), "{theirs:?}");
    let answer = query(&mut client, "select current_setting('application_name')").await;
    assert!(!answer.iter().any(|(t, _)| *t == b'S'), "no stray ParameterStatus: {}", tags(&answer));
    let ours = row(&mut client, "select current_setting('application_name')").await;
    assert!(ours[0].starts_with("jdbc - 127.0.0.1:"), "{ours:?}");
    assert_eq!(pinned_by_set(&app).await, 0.0);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn statements_parsed_after_a_set_search_path_resolve_under_it() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let setup = relay::connect(app.rw_addr).await;
    setup
        .batch_execute(
            "drop schema if exists tracked_a cascade; drop schema if exists tracked_b cascade; \
             create schema tracked_a; create schema tracked_b; \
             create table tracked_a.t as select 'a'::text as v; create table tracked_b.t as select 'b'::text as v; \
             grant usage on schema tracked_a, tracked_b to public; \
             grant select on all tables in schema tracked_a, tracked_b to public",
        )
        .await
        .unwrap();
    let prepared = |name: &str| {
        let mut out = BytesMut::new();
        parse(&mut out, name, "select v from t");
        bind(&mut out, name);
        execute(&mut out);
        wire::put_sync(&mut out);
        out
    };
    let (mut a, _) = Raw::login(app.rw_addr, &[("search_path", "tracked_a")]).await;
    let (mut b, _) = Raw::login(app.rw_addr, &[("search_path", "tracked_a")]).await;
    a.send(&prepared("s")).await;
    let answer = a.until_ready().await;
    assert!(answer.iter().any(|(t, body)| *t == b'D' && body.ends_with(b"a")), "{}", tags(&answer));
    assert_eq!(tags(&query(&mut b, "set search_path = tracked_b").await), "C Z");
    b.send(&prepared("s")).await;
    let answer = b.until_ready().await;
    assert!(answer.iter().any(|(t, body)| *t == b'D' && body.ends_with(b"b")), "{}", tags(&answer));
    // And the first client's statement still reads its own schema.
    let answer = bound_again(&mut a, "s").await;
    assert!(answer.iter().any(|(t, body)| *t == b'D' && body.ends_with(b"a")), "{}", tags(&answer));
    assert_eq!(scalar(&setup, "select 1").await, "1");
    setup.batch_execute("drop schema tracked_a cascade; drop schema tracked_b cascade").await.unwrap();
    assert_eq!(pinned_by_set(&app).await, 0.0);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_client_follows_at_most_64_settings_then_pins() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let mut client = login(app.rw_addr).await;
    for i in 0..64 {
        assert_eq!(tags(&query(&mut client, &format!("SET tracked.n{i} = 'v{i}'")).await), "C Z");
    }
    // A name it already has is still followed.
    assert_eq!(tags(&query(&mut client, "SET tracked.n0 = 'again'").await), "C Z");
    assert_eq!(pinned_by_set(&app).await, 0.0);
    assert_eq!(tags(&query(&mut client, "SET tracked.n64 = 'v64'").await), "C Z");
    assert_eq!(pinned_by_set(&app).await, 1.0, "the 65th setting pins");
    let seen = row(&mut client, "select current_setting('tracked.n0'), current_setting('tracked.n64')").await;
    assert_eq!(seen, ["again", "v64"]);
    app.shutdown(GRACE).await;
}
