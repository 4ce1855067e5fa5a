//! A server connection's byte stream: plain TCP or TLS over it, chosen once
//! when the connection opens (`server_tls_sslmode`). Two arms of an enum,
//! not a boxed trait object, so the plain path stays a direct call.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::{ServerSslMode, ServerTls};
use crate::wire;

#[derive(Debug)]
pub enum ServerStream {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and most of it is cold.
    Tls(Box<TlsStream<TcpStream>>),
}

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

impl ServerStream {
    /// Asks for TLS as `tls.sslmode` says and shakes hands: `prefer` carries
    /// on in plain text when the server says no, `require` and stricter refuse.
    pub async fn negotiate(mut tcp: TcpStream, tls: &ServerTls, host: &str) -> Result<ServerStream, TlsError> {
        let Some(client_config) = tls.client_config.as_ref().filter(|_| tls.sslmode != ServerSslMode::Disable) else {
            return Ok(ServerStream::Plain(tcp));
        };
        let mut request = BytesMut::with_capacity(8);
        wire::put_ssl_request(&mut request);
        tcp.write_all(&request).await?;
        // One byte, read straight from the socket: nothing the server sends
        // before the handshake can end up treated as if it came through TLS.
        match tcp.read_u8().await? {
            b'S' => {}
            b'N' if tls.sslmode == ServerSslMode::Prefer => return Ok(ServerStream::Plain(tcp)),
            b'N' => return Err(TlsError::Refused(tls.sslmode)),
            other => return Err(TlsError::BadAnswer(other)),
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadHostName(host.to_owned()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(client_config));
        let stream = connector.connect(name, tcp).await.map_err(TlsError::Handshake)?;
        Ok(ServerStream::Tls(Box::new(stream)))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(tcp) => tcp,
            ServerStream::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether the socket takes writes now.
    #[inline]
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_write_ready(cx)
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    /// TLS may keep records it encrypted but could not write yet
    /// ([`ServerStream::has_buffered_output`]).
    #[inline]
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Plain(tcp) => tcp.try_write(buf),
            ServerStream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut **tls).poll_write(&mut cx, buf) {
                    Poll::Ready(written) => written,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// TLS records encrypted but not yet written to the socket.
    #[inline]
    pub fn has_buffered_output(&self) -> bool {
        match self {
            ServerStream::Plain(_) => false,
            ServerStream::Tls(tls) => tls.get_ref().1.wants_write(),
        }
    }

    /// Writes what TLS holds encrypted, as far as the socket takes it now.
    pub fn try_write_buffered(&mut self) -> io::Result<()> {
        match self {
            ServerStream::Plain(_) => Ok(()),
            ServerStream::Tls(tls) => {
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(&mut **tls).poll_flush(&mut cx) {
                    Poll::Ready(flushed) => flushed,
                    Poll::Pending => Ok(()),
                }
            }
        }
    }

    /// True when the idle connection has data or EOF waiting: the server said
    /// something unasked (e.g. FATAL on shutdown) and the connection is unusable.
    /// tokio's cached readiness answers without a syscall: the session's last
    /// short read cleared it, so "readable" means something arrived since
    /// (only then a read confirms it). With TLS the read goes through rustls,
    /// which answers from plaintext it holds first, counts a close_notify as
    /// EOF, and swallows records that carry no data (session tickets).
    pub fn has_unsolicited_input(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            ServerStream::Plain(tcp) => {
                if tcp.poll_read_ready(&mut cx).is_pending() {
                    return false;
                }
                let mut probe = [0u8; 1];
                match tcp.try_read(&mut probe) {
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            ServerStream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                // Not ready: no plaintext held, and nothing new on the socket.
                Pin::new(&mut **tls).poll_read(&mut cx, &mut probe).is_ready()
            }
        }
    }
}

impl AsyncRead for ServerStream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerStream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
