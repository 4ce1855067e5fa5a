//! `[tls]`: how pgrelay talks TLS to the servers (`server_tls_*`). The
//! files are read, parsed and checked here, at load, into a ready rustls
//! client configuration, so a reload with a bad file changes nothing and a
//! connection never reads a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::locate::{error_at, Locations};
use super::raw::RawTls;
use super::validate::choice;
use super::ConfigError;

/// `server_tls_sslmode`, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSslMode {
    /// Never ask for TLS (pgrelay before `[tls]` existed).
    Disable,
    /// Ask for TLS, carry on in plain text when the server says no.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS with a certificate signed by `server_tls_ca_file`.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the node's host.
    VerifyFull,
}

/// The validated server side of `[tls]`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub sslmode: ServerSslMode,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub protocols: TlsProtocols,
    /// What the files held when loaded: a reload that changes a file's
    /// contents changes the configuration, so new connections use it.
    contents: Vec<Vec<u8>>,
    /// Built from the above; `None` with `disable`.
    pub client_config: Option<Arc<rustls::ClientConfig>>,
}

impl ServerTls {
    /// The same settings for a tokio-postgres connection (the monitors,
    /// user lookups): sets its sslmode and returns the connector to use,
    /// `None` for plain text. tokio-postgres knows prefer and require only:
    /// the certificate checks of verify-ca and verify-full live in the
    /// rustls settings, as for pooled connections.
    pub fn tokio_postgres(
        &self,
        connect: &mut tokio_postgres::Config,
    ) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
        use tokio_postgres::config::SslMode;
        let mode = match self.sslmode {
            ServerSslMode::Disable => SslMode::Disable,
            ServerSslMode::Prefer => SslMode::Prefer,
            ServerSslMode::Require | ServerSslMode::VerifyCa | ServerSslMode::VerifyFull => SslMode::Require,
        };
        connect.ssl_mode(mode);
        let client_config = self.client_config.as_ref().filter(|_| mode != SslMode::Disable)?;
        Some(tokio_postgres_rustls::MakeRustlsConnect::new(rustls::ClientConfig::clone(client_config)))
    }
}

/// The future that drives a tokio-postgres connection (its result dropped).
pub type PgConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Connects with tokio-postgres over `tls` (from [`ServerTls::tokio_postgres`])
/// or in plain text; the caller runs the returned connection future.
pub async fn connect_tokio_postgres(
    connect: &tokio_postgres::Config,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
    Ok(match tls {
        Some(tls) => {
            let (client, connection) = connect.connect(tls.clone()).await?;
            (client, Box::pin(async move { drop(connection.await) }))
        }
        None => {
            let (client, connection) = connect.connect(tokio_postgres::NoTls).await?;
            (client, Box::pin(async move { drop(connection.await) }))
        }
    })
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.sslmode == other.sslmode
            && self.ca_file == other.ca_file
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.protocols == other.protocols
            && self.contents == other.contents
    }
}

/// `server_tls_protocols`: the TLS versions pgrelay offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProtocols {
    pub tls12: bool,
    pub tls13: bool,
}

impl ServerSslMode {
    /// As the config file spells it.
    pub fn name(self) -> &'static str {
        match self {
            ServerSslMode::Disable => "disable",
            ServerSslMode::Prefer => "prefer",
            ServerSslMode::Require => "require",
            ServerSslMode::VerifyCa => "verify-ca",
            ServerSslMode::VerifyFull => "verify-full",
        }
    }
}

impl TlsProtocols {
    /// As the config file takes it.
    pub fn name(self) -> &'static str {
        match (self.tls12, self.tls13) {
            (true, true) => "tlsv1.2,tlsv1.3",
            (true, false) => "tlsv1.2",
            _ => "tlsv1.3",
        }
    }

    pub(super) fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
        const ONLY_12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
        const ONLY_13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match (self.tls12, self.tls13) {
            (true, false) => ONLY_12,
            (false, true) => ONLY_13,
            _ => BOTH,
        }
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            sslmode: ServerSslMode::Disable,
            ca_file: None,
            cert_file: None,
            key_file: None,
            protocols: TlsProtocols { tls12: true, tls13: true },
            contents: Vec::new(),
            client_config: None,
        }
    }
}

/// The crypto provider of every TLS connection: ring builds with a C
/// compiler alone (aws-lc-rs wants cmake) and links no OpenSSL.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// One `[tls]` key, for reading its file and reporting errors about it.
pub(super) struct TlsKey<'l, 't> {
    pub key: &'static str,
    pub locations: &'l Locations<'t>,
}

impl TlsKey<'_, '_> {
    pub fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        error_at(&self.locations.key("tls", self.key), format!("[tls] {}", self.key), message)
    }

    pub fn read(&self, path: &Path) -> Result<Vec<u8>, ConfigError> {
        std::fs::read(path).map_err(|e| self.error(format!("reading {}: {e}", path.display())))
    }

    pub fn certificates(&self, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("{}: not a PEM certificate file: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(self.error(format!("{}: holds no PEM certificate", path.display())));
        }
        for (index, cert) in certs.iter().enumerate() {
            let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| {
                self.error(format!("{}: certificate {}: not a valid X.509 certificate: {e}", path.display(), index + 1))
            })?;
            let validity = parsed.validity();
            if !validity.is_valid() {
                return Err(self.error(format!(
                    "{}: certificate {} ({}) is valid only from {} to {}, not now",
                    path.display(),
                    index + 1,
                    parsed.subject(),
                    validity.not_before,
                    validity.not_after,
                )));
            }
        }
        Ok(certs)
    }
}

pub(super) fn server(raw: &RawTls, locations: &Locations<'_>) -> Result<ServerTls, ConfigError> {
    let key = |key| TlsKey { key, locations };
    let modes = [
        ("disable", ServerSslMode::Disable),
        ("prefer", ServerSslMode::Prefer),
        ("require", ServerSslMode::Require),
        ("verify-ca", ServerSslMode::VerifyCa),
        ("verify-full", ServerSslMode::VerifyFull),
    ];
    let sslmode_key = key("server_tls_sslmode");
    let sslmode = choice(raw.server_tls_sslmode.as_deref(), ServerSslMode::Prefer, &modes, |m| sslmode_key.error(m))?;
    let (ca_file, cert_file, key_file) =
        (path(&raw.server_tls_ca_file), path(&raw.server_tls_cert_file), path(&raw.server_tls_key_file));
    let protocols = protocols(raw.server_tls_protocols.as_deref()).map_err(|e| key("server_tls_protocols").error(e))?;
    if matches!(sslmode, ServerSslMode::VerifyCa | ServerSslMode::VerifyFull) && ca_file.is_none() {
        return Err(key("server_tls_ca_file").error(format!(
            "must be set with server_tls_sslmode = \"{}\" (the CA that signs the servers' certificates)",
            if sslmode == ServerSslMode::VerifyCa { "verify-ca" } else { "verify-full" }
        )));
    }
    match (&cert_file, &key_file) {
        (Some(_), None) => return Err(key("server_tls_key_file").error("must be set with server_tls_cert_file")),
        (None, Some(_)) => return Err(key("server_tls_cert_file").error("must be set with server_tls_key_file")),
        _ => {}
    }
    let mut tls =
        ServerTls { sslmode, ca_file, cert_file, key_file, protocols, contents: Vec::new(), client_config: None };
    if sslmode == ServerSslMode::Disable {
        return Ok(tls);
    }
    let provider = provider();
    let roots = match &tls.ca_file {
        Some(path) => {
            let ca = key("server_tls_ca_file");
            let pem = ca.read(path)?;
            let mut roots = RootCertStore::empty();
            for cert in ca.certificates(path, &pem)? {
                roots.add(cert).map_err(|e| ca.error(format!("{}: {e}", path.display())))?;
            }
            tls.contents.push(pem);
            Some(Arc::new(roots))
        }
        None => None,
    };
    let verifier = verifier(sslmode, roots, &provider).map_err(|e| key("server_tls_ca_file").error(e))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(protocols.versions())
        .map_err(|e| key("server_tls_protocols").error(e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let (cert, private) = (key("server_tls_cert_file"), key("server_tls_key_file"));
            let cert_pem = cert.read(cert_path)?;
            let chain = cert.certificates(cert_path, &cert_pem)?;
            let key_pem = private.read(key_path)?;
            let private_key = private_key(&private, key_path, &key_pem)?;
            tls.contents.extend([cert_pem, key_pem]);
            builder.with_client_auth_cert(chain, private_key).map_err(|e| {
                private.error(format!(
                    "{} does not fit server_tls_cert_file {}: {e}",
                    key_path.display(),
                    cert_path.display()
                ))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    tls.client_config = Some(Arc::new(config));
    Ok(tls)
}

/// A file key's path; empty means unset.
pub(super) fn path(text: &Option<String>) -> Option<PathBuf> {
    text.as_deref().filter(|t| !t.is_empty()).map(PathBuf::from)
}

/// A PEM private key file's key.
pub(super) fn private_key(
    key: &TlsKey<'_, '_>,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| key.error(format!("{}: not a PEM private key: {e}", path.display())))
}

/// `server_tls_protocols` as PgBouncer spells it: a comma-separated list of
/// `tlsv1.2`, `tlsv1.3`, or `secure` / `all` / `default` for both (rustls has
/// nothing older).
pub(super) fn protocols(text: Option<&str>) -> Result<TlsProtocols, String> {
    let Some(text) = text else { return Ok(TlsProtocols { tls12: true, tls13: true }) };
    let (mut tls12, mut tls13) = (false, false);
    for word in text.split(',').map(|w| w.trim().to_ascii_lowercase()) {
        match word.as_str() {
            "secure" | "all" | "default" => (tls12, tls13) = (true, true),
            "tlsv1.2" => tls12 = true,
            "tlsv1.3" => tls13 = true,
            other => {
                return Err(format!(
                    "unknown protocol {other:?} (expected \"tlsv1.2\", \"tlsv1.3\", \"secure\" or \"all\")"
                ))
            }
        }
    }
    if !tls12 && !tls13 {
        return Err("names no protocol".to_owned());
    }
    Ok(TlsProtocols { tls12, tls13 })
}

/// What checks a server's certificate. As in libpq, `prefer` and `require`
/// check the chain only when a CA file is given, and only `verify-full`
/// checks that the certificate names the host.
fn verifier(
    sslmode: ServerSslMode,
    roots: Option<Arc<RootCertStore>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let Some(roots) = roots else {
        return Ok(Arc::new(AcceptAnyCertificate(provider.clone())));
    };
    let webpki =
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| e.to_string())?;
    Ok(match sslmode {
        ServerSslMode::VerifyFull => webpki,
        _ => Arc::new(ChainOnly(webpki)),
    })
}

/// `prefer` / `require` without a CA: encryption against eavesdroppers,
/// no proof of whom pgrelay talks to (libpq does the same). The handshake's
/// signatures are still checked against the certificate presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
/// webpki checks the chain before the name, so a name error means the
/// chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
