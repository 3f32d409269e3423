//! Mirroring from the write-ahead log in the proxy (`--capture wal`): the stage says which
//! side is captured (the authoritative one, in `dual-write`, `shadow` and `live`), and a
//! change of authoritative side is a protocol, so that no write is lost or applied out of
//! order across it:
//!
//! 1. logins wait (the gate closes) and the sessions still on the side before end at their
//!    next transaction boundary (or once the stage grace has passed);
//! 2. a marker is written into that side's log, and tandem waits until the other side has
//!    applied everything up to it (its recorded progress, readable by every instance);
//! 3. the capture of that side stops, its slot is dropped (the log it kept is freed), and its
//!    sequences are carried to the side taking over, so serial ids go on without collision;
//! 4. the slot of the side taking over is created before any write reaches it;
//! 5. the gate opens: sessions go on, served by the side the stage names.
//!
//! Clients see a pause as long as the other side's lag, never an error, unless the switch
//! takes longer than the switch timeout (then SQLSTATE 57P03, "connect again shortly"). A
//! stage change back during a switch ends it where it is: nothing of the side before was
//! stopped yet.
//!
//! The start of mirroring is exact too: when a stage that mirrors writes begins on a side
//! whose slot does not exist yet (`old-only → dual-write`), new transactions wait at their
//! start (logins, and each session's next request outside a transaction) until the slot is
//! made and consistent, so every transaction begun under the new stage is captured. A
//! transaction already open then is one the slot waits for: if it committed before the
//! consistent point it is history, named in a `capture_start_history` alert for the
//! backfill. Past the switch timeout the waiting sessions are refused (57P03) and a
//! `capture_start` alert says what the slot waits for; none goes on uncaptured.

use std::collections::HashSet;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tandem_control::{
    AlertCondition, ControlStore, ResolveRule, Side, Stage, StageRecord, StageWatch,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::wal::{
    carry_sequences, check_capture, drop_slot, origin_exists, origin_progress, prepare_slot,
    run_capture, slot_exists, slot_lag, write_marker, CaptureConfig, CaptureSettings, CaptureState,
    CaptureStatus, Hold, Hurry, Lsn, OpenTransaction, PublishedTables, SideLock, SlotLag,
    SlotWaiters, Target, WalError,
};

/// How a proxy carries writes to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Re-running each session's statements there (servers without logical decoding).
    Statements,
    /// Applying the rows the authoritative side's write-ahead log says changed: exact rows,
    /// true commit order, nothing lost on a crash of tandem (the default).
    #[default]
    Wal,
}

impl std::str::FromStr for CaptureMode {
    type Err = String;

    fn from_str(text: &str) -> Result<CaptureMode, String> {
        match text {
            "statements" => Ok(CaptureMode::Statements),
            "wal" => Ok(CaptureMode::Wal),
            other => Err(format!("{other:?} is no capture mode (wal or statements)")),
        }
    }
}

/// How the write-ahead-log capture runs.
#[derive(Debug, Clone)]
pub struct WalMirrorSettings {
    /// The old side's URL.
    pub old: String,
    /// The new side's URL.
    pub new: String,
    /// The slots' name stem: `STEM_old` on old, `STEM_new` on new.
    pub slot: String,
    /// The publication on each side.
    pub publication: String,
    /// The tables it holds.
    pub tables: PublishedTables,
    /// How long a login waits for a switch of authoritative side before it is refused.
    pub switch_timeout: Duration,
    /// How long sessions on the side before may finish their transaction at a switch.
    pub stage_grace: Duration,
    /// Retained write-ahead log past which the authoritative side's disk is at risk.
    pub max_retained_wal: u64,
    /// Sessions applying captured transactions at once (`wal::CaptureConfig`).
    pub apply_sessions: usize,
}

/// Where the mirror stands, for `/readyz`, the admin API and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorStatus {
    /// The side captured now, if any.
    pub captured: Option<Side>,
    /// The capture's own status.
    pub capture: CaptureStatus,
    /// The side sessions may be served by now (`None` while a switch runs).
    pub serving: Option<Side>,
    /// What a running switch waits for.
    pub switching: Option<String>,
    /// The stage record whose side and capture start are settled: a session that read a
    /// later one waits before it starts a transaction.
    pub settled: Option<i64>,
}

/// The write-ahead-log mirror of one proxy.
#[derive(Debug)]
pub struct WalMirror {
    settings: WalMirrorSettings,
    store: ControlStore,
    /// Sessions open per side (old, new).
    open: [AtomicU64; 2],
    status: watch::Sender<MirrorStatus>,
    /// The last marker written for compared reads: when its write began, and its position.
    read_marker: tokio::sync::Mutex<Option<(Instant, Lsn)>>,
    /// Per side (old, new): hurries the capture of that side through a marker someone waits
    /// for (each side's log has positions of its own).
    hurry: [Hurry; 2],
}

/// How long a compared read waits for the capture to apply what its session wrote before it
/// (past it, the read is compared anyway: it never waits forever).
const READ_MARKER_WAIT: Duration = Duration::from_secs(10);

/// A session counted as open on its side while it lives.
#[derive(Debug)]
pub struct OpenSession {
    mirror: Arc<WalMirror>,
    side: Side,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.mirror.open[index(self.side)].fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a wait for a side to serve sessions ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The side serves under the stage in force.
    Ready,
    /// The stage in force names the other side.
    Moved,
}

/// Whether `side` serves sessions under the stage record `stage` (settled, no switch running).
fn serves(now: &MirrorStatus, side: Side, stage: i64) -> bool {
    now.serving == Some(side) && now.settled.is_some_and(|id| id >= stage)
}

fn index(side: Side) -> usize {
    usize::from(side == Side::New)
}

/// How long sessions of the side before a switch may take to end beyond the stage grace
/// (their cancel's answer).
const SESSIONS_END_SLACK: Duration = Duration::from_secs(6);

/// How long before `switch_timeout` (counted from the switch's start) a switch whose side
/// taking over has not caught up is refused, at most: the stage goes back before any session
/// waiting for the switch is refused.
const REFUSAL_MARGIN: Duration = Duration::from_secs(2);

/// The alert a switch refused for its lag raises (its subject the slot of the side that was
/// to take over).
const SWITCH_REFUSED: &str = "capture_switch_refused";

/// Who a switch refused for its lag is recorded as, in the stage history and the audit log.
const SWITCH_REFUSED_BY: &str = "tandem:pg-proxy";

/// How often a switch re-reads the other side's progress, and the retained log is read.
const POLL: Duration = Duration::from_millis(100);

/// How often a switch looks whether the sessions on the side before have ended (a counter in
/// memory: new transactions wait at their start meanwhile).
const SESSIONS_POLL: Duration = Duration::from_millis(5);
const LAG_EVERY: Duration = Duration::from_secs(5);

/// How long a switch waits for the side before to answer whether its slot exists.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(5);

/// How a switch (or a wait inside one) ended.
enum Switched {
    Done,
    Interrupted,
    Stopped,
}

/// How often the lock of the side served is checked (a server restart frees it silently).
const LOCK_CHECK: Duration = Duration::from_secs(2);

/// The capture running now.
struct Running {
    from: Side,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl WalMirror {
    /// A mirror that serves nobody until [`WalMirror::run`] has settled the stage's side.
    #[must_use]
    pub fn new(settings: WalMirrorSettings, store: ControlStore) -> Arc<WalMirror> {
        Arc::new(WalMirror {
            settings,
            store,
            open: [AtomicU64::new(0), AtomicU64::new(0)],
            status: watch::channel(MirrorStatus::default()).0,
            read_marker: tokio::sync::Mutex::new(None),
            hurry: [Hurry::default(), Hurry::default()],
        })
    }

    /// Waits until the other side has applied every transaction `side` committed before this
    /// call (a session's own writes before a read compared there, which would otherwise race
    /// the capture), up to [`READ_MARKER_WAIT`]: a marker is written into `side`'s log and
    /// its position awaited in the capture's progress. Calls that arrive while a marker is
    /// being written share the next one, so markers are written one at a time however many
    /// sessions wait.
    ///
    /// # Errors
    /// Why the wait ended before the other side caught up (no marker could be written, the
    /// capture is not reading `side`, the wait timed out).
    pub async fn applied_before_now(&self, side: Side) -> Result<(), String> {
        let asked = Instant::now();
        let marker = {
            let mut last = self.read_marker.lock().await;
            match *last {
                // Written after this call began: it covers what was committed before.
                Some((began, marker)) if began >= asked => marker,
                _ => {
                    let began = Instant::now();
                    let marker = write_marker(side, self.url(side))
                        .await
                        .map_err(|err| err.to_string())?;
                    self.hurry[index(side)].through(marker);
                    *last = Some((began, marker));
                    marker
                }
            }
        };
        let applied =
            |now: &MirrorStatus| now.captured != Some(side) || now.capture.applied >= marker;
        let mut status = self.status.subscribe();
        let waited = tokio::time::timeout(READ_MARKER_WAIT, status.wait_for(applied))
            .await
            .map(|now| now.is_ok_and(|now| now.captured == Some(side)));
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("the capture no longer reads the {side} side")),
            Err(_) => Err(format!(
                "the other side had not applied the {side} side's log up to {marker} within {READ_MARKER_WAIT:?}"
            )),
        }
    }

    /// Checks, before serving anyone, what capturing needs on each side: the side `stage`
    /// makes authoritative (captured while writes are mirrored: old until `shadow`, new from
    /// `live`) must have it all; the other side lacking it is reported, as a stage that makes
    /// it authoritative will need it.
    ///
    /// # Errors
    /// The authoritative side's first missing piece, with its fix.
    pub async fn preflight(&self, stage: Stage) -> Result<(), WalError> {
        let captured = stage.authoritative();
        check_capture(&self.capture_settings(captured)).await?;
        if let Err(err) = check_capture(&self.capture_settings(captured.other())).await {
            tracing::warn!(
                error = %err,
                "a stage with the {} side authoritative will need it captured too",
                captured.other()
            );
        }
        Ok(())
    }

    /// Its status, as it changes.
    #[must_use]
    pub fn status(&self) -> watch::Receiver<MirrorStatus> {
        self.status.subscribe()
    }

    /// Counts a session as open on `side` until the returned value is dropped.
    #[must_use]
    fn session_on(self: &Arc<Self>, side: Side) -> OpenSession {
        self.open[index(side)].fetch_add(1, Ordering::SeqCst);
        OpenSession {
            mirror: Arc::clone(self),
            side,
        }
    }

    /// Waits until sessions may be served by `side` under the stage in force (no switch runs
    /// towards it, and when that stage mirrors writes its capture has begun), up to the switch
    /// timeout. A session calls it before its first request and before each transaction it
    /// starts, and is counted as open on its side ([`WalMirror::open_session`]). The wait
    /// ends early, with [`Readiness::Moved`], once the stage names the other side: a session
    /// waiting for a side the stage has just left goes to the side it names instead of
    /// waiting out the timeout for a side no switch goes to.
    ///
    /// # Errors
    /// What the switch (or the capture's start) still waits for, when the timeout passed
    /// first.
    pub async fn ready_for(
        &self,
        side: Side,
        stages: &watch::Receiver<StageRecord>,
    ) -> Result<Readiness, String> {
        {
            let record = stages.borrow();
            if record.stage.authoritative() == side
                && serves(&self.status.borrow(), side, record.id)
            {
                return Ok(Readiness::Ready);
            }
        }
        let mut stages = stages.clone();
        let mut status = self.status.subscribe();
        let deadline = tokio::time::Instant::now() + self.settings.switch_timeout;
        loop {
            let record = stages.borrow_and_update().clone();
            if record.stage.authoritative() != side {
                return Ok(Readiness::Moved);
            }
            if serves(&status.borrow_and_update(), side, record.id) {
                return Ok(Readiness::Ready);
            }
            let changed = tokio::select! {
                changed = status.changed() => changed.is_ok(),
                changed = stages.changed() => changed.is_ok(),
                () = tokio::time::sleep_until(deadline) => false,
            };
            if !changed {
                return Err(self.status.borrow().switching.clone().unwrap_or_else(|| {
                    format!("the capture has not yet made the {side} side ready")
                }));
            }
        }
    }

    /// Counts a session as open on `side` once the side serves under the stage in force
    /// ([`WalMirror::ready_for`]); `None` when the stage names the other side first. Counted
    /// before the last look at the gate, so that a switch beginning meanwhile either sees the
    /// session (and waits for it) or closed the gate before that look (and the session waits).
    ///
    /// # Errors
    /// What the switch still waits for, past the switch timeout.
    pub async fn open_session(
        self: &Arc<Self>,
        side: Side,
        stages: &watch::Receiver<StageRecord>,
    ) -> Result<Option<OpenSession>, String> {
        loop {
            if self.ready_for(side, stages).await? == Readiness::Moved {
                return Ok(None);
            }
            let open = self.session_on(side);
            fence(Ordering::SeqCst);
            let stage = stages.borrow().id;
            if serves(&self.status.borrow(), side, stage) {
                return Ok(Some(open));
            }
        }
    }

    fn url(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.settings.old,
            Side::New => &self.settings.new,
        }
    }

    /// The slot on `side`.
    #[must_use]
    pub fn slot(&self, side: Side) -> String {
        format!("{}_{side}", self.settings.slot)
    }

    /// What the capture of `from` reads.
    fn capture_settings(&self, from: Side) -> CaptureSettings {
        CaptureSettings {
            side: from,
            url: self.url(from).to_owned(),
            slot: self.slot(from),
            publication: self.settings.publication.clone(),
            tables: self.settings.tables.clone(),
            start: crate::wal::Lsn(0),
            messages: true,
            hurry: self.hurry[index(from)].clone(),
        }
    }

    fn capture_config(&self, from: Side) -> CaptureConfig {
        CaptureConfig {
            source: self.capture_settings(from),
            target_side: from.other(),
            target_url: self.url(from.other()).to_owned(),
            batch_transactions: 1_000,
            batch_changes: 10_000,
            apply_sessions: self.settings.apply_sessions,
            retry: Duration::from_secs(1),
        }
    }

    /// Follows the stage until `shutdown`: settles the authoritative side (the switch
    /// protocol), runs the capture the stage asks for, watches the slot's retained log.
    pub async fn run(self: Arc<Self>, stage: StageWatch, shutdown: CancellationToken) {
        let mut stages = stage.subscribe();
        let mut running: Option<Running> = None;
        let mut serving: Option<Side> = None;
        // The side-served lock this instance holds (see `wal::SideLock`).
        let mut lock: Option<SideLock> = None;
        // A side another instance switched away from under this instance's stage (whose
        // record it names): not served again before a newer stage says so.
        let mut fenced: Option<(Side, i64)> = None;
        // The side whose slot this instance made sure of (consistent) since its stage began
        // to mirror writes: every commit there from then on is captured.
        let mut slot_ready: Option<Side> = None;
        // Present from the start, so that a rule on its increase sees the first refusal.
        counter!("tandem_capture_switches_refused_total").increment(0);
        let watcher = tokio::spawn(Arc::clone(&self).watch_slots(shutdown.clone()));
        loop {
            let record = stages.borrow_and_update().clone();
            let (stage, side) = (record.stage, record.stage.authoritative());
            if fenced.is_some_and(|(at, id)| at != side || id != record.id) {
                fenced = None;
            }
            if !stage.mirrors_writes() {
                slot_ready = None;
            }
            if fenced.is_some() {
                self.status.send_modify(|now| {
                    now.serving = None;
                    now.switching = Some(format!(
                        "another tandem switched away from the {side} side under a newer stage \
                         than this instance has read; waiting for the control store"
                    ));
                });
            } else if serving == Some(side) && lock.as_ref().is_some_and(|held| held.side() == side)
            {
                // The side that served goes on serving (a stage change that keeps it, or a
                // switch away that failed before this instance let the side go); a stage that
                // starts mirroring writes here starts with the slot made.
                if stage.mirrors_writes() && slot_ready != Some(side) {
                    match self
                        .begin_capture(side, stage, &mut stages, &shutdown)
                        .await
                    {
                        Ok(Switched::Done) => slot_ready = Some(side),
                        Ok(Switched::Interrupted) => continue,
                        Ok(Switched::Stopped) => break,
                        Err(err) => {
                            tracing::error!(%side, error = %err, "cannot begin capturing the {side} side; new transactions wait");
                            self.switching(format!(
                                "the capture of the {side} side cannot begin ({err}); new \
                                 transactions wait while tandem retries"
                            ));
                            tokio::select! {
                                () = shutdown.cancelled() => break,
                                _ = stages.changed() => {}
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                            continue;
                        }
                    }
                }
                self.status.send_if_modified(|now| {
                    let reopened = now.serving != serving
                        || now.switching.is_some()
                        || now.settled != Some(record.id);
                    now.serving = serving;
                    now.switching = None;
                    now.settled = Some(record.id);
                    reopened
                });
            } else {
                serving = None;
                self.status.send_modify(|now| now.serving = None);
                // The gate closed before the open sessions are counted (see `open_session`).
                fence(Ordering::SeqCst);
                let switched = match self
                    .switch_to(side, stage, &mut running, &mut lock, &mut stages, &shutdown)
                    .await
                {
                    Ok(Switched::Done) => {
                        self.serve(side, stage, &mut lock, &stages, &shutdown).await
                    }
                    other => other,
                };
                match switched {
                    Err(WalError::Fenced { .. }) => {
                        tracing::error!(%side, "another tandem switched away from the {side} side under a newer stage; not serving it");
                        fenced = Some((side, record.id));
                        continue;
                    }
                    Ok(Switched::Done) => {
                        serving = Some(side);
                        slot_ready = stage.mirrors_writes().then_some(side);
                        self.status.send_modify(|now| {
                            now.serving = Some(side);
                            now.switching = None;
                            now.settled = Some(record.id);
                        });
                        tracing::info!(%side, "sessions are served by the {side} side");
                    }
                    Ok(Switched::Interrupted) => continue,
                    Ok(Switched::Stopped) => break,
                    Err(err) => {
                        tracing::error!(%side, error = %err, "the switch of authoritative side failed; retrying");
                        self.status.send_modify(|now| {
                            now.switching = Some(format!(
                                "the switch to the {side} side failed ({err}); tandem retries"
                            ));
                        });
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            _ = stages.changed() => {}
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            let wanted = (fenced.is_none() && stage.mirrors_writes()).then_some(side);
            if running.as_ref().map(|running| running.from) != wanted {
                self.stop_capture(&mut running).await;
                if let Some(from) = wanted {
                    running = Some(self.start_capture(from));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = stages.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(LOCK_CHECK), if lock.is_some() => {
                    let lost = match lock.as_mut() {
                        Some(held) => held.check().await.err(),
                        None => None,
                    };
                    if let Some(err) = lost {
                        // Served without the lock, a switch elsewhere would not wait for this
                        // instance's sessions: the gate closes until it is held again.
                        tracing::warn!(error = %err, "the lock of the side served is lost; taking it again");
                        lock = None;
                        serving = None;
                    }
                }
            }
        }
        self.stop_capture(&mut running).await;
        if let Some(held) = lock.take() {
            let _ = held.release().await;
        }
        watcher.abort();
    }

    /// Takes the lock that says this instance serves `side` (waiting while another instance
    /// switches away from it), then checks that a stage mirroring writes still finds the
    /// side's slot: gone, another instance switched away from the side under a newer stage.
    async fn serve(
        &self,
        side: Side,
        stage: Stage,
        lock: &mut Option<SideLock>,
        stages: &watch::Receiver<StageRecord>,
        shutdown: &CancellationToken,
    ) -> Result<Switched, WalError> {
        if lock.as_ref().is_some_and(|held| held.side() != side) {
            if let Some(held) = lock.take() {
                let _ = held.release().await;
            }
        }
        if lock.is_none() {
            let url = self.url(side);
            loop {
                if let Some(held) =
                    SideLock::try_take(side, url, &self.settings.slot, Hold::Serving).await?
                {
                    *lock = Some(held);
                    break;
                }
                self.switching(format!(
                    "waiting for another tandem to finish switching away from the {side} side"
                ));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(Switched::Stopped),
                    () = tokio::time::sleep(POLL) => {}
                }
                if stages.borrow().stage.authoritative() != side {
                    return Ok(Switched::Interrupted);
                }
            }
        }
        if stage.mirrors_writes() && !slot_exists(side, self.url(side), &self.slot(side)).await? {
            if let Some(held) = lock.take() {
                let _ = held.release().await;
            }
            return Err(WalError::Fenced { side });
        }
        Ok(Switched::Done)
    }

    /// Makes the slot of `side`, where a stage that mirrors writes begins while it had none,
    /// and waits until it is consistent (every commit from then on is kept for the capture).
    /// New transactions wait meanwhile ([`WalMirror::ready_for`]); past the switch timeout a
    /// `capture_start` alert names what the slot waits for. The transactions that committed
    /// while it was made are history, named in a `capture_start_history` alert.
    async fn begin_capture(
        &self,
        side: Side,
        stage: Stage,
        stages: &mut watch::Receiver<StageRecord>,
        shutdown: &CancellationToken,
    ) -> Result<Switched, WalError> {
        let url = self.url(side).to_owned();
        self.switching(format!(
            "making the {side} side's slot for the {stage} stage: new transactions wait until \
             it is consistent, once every transaction open on the {side} side has ended"
        ));
        // Which transactions the slot waits for: named, not needed (the capture begins
        // without them when the server cannot say).
        let mut waiters = match SlotWaiters::open(side, &url).await {
            Ok(waiters) => Some(waiters),
            Err(err) => {
                tracing::warn!(%side, error = %err, "cannot see the transactions the new slot waits for");
                None
            }
        };
        let settings = self.capture_settings(side);
        let mut prepare = std::pin::pin!(prepare_slot(&settings));
        let mut overdue = std::pin::pin!(tokio::time::sleep(self.settings.switch_timeout));
        let (mut late, mut raised) = (false, None);
        let mut look = tokio::time::interval(POLL);
        let ended = loop {
            tokio::select! {
                prepared = &mut prepare => break Ok(prepared),
                () = shutdown.cancelled() => break Err(Switched::Stopped),
                changed = stages.changed() => {
                    break Err(if changed.is_err() { Switched::Stopped } else { Switched::Interrupted });
                }
                _ = look.tick(), if waiters.is_some() => {
                    if let Some(watch) = waiters.as_mut() {
                        if let Err(err) = watch.look().await {
                            tracing::warn!(%side, error = %err, "cannot see the transactions the new slot waits for");
                            waiters = None;
                        }
                    }
                }
                () = &mut overdue, if !late => {
                    late = true;
                    counter!("tandem_capture_start_timeouts_total").increment(1);
                    let summary = format!(
                        "the {side} side's slot for the {stage} stage is not consistent after {:?}: \
                         transactions open on the {side} side hold it; new transactions through \
                         this tandem are refused (57P03) until it is, never let through uncaptured \
                         (pg_stat_activity: backend_xid IS NOT NULL)",
                        self.settings.switch_timeout
                    );
                    tracing::error!(%side, "{summary}");
                    self.switching(summary.clone());
                    self.alert(side, &mut raised, true, None, "capture_start", "critical", summary, 1)
                        .await;
                }
            }
        };
        // Over, whichever way: the slot is consistent, or the stage no longer asks for it.
        self.alert(
            side,
            &mut raised,
            false,
            Some(ResolveRule::CleanChecks(1)),
            "capture_start",
            "critical",
            String::new(),
            0,
        )
        .await;
        let consistent = match ended {
            Ok(prepared) => prepared?,
            Err(switched) => return Ok(switched),
        };
        tracing::info!(%side, %consistent, "the {side} side's slot is consistent: every transaction committed from now on is captured");
        let history = match waiters {
            Some(watch) => watch.committed().await.unwrap_or_else(|err| {
                tracing::warn!(%side, error = %err, "cannot tell which transactions committed while the slot was made");
                Vec::new()
            }),
            None => Vec::new(),
        };
        self.name_history(side, stage, &history).await;
        Ok(Switched::Done)
    }

    /// Names, loudly, the transactions that committed on `side` while its slot was being made:
    /// the capture does not carry them.
    async fn name_history(&self, side: Side, stage: Stage, history: &[OpenTransaction]) {
        if history.is_empty() {
            return;
        }
        counter!("tandem_capture_history_transactions_total").increment(history.len() as u64);
        for transaction in history {
            tracing::warn!(%side, %transaction, "a transaction open when the stage became {stage} committed before the slot was consistent: history, not captured");
        }
        let named: Vec<String> = history.iter().take(5).map(ToString::to_string).collect();
        let summary = format!(
            "{} transactions open on the {side} side when the stage became {stage} committed \
             before the capture's slot was consistent: what they wrote is history, not carried \
             by the capture; copy it with tandem backfill (tandem compare finds it): {}{}",
            history.len(),
            named.join("; "),
            if history.len() > named.len() {
                "; …"
            } else {
                ""
            }
        );
        let condition = AlertCondition {
            source: "pg-proxy".to_owned(),
            subject: tandem_control::instance_name(),
            kind: "capture_start_history".to_owned(),
            severity: "warning".to_owned(),
            summary,
            measured: i64::try_from(history.len()).unwrap_or(i64::MAX),
            examples: history.iter().take(20).map(ToString::to_string).collect(),
        };
        if let Err(err) = self.store.raise_alert(&condition).await {
            tracing::error!(error = %err, "cannot raise the capture's history alert");
        }
    }

    fn start_capture(self: &Arc<Self>, from: Side) -> Running {
        let stop = CancellationToken::new();
        let (sender, mut receiver) = watch::channel(CaptureStatus::default());
        let task = tokio::spawn(run_capture(self.capture_config(from), sender, stop.clone()));
        let (mirror, forwarding) = (Arc::clone(self), stop.clone());
        tokio::spawn(async move {
            loop {
                let capture = receiver.borrow_and_update().clone();
                mirror.status.send_modify(|now| {
                    now.captured = Some(from);
                    now.capture = capture;
                });
                tokio::select! {
                    () = forwarding.cancelled() => return,
                    changed = receiver.changed() => if changed.is_err() { return },
                }
            }
        });
        tracing::info!(%from, "capturing the {from} side's write-ahead log");
        Running { from, stop, task }
    }

    async fn stop_capture(&self, running: &mut Option<Running>) {
        if let Some(running) = running.take() {
            running.stop.cancel();
            let _ = running.task.await;
            self.status.send_modify(|now| {
                now.captured = None;
                now.capture = CaptureStatus::default();
            });
        }
    }

    fn switching(&self, what: String) {
        tracing::info!(status = %what, "switching the authoritative side");
        self.status.send_modify(|now| now.switching = Some(what));
    }

    /// Makes `next` the side sessions are served by (see the module's protocol). At start it
    /// finishes a switch a crash interrupted: the slot of the other side still exists.
    async fn switch_to(
        self: &Arc<Self>,
        next: Side,
        stage: Stage,
        running: &mut Option<Running>,
        lock: &mut Option<SideLock>,
        stages: &mut watch::Receiver<StageRecord>,
        shutdown: &CancellationToken,
    ) -> Result<Switched, WalError> {
        let before = next.other();
        let started = tokio::time::Instant::now();
        let interrupted =
            |stages: &watch::Receiver<StageRecord>| stages.borrow().stage.authoritative() != next;
        // 1. The sessions still on the side before end.
        self.switching(format!(
            "waiting for the sessions on the {before} side to end"
        ));
        let deadline = tokio::time::Instant::now() + self.settings.stage_grace + SESSIONS_END_SLACK;
        while self.open[index(before)].load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Switched::Stopped),
                () = tokio::time::sleep(SESSIONS_POLL) => {}
            }
            if interrupted(stages) {
                return Ok(Switched::Interrupted);
            }
        }
        // This instance's sessions there have ended: it no longer serves the side before.
        if let Some(held) = lock.take() {
            let _ = held.release().await;
        }
        let (before_url, next_url) = (self.url(before).to_owned(), self.url(next).to_owned());
        let before_slot = self.slot(before);
        let mut fence = None;
        if self.switch_left_on(before, next).await? {
            // No instance serves the side before once its lock is held exclusively (one that
            // has not read the stage change yet keeps it shared: the switch waits for it).
            loop {
                if let Some(held) =
                    SideLock::try_take(before, &before_url, &self.settings.slot, Hold::Switching)
                        .await?
                {
                    fence = Some(held);
                    break;
                }
                // The instance that holds it drops the side's slot: this one's capture of the
                // side (reading it, or waiting as a standby) must not hold the slot meanwhile.
                if running
                    .as_ref()
                    .is_some_and(|running| running.from == before)
                {
                    self.stop_capture(running).await;
                }
                self.switching(format!(
                    "waiting for every tandem serving the {before} side to let its sessions go"
                ));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(Switched::Stopped),
                    () = tokio::time::sleep(POLL) => {}
                }
                if interrupted(stages) {
                    return Ok(Switched::Interrupted);
                }
            }
        }
        // Another instance may have finished this switch while this one waited for the lock.
        if fence.is_some() && slot_exists(before, &before_url, &before_slot).await? {
            // 2. Everything the side before committed reaches the side taking over.
            if running.as_ref().map(|running| running.from) != Some(before) {
                self.stop_capture(running).await;
                *running = Some(self.start_capture(before));
            }
            let marker = write_marker(before, &before_url).await?;
            self.hurry[index(before)].through(marker);
            let origin = self.capture_config(before).origin();
            let timeout = self.settings.switch_timeout;
            // The bound, less a margin so the stage goes back before the waiting sessions are
            // refused; but the side taking over gets at least that margin to catch up after
            // the marker (the sessions of the side before may have taken most of the bound).
            let refuse_at = (started + timeout.saturating_sub(REFUSAL_MARGIN.min(timeout / 4)))
                .max(tokio::time::Instant::now() + REFUSAL_MARGIN.min(timeout / 4));
            // Looked at again as soon as the capture applied something, or after the poll at
            // the latest: clients wait for the catch-up, not for a poll's period.
            let mut applying = self.status.subscribe();
            loop {
                let applied = origin_progress(next, &next_url, &origin).await?;
                if applied >= marker {
                    break;
                }
                if tokio::time::Instant::now() >= refuse_at {
                    let behind = marker.0.saturating_sub(applied.0);
                    if self
                        .refuse_switch(stages, before, behind, &marker.to_string())
                        .await
                    {
                        // Refused: never finished now, even if the side catches up before
                        // this instance hears of the stage it wrote.
                        return Ok(self.until_moved_on(stages, next, shutdown).await);
                    }
                }
                self.switching(format!(
                    "waiting for the {next} side to apply the {before} side's changes up to \
                     {marker} ({} bytes behind; the capture: {:?})",
                    marker.0.saturating_sub(applied.0),
                    self.status.borrow().capture.state
                ));
                let seen = applying.borrow().capture.transactions;
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(Switched::Stopped),
                    () = tokio::time::sleep(POLL) => {}
                    _ = applying.wait_for(|now| now.capture.transactions != seen) => {}
                }
                if interrupted(stages) {
                    return Ok(Switched::Interrupted);
                }
            }
            // 3. That capture ends; the sequences follow; its slot goes (last: a switch that
            //    fails before it is retried whole).
            self.switching(format!("carrying the {before} side's sequences"));
            self.stop_capture(running).await;
            let carried = carry_sequences((before, &before_url), (next, &next_url)).await?;
            tracing::info!(from = %before, to = %next, sequences = carried, "sequences carried");
            self.switching(format!("dropping the {before} side's slot"));
            drop_slot(before, &before_url, &before_slot).await?;
            if let Err(err) = Target::drop_origin(next, &next_url, &origin).await {
                tracing::warn!(error = %err, %origin, "cannot drop the finished capture's replication origin");
            }
        }
        if let Some(held) = fence {
            let _ = held.release().await;
        }
        // 4. Every write the side taking over commits from now on is kept for its capture.
        if stage.mirrors_writes() {
            self.switching(format!("creating the {next} side's slot"));
            prepare_slot(&self.capture_settings(next)).await?;
        }
        // A switch to this side refused before is over: its alert is resolved.
        self.alert(
            next,
            &mut None,
            false,
            Some(ResolveRule::CleanChecks(1)),
            SWITCH_REFUSED,
            "warning",
            String::new(),
            0,
        )
        .await;
        Ok(Switched::Done)
    }

    /// Refuses the stage change that made the side after `before` authoritative, its catch-up
    /// having outlasted the switch's bound: the stage goes back to the one before (once, if it
    /// is still in force), audited as an automatic rollback with how far behind the side was.
    /// The switch then sees the stage name `before` again and ends; sessions waiting for it
    /// go on with `before`, never refused.
    ///
    /// Answers whether the stage went back (here, or by another instance: the stage in force
    /// no longer names the side taking over); `false` when it could not be written (tried
    /// again at the next look), the stage before did not name `before`, or the stage moved on
    /// to one that still names the side taking over.
    async fn refuse_switch(
        &self,
        stages: &watch::Receiver<StageRecord>,
        before: Side,
        behind: u64,
        marker: &str,
    ) -> bool {
        let record = stages.borrow().clone();
        let Some(previous) = record
            .previous
            .filter(|previous| previous.authoritative() == before)
        else {
            tracing::error!(stage = %record.stage, "the switch outlasts its bound and the stage before it did not name the {before} side: waiting on");
            return false;
        };
        let next = before.other();
        let reason = format!(
            "the {next} side was still {behind} bytes behind the {before} side's position \
             {marker} after {:?}: the change to {} is refused, back to {previous} (sessions \
             waited for the switch and go on with the {before} side)",
            self.settings.switch_timeout, record.stage
        );
        match self
            .store
            .roll_back_stage(
                record.stage,
                previous,
                SWITCH_REFUSED_BY,
                "switch_catch_up",
                &reason,
            )
            .await
        {
            Ok(Some(_)) => {
                counter!("tandem_capture_switches_refused_total").increment(1);
                tracing::error!(behind, "{reason}");
                // `tandem stage set` returned before the switch began: the refusal reaches
                // whoever changed the stage as an alert (resolved by the next switch to the
                // side that completes).
                self.alert(
                    next,
                    &mut None,
                    true,
                    None,
                    SWITCH_REFUSED,
                    "warning",
                    reason,
                    behind,
                )
                .await;
                true
            }
            // The stage changed meanwhile: refused by another instance, or moved on to a
            // stage that still names the side taking over (the switch goes on then).
            Ok(None) => match self.store.current_stage().await {
                Ok(now) => now.stage.authoritative() != next,
                Err(err) => {
                    tracing::error!(error = %err, "cannot read the stage after a refusal; trying again");
                    false
                }
            },
            Err(err) => {
                tracing::error!(error = %err, "cannot refuse a switch that outlasts its bound; trying again");
                false
            }
        }
    }

    /// After a refusal: waits until this instance hears of a stage that no longer names
    /// `next` (the switch is then interrupted, and the side before serves again).
    async fn until_moved_on(
        &self,
        stages: &mut watch::Receiver<StageRecord>,
        next: Side,
        shutdown: &CancellationToken,
    ) -> Switched {
        loop {
            if stages.borrow_and_update().stage.authoritative() != next {
                return Switched::Interrupted;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Switched::Stopped,
                changed = stages.changed() => if changed.is_err() {
                    return Switched::Stopped;
                },
            }
        }
    }

    /// Whether a capture of the side `before` is left to finish (its slot exists). When that
    /// side cannot be reached (down: it takes no writes either), the side taking over says
    /// instead: only a capture that ran into it and was never finished by a switch left its
    /// replication origin there. So the other side being down never keeps the authoritative
    /// side's sessions waiting, unless a switch away from it was interrupted.
    async fn switch_left_on(&self, before: Side, next: Side) -> Result<bool, WalError> {
        let (before_url, next_url) = (self.url(before), self.url(next));
        let looked = tokio::time::timeout(
            UNREACHABLE_AFTER,
            slot_exists(before, before_url, &self.slot(before)),
        )
        .await;
        let unreachable = match looked {
            Ok(Ok(found)) => return Ok(found),
            Ok(Err(err @ (WalError::Connect(_) | WalError::Io(_) | WalError::Ended { .. }))) => {
                err.to_string()
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => format!("no answer within {UNREACHABLE_AFTER:?}"),
        };
        let origin = self.capture_config(before).origin();
        if origin_exists(next, next_url, &origin).await? {
            self.switching(format!(
                "a capture of the {before} side into the {next} side was left unfinished \
                 (replication origin {origin}); it must finish before the {next} side serves, \
                 and the {before} side cannot be reached: {unreachable}"
            ));
            return Err(WalError::Unfinished {
                side: before,
                reason: unreachable,
            });
        }
        tracing::warn!(side = %before, reason = %unreachable, "the {before} side cannot be reached; no capture of it was left unfinished, so the {next} side serves");
        Ok(false)
    }

    /// Every few seconds: each side's slot's retained log and lag as metrics, with an alert
    /// near and past the limit, in every stage (a slot kept through `old-only` or `new-only`
    /// keeps its log too); an alert while the capture is paused, and one while it is stuck
    /// failing; the captured side's sequences carried to the other side.
    async fn watch_slots(self: Arc<Self>, shutdown: CancellationToken) {
        let mut raised = [SlotAlerts::default(), SlotAlerts::default()];
        let mut reachable = [true, true];
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(LAG_EVERY) => {}
            }
            // The capture's alerts first, on its status as it is now. In the middle of a
            // switch they wait: the capture stops and starts again there.
            let status = self.status.borrow().clone();
            // Which alerts are open, read once: another instance's is looked at only then
            // (rather than a write to the store for every kind and side at every look).
            let open: Option<HashSet<String>> = self
                .store
                .active_alerts()
                .await
                .ok()
                .map(|alerts| alerts.into_iter().map(|alert| alert.fingerprint).collect());
            let open = open.as_ref();
            if status.serving.is_some() && status.switching.is_none() {
                for side in [Side::Old, Side::New] {
                    self.watch_capture(side, &status, open, &mut raised[index(side)])
                        .await;
                }
            }
            // Both sides at once, each within the interval: a side that is down, or that
            // does not answer, delays neither the other nor the next look.
            let (old, new) = tokio::join!(self.slot_lag(Side::Old), self.slot_lag(Side::New));
            for (side, lag) in [(Side::Old, old), (Side::New, new)] {
                let was = std::mem::replace(&mut reachable[index(side)], lag.is_ok());
                match lag {
                    Ok(lag) => {
                        if !was {
                            tracing::info!(%side, "the slot's lag can be read again");
                        }
                        self.watch_retained(side, lag, open).await;
                    }
                    // Once when it goes: a side retired or not yet there stays so for long.
                    // Its gauges say unknown (NaN), not the last value read.
                    Err(err) => {
                        if was {
                            tracing::warn!(%side, error = %err, "cannot read the capture slot's lag");
                        } else {
                            tracing::debug!(%side, error = %err, "cannot read the capture slot's lag");
                        }
                        slot_gauges(side, f64::NAN, f64::NAN);
                    }
                }
            }
            // Between switches too, the other side's sequences follow (a switch carries them
            // exactly; this keeps them near for a failover that skips the switch).
            if let Some(side) = status.captured {
                let carried = tokio::time::timeout(
                    LAG_EVERY,
                    carry_sequences(
                        (side, self.url(side)),
                        (side.other(), self.url(side.other())),
                    ),
                )
                .await;
                if let Err(err) = carried
                    .map_err(|_| format!("no answer within {LAG_EVERY:?}"))
                    .and_then(|carried| carried.map_err(|err| err.to_string()))
                {
                    tracing::warn!(%side, error = %err, "cannot carry the sequences to the other side");
                }
            }
        }
    }

    /// The log `side` keeps for its slot (none when the slot does not exist), read within
    /// [`LAG_EVERY`].
    async fn slot_lag(&self, side: Side) -> Result<SlotLag, String> {
        match tokio::time::timeout(LAG_EVERY, slot_lag(side, self.url(side), &self.slot(side)))
            .await
        {
            Ok(Ok(lag)) => Ok(lag.unwrap_or_default()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {LAG_EVERY:?}")),
        }
    }

    /// The retained log of `side`'s slot: its metrics, and its alerts (resolved once the slot
    /// is gone). Every instance reads the same slot a little apart, so an alert is resolved
    /// (whoever raised it) only once the log has stayed under for a minute, and one open
    /// stays until the log falls a margin under the level that raised it: a log hovering at a
    /// level does not open and resolve it by turns.
    async fn watch_retained(&self, side: Side, lag: SlotLag, open: Option<&HashSet<String>>) {
        #[allow(clippy::cast_precision_loss)]
        {
            slot_gauges(
                side,
                lag.retained_bytes as f64,
                lag.unconfirmed_bytes as f64,
            );
            gauge!("tandem_capture_max_retained_wal_bytes")
                .set(self.settings.max_retained_wal as f64);
        }
        let limit = self.settings.max_retained_wal;
        let kept = lag.retained_bytes;
        let is_open = |kind: &str| {
            open.is_some_and(|open| {
                open.contains(&tandem_control::fingerprint(
                    ALERT_SOURCE,
                    &self.slot(side),
                    kind,
                ))
            })
        };
        let over = kept
            > if is_open(RETAINED) {
                limit / 20 * 19
            } else {
                limit
            };
        let near = !over
            && kept
                > if is_open(RETAINED_NEAR) {
                    limit / 4 * 3
                } else {
                    limit / 5 * 4
                };
        let summary = |what: &str, then: &str| {
            format!(
                "the {side} side keeps {kept} bytes of write-ahead log for tandem's slot {} \
                 ({what} limit {limit}): the capture is not keeping up, is paused or is not \
                 running; {then} (tandem pg-mirror status)",
                self.slot(side),
            )
        };
        let cleared = |kind| {
            self.if_open(
                open,
                side,
                kind,
                Some(ResolveRule::CleanFor(RETAINED_CLEAR)),
            )
        };
        // Two alerts, not one whose severity rises: passing the limit opens (and pages) a
        // critical alert even when the warning was acknowledged.
        self.alert(
            side,
            &mut None,
            near,
            cleared(RETAINED_NEAR),
            RETAINED_NEAR,
            "warning",
            summary("over 80% of its", "act before the limit"),
            kept,
        )
        .await;
        self.alert(
            side,
            &mut None,
            over,
            cleared(RETAINED),
            RETAINED,
            "critical",
            summary("past its", "its disk is at risk"),
            kept,
        )
        .await;
    }

    /// The alerts on the capture of `side`: paused, or stuck failing. The instance reading
    /// the slot raises them and, once the condition is gone, resolves them (one a killed
    /// predecessor left too); an instance on standby leaves them to it, its own included;
    /// with no capture of the side (a stage that does not mirror, or one capturing the other
    /// side) they are over.
    async fn watch_capture(
        &self,
        side: Side,
        status: &MirrorStatus,
        open: Option<&HashSet<String>>,
        raised: &mut SlotAlerts,
    ) {
        let capture = &status.capture;
        let captured = status.captured == Some(side);
        if captured && capture.state == CaptureState::Standby {
            raised.paused = None;
            raised.failing = None;
            return;
        }
        let paused = capture.paused.clone().filter(|_| captured);
        let stuck = captured && capture.failures.stuck(tokio::time::Instant::now());
        let reading = captured
            && matches!(
                capture.state,
                CaptureState::Streaming | CaptureState::Paused { .. }
            );
        let over = Some(ResolveRule::CleanChecks(1));
        let (paused_others, failing_others) = if captured {
            (
                (reading && paused.is_none()).then_some(ResolveRule::CleanChecks(1)),
                (reading && capture.failures.in_a_row == 0).then_some(ResolveRule::CleanChecks(1)),
            )
        } else {
            (over, over)
        };
        self.alert(
            side,
            &mut raised.paused,
            paused.is_some(),
            self.if_open(open, side, "capture_paused", paused_others),
            "capture_paused",
            "critical",
            format!(
                "the capture of the {side} side is paused: {}",
                paused.unwrap_or_default()
            ),
            1,
        )
        .await;
        self.alert(
            side,
            &mut raised.failing,
            stuck,
            self.if_open(open, side, "capture_failing", failing_others),
            "capture_failing",
            "critical",
            format!(
                "the capture of the {side} side failed {} times in a row and applies nothing; \
                 the last failure: {}",
                capture.failures.in_a_row,
                capture.failures.last.as_deref().unwrap_or_default()
            ),
            u64::from(capture.failures.in_a_row),
        )
        .await;
    }

    /// `rule`, to resolve another instance's alert `kind` on `side`'s slot, when such an alert
    /// is open among `open` (the fingerprints of the alerts not resolved; all of them may be,
    /// when they could not be read).
    fn if_open(
        &self,
        open: Option<&HashSet<String>>,
        side: Side,
        kind: &str,
        rule: Option<ResolveRule>,
    ) -> Option<ResolveRule> {
        let fingerprint = tandem_control::fingerprint(ALERT_SOURCE, &self.slot(side), kind);
        rule.filter(|_| open.is_none_or(|open| open.contains(&fingerprint)))
    }

    /// Raises the alert `kind` while `on`, resolves the one it raised once off.
    ///
    /// The alert's subject is the slot of `side`, not this process: an instance restarted, or
    /// another one capturing the side, raises and resolves the same alert. Off, with no alert
    /// raised here, one left open by another instance (or a predecessor) is resolved by the
    /// rule `others`, when this instance knows the condition is gone.
    #[allow(clippy::too_many_arguments)]
    async fn alert(
        &self,
        side: Side,
        raised: &mut Option<i64>,
        on: bool,
        others: Option<ResolveRule>,
        kind: &str,
        severity: &str,
        summary: String,
        measured: u64,
    ) {
        let subject = self.slot(side);
        if on {
            let condition = AlertCondition {
                source: ALERT_SOURCE.to_owned(),
                subject,
                kind: kind.to_owned(),
                severity: severity.to_owned(),
                summary,
                measured: i64::try_from(measured).unwrap_or(i64::MAX),
                examples: Vec::new(),
            };
            match self.store.raise_alert(&condition).await {
                Ok((alert, _)) => *raised = Some(alert.id),
                Err(err) => {
                    tracing::error!(error = %err, %kind, "cannot raise the capture's alert")
                }
            }
        } else if let Some(id) = raised.take() {
            match self
                .store
                .resolve_alert(id, "tandem", "the condition cleared")
                .await
            {
                // Resolved already (by an engineer, or another instance).
                Ok(_) | Err(tandem_control::ControlError::InvalidInput(_)) => {}
                Err(err) => {
                    tracing::warn!(error = %err, %kind, "cannot resolve the capture's alert");
                }
            }
        } else if let Some(rule) = others {
            let fingerprint = tandem_control::fingerprint(ALERT_SOURCE, &subject, kind);
            if let Err(err) = self.store.note_clean(&fingerprint, rule).await {
                tracing::warn!(error = %err, %kind, "cannot resolve a capture alert left open before");
            }
        }
    }
}

/// The source of the capture's alerts.
const ALERT_SOURCE: &str = "pg-proxy";

/// The log `side` keeps for its slot, and what it wrote since the slot's confirmed position
/// (NaN while they cannot be read).
fn slot_gauges(side: Side, retained: f64, unconfirmed: f64) {
    let label = side.as_str();
    gauge!("tandem_capture_retained_wal_bytes", "side" => label).set(retained);
    gauge!("tandem_capture_lag_bytes", "side" => label).set(unconfirmed);
}

/// The capture alerts this instance raised on one side's slot.
#[derive(Debug, Default)]
struct SlotAlerts {
    paused: Option<i64>,
    failing: Option<i64>,
}

/// The retained-log alerts: past the limit, and past 80% of it.
const RETAINED: &str = "capture_wal_retained";
const RETAINED_NEAR: &str = "capture_wal_retained_near";

/// How long the retained log stays under an alert's level before the alert is resolved.
const RETAINED_CLEAR: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use tandem_control::Timestamp;

    use super::*;

    async fn mirror(switch_timeout: Duration) -> Arc<WalMirror> {
        let store = ControlStore::open("sqlite::memory:").await.unwrap();
        let settings = WalMirrorSettings {
            old: "postgres://127.0.0.1:1/old".to_owned(),
            new: "postgres://127.0.0.1:1/new".to_owned(),
            slot: "tandem_unit".to_owned(),
            publication: "tandem_unit".to_owned(),
            tables: PublishedTables::All,
            switch_timeout,
            stage_grace: Duration::from_secs(1),
            max_retained_wal: 0,
            apply_sessions: 1,
        };
        WalMirror::new(settings, store)
    }

    fn record(id: i64, stage: Stage) -> StageRecord {
        StageRecord {
            id,
            stage,
            previous: None,
            by: "unit".to_owned(),
            reason: "unit".to_owned(),
            changed_at: Timestamp::now(),
        }
    }

    fn serving(mirror: &WalMirror, side: Option<Side>, settled: i64) {
        mirror.status.send_modify(|now| {
            now.serving = side;
            now.settled = Some(settled);
        });
    }

    fn open(mirror: &WalMirror, side: Side) -> u64 {
        mirror.open[index(side)].load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_side_serving_under_the_stage_in_force_is_ready_at_once() {
        let mirror = mirror(Duration::from_secs(60)).await;
        serving(&mirror, Some(Side::Old), 3);
        let (_stages, stages) = watch::channel(record(3, Stage::Shadow));
        assert_eq!(
            mirror.ready_for(Side::Old, &stages).await,
            Ok(Readiness::Ready)
        );
        let session = mirror.open_session(Side::Old, &stages).await.unwrap();
        assert!(session.is_some());
        assert_eq!(open(&mirror, Side::Old), 1);
        drop(session);
        assert_eq!(open(&mirror, Side::Old), 0);
    }

    #[tokio::test]
    async fn a_wait_for_a_side_the_stage_leaves_ends_at_the_change_not_at_the_timeout() {
        // A session that read `live` while the switch to new runs; the stage goes back to
        // `shadow` (old) before the switch ends: it goes to old, it is not refused once the
        // (here very long) switch timeout has passed.
        let mirror = mirror(Duration::from_secs(3_600)).await;
        serving(&mirror, None, 3);
        let (stage, stages) = watch::channel(record(4, Stage::Live));
        let waiting = {
            let mirror = Arc::clone(&mirror);
            let stages = stages.clone();
            tokio::spawn(async move { mirror.open_session(Side::New, &stages).await })
        };
        tokio::task::yield_now().await;
        stage.send_replace(record(5, Stage::Shadow));
        let opened = waiting.await.unwrap().unwrap();
        assert!(opened.is_none(), "counted as open on new");
        assert_eq!(open(&mirror, Side::New), 0);
        assert_eq!(
            mirror.ready_for(Side::New, &stages).await,
            Ok(Readiness::Moved)
        );
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_switch_settles_the_stage() {
        let mirror = mirror(Duration::from_secs(3_600)).await;
        serving(&mirror, None, 3);
        let (_stage, stages) = watch::channel(record(4, Stage::Live));
        let waiting = {
            let mirror = Arc::clone(&mirror);
            tokio::spawn(async move { mirror.open_session(Side::New, &stages).await })
        };
        tokio::task::yield_now().await;
        // Settled under an older record is not enough.
        serving(&mirror, Some(Side::New), 3);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        serving(&mirror, Some(Side::New), 4);
        let opened = waiting.await.unwrap().unwrap();
        assert!(opened.is_some());
        assert_eq!(open(&mirror, Side::New), 1);
    }

    #[tokio::test]
    async fn past_the_switch_timeout_the_wait_says_what_the_switch_waits_for() {
        let mirror = mirror(Duration::from_millis(50)).await;
        mirror.status.send_modify(|now| {
            now.serving = None;
            now.switching = Some("waiting for the sessions on the old side to end".to_owned());
        });
        let (_stage, stages) = watch::channel(record(4, Stage::Live));
        assert_eq!(
            mirror.open_session(Side::New, &stages).await.err(),
            Some("waiting for the sessions on the old side to end".to_owned())
        );
        assert_eq!(open(&mirror, Side::New), 0);
    }
}
