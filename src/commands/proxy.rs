//! `tandem proxy`: run the proxy until SIGTERM.

use std::process::ExitCode;

use tandem_control::settings::{Layers, SettingsError, SettingsFile};
use tandem_proxy::{ConfigError, ProxyArgs, ProxyConfig};

use crate::command_line::CommandLine;
use crate::shutdown;

pub async fn run(args: &ProxyArgs, line: &CommandLine) -> anyhow::Result<ExitCode> {
    let (config, _) = load(args, line)?;
    let metrics = tandem_proxy::install_metrics_recorder()?;
    let shutdown = shutdown::on_signal();
    tandem_proxy::run(config, metrics, shutdown, |addrs| {
        println!(
            "tandem proxy listening on http://{} (admin http://{})",
            addrs.proxy, addrs.admin
        );
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The proxy's configuration as `tandem proxy` runs with it, and where each value came from.
///
/// # Errors
/// A value refused, in one line naming its key and origin.
pub fn load(args: &ProxyArgs, line: &CommandLine) -> Result<(ProxyConfig, Layers), SettingsError> {
    let file = args.config.as_deref().map(SettingsFile::read).transpose()?;
    let layers = line.layers(file.as_ref());
    let config = ProxyConfig::load(args).map_err(|err| match err {
        ConfigError::Settings(err) => err,
        ConfigError::Invalid { key, reason } => layers.refuse(&key, reason),
        ConfigError::Missing { key, .. } => layers.missing(key),
    })?;
    Ok((config, layers))
}
