//! `tandem proxy`: run the proxy until SIGTERM.

use std::process::ExitCode;

use tandem_proxy::{ProxyArgs, ProxyConfig};

use crate::shutdown;

pub async fn run(args: &ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = ProxyConfig::load(args)?;
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
