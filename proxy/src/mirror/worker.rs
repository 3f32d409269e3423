//! A mirror worker: delivers its copies one at a time, with retries, and persists failures.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::parking::ParkedKey;
use super::{is_delivered, Delivery, MirrorJob, EXPIRED};
use crate::mismatch::ComparedRequest;
use crate::telemetry::{JournalCopyFenced, Role};

/// Delivers copies from `jobs` until the queue is closed and empty, or `abort` fires; then
/// persists whatever is still queued.
pub(super) async fn run(
    delivery: Arc<Delivery>,
    mut jobs: mpsc::Receiver<MirrorJob>,
    abort: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            biased;
            () = abort.cancelled() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        deliver(&delivery, job, &abort).await;
        delivery.dequeued();
    }
    jobs.close();
    while let Some(job) = jobs.recv().await {
        // Kept in the store, a copy is settled: one whose lease may have lapsed stays in the
        // journal for the partition's next holder instead.
        if !fenced(&delivery, &job) {
            delivery.persist(job, "shutdown", "", 0).await;
        }
        delivery.dequeued();
    }
}

/// Whether `job` must not be delivered (nor kept in the store, which settles it) by this
/// instance: its shared journal's lease of the copy's partition may have expired (the instance
/// was paused, or cut off from the server). The partition's next holder delivers the copy and
/// the key's newer copies after it; this one delivering it now could land it over those. It
/// stays in the journal, set aside. So does a copy read before the partitions held changed
/// (its lease may have been lost and taken again since): the reader's next pass reads it again.
fn fenced(delivery: &Delivery, job: &MirrorJob) -> bool {
    let read_under_others = job
        .read_under
        .is_some_and(|partitions| partitions != delivery.journal.ownership());
    if !read_under_others && delivery.journal.may_deliver(&job.journal_key()) {
        return false;
    }
    JournalCopyFenced.emit();
    delivery.set_aside(job);
    true
}

/// Settles a delivered copy, unless its shared journal's lease may have lapsed during the
/// delivery: the partition's next holder may then read the copy before this settlement is
/// recorded and deliver it again, and pass over the key's newer copies this instance settled
/// since (`settled.rs`), leaving the older value last. Left unsettled, the copy is delivered
/// again by the next holder, the key's newer copies after it.
fn settle_while_leased(delivery: &Delivery, job: &MirrorJob) {
    if delivery.journal.may_deliver(&job.journal_key()) {
        delivery.settle(job);
    } else {
        JournalCopyFenced.emit();
        delivery.set_aside(job);
    }
}

/// Delivers one copy. A request in flight is allowed to finish (it is bounded by the side's
/// timeout) so that a copy is never both delivered and persisted for replay.
async fn deliver(delivery: &Delivery, job: MirrorJob, abort: &CancellationToken) {
    if fenced(delivery, &job) {
        return;
    }
    if delivery.is_held(&job) {
        // An earlier copy of its key waits in the journal: this one waits behind it, in the
        // journal too.
        return delivery.set_aside(&job);
    }
    if job.expired {
        // Past the retention: kept for replay, its key parked (its later copies are kept
        // behind it, in order), counted and alerted on once the store has it.
        let error = "waited in the shared journal longer than journal_retention";
        return delivery.persist(job, EXPIRED, error, 0).await;
    }
    let parked = delivery.check_parked(job.target, &job.ordering_key).await;
    match parked {
        ParkedKey::Free | ParkedKey::Released => {}
        ParkedKey::Kept => return delivery.persist(job, "key_parked", "", 0).await,
        ParkedKey::Unknown(error) => return delivery.persist(job, "key_parked", &error, 0).await,
    }
    let upstream = delivery.upstreams.get(job.target);
    let settings = &delivery.settings;
    let mut last_error = String::new();
    for attempt in 1..=settings.attempts {
        if attempt > 1 {
            let backoff = settings
                .retry_backoff
                .saturating_mul(2u32.saturating_pow(attempt - 2));
            tokio::select! {
                () = abort.cancelled() => {
                    if fenced(delivery, &job) {
                        return;
                    }
                    return delivery.persist(job, "shutdown", &last_error, attempt - 1).await;
                }
                () = tokio::time::sleep(backoff) => {}
            }
        }
        if fenced(delivery, &job) {
            return;
        }
        match upstream
            .exchange(&job.request, job.body.clone(), Role::Mirror)
            .await
        {
            Ok(answer) if is_delivered(answer.status) => {
                delivery.attempt_succeeded();
                if let Some(primary) = &job.primary {
                    let request = ComparedRequest {
                        request_id: &job.request_id,
                        method: job.request.method.as_str(),
                        path: job.request.path_and_query.split('?').next().unwrap_or(""),
                        route: &job.route,
                        class: job.class,
                    };
                    delivery
                        .recorder
                        .compare(&request, job.target.other(), primary, &answer)
                        .await;
                }
                settle_while_leased(delivery, &job);
                if let Some(done) = job.done {
                    let _ = done.send(true);
                }
                return;
            }
            Ok(answer) => last_error = format!("status {}", answer.status),
            Err(err) => last_error = err.to_string(),
        }
        delivery.attempt_failed();
    }
    if fenced(delivery, &job) {
        return;
    }
    delivery
        .persist(job, "upstream_error", &last_error, settings.attempts)
        .await;
}
