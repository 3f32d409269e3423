//! `tandem pg-proxy`: the PostgreSQL wire-protocol proxy, until SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use tandem_pgproxy::{PgProxySettings, PoolSettings};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::open_store;
use crate::cli::{Format, PgProxyArgs, PgReplayArgs};
use crate::output::print_json;
use crate::shutdown;

pub async fn run(args: PgProxyArgs) -> anyhow::Result<ExitCode> {
    let settings = PgProxySettings {
        listen: args.listen,
        old: args.old,
        new: args.new,
        control_db: args
            .control_db
            .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned()),
        stage_poll_interval: Duration::from_millis(250),
        shutdown_timeout: args.shutdown_timeout,
        admin_listen: args.admin_listen,
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
            max_idle: args.pool_max_idle,
            idle_timeout: args.pool_idle_timeout,
        },
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
    let report = tandem_pgproxy::replay_transactions(&store, &args.old, &args.new).await?;
    match args.format {
        Format::Json => print_json(&report)?,
        Format::Table => {
            println!(
                "replayed {}, failed {}, held {}",
                report.replayed, report.failed, report.held
            );
            report.problems.iter().for_each(|line| println!("  {line}"));
        }
    }
    Ok(if report.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
