//! Response comparison: status codes, and JSON bodies compared structurally.

use bytes::Bytes;
use serde_json::Value;

/// Most differences listed in one mismatch record.
const MAX_LISTED: usize = 5;
/// Longest value excerpt shown in a difference.
const MAX_EXCERPT: usize = 60;

/// JSON paths left out of comparison, like `/updated_at` or `/items/*/etag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnorePaths {
    patterns: Vec<Vec<Option<String>>>,
}

impl IgnorePaths {
    /// Parses JSON-pointer patterns in which a `*` segment matches any key or index.
    ///
    /// # Errors
    /// A reason naming a pattern that does not start with `/`.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<IgnorePaths, String> {
        let patterns = patterns
            .iter()
            .map(|pattern| {
                let pattern = pattern.as_ref().trim();
                let rest = pattern.strip_prefix('/').ok_or_else(|| {
                    format!("{pattern:?} must be a JSON pointer starting with '/'")
                })?;
                Ok(rest
                    .split('/')
                    .map(|part| (part != "*").then(|| part.replace("~1", "/").replace("~0", "~")))
                    .collect())
            })
            .collect::<Result<_, String>>()?;
        Ok(IgnorePaths { patterns })
    }

    fn matches(&self, path: &[String]) -> bool {
        self.patterns.iter().any(|pattern| {
            pattern.len() == path.len()
                && pattern
                    .iter()
                    .zip(path)
                    .all(|(want, got)| want.as_ref().is_none_or(|want| want == got))
        })
    }
}

/// One side's answer, captured for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedResponse {
    /// Status code.
    pub status: u16,
    /// Whether the content type says JSON.
    pub json: bool,
    /// The whole body.
    pub body: Bytes,
}

/// Compares the old side's answer with the new side's; `None` when they agree, else a short diff.
#[must_use]
pub fn diff_responses(
    old: &CapturedResponse,
    new: &CapturedResponse,
    ignore: &IgnorePaths,
) -> Option<String> {
    let mut differences = Vec::new();
    if old.status != new.status {
        differences.push(format!(
            "status: {} (old) vs {} (new)",
            old.status, new.status
        ));
    }
    let parsed = (old.json && new.json)
        .then(|| {
            let old_value = serde_json::from_slice::<Value>(&old.body).ok()?;
            let new_value = serde_json::from_slice::<Value>(&new.body).ok()?;
            Some((old_value, new_value))
        })
        .flatten();
    match parsed {
        Some((old_value, new_value)) => {
            let mut walker = JsonDiff {
                ignore,
                path: Vec::new(),
                differences: &mut differences,
                total: 0,
            };
            walker.compare(&old_value, &new_value);
            let unlisted = walker.total.saturating_sub(MAX_LISTED);
            if unlisted > 0 {
                differences.push(format!("… and {unlisted} more"));
            }
        }
        None if old.body != new.body => differences.push(format!(
            "body: {} bytes (old) vs {} bytes (new), contents differ",
            old.body.len(),
            new.body.len()
        )),
        None => {}
    }
    (!differences.is_empty()).then(|| differences.join("; "))
}

struct JsonDiff<'a> {
    ignore: &'a IgnorePaths,
    path: Vec<String>,
    differences: &'a mut Vec<String>,
    total: usize,
}

impl JsonDiff<'_> {
    fn compare(&mut self, old: &Value, new: &Value) {
        if self.ignore.matches(&self.path) {
            return;
        }
        match (old, new) {
            (Value::Object(old_map), Value::Object(new_map)) => {
                for (key, old_child) in old_map {
                    self.path.push(key.clone());
                    match new_map.get(key) {
                        Some(new_child) => self.compare(old_child, new_child),
                        None => {
                            self.report(&format!("{} (old) vs missing (new)", excerpt(old_child)))
                        }
                    }
                    self.path.pop();
                }
                for (key, new_child) in new_map {
                    if !old_map.contains_key(key) {
                        self.path.push(key.clone());
                        self.report(&format!("missing (old) vs {} (new)", excerpt(new_child)));
                        self.path.pop();
                    }
                }
            }
            (Value::Array(old_items), Value::Array(new_items)) => {
                if old_items.len() != new_items.len() {
                    self.report(&format!(
                        "{} elements (old) vs {} (new)",
                        old_items.len(),
                        new_items.len()
                    ));
                }
                for (index, (old_item, new_item)) in old_items.iter().zip(new_items).enumerate() {
                    self.path.push(index.to_string());
                    self.compare(old_item, new_item);
                    self.path.pop();
                }
            }
            (Value::Number(old_number), Value::Number(new_number)) => {
                let equal = old_number == new_number
                    || old_number
                        .as_f64()
                        .zip(new_number.as_f64())
                        .is_some_and(|(a, b)| a == b);
                if !equal {
                    self.report_values(old, new);
                }
            }
            _ if old != new => self.report_values(old, new),
            _ => {}
        }
    }

    fn report_values(&mut self, old: &Value, new: &Value) {
        self.report(&format!("{} (old) vs {} (new)", excerpt(old), excerpt(new)));
    }

    fn report(&mut self, what: &str) {
        self.total += 1;
        if self.total <= MAX_LISTED {
            let pointer: String = self.path.iter().map(|part| format!("/{part}")).collect();
            let pointer = if pointer.is_empty() {
                "/".to_owned()
            } else {
                pointer
            };
            self.differences.push(format!("{pointer}: {what}"));
        }
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_EXCERPT {
        text
    } else {
        let cut: String = text.chars().take(MAX_EXCERPT).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(status: u16, body: &str) -> CapturedResponse {
        CapturedResponse {
            status,
            json: true,
            body: Bytes::from(body.to_owned()),
        }
    }

    fn no_ignores() -> IgnorePaths {
        IgnorePaths::default()
    }

    #[test]
    fn equal_json_in_another_key_order_agrees() {
        let old = json(200, r#"{"id":1,"tags":["a","b"],"amount":1.5}"#);
        let new = json(200, r#"{"amount":1.50,"tags":["a","b"],"id":1}"#);
        assert_eq!(diff_responses(&old, &new, &no_ignores()), None);
    }

    #[test]
    fn reports_status_and_field_differences_with_paths() {
        let old = json(200, r#"{"id":1,"status":"paid","items":[{"sku":"a"}]}"#);
        let new = json(
            201,
            r#"{"id":1,"status":"open","items":[{"sku":"b"}],"extra":true}"#,
        );
        let diff = diff_responses(&old, &new, &no_ignores()).unwrap();
        assert!(diff.contains("status: 200 (old) vs 201 (new)"), "{diff}");
        assert!(
            diff.contains("/status: \"paid\" (old) vs \"open\" (new)"),
            "{diff}"
        );
        assert!(diff.contains("/items/0/sku"), "{diff}");
        assert!(
            diff.contains("/extra: missing (old) vs true (new)"),
            "{diff}"
        );
    }

    #[test]
    fn ignored_paths_and_wildcards_are_skipped() {
        let ignore = IgnorePaths::parse(&["/updated_at", "/items/*/etag"]).unwrap();
        let old = json(200, r#"{"updated_at":"1","items":[{"etag":"x","n":1}]}"#);
        let new = json(200, r#"{"updated_at":"2","items":[{"etag":"y","n":1}]}"#);
        assert_eq!(diff_responses(&old, &new, &ignore), None);
        let changed = json(200, r#"{"updated_at":"2","items":[{"etag":"y","n":2}]}"#);
        let diff = diff_responses(&old, &changed, &ignore).unwrap();
        assert_eq!(diff, "/items/0/n: 1 (old) vs 2 (new)");
    }

    #[test]
    fn non_json_bodies_compare_bytes() {
        let old = CapturedResponse {
            status: 200,
            json: false,
            body: Bytes::from_static(b"hello"),
        };
        let same = old.clone();
        assert_eq!(diff_responses(&old, &same, &no_ignores()), None);
        let other = CapturedResponse {
            body: Bytes::from_static(b"hullo!"),
            ..old.clone()
        };
        let diff = diff_responses(&old, &other, &no_ignores()).unwrap();
        assert!(diff.contains("5 bytes (old) vs 6 bytes (new)"), "{diff}");
    }

    #[test]
    fn long_lists_of_differences_are_cut() {
        let old = json(200, r#"[1,2,3,4,5,6,7,8]"#);
        let new = json(200, r#"[9,9,9,9,9,9,9,9]"#);
        let diff = diff_responses(&old, &new, &no_ignores()).unwrap();
        assert!(diff.ends_with("… and 3 more"), "{diff}");
    }

    #[test]
    fn malformed_ignore_patterns_are_refused() {
        assert!(IgnorePaths::parse(&["updated_at"]).is_err());
    }
}
