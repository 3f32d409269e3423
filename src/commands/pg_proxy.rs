//! `tandem pg-proxy`: the PostgreSQL wire-protocol proxy, until SIGTERM; its settings come
//! from flags and variables over the `--config` file over defaults.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_control::settings::{Layers, SettingsFile};
use tandem_pgproxy::wal::PublishedTables;
use tandem_pgproxy::{
    CaptureMode, ConfigError, PgProxyConfig, PgProxySettings, PoolSettings, ReadSample, Skip,
    WalMirrorSettings,
};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::open_store;
use crate::cli::{Format, PgProxyArgs, PgReplayArgs};
use crate::command_line::CommandLine;
use crate::output::print_json;
use crate::shutdown;

pub async fn run(args: PgProxyArgs, line: &CommandLine) -> anyhow::Result<ExitCode> {
    let (settings, _) = settings(&args, line)?;
    let metrics = tandem_proxy::install_metrics_recorder()?;
    tandem_pgproxy::run(
        settings,
        metrics,
        shutdown::on_signal(),
        |addrs| match addrs.admin {
            Some(admin) => println!(
                "tandem pg-proxy listening on {} (admin http://{admin})",
                addrs.proxy
            ),
            None => println!("tandem pg-proxy listening on {}", addrs.proxy),
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The proxy's settings as `tandem pg-proxy` runs with them: flags and variables over the
/// `--config` file over defaults, and where each value came from.
///
/// # Errors
/// A value refused, in one line naming its key and origin.
pub fn settings(
    args: &PgProxyArgs,
    line: &CommandLine,
) -> anyhow::Result<(PgProxySettings, Layers)> {
    let settings_file = args.config.as_deref().map(SettingsFile::read).transpose()?;
    let layers = line.layers(settings_file.as_ref());
    let file = match &settings_file {
        Some(file) => PgProxyConfig::from_file(file).map_err(|err| match err {
            ConfigError::Settings(err) => err,
            ConfigError::Invalid { key, reason } => layers.refuse(&key, reason),
        })?,
        None => PgProxyConfig::default(),
    };
    let positive = |key: &str, value: Duration| {
        if value.is_zero() {
            Err(layers.refuse(key, "must be longer than 0s"))
        } else {
            Ok(value)
        }
    };
    let at_least_one = |key: &str, value: usize| {
        if value == 0 {
            Err(layers.refuse(key, "must be at least 1"))
        } else {
            Ok(value)
        }
    };
    let idle_timeout = args
        .pool_idle_timeout
        .or(file.pool_idle_timeout)
        .unwrap_or(Duration::from_secs(60));
    if idle_timeout.is_zero() {
        return Err(layers
            .refuse(
                "pool_idle_timeout",
                "must be longer than 0s (pool_max_idle = 0 keeps none)",
            )
            .into());
    }
    let stats_interval = positive(
        "stats_interval",
        args.stats_interval
            .or(file.stats_interval)
            .unwrap_or(Duration::from_secs(5)),
    )?;
    let users = users(args, &file)?;
    let url = |key: &str, value: Option<String>| match value {
        None => Err(layers.missing(key)),
        Some(url) if !url.starts_with("postgres://") && !url.starts_with("postgresql://") => {
            Err(layers.refuse(key, "must be a postgres://user@host[:port]/database URL"))
        }
        Some(url) => Ok(url),
    };
    let old = url("old", args.old.clone().or(file.old.clone()))?;
    let new = url("new", args.new.clone().or(file.new.clone()))?;
    let stage_grace = positive(
        "stage_grace",
        args.stage_grace
            .or(file.stage_grace)
            .unwrap_or(Duration::from_secs(5)),
    )?;
    let named = |key: &str, value: Option<String>| match value {
        Some(name) if name.trim().is_empty() => Err(layers.refuse(key, "must not be empty")),
        name => Ok(name.unwrap_or_else(|| "tandem".to_owned())),
    };
    let slot = named(
        "capture_slot",
        args.capture_slot.clone().or(file.capture_slot.clone()),
    )?;
    let publication = named(
        "capture_publication",
        args.capture_publication
            .clone()
            .or(file.capture_publication.clone()),
    )?;
    let wal = match args.capture.or(file.capture).unwrap_or_default() {
        CaptureMode::Statements => None,
        CaptureMode::Wal => Some(WalMirrorSettings {
            old: old.clone(),
            new: new.clone(),
            slot,
            publication,
            tables: {
                let tables = if args.capture_tables.is_empty() {
                    file.capture_tables.clone()
                } else {
                    args.capture_tables.clone()
                };
                if tables.is_empty() {
                    PublishedTables::All
                } else {
                    PublishedTables::Only(tables)
                }
            },
            switch_timeout: positive(
                "switch_timeout",
                args.switch_timeout
                    .or(file.switch_timeout)
                    .unwrap_or(Duration::from_secs(30)),
            )?,
            stage_grace,
            max_retained_wal: args
                .max_retained_wal
                .or(file.max_retained_wal)
                .unwrap_or(10 * 1024 * 1024 * 1024),
            apply_sessions: at_least_one(
                "apply_sessions",
                args.apply_sessions.or(file.apply_sessions).unwrap_or(1),
            )?,
        }),
    };
    let settings = PgProxySettings {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6432))),
        old,
        new,
        control_db: args
            .control_db
            .clone()
            .or(file.control_db.clone())
            .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned()),
        stage_poll_interval: Duration::from_millis(250),
        shutdown_timeout: args
            .shutdown_timeout
            .or(file.shutdown_timeout)
            .unwrap_or(Duration::from_secs(30)),
        admin_listen: args.admin_listen.or(file.admin_listen),
        classifier: file.classifier,
        users,
        databases: if args.databases.is_empty() {
            file.databases.clone()
        } else {
            args.databases.clone()
        },
        login_timeout: positive(
            "login_timeout",
            args.login_timeout
                .or(file.login_timeout)
                .unwrap_or(Duration::from_secs(60)),
        )?,
        max_client_connections: at_least_one(
            "max_client_connections",
            args.max_client_connections
                .or(file.max_client_connections)
                .unwrap_or(500),
        )?,
        session_threads: at_least_one(
            "session_threads",
            args.session_threads
                .or(file.session_threads)
                .unwrap_or_else(default_session_threads),
        )?,
        max_mirror_backlog: match args.max_mirror_backlog.or(file.max_mirror_backlog) {
            Some(0) => {
                return Err(layers
                    .refuse("max_mirror_backlog", "must be at least 1")
                    .into())
            }
            backlog => backlog.unwrap_or(10_000),
        },
        compare_reads: match args.compare_reads.or(file.compare_reads) {
            None => ReadSample::EVERY,
            Some(fraction) => ReadSample::new(fraction).ok_or_else(|| {
                layers.refuse(
                    "compare_reads",
                    "must be a fraction from 0 (no read compared) to 1 (every read)",
                )
            })?,
        },
        pool: PoolSettings {
            max_idle: args.pool_max_idle.or(file.pool_max_idle).unwrap_or(20),
            idle_timeout,
            max_server_connections: at_least_one(
                "max_server_connections",
                args.max_server_connections
                    .or(file.max_server_connections)
                    .unwrap_or(100),
            )?,
        },
        stats_interval,
        stage_grace,
        wal,
    };
    Ok((settings, layers))
}

/// A session thread for every two cores the process may run on, at least one: the other
/// half is left to the capture, its apply and the rest of the runtime. Measured on two cores
/// (docs/benchmarks.md, "Sessions on event loops of their own"): one session thread beside
/// the runtime's two workers took the least CPU per transaction and kept the capture's apply
/// delay under a second; two session threads left the capture behind by seconds.
fn default_session_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// The users clients log in as: `TANDEM_PG_USERS` and the users file (`NAME:PASSWORD` each;
/// a bad entry is named by its place, never by its password).
fn users(
    args: &PgProxyArgs,
    file: &PgProxyConfig,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut users = std::collections::HashMap::new();
    let mut add = |entry: &str, place: &str| -> anyhow::Result<()> {
        let (name, password) = entry
            .split_once(':')
            .filter(|(name, password)| !name.is_empty() && !password.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid user in {place}: expected NAME:PASSWORD (the password is not shown)"
                )
            })?;
        users.insert(name.trim().to_owned(), password.to_owned());
        Ok(())
    };
    if let Some(list) = &args.users {
        for (index, entry) in list
            .split(',')
            .filter(|entry| !entry.is_empty())
            .enumerate()
        {
            add(entry, &format!("TANDEM_PG_USERS (entry {})", index + 1))?;
        }
    }
    if let Some(path) = args.users_file.as_ref().or(file.users_file.as_ref()) {
        let text = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("users file {}: {err}", path.display()))?;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            add(line, &format!("{} line {}", path.display(), index + 1))?;
        }
    }
    Ok(users)
}

/// `tandem pg-replay`: exit 0 when every kept transaction was applied, 1 otherwise.
pub async fn replay(args: &PgReplayArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.control).await?;
    let skip = match (args.skip, &args.reason, &args.by) {
        (Some(id), Some(reason), Some(by)) => Some(Skip {
            id,
            reason: reason.clone(),
            by: by.clone(),
        }),
        _ => None,
    };
    let report =
        tandem_pgproxy::replay_transactions(&store, &args.old, &args.new, skip.as_ref()).await?;
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Table => {
            if let Some(id) = report.skipped {
                println!("skipped #{id} (audited; an alert names it)");
            }
            println!(
                "replayed {}, failed {}, held {}",
                report.replayed, report.failed, report.held
            );
            report.problems.iter().for_each(|line| println!("  {line}"));
            if let Some(blocker) = &report.blocked_by {
                println!(
                    "blocked by #{} on the {} side ({}): {}\n  fix the {} side and replay again, \
                     or skip it: tandem pg-replay --skip {} --reason TEXT --by NAME",
                    blocker.id,
                    blocker.target,
                    blocker.fingerprint,
                    blocker.reason,
                    blocker.target,
                    blocker.id
                );
            }
        }
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
