//! A connection to a server: plain TCP or TLS over it, read and written alike.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use nix::{getsockopt_impl, libc, setsockopt_impl, sockopt_impl};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A server connection.
#[derive(Debug)]
pub enum ServerStream {
    /// Unencrypted.
    Plain(TcpStream),
    /// Encrypted with TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

sockopt_impl!(
    /// `SO_RCVLOWAT`: how many bytes must wait before the socket reports itself readable.
    ReceiveLowWater,
    Both,
    libc::SOL_SOCKET,
    libc::SO_RCVLOWAT,
    i32
);

impl ServerStream {
    /// Sets how many bytes must be waiting before the connection wakes its reader (Linux
    /// `SO_RCVLOWAT`; setting it lower wakes the reader at once when that many are waiting).
    ///
    /// # Errors
    /// When the kernel refuses the option.
    pub fn set_receive_low_water(&self, bytes: i32) -> io::Result<()> {
        nix::sys::socket::setsockopt(self.tcp(), ReceiveLowWater, &bytes).map_err(io::Error::from)
    }

    /// The receive low-water mark set now.
    ///
    /// # Errors
    /// When the kernel refuses to say.
    #[cfg(test)]
    pub(crate) fn receive_low_water(&self) -> io::Result<i32> {
        nix::sys::socket::getsockopt(self.tcp(), ReceiveLowWater).map_err(io::Error::from)
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            ServerStream::Plain(tcp) => tcp,
            ServerStream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether the connection is still open and has nothing unread: a connection kept idle
    /// that the server closed (or wrote to, e.g. a FATAL before closing) is not reused.
    pub fn is_quiet(&self) -> bool {
        let tcp = self.tcp();
        let mut probe = [0u8; 1];
        matches!(tcp.try_read(&mut probe), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ServerStream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ServerStream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ServerStream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ServerStream::Tls(tls) => Pin::new(tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerStream::Plain(tcp) => tcp.is_write_vectored(),
            ServerStream::Tls(tls) => tls.is_write_vectored(),
        }
    }
}
