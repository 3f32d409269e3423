//! The statements of one target transaction with the changes nobody can see left out: a
//! batch commits as one transaction on the other side, so only its end state shows there,
//! and an update of a row that a later statement of the batch overwrites whole (the same
//! columns set again) or deletes changes nothing of that end state. A hot row (TPC-B's
//! branches) updated hundreds of times in a batch is then written once. Pure.
//!
//! Only the row's own statements are merged; the others keep their order. A statement
//! whose row is not known by a key that stays the same (a key changed, `REPLICA IDENTITY
//! FULL`) forgets what was seen of its table, and a truncate everything. Leaving a change
//! out can make a batch meet a unique constraint of another column in another state than
//! the source did (a value freed and taken again inside the batch): the caller applies the
//! batch again without coalescing when the coalesced one is refused.

use std::collections::HashMap;

use super::render::{Expect, Statement};

/// `statements` without the updates a later statement of the same row covers (the same
/// template, so the same columns set; or a delete of the row); how many were left out.
#[must_use]
pub fn coalesce(statements: Vec<Statement>) -> (Vec<Statement>, usize) {
    let mut keep = vec![true; statements.len()];
    {
        // The last update of each row (table, key) since what forgot it.
        let mut last_update: HashMap<(&str, &[Option<String>]), usize> = HashMap::new();
        for (index, statement) in statements.iter().enumerate() {
            let Some(row) = statement.row.as_deref() else {
                if statement.kind == Expect::Truncate {
                    last_update.clear();
                } else {
                    last_update.retain(|(table, _), _| *table != statement.table);
                }
                continue;
            };
            let key = (statement.table.as_str(), row);
            match statement.kind {
                Expect::Update => {
                    if let Some(earlier) = last_update.insert(key, index) {
                        if statements[earlier].template == statement.template {
                            keep[earlier] = false;
                        }
                    }
                }
                Expect::Delete => {
                    if let Some(earlier) = last_update.remove(&key) {
                        keep[earlier] = false;
                    }
                }
                Expect::Insert => {
                    last_update.remove(&key);
                }
                Expect::Truncate => last_update.clear(),
            }
        }
    }
    let dropped = keep.iter().filter(|kept| !**kept).count();
    let kept = statements
        .into_iter()
        .zip(keep)
        .filter_map(|(statement, kept)| kept.then_some(statement))
        .collect();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn statement(
        kind: Expect,
        table: &str,
        key: Option<i32>,
        columns: &str,
        value: i32,
    ) -> Statement {
        Statement {
            template: format!("{kind:?} {table} {columns}"),
            values: vec![Some(value.to_string())],
            kind,
            table: table.to_owned(),
            row: key.map(|key| vec![Some(key.to_string())]),
            rows: 1,
            must_find: 1,
        }
    }

    #[test]
    fn a_row_updated_again_with_the_same_columns_is_written_once() {
        let statements = vec![
            statement(Expect::Update, "b", Some(1), "n", 1),
            statement(Expect::Update, "b", Some(2), "n", 2),
            statement(Expect::Insert, "h", None, "all", 3),
            statement(Expect::Update, "b", Some(1), "n", 4),
            statement(Expect::Update, "b", Some(1), "n,toast", 5),
            statement(Expect::Update, "b", Some(1), "n,toast", 6),
        ];
        let (kept, dropped) = coalesce(statements.clone());
        assert_eq!(dropped, 2);
        assert_eq!(
            kept,
            vec![
                statements[1].clone(),
                statements[2].clone(),
                statements[3].clone(),
                statements[5].clone()
            ]
        );
    }

    #[test]
    fn a_delete_covers_the_updates_before_it_and_barriers_keep_the_rest() {
        let statements = vec![
            statement(Expect::Update, "b", Some(1), "n", 1),
            statement(Expect::Delete, "b", Some(1), "", 0),
            statement(Expect::Update, "b", Some(2), "n", 2),
            // A key that changed: nothing of table b before it is left out.
            statement(Expect::Update, "b", None, "n", 3),
            statement(Expect::Update, "b", Some(2), "n", 4),
            statement(Expect::Update, "c", Some(9), "n", 5),
            statement(Expect::Truncate, "x, y", None, "", 0),
            statement(Expect::Update, "c", Some(9), "n", 6),
            statement(Expect::Insert, "c", Some(7), "all", 7),
            statement(Expect::Update, "c", Some(7), "n", 8),
        ];
        let (kept, dropped) = coalesce(statements.clone());
        assert_eq!(dropped, 1);
        assert_eq!(kept, statements[1..].to_vec());
    }

    /// A change of the model: which row of which table, what it does.
    #[derive(Debug, Clone)]
    enum Step {
        /// Update of columns (all, or only the first) of the row with key `key`.
        Update {
            table: u8,
            key: u8,
            all: bool,
        },
        Insert {
            table: u8,
            key: u8,
        },
        Delete {
            table: u8,
            key: u8,
        },
        /// An update whose key changed from `key` to `to`.
        Rekey {
            table: u8,
            key: u8,
            to: u8,
        },
        Truncate,
    }

    fn step() -> impl Strategy<Value = Step> {
        let (table, key) = (0_u8..2, 0_u8..4);
        prop_oneof![
            4 => (table.clone(), key.clone(), any::<bool>()).prop_map(|(table, key, all)| Step::Update { table, key, all }),
            1 => (table.clone(), key.clone()).prop_map(|(table, key)| Step::Insert { table, key }),
            1 => (table.clone(), key.clone()).prop_map(|(table, key)| Step::Delete { table, key }),
            1 => (table, key.clone(), key).prop_map(|(table, key, to)| Step::Rekey { table, key, to }),
            1 => Just(Step::Truncate),
        ]
    }

    /// Tables of rows (key to two columns), changed as the other side would by the rendered
    /// statements (an insert is an upsert; updates and deletes of an absent row do nothing).
    type Tables = BTreeMap<(String, String), (String, String)>;

    fn run(statements: &[Statement], tables: &mut Tables) {
        for statement in statements {
            let value = statement.values[0].clone().unwrap_or_default();
            match statement.kind {
                Expect::Truncate => tables.clear(),
                Expect::Insert => {
                    let key = statement
                        .row
                        .as_ref()
                        .and_then(|row| row[0].clone())
                        .unwrap_or_default();
                    tables.insert((statement.table.clone(), key), (value.clone(), value));
                }
                Expect::Delete => {
                    let key = statement
                        .row
                        .as_ref()
                        .and_then(|row| row[0].clone())
                        .unwrap_or_default();
                    tables.remove(&(statement.table.clone(), key));
                }
                Expect::Update => {
                    let (key, to) = match &statement.row {
                        Some(row) => (row[0].clone().unwrap_or_default(), None),
                        // The model's rekey: "from>to" in the second value.
                        None => {
                            let text = statement.values[1].clone().unwrap_or_default();
                            let (from, to) = text.split_once('>').unwrap_or_default();
                            (from.to_owned(), Some(to.to_owned()))
                        }
                    };
                    let Some(mut row) = tables.remove(&(statement.table.clone(), key.clone()))
                    else {
                        continue;
                    };
                    row.0 = value.clone();
                    if statement.template.ends_with("all") {
                        row.1 = value;
                    }
                    tables.insert((statement.table.clone(), to.unwrap_or(key)), row);
                }
            }
        }
    }

    fn rendered(steps: &[Step]) -> Vec<Statement> {
        steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let value = Some(index.to_string());
                let table = |table: &u8| format!("t{table}");
                match step {
                    Step::Update { table: t, key, all } => Statement {
                        template: format!(
                            "update {} {}",
                            table(t),
                            if *all { "all" } else { "first" }
                        ),
                        values: vec![value],
                        kind: Expect::Update,
                        table: table(t),
                        row: Some(vec![Some(key.to_string())]),
                        rows: 1,
                        must_find: 1,
                    },
                    Step::Insert { table: t, key } => Statement {
                        template: format!("insert {}", table(t)),
                        values: vec![value],
                        kind: Expect::Insert,
                        table: table(t),
                        row: Some(vec![Some(key.to_string())]),
                        rows: 1,
                        must_find: 1,
                    },
                    Step::Delete { table: t, key } => Statement {
                        template: format!("delete {}", table(t)),
                        values: vec![value],
                        kind: Expect::Delete,
                        table: table(t),
                        row: Some(vec![Some(key.to_string())]),
                        rows: 1,
                        must_find: 1,
                    },
                    Step::Rekey { table: t, key, to } => Statement {
                        template: format!("update {} all", table(t)),
                        values: vec![value, Some(format!("{key}>{to}"))],
                        kind: Expect::Update,
                        table: table(t),
                        row: None,
                        rows: 1,
                        must_find: 1,
                    },
                    Step::Truncate => Statement {
                        template: "truncate".to_owned(),
                        values: vec![value],
                        kind: Expect::Truncate,
                        table: "t0, t1".to_owned(),
                        row: None,
                        rows: 1,
                        must_find: 1,
                    },
                }
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// Against a model of the other side: the coalesced statements leave every table
        /// exactly as all of them do, from any starting rows.
        #[test]
        fn coalesced_statements_end_in_the_same_rows(
            steps in proptest::collection::vec(step(), 0..60),
            start in proptest::collection::btree_set((0_u8..2, 0_u8..4), 0..8),
        ) {
            let mut all: Tables = start
                .iter()
                .map(|(table, key)| ((format!("t{table}"), key.to_string()), ("s".to_owned(), "s".to_owned())))
                .collect();
            let mut merged = all.clone();
            let statements = rendered(&steps);
            run(&statements, &mut all);
            let (kept, dropped) = coalesce(statements.clone());
            prop_assert_eq!(kept.len() + dropped, statements.len());
            run(&kept, &mut merged);
            prop_assert_eq!(all, merged);
        }
    }
}
