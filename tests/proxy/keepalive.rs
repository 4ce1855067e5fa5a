//! `[pool] tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl`, `tcp_keepcnt`
//! and `tcp_user_timeout` on both sides of pgrelay: the options are read
//! back with getsockopt from pgrelay's own sockets, the one a client
//! connected to and the one to the server, which live in this process (the
//! tests run pgrelay in it).

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;
use socket2::SockRef;

use crate::support::cluster;
use crate::support::relay::{self, Raw};

const GRACE: Duration = Duration::from_secs(5);

/// Values no system uses by default, so seeing them proves pgrelay set them.
const TUNED: &str = "tcp_keepidle = \"1234s\"\ntcp_keepintvl = \"17s\"\ntcp_keepcnt = 5\ntcp_user_timeout = \"4321ms\"";

/// A socket's options as getsockopt reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    keepalive: bool,
    idle: Duration,
    interval: Duration,
    count: u32,
    user_timeout: Option<Duration>,
}

const TUNED_OPTIONS: Options = Options {
    keepalive: true,
    idle: Duration::from_secs(1234),
    interval: Duration::from_secs(17),
    count: 5,
    user_timeout: Some(Duration::from_millis(4321)),
};

/// The options of this process's TCP socket from `local` to a peer that
/// `peer` accepts, or None when there is none.
fn socket_options(local: SocketAddr, peer: impl Fn(SocketAddr) -> bool) -> Option<Options> {
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").flatten() {
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|name| name.parse::<RawFd>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is only read through (getsockname,
        // getpeername, getsockopt) and never closed here. One closed by
        // another thread meanwhile fails those calls, or names another
        // socket, whose addresses do not match.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&fd);
        let addr = |a: std::io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
        let (Some(this), Some(other)) = (addr(socket.local_addr()), addr(socket.peer_addr())) else { continue };
        if this != local || !peer(other) {
            continue;
        }
        let read = || -> std::io::Result<Options> {
            Ok(Options {
                keepalive: socket.keepalive()?,
                idle: socket.tcp_keepalive_time()?,
                interval: socket.tcp_keepalive_interval()?,
                count: socket.tcp_keepalive_retries()?,
                user_timeout: socket.tcp_user_timeout()?,
            })
        };
        return Some(read().unwrap_or_else(|e| panic!("getsockopt on {this} -> {other}: {e}")));
    }
    None
}

/// What pgrelay set on the socket a client connected to and on the socket
/// of the server connection that served the client's first query.
struct Sides {
    client: Options,
    server: Options,
    /// pgrelay's end of that server connection (the server's client_addr and client_port).
    server_local: SocketAddr,
    /// The client, still connected.
    raw: Raw,
}

/// Logs a client in to `app` (over a socket whose address the test knows),
/// runs one query, and reads both of pgrelay's sockets.
async fn read_sides(app: &pgrelay::RunningApp) -> Sides {
    let (mut raw, _) = Raw::login(app.rw_addr, &[]).await;
    let mut query = BytesMut::new();
    pgrelay::wire::put_query(&mut query, "select host(inet_client_addr()) || ' ' || inet_client_port()");
    raw.send(&query).await;
    let answer = raw.until_ready().await;
    let row = answer.iter().find(|(tag, _)| *tag == b'D').unwrap_or_else(|| panic!("no row: {answer:?}"));
    // DataRow: the column count (2 bytes), the value's length (4), the value.
    let text = std::str::from_utf8(&row.1[6..]).expect("text");
    let (ip, port) = text.split_once(' ').expect("address and port");
    let server_local = SocketAddr::new(ip.parse().expect("an IP"), port.parse().expect("a port"));
    let client = raw.stream.local_addr().expect("the test client's address");
    Sides {
        client: socket_options(app.rw_addr, |peer| peer == client).expect("pgrelay's socket for the client"),
        server: server_socket_options(server_local).expect("pgrelay's socket to the server"),
        server_local,
        raw,
    }
}

/// The options of pgrelay's socket from `local` to a server of the cluster.
fn server_socket_options(local: SocketAddr) -> Option<Options> {
    let nodes: Vec<SocketAddr> = cluster().nodes().iter().map(|node| node.addr()).collect();
    socket_options(local, |peer| nodes.contains(&peer))
}

#[tokio::test]
async fn keepalive_and_user_timeout_are_set_on_client_and_server_sockets() {
    let app = relay::start_default(cluster(), TUNED).await;
    let sides = read_sides(&app).await;
    assert_eq!(sides.client, TUNED_OPTIONS, "the socket a client connected to");
    assert_eq!(sides.server, TUNED_OPTIONS, "the socket to the server");
    // The test's own end of the client connection: nobody set anything on it.
    let test_end = sides.raw.stream.local_addr().unwrap();
    let untouched = socket_options(test_end, |peer| peer == app.rw_addr).expect("the test client's socket");
    assert!(!untouched.keepalive && untouched.user_timeout.is_none(), "{untouched:?}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn keepalive_is_on_with_the_system_values_by_default_and_off_on_request() {
    let app = relay::start_default(cluster(), "").await;
    let sides = read_sides(&app).await;
    for (side, options) in [("client", sides.client), ("server", sides.server)] {
        assert!(options.keepalive, "{side} side: keepalive is on by default");
        assert_eq!(options.user_timeout, None, "{side} side: no TCP_USER_TIMEOUT by default");
    }
    app.shutdown(GRACE).await;

    let app = relay::start_default(cluster(), "tcp_keepalive = false").await;
    let sides = read_sides(&app).await;
    assert!(!sides.client.keepalive && !sides.server.keepalive, "{:?} {:?}", sides.client, sides.server);
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_reload_changes_the_options_of_new_sockets_and_leaves_open_ones_alone() {
    let app = relay::start_default(cluster(), &format!("{TUNED}\ndefault_pool_size = 1")).await;
    let first = read_sides(&app).await;
    assert_eq!((first.client, first.server), (TUNED_OPTIONS, TUNED_OPTIONS));

    let changed = "tcp_keepidle = \"99s\"\ntcp_keepintvl = \"7s\"\ntcp_keepcnt = 2\ntcp_user_timeout = \"0\"";
    let config = relay::config(cluster(), &format!("{changed}\ndefault_pool_size = 1"));
    let summary = app.context().apply_config(config).expect("the reload applies");
    assert_eq!(summary.pools_retired, 0, "a change of TCP options keeps the pools and their connections");
    let expected = Options {
        keepalive: true,
        idle: Duration::from_secs(99),
        interval: Duration::from_secs(7),
        count: 2,
        user_timeout: None,
    };

    // The first client's socket and the pool's server connection keep theirs.
    let first_end = first.raw.stream.local_addr().unwrap();
    assert_eq!(socket_options(app.rw_addr, |peer| peer == first_end), Some(TUNED_OPTIONS), "open client socket");
    assert_eq!(server_socket_options(first.server_local), Some(TUNED_OPTIONS), "open server socket");

    // PAUSE closes the idle server connection, so the next query opens one:
    // it, and the socket of a client accepted after the reload, get the new options.
    app.context().pause().await;
    app.context().resume();
    let second = read_sides(&app).await;
    assert_ne!(second.server_local, first.server_local, "a new server connection");
    assert_eq!((second.client, second.server), (expected, expected), "sockets opened after the reload");
    app.shutdown(GRACE).await;
}
