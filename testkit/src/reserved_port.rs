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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::ReservedPort;

    #[test]
    fn a_reserved_port_refuses_connections_is_given_to_no_other_socket_and_binds_beside() {
        let reserved = ReservedPort::new();
        assert!(
            TcpStream::connect(reserved.address()).is_err(),
            "nothing listens on a reserved port"
        );
        // std's listener sets SO_REUSEADDR, as tokio's and Go's do: it binds beside the
        // reservation, and the port is refused again once it is closed.
        let listener = TcpListener::bind(reserved.address()).unwrap();
        assert!(TcpStream::connect(reserved.address()).is_ok());
        drop(listener);
        assert!(TcpStream::connect(reserved.address()).is_err());
        // The kernel hands it to no socket bound to port 0 while it is held.
        let taken: Vec<TcpListener> = (0..2_000)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        assert!(taken
            .iter()
            .all(|other| other.local_addr().unwrap().port() != reserved.port()));
    }
}
