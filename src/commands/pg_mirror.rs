//! `tandem pg-mirror`: the write-ahead-log capture's slots seen from outside the proxy (where
//! each side stands, what the other side applied, why the capture is paused), the wait for a
//! paused capture to go on once the DDL is on both sides, and their removal when the
//! migration is over.

use std::process::ExitCode;

use tandem_control::Side;
use tandem_pgproxy::wal::{
    drop_publication, drop_slot, slot_status, PublicationDropped, Target, ORIGIN_PREFIX,
};

use super::open_store;
use crate::cli::{Format, PgMirrorCommand, PgMirrorSides};
use crate::output::print_json;

pub async fn run(command: PgMirrorCommand) -> anyhow::Result<ExitCode> {
    match command {
        PgMirrorCommand::Status {
            sides,
            format,
            control,
        } => {
            let mut slots = Vec::new();
            for side in [Side::Old, Side::New] {
                let (url, other) = sides.urls(side);
                let slot = sides.slot(side);
                let origin = format!("{ORIGIN_PREFIX}{slot}");
                slots.push(slot_status(side, url, &slot, other, &origin).await?);
            }
            // Why the capture is paused, or its log at risk: the proxy's open alerts.
            let alerts = match open_store(&control).await {
                Ok(store) => open_alerts(&store, |kind| kind.starts_with("capture_")).await?,
                Err(err) => vec![format!("(the control store cannot be read: {err})")],
            };
            match format {
                Format::Json => print_json(&serde_json::json!({
                    "slots": slots,
                    "alerts": alerts,
                }))?,
                Format::Table => {
                    println!(
                        "{:<4} {:<32} {:<7} {:<7} {:<14} {:<14} {:>14} {:>14} {:<14} {:>8}",
                        "SIDE",
                        "SLOT",
                        "EXISTS",
                        "ACTIVE",
                        "CURRENT",
                        "CONFIRMED",
                        "RETAINED_B",
                        "UNCONFIRMED_B",
                        "APPLIED_THERE",
                        "LAG_S"
                    );
                    for slot in &slots {
                        let number =
                            |value: Option<u64>| value.map_or("-".to_owned(), |n| n.to_string());
                        println!(
                            "{:<4} {:<32} {:<7} {:<7} {:<14} {:<14} {:>14} {:>14} {:<14} {:>8}",
                            slot.side.as_str(),
                            slot.slot,
                            slot.exists,
                            slot.active,
                            slot.current.as_deref().unwrap_or("-"),
                            slot.confirmed.as_deref().unwrap_or("-"),
                            number(slot.retained_bytes),
                            number(slot.unconfirmed_bytes),
                            slot.applied_on_other_side.as_deref().unwrap_or("-"),
                            slot.lag_seconds
                                .map_or("-".to_owned(), |lag| format!("{lag:.3}")),
                        );
                    }
                    for alert in &alerts {
                        println!("alert: {alert}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PgMirrorCommand::Resume { wait, control } => {
            let store = open_store(&control).await?;
            let paused = |store| open_alerts(store, |kind| kind == "capture_paused");
            let before = paused(&store).await?;
            if before.is_empty() {
                println!("the capture is not paused");
                return Ok(ExitCode::SUCCESS);
            }
            for alert in &before {
                println!("paused: {alert}");
            }
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::time::sleep(RESUME_LOOK).await;
                let now = paused(&store).await?;
                if now.is_empty() {
                    println!("the capture goes on: the sides match again");
                    return Ok(ExitCode::SUCCESS);
                }
                if tokio::time::Instant::now() >= deadline {
                    for alert in &now {
                        println!("still paused after {wait:?}: {alert}");
                    }
                    println!(
                        "apply the same change to the table on the other side; the capture \
                         goes on by itself once they match"
                    );
                    return Ok(ExitCode::from(1));
                }
            }
        }
        PgMirrorCommand::Drop { sides } => {
            for side in [Side::Old, Side::New] {
                let (url, other) = sides.urls(side);
                let slot = sides.slot(side);
                let status =
                    slot_status(side, url, &slot, other, &format!("{ORIGIN_PREFIX}{slot}")).await?;
                if status.active {
                    anyhow::bail!(
                        "the {side} side's slot {slot} is being read: stop every tandem pg-proxy \
                         capturing it first"
                    );
                }
                let dropped = drop_slot(side, url, &slot).await?;
                let origin =
                    Target::drop_origin(side.other(), other, &format!("{ORIGIN_PREFIX}{slot}"))
                        .await?;
                let publication = &sides.capture_publication;
                let published = match drop_publication(side, url, publication).await? {
                    PublicationDropped::Dropped => "dropped",
                    PublicationDropped::Absent => "was not there",
                    PublicationDropped::NotTandems => "was not created by tandem: left as it is",
                };
                println!(
                    "{side}: slot {slot} {}; its progress on the {} side {}; publication \
                     {publication} {published}",
                    if dropped { "dropped" } else { "was not there" },
                    side.other(),
                    if origin { "dropped" } else { "was not there" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How often `resume` looks whether the capture went on (its alert is resolved within about
/// five seconds of it).
const RESUME_LOOK: std::time::Duration = std::time::Duration::from_millis(500);

/// The summaries of the alerts of a kind `wanted` that are not resolved.
async fn open_alerts(
    store: &tandem_control::ControlStore,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    Ok(store
        .alerts(None)
        .await?
        .into_iter()
        .filter(|alert| wanted(&alert.kind) && alert.status != "resolved")
        .map(|alert| alert.summary)
        .collect())
}

impl PgMirrorSides {
    /// This side's URL and the other's.
    fn urls(&self, side: Side) -> (&str, &str) {
        match side {
            Side::Old => (&self.old, &self.new),
            Side::New => (&self.new, &self.old),
        }
    }

    /// This side's slot.
    fn slot(&self, side: Side) -> String {
        format!("{}_{side}", self.capture_slot)
    }
}
