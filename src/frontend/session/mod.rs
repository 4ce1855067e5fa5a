//! One logged-in client. The session reads the client's messages, leases a
//! server connection for each transaction (or for the whole session when
//! pinned or in session mode), forwards the messages' bytes, and relays the
//! server's answers back, both directions at once so that neither side's
//! full socket buffer can stall the other.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use std::pin::Pin;
use std::task::Poll;

use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

mod first_write;
mod forward;
mod lost;
mod own;
mod relay;
mod ryw;
mod statements;
mod timeouts;
mod timing;
mod tracked;

pub use ryw::ReadYourWrites;

use super::checkout::{pause_before_retry, pool_for, route_waiting};
use super::error::SessionError;
use super::prepared::ClientStatements;
use super::startup::LoginParts;
use crate::app::{CancelHandle, Context, Registered, ServerLink, StopMode};
use crate::auth::UserEntry;
use crate::backend::{ServerConn, StatementContext, TxEffect};
use crate::cluster::NodeStatus;
use crate::config::{Config, Database, PoolMode};
use crate::metrics::{ClientMetrics, GaugeGuard};
use crate::pool::{Lease, Pool, PoolError};
use crate::router::{ListenerKind, RouteInput, SessionStateEffect};
use crate::stream::Stream;
use crate::wire::Frame;

/// Stop reading from one side while this much is waiting to go to the other.
const HIGH_WATER: usize = 256 * 1024;
/// Largest read chunk.
const READ_CHUNK: usize = 16 * 1024;
/// First read chunk for a client: most clients send small queries, and an
/// idle client should not hold 16 KiB. A read that fills it doubles it (up
/// to READ_CHUNK), and the buffer keeps its capacity from then on.
const FIRST_CLIENT_READ: usize = 1024;

enum Event {
    /// Bytes from the client were appended to `cbuf` (0: it closed).
    ClientRead(usize),
    /// Bytes from the server were appended to the connection's `rbuf`.
    ServerRead,
    /// A socket we have bytes for can take them again.
    Writable,
    /// pgrelay started draining: end the session at its next boundary.
    Drain,
    Shutdown,
    /// The leased connection's pool was closed: its node stopped being the primary.
    Fenced,
    /// The timer of the client timeouts fired.
    Timeout,
}

pub struct Session {
    ctx: Arc<Context>,
    client: Stream,
    listener: ListenerKind,
    user: Arc<UserEntry>,
    database: Database,
    /// What server connections are given for this client (its startup
    /// settings, under application_name_add_host with its address).
    settings: Arc<Vec<(String, String)>>,
    /// Its settings as given and at startup (see `tracked`).
    origin: tracked::OriginSettings,
    /// A plain session `SET` being followed instead of pinning (see `tracked`).
    tracked: Option<tracked::TrackedSet>,
    cancel: CancelHandle,
    /// The configuration this session last looked at, with its generation.
    config: (u64, Arc<Config>),
    /// Bytes read from the client, not yet handled.
    cbuf: BytesMut,
    /// How much room the next client read gets (grows with the client's batches).
    client_read_size: usize,
    /// Bytes waiting to be written to the client.
    out: BytesMut,
    lease: Option<Lease>,
    /// Pools this session has used, by node name.
    pools: Vec<Arc<Pool>>,
    /// Where this client's next read starts among the replicas (see `RouteInput::turn`).
    read_turn: usize,
    /// What its reads must see, and whose commits it notes (see `ryw`).
    ryw: ReadYourWrites,
    /// Where in `out` the ReadyForQuery of a transaction whose position the
    /// client asked to be reported (`pgrelay.report_commit_lsn`) starts.
    commit_report: Option<usize>,
    statements: ClientStatements,
    /// Private copies of shared statements, by the shared one's server name,
    /// for a client whose settings differ from its context's.
    private_copies: std::collections::HashMap<Arc<str>, Arc<crate::backend::Statement>>,
    /// The client's unnamed statement, re-prepared when a later transaction uses it.
    unnamed: UnnamedStatement,
    /// The client's unnamed statement and portal when they are pgrelay statements.
    own: own::OwnStatements,
    /// Clients with this context may share this client's prepared statements.
    shared_context: StatementContext,
    /// This client's own statement context, for statements parsed while its
    /// settings may differ from its startup settings (created on first use).
    private_context: Option<StatementContext>,
    /// The client changed a setting in the current transaction (SET LOCAL,
    /// set_config): statements it parses now are not shared.
    settings_changed: bool,
    /// pgrelay answered an extended-protocol message with an error: the
    /// client's messages up to its next Sync are discarded, as a server would.
    discard_until_sync: bool,
    /// Names whose Parse pgrelay answered itself in the client's current
    /// batch (up to its Sync): within a batch no schema change can come
    /// between a Parse and its Bind, so if the shared statement turns out
    /// changed, the client prepared the text after the change.
    parsed_here: Vec<Bytes>,
    /// Bytes of a large server message still to be passed through to the
    /// client as they arrive (its header was read and accounted for).
    passthrough: usize,
    /// The server's own FATAL error was relayed: it is closing the connection.
    server_fatal: bool,
    /// A shared statement was prepared and described ahead of the client's
    /// message (see `verify_ahead`), which waits for the answer.
    verifying: bool,
    /// A statement that may drop the client's statements (DEALLOCATE ALL,
    /// DISCARD ALL) is unanswered: they go when the server reports it ran,
    /// and a Bind or Describe of a name waits until then.
    drops_pending: bool,
    /// The client's next message waits for the server's outstanding answers
    /// (see `parse_must_wait`); the client is not read meanwhile.
    stalled: bool,
    /// Why this client keeps its server connection until it disconnects.
    pinned: Option<SessionStateEffect>,
    /// The client's transaction block was lost with its server connection:
    /// pgrelay answers it until the client ends the block.
    lost: Option<lost::LostBlock>,
    /// Client messages held back for a lost server's answers are to be read again.
    recheck_input: bool,
    /// What the statement bound to the unnamed portal does to the transaction.
    bound_effect: TxEffect,
    /// The query and transaction in flight, timed for the statistics.
    timing: timing::Timing,
    /// When the last transaction on the leased connection ended: it goes
    /// back to the pool as idle since then.
    idle_since: Option<Instant>,
    terminated: bool,
    /// Fires when pgrelay starts draining, then (once seen) when it shuts down.
    stop_signal: Signal,
    /// Fires when the pool of the leased connection is closed (fenced): kept
    /// across leases of the same pool, so it is registered once, not per transaction.
    fence: Option<(Arc<Pool>, Signal)>,
    /// A drain has begun: the session ends at its next boundary.
    stopping: bool,
    /// This client's entry in the registry the admin console lists.
    registered: Registered,
    /// The client timeouts' timer, once the configuration turned one on.
    watchdog: Option<Box<timeouts::Watchdog>>,
    /// Reads from the client, and server connections leased, so far
    /// (wrapping): the timeouts tell a new wait from the last one by them.
    client_reads: u32,
    leases: u32,
    /// Watching for the first write a new primary accepts (see `first_write`).
    first_write: Option<first_write::FirstWrite>,
    /// The connection's span: log events name it as their parent, so the
    /// hot loop never has to enter it.
    span: tracing::Span,
    metrics: ClientMetrics,
    /// Counts this client in `pgrelay_clients` while the session lives.
    _connected: GaugeGuard,
}

impl Session {
    pub fn new(
        ctx: Arc<Context>,
        client: Stream,
        listener: ListenerKind,
        parts: LoginParts,
        cbuf: BytesMut,
        span: tracing::Span,
        registered: Registered,
    ) -> Session {
        let metrics = ctx.metrics.client(&parts.database.name, &parts.user.name, listener.as_str());
        // By the settings as given: an address in application_name changes no statement's meaning.
        let shared_context = ctx.settings.statement_context(&parts.settings);
        let address = match Arc::ptr_eq(&parts.settings, &parts.server_settings) {
            true => None,
            false => client.peer_addr().ok(),
        };
        let origin = tracked::OriginSettings { given: parts.settings, startup: parts.server_settings.clone(), address };
        let mut session = Session {
            _connected: GaugeGuard::new(&metrics.connected),
            metrics,
            stop_signal: Signal::new(ctx.lifecycle.draining().clone()),
            config: ctx.config_snapshot(),
            fence: None,
            stopping: false,
            registered,
            watchdog: None,
            client_reads: 0,
            leases: 0,
            first_write: None,
            span,
            ctx,
            client,
            listener,
            user: parts.user,
            database: parts.database,
            settings: parts.server_settings,
            origin,
            tracked: None,
            cancel: parts.cancel,
            cbuf,
            client_read_size: FIRST_CLIENT_READ,
            out: BytesMut::new(),
            lease: None,
            pools: Vec::new(),
            read_turn: rand::random(),
            ryw: parts.read_your_writes,
            commit_report: None,
            statements: ClientStatements::default(),
            unnamed: UnnamedStatement::default(),
            own: own::OwnStatements::default(),
            private_copies: Default::default(),
            shared_context,
            private_context: None,
            settings_changed: false,
            discard_until_sync: false,
            passthrough: 0,
            server_fatal: false,
            stalled: false,
            verifying: false,
            drops_pending: false,
            parsed_here: Vec::new(),
            pinned: None,
            lost: None,
            recheck_input: true,
            bound_effect: TxEffect::UNKNOWN,
            timing: timing::Timing::default(),
            idle_since: None,
            terminated: false,
        };
        session.start_watchdog_if_needed();
        session
    }

    /// Relays until the client leaves or an error ends the session; returns
    /// the error for the caller to report.
    pub async fn run(&mut self) -> Result<(), SessionError> {
        // A step's value; when it failed because the server connection was
        // lost and the client can carry on without it (see `lost`), the next turn.
        macro_rules! step {
            ($result:expr) => {
                match $result {
                    Ok(value) => value,
                    Err(error) => {
                        self.outlive(error)?;
                        continue;
                    }
                }
            };
        }
        while !self.terminated {
            // Messages that arrived together with the last login message, or
            // held back for a lost server's answers.
            if std::mem::take(&mut self.recheck_input) {
                step!(self.handle_client_messages().await);
            }
            match step!(self.next_event().await) {
                Event::ClientRead(0) => return Ok(()),
                Event::ClientRead(n) => {
                    self.client_reads = self.client_reads.wrapping_add(1);
                    self.metrics.bytes_received.inc_by(n as u64);
                    if n >= self.client_read_size {
                        self.client_read_size = (self.client_read_size * 2).min(READ_CHUNK);
                    }
                    step!(self.handle_client_messages().await)
                }
                Event::ServerRead => {
                    step!(self.handle_server_messages());
                    if self.tracked_answered() {
                        // Boxed: the common path's future stays as small as it was.
                        step!(Box::pin(self.learn_tracked_setting()).await);
                    }
                    if self.commit_report.is_some() {
                        self.report_commit_lsn().await;
                    }
                }
                Event::Writable => {}
                Event::Drain => {
                    self.stopping = true;
                    self.stop_signal = Signal::new(self.ctx.shutdown.clone());
                }
                Event::Shutdown => return Err(SessionError::Shutdown),
                Event::Fenced => {
                    let node = self.lease.as_ref().map(|l| l.pool().key.node.clone()).unwrap_or_default();
                    step!(Err(SessionError::NodeFenced { node }))
                }
                Event::Timeout => step!(self.on_timeout()),
            }
            step!(self.flush_server());
            // Released before the client can see ReadyForQuery: a cancel it
            // sends next (handled on any worker) must find no server.
            self.release_if_idle();
            step!(self.flush_client());
            // Messages held back while the client's output was full.
            if self.out.len() < HIGH_WATER && Frame::peek(&self.cbuf, usize::MAX).is_ok_and(|f| f.is_some()) {
                step!(self.handle_client_messages().await);
                step!(self.flush_server());
                self.release_if_idle();
                step!(self.flush_client());
            }
            if self.stopping && self.at_boundary() {
                return Err(SessionError::Shutdown);
            }
        }
        Ok(())
    }

    /// The configuration in force: this session's snapshot, renewed after a reload.
    fn config(&mut self) -> &Config {
        if self.config.0 != self.ctx.config_generation() {
            self.config = self.ctx.config_snapshot();
            self.start_watchdog_if_needed();
        }
        &self.config.1
    }

    /// Whether the drain in progress may end this session now: between
    /// transactions (SIGTERM), or when no server is working for it (SIGINT;
    /// an open transaction is rolled back when the connection is reset).
    fn at_boundary(&self) -> bool {
        let Some(mode) = self.ctx.lifecycle.drain_mode() else { return false };
        let Some(lease) = &self.lease else { return self.cbuf.is_empty() };
        let tracker = lease.conn().tracker();
        match mode {
            StopMode::Immediate => true,
            StopMode::WaitForServers => tracker.at_sync_point(),
            StopMode::WaitForClients => tracker.is_idle(),
        }
    }

    /// Consumes the session, leaving the client socket for a final message.
    pub fn into_client(self) -> (Stream, BytesMut) {
        (self.client, self.out)
    }

    pub fn drop_lease_after_error(&mut self, poison: bool) {
        self.cancel.set_target(None);
        self.tracked = None;
        if let Some(mut lease) = self.lease.take() {
            if poison {
                lease.poison();
            }
        }
    }

    /// Waits for the next thing to do, reading whatever arrived on the way.
    /// Reads go through `poll_read`, which treats a short read as "drained"
    /// and so never spends a syscall on an empty read.
    async fn next_event(&mut self) -> Result<Event, SessionError> {
        let server_out = self.lease.as_ref().map_or(0, |l| l.conn().pending_write());
        // A client that does not read its answers is not read from either
        // (as PostgreSQL does): what pgrelay answers itself is bounded too.
        let want_client_read = server_out < HIGH_WATER && self.out.len() < HIGH_WATER && !self.stalled;
        let want_server_read = self.out.len() < HIGH_WATER;
        // A large message passing through needs no room for all of it.
        let server_read_size = match self.lease.as_ref() {
            Some(l) if self.passthrough == 0 => READ_CHUNK.max(Frame::needed(&l.conn().rbuf)),
            _ => READ_CHUNK,
        };
        if want_client_read {
            let max = self.config().pool.max_message_size + 5;
            self.cbuf.reserve(self.client_read_size.max(Frame::needed(&self.cbuf)).min(max));
        }
        // After the look at the configuration above: a reload applies from this wait.
        self.watch();
        if let Some(lease) = &self.lease {
            if !self.fence.as_ref().is_some_and(|(pool, _)| Arc::ptr_eq(pool, lease.pool())) {
                self.fence = Some((lease.pool().clone(), Signal::new(lease.pool().closed_token())));
            }
        }
        let Session { ctx, client, cbuf, out, lease, stop_signal, fence, stopping, watchdog, .. } = self;
        let mut server = lease.as_mut().map(|l| l.conn_mut());
        let client_has_out = !out.is_empty() || client.has_buffered_output();
        let event = std::future::poll_fn(|cx| {
            // IO first: the signals are only looked at when the session is about to wait.
            let server_read = want_server_read.then_some(server_read_size);
            let io = poll_io(cx, client, cbuf, want_client_read, client_has_out, server.as_deref_mut(), server_read);
            if io.is_ready() {
                return io;
            }
            // A drain is announced by drain_mode before the token fires; once
            // stopping, the signal is the shutdown token, always looked at.
            let may_stop = *stopping || ctx.lifecycle.drain_mode().is_some();
            if stop_signal.poll(cx, may_stop).is_ready() {
                return Poll::Ready(Ok(if *stopping { Event::Shutdown } else { Event::Drain }));
            }
            if let (Some(_), Some((pool, signal))) = (server.as_ref(), fence.as_mut()) {
                if signal.poll(cx, pool.is_closed()).is_ready() {
                    return Poll::Ready(Ok(Event::Fenced));
                }
            }
            if let Some(watchdog) = watchdog.as_deref_mut() {
                if watchdog.poll(cx).is_ready() {
                    return Poll::Ready(Ok(Event::Timeout));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            // The client has the server's own FATAL: no second error from pgrelay.
            Err(SessionError::ServerClosed { .. } | SessionError::ServerIo(_)) if self.server_fatal => {
                Err(SessionError::ServerEnded)
            }
            Err(SessionError::ServerClosed { .. }) => {
                let node = self.lease.as_ref().map(|l| l.pool().key.node.clone()).unwrap_or_default();
                Err(SessionError::ServerClosed { node })
            }
            other => other,
        }
    }

    fn flush_client(&mut self) -> Result<(), SessionError> {
        while !self.out.is_empty() {
            match self.client.try_write(&self.out) {
                Ok(n) => {
                    self.metrics.bytes_sent.inc_by(n as u64);
                    self.out.advance(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(SessionError::ClientIo(e)),
            }
        }
        if self.client.has_buffered_output() {
            self.client.try_write_buffered().map_err(SessionError::ClientIo)?;
        }
        Ok(())
    }

    fn flush_server(&mut self) -> Result<(), SessionError> {
        let Some(lease) = self.lease.as_mut() else { return Ok(()) };
        if let Err(e) = lease.conn_mut().try_flush() {
            lease.poison();
            return Err(SessionError::ServerIo(e));
        }
        Ok(())
    }

    /// Gives the server connection back once the transaction is over.
    fn release_if_idle(&mut self) {
        if self.pinned.is_some() || self.passthrough > 0 {
            return;
        }
        let Some(lease) = &self.lease else { return };
        if lease.pool().mode() == PoolMode::Session {
            return;
        }
        if lease.conn().is_clean() {
            // The cancel target goes first: a cancel under way is then
            // counted on the connection before the lease ends (see cancel.rs).
            self.cancel.set_target(None);
            if let (Some(lease), Some(at)) = (self.lease.as_mut(), self.idle_since.take()) {
                lease.went_idle_at(at);
            }
            self.lease = None;
            self.settings_changed = false;
            self.unnamed.on_lease = false;
            self.registered.set_idle();
        }
    }

    /// Routes the next transaction and leases a connection for it, all
    /// within query_wait_timeout (see [`route_waiting`]).
    async fn acquire(&mut self) -> Result<(), SessionError> {
        // The client's request begins here (a query, in the statistics),
        // and so does its wait for a server connection.
        let asked_at = Instant::now();
        self.idle_since = None;
        self.timing.sending(|| asked_at);
        self.registered.set_waiting(asked_at);
        let mut deadline = None;
        // Something made the client wait: PAUSE, no primary yet, a retry.
        let mut held = false;
        // The position a read must see, once known; the wait for it, once over.
        let reads_at_lsn = self.listener == ListenerKind::ReadOnly && self.ryw != ReadYourWrites::default();
        let mut floor = if reads_at_lsn { None } else { Some(None) };
        let mut gave_up = None;
        loop {
            if self.ctx.lifecycle.is_paused() {
                held = true;
                // Held by PAUSE; query_wait_timeout counts from RESUME on.
                let _waiting = GaugeGuard::new(&self.metrics.waiting);
                tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => return Err(SessionError::Shutdown),
                    _ = self.ctx.lifecycle.wait_resumed() => deadline = None,
                }
            }
            let (wait, fallback, prefer, ryw_wait) = {
                let config = self.config();
                let routing = &config.routing;
                (config.pool.query_wait_timeout, routing.ro_fallback, routing.prefer, routing.read_your_writes_wait)
            };
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + wait);
            // Boxed, as the read-your-writes steps below: the common path's
            // future stays as small as it was.
            if floor.is_none() {
                floor = Some(Box::pin(self.read_floor(deadline)).await);
            }
            let pools = &self.pools;
            // In progress on a node's pool, as far as this session knows the pool.
            let load = |node: &NodeStatus| {
                pools.iter().find(|p| p.key.node == node.name).map_or(0, |p| p.metrics().active.get().max(0) as usize)
            };
            let input = RouteInput { listener: self.listener, turn: self.read_turn, load: &load, prefer };
            let (topology, node, routed_after_waiting, plan) = match floor.flatten() {
                None => {
                    let (topology, node, waited) = route_waiting(&self.ctx, input, fallback, deadline).await?;
                    (topology, node, waited, ryw::ReadPlan::Plain)
                }
                Some(min_lsn) => {
                    Box::pin(ryw::route_at(&self.ctx, input, fallback, deadline, min_lsn, gave_up)).await?
                }
            };
            held |= routed_after_waiting;
            self.read_turn = self.read_turn.wrapping_add(1);
            let pool = self.pool_for_node(&topology.nodes[node]);
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let waiting = GaugeGuard::new(&self.metrics.waiting);
            let checkout = pool.checkout(wait).await;
            drop(waiting);
            let mut lease = match checkout {
                // Fenced while waiting: route again.
                Err(PoolError::Closed) => {
                    held = true;
                    continue;
                }
                Err(PoolError::Connect(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(parent: &self.span, error = %e, "no server connection yet; routing again");
                    held = true;
                    pause_before_retry(deadline).await;
                    continue;
                }
                lease => lease?,
            };
            if self.listener == ListenerKind::ReadWrite {
                // The primary may have moved while the checkout waited.
                if self.ctx.cluster.primary() != Some(node) {
                    held = true;
                    continue;
                }
                self.first_write = first_write::FirstWrite::at_checkout(&self.ctx.cluster, node);
            }
            if let ryw::ReadPlan::Check(min_lsn) = plan {
                if !Box::pin(ryw::replayed_within(&mut lease, min_lsn, ryw_wait)).await {
                    gave_up = Some(ryw_wait);
                    held = true;
                    continue;
                }
            }
            let conn = lease.conn();
            let link = ServerLink { pool: pool.clone(), addr: conn.addr, pid: conn.key.pid, created: conn.created };
            self.registered.set_active(link);
            // Checked after the client shows as active, so PAUSE either waits for it or it sees the pause.
            if self.ctx.lifecycle.is_paused() {
                self.registered.set_waiting(asked_at);
                held = true;
                continue;
            }
            if self.listener == ListenerKind::ReadOnly {
                lease.pool().metrics().reads.routed(plan.reason(node, &topology)).inc();
            }
            // A connection there at once is no wait (and no clock reading);
            // PAUSE, routing, a slot and a new connection's login are.
            let waited = match held || lease.waited() {
                true => lease.assigned_at().saturating_duration_since(asked_at),
                false => std::time::Duration::ZERO,
            };
            lease.pool().metrics().traffic.wait(waited);
            lease.conn_mut().apply_settings(&self.settings);
            let conn = lease.conn();
            self.cancel.set_target(Some((conn.addr, conn.key, conn.cancels_in_flight.clone())));
            self.lease = Some(lease);
            self.leases = self.leases.wrapping_add(1);
            return Ok(());
        }
    }

    /// This session's pool for `node`, skipping pools closed by a failover.
    fn pool_for_node(&mut self, node: &NodeStatus) -> Arc<Pool> {
        self.pools.retain(|p| !p.is_closed());
        if let Some(pool) = self.pools.iter().find(|p| p.key.node == node.name) {
            return pool.clone();
        }
        let pool = pool_for(&self.ctx, node, &self.database, &self.user);
        self.pools.push(pool.clone());
        pool
    }

    fn pin(&mut self, effect: SessionStateEffect) {
        if self.pinned.is_none() {
            tracing::debug!(parent: &self.span, reason = effect.describe(), "client pinned to its server connection");
            self.ctx.metrics.pinned(effect.describe());
        }
        self.pinned.get_or_insert(effect);
        if let Some(lease) = self.lease.as_mut() {
            lease.require_discard();
            lease.set_pinned();
        }
    }

    /// The client may have changed settings: statements it parses from now
    /// on may resolve differently from those it parsed before, so they get a
    /// new private context (none of the earlier ones is shared with them).
    fn note_settings_change(&mut self, changes_settings: bool) {
        if changes_settings {
            self.settings_changed = true;
            self.private_context = None;
        }
    }

    /// The statement context for statements this client parses now.
    fn statement_context(&mut self) -> StatementContext {
        if self.pinned.is_none() && !self.settings_changed {
            return self.shared_context;
        }
        *self.private_context.get_or_insert_with(|| self.ctx.settings.private_context())
    }
}

/// The client's unnamed statement: PostgreSQL keeps it until it is replaced,
/// across transactions, so a Bind in a later transaction (on another server
/// connection) must find it there too.
#[derive(Debug, Default)]
struct UnnamedStatement {
    /// The Parse body after the name, when the client has one.
    definition: Option<Vec<u8>>,
    /// It exists on the leased connection.
    on_lease: bool,
    /// What running it does to the transaction.
    effect: TxEffect,
    /// It is a tracked `SET`: run again in a later batch, it pins the client.
    sets: bool,
}

/// A cancellation signal the relay loop looks at only when a cheap flag
/// says it may have fired. Polling a registered `Notified` takes a lock, and
/// the loop waits twice per transaction; the first poll registers the
/// task's waker, which stays registered, so later polls can be skipped.
struct Signal {
    future: Pin<Box<WaitForCancellationFutureOwned>>,
    registered: bool,
}

impl Signal {
    fn new(token: CancellationToken) -> Signal {
        Signal { future: Box::pin(token.cancelled_owned()), registered: false }
    }

    fn poll(&mut self, cx: &mut std::task::Context<'_>, may_have_fired: bool) -> Poll<()> {
        if self.registered && !may_have_fired {
            return Poll::Pending;
        }
        self.registered = true;
        std::future::Future::poll(self.future.as_mut(), cx)
    }
}

/// Polls the client and (when leased) the server socket: reads into their
/// buffers when wanted, and reports write readiness when bytes are waiting.
fn poll_io(
    cx: &mut std::task::Context<'_>,
    client: &mut Stream,
    cbuf: &mut BytesMut,
    read_client: bool,
    client_has_out: bool,
    server: Option<&mut ServerConn>,
    read_server: Option<usize>,
) -> Poll<Result<Event, SessionError>> {
    {
        if let Some(conn) = server {
            if let Some(size) = read_server {
                conn.rbuf.reserve(size);
                match poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(SessionError::ServerClosed { node: String::new() })),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Ok(Event::ServerRead)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ServerIo(e))),
                    Poll::Pending => {}
                }
            }
            if conn.pending_write() > 0 && conn.stream.poll_write_ready(cx).is_ready() {
                return Poll::Ready(Ok(Event::Writable));
            }
        }
        if read_client {
            match poll_read_buf(Pin::new(&mut *client), cx, cbuf) {
                Poll::Ready(Ok(n)) => return Poll::Ready(Ok(Event::ClientRead(n))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ClientIo(e))),
                Poll::Pending => {}
            }
        }
        if client_has_out && client.poll_write_ready(cx).is_ready() {
            return Poll::Ready(Ok(Event::Writable));
        }
        Poll::Pending
    }
}
