//! The proxy-bound rows: pgbench -S through pgrelay (workers = 1 and 2) and
//! PgBouncer in front of the synthetic server of `fakepg.rs` instead of
//! PostgreSQL, so the server side costs a few µs per transaction and the
//! proxy gets as much of the two cores as pgbench leaves it. Measured per
//! run: the proxy's CPU per transaction (by thread for pgrelay); the model
//! printed from it: transactions per second per core, and the cores needed
//! for 100k, 250k and 500k TPS.

use std::fs;
use std::path::Path;

use super::fakepg::{self, FakePg};
use super::pgbench::{clock_ticks_per_second, Target, Workload};
use super::proxies::{thread_ticks, Pgbouncer, Pgrelay, ProxySettings};
use super::report::{self, Results};

const fn select(name: &'static str, args: &'static [&'static str]) -> Workload {
    Workload { name, args, clients: 64, read_only: false, pgbouncer: true, tls: false, workers: false }
}

const WORKLOADS: &[Workload] =
    &[select("synthetic select c=64", &["-S"]), select("synthetic select extended c=64", &["-S", "-M", "extended"])];

const TARGETS: [&str; 4] = ["synthetic-direct", "pgrelay-w1", "pgrelay-w2", "pgbouncer"];

/// The TPS the model sizes for.
const MODEL_TPS: [f64; 3] = [100_000.0, 250_000.0, 500_000.0];

/// CPU ticks of the synthetic server's thread (in this process).
fn server_ticks() -> u64 {
    let threads = thread_ticks(std::process::id()).unwrap_or_default();
    threads.iter().filter(|t| t.name == fakepg::THREAD_NAME).map(|t| t.ticks).sum()
}

/// Starts the synthetic server and the three proxies in front of it, runs
/// the rounds and prints the tables and the model.
pub fn run(
    bin: &Path,
    scratch: &Path,
    settings: &ProxySettings,
    rounds: u32,
    seconds: u32,
    log_dir: &Path,
) -> Result<(), String> {
    let server = FakePg::start()?;
    let dir = scratch.join("proxy-bound");
    for sub in ["w1", "w2"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let nodes = vec![("synthetic".to_owned(), server.port)];
    let s = ProxySettings { server_tls_disable: false, workers: 1, ..*settings };
    // Declared after the server, so killed before it stops.
    let relay = Pgrelay::start(bin, &dir.join("w1"), &nodes, &s, None)?;
    let relay_w2 = Pgrelay::start(bin, &dir.join("w2"), &nodes, &ProxySettings { workers: 2, ..s }, None);
    let bouncer = Pgbouncer::start(&dir, server.port, &s, None)?;
    let targets = |_: &Workload| {
        let mut targets = vec![
            Target { name: "synthetic-direct", port: server.port, proxy: None, tls: false },
            Target { name: "pgrelay-w1", port: relay.rw.port(), proxy: Some(&relay.guard), tls: false },
            Target { name: "pgbouncer", port: bouncer.port, proxy: Some(&bouncer.guard), tls: false },
        ];
        let mut unavailable = Vec::new();
        match &relay_w2 {
            Ok(r) => targets.push(Target { name: "pgrelay-w2", port: r.rw.port(), proxy: Some(&r.guard), tls: false }),
            Err(e) => unavailable.push(("pgrelay-w2", e.as_str())),
        }
        (targets, unavailable)
    };
    let server_before = server_ticks();
    let moves = |r: &Pgrelay| r.metric_sum(report::MOVES_METRIC);
    let moves_before = relay_w2.as_ref().map_err(Clone::clone).and_then(moves);
    let results = super::rounds::run(rounds, seconds, WORKLOADS, targets, log_dir);
    let moves_after = relay_w2.as_ref().map_err(Clone::clone).and_then(moves);
    let server_us = (server_ticks() - server_before) as f64 / clock_ticks_per_second() * 1e6
        / results.total_transactions().max(1) as f64;
    println!("## Proxy-bound: a synthetic server (medians of {rounds} round(s), {seconds} s each)");
    println!();
    println!(
        "`pgbench -S -c 64 -j 2` (simple and extended) against the bench's synthetic server (benches/compare/fakepg.rs, \
         one thread, canned answers; bench only) directly and through pgrelay rw (workers = 1, workers = 2) and \
         PgBouncer, all on the same two cores; the synthetic server used {server_us:.1} µs of CPU per transaction \
         (all runs, direct ones included); load average now {}.",
        super::load_average()
    );
    println!();
    report::print_table(WORKLOADS, &TARGETS, &results);
    println!();
    print_threads(&results);
    println!();
    report::print_moves(moves_after.and_then(|a| Ok(a - moves_before?)), results.transactions_of(&["pgrelay-w2"]));
    println!();
    print_model(&results);
    Ok(())
}

fn print_threads(results: &Results) {
    println!("pgrelay's CPU per transaction by thread (µs, share of the process's):");
    println!();
    println!("| workload | target | by thread |");
    println!("|---|---|---|");
    for (w, workload) in WORKLOADS.iter().enumerate() {
        for target in ["pgrelay-w1", "pgrelay-w2", "pgbouncer"] {
            let split = results.threads(w, target);
            if !split.is_empty() {
                println!("| {} | {target} | {} |", workload.name, report::thread_split(&split));
            }
        }
    }
}

/// µs of proxy CPU per transaction → transactions per second one core
/// gives → cores for the model's TPS.
fn print_model(results: &Results) {
    println!(
        "Model: tx/s per core = 10⁶ / (proxy CPU µs per tx); cores for N TPS = N × µs / 10⁶. PgBouncer is one \
         process on one thread, so its tx/s per core is also its ceiling per process (more needs more processes); \
         pgrelay's is per worker (a worker is one thread)."
    );
    println!();
    println!(
        "| workload | proxy | TPS | proxy CPU µs/tx | cores busy (TPS × µs) | tx/s per core | cores for 100k TPS | \
         cores for 250k TPS | cores for 500k TPS |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, workload) in WORKLOADS.iter().enumerate() {
        for target in ["pgrelay-w1", "pgrelay-w2", "pgbouncer"] {
            let Some(cell) = results.cell(w, target) else {
                continue;
            };
            let Some(us) = cell.cpu_us.filter(|us| *us > 0.0) else {
                continue;
            };
            let cores = MODEL_TPS.map(|tps| format!("{:.1}", tps * us / 1e6));
            println!(
                "| {} | {target} | {:.0} | {us:.1} | {:.2} | {:.0} | {} | {} | {} |",
                workload.name,
                cell.tps,
                cell.tps * us / 1e6,
                1e6 / us,
                cores[0],
                cores[1],
                cores[2],
            );
        }
    }
}
