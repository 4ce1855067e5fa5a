//! Criterion micro-benches for the functions every forwarded message or
//! transaction goes through: frame splitting of server output, the
//! expected-response queue, the routing decision, and the session-state
//! classification of every Query and Parse.
//!
//! A counting global allocator also reports how many heap allocations the
//! Frame + Tracker relay loop makes per forwarded backend message (the design
//! says none). Run: `cargo bench --bench hot_path`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, Criterion, Throughput};

use pgrelay::backend::{Expect, Origin, Tracker, Verdict};
use pgrelay::cluster::{NodeStatus, Topology};
use pgrelay::config::{Config, Prefer, RoFallback};
use pgrelay::router::{route, session_state_effect, ListenerKind, RouteInput};
use pgrelay::wire::Frame;

/// Counts every allocation and reallocation; frees are not counted.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const MAX_MESSAGE: usize = 16 << 20;

fn put_message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    buf.put_u8(tag);
    buf.put_u32(body.len() as u32 + 4);
    buf.put_slice(body);
}

/// A DataRow of pgbench_accounts' shape: aid, bid, abalance, filler(84).
fn data_row(buf: &mut BytesMut, aid: u32) {
    let mut body = BytesMut::new();
    body.put_u16(4);
    for col in [aid.to_string(), "1".into(), "0".into(), " ".repeat(84)] {
        body.put_u32(col.len() as u32);
        body.put_slice(col.as_bytes());
    }
    put_message(buf, b'D', &body);
}

/// What a server sends for a simple Query returning `rows` rows:
/// RowDescription, DataRow × rows, CommandComplete, ReadyForQuery.
fn query_response(rows: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    let mut desc = BytesMut::new();
    desc.put_u16(1);
    desc.put_slice(b"abalance\0");
    desc.put_u32(16_400);
    desc.put_u16(3);
    desc.put_u32(23);
    desc.put_i16(4);
    desc.put_i32(-1);
    desc.put_i16(0);
    put_message(&mut buf, b'T', &desc);
    for aid in 0..rows {
        data_row(&mut buf, aid);
    }
    put_message(&mut buf, b'C', format!("SELECT {rows}\0").as_bytes());
    put_message(&mut buf, b'Z', b"I");
    buf
}

/// What a server sends for Parse/Bind/Describe portal/Execute/Sync of a
/// one-row select (`pgbench -S -M extended`).
fn extended_response() -> BytesMut {
    let simple = query_response(1);
    let mut buf = BytesMut::new();
    put_message(&mut buf, b'1', b"");
    put_message(&mut buf, b'2', b"");
    buf.extend_from_slice(&simple);
    buf
}

/// Splits a buffer into frames; returns the number of messages.
fn split_all(buf: &[u8]) -> usize {
    let mut offset = 0;
    let mut count = 0;
    while let Ok(Some(frame)) = Frame::peek(&buf[offset..], MAX_MESSAGE) {
        offset += frame.total_len;
        count += 1;
    }
    count
}

/// The relay loop of one transaction: record the request, split the server's
/// answer, account for each message, copy what is relayed into the client's
/// output buffer. Returns the messages forwarded.
fn relay_once(tracker: &mut Tracker, expects: &[Expect], server: &[u8], out: &mut BytesMut) -> usize {
    for expect in expects {
        tracker.sent(expect.clone(), Origin::Client).expect("no COPY in progress");
    }
    let mut offset = 0;
    let mut forwarded = 0;
    while let Ok(Some(frame)) = Frame::peek(&server[offset..], MAX_MESSAGE) {
        let msg = &server[offset..offset + frame.total_len];
        if tracker.on_server_message(frame.tag, &msg[5..]) == Verdict::Relay {
            out.extend_from_slice(msg);
            forwarded += 1;
        }
        tracker.emit_synthetic(out);
        offset += frame.total_len;
    }
    debug_assert!(tracker.is_idle());
    out.clear();
    forwarded
}

const SIMPLE: &[Expect] = &[Expect::Query];
const EXTENDED: &[Expect] = &[
    Expect::Parse { registers: None, client_name: None },
    Expect::Bind { statement: None },
    Expect::DescribePortal,
    Expect::Execute,
    Expect::Sync,
];

fn bench_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_peek");
    for rows in [1u32, 100, 1000] {
        let buf = query_response(rows);
        let messages = split_all(&buf);
        group.throughput(Throughput::Elements(messages as u64));
        group.bench_function(format!("split_{messages}_messages"), |b| b.iter(|| split_all(black_box(&buf))));
    }
    group.finish();
}

fn bench_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker");
    let cases = [
        ("simple_select_1_row", SIMPLE, query_response(1)),
        ("extended_select_1_row", EXTENDED, extended_response()),
        ("simple_select_1000_rows", SIMPLE, query_response(1000)),
    ];
    for (name, expects, server) in &cases {
        let mut tracker = Tracker::new(200);
        let mut out = BytesMut::with_capacity(server.len() * 2);
        let messages = split_all(server);
        group.throughput(Throughput::Elements(messages as u64));
        group.bench_function(*name, |b| {
            b.iter(|| relay_once(&mut tracker, black_box(expects), black_box(server), &mut out))
        });
    }
    group.finish();
}

/// A primary and two replicas, built the way pgrelay builds it from a static config.
fn topology() -> Topology {
    let mut toml = String::from("[cluster]\nsource = \"static\"\n");
    for (i, role) in ["primary", "replica", "replica"].iter().enumerate() {
        toml += &format!("[[nodes]]\nname = \"pg{i}\"\nport = {}\nrole = \"{role}\"\n", 6432 + i);
    }
    toml += "[[users]]\nname = \"app\"\nauth_type = \"trust\"\n[[databases]]\nname = \"app\"\n";
    let config = Config::parse(&toml).expect("a valid static config");
    let topology = Topology::from_static(&config);
    assert_eq!((topology.primary, topology.read_set.len()), (Some(0), 2));
    topology
}

fn bench_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let topology = topology();
    for listener in [ListenerKind::ReadWrite, ListenerKind::ReadOnly] {
        let mut turn = 0usize;
        let load = |node: &NodeStatus| node.port as usize % 2;
        group.bench_function(listener.as_str(), |b| {
            b.iter(|| {
                turn = turn.wrapping_add(1);
                let input = RouteInput { listener, turn, load: &load, prefer: Prefer::Any };
                route(black_box(input), RoFallback::Primary, black_box(&topology))
            })
        });
    }
    group.finish();
}

/// A reporting query of about 2 kB with string literals, a quoted
/// identifier, line and block comments, and no session state.
fn long_query() -> String {
    let mut sql = String::from("/* monthly report */\nSELECT a.aid, \"Branch Name\", b.bbalance\n");
    while sql.len() < 2000 {
        let n = sql.len();
        sql += &format!(
            "  , coalesce(a.filler, 'n/a; it''s {n}') AS f{n} -- column {n}; not a statement\n\
             /* join note {n} */ , (SELECT count(*) FROM pgbench_history h WHERE h.aid = a.aid AND h.delta > {n})\n"
        );
    }
    sql + "FROM pgbench_accounts a JOIN pgbench_branches b USING (bid) WHERE a.aid = 12345;"
}

fn bench_session_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("session_state");
    let cases = [
        ("pgbench_select", "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;".to_string()),
        ("tpcb_update", "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;".to_string()),
        ("report_2kb", long_query()),
    ];
    for (name, sql) in &cases {
        assert_eq!(session_state_effect(sql.as_bytes()), None, "{name}");
        group.throughput(Throughput::Bytes(sql.len() as u64));
        group.bench_function(*name, |b| b.iter(|| session_state_effect(black_box(sql.as_bytes()))));
    }
    group.finish();
}

/// Allocations per forwarded message in the relay loop, after one warm-up
/// transaction has sized the buffers and the queue.
fn report_allocations() {
    println!("\nallocations per forwarded backend message (Frame::peek + Tracker relay loop):");
    let cases = [
        ("simple select, 1 row", SIMPLE, query_response(1)),
        ("extended select, 1 row", EXTENDED, extended_response()),
        ("simple select, 1000 rows", SIMPLE, query_response(1000)),
    ];
    for (name, expects, server) in &cases {
        let mut tracker = Tracker::new(200);
        let mut out = BytesMut::with_capacity(server.len() * 2);
        relay_once(&mut tracker, expects, server, &mut out);
        const ROUNDS: usize = 10_000;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let mut forwarded = 0;
        for _ in 0..ROUNDS {
            forwarded += relay_once(&mut tracker, black_box(expects), black_box(server), &mut out);
        }
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        println!(
            "  {name:<26} {forwarded:>10} messages forwarded, {allocations} allocations, {:.4} per message",
            allocations as f64 / forwarded as f64
        );
    }
    println!();
}

criterion_group!(benches, bench_frames, bench_tracker, bench_route, bench_session_state);

fn main() {
    report_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
