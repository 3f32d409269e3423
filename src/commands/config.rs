//! `tandem config check`: validate a configuration without starting anything, for each command
//! that reads one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tandem_control::redact_url;
use tandem_pgproxy::PgProxyConfig;
use tandem_proxy::ProxyConfig;

use crate::cli::{CompareArgs, ConfigCheckArgs, ConfigCommand, ConfigMode};
use crate::compare_settings::CompareSettings;

pub fn run(command: &ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    match args.mode {
        ConfigMode::Proxy => check_proxy(args)?,
        ConfigMode::PgProxy => check_pg_proxy(file_of(args)?)?,
        ConfigMode::Comparator => check_comparator(file_of(args)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The FILE the PostgreSQL proxy's and the comparator's checks need.
fn file_of(args: &ConfigCheckArgs) -> anyhow::Result<&Path> {
    let mode = match args.mode {
        ConfigMode::Proxy => "proxy",
        ConfigMode::PgProxy => "pg-proxy",
        ConfigMode::Comparator => "comparator",
    };
    args.file.as_deref().with_context(|| {
        format!("--mode {mode} checks a file: name it (tandem config check --mode {mode} FILE)")
    })
}

/// The file, variables and flags, layered as `tandem proxy` does.
fn check_proxy(args: &ConfigCheckArgs) -> anyhow::Result<()> {
    let mut proxy = args.proxy.clone();
    if let Some(file) = &args.file {
        if proxy.config.as_ref().is_some_and(|config| config != file) {
            anyhow::bail!("two files to check: give FILE or --config, not both");
        }
        proxy.config = Some(file.clone());
    }
    let config = ProxyConfig::load(&proxy)?;
    println!(
        "config ok: listen {} admin {} old {} new {} control store {} mirror {:?}",
        config.listen,
        config.admin_listen,
        redact_url(&config.old.to_string()),
        redact_url(&config.new.to_string()),
        redact_url(&config.control_db),
        config.mirror,
    );
    Ok(())
}

/// The file as `tandem pg-proxy --config FILE` reads it (strict keys, values, `[classify]`),
/// and both sides named in it or in `TANDEM_PG_OLD` / `TANDEM_PG_NEW`.
fn check_pg_proxy(path: &Path) -> anyhow::Result<()> {
    let config = PgProxyConfig::load(path)?;
    let side = |key: &str, file: Option<&String>| {
        let variable = format!("TANDEM_PG_{}", key.to_ascii_uppercase());
        file.cloned()
            .or_else(|| std::env::var(&variable).ok())
            .with_context(|| {
                format!(
                    "missing `{key}`: set it in the config file, with --{key} or with {variable}"
                )
            })
    };
    let (old, new) = (
        side("old", config.old.as_ref())?,
        side("new", config.new.as_ref())?,
    );
    println!(
        "config ok (pg-proxy): old {} new {} control store {}",
        redact_url(&old),
        redact_url(&new),
        config
            .control_db
            .as_deref()
            .map_or_else(|| tandem_proxy::DEFAULT_CONTROL_DB.to_owned(), redact_url),
    );
    Ok(())
}

/// The file and the `TANDEM_COMPARE_*` variables, resolved as `tandem comparator --config FILE`
/// does, with its alert targets checked as the comparator checks them when it starts.
fn check_comparator(path: &Path) -> anyhow::Result<()> {
    #[derive(Parser)]
    struct Comparison {
        #[command(flatten)]
        compare: CompareArgs,
    }
    let file: PathBuf = path.to_owned();
    let mut comparison = Comparison::try_parse_from(["tandem config check"])
        .context("the TANDEM_COMPARE_* variables")?;
    comparison.compare.config = Some(file);
    let settings = CompareSettings::resolve(&comparison.compare)?;
    settings.oncall.alerts.check_targets()?;
    let alerts = &settings.oncall.alerts;
    let targets: Vec<&str> = [
        alerts.alertmanager_url.as_ref().map(|_| "alertmanager"),
        alerts.webhook_url.as_ref().map(|_| "webhook"),
        (alerts.pagerduty_routing_key_file.is_some()
            || std::env::var_os("TANDEM_PAGERDUTY_ROUTING_KEY").is_some())
        .then_some("pagerduty"),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "config ok (comparator): old {} new {} control store {} tables {} rollback policies {} alert targets [{}]",
        redact_url(&settings.old),
        redact_url(&settings.new),
        settings
            .control_db
            .as_deref()
            .map_or_else(|| tandem_proxy::DEFAULT_CONTROL_DB.to_owned(), redact_url),
        settings.options.tables.len(),
        settings.oncall.policies.len(),
        targets.join(", "),
    );
    Ok(())
}
