//! `tandem config check`: validate without starting anything.

use std::process::ExitCode;

use tandem_control::redact_url;
use tandem_proxy::ProxyConfig;

use crate::cli::ConfigCommand;

pub fn run(command: &ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check(args) = command;
    let config = ProxyConfig::load(args)?;
    println!(
        "config ok: listen {} admin {} old {} new {} control store {} mirror {:?}",
        config.listen,
        config.admin_listen,
        redact_url(&config.old.to_string()),
        redact_url(&config.new.to_string()),
        redact_url(&config.control_db),
        config.mirror,
    );
    Ok(ExitCode::SUCCESS)
}
