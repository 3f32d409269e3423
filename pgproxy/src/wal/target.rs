//! The side captured transactions are applied to. Exactly once across crashes: each applied
//! batch records its source position in a replication origin (`pg_replication_origin_xact_setup`)
//! inside the same target transaction, so the position and the rows commit together or not at
//! all; the stream restarts from [`Target::progress`] and the slot is confirmed only after the
//! commit. The session runs with `session_replication_role = replica`, as PostgreSQL's own
//! apply worker does: the other side's triggers and foreign-key checks do not fire again for
//! rows whose effects arrive themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::BytesMut;
use std::sync::Arc;

use tandem_control::Side;

use super::coalesce::coalesce;
use super::connection::{quote_identifier, quote_literal, Batch, Connection};
use super::error::WalError;
use super::lsn::Lsn;
use super::pgoutput::Relation;
use super::render::{display_name, render_except, Expect, Statement, TargetTable};
use super::replication::POSTGRES_EPOCH_MICROS;
use super::route::{parse_worker_origin, worker_origin, Generation, Recorded};
use super::set::{plan, Fallback, SetShape};
use super::transaction::Transaction;
use crate::messages::query;
use crate::protocol::put_message;

/// What one applied batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The source transactions it held.
    pub transactions: usize,
    /// The statements it ran.
    pub statements: usize,
    /// Updates and deletes that found no row on this side, by table (the row was never
    /// copied here: a backfill's work, or a divergence the comparator reports).
    pub absent: Vec<(String, Expect)>,
    /// Row changes left out because a later change of the same row in the batch covered
    /// them (the same row set again, or deleted; or folded into a row's net effect by the
    /// set path).
    pub coalesced: usize,
    /// The row changes the statements carried.
    pub rows: usize,
    /// Of the statements, those of the set path (a table's rows bound as arrays).
    pub set_statements: usize,
    /// The tables of the batch the row path applied, and why (`set.rs`).
    pub row_path: Vec<(String, Fallback)>,
}

/// A session on the side captured transactions are applied to.
#[derive(Debug)]
pub struct Target {
    connection: Connection,
    /// Where it connects.
    url: String,
    origin: String,
    /// Its shape of every table seen, by `schema.name`, with the captured relation it was
    /// checked against (read again when the relation is described otherwise).
    tables: HashMap<String, Checked>,
    /// The statements this session prepared, by template.
    prepared: HashMap<String, String>,
    /// Statement names given so far (a name is never given twice, even when the batch that
    /// prepared it was refused).
    named: usize,
    /// The source transaction whose parts are being applied in a transaction of this side
    /// left open between them (its Begin's position).
    open_parts: Option<Lsn>,
}

/// This side's shape of a table, as checked against a captured relation.
#[derive(Debug)]
struct Checked {
    relation: Relation,
    table: Arc<TargetTable>,
    set: Arc<SetShape>,
}

/// Where a pipeline stands in its transaction on this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// It begins the transaction.
    opens: bool,
    /// It records the progress and commits.
    closes: bool,
}

impl Span {
    /// Whole source transactions: one transaction of this side.
    const WHOLE: Span = Span {
        opens: true,
        closes: true,
    };
}

impl Target {
    /// Connects to the side at `url` and takes the replication origin `origin` (created when
    /// missing) for this session. Its statements are planned once, generically (by key
    /// index, the arrays' lengths unknown): a custom plan of a set statement would be made
    /// again for every batch, and past some array length could read the whole table.
    ///
    /// # Errors
    /// A [`WalError`]: unreachable; [`WalError::OriginBusy`] when another session applies
    /// with the same origin; the server refusing (the user needs to be a superuser, or be
    /// granted `SET` on `session_replication_role` and the `pg_replication_origin_*`
    /// functions).
    pub async fn open(side: Side, url: &str, origin: &str) -> Result<Target, WalError> {
        let mut connection = Connection::open_sql(side, url).await?;
        connection
            .query(
                "SET session_replication_role = replica; SET synchronous_commit = on; \
                 SET standard_conforming_strings = on; SET search_path = pg_catalog; \
                 SET DateStyle = ISO; SET statement_timeout = 0; \
                 SET idle_in_transaction_session_timeout = '5min'; \
                 SET plan_cache_mode = force_generic_plan",
                "the apply session's settings",
            )
            .await?;
        let name = quote_literal(origin);
        connection
            .query(
                &format!(
                    "SELECT pg_replication_origin_create({name}) WHERE NOT EXISTS \
                     (SELECT 1 FROM pg_replication_origin WHERE roname = {name})"
                ),
                "pg_replication_origin_create",
            )
            .await
            .or_else(|err| match err {
                // Another tandem created it meanwhile.
                WalError::Server { code, .. } if code == "23505" => Ok(Vec::new()),
                other => Err(other),
            })?;
        connection
            .query(
                &format!("SELECT pg_replication_origin_session_setup({name})"),
                "pg_replication_origin_session_setup",
            )
            .await
            .map_err(|err| match err {
                WalError::Server { code, .. } if code == "55006" => WalError::OriginBusy {
                    side,
                    origin: origin.to_owned(),
                },
                WalError::Server { code, .. } if code == "53400" => WalError::OriginsExhausted {
                    side,
                    origin: origin.to_owned(),
                },
                other => other,
            })?;
        Ok(Target {
            connection,
            url: url.to_owned(),
            origin: origin.to_owned(),
            tables: HashMap::new(),
            prepared: HashMap::new(),
            named: 0,
            open_parts: None,
        })
    }

    /// The source position applied last (the end of the last applied commit), `Lsn(0)` when
    /// nothing was applied yet.
    ///
    /// # Errors
    /// A [`WalError`] when the server cannot answer.
    pub async fn progress(&mut self) -> Result<Lsn, WalError> {
        let rows = self
            .connection
            .query(
                &format!(
                    "SELECT pg_replication_origin_progress({}, true)",
                    quote_literal(&self.origin)
                ),
                "pg_replication_origin_progress",
            )
            .await?;
        let text = rows.first().and_then(|row| row.first().cloned().flatten());
        match text {
            None => Ok(Lsn(0)),
            Some(text) => text.parse().map_err(|err| WalError::Protocol {
                side: self.connection.side,
                reason: format!("the replication origin's progress: {err}"),
            }),
        }
    }

    /// Checks that this side has the table `relation` names with every column it has, and
    /// remembers its shape for [`Target::apply`].
    ///
    /// # Errors
    /// [`WalError::Shape`] naming the table and what it lacks; a [`WalError`] when the server
    /// cannot answer.
    pub async fn check(&mut self, relation: &Relation) -> Result<(), WalError> {
        let name = display_name(relation);
        if self
            .tables
            .get(&name)
            .is_some_and(|checked| checked.relation == *relation)
        {
            return Ok(());
        }
        let columns: Vec<String> = relation.columns.iter().map(|c| c.name.clone()).collect();
        let namespace = if relation.namespace.is_empty() {
            "pg_catalog"
        } else {
            relation.namespace.as_str()
        };
        let rows = self
            .connection
            .query(
                &format!(
                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity::text, \
                     (SELECT array_position(i.indkey::int2[], a.attnum)::text FROM pg_index i \
                      WHERE i.indrelid = c.oid AND i.indisprimary) \
                     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = {} AND c.relname = {} AND c.relkind IN ('r', 'p') \
                     AND a.attnum > 0 AND NOT a.attisdropped",
                    quote_literal(namespace),
                    quote_literal(&relation.name)
                ),
                "the table shape look-up",
            )
            .await?;
        let side = self.connection.side;
        if rows.is_empty() {
            return Err(WalError::Shape {
                side,
                table: name,
                difference: "the table does not exist".to_owned(),
            });
        }
        let mut always_identity = std::collections::BTreeSet::new();
        let mut primary_key = std::collections::BTreeMap::new();
        let shape: std::collections::BTreeMap<String, String> = rows
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                let (name, kind) = (row.next()??, row.next()??);
                let (identity, key_position) = (row.next().flatten(), row.next().flatten());
                if identity.as_deref() == Some("a") {
                    always_identity.insert(name.clone());
                }
                if let Some(position) = key_position.and_then(|text| text.parse::<u16>().ok()) {
                    primary_key.insert(position, name.clone());
                }
                Some((name, kind))
            })
            .collect();
        let missing: Vec<&str> = columns
            .iter()
            .filter(|column| !shape.contains_key(*column))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(WalError::Shape {
                side,
                table: name,
                difference: format!("it lacks column(s) {}", missing.join(", ")),
            });
        }
        let table = TargetTable {
            name: format!(
                "{}.{}",
                quote_identifier(namespace),
                quote_identifier(&relation.name)
            ),
            columns: shape,
            always_identity,
            primary_key: primary_key.into_values().collect(),
        };
        let set = self.set_shape(namespace, &relation.name).await?;
        self.tables.insert(
            name,
            Checked {
                relation: relation.clone(),
                table: Arc::new(table),
                set: Arc::new(set),
            },
        );
        Ok(())
    }

    /// What this side's catalog says of the table `namespace`.`name` for the set path
    /// (`set.rs`): its constraints, triggers and rules, and each column's array type.
    ///
    /// # Errors
    /// A [`WalError`] when the server cannot answer.
    async fn set_shape(&mut self, namespace: &str, name: &str) -> Result<SetShape, WalError> {
        let table = format!(
            "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {})",
            quote_literal(namespace),
            quote_literal(name)
        );
        let facts = self
            .connection
            .query(
                &format!(
                    "SELECT c.relkind::text, \
                     EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' \
                             AND (f.conrelid = c.oid OR f.confrelid = c.oid))::text, \
                     EXISTS (SELECT 1 FROM pg_constraint x WHERE x.contype = 'x' \
                             AND x.conrelid = c.oid)::text, \
                     EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
                             AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
                                  OR NOT i.indimmediate))::text, \
                     (EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid \
                              AND g.tgenabled IN ('A', 'R')) \
                      OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid \
                                 AND r.rulename <> '_RETURN'))::text \
                     FROM pg_class c WHERE c.oid = {table}"
                ),
                "the set path's table look-up",
            )
            .await?;
        let unique = self
            .connection
            .query(
                &format!(
                    "SELECT i.indexrelid::text, a.attname FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
                     WHERE i.indrelid = {table} AND i.indisunique"
                ),
                "the set path's unique index look-up",
            )
            .await?;
        // The array type of each column whose values can be bound as one: not an array, a
        // composite, a domain over either or over a domain, nor with another delimiter.
        let arrays = self
            .connection
            .query(
                &format!(
                    "SELECT a.attname, quote_ident(an.nspname) || '.' || quote_ident(at.typname) \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     JOIN pg_type at ON at.oid = t.typarray \
                     JOIN pg_namespace an ON an.oid = at.typnamespace \
                     LEFT JOIN pg_type b ON b.oid = t.typbasetype \
                     WHERE a.attrelid = {table} AND a.attnum > 0 AND NOT a.attisdropped \
                     AND t.typcategory <> 'A' AND t.typtype IN ('b', 'd', 'e', 'r', 'm') \
                     AND t.typdelim = ',' \
                     AND (b.oid IS NULL OR (b.typcategory <> 'A' AND b.typtype IN ('b', 'e', 'r', 'm')))"
                ),
                "the set path's column type look-up",
            )
            .await?;
        let exact = self
            .connection
            .query(
                &format!(
                    "SELECT a.attname, a.atttypid::text FROM pg_attribute a \
                     LEFT JOIN pg_collation c ON c.oid = a.attcollation \
                     WHERE a.attrelid = {table} AND a.attnum > 0 AND NOT a.attisdropped \
                     AND a.atttypid IN (16, 18, 19, 20, 21, 23, 25, 26, 1043, 2950) \
                     AND (c.oid IS NULL OR c.collisdeterministic) \
                     AND NOT EXISTS (SELECT 1 FROM pg_index i \
                       JOIN pg_collation ic ON ic.oid = ANY (i.indcollation::oid[]) \
                       WHERE i.indrelid = a.attrelid AND i.indisunique \
                       AND a.attnum = ANY (i.indkey) AND NOT ic.collisdeterministic)"
                ),
                "the parallel apply's key type look-up",
            )
            .await?;
        let fact = |index: usize| {
            facts
                .first()
                .and_then(|row| row.get(index).cloned().flatten())
                .unwrap_or_default()
        };
        let ordered = if fact(0) != "r" {
            Some(Fallback::NotATable)
        } else if fact(2) == "true" || fact(3) == "true" {
            Some(Fallback::UniqueIndex)
        } else {
            None
        };
        let refused = match ordered {
            Some(Fallback::NotATable) => ordered,
            _ if fact(1) == "true" => Some(Fallback::ForeignKey),
            _ => ordered,
        };
        let mut indexes: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for row in unique {
            let mut row = row.into_iter();
            if let (Some(Some(index)), Some(Some(column))) = (row.next(), row.next()) {
                indexes.entry(index).or_default().insert(column);
            }
        }
        Ok(SetShape {
            refused,
            ordered,
            fires: fact(4) == "true",
            unique: indexes.into_values().collect(),
            exact: exact
                .into_iter()
                .filter_map(|row| {
                    let mut row = row.into_iter();
                    Some((row.next()??, row.next()??.parse().ok()?))
                })
                .collect(),
            arrays: arrays
                .into_iter()
                .filter_map(|row| {
                    let mut row = row.into_iter();
                    Some((row.next()??, row.next()??))
                })
                .collect(),
        })
    }

    /// Applies `batch` (whole transactions, in commit order) as one transaction of this side,
    /// recording the last one's end as this side's progress in the same transaction (which
    /// always takes a transaction id: a commit without one writes no commit record, and the
    /// progress of a batch with no rows, such as a switch's marker, would not be kept). Every
    /// table the batch changes must have passed [`Target::check`].
    ///
    /// # Errors
    /// [`WalError::Apply`] when this side refused a change (nothing of the batch is applied
    /// then); another [`WalError`] when the connection failed (then [`Target::progress`] of a
    /// new session says whether the batch committed).
    pub async fn apply(&mut self, batch: &[Transaction]) -> Result<Applied, WalError> {
        // Only the batch's end state shows on this side: the tables the set path may take
        // are applied by their rows' net effects (`set.rs`), the others without the updates
        // a later statement of the same row covers.
        let tables = &self.tables;
        let set = plan(batch, &|name: &str| {
            tables
                .get(name)
                .map(|checked| (Arc::clone(&checked.table), Arc::clone(&checked.set)))
        });
        let (by_row, by_set) = self.render_except(batch, &set.relations)?;
        let (mut statements, mut left_out) = coalesce(by_row);
        let set_statements = set.statements.len();
        left_out += by_set.saturating_sub(set.statements.iter().map(|s| s.rows).sum());
        statements.extend(set.statements);
        if left_out == 0 && set_statements == 0 {
            return self.run(batch, &statements, Span::WHOLE).await;
        }
        match self.run(batch, &statements, Span::WHOLE).await {
            Ok(mut done) => {
                done.coalesced = left_out;
                done.set_statements = set_statements;
                done.row_path = set.row_path;
                Ok(done)
            }
            // A unique constraint met in another state than the source's (a value freed and
            // taken again inside the batch), or a row an upsert of the set path met twice
            // (two keys that differ as text and are equal as values): the batch as it was
            // made.
            Err(WalError::Apply { code, .. })
                if code.starts_with("23") || (set_statements > 0 && code.starts_with("21")) =>
            {
                tracing::info!(%code, "a coalesced batch was refused; applying it change by change");
                let statements = self.render(batch)?;
                self.run(batch, &statements, Span::WHOLE).await
            }
            Err(err) => Err(err),
        }
    }

    /// Applies `part`, the next changes of a source transaction too large to hold whole
    /// ([`Captured::Part`](super::transaction::Captured::Part)), in a transaction of this side
    /// begun by its first part and left open for the next ones; its last part
    /// ([`Target::apply_last_part`]) records the progress and commits. Change by change (no
    /// coalescing across parts). Nothing is committed before the last part: a failure or a
    /// crash in between leaves this side as it was, and the source transaction is read again
    /// from the slot.
    ///
    /// # Errors
    /// As [`Target::apply`]; [`WalError::Protocol`] for a part of another transaction than
    /// the open one.
    pub async fn apply_part(&mut self, part: &Transaction) -> Result<Applied, WalError> {
        let begun = part.begin.final_lsn;
        if self.open_parts.is_some_and(|open| open != begun) {
            return Err(self.parts_mixed(begun));
        }
        let statements = self.render(std::slice::from_ref(part))?;
        let span = Span {
            opens: self.open_parts.is_none(),
            closes: false,
        };
        let done = self
            .run(std::slice::from_ref(part), &statements, span)
            .await?;
        self.open_parts = Some(begun);
        Ok(done)
    }

    /// Applies the last part of a source transaction whose earlier parts
    /// [`Target::apply_part`] applied, records its end as this side's progress and commits.
    ///
    /// # Errors
    /// As [`Target::apply_part`].
    pub async fn apply_last_part(&mut self, last: &Transaction) -> Result<Applied, WalError> {
        let begun = last.begin.final_lsn;
        if self.open_parts.is_some_and(|open| open != begun) {
            return Err(self.parts_mixed(begun));
        }
        let statements = self.render(std::slice::from_ref(last))?;
        let span = Span {
            opens: self.open_parts.is_none(),
            closes: true,
        };
        self.open_parts = None;
        self.run(std::slice::from_ref(last), &statements, span)
            .await
    }

    fn parts_mixed(&self, begun: Lsn) -> WalError {
        WalError::Protocol {
            side: self.connection.side,
            reason: format!(
                "a part of the transaction begun at {begun} while the one begun at {} is open",
                self.open_parts.unwrap_or_default()
            ),
        }
    }

    /// Every change of `batch` as a statement for this side, in order.
    fn render(&self, batch: &[Transaction]) -> Result<Vec<Statement>, WalError> {
        self.render_except(batch, &BTreeSet::new())
            .map(|(statements, _)| statements)
    }

    /// Every change of `batch` but those of the relations `skip` names (by oid) as a
    /// statement for this side, in order; how many were left out.
    fn render_except(
        &self,
        batch: &[Transaction],
        skip: &BTreeSet<u32>,
    ) -> Result<(Vec<Statement>, usize), WalError> {
        let side = self.connection.side;
        let mut statements: Vec<Statement> = Vec::new();
        let mut skipped = 0;
        let tables = &self.tables;
        let target = |name: &str| tables.get(name).map(|checked| Arc::clone(&checked.table));
        for transaction in batch {
            skipped +=
                render_except(transaction, &target, skip, &mut statements).map_err(|source| {
                    WalError::Render {
                        side,
                        lsn: transaction.commit.end_lsn,
                        source,
                    }
                })?;
        }
        Ok((statements, skipped))
    }

    /// Runs `statements` (rendered from `batch`) in a transaction of this side: beginning it
    /// when `span` opens, recording the progress of `batch`'s last transaction and committing
    /// when it closes (else leaving it open).
    async fn run(
        &mut self,
        batch: &[Transaction],
        statements: &[Statement],
        span: Span,
    ) -> Result<Applied, WalError> {
        let side = self.connection.side;
        let Some(last) = batch.last() else {
            return Ok(Applied::default());
        };
        let unix_micros = last.commit.timestamp.saturating_add(POSTGRES_EPOCH_MICROS);
        let progress = format!(
            "SELECT pg_replication_origin_xact_setup('{}', to_timestamp({}.{:06})), \
             pg_current_xact_id();",
            last.commit.end_lsn,
            unix_micros.div_euclid(1_000_000),
            unix_micros.rem_euclid(1_000_000)
        );
        // The statements (command tags) before the first change's.
        let (lead, lead_tags) = match (span.opens, span.closes) {
            (true, true) => (format!("BEGIN;{progress}"), 2),
            (true, false) => ("BEGIN".to_owned(), 1),
            (false, true) => (progress, 1),
            (false, false) => (String::new(), 0),
        };
        // One round trip: the BEGIN and the progress, every change as a prepared statement's
        // Bind and Execute (prepared once per shape), a Sync, then the COMMIT.
        let mut wire = BytesMut::new();
        let frame = |wire: &mut BytesMut, tag: u8, body: &[u8]| {
            put_message(wire, tag, body).map_err(|err| WalError::Protocol {
                side,
                reason: err.to_string(),
            })
        };
        let mut rounds = 0;
        if !lead.is_empty() {
            frame(&mut wire, b'Q', &query(&lead).body)?;
            rounds += 1;
        }
        let mut prepared_now: Vec<(String, String)> = Vec::new();
        for statement in statements {
            let known = self.prepared.get(&statement.template).or_else(|| {
                prepared_now
                    .iter()
                    .find(|(template, _)| *template == statement.template)
                    .map(|(_, name)| name)
            });
            let name = match known {
                Some(name) => name.clone(),
                None => {
                    let name = format!("tandem_apply_{}", self.named);
                    self.named += 1;
                    frame(&mut wire, b'P', &parse_body(&name, &statement.template))?;
                    prepared_now.push((statement.template.clone(), name.clone()));
                    name
                }
            };
            frame(&mut wire, b'B', &bind_body(side, &name, &statement.values)?)?;
            frame(&mut wire, b'E', &EXECUTE_ALL)?;
        }
        if !statements.is_empty() {
            frame(&mut wire, b'S', &[])?;
            rounds += 1;
        }
        if span.closes {
            frame(&mut wire, b'Q', &query("COMMIT").body)?;
            rounds += 1;
        }
        if rounds == 0 {
            return Ok(Applied::default());
        }
        let outcome = self.connection.pipeline(&wire, rounds).await?;
        let finished = if span.closes {
            outcome.status == b'I' && outcome.tags.last().map(String::as_str) == Some("COMMIT")
        } else {
            outcome.status == b'T'
        };
        match outcome.error {
            None if finished => {
                self.prepared.extend(prepared_now);
                let transactions = if span.closes { batch.len() } else { 0 };
                Ok(applied(transactions, statements, &outcome, lead_tags))
            }
            error => {
                self.open_parts = None;
                if outcome.status != b'I' {
                    self.connection.query("ROLLBACK", "ROLLBACK").await?;
                }
                let (code, message) = error.unwrap_or_else(|| {
                    (
                        "XX000".to_owned(),
                        format!("the batch ended with {:?}", outcome.tags.last()),
                    )
                });
                // Tags: the lead's (BEGIN, the progress SELECT), one per statement that
                // completed, then the final COMMIT's (ROLLBACK after an error).
                let failed = outcome
                    .tags
                    .len()
                    .checked_sub(lead_tags + usize::from(span.closes));
                let table = failed
                    .and_then(|index| statements.get(index))
                    .map_or_else(String::new, |statement| statement.table.clone());
                Err(WalError::Apply {
                    side,
                    table,
                    first: batch[0].commit.end_lsn,
                    last: last.commit.end_lsn,
                    code,
                    message,
                })
            }
        }
    }

    /// What every apply session of this capture recorded: the main session's progress and,
    /// for each number of workers it ran with (`route.rs`), each worker's.
    ///
    /// # Errors
    /// A [`WalError`] when the server cannot answer.
    pub async fn recorded(&mut self) -> Result<Recorded, WalError> {
        let side = self.connection.side;
        let rows = self
            .connection
            .query(
                &format!(
                    "SELECT roname, pg_replication_origin_progress(roname, true)::text \
                     FROM pg_replication_origin WHERE {}",
                    same_capture(&quote_literal(&self.origin))
                ),
                "the apply sessions' progress",
            )
            .await?;
        let mut recorded = Recorded::default();
        let mut workers: BTreeMap<usize, Vec<Lsn>> = BTreeMap::new();
        for row in rows {
            let mut row = row.into_iter();
            let (Some(Some(name)), progress) = (row.next(), row.next().flatten()) else {
                continue;
            };
            let progress = match progress {
                None => Lsn(0),
                Some(text) => text.parse().map_err(|err| WalError::Protocol {
                    side,
                    reason: format!("the replication origin {name}'s progress: {err}"),
                })?,
            };
            if name == self.origin {
                recorded.main = progress;
            } else if let Some((count, index)) = parse_worker_origin(&self.origin, &name) {
                workers.entry(count).or_insert_with(|| vec![Lsn(0); count])[index] = progress;
            }
        }
        recorded.generations = workers
            .into_values()
            .map(|progress| Generation { progress })
            .collect();
        Ok(recorded)
    }

    /// Drops the origins of the workers of another number than `workers` (every worker's
    /// when one session applies) that `recorded` holds and that claim nothing past the main
    /// session's progress (which then says all they say), and leaves them out of `recorded`:
    /// a server keeps only `max_replication_slots` origins. Each is dropped on its own: a
    /// drop refused leaves the others as they were.
    pub async fn drop_stale_origins(&mut self, recorded: &mut Recorded, workers: usize) {
        let main = recorded.main;
        let mut kept = Vec::new();
        for generation in std::mem::take(&mut recorded.generations) {
            let count = generation.progress.len();
            let stale = (workers <= 1 || count != workers)
                && generation.progress.iter().all(|progress| *progress <= main);
            if !stale {
                kept.push(generation);
                continue;
            }
            for index in 0..count {
                let name = worker_origin(&self.origin, count, index);
                if let Err(err) = drop_one(&mut self.connection, &name).await {
                    tracing::debug!(error = %err, origin = %name, "a former apply session's origin stays");
                }
            }
            tracing::info!(
                workers = count,
                "dropped the origins of a former number of apply sessions"
            );
        }
        recorded.generations = kept;
    }

    /// Makes sure no session holds an origin of this capture but this one's and `held` (the
    /// workers' this capture opened): each is taken and let go at once. A session of an
    /// instance killed moments ago may still be committing under one; its progress is read
    /// only once that commit is over.
    ///
    /// # Errors
    /// [`WalError::OriginBusy`] when one is held (the capture starts over and looks again);
    /// a [`WalError`] when the server cannot answer.
    pub async fn wait_for_holders(&mut self, held: &[String]) -> Result<(), WalError> {
        let side = self.connection.side;
        let rows = self
            .connection
            .query(
                &format!(
                    "SELECT roname FROM pg_replication_origin WHERE {}",
                    same_capture(&quote_literal(&self.origin))
                ),
                "the capture's replication origins",
            )
            .await?;
        let others: Vec<String> = rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .filter(|name| *name != self.origin && !held.contains(name))
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut probe = Connection::open_sql(side, &self.url).await?;
        for name in others {
            let taken = probe
                .query(
                    &format!(
                        "SELECT pg_replication_origin_session_setup({})",
                        quote_literal(&name)
                    ),
                    "pg_replication_origin_session_setup",
                )
                .await;
            match taken {
                Ok(_) => {}
                // No room for its state: it has none, so nobody holds it.
                Err(WalError::Server { code, .. }) if code == "53400" => continue,
                Err(WalError::Server { code, .. }) if code == "55006" => {
                    return Err(WalError::OriginBusy { side, origin: name });
                }
                Err(err) => return Err(err),
            }
            probe
                .query(
                    "SELECT pg_replication_origin_session_reset()",
                    "pg_replication_origin_session_reset",
                )
                .await?;
        }
        probe.terminate().await
    }

    /// Whether a transaction of this side is open between the parts of a large source
    /// transaction ([`Target::apply_part`]).
    #[must_use]
    pub fn applying_parts(&self) -> bool {
        self.open_parts.is_some()
    }

    /// Records `position` as the main session's progress, in a transaction of its own (with
    /// several apply sessions, how far every transaction before is applied).
    ///
    /// # Errors
    /// [`WalError::Protocol`] between the parts of a large source transaction (its
    /// transaction is open); a [`WalError`] when the server cannot answer.
    pub async fn record_progress(&mut self, position: Lsn) -> Result<(), WalError> {
        if let Some(begun) = self.open_parts {
            return Err(WalError::Protocol {
                side: self.connection.side,
                reason: format!(
                    "progress recorded inside the transaction of the parts begun at {begun}"
                ),
            });
        }
        self.connection
            .query(
                &format!(
                    "BEGIN; SELECT pg_replication_origin_xact_setup('{position}', now()), \
                     pg_current_xact_id(); COMMIT"
                ),
                "recording the apply's progress",
            )
            .await
            .map(drop)
    }

    /// This side's shape of the table `name` ([`display_name`]) for the set path, once
    /// [`Target::check`] read it.
    #[must_use]
    pub fn shape(&self, name: &str) -> Option<Arc<SetShape>> {
        self.tables
            .get(name)
            .map(|checked| Arc::clone(&checked.set))
    }

    /// Drops the replication origin `origin` of the side at `url` and its workers' (their
    /// recorded progress), one by one: the next capture into that side starts from the slot
    /// alone. Returns whether there was any.
    ///
    /// # Errors
    /// A [`WalError`] when the server is unreachable or refuses (a session applying with one
    /// holds it past 2 s: 55006).
    pub async fn drop_origin(side: Side, url: &str, origin: &str) -> Result<bool, WalError> {
        let mut connection = Connection::open_sql(side, url).await?;
        let rows = connection
            .query(
                &format!(
                    "SELECT roname FROM pg_replication_origin WHERE {}",
                    same_capture(&quote_literal(origin))
                ),
                "the capture's replication origins",
            )
            .await?;
        let names: Vec<String> = rows
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect();
        for name in &names {
            drop_one(&mut connection, name).await?;
        }
        connection.terminate().await?;
        Ok(!names.is_empty())
    }

    /// Ends the session.
    ///
    /// # Errors
    /// A [`WalError`] when the connection fails.
    pub async fn close(self) -> Result<(), WalError> {
        self.connection.terminate().await
    }
}

/// Drops the origin `name` alone (several in one statement would lose the progress of
/// those before one that is refused), waiting up to 2 s for a session of a capture just
/// stopped to let it go.
async fn drop_one(connection: &mut Connection, name: &str) -> Result<(), WalError> {
    let mut attempts = 0;
    loop {
        let dropped = connection
            .query(
                &format!("SELECT pg_replication_origin_drop({})", quote_literal(name)),
                "pg_replication_origin_drop",
            )
            .await;
        match dropped {
            Err(WalError::Server { code, .. }) if code == "55006" && attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other.map(drop),
        }
    }
}

/// A condition on `roname` matching the origin `quoted` (a quoted literal) and those of its
/// workers (`route.rs`).
fn same_capture(quoted: &str) -> String {
    format!(
        "(roname = {quoted} OR (starts_with(roname, {quoted} || '_p') \
         AND substr(roname, length({quoted}) + 3) ~ '^[0-9]+_[0-9]+$'))"
    )
}

/// Execute of the unnamed portal, every row.
const EXECUTE_ALL: [u8; 5] = [0, 0, 0, 0, 0];

/// A Parse of `template` as the statement `name`, its parameter types left to the server
/// (each from its place: a column's type, or the explicit cast around it).
fn parse_body(name: &str, template: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(name.len() + template.len() + 4);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(template.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    body
}

/// A Bind of the statement `name` to `values`, all in text form.
fn bind_body(side: Side, name: &str, values: &[Option<String>]) -> Result<Vec<u8>, WalError> {
    let too_many = || WalError::Protocol {
        side,
        reason: format!(
            "a change with {} values or one too long to send",
            values.len()
        ),
    };
    let mut body = Vec::with_capacity(16 + name.len() + values.len() * 8);
    body.push(0);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(
        &i16::try_from(values.len())
            .map_err(|_| too_many())?
            .to_be_bytes(),
    );
    for value in values {
        match value {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(text) => {
                let length = i32::try_from(text.len()).map_err(|_| too_many())?;
                body.extend_from_slice(&length.to_be_bytes());
                body.extend_from_slice(text.as_bytes());
            }
        }
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    Ok(body)
}

/// What a committed batch did, read from its command tags.
/// `lead_tags`: the tags before the first statement's.
fn applied(
    transactions: usize,
    statements: &[Statement],
    outcome: &Batch,
    lead_tags: usize,
) -> Applied {
    let absent = statements
        .iter()
        .zip(outcome.tags.iter().skip(lead_tags))
        .filter(|(statement, _)| matches!(statement.kind, Expect::Update | Expect::Delete))
        .flat_map(|(statement, tag)| {
            let found = tag
                .rsplit(' ')
                .next()
                .and_then(|count| count.parse::<usize>().ok())
                .unwrap_or(statement.must_find);
            std::iter::repeat_n(
                (statement.table.clone(), statement.kind),
                statement.must_find.saturating_sub(found),
            )
        })
        .collect();
    Applied {
        transactions,
        statements: statements.len(),
        rows: statements.iter().map(|statement| statement.rows).sum(),
        absent,
        ..Applied::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_rows_are_read_from_the_tags_after_begin_and_the_progress() {
        let statement = |kind, table: &str| Statement {
            template: String::new(),
            values: Vec::new(),
            kind,
            table: table.to_owned(),
            row: None,
            rows: 1,
            must_find: usize::from(kind != Expect::Insert),
        };
        let statements = [
            statement(Expect::Insert, "a"),
            statement(Expect::Update, "b"),
            statement(Expect::Delete, "c"),
            statement(Expect::Update, "d"),
        ];
        let outcome = Batch {
            tags: [
                "BEGIN",
                "SELECT 1",
                "INSERT 0 1",
                "UPDATE 0",
                "DELETE 0",
                "UPDATE 1",
            ]
            .into_iter()
            .map(str::to_owned)
            .chain(std::iter::once("COMMIT".to_owned()))
            .collect(),
            ..Batch::default()
        };
        assert_eq!(
            applied(2, &statements, &outcome, 2),
            Applied {
                transactions: 2,
                statements: 4,
                rows: 4,
                absent: vec![
                    ("b".to_owned(), Expect::Update),
                    ("c".to_owned(), Expect::Delete)
                ],
                ..Applied::default()
            }
        );
    }
}
