//! `[pool] application_name_add_host`: the servers see a client's
//! application_name with its address appended, as PgBouncer sets it, so
//! pg_stat_activity shows who is behind a pooled connection; the client is
//! told the same value; RELOAD turns it on for clients that log in after it.

use std::net::SocketAddr;
use std::time::Duration;

use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::App;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

use crate::support::cluster;
use crate::support::relay::{self, scalar};

const GRACE: Duration = Duration::from_secs(5);

/// The application_name of the server connection running the query.
const OWN_NAME: &str = "select application_name from pg_stat_activity where pid = pg_backend_pid()";

/// A client of pgrelay at `addr` over a socket whose address the test
/// knows; returns it, that address, and the application_name pgrelay
/// reported at login (ParameterStatus).
async fn connect(addr: SocketAddr, application_name: Option<&str>) -> (Client, SocketAddr, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect to pgrelay");
    let local = tcp.local_addr().expect("the client's address");
    let mut config: tokio_postgres::Config =
        relay::conn_string(addr, APP_USER, APP_PASSWORD).parse().expect("a connection string");
    if let Some(name) = application_name {
        config.application_name(name);
    }
    let (client, connection) = config.connect_raw(tcp, NoTls).await.expect("log in through pgrelay");
    let reported = connection.parameter("application_name").unwrap_or_default().to_owned();
    tokio::spawn(connection);
    (client, local, reported)
}

/// What pg_stat_activity on the server says of the server connection that
/// runs `client`'s open transaction, as an operator sees it.
async fn seen_by_the_server(client: &Client) -> String {
    let row = client
        .query_one("select pg_backend_pid(), inet_server_port()", &[])
        .await
        .expect("the server connection's pid and port");
    let (pid, port): (i32, i32) = (row.get(0), row.get(1));
    let node = cluster().nodes().iter().find(|n| i32::from(n.port) == port).expect("a node of the cluster");
    let sql = format!("select application_name from pg_stat_activity where pid = {pid}");
    tokio::task::block_in_place(|| cluster().psql(node, &sql)).expect("psql on the node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_see_each_clients_address_and_so_does_the_client() {
    let app = relay::start_default(cluster(), "application_name_add_host = true\ndefault_pool_size = 1").await;
    let (a, a_addr, a_told) = connect(app.rw_addr, Some("client-a")).await;
    let (b, b_addr, b_told) = connect(app.rw_addr, None).await;
    let (a_name, b_name) = (format!("client-a - {a_addr}"), format!("app - {b_addr}"));
    assert_eq!(a_told, a_name, "the client is told the name the servers see");
    assert_eq!(b_told, b_name, "a client that gave no name is `app`, as in PgBouncer");
    // The pool's one server connection serves both in turn, each time with its client's name.
    for _ in 0..3 {
        assert_eq!(scalar(&a, OWN_NAME).await, a_name);
        assert_eq!(scalar(&b, OWN_NAME).await, b_name);
    }
    assert_eq!(scalar(&a, "show application_name").await, a_name);
    a.batch_execute("begin").await.expect("begin");
    assert_eq!(seen_by_the_server(&a).await, a_name, "pg_stat_activity shows who is behind the connection");
    a.batch_execute("commit").await.expect("commit");
    app.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_servers_see_the_name_as_given() {
    let app = relay::start_default(cluster(), "").await;
    let (client, _, told) = connect(app.rw_addr, Some("plain")).await;
    assert_eq!(told, "plain");
    assert_eq!(scalar(&client, OWN_NAME).await, "plain");
    client.batch_execute("begin").await.expect("begin");
    assert_eq!(seen_by_the_server(&client).await, "plain");
    app.shutdown(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_it_on_for_clients_that_log_in_after_it() {
    let text = |extra: &str| relay::config_toml(cluster(), &format!("default_pool_size = 1\n{extra}"), "");
    let file = relay::TempConfig::new(&text(""));
    let app = App::start_from(&file.0).await.expect("pgrelay starts from the file");
    let (before, _, told) = connect(app.rw_addr, Some("before")).await;
    assert_eq!((told.as_str(), scalar(&before, OWN_NAME).await.as_str()), ("before", "before"));

    file.write(&text("application_name_add_host = true"));
    let summary = app.context().reload();
    assert_eq!(summary.expect("the reload applies").pools_retired, 0, "server connections are kept");
    let (after, after_addr, told) = connect(app.rw_addr, Some("after")).await;
    let after_name = format!("after - {after_addr}");
    assert_eq!(told, after_name);
    // Both on the pool's one server connection, in turn: the client from
    // before the reload stays connected and keeps the name it logged in with.
    for _ in 0..3 {
        assert_eq!(scalar(&before, OWN_NAME).await, "before");
        assert_eq!(scalar(&after, OWN_NAME).await, after_name);
    }
    app.shutdown(GRACE).await;
}
