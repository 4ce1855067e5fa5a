//! The protocol through pgrelay: simple and extended queries, pipelining,
//! Flush, errors in a batch, COPY both ways, asynchronous messages, cancel.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, TryStreamExt};
use pgrelay::wire;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use crate::support::cluster;
use crate::support::relay::msg::{bind, execute, flush, parse};
use crate::support::relay::{self, error_fields, scalar, sqlstate, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn several_statements_in_one_simple_query() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    let messages = client.simple_query("select 1 as a; select 'two' as b; select 3 as c").await.unwrap();
    let values: Vec<String> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two", "3"]);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn pipelined_batches_with_several_syncs_in_flight() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    for i in 0..3 {
        parse(&mut out, "", &format!("select {i}"));
        bind(&mut out, "");
        execute(&mut out);
        wire::put_sync(&mut out);
    }
    raw.send(&out).await;
    for i in 0..3 {
        let batch = raw.until_ready().await;
        assert_eq!(tags(&batch), "1 2 D C Z", "batch {i}");
        let row = &batch[2].1;
        assert_eq!(&row[row.len() - 1..], i.to_string().as_bytes());
    }
    // tokio-postgres pipelines concurrent queries on one connection too.
    let client = relay::connect(app.rw_addr).await;
    let queries = (0..20).map(|i| {
        let client = &client;
        async move { client.query_one("select $1::int * 2", &[&i]).await.unwrap().get::<_, i32>(0) }
    });
    let doubled = futures_util::future::join_all(queries).await;
    assert_eq!(doubled, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn flush_delivers_answers_before_sync() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    parse(&mut out, "", "select 42");
    flush(&mut out);
    raw.send(&out).await;
    assert_eq!(raw.recv().await.map(|m| m.0), Some(b'1'), "ParseComplete arrives on Flush");
    out.clear();
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "2 D C Z");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn an_error_mid_batch_skips_to_sync_and_the_next_batch_works() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    // Not constant: the error comes from Execute, not from planning in Bind.
    parse(&mut out, "", "select 1/g from generate_series(0, 0) g");
    bind(&mut out, "");
    execute(&mut out);
    parse(&mut out, "", "select 2");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    parse(&mut out, "", "select 3");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    let failed = raw.until_ready().await;
    assert_eq!(tags(&failed), "1 2 E Z");
    assert_eq!(error_fields(&failed[2].1).0, "22012");
    assert_eq!(failed[3].1[..], b"I"[..], "the failed implicit transaction is over");
    assert_eq!(tags(&raw.until_ready().await), "1 2 D C Z");

    // Simple protocol: an error ends the whole multi-statement query.
    let client = relay::connect(app.rw_addr).await;
    let err = client.simple_query("select 1; select 1/0; select 3").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    assert_eq!(scalar(&client, "select 4").await, "4");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn copy_in_and_copy_out() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    client.batch_execute("drop table if exists copy_test; create table copy_test (id int, name text)").await.unwrap();
    let sink = client.copy_in("copy copy_test from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tname-{i}\n"));
    }
    for chunk in data.as_bytes().chunks(7000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 5000);
    assert_eq!(scalar(&client, "select count(*) from copy_test").await, "5000");

    let stream = client.copy_out("copy (select * from copy_test order by id) to stdout").await.unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let copied: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(copied).unwrap(), data);

    // A COPY that fails midway leaves the connection usable.
    let sink = client.copy_in::<_, bytes::Bytes>("copy copy_test from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"not-a-number\tx\n")).await.unwrap();
    let err = sink.finish().await.unwrap_err();
    assert_eq!(sqlstate(&err), "22P02");
    assert_eq!(scalar(&client, "select count(*) from copy_test").await, "5000");
    client.batch_execute("drop table copy_test").await.unwrap();
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn notices_and_parameter_status_reach_the_client() {
    let app = relay::start_default(cluster(), "").await;
    let mut conn = relay::connect_as(app.rw_addr, "app", "app").await.unwrap();
    conn.client.batch_execute("do $$ begin raise notice 'hello from the server'; end $$").await.unwrap();
    match tokio::time::timeout(GRACE, conn.notices.recv()).await {
        Ok(Some(AsyncMessage::Notice(notice))) => assert_eq!(notice.message(), "hello from the server"),
        other => panic!("expected a notice, got {other:?}"),
    }

    let (mut raw, welcome) = Raw::login(app.rw_addr, &[("application_name", "raw-test")]).await;
    let reported = welcome.iter().any(|(t, body)| *t == b'S' && body.starts_with(b"application_name\0raw-test\0"));
    assert!(reported, "login reports the client's own application_name");
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "set application_name = 'renamed'");
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    let changed = answer.iter().any(|(t, body)| *t == b'S' && body.starts_with(b"application_name\0renamed\0"));
    assert!(changed, "ParameterStatus passed through: {}", tags(&answer));
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn terminate_closes_and_returns_the_server_connection() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "select 1");
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "T D C Z");
    out.clear();
    wire::put_terminate(&mut out);
    raw.send(&out).await;
    assert!(raw.closed().await);
    let idle: usize = app.context().pools.all().iter().map(|p| p.idle_count()).sum();
    assert!(idle >= 1, "the server connection went back to the pool");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn cancel_reaches_the_right_query_only() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    let bystander = relay::connect(app.rw_addr).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let result = client.simple_query("select pg_sleep(20)").await;
        (result.map(|_| ()), client)
    });
    let bystander_sleep = tokio::spawn(async move { bystander.simple_query("select pg_sleep(1.5)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (result, client) = sleeping.await.unwrap();
    assert_eq!(sqlstate(&result.unwrap_err()), "57014");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(bystander_sleep.await.unwrap().is_ok(), "another client's query is not cancelled");
    assert_eq!(scalar(&client, "select 1").await, "1");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_declined_and_login_continues() {
    let app = relay::start_default(cluster(), "").await;
    let mut raw = Raw::connect(app.rw_addr).await;
    let request = |code: u32| {
        let mut b = Vec::from(8u32.to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b
    };
    for code in [wire::GSSENC_REQUEST_CODE, wire::SSL_REQUEST_CODE] {
        raw.send(&request(code)).await;
        let mut answer = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
    }
    let mut out = BytesMut::new();
    wire::put_startup_message(&mut out, [(&b"user"[..], &b"app_trust"[..]), (&b"database"[..], &b"app"[..])]);
    raw.send(&out).await;
    assert!(tags(&raw.until_ready().await).ends_with('Z'));
    app.shutdown(GRACE).await;
}

/// ParameterStatus values of the client's own startup settings, from a login's messages.
fn reported(messages: &[(u8, bytes::Bytes)], name: &str) -> Option<String> {
    messages.iter().filter(|(t, _)| *t == b'S').find_map(|(_, body)| {
        let mut parts = body.split(|&b| b == 0);
        let key = parts.next()?;
        (key == name.as_bytes()).then(|| String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned())
    })
}

#[tokio::test]
async fn startup_settings_are_reported_as_the_server_reports_them() {
    let app = relay::start_default(cluster(), "").await;
    let settings = [("client_encoding", "utf8"), ("datestyle", "sql"), ("TimeZone", "europe/paris")];
    let (mut raw, welcome) = Raw::login(app.rw_addr, &settings).await;
    assert_eq!(reported(&welcome, "client_encoding").as_deref(), Some("UTF8"));
    assert_eq!(reported(&welcome, "DateStyle").as_deref(), Some("SQL, MDY"));
    assert_eq!(reported(&welcome, "TimeZone").as_deref(), Some("Europe/Paris"));
    // A second login with the same settings is welcomed the same way.
    let (_, again) = Raw::login(app.rw_addr, &settings).await;
    assert_eq!(reported(&again, "client_encoding").as_deref(), Some("UTF8"));
    let mut out = BytesMut::new();
    out.extend_from_slice(&query_message("show datestyle"));
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "T D C Z");
    // A value the server rejects fails the login, as it does on PostgreSQL.
    let mut bad = Raw::connect(app.rw_addr).await;
    let mut out = BytesMut::new();
    let params: Vec<(&[u8], &[u8])> = vec![
        (b"user", pgrelay::localcluster::TRUST_USER.as_bytes()),
        (b"database", b"app"),
        (b"DateStyle", b"no such style"),
    ];
    wire::put_startup_message(&mut out, params);
    bad.send(&out).await;
    let refused = bad.until_ready().await;
    let error = refused.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_fields(&error.1).0, "22023", "invalid_parameter_value");
    app.shutdown(GRACE).await;
}

fn query_message(sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_query(&mut out, sql);
    out
}

#[tokio::test]
async fn the_servers_own_fatal_is_answered_once_and_the_client_carries_on() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    raw.send(&query_message("select pg_sleep(30) -- fatal once")).await;
    // Wait until the query runs, then end its backend as an operator would.
    let deadline = Instant::now() + GRACE;
    loop {
        let sql = "select pg_terminate_backend(pid) from pg_stat_activity where query like '%-- fatal once' \
                   and pid <> pg_backend_pid()";
        let out = cluster().psql(cluster().primary(), sql).expect("psql");
        if out.contains('t') {
            break;
        }
        assert!(Instant::now() < deadline, "the query never showed up in pg_stat_activity");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The autocommit query may have committed: one 08007, and the client
    // keeps its connection (see tests/topology/survive.rs).
    let answer = raw.until_ready().await;
    let errors: Vec<_> = answer.iter().filter(|(tag, _)| *tag == b'E').map(|(_, body)| error_fields(body)).collect();
    assert_eq!(errors.len(), 1, "exactly one error: {errors:?}");
    assert_eq!(errors[0].0, "08007", "{errors:?}");
    assert!(errors[0].1.contains("terminating connection due to administrator command"), "{errors:?}");
    assert_eq!(answer.last().map(|(tag, body)| (*tag, body.to_vec())), Some((b'Z', b"I".to_vec())));
    raw.send(&query_message("select 1")).await;
    assert_eq!(relay::tags(&raw.until_ready().await), "T D C Z");
    app.shutdown(GRACE).await;
}

/// A client's COPY FROM STDIN fails on a bad row while it has already sent a
/// Sync and a Query behind the data (no CopyDone): every answer still goes to
/// the client that asked, and the next client of the same server connection
/// gets its own rows. (It used to get the first client's.)
#[tokio::test]
async fn a_failed_copy_with_pipelined_sync_and_query_stays_with_its_client() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let setup = relay::connect(app.rw_addr).await;
    setup.batch_execute("drop table if exists copy_fail; create table copy_fail (a int)").await.unwrap();
    setup.batch_execute("grant all on copy_fail to app_trust").await.unwrap();
    drop(setup);
    for bad_row_complete in [true, false] {
        let (mut a, _) = Raw::login(app.rw_addr, &[]).await;
        a.send(&query_message("copy copy_fail from stdin")).await;
        assert_eq!(a.recv().await.map(|m| m.0), Some(b'G'), "CopyInResponse");
        let mut out = BytesMut::new();
        // A complete bad line fails the COPY at once; a partial one leaves
        // the server waiting for more data when the Sync arrives.
        let row: &[u8] = if bad_row_complete { b"not a number\n" } else { b"12" };
        out.extend_from_slice(b"d");
        out.extend_from_slice(&(4 + row.len() as u32).to_be_bytes());
        out.extend_from_slice(row);
        wire::put_sync(&mut out);
        out.extend_from_slice(&query_message("select 'A-after'"));
        a.send(&out).await;
        let b = relay::connect(app.rw_addr).await;
        let b_answer = tokio::spawn(async move { scalar(&b, "select 'B'").await });
        let copy = a.until_ready().await;
        assert_eq!(tags(&copy), "E Z", "the COPY's error and its ReadyForQuery");
        assert_eq!(tags(&a.until_ready().await), "Z", "the Sync's ReadyForQuery");
        let after = a.until_ready().await;
        assert_eq!(tags(&after), "T D C Z");
        assert!(after[1].1.ends_with(b"A-after"), "A gets its own row");
        assert_eq!(b_answer.await.unwrap(), "B", "B gets its own row");
    }
    let check = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&check, "select count(*) from copy_fail").await, "0");
    check.batch_execute("drop table copy_fail").await.unwrap();
    app.shutdown(GRACE).await;
}
