//! Pause, resume and stop. A pause holds every client's next transaction
//! (not its current one) until resume; a stop either ends everything at once
//! or drains: no new connections, and each client is let go at its next
//! boundary (the end of its transaction, or of its server-side work).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How pgrelay stops, as PgBouncer's signals and SHUTDOWN variants define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGQUIT, `SHUTDOWN`: close everything now.
    Immediate,
    /// SIGINT, `SHUTDOWN WAIT_FOR_SERVERS`: wait until no server is working
    /// for a client; open transactions are rolled back.
    WaitForServers,
    /// SIGTERM, `SHUTDOWN WAIT_FOR_CLIENTS`: let every client finish its
    /// current transaction.
    WaitForClients,
}

impl StopMode {
    fn code(self) -> u8 {
        match self {
            StopMode::Immediate => 1,
            StopMode::WaitForServers => 2,
            StopMode::WaitForClients => 3,
        }
    }

    fn from_code(code: u8) -> Option<StopMode> {
        match code {
            1 => Some(StopMode::Immediate),
            2 => Some(StopMode::WaitForServers),
            3 => Some(StopMode::WaitForClients),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct Lifecycle {
    /// Read on every transaction start: one relaxed load while not paused.
    paused: AtomicBool,
    resumed: watch::Sender<u64>,
    /// Cancelled when draining starts: listeners stop, sessions end at their next boundary.
    draining: CancellationToken,
    drain_mode: AtomicU8,
    /// Stop requests from the admin console, for whoever runs the app.
    stop_requests: watch::Sender<Option<StopMode>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            paused: AtomicBool::new(false),
            resumed: watch::Sender::new(0),
            draining: CancellationToken::new(),
            drain_mode: AtomicU8::new(0),
            stop_requests: watch::Sender::new(None),
        }
    }
}

impl Lifecycle {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Holds new transactions from now on; returns whether it was running.
    pub fn set_paused(&self) -> bool {
        !self.paused.swap(true, Ordering::SeqCst)
    }

    /// Releases held transactions; returns whether it was paused.
    pub fn set_resumed(&self) -> bool {
        let was = self.paused.swap(false, Ordering::SeqCst);
        self.resumed.send_modify(|n| *n += 1);
        was
    }

    /// Waits until not paused (at once when not paused).
    pub async fn wait_resumed(&self) {
        let mut resumed = self.resumed.subscribe();
        while self.is_paused() {
            if resumed.changed().await.is_err() {
                return;
            }
        }
    }

    /// Starts draining (the first mode asked for stays).
    pub fn begin_drain(&self, mode: StopMode) {
        let _ = self.drain_mode.compare_exchange(0, mode.code(), Ordering::SeqCst, Ordering::SeqCst);
        self.draining.cancel();
    }

    pub fn draining(&self) -> &CancellationToken {
        &self.draining
    }

    /// The drain in progress, if any.
    pub fn drain_mode(&self) -> Option<StopMode> {
        StopMode::from_code(self.drain_mode.load(Ordering::Relaxed))
    }

    /// Asks whoever runs pgrelay to stop it (the admin console's SHUTDOWN).
    /// A request for a quicker stop replaces a slower one.
    pub fn request_stop(&self, mode: StopMode) {
        self.stop_requests.send_if_modified(|current| {
            let quicker = current.is_none_or(|c| mode.code() < c.code());
            if quicker {
                *current = Some(mode);
            }
            quicker
        });
    }

    /// Resolves with the next stop request.
    pub async fn stop_requested(&self) -> StopMode {
        let mut requests = self.stop_requests.subscribe();
        loop {
            if let Some(mode) = *requests.borrow_and_update() {
                return mode;
            }
            if requests.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_paused_wait_ends_on_resume() {
        let life = std::sync::Arc::new(Lifecycle::default());
        assert!(life.set_paused());
        assert!(!life.set_paused(), "pausing twice reports it was paused");
        let waiter = tokio::spawn({
            let life = life.clone();
            async move { life.wait_resumed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "held while paused");
        assert!(life.set_resumed());
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("released").expect("task");
    }

    #[tokio::test]
    async fn the_quickest_stop_request_wins() {
        let life = Lifecycle::default();
        life.request_stop(StopMode::WaitForClients);
        life.request_stop(StopMode::Immediate);
        life.request_stop(StopMode::WaitForServers);
        assert_eq!(life.stop_requested().await, StopMode::Immediate);
        life.begin_drain(StopMode::WaitForServers);
        life.begin_drain(StopMode::WaitForClients);
        assert_eq!(life.drain_mode(), Some(StopMode::WaitForServers));
        assert!(life.draining().is_cancelled());
    }
}
