//! tokio-postgres over TLS with rustls: SCRAM with channel binding, md5 and
//! trust users, large results, pipelining, and cancels (over TLS, and in
//! plain text as libpq before 17 sends them).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::future::join_all;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use tokio::io::AsyncReadExt;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::NoTls;

use super::{
    client_config, config_text, connect_tls, connector, pg_config, ssl_request, start, start_text, tls_section, Pki,
};
use crate::support::relay::{self, scalar};

#[tokio::test]
async fn tokio_postgres_logs_in_over_tls_with_channel_binding_md5_and_trust() {
    let pki = Pki::new("driver");
    let cert = pki.server_cert();
    // prefer: plain text is allowed, so what fails in plain text below
    // fails for want of TLS, not because pgrelay refuses plain clients.
    // app_md5's pg_hba rule asks pgrelay for md5 too, which it sends only when allowed.
    let toml = config_text(&tls_section("prefer", &cert))
        .replace("user = \"postgres\"\n", "user = \"postgres\"\nserver_require_auth = \"scram-sha-256,md5,none\"\n");
    let app = start_text(&toml).await;
    let port = app.rw_addr.port();

    let (tls, seen) = connector(&pki);
    let bound = pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Require);
    let client = connect_tls(&bound, tls).await.expect("SCRAM-SHA-256-PLUS over TLS");
    assert_eq!(scalar(&client, "select 40 + 2").await, "42");
    assert_eq!(seen.lock().unwrap().as_deref(), Some(&cert.der[..]), "the client was shown pgrelay's certificate");

    // Channel binding needs TLS: in plain text pgrelay offers no SCRAM-SHA-256-PLUS.
    let mut plain = bound.clone();
    plain.ssl_mode(SslMode::Disable);
    let error = plain.connect(NoTls).await.err().expect("channel_binding=require without TLS fails");
    assert!(format!("{error:?}").contains("channel binding"), "{error:?}");

    for (user, password) in [("app_md5", "app_md5"), ("app_trust", "")] {
        let (tls, seen) = connector(&pki);
        let config = pg_config(port, user, password, ChannelBinding::Prefer);
        let client =
            connect_tls(&config, tls).await.unwrap_or_else(|e| panic!("{user} over TLS: {}", relay::message(&e)));
        assert_eq!(scalar(&client, "select current_user").await, user);
        assert!(seen.lock().unwrap().is_some(), "{user}'s connection made a TLS handshake");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

/// `tls-server-end-point` hashes the certificate with the hash of its
/// signature: SHA-384 for one signed ecdsa-with-SHA384. pgrelay, libpq
/// (OpenSSL) and tokio-postgres must agree, or SCRAM-SHA-256-PLUS fails.
#[tokio::test]
async fn channel_binding_works_with_a_certificate_signed_with_sha384() {
    let pki = Pki::signing_with("sha384", &rcgen::PKCS_ECDSA_P384_SHA384);
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let port = app.rw_addr.port();
    let (tls, _) = connector(&pki);
    let client = connect_tls(&pg_config(port, APP_USER, APP_PASSWORD, ChannelBinding::Require), tls)
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres: {e:?}"));
    assert_eq!(scalar(&client, "select 40 + 2").await, "42");
    let bound = format!("sslmode=verify-full sslrootcert={} channel_binding=require", pki.ca_file().display());
    assert_eq!(super::psql(port, &bound, "select 40 + 2").await.as_deref(), Ok("42"), "psql");
    app.shutdown(Duration::from_secs(5)).await;
}

/// Eight MiB in one row, first to tokio-postgres, then to a client that
/// reads nothing for a while and then reads slowly: pgrelay's TLS writes
/// meet a full socket and must resume where they stopped.
#[tokio::test]
async fn a_large_result_reaches_a_slow_tls_reader_whole() {
    const SIZE: usize = 8 * 1024 * 1024;
    let pki = Pki::new("large");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let query = format!("select repeat('x', {SIZE})");

    let (tls, _) = connector(&pki);
    let client = connect_tls(&pg_config(app.rw_addr.port(), "app_trust", "", ChannelBinding::Prefer), tls)
        .await
        .expect("connect over TLS");
    let value = scalar(&client, &query).await;
    assert!(value.len() == SIZE && value.bytes().all(|b| b == b'x'), "a value of {} bytes", value.len());

    let (config, _) = client_config(&pki, &[], None);
    let mut raw = ssl_request(app.rw_addr, config).await.expect("TLS handshake");
    let welcome = super::raw_login(&mut raw).await;
    assert_eq!(welcome.last().map(|m| m.0), Some(b'Z'), "{}", relay::tags(&welcome));
    let mut out = BytesMut::new();
    pgrelay::wire::put_query(&mut out, &query);
    raw.send(&out).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next_pause = 0;
    while raw.buf.len() < SIZE && Instant::now() < deadline {
        let read = tokio::time::timeout(Duration::from_secs(5), raw.stream.read_buf(&mut raw.buf))
            .await
            .expect("pgrelay keeps sending")
            .expect("read over TLS");
        assert!(read > 0, "pgrelay closed after {} bytes", raw.buf.len());
        if raw.buf.len() >= next_pause {
            next_pause += 512 * 1024;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let answer = raw.until_ready().await;
    assert_eq!(relay::tags(&answer), "T D C Z");
    let row = &answer[1].1;
    // DataRow: one column (i16), its length (i32), the value.
    assert_eq!(u32::from_be_bytes(row[2..6].try_into().unwrap()) as usize, SIZE);
    assert!(row.len() == 6 + SIZE && row[6..].iter().all(|&b| b == b'x'), "the value arrived whole");
    app.shutdown(Duration::from_secs(5)).await;
}

/// tokio-postgres pipelines queries issued together: 200 executions of one
/// prepared statement travel back to back over one TLS connection.
#[tokio::test]
async fn two_hundred_pipelined_queries_over_one_tls_connection_all_answer() {
    let pki = Pki::new("pipeline");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let (tls, _) = connector(&pki);
    let client = connect_tls(&pg_config(app.rw_addr.port(), APP_USER, APP_PASSWORD, ChannelBinding::Require), tls)
        .await
        .expect("connect over TLS");
    let statement = client.prepare("select $1::int * 2").await.expect("prepare");
    let numbers: Vec<i32> = (0..200).collect();
    let queries = numbers.iter().map(|n| {
        let (client, statement) = (&client, &statement);
        async move { client.query_one(statement, &[n]).await }
    });
    let rows = tokio::time::timeout(Duration::from_secs(20), join_all(queries)).await.expect("answered within 20 s");
    for (n, row) in numbers.iter().zip(rows) {
        let doubled: i32 = row.unwrap_or_else(|e| panic!("query {n}: {e}")).get(0);
        assert_eq!(doubled, n * 2);
    }
    app.shutdown(Duration::from_secs(5)).await;
}

/// The CancelRequest comes over a TLS connection of its own (tokio-postgres
/// makes the SSLRequest first under sslmode=require).
#[tokio::test]
async fn a_cancel_sent_over_tls_stops_the_query() {
    let pki = Pki::new("cancel");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let (tls, _) = connector(&pki);
    let client = connect_tls(&pg_config(app.rw_addr.port(), APP_USER, APP_PASSWORD, ChannelBinding::Require), tls)
        .await
        .expect("connect over TLS");
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(10)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cancel_tls, seen) = connector(&pki);
    token.cancel_query(cancel_tls).await.expect("the cancel request is sent");
    assert!(seen.lock().unwrap().is_some(), "the cancel request went over TLS");
    let result = tokio::time::timeout(Duration::from_secs(5), sleeping).await.expect("the query ends").expect("task");
    let error = result.expect_err("the query is cancelled");
    assert_eq!(relay::sqlstate(&error), "57014", "{}", relay::message(&error));
    assert!(started.elapsed() < Duration::from_secs(5), "cancelled after {:?}", started.elapsed());
    app.shutdown(Duration::from_secs(5)).await;
}

/// libpq before 17 sends its CancelRequest in plain text even when the
/// session is TLS: `require` refuses plain-text logins, not cancels.
#[tokio::test]
async fn a_plain_text_cancel_stops_a_tls_session_under_require() {
    let pki = Pki::new("plain-cancel");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let (config, _) = client_config(&pki, &[], None);
    let mut raw = ssl_request(app.rw_addr, config).await.expect("TLS handshake");
    let welcome = super::raw_login(&mut raw).await;
    let key = welcome.iter().find(|(tag, _)| *tag == b'K').map(|(_, body)| body.clone()).expect("BackendKeyData");
    let (pid, secret) =
        (u32::from_be_bytes(key[..4].try_into().unwrap()), u32::from_be_bytes(key[4..8].try_into().unwrap()));
    let mut out = BytesMut::new();
    pgrelay::wire::put_query(&mut out, "select pg_sleep(10)");
    raw.send(&out).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut cancel = relay::Raw::connect(app.rw_addr).await;
    cancel.send(&pgrelay::wire::cancel_request(pid, secret)).await;
    assert!(cancel.closed().await);
    let answer = raw.until_ready().await;
    let (code, message) =
        super::first_error(&answer).unwrap_or_else(|| panic!("not cancelled: {}", relay::tags(&answer)));
    assert_eq!(code, "57014", "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "cancelled after {:?}", started.elapsed());
    app.shutdown(Duration::from_secs(5)).await;
}
