//! A real Patroni cluster on loopback: one etcd and three Patroni nodes
//! (pg0, pg1, pg2), each running its own PostgreSQL, in a fresh directory
//! under the temp dir.
//!
//! Everything runs as `postgres` when we are root (PostgreSQL refuses root),
//! else as ourselves. Cleanup has one path, the reaper (see `reaper.rs`):
//! dropping the cluster, a panic, an abort or a SIGKILL of the test process
//! all end in the reaper killing the processes we started (by pid, after
//! checking their command line names our directory) and removing the
//! directory.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::reaper;
use pgrelay::localcluster::Reaper;

/// The Patroni superuser; pgrelay's monitors log in as it.
pub const SUPERUSER: &str = "postgres";
pub const SUPERUSER_PASSWORD: &str = "patroni-super";
const REPLICATION_USER: &str = "replicator";
const REPLICATION_PASSWORD: &str = "patroni-repl";
const SCOPE: &str = "pgrelay-test";
pub const NODES: usize = 3;

/// The binaries the test needs besides PostgreSQL; it skips without them.
pub const TOOLS: [&str; 3] = ["patroni", "patronictl", "etcd"];

/// The tools of [`TOOLS`] that are not on PATH.
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS.iter().copied().filter(|tool| which(tool).is_none()).collect()
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// The newest /usr/lib/postgresql/N/bin with an initdb (PGRELAY_PG_BIN overrides).
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGRELAY_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin")
}

/// The user the servers run as: `postgres` when we are root, else nobody to switch to.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> Option<RunAs> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("a postgres OS user (root may not run PostgreSQL)");
    Some(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
}

/// One Patroni member.
pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Our Patroni process; None once killed.
    patroni: Option<Child>,
}

impl Member {
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's pid, from the first line of postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// What `GET /cluster` says about one member.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub name: String,
    pub role: String,
    pub state: String,
}

pub struct PatroniCluster {
    base: PathBuf,
    run_as: Option<RunAs>,
    pub members: Vec<Member>,
    etcd: Option<Child>,
    reaper: Option<Reaper>,
}

/// `n` distinct free loopback ports (held open together so none repeats).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

impl PatroniCluster {
    /// Writes the configs and starts etcd and the three Patroni nodes; does
    /// not wait for them (see [`PatroniCluster::wait_ready`]).
    pub fn start() -> PatroniCluster {
        let run_as = run_as();
        let keep = std::env::var_os("PGRELAY_TEST_KEEP").is_some_and(|v| v == "1");
        let base = std::env::temp_dir().join(format!("pgrelay-patroni-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("pids")).expect("create the cluster directory");
        let bin_dir = pg_bin_dir();
        let reaper = reaper::spawn(&base, &bin_dir.join("pg_ctl"), keep, run_as.map(|r| (r.uid, r.gid)))
            .expect("start the cleanup process");
        let mut cluster =
            PatroniCluster { base: base.clone(), run_as, members: Vec::new(), etcd: None, reaper: Some(reaper) };

        let ports = free_ports(2 + 2 * NODES);
        let (etcd_client, etcd_peer) = (ports[0], ports[1]);
        for i in 0..NODES {
            let name = format!("pg{i}");
            let dir = base.join(&name);
            fs::create_dir_all(&dir).expect("create a member directory");
            let config = base.join(format!("{name}.yml"));
            let (pg_port, api_port) = (ports[2 + 2 * i], ports[3 + 2 * i]);
            fs::write(&config, patroni_yaml(&name, &dir, &bin_dir, pg_port, api_port, etcd_client))
                .expect("write a Patroni config");
            cluster.members.push(Member { name, pg_port, api_port, dir, config, patroni: None });
        }
        cluster.chown_all();
        if keep {
            eprintln!("Patroni test cluster kept in {}", base.display());
        }

        let etcd_dir = base.join("etcd");
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = cluster.command("etcd", "etcd.log");
        etcd.arg("--name")
            .arg("e0")
            .arg("--data-dir")
            .arg(&etcd_dir)
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("e0={peer_url}"));
        let etcd = etcd.spawn().expect("start etcd");
        cluster.record_pid("etcd", etcd.id());
        cluster.etcd = Some(etcd);

        for i in 0..NODES {
            let member = &cluster.members[i];
            let mut cmd = cluster.command("patroni", &format!("{}.log", member.name));
            cmd.arg(&member.config);
            let child = cmd.spawn().expect("start patroni");
            cluster.record_pid(&cluster.members[i].name.clone(), child.id());
            cluster.members[i].patroni = Some(child);
        }
        cluster
    }

    /// A command as the servers' user, with a clean environment, logging to
    /// `log` in the base dir, in its own process group (a Ctrl-C aimed at the
    /// test must not reach it; the reaper cleans up).
    fn command(&self, program: &str, log: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &self.base)
            .env("LC_ALL", "C.UTF-8")
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .process_group(0);
        if !log.is_empty() {
            let file =
                fs::OpenOptions::new().create(true).append(true).open(self.base.join(log)).expect("open a log file");
            let file2 = file.try_clone().expect("clone a log file handle");
            cmd.stdout(file).stderr(file2);
            self.chown(&self.base.join(log));
        }
        if let Some(user) = self.run_as {
            // std drops the supplementary groups too when it switches uid.
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Where the reaper finds the pids of what we started.
    fn record_pid(&self, name: &str, pid: u32) {
        let path = self.base.join("pids").join(name);
        fs::write(&path, format!("{pid}\n")).expect("record a pid");
        self.chown(&path);
    }

    fn chown(&self, path: &Path) {
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    /// Hands the whole tree to the servers' user; member dirs 0700 as PostgreSQL wants its parents private enough.
    fn chown_all(&self) {
        fs::set_permissions(&self.base, fs::Permissions::from_mode(0o700)).expect("chmod the cluster directory");
        let mut paths = vec![self.base.clone(), self.base.join("pids")];
        for member in &self.members {
            paths.push(member.dir.clone());
            paths.push(member.config.clone());
            fs::set_permissions(&member.dir, fs::Permissions::from_mode(0o700)).expect("chmod a member directory");
        }
        for path in paths {
            self.chown(&path);
        }
    }

    /// Runs `patronictl -c <member's config> args...` to completion (bounded);
    /// returns its combined output, or an error with it.
    pub fn patronictl(&self, member: usize, args: &[&str], limit: Duration) -> Result<String, String> {
        let mut cmd = self.command("patronictl", "");
        let out_path = self.base.join(format!("patronictl-{}.out", std::process::id()));
        let out = fs::File::create(&out_path).expect("patronictl output file");
        self.chown(&out_path);
        cmd.arg("-c").arg(&self.members[member].config).args(args);
        cmd.stdout(out.try_clone().expect("clone")).stderr(out);
        let mut child = cmd.spawn().map_err(|e| format!("patronictl: {e}"))?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("patronictl {args:?} did not finish within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        // patronictl reports some refusals ("Switchover failed, details: 412 ...") with status 0.
        if status.success() && !output.contains("failed") {
            Ok(output)
        } else {
            Err(format!("patronictl {args:?}: {status}\n{output}"))
        }
    }

    /// `GET /cluster` from the first member whose REST API answers.
    pub async fn members_state(&self) -> Result<Vec<MemberState>, String> {
        members_state(&self.live_api_urls()).await
    }

    /// The REST API URLs of the members whose Patroni we have not killed.
    pub fn live_api_urls(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.patroni.is_some()).map(Member::api_url).collect()
    }

    /// The index of the member holding the leader key, if Patroni names one.
    pub async fn leader(&self) -> Option<usize> {
        let states = self.members_state().await.ok()?;
        let leader = states.iter().find(|s| s.role == "leader" && s.state == "running")?;
        self.index_of(&leader.name)
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// Waits until a leader runs, every live member runs, and (synchronous
    /// mode) one of them is the sync standby: (leader, sync standby).
    pub async fn wait_ready(&self, what: &str, limit: Duration) -> (usize, usize) {
        let started = Instant::now();
        loop {
            let last = match self.members_state().await {
                Ok(states) => {
                    let live: Vec<&MemberState> = states
                        .iter()
                        .filter(|s| self.index_of(&s.name).is_some_and(|i| self.members[i].patroni.is_some()))
                        .collect();
                    let running = live.len() == self.members.iter().filter(|m| m.patroni.is_some()).count()
                        && live.iter().all(|s| s.state == "running");
                    let leader = live.iter().find(|s| s.role == "leader").and_then(|s| self.index_of(&s.name));
                    let sync = live.iter().find(|s| s.role == "sync_standby").and_then(|s| self.index_of(&s.name));
                    if let (true, Some(leader), Some(sync)) = (running, leader, sync) {
                        return (leader, sync);
                    }
                    format!("{states:?}")
                }
                Err(e) => e,
            };
            if started.elapsed() > limit {
                panic!("{what}: not within {limit:?}; last /cluster: {last}\n{}", self.log_tails(40));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An unplanned loss of the member, as a crash of its machine would be:
    /// SIGKILL its Patroni, then its whole PostgreSQL server at once (the
    /// postmaster's children, with the postmaster stopped so it forks no
    /// more, then the postmaster; killing the postmaster alone leaves its
    /// backends running, and committing, until they notice). Only processes we started, by pid: our Patroni child, the
    /// postmaster of our data directory and that postmaster's children.
    /// Returns the postmaster pid, if there was one.
    pub fn crash_member(&mut self, index: usize) -> Option<i32> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;

        let member = &mut self.members[index];
        if let Some(mut patroni) = member.patroni.take() {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        let postmaster = member.postmaster_pid()?;
        let cmdline = fs::read(format!("/proc/{postmaster}/cmdline")).unwrap_or_default();
        let data_dir = member.data_dir();
        if !String::from_utf8_lossy(&cmdline).contains(&*data_dir.to_string_lossy()) {
            return None; // not running (or the pid is someone else's now)
        }
        // Children first: a backend outliving its postmaster by even a moment
        // tells its client so (57P01), which a crash would not.
        let _ = kill(Pid::from_raw(postmaster), Signal::SIGSTOP);
        for child in children_of(postmaster) {
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        let _ = kill(Pid::from_raw(postmaster), Signal::SIGKILL);
        Some(postmaster)
    }

    /// The last `lines` lines of every log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = fs::read_dir(&self.base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!("--- {} (last {} lines)\n{}\n", log.display(), tail.len(), tail.join("\n")));
        }
        out
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(25));
        }
        // The reaper kills everything by pid and removes the directory.
        if let Some(reaper) = self.reaper.take() {
            reaper::release(reaper);
        }
        for child in self.members.iter_mut().filter_map(|m| m.patroni.as_mut()).chain(self.etcd.as_mut()) {
            // Normally already killed by the reaper; reap it so no zombie stays.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The pids whose parent is `parent`, from /proc/*/stat.
fn children_of(parent: i32) -> Vec<i32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid = after_comm.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    children
}

/// `GET /cluster` from the first of `urls` that answers.
pub async fn members_state(urls: &[String]) -> Result<Vec<MemberState>, String> {
    let mut errors = Vec::new();
    for url in urls {
        match pgrelay::cluster::patroni::fetch_cluster(url, Duration::from_secs(2)).await {
            Ok(body) => return parse_members(&body),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!("no Patroni REST API answered: {errors:?}"))
}

/// Watches, from now on, `GET /cluster` (every 50 ms) until a running
/// leader other than `old` appears; gives its name and when it was seen,
/// or None after `limit`.
pub fn watch_new_leader(
    urls: Vec<String>,
    old: String,
    limit: Duration,
) -> tokio::task::JoinHandle<Option<(String, Instant)>> {
    tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(states) = members_state(&urls).await {
                if let Some(leader) =
                    states.iter().find(|s| s.role == "leader" && s.state == "running" && s.name != old)
                {
                    return Some((leader.name.clone(), Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    })
}

fn parse_members(body: &[u8]) -> Result<Vec<MemberState>, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("/cluster: {e}"))?;
    let members = json.get("members").and_then(Value::as_array).ok_or("/cluster: no members")?;
    Ok(members
        .iter()
        .map(|m| {
            let text = |key: &str| m.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
            MemberState { name: text("name"), role: text("role"), state: text("state") }
        })
        .collect())
}

/// One member's Patroni config: fast DCS timings (ttl 10, loop_wait 2,
/// retry_timeout 3), synchronous mode (a failover promotes only the sync
/// standby, so an acknowledged commit survives the leader's death), fast
/// base backups, password logins over 127.0.0.1.
fn patroni_yaml(name: &str, dir: &Path, bin_dir: &Path, pg_port: u16, api_port: u16, etcd_port: u16) -> String {
    let dir = dir.display();
    let bin_dir = bin_dir.display();
    format!(
        r#"scope: {SCOPE}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 3
    synchronous_mode: true
    postgresql:
      use_pg_rewind: false
      parameters:
        max_connections: 60
        synchronous_commit: "on"
  initdb:
    - encoding: UTF8
    - auth-local: trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: {SUPERUSER}
      password: {SUPERUSER_PASSWORD}
    replication:
      username: {REPLICATION_USER}
      password: {REPLICATION_PASSWORD}
  parameters:
    unix_socket_directories: {dir}
    shared_buffers: 32MB
    fsync: "on"
  pg_hba:
    - local all all trust
    - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
  basebackup:
    - checkpoint: fast
"#
    )
}
