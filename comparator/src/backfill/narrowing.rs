//! Column pairs whose new side declares less room than the old side: a shorter `varchar(n)`,
//! a `numeric(p,s)` with fewer digits before or after the point, NOT NULL where the old side
//! takes NULL. The data may well fit (a `varchar(255)` holding short names), so the backfill
//! names each such column in a warning as it starts and goes on; a value that does not fit
//! makes the new side refuse its chunk's bulk `COPY` (logged with the new side's reason), and
//! the row way's cast to the declared type then cuts or rounds it (PostgreSQL; MySQL's
//! `INSERT IGNORE` clips it): the altered row is left different by the chunk's verification,
//! counted as unconverged, exit 1. A NULL for NOT NULL or an out-of-range number fails the
//! batch instead, and the chunk with it (exit 2).

use crate::database::{Database, Engine};
use crate::kinds::ColumnKind;
use crate::plan::ColumnSelection;
use crate::schema::{Column, TableSchema};

use super::preflight::key_of;

/// Logs one warning per column the copy carries into a narrower new-side column.
pub(super) fn warn_of_narrowing(
    (old_db, old_schema): (&Database, &TableSchema),
    (new_db, new_schema): (&Database, &TableSchema),
    selection: &ColumnSelection,
) {
    let selection = selection.for_table(&old_schema.name);
    let key = key_of(old_schema, selection.key.clone());
    let copied = old_schema
        .columns
        .iter()
        .filter(|column| selection.copies(&key, &column.name));
    for old in copied {
        let Some(new) = new_schema.column(&old.name) else {
            continue;
        };
        let reasons = narrowings((old_db, old), (new_db, new));
        if !reasons.is_empty() {
            tracing::warn!(
                "table {}, column {}: {}; a value that does not fit leaves its row unconverged",
                new_schema.name,
                new.name,
                reasons.join(", ")
            );
        }
    }
}

/// Why `new` may not hold every value of `old`, one phrase per reason; empty when it holds
/// them all.
fn narrowings(
    (old_db, old): (&Database, &Column),
    (new_db, new): (&Database, &Column),
) -> Vec<String> {
    let mut found = Vec::new();
    let is = |kinds: &[ColumnKind], column: &Column| {
        column.kind.is_some_and(|kind| kinds.contains(&kind))
    };
    let texts = [ColumnKind::Text, ColumnKind::Char];
    if is(&texts, old) && is(&texts, new) {
        if let Some(room) = length(new_db, new) {
            if length(old_db, old).is_none_or(|held| held > room) {
                found.push(format!(
                    "new type {} is shorter than old type {}",
                    new.declared, old.declared
                ));
            }
        }
    }
    let decimals = [ColumnKind::Decimal];
    if is(&decimals, old) && is(&decimals, new) {
        if let Some((digits, scale)) = precision(new_db, new) {
            let narrower = precision(old_db, old).is_none_or(|(held, held_scale)| {
                held.saturating_sub(held_scale) > digits.saturating_sub(scale) || held_scale > scale
            });
            if narrower {
                found.push(format!(
                    "new type {} holds fewer digits than old type {}",
                    new.declared, old.declared
                ));
            }
        }
    }
    if old.nullable && !new.nullable {
        found.push("NOT NULL on the new side, nullable on the old side".to_owned());
    }
    found
}

/// The characters a text column holds at most, as declared (`varchar(n)`, `char(n)`); `None`
/// when unbounded or on SQLite, which does not enforce a declared length.
fn length(db: &Database, column: &Column) -> Option<u64> {
    let declared = column.declared.to_ascii_lowercase();
    if db.engine == Engine::Sqlite || !declared.contains("char") {
        return None;
    }
    arguments(&declared).first().copied()
}

/// A decimal column's declared precision and scale (`numeric(p,s)`, `numeric(p)`); `None`
/// when unbounded (PostgreSQL `numeric`) or on SQLite, which does not enforce them.
fn precision(db: &Database, column: &Column) -> Option<(u64, u64)> {
    if db.engine == Engine::Sqlite {
        return None;
    }
    match arguments(&column.declared).as_slice() {
        [digits] => Some((*digits, 0)),
        [digits, scale] => Some((*digits, *scale)),
        _ => None,
    }
}

/// The numbers between a declared type's first parentheses: `(12,2)` → `[12, 2]`.
fn arguments(declared: &str) -> Vec<u64> {
    let Some((_, after)) = declared.split_once('(') else {
        return Vec::new();
    };
    let Some((inside, _)) = after.split_once(')') else {
        return Vec::new();
    };
    inside
        .split(',')
        .map(|number| number.trim().parse())
        .collect::<Result<_, _>>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::arguments;

    #[test]
    fn reads_the_numbers_a_type_is_declared_with() {
        assert_eq!(arguments("numeric(12,2)"), [12, 2]);
        assert_eq!(arguments("character varying(50)"), [50]);
        assert_eq!(arguments("decimal(10, 0) unsigned"), [10, 0]);
        assert!(arguments("text").is_empty());
        assert!(arguments("enum('a','b')").is_empty());
    }
}
