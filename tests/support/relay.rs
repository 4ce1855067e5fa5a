//! Starting pgrelay in front of the test cluster, and clients for it: real
//! tokio-postgres clients, and a raw protocol client for edge cases that a
//! well-behaved driver never produces.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pgrelay::config::Config;
use pgrelay::localcluster::{LocalCluster, APP_DATABASE, APP_PASSWORD, APP_USER, TRUST_USER};
use pgrelay::{App, RunningApp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Every listener on a free loopback port: tests never collide.
pub const LISTEN_ANY: &str = "[listen]\nrw = \"127.0.0.1:0\"\nro = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n";

/// A config for `cluster` with static roles, all listeners on free loopback
/// ports, and `extra` TOML appended to the given sections.
pub fn config_toml(cluster: &LocalCluster, pool_extra: &str, users_extra: &str) -> String {
    let mut nodes = String::new();
    let role = |i: usize| if i == 0 { "primary" } else { "replica" };
    for (i, node) in cluster.nodes().iter().enumerate() {
        nodes.push_str(&format!(
            "[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"{}\"\n\n",
            node.name,
            node.port,
            role(i)
        ));
    }
    // A key in `pool_extra` replaces the base value.
    let workers = format!("workers = {}", super::test_workers());
    let base =
        ["default_pool_size = 4", "query_wait_timeout = \"5s\"", "client_login_timeout = \"10s\"", workers.as_str()];
    let overridden = |line: &&str| {
        let key = line.split('=').next().unwrap_or("").trim();
        pool_extra.lines().any(|l| l.split('=').next().unwrap_or("").trim() == key)
    };
    let pool: Vec<&str> = base.iter().filter(|l| !overridden(l)).copied().chain(pool_extra.lines()).collect();
    let pool = pool.join("\n");
    format!(
        r#"
{LISTEN_ANY}
[pool]
{pool}

[cluster]
source = "static"
user = "postgres"

{nodes}
[[users]]
name = "app"
password = "app"
{users_extra}

[[users]]
name = "app_md5"
password = "app_md5"
auth_type = "md5"

[[users]]
name = "app_trust"
auth_type = "trust"

[[databases]]
name = "app"
"#
    )
}

pub fn config(cluster: &LocalCluster, pool_extra: &str) -> Config {
    Config::parse(&config_toml(cluster, pool_extra, "")).expect("test config is valid")
}

/// Starts pgrelay in this process, with `[pool] workers` as the suite runs
/// (see [`super::test_workers`]).
pub async fn start(mut config: Config) -> RunningApp {
    config.pool.workers = super::test_workers();
    App::start(config).await.expect("pgrelay starts")
}

/// Starts pgrelay with the default test config plus `pool_extra` in [pool].
pub async fn start_default(cluster: &LocalCluster, pool_extra: &str) -> RunningApp {
    start(config(cluster, pool_extra)).await
}

pub fn conn_string(addr: SocketAddr, user: &str, password: &str) -> String {
    super::connect_string(addr.port(), user, password, APP_DATABASE)
}

/// A connected tokio-postgres client whose notices are delivered to the receiver.
pub struct Conn {
    pub client: Client,
    pub notices: mpsc::UnboundedReceiver<AsyncMessage>,
}

pub async fn connect_as(addr: SocketAddr, user: &str, password: &str) -> Result<Conn, tokio_postgres::Error> {
    connect_with(&conn_string(addr, user, password)).await
}

pub async fn connect_with(conn_str: &str) -> Result<Conn, tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    let (tx, notices) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(m) => {
                    let _ = tx.send(m);
                }
                Err(_) => break,
            }
        }
    });
    Ok(Conn { client, notices })
}

/// The `app` user, SCRAM through pgrelay.
pub async fn connect(addr: SocketAddr) -> Client {
    connect_as(addr, APP_USER, APP_PASSWORD).await.expect("connect through pgrelay").client
}

/// Runs one query returning a single text value.
pub async fn scalar(client: &Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// The server's (or pgrelay's) message of an error.
pub fn message(error: &tokio_postgres::Error) -> String {
    error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| error.to_string())
}

/// The SQLSTATE of an error, as text.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

/// A hand-driven protocol connection, over TCP or anything else that
/// carries bytes (TLS in the client TLS tests).
pub struct Raw<S = TcpStream> {
    pub stream: S,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw { stream, buf: BytesMut::new() }
    }

    /// Connects and logs in as the trust user; returns after the first ReadyForQuery.
    pub async fn login(addr: SocketAddr, extra: &[(&str, &str)]) -> (Raw, Vec<(u8, Bytes)>) {
        let mut raw = Raw::connect(addr).await;
        let mut out = BytesMut::new();
        let mut params: Vec<(&[u8], &[u8])> = vec![(b"user", TRUST_USER.as_bytes()), (b"database", b"app")];
        params.extend(extra.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        pgrelay::wire::put_startup_message(&mut out, params);
        raw.send(&out).await;
        let welcome = raw.until_ready().await;
        assert!(welcome.iter().any(|(t, _)| *t == b'Z'), "login did not finish: {welcome:?}");
        (raw, welcome)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to pgrelay");
    }

    /// The next message, or None when the connection closed (5 s limit).
    pub async fn recv(&mut self) -> Option<(u8, Bytes)> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if self.buf.len() >= 5 {
                    let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                    if self.buf.len() > len {
                        let mut msg = self.buf.split_to(len + 1).freeze();
                        let tag = msg.get_u8();
                        msg.advance(4);
                        return Some((tag, msg));
                    }
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("pgrelay answered within 5 s")
    }

    /// Messages up to and including the next ReadyForQuery (or the close).
    pub async fn until_ready(&mut self) -> Vec<(u8, Bytes)> {
        let mut messages = Vec::new();
        while let Some(msg) = self.recv().await {
            let ready = msg.0 == b'Z';
            messages.push(msg);
            if ready {
                break;
            }
        }
        messages
    }

    /// True when the peer closed the connection (after any pending messages).
    pub async fn closed(&mut self) -> bool {
        while self.recv().await.is_some() {}
        true
    }
}

/// The SQLSTATE and message of an ErrorResponse body.
pub fn error_fields(body: &[u8]) -> (String, String) {
    let fields = pgrelay::wire::ErrorFields::parse(body);
    (fields.code, fields.message)
}

/// The tags of a message list, as a string ("1 2 D C Z").
pub fn tags(messages: &[(u8, Bytes)]) -> String {
    messages.iter().map(|(t, _)| char::from(*t).to_string()).collect::<Vec<_>>().join(" ")
}

/// Frontend messages the raw-protocol tests build (no parameters, text results).
pub mod msg {
    use bytes::{BufMut, BytesMut};
    use pgrelay::wire;

    /// Parse of `sql` as statement `name` ("" = unnamed), no parameter types.
    pub fn parse(buf: &mut BytesMut, name: &str, sql: &str) {
        let mut rest = sql.as_bytes().to_vec();
        rest.extend_from_slice(&[0, 0, 0]); // NUL, no parameter types
        wire::put_parse_renamed(buf, name.as_bytes(), &rest);
    }

    /// Bind of `statement` to the unnamed portal: no parameters, no result formats.
    pub fn bind(buf: &mut BytesMut, statement: &str) {
        wire::put_bind_renamed(buf, b"", statement.as_bytes(), &[0, 0, 0, 0, 0, 0]);
    }

    /// Execute of the unnamed portal, all rows.
    pub fn execute(buf: &mut BytesMut) {
        buf.put_u8(b'E');
        buf.put_u32(9);
        buf.put_u8(0);
        buf.put_u32(0);
    }

    pub fn bind_execute(buf: &mut BytesMut, statement: &str) {
        bind(buf, statement);
        execute(buf);
    }

    pub fn flush(buf: &mut BytesMut) {
        buf.put_u8(b'H');
        buf.put_u32(4);
    }
}

/// A bounded HTTP/1.1 GET of pgrelay's HTTP listener; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: pgrelay\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("HTTP answer within 5 s");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (a metric name with its labels, as
/// /metrics prints it) in a /metrics scrape; `None` when it is absent.
pub async fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A config file in the temporary directory, removed on drop.
pub struct TempConfig(pub std::path::PathBuf);

impl TempConfig {
    pub fn new(text: &str) -> TempConfig {
        let unique = format!("pgrelay-test-{}-{:?}.toml", std::process::id(), std::time::Instant::now());
        let path = std::env::temp_dir().join(unique.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "-"));
        std::fs::write(&path, text).expect("write config");
        TempConfig(path)
    }

    /// Replaces the file's text (before a RELOAD).
    pub fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap_or_else(|e| panic!("write {}: {e}", self.0.display()));
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
