//! Admission of connections: a connection that has not logged in yet holds
//! a share of `max_pre_auth_conn`, of which one client address may hold at
//! most `max_pre_auth_conn_per_addr`; once authenticated it trades that for
//! one of `max_client_conn`. Silent or slow connections therefore never lock
//! out logged-in clients' slots, nor (beyond one address's share) other
//! addresses' logins. Beyond both caps a small allowance apart lets a
//! connection show, within [`CANCEL_WINDOW`], that it is a CancelRequest.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections beyond the caps that may wait for a CancelRequest at once.
/// Small, since a cancel arrives right behind the TCP handshake and is
/// answered at once; per address too, so one host churning silent
/// connections cannot take it all.
const CANCEL_ALLOWANCE: Limits = Limits { total: 64, per_addr: 8 };

/// How long a connection beyond the caps may take to send its CancelRequest
/// before it is refused. Its bytes follow the handshake's last ACK, so this
/// leaves room for a retransmission.
pub const CANCEL_WINDOW: Duration = Duration::from_secs(1);

/// Refusals are logged at most this often, with how many there were, so a
/// flood of connections does not become a flood of log lines.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many connections may be counted: in total, and per client address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub total: usize,
    pub per_addr: usize,
}

/// The address a per-address share is counted for: an IPv4 address, or an
/// IPv6 /64, since one host or site usually holds a whole /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(IpAddr);

impl ClientAddr {
    pub fn of(ip: IpAddr) -> ClientAddr {
        match ip {
            IpAddr::V4(_) => ClientAddr(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientAddr(IpAddr::V4(v4)),
                None => ClientAddr(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))),
            },
        }
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Total,
    PerAddr,
}

/// Why a connection was not admitted, as the client and the log are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    cap: Cap,
    limit: usize,
    addr: ClientAddr,
}

impl Refusal {
    pub fn message(&self) -> String {
        match self.cap {
            Cap::Total => format!("too many connections still logging in (max_pre_auth_conn = {})", self.limit),
            Cap::PerAddr => format!(
                "too many connections still logging in from {} (max_pre_auth_conn_per_addr = {})",
                self.addr, self.limit
            ),
        }
    }
}

/// Connections counted in total and per address.
#[derive(Debug, Default)]
struct Counter {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses with a connection counted: never more entries than `total`.
    by_addr: HashMap<ClientAddr, usize, foldhash::fast::RandomState>,
}

impl Counter {
    fn try_take(self: &Arc<Self>, addr: ClientAddr, limits: Limits) -> Result<Slot, Refusal> {
        let mut counts = self.counts.lock().expect("admission lock");
        if counts.total >= limits.total {
            return Err(Refusal { cap: Cap::Total, limit: limits.total, addr });
        }
        let of_addr = counts.by_addr.entry(addr).or_insert(0);
        if *of_addr >= limits.per_addr {
            return Err(Refusal { cap: Cap::PerAddr, limit: limits.per_addr, addr });
        }
        *of_addr += 1;
        counts.total += 1;
        Ok(Slot { counter: self.clone(), addr })
    }

    fn total(&self) -> usize {
        self.counts.lock().expect("admission lock").total
    }
}

/// One counted connection; uncounted on drop.
#[derive(Debug)]
pub struct Slot {
    counter: Arc<Counter>,
    addr: ClientAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(of_addr) = counts.by_addr.get_mut(&self.addr) {
            *of_addr -= 1;
            if *of_addr == 0 {
                counts.by_addr.remove(&self.addr);
            }
        }
    }
}

/// The counts of connections that have not logged in yet.
#[derive(Debug, Default)]
pub struct PreAuth {
    logging_in: Arc<Counter>,
    cancel_allowance: Arc<Counter>,
    refusals: Mutex<RefusalLog>,
}

#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    unreported: u64,
}

impl PreAuth {
    /// Counts a new connection from `ip` as logging in, if the caps allow.
    pub fn admit(&self, ip: IpAddr, limits: Limits) -> Result<Slot, Refusal> {
        self.logging_in.try_take(ClientAddr::of(ip), limits)
    }

    /// A place in the allowance beyond the caps, in which a connection may
    /// only send a CancelRequest.
    pub fn admit_for_cancel(&self, ip: IpAddr) -> Option<Slot> {
        self.cancel_allowance.try_take(ClientAddr::of(ip), CANCEL_ALLOWANCE).ok()
    }

    /// Connections logging in right now.
    pub fn logging_in(&self) -> usize {
        self.logging_in.total()
    }

    /// Counts a refused connection; returns how many to report when a log
    /// line is due (the first at once, then at most one per interval).
    pub fn note_refusal(&self) -> Option<u64> {
        let mut log = self.refusals.lock().expect("refusal log lock");
        log.unreported += 1;
        let now = Instant::now();
        if log.last.is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL) {
            return None;
        }
        log.last = Some(now);
        Some(std::mem::take(&mut log.unreported))
    }
}

/// What a client connection holds from accept to close.
#[derive(Debug)]
#[expect(dead_code, reason = "the slots are held, never read: dropping one gives it back")]
pub enum Admission {
    /// Not authenticated yet: a share of `max_pre_auth_conn`.
    PreAuth(Slot),
    /// Authenticated: one of `max_client_conn`.
    Client(OwnedSemaphorePermit),
}

impl Admission {
    /// Trades the pre-auth share for a client slot. `Err` when every client
    /// slot is taken; the pre-auth share is then kept until the connection ends.
    pub fn authenticated(&mut self, client_slots: &Arc<Semaphore>) -> Result<(), NoClientSlot> {
        if let Admission::PreAuth(_) = self {
            *self = Admission::Client(client_slots.clone().try_acquire_owned().map_err(|_| NoClientSlot)?);
        }
        Ok(())
    }
}

/// Every `max_client_conn` slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoClientSlot;

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn one_address_gets_its_share_and_the_total_is_kept() {
        let pre_auth = PreAuth::default();
        let limits = Limits { total: 3, per_addr: 2 };
        let a1 = pre_auth.admit(ip("10.0.0.1"), limits).expect("first");
        let _a2 = pre_auth.admit(ip("10.0.0.1"), limits).expect("second");
        let refused = pre_auth.admit(ip("10.0.0.1"), limits).expect_err("third from one address");
        assert_eq!(
            refused.message(),
            "too many connections still logging in from 10.0.0.1 (max_pre_auth_conn_per_addr = 2)"
        );
        let _b1 = pre_auth.admit(ip("10.0.0.2"), limits).expect("another address");
        let refused = pre_auth.admit(ip("10.0.0.3"), limits).expect_err("total reached");
        assert_eq!(refused.message(), "too many connections still logging in (max_pre_auth_conn = 3)");
        assert_eq!(pre_auth.logging_in(), 3);
        drop(a1);
        assert_eq!(pre_auth.logging_in(), 2);
        pre_auth.admit(ip("10.0.0.1"), limits).expect("a freed share is taken again");
    }

    #[test]
    fn addresses_without_connections_are_forgotten() {
        let pre_auth = PreAuth::default();
        let limits = Limits { total: 10, per_addr: 10 };
        let slots: Vec<Slot> = (0..5).map(|i| pre_auth.admit(ip(&format!("10.0.0.{i}")), limits).unwrap()).collect();
        assert_eq!(pre_auth.logging_in.counts.lock().unwrap().by_addr.len(), 5);
        drop(slots);
        let counts = pre_auth.logging_in.counts.lock().unwrap();
        assert_eq!((counts.total, counts.by_addr.len()), (0, 0));
    }

    #[test]
    fn an_ipv6_slash_64_is_one_address_and_mapped_ipv4_is_ipv4() {
        let pre_auth = PreAuth::default();
        let limits = Limits { total: 10, per_addr: 1 };
        let _first = pre_auth.admit(ip("2001:db8:1:2::1"), limits).expect("first");
        let refused = pre_auth.admit(ip("2001:db8:1:2:ffff::9"), limits).expect_err("same /64");
        assert!(refused.message().contains("from 2001:db8:1:2::/64 "), "{}", refused.message());
        pre_auth.admit(ip("2001:db8:1:3::1"), limits).expect("another /64");
        let _v4 = pre_auth.admit(ip("192.0.2.7"), limits).expect("IPv4");
        assert!(pre_auth.admit(ip("::ffff:192.0.2.7"), limits).is_err(), "the same client, IPv4-mapped");
    }

    #[test]
    fn the_cancel_allowance_is_apart_and_small() {
        let pre_auth = PreAuth::default();
        let limits = Limits { total: 1, per_addr: 1 };
        let _held = pre_auth.admit(ip("10.0.0.1"), limits).unwrap();
        let waiting: Vec<Slot> =
            (0..CANCEL_ALLOWANCE.per_addr).map(|_| pre_auth.admit_for_cancel(ip("10.0.0.1")).unwrap()).collect();
        assert!(pre_auth.admit_for_cancel(ip("10.0.0.1")).is_none(), "one address's share of the allowance");
        assert!(pre_auth.admit_for_cancel(ip("10.0.0.2")).is_some(), "another address still has its share");
        assert_eq!(pre_auth.logging_in(), 1, "the allowance is not counted as logging in");
        drop(waiting);
    }

    #[test]
    fn authenticating_trades_the_pre_auth_share_for_a_client_slot() {
        let pre_auth = PreAuth::default();
        let limits = Limits { total: 2, per_addr: 2 };
        let client_slots = Arc::new(Semaphore::new(1));
        let mut first = Admission::PreAuth(pre_auth.admit(ip("10.0.0.1"), limits).unwrap());
        let mut second = Admission::PreAuth(pre_auth.admit(ip("10.0.0.1"), limits).unwrap());
        assert_eq!(first.authenticated(&client_slots), Ok(()));
        assert_eq!(pre_auth.logging_in(), 1);
        assert_eq!(client_slots.available_permits(), 0);
        assert_eq!(second.authenticated(&client_slots), Err(NoClientSlot));
        assert_eq!(pre_auth.logging_in(), 1, "kept until the refused connection ends");
        drop((first, second));
        assert_eq!((pre_auth.logging_in(), client_slots.available_permits()), (0, 1));
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let pre_auth = PreAuth::default();
        assert_eq!(pre_auth.note_refusal(), Some(1), "the first at once");
        assert_eq!(pre_auth.note_refusal(), None);
        assert_eq!(pre_auth.note_refusal(), None);
        pre_auth.refusals.lock().unwrap().last = Some(Instant::now() - REFUSAL_LOG_INTERVAL);
        assert_eq!(pre_auth.note_refusal(), Some(3), "then with the count since");
    }
}
