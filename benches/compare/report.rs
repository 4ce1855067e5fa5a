//! Medians over rounds, the results table and the ratios, as Markdown so the
//! output can be pasted into benches/README.md as it is.

use std::collections::BTreeMap;

use super::idle::IdleResult;
use super::pgbench::{RunResult, Workload};

/// Every run's outcome, by (workload index, target name), in round order.
#[derive(Default)]
pub struct Results {
    runs: BTreeMap<(usize, &'static str), Vec<Result<RunResult, String>>>,
}

/// Medians of one (workload, target) cell.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub tps: f64,
    pub avg_ms: f64,
    pub p99_ms: f64,
    pub cpu_us: Option<f64>,
    pub client_cpu_us: f64,
    pub ok_runs: usize,
    pub failed_runs: usize,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

impl Results {
    pub fn record(&mut self, workload: usize, target: &'static str, result: Result<RunResult, String>) {
        self.runs.entry((workload, target)).or_default().push(result);
    }

    pub fn cell(&self, workload: usize, target: &str) -> Option<Cell> {
        let runs = self.runs.iter().find(|((w, t), _)| *w == workload && *t == target)?.1;
        let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let of = |f: fn(&RunResult) -> f64| median(ok.iter().map(|r| f(r)).collect());
        Some(Cell {
            tps: of(|r| r.tps)?,
            avg_ms: of(|r| r.avg_latency_ms)?,
            p99_ms: of(|r| r.p99_latency_ms)?,
            cpu_us: median(ok.iter().filter_map(|r| r.proxy_cpu_us_per_tx).collect()),
            client_cpu_us: of(|r| r.client_cpu_us_per_tx)?,
            ok_runs: ok.len(),
            failed_runs: runs.len() - ok.len(),
        })
    }

    /// The median CPU per transaction (µs) of each of the proxy's threads,
    /// by thread name, over a cell's successful runs; names in the order
    /// the first run lists them.
    pub fn threads(&self, workload: usize, target: &str) -> Vec<(String, f64)> {
        let Some((_, runs)) = self.runs.iter().find(|((w, t), _)| *w == workload && *t == target) else {
            return Vec::new();
        };
        let ok: Vec<&RunResult> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut names: Vec<&str> = Vec::new();
        for run in &ok {
            for (name, _) in &run.threads {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
            .into_iter()
            .filter_map(|name| {
                let values = ok.iter().filter_map(|r| r.threads.iter().find(|(n, _)| n == name).map(|(_, us)| *us));
                Some((name.to_owned(), median(values.collect())?))
            })
            .collect()
    }

    /// Transactions of the successful runs against these targets.
    pub fn transactions_of(&self, targets: &[&str]) -> u64 {
        let runs = self.runs.iter().filter(|((_, t), _)| targets.contains(t)).flat_map(|(_, runs)| runs);
        runs.filter_map(|r| r.as_ref().ok()).map(|r| r.transactions).sum()
    }

    /// Transactions of all successful runs.
    pub fn total_transactions(&self) -> u64 {
        self.runs.values().flatten().filter_map(|r| r.as_ref().ok()).map(|r| r.transactions).sum()
    }

    /// The first error of a cell whose runs all failed.
    fn first_error(&self, workload: usize, target: &str) -> Option<&str> {
        let runs = self.runs.iter().find(|((w, t), _)| *w == workload && *t == target)?.1;
        runs.iter().find_map(|r| r.as_ref().err()).map(String::as_str)
    }
}

/// The main table: one row per workload × target.
pub fn print_table(workloads: &[Workload], targets: &[&'static str], results: &Results) {
    println!("| workload | target | TPS | avg latency ms | p99 latency ms | proxy CPU s / 1k tx | proxy CPU µs / tx | pgbench CPU µs / tx | runs |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, workload) in workloads.iter().enumerate() {
        for target in targets {
            if let Some(c) = results.cell(w, target) {
                let cpu_s = c.cpu_us.map_or("–".into(), |us| format!("{:.4}", us / 1000.0));
                let cpu_us = c.cpu_us.map_or("–".into(), |us| format!("{us:.1}"));
                let runs = match c.failed_runs {
                    0 => c.ok_runs.to_string(),
                    failed => format!("{} ({failed} failed)", c.ok_runs),
                };
                println!(
                    "| {} | {target} | {:.0} | {:.3} | {:.3} | {cpu_s} | {cpu_us} | {:.1} | {runs} |",
                    workload.name, c.tps, c.avg_ms, c.p99_ms, c.client_cpu_us
                );
            } else if let Some(e) = results.first_error(w, target) {
                println!("| {} | {target} | FAILED | | | | | | {} |", workload.name, table_cell(e));
            }
        }
    }
}

/// An error as one Markdown table cell: one line, no `|`.
fn table_cell(e: &str) -> String {
    e.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "/")
}

fn ratio(a: Option<Cell>, b: Option<Cell>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.tps > 0.0 => format!("{:.2}", a.tps / b.tps),
        _ => "–".into(),
    }
}

fn cpu(c: Option<Cell>) -> String {
    c.and_then(|c| c.cpu_us).map_or("–".into(), |us| format!("{us:.1}"))
}

/// TPS ratios and CPU per transaction, one row per workload.
pub fn print_ratios(workloads: &[Workload], results: &Results) {
    println!("| workload | pgrelay/direct | pgbouncer/direct | pgrelay/pgbouncer | pgrelay-ro/direct-replica | pgrelay µs/tx | pgbouncer µs/tx | pgrelay-ro µs/tx |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, workload) in workloads.iter().enumerate() {
        let get = |t: &str| results.cell(w, t);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            workload.name,
            ratio(get("pgrelay-rw"), get("direct-primary")),
            ratio(get("pgbouncer"), get("direct-primary")),
            ratio(get("pgrelay-rw"), get("pgbouncer")),
            ratio(get("pgrelay-ro"), get("direct-replica")),
            cpu(get("pgrelay-rw")),
            cpu(get("pgbouncer")),
            cpu(get("pgrelay-ro")),
        );
    }
}

fn cpu_ratio(a: Option<Cell>, b: Option<Cell>) -> String {
    match (a.and_then(|c| c.cpu_us), b.and_then(|c| c.cpu_us)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The TLS rows: pgrelay against PgBouncer, both over TLS, and each TLS row
/// against its plain counterpart. Only workloads with TLS rows.
pub fn print_tls_ratios(workloads: &[Workload], results: &Results) {
    let tls: Vec<(usize, &Workload)> = workloads.iter().enumerate().filter(|(_, w)| w.tls).collect();
    if tls.is_empty() {
        return;
    }
    println!("TLS on the client side, pgrelay vs PgBouncer (with `-C`, CPU per transaction is per TLS handshake + login + transaction):");
    println!();
    println!("| workload | pgrelay-tls/pgbouncer-tls TPS | pgrelay-tls/pgbouncer-tls CPU per tx | pgrelay-tls µs/tx | pgbouncer-tls µs/tx | pgrelay-tls/direct-tls TPS | pgbouncer-tls/direct-tls TPS |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &(w, workload) in &tls {
        let get = |t: &str| results.cell(w, t);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            workload.name,
            ratio(get("pgrelay-rw-tls"), get("pgbouncer-tls")),
            cpu_ratio(get("pgrelay-rw-tls"), get("pgbouncer-tls")),
            cpu(get("pgrelay-rw-tls")),
            cpu(get("pgbouncer-tls")),
            ratio(get("pgrelay-rw-tls"), get("direct-primary-tls")),
            ratio(get("pgbouncer-tls"), get("direct-primary-tls")),
        );
    }
    println!();
    println!("TLS rows vs their plain counterparts (the same workload, run in the same rounds):");
    println!();
    println!("| workload | target | TPS TLS/plain | CPU µs/tx plain | CPU µs/tx TLS | CPU TLS/plain | CPU added by TLS µs/tx |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for &(w, workload) in &tls {
        let get = |t: &str| results.cell(w, t);
        for (plain, over_tls) in
            [("direct-primary", "direct-primary-tls"), ("pgrelay-rw", "pgrelay-rw-tls"), ("pgbouncer", "pgbouncer-tls")]
        {
            let (p, t) = (get(plain), get(over_tls));
            if p.is_none() && t.is_none() {
                continue;
            }
            let added = match (p.and_then(|c| c.cpu_us), t.and_then(|c| c.cpu_us)) {
                (Some(p), Some(t)) => format!("{:+.1}", t - p),
                _ => "–".into(),
            };
            println!(
                "| {} | {over_tls} vs {plain} | {} | {} | {} | {} | {added} |",
                workload.name,
                ratio(t, p),
                cpu(p),
                cpu(t),
                cpu_ratio(t, p),
            );
        }
    }
}

/// Latency each proxy adds at one client: its average minus the direct one.
pub fn print_added_latency(workloads: &[Workload], results: &Results) {
    let Some(w) = workloads.iter().position(|w| w.clients == 1) else {
        return;
    };
    let get = |t: &str| results.cell(w, t);
    let added = |proxy: &str, direct: &str| match (get(proxy), get(direct)) {
        (Some(p), Some(d)) => format!("{:+.1} µs", (p.avg_ms - d.avg_ms) * 1000.0),
        _ => "–".into(),
    };
    println!("Added latency at 1 client ({}; proxy average − direct average):", workloads[w].name);
    println!("- pgrelay rw (vs direct primary): {}", added("pgrelay-rw", "direct-primary"));
    println!("- pgbouncer (vs direct primary): {}", added("pgbouncer", "direct-primary"));
    println!("- pgrelay ro (vs direct replica): {}", added("pgrelay-ro", "direct-replica"));
}

pub fn print_idle(name: &str, r: &Result<IdleResult, String>) {
    match r {
        Err(e) => println!("| {name} | FAILED: {} | | | | | | |", table_cell(e)),
        Ok(r) => {
            let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
            let each =
                |f: &dyn Fn(&super::idle::IdleRound) -> String| r.rounds.iter().map(f).collect::<Vec<_>>().join(" / ");
            let growth = match (r.rounds.first(), r.rounds.last()) {
                (Some(a), Some(b)) => format!("{:+.1}", (b.rss_closed_kib as f64 - a.rss_closed_kib as f64) / 1024.0),
                _ => "–".into(),
            };
            println!(
                "| {name} | {} | {} | {} | {growth} | {:.2} | {} | {} |",
                mib(r.rss_before_kib),
                each(&|x| mib(x.rss_open_kib)),
                each(&|x| mib(x.rss_closed_kib)),
                r.kib_per_client(),
                each(&|x| format!("{:.1} s", x.open_secs)),
                each(&|x| x.fds_closed.to_string()),
            );
        }
    }
}

pub fn print_idle_header(clients: usize, rounds: usize) {
    println!(
        "RSS with {clients} idle clients (MiB; each client logged in as app_trust, then idle; {rounds} rounds in one \
         process, values per round separated by /):"
    );
    println!();
    println!(
        "| proxy | RSS before | RSS open | RSS after closing | growth (after closing: last − 1st round) | \
         KiB per idle client (1st round) | time to log in all | proxy's open fds after closing |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
}

/// A proxy's CPU per transaction split by thread: `name µs (share)`, the
/// threads that used no CPU left out.
pub fn thread_split(threads: &[(String, f64)]) -> String {
    let total: f64 = threads.iter().map(|(_, us)| us).sum();
    if total <= 0.0 {
        return "–".into();
    }
    let busy = threads.iter().filter(|(_, us)| *us > 0.0);
    busy.map(|(name, us)| format!("{name} {us:.1} ({:.0} %)", us / total * 100.0)).collect::<Vec<_>>().join(", ")
}

/// The workers axis: pgrelay with `workers = 1` and `workers = 2` (and
/// PgBouncer on the rw side), TPS, CPU per transaction, and how the
/// workers = 2 process's CPU split across its threads.
pub fn print_workers(workloads: &[Workload], results: &Results) {
    let rows: Vec<(usize, &Workload)> = workloads.iter().enumerate().filter(|(_, w)| w.workers).collect();
    if rows.is_empty() {
        return;
    }
    println!("pgrelay workers = 1 vs workers = 2 (w2 by thread: µs of CPU per transaction and share of the process's, medians over the rounds):");
    println!();
    println!("| workload | listener | w1 TPS | w2 TPS | w2/w1 TPS | pgbouncer TPS | w1 µs/tx | w2 µs/tx | pgbouncer µs/tx | w2 by thread |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (w, workload) in rows {
        let get = |t: &str| results.cell(w, t);
        let tps = |c: Option<Cell>| c.map_or("–".into(), |c| format!("{:.0}", c.tps));
        for (listener, w1, w2, bouncer) in
            [("rw", "pgrelay-rw", "pgrelay-rw-w2", Some("pgbouncer")), ("ro", "pgrelay-ro", "pgrelay-ro-w2", None)]
        {
            if get(w1).is_none() && get(w2).is_none() {
                continue;
            }
            let bouncer = bouncer.and_then(get);
            println!(
                "| {} | {listener} | {} | {} | {} | {} | {} | {} | {} | {} |",
                workload.name,
                tps(get(w1)),
                tps(get(w2)),
                ratio(get(w2), get(w1)),
                tps(bouncer),
                cpu(get(w1)),
                cpu(get(w2)),
                cpu(bouncer),
                thread_split(&results.threads(w, w2)),
            );
        }
    }
}

/// The counter of server connections moved between workers.
pub const MOVES_METRIC: &str = "pgrelay_server_connection_moves_total";

/// How often the workers = 2 process moved an idle server connection to
/// another worker, per transaction through it.
pub fn print_moves(moves: Result<f64, String>, transactions: u64) {
    match moves {
        Ok(moves) => println!(
            "workers = 2: {moves:.0} server connections moved between workers ({MOVES_METRIC}) over {transactions} \
             transactions through it, {:.3} per transaction.",
            moves / transactions.max(1) as f64
        ),
        Err(e) => println!("workers = 2: server connection moves unknown ({e})."),
    }
}
