//! The ParameterStatus messages a client is welcomed with: what the servers
//! report, with the client's own startup settings as the server gives them
//! back (`client_encoding=utf8` is reported as `UTF8`, `DateStyle=iso` as
//! `ISO, MDY`), never as the client wrote them. The first login with a new
//! set of settings applies them on a server connection to learn those values
//! (and to refuse a value the server rejects, at login, as PostgreSQL does);
//! later logins copy one encoded block.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::checkout::{pause_before_retry, pool_for, route_waiting};
use super::error::SessionError;
use super::{ClientSettings, Context};
use crate::auth::UserEntry;
use crate::backend::{BackendError, ServerParams};
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
    let reported =
        if settings.is_empty() { Vec::new() } else { probe(ctx, listener, user, database, settings).await? };
    Ok(ctx.welcomes.insert(server, settings, &reported))
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
    let config = ctx.config();
    let (fallback, deadline) =
        (config.routing.ro_fallback, tokio::time::Instant::now() + config.pool.query_wait_timeout);
    drop(config);
    loop {
        let (topology, node) = route_waiting(ctx, listener, fallback, deadline).await?;
        let pool = pool_for(ctx, &topology.nodes[node], database, user);
        let mut lease = match pool.checkout(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Ok(lease) => lease,
            Err(PoolError::Closed) => continue,
            Err(PoolError::Connect(e)) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                pause_before_retry(deadline).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        return match lease.conn_mut().probe_settings(settings).await {
            Ok(values) => Ok(values),
            Err(e) => {
                lease.poison();
                Err(match e {
                    BackendError::Server(fields) => SessionError::SetupFailed(fields),
                    other => PoolError::Connect(other).into(),
                })
            }
        };
    }
}

/// The encoded welcome for each (server parameters, client settings) pair
/// seen. Both keys are shared `Arc`s (interned settings), compared by
/// pointer; the entries keep them alive, so a pointer is never reused.
#[derive(Debug, Default)]
pub struct WelcomeCache {
    known: std::sync::Mutex<Vec<(ServerParams, Arc<ClientSettings>, Bytes)>>,
}

/// Distinct welcomes kept.
const MAX_CACHED_WELCOMES: usize = 64;

impl WelcomeCache {
    pub fn get(&self, server: &ServerParams, client: &Arc<ClientSettings>) -> Option<Bytes> {
        let known = self.known.lock().expect("welcome lock");
        known.iter().find(|(s, c, _)| Arc::ptr_eq(s, server) && Arc::ptr_eq(c, client)).map(|(.., b)| b.clone())
    }

    /// Encodes and keeps the welcome; `reported[i]` is the server's value of
    /// the client's setting `client[i]`.
    pub fn insert(&self, server: &ServerParams, client: &Arc<ClientSettings>, reported: &[Bytes]) -> Bytes {
        let mut block = BytesMut::new();
        for (name, value) in server.iter() {
            // Setting names are case-insensitive (DateStyle, datestyle).
            let own = client.iter().position(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name));
            let value = own.and_then(|i| reported.get(i)).unwrap_or(value);
            crate::wire::put_parameter_status(&mut block, name, value);
        }
        let block = block.freeze();
        let mut known = self.known.lock().expect("welcome lock");
        // Oldest out: after failovers, pools (and their parameters) are new.
        if known.len() == MAX_CACHED_WELCOMES {
            known.remove(0);
        }
        known.push((server.clone(), client.clone(), block.clone()));
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::SettingsInterner;

    fn param(name: &str, value: &str) -> (Bytes, Bytes) {
        (Bytes::copy_from_slice(name.as_bytes()), Bytes::copy_from_slice(value.as_bytes()))
    }

    #[test]
    fn the_welcome_carries_the_values_the_server_reported_for_the_clients_settings() {
        let server: ServerParams =
            Arc::new(vec![param("client_encoding", "UTF8"), param("DateStyle", "ISO, MDY"), param("TimeZone", "UTC")]);
        let interner = SettingsInterner::default();
        let client =
            interner.intern(vec![("client_encoding".into(), "utf8".into()), ("datestyle".into(), "sql".into())]);
        let cache = WelcomeCache::default();
        assert!(cache.get(&server, &client).is_none());
        let block = cache.insert(&server, &client, &[Bytes::from_static(b"UTF8"), Bytes::from_static(b"SQL, MDY")]);
        let mut expected = BytesMut::new();
        crate::wire::put_parameter_status(&mut expected, b"client_encoding", b"UTF8");
        crate::wire::put_parameter_status(&mut expected, b"DateStyle", b"SQL, MDY");
        crate::wire::put_parameter_status(&mut expected, b"TimeZone", b"UTC");
        assert_eq!(block, expected.freeze());
        let again = cache.get(&server, &interner.intern(client.as_ref().clone())).expect("cached");
        assert_eq!(block.as_ptr(), again.as_ptr(), "the same pair is served from the cache");
    }
}
