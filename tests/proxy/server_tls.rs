//! TLS from pgrelay to PostgreSQL (`[tls] server_tls_*`): a server with
//! `ssl = on` and a `hostssl`-only user, certificates made by the test.
//! The server's certificate names 127.0.0.1 only, so a node addressed as
//! `localhost` is one whose certificate does not match its host.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use pgrelay::config::Config;
use pgrelay::localcluster::{LocalCluster, LocalClusterOptions};
use pgrelay::RunningApp;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::support::relay::{self, scalar};

/// May only log in over TLS.
const TLS_USER: &str = "tls_only";
const TLS_PASSWORD: &str = "tls-pw";
/// The monitors' user, also TLS-only on this cluster.
const MONITOR_USER: &str = "postgres";

struct TlsCluster {
    cluster: LocalCluster,
    /// The CA that signed the server's certificate (PEM).
    ca_file: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca_file: PathBuf,
}

/// A CA, and a certificate for `names` it signed: (CA PEM, cert PEM, key PEM).
fn ca_and_cert(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// A cluster of its own (a primary only), so turning TLS on and locking
/// users to it touches no other test.
fn tls_cluster() -> &'static TlsCluster {
    static CLUSTER: OnceLock<TlsCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = LocalCluster::start(LocalClusterOptions { replicas: 0, ..LocalClusterOptions::default() })
            .expect("the TLS test cluster starts");
        let primary = cluster.primary();
        let (ca, cert, key) = ca_and_cert("pgrelay test CA", &["127.0.0.1"]);
        let (other_ca, _, _) = ca_and_cert("another CA", &["127.0.0.1"]);
        cluster.enable_ssl(primary, &cert, &key).expect("ssl on");
        cluster
            .psql(primary, &format!("CREATE ROLE {TLS_USER} LOGIN PASSWORD '{TLS_PASSWORD}'"))
            .expect("create the TLS user");
        cluster.psql(primary, &format!("GRANT ALL ON DATABASE app TO {TLS_USER}")).expect("grant");
        let rules = format!(
            "hostssl all {TLS_USER} 127.0.0.1/32 scram-sha-256\nhost all {TLS_USER} 127.0.0.1/32 reject\n\
             hostssl all {MONITOR_USER} 127.0.0.1/32 trust\nhost all {MONITOR_USER} 127.0.0.1/32 reject\n"
        );
        cluster.prepend_hba_rules(primary, &rules).expect("hostssl rules");
        let dir = cluster.base_dir().join("client-tls");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_file, other_ca_file) = (dir.join("ca.crt"), dir.join("other-ca.crt"));
        std::fs::write(&ca_file, ca).unwrap();
        std::fs::write(&other_ca_file, other_ca).unwrap();
        TlsCluster { cluster, ca_file, other_ca_file }
    })
}

/// The test config for the TLS cluster with `tls_only` added and `tls` as
/// the `[tls]` section.
fn config(tls: &str) -> String {
    let users = format!("\n[[users]]\nname = \"{TLS_USER}\"\npassword = \"{TLS_PASSWORD}\"\n");
    format!("{}\n[tls]\n{tls}\n", relay::config_toml(&tls_cluster().cluster, "", &users))
}

async fn start(toml: &str) -> RunningApp {
    relay::start(Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))).await
}

/// Logs in as the TLS-only user through pgrelay and asks whether the
/// server sees its connection as TLS.
async fn server_sees_ssl(app: &RunningApp) -> Result<String, tokio_postgres::Error> {
    let conn = relay::connect_as(app.rw_addr, TLS_USER, TLS_PASSWORD).await?;
    Ok(scalar(&conn.client, "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await)
}

/// Until the server's reloaded pg_hba and ssl settings are in force.
async fn until_ssl_is_on(app: &RunningApp) {
    for _ in 0..100 {
        if server_sees_ssl(app).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn require_reaches_a_hostssl_only_user_over_tls() {
    let app = start(&config("server_tls_sslmode = \"require\"")).await;
    until_ssl_is_on(&app).await;
    assert_eq!(server_sees_ssl(&app).await.expect("logs in over TLS"), "true");
    app.shutdown(Duration::from_secs(5)).await;
    // prefer (the default) takes TLS when the server offers it.
    let app = start(&config("")).await;
    assert_eq!(server_sees_ssl(&app).await.expect("logs in over TLS"), "true");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn disable_cannot_reach_a_hostssl_only_user() {
    let app = start(&config("server_tls_sslmode = \"require\"")).await;
    until_ssl_is_on(&app).await;
    app.shutdown(Duration::from_secs(5)).await;
    let app = start(&config("server_tls_sslmode = \"disable\"")).await;
    let error = server_sees_ssl(&app).await.expect_err("no plain-text login for a hostssl-only user");
    let message = relay::message(&error);
    assert!(message.contains("no encryption") && message.contains(TLS_USER), "{message}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn verify_full_accepts_the_right_certificate_and_refuses_a_wrong_name() {
    let tls = tls_cluster();
    let verify = |mode: &str, ca: &PathBuf| {
        format!("server_tls_sslmode = \"{mode}\"\nserver_tls_ca_file = \"{}\"", ca.display())
    };
    let app = start(&config(&verify("verify-full", &tls.ca_file))).await;
    until_ssl_is_on(&app).await;
    assert_eq!(server_sees_ssl(&app).await.expect("the certificate names 127.0.0.1"), "true");
    app.shutdown(Duration::from_secs(5)).await;

    // The same server addressed as localhost: the name does not match.
    let as_localhost = |toml: String| toml.replace("host = \"127.0.0.1\"", "host = \"localhost\"");
    let app = start(&as_localhost(config(&verify("verify-full", &tls.ca_file)))).await;
    let error = server_sees_ssl(&app).await.expect_err("a certificate for another name is refused");
    let message = relay::message(&error);
    assert!(message.contains("node pg0") && message.contains("not valid for name"), "{message}");
    app.shutdown(Duration::from_secs(5)).await;

    // verify-ca checks the chain only, so the name does not matter ...
    let app = start(&as_localhost(config(&verify("verify-ca", &tls.ca_file)))).await;
    assert_eq!(server_sees_ssl(&app).await.expect("the chain is good"), "true");
    app.shutdown(Duration::from_secs(5)).await;
    // ... but a CA that did not sign the certificate does.
    let app = start(&config(&verify("verify-ca", &tls.other_ca_file))).await;
    let error = server_sees_ssl(&app).await.expect_err("an unknown issuer is refused");
    let message = relay::message(&error);
    assert!(message.contains("node pg0") && message.contains("UnknownIssuer"), "{message}");
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn monitors_connect_over_tls() {
    let tls = tls_cluster();
    let toml =
        config(&format!("server_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"{}\"", tls.ca_file.display()))
            .replace("source = \"static\"", "source = \"postgres\"")
            .replace("role = \"primary\"\n", "");
    let app = start(&toml).await;
    until_ssl_is_on(&app).await;
    let mut topology = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, body) = crate::http::get(app.http_addr, "/topology").await;
        topology = serde_json::from_str(&body).unwrap();
        if topology["primary"] == "pg0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(topology["primary"], "pg0", "the monitors reach the TLS-only primary: {topology}");
    app.shutdown(Duration::from_secs(5)).await;
}
