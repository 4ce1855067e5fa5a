//! Read-only views of a pool's server connections, for the admin console's
//! SHOW SERVERS and SHOW POOLS. Nothing here changes a pool.

use std::net::SocketAddr;
use std::time::Instant;

use super::Pool;

/// One idle server connection, as SHOW SERVERS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleServer {
    /// The server's address.
    pub addr: SocketAddr,
    /// pgrelay's end of the connection, when the socket still knows it.
    pub local: Option<SocketAddr>,
    /// The server process id (from BackendKeyData).
    pub pid: u32,
    /// When the connection was opened.
    pub created: Instant,
    /// When a client last returned it.
    pub last_used: Instant,
}

impl Pool {
    /// The idle connections right now, most recently used last.
    pub fn idle_servers(&self) -> Vec<IdleServer> {
        let idle = self.idle.lock().expect("pool lock");
        let mut idle: Vec<IdleServer> = idle
            .iter()
            .map(|conn| IdleServer {
                addr: conn.addr,
                local: conn.stream.local_addr().ok(),
                pid: conn.key.pid,
                created: conn.created,
                last_used: conn.last_used,
            })
            .collect();
        idle.sort_by_key(|server| server.last_used);
        idle
    }

    /// Idle connections unused for `server_check_delay` or longer at `now`:
    /// each is checked before it is leased (PgBouncer's `sv_used`).
    pub fn idle_due_check(&self, now: Instant) -> usize {
        let delay = self.tuning.check_delay();
        let idle = self.idle.lock().expect("pool lock");
        idle.iter().filter(|conn| now.saturating_duration_since(conn.last_used) >= delay).count()
    }
}
