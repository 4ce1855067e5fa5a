//! One server connection: startup, authentication, and its protocol state.
//! The connection owns its write buffer and expected-response queue: every
//! request goes through [`ServerConn::send`] and friends, which record the
//! answer it is owed, so nothing can be written without being accounted for.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server_statements::Presence;
use super::stream::{self, TlsError};
use super::tracker::{Expect, Origin, Synthetic, Tracker, Verdict};
use super::txeffect::TxEffect;
use super::Statement;
use crate::auth::server_login::{LoginRefused, ServerLogin};
use crate::config::{ServerAuthPolicy, ServerTls, TcpOptions};
use crate::stream::Stream;
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
    /// TLS with the server did not come about (`server_tls_sslmode`).
    #[error("TLS with node {node}: {source}")]
    Tls { node: String, source: TlsError },
    #[error("server closed the connection")]
    Closed,
    #[error("server protocol error: {0}")]
    Protocol(#[from] WireError),
    /// pgrelay broke off logging in to the server (its rules or credentials).
    #[error("pgrelay did not log in to node {node} as user {user:?}: {reason}")]
    Login { node: String, user: String, reason: LoginRefused },
    /// The server answered with an ErrorResponse (e.g. unknown database).
    #[error("{}", .0.message)]
    Server(ErrorFields),
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection's protocol state is unknown or unusable.
    #[error("{0}")]
    Abandoned(&'static str),
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
            BackendError::Tls { source, .. } => source.is_transient(),
            BackendError::Protocol(_) | BackendError::Login { .. } | BackendError::Abandoned(_) => false,
        }
    }
}

/// ParameterStatus values a server reported at startup, as (name, value).
pub type ServerParams = Arc<Vec<(Bytes, Bytes)>>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    /// The node's name, for errors.
    pub node: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub credentials: Arc<crate::auth::UserEntry>,
    /// What the node may ask for when pgrelay logs in.
    pub auth_policy: ServerAuthPolicy,
    pub connect_timeout: Duration,
    /// Whether and how to talk TLS to the node.
    pub tls: ServerTls,
    /// Shared statements kept prepared per connection (max_prepared_statements).
    pub max_prepared: usize,
    /// The TCP options in force, read as each connection opens: a reload
    /// stores new ones here, so a pool it keeps opens connections with them.
    pub tcp: Arc<ArcSwap<TcpOptions>>,
}

/// The server's BackendKeyData, needed to cancel its queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendKey {
    pub pid: u32,
    pub secret: u32,
}

/// A client's startup settings as (name, value), sorted by name.
pub type ClientSettings = Vec<(String, String)>;

/// A live, authenticated server connection.
#[derive(Debug)]
pub struct ServerConn {
    pub stream: Stream,
    pub addr: SocketAddr,
    /// Bytes read from the server, not yet handled.
    pub rbuf: BytesMut,
    /// Bytes waiting to be written to the server.
    wbuf: BytesMut,
    tracker: Tracker,
    pub key: BackendKey,
    /// ParameterStatus values reported at startup, as (name, value).
    pub startup_params: ServerParams,
    /// The client settings last applied (None: the connection's defaults).
    applied: Option<Arc<ClientSettings>>,
    /// A client changed a setting itself; reset everything before the next client.
    settings_dirty: bool,
    pub created: Instant,
    pub last_used: Instant,
    /// Cancel requests aimed at this connection that the server has not
    /// acted on yet: while any is, the connection is not pooled.
    pub cancels_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The worker whose reactor the socket is registered with.
    worker: usize,
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
        let tcp = tokio::time::timeout(target.connect_timeout, connect)
            .await
            .map_err(|_| BackendError::ConnectTimeout { addr: addr_text.clone(), timeout: target.connect_timeout })?
            .map_err(|source| BackendError::Connect { addr: addr_text.clone(), source })?;
        tcp.set_nodelay(true)?;
        crate::stream::set_tcp_options(&tcp, &target.tcp.load());
        let addr = tcp.peer_addr()?;
        let open = async {
            let stream = stream::negotiate(tcp, &target.tls, &target.host)
                .await
                .map_err(|source| BackendError::Tls { node: target.node.clone(), source })?;
            let mut conn = ServerConn::new(stream, addr, target);
            conn.startup(target).await?;
            Ok(conn)
        };
        tokio::time::timeout(target.connect_timeout, open)
            .await
            .map_err(|_| BackendError::Timeout(target.connect_timeout))?
    }

    fn new(stream: Stream, addr: SocketAddr, target: &ServerTarget) -> ServerConn {
        let now = Instant::now();
        ServerConn {
            stream,
            addr,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            tracker: Tracker::new(target.max_prepared),
            key: BackendKey { pid: 0, secret: 0 },
            startup_params: Arc::new(Vec::new()),
            applied: None,
            settings_dirty: false,
            created: now,
            last_used: now,
            cancels_in_flight: Arc::default(),
            worker: crate::worker::current(),
        }
    }

    /// Writes `bytes` and whatever TLS still holds of them.
    async fn write_flushed(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn startup(&mut self, target: &ServerTarget) -> Result<(), BackendError> {
        let creds = &target.credentials.server;
        let mut out = BytesMut::new();
        wire::put_startup_message(
            &mut out,
            [(&b"user"[..], creds.user.as_bytes()), (&b"database"[..], target.database.as_bytes())],
        );
        self.write_flushed(&out).await?;
        let mut login = ServerLogin::new(creds, target.auth_policy);
        let refused = |reason| BackendError::Login { node: target.node.clone(), user: creds.user.clone(), reason };
        let mut params = Vec::new();
        loop {
            let msg = self.read_message(MAX_STARTUP_MESSAGE).await?;
            let mut body = &msg[5..];
            match msg[0] {
                tag::AUTHENTICATION => {
                    out.clear();
                    login.on_request(body, &mut out).map_err(refused)?;
                    if !out.is_empty() {
                        self.write_flushed(&out).await?;
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
                tag::READY_FOR_QUERY if login.is_authenticated() => break,
                tag::READY_FOR_QUERY => {
                    return Err(refused(LoginRefused::OutOfOrder("ReadyForQuery before AuthenticationOk")))
                }
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
    pub fn has_unsolicited_input(&mut self) -> bool {
        self.stream.has_unsolicited_input()
    }

    /// Checks that the idle connection still answers, without running a
    /// statement: a lone Sync, which PostgreSQL answers with ReadyForQuery
    /// (idle) and nothing else. Fails when the answer is anything else, or
    /// does not come within `timeout` (the server or the network is gone).
    pub async fn check_alive(&mut self, timeout: Duration) -> Result<(), BackendError> {
        self.send_built(Expect::Sync, Origin::InjectedSetup, wire::put_sync);
        match tokio::time::timeout(timeout, self.finish_pending()).await {
            Ok(Ok(None)) if self.is_clean() => Ok(()),
            Ok(Ok(Some(fields))) => Err(BackendError::Server(fields)),
            Ok(Ok(None)) => Err(BackendError::Abandoned("the server answered a Sync other than idle")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Timeout(timeout)),
        }
    }

    /// Runs pgrelay's own simple queries (ROLLBACK, DISCARD ALL) on a
    /// connection at a sync point and waits until they finish without error.
    pub async fn run_reset(&mut self, queries: &[&str]) -> Result<(), BackendError> {
        for q in queries {
            self.send_built(Expect::Query, Origin::InjectedSetup, |b| wire::put_query(b, q));
        }
        match self.finish_pending().await? {
            Some(fields) => Err(BackendError::Server(fields)),
            None => Ok(()),
        }
    }

    /// Applies the client's settings from scratch and returns the value the
    /// server gives each of them (as SHOW shows it: `UTF8` for `utf8`), in
    /// the order of `wanted`. A value the server rejects is its error.
    pub async fn probe_settings(&mut self, wanted: &Arc<ClientSettings>) -> Result<Vec<Bytes>, BackendError> {
        self.settings_dirty = true;
        self.apply_settings(wanted);
        let mut values = Vec::with_capacity(wanted.len());
        match self
            .finish_pending_with(|msg| {
                if msg[0] == tag::DATA_ROW && msg.len() >= 11 {
                    // One column: its length, then its value.
                    values.push(Bytes::copy_from_slice(&msg[11..]));
                }
            })
            .await?
        {
            Some(fields) => Err(BackendError::Server(fields)),
            None if values.len() == wanted.len() => Ok(values),
            None => Err(BackendError::Abandoned("the server did not answer every setting")),
        }
    }

    /// Runs pgrelay's own one-value query (a WAL position as `int8`) on a
    /// connection at a sync point: the value of its last row, if any.
    pub async fn query_int8(&mut self, sql: &str) -> Result<Option<i64>, BackendError> {
        self.send_built(Expect::Query, Origin::InjectedSetup, |b| wire::put_query(b, sql));
        Ok(self.last_value().await?.and_then(|text| text.parse().ok()))
    }

    /// The value the server has for setting `name` (`current_setting`), asked
    /// on a connection at a sync point. The name travels as a parameter.
    /// Uses the unnamed statement.
    pub async fn current_setting(&mut self, name: &str) -> Result<String, BackendError> {
        const TEXT: u32 = 25;
        let origin = Origin::InjectedSetup;
        self.send_built(Expect::Parse { registers: None, client_name: None }, origin, |b| {
            wire::put_parse(b, b"", "SELECT pg_catalog.current_setting($1)", &[TEXT])
        });
        self.send_built(Expect::Bind { statement: None }, origin, |b| {
            wire::put_bind_text(b, b"", b"", &[name.as_bytes()])
        });
        self.send_built(Expect::Execute, origin, |b| wire::put_execute(b, b""));
        self.send_built(Expect::Sync, origin, wire::put_sync);
        self.last_value().await?.ok_or(BackendError::Abandoned("the server did not report the setting"))
    }

    /// Reads the answers to pgrelay's own one-column query just sent: the
    /// text of its last row, if any, or the error the server reported.
    async fn last_value(&mut self) -> Result<Option<String>, BackendError> {
        let mut value = None;
        // One column: its length, then its text.
        let failed = self
            .finish_pending_with(|msg| {
                if msg[0] == tag::DATA_ROW && msg.len() >= 11 {
                    value = Some(String::from_utf8_lossy(&msg[11..]).into_owned());
                }
            })
            .await?;
        match failed {
            Some(fields) => Err(BackendError::Server(fields)),
            None => Ok(value),
        }
    }

    /// Sends what is buffered (closing an open extended batch with Sync) and
    /// reads until the server owes nothing, discarding what it says. Returns
    /// the last error the server reported on the way.
    pub async fn finish_pending(&mut self) -> Result<Option<ErrorFields>, BackendError> {
        self.finish_pending_with(|_| {}).await
    }

    /// [`ServerConn::finish_pending`], showing each message to `seen`.
    async fn finish_pending_with(&mut self, mut seen: impl FnMut(&[u8])) -> Result<Option<ErrorFields>, BackendError> {
        if self.tracker.copy_state() != super::CopyState::None || self.tracker.client_copy_open() {
            return Err(BackendError::Abandoned("connection abandoned during COPY"));
        }
        if self.tracker.batch_open() {
            self.send_built(Expect::Sync, Origin::InjectedSetup, wire::put_sync);
        }
        self.stream.write_all(&self.wbuf).await?;
        self.stream.flush().await?;
        self.wbuf.clear();
        let mut failed = None;
        while self.tracker.pending_ready() > 0 {
            let msg = self.read_message(usize::MAX >> 1).await?;
            if msg[0] == tag::ERROR_RESPONSE {
                failed = Some(ErrorFields::parse(&msg[5..]));
            }
            seen(&msg);
            if let Verdict::Desync(reason) = self.tracker.on_server_message(msg[0], &msg[5..]) {
                return Err(BackendError::Abandoned(reason));
            }
        }
        Ok(failed)
    }

    /// The connection's protocol state, to look at.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Queues `msg` for the server, recording the answer it is owed.
    #[inline]
    pub fn send(&mut self, msg: &[u8], expect: Expect, origin: Origin) {
        self.send_built(expect, origin, |b| b.extend_from_slice(msg));
    }

    /// Queues the client's message that runs statements (a Query,
    /// FunctionCall or Execute), with what they do to the transaction.
    #[inline]
    pub fn send_running(&mut self, msg: &[u8], expect: Expect, effect: TxEffect) {
        if self.tracker.client_copy_open() {
            self.end_open_copy();
        }
        if self.tracker.sent_with(expect, Origin::Client, effect).is_ok() {
            self.wbuf.extend_from_slice(msg);
        }
    }

    /// Queues a message pgrelay builds, recording the answer it is owed.
    #[inline]
    pub fn send_built(&mut self, expect: Expect, origin: Origin, build: impl FnOnce(&mut BytesMut)) {
        if self.tracker.client_copy_open() && !matches!(expect, Expect::CopyData | Expect::CopyEnd | Expect::Flush) {
            self.end_open_copy();
        }
        if self.tracker.sent(expect, origin).is_ok() {
            build(&mut self.wbuf);
        }
    }

    /// The client sent something other than COPY data while its COPY FROM
    /// STDIN is open. Whether the server already failed the COPY (and would
    /// answer that message) or still reads data (and would ignore or choke
    /// on it) cannot be known, so pgrelay ends the COPY first with CopyFail:
    /// either way the server is then out of COPY, and what follows is
    /// answered as it would be after any failed COPY.
    fn end_open_copy(&mut self) {
        if self.tracker.sent(Expect::CopyEnd, Origin::Injected).is_ok() {
            wire::put_copy_fail(&mut self.wbuf, "pgrelay: the client sent another message before CopyDone or CopyFail");
        }
    }

    /// Makes sure the shared statement exists on this connection, preparing
    /// it first when it does not; closes what that evicts. Returns whether a
    /// Parse was queued. For the client's own Parse (`client_name` given), a
    /// statement whose earlier Parse is still unanswered is prepared again
    /// (closed first): if that Parse fails, so must this one, as it would on
    /// the server.
    pub fn prepare(&mut self, stmt: &Arc<Statement>, origin: Origin, client_name: Option<Bytes>) -> bool {
        let presence = self.tracker.prepared().touch(&stmt.server_name);
        // A Parse still unanswered serves requests of its own batch (if it
        // fails, the server skips them too), but not of a later one.
        let reparse = match presence {
            Presence::Confirmed => return false,
            Presence::Pending { batch } if client_name.is_none() && batch == self.tracker.batch() => return false,
            Presence::Pending { .. } | Presence::Doubtful => true,
            Presence::Absent => false,
        };
        if self.tracker.client_copy_open() {
            self.end_open_copy();
        }
        let name = stmt.server_name.clone();
        if reparse || self.tracker.prepared().is_uncertain() {
            // It may exist after all: a Close of a missing statement is no error.
            self.send_built(Expect::CloseUnknown, Origin::Injected, |b| {
                wire::put_statement_op(b, wire::frontend::CLOSE, name.as_bytes())
            });
        }
        let batch = self.tracker.batch();
        let evicted = self.tracker.prepared().insert(name.clone(), batch);
        self.send_built(Expect::Parse { registers: Some(stmt.clone()), client_name }, origin, |b| {
            wire::put_parse_renamed(b, name.as_bytes(), stmt.definition())
        });
        if let Some(old) = evicted {
            self.send_built(Expect::Close { closes: Some(old.clone()) }, Origin::Injected, |b| {
                wire::put_statement_op(b, wire::frontend::CLOSE, old.as_bytes())
            });
        }
        true
    }

    /// Makes the shared statement's server name stand for a statement on
    /// this connection, for the client's DEALLOCATE of it to get the
    /// server's own answer, and forgets it. When it is not known to be
    /// here, a stand-in (`SELECT 1`) is prepared under the name in a batch
    /// of its own, answers swallowed: a Parse that fails (in an aborted
    /// transaction) must not make the server skip the DEALLOCATE, which
    /// then fails as it does on a direct connection.
    pub fn prepare_to_deallocate(&mut self, stmt: &Statement) {
        let name = stmt.server_name.clone();
        if self.tracker.prepared().presence(&name) != Presence::Confirmed {
            let quiet = Origin::InjectedQuiet;
            self.send_built(Expect::CloseUnknown, quiet, |b| {
                wire::put_statement_op(b, wire::frontend::CLOSE, name.as_bytes())
            });
            self.send_built(Expect::Parse { registers: None, client_name: None }, quiet, |b| {
                wire::put_parse(b, name.as_bytes(), "SELECT 1", &[])
            });
            self.send_built(Expect::Sync, quiet, wire::put_sync);
        }
        self.forget_statement(&name);
        self.statements_uncertain();
    }

    /// Describes the shared statement (answers swallowed) to learn its result
    /// description, or to check it against the one first learnt. `fork_for`
    /// is the client's name when this follows the client's own Parse.
    pub fn describe_shape(&mut self, stmt: &Arc<Statement>, fork_for: Option<Bytes>) {
        let describe = Expect::DescribeStatement { got_parameters: false, shape_of: Some(stmt.clone()), fork_for };
        self.send_built(describe, Origin::Injected, |b| {
            wire::put_statement_op(b, wire::frontend::DESCRIBE, stmt.server_name.as_bytes())
        });
    }

    /// Whether the shared statement is prepared here (and usable as it is).
    pub fn has_statement(&self, stmt: &Statement) -> bool {
        self.tracker.is_usable(&stmt.server_name)
    }

    /// Whether describing `stmt` here just showed a result type other than
    /// the one its clients prepared (reported once).
    pub fn take_mismatch(&mut self, stmt: &Statement) -> bool {
        self.tracker.take_mismatch(&stmt.server_name)
    }

    /// Forgets a shared statement the client's own command deallocates.
    pub fn forget_statement(&mut self, server_name: &str) {
        self.tracker.prepared().remove(server_name);
    }

    /// The client's Parses and Closes that did not happen after all, in
    /// the order they were sent.
    pub fn take_undone(&mut self) -> Option<Vec<super::tracker::Undone>> {
        self.tracker.take_undone()
    }

    /// Asks the server for the answers it holds back until a Sync (an open
    /// batch's), so that what is outstanding gets answered.
    pub fn request_flush(&mut self) {
        if self.tracker.batch_open() && !self.tracker.client_copy_open() {
            self.send_built(Expect::Flush, Origin::Injected, wire::put_flush);
        }
    }

    /// The client ran something that may have deallocated statements.
    pub fn statements_uncertain(&mut self) {
        self.tracker.prepared().make_uncertain();
    }

    /// Queues an answer pgrelay gives itself, in order with the server's.
    pub fn synthetic(&mut self, answer: Synthetic, out: &mut BytesMut) {
        self.tracker.synthetic(answer, out);
    }

    /// Accounts for one server message (see [`Tracker::on_server_message`]).
    #[inline]
    pub fn on_server_message(&mut self, msg_tag: u8, body: &[u8]) -> Verdict {
        let verdict = self.tracker.on_server_message(msg_tag, body);
        if verdict == Verdict::Relay && msg_tag == tag::PARAMETER_STATUS {
            // The client changed a reported setting itself.
            self.settings_dirty = true;
        }
        verdict
    }

    /// Emits the synthetic answers now due (after relaying a server message).
    #[inline]
    pub fn emit_synthetic(&mut self, out: &mut BytesMut) {
        self.tracker.emit_synthetic(out);
    }

    /// The worker whose reactor the socket is registered with.
    #[inline]
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// This connection, registered with the current worker's reactor: a
    /// connection last used on another worker moves (its socket and TLS
    /// session kept). Only for an idle connection, which nobody polls.
    pub fn moved_to_this_worker(mut self) -> io::Result<ServerConn> {
        let here = crate::worker::current();
        if self.worker != here {
            self.stream = self.stream.rebind()?;
            self.worker = here;
        }
        Ok(self)
    }

    /// Bytes queued for the server, not yet written (at least 1 while TLS
    /// holds encrypted records the socket did not take yet).
    #[inline]
    pub fn pending_write(&self) -> usize {
        self.wbuf.len().max(usize::from(self.stream.has_buffered_output()))
    }

    /// Writes what the socket takes now.
    pub fn try_flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        if self.stream.has_buffered_output() {
            self.stream.try_write_buffered()?;
        }
        Ok(())
    }

    /// Nothing owed, nothing buffered, no transaction: another client may have it.
    #[inline]
    pub fn is_clean(&self) -> bool {
        self.tracker.is_idle() && self.rbuf.is_empty() && self.wbuf.is_empty()
    }

    /// DISCARD ALL ran: no statements, no settings of any client.
    pub fn discarded(&mut self) {
        self.tracker.prepared().reset();
        self.applied = None;
        self.settings_dirty = false;
    }

    /// Queues [`RESTORE_RESET_SETTINGS`] for `wanted`, the client's startup
    /// settings, behind the client's statement that may have reset them.
    pub fn restore_reset_settings(&mut self, wanted: &Arc<ClientSettings>) {
        if wanted.is_empty() {
            return;
        }
        let names = text_array(wanted.iter().map(|(n, _)| n.as_str()));
        let values = text_array(wanted.iter().map(|(_, v)| v.as_str()));
        const TEXT: u32 = 25;
        let quiet = Origin::InjectedQuiet;
        self.send_built(Expect::Parse { registers: None, client_name: None }, quiet, |b| {
            wire::put_parse(b, b"", RESTORE_RESET_SETTINGS, &[TEXT, TEXT])
        });
        self.send_built(Expect::Bind { statement: None }, quiet, |b| {
            wire::put_bind_text(b, b"", b"", &[names.as_bytes(), values.as_bytes()])
        });
        self.send_built(Expect::Execute, quiet, |b| wire::put_execute(b, b""));
        self.send_built(Expect::Sync, quiet, wire::put_sync);
    }

    /// A client's statement may change its settings in a way pgrelay learns
    /// only afterwards: until it does, the next lease resets everything.
    pub fn settings_may_change(&mut self) {
        self.settings_dirty = true;
    }

    /// The connection has exactly `settings` as a client's own (a setting
    /// the client changed itself was learned back from the server).
    pub fn settings_are(&mut self, settings: Arc<ClientSettings>) {
        self.applied = Some(settings);
        self.settings_dirty = false;
    }

    /// Brings the connection to the client's startup settings, answers
    /// swallowed. Values travel as parameters of `set_config($1, $2, false)`,
    /// never as SQL text, so no value can be read as SQL whatever the
    /// connection's string settings are.
    pub fn apply_settings(&mut self, wanted: &Arc<ClientSettings>) {
        if !self.settings_dirty && self.applied.as_ref().is_some_and(|a| Arc::ptr_eq(a, wanted)) {
            return;
        }
        let current = if self.settings_dirty { None } else { self.applied.clone() };
        let current = current.as_deref().map_or(&[][..], |c| &c[..]);
        let mut resets = String::new();
        if self.settings_dirty {
            resets.push_str("RESET ALL;");
        }
        for (name, _) in current.iter().filter(|(name, _)| !wanted.iter().any(|(n, _)| n == name)) {
            resets.push_str(&format!("RESET {};", quote_ident(name)));
        }
        if !resets.is_empty() {
            self.send_built(Expect::Query, Origin::InjectedSetup, |b| wire::put_query(b, &resets));
        }
        let changed: Vec<&(String, String)> =
            wanted.iter().filter(|(name, value)| !current.iter().any(|(n, v)| n == name && v == value)).collect();
        if !changed.is_empty() {
            const TEXT: u32 = 25;
            let sql = "SELECT pg_catalog.set_config($1, $2, false)";
            self.send_built(Expect::Parse { registers: None, client_name: None }, Origin::InjectedSetup, |b| {
                wire::put_parse(b, b"", sql, &[TEXT, TEXT])
            });
            for (name, value) in changed {
                self.send_built(Expect::Bind { statement: None }, Origin::InjectedSetup, |b| {
                    wire::put_bind_text(b, b"", b"", &[name.as_bytes(), value.as_bytes()])
                });
                self.send_built(Expect::Execute, Origin::InjectedSetup, |b| wire::put_execute(b, b""));
            }
            self.send_built(Expect::Sync, Origin::InjectedSetup, wire::put_sync);
        }
        self.applied = Some(wanted.clone());
        self.settings_dirty = false;
    }
}

/// Brings back the client's startup settings that a statement of its reset
/// to the server's defaults (`RESET`, `DISCARD ALL`, `SET x TO DEFAULT`): on
/// a direct connection those return to the values of the startup packet,
/// but pgrelay applied them with `set_config`, so the server resets them to
/// its own. Only settings no longer set by the session are touched, so the
/// client's own later `SET`s stay.
const RESTORE_RESET_SETTINGS: &str = "SELECT pg_catalog.set_config(s.name, v.value, false) \
     FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS v(name, value) \
     JOIN pg_catalog.pg_settings s ON pg_catalog.lower(s.name) = pg_catalog.lower(v.name) \
     WHERE s.source <> 'session'";

/// A text array literal of `values` (each double-quoted, `"` and `\` escaped),
/// sent as a parameter, never as SQL.
fn text_array<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = values.map(|v| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

/// An identifier in double quotes (unaffected by standard_conforming_strings).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
