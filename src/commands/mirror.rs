//! `tandem mirror failures|replay`.

use std::process::ExitCode;

use anyhow::bail;
use tandem_control::ControlStore;
use tandem_proxy::{replay_with_lease, ProxyConfig, Upstreams, DEFAULT_CLAIM_LEASE};

use super::open_store;
use crate::cli::{Format, MirrorCommand};
use crate::output::{failure_line, print_json};

pub async fn run(command: MirrorCommand) -> anyhow::Result<ExitCode> {
    match command {
        MirrorCommand::Failures {
            format,
            all,
            control,
        } => {
            let store = open_store(&control).await?;
            let failures = if all {
                store.mirror_failures(None).await?
            } else {
                store.awaiting_replay().await?
            };
            match format {
                Format::Json => print_json(&failures)?,
                Format::Table if failures.is_empty() => println!("no mirror failures"),
                Format::Table => failures
                    .iter()
                    .for_each(|f| println!("{}", failure_line(f))),
            }
            Ok(ExitCode::SUCCESS)
        }
        MirrorCommand::Replay {
            id,
            claim_lease,
            format,
            sides,
        } => {
            let config = ProxyConfig::load(&sides.proxy_args())?;
            let lease = claim_lease.unwrap_or(DEFAULT_CLAIM_LEASE);
            // A live replay holds a claim while it waits for one answer: a shorter lease
            // would take over copies still being sent.
            let longest_wait = config.old_timeout.max(config.new_timeout);
            if lease <= longest_wait {
                bail!(
                    "--claim-lease {} must be longer than the upstream timeouts ({})",
                    humantime::format_duration(lease),
                    humantime::format_duration(longest_wait)
                );
            }
            let store = ControlStore::open(&config.control_db).await?;
            let upstreams = Upstreams::from_config(&config);
            let report = replay_with_lease(&store, &upstreams, id, lease).await?;
            match format {
                Format::Json => print_json(&report)?,
                Format::Table => {
                    println!(
                        "replayed {} delivered, {} failed, {} held",
                        report.delivered, report.failed, report.held
                    );
                    report.problems.iter().for_each(|line| println!("  {line}"));
                }
            }
            Ok(if report.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
