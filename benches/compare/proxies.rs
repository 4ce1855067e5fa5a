//! The two proxies under test as child processes: their config files (with
//! TLS on the client side for the TLS rows), start, readiness check, CPU and memory readings, and a guard that kills each one
//! by its PID when the benchmark ends (also on a panic or an early return).

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

use pgrelay::localcluster::{LocalCluster, TRUST_USER};

use super::tls::TlsFiles;

/// How long a proxy may take to answer its first query.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a proxy gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process that is killed by its PID when dropped.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has already exited.
    fn check_alive(&mut self, log: &Path) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited ({status}); log:\n{}", self.name, tail(log, 20))),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Makes the child die with the benchmark even if this process is killed
/// with SIGKILL and no destructor runs.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it runs in the
    // forked child after any uid change (which would clear it).
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
}

/// A loopback port that is free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

/// User + group CPU time of a process, in clock ticks (all its threads).
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    stat_ticks(&stat)
}

/// One thread's CPU time: its id, its name (`/proc/PID/task/TID/comm`) and
/// utime + stime in clock ticks.
#[derive(Debug, Clone)]
pub struct ThreadTicks {
    pub tid: u32,
    pub name: String,
    pub ticks: u64,
}

/// User + system CPU time of each thread of a process, in clock ticks. A
/// thread that exits between the listing and the read is left out.
pub fn thread_ticks(pid: u32) -> Result<Vec<ThreadTicks>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("{dir}/{tid}/stat")) else {
            continue;
        };
        let name = fs::read_to_string(format!("{dir}/{tid}/comm")).unwrap_or_default().trim().to_owned();
        threads.push(ThreadTicks { tid, name, ticks: stat_ticks(&stat)? });
    }
    Ok(threads)
}

/// utime + stime of a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Result<u64, String> {
    // The command name may contain spaces; the fields after it do not.
    let after_comm = &stat[stat.rfind(')').ok_or("malformed /proc stat")? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the comm.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).ok_or("no utime")?;
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).ok_or("no stime")?;
    Ok(utime + stime)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let file = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let copy = file.try_clone().map_err(|e| e.to_string())?;
    Ok((Stdio::from(file), Stdio::from(copy)))
}

/// Waits until `psql` (with `PGSSLMODE=sslmode`) gets an answer through
/// `port`, or fails with the log.
fn wait_ready(guard: &mut ChildGuard, port: u16, sslmode: &str, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        guard.check_alive(log)?;
        let out = Command::new("psql")
            .args(["-X", "-Atq", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", TRUST_USER, "-d", "app"])
            .args(["-c", "select 1"])
            .env("PGSSLMODE", sslmode)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not answer on port {port} within {READY_TIMEOUT:?}: {}\nlog:\n{}",
                guard.name,
                String::from_utf8_lossy(&out.stderr).trim(),
                tail(log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Settings both proxies share.
#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub pool_size: u32,
    pub max_client_conn: u32,
    /// The primary has `ssl = on` (the TLS rows): pgrelay gets `[tls]
    /// server_tls_sslmode = "disable"` so its server side stays plain, as
    /// PgBouncer's does by default, instead of its default `prefer`. Left
    /// out otherwise, so builds from before the `[tls]` section still run.
    pub server_tls_disable: bool,
    /// pgrelay's `[pool] workers`, always written: its default is the
    /// number of cores.
    pub workers: usize,
    /// pgrelay follows the cluster with `source = "postgres"` (monitors)
    /// instead of `"static"` roles.
    pub monitored: bool,
}

/// The nodes pgrelay is put in front of, the primary first: name and port.
pub fn cluster_nodes(cluster: &LocalCluster) -> Vec<(String, u16)> {
    cluster.nodes().iter().map(|n| (n.name.clone(), n.port)).collect()
}

/// `PGSSLMODE` for a client of a proxy with this client side.
fn sslmode(client_tls: Option<&TlsFiles>) -> &'static str {
    if client_tls.is_some() {
        "require"
    } else {
        "disable"
    }
}

pub struct Pgrelay {
    pub guard: ChildGuard,
    pub rw: SocketAddr,
    pub ro: SocketAddr,
    /// The HTTP listener (`/metrics`).
    pub http: SocketAddr,
}

impl Pgrelay {
    /// Writes the config, checks it with `pgrelay check`, starts `pgrelay run`
    /// and waits until both listeners answer. With `client_tls`, clients
    /// must use TLS (`client_tls_sslmode = "require"`) with that certificate.
    pub fn start(
        bin: &Path,
        dir: &Path,
        nodes: &[(String, u16)],
        s: &ProxySettings,
        client_tls: Option<&TlsFiles>,
    ) -> Result<Pgrelay, String> {
        let (rw, ro, http) = (free_port(), free_port(), free_port());
        // Every bench client comes from 127.0.0.1 (the idle-client round logs
        // in 100 at a time): one address may hold the whole pre-auth cap.
        let mut conf = format!(
            "[listen]\nrw = \"127.0.0.1:{rw}\"\nro = \"127.0.0.1:{ro}\"\nhttp = \"127.0.0.1:{http}\"\n\n\
             [pool]\nmode = \"transaction\"\ndefault_pool_size = {}\nmax_client_conn = {}\n\
             max_pre_auth_conn_per_addr = 256\nworkers = {}\n\n\
             [cluster]\nsource = \"{}\"\nuser = \"postgres\"\npassword = \"\"\n",
            s.pool_size,
            s.max_client_conn,
            s.workers,
            if s.monitored { "postgres" } else { "static" },
        );
        for (i, (name, port)) in nodes.iter().enumerate() {
            let role = match (s.monitored, i) {
                (true, _) => String::new(),
                (false, 0) => "role = \"primary\"\n".into(),
                (false, _) => "role = \"replica\"\n".into(),
            };
            conf += &format!("\n[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\n{role}");
        }
        conf +=
            &format!("\n[[users]]\nname = \"{TRUST_USER}\"\nauth_type = \"trust\"\n\n[[databases]]\nname = \"app\"\n");
        if s.server_tls_disable || client_tls.is_some() {
            conf += "\n[tls]\n";
        }
        if s.server_tls_disable {
            conf += "server_tls_sslmode = \"disable\"\n";
        }
        if let Some(files) = client_tls {
            conf += &format!(
                "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
                files.cert_file.display(),
                files.key_file.display()
            );
        }
        let conf_path = dir.join("pgrelay.toml");
        fs::write(&conf_path, conf).map_err(|e| format!("{}: {e}", conf_path.display()))?;
        let check = Command::new(bin).arg("check").arg("-c").arg(&conf_path).output().map_err(|e| e.to_string())?;
        if !check.status.success() {
            return Err(format!("pgrelay check failed: {}", String::from_utf8_lossy(&check.stderr)));
        }
        let log = dir.join("pgrelay.log");
        let (stdout, stderr) = log_file(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(&conf_path).env("PGRELAY_LOG", "warn").stdin(Stdio::null());
        cmd.stdout(stdout).stderr(stderr);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let name = match (client_tls.is_some(), s.workers) {
            (true, _) => "pgrelay (TLS)",
            (false, 1) => "pgrelay",
            (false, _) => "pgrelay (workers > 1)",
        };
        let mut guard = ChildGuard { name, child };
        wait_ready(&mut guard, rw, sslmode(client_tls), &log)?;
        wait_ready(&mut guard, ro, sslmode(client_tls), &log)?;
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Pgrelay { guard, rw: addr(rw), ro: addr(ro), http: addr(http) })
    }

    /// The sum of a counter over all its label sets, from `GET /metrics`
    /// (bounded: 5 s to connect, write and read).
    pub fn metric_sum(&self, name: &str) -> Result<f64, String> {
        self.metric_sum_where(name, "")
    }

    /// The sum of a counter over the label sets whose line contains `labels`
    /// (for example `reason="replica"`).
    pub fn metric_sum_where(&self, name: &str, labels: &str) -> Result<f64, String> {
        use std::io::{Read, Write};
        let err = |e: std::io::Error| format!("GET /metrics: {e}");
        let mut stream = std::net::TcpStream::connect_timeout(&self.http, METRICS_TIMEOUT).map_err(err)?;
        stream.set_read_timeout(Some(METRICS_TIMEOUT)).map_err(err)?;
        stream.set_write_timeout(Some(METRICS_TIMEOUT)).map_err(err)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").map_err(err)?;
        let mut body = String::new();
        stream.read_to_string(&mut body).map_err(err)?;
        let values = body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels));
        Ok(values.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
    }
}

/// Bound on each step of a `/metrics` request.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Pgbouncer {
    pub guard: ChildGuard,
    pub port: u16,
}

impl Pgbouncer {
    /// Writes pgbouncer.ini and the auth file, starts PgBouncer in the
    /// foreground as the `postgres` OS user (it refuses root) and waits
    /// until it answers. With `client_tls`, clients must use TLS
    /// (`client_tls_sslmode = require`) with that certificate; the server
    /// side stays plain (`server_tls_sslmode` defaults to `disable`).
    pub fn start(
        dir: &Path,
        primary: u16,
        s: &ProxySettings,
        client_tls: Option<&TlsFiles>,
    ) -> Result<Pgbouncer, String> {
        let port = free_port();
        let auth_file = dir.join("pgbouncer.users");
        let mut ini = format!(
            "[databases]\napp = host=127.0.0.1 port={primary} dbname=app\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             default_pool_size = {}\nmax_client_conn = {}\n\
             log_connections = 0\nlog_disconnections = 0\nlog_pooler_errors = 1\n",
            auth_file.display(),
            s.pool_size,
            s.max_client_conn
        );
        if let Some(files) = client_tls {
            ini += &format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n",
                files.cert_file.display(),
                files.key_file.display()
            );
        }
        let ini_path = dir.join("pgbouncer.ini");
        write_world_readable(&auth_file, &format!("\"{TRUST_USER}\" \"\"\n"))?;
        write_world_readable(&ini_path, &ini)?;
        let log = dir.join("pgbouncer.log");
        let (stdout, stderr) = log_file(&log)?;
        let mut cmd = Command::new(pgbouncer_bin()?);
        cmd.arg(&ini_path).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")
                .map_err(|e| e.to_string())?
                .ok_or("PgBouncer refuses to run as root, and there is no `postgres` OS user to run it as")?;
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| format!("starting pgbouncer: {e}"))?;
        let name = if client_tls.is_some() { "pgbouncer (TLS)" } else { "pgbouncer" };
        let mut guard = ChildGuard { name, child };
        wait_ready(&mut guard, port, sslmode(client_tls), &log)?;
        Ok(Pgbouncer { guard, port })
    }
}

pub fn write_world_readable(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a file only its owner may read, owned by the `postgres` OS user
/// when this process is root (PgBouncer then runs as `postgres`; pgrelay,
/// run as root, reads it all the same).
pub fn write_private_to_pgbouncer(path: &Path, text: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    fs::write(path, text).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    if nix::unistd::geteuid().is_root() {
        let user = User::from_name("postgres").map_err(|e| e.to_string())?.ok_or("no `postgres` OS user")?;
        std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).map_err(err)?;
    }
    Ok(())
}

/// The pgbouncer binary; installs Debian's package (1.18 on Debian 12) when
/// it is missing and this process may.
fn pgbouncer_bin() -> Result<PathBuf, String> {
    let candidates = [PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from("/usr/bin/pgbouncer")];
    if let Some(found) = candidates.iter().find(|p| p.exists()) {
        return Ok(found.clone());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("pgbouncer is not installed; run `apt-get install -y pgbouncer` as root".into());
    }
    eprintln!("pgbouncer is missing: apt-get update && apt-get install -y pgbouncer");
    for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "pgbouncer"][..]] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !status.success() {
            return Err(format!("apt-get {} failed ({status})", args.join(" ")));
        }
    }
    candidates.into_iter().find(|p| p.exists()).ok_or_else(|| "pgbouncer still missing after apt-get".into())
}

/// `pgbouncer --version`, first line.
pub fn pgbouncer_version() -> String {
    pgbouncer_bin()
        .ok()
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
        .unwrap_or_default()
}
