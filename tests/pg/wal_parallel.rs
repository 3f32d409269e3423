//! Several apply sessions at once (`--apply-sessions`, `pgproxy/src/wal/route.rs` and
//! `parallel.rs`) against real PostgreSQL servers: transactions whose rows hash to one
//! worker go to it, the rest (rows of several workers, a table with a second unique index,
//! a table without a key) are applied in order by the main session once the workers caught
//! up. Killed at any moment and restarted with another number of sessions, nothing is lost
//! and nothing applied twice; every row's changes arrive in commit order.

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

use tandem_pgproxy::wal::CaptureState;

use super::wal_apply::{abort_after, scalar, start, start_streaming, Pair};
use super::wal_capture::execute;

/// Both sides' schema: accounts updated in place (their last writer shows the order), a
/// ledger only inserted into and deleted from, a child table with a foreign key, people
/// whose emails move between rows (a second unique index: serial), and a keyless log.
const SCHEMA: &str = "
    CREATE TABLE accounts (id INT PRIMARY KEY, n BIGINT NOT NULL, last TEXT NOT NULL);
    CREATE TABLE ledger (id BIGINT PRIMARY KEY, account INT NOT NULL, amount INT NOT NULL);
    CREATE TABLE notes (id BIGINT PRIMARY KEY, account INT NOT NULL REFERENCES accounts (id),
                        body TEXT);
    CREATE TABLE people (id INT PRIMARY KEY, email TEXT NOT NULL UNIQUE);
    CREATE TABLE trail (at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(), what TEXT);
    ALTER TABLE trail REPLICA IDENTITY FULL;
    CREATE TABLE done (id INT PRIMARY KEY);
    INSERT INTO accounts SELECT i, 0, '' FROM generate_series(1, 300) i;
    INSERT INTO people SELECT i, 'p' || i || '@example.com' FROM generate_series(1, 20) i;
";

const TABLES: [&str; 6] = ["accounts", "ledger", "notes", "people", "trail", "done"];

/// One client's `rounds` of autocommit single-row writes (a worker's), with every few a
/// transfer between two accounts, an email moved to a row another just freed, or a keyless
/// row (serial).
async fn client(url: String, client: i64, rounds: i64) {
    let mut conn = PgConnection::connect(&url).await.unwrap();
    for round in 0..rounds {
        let id = client * 100_000 + round;
        let account = (id * 7_919 + client) % 300 + 1;
        let statement = match round % 10 {
            0 | 4 | 8 => format!(
                "UPDATE accounts SET n = n + 1, last = '{client}:{round}' WHERE id = {account}"
            ),
            1 | 5 => format!("INSERT INTO ledger VALUES ({id}, {account}, {round})"),
            2 => format!("INSERT INTO notes VALUES ({id}, {account}, md5(random()::text))"),
            3 => format!(
                "DELETE FROM ledger WHERE id = {}",
                client * 100_000 + round - 2
            ),
            6 => format!(
                "BEGIN; UPDATE accounts SET n = n - 5 WHERE id = {account}; \
                 UPDATE accounts SET n = n + 5 WHERE id = {}; COMMIT",
                account % 300 + 1
            ),
            7 => {
                let person = (id % 20) + 1;
                format!(
                    "BEGIN; UPDATE people SET email = 'moving' || id WHERE id = {person}; \
                     UPDATE people SET email = 'p{person}@example.com' WHERE id = {}; \
                     UPDATE people SET email = 'p{}@example.com' WHERE id = {person}; COMMIT",
                    person % 20 + 1,
                    person % 20 + 1,
                )
            }
            _ => format!("INSERT INTO trail (what) VALUES ('{client}:{round}')"),
        };
        conn.execute(statement.as_str()).await.unwrap();
    }
    conn.close().await.unwrap();
}

/// Applied by four sessions, killed four times (with 4, 2, 3 and 1 sessions) while eight
/// clients write, then finished by four: every table identical by `tandem compare` (a row
/// lost, or an account's updates applied out of order, shows), no delete applied twice (it
/// would find no row), and the workers did apply (their origins moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_sessions_killed_and_restarted_with_other_numbers_lose_nothing() {
    let pair = Pair::with_room_for_sessions("tandem_apply_par", SCHEMA, &TABLES).await;
    abort_after(pair.with_sessions(4), None).await;
    let mut load = Vec::new();
    for id in 1..=8 {
        load.push(tokio::spawn(client(pair.source.url.clone(), id, 400)));
    }
    let mut statuses = Vec::new();
    for (sessions, pause) in [(4, 900_u64), (2, 500), (3, 1_200), (1, 400)] {
        statuses.push(
            abort_after(
                pair.with_sessions(sessions),
                Some(Duration::from_millis(pause)),
            )
            .await,
        );
    }
    for client in load {
        client.await.unwrap();
    }
    let (task, status, shutdown) = start(pair.with_sessions(4));
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    assert!(
        statuses.iter().any(|killed| killed.transactions > 0),
        "the killed captures applied nothing before dying: {statuses:?}"
    );
    // A change applied twice is invisible in rows carried whole, but for a delete: the
    // second finds no row.
    statuses.push(status.borrow().clone());
    assert!(
        statuses.iter().all(|each| each.absent_rows == 0),
        "a change was applied twice: {statuses:?}"
    );
    let workers_moved = scalar(
        &pair.target.url,
        &format!(
            "SELECT count(*)::text FROM pg_replication_origin_status s \
             JOIN pg_replication_origin o ON o.roident = s.local_id \
             WHERE o.roname LIKE 'tandem\\_{}\\_p4\\_%' AND s.remote_lsn > '0/0'",
            pair.slot_name()
        ),
    )
    .await;
    assert_ne!(workers_moved, "0", "no worker of four applied anything");
    shutdown.cancel();
    task.await.unwrap();
}

/// A serial transaction waits for what the workers were given before it: rounds of an
/// account updated alone (a worker's) and then in a transfer with another account (serial,
/// the last to touch both) end as on the source; had the transfer not waited, the update
/// before it could land after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serial_transactions_wait_for_the_workers_before_them() {
    let pair = Pair::with_room_for_sessions("tandem_apply_order", SCHEMA, &TABLES).await;
    let config = pair.with_sessions(3);
    // Written while no capture runs, so that it reads them back to back.
    abort_after(config.clone(), None).await;
    let mut conn = PgConnection::connect(&pair.source.url).await.unwrap();
    for round in 0..300 {
        let account = round % 7 + 1;
        conn.execute(&*format!(
            "UPDATE accounts SET n = n * 2 + 1, last = 'w{round}' WHERE id = {account}"
        ))
        .await
        .unwrap();
        conn.execute(&*format!(
            "BEGIN; UPDATE accounts SET n = n + 3, last = 's{round}' WHERE id = {account}; \
             UPDATE accounts SET n = n + 1, last = 's{round}' WHERE id = {}; COMMIT",
            account + 100
        ))
        .await
        .unwrap();
    }
    conn.close().await.unwrap();
    let (task, status, shutdown) = start(config);
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    shutdown.cancel();
    task.await.unwrap();
}

/// One worker held up by a lock on the other side does not hold up the others; killed
/// then, and restarted (with as many sessions, then with fewer), the transactions the other
/// workers applied past the held one are not applied again (a delete applied twice finds no
/// row) and the held ones are not lost. The workers' origins are dropped once the slot is
/// past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_a_worker_applied_past_a_held_one_are_not_applied_again() {
    let pair = Pair::with_room_for_sessions("tandem_apply_past", SCHEMA, &TABLES).await;
    execute(
        &pair.source.url,
        "INSERT INTO ledger SELECT i, 1, 0 FROM generate_series(1, 200) i",
    )
    .await;
    execute(
        &pair.target.url,
        "INSERT INTO ledger SELECT i, 1, 0 FROM generate_series(1, 200) i",
    )
    .await;
    for (phase, (held_with, restarted_with)) in [(2_usize, 2_usize), (3, 1)].into_iter().enumerate()
    {
        let (first, last) = (phase * 100 + 1, phase * 100 + 100);
        let account = 50 + phase;
        let (task, _, _shutdown) = start_streaming(pair.with_sessions(held_with)).await;
        // A table lock, which takes no transaction id: a transaction holding one would hold
        // up every slot created on this server meanwhile (other tests' too).
        let mut holder = PgConnection::connect(&pair.target.url).await.unwrap();
        holder
            .execute("BEGIN; LOCK TABLE accounts IN SHARE MODE")
            .await
            .unwrap();
        execute(
            &pair.source.url,
            &format!("UPDATE accounts SET n = n + 1 WHERE id = {account}"),
        )
        .await;
        let mut conn = PgConnection::connect(&pair.source.url).await.unwrap();
        for id in first..=last {
            conn.execute(&*format!("DELETE FROM ledger WHERE id = {id}"))
                .await
                .unwrap();
        }
        conn.close().await.unwrap();
        let left = format!("SELECT count(*)::text FROM ledger WHERE id BETWEEN {first} AND {last}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while scalar(&pair.target.url, &left)
            .await
            .parse::<i64>()
            .unwrap()
            > 80
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the workers not held applied nothing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            scalar(
                &pair.target.url,
                &format!("SELECT n::text FROM accounts WHERE id = {account}")
            )
            .await,
            "0",
            "the held update was applied"
        );
        task.abort();
        let _ = task.await;
        holder.execute("ROLLBACK").await.unwrap();
        let (task, status, shutdown) = start(pair.with_sessions(restarted_with));
        pair.wait_for_done(i32::try_from(phase).unwrap(), &status)
            .await;
        pair.assert_identical();
        let now = status.borrow().clone();
        assert_eq!(now.absent_rows, 0, "a delete was applied twice: {now:?}");
        shutdown.cancel();
        task.await.unwrap();
    }
    // Started again with one session once the slot is past every worker's progress: the
    // workers' origins go (a server keeps only max_replication_slots of them).
    let workers = format!(
        "SELECT count(*)::text FROM pg_replication_origin WHERE roname LIKE 'tandem\\_{}\\_p%'",
        pair.slot_name()
    );
    assert_ne!(scalar(&pair.target.url, &workers).await, "0");
    let (task, _, shutdown) = start_streaming(pair.with_sessions(1)).await;
    assert_eq!(scalar(&pair.target.url, &workers).await, "0");
    shutdown.cancel();
    task.await.unwrap();
}

/// A worker's transaction still committing on the other side when its capture is killed
/// (held by a row lock there, its COMMIT already sent): a capture started again with another
/// number of sessions, whose own sessions would apply that transaction under other origins,
/// waits as a standby while the killed one's session holds its origin, and once that commit
/// lands does not apply it again (a delete applied twice finds no row).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_a_killed_capture_left_in_flight_is_waited_for_not_applied_again() {
    let pair = Pair::with_room_for_sessions("tandem_apply_inflight", SCHEMA, &TABLES).await;
    for side in [&pair.source.url, &pair.target.url] {
        execute(
            side,
            "INSERT INTO ledger SELECT i, 1, 0 FROM generate_series(1, 50) i",
        )
        .await;
    }
    let (task, _, _shutdown) = start_streaming(pair.with_sessions(3)).await;
    // A table lock, which takes no transaction id: a transaction holding one would hold up
    // every slot created on this server meanwhile (other tests' too).
    let mut holder = PgConnection::connect(&pair.target.url).await.unwrap();
    holder
        .execute("BEGIN; LOCK TABLE ledger IN SHARE MODE")
        .await
        .unwrap();
    execute(&pair.source.url, "DELETE FROM ledger WHERE id = 7").await;
    // The capture's session waits on the lock with its COMMIT already sent.
    let waiting = "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = \
                   'tandem capture' AND wait_event_type = 'Lock' \
                   AND datname = current_database()";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while scalar(&pair.target.url, waiting).await != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
    let _ = task.await;
    let (task, status, shutdown) = start(pair.with_sessions(1));
    let mut watched = status.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        watched.wait_for(|now| now.state == CaptureState::Standby),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the new capture did not wait for the commit in flight: {:?}",
            *status.borrow()
        )
    })
    .unwrap();
    holder.execute("ROLLBACK").await.unwrap();
    pair.wait_for_done(1, &status).await;
    pair.assert_identical();
    let now = status.borrow().clone();
    assert_eq!(now.absent_rows, 0, "the delete was applied twice: {now:?}");
    shutdown.cancel();
    task.await.unwrap();
}
