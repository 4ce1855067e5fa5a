//! Connections that have not logged in yet: their own cap (in total and per
//! client address) apart from max_client_conn, cancel requests served while
//! that cap is full, the bound on startup parameters, and clients that leave
//! before their startup packet.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgrelay::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_postgres::{Client, NoTls};

use crate::support::cluster;
use crate::support::relay::{self, error_fields, scalar, sqlstate, tags, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// Loopback addresses the tests connect from (all of 127.0.0.0/8 is local).
const HOST_A: [u8; 4] = [127, 0, 0, 1];
const HOST_B: [u8; 4] = [127, 0, 0, 2];
const HOST_C: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to `addr` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((from, 0))).expect("bind a loopback source address");
    socket.connect(addr).await.expect("tcp connect")
}

/// A tokio-postgres client logged in as `app` over a connection from `from`.
async fn client_from(from: [u8; 4], addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = relay::conn_string(addr, "app", "app").parse().expect("config");
    let (client, connection) = config.connect_raw(tcp_from(from, addr).await, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

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

/// Waits (bounded) until pgrelay counts `n` connections that are still logging in.
async fn until_logging_in(app: &pgrelay::RunningApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.context().pre_auth.logging_in() != n {
        assert!(
            Instant::now() < deadline,
            "{} connections logging in, expected {n}",
            app.context().pre_auth.logging_in()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connections_logging_in_have_their_own_cap_and_cancels_still_pass() {
    const PER_ADDR: usize = 6;
    let pool = format!("max_client_conn = {PER_ADDR}\nmax_pre_auth_conn = 9\nmax_pre_auth_conn_per_addr = {PER_ADDR}");
    let app = relay::start_default(cluster(), &pool).await;

    // As many silent connections from one address as it may have logging in:
    // they hold neither max_client_conn slots nor anyone else's share.
    let mut silent = Vec::new();
    for _ in 0..PER_ADDR {
        silent.push(tcp_from(HOST_A, app.rw_addr).await);
    }
    until_logging_in(&app, PER_ADDR).await;
    let client = client_from(HOST_B, app.rw_addr).await.expect("a client from another address logs in");
    assert_eq!(scalar(&client, "select 'in'").await, "in");

    // A cancel from the saturated address still reaches the query.
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(10)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    token.cancel_query_raw(tcp_from(HOST_A, app.rw_addr).await, NoTls).await.expect("cancel sent");
    let cancelled = tokio::time::timeout(GRACE, sleeping).await.expect("cancelled in time").unwrap();
    assert_eq!(sqlstate(&cancelled.unwrap_err()), "57014");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // One more silent connection from that address is refused, naming the key.
    let mut extra = Raw { stream: tcp_from(HOST_A, app.rw_addr).await, buf: BytesMut::new() };
    let started = Instant::now();
    let (code, message) = final_error(&mut extra).await.expect("a refusal");
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("max_pre_auth_conn_per_addr = 6") && message.contains("127.0.0.1"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3), "refused promptly, not at the login timeout");

    // Filling the total from a third address refuses everyone else, at once.
    for _ in 0..3 {
        silent.push(tcp_from(HOST_C, app.rw_addr).await);
    }
    until_logging_in(&app, 9).await;
    let mut late = Raw { stream: tcp_from(HOST_B, app.rw_addr).await, buf: BytesMut::new() };
    let mut startup = BytesMut::new();
    wire::put_startup_message(&mut startup, [(&b"user"[..], &b"app_trust"[..]), (&b"database"[..], &b"app"[..])]);
    late.send(&startup).await;
    let (code, message) = final_error(&mut late).await.expect("a refusal");
    assert_eq!(code, "53300", "{message}");
    assert!(message.contains("max_pre_auth_conn = 9"), "{message}");

    // Once the silent ones are gone, that address logs in again.
    drop(silent);
    until_logging_in(&app, 0).await;
    let again = relay::connect(app.rw_addr).await;
    assert_eq!(scalar(&again, "select 1").await, "1");
    app.shutdown(GRACE).await;
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
