//! The cache of encoded welcomes: the ParameterStatus block a client with
//! given startup settings is greeted with, for given server parameters,
//! encoded once and copied at each later login. Which values go in it (and
//! asking a server for them) is the login's business, `frontend::welcome`.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::backend::{ClientSettings, ServerParams};

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

    /// Encodes and keeps the welcome: the server's parameters, with the
    /// client's own settings as the server reported them (`reported`) or,
    /// where it was not asked, as the client wrote them.
    pub fn insert(&self, server: &ServerParams, client: &Arc<ClientSettings>, reported: &[(String, Bytes)]) -> Bytes {
        let mut block = BytesMut::new();
        for (name, value) in server.iter() {
            // Setting names are case-insensitive (DateStyle, datestyle).
            let named = |k: &String| k.as_bytes().eq_ignore_ascii_case(name);
            let value = match reported.iter().find(|(k, _)| named(k)) {
                Some((_, server_spelling)) => &server_spelling[..],
                None => client.iter().find(|(k, _)| named(k)).map_or(&value[..], |(_, v)| v.as_bytes()),
            };
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
    use crate::app::SettingsInterner;

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
        let client_encoding = ("client_encoding".to_owned(), Bytes::from_static(b"UTF8"));
        let datestyle = ("datestyle".to_owned(), Bytes::from_static(b"SQL, MDY"));
        let block = cache.insert(&server, &client, &[client_encoding, datestyle]);
        let mut expected = BytesMut::new();
        crate::wire::put_parameter_status(&mut expected, b"client_encoding", b"UTF8");
        crate::wire::put_parameter_status(&mut expected, b"DateStyle", b"SQL, MDY");
        crate::wire::put_parameter_status(&mut expected, b"TimeZone", b"UTC");
        assert_eq!(block, expected.freeze());
        let again = cache.get(&server, &interner.intern(client.as_ref().clone())).expect("cached");
        assert_eq!(block.as_ptr(), again.as_ptr(), "the same pair is served from the cache");
    }
}
