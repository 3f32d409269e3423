//! `tandem comparator`: the continuous comparator, until SIGTERM or `--sweeps` sweeps.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_comparator::oncall::OnCallSettings;
use tandem_comparator::{Access, ComparatorService, ServiceSettings};
use tandem_control::{instance_name, redact_url, ControlStore};
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
    let chunk_rows = args.chunk_rows.or(settings.chunk_rows).unwrap_or(1_000_000);
    if chunk_rows == 0 {
        anyhow::bail!("invalid `chunk_rows`: must be at least 1");
    }
    let chunk_lease = args
        .chunk_lease
        .or(settings.chunk_lease)
        .unwrap_or(Duration::from_secs(300));
    if chunk_lease < Duration::from_millis(300) {
        anyhow::bail!("invalid `chunk_lease`: must be at least 300ms");
    }
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
            instance: args
                .instance
                .clone()
                .or(settings.instance)
                .unwrap_or_else(instance_name),
            chunk_rows,
            chunk_lease,
            oncall: OnCallSettings {
                admin_token: args.admin_token.clone(),
                ..settings.oncall.clone()
            },
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
