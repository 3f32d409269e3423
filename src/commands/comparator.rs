//! `tandem comparator`: the continuous comparator, until SIGTERM or `--sweeps` sweeps.

use std::process::ExitCode;

use tandem_comparator::{Access, ComparatorService, ServiceSettings};
use tandem_control::{redact_url, ControlStore};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::compare::{connect, options};
use crate::cli::ComparatorArgs;
use crate::shutdown;

pub async fn run(args: ComparatorArgs) -> anyhow::Result<ExitCode> {
    let compare_options = options(&args.compare)?;
    let control_db = args
        .compare
        .control_db
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned());
    let store = ControlStore::open(&control_db).await?;
    let (old, new) = connect(&args.compare, Access::ReadOnly).await?;
    let metrics = tandem_proxy::install_metrics_recorder()?;
    let service = ComparatorService {
        old,
        new,
        store,
        options: compare_options,
        settings: ServiceSettings {
            listen: args.listen,
            interval: args.interval,
            sweeps: args.sweeps,
            old_source: redact_url(&args.compare.old),
            new_source: redact_url(&args.compare.new),
        },
        metrics,
    };
    service
        .run(shutdown::on_signal(), |address| {
            println!("tandem comparator listening on http://{address}");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
