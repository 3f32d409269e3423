//! Telling reads from writes: a statement that can only read (a plain `SELECT`, `SHOW`,
//! `VALUES`, `TABLE`, `EXPLAIN` without `ANALYZE`) is a read; transaction control is neither;
//! everything else (DML, DDL, locking reads, `SELECT … INTO`, data-modifying CTEs, sequence
//! calls) is a write. A transaction with a write is mirrored whole.

/// Whether `sql` (possibly several statements) may change data or schema.
#[must_use]
pub fn is_write(sql: &str) -> bool {
    sql.split(';').any(|statement| {
        let words = words(statement);
        let Some(first) = words.first() else {
            return false;
        };
        match first.as_str() {
            "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT"
            | "RELEASE" | "SET" | "RESET" | "DISCARD" | "DEALLOCATE" | "LISTEN" | "UNLISTEN"
            | "CLOSE" | "FETCH" | "MOVE" | "SHOW" | "VALUES" | "TABLE" => false,
            "EXPLAIN" => words.iter().any(|word| word == "ANALYZE"),
            "SELECT" | "WITH" => {
                let changes = [
                    "INSERT", "UPDATE", "DELETE", "MERGE", "INTO", "NEXTVAL", "SETVAL",
                ];
                let locks = words.windows(2).any(|pair| {
                    pair[0] == "FOR"
                        && matches!(pair[1].as_str(), "UPDATE" | "SHARE" | "NO" | "KEY")
                });
                locks || words.iter().any(|word| changes.contains(&word.as_str()))
            }
            _ => true,
        }
    })
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
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = statement.chars().peekable();
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(std::mem::take(word).to_uppercase());
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                flush(&mut word, &mut words);
                chars.by_ref().find(|next| *next == '\n');
            }
            '/' if chars.peek() == Some(&'*') => {
                flush(&mut word, &mut words);
                chars.next();
                let mut last = ' ';
                for next in chars.by_ref() {
                    if last == '*' && next == '/' {
                        break;
                    }
                    last = next;
                }
            }
            '\'' | '"' => {
                flush(&mut word, &mut words);
                chars.by_ref().find(|next| *next == c);
            }
            c if c.is_alphanumeric() || c == '_' => word.push(c),
            _ => flush(&mut word, &mut words),
        }
    }
    flush(&mut word, &mut words);
    words
}

/// A short, literal-free form of a statement for records: words and punctuation, quoted
/// values replaced by `?`, at most 200 characters.
#[must_use]
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                chars.by_ref().find(|next| *next == '\'');
                out.push('?');
            }
            c if c.is_whitespace() => {
                if !out.ends_with(' ') && !out.is_empty() {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
        if out.len() >= 200 {
            break;
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_are_told_apart() {
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
            assert!(!is_write(read), "{read}");
        }
        for write in [
            "INSERT INTO items VALUES (1)",
            "update items set x = 1",
            "SELECT * FROM items FOR UPDATE",
            "SELECT * INTO copy FROM items",
            "WITH gone AS (DELETE FROM items RETURNING id) SELECT count(*) FROM gone",
            "SELECT nextval('items_id_seq')",
            "CREATE TABLE t (id int)",
            "EXPLAIN ANALYZE DELETE FROM items",
            "BEGIN; INSERT INTO items VALUES (2); COMMIT",
        ] {
            assert!(is_write(write), "{write}");
        }
        assert!(is_ordered("SELECT * FROM t ORDER BY id"));
        assert!(!is_ordered("SELECT 'ORDER BY' FROM t"));
        assert_eq!(
            fingerprint("INSERT  INTO items\n VALUES (1, 'secret')"),
            "INSERT INTO items VALUES (1, ?)"
        );
    }
}
