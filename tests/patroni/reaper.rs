//! The cleanup script of the Patroni cluster, run on the same lifeline as
//! `pgrelay::localcluster::Reaper`: a detached shell whose stdin is a pipe only
//! the test process holds open. However the test process ends (return,
//! panic, abort, SIGKILL) the kernel closes the pipe, and the shell then
//! kills what the test started and removes the directory.
//!
//! It only kills pids recorded in `<base>/pids/` whose command line names
//! the base directory (Patroni's config path, etcd's data dir), so a reused
//! pid is never hit; the PostgreSQL servers are stopped through `pg_ctl -D
//! <our data dir>` (it checks postmaster.pid itself). Patroni is killed
//! first, so it cannot restart a server being stopped.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgrelay::localcluster::Reaper;

const SCRIPT: &str = r#"
trap '' HUP INT PIPE TERM
while read -r _line; do :; done
ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$REAP_BASE"; }
for f in "$REAP_BASE"/pids/pg*; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null; fi
done
for dir in "$REAP_BASE"/pg*/data; do
    if [ -f "$dir/postmaster.pid" ]; then
        "$REAP_PG_CTL" stop -D "$dir" -m immediate -w -t 30 >/dev/null 2>&1 &
    fi
done
wait
if [ -f "$REAP_BASE/pids/etcd" ]; then
    pid=$(cat "$REAP_BASE/pids/etcd")
    if ours "$pid"; then kill -KILL "$pid" 2>/dev/null; fi
fi
if [ "$REAP_KEEP" != 1 ]; then rm -rf -- "$REAP_BASE"; fi
"#;

/// How long `release` waits for the reaper to finish.
const RELEASE_WAIT: Duration = Duration::from_secs(40);

/// Starts the reaper as `user` (uid, gid) when given (pg_ctl refuses root),
/// on the library's lifeline mechanism with the script above.
pub fn spawn(base: &Path, pg_ctl: &Path, keep: bool, user: Option<(u32, u32)>) -> std::io::Result<Reaper> {
    let mut shell = Command::new("/bin/sh");
    shell.env("REAP_BASE", base).env("REAP_PG_CTL", pg_ctl).env("REAP_KEEP", if keep { "1" } else { "0" });
    if let Some((uid, gid)) = user {
        shell.uid(uid).gid(gid);
    }
    Reaper::start(shell, SCRIPT, "pgrelay-patroni-reaper", std::iter::empty::<&str>())
}

/// Sets the reaper off now and waits (bounded) for it to finish.
pub fn release(reaper: Reaper) {
    if !reaper.release(RELEASE_WAIT) {
        eprintln!("the Patroni cleanup process is still running; leaving it to finish");
    }
}
