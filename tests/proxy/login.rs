//! Connections that have not logged in yet: the bound on startup
//! parameters, and clients that leave before their startup packet.

use std::time::Duration;

use bytes::BytesMut;
use pgrelay::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::cluster;
use crate::support::relay::{self, error_fields, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// Reads what pgrelay says until it closes; returns the last ErrorResponse's SQLSTATE and message.
async fn final_error(raw: &mut Raw) -> Option<(String, String)> {
    let mut error = None;
    while let Some((tag, body)) = raw.recv().await {
        if tag == b'E' {
            error = Some(error_fields(&body));
        }
    }
    error
}

/// A startup packet with `user`, `database` and `extra` more parameters.
fn startup_with(extra: usize, options: Option<&str>) -> BytesMut {
    let names: Vec<String> = (0..extra).map(|i| format!("pgrelay_test.p{i}")).collect();
    let mut params: Vec<(&[u8], &[u8])> = vec![(b"user", b"app_trust"), (b"database", b"app")];
    params.extend(names.iter().map(|n| (n.as_bytes(), &b"v"[..])));
    if let Some(options) = options {
        params.push((b"options", options.as_bytes()));
    }
    let mut out = BytesMut::new();
    wire::put_startup_message(&mut out, params);
    out
}

#[tokio::test]
async fn startup_parameters_are_bounded() {
    let app = relay::start_default(cluster(), "").await;
    let max = wire::MAX_STARTUP_PARAMETERS;

    // At the limit (user and database count): logged in, every setting applied.
    let mut raw = Raw::connect(app.rw_addr).await;
    raw.send(&startup_with(max - 2, None)).await;
    assert!(tags(&raw.until_ready().await).ends_with('Z'), "{max} parameters log in");
    let mut query = BytesMut::new();
    wire::put_query(&mut query, &format!("select current_setting('pgrelay_test.p{}')", max - 3));
    raw.send(&query).await;
    let answer = raw.until_ready().await;
    assert!(answer.iter().any(|(t, body)| *t == b'D' && body.ends_with(b"v")), "{}", tags(&answer));

    // One more, in the packet or through options: a FATAL naming the limit.
    let options: Vec<String> = (0..max).map(|i| format!("-c pgrelay_test.o{i}=1")).collect();
    let too_many = [startup_with(max - 1, None), startup_with(1, Some(&options.join(" ")))];
    for packet in too_many {
        let mut raw = Raw::connect(app.rw_addr).await;
        raw.send(&packet).await;
        let (code, message) = final_error(&mut raw).await.expect("a refusal");
        assert_eq!(code, "08P01", "{message}");
        assert!(message.contains(&format!("more than {max} parameters")), "{message}");
    }

    // A packet as large as PostgreSQL allows, all of it short parameters.
    let names: Vec<String> = (0..1_300).map(|i| format!("p{i}")).collect();
    let mut params: Vec<(&[u8], &[u8])> = vec![(b"user", b"app_trust")];
    params.extend(names.iter().map(|n| (n.as_bytes(), &b""[..])));
    let mut packet = BytesMut::new();
    wire::put_startup_message(&mut packet, params);
    assert!(packet.len() <= wire::MAX_STARTUP_PACKET, "{}", packet.len());
    let mut raw = Raw::connect(app.rw_addr).await;
    raw.send(&packet).await;
    let (code, message) = final_error(&mut raw).await.expect("a refusal");
    assert_eq!(code, "08P01", "{message}");
    app.shutdown(GRACE).await;
}

/// Everything pgrelay sends until it closes the connection (5 s limit).
async fn everything_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("pgrelay closed the connection within 5 s")
        .expect("read");
    received
}

#[tokio::test]
async fn a_client_that_leaves_before_its_startup_packet_is_closed_silently() {
    let app = relay::start_default(cluster(), "").await;
    // Nothing at all, part of a length word, part of a packet: then EOF.
    for sent in [&[][..], &[0, 0][..], &[0, 0, 0, 40, 0, 3][..]] {
        let mut stream = TcpStream::connect(app.rw_addr).await.unwrap();
        stream.write_all(sent).await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(everything_until_closed(&mut stream).await, b"", "after {sent:?}");
    }
    // A Terminate instead of a startup packet: closed without a word, as PostgreSQL does.
    let mut stream = TcpStream::connect(app.rw_addr).await.unwrap();
    let mut terminate = BytesMut::new();
    wire::put_terminate(&mut terminate);
    stream.write_all(&terminate).await.unwrap();
    assert_eq!(everything_until_closed(&mut stream).await, b"", "after a Terminate");
    // The same after declining TLS: only the 'N'.
    let mut stream = TcpStream::connect(app.rw_addr).await.unwrap();
    let mut ssl_request = Vec::from(8u32.to_be_bytes());
    ssl_request.extend_from_slice(&wire::SSL_REQUEST_CODE.to_be_bytes());
    stream.write_all(&ssl_request).await.unwrap();
    stream.write_all(&terminate).await.unwrap();
    assert_eq!(everything_until_closed(&mut stream).await, b"N");
    // Garbage still gets an error that says what is wrong.
    let mut raw = Raw::connect(app.rw_addr).await;
    raw.send(b"GET / HTTP/1.1\r\n\r\n").await;
    let (code, _) = final_error(&mut raw).await.expect("an ErrorResponse");
    assert_eq!(code, "08P01");
    app.shutdown(GRACE).await;
}
