//! `tandem backfill` checks its input before writing anything: a table missing on either
//! side, a column missing on the new side and a column of a type it cannot carry or read are
//! each named on a line of their own, and so are a table without a key, a key the new side
//! does not make unique and a side it cannot reach, with exit 2 and nothing written (no row on
//! the new side, no chunk in the control store).

use sqlx::any::AnyPoolOptions;
use sqlx::Row;
use tandem_testkit::ReservedPort;

use crate::backfill::{control_db, count, rows_in, ROWS};
use crate::engines::{run_tandem, Kind, TestDb};

const OLD_ITEMS: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
     amount NUMERIC(12,2), note TEXT)";

/// Old (PostgreSQL) holds `items` (with history) and `orders`, then runs `old_extra`; a new
/// database of `new_kind` gets `new_schema`. Runs a backfill with `args` and returns its exit
/// code and standard error, after checking that nothing was written: the new side's `items`
/// is still empty and the control store holds no chunk.
async fn refused(
    new_kind: Kind,
    (old_extra, new_schema): (&[&str], &[&str]),
    args: &[&str],
) -> (Option<i32>, String) {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(new_kind).await,
    );
    let mut statements = vec![
        OLD_ITEMS.to_owned(),
        format!(
            "INSERT INTO items SELECT g, 'name' || g, g * 1.25, 'note ' || g \
             FROM generate_series(1, {ROWS}) g"
        ),
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, total NUMERIC(12,2))".to_owned(),
        "INSERT INTO orders VALUES (1, 9.99)".to_owned(),
    ];
    statements.extend(old_extra.iter().map(|sql| (*sql).to_owned()));
    old.exec(&statements).await;
    let statements: Vec<String> = new_schema.iter().map(|sql| (*sql).to_owned()).collect();
    new.exec(&statements).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let mut all = vec!["--control-db", control.as_str()];
    all.extend(args);
    let output = run_tandem("backfill", &old, &new, &all);
    assert_eq!(count(&new).await, 0, "nothing written on new");
    assert_eq!(chunks_recorded(&dir).await, 0, "no chunk planned");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`refused`] on a PostgreSQL new side with `new_schema`, backfilling `tables`.
async fn backfill_refused(new_schema: &[&str], tables: &[&str]) -> (Option<i32>, String) {
    let args: Vec<&str> = tables.iter().flat_map(|table| ["--table", table]).collect();
    refused(Kind::Postgres, (&[], new_schema), &args).await
}

/// The chunks planned in the control store of `dir` (none when it was never created, or not
/// set up).
async fn chunks_recorded(dir: &tempfile::TempDir) -> i64 {
    let path = dir.path().join("control.db");
    if !path.exists() {
        return 0;
    }
    sqlx::any::install_default_drivers();
    let store = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}?mode=ro", path.display()))
        .await
        .unwrap();
    // A run that failed while the store was being set up may leave it without its tables.
    let tables: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM sqlite_master WHERE name = 'backfill_chunks'")
            .fetch_one(&store)
            .await
            .unwrap()
            .get("n");
    let chunks: i64 = if tables == 0 {
        0
    } else {
        sqlx::query("SELECT COUNT(*) AS n FROM backfill_chunks")
            .fetch_one(&store)
            .await
            .unwrap()
            .get("n")
    };
    store.close().await;
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_table_missing_on_new() {
    let (code, stderr) = backfill_refused(&[OLD_ITEMS], &["items", "orders"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("table orders does not exist on the new side"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_column_missing_on_new() {
    let items = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount NUMERIC(12,2))";
    let (code, stderr) = backfill_refused(&[items], &["items"]).await;
    assert_eq!(
        code,
        Some(2),
        "a column the new side lacks would be lost: {stderr}"
    );
    assert!(
        stderr.contains("table items has no column note on the new side"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_column_of_a_type_it_cannot_carry() {
    let items = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount DATE, note TEXT)";
    let (code, stderr) = backfill_refused(&[items], &["items"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("table items, column amount: old type numeric(12,2) and new type date"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_every_problem_on_a_line_of_its_own() {
    let items = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount DATE)";
    let (code, stderr) = backfill_refused(&[items], &["items", "orders"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    for problem in [
        "table orders does not exist on the new side",
        "table items, column amount: old type numeric(12,2) and new type date",
        "table items has no column note on the new side",
    ] {
        assert_eq!(
            lines.iter().filter(|line| line.contains(problem)).count(),
            1,
            "{problem:?} on one line of {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_table_without_a_key() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    let loose = "CREATE TABLE loose (a INT, b TEXT)".to_owned();
    old.exec(&[
        loose.clone(),
        "INSERT INTO loose SELECT g, 'x' FROM generate_series(1, 10) g".to_owned(),
    ])
    .await;
    new.exec(&[loose]).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let output = run_tandem(
        "backfill",
        &old,
        &new,
        &["--control-db", &control, "--table", "loose"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("table loose has no primary key") && stderr.contains("--key"),
        "{stderr}"
    );
    assert_eq!(rows_in(&new, "loose").await, 0, "nothing written on new");
    assert_eq!(chunks_recorded(&dir).await, 0, "no chunk planned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_side_it_cannot_reach() {
    let old = TestDb::create(Kind::Postgres).await;
    old.exec(&[OLD_ITEMS.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    // A port nothing listens on, and a password that must not be printed.
    let reserved = ReservedPort::new();
    let closed = reserved.port();
    let unreachable = format!("postgres://postgres:s3cret@127.0.0.1:{closed}/nowhere");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["backfill", "--old", &old.url(), "--new", &unreachable])
        .args(["--table", "items", "--control-db", &control])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the new database") && !stderr.contains("s3cret"),
        "{stderr}"
    );
}

/// A new table whose key nothing makes unique: a row dual-write inserts while the backfill
/// copies it would be inserted twice, so the backfill refuses, naming the statement that adds
/// the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_key_the_new_side_does_not_make_unique_on_postgres() {
    let items = "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(50) NOT NULL, \
         amount NUMERIC(12,2), note TEXT)";
    let args = ["--table", "items", "--key", "id"];
    let (code, stderr) = refused(Kind::Postgres, (&[], &[items]), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "table items: no primary key or unique index on the new side is over the key (id)"
        ) && stderr.contains(r#"add one: ALTER TABLE "items" ADD PRIMARY KEY ("id")"#),
        "{stderr}"
    );
}

/// The same on MariaDB, where the new table is keyed by another column: its unique index on
/// `name` keeps no second row of one `id` out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_key_the_new_side_does_not_make_unique_on_mariadb() {
    let items = "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(50) NOT NULL UNIQUE, \
         amount DECIMAL(12,2), note TEXT)";
    let (code, stderr) = refused(Kind::Maria, (&[], &[items]), &["--table", "items"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "table items: no primary key or unique index on the new side is over the key (id)"
        ) && stderr.contains("add one: ALTER TABLE `items` ADD PRIMARY KEY (`id`)"),
        "{stderr}"
    );
}

/// A deferrable unique constraint keeps a second row out only at commit, and PostgreSQL takes
/// none as the arbiter of the insert-if-absent the row way writes with: refused like none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_key_only_a_deferrable_constraint_makes_unique() {
    let items = "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(50) NOT NULL, \
         amount NUMERIC(12,2), note TEXT, UNIQUE (id) DEFERRABLE)";
    let args = ["--table", "items", "--key", "id"];
    let (code, stderr) = refused(Kind::Postgres, (&[], &[items]), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "table items: no primary key or unique index on the new side is over the key (id)"
        ),
        "{stderr}"
    );
}

/// On SQLite, which cannot add a primary key to a table, the fix is a unique index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_key_the_new_side_does_not_make_unique_on_sqlite() {
    let items = "CREATE TABLE items (id BIGINT NOT NULL, name VARCHAR(50) NOT NULL, \
         amount NUMERIC(12,2), note TEXT)";
    let args = ["--table", "items", "--key", "id"];
    let (code, stderr) = refused(Kind::Sqlite, (&[], &[items]), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(r#"add one: CREATE UNIQUE INDEX "items_id_key" ON "items" ("id")"#),
        "{stderr}"
    );
}

/// A unique index over the key keeps a second row out whether or not its columns are
/// nullable (a copied row's key is never NULL), and so does one over part of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_where_a_unique_index_covers_the_key_or_part_of_it() {
    for (items, key) in [
        (
            "CREATE TABLE items (id BIGINT UNIQUE, name VARCHAR(50) NOT NULL, \
             amount NUMERIC(12,2), note TEXT)",
            "id",
        ),
        (
            "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
             amount NUMERIC(12,2), note TEXT)",
            "id,name",
        ),
        // An index's INCLUDE columns are carried, not part of what it keeps unique.
        (
            "CREATE TABLE items (id BIGINT, name VARCHAR(50) NOT NULL, \
             amount NUMERIC(12,2), note TEXT, UNIQUE (id) INCLUDE (note))",
            "id",
        ),
    ] {
        let (old, new) = (
            TestDb::create(Kind::Postgres).await,
            TestDb::create(Kind::Postgres).await,
        );
        old.exec(&[
            OLD_ITEMS.to_owned(),
            "INSERT INTO items SELECT g, 'name' || g, g * 1.25, 'note ' || g \
             FROM generate_series(1, 100) g"
                .to_owned(),
        ])
        .await;
        new.exec(&[items.to_owned()]).await;
        let dir = tempfile::tempdir().unwrap();
        let control = control_db(&dir);
        let args = ["--control-db", &control, "--table", "items", "--key", key];
        let output = run_tandem("backfill", &old, &new, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{items}: {stderr}");
        assert_eq!(count(&new).await, 100, "{items}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_table_missing_on_old() {
    let invoices = "CREATE TABLE invoices (id BIGINT PRIMARY KEY, total NUMERIC(12,2))";
    let args = ["--table", "items", "--table", "invoices"];
    let (code, stderr) = refused(Kind::Postgres, (&[], &[OLD_ITEMS, invoices]), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("table invoices does not exist on the old side"),
        "{stderr}"
    );
}

/// Both tables exist, with a column of a type the comparator cannot read on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_column_of_an_unsupported_type() {
    let add_place = "ALTER TABLE items ADD COLUMN place point";
    let new_schema = [OLD_ITEMS, add_place];
    let args = ["--table", "items"];
    let (code, stderr) = refused(Kind::Postgres, (&[add_place], &new_schema), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(
            "table items, column place: type point on the old side is not supported \
             (leave it out with --ignore-columns)"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_old_side_it_cannot_reach() {
    let new = TestDb::create(Kind::Postgres).await;
    new.exec(&[OLD_ITEMS.to_owned()]).await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    // A port nothing listens on, and a password that must not be printed.
    let reserved = ReservedPort::new();
    let closed = reserved.port();
    let unreachable = format!("postgres://postgres:s3cret@127.0.0.1:{closed}/nowhere");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["backfill", "--old", &unreachable, "--new", &new.url()])
        .args(["--table", "items", "--control-db", &control])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot connect to the old database") && !stderr.contains("s3cret"),
        "{stderr}"
    );
    assert_eq!(count(&new).await, 0, "nothing written on new");
    assert_eq!(chunks_recorded(&dir).await, 0, "no chunk planned");
}

/// A new-side column every insert needs a value for, that the old side has none of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_new_column_no_row_can_be_inserted_without() {
    let items = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount NUMERIC(12,2), note TEXT, sku TEXT NOT NULL, \
         added TIMESTAMP NOT NULL DEFAULT now(), serial BIGSERIAL, \
         ident BIGINT GENERATED ALWAYS AS IDENTITY)";
    let (code, stderr) = backfill_refused(&[items], &["items"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "only sku: {stderr}");
    assert!(
        stderr.contains(
            "table items, column sku: NOT NULL without a default on the new side and not \
             copied from the old side, so no row can be inserted"
        ),
        "{stderr}"
    );
}

/// The same on MariaDB, for a column left out of the copy with `--ignore-columns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_new_not_null_column_left_out_of_the_copy() {
    let items = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         amount DECIMAL(12,2), note TEXT, seen INT NOT NULL DEFAULT 0, \
         serial BIGINT NOT NULL AUTO_INCREMENT UNIQUE)";
    let args = ["--table", "items", "--ignore-columns", "items.name"];
    let (code, stderr) = refused(Kind::Maria, (&[], &[items]), &args).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "only name: {stderr}");
    assert!(
        stderr.contains("table items, column name: NOT NULL without a default on the new side"),
        "{stderr}"
    );
}

/// A new side declaring less room (a shorter varchar, fewer decimal digits, NOT NULL where the
/// old side takes NULL) is warned of, once per column, and the copy goes on: these values fit.
/// One that does not is named in the new side's error and leaves its row unconverged (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warns_of_narrower_new_columns_and_copies_what_fits() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        OLD_ITEMS.to_owned(),
        format!(
            "INSERT INTO items SELECT g, 'name' || g, g * 1.25, 'note ' || g \
             FROM generate_series(1, {ROWS}) g"
        ),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(20) NOT NULL, \
         amount NUMERIC(10,2), note TEXT NOT NULL)"
            .to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let control = control_db(&dir);
    let args = ["--control-db", &control, "--table", "items"];
    let output = run_tandem("backfill", &old, &new, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(count(&new).await, ROWS, "{stderr}");
    for warning in [
        "table items, column name: new type character varying(20) is shorter than old type \
         character varying(50); a value that does not fit leaves its row unconverged",
        "table items, column amount: new type numeric(10,2) holds fewer digits than old type \
         numeric(12,2); a value that does not fit leaves its row unconverged",
        "table items, column note: NOT NULL on the new side, nullable on the old side; a value \
         that does not fit leaves its row unconverged",
    ] {
        let lines = stderr.lines().filter(|line| line.contains(warning)).count();
        assert_eq!(lines, 1, "{warning:?} once in {stderr}");
    }
    assert!(!stderr.contains("column id:"), "{stderr}");

    // The bulk COPY refuses it, and the row way cannot write it whole either.
    old.exec(&["UPDATE items SET name = 'a name longer than twenty' WHERE id = 7".to_owned()])
        .await;
    new.exec(&["TRUNCATE items".to_owned()]).await;
    let args = ["--control-db", &control, "--table", "items", "--restart"];
    let output = run_tandem("backfill", &old, &new, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("value too long for type character varying(20)"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["tables"][0]["unconverged"], 1, "{report}");
    let whole = "items WHERE id = 7 AND name = 'a name longer than twenty'";
    assert_eq!(rows_in(&new, whole).await, 0, "{report}");
}
