//! One table's backfill in this instance: its chunks planned once (or the plan of another
//! instance that planned it first adopted), then claimed and copied by the instance's workers,
//! while any is left to claim, and at the end until every chunk is done, by whichever instance.

use std::collections::VecDeque;
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
use super::chunk::{backfill_chunk, ChunkCopy, FirstStep};
use super::progress::{add, chunk_retried, ProgressBoard};
use super::{BackfillError, BackfillOptions, BackfillTableReport};

/// A chunk a worker has claimed and not yet copied: its key range, and its rows when they
/// are read ahead.
struct Held {
    chunk: BackfillChunk,
    range: KeyRange,
    read: Option<TableRows>,
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
    retries: AtomicU64,
    /// Whether the last chunk finished found rows of its range on the new side (a rerun, a
    /// resumed copy): the next ones are then compared before the new side is probed.
    populated: AtomicBool,
}

impl<'a> TableRun<'a> {
    /// Plans the table's chunks unless a plan of it exists (a restart replaces the plans made
    /// before `began`), gives back the chunks this instance held in an earlier run, and puts
    /// the table on the board.
    pub(super) async fn start(
        old: &Database,
        (store, board): (&ControlStore, &ProgressBoard),
        (pair, plan): (&'a TablePair, &'a TablePlan),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
        began: Timestamp,
    ) -> Result<TableRun<'a>, BackfillError> {
        let started = Instant::now();
        let job = format!("{} {} -> {}", options.sources, pair.old, pair.new);
        if options.restart || !store.backfill_planned(&job).await? {
            let boundaries = key_boundaries(old, plan, compare_options, options.chunk_rows).await?;
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
        // returned.
        let copied = futures_util::future::join_all(workers).await;
        copied.into_iter().collect::<Result<Vec<()>, _>>()?;
        // The gauges end where the store stands, other instances' chunks included.
        self.read_progress((store, board)).await
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
    /// `until` every chunk is done, nothing left to wait for) or `failed` is cancelled.
    async fn work(
        &self,
        (old, new): (&Database, &Database),
        (store, board): (&ControlStore, &ProgressBoard),
        (compare_options, options): (&CompareOptions, &BackfillOptions),
        until: Until,
        failed: &tokio_util::sync::CancellationToken,
    ) -> Result<(), BackfillError> {
        let (pair, plan) = (self.pair, self.plan);
        let claimer = (self.job.as_str(), options.instance.as_str());
        // A chunk claimed is held with its rows read ahead when it will be compared first
        // (the table found populated on a bulk-capable new side): its queries run while the
        // chunk before it is compared and checkpointed, as `compare` reads a table's next
        // window while it compares one.
        let hold = |chunk: BackfillChunk| -> Result<Held, BackfillError> {
            let range = chunk_range(plan, &chunk)?;
            let read = (self.first_step(new) == FirstStep::Compare)
                .then(|| TableRows::read((old, new), plan, &range, compare_options));
            Ok(Held { chunk, range, read })
        };
        // The chunks in hand, in key order: claimed alone at first, after a wait and to read
        // one ahead, else together with the previous chunk's checkpoint.
        let mut held: VecDeque<Held> = VecDeque::new();
        while !failed.is_cancelled() {
            let next = match held.pop_front() {
                Some(chunk) => Some(chunk),
                None => store
                    .claim_backfill_chunk(&self.job, &options.instance, options.lease)
                    .await?
                    .map(&hold)
                    .transpose()?,
            };
            let Some(Held {
                chunk: claimed,
                range,
                read,
            }) = next
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
            let first = self.first_step(new);
            // Rows read ahead for a comparison the chunk no longer begins with are dropped.
            let mut read = read.filter(|_| first == FirstStep::Compare);
            if first == FirstStep::Compare && held.is_empty() {
                let ahead = store
                    .claim_backfill_chunk(&self.job, &options.instance, options.lease)
                    .await?;
                held.extend(ahead.map(&hold).transpose()?);
            }
            let mut copy = ChunkCopy::default();
            let mut tries = 0;
            loop {
                tries += 1;
                let tried = backfill_chunk(
                    (old, new),
                    plan,
                    (&range, first, read.take()),
                    // Its reads count into the run's one budget (`reads`).
                    compare_options,
                    options.attempts,
                    &mut copy,
                )
                .await;
                match tried {
                    Ok(()) => break,
                    Err(err) if err.is_transient() && tries <= options.chunk_retries => {
                        let wait = options.retry_delay.saturating_mul(1 << (tries - 1).min(16));
                        chunk_retried(&pair.old, claimed.seq, &err, wait);
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(wait).await;
                    }
                    Err(source) => {
                        // Its claim stays with this instance; those claimed ahead go back.
                        give_back(store, held).await?;
                        return Err(BackfillError::Chunk {
                            table: pair.old.clone(),
                            seq: claimed.seq,
                            keys: range_text(plan, &range),
                            tries,
                            source: Box::new(source),
                        });
                    }
                }
            }
            let ChunkCopy {
                counts,
                bulk,
                populated,
            } = copy;
            self.populated.store(populated, Ordering::Relaxed);
            // Once stopped, nothing more is claimed.
            let recorded = if failed.is_cancelled() {
                store.complete_backfill_chunk(&claimed, &counts).await?
            } else {
                let (recorded, claimed_next) = store
                    .complete_and_claim_backfill_chunk((&claimed, &counts), claimer, options.lease)
                    .await?;
                held.extend(claimed_next.map(&hold).transpose()?);
                recorded
            };
            if recorded {
                add(&mut *self.done.lock().await, &counts);
                if bulk {
                    self.bulk_chunks.fetch_add(1, Ordering::Relaxed);
                }
            }
            if board.chunk_finished(&pair.old, (&counts, recorded), began.elapsed()) {
                self.read_progress((store, board)).await?;
            }
        }
        // Stopped holding chunks claimed ahead or with the last checkpoint: they are given
        // back rather than left to their leases.
        give_back(store, held).await
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
            rows_old: count(this_run.rows_old),
            copied: count(this_run.copied),
            repaired: count(this_run.repaired),
            conflicts: count(this_run.conflicts),
            chunk_retries: self.retries.load(Ordering::Relaxed),
            // Chunks done by earlier runs count too: the table converged only if they all did.
            unconverged: count(after.counts.unconverged),
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Gives back chunks claimed and not begun, for any worker or instance to claim at once.
async fn give_back(store: &ControlStore, held: VecDeque<Held>) -> Result<(), BackfillError> {
    for Held { chunk, .. } in held {
        store.release_backfill_chunk(&chunk).await?;
    }
    Ok(())
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
