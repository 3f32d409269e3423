//! `tandem backfill` into PostgreSQL array columns: PostgreSQL arrays (awkward elements, two
//! dimensions, `json[]`/`jsonb[]`) and MariaDB JSON arrays, copied in bulk into an empty
//! range, then written row by row with compare-and-set conditions on the array columns.

use crate::backfill::control_db;
use crate::engines::{compare, run_json, Kind, TestDb};

const GENERATED: i64 = 2_000;

fn backfill(old: &TestDb, new: &TestDb, control: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--control-db", control, "--table", "tagged"];
    all.extend_from_slice(args);
    let (code, report) = run_json("backfill", old, new, &all);
    assert_eq!(code, 0, "{report}");
    report
}

/// The rows on new differ from old's in every way a later run must put right row by row: an
/// array changed, one emptied, a row missing and a row extra.
fn drift() -> Vec<String> {
    [
        "UPDATE tagged SET ints = '{9}' WHERE id = 1",
        "UPDATE tagged SET words = '{}' WHERE id = 4",
        "DELETE FROM tagged WHERE id = 5",
        "INSERT INTO tagged (id, ints) VALUES (999999, '{7,7}')",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Copies the table, then puts the drift right; checks both runs' counts and that compare
/// finds the sides identical after each.
async fn copy_then_repair(old: &TestDb, new: &TestDb, rows: i64) {
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let report = backfill(old, new, &control, &[]);
    let table = &report["tables"][0];
    assert_eq!(table["copied"], rows, "{report}");
    assert_eq!(table["chunks_bulk"], 1, "copied in bulk: {report}");
    let (code, compared) = compare(old, new, &["--table", "tagged"]);
    assert_eq!(code, 0, "identical after the bulk copy: {compared}");

    new.exec(&drift()).await;
    let report = backfill(old, new, &control, &["--restart"]);
    let table = &report["tables"][0];
    assert_eq!(table["chunks_bulk"], 0, "{report}");
    assert_eq!(table["copied"], 1, "the missing row: {report}");
    assert_eq!(
        table["repaired"], 3,
        "two updates and a delete whose conditions on the arrays held: {report}"
    );
    assert_eq!(table["conflicts"], 0, "{report}");
    let (code, compared) = compare(old, new, &["--table", "tagged"]);
    assert_eq!(code, 0, "identical after the row writes: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_postgres_arrays_into_postgres_arrays() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let schema = "CREATE TABLE tagged (id BIGINT PRIMARY KEY, ints INTEGER[], words TEXT[], \
                  grid INTEGER[][], amounts NUMERIC(8,2)[], docs JSONB[], plain JSON[], \
                  stamps TIMESTAMP[], flags BOOLEAN[])";
    old.exec(&[
        schema.to_owned(),
        r#"INSERT INTO tagged VALUES
           (1, '{1,2,3}', '{"a\"b","c,d","{x}","back\\slash",NULL,"NULL",""," sp "}',
            '{{1,2},{3,NULL}}', '{1.50,NULL,-0.01}',
            ARRAY['{"k":[1,"v"],"a":null}'::jsonb, '"s"'::jsonb, '[1,2]'::jsonb],
            ARRAY['{"z":1, "a":2}'::json], '{"2024-01-01 10:00:00.123456",NULL}', '{t,f}'),
           (2, '{}', '{ünï,"日本"}', '{}', '{}', '{}', '{}', '{}', '{}'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
           (4, '{NULL}', '{NULL}', '{{NULL}}', '{NULL}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')"#
            .to_owned(),
        format!(
            "INSERT INTO tagged SELECT g, ARRAY[g, -g], ARRAY['w' || g, 'x\"' || g], \
             ARRAY[[g, g + 1], [g + 2, g + 3]], ARRAY[g / 8.0]::numeric(8,2)[], \
             ARRAY[jsonb_build_object('g', g)], ARRAY[json_build_array(g)], \
             ARRAY[TIMESTAMP '2024-01-01' + g * INTERVAL '1 second'], ARRAY[g % 2 = 0] \
             FROM generate_series(5, {GENERATED}) g"
        ),
    ])
    .await;
    new.exec(&[schema.to_owned()]).await;
    copy_then_repair(&old, &new, GENERATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_mariadb_json_arrays_into_postgres_arrays() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE tagged (id BIGINT PRIMARY KEY, ints JSON, words JSON, amounts JSON)"
            .to_owned(),
        r#"INSERT INTO tagged VALUES
           (1, '[1, 2, 3]', '["a\\"b", "c,d", "{x}", "back\\\\slash", null]', '[1.50, null]'),
           (2, '[]', '[]', '[]'),
           (3, NULL, NULL, NULL),
           (4, '[null]', '["ünï", "日本"]', '[-0.01]')"#
            .to_owned(),
        format!(
            "INSERT INTO tagged SELECT seq, JSON_ARRAY(seq, -seq), \
             JSON_ARRAY(CONCAT('w', seq)), JSON_ARRAY(seq / 8) FROM seq_5_to_{GENERATED}"
        ),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE tagged (id BIGINT PRIMARY KEY, ints INTEGER[], words TEXT[], \
         amounts NUMERIC(10,4)[])"
            .to_owned(),
    ])
    .await;
    copy_then_repair(&old, &new, GENERATED).await;
}
