//! A scripted stand-in for a PostgreSQL server on 127.0.0.1, for the
//! login edge cases a real server never produces (a SCRAM exchange that
//! lies or stops early). Every connection gets the same script.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use pgrelay::auth::scram::{Binding, ScramServer, ScramVerifier, MECHANISM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server runs its SCRAM exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramScript {
    /// Every step right; then a FATAL error with SQLSTATE XX000 and the
    /// message [`HONEST_FATAL`], so the test sees the login got that far.
    Honest,
    /// AuthenticationOk as soon as the client's proof arrives, no SASLFinal.
    OkBeforeFinal,
    /// AuthenticationOk right after AuthenticationSASL.
    OkAfterStart,
    /// A SASLFinal whose signature is not the server's.
    WrongSignature,
    /// A server-first-message with `i=0`.
    ZeroIterations,
}

pub const HONEST_FATAL: &str = "mock server: the SCRAM exchange was verified";

/// A mock server; it stops with the test's runtime.
pub struct MockServer {
    pub addr: SocketAddr,
}

impl MockServer {
    /// Serves `script` to every connection, with `password` as the user's.
    pub async fn start(script: ScramScript, password: &str) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let mut verifier = ScramVerifier::from_password(password);
        if script == ScramScript::ZeroIterations {
            verifier.iterations = 0;
        }
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let verifier = verifier.clone();
                tokio::spawn(async move {
                    // A client that gives up mid-script is no failure of the mock.
                    let _ = serve(stream, script, &verifier).await;
                });
            }
        });
        MockServer { addr }
    }
}

/// One untagged startup packet's body.
async fn read_packet(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}

async fn serve(mut stream: TcpStream, script: ScramScript, verifier: &ScramVerifier) -> std::io::Result<()> {
    // pgrelay asks for TLS first (server_tls_sslmode = prefer): a server without it says no.
    if read_packet(&mut stream).await? == pgrelay::wire::SSL_REQUEST_CODE.to_be_bytes() {
        stream.write_all(b"N").await?;
        read_packet(&mut stream).await?;
    }
    let mut out = BytesMut::new();
    auth(&mut out, 10, format!("{MECHANISM}\0\0").as_bytes());
    stream.write_all(&out).await?;
    if script == ScramScript::OkAfterStart {
        return accept(&mut stream).await;
    }
    let initial = read_password_message(&mut stream).await?;
    let client_first = &initial[MECHANISM.len() + 1 + 4..];
    let (server, server_first) = ScramServer::start(client_first, verifier, Binding { chosen: false, data: None })
        .expect("a valid client-first-message");
    out.clear();
    auth(&mut out, 11, server_first.as_bytes());
    stream.write_all(&out).await?;
    let client_final = read_password_message(&mut stream).await?;
    if script == ScramScript::OkBeforeFinal {
        return accept(&mut stream).await;
    }
    let verified = server.finish(&client_final, verifier).expect("pgrelay's proof is right");
    let server_final = match script {
        ScramScript::WrongSignature => format!("v={}=", "A".repeat(43)),
        _ => verified.server_final,
    };
    out.clear();
    auth(&mut out, 12, server_final.as_bytes());
    stream.write_all(&out).await?;
    if script == ScramScript::WrongSignature {
        return accept(&mut stream).await;
    }
    // Honest: pgrelay verified the signature and waits for AuthenticationOk.
    out.clear();
    let mut body = BytesMut::new();
    for (field, value) in [(b'S', "FATAL"), (b'C', "XX000"), (b'M', HONEST_FATAL)] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    out.put_u8(b'E');
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    stream.write_all(&out).await
}

/// AuthenticationOk, BackendKeyData and ReadyForQuery, as a server that
/// took the login; then waits for the client to go.
async fn accept(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    auth(&mut out, 0, b"");
    out.put_u8(b'K');
    out.put_u32(12);
    out.put_u32(4242);
    out.put_u32(7);
    out.put_slice(b"Z\0\0\0\x05I");
    stream.write_all(&out).await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.map(drop)
}

fn auth(out: &mut BytesMut, code: u32, data: &[u8]) {
    out.put_u8(b'R');
    out.put_u32(8 + data.len() as u32);
    out.put_u32(code);
    out.put_slice(data);
}

/// The body of the client's next message, which must be a 'p'.
async fn read_password_message(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let tag = stream.read_u8().await?;
    assert_eq!(tag, b'p', "the client answers with a password message");
    let len = stream.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    stream.read_exact(&mut body).await?;
    Ok(body)
}
