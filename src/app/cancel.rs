//! Cancel keys pgrelay issues to its clients, and forwarding a client's
//! CancelRequest to the server that is running that client's query. A client
//! only ever learns pgrelay's keys, never a server's. Both halves of a key
//! are random, so one client's key says nothing about another's; and a
//! cancel is forwarded only while the client still holds the lease it was
//! read during, so it cannot land on a later transaction on that server
//! connection, which may be another client's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::BackendKey;
use crate::wire;

/// How long forwarding one cancel may take (connect and write).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Slot {
    secret: u32,
    target: Mutex<Target>,
}

/// A leased server connection as a cancel sees it: where it is, its key,
/// and its count of cancels under way (while one is, it is not pooled).
pub type CancelTarget = (SocketAddr, BackendKey, Arc<AtomicUsize>);

#[derive(Debug, Default, Clone)]
struct Target {
    /// The server connection the client holds right now, if any.
    server: Option<CancelTarget>,
    /// Advances at every lease and every release of a server connection.
    generation: u64,
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<u32, Arc<Slot>, foldhash::fast::RandomState>>,
    /// The server connections (address, server pid) cancels are being
    /// forwarded to right now, one entry per cancel (SHOW POOLS).
    forwarding: Mutex<Vec<(SocketAddr, u32)>>,
}

/// A client's registration; unregisters on drop.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub pid: u32,
    pub secret: u32,
    slot: Arc<Slot>,
}

/// A cancel as read from a client: aimed at the server connection that
/// client held at that moment, during that lease.
#[derive(Debug)]
struct Aimed {
    pid: u32,
    slot: Arc<Slot>,
    addr: SocketAddr,
    key: BackendKey,
    in_flight: Arc<AtomicUsize>,
    generation: u64,
}

impl Aimed {
    /// Whether the client still holds the lease the cancel was read during.
    #[cfg(test)]
    fn is_current(&self) -> bool {
        self.slot.target.lock().expect("cancel lock").generation == self.generation
    }

    /// Counts the cancel as under way on its server connection, if the
    /// client still holds it: checked and counted under the lock that ends a
    /// lease, so the lease's end either sees the count (and keeps the
    /// connection out of the pool until the cancel is done) or comes first
    /// (and the cancel is not sent).
    fn claim(&self) -> Option<InFlight> {
        let target = self.slot.target.lock().expect("cancel lock");
        if target.generation != self.generation {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(self.in_flight.clone()))
    }
}

/// A cancel listed in [`CancelRegistry::forwarding`] while it lives.
struct Forwarding<'a> {
    registry: &'a CancelRegistry,
    target: (SocketAddr, u32),
}

impl<'a> Forwarding<'a> {
    fn new(registry: &'a CancelRegistry, target: (SocketAddr, u32)) -> Forwarding<'a> {
        registry.forwarding.lock().expect("cancel lock").push(target);
        Forwarding { registry, target }
    }
}

impl Drop for Forwarding<'_> {
    fn drop(&mut self) {
        let mut forwarding = self.registry.forwarding.lock().expect("cancel lock");
        if let Some(i) = forwarding.iter().position(|t| *t == self.target) {
            forwarding.swap_remove(i);
        }
    }
}

/// A cancel under way on a server connection; uncounted on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let mut rng = rand::thread_rng();
        let secret = rng.gen();
        let slot = Arc::new(Slot { secret, target: Mutex::default() });
        let mut slots = self.slots.lock().expect("cancel lock");
        // A positive int4, as a PostgreSQL pid: some clients keep it in one.
        let pid = loop {
            let pid = rng.gen_range(1..=i32::MAX as u32);
            if !slots.contains_key(&pid) {
                break pid;
            }
        };
        slots.insert(pid, slot.clone());
        CancelHandle { registry: self.clone(), pid, secret, slot }
    }

    /// Forwards a cancel for pgrelay's (pid, secret) to the right server, if
    /// the key is valid, the client is running something right now, and it
    /// still is by the time the request could be sent.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        match self.aim(pid, secret) {
            Some(aimed) => {
                let _listed = Forwarding::new(self, (aimed.addr, aimed.key.pid));
                forward(aimed).await
            }
            None => tracing::debug!(pid, "cancel request for an unknown key or an idle client ignored"),
        }
    }

    /// The server connections (address, server pid) cancels are being
    /// forwarded to right now, one entry per cancel.
    pub fn forwarding(&self) -> Vec<(SocketAddr, u32)> {
        self.forwarding.lock().expect("cancel lock").clone()
    }

    /// What a cancel read now is aimed at.
    fn aim(&self, pid: u32, secret: u32) -> Option<Aimed> {
        let slot = match self.slots.lock().expect("cancel lock").get(&pid) {
            Some(slot) if slot.secret == secret => slot.clone(),
            _ => return None,
        };
        let target = slot.target.lock().expect("cancel lock").clone();
        let (addr, key, in_flight) = target.server?;
        Some(Aimed { pid, slot, addr, key, in_flight, generation: target.generation })
    }
}

/// Sends the CancelRequest, unless the lease it was aimed at ended while
/// connecting, and waits until the server has acted on it (it closes the
/// connection then). Meanwhile the server connection is counted as being
/// cancelled, and a lease that ends keeps it out of the pool until then (as
/// PgBouncer's `sv_being_canceled` does): a cancel never reaches another
/// client's query. It may still reach the same client's next query on the
/// same connection if the first ends just before, as on PostgreSQL.
async fn forward(aimed: Aimed) {
    let (pid, addr) = (aimed.pid, aimed.addr);
    let send = async {
        let mut stream = TcpStream::connect(addr).await?;
        let Some(_in_flight) = aimed.claim() else { return Ok(false) };
        stream.write_all(&wire::cancel_request(aimed.key.pid, aimed.key.secret)).await?;
        stream.shutdown().await?;
        // The server closes the connection once it has signalled the backend.
        let mut rest = [0u8; 64];
        while stream.read(&mut rest).await? > 0 {}
        Ok::<_, std::io::Error>(true)
    };
    match tokio::time::timeout(FORWARD_TIMEOUT, send).await {
        Ok(Ok(true)) => tracing::debug!(pid, server = %addr, "cancel request forwarded"),
        Ok(Ok(false)) => tracing::debug!(pid, "the query a cancel request was aimed at has ended; not forwarded"),
        Ok(Err(e)) => tracing::warn!(pid, server = %addr, error = %e, "forwarding cancel request failed"),
        Err(_) => tracing::warn!(pid, server = %addr, "forwarding cancel request timed out"),
    }
}

impl CancelHandle {
    /// The server connection this client leases from now on (`Some`), or
    /// that it holds none any more (`None`). Each call starts a new lease
    /// generation: cancels read before it are not forwarded after it.
    pub fn set_target(&self, target: Option<CancelTarget>) {
        let mut current = self.slot.target.lock().expect("cancel lock");
        current.server = target;
        current.generation += 1;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.slots.lock().expect("cancel lock").remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn target(addr: SocketAddr) -> Option<CancelTarget> {
        Some((addr, KEY, Arc::default()))
    }

    const KEY: BackendKey = BackendKey { pid: 4242, secret: 77 };

    #[test]
    fn keys_are_random_positive_and_unique() {
        let registry = Arc::new(CancelRegistry::default());
        let handles: Vec<CancelHandle> = (0..2000).map(|_| registry.register()).collect();
        let mut pids: Vec<u32> = handles.iter().map(|h| h.pid).collect();
        assert!(pids.iter().all(|&pid| (1..=i32::MAX as u32).contains(&pid)));
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), handles.len(), "unique among registered clients");
        let neighbours = pids.windows(2).filter(|w| w[1] - w[0] == 1).count();
        assert!(neighbours < 5, "{neighbours} consecutive pids: not random");
        let secrets: std::collections::HashSet<u32> = handles.iter().map(|h| h.secret).collect();
        assert!(secrets.len() > handles.len() - 5);
        drop(handles);
        assert!(registry.slots.lock().unwrap().is_empty(), "unregistered on drop");
    }

    #[test]
    fn a_cancel_is_aimed_only_with_the_right_key_at_a_leased_connection() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();
        assert!(registry.aim(handle.pid, handle.secret).is_none(), "idle: nothing to cancel");
        handle.set_target(target("127.0.0.1:1".parse().unwrap()));
        assert!(registry.aim(handle.pid, handle.secret.wrapping_add(1)).is_none(), "wrong secret");
        let aimed = registry.aim(handle.pid, handle.secret).expect("aimed");
        assert_eq!((aimed.key, aimed.is_current()), (KEY, true));
    }

    #[test]
    fn a_cancel_aimed_during_one_lease_is_stale_in_the_next() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();
        let server = "127.0.0.1:1".parse().unwrap();
        handle.set_target(target(server));
        let aimed = registry.aim(handle.pid, handle.secret).unwrap();
        handle.set_target(None);
        assert!(!aimed.is_current(), "released");
        handle.set_target(target(server));
        assert!(!aimed.is_current(), "the same server connection, leased again: a later transaction");
        assert!(registry.aim(handle.pid, handle.secret).unwrap().is_current());
    }

    #[tokio::test]
    async fn a_cancel_is_listed_while_it_is_forwarded() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();
        // A server that takes the cancel and does not close at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        handle.set_target(target(addr));
        let cancel = tokio::spawn({
            let registry = registry.clone();
            let (pid, secret) = (handle.pid, handle.secret);
            async move { registry.cancel(pid, secret).await }
        });
        let (stream, _) = listener.accept().await.unwrap();
        assert_eq!(registry.forwarding(), [(addr, KEY.pid)]);
        drop(stream);
        cancel.await.unwrap();
        assert!(registry.forwarding().is_empty());
    }

    /// A stand-in server: returns the bytes one connection sent before closing.
    async fn fake_server() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut bytes = Vec::new();
            stream.read_to_end(&mut bytes).await.unwrap();
            bytes
        });
        (addr, received)
    }

    #[tokio::test]
    async fn only_a_current_cancel_reaches_the_server() {
        let registry = Arc::new(CancelRegistry::default());
        let handle = registry.register();

        let (addr, received) = fake_server().await;
        handle.set_target(target(addr));
        registry.cancel(handle.pid, handle.secret).await;
        assert_eq!(received.await.unwrap(), wire::cancel_request(KEY.pid, KEY.secret));
        assert!(registry.forwarding().is_empty(), "listed only while being forwarded");

        // Read during one lease, forwarded after it ended: the server hears nothing.
        let (addr, received) = fake_server().await;
        handle.set_target(target(addr));
        let aimed = registry.aim(handle.pid, handle.secret).unwrap();
        handle.set_target(None);
        handle.set_target(target(addr));
        forward(aimed).await;
        assert_eq!(received.await.unwrap(), b"", "a stale cancel is not sent");
    }
}
