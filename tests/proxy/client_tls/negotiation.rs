//! How a TLS connection opens, driven by hand: direct TLS with ALPN
//! (PostgreSQL 17's `sslnegotiation=direct`, which psql 15 cannot do), and
//! clients that break the SSLRequest exchange.

use std::time::Duration;

use bytes::BytesMut;
use pgrelay::wire;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{client_config, first_error, handshake, raw_login, ssl_request, start, tls_section, Pki};
use crate::support::relay::{self, Raw};

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_logs_in_and_without_it_is_refused() {
    let pki = Pki::new("direct");
    let app = start(&tls_section("require", &pki.server_cert())).await;

    let (config, _) = client_config(&pki, &[b"postgresql"], None);
    let tcp = TcpStream::connect(app.rw_addr).await.unwrap();
    let mut raw = handshake(tcp, config).await.expect("a TLS handshake at once");
    assert_eq!(raw.stream.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let welcome = raw_login(&mut raw).await;
    assert_eq!(welcome.first().map(|m| m.0), Some(b'R'), "{}", relay::tags(&welcome));
    assert_eq!(welcome.last().map(|m| m.0), Some(b'Z'), "{}", relay::tags(&welcome));
    let mut out = BytesMut::new();
    wire::put_query(&mut out, "select 40 + 2");
    raw.send(&out).await;
    let answer = raw.until_ready().await;
    assert_eq!(relay::tags(&answer), "T D C Z");
    assert!(answer[1].1.ends_with(b"42"), "{:?}", answer[1].1);

    // No ALPN: the handshake succeeds, then pgrelay says why it stops.
    let (config, _) = client_config(&pki, &[], None);
    let tcp = TcpStream::connect(app.rw_addr).await.unwrap();
    let mut raw = handshake(tcp, config).await.expect("rustls accepts a client without ALPN");
    let (code, message) = raw.recv().await.map(|(_, body)| relay::error_fields(&body)).expect("an error over TLS");
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("ALPN") && message.contains("postgresql"), "{message}");
    assert!(raw.closed().await);

    // Another protocol: the handshake itself fails.
    let (config, _) = client_config(&pki, &[b"http/1.1"], None);
    let tcp = TcpStream::connect(app.rw_addr).await.unwrap();
    let error = handshake(tcp, config).await.err().expect("no protocol in common");
    assert!(error.to_string().contains("NoApplicationProtocol"), "{error}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// A StartupMessage sent with the SSLRequest, before the handshake, would
/// pass for encrypted: it is refused, in plain text, before the 'S'.
#[tokio::test]
async fn bytes_after_an_ssl_request_before_the_handshake_are_refused() {
    let pki = Pki::new("unencrypted");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let mut raw = Raw::connect(app.rw_addr).await;
    let mut out = BytesMut::new();
    wire::put_ssl_request(&mut out);
    wire::put_startup_message(&mut out, [(&b"user"[..], &b"app_trust"[..]), (b"database", b"app")]);
    raw.send(&out).await;
    let messages = raw.until_ready().await;
    let (code, message) = first_error(&messages).unwrap_or_else(|| panic!("no error: {}", relay::tags(&messages)));
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("unencrypted data after SSL request"), "{message}");
    app.shutdown(Duration::from_secs(5)).await;
}

/// Garbage where the ClientHello should be ends that connection only.
#[tokio::test]
async fn garbage_instead_of_a_handshake_closes_the_connection_and_pgrelay_serves_on() {
    let pki = Pki::new("garbage");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let mut tcp = TcpStream::connect(app.rw_addr).await.unwrap();
    let mut out = BytesMut::new();
    wire::put_ssl_request(&mut out);
    tcp.write_all(&out).await.unwrap();
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: pgrelay\r\n\r\n").await.unwrap();
    let mut raw = Raw { stream: tcp, buf: BytesMut::new() };
    assert!(raw.closed().await, "the connection closes within 5 s");

    let (config, _) = client_config(&pki, &[], None);
    let mut raw = ssl_request(app.rw_addr, config).await.expect("a TLS handshake");
    let welcome = raw_login(&mut raw).await;
    assert_eq!(welcome.last().map(|m| m.0), Some(b'Z'), "a login right after works: {}", relay::tags(&welcome));
    app.shutdown(Duration::from_secs(5)).await;
}

/// A second SSLRequest, over the TLS the first one began, is refused there.
#[tokio::test]
async fn an_ssl_request_over_tls_is_refused() {
    let pki = Pki::new("twice");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let (config, _) = client_config(&pki, &[], None);
    let mut raw = ssl_request(app.rw_addr, config).await.expect("a TLS handshake");
    let mut out = BytesMut::new();
    wire::put_ssl_request(&mut out);
    raw.send(&out).await;
    let messages = raw.until_ready().await;
    let (code, message) = first_error(&messages).unwrap_or_else(|| panic!("no error: {}", relay::tags(&messages)));
    assert_eq!(code, "08P01", "{message}");
    assert!(message.contains("SSLRequest on a TLS connection"), "{message}");
    app.shutdown(Duration::from_secs(5)).await;
}
