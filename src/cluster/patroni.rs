//! `source = "patroni"`: who the primary is comes from Patroni's leader key,
//! read from `GET /cluster` on the first member whose REST API answers;
//! the SQL monitors keep measuring lag (Patroni's lag figure can be stale)
//! and confirm the leader is out of recovery before it gets writes. Tags:
//! `noloadbalance` keeps a replica out of the read set; `nofailover` only
//! steers Patroni's own elections and is recorded, not acted on.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// `/cluster` bodies are a few kB; anything past this is not Patroni.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("invalid Patroni URL {0:?}")]
    Url(String),
    #[error("{url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: body: {message}")]
    Body { url: String, message: String },
    #[error("{url}: no answer within check_timeout ({timeout:?})")]
    Timeout { url: String, timeout: Duration },
    #[error("unexpected /cluster body: {0}")]
    Json(#[from] serde_json::Error),
}

/// What Patroni says about the configured nodes, by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniView {
    /// The member holding the leader key, when it is one of our nodes.
    pub leader: Option<usize>,
    /// Why there is no leader, when there is none.
    pub no_leader_reason: Option<String>,
    pub noloadbalance: Vec<bool>,
    pub nofailover: Vec<bool>,
}

#[derive(Debug, Deserialize)]
struct ClusterBody {
    members: Vec<Member>,
}

#[derive(Debug, Deserialize)]
struct Member {
    name: String,
    role: String,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    tags: serde_json::Map<String, serde_json::Value>,
}

impl Member {
    fn tag(&self, name: &str) -> bool {
        match self.tags.get(name) {
            Some(serde_json::Value::Bool(set)) => *set,
            Some(serde_json::Value::String(text)) => text.eq_ignore_ascii_case("true"),
            _ => false,
        }
    }
}

/// The configured node a member is: same name, else same host and port.
fn node_of(member: &Member, nodes: &[(String, String, u16)]) -> Option<usize> {
    nodes.iter().position(|(name, _, _)| *name == member.name).or_else(|| {
        let host = member.host.as_deref()?;
        nodes.iter().position(|(_, h, p)| h == host && Some(*p) == member.port)
    })
}

/// Reads a `/cluster` body against the configured nodes (name, host, port).
pub fn parse_cluster(body: &[u8], nodes: &[(String, String, u16)]) -> Result<PatroniView, PatroniError> {
    let body: ClusterBody = serde_json::from_slice(body)?;
    let mut view = PatroniView {
        leader: None,
        no_leader_reason: None,
        noloadbalance: vec![false; nodes.len()],
        nofailover: vec![false; nodes.len()],
    };
    let mut leader_name = None;
    for member in &body.members {
        let node = node_of(member, nodes);
        if let Some(i) = node {
            view.noloadbalance[i] = member.tag("noloadbalance");
            view.nofailover[i] = member.tag("nofailover");
        }
        // `/cluster` says "leader"; older versions and `/patroni` say "master".
        if matches!(member.role.as_str(), "leader" | "master" | "primary") {
            leader_name = Some(member.name.clone());
            view.leader = node;
        }
    }
    view.no_leader_reason = match (&leader_name, view.leader) {
        (_, Some(_)) => None,
        (Some(name), None) => Some(format!("the Patroni leader {name:?} is not one of the configured [[nodes]]")),
        (None, None) => Some("Patroni reports no leader".to_owned()),
    };
    Ok(view)
}

/// `GET {base}/cluster`, bounded by `timeout`.
pub async fn fetch_cluster(base: &str, timeout: Duration) -> Result<Bytes, PatroniError> {
    let url = format!("{}/cluster", base.trim_end_matches('/'));
    tokio::time::timeout(timeout, get(&url))
        .await
        .unwrap_or_else(|_| Err(PatroniError::Timeout { url: url.clone(), timeout }))
}

async fn get(url: &str) -> Result<Bytes, PatroniError> {
    let uri: hyper::Uri = url.parse().map_err(|_| PatroniError::Url(url.to_owned()))?;
    let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
        return Err(PatroniError::Url(url.to_owned()));
    };
    let stream = TcpStream::connect((host, uri.port_u16().unwrap_or(80)))
        .await
        .map_err(|source| PatroniError::Connect { url: url.to_owned(), source })?;
    let http = |source| PatroniError::Http { url: url.to_owned(), source };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|_| PatroniError::Url(url.to_owned()))?;
    // Owns the sender: once the answer is in, dropping it lets the connection finish.
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http)?;
        if !response.status().is_success() {
            return Err(PatroniError::Status { url: url.to_owned(), status: response.status().as_u16() });
        }
        let body = Limited::new(response.into_body(), MAX_BODY).collect().await;
        body.map(|b| b.to_bytes()).map_err(|e| PatroniError::Body { url: url.to_owned(), message: e.to_string() })
    };
    // The connection future drives the socket; its own error shows in the exchange's.
    let (answer, _closed) = tokio::join!(exchange, connection);
    answer
}
