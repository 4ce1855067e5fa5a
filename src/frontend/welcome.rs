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

use std::sync::Arc;

use bytes::Bytes;

use super::checkout::{login_server, LoginServer};
use super::error::SessionError;
use crate::app::Context;
use crate::auth::UserEntry;
use crate::backend::{BackendError, ClientSettings, ServerParams};
use crate::config::Database;
use crate::pool::PoolError;
use crate::router::ListenerKind;

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
}
