//! PgBouncer's server-side pool controls against the real primary:
//! `server_lifetime`, `server_check_delay`, `min_pool_size`,
//! `reserve_pool_size`, `max_db_connections`, `max_user_connections`,
//! per-user and per-database pool sizes and modes, and RELOAD changing them
//! without dropping clients.
//! Each test logs in as a role of its own, so that its server connections
//! can be told apart in `pg_stat_activity` from those of the tests running
//! beside it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgrelay::localcluster::LocalCluster;
use pgrelay::pool::CapKind;
use pgrelay::{App, RunningApp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::support::relay::{self, scalar};
use crate::support::{cluster, connect_string};

const GRACE: Duration = Duration::from_secs(5);
/// Every role of these tests logs in with this password.
const PASSWORD: &str = "pool-controls";
/// One role per test.
const ROLES: [&str; 13] = [
    "pc_lifetime",
    "pc_reload",
    "pc_killed",
    "pc_cut",
    "pc_min",
    "pc_reserve",
    "pc_capdb",
    "pc_capuser",
    "pc_usersize",
    "pc_modes",
    "pc_reload_min",
    "pc_capwait",
    "pc_reload_rest",
];

/// The cluster, with this module's roles created once per binary.
fn prepared() -> &'static LocalCluster {
    static PREPARED: OnceLock<()> = OnceLock::new();
    let cluster = cluster();
    PREPARED.get_or_init(|| {
        for role in ROLES {
            let sql = format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'");
            cluster.psql(cluster.primary(), &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    });
    cluster
}

/// The test config with `[pool]` lines `pool` and the `[[users]]` entry of `role`.
fn config_text(cluster: &LocalCluster, pool: &str, role: &str) -> String {
    let user = format!("\n[[users]]\nname = \"{role}\"\npassword = \"{PASSWORD}\"\n");
    relay::config_toml(cluster, pool, &user)
}

async fn start(cluster: &LocalCluster, pool: &str, role: &str) -> RunningApp {
    relay::start(pgrelay::config::Config::parse(&config_text(cluster, pool, role)).expect("valid config")).await
}

async fn connect(app: &RunningApp, role: &str) -> Client {
    relay::connect_as(app.rw_addr, role, PASSWORD).await.unwrap_or_else(|e| panic!("{role} logs in: {e}")).client
}

/// A superuser connection straight to the primary, to look at pg_stat_activity.
async fn observer(cluster: &LocalCluster) -> Client {
    let conn = connect_string(cluster.primary().port, "postgres", "", "app");
    relay::connect_with(&conn).await.expect("connect to the primary").client
}

/// The backend pids of `role`'s server connections on the primary.
async fn server_pids(observer: &Client, role: &str) -> Vec<i32> {
    let sql = "select pid from pg_stat_activity where usename = $1 and backend_type = 'client backend' order by pid";
    let rows = observer.query(sql, &[&role]).await.expect("pg_stat_activity");
    rows.iter().map(|row| row.get(0)).collect()
}

/// Polls `server_pids` until `done` says so, for at most `limit`; returns the last pids seen.
async fn wait_for_pids(
    observer: &Client,
    role: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&[i32]) -> bool,
) -> Vec<i32> {
    let started = Instant::now();
    loop {
        let pids = server_pids(observer, role).await;
        if done(&pids) {
            return pids;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?} (pids {pids:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backend_pid(client: &Client) -> String {
    scalar(client, "select pg_backend_pid()").await
}

#[tokio::test]
async fn server_lifetime_replaces_a_connection_when_its_transaction_ends() {
    let cluster = prepared();
    let role = "pc_lifetime";
    let app = start(cluster, "default_pool_size = 1\nserver_lifetime = \"1s\"", role).await;
    let observer = observer(cluster).await;
    let client = connect(&app, role).await;
    let first = backend_pid(&client).await;
    // A transaction that outlives server_lifetime keeps its connection to its
    // end (the janitor, a few times a second, marks the connection as old).
    client.batch_execute("begin; select pg_sleep(1.5)").await.unwrap();
    assert_eq!(backend_pid(&client).await, first, "the same server connection until the transaction ends");
    client.batch_execute("commit").await.unwrap();
    let second = backend_pid(&client).await;
    assert_ne!(second, first, "a connection older than server_lifetime is not reused");
    let first: i32 = first.parse().unwrap();
    let pids =
        wait_for_pids(&observer, role, Duration::from_secs(5), "the old backend exits", |pids| !pids.contains(&first))
            .await;
    assert_eq!(pids.len(), 1, "one server connection at a time (pool size 1): {pids:?}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn reload_sets_server_lifetime_without_dropping_clients() {
    let cluster = prepared();
    let role = "pc_reload";
    let file = relay::TempConfig::new(&config_text(cluster, "default_pool_size = 1\nserver_lifetime = \"0\"", role));
    let app = App::start_from(&file.0).await.expect("pgrelay starts");
    let client = connect(&app, role).await;
    let first = backend_pid(&client).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(backend_pid(&client).await, first, "no lifetime: the connection stays");
    file.write(&config_text(cluster, "default_pool_size = 1\nserver_lifetime = \"1s\"", role));
    app.context().reload().expect("reload");
    // The connection is over a second old by now: the next transaction's end closes it.
    assert_eq!(backend_pid(&client).await, first, "the client keeps its session and its connection's transaction");
    assert_ne!(backend_pid(&client).await, first, "the reloaded lifetime applies to the open connection");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_connection_killed_while_idle_is_replaced_without_an_error() {
    let cluster = prepared();
    let role = "pc_killed";
    let app = start(cluster, "default_pool_size = 1\nserver_check_delay = \"0\"", role).await;
    let observer = observer(cluster).await;
    let client = connect(&app, role).await;
    let first = backend_pid(&client).await;
    for _ in 0..3 {
        assert_eq!(backend_pid(&client).await, first, "a connection that answers its check is reused");
    }
    let first: i32 = first.parse().unwrap();
    let killed: bool = observer.query_one("select pg_terminate_backend($1)", &[&first]).await.unwrap().get(0);
    assert!(killed, "backend {first} terminated");
    wait_for_pids(&observer, role, Duration::from_secs(5), "the killed backend exits", |pids| !pids.contains(&first))
        .await;
    // backend_pid panics on an error: the client must not see one.
    let second = backend_pid(&client).await;
    assert_ne!(second, first.to_string(), "a new server connection");
    assert_eq!(backend_pid(&client).await, second, "which serves on");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_connection_cut_off_while_idle_is_replaced_after_its_check_times_out() {
    let cluster = prepared();
    let role = "pc_cut";
    let primary = cluster.primary().port;
    let cut = Cutter::start(primary).await;
    let text = config_text(cluster, "default_pool_size = 1\nserver_check_delay = \"300ms\"", role);
    let direct = format!("port = {primary}\nrole = \"primary\"");
    assert!(text.contains(&direct), "the primary's entry: {text}");
    let text = text.replace(&direct, &format!("port = {}\nrole = \"primary\"", cut.port));
    let app = relay::start(pgrelay::config::Config::parse(&text).expect("valid config")).await;
    let client = connect(&app, role).await;
    let first = backend_pid(&client).await;
    assert_eq!(backend_pid(&client).await, first, "reused while it answers");
    // The network between pgrelay and the server goes silent: no FIN, no RST,
    // no answer; and the connection stays idle past server_check_delay (and
    // the janitor's next look at it).
    cut.cut();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let second = backend_pid(&client).await;
    assert_ne!(second, first, "a new server connection");
    assert!(started.elapsed() >= Duration::from_millis(900), "the check waited for its timeout first");
    assert_eq!(backend_pid(&client).await, second, "the new connection serves on");
    app.shutdown(GRACE).await;
}

/// A TCP forwarder to a server whose connections open so far can be cut
/// off at once: they stay open, but nothing passes any more. Connections
/// opened afterwards pass as usual.
struct Cutter {
    port: u16,
    cut: Arc<Notify>,
}

impl Cutter {
    async fn start(server_port: u16) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the forwarder");
        let port = listener.local_addr().expect("bound").port();
        let cut = Arc::new(Notify::new());
        let signal = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", server_port)).await else { continue };
                let cut = signal.clone();
                tokio::spawn(async move {
                    let cut = cut.notified();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // Both sockets stay open and unread until the test ends.
                        _ = cut => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Cutter { port, cut }
    }

    fn cut(&self) {
        self.cut.notify_waiters();
    }
}

#[tokio::test]
async fn min_pool_size_connections_are_opened_without_clients() {
    let cluster = prepared();
    let role = "pc_min";
    let app = start(cluster, "default_pool_size = 4\nmin_pool_size = 3", role).await;
    let observer = observer(cluster).await;
    let client = connect(&app, role).await;
    let pid = backend_pid(&client).await;
    drop(client);
    let pids = wait_for_pids(&observer, role, Duration::from_secs(10), "min_pool_size connections open", |pids| {
        pids.len() >= 3
    })
    .await;
    assert_eq!(pids.len(), 3, "exactly min_pool_size: {pids:?}");
    assert!(pids.contains(&pid.parse().unwrap()), "the client's connection is one of them: {pids:?}");
    assert!(app.context().clients.is_empty(), "no client is connected");
    // A client finds them there: its transactions open none.
    let client = connect(&app, role).await;
    let pid: i32 = backend_pid(&client).await.parse().unwrap();
    assert!(pids.contains(&pid), "served by one of the open connections");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_reserve_connection_is_opened_only_after_reserve_pool_timeout() {
    let cluster = prepared();
    let role = "pc_reserve";
    let pool = "default_pool_size = 1\nreserve_pool_size = 1\nreserve_pool_timeout = \"1s\"";
    let app = start(cluster, pool, role).await;
    let observer = observer(cluster).await;
    let holder = connect(&app, role).await;
    holder.batch_execute("begin").await.unwrap();
    let held: i32 = backend_pid(&holder).await.parse().unwrap();
    let waiter = connect(&app, role).await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let pid = backend_pid(&waiter).await;
        (pid, started.elapsed(), waiter)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server_pids(&observer, role).await, [held], "no reserve connection before the timeout");
    let (pid, waited, waiter) = waiting.await.expect("the waiting client");
    assert!(
        waited >= Duration::from_secs(1),
        "served from the reserve after reserve_pool_timeout, not before: {waited:?}"
    );
    let pid: i32 = pid.parse().unwrap();
    assert_ne!(pid, held, "a connection of its own");
    let pids = server_pids(&observer, role).await;
    assert_eq!(pids.len(), 2, "the pool's connection and the reserve's: {pids:?}");
    // The reserve connection waits in the reserve for the next client that waits as long.
    let started = Instant::now();
    assert_eq!(backend_pid(&waiter).await, pid.to_string());
    assert!(started.elapsed() >= Duration::from_secs(1), "again only after the timeout");
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(server_pids(&observer, role).await.len(), 2, "never more than pool size + reserve");
    app.shutdown(GRACE).await;
}

/// Runs `rounds` queries of `sql` on each client at once; returns the
/// errors, and the most server connections of `roles` seen together in
/// pg_stat_activity in samples taken meanwhile (the largest count seen in
/// two samples in a row: a backend pgrelay closed may take a moment to go).
async fn load_and_watch(
    observer: &Client,
    roles: &[&str],
    clients: Vec<Client>,
    rounds: usize,
    sql: &'static str,
) -> (Vec<String>, usize) {
    let load: Vec<_> = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                for _ in 0..rounds {
                    if let Err(e) = client.simple_query(sql).await {
                        return Err(relay::message(&e));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let mut samples = Vec::new();
    let started = Instant::now();
    while !load.iter().all(|task| task.is_finished()) {
        assert!(started.elapsed() < Duration::from_secs(30), "the load did not finish within 30 s");
        let mut open = 0;
        for role in roles {
            open += server_pids(observer, role).await.len();
        }
        samples.push(open);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut errors = Vec::new();
    for task in load {
        if let Err(e) = task.await.expect("load task") {
            errors.push(e);
        }
    }
    let most = samples.windows(2).map(|pair| pair[0].min(pair[1])).max().unwrap_or(0);
    (errors, most)
}

#[tokio::test]
async fn server_connections_stay_within_max_db_connections() {
    let cluster = prepared();
    let role = "pc_capdb";
    let app = start(cluster, "default_pool_size = 4\nmax_db_connections = 2\nquery_wait_timeout = \"20s\"", role).await;
    let observer = observer(cluster).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&app, role).await);
    }
    let (errors, most) = load_and_watch(&observer, &[role], clients, 3, "select pg_sleep(0.1)").await;
    assert!(errors.is_empty(), "every client is served in time: {errors:?}");
    assert!(most <= 2, "at most max_db_connections = 2 server connections, saw {most}");
    assert_eq!(server_pids(&observer, role).await.len(), 2, "the cap was reached, and kept");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn max_user_connections_holds_across_the_users_pools() {
    let cluster = prepared();
    let role = "pc_capuser";
    // A second database entry for the same server database: a pool of its own.
    let user = format!(
        "\n[[users]]\nname = \"{role}\"\npassword = \"{PASSWORD}\"\nmax_user_connections = 2\n\n[[databases]]\nname = \"app2\"\ndbname = \"app\"\n"
    );
    let text = relay::config_toml(cluster, "default_pool_size = 4\nquery_wait_timeout = \"20s\"", &user);
    let app = relay::start(pgrelay::config::Config::parse(&text).expect("valid config")).await;
    let observer = observer(cluster).await;
    let mut clients = Vec::new();
    for database in ["app", "app2", "app", "app2", "app", "app2"] {
        let conn = connect_string(app.rw_addr.port(), role, PASSWORD, database);
        clients.push(relay::connect_with(&conn).await.expect("login").client);
    }
    let (errors, most) = load_and_watch(&observer, &[role], clients, 3, "select pg_sleep(0.1)").await;
    assert!(errors.is_empty(), "both databases' clients are served in time: {errors:?}");
    assert!(most <= 2, "at most max_user_connections = 2 server connections, saw {most}");
    let pools = app.context().pools.all();
    let served: Vec<&str> = pools.iter().filter(|p| p.key.user == role).map(|p| p.key.database.as_str()).collect();
    assert_eq!(served.len(), 2, "a pool for each database: {served:?}");
    let node = &pools[0].key.node;
    let (open, limit) = app.context().pools.cap_state(node, CapKind::User, role).expect("the user's cap");
    assert!(open <= 2 && limit == 2, "pgrelay's own count: {open} of {limit}");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_users_pool_size_wins_over_its_databases() {
    let cluster = prepared();
    let role = "pc_usersize";
    let entries = format!(
        "\n[[users]]\nname = \"{role}\"\npassword = \"{PASSWORD}\"\npool_size = 1\n\n\
         [[databases]]\nname = \"sized\"\ndbname = \"app\"\npool_size = 3\n"
    );
    let text = relay::config_toml(cluster, "default_pool_size = 4\nquery_wait_timeout = \"1s\"", &entries);
    let app = relay::start(pgrelay::config::Config::parse(&text).expect("valid config")).await;
    let conn = connect_string(app.rw_addr.port(), role, PASSWORD, "sized");
    let holder = relay::connect_with(&conn).await.expect("login").client;
    let other = relay::connect_with(&conn).await.expect("login").client;
    holder.batch_execute("begin; select 1").await.unwrap();
    let err = other.simple_query("select 1").await.expect_err("the user's one connection is taken");
    assert!(relay::message(&err).contains("query_wait_timeout"), "{err:?}");
    holder.batch_execute("commit").await.unwrap();
    let third = relay::connect_with(&conn).await.expect("login").client;
    assert_eq!(scalar(&third, "select 1").await, "1", "served once the connection is free");
    let pools = app.context().pools.all();
    let pool = pools.iter().find(|p| p.key.user == role).expect("the user's pool");
    assert_eq!(pool.settings().size, 1, "[[users]] pool_size = 1 over [[databases]] pool_size = 3");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_databases_pool_mode_takes_effect_and_a_users_wins_over_it() {
    let cluster = prepared();
    let role = "pc_modes";
    let entries = format!(
        "\n[[users]]\nname = \"{role}\"\npassword = \"{PASSWORD}\"\n\n\
         [[users]]\nname = \"pc_modes_tx\"\npassword = \"{PASSWORD}\"\nserver_user = \"{role}\"\npool_mode = \"transaction\"\n\n\
         [[databases]]\nname = \"by_session\"\ndbname = \"app\"\npool_mode = \"session\"\n"
    );
    let text = relay::config_toml(cluster, "default_pool_size = 1\nquery_wait_timeout = \"1s\"", &entries);
    let app = relay::start(pgrelay::config::Config::parse(&text).expect("valid config")).await;
    // One server connection per pool, and two clients connected at once:
    // under transaction pooling both use it in turn; under session pooling
    // the first keeps it, and the second waits in vain.
    let second_client = |user: &'static str, database: &'static str| {
        let conn = connect_string(app.rw_addr.port(), user, PASSWORD, database);
        async move {
            let first = relay::connect_with(&conn).await.expect("login").client;
            let second = relay::connect_with(&conn).await.expect("login").client;
            backend_pid(&first).await;
            let result = second.simple_query("select pg_backend_pid()").await;
            (result.map(|_| ()).map_err(|e| relay::message(&e)), first)
        }
    };
    let (served, _first) = second_client(role, "app").await;
    assert_eq!(served, Ok(()), "[pool] mode = transaction: the connection serves both clients");
    let (served, _first) = second_client(role, "by_session").await;
    let error = served.expect_err("[[databases]] pool_mode = session: the first client keeps the connection");
    assert!(error.contains("query_wait_timeout"), "{error}");
    let (served, _first) = second_client("pc_modes_tx", "by_session").await;
    assert_eq!(served, Ok(()), "[[users]] pool_mode = transaction wins over the database's session");
    let mode = |database: &str, user: &str| {
        let pools = app.context().pools.all();
        pools.iter().find(|p| p.key.database == database && p.key.user == user).map(|p| p.mode())
    };
    assert_eq!(mode("by_session", role), Some(pgrelay::config::PoolMode::Session));
    assert_eq!(mode("by_session", "pc_modes_tx"), Some(pgrelay::config::PoolMode::Transaction));
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn reload_applies_min_pool_size_and_caps_without_dropping_clients() {
    let cluster = prepared();
    let role = "pc_reload_min";
    let file = relay::TempConfig::new(&config_text(cluster, "default_pool_size = 4", role));
    let app = App::start_from(&file.0).await.expect("pgrelay starts");
    let observer = observer(cluster).await;
    let client = connect(&app, role).await;
    let first = backend_pid(&client).await;
    let pool = app.context().pools.all().into_iter().find(|p| p.key.user == role).expect("the role's pool");
    assert_eq!(server_pids(&observer, role).await.len(), 1, "no min_pool_size yet");
    let reloaded = "default_pool_size = 4\nmin_pool_size = 3\nmax_user_connections = 2\nserver_check_delay = \"0\"";
    file.write(&config_text(cluster, reloaded, role));
    let summary = app.context().reload().expect("reload");
    assert_eq!(summary.pools_retired, 0, "these keys apply to the running pool: {summary:?}");
    let pids =
        wait_for_pids(&observer, role, Duration::from_secs(10), "min_pool_size up to the cap", |pids| pids.len() >= 2)
            .await;
    assert_eq!(pids.len(), 2, "min_pool_size = 3 stops at max_user_connections = 2: {pids:?}");
    let limit = app.context().pools.cap_state(&pool.key.node, CapKind::User, role).map(|(_, limit)| limit);
    assert_eq!(limit, Some(2), "the reloaded cap is in force");
    let now: i32 = backend_pid(&client).await.parse().unwrap();
    assert!(pids.contains(&now), "the client kept its session, served by the pool's connections: {now} {pids:?}");
    assert!(pids.contains(&first.parse().unwrap()), "the connection it had before the reload stays: {pids:?}");
    let again = app.context().pools.all().into_iter().find(|p| p.key.user == role).expect("the role's pool");
    assert!(std::sync::Arc::ptr_eq(&pool, &again), "the same pool, not a renewed one");
    app.shutdown(GRACE).await;
}

#[tokio::test]
async fn a_client_that_waits_in_vain_at_a_cap_is_told_which() {
    let cluster = prepared();
    let role = "pc_capwait";
    let pool = "default_pool_size = 4\nmax_db_connections = 1\nquery_wait_timeout = \"1s\"";
    let app = start(cluster, pool, role).await;
    let holder = connect(&app, role).await;
    holder.batch_execute("begin").await.unwrap();
    let waiter = connect(&app, role).await;
    let err = waiter.simple_query("select 1").await.expect_err("the one connection the cap allows is taken");
    assert_eq!(relay::sqlstate(&err), "08006", "{err:?}");
    let message = relay::message(&err);
    assert!(message.contains("max_db_connections = 1 reached"), "{message}");
    holder.batch_execute("commit").await.unwrap();
    app.shutdown(GRACE).await;
}

/// The pool of (`database`, `role`) that new transactions use (not a retired one).
fn live_pool(app: &RunningApp, database: &str, role: &str) -> Arc<pgrelay::pool::Pool> {
    let pools = app.context().pools.all();
    let found = pools.into_iter().find(|p| p.key.database == database && p.key.user == role && !p.is_closed());
    found.unwrap_or_else(|| panic!("a live pool for {database}/{role}"))
}

#[tokio::test]
async fn reload_applies_the_reserve_check_delay_caps_and_per_entry_sizes_and_modes() {
    // The other reload tests cover server_lifetime, min_pool_size,
    // max_user_connections, the client timeouts, keepalive,
    // application_name_add_host and stats_period; this one the rest.
    let cluster = prepared();
    let role = "pc_reload_rest";
    let text = |pool: &str, user: &str, database: &str| {
        let entries = format!(
            "\n[[users]]\nname = \"{role}\"\npassword = \"{PASSWORD}\"\n{user}\n\n\
             [[databases]]\nname = \"pc_rest_db\"\ndbname = \"app\"\n{database}\n"
        );
        relay::config_toml(cluster, pool, &entries)
    };
    let file = relay::TempConfig::new(&text("default_pool_size = 4", "", ""));
    let app = App::start_from(&file.0).await.expect("pgrelay starts");
    let in_transaction = connect(&app, role).await;
    in_transaction.batch_execute("begin").await.expect("begin");
    let before = backend_pid(&in_transaction).await;
    let on_db_entry = relay::connect_with(&connect_string(app.rw_addr.port(), role, PASSWORD, "pc_rest_db"))
        .await
        .expect("login to the database entry")
        .client;
    backend_pid(&on_db_entry).await;
    let old = (live_pool(&app, "app", role), live_pool(&app, "pc_rest_db", role));
    assert_eq!((old.0.settings().size, old.0.settings().reserve_size), (4, 0));
    assert_eq!(old.1.mode(), pgrelay::config::PoolMode::Transaction);

    let pool = "default_pool_size = 4\nreserve_pool_size = 1\nreserve_pool_timeout = \"250ms\"\n\
                server_check_delay = \"0\"\nmax_db_connections = 7";
    file.write(&text(pool, "pool_size = 2", "pool_mode = \"session\""));
    app.context().reload().expect("reload");

    // Nobody was dropped: the open transaction carries on, on the same
    // server connection, and commits.
    assert_eq!(backend_pid(&in_transaction).await, before, "the transaction keeps its server connection");
    in_transaction.batch_execute("commit").await.expect("the transaction commits after the reload");
    assert_eq!(scalar(&on_db_entry, "select 1").await, "1", "the idle client is served after the reload");
    assert_eq!(scalar(&in_transaction, "select 1").await, "1", "and so is the other, in its next transaction");

    let app_pool = live_pool(&app, "app", role);
    assert_eq!(app_pool.settings().size, 2, "[[users]] pool_size = 2 now holds");
    assert_eq!(app_pool.settings().reserve_size, 1, "reserve_pool_size = 1 now holds");
    let tuning = app_pool.tuning();
    assert_eq!(tuning.reserve_timeout, Some(Duration::from_millis(250)), "reserve_pool_timeout");
    assert_eq!(tuning.check_delay, Duration::ZERO, "server_check_delay");
    assert_eq!(app_pool.mode(), pgrelay::config::PoolMode::Transaction, "the user's database keeps [pool] mode");
    let db_pool = live_pool(&app, "pc_rest_db", role);
    assert_eq!(db_pool.mode(), pgrelay::config::PoolMode::Session, "[[databases]] pool_mode = session now holds");
    assert_eq!(db_pool.settings().size, 2, "the user's pool_size holds on the database entry too");
    let node = &app_pool.key.node;
    let cap = app.context().pools.cap_state(node, CapKind::Database, "app").map(|(_, limit)| limit);
    assert_eq!(cap, Some(7), "max_db_connections = 7 is in force");
    app.shutdown(GRACE).await;
}
