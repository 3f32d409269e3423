//! Reading the JSON reports of `tandem compare` and `tandem repair`.

// A test fails by panicking; a report without the expected shape is such a failure.
#![allow(clippy::unwrap_used)]

use serde_json::Value;

/// The report of one table.
///
/// # Panics
/// When the report has no such table.
#[must_use]
pub fn table<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|table| table["table"] == name)
        .unwrap_or_else(|| panic!("no table {name} in {report}"))
}

/// `(kind, key, columns)` of every listed divergence, sorted.
///
/// # Panics
/// When the table has no list of divergences.
#[must_use]
pub fn divergences(table: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut found: Vec<(String, String, Vec<String>)> = table["divergences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let columns = d["columns"]
                .as_array()
                .map(|columns| {
                    columns
                        .iter()
                        .map(|c| c.as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["key"].to_string(),
                columns,
            )
        })
        .collect();
    found.sort();
    found
}
