//! The ParameterStatus messages a client is welcomed with: what the servers
//! report, with the client's own startup settings as the server gives them
//! back (`client_encoding=utf8` is reported as `UTF8`, `DateStyle=iso` as
//! `ISO, MDY`), never as the client wrote them. The first login with a new
//! set of settings applies them on a server connection to learn those values
//! (and to refuse a value the server rejects, at login, as PostgreSQL does);
//! later logins copy one encoded block (kept in `app::WelcomeCache`). Only settings the server could
//! spell differently are asked about: a value equal to the server's own,
//! and a plain ASCII application_name (reported as given), need no server,
//! so logins go on without one while every server connection is busy.
//!
//! Under `application_name_add_host` a client's application_name carries
//! its address, for the servers and in its welcome alike; that copy of the
//! settings is the client's own, never interned or cached, so the shared
//! sets (and their statements and welcomes) stay one per distinct startup.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::checkout::{login_server, LoginServer};
use super::error::SessionError;
use crate::app::Context;
use crate::auth::UserEntry;
use crate::backend::{BackendError, ClientSettings, ServerParams};
use crate::config::Database;
use crate::pool::PoolError;
use crate::router::ListenerKind;
use crate::wire::{self, Frame};

/// The welcome block for a client with `settings` whose servers report `server`.
pub async fn welcome(
    ctx: &Arc<Context>,
    listener: ListenerKind,
    user: &Arc<UserEntry>,
    database: &Database,
    server: &ServerParams,
    settings: &Arc<ClientSettings>,
) -> Result<Bytes, SessionError> {
    if let Some(block) = ctx.welcomes.get(server, settings) {
        return Ok(block);
    }
    let asked: ClientSettings =
        settings.iter().filter(|(name, value)| respelled_by_server(server, name, value)).cloned().collect();
    let mut reported = Vec::new();
    if !asked.is_empty() {
        let answers = probe(ctx, listener, user, database, &Arc::new(asked.clone())).await?;
        reported = asked.into_iter().map(|(name, _)| name).zip(answers).collect();
    }
    Ok(ctx.welcomes.insert(server, settings, &reported))
}

/// Whether the server might report `value` of setting `name` differently
/// from how the client wrote it: a reported setting whose value differs
/// from the server's own.
fn respelled_by_server(server: &ServerParams, name: &str, value: &str) -> bool {
    let Some((_, own)) = server.iter().find(|(n, _)| name.as_bytes().eq_ignore_ascii_case(n)) else {
        return false;
    };
    let plain_name = name.eq_ignore_ascii_case("application_name")
        && value.len() < 64
        && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    own[..] != *value.as_bytes() && !plain_name
}

/// PostgreSQL keeps this many bytes of application_name (NAMEDATALEN - 1).
const MAX_APPLICATION_NAME: usize = 63;

/// PgBouncer's application_name_add_host: `settings` with application_name
/// `"{name} - {address}:{port}"` (`[v6]:port`; name `app` when the client
/// gave none), and `welcome` reporting it. Unlike PgBouncer, the name is cut
/// (not the address) to fit what PostgreSQL keeps, and characters outside
/// printable ASCII become `?` (the server would rewrite them), so the
/// server keeps and reports the value exactly as set.
pub fn with_client_address(
    settings: &[(String, String)],
    peer: SocketAddr,
    welcome: &Bytes,
) -> (ClientSettings, Bytes) {
    let named = named_with_address(settings, peer);
    let at = named.partition_point(|(n, _)| n.as_str() < APPLICATION_NAME);
    let reported = reporting(welcome, APPLICATION_NAME, &named[at].1);
    (named, reported)
}

const APPLICATION_NAME: &str = "application_name";

/// `settings` with application_name carrying the client's address, as
/// [`with_client_address`] gives it (also after a `SET application_name`).
pub fn named_with_address(settings: &[(String, String)], peer: SocketAddr) -> ClientSettings {
    let given = settings.iter().find(|(n, _)| n.eq_ignore_ascii_case(APPLICATION_NAME)).map(|(_, v)| v.as_str());
    let mut name: String =
        given.unwrap_or("app").chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let suffix = format!(" - {peer}");
    name.truncate(MAX_APPLICATION_NAME.saturating_sub(suffix.len()));
    name.push_str(&suffix);
    let mut named: ClientSettings =
        settings.iter().filter(|(n, _)| !n.eq_ignore_ascii_case(APPLICATION_NAME)).cloned().collect();
    let at = named.partition_point(|(n, _)| n.as_str() < APPLICATION_NAME);
    named.insert(at, (APPLICATION_NAME.to_owned(), name));
    named
}

/// The welcome `block` with `name` reported as `value` (added at the end
/// when the servers do not report it).
fn reporting(block: &[u8], name: &str, value: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(block.len() + value.len());
    let mut rest = block;
    let mut found = false;
    // The block is pgrelay's own encoding: whole ParameterStatus messages.
    while let Ok(Some(frame)) = Frame::peek(rest, rest.len()) {
        let (message, tail) = rest.split_at(frame.total_len);
        match wire::read_cstr(wire::body(message)) {
            Some((param, _)) if param.eq_ignore_ascii_case(name.as_bytes()) => {
                wire::put_parameter_status(&mut out, param, value.as_bytes());
                found = true;
            }
            _ => out.extend_from_slice(message),
        }
        rest = tail;
    }
    if !found {
        wire::put_parameter_status(&mut out, name.as_bytes(), value.as_bytes());
    }
    out.freeze()
}

/// Applies `settings` on a server connection of the client's listener and
/// returns what the server made of each.
async fn probe(
    ctx: &Arc<Context>,
    listener: ListenerKind,
    user: &Arc<UserEntry>,
    database: &Database,
    settings: &Arc<ClientSettings>,
) -> Result<Vec<Bytes>, SessionError> {
    let LoginServer::Lease(mut lease) = login_server(ctx, listener, user, database, |_| true).await? else {
        unreachable!("a lease is always needed")
    };
    match lease.conn_mut().probe_settings(settings).await {
        Ok(values) => Ok(values),
        Err(e) => {
            lease.poison();
            Err(match e {
                BackendError::Server(fields) => SessionError::SetupFailed(fields),
                other => PoolError::Connect(other).into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(name: &str, value: &str) -> (Bytes, Bytes) {
        (Bytes::copy_from_slice(name.as_bytes()), Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn only_settings_the_server_may_spell_differently_are_asked_about() {
        let server: ServerParams =
            Arc::new(vec![param("client_encoding", "UTF8"), param("application_name", ""), param("TimeZone", "UTC")]);
        assert!(!respelled_by_server(&server, "client_encoding", "UTF8"), "the server's own value");
        assert!(respelled_by_server(&server, "client_encoding", "utf8"));
        assert!(respelled_by_server(&server, "timezone", "europe/paris"));
        assert!(!respelled_by_server(&server, "application_name", "psql"), "plain ASCII is kept as given");
        assert!(respelled_by_server(&server, "application_name", "caf\u{e9}"));
        assert!(!respelled_by_server(&server, "search_path", "a, b"), "not reported at all");
    }

    fn block(params: &[(&str, &str)]) -> Bytes {
        let mut block = BytesMut::new();
        for (name, value) in params {
            wire::put_parameter_status(&mut block, name.as_bytes(), value.as_bytes());
        }
        block.freeze()
    }

    fn settings(pairs: &[(&str, &str)]) -> ClientSettings {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_client_address_is_appended_as_pgbouncer_does() {
        let welcome = block(&[("DateStyle", "ISO, MDY"), ("application_name", "psql"), ("TimeZone", "UTC")]);
        let given = settings(&[("Application_Name", "psql"), ("TimeZone", "UTC"), ("search_path", "s")]);
        let (named, reported) = with_client_address(&given, "10.0.0.5:51234".parse().unwrap(), &welcome);
        let expected =
            settings(&[("TimeZone", "UTC"), ("application_name", "psql - 10.0.0.5:51234"), ("search_path", "s")]);
        assert_eq!(named, expected, "one application_name, in order");
        let name = "psql - 10.0.0.5:51234";
        assert_eq!(reported, block(&[("DateStyle", "ISO, MDY"), ("application_name", name), ("TimeZone", "UTC")]));

        let (named, _) = with_client_address(&[], "[2001:db8::7]:5000".parse().unwrap(), &welcome);
        assert_eq!(named, settings(&[("application_name", "app - [2001:db8::7]:5000")]), "no name given: app");
    }

    #[test]
    fn a_long_name_is_cut_and_the_address_kept() {
        let peer: SocketAddr = "192.168.100.200:65535".parse().unwrap();
        let long = format!("caf\u{e9}-{}", "x".repeat(80));
        let (named, reported) = with_client_address(&settings(&[("application_name", &long)]), peer, &block(&[]));
        let value = &named[0].1;
        assert_eq!(value.len(), MAX_APPLICATION_NAME, "{value}");
        assert!(value.starts_with("caf?-xxx") && value.ends_with("xx - 192.168.100.200:65535"), "{value}");
        assert_eq!(reported, block(&[("application_name", value)]), "added when the servers do not report it");
    }
}
