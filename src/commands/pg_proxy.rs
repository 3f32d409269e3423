//! `tandem pg-proxy`: the PostgreSQL wire-protocol proxy, until SIGTERM; its settings come
//! from flags and variables over the `--config` file over defaults.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_pgproxy::wal::PublishedTables;
use tandem_pgproxy::{
    CaptureMode, PgProxyConfig, PgProxySettings, PoolSettings, Skip, WalMirrorSettings,
};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::open_store;
use crate::cli::{Format, PgProxyArgs, PgReplayArgs};
use crate::output::print_json;
use crate::shutdown;

pub async fn run(args: PgProxyArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => PgProxyConfig::load(path)?,
        None => PgProxyConfig::default(),
    };
    let missing = |key: &str| {
        anyhow::anyhow!(
            "missing `{key}`: set it in the config file, with --{key} or with TANDEM_PG_{}",
            key.to_ascii_uppercase()
        )
    };
    let idle_timeout = args
        .pool_idle_timeout
        .or(file.pool_idle_timeout)
        .unwrap_or(Duration::from_secs(60));
    if idle_timeout.is_zero() {
        anyhow::bail!(
            "invalid `pool_idle_timeout`: must be more than 0 (pool_max_idle = 0 keeps none)"
        );
    }
    let stats_interval = args
        .stats_interval
        .or(file.stats_interval)
        .unwrap_or(Duration::from_secs(5));
    if stats_interval.is_zero() {
        anyhow::bail!("invalid `stats_interval`: must be more than 0");
    }
    let users = users(&args, &file)?;
    let old = args
        .old
        .clone()
        .or(file.old.clone())
        .ok_or_else(|| missing("old"))?;
    let new = args
        .new
        .clone()
        .or(file.new.clone())
        .ok_or_else(|| missing("new"))?;
    let stage_grace = args
        .stage_grace
        .or(file.stage_grace)
        .unwrap_or(Duration::from_secs(5));
    let wal = match args.capture.or(file.capture).unwrap_or_default() {
        CaptureMode::Statements => None,
        CaptureMode::Wal => Some(WalMirrorSettings {
            old: old.clone(),
            new: new.clone(),
            slot: args
                .capture_slot
                .clone()
                .or(file.capture_slot.clone())
                .unwrap_or_else(|| "tandem".to_owned()),
            publication: args
                .capture_publication
                .clone()
                .or(file.capture_publication.clone())
                .unwrap_or_else(|| "tandem".to_owned()),
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
            .or(file.control_db)
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
        max_client_connections: args
            .max_client_connections
            .or(file.max_client_connections)
            .unwrap_or(500),
        max_mirror_backlog: args
            .max_mirror_backlog
            .or(file.max_mirror_backlog)
            .unwrap_or(10_000)
            .max(1),
        pool: PoolSettings {
            max_idle: args.pool_max_idle.or(file.pool_max_idle).unwrap_or(20),
            idle_timeout,
            max_server_connections: args
                .max_server_connections
                .or(file.max_server_connections)
                .unwrap_or(100)
                .max(1),
        },
        stats_interval,
        stage_grace,
        wal,
    };
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

/// A duration setting that must be more than 0.
fn positive(key: &str, value: Duration) -> anyhow::Result<Duration> {
    if value.is_zero() {
        anyhow::bail!("invalid `{key}`: must be more than 0");
    }
    Ok(value)
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
