//! `tandem pg-proxy`: the PostgreSQL wire-protocol proxy, until SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use tandem_pgproxy::PgProxySettings;
use tandem_proxy::DEFAULT_CONTROL_DB;

use crate::cli::PgProxyArgs;
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
    };
    tandem_pgproxy::run(settings, shutdown::on_signal(), |address| {
        println!("tandem pg-proxy listening on {address}");
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
