//! `tandem pg-mirror`: the write-ahead-log capture's slots seen from outside the proxy (where
//! each side stands, what the other side applied, why the capture is paused), the wait for a
//! paused capture to go on once the DDL is on both sides, and their removal when the
//! migration is over.

use std::process::ExitCode;

use tandem_control::Side;
use tandem_pgproxy::wal::{
    drop_publication, drop_slot, slot_status, PublicationDropped, SlotStatus, Target, WalError,
    ORIGIN_PREFIX,
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
            // Each side on its own: one that cannot be read does not hide the other.
            let (mut slots, mut unreadable) = (Vec::new(), Vec::new());
            for side in [Side::Old, Side::New] {
                match sides.status(side).await {
                    Ok(status) => slots.push(status),
                    Err(err) => unreadable.push(format!("the {side} side cannot be read: {err}")),
                }
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
                    "errors": unreadable,
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
                    for slot in &slots {
                        if let Some(err) = &slot.other_side_error {
                            println!(
                                "{}: what the {} side applied is unknown: {err}",
                                slot.side,
                                slot.side.other()
                            );
                        }
                    }
                    for alert in &alerts {
                        println!("alert: {alert}");
                    }
                    for err in &unreadable {
                        println!("error: {err}");
                    }
                }
            }
            Ok(if unreadable.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
            // Nothing is dropped while a capture reads either slot (a side that cannot be
            // read cannot be dropped either: whether it is read is left to the next run).
            for side in [Side::Old, Side::New] {
                if sides.status(side).await.is_ok_and(|status| status.active) {
                    anyhow::bail!(
                        "the {side} side's slot {} is being read: stop every tandem pg-proxy \
                         capturing it first (nothing was dropped)",
                        sides.slot(side)
                    );
                }
            }
            // Then everything that can be reached, each side on its own: a side that is down
            // does not keep the other's log.
            let mut left = Vec::new();
            for side in [Side::Old, Side::New] {
                left.extend(drop_side(&sides, side).await);
            }
            if left.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for what in &left {
                println!("left behind: {what}");
            }
            println!("run tandem pg-mirror drop again once every side answers");
            Ok(ExitCode::from(1))
        }
    }
}

/// Drops `side`'s slot, its progress on the other side and its publication, printing what
/// became of each; returns what could not be dropped, and why.
async fn drop_side(sides: &PgMirrorSides, side: Side) -> Vec<String> {
    let (url, other) = sides.urls(side);
    let slot = sides.slot(side);
    let origin = format!("{ORIGIN_PREFIX}{slot}");
    let publication = &sides.capture_publication;
    let mut left = Vec::new();
    let mut outcome = |what: String, done: Result<&str, String>| match done {
        Ok(done) => format!("{what} {done}"),
        Err(err) => {
            left.push(format!("{what}: {err}"));
            format!("{what} not dropped")
        }
    };
    let slot_dropped = drop_slot(side, url, &slot).await;
    let slot_gone = slot_dropped.is_ok();
    let slot_done = outcome(
        format!("slot {slot}"),
        match slot_dropped {
            Ok(dropped) => Ok(if dropped { "dropped" } else { "was not there" }),
            Err(err) => Err(err.to_string()),
        },
    );
    // The progress goes only with its slot: a capture of a slot still there starts from it,
    // exactly once.
    let progress = format!("its progress on the {} side", side.other());
    let origin_done = if slot_gone {
        outcome(
            progress,
            match Target::drop_origin(side.other(), other, &origin).await {
                Ok(dropped) => Ok(if dropped { "dropped" } else { "was not there" }),
                Err(err) => Err(err.to_string()),
            },
        )
    } else {
        outcome(progress, Err("kept with its slot".to_owned()))
    };
    // The publication too: the slot decodes through it.
    let publication_done = if slot_gone {
        outcome(
            format!("publication {publication}"),
            match drop_publication(side, url, publication).await {
                Ok(PublicationDropped::Dropped) => Ok("dropped"),
                Ok(PublicationDropped::Absent) => Ok("was not there"),
                Ok(PublicationDropped::NotTandems) => {
                    Ok("was not created by tandem: left as it is")
                }
                Err(err) => Err(err.to_string()),
            },
        )
    } else {
        outcome(
            format!("publication {publication}"),
            Err("kept with its slot".to_owned()),
        )
    };
    println!("{side}: {slot_done}; {origin_done}; {publication_done}");
    left.into_iter()
        .map(|what| format!("{side}: {what}"))
        .collect()
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

    /// This side's slot as it stands, and what the other side applied of it.
    async fn status(&self, side: Side) -> Result<SlotStatus, WalError> {
        let (url, other) = self.urls(side);
        let slot = self.slot(side);
        slot_status(side, url, &slot, other, &format!("{ORIGIN_PREFIX}{slot}")).await
    }
}
