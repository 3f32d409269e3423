//! `tandem audit`: the append-only log of stage changes, rollbacks, forced promotions and
//! alert acknowledgements and resolutions.

use std::process::ExitCode;

use tandem_control::Timestamp;

use super::open_store;
use crate::cli::{AuditArgs, Format};
use crate::output::print_json;

pub async fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.control).await?;
    let since = args.since.map(|since| {
        let millis = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        Timestamp(Timestamp::now().millis().saturating_sub(millis))
    });
    let entries = store.audit_log(since).await?;
    match args.format {
        Format::Json => print_json(&entries)?,
        Format::Table if entries.is_empty() => println!("no audit entries"),
        Format::Table => {
            for entry in &entries {
                println!(
                    "#{} {} {} by {}: {} {}",
                    entry.id,
                    entry.at.to_rfc3339(),
                    entry.action,
                    entry.actor,
                    entry.subject,
                    if entry.detail.is_empty() {
                        String::new()
                    } else {
                        format!("({})", entry.detail)
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
