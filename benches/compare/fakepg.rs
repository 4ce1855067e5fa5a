//! A synthetic PostgreSQL server, **for the proxy-bound rows of this bench
//! only** (never used by tests, never a model of PostgreSQL): it speaks just
//! enough of the protocol for `pgbench -S` (simple and `-M extended`)
//! through a proxy, so that the server side costs a few µs per transaction
//! and the proxy, not PostgreSQL, is what the two cores wait for.
//!
//! What it does: answers SSLRequest/GSSENCRequest with `N`, logs anyone in
//! without a password (AuthenticationOk, the usual ParameterStatus,
//! BackendKeyData, ReadyForQuery), and answers every query from its text
//! alone, without looking at parameters: pgbench's `SELECT abalance FROM
//! pgbench_accounts WHERE aid = N` gets one int4 row `0`; pgbench's start-up
//! queries (`select count(*) from pgbench_branches`, the partition lookup
//! on `pgbench_accounts`) get scale 10 and "not partitioned"; any other
//! `select` one row `1`; anything else (SET, RESET, DISCARD ALL, BEGIN…)
//! its command tag. Parse/Bind/Describe/Execute/Sync/Close/Flush keep
//! statements and portals by name. No errors, no COPY, no cancel.
//!
//! It runs on one thread named `fakepg` (a current-thread tokio runtime)
//! inside the bench process, and stops (its tasks dropped, the thread
//! joined) when the [`FakePg`] is dropped.

use std::collections::HashMap;
use std::thread::JoinHandle;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// The name of the server's thread, to find its CPU time in /proc.
pub const THREAD_NAME: &str = "fakepg";
/// The scale pgbench's start-up query is told.
const SCALE: &str = "10";
/// A message longer than this closes the connection (pgbench's are tiny).
const MAX_MESSAGE: usize = 1 << 20;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const PROTOCOL_3: i32 = 196_608;

/// The running server; dropping it stops it.
pub struct FakePg {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakePg {
    pub fn start() -> Result<FakePg, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("fakepg bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || runtime.block_on(serve(listener, stopped)))
            .map_err(|e| format!("fakepg thread: {e}"))?;
        Ok(FakePg { port, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for FakePg {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts until told to stop; the connections' tasks end with it.
async fn serve(listener: std::net::TcpListener, mut stop: oneshot::Receiver<()>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                if let Ok((socket, _)) = accepted {
                    let _ = socket.set_nodelay(true);
                    sessions.spawn(session(socket));
                }
                while sessions.try_join_next().is_some() {}
            }
        }
    }
    sessions.shutdown().await;
}

/// One connection: reads what arrived, answers every whole message in it,
/// writes all the answers at once.
async fn session(mut socket: TcpStream) {
    let (mut input, mut output) = (BytesMut::with_capacity(8192), BytesMut::with_capacity(8192));
    let mut conn = Conn::default();
    loop {
        match socket.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let open = conn.answer_all(&mut input, &mut output);
        if !output.is_empty() && socket.write_all(&output).await.is_err() {
            return;
        }
        output.clear();
        if !open {
            return;
        }
    }
}

/// What a query is answered with, decided from its text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// pgbench -S: one int4 row.
    Abalance,
    /// pgbench's `select count(*) from pgbench_branches`: the scale.
    BranchCount,
    /// pgbench's partition lookup of `pgbench_accounts`: found, not partitioned.
    Partitions,
    /// Any other select: one text row `1`.
    OtherSelect,
    /// Not a select: only the command tag.
    Command,
}

fn shape(query: &str) -> Shape {
    if query.contains("pgbench_accounts WHERE aid") {
        return Shape::Abalance;
    }
    let lower = query.to_ascii_lowercase();
    if lower.contains("from pgbench_branches") {
        Shape::BranchCount
    } else if lower.contains("partstrat") {
        Shape::Partitions
    } else if lower.trim_start().starts_with("select") {
        Shape::OtherSelect
    } else {
        Shape::Command
    }
}

/// Column names and type OIDs of a shape's rows, and its one row.
fn columns(shape: Shape) -> (&'static [(&'static str, u32)], &'static [Option<&'static str>]) {
    match shape {
        Shape::Abalance => (&[("abalance", 23)], &[Some("0")]),
        Shape::BranchCount => (&[("count", 20)], &[Some(SCALE)]),
        Shape::Partitions => (&[("n", 23), ("partstrat", 18), ("count", 20)], &[Some("1"), None, Some("0")]),
        Shape::OtherSelect => (&[("?column?", 25)], &[Some("1")]),
        Shape::Command => (&[], &[]),
    }
}

/// The protocol state of one connection (no socket here).
#[derive(Default)]
struct Conn {
    logged_in: bool,
    /// Inside BEGIN … COMMIT (ReadyForQuery says `T`).
    in_transaction: bool,
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
}

impl Conn {
    /// Answers every whole message in `input` (consuming them) into
    /// `output`; false once the connection is to be closed.
    fn answer_all(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> bool {
        loop {
            // A StartupMessage has no tag byte; every later message has one.
            let header = if self.logged_in { 5 } else { 4 };
            if input.len() < header {
                return true;
            }
            let len = i32::from_be_bytes([input[header - 4], input[header - 3], input[header - 2], input[header - 1]]);
            if !(4..=MAX_MESSAGE as i32).contains(&len) {
                return false;
            }
            let total = header - 4 + len as usize;
            if input.len() < total {
                input.reserve(total - input.len());
                return true;
            }
            let tag = self.logged_in.then(|| input[0]);
            let mut message = input.split_to(total);
            message.advance(header);
            let open = match tag {
                None => self.startup(&message, output),
                Some(tag) => self.message(tag, &message, output),
            };
            if !open {
                return false;
            }
        }
    }

    fn startup(&mut self, body: &[u8], out: &mut BytesMut) -> bool {
        let code = body.get(..4).map_or(0, |c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                out.put_u8(b'N');
                true
            }
            PROTOCOL_3 => {
                message(out, b'R', |b| b.put_i32(0));
                for (name, value) in [
                    ("server_version", "15.0"),
                    ("server_encoding", "UTF8"),
                    ("client_encoding", "UTF8"),
                    ("DateStyle", "ISO, MDY"),
                    ("TimeZone", "UTC"),
                    ("IntervalStyle", "postgres"),
                    ("integer_datetimes", "on"),
                    ("standard_conforming_strings", "on"),
                    ("is_superuser", "off"),
                    ("application_name", ""),
                ] {
                    message(out, b'S', |b| {
                        put_cstr(b, name);
                        put_cstr(b, value);
                    });
                }
                message(out, b'K', |b| {
                    b.put_i32(4242);
                    b.put_i32(4242);
                });
                self.logged_in = true;
                self.ready(out);
                true
            }
            // CancelRequest (nothing to cancel) or an unknown protocol: close.
            _ => false,
        }
    }

    fn message(&mut self, tag: u8, mut body: &[u8], out: &mut BytesMut) -> bool {
        match tag {
            b'Q' => {
                let query = cstr(&mut body);
                let mut any = false;
                for statement in query.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    any = true;
                    let shape = shape(statement);
                    self.row_description(shape, out);
                    self.execute(statement, shape, out);
                }
                if !any {
                    message(out, b'I', |_| {});
                }
                self.ready(out);
            }
            b'P' => {
                let name = cstr(&mut body);
                let query = cstr(&mut body);
                self.statements.insert(name, query);
                message(out, b'1', |_| {});
            }
            b'B' => {
                let portal = cstr(&mut body);
                let statement = cstr(&mut body);
                let query = self.statements.get(&statement).cloned().unwrap_or_default();
                self.portals.insert(portal, query);
                message(out, b'2', |_| {});
            }
            b'D' => {
                let kind = body.first().copied().unwrap_or(b'P');
                body = body.get(1..).unwrap_or_default();
                let name = cstr(&mut body);
                let query = if kind == b'S' { self.statements.get(&name) } else { self.portals.get(&name) };
                let query = query.cloned().unwrap_or_default();
                if kind == b'S' {
                    let params = parameter_count(&query);
                    message(out, b't', |b| {
                        b.put_i16(params as i16);
                        for _ in 0..params {
                            b.put_u32(0);
                        }
                    });
                }
                self.row_description(shape(&query), out);
            }
            b'E' => {
                let portal = cstr(&mut body);
                let query = self.portals.get(&portal).cloned().unwrap_or_default();
                self.execute(&query, shape(&query), out);
            }
            b'C' => {
                let kind = body.first().copied().unwrap_or(b'S');
                body = body.get(1..).unwrap_or_default();
                let name = cstr(&mut body);
                if kind == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                message(out, b'3', |_| {});
            }
            b'S' => {
                self.portals.remove("");
                self.ready(out);
            }
            b'X' => return false,
            // Flush: the answers so far go out with this read's anyway.
            _ => {}
        }
        true
    }

    /// RowDescription, or NoData for a command.
    fn row_description(&self, shape: Shape, out: &mut BytesMut) {
        let (columns, _) = columns(shape);
        if columns.is_empty() {
            message(out, b'n', |_| {});
            return;
        }
        message(out, b'T', |b| {
            b.put_i16(columns.len() as i16);
            for (name, oid) in columns {
                put_cstr(b, name);
                b.put_u32(0); // table oid
                b.put_i16(0); // column number
                b.put_u32(*oid);
                b.put_i16(if *oid == 25 { -1 } else { 4 });
                b.put_i32(-1); // type modifier
                b.put_i16(0); // text format
            }
        });
    }

    /// DataRow (for a select) and CommandComplete.
    fn execute(&mut self, query: &str, shape: Shape, out: &mut BytesMut) {
        let (_, row) = columns(shape);
        if shape != Shape::Command {
            message(out, b'D', |b| {
                b.put_i16(row.len() as i16);
                for value in row {
                    match value {
                        Some(v) => {
                            b.put_i32(v.len() as i32);
                            b.put_slice(v.as_bytes());
                        }
                        None => b.put_i32(-1),
                    }
                }
            });
            message(out, b'C', |b| put_cstr(b, "SELECT 1"));
            return;
        }
        let word = query.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        match word.as_str() {
            "BEGIN" | "START" => self.in_transaction = true,
            "COMMIT" | "END" | "ROLLBACK" | "ABORT" => self.in_transaction = false,
            _ => {}
        }
        let tag = match word.as_str() {
            "DISCARD" => "DISCARD ALL",
            "START" => "BEGIN",
            "END" => "COMMIT",
            "ABORT" => "ROLLBACK",
            "" => "SELECT 0",
            other => other,
        };
        message(out, b'C', |b| put_cstr(b, tag));
    }

    fn ready(&self, out: &mut BytesMut) {
        let status = if self.in_transaction { b'T' } else { b'I' };
        message(out, b'Z', |b| b.put_u8(status));
    }
}

/// The highest `$n` in a query: how many parameters it takes.
fn parameter_count(query: &str) -> usize {
    let mut highest = 0;
    for (at, _) in query.match_indices('$') {
        let digits: String = query[at + 1..].chars().take_while(char::is_ascii_digit).collect();
        highest = highest.max(digits.parse().unwrap_or(0));
    }
    highest
}

/// One message: tag, length (patched in after `body` wrote), body.
fn message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// The NUL-terminated string at the front of `body`, consumed.
fn cstr(body: &mut &[u8]) -> String {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    *body = body.get(end + 1..).unwrap_or_default();
    s
}
