//! Workers (`[pool] workers`): threads that each run a current-thread
//! runtime of their own and run the sessions of the clients handed to them
//! to the end. The runtime pgrelay starts on is worker 0; it also accepts
//! every client (handing each to the least busy worker, itself included)
//! and runs the monitors, the HTTP endpoints and the signals.
//! Nothing on the forwarding path is shared between workers: a session, its
//! client socket and the server connection it leases belong to one worker
//! while it runs. What is process-wide (pools, limits, registries, metrics)
//! is shared state that each worker reaches through the same `Context`.
//!
//! Server connections are pooled for the whole process, each pool's size
//! split into one share per worker (see `pool`). A connection leased on
//! another worker than the one it was last used on moves to it (its socket
//! re-registered with that worker's reactor, see `Stream::rebind`), so no
//! socket is ever polled by a runtime other than the one it is registered
//! with.
//!
//! This module owns only the threads and which worker a thread is (read by
//! the pools, the server connections and the listeners); what a worker runs
//! is given by the entry point (`lib.rs`), which wires the listeners.

use std::cell::Cell;
use std::future::Future;

use tokio::sync::oneshot;

thread_local! {
    static ID: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is (0: the runtime pgrelay started on).
#[inline]
pub fn current() -> usize {
    ID.with(Cell::get)
}

/// Starts worker `id` (1 and up): a thread running a current-thread runtime
/// of its own, on which it runs the future `work` makes to the end. The
/// returned receiver fires when the thread has finished.
pub fn spawn<W, F>(id: usize, work: W) -> std::io::Result<oneshot::Receiver<()>>
where
    W: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()>,
{
    let (done, finished) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name(format!("pgrelay-worker-{id}")).spawn(move || {
        ID.set(id);
        runtime.block_on(work());
        // Whatever is left on this runtime (a reset in progress) goes with it.
        drop(runtime);
        let _ = done.send(());
    })?;
    Ok(finished)
}
