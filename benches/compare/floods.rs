//! What one client can make pgrelay hold: the RSS of a pgrelay process
//! before and after three floods from raw-protocol clients — pipelined
//! Syncs whose answers are never read, large named statements prepared and
//! closed in two rounds, and a 32 MiB row that is not read. Each flood gets
//! a pgrelay process of its own, so memory one flood leaves to the
//! allocator cannot hide the next one's growth.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::future::try_join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use pgrelay::localcluster::LocalCluster;
use pgrelay::wire::{
    self, backend as tag, frontend, put_parse, put_query, put_statement_op, put_sync, put_terminate, Frame,
};

use super::idle::login;
use super::proxies::{cluster_nodes, rss_kib, Pgrelay, ProxySettings};

/// Time the proxy gets to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

/// Flood 1: 32 MiB of Syncs, rounded down to whole 5-byte messages.
const SYNC_FLOOD_MIB: usize = 32;
const SYNC_FLOOD_BYTES: usize = (SYNC_FLOOD_MIB << 20) / 5 * 5;
/// Syncs per write call (64 KiB).
const SYNCS_PER_WRITE: usize = 13_107;
/// A write that makes no progress for this long means the socket blocked.
const STALL: Duration = Duration::from_secs(2);
const SYNC_FLOOD_DEADLINE: Duration = Duration::from_secs(20);

/// Flood 2: clients × statements per client, each of this much SQL text.
const STATEMENT_CLIENTS: usize = 2;
const STATEMENTS: usize = 60;
const STATEMENT_TEXT: usize = 100_000;
const STATEMENT_ROUNDS: usize = 2;
const STATEMENT_ROUND_TIMEOUT: Duration = Duration::from_secs(120);

/// Flood 3: one row of one column of this many bytes.
const ROW_BYTES: usize = 32 << 20;
/// How long the row's client leaves it unread before RSS is read.
const ROW_UNREAD: Duration = Duration::from_secs(5);
const ROW_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a client's flood of Syncs ended.
#[derive(Debug, Clone, Copy)]
pub enum WriteEnd {
    /// Every byte was written.
    All,
    /// No write made progress for `STALL`: pgrelay stopped reading.
    Blocked,
    /// `SYNC_FLOOD_DEADLINE` passed while writes still made progress.
    Deadline,
}

#[derive(Debug, Clone, Copy)]
pub struct SyncFlood {
    pub rss_before_kib: u64,
    /// With the client still connected, `SETTLE` after its last write.
    pub rss_after_kib: u64,
    /// Bytes the client's socket accepted.
    pub wrote: usize,
    pub end: WriteEnd,
    /// From the first write to the last one that made progress.
    pub write_secs: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct StatementRound {
    /// With every statement of the round prepared and the clients connected.
    pub rss_held_kib: u64,
    /// `SETTLE` after the statements were closed and the clients left.
    pub rss_after_kib: u64,
}

#[derive(Debug, Clone)]
pub struct StatementFlood {
    pub rss_before_kib: u64,
    pub rounds: Vec<StatementRound>,
}

#[derive(Debug, Clone, Copy)]
pub struct RowFlood {
    pub rss_before_kib: u64,
    /// `ROW_UNREAD` after the query was sent, nothing read yet.
    pub rss_after_kib: u64,
    /// Length of the column value the client finally read.
    pub received: usize,
    pub intact: bool,
}

pub struct FloodResults {
    pub syncs: Result<SyncFlood, String>,
    pub statements: Result<StatementFlood, String>,
    pub row: Result<RowFlood, String>,
}

/// Runs the three floods, each against a fresh `bin` started with the
/// bench's config in a subdirectory of `dir`.
pub fn measure(bin: &Path, dir: &Path, cluster: &LocalCluster, settings: &ProxySettings) -> FloodResults {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let e = e.to_string();
            return FloodResults { syncs: Err(e.clone()), statements: Err(e.clone()), row: Err(e) };
        }
    };
    let fresh = |name: &str| -> Result<Pgrelay, String> {
        let sub = dir.join(name);
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        Pgrelay::start(bin, &sub, &cluster_nodes(cluster), settings, None)
    };
    eprintln!("floods: 1/3 pipelined Syncs");
    let syncs = fresh("flood-syncs").and_then(|r| runtime.block_on(sync_flood(r.rw, r.guard.pid())));
    eprintln!("floods: 2/3 named statements");
    let statements = fresh("flood-statements").and_then(|r| runtime.block_on(statement_flood(r.rw, r.guard.pid())));
    eprintln!("floods: 3/3 a 32 MiB row");
    let row = fresh("flood-row").and_then(|r| runtime.block_on(row_flood(r.rw, r.guard.pid())));
    FloodResults { syncs, statements, row }
}

/// Writes Syncs as fast as the socket takes them and never reads.
async fn sync_flood(addr: SocketAddr, pid: u32) -> Result<SyncFlood, String> {
    let mut conn = login(addr).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(pid)?;
    let mut chunk = BytesMut::new();
    for _ in 0..SYNCS_PER_WRITE {
        put_sync(&mut chunk);
    }
    let started = Instant::now();
    let deadline = started + SYNC_FLOOD_DEADLINE;
    let (mut wrote, mut last_progress) = (0, started);
    let end = loop {
        if wrote == SYNC_FLOOD_BYTES {
            break WriteEnd::All;
        }
        let at = wrote % chunk.len();
        let len = (chunk.len() - at).min(SYNC_FLOOD_BYTES - wrote);
        let give_up = deadline.min(Instant::now() + STALL);
        match tokio::time::timeout_at(give_up.into(), conn.write(&chunk[at..at + len])).await {
            Ok(Ok(0)) => return Err(format!("pgrelay closed the connection after {wrote} bytes")),
            Ok(Ok(n)) => (wrote, last_progress) = (wrote + n, Instant::now()),
            Ok(Err(e)) => return Err(format!("write failed after {wrote} bytes: {e}")),
            Err(_) if Instant::now() >= deadline => break WriteEnd::Deadline,
            Err(_) => break WriteEnd::Blocked,
        }
    };
    let write_secs = (last_progress - started).as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss_kib(pid)?;
    Ok(SyncFlood { rss_before_kib, rss_after_kib, wrote, end, write_secs })
}

async fn statement_flood(addr: SocketAddr, pid: u32) -> Result<StatementFlood, String> {
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(pid)?;
    let mut rounds = Vec::new();
    for round in 0..STATEMENT_ROUNDS {
        let one = async {
            let prepared = try_join_all((0..STATEMENT_CLIENTS).map(|client| prepare_all(addr, round, client))).await?;
            tokio::time::sleep(SETTLE).await;
            let rss_held_kib = rss_kib(pid)?;
            try_join_all(prepared.into_iter().map(|(conn, client)| close_all(conn, round, client))).await?;
            tokio::time::sleep(SETTLE).await;
            Ok::<_, String>(StatementRound { rss_held_kib, rss_after_kib: rss_kib(pid)? })
        };
        let r = tokio::time::timeout(STATEMENT_ROUND_TIMEOUT, one)
            .await
            .map_err(|_| format!("round {} took over {STATEMENT_ROUND_TIMEOUT:?}", round + 1))??;
        rounds.push(r);
    }
    Ok(StatementFlood { rss_before_kib, rounds })
}

/// Distinct in every round and client: nothing one round prepared can be
/// shared with the next.
fn statement_name(round: usize, client: usize, i: usize) -> String {
    format!("flood_r{round}_c{client}_s{i}")
}

/// Logs in and prepares `STATEMENTS` named statements in one pipeline.
async fn prepare_all(addr: SocketAddr, round: usize, client: usize) -> Result<(TcpStream, usize), String> {
    let mut conn = login(addr).await?;
    let padding = "x".repeat(STATEMENT_TEXT);
    let mut buf = BytesMut::new();
    for i in 0..STATEMENTS {
        let name = statement_name(round, client, i);
        put_parse(&mut buf, name.as_bytes(), &format!("select '{padding}' as {name}"), &[]);
    }
    put_sync(&mut buf);
    conn.write_all(&buf).await.map_err(|e| format!("writing the Parses: {e}"))?;
    expect_answers(&mut conn, tag::PARSE_COMPLETE, STATEMENTS).await?;
    Ok((conn, client))
}

/// Closes the client's statements, then disconnects.
async fn close_all(mut conn: TcpStream, round: usize, client: usize) -> Result<(), String> {
    let mut buf = BytesMut::new();
    for i in 0..STATEMENTS {
        put_statement_op(&mut buf, frontend::CLOSE, statement_name(round, client, i).as_bytes());
    }
    put_sync(&mut buf);
    conn.write_all(&buf).await.map_err(|e| format!("writing the Closes: {e}"))?;
    expect_answers(&mut conn, tag::CLOSE_COMPLETE, STATEMENTS).await?;
    buf.clear();
    put_terminate(&mut buf);
    conn.write_all(&buf).await.map_err(|e| format!("Terminate: {e}"))
}

/// Reads up to ReadyForQuery and checks that `count` messages `expected` came.
async fn expect_answers(conn: &mut TcpStream, expected: u8, count: usize) -> Result<(), String> {
    let answers = read_until_ready(conn, 1 << 20).await?;
    let got = answers.iter().filter(|m| m[0] == expected).count();
    if got != count || answers.len() != count + 1 {
        return Err(format!(
            "expected {count} × {:?} + ReadyForQuery, got {got} of {}",
            char::from(expected),
            answers.len()
        ));
    }
    Ok(())
}

/// Every message up to and including ReadyForQuery; an ErrorResponse fails.
async fn read_until_ready(conn: &mut TcpStream, max_len: usize) -> Result<Vec<BytesMut>, String> {
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    loop {
        while let Some(frame) = Frame::peek(&buf, max_len).map_err(|e| e.to_string())? {
            let msg = buf.split_to(frame.total_len);
            match frame.tag {
                tag::ERROR_RESPONSE => {
                    return Err(format!("server error: {}", String::from_utf8_lossy(wire::body(&msg))))
                }
                tag::READY_FOR_QUERY => {
                    messages.push(msg);
                    return Ok(messages);
                }
                _ => messages.push(msg),
            }
        }
        buf.reserve(Frame::needed(&buf).max(64 * 1024));
        if conn.read_buf(&mut buf).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("pgrelay closed the connection".into());
        }
    }
}

/// Asks for a 32 MiB row, leaves it unread for a while, then reads it.
async fn row_flood(addr: SocketAddr, pid: u32) -> Result<RowFlood, String> {
    let mut conn = login(addr).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_before_kib = rss_kib(pid)?;
    let mut buf = BytesMut::new();
    put_query(&mut buf, &format!("select repeat('x', {ROW_BYTES})"));
    conn.write_all(&buf).await.map_err(|e| format!("query: {e}"))?;
    tokio::time::sleep(ROW_UNREAD).await;
    let rss_after_kib = rss_kib(pid)?;
    let answers = tokio::time::timeout(ROW_READ_TIMEOUT, read_until_ready(&mut conn, ROW_BYTES + 1024))
        .await
        .map_err(|_| format!("reading the row took over {ROW_READ_TIMEOUT:?}"))??;
    let row = answers.iter().find(|m| m[0] == tag::DATA_ROW).ok_or("no DataRow came")?;
    // DataRow: tag, length, column count (1), value length, value.
    let value = row.get(11..).ok_or("a truncated DataRow")?;
    let declared = row.get(7..11).map(|l| i32::from_be_bytes([l[0], l[1], l[2], l[3]]));
    let intact = declared == Some(ROW_BYTES as i32) && value.len() == ROW_BYTES && value.iter().all(|&b| b == b'x');
    Ok(RowFlood { rss_before_kib, rss_after_kib, received: value.len(), intact })
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn growth(from_kib: u64, to_kib: u64) -> String {
    format!("{:+.1}", (to_kib as f64 - from_kib as f64) / 1024.0)
}

fn failed(flood: &str, e: &str) -> String {
    format!("| {flood} | FAILED: {} | | | | |", e.replace('|', "/"))
}

/// The table, as Markdown.
pub fn print(r: &FloodResults) {
    println!(
        "RSS of pgrelay (MiB, VmRSS) before and after one flood; each flood runs against a pgrelay process of its \
         own, started fresh; each reading is taken {} s after the step before it ({} s after the query in 3):",
        SETTLE.as_secs(),
        ROW_UNREAD.as_secs()
    );
    println!();
    println!("| flood | RSS before | RSS after | RSS after round 2 | growth | client wrote |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!("{}", syncs_row(&r.syncs));
    println!("{}", statements_row(&r.statements));
    println!("{}", row_row(&r.row));
    println!();
    print_notes(r);
}

fn syncs_row(r: &Result<SyncFlood, String>) -> String {
    let flood = format!("1. {SYNC_FLOOD_MIB} MiB of pipelined Syncs, answers never read");
    let s = match r {
        Ok(s) => s,
        Err(e) => return failed(&flood, e),
    };
    let end = match s.end {
        WriteEnd::All => "all",
        WriteEnd::Blocked => "then blocked",
        WriteEnd::Deadline => "deadline",
    };
    format!(
        "| {flood} | {} | {} | – | {} | {} bytes ({:.2} MiB, {end}, {:.1} s) |",
        mib(s.rss_before_kib),
        mib(s.rss_after_kib),
        growth(s.rss_before_kib, s.rss_after_kib),
        s.wrote,
        s.wrote as f64 / (1 << 20) as f64,
        s.write_secs,
    )
}

fn statements_row(r: &Result<StatementFlood, String>) -> String {
    let flood = format!(
        "2. {STATEMENT_CLIENTS} clients × {STATEMENTS} named statements of {} kB, closed; {STATEMENT_ROUNDS} rounds",
        STATEMENT_TEXT / 1000
    );
    match r {
        Ok(StatementFlood { rss_before_kib, rounds }) if rounds.len() == 2 => format!(
            "| {flood} | {} | {} | {} | {} (round 2 − round 1) | – |",
            mib(*rss_before_kib),
            mib(rounds[0].rss_after_kib),
            mib(rounds[1].rss_after_kib),
            growth(rounds[0].rss_after_kib, rounds[1].rss_after_kib),
        ),
        Ok(_) => failed(&flood, "not 2 rounds"),
        Err(e) => failed(&flood, e),
    }
}

fn row_row(r: &Result<RowFlood, String>) -> String {
    let flood = format!("3. a {} MiB row, unread for {} s", ROW_BYTES >> 20, ROW_UNREAD.as_secs());
    match r {
        Ok(w) => format!(
            "| {flood} | {} | {} | – | {} | – |",
            mib(w.rss_before_kib),
            mib(w.rss_after_kib),
            growth(w.rss_before_kib, w.rss_after_kib)
        ),
        Err(e) => failed(&flood, e),
    }
}

fn print_notes(r: &FloodResults) {
    println!(
        "- 1: the client writes 64 KiB of Syncs at a time, until all {SYNC_FLOOD_BYTES} bytes are written, no write \
         progresses for {} s (blocked) or {} s pass; \"client wrote\": the bytes its socket accepted, and the time \
         to the last write that progressed; RSS after: with the client still connected.",
        STALL.as_secs(),
        SYNC_FLOOD_DEADLINE.as_secs()
    );
    if let Ok(s) = &r.statements {
        let held = s.rounds.iter().map(|x| mib(x.rss_held_kib)).collect::<Vec<_>>().join(" / ");
        println!(
            "- 2: every name and text distinct across clients and rounds; RSS with the statements prepared (per \
             round): {held}; RSS after: the statements closed and the clients gone."
        );
    }
    if let Ok(w) = &r.row {
        let verdict = if w.intact { "intact" } else { "NOT intact" };
        println!(
            "- 3: `select repeat('x', {ROW_BYTES})`; RSS after: the row unread for {} s; then read in full: {} bytes, \
             {verdict}.",
            ROW_UNREAD.as_secs(),
            w.received
        );
    }
}
