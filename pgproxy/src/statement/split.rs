//! Splitting a simple Query into its statements as PostgreSQL's parser would.

use super::lexer::{is_space, Lexeme, LexemeKind, Lexer};

/// What `(` / `)` and `BEGIN ATOMIC … END` nesting a statement is in, so that a `;` inside
/// does not end it. Modelled on psql's lexer (psqlscan.l): in `CREATE [OR REPLACE]
/// {FUNCTION|PROCEDURE}`, outside parentheses, `BEGIN ATOMIC` opens a body, and inside it
/// every `BEGIN` or `CASE` opens and every `END` closes.
#[derive(Debug, Default)]
struct Nesting {
    /// Open parentheses.
    parens: u32,
    /// Unquoted words seen.
    words: u32,
    /// The first word is `CREATE`.
    create: bool,
    /// The first words are `CREATE OR [REPLACE]`.
    or_replace: bool,
    /// The statement creates a function or procedure.
    routine: bool,
    /// The last lexeme was a `BEGIN` that may start a body.
    begin: bool,
    /// Open `BEGIN ATOMIC` (and nested `BEGIN`/`CASE`) blocks.
    blocks: u32,
}

impl Nesting {
    /// Takes in the next significant lexeme of the statement.
    fn see(&mut self, lexeme: &Lexeme) {
        let after_begin = std::mem::take(&mut self.begin);
        if lexeme.is_symbol(b'(') {
            self.parens += 1;
        } else if lexeme.is_symbol(b')') {
            self.parens = self.parens.saturating_sub(1);
        } else if lexeme.kind == LexemeKind::Word {
            self.word(lexeme, after_begin);
        }
    }

    fn word(&mut self, lexeme: &Lexeme, after_begin: bool) {
        self.words += 1;
        let is = |word: &str| lexeme.is_word(word);
        match self.words {
            1 => self.create = is("CREATE"),
            2 => {
                self.routine = self.create && (is("FUNCTION") || is("PROCEDURE"));
                self.or_replace = self.create && is("OR");
            }
            3 => self.or_replace &= is("REPLACE"),
            4 => self.routine |= self.or_replace && (is("FUNCTION") || is("PROCEDURE")),
            _ => {}
        }
        if !self.routine || self.parens > 0 {
            return;
        }
        if is("BEGIN") {
            if self.blocks > 0 {
                self.blocks += 1;
            } else {
                self.begin = true;
            }
        } else if is("ATOMIC") && after_begin {
            self.blocks = 1;
        } else if is("CASE") && self.blocks > 0 {
            self.blocks += 1;
        } else if is("END") && self.blocks > 0 {
            self.blocks -= 1;
        }
    }

    /// Whether a `;` here ends the statement.
    fn at_top(&self) -> bool {
        self.parens == 0 && self.blocks == 0
    }
}

/// `text` without PostgreSQL's whitespace around it.
pub(super) fn trim_space(text: &str) -> &str {
    text.trim_matches(|c: char| u8::try_from(c).is_ok_and(is_space))
}

/// Splits a simple-Query string into its statements as PostgreSQL's parser would.
///
/// Each statement comes without its terminating `;` and without surrounding whitespace;
/// statements that are empty or only whitespace and comments are left out, as PostgreSQL
/// leaves them out. A `;` does not split inside quotes, comments, parentheses or a `BEGIN
/// ATOMIC … END` function body. Comments inside or around a statement stay with it.
#[must_use]
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut start = 0;
    let mut content = false;
    let mut nesting = Nesting::default();
    for lexeme in Lexer::new(sql) {
        if !lexeme.is_significant() {
            continue;
        }
        if lexeme.is_symbol(b';') && nesting.at_top() {
            if content {
                statements.push(trim_space(&sql[start..lexeme.start]));
            }
            start = lexeme.start + 1;
            content = false;
            nesting = Nesting::default();
        } else {
            content = true;
            nesting.see(&lexeme);
        }
    }
    if content {
        statements.push(trim_space(&sql[start..]));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_semicolons_outside_quotes() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 1", &["SELECT 1"]),
            ("SELECT 1; SELECT 2;", &["SELECT 1", "SELECT 2"]),
            ("  SELECT 1 ;\n\tSELECT 2  ", &["SELECT 1", "SELECT 2"]),
            (
                "SELECT 'a;b'; SELECT 'it''s; here'",
                &["SELECT 'a;b'", "SELECT 'it''s; here'"],
            ),
            // A backslash is an ordinary character in a standard string...
            ("SELECT '\\'; SELECT 2", &["SELECT '\\'", "SELECT 2"]),
            // ...and escapes a quote in an E'' string.
            ("SELECT E'\\';'; SELECT 2", &["SELECT E'\\';'", "SELECT 2"]),
            ("SELECT e'\\\\'; SELECT 2", &["SELECT e'\\\\'", "SELECT 2"]),
            (
                "SELECT e'a'';\\'b'; SELECT 2",
                &["SELECT e'a'';\\'b'", "SELECT 2"],
            ),
            // The E must be the whole word: here it ends an identifier, the string is standard.
            (
                "SELECT type'\\'; SELECT 2",
                &["SELECT type'\\'", "SELECT 2"],
            ),
            (
                "SELECT U&'d;\\0061'; SELECT 2",
                &["SELECT U&'d;\\0061'", "SELECT 2"],
            ),
            (
                "SELECT B'01;', X'f;'; SELECT 2",
                &["SELECT B'01;', X'f;'", "SELECT 2"],
            ),
            // A string continues on a following line, in the same style.
            (
                "SELECT E'a'\n'\\';'; SELECT 2",
                &["SELECT E'a'\n'\\';'", "SELECT 2"],
            ),
            (
                "SELECT 'a' -- c\n  'b;'; SELECT 2",
                &["SELECT 'a' -- c\n  'b;'", "SELECT 2"],
            ),
            (
                "SELECT \"a;\"\"b\" FROM t; SELECT 2",
                &["SELECT \"a;\"\"b\" FROM t", "SELECT 2"],
            ),
            (
                "SELECT U&\"a;\" FROM t; SELECT 2",
                &["SELECT U&\"a;\" FROM t", "SELECT 2"],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(split_statements(sql), *expected, "{sql}");
        }
    }

    #[test]
    fn dollar_quotes_and_parameters() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT $$a;b$$; SELECT 2", &["SELECT $$a;b$$", "SELECT 2"]),
            (
                "SELECT $fn$ x; $$ ; $other$ $fn$; SELECT 3",
                &["SELECT $fn$ x; $$ ; $other$ $fn$", "SELECT 3"],
            ),
            (
                "SELECT $a$ ; $A$ ; $a$; SELECT 2",
                &["SELECT $a$ ; $A$ ; $a$", "SELECT 2"],
            ),
            (
                "SELECT $_1$;$_1$;SELECT 2",
                &["SELECT $_1$;$_1$", "SELECT 2"],
            ),
            ("SELECT $1; SELECT $2", &["SELECT $1", "SELECT $2"]),
            ("SELECT $1$; SELECT 2", &["SELECT $1$", "SELECT 2"]),
            // `$` continues an identifier, so no quote starts in `a$b$`.
            ("SELECT a$b$; SELECT 2", &["SELECT a$b$", "SELECT 2"]),
            // A `$` that opens no quote is a character of its own.
            ("SELECT $a; SELECT 2", &["SELECT $a", "SELECT 2"]),
            (
                "DO $$BEGIN PERFORM 1; END$$; SELECT 2",
                &["DO $$BEGIN PERFORM 1; END$$", "SELECT 2"],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(split_statements(sql), *expected, "{sql}");
        }
    }

    #[test]
    fn comments_stay_with_their_statement_and_nest() {
        let cases: &[(&str, &[&str])] = &[
            (
                "SELECT 1 -- a;b\n; SELECT 2",
                &["SELECT 1 -- a;b", "SELECT 2"],
            ),
            (
                "SELECT 1 -- a;b\r; SELECT 2",
                &["SELECT 1 -- a;b", "SELECT 2"],
            ),
            (
                "/* a /* nested; */ still; */ SELECT 1; SELECT 2",
                &["/* a /* nested; */ still; */ SELECT 1", "SELECT 2"],
            ),
            (
                "SELECT 1 /* ' */; SELECT 2",
                &["SELECT 1 /* ' */", "SELECT 2"],
            ),
            (
                "SELECT 1 /*/ ; */; SELECT 2",
                &["SELECT 1 /*/ ; */", "SELECT 2"],
            ),
            ("SELECT 1; -- done", &["SELECT 1"]),
            ("SELECT 1; /* done; */ \n", &["SELECT 1"]),
            ("-- only\n; /* c */ ; ", &[]),
            ("SELECT 1 -- no newline", &["SELECT 1 -- no newline"]),
            // `--` and `/*` start comments even inside an operator.
            (
                "SELECT 1+--2;\n3; SELECT 4",
                &["SELECT 1+--2;\n3", "SELECT 4"],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(split_statements(sql), *expected, "{sql}");
        }
    }

    #[test]
    fn parentheses_and_atomic_bodies_hold_their_semicolons() {
        let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO \
                    (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))";
        let sql = format!("{rule}; SELECT 1");
        assert_eq!(split_statements(&sql), [rule, "SELECT 1"]);
        // An unbalanced `)` does not take the depth below zero.
        assert_eq!(
            split_statements("SELECT 1); SELECT (2; 3)"),
            ["SELECT 1)", "SELECT (2; 3)"]
        );

        let function = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\n\
                        BEGIN ATOMIC\n\
                          SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n\
                          SELECT (CASE a WHEN 1 THEN 2 END);\n\
                          SELECT a;\n\
                        END";
        let sql = format!("{function};\nSELECT f(1); END");
        assert_eq!(split_statements(&sql), [function, "SELECT f(1)", "END"]);

        let procedure = "create or replace procedure p() language sql \
                         begin atomic insert into t values (1); insert into t values (2); end";
        let sql = format!("{procedure}; CALL p()");
        assert_eq!(split_statements(&sql), [procedure, "CALL p()"]);

        // BEGIN … END only nests in CREATE FUNCTION/PROCEDURE, and only after BEGIN ATOMIC.
        assert_eq!(
            split_statements("BEGIN; SELECT 1; END; COMMIT"),
            ["BEGIN", "SELECT 1", "END", "COMMIT"]
        );
        assert_eq!(
            split_statements("CREATE TABLE t (a int); SELECT CASE WHEN true THEN 1 END; SELECT 2"),
            [
                "CREATE TABLE t (a int)",
                "SELECT CASE WHEN true THEN 1 END",
                "SELECT 2"
            ]
        );
        let plpgsql = "CREATE FUNCTION g() RETURNS void AS $$ BEGIN PERFORM 1; END $$ \
                       LANGUAGE plpgsql";
        let sql = format!("{plpgsql}; SELECT g()");
        assert_eq!(split_statements(&sql), [plpgsql, "SELECT g()"]);
        let named = "CREATE FUNCTION begin() RETURNS int RETURN 1";
        let sql = format!("{named}; SELECT begin()");
        assert_eq!(split_statements(&sql), [named, "SELECT begin()"]);
    }

    #[test]
    fn empty_statements_are_dropped() {
        let none: [&str; 0] = [];
        assert_eq!(split_statements(""), none);
        assert_eq!(split_statements(" \n\t"), none);
        assert_eq!(split_statements(";;"), none);
        assert_eq!(split_statements(";;SELECT 1;; ;\n;"), ["SELECT 1"]);
    }

    #[test]
    fn unterminated_quotes_and_comments_run_to_the_end() {
        for sql in [
            "SELECT 'abc; SELECT 2",
            "SELECT E'abc\\'; SELECT 2",
            "SELECT \"abc; SELECT 2",
            "SELECT $$abc; SELECT 2",
            "SELECT $t$abc; $T$ SELECT 2",
            "SELECT 1 /* abc; /* */ SELECT 2",
            "SELECT E'\\",
        ] {
            assert_eq!(split_statements(sql), [sql], "{sql}");
        }
    }

    #[test]
    fn statements_borrow_from_the_query() {
        let sql = String::from("SELECT 1; SELECT 2");
        let statements = split_statements(&sql);
        let range = sql.as_bytes().as_ptr_range();
        for statement in statements {
            assert!(range.contains(&statement.as_ptr()));
        }
    }
}
