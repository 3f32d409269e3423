//! `tandem demo`: the whole of tandem on SQLite in one process: two sample orders services, a
//! proxy, the comparator with its dashboard, and a narrated migration: dual-write with the
//! history backfilled under traffic, shadow, live, drift on the new side, the alert, the
//! automatic rollback and the repair.

mod load;
mod stack;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tandem_comparator::{RepairOptions, TablePair};
use tandem_control::{ControlError, Side, Stage};
use tokio::time::{sleep, Instant};

use crate::cli::DemoArgs;
use crate::shutdown;
use load::Traffic;
use stack::Stack;

/// Who the demo's own stage changes and alert resolutions are made by.
const DEMO: &str = "tandem demo";

/// The longest the demo waits for one step (a sweep, an alert, a rollback).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows the demo corrupts on the new side (ids the traffic never writes).
const CORRUPTED: [i64; 3] = [3, 5, 8];

/// What happened, for the summary.
#[derive(Debug, Default)]
struct Outcome {
    divergent_rows: i64,
    rollback_after: Option<Duration>,
    repaired: u64,
    identical_at_end: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let narrator = Narrator::new();
    let stop = shutdown::on_signal();
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Workdir::Kept(dir.clone())
        }
        None => Workdir::Temporary(tempfile::tempdir().context("cannot create a work directory")?),
    };
    let stack = Stack::start(&args, dir.path(), stop.clone()).await?;
    narrator.say(&format!(
        "old orders service {}, new orders service {}, proxy {}",
        stack.old_url, stack.new_url, stack.proxy_url
    ));
    narrator.say(&format!("dashboard: {}", stack.dashboard_url));
    let traffic = Traffic::new(stack.proxy_url.clone(), stop.clone());
    let started = Instant::now();
    let deadline = args.duration.map(|duration| started + duration);
    // The scenario always runs to its end (each step is bounded by its own timeout): a slow
    // machine makes the demo longer than `--duration`, never a failed one. Ctrl-C stops it.
    let scenario = scenario(&stack, &narrator, &traffic, args.repair_after);
    let outcome = tokio::select! {
        outcome = scenario => Some(outcome),
        () = stop.cancelled() => None,
    };
    // A step that failed still tears everything down before the error is reported.
    let (outcome, failure) = match outcome {
        Some(Ok(outcome)) => (Some(outcome), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    if outcome.is_some() && failure.is_none() {
        match deadline {
            Some(deadline) if deadline <= Instant::now() => narrator.say("scenario complete"),
            Some(_) => narrator.say("scenario complete; traffic continues until --duration ends"),
            None => narrator.say("scenario complete; traffic continues, Ctrl-C stops the demo"),
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = sleep_until_deadline(deadline) => {}
        }
    }
    stop.cancel();
    let sent = traffic.finish().await;
    let mirrored = stack.stop(started.elapsed()).await;
    if let Some(failure) = failure {
        return Err(failure);
    }
    print_summary(&sent, mirrored, outcome.as_ref(), started.elapsed());
    drop(dir);
    Ok(if outcome.is_some_and(|outcome| outcome.identical_at_end) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The narrated migration.
async fn scenario(
    stack: &Stack,
    narrator: &Narrator,
    traffic: &Traffic,
    repair_after: Duration,
) -> anyhow::Result<Outcome> {
    let store = &stack.store;
    let mut outcome = Outcome::default();
    set_stage(
        stack,
        narrator,
        Stage::DualWrite,
        "mirror writes to the new service",
    )
    .await?;
    traffic.seed().await;
    narrator.say("traffic: a mix of PUT, PATCH, GET and DELETE through the proxy");
    let traffic_began = Instant::now();
    narrator.say("backfill: copying the history only old holds to new, beside the traffic");
    let copied = stack.backfill().await?;
    let verified = match copied.unconverged {
        0 => "every chunk verified identical".to_owned(),
        moving => format!("{moving} rows still moving, left to the mirror"),
    };
    narrator.say(&format!(
        "backfill done: {} rows copied in {} chunks, {} conflicts with live writes, {verified}",
        copied.copied, copied.chunks, copied.conflicts
    ));
    sleep(Duration::from_secs(4).saturating_sub(traffic_began.elapsed())).await;
    set_stage(
        stack,
        narrator,
        Stage::Shadow,
        "compare reads before promoting",
    )
    .await?;
    sleep(Duration::from_secs(3)).await;

    narrator.say(
        "promoting to live: the gate waits until the comparator has seen orders clean long enough",
    );
    let mut told = false;
    let promoted = Instant::now();
    loop {
        match store
            .set_stage(Stage::Live, DEMO, "the new service takes over")
            .await
        {
            Ok(record) => {
                narrator.say(&format!(
                    "stage {} (gate passed after {:.1}s)",
                    record.stage,
                    promoted.elapsed().as_secs_f64()
                ));
                break;
            }
            Err(ControlError::PromotionRefused { blockers, .. }) => {
                if !told {
                    narrator.say(&format!("gate refuses for now: {}", blockers.join("; ")));
                    told = true;
                }
                anyhow::ensure!(
                    promoted.elapsed() < STEP_TIMEOUT,
                    "the gate never opened: {}",
                    blockers.join("; ")
                );
                sleep(Duration::from_millis(500)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    sleep(Duration::from_secs(2)).await;

    let ids: Vec<String> = CORRUPTED.iter().map(ToString::to_string).collect();
    narrator.say(&format!(
        "injecting drift: orders {} changed on the new database behind the proxy's back",
        ids.join(", ")
    ));
    let injected = Instant::now();
    stack.corrupt_new(&CORRUPTED).await?;

    let alert = wait_for(narrator, "the drift alert", || async {
        Ok(store
            .active_alerts()
            .await?
            .into_iter()
            .find(|alert| alert.kind == "drift"))
    })
    .await?;
    outcome.divergent_rows = alert.measured;
    narrator.say(&format!(
        "comparator confirmed it: alert #{} opened: {}",
        alert.id, alert.summary
    ));
    let rolled_back = wait_for(narrator, "the automatic rollback", || async {
        let current = store.current_stage().await?;
        Ok((current.stage == Stage::DualWrite).then_some(current))
    })
    .await?;
    outcome.rollback_after = Some(injected.elapsed());
    narrator.say(&format!(
        "automatic rollback live -> {} by {} ({:.1}s after the drift): {}",
        rolled_back.stage,
        rolled_back.by,
        injected.elapsed().as_secs_f64(),
        rolled_back.reason
    ));
    stack.wait_for_proxy_stage(Stage::DualWrite).await?;
    narrator.say(&format!(
        "the proxy routes by dual-write again; writes keep reaching the new side. Acknowledge the alert on {} (repair in {}s)",
        stack.dashboard_url,
        repair_after.as_secs()
    ));
    sleep(repair_after).await;

    let repair = tandem_comparator::repair_table(
        &stack.old_db,
        &stack.new_db,
        &TablePair::parse("orders"),
        &stack.compare_options,
        &RepairOptions {
            from: Side::Old,
            dry_run: false,
            batch_rows: 500,
        },
    )
    .await?;
    outcome.repaired = repair.inserted + repair.updated + repair.deleted;
    narrator.say(&format!(
        "repair from old: {} updated, {} inserted, {} deleted; {} identical after",
        repair.updated, repair.inserted, repair.deleted, repair.identical_after
    ));
    for alert in store.active_alerts().await? {
        store
            .resolve_alert(alert.id, DEMO, "rows repaired from the old side")
            .await?;
        narrator.say(&format!("alert #{} resolved", alert.id));
    }
    let since = store
        .comparison_runs(1)
        .await?
        .first()
        .map_or(0, |run| run.id);
    let clean = wait_for(narrator, "a clean sweep", || async {
        let runs = store.comparison_runs(5).await?;
        Ok(runs
            .into_iter()
            .find(|run| run.id > since && run.status == "identical"))
    })
    .await?;
    outcome.identical_at_end = true;
    narrator.say(&format!(
        "sweep #{} : old and new are identical again",
        clean.id
    ));
    Ok(outcome)
}

async fn set_stage(
    stack: &Stack,
    narrator: &Narrator,
    stage: Stage,
    reason: &str,
) -> anyhow::Result<()> {
    let record = stack.store.set_stage(stage, DEMO, reason).await?;
    stack.wait_for_proxy_stage(stage).await?;
    narrator.say(&format!("stage {}: {}", record.stage, record.reason));
    Ok(())
}

async fn wait_for<T, F, Fut>(narrator: &Narrator, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ControlError>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if Instant::now() > deadline {
            narrator.say(&format!("gave up waiting for {what}"));
            anyhow::bail!("{what} did not happen within {}s", STEP_TIMEOUT.as_secs());
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn print_summary(sent: &load::Sent, mirrored: i64, outcome: Option<&Outcome>, elapsed: Duration) {
    println!();
    println!("tandem demo summary ({:.0}s)", elapsed.as_secs_f64());
    let reasons: Vec<String> = sent
        .failed
        .iter()
        .map(|(what, count)| format!("{what} x{count}"))
        .collect();
    let reasons = if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join(", "))
    };
    println!(
        "  requests through the proxy   {} ({} failed{reasons})",
        sent.requests,
        sent.failures()
    );
    println!("  writes mirrored              {mirrored}");
    match outcome {
        Some(outcome) => {
            println!("  divergent rows found         {}", outcome.divergent_rows);
            println!("  rows repaired                {}", outcome.repaired);
            if let Some(after) = outcome.rollback_after {
                println!("  rollback after drift         {:.1}s", after.as_secs_f64());
            }
            println!(
                "  old and new at the end       {}",
                if outcome.identical_at_end {
                    "identical"
                } else {
                    "different"
                }
            );
        }
        None => println!("  scenario                     not finished (stopped early)"),
    }
}

/// Prints what happens as it happens: one plain line per step, prefixed with the time since
/// the start (bold step text on a terminal).
struct Narrator {
    started: Instant,
    terminal: bool,
}

impl Narrator {
    fn new() -> Narrator {
        Narrator {
            started: Instant::now(),
            terminal: std::io::stdout().is_terminal(),
        }
    }

    fn say(&self, line: &str) {
        let at = self.started.elapsed().as_secs_f64();
        if self.terminal {
            println!("[{at:6.1}s] \x1b[1m{line}\x1b[0m");
        } else {
            println!("[{at:6.1}s] {line}");
        }
    }
}

/// Where the demo's SQLite files live: a directory given with `--dir` (kept), or a temporary
/// one (removed at the end).
enum Workdir {
    Kept(std::path::PathBuf),
    Temporary(tempfile::TempDir),
}

impl Workdir {
    fn path(&self) -> &std::path::Path {
        match self {
            Workdir::Kept(path) => path,
            Workdir::Temporary(dir) => dir.path(),
        }
    }
}
