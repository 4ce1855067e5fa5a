//! `--ryw-only`: the cost of read-your-writes. Each client holds one
//! connection to pgrelay's rw port and one to its ro port and repeats a
//! write on rw (an UPDATE of a pgbench account, RETURNING the new balance)
//! followed by a read of the same row on ro, in four modes, alternated
//! within each round:
//!
//! - `plain`: no read-your-writes (the read may be stale: counted);
//! - `token`: `SHOW pgrelay.commit_lsn` on rw, `SET pgrelay.min_lsn` on ro;
//! - `causal`: both connections with the same `pgrelay.causal_id`;
//! - `primary`: the read on the rw port too (how an application gets
//!   read-your-writes without the feature).
//!
//! pgbench cannot do this (a pgbench client has one connection), so the
//! clients are tokio-postgres ones, in this process. pgrelay runs with
//! `source = "postgres"` (the monitors' replay positions are what lets a
//! read go to a replica without asking it), the cluster with
//! `synchronous_commit = on` (the test clusters' `off` delays replication
//! to the WAL writer's next round, up to 200 ms). Reported per write-read
//! pair: pairs per second, pgrelay's CPU (utime + stime of its process) and
//! the stale reads seen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrelay::localcluster::{LocalCluster, LocalClusterOptions, TRUST_USER};

use super::proxies::{cpu_ticks, Pgrelay, ProxySettings};
use super::{init_pgbench, load_average, pgbench, print_machine, MAX_CONNECTIONS, SCALE};

const CLIENTS: usize = 8;
const MODES: [&str; 4] = ["plain", "token", "causal", "primary"];

#[derive(Debug, Clone, Copy, Default)]
struct RunResult {
    pairs: u64,
    seconds: f64,
    cpu_seconds: f64,
    stale: u64,
    /// Reads routed per reason of `pgrelay_reads_routed_total`, in [`REASONS`]' order.
    routed: [f64; REASONS.len()],
}

/// The reasons of `pgrelay_reads_routed_total` shown, in order.
const REASONS: [&str; 4] = ["replica", "read_your_writes_replica", "read_your_writes_wait", "read_your_writes_primary"];

/// Reads routed so far, per reason.
fn routed(relay: &Pgrelay) -> Result<[f64; REASONS.len()], String> {
    let mut counts = [0.0; REASONS.len()];
    for (count, reason) in counts.iter_mut().zip(REASONS) {
        *count = relay.metric_sum_where("pgrelay_reads_routed_total", &format!("reason=\"{reason}\""))?;
    }
    Ok(counts)
}

/// Starts the cluster and pgrelay, runs `rounds` rounds of every mode and prints the table.
pub fn run(bin: &Path, scratch: &Path, settings: &ProxySettings, rounds: u32, seconds: u32) -> Result<(), String> {
    let opts = LocalClusterOptions {
        replicas: 2,
        max_connections: MAX_CONNECTIONS,
        extra_conf: vec!["synchronous_commit = on".into()],
        ..Default::default()
    };
    let cluster = LocalCluster::start(opts).map_err(|e| format!("starting the cluster: {e}"))?;
    init_pgbench(&cluster)?;
    let nodes = super::proxies::cluster_nodes(&cluster);
    let relay = Pgrelay::start(bin, scratch, &nodes, &ProxySettings { monitored: true, ..*settings }, None)?;
    println!("# pgrelay: the cost of read-your-writes");
    println!();
    print_machine(bin);
    println!(
        "- cluster: primary :{} + replicas {:?}, synchronous_commit = on, pgbench scale {SCALE}; pgrelay \
         source = \"postgres\", workers = {}, pool size {}",
        cluster.primary().port,
        cluster.replicas().iter().map(|r| r.port).collect::<Vec<_>>(),
        settings.workers,
        settings.pool_size
    );
    println!(
        "- {CLIENTS} clients, each an rw and an ro connection (tokio-postgres, simple queries, user {TRUST_USER}); \
         {rounds} round(s) × {seconds} s per mode, modes alternated within a round; medians shown"
    );
    println!("- load average at start: {}", load_average());
    println!();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        for (i, mode) in MODES.iter().enumerate() {
            let result = runtime.block_on(run_mode(&relay, mode, round, Duration::from_secs(seconds.into())))?;
            eprintln!("round {} {mode}: {:.0} pairs/s", round + 1, result.pairs as f64 / result.seconds);
            results[i].push(result);
        }
    }
    print_results(&results);
    println!("- load average at the end: {}", load_average());
    drop(relay);
    drop(cluster);
    Ok(())
}

fn print_results(results: &[Vec<RunResult>]) {
    println!(
        "| mode | pairs/s | pgrelay CPU µs/pair | stale reads | reads: replica / ryw caught up / ryw waited / ryw primary |"
    );
    println!("|---|---:|---:|---:|---|");
    for (mode, runs) in MODES.iter().zip(results) {
        let rate = median(runs.iter().map(|r| r.pairs as f64 / r.seconds));
        let cpu = median(runs.iter().map(|r| r.cpu_seconds * 1e6 / r.pairs.max(1) as f64));
        let stale: u64 = runs.iter().map(|r| r.stale).sum();
        let pairs: u64 = runs.iter().map(|r| r.pairs).sum();
        let routed: Vec<String> =
            (0..REASONS.len()).map(|i| format!("{:.0}", runs.iter().map(|r| r.routed[i]).sum::<f64>())).collect();
        println!("| {mode} | {rate:.0} | {cpu:.1} | {stale} of {pairs} | {} |", routed.join(" / "));
    }
    println!();
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

async fn connect(addr: SocketAddr, options: &str) -> Result<tokio_postgres::Client, String> {
    let conn = format!(
        "host=127.0.0.1 port={} user={TRUST_USER} dbname=app sslmode=disable{}",
        addr.port(),
        if options.is_empty() { String::new() } else { format!(" options='{options}'") }
    );
    let (client, connection) =
        tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn run_mode(relay: &Pgrelay, mode: &str, round: u32, length: Duration) -> Result<RunResult, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (pairs, stale) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let causal = if mode == "causal" { format!("-c pgrelay.causal_id=bench-{round}-{c}") } else { String::new() };
        let writer = connect(relay.rw, &causal).await?;
        let reader = connect(if mode == "primary" { relay.rw } else { relay.ro }, &causal).await?;
        clients.push((writer, reader));
    }
    let ticks = || cpu_ticks(relay.guard.pid());
    let (before, routed_before, started) = (ticks()?, routed(relay)?, Instant::now());
    let mut tasks = Vec::new();
    for (c, (writer, reader)) in clients.into_iter().enumerate() {
        let (stop, pairs, stale, mode) = (stop.clone(), pairs.clone(), stale.clone(), mode.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut aid = 1 + c as u64 * 10_007;
            while !stop.load(Ordering::Relaxed) {
                aid = aid % (SCALE as u64 * 100_000) + 1;
                let sql =
                    format!("update pgbench_accounts set abalance = abalance + 1 where aid = {aid} returning abalance");
                let written = first_value(&writer, &sql).await?;
                if mode == "token" {
                    let position = first_value(&writer, "show pgrelay.commit_lsn").await?;
                    reader
                        .batch_execute(&format!("set pgrelay.min_lsn = '{position}'"))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let read =
                    first_value(&reader, &format!("select abalance from pgbench_accounts where aid = {aid}")).await?;
                if read != written {
                    stale.fetch_add(1, Ordering::Relaxed);
                }
                pairs.fetch_add(1, Ordering::Relaxed);
                aid += CLIENTS as u64;
            }
            Ok::<(), String>(())
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let (after, elapsed) = (ticks()?, started.elapsed());
    let mut routed_during = routed(relay)?;
    for (count, before) in routed_during.iter_mut().zip(routed_before) {
        *count -= before;
    }
    Ok(RunResult {
        pairs: pairs.load(Ordering::Relaxed),
        seconds: elapsed.as_secs_f64(),
        cpu_seconds: (after - before) as f64 / pgbench::clock_ticks_per_second(),
        stale: stale.load(Ordering::Relaxed),
        routed: routed_during,
    })
}

async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = client.simple_query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}
