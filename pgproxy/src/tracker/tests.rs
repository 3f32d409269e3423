//! The tracker against a model of PostgreSQL's transaction semantics: random sessions of
//! simple and extended requests (inserts, failing statements, settings, `BEGIN`, `COMMIT`,
//! `ROLLBACK`, `AND CHAIN`, savepoints) are answered as a server would, and what the tracker
//! says the other side must run, run on a second model, must leave the same committed rows
//! and the same settings.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

/// A statement of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stmt {
    Insert(u32),
    Fail,
    Set(u32),
    Begin,
    Commit { chain: bool },
    Rollback { chain: bool },
    Savepoint(u8),
    Release(u8),
    RollbackTo(u8),
}

impl Stmt {
    fn sql(&self) -> String {
        match self {
            Stmt::Insert(key) => format!("INSERT INTO t VALUES ({key})"),
            Stmt::Fail => "INSERT INTO t VALUES (0)".to_owned(),
            Stmt::Set(value) => format!("SET x = {value}"),
            Stmt::Begin => "BEGIN".to_owned(),
            Stmt::Commit { chain: false } => "COMMIT".to_owned(),
            Stmt::Commit { chain: true } => "COMMIT AND CHAIN".to_owned(),
            Stmt::Rollback { chain: false } => "ROLLBACK".to_owned(),
            Stmt::Rollback { chain: true } => "ROLLBACK AND CHAIN".to_owned(),
            Stmt::Savepoint(name) => format!("SAVEPOINT s{name}"),
            Stmt::Release(name) => format!("RELEASE SAVEPOINT s{name}"),
            Stmt::RollbackTo(name) => format!("ROLLBACK TO SAVEPOINT s{name}"),
        }
    }
}

/// What a statement did, kept until its transaction ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    Insert(u32),
    Set(u32),
}

/// A transaction block of the model server.
#[derive(Debug, Clone)]
struct Block {
    explicit: bool,
    failed: bool,
    effects: Vec<Effect>,
    savepoints: Vec<(u8, usize)>,
}

/// The server: committed rows, the session's setting, and the block in progress.
#[derive(Debug, Default)]
struct Server {
    committed: BTreeSet<u32>,
    setting: Option<u32>,
    block: Option<Block>,
}

/// One answer to one statement.
enum Answer {
    Tag(String),
    Error(&'static str),
}

impl Server {
    fn commit(&mut self, block: Block) {
        for effect in block.effects {
            match effect {
                Effect::Insert(key) => {
                    self.committed.insert(key);
                }
                Effect::Set(value) => self.setting = Some(value),
            }
        }
    }

    /// Runs one statement inside a request (`implicit`: a transaction started for the
    /// request if none is open).
    fn run(&mut self, stmt: &Stmt) -> Answer {
        if self.block.is_none() {
            self.block = Some(Block {
                explicit: false,
                failed: false,
                effects: Vec::new(),
                savepoints: Vec::new(),
            });
        }
        let Some(block) = self.block.as_mut() else {
            unreachable!()
        };
        if block.failed {
            return match stmt {
                Stmt::Commit { chain } | Stmt::Rollback { chain } => {
                    let explicit = block.explicit;
                    self.block = None;
                    if *chain && explicit {
                        self.begin_chained();
                    }
                    Answer::Tag("ROLLBACK".to_owned())
                }
                Stmt::RollbackTo(name) => {
                    match block.savepoints.iter().rposition(|(n, _)| n == name) {
                        Some(at) => {
                            let mark = block.savepoints[at].1;
                            block.effects.truncate(mark);
                            block.savepoints.truncate(at + 1);
                            block.failed = false;
                            Answer::Tag("ROLLBACK".to_owned())
                        }
                        None => Answer::Error("3B001"),
                    }
                }
                _ => Answer::Error("25P02"),
            };
        }
        match stmt {
            Stmt::Insert(key) => {
                block.effects.push(Effect::Insert(*key));
                Answer::Tag("INSERT 0 1".to_owned())
            }
            Stmt::Set(value) => {
                block.effects.push(Effect::Set(*value));
                Answer::Tag("SET".to_owned())
            }
            Stmt::Fail => {
                block.failed = true;
                Answer::Error("23505")
            }
            Stmt::Begin => {
                block.explicit = true;
                Answer::Tag("BEGIN".to_owned())
            }
            Stmt::Commit { chain } | Stmt::Rollback { chain } => {
                if *chain && !block.explicit {
                    block.failed = true;
                    return Answer::Error("25P01");
                }
                let commit = matches!(stmt, Stmt::Commit { .. });
                let Some(block) = self.block.take() else {
                    unreachable!()
                };
                if commit {
                    self.commit(block);
                }
                if *chain {
                    self.begin_chained();
                }
                Answer::Tag(if commit { "COMMIT" } else { "ROLLBACK" }.to_owned())
            }
            Stmt::Savepoint(name) => {
                if !block.explicit {
                    block.failed = true;
                    return Answer::Error("25P01");
                }
                block.savepoints.push((*name, block.effects.len()));
                Answer::Tag("SAVEPOINT".to_owned())
            }
            Stmt::Release(name) | Stmt::RollbackTo(name) => {
                if !block.explicit {
                    block.failed = true;
                    return Answer::Error("25P01");
                }
                let Some(at) = block.savepoints.iter().rposition(|(n, _)| n == name) else {
                    block.failed = true;
                    return Answer::Error("3B001");
                };
                if matches!(stmt, Stmt::Release(_)) {
                    block.savepoints.truncate(at);
                    Answer::Tag("RELEASE".to_owned())
                } else {
                    let mark = block.savepoints[at].1;
                    block.effects.truncate(mark);
                    block.savepoints.truncate(at + 1);
                    Answer::Tag("ROLLBACK".to_owned())
                }
            }
        }
    }

    fn begin_chained(&mut self) {
        self.block = Some(Block {
            explicit: true,
            failed: false,
            effects: Vec::new(),
            savepoints: Vec::new(),
        });
    }

    /// The end of a request (Query or Sync): an implicit transaction ends; the status.
    fn end_request(&mut self) -> u8 {
        match self.block.take() {
            None => b'I',
            Some(block) if !block.explicit => {
                if !block.failed {
                    self.commit(block);
                }
                b'I'
            }
            Some(block) => {
                let status = if block.failed { b'E' } else { b'T' };
                self.block = Some(block);
                status
            }
        }
    }
}

/// The text of each statement of a session state (an extended one's from its Parse).
/// The kept statements of a session state after `statements`, each sent as a Query.
fn state_after(statements: &[&str]) -> Vec<String> {
    let state = statements
        .iter()
        .fold(SessionState::default(), |state, sql| {
            state.after(StateStatement::Sql((*sql).to_owned()))
        });
    texts(&state)
}

fn texts(state: &SessionState) -> Vec<String> {
    state
        .statements
        .iter()
        .map(|statement| match statement {
            StateStatement::Sql(sql) => sql.clone(),
            StateStatement::Messages(messages) => messages
                .iter()
                .find_map(|message| match Frontend::decode(message) {
                    Frontend::Parse { sql, .. } => Some(sql),
                    _ => None,
                })
                .unwrap_or_default(),
        })
        .collect()
}

fn message(tag: u8, body: &[u8]) -> Message {
    Message {
        tag,
        body: Bytes::copy_from_slice(body),
    }
}

fn cstring(text: &str) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    body
}

fn error(code: &str) -> Message {
    let mut body = Vec::new();
    for (field, value) in [(b'S', "ERROR"), (b'C', code), (b'M', "model")] {
        body.push(field);
        body.extend(cstring(value));
    }
    body.push(0);
    message(b'E', &body)
}

/// A request of a generated session.
#[derive(Debug, Clone)]
enum Request {
    Simple(Vec<Stmt>),
    Extended(Vec<Stmt>),
}

/// Plays `requests` through the model server and the tracker; returns the server and what
/// the tracker finished (the session ends after the last request).
fn play(requests: &[Request]) -> (Server, Vec<Finished>) {
    let mut server = Server::default();
    let mut tracker = TransactionTracker::new(Arc::new(Classifier::default()));
    let mut finished = Vec::new();
    for request in requests {
        match request {
            Request::Simple(statements) => {
                let sql = statements
                    .iter()
                    .map(Stmt::sql)
                    .collect::<Vec<_>>()
                    .join("; ");
                tracker.client(&message(b'Q', &cstring(&sql)));
                for stmt in statements {
                    let answer = server.run(stmt);
                    let done = match answer {
                        Answer::Tag(tag) => {
                            tracker.server(&message(b'C', &cstring(&tag))).unwrap();
                            false
                        }
                        Answer::Error(code) => {
                            tracker.server(&error(code)).unwrap();
                            true
                        }
                    };
                    if done {
                        break;
                    }
                }
                let status = server.end_request();
                tracker.server(&message(b'Z', &[status])).unwrap();
            }
            Request::Extended(statements) => {
                for stmt in statements {
                    let mut parse = cstring("");
                    parse.extend(cstring(&stmt.sql()));
                    parse.extend([0, 0]);
                    tracker.client(&message(b'P', &parse));
                    tracker.client(&message(b'B', b"\0\0\0\0\0\0\0\0"));
                    tracker.client(&message(b'E', b"\0\0\0\0\0"));
                }
                tracker.client(&message(b'S', b""));
                for stmt in statements {
                    tracker.server(&message(b'1', b"")).unwrap();
                    tracker.server(&message(b'2', b"")).unwrap();
                    match server.run(stmt) {
                        Answer::Tag(tag) => {
                            tracker.server(&message(b'C', &cstring(&tag))).unwrap();
                        }
                        Answer::Error(code) => {
                            tracker.server(&error(code)).unwrap();
                            break;
                        }
                    }
                }
                let status = server.end_request();
                tracker.server(&message(b'Z', &[status])).unwrap();
            }
        }
        finished.extend(tracker.take_finished());
    }
    // The session ends: the server rolls back what is open.
    server.block = None;
    tracker.end_session();
    finished.extend(tracker.take_finished());
    (server, finished)
}

/// The other side: runs what the tracker said, as the mirror's plan does.
fn carry(finished: &[Finished]) -> (BTreeSet<u32>, Option<u32>) {
    let mut committed = BTreeSet::new();
    let mut setting = None;
    for transaction in finished {
        let mut effects: Vec<Effect> = Vec::new();
        let mut savepoints: Vec<(String, usize)> = Vec::new();
        for step in &transaction.steps {
            if step.outcome.failure().is_some() {
                // Run inside a savepoint rolled back at once: no effect.
                continue;
            }
            let words: Vec<&str> = step.sql.split_whitespace().collect();
            match words.as_slice() {
                ["INSERT", "INTO", "t", "VALUES", key] => effects.push(Effect::Insert(
                    key.trim_matches(|c| c == '(' || c == ')').parse().unwrap(),
                )),
                ["SET", "x", "=", value] => effects.push(Effect::Set(value.parse().unwrap())),
                ["SAVEPOINT", name] => savepoints.push(((*name).to_owned(), effects.len())),
                ["RELEASE", "SAVEPOINT", name] => {
                    let at = savepoints.iter().rposition(|(n, _)| n == name).unwrap();
                    savepoints.truncate(at);
                }
                ["ROLLBACK", "TO", "SAVEPOINT", name] => {
                    let at = savepoints.iter().rposition(|(n, _)| n == name).unwrap();
                    effects.truncate(savepoints[at].1);
                    savepoints.truncate(at + 1);
                }
                other => panic!("the other side was asked to run {other:?}"),
            }
        }
        if transaction.end == End::Committed {
            for effect in effects {
                match effect {
                    Effect::Insert(key) => {
                        committed.insert(key);
                    }
                    Effect::Set(value) => setting = Some(value),
                }
            }
        }
    }
    (committed, setting)
}

fn statement() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        4 => (1u32..1000).prop_map(Stmt::Insert),
        1 => Just(Stmt::Fail),
        1 => (1u32..100).prop_map(Stmt::Set),
        2 => Just(Stmt::Begin),
        2 => any::<bool>().prop_map(|chain| Stmt::Commit { chain }),
        1 => any::<bool>().prop_map(|chain| Stmt::Rollback { chain }),
        2 => (0u8..2).prop_map(Stmt::Savepoint),
        1 => (0u8..2).prop_map(Stmt::Release),
        2 => (0u8..2).prop_map(Stmt::RollbackTo),
    ]
}

fn extended_statement() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        4 => (1u32..1000).prop_map(Stmt::Insert),
        1 => Just(Stmt::Fail),
        1 => (1u32..100).prop_map(Stmt::Set),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        3 => prop::collection::vec(statement(), 1..4).prop_map(Request::Simple),
        1 => prop::collection::vec(extended_statement(), 1..4).prop_map(Request::Extended),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_other_side_ends_with_what_the_authoritative_side_committed(
        requests in prop::collection::vec(request(), 1..14)
    ) {
        let (server, finished) = play(&requests);
        let (committed, setting) = carry(&finished);
        prop_assert_eq!(&committed, &server.committed, "{:#?}", finished);
        prop_assert_eq!(setting, server.setting);
        // The session's settings as the tracker kept them end with the last committed SET.
        let kept = finished.last().map(|last| texts(&last.state_after)).unwrap_or_default();
        let expected = server.setting.map(|value| format!("SET x = {value}"));
        prop_assert_eq!(kept.last().cloned(), expected);
    }
}

#[test]
fn savepoints_rolled_back_to_are_run_and_undone_there_too() {
    let (server, finished) = play(&[Request::Simple(vec![
        Stmt::Begin,
        Stmt::Insert(1),
        Stmt::Savepoint(0),
        Stmt::Insert(2),
        Stmt::RollbackTo(0),
        Stmt::Insert(3),
        Stmt::Commit { chain: false },
    ])]);
    assert_eq!(server.committed, BTreeSet::from([1, 3]));
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, End::Committed);
    assert_eq!(finished[0].begin.as_deref(), Some("BEGIN"));
    let sql: Vec<&str> = finished[0]
        .steps
        .iter()
        .map(|step| step.sql.as_str())
        .collect();
    assert_eq!(
        sql,
        [
            "INSERT INTO t VALUES (1)",
            "SAVEPOINT s0",
            "INSERT INTO t VALUES (2)",
            "ROLLBACK TO SAVEPOINT s0",
            "INSERT INTO t VALUES (3)"
        ]
    );
}

#[test]
fn a_query_that_commits_then_fails_keeps_the_committed_part() {
    let (_, finished) = play(&[Request::Simple(vec![
        Stmt::Begin,
        Stmt::Insert(30),
        Stmt::Commit { chain: false },
        Stmt::Begin,
        Stmt::Insert(31),
        Stmt::Fail,
    ])]);
    let ends: Vec<&End> = finished
        .iter()
        .map(|transaction| &transaction.end)
        .collect();
    assert_eq!(ends, [&End::Committed, &End::RolledBack]);
    assert_eq!(
        finished[0].steps[0].messages[0].body.as_ref(),
        b"INSERT INTO t VALUES (30)\0"
    );
}

#[test]
fn commit_and_chain_after_an_error_rolls_back_and_opens_the_next() {
    let (server, finished) = play(&[
        Request::Simple(vec![Stmt::Begin]),
        Request::Simple(vec![Stmt::Insert(20)]),
        Request::Simple(vec![Stmt::Fail]),
        Request::Simple(vec![Stmt::Commit { chain: true }]),
        Request::Simple(vec![Stmt::Insert(21)]),
        Request::Simple(vec![Stmt::Commit { chain: false }]),
    ]);
    assert_eq!(server.committed, BTreeSet::from([21]));
    assert_eq!(finished.len(), 2);
    assert_eq!(finished[0].end, End::RolledBack);
    assert_eq!(
        finished[0].failure().map(|step| step.outcome.failure()),
        Some(Some("23505"))
    );
    assert_eq!(finished[1].end, End::Committed);
    assert_eq!(finished[1].begin.as_deref(), Some("BEGIN"));
}

#[test]
fn settings_outside_transactions_are_kept_and_rolled_back_ones_are_not() {
    let (_, finished) = play(&[
        Request::Simple(vec![Stmt::Set(1)]),
        Request::Simple(vec![
            Stmt::Begin,
            Stmt::Set(2),
            Stmt::Rollback { chain: false },
        ]),
        Request::Simple(vec![Stmt::Insert(5)]),
    ]);
    assert!(finished[0].changes_session());
    assert_eq!(texts(&finished[0].state_after), ["SET x = 1"]);
    let last = finished.last().unwrap();
    assert_eq!(texts(&last.state_before), ["SET x = 1"]);
    assert!(!last.changes_session());
}

#[test]
fn an_unnamed_statement_prepared_alone_ran_nothing() {
    let mut tracker = TransactionTracker::new(Arc::new(Classifier::default()));
    let mut parse = cstring("");
    parse.extend(cstring("SELECT 1"));
    parse.extend([0, 0]);
    tracker.client(&message(b'P', &parse));
    tracker.client(&message(b'D', b"S\0"));
    tracker.client(&message(b'S', b""));
    for answer in [
        message(b'1', b""),
        message(b't', b"\0\0"),
        message(b'n', b""),
        message(b'Z', b"I"),
    ] {
        tracker.server(&answer).unwrap();
    }
    assert!(tracker.take_finished().is_empty());
    assert!(tracker.is_idle());
    assert_eq!(
        tracker.server(&message(b'Z', b"I")),
        Err(TrackerError::Unexpected("ReadyForQuery"))
    );
}

#[test]
fn a_query_after_an_unsynced_batch_shares_its_ready_for_query() {
    // asyncpg's prepare(): Parse, Describe, Flush (no Sync); then a simple Query.
    let mut tracker = TransactionTracker::new(Arc::new(Classifier::default()));
    let mut parse = cstring("s1");
    parse.extend(cstring("SELECT v FROM t WHERE id = $1"));
    parse.extend([0, 0]);
    tracker.client(&message(b'P', &parse));
    tracker.client(&message(b'D', b"Ss1\0"));
    tracker.client(&message(b'H', b""));
    for answer in [
        message(b'1', b""),
        message(b't', b"\0\0"),
        message(b'n', b""),
    ] {
        tracker.server(&answer).unwrap();
    }
    for (id, tag) in [(1, "INSERT 0 1"), (2, "INSERT 0 1")] {
        tracker.client(&message(
            b'Q',
            &cstring(&format!("INSERT INTO t VALUES ({id})")),
        ));
        tracker.server(&message(b'C', &cstring(tag))).unwrap();
        tracker.server(&message(b'Z', b"I")).unwrap();
    }
    let finished = tracker.take_finished();
    let sql: Vec<&str> = finished.iter().map(|t| t.steps[0].sql.as_str()).collect();
    assert_eq!(
        sql,
        ["INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"]
    );
    assert!(tracker.is_idle());
}

#[test]
fn prepare_and_deallocate_stand_when_their_transaction_rolls_back() {
    let (_, finished) = play(&[Request::Simple(vec![Stmt::Begin])]);
    assert!(finished.is_empty());
    let mut tracker = TransactionTracker::new(Arc::new(Classifier::default()));
    for (sql, tag, status) in [
        ("BEGIN", "BEGIN", b'T'),
        ("PREPARE p AS SELECT 1", "PREPARE", b'T'),
        ("ROLLBACK", "ROLLBACK", b'I'),
    ] {
        tracker.client(&message(b'Q', &cstring(sql)));
        tracker.server(&message(b'C', &cstring(tag))).unwrap();
        tracker.server(&message(b'Z', &[status])).unwrap();
    }
    assert_eq!(texts(&tracker.state), ["PREPARE p AS SELECT 1"]);
    let finished = tracker.take_finished();
    assert_eq!(finished.len(), 1);
    assert!(
        finished[0].changes_session(),
        "carried even though it rolled back"
    );
}

#[test]
fn a_commit_inside_a_query_ends_its_transaction_before_the_query_ends() {
    let mut tracker = TransactionTracker::new(Arc::new(Classifier::default()));
    tracker.client(&message(
        b'Q',
        &cstring("BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(3)"),
    ));
    for tag in ["BEGIN", "INSERT 0 1", "COMMIT"] {
        tracker.server(&message(b'C', &cstring(tag))).unwrap();
    }
    // The sleep is still running: the committed transaction is out already.
    let finished = tracker.take_finished();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0].end, End::Committed);
    assert_eq!(finished[0].steps[0].sql, "INSERT INTO t VALUES (1)");
    tracker
        .server(&message(b'C', &cstring("SELECT 1")))
        .unwrap();
    tracker.server(&message(b'Z', b"I")).unwrap();
    let rest = tracker.take_finished();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].steps[0].sql, "SELECT pg_sleep(3)");
    assert!(tracker.is_idle());
}

#[test]
fn transaction_local_set_config_is_no_session_setting() {
    assert!(sets_locally("SELECT set_config('app.tenant', '42', true)"));
    assert!(sets_locally("select SET_CONFIG('a', $1, TRUE)"));
    assert!(!sets_locally(
        "SELECT set_config('search_path', 'a', false)"
    ));
    assert!(!sets_locally("SET search_path TO a"));
}

#[test]
fn a_reset_drops_the_settings_it_undoes_and_is_not_kept() {
    assert_eq!(
        state_after(&[
            "SET TimeZone = 'Asia/Tokyo'",
            "PREPARE p AS SELECT 1",
            "SET datestyle TO 'SQL, DMY'",
            "RESET ALL",
        ]),
        ["PREPARE p AS SELECT 1"]
    );
    assert_eq!(
        state_after(&["RESET ALL", "SET datestyle TO 'SQL, DMY'"]),
        ["SET datestyle TO 'SQL, DMY'"]
    );
    assert_eq!(
        state_after(&[
            "SET TIME ZONE 'Asia/Tokyo'",
            "SET datestyle TO 'SQL, DMY'",
            "SET TIME ZONE LOCAL",
        ]),
        ["SET datestyle TO 'SQL, DMY'"]
    );
    assert_eq!(
        state_after(&["SET datestyle TO 'SQL, DMY'", "SET DateStyle TO DEFAULT"]),
        Vec::<String>::new()
    );
    assert_eq!(
        state_after(&["SET search_path = a", "RESET search_path"]),
        Vec::<String>::new()
    );
}

#[test]
fn reset_all_drops_set_config_settings_but_keeps_the_role() {
    assert_eq!(
        state_after(&[
            "SET ROLE pg_monitor",
            "SET SESSION AUTHORIZATION alice",
            "SELECT set_config('datestyle', 'SQL, DMY', false)",
            "/* pool */ RESET ALL",
        ]),
        ["SET ROLE pg_monitor", "SET SESSION AUTHORIZATION alice"]
    );
    assert_eq!(
        state_after(&["SET ROLE pg_monitor", "RESET ROLE"]),
        Vec::<String>::new()
    );
}

#[test]
fn a_setting_repeated_every_request_keeps_one_statement_and_the_earlier_ones() {
    let first = ["PREPARE p AS SELECT 1", "SET ROLE pg_monitor"];
    let state = first
        .iter()
        .map(|sql| (*sql).to_owned())
        .chain(
            (0..2 * MAX_STATE_STATEMENTS)
                .map(|at| format!("SELECT set_config('app.request', '{at}', false)")),
        )
        .fold(SessionState::default(), |state, sql| {
            state.after(StateStatement::Sql(sql))
        });
    let last = format!(
        "SELECT set_config('app.request', '{}', false)",
        2 * MAX_STATE_STATEMENTS - 1
    );
    assert_eq!(texts(&state), [first[0], first[1], last.as_str()]);
}

#[test]
fn an_extended_setting_is_replaced_and_reset_as_a_query_is() {
    let extended = |name: &str, value: &str| crate::baseline::Setting::new(name, value).statement();
    let reset_all = StateStatement::Messages(vec![
        message(b'P', b"\0RESET ALL\0\0\0"),
        // As sqlx binds: one binary format for its (no) parameters.
        message(b'B', b"\0\0\0\x01\0\x01\0\0\0\0"),
        message(b'E', b"\0\0\0\0\0"),
    ]);
    let state = SessionState::default()
        .after(StateStatement::Sql(
            "SET datestyle TO 'SQL, DMY'".to_owned(),
        ))
        .after(extended("DateStyle", "ISO, MDY"));
    assert_eq!(state.statements, [extended("DateStyle", "ISO, MDY")]);
    let state = state
        .after(StateStatement::Sql("SET ROLE pg_monitor".to_owned()))
        .after(reset_all.clone());
    assert_eq!(
        texts(&state),
        ["SET ROLE pg_monitor"],
        "an extended RESET ALL drops the settings and is not kept"
    );
    let state = state
        .after(extended("IntervalStyle", "iso_8601"))
        .after(StateStatement::Sql("RESET intervalstyle".to_owned()));
    assert_eq!(texts(&state), ["SET ROLE pg_monitor"]);
    assert!(state.after(reset_all).statements.len() == 1);
}
