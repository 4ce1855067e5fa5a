//! Running the PostgreSQL programs: where they are, as which OS user, with
//! which environment, and for how long at most.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::error::LocalClusterError;

/// Where Debian/Ubuntu install one `bin/` per major version.
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";
/// The account PostgreSQL runs as when we are root (it refuses root itself).
const SERVER_USER: &str = "postgres";
/// What a child's PATH holds besides the server binaries' directory.
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// How long we wait for a finished child's output pipes to close: a
/// grandchild that inherited them must not hang us.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// The unprivileged account the servers run as when this process is root.
#[derive(Debug, Clone)]
pub(crate) struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Builds and runs the cluster's commands.
#[derive(Debug)]
pub(crate) struct Runner {
    bin_dir: PathBuf,
    os_user: Option<OsUser>,
    /// The cluster's base dir: HOME and working directory of every child.
    home: PathBuf,
}

/// Every program the cluster runs; all must come from one installation.
const TOOLS: [&str; 5] = ["pg_ctl", "initdb", "postgres", "pg_basebackup", "psql"];

/// The directory of the server binaries: where a `pg_ctl` and `initdb` found
/// on PATH really live (PATH may hold symlinks to a few of them only), else
/// the highest version under /usr/lib/postgresql/*/bin.
pub(crate) fn find_bin_dir() -> Result<PathBuf, LocalClusterError> {
    let complete = |dir: &Path| TOOLS.iter().all(|tool| dir.join(tool).is_file());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let from_path = std::env::split_paths(&path)
        .filter(|dir| dir.join("pg_ctl").is_file() && dir.join("initdb").is_file())
        .filter_map(|dir| Some(dir.join("pg_ctl").canonicalize().ok()?.parent()?.to_path_buf()))
        .find(|dir| complete(dir));
    if let Some(dir) = from_path {
        return Ok(dir);
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(VERSIONED_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, bin)| bin).ok_or(LocalClusterError::BinariesNotFound)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version directory.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The account to switch to: `None` when we are not root and run everything as ourselves.
pub(crate) fn server_user() -> Result<Option<OsUser>, LocalClusterError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(SERVER_USER) {
        Ok(Some(user)) => Ok(Some(OsUser { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() })),
        _ => Err(LocalClusterError::NoServerUser { name: SERVER_USER }),
    }
}

impl Runner {
    pub(crate) fn new(bin_dir: PathBuf, os_user: Option<OsUser>, home: PathBuf) -> Runner {
        Runner { bin_dir, os_user, home }
    }

    pub(crate) fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// A PostgreSQL program from the server's bin dir, as the server's user,
    /// with an environment holding no PG* variable (they would leak into
    /// `pg_basebackup -R`'s primary_conninfo and into psql's connections).
    pub(crate) fn pg_command(&self, program: &str) -> Command {
        self.command(self.bin_dir.join(program))
    }

    /// Any program, with the same user, environment and working directory.
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut path = self.bin_dir.clone().into_os_string();
        path.push(":");
        path.push(SYSTEM_PATH);
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .current_dir(&self.home)
            .stdin(Stdio::null());
        if let Some(user) = &self.os_user {
            // std drops the supplementary groups too when it switches uid.
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Gives a file or directory we created to the server's user (no-op when not root).
    pub(crate) fn give(&self, path: &Path) -> Result<(), LocalClusterError> {
        let Some(user) = &self.os_user else { return Ok(()) };
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(LocalClusterError::io(format!(
            "giving {} to user {}",
            path.display(),
            user.name
        )))
    }

    /// Runs `cmd` to completion, killing it after `timeout`; returns its
    /// trimmed stdout, or an error with its exit status and stderr.
    pub(crate) fn run(&self, what: &str, mut cmd: Command, timeout: Duration) -> Result<String, LocalClusterError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(LocalClusterError::io(format!("cannot start {what}")))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_bounded(&mut child, timeout).map_err(LocalClusterError::io(format!("waiting for {what}")))?;
        let Some(status) = status else {
            return Err(LocalClusterError::TimedOut { what: what.to_string(), timeout, server_log: String::new() });
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        if status.success() {
            return Ok(stdout.trim().to_string());
        }
        let output = if stderr.trim().is_empty() { stdout } else { stderr };
        Err(LocalClusterError::CommandFailed {
            what: what.to_string(),
            detail: format!("{status}: {}", output.trim()),
            server_log: String::new(),
        })
    }
}

/// Waits for `child` at most `timeout`; on timeout kills it (it is still
/// ours, unreaped, so the pid cannot have been reused) and returns `None`.
fn wait_bounded(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    // Most commands take milliseconds: poll fast first, then back off.
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Reads a child's pipe to its end on a thread, so a full pipe never blocks the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn collect(rx: mpsc::Receiver<Vec<u8>>) -> String {
    rx.recv_timeout(PIPE_DRAIN).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn version_directories_sort_numerically() {
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("latest"), None);
        assert!(parse_version("9.6").unwrap() < parse_version("10").unwrap());
    }
}
