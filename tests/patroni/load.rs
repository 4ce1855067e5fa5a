//! A steady write load through pgrelay's read-write port: a few clients,
//! each inserting rows with fresh ids in autocommit transactions, recording
//! which were acknowledged (and by which server) and which failed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::relay;

pub const WRITERS: usize = 4;
/// One transaction may wait this long (pgrelay's query_wait_timeout is 30 s).
const TRANSACTION_LIMIT: Duration = Duration::from_secs(40);
const LOGIN_LIMIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    /// When the client saw the acknowledgement.
    pub at: Instant,
    /// The server port that ran the insert.
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Failure {
    /// The id the failed insert tried (None for a failed login).
    pub id: Option<i64>,
    /// When the client sent the transaction (or began the login).
    pub started: Instant,
    /// When the client saw the error.
    pub at: Instant,
    pub error: String,
}

impl Failure {
    /// pgrelay could not open a server connection for the transaction, so
    /// nothing of it ran (as opposed to a server connection lost under it).
    pub fn refused(&self) -> bool {
        self.error.contains("connecting to") || self.error.starts_with("57P03")
    }
}

#[derive(Default)]
pub struct Load {
    stop: AtomicBool,
    next_id: AtomicI64,
    pub acked: Mutex<Vec<Ack>>,
    /// Failed transactions (their outcome unknown to the client).
    pub failed: Mutex<Vec<Failure>>,
    pub failed_logins: Mutex<Vec<Failure>>,
}

impl Load {
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn acked(&self) -> Vec<Ack> {
        self.acked.lock().expect("acked").clone()
    }

    pub fn failed(&self) -> Vec<Failure> {
        self.failed.lock().expect("failed").clone()
    }

    pub fn failed_logins(&self) -> Vec<Failure> {
        self.failed_logins.lock().expect("failed logins").clone()
    }

    /// The first acknowledgement after `since` by the server on `port`.
    pub fn first_ack_on(&self, port: u16, since: Instant) -> Option<Instant> {
        self.acked.lock().expect("acked").iter().filter(|a| a.port == port && a.at >= since).map(|a| a.at).min()
    }
}

/// Error messages and how often each was seen.
pub fn summarize(failures: &[Failure]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for failure in failures {
        *seen.entry(failure.error.clone()).or_default() += 1;
    }
    seen
}

/// One writer: connects as `app` through pgrelay, inserts until stopped,
/// reconnects when its connection is lost.
pub async fn writer(addr: SocketAddr, load: Arc<Load>) {
    let mut client = None;
    while !load.stop.load(Ordering::Relaxed) {
        let Some(live) = client.as_ref() else {
            let started = Instant::now();
            let login = tokio::time::timeout(LOGIN_LIMIT, relay::connect_as(addr, "app", "app")).await;
            match login {
                Ok(Ok(conn)) => client = Some(conn.client),
                Ok(Err(e)) => {
                    let error = format!("login: {}", relay::message(&e));
                    load.failed_logins.lock().expect("failed logins").push(Failure {
                        id: None,
                        started,
                        at: Instant::now(),
                        error,
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    let error = format!("login: no answer within {LOGIN_LIMIT:?}");
                    load.failed_logins.lock().expect("failed logins").push(Failure {
                        id: None,
                        started,
                        at: Instant::now(),
                        error,
                    });
                }
            }
            continue;
        };
        let id = load.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sql = "insert into patroni_t (id) values ($1) returning inet_server_port()";
        match tokio::time::timeout(TRANSACTION_LIMIT, live.query_one(sql, &[&id])).await {
            Ok(Ok(row)) => {
                let port: i32 = row.get(0);
                load.acked.lock().expect("acked").push(Ack { id, at: Instant::now(), port: port as u16 });
            }
            Ok(Err(e)) => {
                let error = match e.code() {
                    Some(code) => format!("{}: {}", code.code(), relay::message(&e)),
                    None => relay::message(&e),
                };
                load.failed.lock().expect("failed").push(Failure { id: Some(id), started, at: Instant::now(), error });
                // After a FATAL the connection is going away even if the
                // client has not noticed yet: start afresh rather than send
                // the next transaction into a closing connection.
                let fatal = e.as_db_error().is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC"));
                if fatal || e.as_db_error().is_none() || live.is_closed() {
                    client = None;
                }
            }
            Err(_) => {
                let error = format!("no answer within {TRANSACTION_LIMIT:?}");
                load.failed.lock().expect("failed").push(Failure { id: Some(id), started, at: Instant::now(), error });
                client = None;
            }
        }
    }
}
