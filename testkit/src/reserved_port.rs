//! A loopback port held for one test: bound (with `SO_REUSEADDR`) but never listening, so
//! the kernel hands it to no other socket (no `bind` to port 0, no outgoing connection)
//! while connecting to it is refused, yet a listener that sets `SO_REUSEADDR` (Rust's std
//! and tokio, Go, so the proxy, `nats-server`, Prometheus) binds it at once, again after a
//! restart. Picking a free port by binding port 0 and closing it left a gap in which
//! another test could take it before the process meant for it listened.

// A test helper fails by panicking: unwrapping is how it says "this must hold".
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A loopback port no one else gets while this lives; nothing listens on it unless a
/// process given it does.
pub struct ReservedPort {
    // Bound and held, never listening: it is what keeps the port.
    _socket: TcpSocket,
    address: SocketAddr,
}

impl ReservedPort {
    /// Reserves a port of 127.0.0.1 the kernel picks.
    ///
    /// # Panics
    /// When no socket can be bound: the test cannot run.
    #[must_use]
    pub fn new() -> ReservedPort {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let address = socket.local_addr().unwrap();
        ReservedPort {
            _socket: socket,
            address,
        }
    }

    /// `127.0.0.1:port`.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The port alone.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.address.port()
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        ReservedPort::new()
    }
}
