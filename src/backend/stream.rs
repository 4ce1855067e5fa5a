//! Opening a server connection's stream: plain TCP, or TLS when
//! `server_tls_sslmode` asks for it and the server agrees.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{ServerSslMode, ServerTls};
use crate::stream::{Socket, Stream};
use crate::wire;

/// Why TLS with a server did not come about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the server does not accept TLS (server_tls_sslmode = {0:?} needs it)")]
    Refused(ServerSslMode),
    #[error("the server answered SSLRequest with {0:?}")]
    BadAnswer(u8),
    #[error("host {0:?} is not a valid TLS server name")]
    BadHostName(String),
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("asking for TLS: {0}")]
    Io(#[from] io::Error),
}

impl TlsError {
    /// The server may accept the next attempt (a dropped connection); a
    /// refusal or a certificate that does not verify will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            TlsError::Io(_) => true,
            TlsError::Handshake(e) => e.kind() != io::ErrorKind::InvalidData,
            TlsError::Refused(_) | TlsError::BadAnswer(_) | TlsError::BadHostName(_) => false,
        }
    }
}

/// Asks for TLS as `tls.sslmode` says and shakes hands: `prefer` carries
/// on in plain text when the server says no, `require` and stricter refuse.
pub async fn negotiate(mut tcp: TcpStream, tls: &ServerTls, host: &str) -> Result<Stream, TlsError> {
    let Some(client_config) = tls.client_config.as_ref().filter(|_| tls.sslmode != ServerSslMode::Disable) else {
        return Ok(Stream::Plain(tcp));
    };
    let mut request = BytesMut::with_capacity(8);
    wire::put_ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // One byte, read straight from the socket: nothing the server sends
    // before the handshake can end up treated as if it came through TLS.
    match tcp.read_u8().await? {
        b'S' => {}
        b'N' if tls.sslmode == ServerSslMode::Prefer => return Ok(Stream::Plain(tcp)),
        b'N' => return Err(TlsError::Refused(tls.sslmode)),
        other => return Err(TlsError::BadAnswer(other)),
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadHostName(host.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(client_config));
    let stream = connector.connect(name, Socket::new(tcp)).await.map_err(TlsError::Handshake)?;
    Ok(Stream::Tls(Box::new(stream.into())))
}
