//! `tandem comparator`: the continuous comparator, until SIGTERM or `--sweeps` sweeps.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tandem_comparator::oncall::OnCallSettings;
use tandem_comparator::{Access, ComparatorService, ServiceSettings};
use tandem_control::settings::SettingsError;
use tandem_control::{instance_name, redact_url, ControlStore};
use tandem_proxy::DEFAULT_CONTROL_DB;

use super::compare::connect;
use crate::cli::ComparatorArgs;
use crate::command_line::CommandLine;
use crate::compare_settings::CompareSettings;
use crate::shutdown;

pub async fn run(args: ComparatorArgs, line: &CommandLine) -> anyhow::Result<ExitCode> {
    let settings = CompareSettings::resolve(&args.compare, line)?;
    let service_settings = service_settings(&args, &settings)?;
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
        settings: service_settings,
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

/// The service's settings: its flags and variables over the file's keys over defaults.
///
/// # Errors
/// A value refused, named with its key and origin.
pub fn service_settings(
    args: &ComparatorArgs,
    settings: &CompareSettings,
) -> Result<ServiceSettings, SettingsError> {
    let layers = &settings.layers;
    let chunk_rows = args.chunk_rows.or(settings.chunk_rows).unwrap_or(1_000_000);
    if chunk_rows == 0 {
        return Err(layers.refuse("chunk_rows", "must be at least 1"));
    }
    let chunk_lease = args
        .chunk_lease
        .or(settings.chunk_lease)
        .unwrap_or(Duration::from_secs(300));
    if chunk_lease < Duration::from_millis(300) {
        return Err(layers.refuse("chunk_lease", "must be at least 300ms"));
    }
    let interval = args
        .interval
        .or(settings.interval)
        .unwrap_or(Duration::from_secs(60));
    if interval.is_zero() {
        return Err(layers.refuse("interval", "must be longer than 0s"));
    }
    if args.sweeps.or(settings.sweeps) == Some(0) {
        return Err(layers.refuse(
            "sweeps",
            "must be at least 1 (leave it out to run until SIGTERM)",
        ));
    }
    Ok(ServiceSettings {
        listen: args
            .listen
            .or(settings.listen)
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9091))),
        interval,
        sweeps: args.sweeps.or(settings.sweeps),
        old_source: redact_url(&settings.old),
        new_source: redact_url(&settings.new),
        instance: args
            .instance
            .clone()
            .or_else(|| settings.instance.clone())
            .unwrap_or_else(instance_name),
        chunk_rows,
        chunk_lease,
        oncall: OnCallSettings {
            admin_token: args.admin_token.clone(),
            ..settings.oncall.clone()
        },
    })
}
