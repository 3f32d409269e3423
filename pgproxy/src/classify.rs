//! Telling reads from writes: a statement that can only read (a plain `SELECT`, `SHOW`,
//! `VALUES`, `TABLE`, `EXPLAIN` without `ANALYZE`) is a read; transaction control is neither;
//! everything else (DML, DDL, locking reads, `SELECT … INTO`, data-modifying CTEs, sequence
//! calls) is a write. A transaction with a write is mirrored whole. The `[classify]` section of
//! the config file overrides these rules for statements matching a pattern and for functions.

use std::collections::{BTreeMap, HashMap};

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::error::ConfigError;
use crate::statement::{split_statements, LexemeKind, Lexer};

/// Words that make a `SELECT` or `WITH` change data.
const CHANGING_WORDS: [&str; 5] = ["INSERT", "UPDATE", "DELETE", "MERGE", "INTO"];
/// Functions whose mere mention makes a `SELECT` or `WITH` a write, unless classed `read`.
/// Session-level advisory locks are taken and released on both sides alike (a lock held only
/// there would block the other side's sessions for as long as this one lives).
const WRITING_FUNCTIONS: [&str; 9] = [
    "NEXTVAL",
    "SETVAL",
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_LOCK_SHARED",
    "PG_ADVISORY_UNLOCK",
    "PG_ADVISORY_UNLOCK_SHARED",
    "PG_ADVISORY_UNLOCK_ALL",
];

/// The `[classify]` section of the config file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClassifyConfig {
    /// `[[classify.statements]]`: patterns tried in order before the built-in rules.
    #[serde(default)]
    statements: Vec<StatementOverride>,
    /// `[classify.functions]`: function name → `read` or `write`.
    #[serde(default)]
    functions: BTreeMap<String, String>,
}

/// One `[[classify.statements]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatementOverride {
    /// A regular expression searched for in the statement's text (case-insensitive).
    pattern: String,
    /// `read` or `write`.
    class: String,
}

/// What a configured override makes of a statement or a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
}

impl Class {
    fn parse(key: &str, value: &str) -> Result<Class, ConfigError> {
        match value {
            "read" => Ok(Class::Read),
            "write" => Ok(Class::Write),
            other => Err(ConfigError::Invalid {
                key: key.to_owned(),
                reason: format!("unknown class {other:?} (expected \"read\" or \"write\")"),
            }),
        }
    }
}

/// Tells reads from writes: the built-in rules, with the configured overrides on top.
///
/// Each statement of a query (as PostgreSQL splits it: between `;`s outside quotes, comments and
/// parentheses, without surrounding whitespace) is first
/// searched for each `[[classify.statements]]` pattern in order; the first that matches
/// decides. Otherwise a `SELECT` or `WITH` that calls a function classed `write` (its name
/// followed by `(`) is a write; a function is looked up by its full name as written
/// (`app.bump`) and then by its last part (`bump`), without quoted identifiers. A bare name
/// classed `read` takes a built-in write function (`nextval`, `setval`) out of the rules.
/// The default classifier is the built-in rules alone.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// Patterns and the class they force, first match wins.
    statements: Vec<(Regex, Class)>,
    /// Configured functions by upper-case name, bare or schema-qualified.
    functions: HashMap<String, Class>,
}

impl ClassifyConfig {
    /// The classifier these overrides make.
    ///
    /// # Errors
    /// An invalid pattern, class or function name, named by its key
    /// (`classify.statements[0].pattern`, `classify.functions.bump`).
    pub(crate) fn classifier(&self) -> Result<Classifier, ConfigError> {
        let statements = self
            .statements
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let key = format!("classify.statements[{index}]");
                let pattern = RegexBuilder::new(&rule.pattern)
                    .case_insensitive(true)
                    .build()
                    .map_err(|err| ConfigError::Invalid {
                        key: format!("{key}.pattern"),
                        reason: one_line(&err.to_string()),
                    })?;
                Ok((pattern, Class::parse(&format!("{key}.class"), &rule.class)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        let functions = self
            .functions
            .iter()
            .map(|(name, class)| {
                let key = if is_identifier(name) {
                    format!("classify.functions.{name}")
                } else {
                    format!("classify.functions.{name:?}")
                };
                if !name.split('.').all(is_identifier) {
                    return Err(ConfigError::Invalid {
                        key,
                        reason: "expected a function name, bare or schema-qualified".to_owned(),
                    });
                }
                Ok((name.to_uppercase(), Class::parse(&key, class)?))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Classifier {
            statements,
            functions,
        })
    }
}

impl Classifier {
    /// Whether `sql` (possibly several statements) may change data or schema.
    #[must_use]
    pub fn is_write(&self, sql: &str) -> bool {
        split_statements(sql)
            .into_iter()
            .any(|statement| self.statement_writes(statement))
    }

    fn statement_writes(&self, statement: &str) -> bool {
        let text = statement.trim();
        if text.is_empty() {
            return false;
        }
        if let Some((_, class)) = self.statements.iter().find(|(re, _)| re.is_match(text)) {
            return *class == Class::Write;
        }
        let tokens = tokens(text);
        let words: Vec<&str> = tokens.iter().filter_map(Token::word).collect();
        let Some(first) = words.first() else {
            return false;
        };
        match *first {
            // Two-phase commit's second phase runs outside any block: a write of its own.
            "COMMIT" | "ROLLBACK" if words.get(1) == Some(&"PREPARED") => true,
            "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT"
            | "RELEASE" | "SET" | "RESET" | "DISCARD" | "DEALLOCATE" | "LISTEN" | "UNLISTEN"
            | "CLOSE" | "FETCH" | "MOVE" | "SHOW" | "VALUES" | "TABLE" => false,
            "EXPLAIN" => words.contains(&"ANALYZE"),
            "SELECT" | "WITH" => {
                let locks = words.windows(2).any(|pair| {
                    pair[0] == "FOR" && matches!(pair[1], "UPDATE" | "SHARE" | "NO" | "KEY")
                });
                locks
                    || words.iter().any(|word| {
                        CHANGING_WORDS.contains(word)
                            || (WRITING_FUNCTIONS.contains(word)
                                && self.functions.get(*word) != Some(&Class::Read))
                    })
                    || self.calls_writing_function(&tokens)
            }
            _ => true,
        }
    }

    /// Whether the tokens call (`name(` or `schema.name(`) a function classed `write`.
    fn calls_writing_function(&self, tokens: &[Token]) -> bool {
        if self.functions.is_empty() {
            return false;
        }
        let mut name: Vec<&str> = Vec::new();
        let mut dotted = false;
        for token in tokens {
            match token {
                Token::Word(word) => {
                    if !dotted {
                        name.clear();
                    }
                    name.push(word);
                    dotted = false;
                }
                Token::Symbol('.') if !name.is_empty() => dotted = true,
                Token::Symbol('(') if !name.is_empty() && !dotted => {
                    let full = name.join(".");
                    let last = name.last().copied().unwrap_or_default();
                    let class = self
                        .functions
                        .get(&full)
                        .or_else(|| self.functions.get(last));
                    if class == Some(&Class::Write) {
                        return true;
                    }
                    name.clear();
                }
                Token::Symbol(_) => {
                    name.clear();
                    dotted = false;
                }
            }
        }
        false
    }
}

/// Whether `name` is one unquoted SQL identifier (letters, digits, `_`).
fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// The last line of a multi-line message (a regex syntax error ends with its reason).
fn one_line(message: &str) -> String {
    let last = message.lines().rev().find(|line| !line.trim().is_empty());
    let last = last.unwrap_or(message).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_owned()
}

/// Whether `sql` orders its rows (`ORDER BY`), so that row order is part of its answer.
#[must_use]
pub fn is_ordered(sql: &str) -> bool {
    words(sql)
        .windows(2)
        .any(|pair| pair[0] == "ORDER" && pair[1] == "BY")
}

/// The statement's words in upper case, with comments and quoted text left out.
fn words(statement: &str) -> Vec<String> {
    tokens(statement)
        .into_iter()
        .filter_map(|token| match token {
            Token::Word(word) => Some(word),
            Token::Symbol(_) => None,
        })
        .collect()
}

/// A word (upper case) or one punctuation character of a statement.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Symbol(char),
}

impl Token {
    fn word(&self) -> Option<&str> {
        match self {
            Token::Word(word) => Some(word),
            Token::Symbol(_) => None,
        }
    }
}

/// The statement's words (upper case; numbers and parameters count as words) and punctuation;
/// whitespace, comments and quoted text (strings and quoted identifiers) are left out.
fn tokens(statement: &str) -> Vec<Token> {
    Lexer::new(statement)
        .filter_map(|lexeme| match lexeme.kind {
            LexemeKind::Word | LexemeKind::Number | LexemeKind::Param => {
                Some(Token::Word(lexeme.text.to_uppercase()))
            }
            LexemeKind::Symbol => lexeme.text.chars().next().map(Token::Symbol),
            LexemeKind::Space
            | LexemeKind::Comment
            | LexemeKind::QuotedIdent
            | LexemeKind::String
            | LexemeKind::DollarString => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::fingerprint;

    fn classifier(toml: &str) -> Result<Classifier, ConfigError> {
        toml::from_str::<ClassifyConfig>(toml)
            .expect("a [classify] section")
            .classifier()
    }

    #[test]
    fn reads_and_writes_are_told_apart() {
        let classifier = Classifier::default();
        for read in [
            "SELECT * FROM items WHERE note = 'insert into x'",
            "  -- a comment\n select 1",
            "WITH recent AS (SELECT id FROM items) SELECT count(*) FROM recent",
            "SHOW server_version",
            "EXPLAIN SELECT 1",
            "BEGIN",
            "commit",
            "SET application_name = 'x'",
            "",
        ] {
            assert!(!classifier.is_write(read), "{read}");
        }
        for write in [
            "INSERT INTO items VALUES (1)",
            "update items set x = 1",
            "SELECT * FROM items FOR UPDATE",
            "SELECT * INTO copy FROM items",
            "WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone",
            "SELECT nextval('items_id_seq')",
            "COMMIT PREPARED 'g1'",
            "rollback prepared 'g1'",
            "SELECT pg_advisory_unlock(42)",
            "CREATE TABLE t (id int)",
            "EXPLAIN ANALYZE DELETE FROM items",
            "BEGIN; INSERT INTO items VALUES (2); COMMIT",
        ] {
            assert!(classifier.is_write(write), "{write}");
        }
        assert!(is_ordered("SELECT * FROM t ORDER BY id"));
        assert!(!is_ordered("SELECT 'ORDER BY' FROM t"));
        assert_eq!(
            fingerprint("INSERT  INTO items\n VALUES (1, 'secret')"),
            "INSERT INTO items VALUES (?, ?)"
        );
    }

    #[test]
    fn statement_patterns_come_first_and_the_first_match_wins() {
        let classifier = classifier(
            r#"
            [[statements]]
            pattern = '^insert into audit_log\b'
            class = "read"
            [[statements]]
            pattern = 'pg_advisory_lock|^insert'
            class = "write"
            "#,
        )
        .unwrap();
        assert!(
            !classifier.is_write("INSERT INTO audit_log VALUES (1)"),
            "the first match wins, case-insensitive"
        );
        assert!(!classifier.is_write("BEGIN; INSERT INTO audit_log VALUES (1); COMMIT"));
        assert!(classifier.is_write("BEGIN; INSERT INTO audit_log VALUES (1); DELETE FROM t"));
        assert!(
            classifier.is_write("INSERT INTO audit_logs VALUES (1)"),
            "the next pattern"
        );
        assert!(classifier.is_write("SELECT pg_advisory_lock(1)"));
        assert!(
            !classifier.is_write("SELECT 1"),
            "the built-in rules apply otherwise"
        );
    }

    #[test]
    fn functions_can_be_classed_write_or_read() {
        let classifier = classifier(
            r#"
            [functions]
            bump_counter = "write"
            "audit.bump_counter" = "read"
            NextVal = "read"
            "#,
        )
        .unwrap();
        for write in [
            "SELECT bump_counter(1)",
            "select BUMP_COUNTER (1)",
            "SELECT app.bump_counter(1)",
            "WITH x AS (SELECT 1) SELECT * FROM x, bump_counter(2)",
            "SELECT setval('s', 1)",
        ] {
            assert!(classifier.is_write(write), "{write}");
        }
        for read in [
            "SELECT nextval('s')",
            "SELECT audit.bump_counter(1)",
            "SELECT bump_counter FROM t",
            "SELECT 'bump_counter(1)'",
            "SELECT 1 -- bump_counter(1)",
        ] {
            assert!(!classifier.is_write(read), "{read}");
        }
        assert!(!Classifier::default().is_write("SELECT bump_counter(1)"));
    }

    #[test]
    fn bad_overrides_name_their_key() {
        for (toml, named) in [
            ("[[statements]]\npattern = '(unclosed'\nclass = 'read'", "classify.statements[0].pattern"),
            (
                "[[statements]]\npattern = 'x'\nclass = 'read'\n[[statements]]\npattern = 'y'\nclass = 'wirte'",
                "classify.statements[1].class",
            ),
            ("[functions]\nbump = 'sometimes'", "classify.functions.bump"),
            ("[functions]\n\"bump(\" = 'write'", "classify.functions.\"bump(\""),
        ] {
            let Err(ConfigError::Invalid { key, reason }) = classifier(toml) else {
                panic!("{toml} was accepted");
            };
            assert_eq!(key, named, "{reason}");
            assert!(!reason.contains('\n'), "{reason}");
        }
    }
}
