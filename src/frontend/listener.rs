//! Accepting clients: one acceptor (on worker 0) that hands each new
//! connection to the least busy worker, one task per connection, admitted
//! while logging in by the pre-auth caps and once authenticated by
//! max_client_conn (see `app::preauth`), a login deadline, and one span per
//! connection. A login
//! that names the admin console goes to the [`ConsoleHandler`] the listener
//! was started with.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::stream::{set_tcp_options, Stream};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{Instrument, Span};

use super::error::SessionError;
use super::session::Session;
use super::startup::{login, open, Login, Opened, Opening};
use crate::app::{AdminLogin, Admission, ClientInfo, Context, Limits, LoadGuard, Refusal, Slot, CANCEL_WINDOW};
use crate::metrics::{ErrorOrigin, LoginResult};
use crate::router::ListenerKind;
use crate::wire::{self, sqlstate, Severity};

/// How long a final error message may take to reach a departing client.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections that may wait for a worker to take them; beyond, the
/// acceptor serves them itself.
const HANDOFF_QUEUE: usize = 1024;

/// Serves a connection whose login named the admin console; `BytesMut` holds
/// what the client sent after its login. Given by whoever starts the
/// listeners, so the client side never names the console.
pub type ConsoleHandler =
    fn(Arc<Context>, Stream, BytesMut, AdminLogin, Span) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection the acceptor admitted, on its way to the worker that serves it.
pub struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    admitted: Admitted,
    load: LoadGuard,
}

/// What the pre-auth caps let a new connection do.
enum Admitted {
    /// Log in.
    Client(Slot),
    /// Only cancel (see [`cancel_or_refuse`]).
    CancelOnly(Refusal, Slot),
}

/// The acceptor's way to the other workers: one queue per worker, 1 and up.
pub struct Dispatch {
    queues: Vec<mpsc::Sender<Accepted>>,
}

/// A [`Dispatch`] for `workers` workers, and the receiving end of each
/// queue, for workers 1 and up in order.
pub fn dispatch(workers: usize) -> (Arc<Dispatch>, Vec<mpsc::Receiver<Accepted>>) {
    let (queues, receivers) = (1..workers.max(1)).map(|_| mpsc::channel(HANDOFF_QUEUE)).unzip();
    (Arc::new(Dispatch { queues }), receivers)
}

/// Accepts clients on `listener` (on worker 0, the acceptor) until pgrelay drains or
/// shuts down; the listening socket closes on return, so new connections
/// are refused. Each connection the pre-auth caps admit goes to the least
/// busy worker, through `dispatch` when that is another one. Admin console
/// logins are handed to `console`.
pub async fn serve(
    ctx: Arc<Context>,
    listener: TcpListener,
    kind: ListenerKind,
    console: ConsoleHandler,
    dispatch: Arc<Dispatch>,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.lifecycle.draining().cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, listener = kind.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The TCP options in force now stay this socket's for its life.
        set_tcp_options(&stream, &ctx.config().pool.tcp);
        let Some(admitted) = admit(&ctx, &stream, peer, kind) else { continue };
        let worker = ctx.worker_load.least_busy();
        let load = ctx.worker_load.enter(worker);
        let Some(queue) = worker.checked_sub(1).and_then(|other| dispatch.queues.get(other)) else {
            start(&ctx, stream, peer, kind, admitted, load, console);
            continue;
        };
        // The socket leaves this worker's reactor for the other's.
        let Ok(stream) = stream.into_std() else { continue };
        if let Err(full_or_gone) = queue.try_send(Accepted { stream, peer, kind, admitted, load }) {
            // Served here after all.
            let Accepted { stream, admitted, load, .. } = full_or_gone.into_inner();
            drop(load);
            let Ok(stream) = TcpStream::from_std(stream) else { continue };
            start(&ctx, stream, peer, kind, admitted, ctx.worker_load.enter(0), console);
        }
    }
}

/// Serves the connections the acceptor hands this worker, until it stops
/// handing them (it drained) or pgrelay shuts down.
pub async fn serve_handed(ctx: Arc<Context>, mut queue: mpsc::Receiver<Accepted>, console: ConsoleHandler) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = queue.recv() => accepted,
        };
        let Some(Accepted { stream, peer, kind, admitted, load }) = accepted else { return };
        match TcpStream::from_std(stream) {
            Ok(stream) => start(&ctx, stream, peer, kind, admitted, load, console),
            Err(e) => tracing::warn!(error = %e, %peer, "a worker could not register a client's socket"),
        }
    }
}

/// What the pre-auth caps let a new connection do; a connection they
/// refuse outright is told so here and closed.
fn admit(ctx: &Context, stream: &TcpStream, peer: SocketAddr, kind: ListenerKind) -> Option<Admitted> {
    let limits = {
        let pool = &ctx.config().pool;
        Limits { total: pool.max_pre_auth_conn, per_addr: pool.max_pre_auth_conn_per_addr }
    };
    let refusal = match ctx.pre_auth.admit(peer.ip(), limits) {
        Ok(slot) => return Some(Admitted::Client(slot)),
        Err(refusal) => refusal,
    };
    if let Some(slot) = ctx.pre_auth.admit_for_cancel(peer.ip()) {
        return Some(Admitted::CancelOnly(refusal, slot));
    }
    let span = tracing::info_span!("client", %peer, port = kind.as_str());
    refused(ctx, &refusal, &span);
    // Not worth a task: the error fits in the new socket's send buffer, and
    // whatever happens to it, the socket closes.
    let mut message = BytesMut::new();
    let (code, text) = (sqlstate::TOO_MANY_CONNECTIONS, refusal.message());
    wire::put_error_response(&mut message, Severity::Fatal, code, &text, None);
    let _ = stream.try_write(&message);
    None
}

/// Starts the task of an admitted connection on this worker.
fn start(
    ctx: &Arc<Context>,
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    admitted: Admitted,
    load: LoadGuard,
    console: ConsoleHandler,
) {
    let worker = crate::worker::current();
    let span = tracing::info_span!("client", %peer, port = kind.as_str(), worker);
    match admitted {
        Admitted::Client(slot) => {
            let admission = Admission::PreAuth(slot);
            spawn_counted(ctx, load, handle_client(ctx.clone(), stream, peer, kind, span, admission, console));
        }
        Admitted::CancelOnly(refusal, slot) => {
            spawn_counted(ctx, load, cancel_or_refuse(ctx.clone(), stream, refusal, span, slot));
        }
    }
}

/// Runs a connection's task, counted in its worker's load until it ends.
fn spawn_counted(ctx: &Context, load: LoadGuard, task: impl Future<Output = ()> + Send + 'static) {
    ctx.client_tasks.spawn(async move {
        task.await;
        drop(load);
    });
}

/// A connection beyond the pre-auth caps, within the small allowance for
/// cancels: a CancelRequest sent within [`CANCEL_WINDOW`] is served as
/// usual (it is answered at once and never logs in); a startup packet,
/// anything else, or silence is refused with 53300 naming the cap.
async fn cancel_or_refuse(ctx: Arc<Context>, tcp: TcpStream, refusal: Refusal, span: Span, _slot: Slot) {
    let mut buf = BytesMut::new();
    let tls = ctx.config().tls.client.acceptor.clone();
    let stream = match open(tcp, &mut buf, tls, CANCEL_WINDOW).instrument(span.clone()).await {
        Ok(Opened { opening: Opening::Cancel { pid, secret }, .. }) => return ctx.cancels.cancel(pid, secret).await,
        Ok(Opened { opening: Opening::Closed, .. })
        | Err((None, _) | (_, SessionError::ClientIo(_) | SessionError::ClientTls(_))) => return,
        Ok(Opened { stream, opening: Opening::Startup(_), .. }) | Err((Some(stream), _)) => stream,
    };
    refused(&ctx, &refusal, &span);
    farewell(stream, BytesMut::new(), sqlstate::TOO_MANY_CONNECTIONS.into(), refusal.message()).await;
}

/// Counts a connection refused by a pre-auth cap, and logs it (at most one
/// line per interval, with the number refused since the last one).
fn refused(ctx: &Context, refusal: &Refusal, span: &Span) {
    ctx.metrics.login(LoginResult::Rejected);
    ctx.metrics.error(sqlstate::TOO_MANY_CONNECTIONS.as_bytes(), ErrorOrigin::Pgrelay);
    if let Some(refused) = ctx.pre_auth.note_refusal() {
        tracing::warn!(parent: span, refused, "{}; connection refused", refusal.message());
    }
}

/// One client connection. Its span is entered while logging in and named as
/// the parent of every later event; the relay loop itself runs outside it,
/// since entering a span on every poll is measurable on the hot path.
async fn handle_client(
    ctx: Arc<Context>,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    span: Span,
    mut admission: Admission,
    console: ConsoleHandler,
) {
    let login_timeout = ctx.config().pool.client_login_timeout;
    let started = tokio::time::Instant::now();
    let mut buf = BytesMut::new();
    let tls = ctx.config().tls.client.acceptor.clone();
    // Boxed, so that the login's state is freed once it is over instead of
    // staying in every idle client's task.
    let opening = Box::pin(open(tcp, &mut buf, tls, login_timeout).instrument(span.clone()));
    let opened = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        opened = opening => opened,
    };
    let (mut stream, params, tls) = match opened {
        Ok(Opened { stream, opening: Opening::Startup(params), tls }) => (stream, params, tls),
        Ok(Opened { opening: Opening::Cancel { pid, secret }, .. }) => return ctx.cancels.cancel(pid, secret).await,
        Ok(Opened { opening: Opening::Closed, .. }) => return,
        Err((stream, error)) => {
            ctx.metrics.login(login_failure(&error));
            match stream {
                Some(stream) => report(&ctx, stream, BytesMut::new(), error, &span).await,
                None => tracing::debug!(parent: &span, %error, "client connection closed during the TLS handshake"),
            }
            return;
        }
    };
    let login = Box::pin(
        tokio::time::timeout_at(
            started + login_timeout,
            login(&ctx, &mut stream, &mut buf, params, tls.as_deref(), kind, &mut admission),
        )
        .instrument(span.clone()),
    );
    let logged_in = tokio::select! {
        _ = ctx.shutdown.cancelled() => Ok(Err(SessionError::Shutdown)),
        r = login => r,
    };
    let (parts, welcome) = match logged_in {
        Ok(Ok(Login::Client(parts, welcome))) => (parts, welcome),
        Ok(Ok(Login::Admin(admin))) => {
            ctx.metrics.login(LoginResult::Ok);
            tracing::info!(parent: &span, user = %admin.user.name, "admin console login");
            return console(ctx, stream, buf, admin, span).await;
        }
        Ok(Err(error)) => {
            ctx.metrics.login(login_failure(&error));
            return report(&ctx, stream, BytesMut::new(), error, &span).await;
        }
        Err(_) => {
            ctx.metrics.login(LoginResult::Error);
            return report(&ctx, stream, BytesMut::new(), SessionError::LoginTimeout(login_timeout), &span).await;
        }
    };
    ctx.metrics.login(LoginResult::Ok);
    tracing::info!(parent: &span, user = %parts.user.name, database = %parts.database.name, "client logged in");
    let registered = ctx.clients.register(ClientInfo {
        peer,
        local: stream.local_addr().ok(),
        user: parts.user.name.clone(),
        database: parts.database.name.clone(),
        listener: kind,
        application_name: parts.application_name().to_owned(),
        tls: stream.tls_description(),
        worker: crate::worker::current(),
    });
    let welcomed = tokio::select! {
        _ = ctx.shutdown.cancelled() => return,
        written = tokio::time::timeout_at(started + login_timeout, stream.write_all(&welcome)) => written,
    };
    match welcomed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return tracing::debug!(parent: &span, %error, "client connection lost before its welcome"),
        Err(_) => {
            let error = SessionError::LoginTimeout(login_timeout);
            return report(&ctx, stream, BytesMut::new(), error, &span).await;
        }
    }
    let mut session = Box::new(Session::new(ctx.clone(), stream, kind, parts, buf, span.clone(), registered));
    let result = session.run().await;
    let poison = matches!(
        result,
        Err(SessionError::ServerClosed { .. }
            | SessionError::ServerIo(_)
            | SessionError::ServerProtocol(_)
            | SessionError::ServerDesync(_)
            | SessionError::ServerEnded
            | SessionError::ServerGone { .. }
            | SessionError::PinnedStateLost { .. }
            | SessionError::QueryNotCancelled { .. }
            | SessionError::ClientProtocol(_))
    );
    session.drop_lease_after_error(poison);
    let (stream, out) = session.into_client();
    match result {
        Ok(()) => tracing::debug!(parent: &span, "client disconnected"),
        Err(error) => report(&ctx, stream, out, error, &span).await,
    }
    drop(admission);
}

/// Logs an error that ended a connection and tells the client, if it is still there.
async fn report(ctx: &Context, stream: Stream, pending: BytesMut, error: SessionError, span: &Span) {
    match error.sqlstate() {
        Some(code) => {
            ctx.metrics.error(code.as_bytes(), ErrorOrigin::Pgrelay);
            tracing::info!(parent: span, code = %code, error = %error, "closing client connection");
            // Boxed: only departing clients need this state, not every task.
            Box::pin(farewell(stream, pending, code, error.to_string())).await;
        }
        None => {
            tracing::debug!(parent: span, error = %error, "client connection lost");
            if !pending.is_empty() {
                // What the server said last (its own FATAL) still reaches the client.
                let mut stream = stream;
                let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
                    stream.write_all(&pending).await?;
                    stream.shutdown().await
                })
                .await;
            }
        }
    }
}

fn login_failure(error: &SessionError) -> LoginResult {
    match error {
        SessionError::Login {
            code: sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION | sqlstate::INSUFFICIENT_PRIVILEGE,
            ..
        } => LoginResult::AuthFailed,
        SessionError::Login { code: sqlstate::TOO_MANY_CONNECTIONS, .. } => LoginResult::Rejected,
        _ => LoginResult::Error,
    }
}

/// Sends what was still pending plus a FATAL error, then closes.
async fn farewell(mut stream: Stream, mut pending: BytesMut, code: String, message: String) {
    wire::put_error_response(&mut pending, Severity::Fatal, &code, &message, None);
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        stream.write_all(&pending).await?;
        stream.shutdown().await
    })
    .await;
}
