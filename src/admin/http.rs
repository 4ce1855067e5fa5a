//! HTTP on `[listen] http`: `GET /metrics` (Prometheus text), `/livez`
//! (the process runs), `/readyz` (200 once a primary is known and pgrelay is
//! not draining, else 503 with the reason), `/topology` (JSON). Served with
//! hyper, HTTP/1.1, one task per connection owned by the app's task tracker;
//! at most [`MAX_HTTP_CONNECTIONS`] at once, each closed when a request's
//! headers (or the next request on an idle connection) take longer than
//! `[listen] http_header_timeout`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::failover::{FailoverClock, Outage, Stamp};
use crate::cluster::{ClusterView, Topology};
use crate::config::Role;
use crate::metrics::failovers::FailoverFigures;
use crate::metrics::Metrics;
use crate::router::format_lsn;

/// What the endpoints read.
#[derive(Debug)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub cluster: Arc<ClusterView>,
    /// Cancelled when pgrelay starts draining: /readyz turns 503 at once.
    pub draining: CancellationToken,
    /// How long a client may take to send a request's headers; an idle
    /// keep-alive connection is closed after as long.
    pub header_timeout: Duration,
}

/// HTTP connections open at once. Probes and scrapers need a handful; one
/// more is closed at once, so stalled connections cannot take the process's
/// file descriptors (each lasts at most `header_timeout` without a request).
pub const MAX_HTTP_CONNECTIONS: usize = 64;

impl HttpState {
    /// Ready means: a primary is known and pgrelay is not draining.
    fn readiness(&self) -> Result<(), String> {
        if self.draining.is_cancelled() {
            return Err("draining: pgrelay is shutting down".into());
        }
        let topology = self.cluster.load();
        match topology.primary {
            Some(_) => Ok(()),
            None => {
                Err(format!("no primary: {}", topology.no_primary_reason.as_deref().unwrap_or("none is known yet")))
            }
        }
    }
}

/// Accepts HTTP connections until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, shutdown: CancellationToken, tasks: TaskTracker) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = MAX_HTTP_CONNECTIONS, "too many HTTP connections: closed at once");
            continue;
        };
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let header_timeout = state.header_timeout;
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "http connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(state: &HttpState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET is served\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            state.metrics.observe_topology(&state.cluster.load());
            state.metrics.observe_primary_changes(state.cluster.primary_changes());
            state.metrics.failovers.update(&failover_figures(&state.cluster.failovers()));
            reply(StatusCode::OK, "text/plain; version=0.0.4", state.metrics.render())
        }
        "/livez" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match state.readiness() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
        },
        "/topology" => {
            let mut topology = topology_json(&state.cluster.load());
            topology["last_failover"] = state.cluster.failovers().latest().map_or(Value::Null, outage_json);
            let body = serde_json::to_string_pretty(&topology).expect("JSON value");
            reply(StatusCode::OK, "application/json", body + "\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics /livez /readyz /topology\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// The topology as operators read it: each node's role, lag, and whether it
/// serves reads (and why not).
pub fn topology_json(topology: &Topology) -> Value {
    let nodes: Vec<Value> = topology
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let role = match node.role {
                Some(Role::Primary) => "primary",
                Some(Role::Replica) => "replica",
                None => "unknown",
            };
            json!({
                "name": node.name,
                "host": node.host,
                "port": node.port,
                "role": role,
                "is_primary": topology.primary == Some(i),
                "in_read_set": topology.read_set.contains(&i),
                "lag_bytes": node.lag_bytes,
                "lag_seconds": node.lag.map(|d| d.as_secs_f64()),
                "excluded": node.excluded,
                "application_name": node.application_name,
                "sync_state": (node.role == Some(Role::Replica)).then(|| node.sync_state.as_str()),
                "wal_lsn": node.wal_lsn.map(format_lsn),
                "on_primary": node.streamed.map(|s| json!({
                    "write_lsn": s.write_lsn.map(format_lsn),
                    "flush_lsn": s.flush_lsn.map(format_lsn),
                    "replay_lsn": s.replay_lsn.map(format_lsn),
                })),
            })
        })
        .collect();
    json!({
        "primary": topology.primary.map(|i| topology.nodes[i].name.clone()),
        "no_primary_reason": topology.no_primary_reason,
        "split_brain": topology.split_brain,
        "synchronous_standby_names": topology.synchronous_standby_names,
        "nodes": nodes,
    })
}

/// The clock's figures as the metrics take them.
fn failover_figures(clock: &FailoverClock) -> FailoverFigures {
    let (periods, recent) = clock.periods();
    FailoverFigures {
        periods,
        recent: recent.collect(),
        current: clock.current(std::time::Instant::now()),
        failovers: clock.failovers().map(|(kind, count)| (kind.as_str(), count)).collect(),
    }
}

/// The open or last period without a writable primary: each step with its
/// time (RFC 3339, UTC) and its distance in seconds from the period's start
/// (the old primary's last successful check).
pub fn outage_json(outage: &Outage) -> Value {
    let start = outage.last_seen;
    let step = |stamp: Option<Stamp>| match stamp {
        Some(stamp) => json!({
            "at": humantime::format_rfc3339_millis(stamp.wall).to_string(),
            "seconds": stamp.at.saturating_duration_since(start.at).as_secs_f64(),
        }),
        None => Value::Null,
    };
    json!({
        "kind": outage.kind.as_str(),
        "lost_primary": outage.lost_primary,
        "new_primary": outage.new_primary.as_ref().map(|(name, _)| name),
        "primary_changed": outage.changed_primary(),
        "last_seen_as_primary": step(Some(start)),
        "lost": step(Some(outage.lost_at)),
        "new_primary_seen": step(outage.new_primary.as_ref().map(|(_, seen)| *seen)),
        "first_write_routed": step(outage.first_write),
        "ongoing": outage.first_write.is_none(),
        "unavailable_seconds": outage.duration(std::time::Instant::now()).as_secs_f64(),
    })
}
