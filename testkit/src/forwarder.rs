//! A TCP forwarder that a test stops and starts to take a server away from the process under
//! test (and bring it back), or cuts once right after given bytes went through.

// A test helper fails by panicking: unwrapping is how it says "this must hold".
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::ReservedPort;

/// A TCP forwarder to a server (PostgreSQL, or any TCP service) that can be stopped (every forwarded connection
/// closed, new ones refused) and started again on the same port. It runs on a runtime of its
/// own, so the test's blocking calls (the `tandem` commands it runs) never hold up its tasks.
pub struct Forwarder {
    runtime: Option<tokio::runtime::Runtime>,
    target: SocketAddr,
    /// Its port, kept from every other socket while it is stopped (a listener would accept
    /// connections that a stopped forwarder must refuse), so it starts again at once.
    port: ReservedPort,
    running: Option<Running>,
    /// Bytes whose forwarding cuts their connection once (see [`Forwarder::cut_after`]).
    cut: Cut,
    /// While true, no byte is relayed either way (see [`Forwarder::freeze`]).
    frozen: watch::Sender<bool>,
}

/// The bytes that cut the next connection forwarding them, while armed.
type Cut = Arc<Mutex<Option<&'static [u8]>>>;

/// What every forwarded connection obeys.
#[derive(Clone)]
struct Switches {
    cut: Cut,
    frozen: watch::Receiver<bool>,
}

/// A forwarder that is listening.
struct Running {
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
}

impl Forwarder {
    /// A forwarder to `target` (`host:port`) listening on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When `target` is no socket address or no runtime can be built: the test cannot run.
    pub async fn new(target: &str) -> Forwarder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut forwarder = Forwarder {
            runtime: Some(runtime),
            target: target.parse().expect("a host:port target"),
            port: ReservedPort::new(),
            running: None,
            cut: Cut::default(),
            frozen: watch::channel(false).0,
        };
        forwarder.start().await;
        forwarder
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port.port()
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().unwrap()
    }

    /// Listens (again) on its port.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the forwarder is running already");
        let address = self.port.address();
        // Bound on the forwarder's runtime, whose reactor serves it.
        let bound = self.runtime().spawn(async move {
            let socket = TcpSocket::new_v4()?;
            // Beside the reservation, and the connections it closed linger in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(128)
        });
        let listener = bound
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("the forwarder cannot listen on {address}: {err}"));
        let target = self.target;
        let (stop, stopped) = oneshot::channel();
        let serving = self
            .runtime()
            .spawn(serve(listener, target, stopped, self.switches()));
        self.running = Some(Running { stop, serving });
    }

    /// Arms a cut: the next time a connection forwards `needle` to the server, the server
    /// gets it (and then the end of the connection) but its answer never comes back: the
    /// connection's client sees it closed.
    pub fn cut_after(&self, needle: &'static [u8]) {
        *self.cut.lock().unwrap() = Some(needle);
    }

    /// Freezes (or thaws) every connection: bytes stop moving either way, but nothing is
    /// closed, as when the server hangs (a full disk, a stopped process, a lost network).
    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    fn switches(&self) -> Switches {
        Switches {
            cut: Arc::clone(&self.cut),
            frozen: self.frozen.subscribe(),
        }
    }

    /// Closes every forwarded connection and the listener: connections are refused until
    /// [`Forwarder::start`] (the port stays reserved, nothing listens on it).
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the forwarder is running");
        let _ = running.stop.send(());
        running.serving.await.unwrap();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // A runtime cannot be dropped where the test's runtime blocks on it.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Forwards each connection `listener` accepts to `target` until `stopped`; then closes the
/// listener and every forwarded connection (both ends) before returning.
async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    mut stopped: oneshot::Receiver<()>,
    switches: Switches,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let switches = switches.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        forward(client, server, switches).await;
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Forwards one connection both ways until either end closes it, or until the client sends
/// the armed cut's bytes: then the client's end is closed at once, and the server's after it
/// read them (its answers are read and dropped). While frozen, bytes wait.
async fn forward(client: TcpStream, server: TcpStream, switches: Switches) {
    let (mut client_reader, mut client_writer) = client.into_split();
    let (mut server_reader, mut server_writer) = server.into_split();
    let Switches { cut, frozen } = switches;
    let mut up_frozen = frozen.clone();
    let mut down_frozen = frozen;
    let up = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = client_reader.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            let _ = up_frozen.wait_for(|frozen| !frozen).await;
            server_writer.write_all(&buffer[..read]).await?;
            let mut armed = cut.lock().unwrap();
            let sent = &buffer[..read];
            if armed.is_some_and(|needle| sent.windows(needle.len()).any(|w| w == needle)) {
                *armed = None;
                return Ok(true);
            }
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = server_reader.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let _ = down_frozen.wait_for(|frozen| !frozen).await;
            client_writer.write_all(&buffer[..read]).await?;
        }
    };
    let cut_here = tokio::select! {
        up = up => up.unwrap_or(false),
        _ = down => false,
    };
    drop((client_reader, client_writer));
    if cut_here {
        let _ = server_writer.shutdown().await;
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::copy(&mut server_reader, &mut tokio::io::sink()),
        )
        .await;
    }
}
