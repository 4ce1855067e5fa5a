//! The crash-proof backstop: a detached shell that stops the cluster's servers
//! and removes its directory once the process that built the cluster is gone.
//!
//! `Drop` is not enough: Rust never drops `static`s (the test fixture keeps
//! its cluster in one) and an aborting or killed process drops nothing. The
//! reaper learns that its owner is gone from its stdin: the owner holds the
//! only write end of that pipe (close-on-exec, so no other child inherits
//! it), and the kernel closes it however the owner ends, exit, abort or
//! SIGKILL. Unlike polling `kill -0 <pid>` this cannot be fooled by a reused
//! pid, and it reacts at once.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::error::LocalClusterError;
use super::exec::Runner;

/// Arguments: the data directories. It only ever stops servers through
/// `pg_ctl -D <one of our data dirs>`, which checks postmaster.pid itself, so
/// nothing this cluster did not start can be touched.
const SCRIPT: &str = r#"
trap '' HUP INT PIPE
while read -r _line; do :; done
for dir in "$@"; do
    if [ -f "$dir/postmaster.pid" ]; then
        "$REAP_PG_CTL" stop -D "$dir" -m immediate -w -t 30 >/dev/null 2>&1 &
    fi
done
wait
if [ "$REAP_KEEP" != 1 ]; then rm -rf -- "$REAP_BASE"; fi
"#;

/// A detached `/bin/sh -c SCRIPT` that runs once its owner is gone (or
/// releases it). Public so that other harnesses (the Patroni test) use the
/// same lifeline with a script of their own.
#[derive(Debug)]
pub struct Reaper {
    child: Child,
    /// Our end of the reaper's stdin; closing it sets the reaper off.
    lifeline: Option<ChildStdin>,
}

impl Reaper {
    /// Runs `script` with `sh -c` through `shell` (a `/bin/sh` command the
    /// caller has given its user and environment), named `name` in ps, with
    /// `args` as `$@`. The script must first wait for its stdin to close
    /// (`while read -r _line; do :; done`). It runs in its own process group
    /// (a Ctrl-C aimed at us must not kill it) with no stdout/stderr of ours:
    /// `cargo test` waits for those pipes to close.
    pub fn start<I, A>(mut shell: Command, script: &str, name: &str, args: I) -> std::io::Result<Reaper>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        shell
            .arg("-c")
            .arg(script)
            .arg(name)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = shell.spawn()?;
        let lifeline = child.stdin.take();
        Ok(Reaper { child, lifeline })
    }

    /// The cluster's reaper, as the servers' user.
    pub(crate) fn spawn(
        runner: &Runner,
        base_dir: &Path,
        data_dirs: &[PathBuf],
        keep: bool,
    ) -> Result<Reaper, LocalClusterError> {
        let mut shell = runner.command("/bin/sh");
        shell
            .env("REAP_PG_CTL", runner.bin_dir().join("pg_ctl"))
            .env("REAP_BASE", base_dir)
            .env("REAP_KEEP", if keep { "1" } else { "0" });
        Reaper::start(shell, SCRIPT, "pgrelay-localcluster-reaper", data_dirs)
            .map_err(LocalClusterError::io("starting the cleanup process (/bin/sh)"))
    }

    /// Sets the reaper off now and waits up to `wait` for it to finish, so
    /// no zombie lingers while we live on; false if it is still running.
    pub fn release(mut self, wait: Duration) -> bool {
        drop(self.lifeline.take());
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                _ => return true,
            }
        }
        false
    }
}
