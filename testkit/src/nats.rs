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
    /// Its place in a [`NatsCluster`]: its name, its route port, and the others' route URLs.
    cluster: Option<(String, ReservedPort, Vec<String>)>,
    /// The user and password a client must give, if any.
    user: Option<(String, String)>,
}

impl OwnNats {
    /// Starts a server with a store of its own, and waits until it takes connections.
    pub async fn start() -> OwnNats {
        let mut nats = OwnNats::new(None);
        nats.restart().await;
        nats
    }

    /// [`OwnNats::start`] with a server that takes only clients logging in as `user` with
    /// `password`.
    pub async fn start_with_user(user: &str, password: &str) -> OwnNats {
        let mut nats = OwnNats::new(None);
        nats.user = Some((user.to_owned(), password.to_owned()));
        nats.restart().await;
        nats
    }

    fn new(cluster: Option<(String, ReservedPort, Vec<String>)>) -> OwnNats {
        OwnNats {
            process: None,
            store: tempfile::tempdir().expect("a store directory"),
            port: ReservedPort::new(),
            cluster,
            user: None,
        }
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
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &store]
            .map(str::to_owned)
            .to_vec();
        if let Some((name, route, routes)) = &self.cluster {
            args.extend([
                "--server_name".to_owned(),
                name.clone(),
                "--cluster_name".to_owned(),
                "tandem-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://{}", route.address()),
                "--routes".to_owned(),
                routes.join(","),
            ]);
        }
        if let Some((user, password)) = &self.user {
            args.extend([
                "--user".to_owned(),
                user.clone(),
                "--pass".to_owned(),
                password.clone(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.process = Some(crate::ChildProcess::spawn(&nats_server(), &args, &[]));
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

/// Three (or more) NATS servers of a test's own, clustered with JetStream: a stream of as many
/// replicas as nodes keeps what it acknowledged when one node is lost. Each node has its own
/// store and reserved ports; stopped on drop.
pub struct NatsCluster {
    nodes: Vec<OwnNats>,
}

impl NatsCluster {
    /// Starts `size` nodes routed to one another and waits until JetStream answers through
    /// each (its cluster has elected the leader that creates streams).
    pub async fn start(size: usize) -> NatsCluster {
        let routes: Vec<ReservedPort> = (0..size).map(|_| ReservedPort::new()).collect();
        let urls: Vec<String> = routes
            .iter()
            .map(|route| format!("nats-route://{}", route.address()))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        for (index, route) in routes.into_iter().enumerate() {
            let others = urls
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, url)| url.clone())
                .collect();
            nodes.push(OwnNats::new(Some((format!("n{index}"), route, others))));
        }
        for node in &mut nodes {
            node.restart().await;
        }
        let cluster = NatsCluster { nodes };
        for node in 0..size {
            cluster.wait_for_jetstream(node).await;
        }
        cluster
    }

    /// Node `node`'s URL.
    #[must_use]
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// SIGKILLs node `node`.
    pub fn kill(&mut self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts node `node` again and waits until JetStream answers through it.
    pub async fn restart(&mut self, node: usize) {
        self.nodes[node].restart().await;
        self.wait_for_jetstream(node).await;
    }

    /// The number of replicas the server reports for stream `name`, asked through `node`.
    pub async fn replicas(&self, node: usize, name: &str) -> usize {
        self.stream_info(node, name).await.config.num_replicas
    }

    /// The node leading stream `name`, asked through `node`.
    pub async fn leader(&self, node: usize, name: &str) -> usize {
        let info = self.stream_info(node, name).await;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .expect("a leader");
        leader
            .strip_prefix('n')
            .and_then(|index| index.parse().ok())
            .unwrap_or_else(|| panic!("a node of this cluster leads: {leader}"))
    }

    async fn stream_info(&self, node: usize, name: &str) -> async_nats::jetstream::stream::Info {
        let client = async_nats::connect(self.url(node)).await.expect("connect");
        let mut stream = async_nats::jetstream::new(client)
            .get_stream(name)
            .await
            .expect("the stream");
        stream.info().await.expect("stream info").clone()
    }

    async fn wait_for_jetstream(&self, node: usize) {
        let deadline = Instant::now() + STARTS_WITHIN;
        loop {
            if let Ok(client) = async_nats::connect(self.url(node)).await {
                let jetstream = async_nats::jetstream::new(client);
                if jetstream.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "JetStream never answered through cluster node {node}"
            );
            sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The `nats-server` a test starts: the one `scripts/ensure-nats` installed (a release that
/// keeps acknowledged messages across a kill; `TESTKIT_NATS_SERVER` names it, and a plain
/// `cargo test` finds it in the cache the script unpacks it into), else the one on `PATH`.
#[must_use]
pub fn nats_server() -> std::path::PathBuf {
    if let Some(named) = std::env::var_os("TESTKIT_NATS_SERVER") {
        return std::path::PathBuf::from(named);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache"))
        });
    let unpacked = cache.and_then(|cache| {
        let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(cache.join("tandem"))
            .ok()?
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("nats-server-")
            })
            .map(|entry| entry.path().join("nats-server"))
            .filter(|binary| binary.is_file())
            .collect();
        found.sort();
        found.pop()
    });
    unpacked.unwrap_or_else(|| std::path::PathBuf::from("nats-server"))
}
