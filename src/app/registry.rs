//! Who is connected: one entry per logged-in client, with the state the
//! admin console shows (idle, waiting for a server, active on one). A
//! session updates its entry twice per transaction, under an uncontended lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::pool::Pool;
use crate::router::ListenerKind;

#[derive(Debug, Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<HashMap<u64, Arc<ClientEntry>, foldhash::fast::RandomState>>,
}

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Between transactions, holding no server connection.
    Idle,
    /// Waiting for a server connection (or for RESUME, or for a primary).
    Waiting,
    /// Holding a server connection.
    Active,
}

/// The server connection a client holds.
#[derive(Debug, Clone)]
pub struct ServerLink {
    pub pool: Arc<Pool>,
    pub addr: SocketAddr,
    pub pid: u32,
    pub created: Instant,
}

#[derive(Debug, Clone)]
pub struct ClientActivity {
    pub state: ClientState,
    /// When the client last asked for a server connection (its request
    /// time; while waiting, the start of the wait).
    pub since: Instant,
    pub server: Option<ServerLink>,
}

#[derive(Debug)]
pub struct ClientEntry {
    pub id: u64,
    pub info: ClientInfo,
    pub connected_at: SystemTime,
    activity: Mutex<ClientActivity>,
}

impl ClientEntry {
    pub fn activity(&self) -> ClientActivity {
        self.activity.lock().expect("client lock").clone()
    }

    /// The client waits for a server connection since `since`.
    pub fn set_waiting(&self, since: Instant) {
        let mut activity = self.activity.lock().expect("client lock");
        activity.state = ClientState::Waiting;
        activity.since = since;
    }

    pub fn set_active(&self, server: ServerLink) {
        let mut activity = self.activity.lock().expect("client lock");
        activity.state = ClientState::Active;
        activity.server = Some(server);
    }

    pub fn set_idle(&self) {
        let mut activity = self.activity.lock().expect("client lock");
        activity.state = ClientState::Idle;
        activity.server = None;
    }
}

/// Everything about a client that does not change while it is connected.
#[derive(Debug)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    pub listener: ListenerKind,
    pub application_name: String,
    /// TLS protocol and cipher suite, as PgBouncer shows them ("" in plain text).
    pub tls: String,
    /// The worker running the client's session.
    pub worker: usize,
}

impl ClientRegistry {
    /// Adds a client; it stays listed until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(ClientEntry {
            id,
            info,
            connected_at: SystemTime::now(),
            activity: Mutex::new(ClientActivity { state: ClientState::Idle, since: Instant::now(), server: None }),
        });
        self.clients.lock().expect("registry lock").insert(id, entry.clone());
        Registered { registry: self.clone(), entry }
    }

    /// Every client listed right now, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = self.clients.lock().expect("registry lock").values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Whether any client is in `state` (looked at under the lock, without copying the list).
    pub fn any_in(&self, state: ClientState) -> bool {
        self.clients
            .lock()
            .expect("registry lock")
            .values()
            .any(|c| c.activity.lock().expect("client lock").state == state)
    }

    pub fn len(&self) -> usize {
        self.clients.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's place in the registry; dropping it removes the client.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<ClientRegistry>,
    entry: Arc<ClientEntry>,
}

impl std::ops::Deref for Registered {
    type Target = ClientEntry;
    fn deref(&self) -> &ClientEntry {
        &self.entry
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.clients.lock().expect("registry lock").remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_listed_while_registered() {
        let registry = Arc::new(ClientRegistry::default());
        let new = |user: &str| ClientInfo {
            peer: "127.0.0.1:40000".parse().expect("addr"),
            local: None,
            user: user.into(),
            database: "app".into(),
            listener: ListenerKind::ReadWrite,
            application_name: String::new(),
            tls: String::new(),
            worker: 0,
        };
        let alice = registry.register(new("alice"));
        let bob = registry.register(new("bob"));
        alice.set_waiting(Instant::now());
        assert_eq!(alice.activity().state, ClientState::Waiting);
        let names: Vec<String> = registry.snapshot().iter().map(|c| c.info.user.clone()).collect();
        assert_eq!(names, ["alice", "bob"]);
        drop(alice);
        assert_eq!(registry.len(), 1);
        drop(bob);
        assert!(registry.is_empty());
    }
}
