//! `tandem backfill`'s bulk path: a chunk whose range is empty on the new side goes through
//! `COPY` into the table, with every value written exactly as the row path writes it; a row
//! written on the new side meanwhile fails that COPY, and the chunk is then copied row by row,
//! keeping the row until verification makes it equal.

use crate::backfill::{backfill, control_db, databases, ROWS};
use crate::engines::{compare, Kind, TestDb};

/// Rows of the awkward table; chunks of 1000 make four of them (the last one after the last
/// key, empty).
const AWKWARD_ROWS: i64 = 3_000;

fn awkward_schema(kind: Kind) -> String {
    match kind {
        Kind::Maria => "CREATE TABLE items (id BIGINT PRIMARY KEY, label TEXT, raw BLOB, \
             doc JSON, ref CHAR(36), at DATETIME(6), day DATE, amount DECIMAL(30,10), \
             ok BOOLEAN, code CHAR(5))"
            .to_owned(),
        _ => "CREATE TABLE items (id BIGINT PRIMARY KEY, label TEXT, raw BYTEA, doc JSONB, \
             ref UUID, at TIMESTAMP, day DATE, amount NUMERIC(30,10), ok BOOLEAN, \
             code CHAR(5))"
            .to_owned(),
    }
}

/// Three rows of values a text encoding could get wrong (tabs, newlines, backslashes,
/// quotes, non-ASCII text, empty text and bytes, NULLs), then plain rows.
fn awkward_rows(kind: Kind) -> Vec<String> {
    match kind {
        Kind::Maria => vec![
            "INSERT INTO items VALUES \
             (1, CONCAT('tab\\there', CHAR(10), 'line \\\\ back\\\\slash ''quote'' ünïcødé 🐘 \\\\N'), \
              X'00FF0A5C095C4E', '{\"b\": [1, 2.50, null], \"a\": \"x\\\\ty\"}', \
              '0E984725-C51C-4BF4-9960-E1C80E27ABA0', '2024-02-29 23:59:59.123456', \
              '2000-02-29', 12345678901234567890.0123456789, TRUE, 'ab'), \
             (2, '', X'', '[]', '00000000-0000-0000-0000-000000000000', \
              '1970-01-01 00:00:00', '1970-01-01', -0.0000000001, FALSE, ''), \
             (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
                .to_owned(),
            format!(
                "INSERT INTO items SELECT seq, CONCAT('label ', seq), UNHEX(MD5(seq)), \
                 CONCAT('{{\"n\": ', seq, '}}'), UUID(), \
                 TIMESTAMP '2024-01-01 00:00:00' + INTERVAL seq SECOND, \
                 DATE '2024-01-01' + INTERVAL (seq % 400) DAY, seq / 7, seq % 2 = 0, \
                 LEFT(MD5(seq), 5) FROM seq_4_to_{AWKWARD_ROWS}"
            ),
        ],
        _ => vec![
            "INSERT INTO items VALUES \
             (1, E'tab\\there\\nline \\\\ back\\\\slash ''quote'' ünïcødé 🐘 \\\\N', \
              '\\x00ff0a5c095c4e', '{\"b\": [1, 2.50, null], \"a\": \"x\\\\ty\"}', \
              '0e984725-c51c-4bf4-9960-e1c80e27aba0', '2024-02-29 23:59:59.123456', \
              '2000-02-29', 12345678901234567890.0123456789, TRUE, 'ab'), \
             (2, '', '', '[]', '00000000-0000-0000-0000-000000000000', \
              '1970-01-01 00:00:00', '1970-01-01', -0.0000000001, FALSE, ''), \
             (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
                .to_owned(),
            format!(
                "INSERT INTO items SELECT g, 'label ' || g, decode(md5(g::text), 'hex'), \
                 jsonb_build_object('n', g), md5(g::text)::uuid, \
                 TIMESTAMP '2024-01-01' + g * INTERVAL '1 second', \
                 DATE '2024-01-01' + g % 400, g / 7.0, g % 2 = 0, left(md5(g::text), 5) \
                 FROM generate_series(4, {AWKWARD_ROWS}) g"
            ),
        ],
    }
}

/// Copies the awkward table into PostgreSQL: every chunk in bulk but the second, where the new
/// side already holds a stale row, which goes the row way; the result is
/// identical by the comparator's rules, so the bulk path converts every value as the row
/// path does.
async fn copies_awkward_values_in_bulk(old_kind: Kind) {
    let (old, new) = (
        TestDb::create(old_kind).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[awkward_schema(old_kind)]).await;
    old.exec(&awkward_rows(old_kind)).await;
    new.exec(&[awkward_schema(Kind::Postgres)]).await;
    new.exec(&["INSERT INTO items (id, label) VALUES (1500, 'stale')".to_owned()])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &["--chunk-rows", "1000"]);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunks"], 4, "{report}");
    assert_eq!(
        table["chunks_bulk"], 3,
        "the chunks empty on new go the bulk way, the other the row way: {report}"
    );
    assert_eq!(table["copied"], AWKWARD_ROWS - 1, "{report}");
    assert_eq!(table["repaired"], 1, "the stale row: {report}");
    assert_eq!(table["conflicts"], 0, "{report}");
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_awkward_values_in_bulk_from_postgres() {
    copies_awkward_values_in_bulk(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_awkward_values_in_bulk_from_mariadb() {
    copies_awkward_values_in_bulk(Kind::Maria).await;
}

/// A row that another session commits on the new side after the chunk was found empty there
/// (here through `dblink` from a trigger on the COPY's first row, inside the chunk's
/// transaction: while the bulk write is under way; once only, as the row path's writes of
/// the chunk fire the trigger too) makes the COPY fail on its key, so
/// nothing of the bulk write lands; the chunk
/// is copied row by row instead (not counted as bulk), the conflict counted, and the row kept
/// until the verification's compare-and-set makes it equal to the old side's, as any
/// difference is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_taken_meanwhile_sends_the_chunk_the_row_way() {
    let (old, new) = databases(Kind::Postgres).await;
    new.exec(&[
        "CREATE EXTENSION dblink".to_owned(),
        "CREATE FUNCTION live_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id = 1 AND NOT EXISTS (SELECT FROM items WHERE id = 7) THEN \
         PERFORM dblink_exec(format('host=127.0.0.1 port=%s user=%s dbname=%s', \
         current_setting('port'), current_user, current_database()), \
         'INSERT INTO public.items (id, name) VALUES (7, ''written live'') \
         ON CONFLICT DO NOTHING'); END IF; RETURN NEW; END $$"
            .to_owned(),
        "CREATE TRIGGER live_write BEFORE INSERT ON items FOR EACH ROW \
         EXECUTE FUNCTION live_write()"
            .to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &["--chunk-rows", "100000"]);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(
        table["chunks_bulk"], 0,
        "the bulk insert failed on the taken key and was rolled back: {report}"
    );
    assert_eq!(table["conflicts"], 1, "{report}");
    assert_eq!(
        table["copied"],
        ROWS - 1,
        "every row but the one written live, row by row: {report}"
    );
    assert_eq!(
        table["repaired"], 1,
        "which verification then made equal to old's: {report}"
    );
    let (code, compared) = compare(&old, &new, &["--table", "items"]);
    assert_eq!(code, 0, "identical after the backfill: {compared}");
}

/// A range is empty on the new side only when it holds no row there at all: one that
/// `--where` leaves out of the comparison still sends the chunk the row way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_outside_the_filter_still_makes_the_range_not_empty() {
    let (old, new) = databases(Kind::Postgres).await;
    new.exec(&["INSERT INTO items (id, name) VALUES (5, 'kept')".to_owned()])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let filter = ["--chunk-rows", "100000", "--where", "id > 100"];
    let (code, report) = backfill(&old, &new, &control_db(&dir), &filter);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert_eq!(table["chunks_bulk"], 0, "{report}");
    assert_eq!(table["copied"], ROWS - 100, "{report}");
    let (code, compared) = compare(&old, &new, &["--table", "items", "--where", "id > 100"]);
    assert_eq!(code, 0, "identical where compared: {compared}");
}

/// A COPY the table refuses for another reason than a taken key (here a value longer than the
/// new column allows: COPY's input refuses it, where the row path's cast of a bound value
/// cuts it) writes nothing in bulk; the chunk goes the row way, which copies every row, and
/// the one the new column cannot hold is reported as still different: the backfill goes on
/// and says so, it neither fails on the COPY nor calls the table identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_the_table_refuses_sends_the_chunk_the_row_way() {
    let (old, new) = (
        TestDb::create(Kind::Postgres).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE items (id BIGINT PRIMARY KEY, word VARCHAR(20))".to_owned(),
        "INSERT INTO items SELECT g, 'w' || g FROM generate_series(1, 100) g".to_owned(),
        "UPDATE items SET word = 'far too long' WHERE id = 50".to_owned(),
    ])
    .await;
    new.exec(&["CREATE TABLE items (id BIGINT PRIMARY KEY, word VARCHAR(5))".to_owned()])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (code, report) = backfill(&old, &new, &control_db(&dir), &[]);
    let table = &report["tables"][0];
    assert_eq!(table["chunks_bulk"], 0, "the COPY wrote nothing: {report}");
    assert_eq!(table["copied"], 100, "every row, the row way: {report}");
    assert_eq!(
        table["unconverged"], 1,
        "the cut one still differs: {report}"
    );
    assert_eq!(code, 1, "{report}");
}

/// A MariaDB `DATETIME` (no time zone) copied into a PostgreSQL `TIMESTAMPTZ` is read in
/// `--assume-tz`'s zone, in bulk and the row way alike: 12:00 at +02:00 is 10:00 UTC on new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naive_timestamps_are_copied_in_the_zone_assumed() {
    let (old, new) = (
        TestDb::create(Kind::Maria).await,
        TestDb::create(Kind::Postgres).await,
    );
    old.exec(&[
        "CREATE TABLE events (id BIGINT PRIMARY KEY, at DATETIME(6))".to_owned(),
        "INSERT INTO events VALUES (1, '2024-03-01 12:00:00'), (2, '2024-12-31 23:30:00.5'), \
         (3, NULL), (2001, '2000-02-29 01:00:00')"
            .to_owned(),
    ])
    .await;
    new.exec(&[
        "CREATE TABLE events (id BIGINT PRIMARY KEY, at TIMESTAMPTZ)".to_owned(),
        // The second chunk (ids 3 and 2001) goes the row way: new holds a stale row of it.
        "INSERT INTO events VALUES (2001, '1999-01-01 00:00:00+00')".to_owned(),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let zone = ["--assume-tz", "+02:00"];
    let args = [
        "--control-db",
        &control_db(&dir),
        "--table",
        "events",
        "--chunk-rows",
        "2",
        zone[0],
        zone[1],
    ];
    let (code, report) = crate::engines::run_json("backfill", &old, &new, &args);
    assert_eq!(code, 0, "{report}");
    let table = &report["tables"][0];
    assert!(table["chunks_bulk"].as_i64() > Some(0), "{report}");
    let pool = sqlx::PgPool::connect(&new.url()).await.unwrap();
    let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM events \
         ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(
        rows,
        vec![
            (1, Some("2024-03-01 10:00:00.000000".to_owned())),
            (2, Some("2024-12-31 21:30:00.500000".to_owned())),
            (3, None),
            (2001, Some("2000-02-28 23:00:00.000000".to_owned())),
        ]
    );
    let (code, compared) = compare(&old, &new, &["--table", "events", zone[0], zone[1]]);
    assert_eq!(code, 0, "identical in the zone assumed: {compared}");
}
