//! One bounded pgbench run against one target: TPS and average latency from
//! pgbench's summary, p99 from its per-transaction logs, the proxy's CPU
//! time from /proc before and after, and pgbench's own CPU time.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::proxies::{cpu_ticks, thread_ticks, ChildGuard, ThreadTicks};

/// Time a run may take beyond its `-T` (connection set-up of 512 clients,
/// writing logs) before it is killed.
const OVERRUN: Duration = Duration::from_secs(60);

/// What pgbench runs.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    /// Extra pgbench arguments (`-S`, `-M prepared`, `-C`).
    pub args: &'static [&'static str],
    pub clients: u32,
    /// Only reads: also run against a replica and pgrelay's ro listener.
    pub read_only: bool,
    /// PgBouncer can run it (1.18 cannot do `-M prepared` in transaction mode).
    pub pgbouncer: bool,
    /// Also run with TLS on the client side (the primary, pgrelay's rw
    /// listener and PgBouncer, each with `PGSSLMODE=require`).
    pub tls: bool,
    /// Also run through the pgrelay with `workers = 2` (rw, and ro when
    /// `read_only`), its CPU split by thread.
    pub workers: bool,
}

/// Where pgbench connects, and which process's CPU to charge.
pub struct Target<'a> {
    pub name: &'static str,
    pub port: u16,
    pub proxy: Option<&'a ChildGuard>,
    /// pgbench connects with `PGSSLMODE=require` (else `disable`).
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub tps: f64,
    pub transactions: u64,
    pub avg_latency_ms: f64,
    pub p99_latency_ms: f64,
    /// Proxy CPU (user + system) per transaction, in µs; `None` for direct runs.
    pub proxy_cpu_us_per_tx: Option<f64>,
    /// pgbench's own CPU (user + system) per transaction, in µs: with `-C`
    /// over TLS the client's handshakes can bound the TPS of every target.
    pub client_cpu_us_per_tx: f64,
    /// The proxy's CPU per transaction by thread name (µs), in the order
    /// of the threads' ids (the main thread first); empty for direct runs.
    pub threads: Vec<(String, f64)>,
}

/// Runs pgbench once; `log_dir` must be empty and is emptied afterwards.
pub fn run(workload: &Workload, target: &Target, seconds: u32, log_dir: &Path) -> Result<RunResult, String> {
    let threads = workload.clients.min(2);
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-h", "127.0.0.1", "-p", &target.port.to_string(), "-U", pgrelay::localcluster::TRUST_USER])
        .args(["-c", &workload.clients.to_string(), "-j", &threads.to_string(), "-T", &seconds.to_string()])
        .args(workload.args)
        .arg("--log")
        .arg(format!("--log-prefix={}", log_dir.join("tx").display()))
        .arg("app")
        .env("PGSSLMODE", if target.tls { "require" } else { "disable" })
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpu_before = target.proxy.map(|p| cpu_ticks(p.pid())).transpose()?;
    let threads_before = target.proxy.map(|p| thread_ticks(p.pid())).transpose()?;
    let client_before = reaped_children_cpu()?;
    let output = run_bounded(cmd, Duration::from_secs(seconds.into()) + OVERRUN)?;
    let client_cpu = reaped_children_cpu()? - client_before;
    let cpu_after = target.proxy.map(|p| cpu_ticks(p.pid())).transpose()?;
    let threads_after = target.proxy.map(|p| thread_ticks(p.pid())).transpose()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let latencies = read_latencies(log_dir);
    clear_dir(log_dir);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!("pgbench failed ({}): {}", output.status, last.join(" | ")));
    }
    let transactions: u64 = field(&stdout, "number of transactions actually processed:")
        .and_then(|v| v.split('/').next()?.parse().ok())
        .ok_or_else(|| format!("no transaction count in pgbench output:\n{stdout}"))?;
    let tps: f64 = field(&stdout, "tps =")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench output:\n{stdout}"))?;
    let avg_latency_ms: f64 = field(&stdout, "latency average =")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no latency in pgbench output:\n{stdout}"))?;
    let p99_latency_ms = percentile(latencies?, 0.99).ok_or("empty per-transaction log")? / 1000.0;
    let ticks_per_second = clock_ticks_per_second();
    let proxy_cpu_us_per_tx = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if transactions > 0 => {
            Some((after - before) as f64 / ticks_per_second * 1e6 / transactions as f64)
        }
        _ => None,
    };
    let client_cpu_us_per_tx = client_cpu.as_secs_f64() * 1e6 / transactions.max(1) as f64;
    let threads = match (threads_before, threads_after) {
        (Some(before), Some(after)) => {
            let pid = target.proxy.map_or(0, |p| p.pid());
            thread_split(pid, &before, &after, transactions, ticks_per_second)
        }
        _ => Vec::new(),
    };
    Ok(RunResult {
        tps,
        transactions,
        avg_latency_ms,
        p99_latency_ms,
        proxy_cpu_us_per_tx,
        client_cpu_us_per_tx,
        threads,
    })
}

/// CPU per transaction (µs) of each thread of process `pid` between two
/// readings (a thread born during the run counts from zero), in the order
/// of the threads' ids. The thread whose id is the PID is labelled `main`;
/// the kernel cuts names to 15 bytes, so the `pgrelay-worker-` threads are
/// numbered in the order of their ids (the order they were started in);
/// threads sharing another name are summed under it.
pub fn thread_split(
    pid: u32,
    before: &[ThreadTicks],
    after: &[ThreadTicks],
    transactions: u64,
    ticks_per_second: f64,
) -> Vec<(String, f64)> {
    let mut sorted: Vec<&ThreadTicks> = after.iter().collect();
    sorted.sort_by_key(|t| t.tid);
    let mut by_name: Vec<(String, u64)> = Vec::new();
    let mut workers = 0;
    for t in sorted {
        let start = before.iter().find(|b| b.tid == t.tid).map_or(0, |b| b.ticks);
        let used = t.ticks.saturating_sub(start);
        let name = if t.tid == pid {
            "main".to_owned()
        } else if t.name.starts_with("pgrelay-worker") {
            workers += 1;
            format!("pgrelay-worker-{workers}")
        } else {
            t.name.clone()
        };
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some((_, ticks)) => *ticks += used,
            None => by_name.push((name, used)),
        }
    }
    let per_tx = |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / transactions.max(1) as f64;
    by_name.into_iter().map(|(name, ticks)| (name, per_tx(ticks))).collect()
}

/// User + system CPU of this process's children that have exited and been
/// waited for. Around one pgbench run that is pgbench alone: the proxies
/// are reaped only at the end, and nothing else runs meanwhile.
fn reaped_children_cpu() -> Result<Duration, String> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).map_err(|e| format!("getrusage: {e}"))?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Ok(Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time())))
}

/// Waits for the command, killing it (by PID) if it runs past `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Result<std::process::Output, String> {
    let mut child = cmd.spawn().map_err(|e| format!("pgbench: {e}"))?;
    // Drain the pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || read_all(&mut out));
    let err_reader = std::thread::spawn(move || read_all(&mut err));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pgbench did not finish within {limit:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(std::process::Output { status, stdout, stderr })
}

fn read_all(r: &mut impl std::io::Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    buf
}

fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim)
}

/// Per-transaction latencies in µs from every `tx.*` log file (one per
/// thread): `client_id transaction_no time script_no time_epoch time_us`.
fn read_latencies(dir: &Path) -> Result<Vec<u64>, String> {
    let mut latencies = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Failed or skipped transactions have a word instead of a number: left out.
        latencies.extend(text.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()));
    }
    Ok(latencies)
}

fn clear_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The nearest-rank percentile, as f64.
fn percentile(mut values: Vec<u64>, p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    let (_, nth, _) = values.select_nth_unstable(rank - 1);
    Some(*nth as f64)
}

/// `getconf CLK_TCK` (the unit of utime/stime in /proc), 100 on Linux.
pub fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
