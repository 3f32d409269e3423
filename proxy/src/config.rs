//! Proxy configuration: a strict TOML file, overridden by `TANDEM_*` variables, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, Uri};
use serde::Deserialize;
use tandem_control::settings::SettingsFile;

use crate::compare::IgnorePaths;
use crate::error::ConfigError;
use crate::routes::{RouteClass, RouteRule, RouteTable};
use crate::status_set::StatusSet;
use crate::tls::UpstreamTls;

/// How the client's response waits for the non-authoritative side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// The response waits (up to the secondary's timeout) until the secondary answered.
    Sync,
    /// The response is sent as soon as the authoritative side answered; copies are queued.
    Async,
}

/// What a write meets when the mirror journal is (nearly) full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JournalFull {
    /// Answered 503 with Retry-After before it reaches either side: nothing diverges.
    Refuse,
    /// Applied on the authoritative side and recorded as not mirrored (the gap is known and
    /// repaired from the record or the comparator).
    Record,
}

/// One `[[routes]]` entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// HTTP method to match; any method when absent.
    pub method: Option<String>,
    /// Path pattern: literal segments, `{name}` for one segment, a final `*` for the rest.
    pub path: String,
    /// `read`, `write` or `no-mirror`.
    pub class: RouteClass,
    /// Template of the key that orders writes, e.g. `/orders/{id}`; the request path when absent.
    pub ordering_key: Option<String>,
}

/// The configuration file as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    old: Option<String>,
    new: Option<String>,
    upstream_ca_file: Option<PathBuf>,
    control_db: Option<String>,
    mirror: Option<MirrorMode>,
    admin_token: Option<String>,
    admin_insecure: Option<bool>,
    max_in_flight: Option<usize>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    body_read_timeout: Option<Duration>,
    max_body_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    old_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    new_timeout: Option<Duration>,
    accept_statuses: Option<Vec<String>>,
    mirror_queue_capacity: Option<usize>,
    mirror_workers: Option<usize>,
    mirror_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    mirror_retry_backoff: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    cutover_timeout: Option<Duration>,
    shadow_read_concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    stage_poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stats_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    shutdown_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    auto_replay_interval: Option<Duration>,
    compare_ignore: Option<Vec<String>>,
    journal_dir: Option<PathBuf>,
    journal_fsync: Option<bool>,
    journal_max_bytes: Option<u64>,
    journal_full: Option<JournalFull>,
    journal: Option<String>,
    journal_stream: Option<String>,
    journal_replicas: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    journal_retention: Option<Duration>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
}

/// Settings given on the command line or through `TANDEM_*` variables (the flag wins).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ProxyArgs {
    /// TOML configuration file.
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the proxy serves clients on.
    #[arg(long, env = "TANDEM_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (health, readiness, metrics, stage API).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Base URL of the old service.
    #[arg(long, env = "TANDEM_OLD")]
    pub old: Option<String>,
    /// Base URL of the new service.
    #[arg(long, env = "TANDEM_NEW")]
    pub new: Option<String>,
    /// PEM file of the certificates (a private CA's) trusted for `https://` sides, besides the
    /// system's roots.
    #[arg(long, env = "TANDEM_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// Control store URL (`sqlite://FILE` or `postgres://…`).
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
    /// Whether responses wait for the mirror copy (`sync`) or not (`async`).
    #[arg(long, env = "TANDEM_MIRROR", value_enum)]
    pub mirror: Option<MirrorMode>,
    /// Bearer token required by mutating admin calls.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Serve the admin API on a non-loopback address without a token (anyone who reaches it
    /// could change the stage) [default: false: refused].
    #[arg(long, env = "TANDEM_ADMIN_INSECURE")]
    pub admin_insecure: Option<bool>,
    /// Requests in flight at most; more are answered 503 with Retry-After at once
    /// [default: 1024].
    #[arg(long, env = "TANDEM_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Client connections open at most; one more is answered 503 with Retry-After and closed
    /// [default: what the limit of open files leaves after max_in_flight's upstreams].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a client may take to send a request's header, and how long a keep-alive
    /// connection may stay idle [default: 75s, nginx's keepalive_timeout: shorter than the
    /// idle time of clients' connection pools, it would make them race the close].
    #[arg(long, env = "TANDEM_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// How long a client may take to send a request's body (up to max_body_bytes) before it
    /// is answered 408 [default: 30s].
    #[arg(long, env = "TANDEM_BODY_READ_TIMEOUT", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Option<Duration>,
    /// Largest request body that is mirrored, in bytes.
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Timeout of one request to the old side (e.g. `5s`).
    #[arg(long, env = "TANDEM_OLD_TIMEOUT", value_parser = humantime::parse_duration)]
    pub old_timeout: Option<Duration>,
    /// Timeout of one request to the new side.
    #[arg(long, env = "TANDEM_NEW_TIMEOUT", value_parser = humantime::parse_duration)]
    pub new_timeout: Option<Duration>,
    /// Authoritative statuses that count as an accepted write (e.g. `2xx,409`).
    #[arg(long, env = "TANDEM_ACCEPT_STATUSES", value_delimiter = ',')]
    pub accept_statuses: Option<Vec<String>>,
    /// Mirror copies that may wait in memory before further ones are persisted.
    #[arg(long, env = "TANDEM_MIRROR_QUEUE_CAPACITY")]
    pub mirror_queue_capacity: Option<usize>,
    /// Mirror workers; copies of one ordering key always go through the same worker.
    #[arg(long, env = "TANDEM_MIRROR_WORKERS")]
    pub mirror_workers: Option<usize>,
    /// Delivery attempts of a mirror copy before it is persisted for replay.
    #[arg(long, env = "TANDEM_MIRROR_ATTEMPTS")]
    pub mirror_attempts: Option<u32>,
    /// Backoff before the second attempt; doubled for each further one.
    #[arg(long, env = "TANDEM_MIRROR_RETRY_BACKOFF", value_parser = humantime::parse_duration)]
    pub mirror_retry_backoff: Option<Duration>,
    /// When the authoritative side changes, how long a request to a key whose copies are
    /// still on their way to the side becoming authoritative waits for them before it is
    /// answered 503 with Retry-After (applied nowhere) [default: 5s].
    #[arg(long, env = "TANDEM_CUTOVER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub cutover_timeout: Option<Duration>,
    /// Shadow reads in flight at most in async mode; further ones are not compared.
    #[arg(long, env = "TANDEM_SHADOW_READ_CONCURRENCY")]
    pub shadow_read_concurrency: Option<usize>,
    /// How often the stage is re-read from the control store.
    #[arg(long, env = "TANDEM_STAGE_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub stage_poll_interval: Option<Duration>,
    /// How often this proxy's counts (comparisons, mismatches, mirror failures, new-side
    /// errors) are flushed to the control store, for rate alerts and rollback policies.
    #[arg(long, env = "TANDEM_STATS_INTERVAL", value_parser = humantime::parse_duration)]
    pub stats_interval: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests and the mirror queue.
    #[arg(long, env = "TANDEM_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// How often copies kept in the control store are replayed by the proxy itself while
    /// some wait (doubling while the other side keeps failing); `0s` leaves them to
    /// `tandem mirror replay` [default: 5s].
    #[arg(long, env = "TANDEM_AUTO_REPLAY_INTERVAL", value_parser = humantime::parse_duration)]
    pub auto_replay_interval: Option<Duration>,
    /// JSON paths left out of response comparison (e.g. `/updated_at,/items/*/etag`).
    #[arg(long, env = "TANDEM_COMPARE_IGNORE", value_delimiter = ',')]
    pub compare_ignore: Option<Vec<String>>,
    /// Directory of the mirror journal, where every accepted write's copy is written before
    /// the client is answered [default: beside a SQLite control store (`FILE.journal`), else
    /// `tandem-journal`]. One proxy per directory.
    #[arg(long, env = "TANDEM_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// `fdatasync` each journal write before answering, so acknowledged copies survive a
    /// power loss too (without it they survive any crash of tandem) [default: false].
    #[arg(long, env = "TANDEM_JOURNAL_FSYNC")]
    pub journal_fsync: Option<bool>,
    /// The most bytes the journal may hold [default: 1073741824].
    #[arg(long, env = "TANDEM_JOURNAL_MAX_BYTES")]
    pub journal_max_bytes: Option<u64>,
    /// What a write meets when the journal is full: `refuse` (503, reaches neither side) or
    /// `record` (applied on the authoritative side, recorded as not mirrored) [default: refuse].
    #[arg(long, env = "TANDEM_JOURNAL_FULL", value_enum)]
    pub journal_full: Option<JournalFull>,
    /// A journal shared by a fleet of proxies, on NATS JetStream (`nats://HOST:PORT`), instead
    /// of the local one: copies outlive the instance that accepted them, and each key's copies
    /// are delivered in order by one instance at a time [default: the local journal].
    #[arg(long, env = "TANDEM_JOURNAL", hide_env_values = true)]
    pub journal: Option<String>,
    /// The shared journal's stream; every proxy of one fleet names the same [default: TANDEM].
    #[arg(long, env = "TANDEM_JOURNAL_STREAM")]
    pub journal_stream: Option<String>,
    /// Copies of the shared journal's stream the NATS servers keep [default: 1].
    #[arg(long, env = "TANDEM_JOURNAL_REPLICAS")]
    pub journal_replicas: Option<usize>,
    /// How long a copy may wait in the shared journal undelivered before it is kept in the
    /// control store for replay instead (reason `journal_expired`, alerted); `0s` waits until
    /// it is delivered [default: 0s].
    #[arg(long, env = "TANDEM_JOURNAL_RETENTION", value_parser = humantime::parse_duration)]
    pub journal_retention: Option<Duration>,
}

/// The validated proxy configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Client listener.
    pub listen: SocketAddr,
    /// The mirror journal's directory.
    pub journal_dir: PathBuf,
    /// Whether journal writes are fdatasync'd before the client is answered.
    pub journal_fsync: bool,
    /// The most bytes the journal may hold.
    pub journal_max_bytes: u64,
    /// What a write meets when the journal is full.
    pub journal_full: JournalFull,
    /// The shared journal on NATS JetStream, when one is set instead of the local journal.
    pub shared_journal: Option<SharedJournalConfig>,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Base URI of the old service.
    pub old: Uri,
    /// Base URI of the new service.
    pub new: Uri,
    /// What `https://` sides are trusted by: the system's roots and `upstream_ca_file`.
    pub upstream_tls: UpstreamTls,
    /// Control store URL.
    pub control_db: String,
    /// Sync or async mirroring.
    pub mirror: MirrorMode,
    /// Bearer token for mutating admin calls, if any.
    pub admin_token: Option<String>,
    /// Whether a non-loopback admin listener without a token was asked for.
    pub admin_insecure: bool,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Client connections open at most (`None`: derived from the limit of open files).
    pub max_connections: Option<usize>,
    /// Deadline of a request's header, and of a keep-alive connection's idle time.
    pub header_read_timeout: Duration,
    /// Deadline of a request's body (the part that is read before forwarding).
    pub body_read_timeout: Duration,
    /// Largest request body that is mirrored.
    pub max_body_bytes: usize,
    /// Per-request timeout of the old side.
    pub old_timeout: Duration,
    /// Per-request timeout of the new side.
    pub new_timeout: Duration,
    /// Authoritative statuses that count as an accepted write.
    pub accept_statuses: StatusSet,
    /// In-memory mirror queue capacity.
    pub mirror_queue_capacity: usize,
    /// Mirror workers.
    pub mirror_workers: usize,
    /// Delivery attempts before a copy is persisted.
    pub mirror_attempts: u32,
    /// Backoff before the second attempt.
    pub mirror_retry_backoff: Duration,
    /// How long a request waits for its key's copies to the authoritative side (the cutover
    /// hold) before it is answered 503.
    pub cutover_timeout: Duration,
    /// Async shadow reads in flight at most.
    pub shadow_read_concurrency: usize,
    /// Stage polling interval.
    pub stage_poll_interval: Duration,
    /// How often counts are flushed to the control store.
    pub stats_interval: Duration,
    /// Drain deadline on SIGTERM.
    pub shutdown_timeout: Duration,
    /// How often kept copies are replayed automatically (zero: never).
    pub auto_replay_interval: Duration,
    /// JSON paths left out of response comparison.
    pub compare_ignore: IgnorePaths,
    /// Classification rules.
    pub routes: RouteTable,
}

/// The control store used when none is configured: a SQLite file in the working directory.
pub const DEFAULT_CONTROL_DB: &str = "sqlite://tandem.db";

impl ProxyConfig {
    /// Reads the file named by `args.config` (if any), applies the overrides and validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the offending key.
    pub fn load(args: &ProxyArgs) -> Result<ProxyConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        ProxyConfig::from_layers(file, args)
    }

    fn from_layers(file: FileConfig, args: &ProxyArgs) -> Result<ProxyConfig, ConfigError> {
        let pick = |flag: &Option<String>, file: Option<String>| flag.clone().or(file);
        let old = pick(&args.old, file.old).ok_or_else(|| ConfigError::missing("old"))?;
        let new = pick(&args.new, file.new).ok_or_else(|| ConfigError::missing("new"))?;
        let accept_statuses = args
            .accept_statuses
            .clone()
            .or(file.accept_statuses)
            .unwrap_or_else(|| vec!["2xx".to_owned()]);
        let compare_ignore = args
            .compare_ignore
            .clone()
            .or(file.compare_ignore)
            .unwrap_or_default();
        let rules = file
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| route_rule(index, route))
            .collect::<Result<Vec<_>, _>>()?;
        let control_db = pick(&args.control_db, file.control_db)
            .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned());
        let (old, new) = (upstream_uri("old", &old)?, upstream_uri("new", &new)?);
        let upstream_tls = upstream_tls(
            args.upstream_ca_file
                .as_deref()
                .or(file.upstream_ca_file.as_deref()),
            [&old, &new],
        )?;
        let config = ProxyConfig {
            journal_dir: args
                .journal_dir
                .clone()
                .or(file.journal_dir)
                .unwrap_or_else(|| default_journal_dir(&control_db)),
            journal_fsync: args.journal_fsync.or(file.journal_fsync).unwrap_or(false),
            journal_full: args
                .journal_full
                .or(file.journal_full)
                .unwrap_or(JournalFull::Refuse),
            journal_max_bytes: args
                .journal_max_bytes
                .or(file.journal_max_bytes)
                .unwrap_or(1 << 30),
            shared_journal: pick(&args.journal, file.journal).map(|url| SharedJournalConfig {
                url,
                stream: pick(&args.journal_stream, file.journal_stream)
                    .unwrap_or_else(|| "TANDEM".to_owned()),
                replicas: args.journal_replicas.or(file.journal_replicas).unwrap_or(1),
                retention: args
                    .journal_retention
                    .or(file.journal_retention)
                    .unwrap_or(Duration::ZERO),
            }),
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090))),
            old,
            new,
            upstream_tls,
            control_db,
            mirror: args.mirror.or(file.mirror).unwrap_or(MirrorMode::Async),
            admin_token: pick(&args.admin_token, file.admin_token).filter(|t| !t.is_empty()),
            admin_insecure: args.admin_insecure.or(file.admin_insecure).unwrap_or(false),
            max_in_flight: args.max_in_flight.or(file.max_in_flight).unwrap_or(1024),
            max_connections: args.max_connections.or(file.max_connections),
            header_read_timeout: args
                .header_read_timeout
                .or(file.header_read_timeout)
                .unwrap_or(HEADER_READ_TIMEOUT),
            body_read_timeout: args
                .body_read_timeout
                .or(file.body_read_timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_body_bytes: args
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(8 * 1024 * 1024),
            old_timeout: args.old_timeout.or(file.old_timeout).unwrap_or(SECONDS_10),
            new_timeout: args.new_timeout.or(file.new_timeout).unwrap_or(SECONDS_10),
            accept_statuses: StatusSet::parse(&accept_statuses)
                .map_err(|reason| ConfigError::invalid("accept_statuses", reason))?,
            mirror_queue_capacity: args
                .mirror_queue_capacity
                .or(file.mirror_queue_capacity)
                .unwrap_or(10_000),
            mirror_workers: args.mirror_workers.or(file.mirror_workers).unwrap_or(32),
            mirror_attempts: args.mirror_attempts.or(file.mirror_attempts).unwrap_or(3),
            mirror_retry_backoff: args
                .mirror_retry_backoff
                .or(file.mirror_retry_backoff)
                .unwrap_or(Duration::from_millis(100)),
            cutover_timeout: args
                .cutover_timeout
                .or(file.cutover_timeout)
                .unwrap_or(Duration::from_secs(5)),
            shadow_read_concurrency: args
                .shadow_read_concurrency
                .or(file.shadow_read_concurrency)
                .unwrap_or(256),
            stage_poll_interval: args
                .stage_poll_interval
                .or(file.stage_poll_interval)
                .unwrap_or(Duration::from_millis(250)),
            stats_interval: args
                .stats_interval
                .or(file.stats_interval)
                .unwrap_or(Duration::from_secs(5)),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .unwrap_or(Duration::from_secs(30)),
            auto_replay_interval: args
                .auto_replay_interval
                .or(file.auto_replay_interval)
                .unwrap_or(Duration::from_secs(5)),
            compare_ignore: IgnorePaths::parse(&compare_ignore)
                .map_err(|reason| ConfigError::invalid("compare_ignore", reason))?,
            routes: RouteTable::new(rules),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.admin_listen.ip().is_loopback()
            && self.admin_token.is_none()
            && !self.admin_insecure
        {
            return Err(ConfigError::invalid(
                "admin_listen",
                format!(
                    "{} is reachable from other hosts and no admin_token is set: anyone could \
                     change the stage; set TANDEM_ADMIN_TOKEN, listen on loopback, or set \
                     admin_insecure",
                    self.admin_listen
                ),
            ));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin_listen",
                "must differ from `listen`".to_owned(),
            ));
        }
        let positive = [
            ("max_body_bytes", self.max_body_bytes),
            ("max_in_flight", self.max_in_flight),
            ("max_connections", self.max_connections.unwrap_or(1)),
            ("mirror_queue_capacity", self.mirror_queue_capacity),
            ("mirror_workers", self.mirror_workers),
            ("shadow_read_concurrency", self.shadow_read_concurrency),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(
                    key,
                    "must be greater than 0".to_owned(),
                ));
            }
        }
        if self.mirror_attempts == 0 {
            return Err(ConfigError::invalid(
                "mirror_attempts",
                "must be at least 1".to_owned(),
            ));
        }
        if self.mirror_attempts > MAX_MIRROR_ATTEMPTS {
            return Err(ConfigError::invalid(
                "mirror_attempts",
                format!("must be at most {MAX_MIRROR_ATTEMPTS}"),
            ));
        }
        let durations = [
            ("old_timeout", self.old_timeout, false),
            ("new_timeout", self.new_timeout, false),
            ("header_read_timeout", self.header_read_timeout, false),
            ("body_read_timeout", self.body_read_timeout, false),
            ("stage_poll_interval", self.stage_poll_interval, false),
            ("stats_interval", self.stats_interval, false),
            ("mirror_retry_backoff", self.mirror_retry_backoff, true),
            ("cutover_timeout", self.cutover_timeout, false),
            ("shutdown_timeout", self.shutdown_timeout, true),
        ];
        for (key, value, zero_allowed) in durations {
            if value.is_zero() && !zero_allowed {
                return Err(ConfigError::invalid(
                    key,
                    "must be longer than 0s".to_owned(),
                ));
            }
            if value > MAX_DURATION {
                return Err(ConfigError::invalid(key, "must be at most 1h".to_owned()));
            }
        }
        if !(self.control_db.starts_with("sqlite:")
            || self.control_db.starts_with("postgres://")
            || self.control_db.starts_with("postgresql://"))
        {
            return Err(ConfigError::invalid(
                "control_db",
                "expected sqlite://PATH or postgres://…".to_owned(),
            ));
        }
        if let Some(shared) = &self.shared_journal {
            shared.validate()?;
        }
        Ok(())
    }
}

/// The shared journal's settings (`journal = "nats://HOST:PORT"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedJournalConfig {
    /// The NATS server.
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// Copies of the stream the servers keep.
    pub replicas: usize,
    /// How long an undelivered copy waits in the stream before it is kept in the control
    /// store instead; zero: until delivered.
    pub retention: Duration,
}

impl SharedJournalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("nats://") {
            return Err(ConfigError::invalid(
                "journal",
                "expected nats://HOST:PORT".to_owned(),
            ));
        }
        let name_ok = !self.stream.is_empty()
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(ConfigError::invalid(
                "journal_stream",
                "letters, digits, `_` and `-` only".to_owned(),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::invalid(
                "journal_replicas",
                "must be 1 to 5".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The control store URL for commands that need nothing else: the flag (or `TANDEM_CONTROL_DB`),
/// else the file's `control_db`, else [`DEFAULT_CONTROL_DB`].
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn resolve_control_db(
    config_file: Option<&Path>,
    control_db: Option<&str>,
) -> Result<String, ConfigError> {
    if let Some(url) = control_db {
        return Ok(url.to_owned());
    }
    let file = config_file.map(read_file).transpose()?.unwrap_or_default();
    Ok(file
        .control_db
        .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned()))
}

/// The journal's directory when none is set: beside a SQLite control store's file (each
/// proxy on one host has its own store and journal), else `tandem-journal`.
fn default_journal_dir(control_db: &str) -> PathBuf {
    match control_db.strip_prefix("sqlite://") {
        Some(path) if !path.is_empty() => PathBuf::from(format!(
            "{}.journal",
            path.split('?').next().unwrap_or(path)
        )),
        _ => PathBuf::from("tandem-journal"),
    }
}

/// Longest accepted duration for any key: longer ones are typos, and would overflow timers.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Most delivery attempts of one copy.
const MAX_MIRROR_ATTEMPTS: u32 = 20;

const SECONDS_10: Duration = Duration::from_secs(10);

/// The default `header_read_timeout`, which in hyper also ends keep-alive connections idle that
/// long: nginx's `keepalive_timeout`, longer than most clients keep an idle pooled connection,
/// so they do not send a request on a connection tandem is closing.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    Ok(SettingsFile::read(path)?.deserialize()?)
}

fn upstream_uri(key: &'static str, value: &str) -> Result<Uri, ConfigError> {
    let redacted = tandem_control::redact_url(value);
    let uri: Uri = value
        .parse()
        .map_err(|_| ConfigError::invalid(key, format!("{redacted} is not a URL")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(ConfigError::invalid(
            key,
            format!("{redacted} must be an http://HOST:PORT or https://HOST:PORT URL"),
        ));
    }
    if uri.query().is_some() {
        return Err(ConfigError::invalid(
            key,
            format!("{redacted} must not carry a query"),
        ));
    }
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{redacted} carries credentials, which tandem would not send; give the \
                 service a network-level trust or put the header in the clients' requests"
            ),
        ));
    }
    Ok(uri)
}

/// The roots `https://` sides are checked against; a CA file that cannot be used, or an
/// `https://` side with no root to check it by, is refused at start.
fn upstream_tls(ca_file: Option<&Path>, sides: [&Uri; 2]) -> Result<UpstreamTls, ConfigError> {
    let tls = UpstreamTls::new(ca_file)
        .map_err(|reason| ConfigError::invalid("upstream_ca_file", reason))?;
    let https = sides.iter().any(|side| side.scheme_str() == Some("https"));
    if https && !tls.has_roots() {
        return Err(ConfigError::invalid(
            "upstream_ca_file",
            "an https:// side needs trusted roots: the system has none; name a PEM file of \
             the CA that signed the side's certificate"
                .to_owned(),
        ));
    }
    Ok(tls)
}

fn route_rule(index: usize, route: &RouteConfig) -> Result<RouteRule, ConfigError> {
    let key = format!("routes[{index}]");
    let method = route
        .method
        .as_deref()
        .map(|name| {
            Method::from_bytes(name.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ConfigError::invalid_owned(
                    format!("{key}.method"),
                    format!("{name:?} is not an HTTP method"),
                )
            })
        })
        .transpose()?;
    RouteRule::new(
        method,
        &route.path,
        route.class,
        route.ordering_key.as_deref(),
    )
    .map_err(|reason| ConfigError::invalid_owned(format!("{key}.path"), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProxyArgs {
        ProxyArgs {
            old: Some("http://127.0.0.1:1".to_owned()),
            new: Some("http://127.0.0.1:2".to_owned()),
            ..ProxyArgs::default()
        }
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid file")
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = ProxyConfig::from_layers(FileConfig::default(), &args()).unwrap();
        assert_eq!(config.mirror, MirrorMode::Async);
        assert_eq!(config.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(config.control_db, DEFAULT_CONTROL_DB);
        assert!(config.accept_statuses.contains(204));
        assert!(!config.accept_statuses.contains(409));
    }

    #[test]
    fn flags_override_the_file() {
        let file = file("mirror = \"sync\"\nmax_body_bytes = 10\nold = \"http://10.0.0.1:80\"");
        let config = ProxyConfig::from_layers(
            file,
            &ProxyArgs {
                max_body_bytes: Some(20),
                ..args()
            },
        )
        .unwrap();
        assert_eq!(config.mirror, MirrorMode::Sync, "file beats default");
        assert_eq!(config.max_body_bytes, 20, "flag beats file");
        assert_eq!(config.old.port_u16(), Some(1), "flag beats file");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = toml::from_str::<FileConfig>("mirorr = \"sync\"").unwrap_err();
        assert!(err.message().contains("mirorr"), "{}", err.message());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (file("max_body_bytes = 0"), "max_body_bytes"),
            (file("accept_statuses = [\"2xy\"]"), "accept_statuses"),
            (file("control_db = \"mysql://x\""), "control_db"),
            (file("shutdown_timeout = \"400d\""), "shutdown_timeout"),
            (file("mirror_attempts = 1000"), "mirror_attempts"),
            (file("journal = \"http://127.0.0.1:4222\""), "journal"),
            (
                file("journal = \"nats://127.0.0.1:4222\"\njournal_stream = \"a.b\""),
                "journal_stream",
            ),
            (
                file("journal = \"nats://127.0.0.1:4222\"\njournal_replicas = 0"),
                "journal_replicas",
            ),
            (
                file("[[routes]]\npath = \"orders\"\nclass = \"read\""),
                "routes[0].path",
            ),
            (
                file("upstream_ca_file = \"/nonexistent/tandem-ca.pem\""),
                "upstream_ca_file",
            ),
        ];
        for (file, key) in cases {
            let err = ProxyConfig::from_layers(file, &args()).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
        }
        let err = ProxyConfig::from_layers(
            FileConfig::default(),
            &ProxyArgs {
                new: Some("https://user:pw@example.com".to_owned()),
                ..args()
            },
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("new"));
        assert!(!err.to_string().contains("pw@"), "{err}");
        // Credentials in an http:// URL would be dropped silently: refused, not shown.
        let err = ProxyConfig::from_layers(
            FileConfig::default(),
            &ProxyArgs {
                old: Some("http://app:s3cret@127.0.0.1:8081".to_owned()),
                ..args()
            },
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("old"), "{err}");
        assert!(err.to_string().contains("credentials") && !err.to_string().contains("s3cret"));
    }

    #[test]
    fn a_nats_journal_is_shared_with_its_defaults_and_the_local_one_stays_the_default() {
        let local = ProxyConfig::from_layers(FileConfig::default(), &args()).unwrap();
        assert_eq!(local.shared_journal, None);
        let shared = ProxyConfig::from_layers(
            file("journal = \"nats://10.0.0.5:4222\"\njournal_retention = \"7d\""),
            &args(),
        )
        .unwrap();
        assert_eq!(
            shared.shared_journal,
            Some(SharedJournalConfig {
                url: "nats://10.0.0.5:4222".to_owned(),
                stream: "TANDEM".to_owned(),
                replicas: 1,
                retention: Duration::from_secs(7 * 24 * 3600),
            })
        );
    }

    #[test]
    fn an_open_admin_listener_needs_a_token_or_an_explicit_yes() {
        let open = |token: Option<&str>, insecure: Option<bool>| {
            ProxyConfig::from_layers(
                FileConfig::default(),
                &ProxyArgs {
                    admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
                    admin_token: token.map(str::to_owned),
                    admin_insecure: insecure,
                    ..args()
                },
            )
        };
        let err = open(None, None).unwrap_err();
        assert_eq!(err.key(), Some("admin_listen"), "{err}");
        assert!(open(Some("t0ken"), None).is_ok());
        assert!(open(None, Some(true)).is_ok());
    }

    #[test]
    fn missing_upstreams_are_named() {
        let err =
            ProxyConfig::from_layers(FileConfig::default(), &ProxyArgs::default()).unwrap_err();
        assert_eq!(err.key(), Some("old"));
    }
}
