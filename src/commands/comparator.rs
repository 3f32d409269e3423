//! `tandem comparator`: the continuous comparator, until SIGTERM or `--sweeps` sweeps.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_comparator::{Access, ComparatorService, ServiceSettings};
use tandem_control::{redact_url, ControlStore};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::compare::connect;
use crate::cli::ComparatorArgs;
use crate::compare_settings::CompareSettings;
use crate::shutdown;

pub async fn run(args: ComparatorArgs) -> anyhow::Result<ExitCode> {
    let settings = CompareSettings::resolve(&args.compare)?;
    let control_db = settings
        .control_db
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned());
    let store = ControlStore::open(&control_db).await?;
    let (old, new) = connect(&settings, Access::ReadOnly).await?;
    let metrics = tandem_proxy::install_metrics_recorder()?;
    let service = ComparatorService {
        old,
        new,
        store,
        settings: ServiceSettings {
            listen: args
                .listen
                .or(settings.listen)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9091))),
            interval: args
                .interval
                .or(settings.interval)
                .unwrap_or(Duration::from_secs(60)),
            sweeps: args.sweeps.or(settings.sweeps),
            old_source: redact_url(&settings.old),
            new_source: redact_url(&settings.new),
        },
        options: settings.options,
        metrics,
    };
    service
        .run(shutdown::on_signal(), |address| {
            println!("tandem comparator listening on http://{address}");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
