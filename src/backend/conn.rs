//! One server connection: startup, authentication, and the small amount of
//! request/response handling pgrelay does on its own behalf (reset queries).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tracker::{Expect, Origin, Tracker};
use crate::auth::scram::{ScramClient, MECHANISM};
use crate::auth::{md5, AuthError, ServerCredentials};
use crate::wire::{self, backend as tag, ErrorFields, Frame, WireError};

/// Largest message accepted from a server during startup.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {addr}: timed out after {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("server connection: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server protocol error: {0}")]
    Protocol(#[from] WireError),
    #[error("server authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("server asked for unsupported authentication method {0}")]
    UnsupportedAuth(u32),
    /// The server answered with an ErrorResponse (e.g. unknown database).
    #[error("{}", .0.message)]
    Server(ErrorFields),
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
}

impl BackendError {
    /// The connection could not be opened for a reason that may pass (the
    /// server is down, restarting, or shutting down as a demoted leader);
    /// nothing ran, so the work may be routed again. Authentication and
    /// configuration errors are not transient: waiting would not help.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Connect { .. }
            | BackendError::ConnectTimeout { .. }
            | BackendError::Io(_)
            | BackendError::Closed
            | BackendError::Timeout(_) => true,
            // 08: connection exceptions; 57: shutting down, cannot connect now.
            BackendError::Server(fields) => fields.code.starts_with("08") || fields.code.starts_with("57"),
            BackendError::Protocol(_) | BackendError::Auth(_) | BackendError::UnsupportedAuth(_) => false,
        }
    }
}

/// ParameterStatus values a server reported at startup, as (name, value).
pub type ServerParams = Arc<Vec<(Bytes, Bytes)>>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub credentials: Arc<crate::auth::UserEntry>,
    pub connect_timeout: Duration,
}

/// The server's BackendKeyData, needed to cancel its queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: u32,
}

/// A live, authenticated server connection.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Bytes read from the server, not yet handled.
    pub rbuf: BytesMut,
    /// Bytes waiting to be written to the server.
    pub wbuf: BytesMut,
    pub tracker: Tracker,
    pub key: BackendKey,
    /// ParameterStatus values reported at startup, as (name, value).
    pub startup_params: ServerParams,
    /// The client settings last applied with SET (None: the connection's defaults).
    pub applied: Option<Arc<Vec<(String, String)>>>,
    /// A client changed a setting itself; reset everything before the next client.
    pub settings_dirty: bool,
    pub created: Instant,
    pub last_used: Instant,
}

impl ServerConn {
    pub async fn connect(target: &ServerTarget) -> Result<ServerConn, BackendError> {
        let addr_text = format!("{}:{}", target.host, target.port);
        let connect = async {
            let mut last_err = None;
            for addr in tokio::net::lookup_host(&addr_text).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last_err = Some(e),
                }
            }
            Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address")))
        };
        let stream = tokio::time::timeout(target.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::ConnectTimeout { addr: addr_text.clone(), timeout: target.connect_timeout })?
            .map_err(|source| BackendError::Connect { addr: addr_text.clone(), source })?;
        stream.set_nodelay(true)?;
        let addr = stream.peer_addr()?;
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            addr,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            tracker: Tracker::default(),
            key: BackendKey { pid: 0, secret: 0 },
            startup_params: Arc::new(Vec::new()),
            applied: None,
            settings_dirty: false,
            created: now,
            last_used: now,
        };
        tokio::time::timeout(target.connect_timeout, conn.startup(target))
            .await
            .map_err(|_| BackendError::Timeout(target.connect_timeout))??;
        Ok(conn)
    }

    async fn startup(&mut self, target: &ServerTarget) -> Result<(), BackendError> {
        let creds: &ServerCredentials = &target.credentials.server;
        let mut out = BytesMut::new();
        wire::put_startup_message(
            &mut out,
            [(&b"user"[..], creds.user.as_bytes()), (&b"database"[..], target.database.as_bytes())],
        );
        self.stream.write_all(&out).await?;
        let mut scram: Option<ScramClient> = None;
        let mut scram_final = None;
        let mut params = Vec::new();
        loop {
            let msg = self.read_message(MAX_STARTUP_MESSAGE).await?;
            let mut body = &msg[5..];
            out.clear();
            match msg[0] {
                tag::AUTHENTICATION => {
                    if body.len() < 4 {
                        return Err(WireError::Malformed("Authentication").into());
                    }
                    match body.get_u32() {
                        0 => {}
                        3 => wire::put_password_message(&mut out, creds.password()?.as_bytes()),
                        5 => {
                            let salt: [u8; 4] = body.try_into().map_err(|_| WireError::Malformed("md5 salt"))?;
                            let stored = md5::stored_hash(creds.password()?, &creds.user);
                            wire::put_password_message(&mut out, md5::salted_answer(&stored, salt).as_bytes());
                        }
                        10 => {
                            if !body.split(|&b| b == 0).any(|m| m == MECHANISM.as_bytes()) {
                                return Err(AuthError::Unsupported("a SASL mechanism other than SCRAM-SHA-256").into());
                            }
                            let (client, first) = ScramClient::start();
                            scram = Some(client);
                            wire::put_sasl_initial_response(&mut out, MECHANISM, first.as_bytes());
                        }
                        11 => {
                            let client = scram.take().ok_or(WireError::Malformed("SASLContinue out of order"))?;
                            let fin = client.answer(body, &creds.scram_secret()?)?;
                            wire::put_sasl_response(&mut out, fin.client_final.as_bytes());
                            scram_final = Some(fin);
                        }
                        12 => {
                            let fin = scram_final.take().ok_or(WireError::Malformed("SASLFinal out of order"))?;
                            fin.verify_server(body)?;
                        }
                        other => return Err(BackendError::UnsupportedAuth(other)),
                    }
                    if !out.is_empty() {
                        self.stream.write_all(&out).await?;
                    }
                }
                tag::PARAMETER_STATUS => {
                    let (name, rest) = wire::read_cstr(body).ok_or(WireError::Malformed("ParameterStatus"))?;
                    let (value, _) = wire::read_cstr(rest).ok_or(WireError::Malformed("ParameterStatus"))?;
                    params.push((Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)));
                }
                tag::BACKEND_KEY_DATA => {
                    if body.len() < 8 {
                        return Err(WireError::Malformed("BackendKeyData").into());
                    }
                    self.key = BackendKey { pid: body.get_u32(), secret: body.get_u32() };
                }
                tag::ERROR_RESPONSE => return Err(BackendError::Server(ErrorFields::parse(body))),
                tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
                tag::READY_FOR_QUERY => break,
                other => return Err(WireError::UnexpectedTag(other).into()),
            }
        }
        self.startup_params = Arc::new(params);
        Ok(())
    }

    /// Reads one whole message (used outside the session's relay loop).
    async fn read_message(&mut self, max_len: usize) -> Result<Bytes, BackendError> {
        loop {
            if let Some(msg) = wire::split_message(&mut self.rbuf, max_len)? {
                return Ok(msg);
            }
            self.rbuf.reserve(Frame::needed(&self.rbuf).max(4096));
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(BackendError::Closed);
            }
        }
    }

    /// True when the idle connection has data or EOF waiting: the server said
    /// something unasked (e.g. FATAL on shutdown) and the connection is unusable.
    /// tokio's cached readiness answers without a syscall: the session's last
    /// short read cleared it, so "readable" means something arrived since
    /// (only then a read confirms it).
    pub fn has_unsolicited_input(&self) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if self.stream.poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Runs pgrelay's own simple queries (ROLLBACK, DISCARD ALL) on a
    /// connection at a sync point and waits until they finish without error.
    pub async fn run_reset(&mut self, queries: &[&str]) -> Result<(), BackendError> {
        for q in queries {
            wire::put_query(&mut self.wbuf, q);
            self.tracker.sent(Expect::Query, Origin::InjectedSetup);
        }
        match self.finish_pending().await? {
            Some(fields) => Err(BackendError::Server(fields)),
            None => Ok(()),
        }
    }

    /// Sends what is buffered (closing an open extended batch with Sync) and
    /// reads until the server owes nothing, discarding what it says. Returns
    /// the last error the server reported on the way.
    pub async fn finish_pending(&mut self) -> Result<Option<ErrorFields>, BackendError> {
        if self.tracker.copy_state() != super::CopyState::None {
            return Err(BackendError::Server(ErrorFields {
                message: "connection abandoned during COPY".into(),
                ..Default::default()
            }));
        }
        if self.tracker.batch_open() {
            wire::put_sync(&mut self.wbuf);
            self.tracker.sent(Expect::Sync, Origin::InjectedSetup);
        }
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        let mut failed = None;
        while self.tracker.pending_ready() > 0 {
            let msg = self.read_message(usize::MAX >> 1).await?;
            if msg[0] == tag::ERROR_RESPONSE {
                failed = Some(ErrorFields::parse(&msg[5..]));
            }
            self.tracker.on_server_message(msg[0], &msg[5..]);
        }
        Ok(failed)
    }
}
