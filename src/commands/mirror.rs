//! `tandem mirror failures|replay`.

use std::process::ExitCode;

use anyhow::bail;
use tandem_control::ControlStore;
use tandem_proxy::{replay_with_lease, Upstreams, DEFAULT_CLAIM_LEASE};

use serde::Serialize;
use tandem_control::{JournalSummary, MirrorFailure};

use super::open_store;
use crate::cli::{Format, MirrorCommand};
use crate::command_line::CommandLine;
use crate::output::{failure_line, print_json};

pub async fn run(command: MirrorCommand, line: &CommandLine) -> anyhow::Result<ExitCode> {
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
            // What each proxy's journal holds undelivered, as it last said.
            let journals = store.journal_summaries().await?;
            match format {
                Format::Json => print_json(&MirrorListing { failures, journals })?,
                Format::Table => {
                    if failures.is_empty() {
                        println!("no mirror failures");
                    }
                    failures
                        .iter()
                        .for_each(|f| println!("{}", failure_line(f)));
                    print_journals(&journals);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MirrorCommand::Replay {
            id,
            claim_lease,
            format,
            sides,
        } => {
            let (config, _) = super::proxy::load(&sides.proxy_args(), line)?;
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

/// `tandem mirror failures --format json`: the copies kept in the store, and every proxy's
/// journal summary.
#[derive(Debug, Serialize)]
struct MirrorListing {
    failures: Vec<MirrorFailure>,
    journals: Vec<JournalSummary>,
}

/// The journals holding copies, one line each and a line per sampled key.
fn print_journals(journals: &[JournalSummary]) {
    let holding: Vec<&JournalSummary> = journals.iter().filter(|j| j.pending > 0).collect();
    if holding.is_empty() {
        println!("no copies pending in any proxy's journal");
        return;
    }
    for journal in holding {
        println!("{}", journal_line(journal));
        for key in &journal.keys {
            println!(
                "  -> {side} key={key} copies={copies} oldest seq={seq} accepted {at} ({age} ago){held}",
                side = key.target,
                key = key.ordering_key,
                copies = key.copies,
                seq = key.oldest_seq,
                at = key.oldest_accepted_at.to_rfc3339(),
                age = age_text(key.oldest_age_ms),
                held = if key.held { " held behind a failed copy" } else { "" },
            );
        }
        for partition in journal.partitions.iter().filter(|p| p.copies > 0) {
            println!(
                "  -> partition {number}: copies={copies} {holder}",
                number = partition.partition,
                copies = partition.copies,
                holder = partition.holder.as_ref().map_or_else(
                    || "NOT DELIVERED: no proxy holds its lease".to_owned(),
                    |holder| format!("delivered by {holder}")
                ),
            );
        }
    }
}

fn journal_line(journal: &JournalSummary) -> String {
    let oldest = match (journal.oldest_accepted_at, journal.oldest_age_ms) {
        (Some(at), Some(age)) => format!(
            ", oldest accepted {} ({} ago)",
            at.to_rfc3339(),
            age_text(age)
        ),
        _ => String::new(),
    };
    let stale = if journal.stale && !journal.partitions.is_empty() {
        format!(
            " STALE: last summary {}; its process may be dead, its copies are in the shared journal and the other proxies deliver them once its leases expire",
            journal.written_at.to_rfc3339()
        )
    } else if journal.stale {
        format!(
            " STALE: last summary {}; its process may be dead, the copies are in its journal on that host and are delivered when a proxy starts on it",
            journal.written_at.to_rfc3339()
        )
    } else {
        String::new()
    };
    format!(
        "journal {name} (proxy {instance}): {pending} copies pending{oldest}{stale}",
        name = journal.journal,
        instance = journal.instance,
        pending = journal.pending,
    )
}

/// Milliseconds as a short duration for people (`12s`, `3m 4s`).
fn age_text(ms: i64) -> String {
    let seconds = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}
