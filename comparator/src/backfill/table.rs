//! One table's backfill in this instance: its chunks planned once (or the plan of another
//! instance that planned it first adopted), then claimed and copied by the instance's workers,
//! while any is left to claim, and at the end until every chunk is done, by whichever instance.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_control::{
    BackfillChunk, BackfillCounts, BackfillProgress, ControlStore, NewBackfillChunk, Timestamp,
};
use tokio::sync::Mutex;

use crate::canonical::{decode_key, encode_key, Canonical};
use crate::database::Database;
use crate::plan::TablePlan;
use crate::run::{
    key_boundaries, key_json, CompareOptions, KeyRange, RowWidth, TablePair, TableRows,
};
use crate::sweep::{from_hex, to_hex};

use super::bulk::copies_in_bulk;
use super::chunk::{backfill_chunk, compare_group, ChunkCopy, FirstStep};
use super::progress::{add, chunk_retried, ProgressBoard};
use super::statistics::analyze_if_never_analyzed;
use super::{BackfillError, BackfillOptions, BackfillTableReport};

/// Chunks a worker has claimed and not yet copied: one, or a run of consecutive ones claimed
/// together to be compared as one range (a group); each one's key range, the group's, the last
/// key of each but the last (where the group's windows are cut), and their rows when they are
/// read ahead.
struct Held {
    chunks: Vec<BackfillChunk>,
    ranges: Vec<KeyRange>,
    range: KeyRange,
    cuts: Vec<Vec<Canonical>>,
    read: Option<TableRows>,
}

/// What a worker has claimed and not begun, given back however it stops: the groups it holds,
/// and chunks set aside (not begun once stopped, after a failed chunk, whose key did not
/// decode, whose checkpoint failed).
#[derive(Default)]
struct Holding {
    groups: VecDeque<Held>,
    loose: Vec<BackfillChunk>,
}

/// How long the workers keep at a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// While a chunk is left to claim: the chunks other instances hold are left to them for
    /// now, and the instance goes on to its next table.
    NoneToClaim,
    /// Until every chunk is done: the chunks other instances hold are waited for, and taken
    /// over once their leases run out.
    AllDone,
}

/// One table's backfill in this run: where it stood when the run came to it, and what this
/// run did to it.
pub(super) struct TableRun<'a> {
    pair: &'a TablePair,
    plan: &'a TablePlan,
    job: String,
    before: BackfillProgress,
    started: Instant,
    done: Mutex<BackfillCounts>,
    bulk_chunks: AtomicU64,
    /// Chunks found equal by a group's comparison (`compare_group`).
    grouped_chunks: AtomicU64,
    retries: AtomicU64,
    /// Whether the last chunk finished found rows of its range on the new side (a rerun, a
    /// resumed copy): the next ones are then compared before the new side is probed.
    populated: AtomicBool,
}

impl<'a> TableRun<'a> {
    /// Plans the table's chunks unless a plan of it exists (a restart replaces the plans made
    /// before `began`), gives back the chunks this instance held in an earlier run, and puts
    /// the table on the board. Meanwhile, a new side's table without planner statistics gets
    /// them (`statistics.rs`), while the old side's keys are walked for the chunks' bounds.
    pub(super) async fn start(
        (old, new): (&Database, &Database),
        (store, board): (&ControlStore, &ProgressBoard),
        (pair, plan): (&'a TablePair, &'a TablePlan),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
        began: Timestamp,
    ) -> Result<TableRun<'a>, BackfillError> {
        let started = Instant::now();
        let job = format!("{} {} -> {}", options.sources, pair.old, pair.new);
        let planning = async {
            if options.restart || !store.backfill_planned(&job).await? {
                let boundaries =
                    key_boundaries(old, plan, compare_options, options.chunk_rows).await?;
                let mut chunks = Vec::with_capacity(boundaries.len() + 1);
                let mut after: Option<&Vec<Canonical>> = None;
                for through in boundaries.iter().map(Some).chain([None]) {
                    chunks.push(NewBackfillChunk {
                        after: after.map(|key| to_hex(&encode_key(key))),
                        through: through.map(|key| to_hex(&encode_key(key))),
                    });
                    after = through;
                }
                // A restart replaces the plans made before this run began, not one another
                // instance's restart made since.
                let replacing = options.restart.then_some(began);
                let planned = store
                    .plan_backfill(&job, (&pair.old, &pair.new), &chunks, replacing)
                    .await?;
                if !planned {
                    tracing::info!(table = %pair.old, "another instance planned the table first: copying its chunks");
                }
            }
            Ok::<(), BackfillError>(())
        };
        let (planned, _) = tokio::join!(planning, analyze_if_never_analyzed(new, &plan.new_table));
        planned?;
        store
            .release_backfill_claims(&job, &options.instance)
            .await?;
        let before = store.backfill_progress(&job).await?;
        board.table_started((&pair.old, &job), &before);
        Ok(TableRun {
            pair,
            plan,
            job,
            before,
            started,
            done: Mutex::new(BackfillCounts::default()),
            bulk_chunks: AtomicU64::new(0),
            grouped_chunks: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            populated: AtomicBool::new(false),
        })
    }

    /// Whether every chunk of the table is done, by any instance.
    pub(super) async fn complete(&self, store: &ControlStore) -> Result<bool, BackfillError> {
        let progress = store.backfill_progress(&self.job).await?;
        Ok(progress.done >= progress.chunks)
    }

    /// Copies the table's chunks on `options.threads` workers, each claiming one chunk at a
    /// time, `until` none is left to claim or every chunk is done.
    pub(super) async fn copy(
        &self,
        (old, new): (&Database, &Database),
        (store, board): (&ControlStore, &ProgressBoard),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
        until: Until,
    ) -> Result<(), BackfillError> {
        if until == Until::AllDone {
            tracing::info!(table = %self.pair.old, "waiting for the chunks other instances hold");
        }
        // The chunks' comparisons share what they learn of the rows' width.
        let compare_options = &CompareOptions {
            row_width: Some(RowWidth::default()),
            ..compare_options.clone()
        };
        // A worker that fails (a chunk out of tries, the store) stops the others at their
        // next chunk boundary.
        let failed = options.stop.child_token();
        let workers = (0..options.threads.max(1)).map(|_| {
            let failed = &failed;
            async move {
                let worked = self
                    .work(
                        (old, new),
                        (store, board),
                        (compare_options, options),
                        until,
                        failed,
                    )
                    .await;
                if worked.is_err() {
                    failed.cancel();
                }
                worked
            }
        });
        // Every worker ends its chunk in hand (checkpointed) before the first error is
        // returned. Meanwhile the instance's claims are renewed, however long a chunk, a group
        // or a chunk claimed ahead is held.
        let copied = tokio::select! {
            copied = futures_util::future::join_all(workers) => copied,
            never = self.renew_claims(store, options) => match never {},
        };
        copied.into_iter().collect::<Result<Vec<()>, _>>()?;
        // The gauges end where the store stands, other instances' chunks included.
        self.read_progress((store, board)).await
    }

    /// Restarts the lease of every chunk of the table this instance holds, every third of
    /// `--chunk-lease`, for as long as its workers run: a chunk is taken over only from an
    /// instance that stopped renewing (dead, or cut off from the store for a whole lease). A
    /// renewal that fails is tried again at the next one; a store gone for good fails the
    /// workers' next checkpoint.
    async fn renew_claims(&self, store: &ControlStore, options: &BackfillOptions) -> Infallible {
        loop {
            tokio::time::sleep(renewal_interval(options.lease)).await;
            if let Err(err) = store
                .renew_backfill_claims(&self.job, &options.instance)
                .await
            {
                tracing::warn!(table = %self.pair.old, %err, "could not renew this instance's chunk claims; trying again");
            }
        }
    }

    /// Reads the table's progress from the store onto the board.
    async fn read_progress(
        &self,
        (store, board): (&ControlStore, &ProgressBoard),
    ) -> Result<(), BackfillError> {
        let progress = store.backfill_progress(&self.job).await?;
        board.progress_read(&self.pair.old, &progress);
        Ok(())
    }

    /// One worker: claims, copies and checkpoints chunks until there is nothing to claim (and,
    /// `until` every chunk is done, nothing left to wait for) or `failed` is cancelled. However
    /// it ends, the chunks it claimed and did not begin are given back rather than left to
    /// their leases; an error is its own, not one of giving them back.
    async fn work(
        &self,
        dbs: (&Database, &Database),
        (store, board): (&ControlStore, &ProgressBoard),
        options: (&CompareOptions, &BackfillOptions),
        until: Until,
        failed: &tokio_util::sync::CancellationToken,
    ) -> Result<(), BackfillError> {
        let mut holding = Holding::default();
        let worked = self
            .work_holding(dbs, (store, board), options, until, failed, &mut holding)
            .await;
        let given = give_back(store, holding).await;
        match (worked, given) {
            (Err(err), Err(lost)) => {
                tracing::warn!(table = %self.pair.old, %lost, "could not give back the chunks claimed and not begun: they wait out their lease");
                Err(err)
            }
            (Err(err), Ok(())) | (Ok(()), Err(err)) => Err(err),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    /// [`TableRun::work`], keeping in `holding` every chunk it claimed and has not begun.
    async fn work_holding(
        &self,
        (old, new): (&Database, &Database),
        (store, board): (&ControlStore, &ProgressBoard),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
        until: Until,
        failed: &tokio_util::sync::CancellationToken,
        holding: &mut Holding,
    ) -> Result<(), BackfillError> {
        let plan = self.plan;
        let claimer = (self.job.as_str(), options.instance.as_str());
        // Chunks claimed are held with their rows read ahead when they will be compared first
        // (the table found populated on a bulk-capable new side): their queries run while the
        // chunks before them are compared and checkpointed, as `compare` reads a table's next
        // window while it compares one. Each run of consecutive chunks is one group. Chunks
        // whose key range does not decode are set aside, to be given back.
        let hold = |holding: &mut Holding,
                    chunks: Vec<BackfillChunk>|
         -> Result<(), BackfillError> {
            let decoded = chunks
                .iter()
                .map(|chunk| chunk_range(plan, chunk))
                .collect::<Result<Vec<_>, _>>();
            let ranges = match decoded {
                Ok(ranges) => ranges,
                Err(err) => {
                    holding.loose.extend(chunks);
                    return Err(err);
                }
            };
            let compared_first = self.first_step(new) == FirstStep::Compare;
            for run in runs(chunks.into_iter().zip(ranges).collect()) {
                let (chunks, ranges): (Vec<BackfillChunk>, Vec<KeyRange>) = run.into_iter().unzip();
                let range = KeyRange {
                    after: ranges.first().and_then(|range| range.after.clone()),
                    through: ranges.last().and_then(|range| range.through.clone()),
                };
                let cuts: Vec<Vec<Canonical>> = ranges[..ranges.len().saturating_sub(1)]
                    .iter()
                    .filter_map(|range| range.through.clone())
                    .collect();
                let read = compared_first.then(|| {
                    TableRows::read((old, new), plan, &range, compare_options).cut_at(&cuts)
                });
                holding.groups.push_back(Held {
                    chunks,
                    ranges,
                    range,
                    cuts,
                    read,
                });
            }
            Ok(())
        };
        // The chunks in hand, in key order: claimed alone at first, after a wait and to read
        // ahead, else together with the previous chunks' checkpoint.
        while !failed.is_cancelled() {
            if holding.groups.is_empty() {
                let claimed = store
                    .claim_backfill_chunks(
                        &self.job,
                        &options.instance,
                        (
                            options.lease,
                            self.group_size(new, compare_options, options),
                        ),
                    )
                    .await?;
                hold(holding, claimed)?;
            }
            let first = self.first_step(new);
            // The next chunks are claimed ahead, to be read while these are compared, before
            // these leave `holding`: a failed claim leaves them there to be given back.
            if first == FirstStep::Compare && holding.groups.len() == 1 {
                let ahead = store
                    .claim_backfill_chunks(
                        &self.job,
                        &options.instance,
                        (
                            options.lease,
                            self.group_size(new, compare_options, options),
                        ),
                    )
                    .await?;
                hold(holding, ahead)?;
            }
            let Some(Held {
                chunks,
                ranges,
                range,
                cuts,
                read,
            }) = holding.groups.pop_front()
            else {
                // Nothing to claim: the table is done, or other instances hold its last
                // chunks, waited for (a dead one's is claimed once its lease runs out) only
                // when every chunk must be done.
                if until == Until::NoneToClaim || self.complete(store).await? {
                    break;
                }
                tokio::select! {
                    () = failed.cancelled() => break,
                    () = tokio::time::sleep(wait_for_others(options.lease)) => continue,
                }
            };
            let began = Instant::now();
            // Rows read ahead for a comparison the chunks no longer begin with are dropped.
            let mut read = read.filter(|_| first == FirstStep::Compare);
            // A group is compared as one range first; the chunks it finds equal are done, the
            // others are copied one by one below, as a chunk claimed alone is.
            let mut outcomes: Vec<Option<ChunkCopy>> = vec![None; chunks.len()];
            if chunks.len() > 1 && first == FirstStep::Compare {
                let grouped = compare_group(
                    (old, new),
                    plan,
                    (&range, &cuts, read.take()),
                    compare_options,
                )
                .await;
                match grouped {
                    Ok(grouped) => {
                        for (outcome, chunk) in outcomes.iter_mut().zip(grouped) {
                            *outcome = chunk.equal.then(|| ChunkCopy {
                                // Found equal: every row of it skipped.
                                counts: BackfillCounts {
                                    rows_old: to_i64(chunk.rows_old),
                                    skipped: to_i64(chunk.rows_old),
                                    ..BackfillCounts::default()
                                },
                                bulk: false,
                                populated: chunk.rows_new > 0,
                            });
                        }
                        self.grouped_chunks
                            .fetch_add(outcomes.iter().flatten().count() as u64, Ordering::Relaxed);
                    }
                    // Each chunk is then tried on its own, with its retries.
                    Err(err) => {
                        tracing::debug!(table = %plan.old_table, %err, "a group's comparison failed; its chunks are copied one by one")
                    }
                }
            }
            let mut stopped = false;
            for (at, chunk) in chunks.iter().enumerate() {
                if let Some(copy) = &outcomes[at] {
                    self.populated.store(copy.populated, Ordering::Relaxed);
                    continue;
                }
                // Stopped (SIGTERM, another worker failed): the chunks of the group not begun
                // are given back.
                if stopped || (at > 0 && failed.is_cancelled()) {
                    stopped = true;
                    holding.loose.push(chunk.clone());
                    continue;
                }
                let first = self.first_step(new);
                let read = read.take().filter(|_| first == FirstStep::Compare);
                match self
                    .copy_chunk(
                        (old, new),
                        chunk,
                        (&ranges[at], first, read),
                        (compare_options, options),
                    )
                    .await
                {
                    Ok(copy) => {
                        self.populated.store(copy.populated, Ordering::Relaxed);
                        outcomes[at] = Some(copy);
                    }
                    Err(err) => {
                        // Its claim stays with this instance; the chunks verified are
                        // checkpointed, those not begun go back.
                        holding.loose.extend_from_slice(&chunks[at + 1..]);
                        let checkpointed = self
                            .checkpoint(
                                (store, board),
                                (&chunks, &outcomes),
                                (claimer, options, 0),
                                began,
                            )
                            .await;
                        if let Err(lost) = checkpointed {
                            tracing::warn!(table = %plan.old_table, %lost, "could not checkpoint the chunks verified before a failed one");
                            holding.loose.extend(verified(&chunks, &outcomes));
                        }
                        return Err(err);
                    }
                }
            }
            // Once stopped, nothing more is claimed.
            let claim = if failed.is_cancelled() {
                0
            } else {
                self.group_size(new, compare_options, options)
            };
            let checkpointed = self
                .checkpoint(
                    (store, board),
                    (&chunks, &outcomes),
                    (claimer, options, claim),
                    began,
                )
                .await;
            match checkpointed {
                Ok((claimed, due)) => {
                    hold(holding, claimed)?;
                    if due {
                        self.read_progress((store, board)).await?;
                    }
                }
                Err(err) => {
                    // Nothing was recorded: the chunks go back, to be compared again by any
                    // worker at once.
                    holding.loose.extend(verified(&chunks, &outcomes));
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Copies one chunk (`backfill_chunk`), trying it again after a transient error up to
    /// `--chunk-retries` times with a doubling delay.
    async fn copy_chunk(
        &self,
        (old, new): (&Database, &Database),
        claimed: &BackfillChunk,
        (range, first, mut read): (&KeyRange, FirstStep, Option<TableRows>),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
    ) -> Result<ChunkCopy, BackfillError> {
        let (pair, plan) = (self.pair, self.plan);
        let mut copy = ChunkCopy::default();
        let mut tries = 0;
        loop {
            tries += 1;
            let tried = backfill_chunk(
                (old, new),
                plan,
                (range, first, read.take()),
                // Its reads count into the run's one budget (`reads`).
                compare_options,
                options.attempts,
                &mut copy,
            )
            .await;
            match tried {
                Ok(()) => return Ok(copy),
                Err(err) if err.is_transient() && tries <= options.chunk_retries => {
                    let wait = options.retry_delay.saturating_mul(1 << (tries - 1).min(16));
                    chunk_retried(&pair.old, claimed.seq, &err, wait);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                Err(source) => {
                    return Err(BackfillError::Chunk {
                        table: pair.old.clone(),
                        seq: claimed.seq,
                        keys: range_text(plan, range),
                        tries,
                        source: Box::new(source),
                    })
                }
            }
        }
    }

    /// Checkpoints the chunks of `chunks` that have an outcome, with their counts, and claims
    /// the next `claim` chunks, in one transaction; records them on the board. The chunks
    /// claimed, and whether the table's progress is due to be read from the store (left to
    /// the caller, holding the chunks claimed first).
    async fn checkpoint(
        &self,
        (store, board): (&ControlStore, &ProgressBoard),
        (chunks, outcomes): (&[BackfillChunk], &[Option<ChunkCopy>]),
        (claimer, options, claim): ((&str, &str), &BackfillOptions, usize),
        began: Instant,
    ) -> Result<(Vec<BackfillChunk>, bool), BackfillError> {
        let finished: Vec<(&BackfillChunk, &ChunkCopy)> = chunks
            .iter()
            .zip(outcomes)
            .filter_map(|(chunk, outcome)| outcome.as_ref().map(|copy| (chunk, copy)))
            .collect();
        if finished.is_empty() && claim == 0 {
            return Ok((Vec::new(), false));
        }
        let done: Vec<(&BackfillChunk, &BackfillCounts)> = finished
            .iter()
            .map(|(chunk, copy)| (*chunk, &copy.counts))
            .collect();
        let (recorded, claimed) = store
            .complete_and_claim_backfill_chunks(&done, claimer, (options.lease, claim))
            .await?;
        let took = began.elapsed() / u32::try_from(finished.len().max(1)).unwrap_or(u32::MAX);
        let mut due = false;
        for ((_, copy), recorded) in finished.iter().zip(recorded) {
            if recorded {
                add(&mut *self.done.lock().await, &copy.counts);
                if copy.bulk {
                    self.bulk_chunks.fetch_add(1, Ordering::Relaxed);
                }
            }
            due |= board.chunk_finished(&self.pair.old, (&copy.counts, recorded), took);
        }
        Ok((claimed, due))
    }

    /// How many chunks a worker claims at once: when they will be compared first, as many as
    /// fit in one of `compare`'s reads (about 8 MiB of encoded rows at the width the table's
    /// chunks learned, at most `--window-rows`), so that a rerun over a migrated table reads
    /// each group in one query per side, as `compare` reads a window, and compares and
    /// checkpoints about as often; one otherwise (a chunk probed and copied is claimed alone).
    fn group_size(
        &self,
        new: &Database,
        compare_options: &CompareOptions,
        options: &BackfillOptions,
    ) -> usize {
        if self.first_step(new) == FirstStep::Compare {
            let window_rows = compare_options.window_rows;
            let read_rows = compare_options
                .row_width
                .as_ref()
                .map_or(window_rows, |width| width.rows_per_read(window_rows));
            (read_rows / options.chunk_rows.max(1)).max(1)
        } else {
            1
        }
    }

    /// How the table's next chunk begins: compared first once a chunk found rows of its range
    /// on a new side that has a bulk path.
    fn first_step(&self, new: &Database) -> FirstStep {
        FirstStep::after(self.populated.load(Ordering::Relaxed), copies_in_bulk(new))
    }

    /// What this run did to the table, and where the table stands.
    pub(super) async fn report(
        &self,
        store: &ControlStore,
    ) -> Result<BackfillTableReport, BackfillError> {
        let after = store.backfill_progress(&self.job).await?;
        let this_run = *self.done.lock().await;
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        let plan = self.plan;
        Ok(BackfillTableReport {
            table: plan.old_table.clone(),
            new_table: (plan.new_table != plan.old_table).then(|| plan.new_table.clone()),
            chunks: count(after.chunks),
            chunks_resumed: count(self.before.done),
            chunks_done: count(after.done),
            chunks_bulk: self.bulk_chunks.load(Ordering::Relaxed),
            chunks_grouped: self.grouped_chunks.load(Ordering::Relaxed),
            rows_old: count(this_run.rows_old),
            copied: count(this_run.copied),
            skipped: count(this_run.skipped),
            repaired: count(this_run.repaired),
            conflicts: count(this_run.conflicts),
            chunk_retries: self.retries.load(Ordering::Relaxed),
            // Chunks done by earlier runs count too: the table converged only if they all did.
            unconverged: count(after.counts.unconverged),
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Gives back chunks claimed and not begun, for any worker or instance to claim at once: each
/// one tried, the first error returned after.
async fn give_back(store: &ControlStore, holding: Holding) -> Result<(), BackfillError> {
    let held = holding.groups.into_iter().flat_map(|held| held.chunks);
    let mut failed = None;
    for chunk in held.chain(holding.loose) {
        if let Err(err) = store.release_backfill_chunk(&chunk).await {
            failed.get_or_insert(err);
        }
    }
    failed.map_or(Ok(()), |err| Err(err.into()))
}

/// The chunks of a group that have an outcome (verified, to be checkpointed).
fn verified(chunks: &[BackfillChunk], outcomes: &[Option<ChunkCopy>]) -> Vec<BackfillChunk> {
    chunks
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.is_some())
        .map(|(chunk, _)| chunk.clone())
        .collect()
}

/// Chunks claimed together (in key order) with their key ranges, as runs of consecutive ones:
/// each chunk's range starting where the one before it ends. Chunks other workers or
/// instances hold between them split the runs.
fn runs(chunks: Vec<(BackfillChunk, KeyRange)>) -> Vec<Vec<(BackfillChunk, KeyRange)>> {
    let mut runs: Vec<Vec<(BackfillChunk, KeyRange)>> = Vec::new();
    for (chunk, range) in chunks {
        match runs.last_mut() {
            Some(run)
                if run.last().is_some_and(|(last, _)| {
                    last.through.is_some() && last.through == chunk.after
                }) =>
            {
                run.push((chunk, range));
            }
            _ => runs.push(vec![(chunk, range)]),
        }
    }
    runs
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// How often an instance renews its claims: three times a lease, so that one renewal late or
/// failed still leaves the claims held.
fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(10))
}

/// How often a worker with nothing to claim asks again whether the chunks other instances
/// hold are done or their leases ran out: a tenth of the lease, within 100 ms and 5 s.
fn wait_for_others(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// A chunk's key range for messages: `after {…} through {…}`, an open end left out.
fn range_text(plan: &TablePlan, range: &KeyRange) -> String {
    let bound =
        |key: &Option<Vec<Canonical>>| key.as_deref().map(|key| key_json(plan, key).to_string());
    match (bound(&range.after), bound(&range.through)) {
        (None, None) => "all".to_owned(),
        (Some(after), None) => format!("after {after}"),
        (Some(after), Some(through)) => format!("after {after} through {through}"),
        (None, Some(through)) => format!("through {through}"),
    }
}

/// The key range of a claimed chunk.
fn chunk_range(plan: &TablePlan, chunk: &BackfillChunk) -> Result<KeyRange, BackfillError> {
    let bound = |key: &Option<String>| {
        key.as_deref()
            .map(|text| {
                from_hex(text)
                    .as_deref()
                    .and_then(decode_key)
                    .ok_or_else(|| BackfillError::Checkpoint {
                        table: plan.old_table.clone(),
                        seq: chunk.seq,
                    })
            })
            .transpose()
    };
    Ok(KeyRange {
        after: bound(&chunk.after)?,
        through: bound(&chunk.through)?,
    })
}

#[cfg(test)]
mod tests {
    use tandem_control::BackfillChunk;

    use super::runs;
    use crate::run::KeyRange;

    fn chunk(seq: i64, after: Option<&str>, through: Option<&str>) -> (BackfillChunk, KeyRange) {
        let chunk = BackfillChunk {
            id: seq,
            seq,
            after: after.map(str::to_owned),
            through: through.map(str::to_owned),
            attempt: 1,
        };
        (chunk, KeyRange::default())
    }

    fn seqs(runs: &[Vec<(BackfillChunk, KeyRange)>]) -> Vec<Vec<i64>> {
        runs.iter()
            .map(|run| run.iter().map(|(chunk, _)| chunk.seq).collect())
            .collect()
    }

    #[test]
    fn chunks_claimed_together_are_grouped_where_each_starts_at_the_last_ones_end() {
        let claimed = vec![
            chunk(0, None, Some("a")),
            chunk(1, Some("a"), Some("b")),
            // Chunk 2 (after b through c) is held by another worker.
            chunk(3, Some("c"), Some("d")),
            chunk(4, Some("d"), None),
        ];
        assert_eq!(seqs(&runs(claimed)), [vec![0, 1], vec![3, 4]]);
        assert!(runs(Vec::new()).is_empty());
        let alone = vec![chunk(7, Some("x"), Some("y"))];
        assert_eq!(seqs(&runs(alone)), [vec![7]]);
    }
}
