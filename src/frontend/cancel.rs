//! Cancel keys pgrelay issues to its clients, and forwarding a client's
//! CancelRequest to the server that is running that client's query. A client
//! only ever learns pgrelay's keys, never a server's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::BackendKey;
use crate::wire;

#[derive(Debug)]
struct Slot {
    secret: u32,
    /// The server connection the client holds right now, if any.
    target: Mutex<Option<(SocketAddr, BackendKey)>>,
}

#[derive(Debug)]
pub struct CancelRegistry {
    slots: Mutex<HashMap<u32, Arc<Slot>, foldhash::fast::RandomState>>,
    next_pid: AtomicU32,
}

impl Default for CancelRegistry {
    fn default() -> Self {
        CancelRegistry {
            slots: Mutex::new(HashMap::default()),
            next_pid: AtomicU32::new(rand::thread_rng().gen_range(1..1 << 30)),
        }
    }
}

/// A client's registration; unregisters on drop.
#[derive(Debug)]
pub struct CancelHandle {
    registry: Arc<CancelRegistry>,
    pub pid: u32,
    pub secret: u32,
    slot: Arc<Slot>,
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let secret = rand::thread_rng().gen();
        let slot = Arc::new(Slot { secret, target: Mutex::new(None) });
        let mut slots = self.slots.lock().expect("cancel lock");
        let pid = loop {
            let pid = self.next_pid.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
            if pid != 0 && !slots.contains_key(&pid) {
                break pid;
            }
        };
        slots.insert(pid, slot.clone());
        CancelHandle { registry: self.clone(), pid, secret, slot }
    }

    /// Forwards a cancel for pgrelay's (pid, secret) to the right server, if
    /// the key is valid and the client is running something right now.
    pub async fn cancel(&self, pid: u32, secret: u32) {
        let target = {
            let slots = self.slots.lock().expect("cancel lock");
            match slots.get(&pid) {
                Some(slot) if slot.secret == secret => *slot.target.lock().expect("cancel lock"),
                _ => None,
            }
        };
        let Some((addr, key)) = target else {
            tracing::debug!(pid, "cancel request for an unknown key or an idle client ignored");
            return;
        };
        let send = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(&wire::cancel_request(key.pid, key.secret)).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(Duration::from_secs(5), send).await {
            Ok(Ok(())) => tracing::debug!(pid, server = %addr, "cancel request forwarded"),
            Ok(Err(e)) => tracing::warn!(pid, server = %addr, error = %e, "forwarding cancel request failed"),
            Err(_) => tracing::warn!(pid, server = %addr, "forwarding cancel request timed out"),
        }
    }
}

impl CancelHandle {
    pub fn set_target(&self, target: Option<(SocketAddr, BackendKey)>) {
        *self.slot.target.lock().expect("cancel lock") = target;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.slots.lock().expect("cancel lock").remove(&self.pid);
    }
}
