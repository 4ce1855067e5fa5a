//! A small protocol client over a TCP socket that never panics: every
//! failure (a timeout, a closed socket) is a value the harness reports, so
//! one client's trouble never hides the others' results.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pgrelay::localcluster::{APP_DATABASE, TRUST_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One backend message: its tag and its body (without the length).
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Bytes,
}

/// Why reading stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Closed,
    TimedOut,
}

pub struct PgClient {
    stream: TcpStream,
    buf: BytesMut,
    /// The (pid, secret) of the BackendKeyData the login ended with.
    pub key: (u32, u32),
}

impl PgClient {
    /// Logs in as the trust user with `params` as extra startup parameters;
    /// returns the client and the messages of the login (ParameterStatus, ...).
    pub async fn login(
        addr: SocketAddr,
        params: &[(&str, &str)],
        limit: Duration,
    ) -> Result<(PgClient, Vec<Msg>), String> {
        let connect = tokio::time::timeout(limit, TcpStream::connect(addr)).await;
        let stream = match connect {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("connecting to {addr}: {e}")),
            Err(_) => return Err(format!("connecting to {addr}: no answer within {limit:?}")),
        };
        stream.set_nodelay(true).ok();
        let mut client = PgClient { stream, buf: BytesMut::new(), key: (0, 0) };
        let mut out = BytesMut::new();
        let mut all: Vec<(&[u8], &[u8])> =
            vec![(b"user", TRUST_USER.as_bytes()), (b"database", APP_DATABASE.as_bytes())];
        all.extend(params.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        pgrelay::wire::put_startup_message(&mut out, all);
        client.send(&out).await.map_err(|e| format!("sending the startup message: {e}"))?;
        let deadline = Instant::now() + limit;
        let mut welcome = Vec::new();
        loop {
            match client.recv(deadline).await {
                Ok(msg) if msg.tag == b'Z' => return Ok((client, welcome)),
                Ok(msg) if msg.tag == b'E' => {
                    let (code, message) = error_fields(&msg.body);
                    return Err(format!("login refused: {code} {message}"));
                }
                Ok(msg) => {
                    if msg.tag == b'K' && msg.body.len() >= 8 {
                        client.key = (msg.body.slice(0..4).get_u32(), msg.body.slice(4..8).get_u32());
                    }
                    welcome.push(msg);
                }
                Err(stop) => return Err(format!("login did not finish: {stop:?}")),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next message, waiting until `deadline` at most.
    pub async fn recv(&mut self, deadline: Instant) -> Result<Msg, Stop> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("four bytes")) as usize;
                if self.buf.len() > len {
                    let mut frame = self.buf.split_to(len + 1).freeze();
                    let tag = frame.get_u8();
                    frame.advance(4);
                    return Ok(Msg { tag, body: frame });
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Stop::Closed),
                Ok(Ok(_)) => {}
                Err(_) => return Err(Stop::TimedOut),
            }
        }
    }

    /// Sends Terminate and closes.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        pgrelay::wire::put_terminate(&mut out);
        let _ = self.send(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

/// Sends a CancelRequest for `key` to `addr` and waits for the peer to close.
pub async fn cancel(addr: SocketAddr, key: (u32, u32)) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(&pgrelay::wire::cancel_request(key.0, key.1)).await?;
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
    Ok(())
}

/// The SQLSTATE and message of an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let fields = pgrelay::wire::ErrorFields::parse(body);
    (fields.code, fields.message)
}
