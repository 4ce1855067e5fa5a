//! TLS from clients to pgrelay (`[tls] client_tls_*`): certificates made by
//! the test, psql (libpq), tokio-postgres and hand-driven rustls clients.
//! This file holds the shared helpers and the psql tests; the submodules
//! hold the drivers' tests, client certificates, the opening of a
//! connection (SSLRequest, direct TLS, bad input) and certificate reloads.

mod client_certs;
mod drivers;
mod negotiation;
mod reload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pgrelay::config::Config;
use pgrelay::localcluster::{APP_PASSWORD, APP_USER};
use pgrelay::RunningApp;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::client::TlsStream;

use crate::support::relay::Raw;
use crate::support::{cluster, relay};

/// A CA and what it signed, written to a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A certificate a [`Pki`] issued: its files, and the certificate itself.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    key_der: Vec<u8>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        Pki::signing_with(name, &rcgen::PKCS_ECDSA_P256_SHA256)
    }

    /// A CA whose key signs with `algorithm`, which is then the signature
    /// algorithm of every certificate it issues.
    fn signing_with(name: &str, algorithm: &'static rcgen::SignatureAlgorithm) -> Pki {
        let dir = cluster().base_dir().join(format!("client-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate_for(algorithm).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("pgrelay test CA {name}"));
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// A certificate for `names` (the first is also its common name), as
    /// `<file>.crt` and `<file>.key`.
    fn issue(&self, file: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_private(&key_path, &key.serialize_pem());
        Issued { cert: cert_path, key: key_path, der: cert.der().to_vec(), key_der: key.serialize_der() }
    }

    /// pgrelay's certificate, for both of the names a test may dial.
    fn server_cert(&self) -> Issued {
        self.issue("pgrelay", &["localhost", "127.0.0.1"])
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Roots that trust this CA only.
    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

/// A key file only its owner may read (libpq refuses others).
fn write_private(path: &Path, pem: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The `[tls]` keys for pgrelay's certificate and `sslmode`.
fn tls_section(sslmode: &str, cert: &Issued) -> String {
    tls_files(sslmode, &cert.cert, &cert.key)
}

fn tls_files(sslmode: &str, cert: &Path, key: &Path) -> String {
    format!(
        "client_tls_sslmode = \"{sslmode}\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// The test config with `tls` as its `[tls]` section; `app` may use the
/// admin console.
fn config_text(tls: &str) -> String {
    format!("{}\n[admin]\nadmin_users = [\"{APP_USER}\"]\n\n[tls]\n{tls}\n", relay::config_toml(cluster(), "", ""))
}

async fn start(tls: &str) -> RunningApp {
    start_text(&config_text(tls)).await
}

async fn start_text(toml: &str) -> RunningApp {
    relay::start(Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))).await
}

/// psql as `app` with the libpq connection settings `conninfo` (a later
/// `dbname` wins over `app`), off the runtime pgrelay runs on; returns
/// stdout or the error psql printed.
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

/// The end-entity certificate a client's last handshake was shown.
type SeenCert = Arc<Mutex<Option<Vec<u8>>>>;

/// The usual WebPKI check against the test CA, remembering the certificate
/// it checked: proof that a connection really was TLS, and with which
/// certificate of pgrelay's.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: SeenCert,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client that trusts `pki`'s CA only, asks for ALPN `alpn`
/// (none when empty), presents `client` if given, and records the
/// certificate it was shown.
fn client_config(pki: &Pki, alpn: &[&[u8]], client: Option<&Issued>) -> (rustls::ClientConfig, SeenCert) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(pki.roots()), provider.clone()).build().unwrap();
    let seen = SeenCert::default();
    let verifier = Arc::new(Recording { inner, seen: seen.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(cert) => {
            let key = PrivatePkcs8KeyDer::from(cert.key_der.clone());
            builder.with_client_auth_cert(vec![CertificateDer::from(cert.der.clone())], key.into()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (config, seen)
}

/// A tokio-postgres connector for `pki` (see [`client_config`]).
fn connector(pki: &Pki) -> (MakeRustlsConnect, SeenCert) {
    let (config, seen) = client_config(pki, &[], None);
    (MakeRustlsConnect::new(config), seen)
}

/// tokio-postgres settings for `user` through pgrelay at `port`:
/// sslmode=require, channel binding as `binding`.
fn pg_config(port: u16, user: &str, password: &str, binding: ChannelBinding) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname("app")
        .ssl_mode(SslMode::Require)
        .channel_binding(binding)
        .connect_timeout(Duration::from_secs(10));
    if !password.is_empty() {
        config.password(password);
    }
    config
}

/// Connects over TLS with `tls` and runs the connection in a task.
async fn connect_tls(config: &tokio_postgres::Config, tls: MakeRustlsConnect) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A TLS client of pgrelay driven by hand.
type RawTls = Raw<TlsStream<TcpStream>>;

/// Sends an SSLRequest, expects 'S', and makes the TLS handshake with `config`.
async fn ssl_request(addr: std::net::SocketAddr, config: rustls::ClientConfig) -> std::io::Result<RawTls> {
    let mut tcp = TcpStream::connect(addr).await?;
    let mut request = BytesMut::new();
    pgrelay::wire::put_ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    assert_eq!(answer[0], b'S', "pgrelay accepts the SSLRequest");
    handshake(tcp, config).await
}

/// The client side of a TLS handshake on `tcp`, as `localhost` (5 s limit).
async fn handshake(tcp: TcpStream, config: rustls::ClientConfig) -> std::io::Result<RawTls> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("the handshake ends within 5 s")?;
    Ok(Raw { stream, buf: BytesMut::new() })
}

/// Logs in as the trust user on a raw connection; returns the messages up
/// to ReadyForQuery (or the close).
async fn raw_login<S>(raw: &mut Raw<S>) -> Vec<(u8, bytes::Bytes)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    let user = pgrelay::localcluster::TRUST_USER.as_bytes();
    pgrelay::wire::put_startup_message(&mut out, [(&b"user"[..], user), (b"database", b"app")]);
    raw.send(&out).await;
    raw.until_ready().await
}

/// The first ErrorResponse among `messages`: (SQLSTATE, message).
fn first_error(messages: &[(u8, bytes::Bytes)]) -> Option<(String, String)> {
    messages.iter().find(|(tag, _)| *tag == b'E').map(|(_, body)| relay::error_fields(body))
}

/// Any query: psql itself refuses anything but TLS under `sslmode=require`.
const QUERY: &str = "select 40 + 2";

#[tokio::test]
async fn psql_logs_in_over_tls_with_require_verify_full_and_channel_binding() {
    let pki = Pki::new("psql");
    let app = start(&tls_section("require", &pki.server_cert())).await;
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

/// The admin console is a login like any other: TLS works for it, and
/// `require` refuses it in plain text before it authenticates.
#[tokio::test]
async fn the_admin_console_is_reached_over_tls_and_refused_in_plain_text_under_require() {
    let pki = Pki::new("console");
    let app = start(&tls_section("require", &pki.server_cert())).await;
    let port = app.rw_addr.port();
    assert_eq!(psql(port, "sslmode=require", QUERY).await.as_deref(), Ok("42"), "makes the pool app/app");
    let pools = psql(port, "sslmode=require dbname=pgrelay", "SHOW POOLS").await.expect("SHOW POOLS over TLS");
    assert!(pools.lines().any(|line| line.starts_with("app|app|")), "{pools}");
    let error = psql(port, "sslmode=disable dbname=pgrelay", "SHOW POOLS").await.expect_err("plain text is refused");
    assert!(error.contains("pgrelay accepts only TLS connections"), "{error}");
    app.shutdown(Duration::from_secs(5)).await;
}
