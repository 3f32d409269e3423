//! The command line: subcommands and their flags (every flag also reads a `TANDEM_*` variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tandem_proxy::ProxyArgs;

/// tandem: a dual-write consistency proxy for database and service migrations.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    /// How log lines (on stderr) are written: `text` for people, `json` (one object a line,
    /// each event's fields and its spans' fields, e.g. `request_id`, `stage`, `side`) for log
    /// pipelines.
    #[arg(
        long,
        global = true,
        env = "TANDEM_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole of tandem on SQLite: two sample services, a proxy, the comparator and
    /// its dashboard, through a narrated migration with drift, rollback and repair.
    Demo(DemoArgs),
    /// Run the HTTP proxy between the old and the new service.
    Proxy(ProxyArgs),
    /// Run the PostgreSQL wire-protocol proxy (sessions go to the authoritative side).
    PgProxy(PgProxyArgs),
    /// Apply the PostgreSQL transactions the other side missed, in commit order.
    PgReplay(PgReplayArgs),
    /// The write-ahead-log capture's slots: where each side stands, or drop them.
    #[command(subcommand)]
    PgMirror(PgMirrorCommand),
    /// Show or change the migration stage.
    #[command(subcommand)]
    Stage(StageCommand),
    /// Apply the control store's schema migrations.
    Migrate(ControlArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and replay mirror copies that could not be delivered.
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// List, show, acknowledge and resolve alerts.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Show the audit log: stage changes, rollbacks, forced promotions, acknowledgements.
    Audit(AuditArgs),
    /// Compare two databases row by row (exit 0 identical, 1 divergent, 2 error).
    Compare(CompareArgs),
    /// Copy one table's confirmed divergent rows from the authoritative side to the other.
    Repair(RepairArgs),
    /// Compare continuously: sweep, record every run, serve /healthz, /metrics and /api/*.
    Comparator(ComparatorArgs),
    /// Fill the new database's tables from the old one's while dual-write runs: chunked,
    /// conditional writes, each chunk verified, resumable (exit 0 converged, 1 not, 2 error).
    Backfill(BackfillArgs),
}

/// `tandem backfill`; its own settings can also come from the `[backfill]` section of the
/// `--config` file (same names, `_` for `-`); variables and flags win.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackfillArgs {
    /// Instead of backfilling: show where the backfills recorded in the control store stand.
    #[command(subcommand)]
    pub action: Option<BackfillCommand>,
    /// The tables, key, rate (--max-rows-per-sec), workers (--threads), rechecks, control
    /// store (default sqlite://tandem.db) and output format.
    #[command(flatten)]
    pub compare: CompareArgs,
    /// Old-side rows per chunk, the unit that is verified and checkpointed (at most 100000)
    /// [default: 50000].
    #[arg(long, env = "TANDEM_BACKFILL_CHUNK_ROWS")]
    pub chunk_rows: Option<usize>,
    /// Rounds of conditional writes per chunk before what still differs is reported
    /// [default: 3].
    #[arg(long, env = "TANDEM_BACKFILL_ATTEMPTS")]
    pub attempts: Option<u32>,
    /// Only compare and print what would be copied; nothing is written anywhere.
    #[arg(long)]
    pub dry_run: bool,
    /// Times a chunk that failed with a transient error (connection lost, session
    /// terminated, serialization failure, deadlock) is tried again before the backfill stops
    /// with the chunk named (exit 2; the chunk is not checkpointed) [default: 3].
    #[arg(long, env = "TANDEM_BACKFILL_CHUNK_RETRIES")]
    pub chunk_retries: Option<u32>,
    /// The wait before a chunk's first retry, doubled before each next one [default: 1s].
    #[arg(long, env = "TANDEM_BACKFILL_CHUNK_RETRY_DELAY", value_parser = humantime::parse_duration)]
    pub chunk_retry_delay: Option<std::time::Duration>,
    /// Forget earlier checkpoints of these tables and start over.
    #[arg(long)]
    pub restart: bool,
    /// Create the tables the new side lacks from the old side's: the copied columns with
    /// mapped types (MySQL/MariaDB and SQLite to PostgreSQL; the declared types within one
    /// engine), NOT NULL and the primary key. With --dry-run, only say what would be created.
    #[arg(long)]
    pub create_schema: bool,
    /// This instance's name in the chunks it claims (default HOST:backfill); a rerun under
    /// the same name takes back the chunks its killed predecessor held.
    #[arg(long, env = "TANDEM_BACKFILL_INSTANCE")]
    pub instance: Option<String>,
    /// How long another instance waits before taking over a chunk whose holder stopped
    /// renewing its claim (a running instance renews its claims every third of this, however
    /// long a chunk takes) [default: 5m].
    #[arg(long, env = "TANDEM_BACKFILL_CHUNK_LEASE", value_parser = humantime::parse_duration)]
    pub chunk_lease: Option<std::time::Duration>,
    /// Where `/healthz` and `/metrics` (`tandem_backfill_*`) are served while it runs (the
    /// bound address is logged); none by default.
    #[arg(long, env = "TANDEM_BACKFILL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How often a progress line per table is logged (chunks, rows/s, ETA) [default: 10s].
    #[arg(long, env = "TANDEM_BACKFILL_PROGRESS_INTERVAL", value_parser = humantime::parse_duration)]
    pub progress_interval: Option<std::time::Duration>,
}

/// `tandem backfill …`
#[derive(Debug, Clone, Subcommand)]
pub enum BackfillCommand {
    /// Per table: chunks done of planned, rows, conflicts, when it started and last progressed,
    /// and which instance holds each chunk being copied (from the control store's checkpoints).
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `tandem comparator`
#[derive(Debug, Clone, Args)]
pub struct ComparatorArgs {
    /// What each sweep compares (runs go to --control-db, default sqlite://tandem.db).
    #[command(flatten)]
    pub compare: CompareArgs,
    /// Address of the HTTP listener (default 127.0.0.1:9091).
    #[arg(long, env = "TANDEM_COMPARATOR_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Pause between sweeps (default 60s).
    #[arg(long, env = "TANDEM_COMPARATOR_INTERVAL", value_parser = humantime::parse_duration)]
    pub interval: Option<std::time::Duration>,
    /// Stop after this many sweeps (default: run until SIGTERM).
    #[arg(long, env = "TANDEM_COMPARATOR_SWEEPS")]
    pub sweeps: Option<u64>,
    /// This instance's name in the chunks it claims (default HOST:PID).
    #[arg(long, env = "TANDEM_COMPARATOR_INSTANCE")]
    pub instance: Option<String>,
    /// Old-side rows per chunk, the unit of work instances sharing a control store claim
    /// (default 1000000).
    #[arg(long, env = "TANDEM_COMPARATOR_CHUNK_ROWS")]
    pub chunk_rows: Option<usize>,
    /// How long a claimed chunk stays claimed without renewal, i.e. how soon the chunks of an
    /// instance that died are taken over (default 5m).
    #[arg(long, env = "TANDEM_COMPARATOR_CHUNK_LEASE", value_parser = humantime::parse_duration)]
    pub chunk_lease: Option<std::time::Duration>,
    /// Token that acknowledging and resolving alerts through the API must present
    /// (`Authorization: Bearer …`); without one they are open to anyone who reaches the port.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// `tandem repair`
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    /// The comparison that finds the rows to repair (exactly one --table).
    #[command(flatten)]
    pub compare: CompareArgs,
    /// The authoritative side, copied from.
    #[arg(long, value_enum, default_value = "old")]
    pub from: SideArg,
    /// Only print what would change.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows changed per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch_rows: usize,
}

/// A side, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SideArg {
    /// The old side.
    Old,
    /// The new side.
    New,
}

/// `tandem compare` (and the comparison part of `repair` and `comparator`). Every setting can
/// also come from `--config FILE` (same names, `_` for `-`); flags and variables win.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// TOML file with any of these settings.
    #[arg(long, env = "TANDEM_COMPARE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The old database (postgres://, mysql:// or sqlite://).
    #[arg(long, env = "TANDEM_COMPARE_OLD")]
    pub old: Option<String>,
    /// The new database.
    #[arg(long, env = "TANDEM_COMPARE_NEW")]
    pub new: Option<String>,
    /// A table to compare, `NAME` or `OLD_NAME:NEW_NAME`; repeatable. Default: every table on both sides.
    #[arg(long, env = "TANDEM_COMPARE_TABLES", value_delimiter = ',')]
    pub table: Vec<String>,
    /// Key columns, `COLUMN,…` for every table or `TABLE=COLUMN,…` for one; repeatable.
    /// Default: the primary key, else a unique index over non-null columns.
    #[arg(long, env = "TANDEM_COMPARE_KEY")]
    pub key: Option<Vec<String>>,
    /// Compare only these columns (besides the key); `TABLE.COLUMN` aims one at one table.
    #[arg(
        long,
        env = "TANDEM_COMPARE_COLUMNS",
        value_delimiter = ',',
        conflicts_with = "ignore_columns"
    )]
    pub columns: Option<Vec<String>>,
    /// Leave these columns out (they may exist on one side only); `TABLE.COLUMN` aims one at
    /// one table.
    #[arg(long, env = "TANDEM_COMPARE_IGNORE_COLUMNS", value_delimiter = ',')]
    pub ignore_columns: Option<Vec<String>>,
    /// An SQL condition both sides are restricted by.
    #[arg(long = "where", env = "TANDEM_COMPARE_WHERE")]
    pub r#where: Option<String>,
    /// `TABLE=CONDITION`: an SQL condition both sides of one table are restricted by, instead
    /// of --where; repeatable.
    #[arg(long, env = "TANDEM_COMPARE_TABLE_WHERE")]
    pub table_where: Vec<String>,
    /// Most rows per read (default 100000; reads are also kept near 8 MiB).
    #[arg(long, env = "TANDEM_COMPARE_WINDOW_ROWS")]
    pub window_rows: Option<usize>,
    /// Tables compared at once (default 4).
    #[arg(long, env = "TANDEM_COMPARE_THREADS")]
    pub threads: Option<usize>,
    /// Rechecks of a difference before it is reported, as writes may be in flight (default 3).
    #[arg(long, env = "TANDEM_COMPARE_RECHECK")]
    pub recheck: Option<u32>,
    /// Wait before each recheck (default 2s).
    #[arg(long, env = "TANDEM_COMPARE_RECHECK_DELAY", value_parser = humantime::parse_duration)]
    pub recheck_delay: Option<std::time::Duration>,
    /// Reading limit over both sides, in rows per second (a backfill: every row it reads on
    /// either side, by all its workers together).
    #[arg(long, env = "TANDEM_COMPARE_MAX_ROWS_PER_SEC")]
    pub max_rows_per_sec: Option<u64>,
    /// Most divergences listed per table; counts stay exact (default 1000).
    #[arg(long, env = "TANDEM_COMPARE_MAX_DIVERGENCES")]
    pub max_divergences: Option<usize>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Floats closer than this are equal.
    #[arg(long, env = "TANDEM_COMPARE_FLOAT_TOLERANCE")]
    pub float_tolerance: Option<f64>,
    /// Timestamps at most this far apart are equal (e.g. 2s: `DEFAULT now()` set by each
    /// side's clock when a write was mirrored).
    #[arg(long, env = "TANDEM_COMPARE_TIMESTAMP_TOLERANCE", value_parser = humantime::parse_duration)]
    pub timestamp_tolerance: Option<std::time::Duration>,
    /// Zone of timestamps without a time zone: UTC or ±HH:MM (default UTC).
    #[arg(long, env = "TANDEM_COMPARE_ASSUME_TZ")]
    pub assume_tz: Option<String>,
    /// Precision timestamps are compared at (default us).
    #[arg(long, env = "TANDEM_COMPARE_TIMESTAMP_PRECISION", value_enum)]
    pub timestamp_precision: Option<TimestampPrecision>,
    /// Record runs, table results and listed divergences in this control store.
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
}

/// Timestamp precision for comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampPrecision {
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

/// Where the control store is.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// TOML configuration file to read `control_db` from.
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Control store URL (`sqlite://FILE` or `postgres://…`); default `sqlite://tandem.db`.
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// `tandem stage …`
#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Show the current stage and its history.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// History entries to show.
        #[arg(long, default_value_t = 20)]
        history: i64,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Change the stage; every proxy sharing the store applies it within a second.
    Set {
        /// old-only, dual-write, shadow, live or new-only.
        stage: String,
        /// Why the stage changes (kept in the history).
        #[arg(long)]
        reason: String,
        /// Who changes it (kept in the history).
        #[arg(long)]
        by: String,
        /// Promote to live or new-only even when the promotion gate refuses (audited).
        #[arg(long)]
        force: bool,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `tandem alerts …`
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first.
    List {
        /// Which alerts.
        #[arg(long, value_enum, default_value = "open")]
        status: AlertStatusArg,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Show one alert in full.
    Show {
        /// The alert's id.
        id: i64,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Acknowledge an open alert: it stays until resolved but is no longer re-notified.
    Ack {
        /// The alert's id.
        id: i64,
        /// Who acknowledges it.
        #[arg(long)]
        by: String,
        /// A note for the others.
        #[arg(long)]
        comment: Option<String>,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Resolve an alert by hand.
    Resolve {
        /// The alert's id.
        id: i64,
        /// Who resolves it.
        #[arg(long)]
        by: String,
        /// Why it is resolved.
        #[arg(long)]
        comment: String,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// Which alerts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AlertStatusArg {
    /// Open (not acknowledged).
    Open,
    /// Acknowledged, not resolved.
    Acknowledged,
    /// Resolved.
    Resolved,
    /// Every alert.
    All,
}

/// `tandem pg-proxy`. The settings can also come from `--config FILE` (same names, `_` for
/// `-`), which alone holds the `[classify]` overrides; flags and variables win.
#[derive(Debug, Clone, Args)]
pub struct PgProxyArgs {
    /// TOML file with any of these settings and the `[classify]` read/write overrides.
    #[arg(long, env = "TANDEM_PG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where PostgreSQL clients connect (default 127.0.0.1:6432).
    #[arg(long, env = "TANDEM_PG_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// The old server, `postgres://user[:password]@host[:port]/database`.
    #[arg(long, env = "TANDEM_PG_OLD")]
    pub old: Option<String>,
    /// The new server.
    #[arg(long, env = "TANDEM_PG_NEW")]
    pub new: Option<String>,
    /// The control store (stages); default `sqlite://tandem.db`.
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
    /// How long open sessions may go on after SIGTERM (default 30s).
    #[arg(long, env = "TANDEM_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<std::time::Duration>,
    /// Where `/healthz` and `/metrics` (`tandem_pg_*`) are served.
    #[arg(long, env = "TANDEM_PG_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Users clients may log in as, `NAME:PASSWORD` comma-separated, from the environment
    /// only (never a flag: `ps` shows flags); without any (and no --users-file), the old URL's
    /// user with that URL's password.
    #[arg(skip = std::env::var("TANDEM_PG_USERS").ok())]
    pub users: Option<String>,
    /// A file of users clients may log in as, one `NAME:PASSWORD` per line (`#` comments).
    #[arg(long, env = "TANDEM_PG_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// A database clients may ask for besides the URLs' own (which stand for each other),
    /// served by the same name on both sides (repeat, or comma-separate in the variable).
    #[arg(long = "database", env = "TANDEM_PG_DATABASES", value_delimiter = ',')]
    pub databases: Vec<String>,
    /// How long a client may take from connecting to being logged in [default: 60s].
    #[arg(long, env = "TANDEM_PG_LOGIN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub login_timeout: Option<std::time::Duration>,
    /// The most client connections at once; more are refused with SQLSTATE 53300
    /// [default: 500].
    #[arg(long, env = "TANDEM_PG_MAX_CLIENT_CONNECTIONS")]
    pub max_client_connections: Option<usize>,
    /// How many threads serve client sessions, each with an event loop of its own that a
    /// session stays on from login to end [default: half the cores, at least 1].
    #[arg(long, env = "TANDEM_PG_SESSION_THREADS")]
    pub session_threads: Option<usize>,
    /// The most transactions handed to the other side and not yet applied there; past it, a
    /// session's transaction end is answered only once the backlog is below it again, so
    /// memory stays bounded when the other side is slower than the clients [default: 10000].
    #[arg(long, env = "TANDEM_PG_MAX_MIRROR_BACKLOG")]
    pub max_mirror_backlog: Option<u64>,
    /// In shadow and live, the fraction of read-only transactions also run on the other side
    /// and compared, chosen read by read (0.1: one in ten; 0: none); a read left out costs
    /// the other side nothing. Writes and session settings are never sampled [default: 1].
    #[arg(long, env = "TANDEM_PG_COMPARE_READS")]
    pub compare_reads: Option<f64>,
    /// The most server connections (in use and idle) per side and database; a session past
    /// it is refused with SQLSTATE 53300 [default: 100].
    #[arg(long, env = "TANDEM_PG_MAX_SERVER_CONNECTIONS")]
    pub max_server_connections: Option<usize>,
    /// The most idle server connections kept per side and set of startup parameters, reset
    /// with `DISCARD ALL` between client sessions (0: a new connection for every session).
    /// [default: 20]
    #[arg(long, env = "TANDEM_PG_POOL_MAX_IDLE")]
    pub pool_max_idle: Option<usize>,
    /// How long an idle server connection is kept [default: 60s].
    #[arg(long, env = "TANDEM_PG_POOL_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pool_idle_timeout: Option<std::time::Duration>,
    /// How often counts (transactions served, mirrored, compared, kept for replay) are flushed
    /// to the control store for rate alerts and rollback policies [default: 5s].
    #[arg(long, env = "TANDEM_STATS_INTERVAL", value_parser = humantime::parse_duration)]
    pub stats_interval: Option<std::time::Duration>,
    /// When a stage change makes the other side authoritative, how long a session inside a
    /// transaction may finish it before it is ended (SQLSTATE 57P01, so pools reconnect to
    /// the right side); sessions between transactions end at once [default: 5s].
    #[arg(long, env = "TANDEM_PG_STAGE_GRACE", value_parser = humantime::parse_duration)]
    pub stage_grace: Option<std::time::Duration>,
    /// How writes reach the other side: `wal` applies the rows the authoritative side's
    /// write-ahead log says changed (needs wal_level = logical and the REPLICATION attribute
    /// on both sides, a superuser to apply); `statements` re-runs each session's statements
    /// there, for servers without logical decoding (see the README for its limits)
    /// [default: wal].
    #[arg(long, env = "TANDEM_PG_CAPTURE")]
    pub capture: Option<tandem_pgproxy::CaptureMode>,
    /// With `--capture wal`: the stem of the replication slots' names (`STEM_old` on old,
    /// `STEM_new` on new) [default: tandem].
    #[arg(long, env = "TANDEM_PG_CAPTURE_SLOT")]
    pub capture_slot: Option<String>,
    /// With `--capture wal`: the publication on each side (created FOR ALL TABLES, or for
    /// --capture-tables, when missing) [default: tandem].
    #[arg(long, env = "TANDEM_PG_CAPTURE_PUBLICATION")]
    pub capture_publication: Option<String>,
    /// With `--capture wal`: the tables a publication tandem creates holds, `table` or
    /// `schema.table` (repeat, or comma-separate in the variable) [default: all tables].
    #[arg(
        long = "capture-table",
        env = "TANDEM_PG_CAPTURE_TABLES",
        value_delimiter = ','
    )]
    pub capture_tables: Vec<String>,
    /// With `--capture wal`: how long logins wait while the authoritative side switches (the
    /// side taking over applies what the other committed) before they are refused with
    /// SQLSTATE 57P03; a switch whose side taking over has not caught up by then (less 2 s) is
    /// refused: the stage goes back, saying how far behind it was [default: 30s].
    #[arg(long, env = "TANDEM_PG_SWITCH_TIMEOUT", value_parser = humantime::parse_duration)]
    pub switch_timeout: Option<std::time::Duration>,
    /// With `--capture wal`: write-ahead-log bytes the captured side may keep for tandem's
    /// slot before a critical alert says its disk is at risk [default: 10737418240].
    #[arg(long, env = "TANDEM_PG_MAX_RETAINED_WAL")]
    pub max_retained_wal: Option<u64>,
    /// With `--capture wal`: sessions on the other side applying, at once, captured
    /// transactions whose rows no other one in flight changes (each row's changes stay in
    /// commit order; the rest is applied in order by one more session); 1 applies everything
    /// in one session [default: 1].
    #[arg(long, env = "TANDEM_PG_APPLY_SESSIONS")]
    pub apply_sessions: Option<usize>,
}

/// `tandem pg-mirror`
#[derive(Debug, Subcommand)]
pub enum PgMirrorCommand {
    /// Each side's capture slot (exists, read now, confirmed position, log kept for it),
    /// what the other side applied of it, and the capture's open alerts (why it is paused).
    Status {
        /// The two sides.
        #[command(flatten)]
        sides: PgMirrorSides,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The control store (for the capture's alerts).
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Drop both sides' capture slots (freeing the log they keep), their recorded progress and
    /// the publications tandem created, once the migration is over; refused while a proxy
    /// reads a slot.
    Drop {
        /// The two sides.
        #[command(flatten)]
        sides: PgMirrorSides,
    },
    /// Once the DDL that paused the capture has been applied on the other side too: waits
    /// until the capture goes on (it looks again every second by itself) and says so (exit
    /// 0), or past --wait says what still differs (exit 1).
    Resume {
        /// How long to wait for the capture to go on.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        wait: std::time::Duration,
        /// The control store (the capture's alerts).
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// The sides of `tandem pg-mirror` and the slots' name stem.
#[derive(Debug, Clone, Args)]
pub struct PgMirrorSides {
    /// The old server, `postgres://…` (a user with the REPLICATION attribute).
    #[arg(long, env = "TANDEM_PG_OLD")]
    pub old: String,
    /// The new server.
    #[arg(long, env = "TANDEM_PG_NEW")]
    pub new: String,
    /// The stem of the slots' names, as given to pg-proxy.
    #[arg(long, env = "TANDEM_PG_CAPTURE_SLOT", default_value = "tandem")]
    pub capture_slot: String,
    /// The publication on each side, as given to pg-proxy (`drop` drops it where tandem
    /// created it).
    #[arg(long, env = "TANDEM_PG_CAPTURE_PUBLICATION", default_value = "tandem")]
    pub capture_publication: String,
}

/// `tandem pg-replay`
#[derive(Debug, Clone, Args)]
pub struct PgReplayArgs {
    /// The old server, `postgres://…`.
    #[arg(long, env = "TANDEM_PG_OLD")]
    pub old: String,
    /// The new server.
    #[arg(long, env = "TANDEM_PG_NEW")]
    pub new: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Skip this kept transaction (the one a replay reports as blocking the rest) before
    /// replaying; audited, and an alert names it so the comparator and repair settle what it
    /// left. Needs --reason and --by.
    #[arg(long, requires_all = ["reason", "by"])]
    pub skip: Option<i64>,
    /// Why it is skipped (with --skip).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who skips it (with --skip).
    #[arg(long)]
    pub by: Option<String>,
    /// The control store.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `tandem demo`
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// End by itself with a summary once this long has passed and the scenario has finished,
    /// whichever comes later (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Address of the dashboard (the comparator's listener).
    #[arg(long, default_value = "127.0.0.1:7090")]
    pub listen: std::net::SocketAddr,
    /// Address of the proxy.
    #[arg(long, default_value = "127.0.0.1:7080")]
    pub proxy_listen: std::net::SocketAddr,
    /// How long the drift alert stays open (for someone to acknowledge it on the dashboard)
    /// before the demo repairs the rows.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub repair_after: std::time::Duration,
    /// Directory for the SQLite files (kept); default a temporary one (removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `tandem audit`
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Only entries of the last DURATION (e.g. 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The control store.
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `tandem config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load a command's settings exactly as that command would (file, `TANDEM_*` variables,
    /// then the flags given after `--`) without starting anything, and print each effective
    /// value with where it came from (secrets redacted); a refused value is named in one line.
    Check(ConfigCheckArgs),
}

/// Which command a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigMode {
    /// `tandem proxy`.
    Proxy,
    /// `tandem pg-proxy`.
    PgProxy,
    /// `tandem comparator` (and `compare`, `repair`).
    Comparator,
    /// `tandem backfill`.
    Backfill,
}

/// `tandem config check [--mode MODE] [FILE] [-- FLAGS...]`
#[derive(Debug, Clone, Args)]
pub struct ConfigCheckArgs {
    /// Whose configuration it is.
    #[arg(long, value_enum, default_value = "proxy")]
    pub mode: ConfigMode,
    /// The file to check, as the command's --config.
    pub file: Option<PathBuf>,
    /// The command's own flags, checked over the file and variables.
    #[arg(last = true)]
    pub flags: Vec<String>,
}

/// `tandem mirror …`
#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// List mirror copies awaiting replay (every persisted copy with --all).
    Failures {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Include replayed and not-mirrored copies.
        #[arg(long)]
        all: bool,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Re-send pending copies in the order their writes were accepted.
    Replay {
        /// Replay only this copy.
        #[arg(long)]
        id: Option<i64>,
        /// How old another replay's claim on a copy must be before this replay takes it over
        /// (that replay was stopped); until then the claimed copy's key is held (default 5m;
        /// must be longer than the upstream timeouts).
        #[arg(long, env = "TANDEM_REPLAY_CLAIM_LEASE", value_parser = humantime::parse_duration)]
        claim_lease: Option<std::time::Duration>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// The two sides, their timeouts and the control store.
        #[command(flatten)]
        sides: ReplayArgs,
    },
}

/// What `tandem mirror replay` needs, and nothing else: the two sides, their timeouts and the
/// control store, from flags, variables or the proxy's config file (whose other keys it
/// ignores).
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The proxy's TOML configuration file, for the keys below.
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Base URL of the old service.
    #[arg(long, env = "TANDEM_OLD")]
    pub old: Option<String>,
    /// Base URL of the new service.
    #[arg(long, env = "TANDEM_NEW")]
    pub new: Option<String>,
    /// PEM file of the certificates trusted for `https://` sides, besides the system's roots.
    #[arg(long, env = "TANDEM_UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Control store URL (`sqlite://FILE` or `postgres://…`).
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
    /// Timeout of one request to the old side (e.g. `5s`).
    #[arg(long, env = "TANDEM_OLD_TIMEOUT", value_parser = humantime::parse_duration)]
    pub old_timeout: Option<std::time::Duration>,
    /// Timeout of one request to the new side.
    #[arg(long, env = "TANDEM_NEW_TIMEOUT", value_parser = humantime::parse_duration)]
    pub new_timeout: Option<std::time::Duration>,
}

impl ReplayArgs {
    /// As the proxy's arguments, every other one unset, so the file and defaults decide.
    #[must_use]
    pub fn proxy_args(&self) -> ProxyArgs {
        ProxyArgs {
            config: self.config.clone(),
            old: self.old.clone(),
            new: self.new.clone(),
            upstream_ca_file: self.upstream_ca_file.clone(),
            control_db: self.control_db.clone(),
            old_timeout: self.old_timeout,
            new_timeout: self.new_timeout,
            ..ProxyArgs::default()
        }
    }
}
