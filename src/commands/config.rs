//! `tandem config check`: load a command's settings exactly as that command would, without
//! starting anything, and print each effective value with where it came from.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use tandem_comparator::ServiceSettings;
use tandem_control::settings::{shown_value, Layers, Origin};
use tandem_pgproxy::{CaptureMode, PgProxySettings};
use tandem_proxy::{ProxyArgs, ProxyConfig, DEFAULT_CONTROL_DB};

use super::backfill::{self, BackfillSettings};
use super::{comparator, pg_proxy, proxy};
use crate::cli::{
    BackfillArgs, Cli, ComparatorArgs, ConfigCheckArgs, ConfigCommand, ConfigMode, PgProxyArgs,
};
use crate::command_line::CommandLine;
use crate::compare_settings::CompareSettings;

pub fn run(command: &ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let (name, line) = command_line(args)?;
    let (values, layers) = match args.mode {
        ConfigMode::Proxy => {
            let (config, layers) =
                proxy::load(&ProxyArgs::from_arg_matches(line.matches())?, &line)?;
            (proxy_values(&config, &layers), layers)
        }
        ConfigMode::PgProxy => {
            let (settings, layers) =
                pg_proxy::settings(&PgProxyArgs::from_arg_matches(line.matches())?, &line)?;
            (pg_proxy_values(&settings), layers)
        }
        ConfigMode::Comparator => {
            let args = ComparatorArgs::from_arg_matches(line.matches())?;
            let settings = CompareSettings::resolve(&args.compare, &line)?;
            let service = comparator::service_settings(&args, &settings)?;
            settings.oncall.alerts.check_targets()?;
            let values = [compare_values(&settings), service_values(&service)].concat();
            (values, settings.layers)
        }
        ConfigMode::Backfill => {
            let args = BackfillArgs::from_arg_matches(line.matches())?;
            let settings = CompareSettings::resolve(&args.compare, &line)?;
            let own = backfill::settings(&args, &settings)?;
            let values = [
                compare_values(&settings),
                backfill_values(&own, args.dry_run),
            ]
            .concat();
            (values, settings.layers)
        }
    };
    println!("config ok ({name})");
    print_values(&values, &layers);
    Ok(ExitCode::SUCCESS)
}

/// The mode's command, given `--config FILE` and the flags after `--`.
fn command_line(args: &ConfigCheckArgs) -> anyhow::Result<(&'static str, CommandLine)> {
    let name = match args.mode {
        ConfigMode::Proxy => "proxy",
        ConfigMode::PgProxy => "pg-proxy",
        ConfigMode::Comparator => "comparator",
        ConfigMode::Backfill => "backfill",
    };
    let command = Cli::command()
        .find_subcommand(name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no command {name}"))?;
    let mut flags = Vec::new();
    if let Some(file) = &args.file {
        flags.push("--config".to_owned());
        flags.push(file.display().to_string());
    }
    flags.extend(args.flags.iter().cloned());
    let line = CommandLine::parse(command, &flags).map_err(|err| {
        let first = err.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        anyhow::anyhow!("tandem {name}: {first}")
    })?;
    Ok((name, line))
}

/// Each effective value, then whatever else the file set (its sections), with its origin.
fn print_values(values: &[(&str, String)], layers: &Layers) {
    let width = values.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    for (key, value) in values {
        let origin = match layers.origin(key) {
            Origin::File { path, .. } => format!("from {}", path.display()),
            Origin::Default => "default".to_owned(),
            other => format!("from {other}"),
        };
        let value = if value == NONE {
            value.clone()
        } else {
            shown_value(key, value)
        };
        println!("  {key:width$} = {value}  ({origin})");
    }
    for (key, setting) in layers.iter() {
        if key != "config" && values.iter().all(|(shown, _)| *shown != key) {
            println!("  {key} = {}  (from {})", setting.value, setting.origin);
        }
    }
}

fn time(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn lower(value: impl std::fmt::Debug) -> String {
    format!("{value:?}").to_ascii_lowercase()
}

/// An optional setting left unset.
const NONE: &str = "(none)";

fn or_none<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| NONE.to_owned(), |value| value.to_string())
}

/// What the layers hold for a list key, or its default.
fn listed(layers: &Layers, key: &str, default: &str) -> String {
    layers
        .get(key)
        .map_or_else(|| default.to_owned(), |setting| setting.value.clone())
}

fn proxy_values(config: &ProxyConfig, layers: &Layers) -> Vec<(&'static str, String)> {
    let shared = config.shared_journal.as_ref();
    vec![
        ("listen", config.listen.to_string()),
        ("admin_listen", config.admin_listen.to_string()),
        ("old", config.old.to_string()),
        ("new", config.new.to_string()),
        ("control_db", config.control_db.clone()),
        ("mirror", lower(config.mirror)),
        ("admin_token", or_none(config.admin_token.as_ref())),
        ("admin_insecure", config.admin_insecure.to_string()),
        ("max_in_flight", config.max_in_flight.to_string()),
        (
            "max_connections",
            config.max_connections.map_or_else(
                || "(from the open-files limit)".to_owned(),
                |n| n.to_string(),
            ),
        ),
        ("header_read_timeout", time(config.header_read_timeout)),
        ("body_read_timeout", time(config.body_read_timeout)),
        ("max_body_bytes", config.max_body_bytes.to_string()),
        ("old_timeout", time(config.old_timeout)),
        ("new_timeout", time(config.new_timeout)),
        ("accept_statuses", listed(layers, "accept_statuses", "2xx")),
        (
            "mirror_queue_capacity",
            config.mirror_queue_capacity.to_string(),
        ),
        ("mirror_workers", config.mirror_workers.to_string()),
        ("mirror_attempts", config.mirror_attempts.to_string()),
        ("mirror_retry_backoff", time(config.mirror_retry_backoff)),
        (
            "shadow_read_concurrency",
            config.shadow_read_concurrency.to_string(),
        ),
        ("stage_poll_interval", time(config.stage_poll_interval)),
        ("stats_interval", time(config.stats_interval)),
        ("shutdown_timeout", time(config.shutdown_timeout)),
        ("auto_replay_interval", time(config.auto_replay_interval)),
        ("compare_ignore", listed(layers, "compare_ignore", NONE)),
        ("journal_dir", config.journal_dir.display().to_string()),
        ("journal_fsync", config.journal_fsync.to_string()),
        ("journal_max_bytes", config.journal_max_bytes.to_string()),
        ("journal_full", lower(config.journal_full)),
        ("journal", or_none(shared.map(|shared| shared.url.clone()))),
        (
            "journal_stream",
            or_none(shared.map(|shared| shared.stream.clone())),
        ),
        (
            "journal_replicas",
            or_none(shared.map(|shared| shared.replicas)),
        ),
        (
            "journal_retention",
            or_none(shared.map(|shared| time(shared.retention))),
        ),
    ]
}

fn pg_proxy_values(settings: &PgProxySettings) -> Vec<(&'static str, String)> {
    let wal = settings.wal.as_ref();
    vec![
        ("listen", settings.listen.to_string()),
        ("admin_listen", or_none(settings.admin_listen)),
        ("old", settings.old.clone()),
        ("new", settings.new.clone()),
        ("control_db", settings.control_db.clone()),
        ("shutdown_timeout", time(settings.shutdown_timeout)),
        (
            "databases",
            if settings.databases.is_empty() {
                "(the URLs' own)".to_owned()
            } else {
                settings.databases.join(",")
            },
        ),
        ("login_timeout", time(settings.login_timeout)),
        (
            "max_client_connections",
            settings.max_client_connections.to_string(),
        ),
        ("session_threads", settings.session_threads.to_string()),
        (
            "max_server_connections",
            settings.pool.max_server_connections.to_string(),
        ),
        (
            "max_mirror_backlog",
            settings.max_mirror_backlog.to_string(),
        ),
        (
            "compare_reads",
            settings.compare_reads.fraction().to_string(),
        ),
        ("pool_max_idle", settings.pool.max_idle.to_string()),
        ("pool_idle_timeout", time(settings.pool.idle_timeout)),
        ("stats_interval", time(settings.stats_interval)),
        ("stage_grace", time(settings.stage_grace)),
        (
            "capture",
            lower(if wal.is_some() {
                CaptureMode::Wal
            } else {
                CaptureMode::Statements
            }),
        ),
        ("capture_slot", or_none(wal.map(|wal| wal.slot.clone()))),
        (
            "capture_publication",
            or_none(wal.map(|wal| wal.publication.clone())),
        ),
        (
            "switch_timeout",
            or_none(wal.map(|wal| time(wal.switch_timeout))),
        ),
        (
            "max_retained_wal",
            or_none(wal.map(|wal| wal.max_retained_wal)),
        ),
        ("apply_sessions", or_none(wal.map(|wal| wal.apply_sessions))),
    ]
}

fn compare_values(settings: &CompareSettings) -> Vec<(&'static str, String)> {
    let options = &settings.options;
    vec![
        ("old", settings.old.clone()),
        ("new", settings.new.clone()),
        (
            "control_db",
            settings
                .control_db
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTROL_DB.to_owned()),
        ),
        (
            "tables",
            if options.tables.is_empty() {
                "(every table on both sides)".to_owned()
            } else {
                format!("{} table(s)", options.tables.len())
            },
        ),
        ("window_rows", options.window_rows.to_string()),
        ("threads", options.threads.to_string()),
        ("recheck", options.rechecks.to_string()),
        ("recheck_delay", time(options.recheck_delay)),
        ("max_rows_per_sec", or_none(options.max_rows_per_sec)),
        ("max_divergences", options.max_divergences.to_string()),
    ]
}

fn service_values(service: &ServiceSettings) -> Vec<(&'static str, String)> {
    vec![
        ("listen", service.listen.to_string()),
        ("interval", time(service.interval)),
        ("sweeps", or_none(service.sweeps)),
        ("instance", service.instance.clone()),
        ("chunk_rows", service.chunk_rows.to_string()),
        ("chunk_lease", time(service.chunk_lease)),
        ("admin_token", or_none(service.oncall.admin_token.as_ref())),
        (
            "rollback policies",
            service.oncall.policies.len().to_string(),
        ),
    ]
}

fn backfill_values(own: &BackfillSettings, dry_run: bool) -> Vec<(&'static str, String)> {
    vec![
        ("backfill.chunk_rows", own.chunk_rows.to_string()),
        ("backfill.attempts", own.attempts.to_string()),
        ("backfill.chunk_retries", own.chunk_retries.to_string()),
        ("backfill.chunk_retry_delay", time(own.chunk_retry_delay)),
        ("backfill.chunk_lease", time(own.chunk_lease)),
        ("backfill.instance", own.instance.clone()),
        ("backfill.metrics_listen", or_none(own.metrics_listen)),
        ("backfill.progress_interval", time(own.progress_interval)),
        ("dry_run", dry_run.to_string()),
    ]
}
