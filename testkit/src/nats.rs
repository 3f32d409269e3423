//! Streams on the machine's NATS server (JetStream), one per test, and NATS servers of a
//! test's own (to kill and restart).

use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::ReservedPort;

/// The machine's NATS server with JetStream.
pub const NATS: &str = "nats://127.0.0.1:4222";

/// A JetStream stream name no other test uses; on drop the stream and its lease bucket
/// (`{name}_leases`, `{name}_parked` and `{name}_settled`, the shared journal's) are deleted.
pub struct ScratchStream(String);

impl ScratchStream {
    /// A fresh name starting with `prefix` (stream names allow letters and digits).
    #[must_use]
    pub fn new(prefix: &str) -> ScratchStream {
        ScratchStream(format!("{prefix}{}", uuid::Uuid::new_v4().simple()))
    }

    /// The stream's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ScratchStream {
    fn drop(&mut self) {
        let name = self.0.clone();
        // Drop may run inside a test's runtime: delete from a thread of its own.
        let deleted = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Runtime::new() else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = async_nats::connect(NATS).await else {
                    return;
                };
                let jetstream = async_nats::jetstream::new(client);
                let _ = jetstream.delete_stream(&name).await;
                let _ = jetstream.delete_stream(format!("{name}_leases")).await;
                let _ = jetstream.delete_stream(format!("{name}_parked")).await;
                let _ = jetstream.delete_stream(format!("{name}_settled")).await;
                let _ = jetstream.delete_stream(format!("{name}_holders")).await;
            });
        })
        .join();
        drop(deleted);
    }
}

/// How long a server of a test's own may take to take connections.
const STARTS_WITHIN: Duration = Duration::from_secs(30);

/// A NATS server with JetStream of the test's own (file storage in a directory that outlives
/// restarts), on a loopback port reserved for it (no other test takes it while the server is
/// down); stopped on drop.
pub struct OwnNats {
    process: Option<crate::ChildProcess>,
    store: tempfile::TempDir,
    port: ReservedPort,
}

impl OwnNats {
    /// Starts a server with a store of its own, and waits until it takes connections.
    pub async fn start() -> OwnNats {
        let mut nats = OwnNats {
            process: None,
            store: tempfile::tempdir().expect("a store directory"),
            port: ReservedPort::new(),
        };
        nats.restart().await;
        nats
    }

    /// The server's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://{}", self.port.address())
    }

    /// Where the server keeps stream `name`'s files (of the global account).
    #[must_use]
    pub fn stream_dir(&self, name: &str) -> std::path::PathBuf {
        self.store
            .path()
            .join("jetstream")
            .join("$G")
            .join("streams")
            .join(name)
    }

    /// Starts the server (again) and waits until it takes connections.
    pub async fn restart(&mut self) {
        let store = self.store.path().display().to_string();
        let port = self.port.port().to_string();
        self.process = Some(crate::ChildProcess::spawn(
            &nats_server(),
            &["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store],
            &[],
        ));
        // Ready once it greets a connection with its INFO line (it may take connections a
        // moment before, while it recovers its streams).
        let deadline = Instant::now() + STARTS_WITHIN;
        while !Self::greets(self.port.port()).await {
            assert!(Instant::now() < deadline, "nats-server did not start");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a NATS server on `port` greets a connection (its `INFO` line).
    pub async fn greets(port: u16) -> bool {
        use tokio::io::AsyncReadExt;
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        let mut greeting = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut greeting)).await,
            Ok(Ok(_))
        ) && &greeting == b"INFO"
    }

    /// SIGKILLs the server: nothing it held in memory only survives.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let killed = std::process::Command::new("kill")
                .args(["-9", &process.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(killed.success());
            process.wait(Duration::from_secs(10));
        }
    }
}

/// The `nats-server` a test starts: the one `scripts/ensure-nats` installed (a release that
/// keeps acknowledged messages across a kill, `TESTKIT_NATS_SERVER` names it), else the one on
/// `PATH`.
#[must_use]
pub fn nats_server() -> std::path::PathBuf {
    std::env::var_os("TESTKIT_NATS_SERVER").map_or_else(
        || std::path::PathBuf::from("nats-server"),
        std::path::PathBuf::from,
    )
}
