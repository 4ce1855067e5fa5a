//! TLS from clients to pgrelay (`[tls] client_tls_*`): certificates made by
//! the test, psql (libpq) and tokio-postgres clients with sslmode=require,
//! verify-full and channel_binding=require, plain clients under `require`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgrelay::config::Config;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::RunningApp;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use crate::support::{cluster, relay};

/// A CA and what it signed, written to a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = cluster().base_dir().join(format!("client-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("pgrelay test CA {name}"));
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A certificate for `names` (the first is also its common name), as
    /// `<file>.crt` and `<file>.key`; returns both paths.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
}

/// A key file only its owner may read (libpq refuses others).
fn write_private(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The `[tls]` keys for pgrelay's certificate and `sslmode`.
fn tls_section(sslmode: &str, cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_sslmode = \"{sslmode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

async fn start(tls: &str) -> RunningApp {
    let toml = format!("{}\n[tls]\n{tls}\n", relay::config_toml(cluster(), "", ""));
    relay::start(Config::parse(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))).await
}

/// psql as `app` with the libpq connection settings `conninfo`, off the
/// runtime pgrelay runs on; returns stdout or the error psql printed.
async fn psql(port: u16, conninfo: &str, query: &str) -> Result<String, String> {
    let (conninfo, query) = (conninfo.to_owned(), query.to_owned());
    tokio::task::spawn_blocking(move || psql_blocking(port, &conninfo, &query)).await.expect("psql thread")
}

fn psql_blocking(port: u16, conninfo: &str, query: &str) -> Result<String, String> {
    let dsn = format!("host=127.0.0.1 port={port} user={APP_USER} dbname=app connect_timeout=10 {conninfo}");
    let output = Command::new("psql")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGPASSWORD", APP_PASSWORD)
        .env("HOME", "/nonexistent")
        .args(["-X", "-A", "-t", "-d", &dsn, "-c", query])
        .output()
        .unwrap_or_else(|e| panic!("psql: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// Any query: psql itself refuses anything but TLS under `sslmode=require`.
const QUERY: &str = "select 40 + 2";

#[tokio::test]
async fn psql_logs_in_over_tls_with_require_verify_full_and_channel_binding() {
    let pki = Pki::new("psql");
    let (cert, key) = pki.issue("pgrelay", &["localhost", "127.0.0.1"]);
    let app = start(&tls_section("require", &cert, &key)).await;
    let port = app.rw_addr.port();
    let ca = pki.ca_file();
    assert_eq!(psql(port, "sslmode=require", QUERY).await.as_deref(), Ok("42"));
    let verify_full = format!("sslmode=verify-full sslrootcert={}", ca.display());
    assert_eq!(psql(port, &verify_full, QUERY).await.as_deref(), Ok("42"));
    let bound = format!("{verify_full} channel_binding=require");
    assert_eq!(psql(port, &bound, QUERY).await.as_deref(), Ok("42"));
    // Through the read-only port too.
    assert_eq!(psql(app.ro_addr.port(), &bound, QUERY).await.as_deref(), Ok("42"));

    // A plain-text client is refused before it authenticates.
    let error = psql(port, "sslmode=disable", QUERY).await.expect_err("plain text is refused");
    assert!(error.contains("pgrelay accepts only TLS connections"), "{error}");
    // verify-full against another CA fails in the client.
    let other = Pki::new("psql-other");
    let wrong_ca = format!("sslmode=verify-full sslrootcert={}", other.ca_file().display());
    let error = psql(port, &wrong_ca, QUERY).await.expect_err("an unknown CA is refused by libpq");
    assert!(error.contains("certificate verify failed"), "{error}");
    app.shutdown(Duration::from_secs(5)).await;
}
