//! Login: SSL/GSS negotiation (TLS when configured), the StartupMessage, client
//! authentication, and the welcome (ParameterStatus, BackendKeyData,
//! ReadyForQuery). A client that fails here never costs a server connection,
//! except the one that fetches a pool's ParameterStatus values the first time.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::checkout::{login_server, route_waiting, LoginServer};
use super::error::SessionError;
use super::session::ReadYourWrites;
use crate::app::{application_name, AdminLogin, Admission, CancelHandle, Context};
use crate::auth::{AuthError, AuthStep, ClientAuth, LookupTarget, UserEntry};
use crate::backend::ClientSettings;
use crate::config::{ClientSslMode, ClientTlsAcceptor, Database, Prefer, ALPN_POSTGRESQL};
use crate::router::{self, ListenerKind, RouteInput};
use crate::stream::{Socket, Stream};
use crate::wire::{
    self, frontend as tag, sqlstate, StartupPacket, StartupParams, StartupPeek, TxStatus, WireError,
    MAX_STARTUP_PARAMETERS,
};

/// Largest password message accepted before a client is authenticated.
const MAX_AUTH_MESSAGE: usize = 8192;

fn login_error(code: &'static str, message: impl Into<String>) -> SessionError {
    SessionError::Login { code, message: message.into() }
}

/// Who the client is, once logged in.
pub struct LoginParts {
    pub user: Arc<crate::auth::UserEntry>,
    pub database: Database,
    /// The startup settings as the client gave them (shared by every client that gave the same).
    pub settings: Arc<ClientSettings>,
    /// What server connections are given for this client: `settings`, or
    /// under application_name_add_host this client's own copy with its
    /// address in application_name.
    pub server_settings: Arc<ClientSettings>,
    pub cancel: CancelHandle,
    /// `pgrelay.min_lsn` and `pgrelay.causal_id` from the startup options.
    pub read_your_writes: ReadYourWrites,
}

impl LoginParts {
    pub fn application_name(&self) -> &str {
        application_name(&self.settings)
    }
}

/// The databases that name the admin console instead of a database.
pub const ADMIN_DATABASES: [&str; 2] = ["pgrelay", "pgbouncer"];

/// What a connection turned out to be.
pub enum Login {
    /// A client of a database, with its welcome (AuthenticationOk to
    /// ReadyForQuery) still to be sent: whoever runs the session lists the
    /// client first, so that nothing the client can do after its welcome
    /// finds it missing.
    Client(LoginParts, BytesMut),
    /// An authenticated user of the admin console; nothing was sent after
    /// authentication (the console sends its own welcome).
    Admin(AdminLogin),
}

/// What a connection opened with, once its SSL/GSS requests were answered.
pub enum Opening {
    Startup(StartupParams),
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// The client left before a whole startup packet (a health check, a port
    /// scan, a client that did not like the 'N'): as PostgreSQL does, it is
    /// closed without a word. Partial packets count: nobody is left to tell.
    Closed,
}

/// Runs the login of a client that opened with `params` (see [`open`]);
/// returns who the client is. Bytes the client sent after its last login
/// message stay in `buf`. Once the client is authenticated, `admission`
/// holds one of max_client_conn instead of a pre-auth share.
pub async fn login(
    ctx: &Arc<Context>,
    client: &mut Stream,
    buf: &mut BytesMut,
    params: StartupParams,
    tls: Option<&ClientTlsAcceptor>,
    listener: ListenerKind,
    admission: &mut Admission,
) -> Result<Login, SessionError> {
    let deadline = tokio::time::Instant::now() + ctx.config().pool.client_login_timeout;
    check_tls(client, tls, &params.user)?;
    let mut settings = client_settings(&params)?;
    let read_your_writes =
        ReadYourWrites::from_startup(&mut settings).map_err(|(code, message)| login_error(code, message))?;
    let user = find_user(ctx, &params.user, deadline).await?;
    let channel_binding = tls.filter(|_| client.is_tls()).map(|tls| tls.end_point.as_slice());
    if let Err(error) = authenticate(client, buf, &user, channel_binding).await {
        if user.is_unknown() {
            tracing::info!(user = %user.name, "login as a user that pgrelay does not know");
        }
        return Err(error);
    }
    admission.authenticated(&ctx.client_slots).map_err(|_| {
        let max = ctx.config().pool.max_client_conn;
        login_error(sqlstate::TOO_MANY_CONNECTIONS, format!("too many client connections (max_client_conn = {max})"))
    })?;
    if ADMIN_DATABASES.contains(&params.database.as_str()) {
        return admin_login(ctx, user, settings).map(Login::Admin);
    }
    let database = ctx.config().databases.iter().find(|d| d.name == params.database).cloned().ok_or_else(|| {
        login_error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{}\" is not configured in pgrelay", params.database),
        )
    })?;
    let server_params = server_params(ctx, listener, &user, &database).await?;
    let settings = ctx.settings.intern(settings);
    let mut welcome = super::welcome::welcome(ctx, listener, &user, &database, &server_params, &settings).await?;
    // Read at login: a reload changes it for the clients that log in after it.
    let server_settings = match ctx.config().pool.application_name_add_host {
        false => settings.clone(),
        true => {
            let peer = client.peer_addr().map_err(SessionError::ClientIo)?;
            let (named, reported) = super::welcome::with_client_address(&settings, peer, &welcome);
            welcome = reported;
            Arc::new(named)
        }
    };
    let cancel = ctx.cancels.register();
    let mut out = BytesMut::with_capacity(welcome.len() + 64);
    wire::put_auth_ok(&mut out);
    out.extend_from_slice(&welcome);
    wire::put_backend_key_data(&mut out, cancel.pid, cancel.secret);
    wire::put_ready_for_query(&mut out, TxStatus::Idle);
    Ok(Login::Client(LoginParts { user, database, settings, server_settings, cancel, read_your_writes }, out))
}

/// What `client_tls_sslmode` asks of a client before it may authenticate:
/// TLS under `require` and stricter, and under `verify-full` a certificate
/// whose common name is the user name (the chain was checked in the handshake).
fn check_tls(client: &Stream, tls: Option<&ClientTlsAcceptor>, user: &str) -> Result<(), SessionError> {
    let Some(tls) = tls else { return Ok(()) };
    if !client.is_tls() && tls.sslmode.requires_tls() {
        return Err(login_error(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "pgrelay accepts only TLS connections (client_tls_sslmode = {}): connect with sslmode=require or \
                 stricter",
                tls.sslmode.name()
            ),
        ));
    }
    if tls.sslmode != ClientSslMode::VerifyFull {
        return Ok(());
    }
    let name = client.peer_certificate().as_deref().and_then(common_name);
    if name.as_deref() != Some(user) {
        let found = name.map_or("no common name".to_owned(), |n| format!("common name \"{n}\""));
        return Err(login_error(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "certificate authentication failed for user \"{user}\": the client certificate has {found} \
                 (client_tls_sslmode = verify-full wants the user name)"
            ),
        ));
    }
    Ok(())
}

/// The first common name in a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(name)
}

/// The user called `name`: configured, else looked up in the database when
/// `[auth]` says so (before `deadline`). A user nobody knows is a stand-in
/// that goes through the exchange a wrong password gets.
async fn find_user(ctx: &Context, name: &str, deadline: tokio::time::Instant) -> Result<Arc<UserEntry>, SessionError> {
    let users = ctx.users().clone();
    if let Some(user) = users.get(name) {
        return Ok(user.clone());
    }
    let Some(lookup) = users.lookup() else { return Ok(users.unknown(name)) };
    let found = match lookup.cached(name) {
        Some(found) => found,
        None => {
            let target = primary(ctx, deadline).await?;
            lookup.find(name, &target, deadline).await.inspect_err(|error| {
                tracing::warn!(user = %name, %error, "could not look the user up with auth_query");
            })?
        }
    };
    Ok(found.unwrap_or_else(|| users.unknown(name)))
}

/// Where users are looked up: the primary, waited for like a write would be.
async fn primary(ctx: &Context, deadline: tokio::time::Instant) -> Result<LookupTarget, SessionError> {
    let fallback = ctx.config().routing.ro_fallback;
    let input = RouteInput { listener: ListenerKind::ReadWrite, turn: 0, load: router::NO_LOAD, prefer: Prefer::Any };
    let (topology, node, _) = route_waiting(ctx, input, fallback, deadline).await?;
    let node = &topology.nodes[node];
    Ok(LookupTarget { node: node.name.clone(), host: node.host.clone(), port: node.port })
}

fn admin_login(
    ctx: &Context,
    user: Arc<crate::auth::UserEntry>,
    settings: Vec<(String, String)>,
) -> Result<AdminLogin, SessionError> {
    let config = ctx.config();
    let may_control = config.admin.admin_users.contains(&user.name);
    if !may_control && !config.admin.stats_users.contains(&user.name) {
        return Err(login_error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "user \"{}\" may not use the admin console (it is in neither [admin] admin_users nor stats_users)",
                user.name
            ),
        ));
    }
    Ok(AdminLogin { user, may_control, settings })
}

/// How a connection opened, once its encryption requests were answered.
pub struct Opened {
    /// TLS when the client asked for it and `client_tls_sslmode` allows it.
    pub stream: Stream,
    pub opening: Opening,
    /// The TLS settings in force when the connection opened (`None`:
    /// `client_tls_sslmode = disable`); the login goes on with them, even
    /// if a reload replaces them meanwhile.
    pub tls: Option<Arc<ClientTlsAcceptor>>,
}

/// Why a connection did not open: the error, and the stream to tell the
/// client on (`None` when a TLS handshake did not finish: nothing can be said).
pub type OpenFailed = (Option<Stream>, SessionError);

/// Reads up to the first packet that is not an SSL or GSS encryption
/// request, within `timeout`. An SSLRequest is answered 'S' and TLS begins
/// when `tls` is set, else 'N' (GSS is always declined); at most two
/// requests are answered. A client that opens with a TLS ClientHello
/// instead (PostgreSQL 17's `sslnegotiation=direct`) gets the handshake
/// at once, and must ask for ALPN `postgresql`.
pub async fn open(
    tcp: TcpStream,
    buf: &mut BytesMut,
    tls: Option<Arc<ClientTlsAcceptor>>,
    timeout: Duration,
) -> Result<Opened, OpenFailed> {
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || SessionError::LoginTimeout(timeout);
    let mut stream = Stream::Plain(tcp);
    if let (Some(acceptor), Stream::Plain(tcp)) = (&tls, &stream) {
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
            Err(_) => return Err((Some(stream), timed_out())),
            Ok(Err(e)) => return Err((Some(stream), SessionError::ClientIo(e))),
            Ok(Ok(_)) if first[0] == TLS_HANDSHAKE_RECORD => {
                let Stream::Plain(tcp) = stream else { unreachable!("checked above") };
                stream = handshake(tcp, acceptor, deadline).await?;
                if stream.alpn_protocol() != Some(ALPN_POSTGRESQL) {
                    let error = login_error(
                        sqlstate::PROTOCOL_VIOLATION,
                        "received a direct TLS connection without the ALPN protocol \"postgresql\"",
                    );
                    return Err((Some(stream), error));
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    let mut negotiations = 0;
    loop {
        let packet = match tokio::time::timeout_at(deadline, read_startup_packet(&mut stream, buf)).await {
            Err(_) => return Err((Some(stream), timed_out())),
            Ok(Err(error)) => return Err((Some(stream), error)),
            Ok(Ok(None)) => {
                tracing::debug!("client left before sending a startup packet");
                return Ok(Opened { stream, opening: Opening::Closed, tls });
            }
            Ok(Ok(Some(packet))) => packet,
        };
        let packet = match StartupPacket::parse(packet) {
            Ok(packet) => packet,
            Err(error) => return Err((Some(stream), error.into())),
        };
        let answer = match packet {
            StartupPacket::Cancel { pid, secret } => {
                return Ok(Opened { stream, opening: Opening::Cancel { pid, secret }, tls })
            }
            StartupPacket::Startup(params) => return Ok(Opened { stream, opening: Opening::Startup(params), tls }),
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if negotiations == 2 => {
                return Err((Some(stream), WireError::BadStartup("too many encryption requests").into()));
            }
            StartupPacket::SslRequest if stream.is_tls() => {
                return Err((Some(stream), WireError::BadStartup("SSLRequest on a TLS connection").into()));
            }
            StartupPacket::SslRequest if tls.is_some() => b'S',
            // No TLS (or no GSS encryption): the client continues in plain text.
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => b'N',
        };
        negotiations += 1;
        // Bytes behind an SSLRequest that is accepted were sent before the
        // handshake: they must not pass for what came through TLS.
        if answer == b'S' && !buf.is_empty() {
            let error = login_error(sqlstate::PROTOCOL_VIOLATION, "received unencrypted data after SSL request");
            return Err((Some(stream), error));
        }
        match tokio::time::timeout_at(deadline, stream.write_all(&[answer])).await {
            Err(_) => return Err((Some(stream), timed_out())),
            Ok(Err(e)) => return Err((Some(stream), SessionError::ClientIo(e))),
            Ok(Ok(())) => {}
        }
        if answer == b'S' {
            let Stream::Plain(tcp) = stream else { unreachable!("an SSLRequest on TLS was refused above") };
            stream = handshake(tcp, tls.as_deref().expect("'S' only with TLS"), deadline).await?;
        }
    }
}

/// The first byte of a TLS handshake record (a ClientHello); a startup
/// packet starts with its length, whose first byte is 0 for any packet
/// pgrelay reads.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The server side of a TLS handshake, by `deadline`.
async fn handshake(
    tcp: TcpStream,
    tls: &ClientTlsAcceptor,
    deadline: tokio::time::Instant,
) -> Result<Stream, OpenFailed> {
    let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(Socket::new(tcp)).into_fallible();
    match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream.into()))),
        Ok(Err((error, mut socket))) => {
            tracing::info!(%error, "TLS handshake with the client failed");
            Err((Some(Stream::Plain(socket.take_tcp())), SessionError::ClientTls(error)))
        }
        Err(_) => {
            tracing::info!("client_login_timeout expired during the TLS handshake");
            Err((None, SessionError::ClientTls(std::io::ErrorKind::TimedOut.into())))
        }
    }
}

/// The next untagged packet; `None` when the client sends Terminate or
/// closes before the first byte of it. A close part way through is an
/// error, but one nobody is told about ([`SessionError::ClientIo`]).
async fn read_startup_packet(client: &mut Stream, buf: &mut BytesMut) -> Result<Option<Bytes>, SessionError> {
    loop {
        match StartupPacket::peek(buf)? {
            StartupPeek::Packet(len) if buf.len() >= len => return Ok(Some(buf.split_to(len).freeze())),
            StartupPeek::Terminate => return Ok(None),
            StartupPeek::Packet(_) | StartupPeek::Incomplete => {}
        }
        if client.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let incomplete = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "incomplete startup packet");
            return Err(SessionError::ClientIo(incomplete));
        }
    }
}

/// The settings a client asked for at startup, incl. `-c name=value` in
/// `options`, sorted by name; of two spellings of one name (compared
/// without case) the later wins. At most [`MAX_STARTUP_PARAMETERS`] are
/// read, each `-c` counting as one; one pass plus a sort.
fn client_settings(params: &StartupParams) -> Result<Vec<(String, String)>, SessionError> {
    let mut settings: Vec<(String, String)> = Vec::with_capacity(params.settings.len());
    let too_many = || {
        login_error(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "invalid startup packet: more than {MAX_STARTUP_PARAMETERS} parameters, counting each -c in options \
                 (pgrelay's limit)"
            ),
        )
    };
    for (key, value) in &params.settings {
        match key.as_str() {
            "replication" => {
                return Err(login_error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "replication connections are not supported by pgrelay",
                ))
            }
            "options" => {
                let mut words = value.split_ascii_whitespace();
                while let Some(word) = words.next() {
                    let assignment = match word {
                        "-c" => words.next().unwrap_or(""),
                        w if w.starts_with("-c") => &w[2..],
                        w if w.starts_with("--") => &w[2..],
                        _ => "",
                    };
                    let Some((k, v)) = assignment.split_once('=') else {
                        return Err(login_error(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("unsupported startup option \"{word}\" (only -c name=value is supported)"),
                        ));
                    };
                    if settings.len() == MAX_STARTUP_PARAMETERS {
                        return Err(too_many());
                    }
                    settings.push((k.replace('-', "_"), v.to_owned()));
                }
            }
            _ => {
                if settings.len() == MAX_STARTUP_PARAMETERS {
                    return Err(too_many());
                }
                settings.push((key.clone(), value.clone()));
            }
        }
    }
    // Latest first, then a stable sort by name: each name's first entry is
    // the one the client sent last, and the only one kept.
    settings.reverse();
    settings.sort_by(|(a, _), (b, _)| caseless(a).cmp(caseless(b)));
    settings.dedup_by(|(later, _), (kept, _)| later.eq_ignore_ascii_case(kept));
    settings.sort();
    Ok(settings)
}

/// A name's bytes, compared as PostgreSQL compares setting names: without ASCII case.
fn caseless(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().map(|b| b.to_ascii_lowercase())
}

/// Runs the client's authentication; on TLS connections SCRAM is also
/// offered with channel binding to `channel_binding` (SCRAM-SHA-256-PLUS).
async fn authenticate(
    client: &mut Stream,
    buf: &mut BytesMut,
    user: &Arc<crate::auth::UserEntry>,
    channel_binding: Option<&[u8]>,
) -> Result<(), SessionError> {
    let (mut auth, mut step) = ClientAuth::start(user.clone(), channel_binding);
    loop {
        match step {
            AuthStep::Done(final_msg) => {
                if !final_msg.is_empty() {
                    client.write_all(&final_msg).await.map_err(SessionError::ClientIo)?;
                }
                return Ok(());
            }
            AuthStep::Continue(msg) => {
                client.write_all(&msg).await.map_err(SessionError::ClientIo)?;
                let reply = loop {
                    if let Some(m) = wire::split_message(buf, MAX_AUTH_MESSAGE)? {
                        break m;
                    }
                    if client.read_buf(buf).await.map_err(SessionError::ClientIo)? == 0 {
                        return Err(SessionError::ClientIo(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                };
                if reply[0] != tag::PASSWORD {
                    return Err(WireError::UnexpectedTag(reply[0]).into());
                }
                step = auth.step(&reply[5..]).map_err(|e| match e {
                    AuthError::WrongPassword => login_error(
                        sqlstate::INVALID_PASSWORD,
                        format!("password authentication failed for user \"{}\"", user.name),
                    ),
                    other => login_error(sqlstate::INVALID_AUTHORIZATION, other.to_string()),
                })?;
            }
        }
    }
}

/// The ParameterStatus values the client is welcomed with: those any server
/// of this (database, user) reported, else the first server's that the
/// client's listener routes to (waiting for a primary like a query would).
async fn server_params(
    ctx: &Arc<Context>,
    listener: ListenerKind,
    user: &Arc<crate::auth::UserEntry>,
    database: &Database,
) -> Result<crate::backend::ServerParams, SessionError> {
    if let Some(params) = ctx.pools.server_params_for(&database.name, &user.name) {
        return Ok(params);
    }
    match login_server(ctx, listener, user, database, |pool| pool.server_params().is_none()).await? {
        LoginServer::Pool(pool) => Ok(pool.server_params().expect("the pool has them")),
        LoginServer::Lease(lease) => Ok(lease.conn().startup_params.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(settings: &[(&str, &str)]) -> StartupParams {
        StartupParams {
            user: "app".into(),
            database: "app".into(),
            settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn settings(given: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        client_settings(&params(given)).map_err(|e| e.to_string())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_last_of_each_name_wins_without_case_and_the_result_is_sorted() {
        let given = [
            ("TimeZone", "UTC"),
            ("application_name", "a"),
            ("options", "-c search_path=s1 -cwork_mem=4MB --statement-timeout=5s"),
            ("timezone", "Europe/Paris"),
            ("application_name", "b"),
            ("options", "-c search_path=s2"),
        ];
        let expected = [
            ("application_name", "b"),
            ("search_path", "s2"),
            ("statement_timeout", "5s"),
            ("timezone", "Europe/Paris"),
            ("work_mem", "4MB"),
        ];
        assert_eq!(settings(&given), Ok(pairs(&expected)));
    }

    #[test]
    fn settings_are_bounded_counting_each_option() {
        let names: Vec<String> = (0..MAX_STARTUP_PARAMETERS + 1).map(|i| format!("p{i}")).collect();
        let given: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(settings(&given[..MAX_STARTUP_PARAMETERS]).map(|s| s.len()), Ok(MAX_STARTUP_PARAMETERS));
        let error = settings(&given).expect_err("one too many");
        assert!(error.contains(&format!("more than {MAX_STARTUP_PARAMETERS} parameters")), "{error}");
        // Repeating one name does not get around the bound: every -c counts.
        let options = "-c a=1 ".repeat(MAX_STARTUP_PARAMETERS);
        assert_eq!(settings(&[("options", options.as_str())]).map(|s| s.len()), Ok(1));
        let error = settings(&[("x", "1"), ("options", options.as_str())]).expect_err("one too many");
        assert!(error.contains("counting each -c in options"), "{error}");
    }

    #[test]
    fn replication_and_other_options_are_refused() {
        assert!(settings(&[("replication", "true")]).unwrap_err().contains("replication"));
        assert!(settings(&[("options", "-v")]).unwrap_err().contains("unsupported startup option \"-v\""));
    }
}
