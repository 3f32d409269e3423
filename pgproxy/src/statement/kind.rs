//! What a statement does to the transaction or the session.

use super::lexer::{Lexeme, LexemeKind, Lexer};

/// What a statement does to the transaction or the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// `BEGIN [WORK|TRANSACTION] [modes…]` or `START TRANSACTION [modes…]`.
    Begin,
    /// `COMMIT` or `END [WORK|TRANSACTION] [AND [NO] CHAIN]`; `chain` true only for `AND CHAIN`.
    Commit {
        /// Whether a new transaction starts straight away (`AND CHAIN`).
        chain: bool,
    },
    /// `ROLLBACK` or `ABORT [WORK|TRANSACTION] [AND [NO] CHAIN]` (not `ROLLBACK TO`, not
    /// `ROLLBACK PREPARED`).
    Rollback {
        /// Whether a new transaction starts straight away (`AND CHAIN`).
        chain: bool,
    },
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// `ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// `PREPARE TRANSACTION 'gid'` (ends the transaction, two-phase).
    PrepareTransaction,
    /// A statement whose effect outlives its transaction in the session: `SET` / `SET
    /// SESSION` (not `SET LOCAL`, not `SET TRANSACTION`, but `SET SESSION CHARACTERISTICS`
    /// counts), `RESET`, `DISCARD`, `DEALLOCATE`, `PREPARE name [(types)] AS …`, `LOAD`, a
    /// `SELECT` that calls `set_config(…)` (any args), `SET ROLE` / `SET SESSION
    /// AUTHORIZATION` / `RESET ROLE`.
    SessionState,
    /// Anything else.
    Other,
}

/// What the statement `sql` does to the transaction or the session.
///
/// Keywords are case-insensitive; leading comments and a trailing `;` are allowed. Savepoint
/// names are folded to lower case unless double-quoted, and cut to 63 bytes, as PostgreSQL
/// does. A transaction-control statement that PostgreSQL would reject as a syntax error
/// (`COMMIT nonsense`) is [`StatementKind::Other`]; so are `COMMIT PREPARED` and `ROLLBACK
/// PREPARED`, and `SET CONSTRAINTS` (it lasts only for the transaction).
#[must_use]
pub fn statement_kind(sql: &str) -> StatementKind {
    let mut significant = Lexer::new(sql).filter(Lexeme::is_significant);
    let Some(first) = significant.next() else {
        return StatementKind::Other;
    };
    // Reads are common and may be long: look for set_config( as they go by.
    if first.is_word("SELECT") || first.is_word("WITH") {
        let mut previous: Option<Lexeme> = None;
        for lexeme in significant {
            let name = previous.is_some_and(|previous| {
                previous.is_word("set_config")
                    || (previous.kind == LexemeKind::QuotedIdent
                        && previous.text == "\"set_config\"")
            });
            if name && lexeme.is_symbol(b'(') {
                return StatementKind::SessionState;
            }
            previous = Some(lexeme);
        }
        return StatementKind::Other;
    }
    // Nor is there any need to read a long INSERT.
    if !KIND_WORDS.iter().any(|word| first.is_word(word)) {
        return StatementKind::Other;
    }
    let mut lexemes: Vec<Lexeme> = std::iter::once(first).chain(significant).collect();
    while lexemes.last().is_some_and(|last| last.is_symbol(b';')) {
        lexemes.pop();
    }
    Cursor {
        lexemes: &lexemes,
        at: 0,
    }
    .kind()
    .unwrap_or(StatementKind::Other)
}

/// The first words of the statements [`Cursor::kind`] reads.
const KIND_WORDS: [&str; 14] = [
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ABORT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "PREPARE",
    "SET",
    "RESET",
    "DISCARD",
    "DEALLOCATE",
    "LOAD",
];

/// The longest name PostgreSQL keeps, in bytes (`NAMEDATALEN - 1`).
const MAX_NAME_BYTES: usize = 63;

/// A position in a statement's significant lexemes, for reading its grammar.
struct Cursor<'s, 'a> {
    /// The statement's lexemes, without whitespace, comments and a trailing `;`.
    lexemes: &'s [Lexeme<'a>],
    /// The next lexeme to read.
    at: usize,
}

impl<'a> Cursor<'_, 'a> {
    /// The next lexeme, not read.
    fn peek(&self) -> Option<&Lexeme<'a>> {
        self.lexemes.get(self.at)
    }

    /// Whether every lexeme has been read.
    fn done(&self) -> bool {
        self.at >= self.lexemes.len()
    }

    /// Reads the word `word` if it comes next.
    fn eat(&mut self, word: &str) -> bool {
        let found = self.peek().is_some_and(|next| next.is_word(word));
        self.at += usize::from(found);
        found
    }

    /// Reads any one of `words` if it comes next.
    fn eat_any(&mut self, words: &[&str]) -> bool {
        words.iter().any(|word| self.eat(word))
    }

    /// Reads the character `symbol` if it comes next.
    fn eat_symbol(&mut self, symbol: u8) -> bool {
        let found = self.peek().is_some_and(|next| next.is_symbol(symbol));
        self.at += usize::from(found);
        found
    }

    /// The statement's kind, or `None` for [`StatementKind::Other`].
    fn kind(&mut self) -> Option<StatementKind> {
        let first = self.peek().filter(|first| first.kind == LexemeKind::Word)?;
        let first = first.text.to_ascii_uppercase();
        self.at += 1;
        match first.as_str() {
            "BEGIN" => {
                self.eat_any(&["WORK", "TRANSACTION"]);
                self.modes().then_some(StatementKind::Begin)
            }
            "START" => (self.eat("TRANSACTION") && self.modes()).then_some(StatementKind::Begin),
            "COMMIT" | "END" => {
                self.eat_any(&["WORK", "TRANSACTION"]);
                Some(StatementKind::Commit {
                    chain: self.chain()?,
                })
            }
            "ABORT" => {
                self.eat_any(&["WORK", "TRANSACTION"]);
                Some(StatementKind::Rollback {
                    chain: self.chain()?,
                })
            }
            "ROLLBACK" => {
                self.eat_any(&["WORK", "TRANSACTION"]);
                if self.eat("TO") {
                    self.savepoint().map(StatementKind::RollbackTo)
                } else {
                    Some(StatementKind::Rollback {
                        chain: self.chain()?,
                    })
                }
            }
            "SAVEPOINT" => {
                let name = self.name()?;
                self.done().then_some(StatementKind::Savepoint(name))
            }
            "RELEASE" => self.savepoint().map(StatementKind::Release),
            "PREPARE" => self.prepare(),
            "SET" => {
                let local = self.eat("LOCAL")
                    || self.peek().is_some_and(|next| {
                        next.is_word("TRANSACTION") || next.is_word("CONSTRAINTS")
                    });
                (!local && !self.done()).then_some(StatementKind::SessionState)
            }
            "RESET" | "DISCARD" | "DEALLOCATE" | "LOAD" => {
                (!self.done()).then_some(StatementKind::SessionState)
            }
            _ => None,
        }
    }

    /// Reads `[AND [NO] CHAIN]` to the end: whether it chains, or `None` if something else
    /// follows.
    fn chain(&mut self) -> Option<bool> {
        let chain = if self.eat("AND") {
            let no = self.eat("NO");
            if !self.eat("CHAIN") {
                return None;
            }
            !no
        } else {
            false
        };
        self.done().then_some(chain)
    }

    /// Reads transaction modes to the end (`ISOLATION LEVEL …`, `READ ONLY|WRITE`, `[NOT]
    /// DEFERRABLE`, commas between them optional): whether that is all that follows.
    fn modes(&mut self) -> bool {
        if self.done() {
            return true;
        }
        loop {
            let mode = if self.eat("ISOLATION") {
                self.eat("LEVEL")
                    && (self.eat("SERIALIZABLE")
                        || (self.eat("REPEATABLE") && self.eat("READ"))
                        || (self.eat("READ") && self.eat_any(&["COMMITTED", "UNCOMMITTED"])))
            } else if self.eat("READ") {
                self.eat_any(&["ONLY", "WRITE"])
            } else {
                self.eat("NOT");
                self.eat("DEFERRABLE")
            };
            if !mode {
                return false;
            }
            if self.done() {
                return true;
            }
            self.eat_symbol(b',');
        }
    }

    /// Reads `[SAVEPOINT] name` to the end (`SAVEPOINT` alone names a savepoint `savepoint`).
    fn savepoint(&mut self) -> Option<String> {
        if self.lexemes.len() > self.at + 1 {
            self.eat("SAVEPOINT");
        }
        let name = self.name()?;
        self.done().then_some(name)
    }

    /// Reads a name as PostgreSQL folds it: an unquoted word in lower case, a quoted
    /// identifier as written (`""` a `"`, `U&"…"` escapes decoded), at most 63 bytes.
    fn name(&mut self) -> Option<String> {
        let lexeme = *self.peek()?;
        self.at += 1;
        let name = match lexeme.kind {
            LexemeKind::Word => lexeme.text.to_ascii_lowercase(),
            LexemeKind::QuotedIdent => match lexeme.text.get(..2) {
                Some("U&" | "u&") => {
                    let escape = if self.eat("UESCAPE") {
                        self.escape_char()?
                    } else {
                        '\\'
                    };
                    unicode_unescape(&unquote(lexeme.text.get(2..)?)?, escape)?
                }
                _ => unquote(lexeme.text)?,
            },
            _ => return None,
        };
        if name.is_empty() {
            return None;
        }
        let mut end = name.len().min(MAX_NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Some(name[..end].to_owned())
    }

    /// Reads the `'c'` of `UESCAPE 'c'`.
    fn escape_char(&mut self) -> Option<char> {
        let lexeme = self.peek().filter(|next| next.kind == LexemeKind::String)?;
        let mut chars = lexeme.text.strip_prefix('\'')?.strip_suffix('\'')?.chars();
        let escape = chars.next()?;
        let valid = !escape.is_ascii_hexdigit()
            && !escape.is_whitespace()
            && !matches!(escape, '+' | '\'' | '"');
        self.at += 1;
        (chars.next().is_none() && valid).then_some(escape)
    }

    /// Reads the rest of `PREPARE`: `TRANSACTION 'gid'`, or `name [(types)] AS statement`.
    fn prepare(&mut self) -> Option<StatementKind> {
        let rest = &self.lexemes[self.at..];
        if let [transaction, gid] = rest {
            let quoted = gid.kind == LexemeKind::String
                && !matches!(gid.text.as_bytes().first(), Some(b'b' | b'B' | b'x' | b'X'));
            if transaction.is_word("TRANSACTION") && quoted {
                return Some(StatementKind::PrepareTransaction);
            }
        }
        self.name()?;
        if self.eat_symbol(b'(') {
            let mut depth = 1u32;
            while depth > 0 {
                let next = self.peek()?;
                if next.is_symbol(b'(') {
                    depth += 1;
                } else if next.is_symbol(b')') {
                    depth -= 1;
                }
                self.at += 1;
            }
        }
        (self.eat("AS") && !self.done()).then_some(StatementKind::SessionState)
    }
}

/// The text of a quoted identifier `"…"` with `""` unescaped, or `None` if unterminated.
fn unquote(quoted: &str) -> Option<String> {
    let mut chars = quoted.strip_prefix('"')?.chars();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        if c != '"' {
            text.push(c);
        } else if chars.clone().next() == Some('"') {
            chars.next();
            text.push('"');
        } else {
            return chars.next().is_none().then_some(text);
        }
    }
    None
}

/// `text` with the Unicode escapes of a `U&` identifier decoded (`\XXXX`, `\+XXXXXX`, UTF-16
/// surrogate pairs, `\\`), or `None` if one is invalid.
fn unicode_unescape(text: &str, escape: char) -> Option<String> {
    fn hex(chars: &mut std::str::Chars, digits: usize) -> Option<u32> {
        (0..digits).try_fold(0u32, |code, _| {
            Some(code * 16 + chars.next()?.to_digit(16)?)
        })
    }
    let mut decoded = String::new();
    let mut chars = text.chars();
    let mut high: Option<u32> = None;
    while let Some(c) = chars.next() {
        let code = if c != escape {
            None
        } else if chars.clone().next() == Some(escape) {
            chars.next();
            None
        } else if chars.clone().next() == Some('+') {
            chars.next();
            Some(hex(&mut chars, 6)?)
        } else {
            Some(hex(&mut chars, 4)?)
        };
        match (high.take(), code) {
            (None, None) => decoded.push(c),
            (None, Some(0xD800..=0xDBFF)) => high = code,
            (Some(high), Some(low @ 0xDC00..=0xDFFF)) => {
                decoded.push(char::from_u32(
                    0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00),
                )?);
            }
            (None, Some(code)) if code != 0 => decoded.push(char::from_u32(code)?),
            _ => return None,
        }
    }
    high.is_none().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_recognised() {
        use StatementKind::*;
        let cases = [
            ("BEGIN", Begin),
            ("begin;", Begin),
            ("  -- start\n BEGIN WORK", Begin),
            ("/* x */ Begin Transaction ;", Begin),
            (
                "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY DEFERRABLE",
                Begin,
            ),
            (
                "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ NOT DEFERRABLE",
                Begin,
            ),
            ("START TRANSACTION", Begin),
            (
                "start transaction read write, isolation level read committed",
                Begin,
            ),
            ("START", Other),
            ("BEGIN ISOLATION LEVEL", Other),
            ("BEGIN READ ONLY,", Other),
            ("BEGIN ATOMIC", Other),
            ("COMMIT", Commit { chain: false }),
            ("commit work;", Commit { chain: false }),
            ("END", Commit { chain: false }),
            ("END TRANSACTION AND NO CHAIN", Commit { chain: false }),
            ("COMMIT AND CHAIN", Commit { chain: true }),
            ("end and chain", Commit { chain: true }),
            ("COMMIT AND", Other),
            ("COMMIT PREPARED 'x'", Other),
            ("COMMIT nonsense", Other),
            ("ROLLBACK", Rollback { chain: false }),
            ("abort", Rollback { chain: false }),
            ("ROLLBACK TRANSACTION AND CHAIN", Rollback { chain: true }),
            ("ABORT WORK AND NO CHAIN;", Rollback { chain: false }),
            ("ROLLBACK PREPARED 'x'", Other),
            ("ABORT TO s", Other),
            ("SAVEPOINT Sp1", Savepoint("sp1".to_owned())),
            ("SAVEPOINT \"Sp\"\"1\"", Savepoint("Sp\"1".to_owned())),
            ("savepoint ÄB", Savepoint("Äb".to_owned())),
            ("SAVEPOINT", Other),
            ("SAVEPOINT a b", Other),
            ("SAVEPOINT \"\"", Other),
            ("RELEASE SAVEPOINT Sp1", Release("sp1".to_owned())),
            ("release sp1;", Release("sp1".to_owned())),
            ("RELEASE SAVEPOINT", Release("savepoint".to_owned())),
            ("RELEASE \"a b\"", Release("a b".to_owned())),
            ("ROLLBACK TO SAVEPOINT S", RollbackTo("s".to_owned())),
            ("ROLLBACK WORK TO s", RollbackTo("s".to_owned())),
            (
                "rollback transaction to savepoint \"S\"",
                RollbackTo("S".to_owned()),
            ),
            ("ROLLBACK TO", Other),
            ("PREPARE TRANSACTION 'gid-1'", PrepareTransaction),
            ("prepare transaction E'g\\'id';", PrepareTransaction),
            ("PREPARE TRANSACTION", Other),
        ];
        for (sql, kind) in cases {
            assert_eq!(statement_kind(sql), kind, "{sql}");
        }
    }

    #[test]
    fn names_fold_and_unescape_as_postgres_does() {
        use StatementKind::Savepoint;
        let long = "a".repeat(70);
        assert_eq!(
            statement_kind(&format!("SAVEPOINT {long}")),
            Savepoint("a".repeat(63))
        );
        let wide = "é".repeat(40);
        assert_eq!(
            statement_kind(&format!("SAVEPOINT \"{wide}\"")),
            Savepoint("é".repeat(31))
        );
        assert_eq!(
            statement_kind("SAVEPOINT U&\"d\\0061t\\+000061\\\\\""),
            Savepoint("data\\".to_owned())
        );
        assert_eq!(
            statement_kind("SAVEPOINT U&\"d!0061t!D83D!DE00\" UESCAPE '!'"),
            Savepoint("dat\u{1F600}".to_owned())
        );
        for bad in [
            "SAVEPOINT U&\"d\\00\"",
            "SAVEPOINT U&\"\\D83D\"",
            "SAVEPOINT U&\"a\" UESCAPE '+'",
            "SAVEPOINT \"open",
        ] {
            assert_eq!(statement_kind(bad), StatementKind::Other, "{bad}");
        }
    }

    #[test]
    fn session_state_is_recognised() {
        use StatementKind::*;
        let cases = [
            ("SET search_path TO app", SessionState),
            ("set work_mem = '64MB';", SessionState),
            ("SET SESSION statement_timeout = 0", SessionState),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                SessionState,
            ),
            ("SET ROLE app", SessionState),
            ("SET SESSION AUTHORIZATION bob", SessionState),
            ("SET LOCAL search_path TO app", Other),
            ("SET LOCAL ROLE app", Other),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Other),
            ("SET TRANSACTION SNAPSHOT '0001'", Other),
            ("SET CONSTRAINTS ALL DEFERRED", Other),
            ("SET", Other),
            ("RESET ALL", SessionState),
            ("RESET ROLE", SessionState),
            ("reset session authorization", SessionState),
            ("DISCARD ALL", SessionState),
            ("DEALLOCATE ALL", SessionState),
            ("deallocate prepare s1", SessionState),
            ("LOAD 'auto_explain'", SessionState),
            ("PREPARE s1 AS SELECT 1", SessionState),
            ("PREPARE s2 (int, text[]) AS SELECT $1, $2", SessionState),
            ("PREPARE transaction AS SELECT 1", SessionState),
            ("PREPARE s1", Other),
            ("PREPARE s1 (int AS SELECT 1", Other),
            (
                "SELECT set_config('search_path', 'app', false)",
                SessionState,
            ),
            (
                "select pg_catalog.SET_CONFIG('a.b', 'c', true), 1",
                SessionState,
            ),
            (
                "WITH x AS (SELECT 1) SELECT set_config('a.b', 'c', false)",
                SessionState,
            ),
            ("SELECT 'set_config(1)'", Other),
            ("SELECT set_config FROM t", Other),
            ("SELECT 1", Other),
            ("INSERT INTO t VALUES (1)", Other),
            ("", Other),
            (";", Other),
            ("-- nothing", Other),
        ];
        for (sql, kind) in cases {
            assert_eq!(statement_kind(sql), kind, "{sql}");
        }
    }
}
