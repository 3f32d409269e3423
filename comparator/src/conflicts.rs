//! The targeted recheck of keys written through two proxies of a fleet at once
//! (`key_conflicts`): each ordering key is mapped to a table's row by that table's
//! `ordering_key` pattern, its row read on both sides with the usual rechecks for copies in
//! flight, and the conflict settled (the sides agree) or reported as a divergence.

use tandem_control::{ConflictOutcome, KeyConflict};

use crate::canonical::{Canonical, Wire};
use crate::database::Database;
use crate::diff::{DivergenceKind, RowDivergence};
use crate::error::CompareError;
use crate::reader::TableReader;
use crate::run::{confirm, key_json, plan_table, recheck, CompareOptions, TablePair};

/// A piece of an ordering-key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Column(String),
}

/// How the proxies' ordering keys name a table's rows: text with `{column}` captures, such as
/// `/orders/{id}` or `/tenants/{tenant}/orders/{id}`. A capture matches one non-empty path
/// segment (no `/`), as the proxy's route captures do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderingKeyPattern {
    parts: Vec<Part>,
}

impl OrderingKeyPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// [`CompareError::InvalidOption`] when a brace is unclosed, a capture has no name, two
    /// captures touch (nothing tells where one ends), or nothing is captured.
    pub fn parse(pattern: &str) -> Result<OrderingKeyPattern, CompareError> {
        let invalid = |why: &str| CompareError::InvalidOption(format!("{pattern:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = pattern;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                parts.push(Part::Literal(rest.to_owned()));
                break;
            };
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(invalid("a '{' is not closed"));
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty() || name.contains('{') {
                return Err(invalid("a capture needs a column name, as in {id}"));
            }
            if matches!(parts.last(), Some(Part::Column(_))) {
                return Err(invalid("two captures must be separated by text"));
            }
            parts.push(Part::Column(name.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if !parts.iter().any(|part| matches!(part, Part::Column(_))) {
            return Err(invalid("it captures no column"));
        }
        Ok(OrderingKeyPattern { parts })
    }

    /// The columns and values `key` gives, in pattern order; `None` when it does not match.
    #[must_use]
    pub fn captures<'k>(&self, key: &'k str) -> Option<Vec<(&str, &'k str)>> {
        let mut rest = key;
        let mut captured = Vec::new();
        let mut parts = self.parts.iter().peekable();
        while let Some(part) = parts.next() {
            match part {
                Part::Literal(text) => rest = rest.strip_prefix(text.as_str())?,
                Part::Column(name) => {
                    let end = match parts.peek() {
                        Some(Part::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let value = &rest[..end];
                    if value.is_empty() || value.contains('/') {
                        return None;
                    }
                    captured.push((name.as_str(), value));
                    rest = &rest[end..];
                }
            }
        }
        rest.is_empty().then_some(captured)
    }
}

/// A table whose rows ordering keys name.
#[derive(Debug, Clone)]
pub(crate) struct ConflictTable {
    pair: TablePair,
    pattern: OrderingKeyPattern,
}

/// The tables `options` give an `ordering_key` pattern (patterns that do not parse were
/// refused with the configuration).
pub(crate) fn conflict_tables(options: &CompareOptions) -> Vec<ConflictTable> {
    options
        .selection
        .tables
        .iter()
        .filter_map(|(name, scoped)| {
            let pattern = OrderingKeyPattern::parse(scoped.ordering_key.as_deref()?).ok()?;
            let pair = options
                .tables
                .iter()
                .find(|pair| &pair.old == name)
                .cloned()
                .unwrap_or_else(|| TablePair::parse(name));
            Some(ConflictTable { pair, pattern })
        })
        .collect()
}

/// What the recheck of one key conflict found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConflictFinding {
    /// How it ends.
    pub outcome: ConflictOutcome,
    /// The table the key names, when one does.
    pub table: Option<String>,
    /// What was found, for people: the key and its divergence, or why it was not checked.
    pub detail: String,
    /// The row still differs but kept changing on both sides through the rechecks: no
    /// alert (the sweeps watch it as any unconverged row).
    pub unconverged: bool,
}

/// Rechecks the row `conflict` names on both sides: read at once, then again after
/// `recheck_delay` up to `rechecks` times while it differs (a copy still in flight).
///
/// # Errors
/// When the table cannot be planned or a query fails (the conflict is then tried again once
/// its claim expires).
pub(crate) async fn recheck_conflict(
    (old, new): (&Database, &Database),
    options: &CompareOptions,
    tables: &[ConflictTable],
    conflict: &KeyConflict,
) -> Result<ConflictFinding, CompareError> {
    let key_text = conflict.ordering_key.as_str();
    let Some((table, captured)) = tables.iter().find_map(|table| {
        let captured = table.pattern.captures(key_text)?;
        Some((table, captured))
    }) else {
        return Ok(ConflictFinding {
            outcome: ConflictOutcome::Unmapped,
            table: None,
            detail: format!("no table's ordering_key pattern matches {key_text:?}"),
            unconverged: false,
        });
    };
    let name = Some(table.pair.old.clone());
    let plan = plan_table(old, new, &table.pair, options).await?;
    let mut key = Vec::with_capacity(plan.keys.len());
    for column in &plan.keys {
        let Some((_, text)) = captured.iter().find(|(name, _)| *name == column.name) else {
            return Ok(ConflictFinding {
                outcome: ConflictOutcome::Unmapped,
                table: name,
                detail: format!(
                    "the ordering_key pattern of {} does not capture key column {}",
                    plan.old_table, column.name
                ),
                unconverged: false,
            });
        };
        let wire = Wire::Text((*text).to_owned());
        key.push(Canonical::from_wire(
            wire,
            column.old.reading,
            &options.settings,
        ));
    }
    let filter = options.filter_for(&plan.old_table);
    let old_reader = TableReader::new(old, &plan, filter, options.settings);
    let new_reader = TableReader::new(new, &plan, filter, options.settings);
    let read = RowDivergence {
        kind: DivergenceKind::Changed,
        key: key.clone(),
        columns: Vec::new(),
    };
    let readers = (&old_reader, &new_reader);
    let differing = recheck(readers, vec![read], &options.settings, &options.throttle())
        .await?
        .into_iter()
        .map(|rechecked| rechecked.divergence)
        .collect();
    let (still, _) = confirm(&old_reader, &new_reader, differing, options).await?;
    let key = key_json(&plan, &key);
    let Some(divergence) = still.first() else {
        return Ok(ConflictFinding {
            outcome: ConflictOutcome::Settled,
            table: name,
            detail: format!("{key}: the same on both sides"),
            unconverged: false,
        });
    };
    let columns: Vec<&str> = divergence
        .columns
        .iter()
        .filter_map(|&index| plan.values.get(index).map(|pair| pair.name.as_str()))
        .collect();
    let columns = if columns.is_empty() {
        String::new()
    } else {
        format!(" ({})", columns.join(", "))
    };
    Ok(ConflictFinding {
        outcome: ConflictOutcome::Diverged,
        table: name,
        detail: format!("{} {key}{columns}", divergence.kind.as_str()),
        unconverged: divergence.kind == DivergenceKind::Unconverged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_one_segment_per_column() {
        let pattern = OrderingKeyPattern::parse("/tenants/{tenant}/orders/{id}").unwrap();
        assert_eq!(
            pattern.captures("/tenants/acme/orders/7"),
            Some(vec![("tenant", "acme"), ("id", "7")])
        );
        assert_eq!(pattern.captures("/tenants/acme/orders/7/items"), None);
        assert_eq!(pattern.captures("/tenants//orders/7"), None);
        assert_eq!(pattern.captures("/orders/7"), None);
        let last = OrderingKeyPattern::parse("/orders/{id}").unwrap();
        assert_eq!(last.captures("/orders/a/b"), None);
        assert_eq!(last.captures("/orders/12"), Some(vec![("id", "12")]));
        for bad in ["/orders/{id", "/orders/{}", "/{a}{b}", "/orders"] {
            assert!(OrderingKeyPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
