//! `live`: the new side is authoritative; writes still reach the old side (the way back stays
//! open) and reads are compared with it.

use tandem_control::{ControlStore, Side};

use super::{eventually, psql, sides, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_from_new_and_mirrors_writes_to_old() {
    let (old, new) = sides().await;
    let Proxy { port, control, .. } = &Proxy::start("live", &old.url, &new.url, &[]);
    let read = psql(port, "postgres", "SELECT side FROM items WHERE id = 1");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "new");
    let write = psql(
        port,
        "postgres",
        "INSERT INTO items VALUES (60, 'written in live')",
    );
    assert!(
        write.status.success(),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );
    eventually(&old.url, "SELECT count(*) FROM items WHERE id = 60", 1).await;

    // The read was run on old as well, and its different answer recorded with new as the
    // authoritative side.
    let store = ControlStore::open(control).await.unwrap();
    let mismatches = store.response_mismatches(10).await.unwrap();
    store.close().await;
    assert_eq!(mismatches.len(), 1, "{mismatches:?}");
    assert_eq!(mismatches[0].authoritative, Side::New);
    assert_eq!(
        mismatches[0].diff,
        "rows differ (1 old / 1 new rows, as sets): old has (old), new has (new)"
    );
}
