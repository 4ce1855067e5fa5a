//! A connection's byte stream, to a client or to a server: plain TCP or TLS
//! over it, chosen when the connection opens. Two arms of an enum, not a
//! boxed trait object, so the plain path stays a direct call.
//! Also the TCP options (`[pool] tcp_*`) every such socket gets.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::config::TcpOptions;

#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session is large, and most of it is cold.
    Tls(Box<TlsStream<Socket>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0.tcp(),
        }
    }

    /// Registers the socket with the reactor of the runtime this runs on:
    /// a server connection moving to another worker keeps its socket and
    /// its TLS session. Nothing may be waiting on the socket meanwhile.
    pub fn rebind(self) -> io::Result<Stream> {
        fn rebind(tcp: TcpStream) -> io::Result<TcpStream> {
            TcpStream::from_std(tcp.into_std()?)
        }
        Ok(match self {
            Stream::Plain(tcp) => Stream::Plain(rebind(tcp)?),
            Stream::Tls(mut tls) => {
                let socket = &mut tls.get_mut().0;
                socket.0 = Some(rebind(socket.take_tcp())?);
                Stream::Tls(tls)
            }
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The protocol agreed with ALPN in the TLS handshake.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => tls.get_ref().1.alpn_protocol(),
        }
    }

    /// The TLS protocol and cipher suite, e.g. `TLSv1.3/TLS13_AES_256_GCM_SHA384`
    /// ("" in plain text).
    pub fn tls_description(&self) -> String {
        let Stream::Tls(tls) = self else { return String::new() };
        let state = tls.get_ref().1;
        let version = match state.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            other => other.map_or_else(String::new, |v| format!("{v:?}")),
        };
        let suite = state.negotiated_cipher_suite().map_or_else(String::new, |s| format!("{:?}", s.suite()));
        format!("{version}/{suite}")
    }

    /// The peer's own certificate (DER), when it presented one over TLS.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => Some(tls.get_ref().1.peer_certificates()?.first()?.to_vec()),
        }
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
    /// ([`Stream::has_buffered_output`]).
    #[inline]
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.try_write(buf),
            Stream::Tls(tls) => {
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
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.get_ref().1.wants_write(),
        }
    }

    /// Writes what TLS holds encrypted, as far as the socket takes it now.
    pub fn try_write_buffered(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(tls) => {
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
            Stream::Plain(tcp) => {
                if tcp.poll_read_ready(&mut cx).is_pending() {
                    return false;
                }
                let mut probe = [0u8; 1];
                match tcp.try_read(&mut probe) {
                    Ok(_) => true,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                }
            }
            Stream::Tls(tls) => {
                let mut probe = [0u8; 1];
                let mut probe = ReadBuf::new(&mut probe);
                // Not ready: no plaintext held, and nothing new on the socket.
                Pin::new(&mut **tls).poll_read(&mut cx, &mut probe).is_ready()
            }
        }
    }
}

/// The TCP socket under a TLS session. An `Option` only so that
/// [`Stream::rebind`] can move it to another reactor while rustls keeps the
/// session around it; it is empty only during that move.
#[derive(Debug)]
pub struct Socket(Option<TcpStream>);

impl Socket {
    pub fn new(tcp: TcpStream) -> Socket {
        Socket(Some(tcp))
    }

    /// The socket itself, for plain text again (a handshake that failed).
    pub fn take_tcp(&mut self) -> TcpStream {
        self.0.take().expect("a TLS socket is only empty while it is rebound")
    }

    #[inline]
    fn tcp(&self) -> &TcpStream {
        self.0.as_ref().expect("a TLS socket is only empty while it is rebound")
    }

    #[inline]
    fn tcp_mut(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.0.as_mut().expect("a TLS socket is only empty while it is rebound"))
    }
}

impl AsyncRead for Socket {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().tcp_mut().poll_write(cx, buf)
    }

    /// rustls writes its records with one vectored write (an alert on a
    /// failed handshake with exactly one, best effort): it must reach the socket whole.
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp_mut().poll_shutdown(cx)
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}

/// Sets `[pool]`'s TCP options (keepalive, TCP_USER_TIMEOUT) on a socket
/// pgrelay accepted or opened. A kernel that refuses one is logged (as a
/// warning the first time) and the connection goes on without it.
pub fn set_tcp_options(tcp: &TcpStream, options: &TcpOptions) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(error) = try_set_tcp_options(tcp, options) {
        if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(%error, "could not set the TCP options of [pool] on a socket");
        } else {
            tracing::warn!(%error, "could not set the TCP options of [pool] on a socket; connections go on without");
        }
    }
}

fn try_set_tcp_options(tcp: &TcpStream, options: &TcpOptions) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    // Off needs no call: sockets start without keepalive, accepted ones as their listener.
    if let Some(keepalive) = options.keepalive {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(idle) = keepalive.idle {
            params = params.with_time(idle);
        }
        if let Some(interval) = keepalive.interval {
            params = params.with_interval(interval);
        }
        if let Some(count) = keepalive.count {
            params = params.with_retries(count);
        }
        socket.set_tcp_keepalive(&params)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = options.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}
