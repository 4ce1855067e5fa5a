//! What operators use to watch pgrelay: the HTTP endpoints (Prometheus
//! metrics, liveness, readiness, the topology as JSON).

pub mod console;
mod http;

pub use http::{serve, topology_json, HttpState, MAX_HTTP_CONNECTIONS};
