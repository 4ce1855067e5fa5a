//! Workers (`[pool] workers`): threads that each run a current-thread
//! runtime of their own, accept clients on the shared listening sockets and
//! run those clients' sessions to the end. The runtime pgrelay starts on is
//! worker 0; it also runs the monitors, the HTTP endpoints and the signals.
//! Nothing on the forwarding path is shared between workers: a session, its
//! client socket and the server connection it leases belong to one worker
//! while it runs. What is process-wide (pools, limits, registries, metrics)
//! is shared state that each worker reaches through the same `Context`.
//!
//! Server connections are pooled for the whole process. One that was last
//! used on another worker is moved to the worker that leases it (its socket
//! re-registered with that worker's reactor, see `Stream::rebind`), so no
//! socket is ever polled by a runtime other than the one it is registered
//! with.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::app::Context;
use crate::frontend;
use crate::router::ListenerKind;

thread_local! {
    static ID: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is (0: the runtime pgrelay started on).
#[inline]
pub fn current() -> usize {
    ID.with(Cell::get)
}

/// How long a worker lets its last sessions say goodbye once pgrelay stops.
const FINAL_WAIT: Duration = Duration::from_secs(2);

/// Starts workers 1..`count`, each accepting on its own handle of the `rw`
/// and `ro` listening sockets; returns one receiver per worker that fires
/// when the worker's thread has finished.
pub fn start(
    ctx: &Arc<Context>,
    count: usize,
    rw: &std::net::TcpListener,
    ro: &std::net::TcpListener,
) -> std::io::Result<Vec<oneshot::Receiver<()>>> {
    let mut finished = Vec::with_capacity(count.saturating_sub(1));
    for id in 1..count {
        let (rw, ro) = (rw.try_clone()?, ro.try_clone()?);
        let ctx = ctx.clone();
        let (done, finished_rx) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name(format!("pgrelay-worker-{id}")).spawn(move || {
            ID.set(id);
            runtime.block_on(run(ctx, rw, ro));
            // Whatever is left on this runtime (a reset in progress) goes with it.
            drop(runtime);
            let _ = done.send(());
        })?;
        finished.push(finished_rx);
    }
    Ok(finished)
}

/// One worker: accepts on both listeners until pgrelay drains, keeps
/// running its sessions until pgrelay stops, then lets them finish (bounded).
async fn run(ctx: Arc<Context>, rw: std::net::TcpListener, ro: std::net::TcpListener) {
    let listeners = (TcpListener::from_std(rw), TcpListener::from_std(ro));
    let (Ok(rw), Ok(ro)) = listeners else {
        tracing::error!(worker = current(), "a worker could not register the listening sockets; it serves nobody");
        return;
    };
    tokio::join!(
        frontend::serve(ctx.clone(), rw, ListenerKind::ReadWrite),
        frontend::serve(ctx.clone(), ro, ListenerKind::ReadOnly),
    );
    ctx.shutdown.cancelled().await;
    let _ = tokio::time::timeout(FINAL_WAIT, ctx.client_tasks.wait()).await;
}
