//! The real `pgrelay run -c FILE` as a child process: started with its
//! stderr (JSON logs) in a file, its addresses read from the log, signals
//! sent with `kill -s`, and killed by its PID when a test ends early.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::common::{get, wait_until, ConfigFile};

/// A running `pgrelay run`, killed when dropped if it is still running.
pub struct Relay {
    child: Child,
    log: PathBuf,
    pub config: ConfigFile,
    pub rw: SocketAddr,
    pub ro: SocketAddr,
    pub http: SocketAddr,
}

impl Relay {
    /// Starts the binary on a config file holding `text`; returns once it
    /// answers `/readyz` with 200.
    pub async fn start(what: &str, text: &str) -> Relay {
        let config = ConfigFile::new(what, text);
        let log = config.path().with_extension("log");
        let stderr = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_pgrelay"))
            .args(["--log-format", "json", "run", "-c"])
            .arg(config.path())
            .env("PGRELAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn pgrelay");
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut relay = Relay { child, log, config, rw: unbound, ro: unbound, http: unbound };
        let ((rw, ro, http), _) = wait_until("pgrelay logs its addresses", Duration::from_secs(15), || {
            let found = relay.listening();
            async move { found }
        })
        .await;
        (relay.rw, relay.ro, relay.http) = (rw, ro, http);
        // `run` installs its signal handlers before its single-threaded
        // runtime serves anything: an answer means a signal is now handled.
        wait_until("/readyz answers 200", Duration::from_secs(10), || async {
            (get(http, "/readyz").await.0 == 200).then_some(())
        })
        .await;
        relay
    }

    /// The addresses of the "pgrelay listening" log line, once written.
    fn listening(&mut self) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgrelay exited during start-up ({status}):\n{}", self.log_text());
        }
        self.log_text().lines().find_map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &entry["fields"];
            if fields["message"] != "pgrelay listening" {
                return None;
            }
            let addr = |name: &str| fields[name].as_str()?.parse::<SocketAddr>().ok();
            Some((addr("rw")?, addr("ro")?, addr("http")?))
        })
    }

    /// What pgrelay logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends signal `name` ("TERM", "HUP", ...) to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("/bin/kill").args(["-s", name, &pid]).status().expect("run /bin/kill");
        assert!(status.success(), "kill -s {name} {pid}: {status}");
    }

    /// Waits (at most `limit`) for the process to exit.
    pub async fn exit_status(&mut self, limit: Duration) -> ExitStatus {
        let (status, _) = wait_until("pgrelay exits", limit, || {
            let status = self.child.try_wait().expect("wait for pgrelay");
            async move { status }
        })
        .await;
        status
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("pgrelay's log ({}):\n{}", self.log.display(), self.log_text());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
