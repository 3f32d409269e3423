//! Backfill plans under concurrency, on SQLite and on the machine's PostgreSQL: instances
//! planning one table at once end with one plan, whole; a restart replaces only the plans made
//! before it began; a checkpoint taken together with the next claim records the one and
//! claims the other, and a lost claim records nothing.

use std::time::Duration;

use tandem_control::{BackfillCounts, ControlStore, NewBackfillChunk, Timestamp};
use tandem_testkit::PostgresDb;

const JOB: &str = "old new items -> items";

/// A plan of `chunks` chunks, its bounds tagged with `tag` so plans tell apart.
fn plan(tag: &str, chunks: usize) -> Vec<NewBackfillChunk> {
    (0..chunks)
        .map(|at| NewBackfillChunk {
            after: (at > 0).then(|| format!("{tag}{}", at - 1)),
            through: (at + 1 < chunks).then(|| format!("{tag}{at}")),
        })
        .collect()
}

/// Whose plan the store holds, checked whole (every chunk claimed, then given back): the tag
/// of every bound, and the chunk count.
async fn held(store: &ControlStore) -> (String, i64) {
    let progress = store.backfill_progress(JOB).await.expect("progress");
    let mut tags = Vec::new();
    while let Some(chunk) = store
        .claim_backfill_chunk(JOB, "reader", std::time::Duration::from_secs(60))
        .await
        .expect("claim")
    {
        let bound = chunk.through.or(chunk.after).expect("a bound");
        tags.push(bound[..1].to_owned());
    }
    store
        .release_backfill_claims(JOB, &tandem_control::claim_owner("reader"))
        .await
        .expect("release");
    tags.dedup();
    assert_eq!(tags.len(), 1, "one plan's chunks only: {tags:?}");
    (tags.remove(0), progress.chunks)
}

async fn plans_once(url: &str) {
    let (a, b) = (
        ControlStore::open(url).await.expect("open"),
        ControlStore::open(url).await.expect("open"),
    );
    let (plan_a, plan_b) = (plan("a", 40), plan("b", 30));
    let (planned_a, planned_b) = tokio::join!(
        a.plan_backfill(JOB, ("items", "items"), &plan_a, None),
        b.plan_backfill(JOB, ("items", "items"), &plan_b, None),
    );
    let (planned_a, planned_b) = (planned_a.expect("plan a"), planned_b.expect("plan b"));
    assert!(planned_a != planned_b, "exactly one plan is recorded");
    let (tag, chunks) = held(&a).await;
    let expected = if planned_a { ("a", 40) } else { ("b", 30) };
    assert_eq!((tag.as_str(), chunks), expected);

    // A restart begun before that plan was made keeps it; one begun after replaces it.
    let before = Timestamp(0);
    let kept = b
        .plan_backfill(JOB, ("items", "items"), &plan("c", 5), Some(before))
        .await
        .expect("plan c");
    assert!(!kept);
    assert_eq!(held(&a).await.0, expected.0);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let replaced = b
        .plan_backfill(
            JOB,
            ("items", "items"),
            &plan("d", 5),
            Some(Timestamp::now()),
        )
        .await
        .expect("plan d");
    assert!(replaced);
    assert_eq!(held(&a).await, ("d".to_owned(), 5));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_planning_at_once_keep_one_plan_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    plans_once(&format!(
        "sqlite://{}",
        dir.path().join("control.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_planning_at_once_keep_one_plan_on_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    plans_once(&db.url).await;
}

/// Workers that checkpoint a chunk and claim the next in one transaction go through the plan
/// in key order; a checkpoint whose claim was taken over records nothing but still claims;
/// a chunk given back is claimed again.
async fn checkpoints_and_claims(url: &str) {
    let store = ControlStore::open(url).await.expect("open");
    let lease = Duration::from_secs(60);
    assert!(store
        .plan_backfill(JOB, ("items", "items"), &plan("a", 4), None)
        .await
        .expect("plan"));
    let first = store
        .claim_backfill_chunk(JOB, "one", lease)
        .await
        .expect("claim")
        .expect("a chunk");
    let counts = BackfillCounts {
        rows_old: 10,
        copied: 10,
        ..BackfillCounts::default()
    };
    let (recorded, mut second) = store
        .complete_and_claim_backfill_chunks(&[(&first, &counts)], (JOB, "one"), (lease, 1))
        .await
        .expect("checkpoint and claim");
    let second = second.pop().expect("the next chunk");
    assert_eq!(recorded, [true]);
    assert_eq!((first.seq, second.seq), (0, 1));

    // Another instance takes the second chunk over (its lease taken as run out).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let taken = store
        .claim_backfill_chunk(JOB, "two", Duration::ZERO)
        .await
        .expect("take over")
        .expect("a chunk");
    assert_eq!(taken.seq, 1);
    let (recorded, mut third) = store
        .complete_and_claim_backfill_chunks(&[(&second, &counts)], (JOB, "one"), (lease, 1))
        .await
        .expect("checkpoint and claim");
    let third = third.pop().expect("the next chunk");
    assert_eq!(recorded, [false], "a lost claim is not checkpointed");
    assert_eq!(third.seq, 2);

    store
        .release_backfill_chunk(&third)
        .await
        .expect("give back");
    let again = store
        .claim_backfill_chunk(JOB, "two", lease)
        .await
        .expect("claim")
        .expect("the chunk given back");
    assert_eq!(again.seq, 2);
    let progress = store.backfill_progress(JOB).await.expect("progress");
    assert_eq!((progress.chunks, progress.done), (4, 1));
    assert_eq!(progress.counts.rows_old, 10);
    store.close().await;
}

#[tokio::test]
async fn a_checkpoint_claims_the_next_chunk_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    checkpoints_and_claims(&format!(
        "sqlite://{}",
        dir.path().join("control.db").display()
    ))
    .await;
}

#[tokio::test]
async fn a_checkpoint_claims_the_next_chunk_on_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    checkpoints_and_claims(&db.url).await;
}

/// Chunks claimed several at a time come in key order, skip the chunks another instance holds,
/// and are checkpointed together with the next claim in one transaction.
async fn groups_of_chunks(url: &str) {
    let store = ControlStore::open(url).await.expect("open");
    let lease = Duration::from_secs(60);
    assert!(store
        .plan_backfill(JOB, ("items", "items"), &plan("a", 7), None)
        .await
        .expect("plan"));
    let other = store
        .claim_backfill_chunks(JOB, "two", (lease, 1))
        .await
        .expect("claim");
    assert_eq!(seqs(&other), [0]);
    let group = store
        .claim_backfill_chunks(JOB, "one", (lease, 3))
        .await
        .expect("claim a group");
    assert_eq!(seqs(&group), [1, 2, 3]);
    let counts = BackfillCounts {
        rows_old: 10,
        skipped: 10,
        ..BackfillCounts::default()
    };
    let done: Vec<_> = group.iter().map(|chunk| (chunk, &counts)).collect();
    let (recorded, next) = store
        .complete_and_claim_backfill_chunks(&done, (JOB, "one"), (lease, 5))
        .await
        .expect("checkpoint a group and claim");
    assert_eq!(recorded, [true, true, true]);
    assert_eq!(seqs(&next), [4, 5, 6], "fewer are left than asked for");
    let progress = store.backfill_progress(JOB).await.expect("progress");
    assert_eq!((progress.chunks, progress.done), (7, 3));
    assert_eq!(progress.counts.rows_old, 30);
    assert_eq!(progress.counts.skipped, 30);
    store.close().await;
}

fn seqs(chunks: &[tandem_control::BackfillChunk]) -> Vec<i64> {
    chunks.iter().map(|chunk| chunk.seq).collect()
}

#[tokio::test]
async fn groups_of_chunks_are_claimed_and_checkpointed_together_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    groups_of_chunks(&format!(
        "sqlite://{}",
        dir.path().join("control.db").display()
    ))
    .await;
}

#[tokio::test]
async fn groups_of_chunks_are_claimed_and_checkpointed_together_on_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    groups_of_chunks(&db.url).await;
}

/// An instance's own claims, run out, are never claimed again by it (they are its live
/// workers'), only by another instance; a renewal restarts their lease, so that another
/// instance no longer takes them over, and renews only the claims the instance still holds.
async fn own_claims_and_renewals(url: &str) {
    let store = ControlStore::open(url).await.expect("open");
    assert!(store
        .plan_backfill(JOB, ("items", "items"), &plan("a", 3), None)
        .await
        .expect("plan"));
    let lease = Duration::from_millis(200);
    let held = store
        .claim_backfill_chunks(JOB, "one", (lease, 2))
        .await
        .expect("claim");
    assert_eq!(seqs(&held), [0, 1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mine = store
        .claim_backfill_chunks(JOB, "one", (lease, 3))
        .await
        .expect("claim again");
    assert_eq!(
        seqs(&mine),
        [2],
        "its own claims, run out, are not claimed twice"
    );

    assert_eq!(
        store
            .renew_backfill_claims(JOB, "one")
            .await
            .expect("renew"),
        3
    );
    let taken = store
        .claim_backfill_chunks(JOB, "two", (lease, 3))
        .await
        .expect("claim");
    assert!(seqs(&taken).is_empty(), "renewed claims are not taken over");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = store
        .claim_backfill_chunks(JOB, "two", (lease, 1))
        .await
        .expect("take over");
    assert_eq!(seqs(&taken), [0], "a claim not renewed is taken over");
    assert_eq!(
        store
            .renew_backfill_claims(JOB, "one")
            .await
            .expect("renew"),
        2,
        "the chunk taken over is no longer renewed"
    );
    store.close().await;
}

#[tokio::test]
async fn own_claims_are_renewed_not_claimed_twice_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    own_claims_and_renewals(&format!(
        "sqlite://{}",
        dir.path().join("control.db").display()
    ))
    .await;
}

#[tokio::test]
async fn own_claims_are_renewed_not_claimed_twice_on_postgres() {
    let db = PostgresDb::create("tandem_control").await;
    own_claims_and_renewals(&db.url).await;
}
