//! Session state set outside any write transaction decides what later writes do, so in
//! `dual-write` it must hold on the other side too: the search path (which `items` an
//! unqualified name is), the time zone (which instant a timestamptz literal is), the date
//! style (which day a date literal is), SQL-level prepared statements deallocated and
//! prepared again, and temporary tables discarded and created again. With psql (each
//! statement its own Query) and with psycopg 3 (an autocommit connection, and a connection
//! configured once and reused for several transactions, as a pool does). And what a session
//! never set but was told at login (TimeZone, DateStyle, IntervalStyle), where the other
//! side's database has other defaults.

use super::exact::{
    assert_carried_over, identical_sides, psql_script, rows, run_python,
    sides_with_other_defaults_on_new, succeeded,
};
use super::Proxy;

/// Runs `script` with psql through a `dual-write` proxy, one statement a Query, and checks
/// new ends holding `expected` as old does.
async fn through_psql(script: &str, expected: &[(&str, &[&str])]) {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(&psql_script(&proxy.port, script, true).await, script);
    assert_carried_over(&old, &new, &proxy.port, &proxy.control, expected).await;
}

/// Runs `script` with psql through a `dual-write` proxy whose new side's database has other
/// defaults (`sides_with_other_defaults_on_new`), and checks both sides end holding `items`.
async fn told_values_hold(script: &str, items: &[&str]) {
    let (old, new) = sides_with_other_defaults_on_new().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(&psql_script(&proxy.port, script, true).await, script);
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[("public.items", items)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_set_outside_a_transaction_reaches_the_other_side() {
    through_psql(
        "SET search_path TO tenant_a;
INSERT INTO items (id, name) VALUES (40, 'tenant row');
",
        &[
            ("public.items", &["1|existing||"]),
            ("tenant_a.items", &["40|tenant row||"]),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_zone_set_outside_a_transaction_reaches_the_other_side() {
    // Midnight in New York is 05:00 UTC (the servers' own zone is UTC).
    through_psql(
        "SET TIME ZONE 'America/New_York';
INSERT INTO items (id, name, at) VALUES (41, 'new york midnight', '2024-01-01 00:00');
",
        &[(
            "public.items",
            &["1|existing||", "41|new york midnight|2024-01-01 05:00|"],
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_style_set_outside_a_transaction_reaches_the_other_side() {
    // Day first: the 3rd of April (the servers' own order is month first).
    through_psql(
        "SET datestyle TO 'German, DMY';
INSERT INTO items (id, name, day) VALUES (42, 'third of april', '03/04/2024');
",
        &[(
            "public.items",
            &["1|existing||", "42|third of april||2024-04-03"],
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepared_statements_deallocated_and_prepared_again_reach_the_other_side() {
    through_psql(
        "PREPARE ins (int, text) AS INSERT INTO items (id, name) VALUES ($1, $2);
EXECUTE ins(50, 'first statement');
DEALLOCATE ins;
PREPARE ins (int) AS INSERT INTO items (id, name, day) VALUES ($1, 'second statement', '2024-05-06');
EXECUTE ins(51);
",
        &[(
            "public.items",
            &[
                "1|existing||",
                "50|first statement||",
                "51|second statement||2024-05-06",
            ],
        )],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_discarded_and_created_again_reach_the_other_side() {
    through_psql(
        "CREATE TEMP TABLE scratch (id int, name text);
INSERT INTO scratch VALUES (60, 'first scratch');
DISCARD TEMP;
CREATE TEMP TABLE scratch (id int, name text);
INSERT INTO scratch VALUES (61, 'second scratch');
INSERT INTO items (id, name) SELECT id, name FROM scratch;
",
        &[("public.items", &["1|existing||", "61|second scratch||"])],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_autocommit_settings_reach_the_other_side() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let answer = run_python("psycopg_autocommit_session", &proxy.port).await;
    assert_eq!(answer, serde_json::json!({"schema": "tenant_a"}));
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[
            ("public.items", &["1|existing||"]),
            (
                "tenant_a.items",
                &[
                    "70|psycopg autocommit||",
                    "71|psycopg new york|2024-01-01 05:00|",
                ],
            ),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_settings_of_a_reused_connection_reach_the_other_side() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let answer = run_python("psycopg_pooled_session", &proxy.port).await;
    assert_eq!(answer, serde_json::json!({"schema": "tenant_a"}));
    // 82 was rolled back; July in New York is UTC-4.
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[
            ("public.items", &["1|existing||"]),
            (
                "tenant_a.items",
                &[
                    "80|pooled one|2024-01-01 05:00|",
                    "81|pooled two|2024-01-01 05:00|",
                    "83|pooled three|2024-07-01 16:00|",
                ],
            ),
        ],
    )
    .await;
}

/// A setting made with a bound parameter reaches a session the other side had to open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameterised_set_config_reaches_a_reopened_session_there() {
    let (old, new) = identical_sides().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    let mut client = super::exact::python("psycopg_set_config_then_reconnect", &proxy.port);
    client
        .env("TANDEM_APPLICATION_NAME", format!("setcfg-{}", proxy.port))
        .env("TANDEM_PG_NEW_DSN", &new.url);
    let output = super::exact::bounded(client, "", "set_config").await;
    super::exact::succeeded(&output, "set_config");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"schema": "tenant_a", "terminated": 1})
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[
            ("public.items", &["1|existing||"]),
            ("tenant_a.items", &["90|before||", "91|after||"]),
        ],
    )
    .await;
}

/// Writes whose values depend on the session's TimeZone, DateStyle and IntervalStyle, none of
/// which the client sets: a timestamptz rendered as text, timestamptz and date literals, an
/// interval rendered as text; in an implicit transaction, in a block, and after `DISCARD ALL`.
const TOLD_PARAMETERS_SCRIPT: &str = "\
INSERT INTO items (id, name, at, day) VALUES (60, '2026-01-02 03:04'::timestamptz::text, '2026-01-02 03:04', '01/02/2026');
INSERT INTO items (id, name) VALUES (61, '1 day 2 hours'::interval::text);
BEGIN;
INSERT INTO items (id, name, at) VALUES (62, 'in a block', '2026-03-04 05:06');
COMMIT;
DISCARD ALL;
INSERT INTO items (id, name, day) VALUES (63, 'after discard all', '03/04/2026');
";

/// In `dual-write` (old serves the client, which is told old's parameters at login) the
/// session's statements run on new with old's parameters, not new's database defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_told_at_login_hold_where_the_other_sides_defaults_differ() {
    let (old, new) = sides_with_other_defaults_on_new().await;
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    succeeded(
        &psql_script(&proxy.port, TOLD_PARAMETERS_SCRIPT, true).await,
        TOLD_PARAMETERS_SCRIPT,
    );
    assert_carried_over(
        &old,
        &new,
        &proxy.port,
        &proxy.control,
        &[(
            "public.items",
            &[
                "1|existing||",
                "60|2026-01-02 03:04:00+00|2026-01-02 03:04|2026-01-02",
                "61|1 day 02:00:00||",
                "62|in a block|2026-03-04 05:06|",
                "63|after discard all||2026-03-04",
            ],
        )],
    )
    .await;
}

/// In `live` the client logs in on new and is told new's database defaults: its statements
/// run on old with those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_told_at_login_on_new_hold_on_old_in_live() {
    let (old, new) = sides_with_other_defaults_on_new().await;
    let proxy = Proxy::start("live", &old.url, &new.url, &[]);
    succeeded(
        &psql_script(&proxy.port, TOLD_PARAMETERS_SCRIPT, true).await,
        TOLD_PARAMETERS_SCRIPT,
    );
    // What new (serving the client) holds, written with Asia/Tokyo, `SQL, DMY` and
    // `sql_standard`: the premise, then what old must hold too.
    let written = rows(&new.url, "public.items").await;
    assert!(
        written.contains(&"60|02/01/2026 03:04:00 JST|2026-01-01 18:04|2026-02-01".to_owned()),
        "{written:?}"
    );
    let written: Vec<&str> = written.iter().map(String::as_str).collect();
    // The served side is `old` to the check, the mirrored one `new`.
    assert_carried_over(
        &new,
        &old,
        &proxy.port,
        &proxy.control,
        &[("public.items", &written)],
    )
    .await;
}

/// Review: a client's `RESET ALL` must leave the other side with the client's told
/// parameters, not that side's database defaults (new: `SQL, DMY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_reset_all_keeps_the_told_parameters_on_the_other_side() {
    told_values_hold(
        "RESET ALL;
INSERT INTO items (id, name, day) VALUES (64, 'after reset all', '03/04/2026');
INSERT INTO items (id, name, day) VALUES (65, 'later', '05/06/2026');
",
        &[
            "1|existing||",
            "64|after reset all||2026-03-04",
            "65|later||2026-05-06",
        ],
    )
    .await;
}

/// A client that resets one parameter (`RESET x`, `SET x TO DEFAULT`, `SET TIME ZONE LOCAL`)
/// gets its server's default back, the value it was told at login: the other side must take
/// on that value again, not its own default (new: Asia/Tokyo, `SQL, DMY`). A reset in a
/// transaction that rolls back resets nothing, there either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_one_parameter_gives_the_other_side_the_told_value_again() {
    told_values_hold(
        "SET datestyle TO 'ISO, DMY';
RESET datestyle;
INSERT INTO items (id, name, day) VALUES (70, 'reset', '03/04/2026');
SET TIME ZONE 'America/New_York';
SET TIME ZONE LOCAL;
INSERT INTO items (id, name, at) VALUES (71, 'local', '2026-01-02 03:04');
BEGIN;
SET datestyle TO 'ISO, DMY';
SET datestyle TO DEFAULT;
INSERT INTO items (id, name, day) VALUES (72, 'default in a block', '05/06/2026');
COMMIT;
SET TimeZone = 'America/New_York';
BEGIN;
RESET TimeZone;
ROLLBACK;
INSERT INTO items (id, name, at) VALUES (73, 'after a rolled-back reset', '2026-01-02 03:04');
BEGIN;
RESET ALL;
ROLLBACK;
INSERT INTO items (id, name, at) VALUES (74, 'after a rolled-back reset all', '2026-01-02 03:04');
",
        &[
            "1|existing||",
            "70|reset||2026-03-04",
            "71|local|2026-01-02 03:04|",
            "72|default in a block||2026-05-06",
            "73|after a rolled-back reset|2026-01-02 08:04|",
            "74|after a rolled-back reset all|2026-01-02 08:04|",
        ],
    )
    .await;
}

/// `RESET ALL` leaves a session's temporary tables: the other side's session keeps its own
/// too, and takes on the told parameters again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_keeps_the_temporary_tables_there() {
    told_values_hold(
        "CREATE TEMPORARY TABLE staged (id int, day date);
INSERT INTO staged VALUES (66, '03/04/2026');
RESET ALL;
INSERT INTO staged VALUES (67, '05/06/2026');
INSERT INTO items (id, name, day) SELECT id, 'staged ' || id, day FROM staged;
",
        &[
            "1|existing||",
            "66|staged 66||2026-03-04",
            "67|staged 67||2026-05-06",
        ],
    )
    .await;
}

/// Review: `SET LOCAL x TO DEFAULT` gives the rest of its transaction the server's default,
/// which on the client's side is the value it was told: the other side must write the rest
/// of the transaction with that value too, not with its own default (new: `SQL, DMY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_set_local_to_default_writes_with_the_told_value_there() {
    told_values_hold(
        "BEGIN;
SET LOCAL datestyle TO DEFAULT;
INSERT INTO items (id, name, day) VALUES (75, 'set local default', '03/04/2026');
COMMIT;
",
        &["1|existing||", "75|set local default||2026-03-04"],
    )
    .await;
}

/// Review: a reset with a comment (a trailing one after `SET x TO DEFAULT`, a leading one
/// before `RESET ALL`, as query tags and connection pools write them) resets as well on the
/// client's side: the other side must take on the told value again (new: `SQL, DMY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_commented_reset_gives_the_other_side_the_told_value_again() {
    told_values_hold(
        "SET datestyle TO 'ISO, DMY';
SET datestyle TO DEFAULT /* back to the login value */;
INSERT INTO items (id, name, day) VALUES (76, 'trailing comment', '03/04/2026');
SET datestyle TO 'ISO, DMY';
/* pool reset */ RESET ALL;
INSERT INTO items (id, name, day) VALUES (77, 'leading comment', '05/06/2026');
",
        &[
            "1|existing||",
            "76|trailing comment||2026-03-04",
            "77|leading comment||2026-05-06",
        ],
    )
    .await;
}

/// Review: `set_config(x, NULL, false)` puts x back to the server's default, as `RESET x`
/// does: the other side must take on the told value again, not its own default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_set_config_to_null_gives_the_other_side_the_told_value_again() {
    told_values_hold(
        "SET datestyle TO 'ISO, DMY';
SELECT set_config('datestyle', NULL, false);
INSERT INTO items (id, name, day) VALUES (78, 'set_config to null', '03/04/2026');
",
        &["1|existing||", "78|set_config to null||2026-03-04"],
    )
    .await;
}

/// One statement a client sends: with the simple protocol (a Query), or the extended one
/// (sqlx prepares it).
enum Sent {
    Simple(&'static str),
    Extended(&'static str),
}

/// Sends `sent` on `conn`; the test fails when it fails.
async fn send(conn: &mut sqlx::PgConnection, sent: &Sent) {
    use sqlx::Executor;
    let sent = match sent {
        Sent::Simple(sql) => conn.execute(*sql).await.map(drop).map_err(|err| (sql, err)),
        Sent::Extended(sql) => sqlx::query(sql)
            .execute(&mut *conn)
            .await
            .map(drop)
            .map_err(|err| (sql, err)),
    };
    if let Err((sql, err)) = sent {
        panic!("{sql}: {err}");
    }
}

/// [`across_a_reconnect_there`] through a `dual-write` proxy over `old` and `new` (its
/// session named `tag` and the proxy's port), then checks both sides end holding `items`.
async fn told_values_hold_across_a_reconnect(
    old: &tandem_testkit::PostgresDb,
    new: &tandem_testkit::PostgresDb,
    tag: &str,
    before: &[Sent],
    after: &[Sent],
    items: &[&str],
) {
    let proxy = Proxy::start("dual-write", &old.url, &new.url, &[]);
    across_a_reconnect_there(&proxy, new, &format!("{tag}-{}", proxy.port), before, after).await;
    assert_carried_over(
        old,
        new,
        &proxy.port,
        &proxy.control,
        &[("public.items", items)],
    )
    .await;
}

/// Runs `before` through the proxy with sqlx (application_name `name`), then a marker insert;
/// once the marker reached new, the session tandem keeps there is ended from outside, so the
/// next transaction goes to a connection opened again and brought to the session's state;
/// then runs `after`.
async fn across_a_reconnect_there(
    proxy: &Proxy,
    new: &tandem_testkit::PostgresDb,
    name: &str,
    before: &[Sent],
    after: &[Sent],
) {
    use sqlx::{Connection, Executor};
    let url = format!("{}?application_name={name}", super::through(&proxy.address));
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    for sent in before {
        send(&mut conn, sent).await;
    }
    conn.execute("INSERT INTO markers VALUES ('before the reconnect')")
        .await
        .unwrap();
    let mut on_new = sqlx::PgConnection::connect(&new.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let arrived: i64 =
            sqlx::query_scalar("SELECT count(*) FROM markers WHERE name = 'before the reconnect'")
                .fetch_one(&mut on_new)
                .await
                .unwrap();
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle'",
        )
        .bind(name)
        .fetch_all(&mut on_new)
        .await
        .unwrap();
        if arrived == 1 && !pids.is_empty() {
            for pid in pids {
                sqlx::query("SELECT pg_terminate_backend($1, 10000)")
                    .bind(pid)
                    .execute(&mut on_new)
                    .await
                    .unwrap();
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the marker or the session there never showed on new"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    on_new.close().await.unwrap();
    for sent in after {
        send(&mut conn, sent).await;
    }
    conn.close().await.unwrap();
}

/// Review: `SELECT set_config('DateStyle', …, false)` is a setting like `SET DateStyle`, and a
/// later `RESET ALL` undoes it on the client's side. A connection the other side opens again
/// (the one before broke) must not get it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_set_config_undone_by_reset_all_stays_undone_on_a_reopened_session() {
    let (old, new) = sides_with_other_defaults_on_new().await;
    told_values_hold_across_a_reconnect(
        &old,
        &new,
        "review14-setcfg",
        &[
            Sent::Simple("SELECT set_config('DateStyle', 'ISO, DMY', false)"),
            Sent::Simple("RESET ALL"),
        ],
        &[Sent::Simple(
            "INSERT INTO items (id, name, day) VALUES (81, 'after a reconnect', '03/04/2026')",
        )],
        &["1|existing||", "81|after a reconnect||2026-03-04"],
    )
    .await;
}

/// Review: `RESET ALL` does not reset the role (`SET ROLE` is not undone by it in
/// PostgreSQL): a connection the other side opens again must go on with that role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_role_kept_through_reset_all_holds_on_a_reopened_session() {
    use sqlx::{Connection, Executor};
    let (old, new) = sides_with_other_defaults_on_new().await;
    for db in [&old, &new] {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        conn.execute("GRANT INSERT, SELECT ON items, markers TO pg_monitor")
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    told_values_hold_across_a_reconnect(
        &old,
        &new,
        "review14-role",
        &[
            Sent::Simple("SET ROLE pg_monitor"),
            Sent::Simple("RESET ALL"),
        ],
        &[Sent::Simple(
            "INSERT INTO items (id, name) VALUES (82, 'written by ' || current_user)",
        )],
        &["1|existing||", "82|written by pg_monitor||"],
    )
    .await;
}

/// Review: a `RESET ALL` the client sends with the extended protocol resets on its side as
/// one sent in a Query does: a connection the other side opens again must have the told
/// IntervalStyle (new's database default is `sql_standard`; sqlx does not set it at login).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_an_extended_reset_all_gives_a_reopened_session_the_told_values() {
    let (old, new) = sides_with_other_defaults_on_new().await;
    told_values_hold_across_a_reconnect(
        &old,
        &new,
        "review14-extreset",
        &[
            Sent::Simple("SET IntervalStyle TO 'iso_8601'"),
            Sent::Extended("RESET ALL"),
        ],
        &[Sent::Simple(
            "INSERT INTO items (id, name) VALUES (83, '1 day 2 hours'::interval::text)",
        )],
        &["1|existing||", "83|1 day 02:00:00||"],
    )
    .await;
}
