//! How pgrelay logs in to the servers: what a server may ask for
//! (`server_require_auth`), how much SCRAM work it may demand
//! (`server_scram_max_iterations`), that a SCRAM server must prove itself
//! before its AuthenticationOk counts, and that a user without a password
//! never borrows the monitors' one. Real servers where they can show it; a
//! scripted mock for what no real server does.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use pgrelay::auth::scram::ScramVerifier;
use pgrelay::config::Config;
use pgrelay::localcluster::{LocalCluster, APP_PASSWORD, MD5_PASSWORD, MD5_USER};
use pgrelay::RunningApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::cluster;
use crate::support::mock_server::{MockServer, ScramScript, HONEST_FATAL};
use crate::support::relay::{self, scalar, sqlstate};

/// A role the primary asks for its password in clear.
const CLEAR_USER: &str = "login_clear";
const CLEAR_PASSWORD: &str = "clear-pw";
/// Roles whose stored SCRAM verifiers use this many iterations, and one more.
const ITERATIONS_CAP: u32 = 5000;
const AT_CAP_USER: &str = "login_at_cap";
const ABOVE_CAP_USER: &str = "login_above_cap";
const ITERATIONS_PASSWORD: &str = "iter-pw";

/// The roles and pg_hba rules these tests need, made once per binary.
fn prepared_cluster() -> &'static LocalCluster {
    static PREPARED: OnceLock<()> = OnceLock::new();
    let cluster = cluster();
    PREPARED.get_or_init(|| {
        let primary = cluster.primary();
        let at_cap = ScramVerifier::with_iterations(ITERATIONS_PASSWORD, ITERATIONS_CAP).to_rolpassword();
        let above_cap = ScramVerifier::with_iterations(ITERATIONS_PASSWORD, ITERATIONS_CAP + 1).to_rolpassword();
        for sql in [
            format!("CREATE ROLE {CLEAR_USER} LOGIN PASSWORD '{CLEAR_PASSWORD}'"),
            // PostgreSQL stores a verifier given as the password verbatim.
            format!("CREATE ROLE {AT_CAP_USER} LOGIN PASSWORD '{at_cap}'"),
            format!("CREATE ROLE {ABOVE_CAP_USER} LOGIN PASSWORD '{above_cap}'"),
        ] {
            cluster.psql(primary, &sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let stored =
            cluster.psql(primary, &format!("select rolpassword from pg_authid where rolname = '{ABOVE_CAP_USER}'"));
        assert_eq!(stored.unwrap(), above_cap, "the verifier is stored as given");
        cluster.prepend_hba_rules(primary, &format!("host all {CLEAR_USER} 127.0.0.1/32 password")).unwrap();
    });
    cluster
}

/// The authentication request code the primary answers `user`'s startup with.
async fn asks_for(cluster: &LocalCluster, user: &str) -> u32 {
    let mut stream = tokio::net::TcpStream::connect(cluster.primary().addr()).await.expect("connect to the primary");
    let mut out = BytesMut::new();
    pgrelay::wire::put_startup_message(&mut out, [(&b"user"[..], user.as_bytes()), (&b"database"[..], &b"app"[..])]);
    stream.write_all(&out).await.unwrap();
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "an authentication request");
    u32::from_be_bytes(head[5..9].try_into().unwrap())
}

/// Waits until the primary's reloaded pg_hba asks `CLEAR_USER` for a cleartext password.
async fn until_hba_reloaded(cluster: &LocalCluster) {
    for _ in 0..100 {
        if asks_for(cluster, CLEAR_USER).await == 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the primary never asked {CLEAR_USER} for a cleartext password");
}

/// The test config with these users added and `cluster_extra` in [cluster].
fn config(cluster: &LocalCluster, cluster_extra: &str) -> String {
    let users = format!(
        "\n[[users]]\nname = \"{CLEAR_USER}\"\npassword = \"{CLEAR_PASSWORD}\"\n\n\
         [[users]]\nname = \"{AT_CAP_USER}\"\npassword = \"{ITERATIONS_PASSWORD}\"\n\n\
         [[users]]\nname = \"{ABOVE_CAP_USER}\"\npassword = \"{ITERATIONS_PASSWORD}\"\n"
    );
    relay::config_toml(cluster, "", &users)
        .replace("user = \"postgres\"\n", &format!("user = \"postgres\"\n{cluster_extra}\n"))
}

async fn start(toml: &str) -> RunningApp {
    relay::start(Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))).await
}

/// Logs in as `user` through pgrelay's rw listener and asks who it is.
async fn login(app: &RunningApp, user: &str, password: &str) -> Result<String, tokio_postgres::Error> {
    let conn = relay::connect_as(app.rw_addr, user, password).await?;
    Ok(scalar(&conn.client, "select current_user").await)
}

#[track_caller]
fn assert_refused(result: Result<String, tokio_postgres::Error>, needles: &[&str]) {
    let error = result.expect_err("pgrelay must not log in to the server");
    assert_eq!(sqlstate(&error), "08006", "{error}");
    let message = relay::message(&error);
    for needle in needles {
        assert!(message.contains(needle), "{message:?} does not say {needle:?}");
    }
}

#[tokio::test]
async fn md5_and_cleartext_servers_are_refused_unless_allowed() {
    let cluster = prepared_cluster();
    until_hba_reloaded(cluster).await;
    let app = start(&config(cluster, "")).await;
    let md5 = login(&app, MD5_USER, MD5_PASSWORD).await;
    assert_refused(md5, &["node pg0", MD5_USER, "asks for md5", "server_require_auth", "scram-sha-256,none"]);
    let clear = login(&app, CLEAR_USER, CLEAR_PASSWORD).await;
    assert_refused(clear, &["node pg0", CLEAR_USER, "asks for the password in clear"]);
    // SCRAM and trust are allowed by default.
    assert_eq!(login(&app, "app", APP_PASSWORD).await.unwrap(), "app");
    assert_eq!(login(&app, "app_trust", "").await.unwrap(), "app_trust");
    app.shutdown(Duration::from_secs(5)).await;

    // Allowed for the cluster (negated form) ...
    let app = start(&config(cluster, "server_require_auth = \"!md5\"")).await;
    assert_eq!(login(&app, CLEAR_USER, CLEAR_PASSWORD).await.unwrap(), CLEAR_USER);
    assert_refused(login(&app, MD5_USER, MD5_PASSWORD).await, &["asks for md5"]);
    app.shutdown(Duration::from_secs(5)).await;

    // ... or for the node alone.
    let node_rule = "role = \"primary\"\nserver_require_auth = \"scram-sha-256,md5\"\n";
    let app = start(&config(cluster, "").replacen("role = \"primary\"\n", node_rule, 1)).await;
    assert_eq!(login(&app, MD5_USER, MD5_PASSWORD).await.unwrap(), MD5_USER);
    assert_refused(login(&app, "app_trust", "").await, &["asks for no authentication", "allowed: md5,scram-sha-256)"]);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_server_asking_for_more_scram_iterations_than_the_cap_is_refused() {
    let cluster = prepared_cluster();
    let app = start(&config(cluster, &format!("server_scram_max_iterations = {ITERATIONS_CAP}"))).await;
    assert_eq!(login(&app, AT_CAP_USER, ITERATIONS_PASSWORD).await.unwrap(), AT_CAP_USER);
    let above = login(&app, ABOVE_CAP_USER, ITERATIONS_PASSWORD).await;
    let asked = format!("{} iterations", ITERATIONS_CAP + 1);
    assert_refused(
        above,
        &["node pg0", ABOVE_CAP_USER, &asked, &format!("server_scram_max_iterations = {ITERATIONS_CAP}")],
    );
    app.shutdown(Duration::from_secs(5)).await;
    // The default cap lets both in.
    let app = start(&config(cluster, "")).await;
    assert_eq!(login(&app, ABOVE_CAP_USER, ITERATIONS_PASSWORD).await.unwrap(), ABOVE_CAP_USER);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_user_without_a_password_never_logs_in_with_the_monitors_password() {
    let cluster = cluster();
    // `app` as a trust user of pgrelay, and [cluster] password happens to be app's.
    let toml = relay::config_toml(cluster, "", "")
        .replace("name = \"app\"\npassword = \"app\"\n", "name = \"app\"\nauth_type = \"trust\"\n")
        .replace("user = \"postgres\"\n", &format!("user = \"postgres\"\npassword = \"{APP_PASSWORD}\"\n"));
    let app = start(&toml).await;
    assert_refused(
        login(&app, "app", "").await,
        &["node pg0", "app", "no password for the servers", "server_password_from_cluster"],
    );
    // A user the server trusts needs none.
    assert_eq!(login(&app, "app_trust", "").await.unwrap(), "app_trust");
    app.shutdown(Duration::from_secs(5)).await;
    // Said in so many words, it may.
    let explicit = toml.replace(
        "name = \"app\"\nauth_type = \"trust\"\n",
        "name = \"app\"\nauth_type = \"trust\"\nserver_password_from_cluster = true\n",
    );
    assert_ne!(explicit, toml);
    let app = start(&explicit).await;
    assert_eq!(login(&app, "app", "").await.unwrap(), "app");
    app.shutdown(Duration::from_secs(5)).await;
}

/// pgrelay in front of one mock node serving `script`; the client logs in
/// as `app` and gets what pgrelay made of the server's login.
async fn login_against(script: ScramScript) -> tokio_postgres::Error {
    let mock = MockServer::start(script, APP_PASSWORD).await;
    let toml = format!(
        "{}\n[pool]\nquery_wait_timeout = \"5s\"\n\n[cluster]\nsource = \"static\"\n\n\
         [[nodes]]\nname = \"mock\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"primary\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"{APP_PASSWORD}\"\n\n[[databases]]\nname = \"app\"\n",
        relay::LISTEN_ANY,
        mock.addr.port()
    );
    let app = start(&toml).await;
    let error = relay::connect_as(app.rw_addr, "app", APP_PASSWORD).await.err().expect("the mock never lets anyone in");
    app.shutdown(Duration::from_secs(5)).await;
    error
}

#[tokio::test]
async fn a_scram_server_must_prove_itself_before_its_login_counts() {
    // The control: an honest exchange gets as far as the mock's own FATAL.
    let honest = login_against(ScramScript::Honest).await;
    assert_eq!((sqlstate(&honest), relay::message(&honest)), ("XX000".to_owned(), HONEST_FATAL.to_owned()));
    let cases = [
        (ScramScript::OkBeforeFinal, "before the SCRAM exchange finished"),
        (ScramScript::OkAfterStart, "before the SCRAM exchange finished"),
        (ScramScript::WrongSignature, "signature does not match"),
        (ScramScript::ZeroIterations, "0 iterations"),
    ];
    for (script, needle) in cases {
        let error = login_against(script).await;
        assert_eq!(sqlstate(&error), "08006", "{script:?}: {error}");
        let message = relay::message(&error);
        assert!(message.contains("node mock") && message.contains(needle), "{script:?}: {message}");
    }
}
