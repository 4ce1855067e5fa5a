//! Memory per idle client: opens N client connections to a proxy (each
//! completes startup and trust authentication, then idles), reads the
//! proxy's RSS, closes them, and does it all a second time to show whether
//! memory comes back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pgrelay::localcluster::TRUST_USER;
use pgrelay::wire::{put_startup_message, Frame};

use super::proxies::rss_kib;

/// Logins in flight at once: below both proxies' listen backlogs.
const CONCURRENT_LOGINS: usize = 100;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on opening all the connections of one round.
const OPEN_ALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Time the proxy gets to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
pub struct IdleRound {
    pub open_secs: f64,
    pub rss_open_kib: u64,
    pub rss_closed_kib: u64,
    /// The proxy's open file descriptors after the clients closed.
    pub fds_closed: usize,
}

#[derive(Debug, Clone)]
pub struct IdleResult {
    pub clients: usize,
    pub rss_before_kib: u64,
    pub rounds: Vec<IdleRound>,
}

impl IdleResult {
    /// (RSS with the clients open − RSS before) / clients, first round.
    pub fn kib_per_client(&self) -> f64 {
        let open = self.rounds.first().map_or(0, |r| r.rss_open_kib);
        open.saturating_sub(self.rss_before_kib) as f64 / self.clients as f64
    }
}

/// `rounds` rounds (2 by default) of `clients` idle connections against
/// `addr`, served by `pid`.
pub fn measure(addr: SocketAddr, pid: u32, clients: usize, rounds_wanted: usize) -> Result<IdleResult, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let rss_before_kib = rss_kib(pid)?;
        let mut rounds = Vec::new();
        for _ in 0..rounds_wanted {
            let started = Instant::now();
            let conns = tokio::time::timeout(OPEN_ALL_TIMEOUT, open_all(addr, clients))
                .await
                .map_err(|_| format!("opening {clients} connections took over {OPEN_ALL_TIMEOUT:?}"))??;
            let open_secs = started.elapsed().as_secs_f64();
            tokio::time::sleep(SETTLE).await;
            let rss_open_kib = rss_kib(pid)?;
            close_all(conns).await;
            tokio::time::sleep(SETTLE).await;
            let rss_closed_kib = rss_kib(pid)?;
            let fds_closed = open_fds(pid)?;
            rounds.push(IdleRound { open_secs, rss_open_kib, rss_closed_kib, fds_closed });
        }
        Ok(IdleResult { clients, rss_before_kib, rounds })
    })
}

fn open_fds(pid: u32) -> Result<usize, String> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).map_err(|e| format!("/proc/{pid}/fd: {e}"))
}

async fn open_all(addr: SocketAddr, clients: usize) -> Result<Vec<TcpStream>, String> {
    let results: Vec<Result<TcpStream, String>> =
        stream::iter(0..clients).map(|_| login(addr)).buffer_unordered(CONCURRENT_LOGINS).collect().await;
    let mut conns = Vec::with_capacity(clients);
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(conns),
        Some(e) => {
            let opened = conns.len();
            close_all(conns).await;
            Err(format!("only {opened} of {clients} clients logged in; first error: {e}"))
        }
    }
}

async fn close_all(conns: Vec<TcpStream>) {
    const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];
    stream::iter(conns)
        .for_each_concurrent(CONCURRENT_LOGINS, |mut c| async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), c.write_all(&TERMINATE)).await;
        })
        .await;
}

/// Startup + trust login; returns once the proxy sends ReadyForQuery.
pub(super) async fn login(addr: SocketAddr) -> Result<TcpStream, String> {
    tokio::time::timeout(LOGIN_TIMEOUT, async {
        let mut conn = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let mut buf = BytesMut::new();
        put_startup_message(&mut buf, [(&b"user"[..], TRUST_USER.as_bytes()), (&b"database"[..], &b"app"[..])]);
        conn.write_all(&buf).await.map_err(|e| format!("startup: {e}"))?;
        buf.clear();
        loop {
            while let Some(frame) = Frame::peek(&buf, 1 << 20).map_err(|e| e.to_string())? {
                let msg = buf.split_to(frame.total_len);
                match frame.tag {
                    b'Z' => return Ok(conn),
                    b'E' => return Err(format!("login refused: {}", String::from_utf8_lossy(&msg[5..]))),
                    b'R' if msg[5..9] != [0, 0, 0, 0] => return Err("the proxy asked for a password".into()),
                    _ => {}
                }
            }
            if conn.read_buf(&mut buf).await.map_err(|e| format!("read: {e}"))? == 0 {
                return Err("connection closed during login".into());
            }
        }
    })
    .await
    .map_err(|_| format!("login took over {LOGIN_TIMEOUT:?}"))?
}
