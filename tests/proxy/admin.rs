//! The admin console (database `pgrelay` or `pgbouncer`): PgBouncer's SHOW
//! tables through psql and tokio-postgres, values that follow traffic,
//! who may do what, and the controls PAUSE, RESUME, RELOAD and SHUTDOWN.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use pgrelay::config::Config;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER, MD5_PASSWORD, MD5_USER, TRUST_USER};
use pgrelay::{App, RunningApp, StopMode};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::relay;
use crate::support::{cluster, connect_string};

/// Column lists captured from PgBouncer 1.18.0 (`psql -A -c 'SHOW ...'`).
const POOLS: &str = "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|\
                     sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode";
const STATS: &str = "database|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|\
                     total_query_time|total_wait_time|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|\
                     avg_query_time|avg_wait_time";
const CONNECTIONS: &str = "type|user|database|state|addr|port|local_addr|local_port|connect_time|request_time|wait|\
                           wait_us|close_needed|ptr|link|remote_pid|tls|application_name";
/// SHOW CLIENTS: PgBouncer's columns, then the worker running the session.
const CLIENTS: &str = "type|user|database|state|addr|port|local_addr|local_port|connect_time|request_time|wait|\
                       wait_us|close_needed|ptr|link|remote_pid|tls|application_name|worker";
const DATABASES: &str = "name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool|pool_mode|\
                         max_connections|current_connections|paused|disabled";
const CONFIG: &str = "key|value|default|changeable";
const NODES: &str =
    "name|host|port|role|reachable|lag_bytes|lag_seconds|in_read_set|excluded_reason|sync_state|application_name|wal_lsn|write_lsn|flush_lsn|replay_lsn";

/// `app` may run everything, `app_md5` only SHOW; `app_trust` neither.
const ADMIN_SECTION: &str = "\n[admin]\nadmin_users = [\"app\"]\nstats_users = [\"app_md5\"]\n";

fn config_text(pool_extra: &str) -> String {
    relay::config_toml(cluster(), pool_extra, "") + ADMIN_SECTION
}

async fn start_app() -> RunningApp {
    relay::start(Config::parse(&config_text("")).expect("valid config")).await
}

async fn console(
    addr: SocketAddr,
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    relay::connect_with(&connect_string(addr.port(), user, password, database)).await.map(|c| c.client)
}

async fn admin(app: &RunningApp) -> Client {
    console(app.rw_addr, APP_USER, APP_PASSWORD, "pgrelay").await.expect("admin console login")
}

/// A SHOW result as (column names, rows of text values; NULL as "").
async fn show(client: &Client, query: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let messages = client.simple_query(query).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for message in messages {
        match message {
            SimpleQueryMessage::RowDescription(description) => {
                columns = description.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                rows.push((0..row.len()).map(|i| row.get(i).unwrap_or("").to_owned()).collect());
            }
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in the first row whose first columns equal `key`.
async fn cell(client: &Client, query: &str, key: &[&str], column: &str) -> Option<String> {
    let (columns, rows) = show(client, query).await;
    let at = columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("{query}: no column {column}"));
    rows.into_iter().find(|row| row.iter().zip(key).all(|(a, b)| a == b)).map(|row| row[at].clone())
}

fn number(value: Option<String>) -> u64 {
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// psql -X -A (unaligned, header kept) against the console as `app`.
fn psql(port: u16, database: &str, query: &str) -> String {
    let output = Command::new("psql")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSWORD", APP_PASSWORD)
        .args(["-X", "-A", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP_USER, "-d", database, "-c", query])
        .output()
        .unwrap_or_else(|e| panic!("psql: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql -c {query:?} failed: {stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn psql_sees_pgbouncer_columns_under_both_database_names() {
    let app = start_app().await;
    // Some traffic, so the tables have rows.
    let client = relay::connect(app.rw_addr).await;
    client.simple_query("select 1").await.expect("query through pgrelay");
    let port = app.rw_addr.port();
    let outputs = tokio::task::spawn_blocking(move || {
        let mut outputs = Vec::new();
        for database in ["pgrelay", "pgbouncer"] {
            for (command, header) in [
                ("SHOW POOLS", POOLS),
                ("SHOW STATS", STATS),
                ("SHOW CLIENTS", CLIENTS),
                ("SHOW SERVERS", CONNECTIONS),
                ("SHOW DATABASES", DATABASES),
                ("show config;", CONFIG),
                ("SHOW NODES", NODES),
            ] {
                outputs.push((database, command, header, psql(port, database, command)));
            }
        }
        outputs
    })
    .await
    .expect("psql runs");
    for (database, command, header, output) in outputs {
        assert_eq!(output.lines().next(), Some(header), "{database}: {command}:\n{output}");
        match command {
            "SHOW POOLS" => assert!(output.contains("\napp|app|"), "{output}"),
            "SHOW STATS" => assert!(output.contains("\napp|"), "{output}"),
            "SHOW CLIENTS" => assert!(output.contains("\nC|app|app|idle|127.0.0.1|"), "{output}"),
            "SHOW SERVERS" => assert!(output.contains("\nS|app|app|idle|127.0.0.1|"), "{output}"),
            "SHOW DATABASES" => {
                assert!(output.contains(&format!("\napp|127.0.0.1|{}|app||4|", cluster().primary().port)))
            }
            "show config;" => assert!(output.contains("\npool.default_pool_size|4|20|yes\n"), "{output}"),
            _ => assert!(output.contains("\npg0|127.0.0.1|"), "{output}"),
        }
    }
    drop(client);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stats_pools_servers_and_clients_follow_traffic() {
    let app = start_app().await;
    let console = admin(&app).await;
    let client = relay::connect(app.rw_addr).await;
    let before = number(cell(&console, "SHOW STATS", &["app"], "total_xact_count").await);
    const N: u64 = 5;
    for _ in 0..N {
        client.simple_query("begin; select 1; commit").await.expect("transaction");
    }
    let after = number(cell(&console, "SHOW STATS", &["app"], "total_xact_count").await);
    assert!(after >= before + N, "total_xact_count went from {before} to {after}");
    let (columns, _) = show(&console, "SHOW STATS_TOTALS").await;
    assert_eq!(
        columns.join("|"),
        "database|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time"
    );

    // A client in an open transaction holds a server connection.
    client.simple_query("begin; select 1").await.expect("open transaction");
    let pool = |column: &'static str| {
        let console = &console;
        async move { number(cell(console, "SHOW POOLS", &["app", "app"], column).await) }
    };
    assert!(pool("cl_active").await >= 1, "cl_active");
    assert!(pool("sv_active").await >= 1, "sv_active");
    assert_eq!(cell(&console, "SHOW POOLS", &["app", "app"], "pool_mode").await.as_deref(), Some("transaction"));
    let (_, servers) = show(&console, "SHOW SERVERS").await;
    let active = servers.iter().find(|s| s[0] == "S" && s[1] == "app" && s[2] == "app" && s[3] == "active");
    let active = active.unwrap_or_else(|| panic!("an active server: {servers:?}"));
    assert_eq!(active[4], "127.0.0.1");
    assert_eq!(active[5], cluster().primary().port.to_string());
    let (_, clients) = show(&console, "SHOW CLIENTS").await;
    let holder = clients.iter().find(|c| c[3] == "active").unwrap_or_else(|| panic!("an active client: {clients:?}"));
    assert_eq!(holder[14], active[13], "the client's link is the server's ptr");
    client.simple_query("commit").await.expect("commit");
    // The session lets the connection go before the client sees the
    // commit's answer, on whichever worker it runs.
    let active = pool("cl_active").await;
    assert_eq!(active, 0);
    assert!(pool("sv_idle").await >= 1, "the server went back to the pool");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn nodes_version_and_databases() {
    let app = start_app().await;
    let console = admin(&app).await;
    let (columns, nodes) = show(&console, "show nodes").await;
    assert_eq!(columns.join("|"), NODES);
    let roles: Vec<(&str, &str, &str)> = nodes.iter().map(|n| (n[0].as_str(), n[3].as_str(), n[7].as_str())).collect();
    assert_eq!(roles, [("pg0", "primary", "f"), ("pg1", "replica", "t"), ("pg2", "replica", "t")]);
    let version = cell(&console, "SHOW VERSION", &[], "version").await;
    assert!(version.is_some_and(|v| v.starts_with("pgrelay ")));
    assert_eq!(cell(&console, "SHOW DATABASES", &["app"], "paused").await.as_deref(), Some("0"));
    // The pgbouncer alias is the same console.
    let alias = console_alias(&app).await;
    assert_eq!(show(&alias, "SHOW NODES").await.1.len(), 3);
    app.shutdown(Duration::from_secs(5)).await;
}

async fn console_alias(app: &RunningApp) -> Client {
    console(app.rw_addr, APP_USER, APP_PASSWORD, "pgbouncer").await.expect("login to the pgbouncer alias")
}

#[tokio::test]
async fn who_may_use_the_console() {
    let app = start_app().await;
    let refused = console(app.rw_addr, TRUST_USER, "", "pgrelay").await.expect_err("not an admin or stats user");
    assert_eq!(relay::sqlstate(&refused), "42501", "{}", relay::message(&refused));
    let stats = console(app.rw_addr, MD5_USER, MD5_PASSWORD, "pgbouncer").await.expect("stats user login");
    assert_eq!(show(&stats, "SHOW POOLS").await.0.join("|"), POOLS);
    for control in ["PAUSE", "RESUME", "RELOAD", "SHUTDOWN", "SHUTDOWN WAIT_FOR_CLIENTS"] {
        let error = stats.simple_query(control).await.err().unwrap_or_else(|| panic!("{control} refused"));
        assert_eq!(relay::sqlstate(&error), "42501", "{control}: {}", relay::message(&error));
        assert!(relay::message(&error).contains(control), "{}", relay::message(&error));
    }
    assert!(!app.context().lifecycle.is_paused());
    assert_eq!(show(&stats, "SHOW VERSION").await.1.len(), 1, "the connection stays usable");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_commands_and_the_extended_protocol_are_refused() {
    let app = start_app().await;
    let console = admin(&app).await;
    let unknown = console.simple_query("SELECT 1").await.expect_err("not a console command");
    assert_eq!(relay::sqlstate(&unknown), "42601");
    assert!(relay::message(&unknown).contains("SHOW POOLS"), "{}", relay::message(&unknown));
    let per_db = console.simple_query("PAUSE app").await.expect_err("per-database pause");
    assert_eq!(relay::sqlstate(&per_db), "0A000");
    let extended = console.query("SHOW POOLS", &[]).await.expect_err("extended protocol");
    assert_eq!(relay::sqlstate(&extended), "0A000");
    assert_eq!(relay::message(&extended), "the admin console accepts only simple queries");
    assert_eq!(show(&console, "SHOW POOLS").await.0.join("|"), POOLS, "the connection stays usable");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pause_holds_queries_until_resume() {
    let app = start_app().await;
    let console = admin(&app).await;
    let client = relay::connect(app.rw_addr).await;
    client.simple_query("select 1").await.expect("query before pause");
    tokio::time::timeout(Duration::from_secs(5), console.simple_query("PAUSE"))
        .await
        .expect("PAUSE returns once no transaction is in flight")
        .expect("PAUSE");
    assert_eq!(cell(&console, "SHOW DATABASES", &["app"], "paused").await.as_deref(), Some("1"));
    let held = tokio::spawn(async move { client.simple_query("select 2").await.map(|_| client) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a query is held while paused");
    assert_eq!(number(cell(&console, "SHOW POOLS", &["app", "app"], "cl_waiting").await), 1);
    let (_, clients) = show(&console, "SHOW CLIENTS").await;
    assert_eq!(clients.iter().filter(|c| c[3] == "waiting").count(), 1, "{clients:?}");
    console.simple_query("RESUME").await.expect("RESUME");
    let client = tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("the held query completes after RESUME")
        .expect("task")
        .expect("query after resume");
    drop(client);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn reload_applies_a_good_file_and_refuses_a_broken_one() {
    let file = relay::TempConfig::new(&config_text(""));
    let app = App::start_from(&file.0).await.expect("pgrelay starts from a file");
    let console = admin(&app).await;
    let client = relay::connect(app.rw_addr).await;
    file.write(&config_text("default_pool_size = 6"));
    console.simple_query("RELOAD").await.expect("RELOAD of a valid file");
    assert_eq!(cell(&console, "SHOW CONFIG", &["pool.default_pool_size"], "value").await.as_deref(), Some("6"));
    file.write("[pool\n");
    let error = console.simple_query("RELOAD;").await.expect_err("RELOAD of a broken file");
    assert_eq!(relay::sqlstate(&error), "F0000", "{}", relay::message(&error));
    assert!(relay::message(&error).contains(&file.0.display().to_string()), "{}", relay::message(&error));
    assert_eq!(cell(&console, "SHOW CONFIG", &["pool.default_pool_size"], "value").await.as_deref(), Some("6"));
    assert_eq!(relay::scalar(&client, "select 40 + 2").await, "42", "pgrelay keeps serving");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn show_config_lists_the_tcp_options_and_application_name_add_host() {
    let extra = "tcp_keepidle = \"5m\"\ntcp_keepcnt = 3\napplication_name_add_host = true";
    let app = relay::start(Config::parse(&config_text(extra)).expect("valid config")).await;
    let console = admin(&app).await;
    let (_, rows) = show(&console, "SHOW CONFIG").await;
    let expected = [
        ["pool.tcp_keepalive", "true", "true", "yes"],
        ["pool.tcp_keepidle", "5m", "0", "yes"],
        ["pool.tcp_keepintvl", "0", "0", "yes"],
        ["pool.tcp_keepcnt", "3", "0", "yes"],
        ["pool.tcp_user_timeout", "0", "0", "yes"],
        ["pool.application_name_add_host", "true", "false", "yes"],
    ];
    for row in expected {
        assert!(rows.iter().any(|r| r == &row), "SHOW CONFIG has no row {row:?}");
    }
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_asks_for_an_immediate_stop() {
    let app = start_app().await;
    let console = admin(&app).await;
    console.simple_query("SHUTDOWN").await.expect("SHUTDOWN");
    let mode = tokio::time::timeout(Duration::from_secs(2), app.stop_requested()).await.expect("a stop request");
    assert_eq!(mode, StopMode::Immediate);
    app.shutdown(Duration::from_secs(5)).await;
    let gone = tokio::time::timeout(Duration::from_secs(5), console.simple_query("SHOW POOLS")).await;
    assert!(gone.expect("answered or closed").is_err(), "the console closes when pgrelay stops");
}
