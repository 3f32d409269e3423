//! Shared sweeps: a sweep is planned as key-range chunks of every table, and any number of
//! comparator instances on one control store claim chunks, compare them and record them; the
//! instance that finds every chunk done ends the sweep.

use std::collections::HashMap;
use std::time::Duration;

use metrics::counter;
use tandem_control::{ControlError, ControlStore, NewSweepChunk, NewWindowResult, SweepChunk};

use crate::canonical::{decode_key, encode_key, Canonical};
use crate::database::Database;
use crate::error::CompareError;
use crate::plan::TablePlan;
use crate::record::{listed_divergences, table_result};
use crate::report::TableReport;
use crate::run::{compare_table, compare_whole_rows, key_boundaries, key_json, plan_pair};
use crate::run::{table_pairs, CompareOptions, KeyRange, TableComparison, TablePair};

/// Plans a sweep: each table pair split into ranges of `chunk_rows` old-side rows (a table
/// without a key, compared as a multiset of whole rows, in one chunk), each table present on
/// one side only as a done chunk with a schema difference, and each table that cannot be
/// planned as a done chunk with its reason, so the other tables are swept all the same.
///
/// # Errors
/// When a catalogue cannot be listed.
pub(crate) async fn plan_sweep(
    old: &Database,
    new: &Database,
    options: &CompareOptions,
    chunk_rows: usize,
) -> Result<Vec<NewSweepChunk>, CompareError> {
    let (pairs, only_in_old, only_in_new) = table_pairs(old, new, options).await?;
    let mut chunks = Vec::new();
    for pair in pairs {
        let planned = match plan_pair(old, new, &pair, options).await {
            Ok(plan) if plan.is_whole_rows() => Ok((plan, Vec::new())),
            Ok(plan) => key_boundaries(old, &plan, options, chunk_rows)
                .await
                .map(|boundaries| (plan, boundaries)),
            Err(error) => Err(error),
        };
        let (plan, boundaries) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                tracing::warn!(table = pair.old, %error, "a table cannot be compared; the sweep goes on without it");
                chunks.push(NewSweepChunk {
                    table: pair.old.clone(),
                    new_table: pair.new.clone(),
                    after: None,
                    through: None,
                    schema_differences: 0,
                    done: true,
                    error: Some(error.to_string()),
                });
                continue;
            }
        };
        let mut after = None;
        for through in boundaries.iter().map(Some).chain([None]) {
            chunks.push(NewSweepChunk {
                table: pair.old.clone(),
                new_table: pair.new.clone(),
                after: after.map(|key: &Vec<Canonical>| to_hex(&encode_key(key))),
                through: through.map(|key| to_hex(&encode_key(key))),
                schema_differences: i64::try_from(plan.schema_differences.len())
                    .unwrap_or(i64::MAX),
                done: false,
                error: None,
            });
            after = through;
        }
    }
    for table in only_in_old.into_iter().chain(only_in_new) {
        chunks.push(NewSweepChunk {
            table: table.clone(),
            new_table: table,
            after: None,
            through: None,
            schema_differences: 1,
            done: true,
            error: None,
        });
    }
    Ok(chunks)
}

/// How a claimed chunk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkOutcome {
    /// Compared and recorded.
    Recorded,
    /// Compared, but the claim was lost meanwhile (another instance records it).
    Lost,
}

/// Compares claimed chunks: plans each table once per sweep.
#[derive(Debug, Default)]
pub(crate) struct ChunkComparer {
    plans: HashMap<(i64, String, String), TablePlan>,
}

impl ChunkComparer {
    /// Compares `chunk`, renewing its lease meanwhile, and records the result; a chunk that
    /// cannot be compared (its table's plan, a query) is recorded with the reason, which its
    /// table's result in the sweep carries.
    ///
    /// # Errors
    /// When the store cannot record it.
    pub(crate) async fn compare(
        &mut self,
        (old, new): (&Database, &Database),
        store: &ControlStore,
        options: &CompareOptions,
        chunk: &SweepChunk,
        lease: Duration,
    ) -> Result<ChunkOutcome, ControlError> {
        let work = async {
            let compared = async {
                let plan = self.plan(old, new, options, chunk).await?;
                if plan.is_whole_rows() {
                    // Planned as one chunk: the whole table.
                    let report = compare_whole_rows(old, new, &plan, options).await?;
                    let comparison = TableComparison {
                        report,
                        divergences: Vec::new(),
                        windows: Vec::new(),
                    };
                    return Ok((plan, comparison));
                }
                let bound = |key: &Option<String>| {
                    key.as_deref()
                        .map(|key| decode_bound(key, chunk))
                        .transpose()
                };
                let range = KeyRange {
                    after: bound(&chunk.after)?,
                    through: bound(&chunk.through)?,
                };
                let comparison = compare_table(old, new, &plan, &range, options).await?;
                Ok::<_, CompareError>((plan, comparison))
            };
            Ok(compared.await)
        };
        let Some(compared) = renewing(store, chunk, lease, work).await? else {
            counter!("tandem_comparator_chunks_total", "outcome" => "lost").increment(1);
            return Ok(ChunkOutcome::Lost);
        };
        let (result, windows, divergences) = match compared {
            Ok((plan, comparison)) => {
                let report = &comparison.report;
                counter!("tandem_comparator_rows_total", "side" => "old")
                    .increment(report.rows_old);
                counter!("tandem_comparator_rows_total", "side" => "new")
                    .increment(report.rows_new);
                counter!("tandem_comparator_windows_total").increment(report.windows);
                let windows: Vec<NewWindowResult> = comparison
                    .windows
                    .iter()
                    .map(|window| NewWindowResult {
                        last_key: window.last_key.as_ref().map(|key| key_json(&plan, key)),
                        rows_old: i64::try_from(window.rows_old).unwrap_or(i64::MAX),
                        rows_new: i64::try_from(window.rows_new).unwrap_or(i64::MAX),
                        old_digest: window.old_digest.to_hex().to_string(),
                        new_digest: window.new_digest.to_hex().to_string(),
                        differences: i64::try_from(window.differences).unwrap_or(i64::MAX),
                    })
                    .collect();
                (table_result(report), windows, listed_divergences(report))
            }
            Err(error) => {
                tracing::warn!(table = chunk.table, chunk = chunk.id, %error, "a chunk could not be compared; its table is reported with the reason");
                let failed = TableReport::failed(&chunk.table, &chunk.new_table, error.to_string());
                (table_result(&failed), Vec::new(), Vec::new())
            }
        };
        let recorded = store
            .complete_sweep_chunk(chunk, &result, &windows, &divergences)
            .await?;
        let outcome = if recorded {
            ChunkOutcome::Recorded
        } else {
            ChunkOutcome::Lost
        };
        let label = match outcome {
            ChunkOutcome::Recorded => "recorded",
            ChunkOutcome::Lost => "lost",
        };
        counter!("tandem_comparator_chunks_total", "outcome" => label).increment(1);
        Ok(outcome)
    }

    /// The plan of `chunk`'s table in its sweep (read once per sweep and table).
    async fn plan(
        &mut self,
        old: &Database,
        new: &Database,
        options: &CompareOptions,
        chunk: &SweepChunk,
    ) -> Result<TablePlan, CompareError> {
        let id = (chunk.run_id, chunk.table.clone(), chunk.new_table.clone());
        if !self.plans.contains_key(&id) {
            self.plans.retain(|(run, _, _), _| *run == chunk.run_id);
            let pair = TablePair {
                old: chunk.table.clone(),
                new: chunk.new_table.clone(),
            };
            let plan = plan_pair(old, new, &pair, options).await?;
            self.plans.insert(id.clone(), plan);
        }
        self.plans
            .get(&id)
            .cloned()
            .ok_or_else(|| CompareError::Service("a table plan went missing".to_owned()))
    }
}

/// Runs `work` (planning and comparing a chunk) while renewing the chunk's lease every third
/// of it; `None` when the claim was lost to another instance. A renewal the store could not
/// take is tried again at the next tick: the lease leaves room for two.
async fn renewing<T>(
    store: &ControlStore,
    chunk: &SweepChunk,
    lease: Duration,
    work: impl std::future::Future<Output = Result<T, ControlError>>,
) -> Result<Option<T>, ControlError> {
    tokio::pin!(work);
    let mut renewal = tokio::time::interval(lease / 3);
    renewal.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result.map(Some),
            _ = renewal.tick() => match store.renew_sweep_chunk(chunk).await {
                Ok(true) => {}
                Ok(false) => return Ok(None),
                Err(err) => tracing::warn!(error = %err, chunk = chunk.id, "cannot renew a chunk's lease; trying again"),
            },
        }
    }
}

/// A chunk bound as recorded (hex of the key's canonical encoding), decoded.
fn decode_bound(text: &str, chunk: &SweepChunk) -> Result<Vec<Canonical>, CompareError> {
    from_hex(text)
        .as_deref()
        .and_then(decode_key)
        .ok_or_else(|| {
            CompareError::Service(format!(
                "sweep chunk {} of table {}: unreadable key bound {text:?}",
                chunk.id, chunk.table
            ))
        })
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

pub(crate) fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_survive_hex() {
        let key = encode_key(&[
            Canonical::Number("-12.5".to_owned()),
            Canonical::Text("é, \"x\"".to_owned()),
        ]);
        assert_eq!(from_hex(&to_hex(&key)), Some(key));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
