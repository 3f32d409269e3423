//! What the other side runs for a transaction the authoritative side ended, and how its
//! answers are judged: the statements that completed, in order, inside the client's own
//! `BEGIN` and ending as the authoritative side's did; a statement that failed there runs
//! inside a savepoint rolled back at once (so what it consumed, sequences included, is
//! consumed alike, and an outcome only one side had is seen), unless it was cancelled, timed
//! out, deadlocked or failed to serialize, which is not run again.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use tandem_control::Side;
use tokio::io::AsyncWriteExt;

use crate::answer::{Answer, MAX_COMPARED_BYTES, MAX_COMPARED_ROWS};
use crate::baseline::{change_of, Change, Reset, Setting};
use crate::messages::{bare, close_statement, query, Backend};
use crate::protocol::{put_message, read_message};
use crate::statement::StatementKind;
use crate::stream::ServerStream;
use crate::tracker::{End, Finished, Outcome, SessionState, StateStatement};

/// Why the transaction goes to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To apply it (writes, session settings, or a rollback whose sequence use must match).
    Apply,
    /// To compare a read-only transaction's answers; it always rolls back there.
    Compare,
}

/// The savepoint a failed statement runs inside on the other side.
const FAILED_SAVEPOINT: &str = "tandem_failed_statement";

/// Whether a failure with this SQLSTATE came from the circumstances of the authoritative
/// side (a cancel, a timeout, a deadlock, a serialization failure, a lock not available,
/// the server going away) rather than from the statement and its data: it is not run again
/// on the other side and is no mismatch.
#[must_use]
pub fn is_circumstantial(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03" | "57014" | "25P02")
        || code.starts_with("57P")
        || code.starts_with("53")
        || code.starts_with("58")
        || code.starts_with("08")
        || code.starts_with("XX")
}

/// Whether PostgreSQL refuses to run `sql` inside a transaction block.
fn runs_outside_blocks(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(4)
        .map(str::to_ascii_uppercase)
        .collect();
    let word = |index: usize| words.get(index).map_or("", String::as_str);
    match word(0) {
        "VACUUM" | "ALTER" if word(0) == "VACUUM" || word(1) == "SYSTEM" => true,
        "CREATE" | "DROP" => {
            matches!(word(1), "DATABASE" | "TABLESPACE")
                || words.iter().any(|word| word == "CONCURRENTLY")
        }
        "REINDEX" => words.iter().any(|word| word == "CONCURRENTLY") || word(1) == "SYSTEM",
        _ => false,
    }
}

/// Whether a statement that committed alone may run inside a block there, so that what became
/// of it is known even when the connection breaks as it commits: the data-changing statements
/// (not `CALL` or `DO`, which may end transactions themselves, nor DDL, some of which cannot
/// run in a block).
fn runs_in_a_block(sql: &str) -> bool {
    let first = sql
        .split(|c: char| c.is_whitespace() || c == '(')
        .find(|word| !word.is_empty())
        .unwrap_or_default()
        .to_ascii_uppercase();
    matches!(
        first.as_str(),
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "WITH" | "SELECT" | "TRUNCATE" | "COPY"
    )
}

/// What tandem asks the other side, just before a mirrored write commits there, so that a
/// connection that breaks as it commits can be told whether it did.
const XID: &str = "SELECT pg_catalog.pg_current_xact_id()";

/// A CopyFail message.
fn copy_fail() -> crate::protocol::Message {
    crate::protocol::Message {
        tag: b'f',
        body: Bytes::from_static(b"tandem: the COPY failed on the authoritative side\0"),
    }
}

/// What a round's answers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// tandem's own statement (`BEGIN`, the end, savepoints, settings).
    Control,
    /// The transaction's step at this index.
    Step(usize),
    /// The transaction's id there, asked just before it ends (see [`XID`]).
    Xid,
    /// The statement that ends the transaction.
    End,
}

/// The messages the other side is sent for one transaction, and what each round is for.
#[derive(Debug)]
pub struct Plan {
    /// The messages, back to back.
    pub wire: BytesMut,
    roles: Vec<Role>,
    /// Named statements this plan prepares (name → Parse body).
    prepares: Vec<(String, Bytes)>,
    /// Whether it runs a statement after which the connection's prepared statements are unknown.
    forgets_prepared: bool,
    /// What the final tag must be for the transaction to have ended there as it did here.
    expected_end: Option<&'static str>,
    /// Where the `COMMIT` starts in `wire` when the transaction's id is asked first: it is
    /// sent only once that answer arrived, so a break before it means it never committed.
    commit_at: Option<usize>,
}

/// The named statements a connection to the other side has (name → the Parse body).
pub type PreparedStatements = HashMap<String, Bytes>;

impl Plan {
    /// The plan for `transaction`; `prepared` is what the connection already has (a plan
    /// for a record to replay is built with none). `state` runs first when given (to bring a
    /// new connection to the session's settings). After each statement that put parameters
    /// back to the server's defaults, the settings of `baseline` for those parameters run
    /// (in the same transaction, so that they roll back with it): there a reset must give
    /// back the values the client's server gives back, the ones its client was told.
    #[must_use]
    pub fn build(
        transaction: &Finished,
        purpose: Purpose,
        prepared: &PreparedStatements,
        state: Option<&SessionState>,
        baseline: &[Setting],
    ) -> Plan {
        let mut plan = Plan {
            wire: BytesMut::new(),
            roles: Vec::new(),
            prepares: Vec::new(),
            forgets_prepared: false,
            expected_end: None,
            commit_at: None,
        };
        for statement in state
            .map(|state| state.statements.as_slice())
            .unwrap_or_default()
        {
            plan.state_statement(statement);
        }
        // A statement alone runs as it ran: committed, or one that cannot run in a block
        // (VACUUM, CREATE INDEX CONCURRENTLY, …) whatever its outcome.
        // A data-changing statement that committed alone runs in a block there, so that its
        // commit can be checked (see `commit_at`).
        let alone = transaction.begin.is_none()
            && transaction.steps.len() == 1
            && purpose == Purpose::Apply;
        let autocommit = alone
            && transaction.steps.first().is_some_and(|step| {
                runs_outside_blocks(&step.sql)
                    || (transaction.end == End::Committed && !runs_in_a_block(&step.sql))
            });
        if !autocommit {
            plan.control(transaction.begin.as_deref().unwrap_or("BEGIN"));
        }
        for (index, step) in transaction.steps.iter().enumerate() {
            let failed = step.outcome.failure();
            if failed.is_some_and(is_circumstantial) {
                continue;
            }
            let wrapped = failed.is_some() && !autocommit;
            if wrapped {
                plan.control(&format!("SAVEPOINT {FAILED_SAVEPOINT}"));
            }
            let mut messages = Vec::with_capacity(step.messages.len() + 3);
            if let Some((name, parse)) = &step.prepared {
                let known = prepared
                    .get(name)
                    .or_else(|| {
                        plan.prepares
                            .iter()
                            .find(|(prepared, _)| prepared == name)
                            .map(|(_, body)| body)
                    })
                    .is_some_and(|body| *body == parse.body);
                if !known {
                    // Closing a statement that does not exist is no error.
                    messages.push(close_statement(name));
                    messages.push(parse.clone());
                    plan.prepares.push((name.clone(), parse.body.clone()));
                }
            }
            messages.extend(step.messages.iter().cloned());
            // A COPY FROM STDIN that failed before its data: should it start copying there,
            // a CopyFail ends it (outside copy mode the server ignores one).
            if failed.is_some()
                && !step
                    .messages
                    .iter()
                    .any(|message| matches!(message.tag, b'c' | b'f'))
                && step
                    .sql
                    .trim_start()
                    .get(..4)
                    .is_some_and(|word| word.eq_ignore_ascii_case("COPY"))
            {
                messages.push(copy_fail());
            }
            if step.extended {
                messages.push(bare(b'S'));
            }
            for message in &messages {
                // A message too large to frame was framed once already; it cannot be.
                let _ = put_message(&mut plan.wire, message.tag, &message.body);
            }
            plan.roles.push(Role::Step(index));
            if step.kind == StatementKind::SessionState {
                let upper = step.sql.trim_start().to_ascii_uppercase();
                plan.forgets_prepared |=
                    upper.starts_with("DISCARD") || upper.starts_with("DEALLOCATE");
            }
            // A reset there gives that server's defaults: the told values are set again, for
            // as long as the reset lasts.
            match change_of(&step.sql).filter(|_| failed.is_none()) {
                Some(Change::Reset { reset, local }) => {
                    for setting in reset.undone(baseline) {
                        plan.state_statement(&if local {
                            setting.local_statement()
                        } else {
                            setting.statement()
                        });
                    }
                }
                Some(Change::DiscardAll) => {
                    for setting in Reset::All.undone(baseline) {
                        plan.state_statement(&setting.statement());
                    }
                }
                _ => {}
            }
            if wrapped {
                plan.control(&format!("ROLLBACK TO SAVEPOINT {FAILED_SAVEPOINT}"));
                plan.control(&format!("RELEASE SAVEPOINT {FAILED_SAVEPOINT}"));
            }
        }
        if !autocommit {
            let checked = purpose == Purpose::Apply
                && transaction.end == End::Committed
                && transaction.writes();
            if checked {
                let _ = put_message(&mut plan.wire, b'Q', query(XID).body.as_ref());
                plan.roles.push(Role::Xid);
                plan.commit_at = Some(plan.wire.len());
            }
            let (end, expected) = match (&transaction.end, purpose) {
                (End::Committed, Purpose::Apply) => ("COMMIT", Some("COMMIT")),
                (End::Prepared(sql), Purpose::Apply) => (sql.as_str(), Some("PREPARE TRANSACTION")),
                _ => ("ROLLBACK", None),
            };
            let _ = put_message(&mut plan.wire, b'Q', query(end).body.as_ref());
            plan.roles.push(Role::End);
            plan.expected_end = expected;
        }
        plan
    }

    /// The statements that bring a session to `state`; when `reset` is given, after
    /// `DISCARD ALL` and the settings `reset` holds (those that gave the connection the
    /// parameters its session's client was told, which `DISCARD ALL` undoes).
    #[must_use]
    pub fn settings(state: &SessionState, reset: Option<&[Setting]>) -> Plan {
        let mut plan = Plan {
            wire: BytesMut::new(),
            roles: Vec::new(),
            prepares: Vec::new(),
            forgets_prepared: reset.is_some(),
            expected_end: None,
            commit_at: None,
        };
        if let Some(baseline) = reset {
            plan.control("DISCARD ALL");
            for setting in baseline {
                plan.state_statement(&setting.statement());
            }
        }
        for statement in &state.statements {
            plan.state_statement(statement);
        }
        plan
    }

    /// One statement of a session's settings, as a round of its own.
    fn state_statement(&mut self, statement: &StateStatement) {
        match statement {
            StateStatement::Sql(sql) => self.control(sql),
            StateStatement::Messages(messages) => {
                for message in messages.iter().chain([&bare(b'S')]) {
                    let _ = put_message(&mut self.wire, message.tag, &message.body);
                }
                self.roles.push(Role::Control);
            }
        }
    }

    fn control(&mut self, sql: &str) {
        let _ = put_message(&mut self.wire, b'Q', query(sql).body.as_ref());
        self.roles.push(Role::Control);
    }

    /// Updates what the connection has prepared once the plan ran: after a plan with an
    /// error, or one that ran `DISCARD`/`DEALLOCATE`, nothing is assumed (later plans send
    /// `Close` and `Parse` again, which is always right).
    pub fn note_prepared(&self, prepared: &mut PreparedStatements, ran: &Ran) {
        if self.forgets_prepared || ran.rounds.iter().any(|round| round.error.is_some()) {
            prepared.clear();
            return;
        }
        for (name, body) in &self.prepares {
            prepared.insert(name.clone(), body.clone());
        }
    }

    /// Sends the plan while reading its answers (so large answers cannot stall the writes),
    /// until every round got its ReadyForQuery. A `COMMIT` whose transaction id is asked
    /// first is sent once that answer arrived.
    ///
    /// # Errors
    /// The connection failed: what the other side did is known up to the answers read, and
    /// whether it committed is in doubt only when the `COMMIT` was sent.
    pub async fn run(&self, stream: &mut ServerStream) -> Result<Ran, Interrupted> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let split = self.commit_at.unwrap_or(self.wire.len());
        let (commit_due, commit_now) = tokio::sync::oneshot::channel::<()>();
        let send = async {
            writer.write_all(&self.wire[..split]).await?;
            // Over TLS, written bytes may wait inside the session until flushed.
            writer.flush().await?;
            if split < self.wire.len() && commit_now.await.is_ok() {
                writer.write_all(&self.wire[split..]).await?;
                writer.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        let mut ran = Ran::default();
        let mut xid = None;
        let mut commit_sent = false;
        let receive = async {
            let mut commit_due = Some(commit_due);
            let mut round = Round::default();
            let mut held = (0usize, 0usize);
            while ran.rounds.len() < self.roles.len() {
                let message = read_message(&mut reader).await?;
                let role = self.roles.get(ran.rounds.len());
                match Backend::decode(&message) {
                    Backend::DataRow if role == Some(&Role::Xid) => {
                        xid = crate::text_query::data_row(&message.body)
                            .into_iter()
                            .next()
                            .flatten()
                            .and_then(|id| id.parse::<u64>().ok());
                    }
                    Backend::RowDescription => round.answer.describe(&message.body),
                    Backend::DataRow
                        if held.0 < MAX_COMPARED_ROWS
                            && held.1 + message.body.len() <= MAX_COMPARED_BYTES =>
                    {
                        held = (held.0 + 1, held.1 + message.body.len());
                        round.answer.rows.push(message.body.clone());
                    }
                    Backend::CommandComplete { tag } => round.tags.push(tag),
                    Backend::PortalSuspended => round.tags.push("SUSPENDED".to_owned()),
                    Backend::FunctionResult => round.tags.push("FunctionCall".to_owned()),
                    Backend::Error { code, message } => {
                        round.error.get_or_insert(Outcome::Failed { code, message });
                    }
                    Backend::Ready { .. } => {
                        ran.rounds.push(std::mem::take(&mut round));
                        if role == Some(&Role::Xid) {
                            if let Some(due) = commit_due.take() {
                                commit_sent = due.send(()).is_ok();
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok::<_, crate::error::PgProxyError>(())
        };
        let (sent, received) = tokio::join!(send, receive);
        let failed = match (sent, received) {
            (Err(err), _) => Some(crate::error::PgProxyError::from(err)),
            (Ok(()), Err(err)) => Some(err),
            (Ok(()), Ok(())) => None,
        };
        match failed {
            None => Ok(ran),
            Some(error) => Err(Interrupted {
                error,
                in_doubt: xid.filter(|_| commit_sent),
                ran,
            }),
        }
    }

    /// What the other side did, judged against what the authoritative side did.
    #[must_use]
    pub fn judge(&self, transaction: &Finished, ran: &Ran, authoritative: Side) -> Verdict {
        let mut verdict = Verdict::default();
        for (role, round) in self.roles.iter().zip(&ran.rounds) {
            match role {
                Role::Control | Role::Xid => {
                    if let Some(Outcome::Failed { code, message }) = &round.error {
                        verdict
                            .unsettled
                            .get_or_insert(format!("{code}: {message}"));
                    }
                }
                Role::End => {
                    let tag = round.tags.last().map(String::as_str);
                    if let (Some(expected), Some(Outcome::Failed { code, message })) =
                        (self.expected_end, &round.error)
                    {
                        verdict
                            .unsettled
                            .get_or_insert(format!("{code}: {message} (at {expected})"));
                    } else if let Some(expected) = self.expected_end {
                        if tag != Some(expected) {
                            verdict.unsettled.get_or_insert(format!(
                                "it ended with {} there, not {expected}",
                                tag.unwrap_or("nothing")
                            ));
                        }
                    }
                }
                Role::Step(index) => {
                    let Some(step) = transaction.steps.get(*index) else {
                        continue;
                    };
                    let difference = step_difference(
                        &step.outcome,
                        &step.answer,
                        round,
                        transaction.answers_complete,
                        authoritative,
                    )
                    .map(|difference| {
                        // A write's rows are the ones it returned (`RETURNING`).
                        if step.write && difference.starts_with("rows differ") {
                            format!("returned {difference}")
                        } else {
                            difference
                        }
                    });
                    if let Some(difference) = difference {
                        if step.outcome.failure().is_none() && round.error.is_some() {
                            // A statement that completed here failed there: the transaction
                            // cannot end there as it did here.
                            verdict.unsettled.get_or_insert_with(|| difference.clone());
                        }
                        verdict.mismatch.get_or_insert(difference);
                    }
                }
            }
        }
        // An autocommit statement that failed there did not commit there.
        if self.expected_end.is_none()
            && transaction.end == End::Committed
            && !self.roles.contains(&Role::End)
        {
            if let Some(Outcome::Failed { code, message }) =
                ran.rounds.iter().find_map(|round| round.error.as_ref())
            {
                verdict
                    .unsettled
                    .get_or_insert(format!("{code}: {message}"));
            }
        }
        verdict
    }
}

/// One round's answers on the other side.
#[derive(Debug, Default)]
pub struct Round {
    tags: Vec<String>,
    error: Option<Outcome>,
    answer: Answer,
}

/// The other side's answers to a plan, round by round.
#[derive(Debug, Default)]
pub struct Ran {
    rounds: Vec<Round>,
}

/// A plan whose connection failed before every answer arrived.
#[derive(Debug)]
pub struct Interrupted {
    /// How it failed.
    pub error: crate::error::PgProxyError,
    /// The transaction's id there when its `COMMIT` was sent and no answer came: whether it
    /// committed must be asked (see [`crate::in_doubt`]). `None`: it did not commit there,
    /// or (for a plan that cannot ask, such as DDL alone) what happened there is unknown.
    pub in_doubt: Option<u64>,
    /// The answers that did arrive.
    pub ran: Ran,
}

/// How the other side's run compares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The first difference in outcome, tags or rows (a response mismatch).
    pub mismatch: Option<String>,
    /// Why the transaction did not end there as it ended here (a write that did not
    /// commit: kept for replay).
    pub unsettled: Option<String>,
}

/// How one statement's run there differs from its run here.
fn step_difference(
    here: &Outcome,
    answer: &Answer,
    there: &Round,
    answers_complete: bool,
    authoritative: Side,
) -> Option<String> {
    match (here, &there.error) {
        (Outcome::Failed { code, message }, None) => Some(format!(
            "only the authoritative side failed: {code}: {message}"
        )),
        (Outcome::Failed { code: a, .. }, Some(Outcome::Failed { code: b, message })) if a != b => {
            Some(format!(
                "the sides failed differently: {a} / {b}: {message}"
            ))
        }
        (Outcome::Failed { .. }, Some(_)) => None,
        (Outcome::Done(_), Some(Outcome::Failed { code, message })) => {
            Some(format!("only the other side failed: {code}: {message}"))
        }
        (Outcome::Done(tag), _) => {
            let other = there.tags.last().map_or("", String::as_str);
            if tag != other {
                let (old, new) = match authoritative {
                    Side::Old => (tag.as_str(), other),
                    Side::New => (other, tag.as_str()),
                };
                return Some(format!("command tags differ: old {old:?}, new {new:?}"));
            }
            if !answers_complete {
                return None;
            }
            let mut theirs = there.answer.clone();
            theirs.ordered = answer.ordered;
            answer.difference(&theirs, authoritative)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn circumstantial_failures_are_told_from_data_failures() {
        for code in [
            "57014", "40001", "40P01", "55P03", "57P01", "53300", "08006",
        ] {
            assert!(is_circumstantial(code), "{code}");
        }
        for sql in [
            "VACUUM t",
            "CREATE UNIQUE INDEX CONCURRENTLY i ON t (v)",
            "drop index concurrently i",
            "CREATE DATABASE x",
            "ALTER SYSTEM SET work_mem = '1MB'",
        ] {
            assert!(runs_outside_blocks(sql), "{sql}");
        }
        assert!(!runs_outside_blocks("CREATE INDEX i ON t (v)"));
        assert!(!runs_outside_blocks("ALTER TABLE t ADD c int"));
        for code in ["23505", "22012", "42P01", "P0001"] {
            assert!(!is_circumstantial(code), "{code}");
        }
    }

    /// The Queries of a plan's wire, in order.
    fn queries(plan: &Plan) -> Vec<String> {
        let mut wire = &plan.wire[..];
        let mut found = Vec::new();
        while let [tag, a, b, c, d, rest @ ..] = wire {
            let length = usize::try_from(u32::from_be_bytes([*a, *b, *c, *d])).unwrap() - 4;
            if *tag == b'Q' {
                found.push(crate::mirror::cstr(&rest[..length]));
            }
            // A baseline setting's Bind (two unnamed cstrs, no formats, two parameters).
            if *tag == b'B' {
                let mut values = Vec::new();
                let mut at = 6;
                for _ in 0..2 {
                    let size =
                        usize::try_from(u32::from_be_bytes(rest[at..at + 4].try_into().unwrap()))
                            .unwrap();
                    values.push(String::from_utf8_lossy(&rest[at + 4..at + 4 + size]).into_owned());
                    at += 4 + size;
                }
                found.push(format!("set {} = {}", values[0], values[1]));
            }
            wire = &rest[length..];
        }
        found
    }

    #[test]
    fn a_reset_connection_takes_the_clients_parameters_on_again_before_the_session_settings() {
        let state = SessionState {
            statements: vec![StateStatement::Sql(
                "SET TimeZone = 'Europe/Paris'".to_owned(),
            )],
        };
        let baseline = [Setting::new("DateStyle", "ISO, MDY")];
        let reset = Plan::settings(&state, Some(&baseline));
        assert_eq!(
            queries(&reset),
            [
                "DISCARD ALL",
                "set DateStyle = ISO, MDY",
                "SET TimeZone = 'Europe/Paris'",
            ]
        );
        assert_eq!(reset.roles.len(), 3);
        assert!(reset.forgets_prepared);
        // Not reset: the connection still has them.
        let kept = Plan::settings(&state, None);
        assert_eq!(queries(&kept), ["SET TimeZone = 'Europe/Paris'"]);
        assert!(!kept.forgets_prepared);
    }

    fn step(sql: &str, kind: StatementKind, outcome: Outcome) -> crate::tracker::Step {
        crate::tracker::Step {
            messages: vec![query(sql)],
            extended: false,
            prepared: None,
            sql: sql.to_owned(),
            write: kind != StatementKind::SessionState,
            kind,
            outcome,
            answer: Answer::default(),
        }
    }

    #[test]
    fn a_reset_that_ran_is_followed_by_the_baseline_of_what_it_reset() {
        let done = |tag: &str| Outcome::Done(tag.to_owned());
        let transaction = Finished {
            begin: Some("BEGIN".to_owned()),
            steps: vec![
                step("RESET ALL", StatementKind::SessionState, done("RESET")),
                step(
                    "INSERT INTO t VALUES ('03/04/2026')",
                    StatementKind::Other,
                    done("INSERT 0 1"),
                ),
                step(
                    "SET datestyle TO DEFAULT",
                    StatementKind::SessionState,
                    done("SET"),
                ),
                step(
                    "RESET TimeZone",
                    StatementKind::SessionState,
                    Outcome::Failed {
                        code: "22023".to_owned(),
                        message: "invalid".to_owned(),
                    },
                ),
            ],
            end: End::RolledBack,
            answers_complete: true,
            state_before: Arc::default(),
            state_after: Arc::default(),
            finished_at: std::time::Instant::now(),
        };
        let baseline = [
            Setting::new("TimeZone", "Europe/Paris"),
            Setting::new("DateStyle", "SQL, DMY"),
        ];
        let plan = Plan::build(
            &transaction,
            Purpose::Apply,
            &PreparedStatements::new(),
            None,
            &baseline,
        );
        assert_eq!(
            queries(&plan),
            [
                "BEGIN",
                "RESET ALL",
                "set TimeZone = Europe/Paris",
                "set DateStyle = SQL, DMY",
                "INSERT INTO t VALUES ('03/04/2026')",
                "SET datestyle TO DEFAULT",
                "set DateStyle = SQL, DMY",
                // A reset that failed reset nothing.
                "SAVEPOINT tandem_failed_statement",
                "RESET TimeZone",
                "ROLLBACK TO SAVEPOINT tandem_failed_statement",
                "RELEASE SAVEPOINT tandem_failed_statement",
                "ROLLBACK",
            ]
        );
    }
}
