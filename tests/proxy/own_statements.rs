//! pgrelay's own statements (`SET`/`SHOW`/`RESET pgrelay.*`) as drivers
//! send them: in the extended protocol (named statements of a driver's
//! cache, the unnamed statement, binary results), and from a client pinned
//! to its server connection. Between transactions pgrelay answers them as a
//! server would; within a transaction they are refused in order.

use std::time::Duration;

use bytes::BytesMut;
use pgrelay::router::parse_lsn;
use pgrelay::wire;

use crate::support::cluster;
use crate::support::relay::msg::{bind, execute, parse};
use crate::support::relay::{self, error_fields, message, scalar, sqlstate, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// A Describe of the unnamed portal.
fn describe_portal(out: &mut BytesMut) {
    out.extend_from_slice(&[wire::frontend::DESCRIBE, 0, 0, 0, 6, b'P', 0]);
}

#[tokio::test]
async fn a_drivers_prepared_pgrelay_statements_are_answered_between_transactions() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    // tokio-postgres prepares a named statement, describes it, then binds
    // it asking for binary results.
    let position: String = client.query_one("show pgrelay.commit_lsn", &[]).await.expect("SHOW").get(0);
    assert!(parse_lsn(&position).is_some(), "{position}");
    let show = client.prepare("show pgrelay.min_lsn").await.expect("prepare");
    assert_eq!(show.params().len(), 0);
    assert_eq!(show.columns().len(), 1);
    assert_eq!(show.columns()[0].name(), "pgrelay.min_lsn");
    let min_lsn = || async { client.query_one(&show, &[]).await.expect("SHOW").get::<_, String>(0) };
    assert_eq!(min_lsn().await, "");
    client.execute("set pgrelay.min_lsn = '0/10'", &[]).await.expect("SET");
    // The named statement again, from the driver's cache.
    assert_eq!(min_lsn().await, "0/10");
    let error = client.execute("set pgrelay.min_lsn = 'soon'", &[]).await.expect_err("not a position");
    assert_eq!(sqlstate(&error), "22023", "{}", message(&error));
    let error = client.query_one("show pgrelay.colour", &[]).await.expect_err("unknown");
    assert_eq!(sqlstate(&error), "42704", "{}", message(&error));

    // Within a transaction: refused in order, the transaction failed as a server fails it.
    let reset = client.prepare("reset pgrelay.min_lsn").await.expect("prepare");
    client.batch_execute("begin").await.expect("begin");
    let error = client.execute(&reset, &[]).await.expect_err("in a transaction");
    assert_eq!(sqlstate(&error), "0A000", "{}", message(&error));
    let error = client.query_one("select 1", &[]).await.expect_err("the transaction failed");
    assert_eq!(sqlstate(&error), "25P02", "{}", message(&error));
    client.batch_execute("rollback").await.expect("rollback");
    client.execute(&reset, &[]).await.expect("RESET between transactions");
    assert_eq!(min_lsn().await, "");
    // A prepared statement of the client's own still works alongside.
    assert_eq!(scalar(&client, "select 'own'").await, "own");
    let other = client.prepare("select $1::int + 1").await.expect("prepare");
    assert_eq!(client.query_one(&other, &[&41i32]).await.expect("select").get::<_, i32>(0), 42);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn the_unnamed_statement_and_portal_answer_as_a_server_would() {
    let app = relay::start_default(cluster(), "").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[("options", "-c pgrelay.causal_id=raw-1")]).await;

    // Parse, Bind, Describe, Execute, Sync of a SHOW.
    let mut out = BytesMut::new();
    parse(&mut out, "", "show pgrelay.causal_id");
    bind(&mut out, "");
    describe_portal(&mut out);
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 2 T D C Z");
    assert_eq!(&answer[3].1[6..], b"raw-1", "the DataRow's value");
    assert_eq!(&answer[5].1[..], b"I");

    // A SET described as a statement: no parameters, no data.
    let mut out = BytesMut::new();
    parse(&mut out, "", "set pgrelay.causal_id = 'raw-2'");
    wire::put_statement_op(&mut out, wire::frontend::DESCRIBE, b"");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "1 t n 2 C Z");

    // pgrelay's statement, then a server's, in one batch: each answered in order.
    let mut out = BytesMut::new();
    parse(&mut out, "", "show pgrelay.causal_id");
    bind(&mut out, "");
    execute(&mut out);
    parse(&mut out, "", "select 'server'");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 2 D C 1 2 D C Z");
    assert_eq!(&answer[2].1[6..], b"raw-2");
    assert_eq!(&answer[6].1[6..], b"server");

    // Pipelined right behind a server's batch: answered once that batch is over.
    let mut out = BytesMut::new();
    parse(&mut out, "", "select 'first'");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    parse(&mut out, "", "show pgrelay.causal_id");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "1 2 D C Z");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 2 D C Z");
    assert_eq!(&answer[2].1[6..], b"raw-2");

    // An error skips the rest of the batch up to its Sync.
    let mut out = BytesMut::new();
    parse(&mut out, "", "show pgrelay.colour");
    bind(&mut out, "");
    execute(&mut out);
    parse(&mut out, "", "select 'skipped'");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 2 E Z");
    assert_eq!(error_fields(&answer[2].1).0, "42704");

    // Parameters a SET cannot take, and a named portal: refused.
    let mut out = BytesMut::new();
    parse(&mut out, "", "show pgrelay.causal_id");
    wire::put_bind_text(&mut out, b"", b"", &[b"1"]);
    wire::put_sync(&mut out);
    parse(&mut out, "", "show pgrelay.causal_id");
    wire::put_bind_text(&mut out, b"cursor", b"", &[]);
    wire::put_sync(&mut out);
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 E Z");
    assert_eq!(error_fields(&answer[1].1).0, "08P01");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "1 E Z");
    assert_eq!(error_fields(&answer[1].1).0, "0A000");

    // In a transaction: refused by the server's own failed-transaction rules.
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "begin");
    parse(&mut out, "", "show pgrelay.causal_id");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    wire::put_query(&mut out, "rollback");
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "C Z");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "E Z");
    assert_eq!(error_fields(&answer[0].1).0, "0A000");
    assert_eq!(&answer[1].1[..], b"E");
    assert_eq!(tags(&raw.until_ready().await), "C Z");

    // The unnamed statement is pgrelay's until the client parses another:
    // a Bind of it in a transaction is refused, not run as the server's.
    let mut out = BytesMut::new();
    parse(&mut out, "", "show pgrelay.causal_id");
    wire::put_sync(&mut out);
    wire::put_query(&mut out, "begin");
    bind(&mut out, "");
    execute(&mut out);
    wire::put_sync(&mut out);
    wire::put_query(&mut out, "rollback");
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "1 Z");
    assert_eq!(tags(&raw.until_ready().await), "C Z");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "E Z");
    assert_eq!(error_fields(&answer[0].1).0, "0A000");
    assert_eq!(tags(&raw.until_ready().await), "C Z");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_pinned_client_between_transactions_is_answered_by_pgrelay() {
    let app = relay::start_default(cluster(), "").await;
    let client = relay::connect(app.rw_addr).await;
    // A session setting keeps this client on its server connection.
    client.batch_execute("select set_config('application_name', 'pinned', false)").await.expect("set");
    let position = scalar(&client, "show pgrelay.commit_lsn").await;
    assert!(parse_lsn(&position).is_some(), "{position}");
    client.batch_execute("set pgrelay.report_commit_lsn = on").await.expect("SET on rw");
    assert_eq!(scalar(&client, "show pgrelay.report_commit_lsn").await, "on");
    // Still refused within a transaction.
    client.batch_execute("begin").await.expect("begin");
    let error = client.batch_execute("show pgrelay.commit_lsn").await.expect_err("in a transaction");
    assert_eq!(sqlstate(&error), "0A000", "{}", message(&error));
    client.batch_execute("rollback").await.expect("rollback");

    // On ro, a pinned client's reads are no longer routed: a position it
    // sets could not apply, and it is told so.
    let reader = relay::connect(app.ro_addr).await;
    reader.batch_execute("select set_config('application_name', 'pinned reader', false)").await.expect("set");
    let error = reader.batch_execute("set pgrelay.min_lsn = '0/1'").await.expect_err("cannot apply");
    assert_eq!(sqlstate(&error), "0A000", "{}", message(&error));
    assert!(message(&error).contains("startup option"), "{}", message(&error));
    assert_eq!(scalar(&reader, "show pgrelay.min_lsn").await, "");
    app.shutdown(GRACE).await;
}

/// A driver's cache of pgrelay statements is bounded like its other
/// statements (`max_client_prepared_statements`), and DEALLOCATE, DISCARD
/// ALL and Close drop them as they drop the others.
#[tokio::test]
async fn pgrelay_statements_count_toward_the_clients_limit_and_go_with_deallocate() {
    let app = relay::start_default(cluster(), "max_client_prepared_statements = 2").await;
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut out = BytesMut::new();
    parse(&mut out, "a", "show pgrelay.causal_id");
    parse(&mut out, "b", "show pgrelay.min_lsn");
    wire::put_sync(&mut out);
    parse(&mut out, "c", "select 1");
    wire::put_sync(&mut out);
    parse(&mut out, "a", "show pgrelay.min_lsn");
    wire::put_sync(&mut out);
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "1 1 Z");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "E Z");
    assert_eq!(error_fields(&answer[0].1).0, "53400", "the limit counts pgrelay's statements");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "E Z");
    assert_eq!(error_fields(&answer[0].1).0, "42P05", "the name is taken");

    let bound = |name: &'static str| {
        let mut out = BytesMut::new();
        bind(&mut out, name);
        execute(&mut out);
        wire::put_sync(&mut out);
        out
    };
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "deallocate a");
    out.extend_from_slice(&bound("a"));
    out.extend_from_slice(&bound("b"));
    wire::put_statement_op(&mut out, b'C', b"b");
    out.extend_from_slice(&bound("b"));
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "C Z");
    let answer = raw.until_ready().await;
    assert_eq!(error_fields(&answer[0].1).0, "26000", "DEALLOCATE dropped it");
    assert_eq!(tags(&raw.until_ready().await), "2 D C Z");
    let answer = raw.until_ready().await;
    assert_eq!(tags(&answer), "3 E Z", "Close dropped it");
    assert_eq!(error_fields(&answer[1].1).0, "26000");

    let mut out = BytesMut::new();
    parse(&mut out, "d", "show pgrelay.causal_id");
    wire::put_sync(&mut out);
    wire::put_query(&mut out, "discard all");
    out.extend_from_slice(&bound("d"));
    raw.send(&out).await;
    assert_eq!(tags(&raw.until_ready().await), "1 Z");
    raw.until_ready().await;
    let answer = raw.until_ready().await;
    assert_eq!(error_fields(&answer[0].1).0, "26000", "DISCARD ALL dropped it");
    app.shutdown(GRACE).await;
}
