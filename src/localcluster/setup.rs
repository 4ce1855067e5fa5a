//! The steps that build a cluster: its directory, free ports, initdb and the
//! configuration files, roles, base backups, and starting a server on a port
//! that may turn out to be taken.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::error::LocalClusterError;
use super::exec::{OsUser, Runner};
use super::{
    LocalClusterOptions, NodeHandle, APP_DATABASE, APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, SUPERUSER,
    TRUST_USER,
};

pub(crate) const LOG_FILE: &str = "server.log";
/// Per-node settings (port, name), included last from postgresql.conf so a
/// base backup's copy can simply be overwritten.
const NODE_CONF: &str = "pgrelay-node.conf";
/// How many fresh ports a node tries when another program grabs its port first.
const PORT_ATTEMPTS: u32 = 5;
/// pg_ctl gets `-t 60`; our own bound leaves it room to report.
pub(crate) const PG_CTL_BOUND: Duration = Duration::from_secs(90);
const INITDB_BOUND: Duration = Duration::from_secs(120);
const BASEBACKUP_BOUND: Duration = Duration::from_secs(120);
pub(crate) const PSQL_BOUND: Duration = Duration::from_secs(30);
/// The longest Unix socket path Linux accepts (sun_path less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Creates the cluster's own directory (fresh under the temp dir unless one
/// is given, which must then be empty), traversable by the server's user.
pub(crate) fn create_base_dir(requested: Option<&Path>, user: Option<&OsUser>) -> Result<PathBuf, LocalClusterError> {
    let base_dir_error = |path: &Path, reason: String| LocalClusterError::BaseDir { path: path.to_path_buf(), reason };
    let path = match requested {
        Some(path) => {
            std::fs::create_dir_all(path).map_err(LocalClusterError::io(format!("creating {}", path.display())))?;
            let mut entries =
                std::fs::read_dir(path).map_err(LocalClusterError::io(format!("reading {}", path.display())))?;
            if entries.next().is_some() {
                return Err(base_dir_error(path, "is not empty: give an empty or new directory".into()));
            }
            path.canonicalize().map_err(LocalClusterError::io(format!("resolving {}", path.display())))?
        }
        None => {
            let name = format!("pgrelay-cluster-{}-{:08x}", std::process::id(), rand::random::<u32>());
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir(&path).map_err(LocalClusterError::io(format!("creating {}", path.display())))?;
            path
        }
    };
    // Still empty here, so remove_dir cannot take anything but what we made.
    make_usable(&path, user).inspect_err(|_| drop(std::fs::remove_dir(&path)))?;
    Ok(path)
}

/// Checks the socket path length, then opens the directory to the server's user.
fn make_usable(path: &Path, user: Option<&OsUser>) -> Result<(), LocalClusterError> {
    let base_dir_error = |reason: String| LocalClusterError::BaseDir { path: path.to_path_buf(), reason };
    if path.join(".s.PGSQL.65535").as_os_str().len() > MAX_SOCKET_PATH {
        return Err(base_dir_error("is too long to hold Unix sockets: use a shorter path".into()));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(LocalClusterError::io(format!("chmod 0755 {}", path.display())))?;
    let Some(user) = user else { return Ok(()) };
    check_traversable(path, user).map_err(base_dir_error)?;
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(LocalClusterError::io(format!(
        "chown {} to {}",
        path.display(),
        user.name
    )))
}

/// Every ancestor of `path` must let `user` through, or initdb fails obscurely.
fn check_traversable(path: &Path, user: &OsUser) -> Result<(), String> {
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else { continue };
        let mode = meta.mode();
        let passes = (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0)
            || mode & 0o001 != 0;
        if !passes {
            return Err(format!(
                "its parent {} (mode {:o}) cannot be traversed by user {}: chmod o+x it, or use another \
                 base_dir (or TMPDIR)",
                dir.display(),
                mode & 0o7777,
                user.name
            ));
        }
    }
    Ok(())
}

/// Hands out loopback ports that were free a moment ago, never the same
/// twice; shared by the threads that start replicas side by side.
#[derive(Debug, Default)]
pub(crate) struct PortPicker {
    handed_out: Mutex<HashSet<u16>>,
}

impl PortPicker {
    pub(crate) fn pick(&self) -> Result<u16, LocalClusterError> {
        loop {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(LocalClusterError::io("binding 127.0.0.1:0 to find a free port"))?;
            let port = listener.local_addr().map_err(LocalClusterError::io("reading a bound port"))?.port();
            if self.handed_out.lock().unwrap_or_else(PoisonError::into_inner).insert(port) {
                return Ok(port);
            }
        }
    }
}

/// initdb plus our postgresql.conf additions and pg_hba.conf.
pub(crate) fn init_primary(
    runner: &Runner,
    node: &NodeHandle,
    opts: &LocalClusterOptions,
    socket_dir: &Path,
) -> Result<(), LocalClusterError> {
    let mut initdb = runner.pg_command("initdb");
    initdb.arg("-D").arg(&node.data_dir).args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256"]);
    // --no-sync: the data is thrown away, and syncing dominates initdb's time.
    initdb.args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
    runner.run(&format!("initdb for {}", node.name), initdb, INITDB_BOUND)?;

    let conf = server_conf(opts, socket_dir);
    append(&node.data_dir.join("postgresql.conf"), &conf)?;
    write_file(runner, &node.data_dir.join("pg_hba.conf"), HBA_CONF)
}

const HBA_CONF: &str = "\
# written by pgrelay localcluster
local all         all                    trust
host  replication all       127.0.0.1/32 trust
host  all         postgres  127.0.0.1/32 trust
host  all         app_trust 127.0.0.1/32 trust
host  all         app_md5   127.0.0.1/32 md5
host  all         all       127.0.0.1/32 scram-sha-256
";

/// Writes `rules` ahead of the node's pg_hba.conf rules (first match wins).
pub(crate) fn prepend_hba_rules(runner: &Runner, node: &NodeHandle, rules: &str) -> Result<(), LocalClusterError> {
    let path = node.data_dir.join("pg_hba.conf");
    let current =
        std::fs::read_to_string(&path).map_err(LocalClusterError::io(format!("reading {}", path.display())))?;
    let rules = if rules.ends_with('\n') { rules.to_owned() } else { format!("{rules}\n") };
    write_file(runner, &path, &format!("{rules}{current}"))
}

fn server_conf(opts: &LocalClusterOptions, socket_dir: &Path) -> String {
    let mut conf = format!(
        "\n# --- added by pgrelay localcluster ---\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{}'\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         max_connections = {}\n\
         logging_collector = off\n",
        quote_conf(&socket_dir.to_string_lossy()),
        opts.max_connections,
    );
    for line in &opts.extra_conf {
        conf.push_str(line);
        conf.push('\n');
    }
    conf.push_str(&format!("include_if_exists = '{NODE_CONF}'\n"));
    conf
}

/// A postgresql.conf string literal's body: single quotes doubled.
fn quote_conf(value: &str) -> String {
    value.replace('\'', "''")
}

/// The roles and the database every test and the demo rely on.
pub(crate) fn create_roles(runner: &Runner, primary: &NodeHandle, socket_dir: &Path) -> Result<(), LocalClusterError> {
    // Separate -c commands: CREATE DATABASE cannot run inside the implicit
    // transaction of a multi-statement query string.
    let statements = [
        format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
        "SET password_encryption = 'md5'".to_string(),
        format!("CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}'"),
        "RESET password_encryption".to_string(),
        format!("CREATE ROLE {TRUST_USER} LOGIN"),
        format!("CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}"),
        format!("GRANT ALL ON DATABASE {APP_DATABASE} TO {MD5_USER}, {TRUST_USER}"),
    ];
    psql(runner, primary, socket_dir, "postgres", &statements)?;
    let grant = format!("GRANT ALL ON SCHEMA public TO {MD5_USER}, {TRUST_USER}");
    psql(runner, primary, socket_dir, APP_DATABASE, &[grant]).map(drop)
}

/// Runs `sql` (each item its own command, in one session) as the superuser
/// over the node's Unix socket; returns psql's trimmed, unaligned stdout.
pub(crate) fn psql(
    runner: &Runner,
    node: &NodeHandle,
    socket_dir: &Path,
    db: &str,
    sql: &[impl AsRef<str>],
) -> Result<String, LocalClusterError> {
    let mut cmd = runner.pg_command("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"]).arg(socket_dir);
    cmd.args(["-p", &node.port.to_string(), "-U", SUPERUSER, "-d", db]);
    for statement in sql {
        cmd.arg("-c").arg(statement.as_ref());
    }
    runner.run(&format!("psql on {} (port {})", node.name, node.port), cmd, PSQL_BOUND)
}

/// Creates the replicas' physical slots, reserving WAL from now on. Made
/// before any base backup starts: with `pg_basebackup -C` each slot would
/// appear only after its backup began, and the checkpoint of a concurrent
/// backup could recycle the WAL segment the first one starts from.
pub(crate) fn create_slots(
    runner: &Runner,
    primary: &NodeHandle,
    socket_dir: &Path,
    slots: &[String],
) -> Result<(), LocalClusterError> {
    let calls: Vec<String> =
        slots.iter().map(|slot| format!("pg_create_physical_replication_slot('{slot}', true)")).collect();
    psql(runner, primary, socket_dir, "postgres", &[format!("select {}", calls.join(", "))]).map(drop)
}

/// A streaming replica's data directory, copied from the running primary,
/// using its slot (see `create_slots`) and with primary_conninfo (`-R`).
pub(crate) fn base_backup(
    runner: &Runner,
    primary: &NodeHandle,
    replica: &NodeHandle,
    slot: &str,
) -> Result<(), LocalClusterError> {
    let mut cmd = runner.pg_command("pg_basebackup");
    cmd.args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", SUPERUSER, "-D"]).arg(&replica.data_dir);
    cmd.args(["-R", "-S", slot, "--checkpoint=fast", "-X", "stream", "--no-sync"]);
    let what = format!("pg_basebackup of {} from {}", replica.name, primary.name);
    runner.run(&what, cmd, BASEBACKUP_BOUND).map_err(|e| e.with_server_log(&primary.log_file()))?;
    // The copy carries the primary's log; the replica's should start empty.
    match std::fs::remove_file(replica.log_file()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LocalClusterError::io(format!("removing {}", replica.log_file().display()))(e))
        }
        _ => Ok(()),
    }
}

/// Writes the node's own settings, then starts it; when the port turns out
/// to be taken, tries again on a fresh one (bounded).
pub(crate) fn start_new_server(
    runner: &Runner,
    node: &mut NodeHandle,
    ports: &PortPicker,
) -> Result<(), LocalClusterError> {
    let mut attempt = 1;
    loop {
        let node_conf = format!("port = {}\ncluster_name = '{}'\n", node.port, quote_conf(&node.name));
        write_file(runner, &node.data_dir.join(NODE_CONF), &node_conf)?;
        let log_len_before = std::fs::metadata(node.log_file()).map(|m| m.len()).unwrap_or(0);
        match start_server(runner, node) {
            Err(_) if attempt < PORT_ATTEMPTS && port_was_taken(&node.log_file(), log_len_before) => {
                tracing::info!(node = %node.name, port = node.port, "port taken by another program, trying another");
                node.port = ports.pick()?;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// `pg_ctl start -w`; a failure carries the tail of the server log.
pub(crate) fn start_server(runner: &Runner, node: &NodeHandle) -> Result<(), LocalClusterError> {
    let mut cmd = runner.pg_command("pg_ctl");
    cmd.args(["start", "-w", "-t", "60", "-D"]).arg(&node.data_dir).arg("-l").arg(node.log_file());
    let what = format!("starting {} on port {} (pg_ctl start)", node.name, node.port);
    runner.run(&what, cmd, PG_CTL_BOUND).map(drop).map_err(|e| e.with_server_log(&node.log_file()))
}

/// Whether the log written since `from` says the TCP port was in use.
fn port_was_taken(log_file: &Path, from: u64) -> bool {
    let Ok(bytes) = std::fs::read(log_file) else { return false };
    let fresh = bytes.get(from as usize..).unwrap_or_default();
    String::from_utf8_lossy(fresh).contains("Address already in use")
}

fn append(path: &Path, text: &str) -> Result<(), LocalClusterError> {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(LocalClusterError::io(format!("opening {}", path.display())))?;
    file.write_all(text.as_bytes()).map_err(LocalClusterError::io(format!("writing {}", path.display())))
}

/// Replaces a file's contents; a new file is given to the server's user.
/// A file only the server's user may read (a TLS key must be).
pub(crate) fn write_private_file(runner: &Runner, path: &Path, text: &str) -> Result<(), LocalClusterError> {
    use std::os::unix::fs::PermissionsExt as _;
    write_file(runner, path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(LocalClusterError::io(format!("making {} private", path.display())))
}

fn write_file(runner: &Runner, path: &Path, text: &str) -> Result<(), LocalClusterError> {
    std::fs::write(path, text).map_err(LocalClusterError::io(format!("writing {}", path.display())))?;
    runner.give(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_log_written_since_the_start_attempt_counts() {
        let dir = std::env::temp_dir().join(format!("pgrelay-setup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("server.log");
        let old = "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n";
        std::fs::write(&log, old).unwrap();
        assert!(port_was_taken(&log, 0));
        assert!(!port_was_taken(&log, old.len() as u64));
        assert!(!port_was_taken(&dir.join("missing.log"), 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn extra_lines_come_before_the_per_node_include() {
        let opts = LocalClusterOptions { extra_conf: vec!["work_mem = '8MB'".into()], ..Default::default() };
        let conf = server_conf(&opts, Path::new("/tmp/it's"));
        assert!(conf.contains("unix_socket_directories = '/tmp/it''s'\n"), "{conf}");
        assert!(conf.contains("max_connections = 100\n"));
        let extra = conf.find("work_mem").unwrap();
        assert!(extra < conf.find("include_if_exists = 'pgrelay-node.conf'").unwrap());
    }
}
