//! `[tls] client_tls_*`: TLS between clients and pgrelay. As for the
//! server side, the files are read and checked at load into a ready rustls
//! server configuration: a reload with a bad file changes nothing, and a
//! reload with good ones serves new connections while connected clients
//! keep the session they have.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::locate::Locations;
use super::raw::RawTls;
use super::tls::{path, private_key, protocols, provider, TlsKey, TlsProtocols};
use super::validate::choice;
use super::ConfigError;

/// `client_tls_sslmode`, with PgBouncer's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSslMode {
    /// Every SSLRequest is answered "N" (the default without a certificate).
    Disable,
    /// TLS for clients that ask for it, plain text for the others.
    Allow,
    /// The same for clients (the difference is libpq's, on the asking side).
    Prefer,
    /// Plain-text clients are refused before authentication.
    Require,
    /// `Require`, and every client presents a certificate signed by
    /// `client_tls_ca_file`.
    VerifyCa,
    /// `VerifyCa`, and the certificate's common name is the user name the
    /// client logs in as (PostgreSQL's `clientcert=verify-full`).
    VerifyFull,
}

impl ClientSslMode {
    /// As the config file spells it.
    pub fn name(self) -> &'static str {
        match self {
            ClientSslMode::Disable => "disable",
            ClientSslMode::Allow => "allow",
            ClientSslMode::Prefer => "prefer",
            ClientSslMode::Require => "require",
            ClientSslMode::VerifyCa => "verify-ca",
            ClientSslMode::VerifyFull => "verify-full",
        }
    }

    /// Plain-text clients are refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, ClientSslMode::Require | ClientSslMode::VerifyCa | ClientSslMode::VerifyFull)
    }
}

/// The validated client side of `[tls]`.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub sslmode: ClientSslMode,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub protocols: TlsProtocols,
    /// What the files held when loaded (see `ServerTls`).
    contents: Vec<Vec<u8>>,
    /// Built from the above; `None` with `disable`.
    pub acceptor: Option<Arc<ClientTlsAcceptor>>,
}

/// What a TLS client connection is accepted with; one per loaded
/// configuration, held by each connection for its whole login.
#[derive(Debug)]
pub struct ClientTlsAcceptor {
    pub config: Arc<rustls::ServerConfig>,
    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of
    /// pgrelay's certificate, with the hash its signature uses (SHA-256 for
    /// MD5 and SHA-1), as a SCRAM-SHA-256-PLUS client computes it.
    pub end_point: Vec<u8>,
    /// What is asked of clients besides the handshake: TLS itself under
    /// `require` and stricter, the user's name in the certificate under `verify-full`.
    pub sslmode: ClientSslMode,
}

/// The ALPN protocol of PostgreSQL connections; clients that open with TLS
/// directly (`sslnegotiation=direct`) must ask for it.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.sslmode == other.sslmode
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.ca_file == other.ca_file
            && self.protocols == other.protocols
            && self.contents == other.contents
    }
}

impl Default for ClientTls {
    fn default() -> Self {
        ClientTls {
            sslmode: ClientSslMode::Disable,
            cert_file: None,
            key_file: None,
            ca_file: None,
            protocols: TlsProtocols { tls12: true, tls13: true },
            contents: Vec::new(),
            acceptor: None,
        }
    }
}

pub(super) fn client(raw: &RawTls, locations: &Locations<'_>) -> Result<ClientTls, ConfigError> {
    let key = |key| TlsKey { key, locations };
    let (cert_file, key_file, ca_file) =
        (path(&raw.client_tls_cert_file), path(&raw.client_tls_key_file), path(&raw.client_tls_ca_file));
    let modes = [
        ("disable", ClientSslMode::Disable),
        ("allow", ClientSslMode::Allow),
        ("prefer", ClientSslMode::Prefer),
        ("require", ClientSslMode::Require),
        ("verify-ca", ClientSslMode::VerifyCa),
        ("verify-full", ClientSslMode::VerifyFull),
    ];
    let default = if cert_file.is_some() { ClientSslMode::Prefer } else { ClientSslMode::Disable };
    let sslmode_key = key("client_tls_sslmode");
    let sslmode = choice(raw.client_tls_sslmode.as_deref(), default, &modes, |m| sslmode_key.error(m))?;
    let protocols = protocols(raw.client_tls_protocols.as_deref()).map_err(|e| key("client_tls_protocols").error(e))?;
    let mut tls = ClientTls { sslmode, cert_file, key_file, ca_file, protocols, contents: Vec::new(), acceptor: None };
    if sslmode == ClientSslMode::Disable {
        if let Some(path) = &tls.ca_file {
            return Err(key("client_tls_ca_file").error(format!(
                "{} is set but client_tls_sslmode is \"disable\": no client certificate would be checked",
                path.display()
            )));
        }
        return Ok(tls);
    }
    let (Some(cert_path), Some(key_path)) = (tls.cert_file.clone(), tls.key_file.clone()) else {
        let missing = if tls.cert_file.is_none() { "client_tls_cert_file" } else { "client_tls_key_file" };
        return Err(key(missing).error(format!(
            "must be set with client_tls_sslmode = \"{}\" (pgrelay's certificate and its private key, PEM)",
            sslmode.name()
        )));
    };
    if matches!(sslmode, ClientSslMode::VerifyCa | ClientSslMode::VerifyFull) && tls.ca_file.is_none() {
        return Err(key("client_tls_ca_file").error(format!(
            "must be set with client_tls_sslmode = \"{}\" (the CA that signs the clients' certificates)",
            sslmode.name()
        )));
    }
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(protocols.versions())
        .map_err(|e| key("client_tls_protocols").error(e))?;
    let builder = match &tls.ca_file {
        Some(path) => {
            let ca = key("client_tls_ca_file");
            let pem = ca.read(path)?;
            let mut roots = RootCertStore::empty();
            for cert in ca.certificates(path, &pem)? {
                roots.add(cert).map_err(|e| ca.error(format!("{}: {e}", path.display())))?;
            }
            tls.contents.push(pem);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ca.error(format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (cert, private) = (key("client_tls_cert_file"), key("client_tls_key_file"));
    let cert_pem = cert.read(&cert_path)?;
    let chain = cert.certificates(&cert_path, &cert_pem)?;
    let key_pem = private.read(&key_path)?;
    let private_key = private_key(&private, &key_path, &key_pem)?;
    let end_point = end_point_hash(&chain[0]);
    tls.contents.extend([cert_pem, key_pem]);
    let mut config = builder.with_single_cert(chain, private_key).map_err(|e| {
        private.error(format!("{} does not fit client_tls_cert_file {}: {e}", key_path.display(), cert_path.display()))
    })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    let acceptor = ClientTlsAcceptor { config: Arc::new(config), end_point, sslmode };
    tls.acceptor = Some(Arc::new(acceptor));
    Ok(tls)
}

/// RFC 5929's `tls-server-end-point`: the certificate hashed with the hash
/// of its signature algorithm, SHA-256 when that is MD5 or SHA-1 or has no
/// hash of its own. The certificate was parsed when it was loaded.
fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    let algorithm = x509_parser::parse_x509_certificate(cert)
        .map(|(_, parsed)| parsed.signature_algorithm.algorithm.to_id_string())
        .unwrap_or_default();
    match algorithm.as_str() {
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Sha384::digest(cert).to_vec(),
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Sha512::digest(cert).to_vec(),
        _ => Sha256::digest(cert).to_vec(),
    }
}
