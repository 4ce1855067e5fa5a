//! Login: SSL/GSS negotiation ('N'), the StartupMessage, client
//! authentication, and the welcome (ParameterStatus, BackendKeyData,
//! ReadyForQuery). A client that fails here never costs a server connection,
//! except the one that fetches a pool's ParameterStatus values the first time.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::checkout::{login_server, route_waiting, LoginServer};
use super::error::SessionError;
use super::preauth::Admission;
use super::Context;
use crate::auth::{AuthError, AuthStep, ClientAuth, LookupTarget, UserEntry};
use crate::config::Database;
use crate::router::ListenerKind;
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
    pub settings: Arc<Vec<(String, String)>>,
    pub cancel: super::cancel::CancelHandle,
}

impl LoginParts {
    pub fn application_name(&self) -> &str {
        application_name(&self.settings)
    }
}

/// The `application_name` among a client's startup settings ("" when unset).
pub fn application_name(settings: &[(String, String)]) -> &str {
    settings.iter().find(|(k, _)| k == "application_name").map_or("", |(_, v)| v.as_str())
}

/// The databases that name the admin console instead of a database.
pub const ADMIN_DATABASES: [&str; 2] = ["pgrelay", "pgbouncer"];

/// What a connection turned out to be.
pub enum Login {
    Client(LoginParts),
    /// An authenticated user of the admin console; nothing was sent after
    /// authentication (the console sends its own welcome).
    Admin(AdminLogin),
    /// Only a cancel request, already handled.
    Cancel,
    /// Closed (or Terminate sent) before a startup packet: nothing to answer.
    Closed,
}

/// What a connection opened with, once its SSL/GSS requests were declined.
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

pub struct AdminLogin {
    pub user: Arc<crate::auth::UserEntry>,
    /// In `admin_users` (every command), not only `stats_users` (SHOW only).
    pub may_control: bool,
    /// Startup settings, incl. application_name.
    pub settings: Vec<(String, String)>,
}

/// Runs the login; returns who the client is. Bytes the client sent after
/// its last login message stay in `buf`. Once the client is authenticated,
/// `admission` holds one of max_client_conn instead of a pre-auth share.
pub async fn login(
    ctx: &Arc<Context>,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    listener: ListenerKind,
    admission: &mut Admission,
) -> Result<Login, SessionError> {
    let deadline = tokio::time::Instant::now() + ctx.config().pool.client_login_timeout;
    let params = match read_opening(client, buf).await? {
        Opening::Startup(params) => params,
        Opening::Cancel { pid, secret } => {
            ctx.cancels.cancel(pid, secret).await;
            return Ok(Login::Cancel);
        }
        Opening::Closed => return Ok(Login::Closed),
    };
    let settings = client_settings(&params)?;
    let user = find_user(ctx, &params.user, deadline).await?;
    if let Err(error) = authenticate(client, buf, &user).await {
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
    let welcome = super::welcome::welcome(ctx, listener, &user, &database, &server_params, &settings).await?;
    let cancel = ctx.cancels.register();
    let mut out = BytesMut::with_capacity(welcome.len() + 64);
    wire::put_auth_ok(&mut out);
    out.extend_from_slice(&welcome);
    wire::put_backend_key_data(&mut out, cancel.pid, cancel.secret);
    wire::put_ready_for_query(&mut out, TxStatus::Idle);
    client.write_all(&out).await.map_err(SessionError::ClientIo)?;
    Ok(Login::Client(LoginParts { user, database, settings, cancel }))
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
    let (topology, node) = route_waiting(ctx, ListenerKind::ReadWrite, fallback, deadline).await?;
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

/// Reads up to the first packet that is not an SSL or GSS encryption request,
/// declining those ('N', at most twice).
pub async fn read_opening(client: &mut TcpStream, buf: &mut BytesMut) -> Result<Opening, SessionError> {
    let mut negotiations = 0;
    loop {
        let Some(packet) = read_startup_packet(client, buf).await? else {
            tracing::debug!("client left before sending a startup packet");
            return Ok(Opening::Closed);
        };
        match StartupPacket::parse(packet)? {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if negotiations < 2 => {
                negotiations += 1;
                // No TLS or GSS encryption yet: the client continues in plain text.
                client.write_all(b"N").await.map_err(SessionError::ClientIo)?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err(WireError::BadStartup("too many encryption requests").into());
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupPacket::Startup(params) => return Ok(Opening::Startup(params)),
        }
    }
}

/// The next untagged packet; `None` when the client sends Terminate or
/// closes before the first byte of it. A close part way through is an
/// error, but one nobody is told about ([`SessionError::ClientIo`]).
async fn read_startup_packet(client: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<Bytes>, SessionError> {
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

async fn authenticate(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    user: &Arc<crate::auth::UserEntry>,
) -> Result<(), SessionError> {
    let (mut auth, mut step) = ClientAuth::start(user.clone());
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
