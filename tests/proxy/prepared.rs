//! Named prepared statements under transaction pooling: a statement a
//! client prepared follows it to whichever server connection it gets.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgrelay::wire;

use crate::support::cluster;
use crate::support::relay::msg::{bind_execute, parse};
use crate::support::relay::{self, error_fields, scalar, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

fn statement_op(buf: &mut BytesMut, tag: u8, name: &str) {
    wire::put_statement_op(buf, tag, name.as_bytes());
}

async fn exchange(raw: &mut Raw, build: impl FnOnce(&mut BytesMut)) -> Vec<(u8, bytes::Bytes)> {
    let mut out = BytesMut::new();
    build(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    raw.until_ready().await
}

/// A simple query (no Sync: it is its own sync point).
async fn simple(raw: &mut Raw, sql: &str) -> Vec<(u8, bytes::Bytes)> {
    let mut out = BytesMut::new();
    wire::put_query(&mut out, sql);
    raw.send(&out).await;
    raw.until_ready().await
}

fn last_value(messages: &[(u8, bytes::Bytes)]) -> String {
    let row = &messages.iter().find(|(t, _)| *t == b'D').expect("a DataRow").1;
    // One column: count(2) + length(4) + value.
    String::from_utf8(row[6..].to_vec()).unwrap()
}

#[tokio::test]
async fn many_clients_prepare_once_and_execute_many_times() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let mut tasks = Vec::new();
    for n in 0..8i32 {
        let addr = app.rw_addr;
        tasks.push(tokio::spawn(async move {
            let client = relay::connect(addr).await;
            let stmt = client.prepare(&format!("select $1::int + {n}")).await.unwrap();
            let shared = client.prepare("select $1::text || '!'").await.unwrap();
            for i in 0..25i32 {
                let row = client.query_one(&stmt, &[&i]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + n);
                let row = client.query_one(&shared, &[&format!("c{n}")]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("c{n}!"));
            }
            // Inside an explicit transaction too.
            let mut client = client;
            let tx = client.transaction().await.unwrap();
            assert_eq!(tx.query_one(&stmt, &[&100i32]).await.unwrap().get::<_, i32>(0), 100 + n);
            tx.commit().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn describe_and_bind_on_a_connection_that_never_saw_the_parse() {
    let app = relay::start_default(cluster(), "default_pool_size = 2").await;
    let (mut a, _) = Raw::login(app.rw_addr, &[]).await;
    let (mut b, _) = Raw::login(app.rw_addr, &[]).await;
    assert_eq!(tags(&exchange(&mut a, |o| parse(o, "s1", "select $1::int as doubled")).await), "1 Z");
    // b takes the connection a prepared on (the most recently used one) and keeps it.
    assert_eq!(tags(&simple(&mut b, "begin").await), "C Z");
    let pid_b = last_value(&simple(&mut b, "select pg_backend_pid()").await);
    // A lone Describe of s1 now lands on the other connection.
    let described = exchange(&mut a, |o| statement_op(o, b'D', "s1")).await;
    assert_eq!(tags(&described), "t T Z", "ParameterDescription and RowDescription");
    let pid_a = last_value(&simple(&mut a, "begin; select pg_backend_pid()").await);
    assert_ne!(pid_a, pid_b, "a ran on a different server connection");
    // Bind + Execute with a parameter, while a still holds that connection.
    let executed = exchange(&mut a, |o| {
        let mut rest = vec![0, 0, 0, 1];
        rest.extend_from_slice(&2i32.to_be_bytes());
        rest.extend_from_slice(b"21");
        rest.extend_from_slice(&[0, 0]);
        wire::put_bind_renamed(o, b"", b"s1", &rest);
        o.put_u8(b'E');
        o.put_u32(9);
        o.put_u8(0);
        o.put_u32(0);
    })
    .await;
    assert_eq!(tags(&executed), "2 D C Z");
    simple(&mut a, "commit").await;
    simple(&mut b, "commit").await;

    // Close forgets the client's name; the server says it no longer exists.
    assert_eq!(tags(&exchange(&mut a, |o| statement_op(o, b'C', "s1")).await), "3 Z");
    let gone = exchange(&mut a, |o| bind_execute(o, "s1")).await;
    assert_eq!(tags(&gone), "E Z");
    assert_eq!(error_fields(&gone[0].1).0, "26000");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn the_same_name_means_different_statements_for_different_clients() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let (mut a, _) = Raw::login(app.rw_addr, &[]).await;
    let (mut b, _) = Raw::login(app.rw_addr, &[]).await;
    exchange(&mut a, |o| parse(o, "q", "select 'from a'")).await;
    exchange(&mut b, |o| parse(o, "q", "select 'from b'")).await;
    for _ in 0..3 {
        assert_eq!(last_value(&exchange(&mut a, |o| bind_execute(o, "q")).await), "from a");
        assert_eq!(last_value(&exchange(&mut b, |o| bind_execute(o, "q")).await), "from b");
    }
    // Re-using a name after Close, with new SQL.
    exchange(&mut a, |o| statement_op(o, b'C', "q")).await;
    exchange(&mut a, |o| parse(o, "q", "select 'a again'")).await;
    assert_eq!(last_value(&exchange(&mut a, |o| bind_execute(o, "q")).await), "a again");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_failed_parse_mid_batch_keeps_the_statements_before_it() {
    let app = relay::start_default(cluster(), "default_pool_size = 1").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let answer = exchange(&mut raw, |o| {
        parse(o, "good", "select 'good'");
        parse(o, "bad", "selec nonsense");
        bind_execute(o, "good");
    })
    .await;
    assert_eq!(tags(&answer), "1 E Z");
    assert_eq!(error_fields(&answer[1].1).0, "42601");
    assert_eq!(last_value(&exchange(&mut raw, |o| bind_execute(o, "good")).await), "good");
    let bad = exchange(&mut raw, |o| bind_execute(o, "bad")).await;
    assert_eq!(tags(&bad), "E Z", "the failed statement does not exist");
    // A second client can still prepare and use the same text.
    let client = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&client, "select 'still fine'").await, "still fine");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn preparing_a_known_statement_needs_no_free_server_connection() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nquery_wait_timeout = \"2s\"").await;
    let (mut first, _) = Raw::login(app.rw_addr, &[]).await;
    assert_eq!(tags(&exchange(&mut first, |o| parse(o, "p", "select 'known'")).await), "1 Z");
    // The only server connection is now busy inside a transaction ...
    let (mut holder, _) = Raw::login(app.rw_addr, &[]).await;
    assert_eq!(tags(&simple(&mut holder, "begin").await), "C Z");
    // ... yet another client can prepare the same statement (as libpq's
    // synchronous PQprepare does) and close it, answered at once.
    let (mut second, _) = Raw::login(app.rw_addr, &[]).await;
    let started = std::time::Instant::now();
    assert_eq!(tags(&exchange(&mut second, |o| parse(o, "mine", "select 'known'")).await), "1 Z");
    assert_eq!(tags(&exchange(&mut second, |o| statement_op(o, b'C', "other")).await), "3 Z");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // An unknown statement still goes to a server, which validates it.
    let (mut third, _) = Raw::login(app.rw_addr, &[]).await;
    let pending = tokio::spawn(async move { tags(&exchange(&mut third, |o| parse(o, "x", "selec 1")).await) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "an unknown statement waits for a server");
    simple(&mut holder, "commit").await;
    assert_eq!(pending.await.unwrap(), "E Z");
    // Executing runs on a server, where the statement is prepared on demand.
    assert_eq!(last_value(&exchange(&mut second, |o| bind_execute(o, "mine")).await), "known");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_client_beyond_its_statement_limit_gets_53400_and_keeps_the_rest() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nmax_client_prepared_statements = 3").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    for n in 0..3 {
        let sql = format!("select 'st{n}'");
        assert_eq!(tags(&exchange(&mut raw, |o| parse(o, &format!("st{n}"), &sql)).await), "1 Z");
    }
    // Between transactions (answered by pgrelay) and inside one (in order
    // with the server's answers): the fourth is refused, the batch skipped.
    let refused = exchange(&mut raw, |o| {
        parse(o, "st3", "select 'st3'");
        bind_execute(o, "st0");
    })
    .await;
    assert_eq!(tags(&refused), "E Z");
    let (code, message) = error_fields(&refused[0].1);
    assert_eq!(code, "53400");
    assert!(message.contains("max_client_prepared_statements = 3"), "{message}");
    assert_eq!(tags(&simple(&mut raw, "begin").await), "C Z");
    let refused = exchange(&mut raw, |o| parse(o, "st3", "select 'st3'")).await;
    assert_eq!(tags(&refused), "E Z");
    assert_eq!(error_fields(&refused[0].1).0, "53400");
    assert_eq!(tags(&simple(&mut raw, "rollback").await), "C Z");
    // The three it has still run; closing one makes room for another.
    for n in 0..3 {
        assert_eq!(last_value(&exchange(&mut raw, |o| bind_execute(o, &format!("st{n}"))).await), format!("st{n}"));
    }
    assert_eq!(tags(&exchange(&mut raw, |o| statement_op(o, b'C', "st1")).await), "3 Z");
    assert_eq!(tags(&exchange(&mut raw, |o| parse(o, "st3", "select 'st3'")).await), "1 Z");
    assert_eq!(last_value(&exchange(&mut raw, |o| bind_execute(o, "st3")).await), "st3");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_server_connection_keeps_at_most_max_prepared_statements() {
    let app = relay::start_default(cluster(), "default_pool_size = 1\nmax_prepared_statements = 2").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    for n in 0..5 {
        let sql = format!("select 'lru{n}'");
        assert_eq!(tags(&exchange(&mut raw, |o| parse(o, &format!("lru{n}"), &sql)).await), "1 Z");
    }
    // Round and round: each Bind may evict another, prepared again when used.
    for round in 0..3 {
        for n in (0..5).rev() {
            let got = last_value(&exchange(&mut raw, |o| bind_execute(o, &format!("lru{n}"))).await);
            assert_eq!(got, format!("lru{n}"), "round {round}");
        }
    }
    let held = simple(&mut raw, "select count(*) from pg_prepared_statements where name like 'pgrelay\\_%'").await;
    let held: usize = last_value(&held).parse().unwrap();
    assert!((1..=2).contains(&held), "{held} statements on the one server connection");
    app.shutdown(GRACE).await;
}
