//! Several `tandem backfill` instances on one control store, started at the same moment: they
//! plan the table once between them and split its chunks, and each exits 0 only once every
//! chunk is done, by whichever instance: the chunk of one killed, or stopped (SIGSTOP) past
//! its lease, is taken over by the other.

use std::process::{Child, Command, Output};
use std::time::Duration;

use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tandem_testkit::PostgresDb;

use crate::backfill::{backfill, control_db, count, databases, items, ROWS};
use crate::engines::{compare, Kind, TestDb};

/// A running instance, killed if the test ends before it does (a stopped one included).
struct Instance(Option<Child>);

impl Instance {
    /// Starts instance `name` copying `items` in chunks of `chunk_rows`, its reads limited to
    /// `rows_per_sec`, its claims held for `lease`.
    fn start(
        (old, new): (&TestDb, &TestDb),
        control: &str,
        name: &str,
        (chunk_rows, rows_per_sec, lease): (u64, u64, &str),
    ) -> Instance {
        let rate = rows_per_sec.to_string();
        let command = items(old, new, control)
            .instance(name)
            .chunk_rows(chunk_rows)
            .args(&["--threads", "1", "--chunk-lease", lease])
            .args(&["--max-rows-per-sec", &rate]);
        Instance(Some(command.spawn()))
    }

    fn signal(&self, signal: &str) {
        let pid = self.0.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Whether it has exited.
    fn exited(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    /// Waits for it to exit: its exit code and report.
    async fn finished(mut self) -> (Option<i32>, Value) {
        let child = self.0.take().unwrap();
        let output: Output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
            panic!(
                "no report ({}); stdout: {:?}; stderr: {}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code(), report)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The control store, read directly, once an instance has created its tables.
async fn store(control: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    for _ in 0..600 {
        if let Ok(pool) = AnyPoolOptions::new()
            .max_connections(1)
            .connect(control)
            .await
        {
            if sqlx::query("SELECT COUNT(*) FROM backfill_chunks")
                .fetch_one(&pool)
                .await
                .is_ok()
            {
                return pool;
            }
            pool.close().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the control store's tables never appeared");
}

/// How many chunks the instance named `owner` holds with `status` (each claim's owner is the
/// name and the process, `tandem_control::claim_owner`).
async fn chunks(store: &AnyPool, owner: &str, status: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM backfill_chunks WHERE owner LIKE $1 AND status = $2")
        .bind(format!("{owner}#%"))
        .bind(status)
        .fetch_one(store)
        .await
        .map_or(0, |row| row.get("n"))
}

/// The chunks planned: (seq, status, the name of the instance that claimed it last), in key
/// order.
async fn plan(store: &AnyPool) -> Vec<(i64, String, Option<String>)> {
    sqlx::query("SELECT seq, status, owner FROM backfill_chunks ORDER BY seq")
        .fetch_all(store)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let owner: Option<String> = row.get("owner");
            let name = owner.map(|owner| tandem_control::owner_name(&owner).to_owned());
            (row.get("seq"), row.get("status"), name)
        })
        .collect()
}

/// An instance's report says the whole table is done, by it or another.
fn assert_complete(code: Option<i32>, report: &Value) {
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["stopped"], false, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunks_done"], table["chunks"], "{report}");
}

/// The table ends identical, planned once: `planned` chunks (a boundary every chunk's rows,
/// the last one included, and an empty chunk after it), every one done.
async fn assert_copied(old: &TestDb, new: &TestDb, store: &AnyPool, planned: usize) {
    let chunks = plan(store).await;
    let seqs: Vec<i64> = chunks.iter().map(|(seq, _, _)| *seq).collect();
    let expected: Vec<i64> = (0..).take(planned).collect();
    assert_eq!(seqs, expected, "one plan, whole: {chunks:?}");
    assert!(
        chunks.iter().all(|(_, status, _)| status == "done"),
        "{chunks:?}"
    );
    let (code, compared) = compare(old, new, &["--table", "items"]);
    assert_eq!(code, 0, "identical: {compared}");
    assert_eq!(count(new).await, ROWS);
}

/// Two instances started at once: one plan between them (the one that planned second adopts
/// the first's), both copy chunks side by side, and each exits 0 only once the other's last
/// chunk is done too (their leases never run out here).
async fn started_together_split_the_table(control: &str) {
    let (old, new) = databases(Kind::Postgres).await;
    let pace = (2_000, 20_000, "1h");
    let a = Instance::start((&old, &new), control, "a", pace);
    let b = Instance::start((&old, &new), control, "b", pace);
    let ((a_code, a_report), (b_code, b_report)) = tokio::join!(a.finished(), b.finished());
    assert_complete(a_code, &a_report);
    assert_complete(b_code, &b_report);
    let store = store(control).await;
    assert!(chunks(&store, "a", "done").await >= 1, "a copied chunks");
    assert!(chunks(&store, "b", "done").await >= 1, "b copied chunks");
    assert_copied(&old, &new, &store, 26).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_split_a_table_on_a_postgres_store() {
    let control = PostgresDb::create("tandem_backfill_control").await;
    started_together_split_the_table(&control.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_split_a_table_on_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    started_together_split_the_table(&control_db(&dir)).await;
}

/// Two instances started at once; one is killed holding a chunk after it finished one of its
/// own. The other copies every other chunk, waits out the dead one's lease, takes its chunk
/// over and exits 0 with the table complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_chunk_is_taken_over() {
    let (old, new) = databases(Kind::Postgres).await;
    let control_db = PostgresDb::create("tandem_backfill_control").await;
    let control = &control_db.url;
    let pace = (2_000, 30_000, "3s");
    let doomed = Instance::start((&old, &new), control, "doomed", pace);
    let survivor = Instance::start((&old, &new), control, "survivor", pace);
    let store = store(control).await;
    let mut held = false;
    for _ in 0..1_200 {
        if chunks(&store, "doomed", "done").await >= 1
            && chunks(&store, "doomed", "claimed").await == 1
        {
            doomed.signal("-KILL");
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "the doomed instance held a chunk when it was killed");
    drop(doomed);
    let (code, report) = survivor.finished().await;
    assert_complete(code, &report);
    assert!(
        chunks(&store, "doomed", "done").await >= 1,
        "both instances copied chunks"
    );
    assert!(
        chunks(&store, "survivor", "done").await >= 2,
        "the survivor copied chunks, the dead one's too"
    );
    assert_eq!(chunks(&store, "doomed", "claimed").await, 0, "taken over");
    assert_copied(&old, &new, &store, 26).await;
    store.close().await;
}

/// Two instances started at once on three chunks (the last one empty), one each at first. One
/// is stopped (SIGSTOP) holding its chunk: the other finishes the rest, and instead of exiting with half the table copied it
/// waits until the stopped one's lease runs out and takes its chunk over. The stopped one,
/// resumed once its chunk is taken (its transaction may hold rows the other must wait for),
/// finds its claim lost; both exit 0 with the table complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_to_finish_waits_for_the_others_last_chunk() {
    let (old, new) = databases(Kind::Postgres).await;
    let control_db = PostgresDb::create("tandem_backfill_control").await;
    let control = &control_db.url;
    // A chunk takes about 4 s (25,000 rows read three times at 20,000 rows/s), within the
    // lease; the stopped one's outlives it.
    let pace = (25_000, 20_000, "8s");
    let held = Instance::start((&old, &new), control, "held", pace);
    let mut waiter = Instance::start((&old, &new), control, "waiter", pace);
    let store = store(control).await;
    let mut stopped = None;
    for _ in 0..1_200 {
        let claimed = plan(&store)
            .await
            .into_iter()
            .find(|(_, status, owner)| status == "claimed" && owner.as_deref() == Some("held"));
        if let Some((seq, _, _)) = claimed {
            held.signal("-STOP");
            stopped = Some(seq);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seq = stopped.expect("the held instance claimed a chunk");
    // Resumed once the waiter holds its chunk (or has exited without it).
    let mut taken = false;
    for _ in 0..3_000 {
        let owner = plan(&store).await[usize::try_from(seq).unwrap()].2.clone();
        if owner.as_deref() == Some("waiter") {
            taken = true;
            break;
        }
        if waiter.exited() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    held.signal("-CONT");
    let ((held_code, held_report), (waiter_code, waiter_report)) =
        tokio::join!(held.finished(), waiter.finished());
    assert_complete(waiter_code, &waiter_report);
    assert!(taken, "the waiter took the stopped instance's chunk over");
    assert_complete(held_code, &held_report);
    let chunks = plan(&store).await;
    assert_eq!(
        chunks[usize::try_from(seq).unwrap()].2.as_deref(),
        Some("waiter"),
        "{chunks:?}"
    );
    assert_copied(&old, &new, &store, 3).await;
    store.close().await;
}

/// A rerun of a migrated table on two instances, neither dead nor stopped: each chunk is
/// compared first and takes about 2 s (5,000 rows read on each side at 5,000 rows/s), well
/// within the 3 s lease, so no chunk is ever taken over from its live holder (claimed twice),
/// as a lease longer than a chunk takes promises (README, runbook). A chunk claimed ahead, to
/// read its rows while the one before it is compared, must not age towards its lease
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_instances_chunks_are_not_taken_over_on_a_rerun() {
    let (old, new) = databases(Kind::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let (code, first) = backfill(&old, &new, &control_db(&dir), &[]);
    assert_eq!(code, 0, "{first}");
    let control_db = PostgresDb::create("tandem_backfill_control").await;
    let control = &control_db.url;
    let pace = (5_000, 5_000, "3s");
    let a = Instance::start((&old, &new), control, "a", pace);
    let b = Instance::start((&old, &new), control, "b", pace);
    let ((a_code, a_report), (b_code, b_report)) = tokio::join!(a.finished(), b.finished());
    assert_complete(a_code, &a_report);
    assert_complete(b_code, &b_report);
    let store = store(control).await;
    let taken_over: Vec<(i64, i64, Option<String>)> = sqlx::query(
        "SELECT seq, attempts, owner FROM backfill_chunks WHERE attempts > 1 ORDER BY seq",
    )
    .fetch_all(&store)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get("seq"), row.get("attempts"), row.get("owner")))
    .collect();
    assert!(
        taken_over.is_empty(),
        "chunks claimed again from a live instance (seq, attempts, last owner): {taken_over:?}"
    );
    assert_copied(&old, &new, &store, 11).await;
    store.close().await;
}

/// Two processes started under one `--instance` name (as two started without one on a host
/// do): the second, starting while the first holds a chunk, does not take that live claim back
/// as if its holder were a killed predecessor, so no chunk is claimed twice, and both exit 0
/// with the table complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_under_one_name_keep_their_own_claims() {
    let (old, new) = databases(Kind::Postgres).await;
    let control_db = PostgresDb::create("tandem_backfill_control").await;
    let control = &control_db.url;
    let pace = (5_000, 10_000, "1h");
    let first = Instance::start((&old, &new), control, "twin", pace);
    let store = store(control).await;
    let mut holding = false;
    for _ in 0..1_500 {
        if chunks(&store, "twin", "claimed").await >= 1 {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(holding, "the first process claimed a chunk");
    let second = Instance::start((&old, &new), control, "twin", pace);
    let ((first_code, first_report), (second_code, second_report)) =
        tokio::join!(first.finished(), second.finished());
    assert_complete(first_code, &first_report);
    assert_complete(second_code, &second_report);
    let claimed_again: Vec<(i64, i64)> =
        sqlx::query("SELECT seq, attempts FROM backfill_chunks WHERE attempts > 1 ORDER BY seq")
            .fetch_all(&store)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("seq"), row.get("attempts")))
            .collect();
    assert!(
        claimed_again.is_empty(),
        "chunks claimed again from a live process (seq, attempts): {claimed_again:?}"
    );
    assert_copied(&old, &new, &store, 11).await;
    store.close().await;
}
