//! The rounds of pgbench runs: every workload against each of its targets,
//! the targets' order rotated per workload and round, every result kept.

use std::path::Path;
use std::time::Instant;

use super::pgbench::{self, Target, Workload};
use super::report::Results;

/// Runs `rounds` rounds of `seconds` each; `targets_for` names each
/// workload's targets and those that could not start (with the reason).
pub fn run<'a>(
    rounds: u32,
    seconds: u32,
    workloads: &[Workload],
    targets_for: impl Fn(&Workload) -> (Vec<Target<'a>>, Vec<(&'static str, &'a str)>),
    log_dir: &Path,
) -> Results {
    let mut results = Results::default();
    let started = Instant::now();
    for round in 0..rounds as usize {
        eprintln!("round {}/{rounds}: load average {}", round + 1, super::load_average());
        for (w, workload) in workloads.iter().enumerate() {
            let (mut targets, unavailable) = targets_for(workload);
            for (name, e) in unavailable {
                results.record(w, name, Err(format!("did not start: {e}")));
            }
            // Rotate so that no target always runs first (or right after another).
            let shift = (round + w) % targets.len().max(1);
            targets.rotate_left(shift);
            for target in &targets {
                let result = pgbench::run(workload, target, seconds, log_dir);
                match &result {
                    Ok(r) => eprintln!(
                        "[{:>4.0}s round {}/{rounds}] {:<22} {:<18} {:>9.0} tps {:>8} tx  avg {:.3} ms  p99 {:.3} ms  \
                         pgbench {:.1} µs/tx{}{}",
                        started.elapsed().as_secs_f64(),
                        round + 1,
                        workload.name,
                        target.name,
                        r.tps,
                        r.transactions,
                        r.avg_latency_ms,
                        r.p99_latency_ms,
                        r.client_cpu_us_per_tx,
                        r.proxy_cpu_us_per_tx.map_or(String::new(), |us| format!("  proxy {us:.1} µs/tx")),
                        if r.threads.len() > 1 {
                            format!(" [{}]", super::report::thread_split(&r.threads))
                        } else {
                            String::new()
                        },
                    ),
                    Err(e) => eprintln!("[round {}] {} {}: {e}", round + 1, workload.name, target.name),
                }
                results.record(w, target.name, result);
            }
        }
    }
    results
}
