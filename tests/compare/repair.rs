//! `tandem repair` makes the confirmed divergent rows identical, across engines, and touches
//! nothing on a dry run.

use serde_json::Value;

use crate::drift::{baseline, drift};
use crate::engines::{compare, run_json, Kind, TestDb};

fn repair(old: &TestDb, new: &TestDb, args: &[&str]) -> (i32, Value) {
    run_json("repair", old, new, args)
}

async fn repairs_every_drift(old_kind: Kind, new_kind: Kind) {
    let (old, new) = (
        TestDb::create(old_kind).await,
        TestDb::create(new_kind).await,
    );
    old.exec(&baseline(&old, false)).await;
    new.exec(&baseline(&new, new_kind == Kind::Postgres)).await;
    new.exec(&drift(&new)).await;

    let (code, planned) = repair(&old, &new, &["--table", "items", "--dry-run"]);
    assert_eq!(code, 0);
    assert_eq!(
        (
            &planned["inserted"],
            &planned["updated"],
            &planned["deleted"]
        ),
        (&1.into(), &7.into(), &1.into()),
        "{planned}"
    );
    let (code, _) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 1, "a dry run changes nothing");

    let (code, done) = repair(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "{done}");
    assert_eq!(done["identical_after"], 9, "{done}");
    assert_eq!(done["still_divergent"], 0);
    let (code, after) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the repair: {after}");

    let (code, done) = repair(&old, &new, &["--table", "accounts", "--from", "new"]);
    assert_eq!(code, 0, "{done}");
    assert_eq!(
        (&done["inserted"], &done["updated"], &done["deleted"]),
        (&1.into(), &1.into(), &1.into()),
        "{done}"
    );
    let (code, after) = compare(&old, &new, &[]);
    assert_eq!(code, 0, "the old side took the new side's rows: {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_postgres_from_postgres() {
    repairs_every_drift(Kind::Postgres, Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_postgres_from_mariadb_and_back() {
    repairs_every_drift(Kind::Maria, Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_sqlite_from_sqlite() {
    repairs_every_drift(Kind::Sqlite, Kind::Sqlite).await;
}
