//! `tandem pg-proxy`: the PostgreSQL wire-protocol proxy, until SIGTERM; its settings come
//! from flags and variables over the `--config` file over defaults.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_pgproxy::{PgProxyConfig, PgProxySettings, PoolSettings, Skip};
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
    let settings = PgProxySettings {
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 6432))),
        old: args.old.or(file.old).ok_or_else(|| missing("old"))?,
        new: args.new.or(file.new).ok_or_else(|| missing("new"))?,
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
        users: args
            .users
            .iter()
            .map(|user| {
                user.split_once(':')
                    .filter(|(name, password)| !name.is_empty() && !password.is_empty())
                    .map(|(name, password)| (name.to_owned(), password.to_owned()))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "invalid --user: expected NAME:PASSWORD (the password is not shown)"
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?,
        pool: PoolSettings {
            max_idle: args.pool_max_idle.or(file.pool_max_idle).unwrap_or(20),
            idle_timeout,
        },
        stats_interval,
        stage_grace: args
            .stage_grace
            .or(file.stage_grace)
            .unwrap_or(Duration::from_secs(5)),
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
