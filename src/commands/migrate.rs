//! `tandem migrate`: apply the embedded control-store schema.

use std::process::ExitCode;

use tandem_control::ControlStore;
use tandem_proxy::resolve_control_db;

use crate::cli::ControlArgs;

pub async fn run(control: &ControlArgs) -> anyhow::Result<ExitCode> {
    let url = resolve_control_db(control.config.as_deref(), control.control_db.as_deref())?;
    let store = ControlStore::connect(&url).await?;
    store.migrate().await?;
    println!("control store {} is up to date", store.redacted_url());
    Ok(ExitCode::SUCCESS)
}
