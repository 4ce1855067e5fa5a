//! End-to-end comparison: pgbench directly against PostgreSQL, through
//! pgrelay and through PgBouncer 1.18, on one throw-away primary + 2
//! replicas, in one run, alternating the targets within each round and
//! reporting medians, some workloads also with TLS on the client side and
//! the select and -C workloads also through a pgrelay with `workers = 2`; then the
//! proxy-bound rows against a synthetic server; then the RSS of each proxy
//! with 10,000 idle clients; then pgrelay's RSS before and after floods from
//! single clients.
//!
//!     cargo bench --bench compare                    # full run, ~15 minutes
//!     cargo bench --bench compare -- --quick         # smoke run, ~2 minutes
//!     cargo bench --bench compare -- --tls-only      # the TLS rows and their plain counterparts
//!     cargo bench --bench compare -- --workers-only  # workers = 1 vs 2 on the select and -C workloads
//!     cargo bench --bench compare -- --proxy-bound-only  # the synthetic server rows alone
//!     cargo bench --bench compare -- --floods-only   # the floods alone, ~1 minute
//!     cargo bench --bench compare -- --ryw-only      # write-then-read with and without read-your-writes
//!
//! Everything it starts (PostgreSQL through `LocalCluster`, pgrelay,
//! PgBouncer, pgbench) is stopped by PID when it ends, also on failure.

mod fakepg;
mod floods;
mod idle;
mod options;
mod pgbench;
mod proxies;
mod proxy_bound;
mod report;
mod rounds;
mod ryw;
mod tls;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pgbench::Target;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

use pgrelay::localcluster::{LocalCluster, LocalClusterOptions, APP_PASSWORD, APP_USER, TRUST_USER};

use options::Options;
use pgbench::Workload;
use proxies::{cluster_nodes, Pgbouncer, Pgrelay, ProxySettings};
use tls::TlsFiles;

const POOL_SIZE: u32 = 20;
const MAX_CLIENT_CONN: u32 = 10_100;
pub const IDLE_CLIENTS: usize = 10_000;
/// Enough for 512 direct clients plus both proxies' pools.
const MAX_CONNECTIONS: u32 = 700;
const SCALE: u32 = 10;

/// The targets in the order the tables list them.
const TARGETS: [&str; 10] = [
    "direct-primary",
    "pgrelay-rw",
    "pgrelay-rw-w2",
    "pgbouncer",
    "direct-replica",
    "pgrelay-ro",
    "pgrelay-ro-w2",
    "direct-primary-tls",
    "pgrelay-rw-tls",
    "pgbouncer-tls",
];

const fn select(name: &'static str, args: &'static [&'static str], clients: u32, pgbouncer: bool) -> Workload {
    Workload { name, args, clients, read_only: true, pgbouncer, tls: false, workers: false }
}

/// A select workload also run through the `workers = 2` pgrelay.
const fn with_workers(w: Workload) -> Workload {
    Workload { workers: true, ..w }
}

/// `select c=16`, also over TLS and with workers = 2.
const SELECT_16: Workload = Workload { tls: true, ..with_workers(select("select c=16", &["-S"], 16, true)) };
/// A new connection per transaction, also over TLS (a handshake each) and
/// with workers = 2 (each connection handed to a worker).
const SELECT_CONNECT_16: Workload = Workload {
    name: "select -C c=16",
    args: &["-S", "-C"],
    clients: 16,
    read_only: false,
    pgbouncer: true,
    tls: true,
    workers: true,
};
const SELECT_64: Workload = with_workers(select("select c=64", &["-S"], 64, true));
const EXTENDED_16: Workload = with_workers(select("select extended c=16", &["-S", "-M", "extended"], 16, true));
const EXTENDED_64: Workload = with_workers(select("select extended c=64", &["-S", "-M", "extended"], 64, true));

const FULL: &[Workload] = &[
    select("select c=1", &["-S"], 1, true),
    SELECT_16,
    SELECT_64,
    select("select c=512", &["-S"], 512, true),
    EXTENDED_16,
    EXTENDED_64,
    select("select prepared c=16", &["-S", "-M", "prepared"], 16, false),
    Workload {
        name: "tpcb c=16",
        args: &[],
        clients: 16,
        read_only: false,
        pgbouncer: true,
        tls: false,
        workers: false,
    },
    SELECT_CONNECT_16,
];

/// `--workers-only`: the workloads of the workers axis.
const WORKERS_ONLY: &[Workload] = &[
    Workload { tls: false, ..SELECT_16 },
    SELECT_64,
    EXTENDED_16,
    EXTENDED_64,
    Workload { tls: false, ..SELECT_CONNECT_16 },
];

const QUICK: &[Workload] = &[
    select("select c=1", &["-S"], 1, true),
    SELECT_16,
    select("select prepared c=16", &["-S", "-M", "prepared"], 16, false),
    SELECT_CONNECT_16,
];

/// A scratch directory every user can read (PgBouncer runs as `postgres`),
/// removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<ScratchDir, String> {
        let path = std::env::temp_dir().join(format!("pgrelay-bench-{}", std::process::id()));
        fs::create_dir_all(path.join("pgbench-log")).map_err(|e| format!("{}: {e}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Raises the open-file limit (inherited by pgrelay and PgBouncer) so that
/// 10,000 clients fit on both ends.
fn raise_nofile_limit(needed: u64) -> Result<u64, String> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    if soft >= needed {
        return Ok(soft);
    }
    // Root may raise the hard limit too; anyone may raise soft up to hard.
    let target = needed.max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, target, target).is_ok() {
        return Ok(target);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|e| e.to_string())?;
    Ok(hard)
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows here.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// `pgbench -i -s 10` as the owner of the database, then lets the trust user
/// (which every run logs in as) read and write the tables, and waits until
/// both replicas have replayed it all.
fn init_pgbench(cluster: &LocalCluster) -> Result<(), String> {
    let started = Instant::now();
    let primary = cluster.primary();
    let out = Command::new("pgbench")
        .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1", "-p", &primary.port.to_string()])
        .args(["-U", APP_USER, "app"])
        .env("PGPASSWORD", APP_PASSWORD)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("pgbench -i: {e}"))?;
    if !out.status.success() {
        return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let sql = format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {TRUST_USER}");
    cluster.psql_db(primary, "app", &sql).map_err(|e| e.to_string())?;
    cluster.psql(primary, "CHECKPOINT").map_err(|e| e.to_string())?;
    let lsn = cluster.psql(primary, "select pg_current_wal_lsn()").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for replica in cluster.replicas() {
        let sql = format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        while cluster.psql(replica, &sql).map_err(|e| e.to_string())? != "t" {
            if Instant::now() >= deadline {
                return Err(format!("{} did not replay up to {lsn} within 120 s", replica.name));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("pgbench -i -s {SCALE}: {:.1} s (replicas caught up)", started.elapsed().as_secs_f64());
    Ok(())
}

fn pgrelay_bin() -> PathBuf {
    std::env::var_os("PGRELAY_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_pgrelay").into())
}

/// The commit of the source tree `bin` was built in (`<tree>/target/release/pgrelay`).
fn binary_commit(bin: &Path) -> String {
    let tree = bin.ancestors().nth(3).map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), Path::to_path_buf);
    let commit = command_line("git", &["-C", &tree.to_string_lossy(), "describe", "--always", "--dirty"]);
    if commit.is_empty() {
        "unknown".into()
    } else {
        commit
    }
}

fn print_machine(bin: &Path) {
    println!("- date: {}", command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    println!("- machine: {} cores, {}", command_line("nproc", &[]), command_line("uname", &["-sr"]));
    println!("- pgrelay: {} (commit {})", bin.display(), binary_commit(bin));
}

/// The proxies under test: the plain ones, and the TLS rows' own processes.
struct Proxies {
    relay: Pgrelay,
    /// The same pgrelay with `workers = 2` (a process of its own); the
    /// workers rows say FAILED with the reason if it did not start.
    relay_w2: Result<Pgrelay, String>,
    bouncer: Pgbouncer,
    tls: Option<TlsProxies>,
}

/// The TLS rows' proxies, each a process of its own (clients must use TLS
/// there). One that did not start leaves its rows FAILED with the reason,
/// and the others still run.
struct TlsProxies {
    files: TlsFiles,
    relay: Result<Pgrelay, String>,
    bouncer: Result<Pgbouncer, String>,
}

impl TlsProxies {
    /// Turns `ssl` on in the primary and starts pgrelay and PgBouncer with
    /// TLS on their client side, all three with the same certificate.
    fn start(bin: &Path, scratch: &Path, cluster: &LocalCluster, s: &ProxySettings) -> Result<TlsProxies, String> {
        let files = tls::enable(cluster, scratch)?;
        let relay = Pgrelay::start(bin, &files.dir, &cluster_nodes(cluster), s, Some(&files));
        let bouncer = Pgbouncer::start(&files.dir, cluster.primary().port, s, Some(&files));
        for (name, started) in [("pgrelay-rw-tls", relay.as_ref().err()), ("pgbouncer-tls", bouncer.as_ref().err())] {
            if let Some(e) = started {
                eprintln!("{name} did not start; its rows will say FAILED: {e}");
            }
        }
        Ok(TlsProxies { files, relay, bouncer })
    }

    /// The header's line on TLS: the certificate, and what a login to each
    /// target negotiates.
    fn describe(&self, cluster: &LocalCluster) -> String {
        let negotiated = |port: Option<u16>| match port {
            Some(port) => tls::negotiated(port).unwrap_or_else(|e| format!("not encrypted: {e}")),
            None => "did not start".into(),
        };
        format!(
            "TLS rows: client side only (the proxies' server side plain), PGSSLMODE=require, one {} certificate \
             for all three ({}); negotiated: direct-primary-tls {}; pgrelay-rw-tls {}; pgbouncer-tls {}",
            tls::KEY_TYPE,
            self.files.cert_file.display(),
            negotiated(Some(cluster.primary().port)),
            negotiated(self.relay.as_ref().ok().map(|r| r.rw.port())),
            negotiated(self.bouncer.as_ref().ok().map(|b| b.port)),
        )
    }
}

fn print_header(o: &Options, cluster: &LocalCluster, nofile: u64, bin: &Path, proxies: &Proxies) {
    println!("# pgrelay vs PgBouncer vs direct");
    println!();
    print_machine(bin);
    println!("- {}; {}", proxies::pgbouncer_version(), command_line("pgbench", &["--version"]));
    println!(
        "- cluster: primary :{} + replicas {:?}, max_connections {MAX_CONNECTIONS}, pgbench scale {SCALE}",
        cluster.primary().port,
        cluster.replicas().iter().map(|r| r.port).collect::<Vec<_>>()
    );
    println!(
        "- both proxies: transaction pooling, pool size {POOL_SIZE}, max_client_conn {MAX_CLIENT_CONN}; \
         RLIMIT_NOFILE {nofile}"
    );
    println!(
        "- runs: {} round(s) × `pgbench -n -T {} -j 2` per workload and target, targets alternated within a \
         round; medians shown; user {TRUST_USER} (trust), PGSSLMODE=disable",
        o.rounds, o.seconds
    );
    if let Some(tls) = &proxies.tls {
        println!("- {}", tls.describe(cluster));
    }
    println!("- load average at start: {}", load_average());
    println!("- CPU: utime+stime of the proxy process from /proc/PID/stat around each run / transactions");
    println!();
}

/// The targets of one workload, and the TLS targets whose proxy did not
/// start (with the reason).
fn targets_for<'a>(
    w: &Workload,
    o: &Options,
    proxies: &'a Proxies,
    cluster: &LocalCluster,
) -> (Vec<Target<'a>>, Vec<(&'static str, &'a str)>) {
    let (relay, bouncer) = (&proxies.relay, &proxies.bouncer);
    let direct = |name, port| Target { name, port, proxy: None, tls: false };
    let mut targets = vec![
        direct("direct-primary", cluster.primary().port),
        Target { name: "pgrelay-rw", port: relay.rw.port(), proxy: Some(&relay.guard), tls: false },
    ];
    let mut unavailable = Vec::new();
    let w2 = match (&proxies.relay_w2, w.workers) {
        (Ok(r), true) => Some(r),
        (Err(e), true) => {
            unavailable.push(("pgrelay-rw-w2", e.as_str()));
            unavailable.push(("pgrelay-ro-w2", e.as_str()));
            None
        }
        (_, false) => None,
    };
    if let Some(r) = w2 {
        targets.push(Target { name: "pgrelay-rw-w2", port: r.rw.port(), proxy: Some(&r.guard), tls: false });
    }
    if w.pgbouncer {
        targets.push(Target { name: "pgbouncer", port: bouncer.port, proxy: Some(&bouncer.guard), tls: false });
    }
    if w.read_only && !o.tls_only {
        targets.push(direct("direct-replica", cluster.replicas()[0].port));
        targets.push(Target { name: "pgrelay-ro", port: relay.ro.port(), proxy: Some(&relay.guard), tls: false });
        if let Some(r) = w2 {
            targets.push(Target { name: "pgrelay-ro-w2", port: r.ro.port(), proxy: Some(&r.guard), tls: false });
        }
    }
    if let (true, Some(tls)) = (w.tls, &proxies.tls) {
        targets.push(Target { name: "direct-primary-tls", port: cluster.primary().port, proxy: None, tls: true });
        match &tls.relay {
            Ok(r) => {
                targets.push(Target { name: "pgrelay-rw-tls", port: r.rw.port(), proxy: Some(&r.guard), tls: true })
            }
            Err(e) => unavailable.push(("pgrelay-rw-tls", e.as_str())),
        }
        match (&tls.bouncer, w.pgbouncer) {
            (Ok(b), true) => {
                targets.push(Target { name: "pgbouncer-tls", port: b.port, proxy: Some(&b.guard), tls: true })
            }
            (Err(e), true) => unavailable.push(("pgbouncer-tls", e.as_str())),
            (_, false) => {}
        }
    }
    (targets, unavailable)
}

fn run_pgbench(o: &Options, cluster: &LocalCluster, proxies: &Proxies, log_dir: &Path) {
    let all = match (o.workers_only, o.quick) {
        (true, _) => WORKERS_ONLY,
        (false, true) => QUICK,
        (false, false) => FULL,
    };
    let workloads: Vec<Workload> = all.iter().filter(|w| w.tls || !o.tls_only).cloned().collect();
    let moves = || proxies.relay_w2.as_ref().map_err(Clone::clone).and_then(|r| r.metric_sum(report::MOVES_METRIC));
    let moves_before = moves();
    let results = rounds::run(o.rounds, o.seconds, &workloads, |w| targets_for(w, o, proxies, cluster), log_dir);
    let moves_after = moves();
    println!("## pgbench (medians of {} round(s), {} s each)", o.rounds, o.seconds);
    println!();
    report::print_table(&workloads, &TARGETS, &results);
    println!();
    println!("TPS ratios and proxy CPU per transaction:");
    println!();
    report::print_ratios(&workloads, &results);
    println!();
    if proxies.tls.is_some() {
        report::print_tls_ratios(&workloads, &results);
        println!();
    }
    if workloads.iter().any(|w| w.workers) {
        report::print_workers(&workloads, &results);
        println!();
        let w2_transactions = results.transactions_of(&["pgrelay-rw-w2", "pgrelay-ro-w2"]);
        report::print_moves(moves_after.and_then(|a| Ok(a - moves_before?)), w2_transactions);
        println!();
    }
    report::print_added_latency(&workloads, &results);
    println!();
}

fn run_idle(o: &Options, relay: &Pgrelay, bouncer: &Pgbouncer) {
    println!("## Idle clients");
    println!();
    report::print_idle_header(o.idle_clients, o.idle_rounds);
    let relay_result = idle::measure(relay.rw, relay.guard.pid(), o.idle_clients, o.idle_rounds);
    report::print_idle("pgrelay", &relay_result);
    let bouncer_result =
        idle::measure(([127, 0, 0, 1], bouncer.port).into(), bouncer.guard.pid(), o.idle_clients, o.idle_rounds);
    report::print_idle("pgbouncer", &bouncer_result);
    println!();
}

/// The header of a run of the floods alone.
fn print_floods_header(cluster: &LocalCluster, bin: &Path) {
    println!("# pgrelay: one client's floods");
    println!();
    print_machine(bin);
    println!("- cluster: primary :{} only", cluster.primary().port);
    println!("- load average at start: {}", load_average());
    println!();
}

fn run_floods(bin: &Path, dir: &Path, cluster: &LocalCluster, settings: &ProxySettings) {
    println!("## Floods from one client");
    println!();
    floods::print(&floods::measure(bin, dir, cluster, settings));
    println!();
}

fn base_settings(server_tls_disable: bool) -> ProxySettings {
    ProxySettings {
        pool_size: POOL_SIZE,
        max_client_conn: MAX_CLIENT_CONN,
        server_tls_disable,
        workers: 1,
        monitored: false,
    }
}

/// The header of a run of the proxy-bound rows alone.
fn print_proxy_bound_header(bin: &Path) {
    println!("# pgrelay vs PgBouncer in front of a synthetic server");
    println!();
    print_machine(bin);
    println!("- {}; {}", proxies::pgbouncer_version(), command_line("pgbench", &["--version"]));
    println!(
        "- both proxies: transaction pooling, pool size {POOL_SIZE}, max_client_conn {MAX_CLIENT_CONN}; pgrelay \
         with workers = 1 and workers = 2 (two processes)"
    );
    println!("- load average at start: {}", load_average());
    println!("- CPU: utime+stime of the proxy process (and of each of its threads) from /proc around each run / transactions");
    println!();
}

fn run_proxy_bound(o: &Options, bin: &Path, scratch: &Path, settings: &ProxySettings) -> Result<(), String> {
    let log_dir = scratch.join("pgbench-log");
    proxy_bound::run(bin, scratch, settings, o.rounds, o.seconds, &log_dir)?;
    println!();
    Ok(())
}

fn run() -> Result<(), String> {
    let o = options::parse_args()?;
    let nofile = raise_nofile_limit(o.idle_clients as u64 * 2 + 1000)?;
    if o.idle && nofile < o.idle_clients as u64 + 500 {
        return Err(format!("RLIMIT_NOFILE is {nofile}: too low for {} idle clients", o.idle_clients));
    }
    let bin = pgrelay_bin();
    if !bin.exists() {
        return Err(format!("{} does not exist: run `cargo build --release`", bin.display()));
    }
    let scratch = ScratchDir::create()?;
    let started = Instant::now();
    if o.ryw_only {
        ryw::run(&bin, &scratch.0, &base_settings(false), o.rounds, o.seconds)?;
        println!("Total time: {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    // The floods need a primary only; pgbench and the idle clients compare
    // against replicas and PgBouncer too.
    let comparing = o.pgbench || o.idle;
    if !comparing && !o.floods {
        // --proxy-bound-only: no PostgreSQL at all.
        print_proxy_bound_header(&bin);
        run_proxy_bound(&o, &bin, &scratch.0, &base_settings(false))?;
        println!("Total time: {:.0} s; load average at the end: {}", started.elapsed().as_secs_f64(), load_average());
        return Ok(());
    }
    let replicas = if comparing { 2 } else { 0 };
    let opts = LocalClusterOptions { replicas, max_connections: MAX_CONNECTIONS, ..Default::default() };
    let cluster = LocalCluster::start(opts).map_err(|e| format!("starting the cluster: {e}"))?;
    // The TLS rows turn ssl on in the primary.
    let tls_rows = o.pgbench && o.tls;
    let settings = base_settings(tls_rows);
    if comparing {
        init_pgbench(&cluster)?;
        let nodes = cluster_nodes(&cluster);
        let w2_dir = scratch.0.join("workers-2");
        fs::create_dir_all(&w2_dir).map_err(|e| format!("{}: {e}", w2_dir.display()))?;
        let w2_settings = ProxySettings { workers: 2, ..settings };
        // Declared after the cluster, so dropped (killed) before it stops.
        let proxies = Proxies {
            relay: Pgrelay::start(&bin, &scratch.0, &nodes, &settings, None)?,
            relay_w2: if o.pgbench && !o.tls_only {
                Pgrelay::start(&bin, &w2_dir, &nodes, &w2_settings, None)
            } else {
                Err("not started (no workers rows in this run)".into())
            },
            bouncer: Pgbouncer::start(&scratch.0, cluster.primary().port, &settings, None)?,
            tls: if tls_rows { Some(TlsProxies::start(&bin, &scratch.0, &cluster, &settings)?) } else { None },
        };
        print_header(&o, &cluster, nofile, &bin, &proxies);
        if o.pgbench {
            run_pgbench(&o, &cluster, &proxies, &scratch.0.join("pgbench-log"));
        }
        if o.proxy_bound {
            run_proxy_bound(&o, &bin, &scratch.0, &settings)?;
        }
        if o.idle {
            run_idle(&o, &proxies.relay, &proxies.bouncer);
        }
    } else {
        print_floods_header(&cluster, &bin);
    }
    if o.floods {
        run_floods(&bin, &scratch.0, &cluster, &settings);
    }
    println!("Total time: {:.0} s; load average at the end: {}", started.elapsed().as_secs_f64(), load_average());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e}");
            ExitCode::FAILURE
        }
    }
}
