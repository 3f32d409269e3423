//! The transaction tracker: a pure state machine fed a session's client messages and its
//! server's answers, each stream in order, that decides exactly what the other side must run
//! for every transaction the authoritative side ended, and how it must end there.
//!
//! It follows implicit transactions (one Query, or extended messages up to a Sync), explicit
//! blocks (`BEGIN` … `COMMIT`/`ROLLBACK`, `AND CHAIN`, `PREPARE TRANSACTION`), savepoints,
//! statements failing inside blocks, several statements in one Query, pipelined batches and
//! COPY. Each statement the server ran becomes a [`Step`] with the messages that run it alone
//! and how it ended; a transaction ends as a [`Finished`]. Nothing here does I/O, so how
//! steps reach the other side (replayed statements today) is the mirror's business.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::answer::{Answer, MAX_COMPARED_BYTES, MAX_COMPARED_ROWS};
use crate::baseline::{change_of, change_of_bound, kept_by_reset_all, Change, Reset};
use crate::classify::{is_ordered, Classifier};
use crate::messages::{bound, query, Backend, Frontend};
use crate::protocol::Message;
use crate::snapshot::SessionSnapshot;
use crate::statement::{fingerprint, split_statements, statement_kind, StatementKind};

/// How a statement ended on the authoritative side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It completed with this command tag (`INSERT 0 1`; `SUSPENDED` for a portal that
    /// stopped at its row limit).
    Done(String),
    /// It failed.
    Failed {
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
}

impl Outcome {
    /// The SQLSTATE of a failure.
    #[must_use]
    pub fn failure(&self) -> Option<&str> {
        match self {
            Outcome::Done(_) => None,
            Outcome::Failed { code, .. } => Some(code),
        }
    }
}

/// One statement the authoritative side ran, as the other side must run it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The messages that run it alone (a Query; or Parse, Bind, Describe and Execute; then
    /// its COPY data), without a Sync.
    pub messages: Vec<Message>,
    /// Whether it is extended protocol (the other side ends it with a Sync).
    pub extended: bool,
    /// The named prepared statement it runs, with the Parse that made it: the other side
    /// must have it first.
    pub prepared: Option<(String, Message)>,
    /// Its text.
    pub sql: String,
    /// What it does to the transaction or the session.
    pub kind: StatementKind,
    /// Whether it may change data or schema.
    pub write: bool,
    /// How it ended on the authoritative side.
    pub outcome: Outcome,
    /// The rows it returned there (compared with the other side's).
    pub answer: Answer,
}

/// How a transaction ended on the authoritative side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Committed.
    Committed,
    /// Rolled back (by the client, by an error, or because the session ended inside it).
    RolledBack,
    /// Prepared for two-phase commit with this statement.
    Prepared(String),
}

/// One statement of a session's settings, as the other side runs it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStatement {
    /// Its text, run as a Query.
    Sql(String),
    /// The extended-protocol messages that ran it (with its parameters), run with a Sync:
    /// `SELECT set_config('search_path', $1, false)` is no statement on its own.
    Messages(Vec<Message>),
}

impl StateStatement {
    /// What it does to the session's parameters: for messages, their Parse's statement with
    /// its Bind's parameters.
    fn change(&self) -> Option<Change> {
        match self {
            StateStatement::Sql(sql) => change_of(sql),
            StateStatement::Messages(messages) => {
                let sql = messages
                    .iter()
                    .find_map(|message| match Frontend::decode(message) {
                        Frontend::Parse { sql, .. } => Some(sql),
                        _ => None,
                    })?;
                let params = messages
                    .iter()
                    .find(|message| message.tag == b'B')
                    .and_then(bound)?;
                change_of_bound(&sql, &params)
            }
        }
    }
}

/// The settings a session changed that outlive transactions (`SET`, `PREPARE`, …), in the
/// order they were made: a new connection to the other side runs them before anything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The statements, oldest first.
    pub statements: Vec<StateStatement>,
}

/// The most statements a session state keeps; older `SET`s of the same name are replaced.
const MAX_STATE_STATEMENTS: usize = 1_000;

impl SessionState {
    /// The state after `statement` ran and committed.
    fn after(&self, statement: StateStatement) -> SessionState {
        let change = statement.change();
        if change == Some(Change::DiscardAll) {
            return SessionState::default();
        }
        let mut statements = self.statements.clone();
        // `RESET ALL` undoes every setting before it but the role and the authorization; a
        // setting or reset of x replaces what was said of x before. A reset is not kept: a
        // connection brought to the state starts from the client's parameters (its
        // baseline), which is what a reset gives back.
        match &change {
            Some(Change::Reset {
                reset: Reset::All,
                local: false,
            }) => statements.retain(|earlier| {
                earlier
                    .change()
                    .and_then(|earlier| earlier.session_name().map(str::to_owned))
                    .is_none_or(|name| kept_by_reset_all(&name))
            }),
            _ => {
                if let Some(name) = change.as_ref().and_then(Change::session_name) {
                    statements.retain(|earlier| {
                        earlier
                            .change()
                            .is_none_or(|earlier| earlier.session_name() != Some(name))
                    });
                }
                if !matches!(change, Some(Change::Reset { .. })) {
                    statements.push(statement);
                }
            }
        }
        if statements.len() > MAX_STATE_STATEMENTS {
            statements.remove(0);
        }
        SessionState { statements }
    }
}

/// A transaction the authoritative side ended: what the other side must run, and how.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The client's `BEGIN` (with its isolation level), or `None` for an implicit transaction.
    pub begin: Option<String>,
    /// Its statements, in order: those that completed, savepoint commands, and the first
    /// statement that failed after each point the transaction was healthy (the rest failed
    /// only because it had).
    pub steps: Vec<Step>,
    /// How it ended.
    pub end: End,
    /// Whether every returned row was kept (answers too large are not compared).
    pub answers_complete: bool,
    /// The session's settings when it began.
    pub state_before: Arc<SessionState>,
    /// The session's settings after it ended.
    pub state_after: Arc<SessionState>,
    /// When the authoritative side ended it.
    pub finished_at: Instant,
}

impl Finished {
    /// Whether a statement of it may have changed data or schema.
    #[must_use]
    pub fn writes(&self) -> bool {
        self.steps.iter().any(|step| step.write)
    }

    /// Whether it changed the session's settings (they outlive it).
    #[must_use]
    pub fn changes_session(&self) -> bool {
        !Arc::ptr_eq(&self.state_before, &self.state_after)
    }

    /// The first statement that failed, if one did.
    #[must_use]
    pub fn failure(&self) -> Option<&Step> {
        self.steps
            .iter()
            .find(|step| step.outcome.failure().is_some())
    }

    /// A literal-free fingerprint of its first write (its first statement when it wrote
    /// nothing), for records.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        self.steps
            .iter()
            .find(|step| step.write)
            .or_else(|| self.steps.first())
            .map(|step| fingerprint(&step.sql))
            .unwrap_or_default()
    }
}

/// A named or unnamed prepared statement the session has.
#[derive(Debug, Clone)]
struct Prepared {
    sql: String,
    parse: Message,
}

/// A portal the session has bound.
#[derive(Debug, Clone)]
struct Portal {
    statement: String,
    bind: Message,
    /// Its Describe and the column types it answered.
    describe: Option<(Message, Vec<Vec<u32>>)>,
    /// Whether an execution of it was already made a step (its Bind went with that one).
    carried: bool,
}

/// The answers one statement or extended message got so far.
#[derive(Debug, Default)]
struct Result {
    outcome: Option<Outcome>,
    answer: Answer,
    copy_in: bool,
}

/// One extended-protocol message awaiting its answer.
#[derive(Debug)]
struct Item {
    message: Message,
    frontend: Frontend,
    result: Result,
}

/// A client request awaiting the server's answers.
#[derive(Debug)]
enum Request {
    /// A simple Query: its statements and their results.
    Query {
        message: Message,
        sql: String,
        results: Vec<Result>,
        copy: Vec<Message>,
        /// Statements already resolved, when a COMMIT or ROLLBACK among them ended a
        /// transaction before the Query's end (it goes to the other side at once).
        done: usize,
    },
    /// Extended messages up to a Sync.
    Extended {
        items: Vec<Item>,
        /// The next item to be answered.
        cursor: usize,
        /// An item failed: the server skips the rest until the Sync.
        failed: bool,
        synced: bool,
        /// A second Sync, sent after the COPY data that followed the first (which the
        /// server ignored in copy-in mode), was merged into this request.
        copy_synced: bool,
        /// A Query or FunctionCall followed it without a Sync: the server runs it in the same
        /// implicit transaction, and its one ReadyForQuery answers both.
        shares_ready: bool,
        copy: Vec<Message>,
    },
    /// A fast-path function call.
    Function { message: Message, result: Result },
}

/// The block the session is in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    /// A transaction that ends with its Query or Sync unless a `BEGIN` makes it a block.
    Implicit,
    /// `BEGIN` (this text) … `COMMIT`/`ROLLBACK`.
    Explicit(String),
}

/// The transaction in progress.
#[derive(Debug)]
struct Open {
    block: Block,
    steps: Vec<Step>,
    failed: bool,
    /// Savepoints, with how many session statements had been made when each was set.
    savepoints: Vec<(String, usize)>,
    /// Session statements made in it (kept only if it commits).
    session: Vec<StateStatement>,
    state_before: Arc<SessionState>,
}

/// Why the tracker cannot follow a session any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The server answered something no request was waiting for.
    #[error("the server answered {0} with no request waiting for it")]
    Unexpected(&'static str),
}

/// Follows one session's transactions (see the module documentation).
#[derive(Debug)]
pub struct TransactionTracker {
    classifier: Arc<Classifier>,
    requests: VecDeque<Request>,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    open: Option<Open>,
    state: Arc<SessionState>,
    finished: Vec<Finished>,
    /// Rows and bytes of answers kept in the transaction in progress.
    held: (usize, usize),
    answers_complete: bool,
}

impl TransactionTracker {
    /// A tracker for a session that starts idle, classifying statements with `classifier`.
    #[must_use]
    pub fn new(classifier: Arc<Classifier>) -> TransactionTracker {
        TransactionTracker {
            classifier,
            requests: VecDeque::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            open: None,
            state: Arc::new(SessionState::default()),
            finished: Vec::new(),
            held: (0, 0),
            answers_complete: true,
        }
    }

    /// A tracker for a session that was not followed from its start: it begins with the
    /// settings and prepared statements the session already had.
    #[must_use]
    pub fn resumed(classifier: Arc<Classifier>, snapshot: SessionSnapshot) -> TransactionTracker {
        let mut tracker = TransactionTracker::new(classifier);
        tracker.state = Arc::new(snapshot.state);
        for (name, parse) in snapshot.statements {
            let sql = match Frontend::decode(&parse) {
                Frontend::Parse { sql, .. } => sql,
                _ => String::new(),
            };
            tracker.statements.insert(name, Prepared { sql, parse });
        }
        tracker
    }

    /// Whether every request was answered and no transaction is open.
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty() && self.open.is_none()
    }

    /// Whether a request still awaits its answers (or extended messages their Sync).
    #[must_use]
    pub fn awaits_answers(&self) -> bool {
        !self.requests.is_empty()
    }

    /// Takes the transactions ended so far, oldest first.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// A message the client sent (and tandem passed on to the server).
    pub fn client(&mut self, message: &Message) {
        let frontend = Frontend::decode(message);
        if matches!(frontend, Frontend::Query { .. } | Frontend::FunctionCall) {
            if let Some(Request::Extended {
                synced: synced @ false,
                shares_ready,
                ..
            }) = self.requests.back_mut()
            {
                *synced = true;
                *shares_ready = true;
            }
        }
        match frontend {
            Frontend::Query { sql } => self.requests.push_back(Request::Query {
                message: message.clone(),
                sql,
                results: Vec::new(),
                copy: Vec::new(),
                done: 0,
            }),
            Frontend::FunctionCall => self.requests.push_back(Request::Function {
                message: message.clone(),
                result: Result::default(),
            }),
            Frontend::Copy => {
                if let Some(Request::Query { copy, .. } | Request::Extended { copy, .. }) =
                    self.requests.back_mut()
                {
                    copy.push(message.clone());
                }
            }
            Frontend::Sync => match self.requests.back_mut() {
                Some(Request::Extended { synced, .. }) if !*synced => *synced = true,
                Some(Request::Extended {
                    synced: true,
                    copy_synced,
                    copy,
                    ..
                }) if !*copy_synced
                    && copy
                        .last()
                        .is_some_and(|last| matches!(last.tag, b'c' | b'f')) =>
                {
                    *copy_synced = true;
                }
                _ => self.requests.push_back(Request::Extended {
                    items: Vec::new(),
                    cursor: 0,
                    failed: false,
                    synced: true,
                    copy_synced: false,
                    shares_ready: false,
                    copy: Vec::new(),
                }),
            },
            Frontend::Flush | Frontend::Terminate | Frontend::Other(_) => {}
            Frontend::Parse { .. }
            | Frontend::Bind { .. }
            | Frontend::Describe { .. }
            | Frontend::Execute { .. }
            | Frontend::Close { .. } => {
                let item = Item {
                    message: message.clone(),
                    frontend,
                    result: Result::default(),
                };
                match self.requests.back_mut() {
                    Some(Request::Extended {
                        items,
                        synced: false,
                        ..
                    }) => items.push(item),
                    _ => self.requests.push_back(Request::Extended {
                        items: vec![item],
                        cursor: 0,
                        failed: false,
                        synced: false,
                        copy_synced: false,
                        shares_ready: false,
                        copy: Vec::new(),
                    }),
                }
            }
        }
    }

    /// A message the server sent.
    ///
    /// # Errors
    /// When it answers no request (the tracker has lost the session's thread).
    pub fn server(&mut self, message: &Message) -> std::result::Result<(), TrackerError> {
        let backend = Backend::decode(message);
        if let Backend::Ready { status } = backend {
            let Some(request) = self.requests.pop_front() else {
                return Err(TrackerError::Unexpected("ReadyForQuery"));
            };
            let shared = matches!(
                request,
                Request::Extended {
                    shares_ready: true,
                    ..
                }
            );
            self.resolve(request, true);
            if shared {
                if let Some(next) = self.requests.pop_front() {
                    self.resolve(next, true);
                }
            }
            self.reconcile(status);
            return Ok(());
        }
        if backend == Backend::Other {
            return Ok(());
        }
        // Answers past an unsynced batch's last message belong to the Query that followed it.
        let skip = usize::from(matches!(
            self.requests.front(),
            Some(Request::Extended { shares_ready: true, items, cursor, failed, .. })
                if *failed || *cursor >= items.len()
        ));
        let Some(request) = self.requests.get_mut(skip) else {
            // A FATAL error as the server ends the session is answered to nobody.
            return match backend {
                Backend::Error { .. } => Ok(()),
                _ => Err(TrackerError::Unexpected("a message")),
            };
        };
        let (held, complete) = (&mut self.held, &mut self.answers_complete);
        let mut early = false;
        match request {
            Request::Query {
                results, sql, done, ..
            } => {
                if backend == Backend::EmptyQuery {
                    return Ok(());
                }
                let current = match results.last_mut() {
                    Some(result) if result.outcome.is_none() => result,
                    _ => {
                        results.push(Result::default());
                        results
                            .last_mut()
                            .ok_or(TrackerError::Unexpected("a message"))?
                    }
                };
                record(current, &backend, message, held, complete);
                // A transaction that ends before its Query does goes to the other side now,
                // in the order the server ended it, not after the rest of the Query.
                let ends = matches!(&backend, Backend::CommandComplete { tag }
                    if matches!(tag.as_str(), "COMMIT" | "ROLLBACK" | "PREPARE TRANSACTION"));
                if ends && skip == 0 {
                    let index = *done + results.len() - 1;
                    let statements = split_statements(sql);
                    early = index + 1 < statements.len()
                        && matches!(
                            statements.get(index).map(|text| statement_kind(text)),
                            Some(
                                StatementKind::Commit { .. }
                                    | StatementKind::Rollback { .. }
                                    | StatementKind::PrepareTransaction
                            )
                        );
                }
            }
            Request::Function { result, .. } => {
                if backend == Backend::FunctionResult {
                    result.outcome = Some(Outcome::Done("FunctionCall".to_owned()));
                } else {
                    record(result, &backend, message, held, complete);
                }
            }
            Request::Extended {
                items,
                cursor,
                failed,
                ..
            } => {
                if *failed {
                    return Ok(());
                }
                let Some(item) = items.get_mut(*cursor) else {
                    return Err(TrackerError::Unexpected("an extended-protocol answer"));
                };
                let completes = match backend {
                    Backend::ParameterDescription
                    | Backend::DataRow
                    | Backend::CopyIn
                    | Backend::CopyOut => false,
                    Backend::RowDescription => {
                        matches!(item.frontend, Frontend::Describe { .. })
                    }
                    Backend::Error { .. } => {
                        *failed = true;
                        true
                    }
                    _ => true,
                };
                record(&mut item.result, &backend, message, held, complete);
                if completes {
                    if item.result.outcome.is_none() {
                        item.result.outcome = Some(Outcome::Done(String::new()));
                    }
                    *cursor += 1;
                }
            }
        }
        if early {
            self.resolve_query_prefix();
        }
        Ok(())
    }

    /// The session ended (either end left): what the server had answered counts, and a
    /// transaction still open was rolled back by the server.
    pub fn end_session(&mut self) {
        while let Some(request) = self.requests.pop_front() {
            self.resolve(request, false);
        }
        if let Some(open) = self.open.take() {
            self.finish(open, End::RolledBack);
        }
    }

    /// Turns an answered request into steps and applies them to the transaction.
    /// `answered` when the server answered it to its ReadyForQuery (otherwise the session
    /// ended first, and only what was answered ran).
    fn resolve(&mut self, request: Request, answered_fully: bool) {
        match request {
            Request::Query {
                message,
                sql,
                results,
                copy,
                done,
            } => {
                let mut copies = copy_groups(copy);
                let all = split_statements(&sql);
                let statements = all.get(done..).unwrap_or_default();
                // Its own message stands for the statement only when it is the whole Query.
                let single = all.len() == 1;
                let answered: Vec<Result> = results
                    .into_iter()
                    .filter(|result| result.outcome.is_some())
                    .collect();
                let aligned = answered.len() == statements.len()
                    || (answered.len() < statements.len()
                        && answered
                            .last()
                            .is_some_and(|last| matches!(last.outcome, Some(Outcome::Failed { .. }))))
                    // The server stopped answering (the session ended).
                    || (!answered_fully && answered.len() < statements.len());
                if statements.is_empty() {
                    return;
                }
                if !aligned {
                    metrics::counter!("tandem_pg_unsplit_queries_total").increment(1);
                    tracing::warn!(
                        statements = statements.len(),
                        answers = answered.len(),
                        "a query's statements could not be matched with their answers; it is carried whole"
                    );
                    let outcome = answered
                        .iter()
                        .filter_map(|result| result.outcome.clone())
                        .find(|outcome| outcome.failure().is_some())
                        .or_else(|| answered.last().and_then(|result| result.outcome.clone()))
                        .unwrap_or_else(|| Outcome::Done(String::new()));
                    let mut messages = vec![message];
                    messages.extend(copies.flatten());
                    let step = Step {
                        messages,
                        extended: false,
                        prepared: None,
                        // What it did is unknown: carried as a write, never skipped.
                        write: true,
                        kind: StatementKind::Other,
                        answer: Answer::default(),
                        outcome,
                        sql,
                    };
                    self.apply(step);
                    return;
                }
                for (text, result) in statements.iter().zip(answered) {
                    let Some(outcome) = result.outcome else {
                        continue;
                    };
                    let mut messages = vec![if single { message.clone() } else { query(text) }];
                    if result.copy_in {
                        messages.extend(copies.next().unwrap_or_default());
                    }
                    let mut answer = result.answer;
                    answer.ordered = is_ordered(text);
                    let step = Step {
                        messages,
                        extended: false,
                        prepared: None,
                        sql: (*text).to_owned(),
                        kind: statement_kind(text),
                        write: self.classifier.is_write(text),
                        outcome,
                        answer,
                    };
                    self.apply(step);
                }
            }
            Request::Function { message, result } => {
                if let Some(outcome) = result.outcome {
                    self.apply(Step {
                        messages: vec![message],
                        extended: false,
                        prepared: None,
                        sql: "FunctionCall".to_owned(),
                        kind: StatementKind::Other,
                        write: true,
                        outcome,
                        answer: result.answer,
                    });
                }
            }
            Request::Extended { items, copy, .. } => {
                let mut copies = copy_groups(copy);
                for item in items {
                    let Some(outcome) = item.result.outcome else {
                        break;
                    };
                    let failed = outcome.failure().is_some();
                    match item.frontend {
                        Frontend::Parse { name, sql } if !failed => {
                            self.statements.insert(
                                name,
                                Prepared {
                                    sql,
                                    parse: item.message,
                                },
                            );
                        }
                        Frontend::Bind { portal, statement } if !failed => {
                            self.portals.insert(
                                portal,
                                Portal {
                                    statement,
                                    bind: item.message,
                                    describe: None,
                                    carried: false,
                                },
                            );
                        }
                        Frontend::Close { portal, name } if !failed => {
                            if portal {
                                self.portals.remove(&name);
                            } else {
                                self.statements.remove(&name);
                            }
                        }
                        // A portal's description goes with its first execution there.
                        Frontend::Describe { portal: true, name } if !failed => {
                            if let Some(portal) = self.portals.get_mut(&name) {
                                portal.describe = Some((item.message, item.result.answer.types));
                            }
                        }
                        Frontend::Describe { .. } if !failed => {}
                        Frontend::Execute { portal } => {
                            let step = self.execution(
                                &portal,
                                item.message,
                                item.result.answer,
                                outcome,
                                item.result.copy_in.then(|| copies.next()).flatten(),
                            );
                            self.apply(step);
                        }
                        // A failed Parse, Bind, Describe or Close ran nothing, but fails the
                        // transaction.
                        _ => self.fail_without_step(),
                    }
                }
            }
        }
    }

    /// Resolves the statements of the Query in progress answered so far (the last of them
    /// ended a transaction); the rest stays to be answered.
    fn resolve_query_prefix(&mut self) {
        let Some(Request::Query {
            message,
            sql,
            results,
            mut copy,
            done,
        }) = self.requests.pop_front()
        else {
            return;
        };
        // The COPY data of the statements resolved now: one group per COPY among them.
        let mut groups = results.iter().filter(|result| result.copy_in).count();
        let mut taken = 0;
        while groups > 0 && taken < copy.len() {
            if matches!(copy[taken].tag, b'c' | b'f') {
                groups -= 1;
            }
            taken += 1;
        }
        let rest = copy.split_off(taken);
        let answered = results.len();
        self.resolve(
            Request::Query {
                message: message.clone(),
                sql: sql.clone(),
                results,
                copy,
                done,
            },
            false,
        );
        self.requests.push_front(Request::Query {
            message,
            sql,
            results: Vec::new(),
            copy: rest,
            done: done + answered,
        });
    }

    /// The step of one Execute of `portal`.
    fn execution(
        &mut self,
        portal: &str,
        execute: Message,
        mut answer: Answer,
        outcome: Outcome,
        copy: Option<Vec<Message>>,
    ) -> Step {
        let mut messages = Vec::new();
        let mut prepared = None;
        let mut sql = String::new();
        if let Some(bound) = self.portals.get_mut(portal) {
            if let Some(statement) = self.statements.get(&bound.statement) {
                sql.clone_from(&statement.sql);
                if bound.statement.is_empty() {
                    if !bound.carried {
                        messages.push(statement.parse.clone());
                    }
                } else {
                    prepared = Some((bound.statement.clone(), statement.parse.clone()));
                }
            }
            if !bound.carried {
                messages.push(bound.bind.clone());
                if let Some((describe, types)) = &bound.describe {
                    messages.push(describe.clone());
                    answer.types.clone_from(types);
                }
                bound.carried = true;
            }
        }
        messages.push(execute);
        messages.extend(copy.unwrap_or_default());
        answer.ordered = is_ordered(&sql);
        let (kind, write) = if sql.is_empty() {
            (StatementKind::Other, true)
        } else {
            (statement_kind(&sql), self.classifier.is_write(&sql))
        };
        Step {
            messages,
            extended: true,
            prepared,
            sql,
            kind,
            write,
            outcome,
            answer,
        }
    }

    /// The open transaction, or a new implicit one.
    fn open(&mut self) -> &mut Open {
        let state = &self.state;
        self.open.get_or_insert_with(|| Open {
            block: Block::Implicit,
            steps: Vec::new(),
            failed: false,
            savepoints: Vec::new(),
            session: Vec::new(),
            state_before: Arc::clone(state),
        })
    }

    fn fail_without_step(&mut self) {
        self.open().failed = true;
    }

    /// Applies one statement's outcome to the transaction.
    fn apply(&mut self, step: Step) {
        if step.outcome.failure().is_some() {
            let controls = matches!(
                step.kind,
                StatementKind::Begin
                    | StatementKind::Commit { .. }
                    | StatementKind::Rollback { .. }
                    | StatementKind::PrepareTransaction
            );
            let open = self.open();
            // Only the first failure since the transaction was last healthy ran anything.
            if !open.failed && !controls {
                open.steps.push(step);
            }
            open.failed = true;
            return;
        }
        let tag = match &step.outcome {
            Outcome::Done(tag) => tag.clone(),
            Outcome::Failed { .. } => String::new(),
        };
        match step.kind.clone() {
            StatementKind::Begin => {
                let open = self.open();
                if open.block == Block::Implicit {
                    open.block = Block::Explicit(step.sql);
                }
            }
            StatementKind::Commit { chain } | StatementKind::Rollback { chain } => {
                let Some(open) = self.open.take() else {
                    return;
                };
                let committed = matches!(step.kind, StatementKind::Commit { .. })
                    && tag == "COMMIT"
                    && !open.failed;
                let begin = match &open.block {
                    Block::Explicit(begin) => begin.clone(),
                    Block::Implicit => "BEGIN".to_owned(),
                };
                self.finish(
                    open,
                    if committed {
                        End::Committed
                    } else {
                        End::RolledBack
                    },
                );
                if chain {
                    self.open().block = Block::Explicit(begin);
                }
            }
            StatementKind::PrepareTransaction => {
                let Some(open) = self.open.take() else {
                    return;
                };
                let end = if tag == "PREPARE TRANSACTION" && !open.failed {
                    End::Prepared(step.sql)
                } else {
                    End::RolledBack
                };
                self.finish(open, end);
            }
            StatementKind::Savepoint(name) => {
                let open = self.open();
                let mark = open.session.len();
                open.savepoints.push((name, mark));
                open.steps.push(step);
            }
            StatementKind::Release(name) => {
                let open = self.open();
                if let Some(at) = open.savepoints.iter().rposition(|(set, _)| *set == name) {
                    open.savepoints.truncate(at);
                }
                open.steps.push(step);
            }
            StatementKind::RollbackTo(name) => {
                let open = self.open();
                if let Some(at) = open.savepoints.iter().rposition(|(set, _)| *set == name) {
                    let mark = open.savepoints[at].1;
                    open.session.truncate(mark);
                    open.savepoints.truncate(at + 1);
                }
                open.failed = false;
                open.steps.push(step);
            }
            StatementKind::SessionState if sets_locally(&step.sql) => self.open().steps.push(step),
            StatementKind::SessionState => {
                let upper = step.sql.trim_start().to_ascii_uppercase();
                if upper.starts_with("PREPARE") || upper.starts_with("DEALLOCATE") {
                    // Not transactional: it stands whatever becomes of the transaction (which
                    // began before it).
                    self.open();
                    self.state = Arc::new(self.state.after(state_statement(&step)));
                    self.open().steps.push(step);
                } else {
                    let open = self.open();
                    open.session.push(state_statement(&step));
                    open.steps.push(step);
                }
            }
            StatementKind::Other => self.open().steps.push(step),
        }
    }

    /// Brings the model in line with the transaction status the server reported.
    fn reconcile(&mut self, status: u8) {
        match status {
            b'T' | b'E' => {
                let open = self.open();
                if open.block == Block::Implicit {
                    open.block = Block::Explicit("BEGIN".to_owned());
                }
                if status == b'E' {
                    open.failed = true;
                }
            }
            _ => {
                if let Some(open) = self.open.take() {
                    if matches!(open.block, Block::Explicit(_)) {
                        tracing::warn!("the server ended a transaction tandem saw no end of");
                    }
                    let end = if open.failed {
                        End::RolledBack
                    } else {
                        End::Committed
                    };
                    self.finish(open, end);
                }
            }
        }
    }

    /// Ends the open transaction.
    fn finish(&mut self, open: Open, end: End) {
        // The state now: what the transaction began with, and what non-transactional
        // statements (PREPARE, DEALLOCATE) did during it.
        let state_after = if end == End::RolledBack || open.session.is_empty() {
            Arc::clone(&self.state)
        } else {
            let mut state = (*self.state).clone();
            for sql in &open.session {
                state = state.after(sql.clone());
            }
            Arc::new(state)
        };
        self.state = Arc::clone(&state_after);
        // Portals live no longer than their transaction.
        self.portals.clear();
        let answers_complete = std::mem::replace(&mut self.answers_complete, true);
        self.held = (0, 0);
        if open.steps.is_empty() {
            return;
        }
        self.finished.push(Finished {
            begin: match open.block {
                Block::Explicit(begin) => Some(begin),
                Block::Implicit => None,
            },
            steps: open.steps,
            end,
            answers_complete,
            state_before: open.state_before,
            state_after,
            finished_at: Instant::now(),
        });
    }
}

/// Whether `sql` only calls `set_config(…, true)`: a setting for the transaction alone.
fn sets_locally(sql: &str) -> bool {
    let compact: String = sql
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let calls = compact.matches("set_config(").count();
    calls > 0 && compact.matches(",true)").count() >= calls
}

/// How a session-setting step is run again: its text, or (extended protocol, whose text may
/// have parameters) its messages with the statement they need.
fn state_statement(step: &Step) -> StateStatement {
    if !step.extended {
        return StateStatement::Sql(step.sql.clone());
    }
    let mut messages = Vec::with_capacity(step.messages.len() + 2);
    if let Some((name, parse)) = &step.prepared {
        messages.push(crate::messages::close_statement(name));
        messages.push(parse.clone());
    }
    messages.extend(step.messages.iter().cloned());
    StateStatement::Messages(messages)
}

/// Records one answer in a statement's (or message's) result.
fn record(
    result: &mut Result,
    backend: &Backend,
    message: &Message,
    held: &mut (usize, usize),
    complete: &mut bool,
) {
    match backend {
        Backend::RowDescription => result.answer.describe(&message.body),
        Backend::DataRow => {
            if held.0 < MAX_COMPARED_ROWS && held.1 + message.body.len() <= MAX_COMPARED_BYTES {
                held.0 += 1;
                held.1 += message.body.len();
                result.answer.rows.push(message.body.clone());
            } else {
                *complete = false;
            }
        }
        Backend::CommandComplete { tag } => result.outcome = Some(Outcome::Done(tag.clone())),
        Backend::PortalSuspended => result.outcome = Some(Outcome::Done("SUSPENDED".to_owned())),
        Backend::EmptyQuery => result.outcome = Some(Outcome::Done(String::new())),
        Backend::Error { code, message } => {
            result.outcome = Some(Outcome::Failed {
                code: code.clone(),
                message: message.clone(),
            });
        }
        Backend::CopyIn => result.copy_in = true,
        _ => {}
    }
}

/// COPY data split at each CopyDone or CopyFail: one group per COPY FROM STDIN.
fn copy_groups(copy: Vec<Message>) -> impl Iterator<Item = Vec<Message>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    for message in copy {
        let ends = matches!(message.tag, b'c' | b'f');
        group.push(message);
        if ends {
            groups.push(std::mem::take(&mut group));
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups.into_iter()
}

#[cfg(test)]
mod tests;
