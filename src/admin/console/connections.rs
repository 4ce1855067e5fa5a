//! SHOW SERVERS and SHOW CLIENTS: one row per connection, with PgBouncer's
//! 1.18 columns. Leased server connections are found through the clients
//! that hold them, idle ones in the pools. A connection being reset after
//! its client left is in neither list, and is not shown.
//!
//! `ptr` and `link` tie a client to its server as in PgBouncer: a client's
//! ptr is `c:` and its registry id, a server's `s:`, its node and its process
//! id (`c:12`, `s:pg0:4711`).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::table::{num, text, ColumnType as T, Table, Value};
use crate::app::{ClientState, Context, ServerLink};

/// SHOW SERVERS and SHOW CLIENTS columns, PgBouncer 1.18 (both lists share them).
pub const CONNECTIONS: [(&str, T); 18] = [
    ("type", T::Text),
    ("user", T::Text),
    ("database", T::Text),
    ("state", T::Text),
    ("addr", T::Text),
    ("port", T::Int4),
    ("local_addr", T::Text),
    ("local_port", T::Int4),
    ("connect_time", T::Text),
    ("request_time", T::Text),
    ("wait", T::Int4),
    ("wait_us", T::Int4),
    ("close_needed", T::Int4),
    ("ptr", T::Text),
    ("link", T::Text),
    ("remote_pid", T::Int4),
    ("tls", T::Text),
    ("application_name", T::Text),
];

/// SHOW CLIENTS: PgBouncer's columns, then the worker running the session.
pub const CLIENTS: [(&str, T); 19] = {
    let mut columns = [("worker", T::Int4); 19];
    let mut i = 0;
    while i < CONNECTIONS.len() {
        columns[i] = CONNECTIONS[i];
        i += 1;
    }
    columns
};

/// Converts monotonic instants to wall-clock text, PgBouncer's way
/// (`2024-01-31 12:00:00 UTC`), against one reading of both clocks.
pub struct Clock {
    now: Instant,
    wall: SystemTime,
}

impl Clock {
    pub fn new(now: Instant, wall: SystemTime) -> Clock {
        Clock { now, wall }
    }

    pub fn at(&self, instant: Instant) -> Value {
        self.wall_time(self.wall - self.now.saturating_duration_since(instant))
    }

    pub fn wall_time(&self, time: SystemTime) -> Value {
        let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
        Some(rfc3339.replace('T', " ").replace('Z', " UTC"))
    }
}

fn server_ptr(link: &ServerLink) -> String {
    format!("s:{}:{}", link.pool.key.node, link.pid)
}

fn ip(addr: Option<SocketAddr>) -> Value {
    addr.map(|a| a.ip().to_string())
}

fn port(addr: Option<SocketAddr>) -> Value {
    addr.map(|a| a.port().to_string())
}

/// SHOW SERVERS: leased connections (state `active`) then idle ones (`idle`).
/// close_needed is 1 for a connection whose pool was closed or retired.
pub fn servers_table(ctx: &Context, clock: &Clock) -> Table {
    let mut table = Table::new(&CONNECTIONS);
    for client in ctx.clients.snapshot() {
        let activity = client.activity();
        let Some(link) = activity.server.filter(|_| activity.state == ClientState::Active) else { continue };
        table.push(vec![
            text("S"),
            text(link.pool.key.user.as_str()),
            text(link.pool.key.database.as_str()),
            text("active"),
            ip(Some(link.addr)),
            port(Some(link.addr)),
            None,
            None,
            clock.at(link.created),
            clock.at(activity.since),
            num(0),
            num(0),
            num(u8::from(link.pool.is_closed())),
            text(server_ptr(&link)),
            text(format!("c:{}", client.id)),
            num(link.pid),
            text(""),
            text(client.info.application_name.as_str()),
        ]);
    }
    let mut pools = ctx.pools.all();
    pools.sort_by(|a, b| (&a.key.database, &a.key.user, &a.key.node).cmp(&(&b.key.database, &b.key.user, &b.key.node)));
    for pool in pools {
        for server in pool.idle_servers() {
            table.push(vec![
                text("S"),
                text(pool.key.user.as_str()),
                text(pool.key.database.as_str()),
                text("idle"),
                ip(Some(server.addr)),
                port(Some(server.addr)),
                ip(server.local),
                port(server.local),
                clock.at(server.created),
                clock.at(server.last_used),
                num(0),
                num(0),
                num(u8::from(pool.is_closed())),
                text(format!("s:{}:{}", pool.key.node, server.pid)),
                text(""),
                num(server.pid),
                text(""),
                text(""),
            ]);
        }
    }
    table
}

/// SHOW CLIENTS: every logged-in client (admin console sessions are not
/// listed). state is `idle` (between transactions), `waiting` (for a
/// server, RESUME or a primary) or `active` (holding a server); wait and
/// wait_us (seconds, and the microseconds part) are how long a waiting
/// client has waited; remote_pid is 0; tls is the protocol and cipher
/// suite of a TLS client; worker is the worker running the session.
pub fn clients_table(ctx: &Context, clock: &Clock, now: Instant) -> Table {
    let mut table = Table::new(&CLIENTS);
    for client in ctx.clients.snapshot() {
        let activity = client.activity();
        let (state, wait) = match activity.state {
            ClientState::Idle => ("idle", None),
            ClientState::Waiting => ("waiting", Some(now.saturating_duration_since(activity.since))),
            ClientState::Active => ("active", None),
        };
        let wait = wait.unwrap_or_default();
        let link = activity.server.as_ref().filter(|_| activity.state == ClientState::Active);
        table.push(vec![
            text("C"),
            text(client.info.user.as_str()),
            text(client.info.database.as_str()),
            text(state),
            ip(Some(client.info.peer)),
            port(Some(client.info.peer)),
            ip(client.info.local),
            port(client.info.local),
            clock.wall_time(client.connected_at),
            clock.at(activity.since),
            num(wait.as_secs()),
            num(wait.subsec_micros()),
            num(0),
            text(format!("c:{}", client.id)),
            text(link.map(server_ptr).unwrap_or_default()),
            num(0),
            text(client.info.tls.as_str()),
            text(client.info.application_name.as_str()),
            num(client.info.worker),
        ]);
    }
    table
}
