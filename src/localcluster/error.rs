//! What can go wrong while building or driving a local cluster, each variant
//! saying what failed and, where it helps, the tail of the server's log.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many lines of a server log an error carries.
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalClusterError {
    #[error(
        "PostgreSQL server binaries (pg_ctl, initdb, postgres, pg_basebackup and psql in one directory) not found \
         in PATH or /usr/lib/postgresql/*/bin: install postgresql (Debian: apt-get install postgresql) or put \
         its bin directory on PATH"
    )]
    BinariesNotFound,

    #[error(
        "running as root, but there is no `{name}` OS user to run PostgreSQL as (it refuses to run as root): \
         install postgresql, which creates that user, or run as a non-root user"
    )]
    NoServerUser { name: &'static str },

    #[error("cluster directory {path}: {reason}")]
    BaseDir { path: PathBuf, reason: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} failed: {detail}{server_log}")]
    CommandFailed { what: String, detail: String, server_log: String },

    #[error("{what} did not finish within {timeout:?} and was killed{server_log}")]
    TimedOut { what: String, timeout: Duration, server_log: String },

    #[error("replication did not reach 'streaming' within {timeout:?}: {detail} (server logs are under {base_dir})")]
    NotStreaming { timeout: Duration, detail: String, base_dir: PathBuf },
}

impl LocalClusterError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalClusterError {
        let what = what.into();
        move |source| LocalClusterError::Io { what, source }
    }

    /// Attaches the last lines of a server log to a failed or timed-out command.
    pub(crate) fn with_server_log(mut self, log_file: &Path) -> Self {
        if let LocalClusterError::CommandFailed { server_log, .. } | LocalClusterError::TimedOut { server_log, .. } =
            &mut self
        {
            *server_log = log_tail(log_file, LOG_TAIL_LINES);
        }
        self
    }
}

/// The last `lines` lines of a log file, formatted to follow an error message.
pub(crate) fn log_tail(log_file: &Path, lines: usize) -> String {
    match std::fs::read(log_file) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            format!("\n--- last {} lines of {} ---\n{}", tail.len(), log_file.display(), tail.join("\n"))
        }
        Err(e) => format!("\n(server log {} could not be read: {e})", log_file.display()),
    }
}
