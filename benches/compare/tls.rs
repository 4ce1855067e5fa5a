//! TLS on the client side of the TLS rows: one certificate and key, made
//! here, served by the primary, PgBouncer and pgrelay alike so the three pay
//! for the same handshake; and what a TLS login through a port negotiates.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use pgrelay::localcluster::{LocalCluster, TRUST_USER};

/// How long the primary may take to accept TLS after its reload.
const SSL_ON_TIMEOUT: Duration = Duration::from_secs(20);

/// The key type of the certificate, for the report. rcgen's default, and
/// what PostgreSQL and PgBouncer deployments commonly get today.
pub const KEY_TYPE: &str = "ECDSA P-256 (SHA-256 signature)";

/// The certificate (the server's alone, signed by a throw-away CA) and key
/// files the proxies read, with the same PEM text the primary got, in `dir`,
/// where the TLS rows' proxies also keep their config files and logs.
pub struct TlsFiles {
    pub dir: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it: PEM of
/// the certificate and of its key.
fn certificate() -> Result<(String, String), String> {
    let err = |e: rcgen::Error| format!("making the TLS certificate: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "pgrelay bench CA");
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes the certificate, turns `ssl` on in the primary with it, writes it
/// into `scratch/tls` for the proxies (the key readable by the `postgres` OS user,
/// which PgBouncer runs as when this process is root) and waits until the
/// primary accepts a TLS login.
pub fn enable(cluster: &LocalCluster, scratch: &Path) -> Result<TlsFiles, String> {
    let (cert, key) = certificate()?;
    let dir = subdir(scratch)?;
    let primary = cluster.primary();
    cluster.enable_ssl(primary, &cert, &key).map_err(|e| format!("ssl = on in the primary: {e}"))?;
    let files = TlsFiles { cert_file: dir.join("server.crt"), key_file: dir.join("server.key"), dir };
    super::proxies::write_world_readable(&files.cert_file, &cert)?;
    super::proxies::write_private_to_pgbouncer(&files.key_file, &key)?;
    let deadline = Instant::now() + SSL_ON_TIMEOUT;
    loop {
        match negotiated(primary.port) {
            Ok(_) => return Ok(files),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("the primary did not accept TLS within {SSL_ON_TIMEOUT:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// What a TLS login through `port` negotiates, as psql's `\conninfo` says
/// it (`TLSv1.3, TLS_AES_256_GCM_SHA384`); an error if the login is not
/// encrypted or fails.
pub fn negotiated(port: u16) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", TRUST_USER, "-d", "app"])
        .args(["-c", "\\conninfo"])
        .env("PGSSLMODE", "require")
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.strip_prefix("SSL connection (")) {
        Some(rest) if out.status.success() => Ok(rest
            .trim_end_matches(')')
            .split(", ")
            .filter_map(|part| part.strip_prefix("protocol: ").or_else(|| part.strip_prefix("cipher: ")))
            .collect::<Vec<_>>()
            .join(", ")),
        _ => Err(format!(
            "no TLS login on port {port}: {}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// `scratch/tls`, readable by all (PgBouncer runs as `postgres`).
fn subdir(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let sub = dir.join("tls");
    fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", sub.display()))?;
    Ok(sub)
}
