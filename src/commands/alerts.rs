//! `tandem alerts list|show|ack|resolve`.

use std::process::ExitCode;

use tandem_control::Alert;

use super::open_store;
use crate::cli::{AlertStatusArg, AlertsCommand, Format};
use crate::output::{alert_line, print_json};

pub async fn run(command: AlertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertsCommand::List {
            status,
            format,
            control,
        } => {
            let store = open_store(&control).await?;
            let status = match status {
                AlertStatusArg::Open => Some("open"),
                AlertStatusArg::Acknowledged => Some("acknowledged"),
                AlertStatusArg::Resolved => Some("resolved"),
                AlertStatusArg::All => None,
            };
            let alerts = store.alerts(status).await?;
            match format {
                Format::Json => print_json(&alerts)?,
                Format::Table if alerts.is_empty() => println!("no alerts"),
                Format::Table => alerts
                    .iter()
                    .for_each(|alert| println!("{}", alert_line(alert))),
            }
        }
        AlertsCommand::Show {
            id,
            format,
            control,
        } => {
            let store = open_store(&control).await?;
            let alert = store
                .alert(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no alert {id}"))?;
            match format {
                Format::Json => print_json(&alert)?,
                Format::Table => print_alert(&alert),
            }
        }
        AlertsCommand::Ack {
            id,
            by,
            comment,
            control,
        } => {
            let store = open_store(&control).await?;
            let alert = store.acknowledge_alert(id, &by, comment.as_deref()).await?;
            println!("{}", alert_line(&alert));
        }
        AlertsCommand::Resolve {
            id,
            by,
            comment,
            control,
        } => {
            let store = open_store(&control).await?;
            let alert = store.resolve_alert(id, &by, &comment).await?;
            println!("{}", alert_line(&alert));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_alert(alert: &Alert) {
    println!("{}", alert_line(alert));
    println!("  fingerprint: {}", alert.fingerprint);
    println!(
        "  first seen {}, last seen {}, seen {} times, measured {}",
        alert.first_seen.to_rfc3339(),
        alert.last_seen.to_rfc3339(),
        alert.occurrences,
        alert.measured
    );
    if !alert.examples.is_empty() {
        println!("  examples: {}", alert.examples.join(", "));
    }
    if let (Some(by), Some(at)) = (&alert.acknowledged_by, alert.acknowledged_at) {
        let comment = alert.ack_comment.as_deref().unwrap_or("");
        println!("  acknowledged by {by} at {}: {comment}", at.to_rfc3339());
    }
    if let (Some(by), Some(at)) = (&alert.resolved_by, alert.resolved_at) {
        let comment = alert.resolve_comment.as_deref().unwrap_or("");
        println!("  resolved by {by} at {}: {comment}", at.to_rfc3339());
    }
}
