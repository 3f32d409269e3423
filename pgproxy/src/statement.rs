//! Statements in a query's text: splitting a simple Query into its statements as PostgreSQL
//! would, telling what a statement does to the transaction or the session, and a literal-free
//! fingerprint of a statement for records and metrics.
//!
//! All three rest on one lexer that follows PostgreSQL's rules for quoting and comments
//! (`standard_conforming_strings` on, as it is by default): `'…'` with `''`, `E'…'` with
//! backslash escapes, `U&'…'`, `B'…'`, `X'…'`, `N'…'`, strings continued on a following line,
//! `"…"` and `U&"…"` identifiers with `""`, `$$…$$` and `$tag$…$tag$`, `--` comments and
//! nesting `/* */` comments. An unterminated quote or comment runs to the end of the text.

/// What kind of lexeme a piece of text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LexemeKind {
    /// A run of whitespace.
    Space,
    /// A `--` comment (without its newline) or a `/* */` comment (they nest).
    Comment,
    /// An unquoted identifier or keyword (letters, digits, `_`, `$`, any non-ASCII).
    Word,
    /// A double-quoted identifier, `"…"` or `U&"…"`.
    QuotedIdent,
    /// A quoted string constant, `'…'`, `E'…'`, `U&'…'`, `B'…'`, `X'…'` or `N'…'`, with any
    /// continuation on a following line.
    String,
    /// A dollar-quoted string constant, `$$…$$` or `$tag$…$tag$`.
    DollarString,
    /// A numeric constant: `42`, `1_000`, `3.14`, `.5`, `6e-3`, `0x1F`.
    Number,
    /// A parameter, `$1`.
    Param,
    /// Any other single character: punctuation and operator characters.
    Symbol,
}

/// One lexeme of a text: its kind, its text and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lexeme<'a> {
    /// What it is.
    pub(crate) kind: LexemeKind,
    /// Its text, quotes and prefixes included.
    pub(crate) text: &'a str,
    /// Its byte offset in the text lexed.
    pub(crate) start: usize,
}

impl Lexeme<'_> {
    /// Whether it is anything but whitespace or a comment.
    pub(crate) fn is_significant(&self) -> bool {
        !matches!(self.kind, LexemeKind::Space | LexemeKind::Comment)
    }

    /// Whether it is the unquoted word `word` (case-insensitive).
    pub(crate) fn is_word(&self, word: &str) -> bool {
        self.kind == LexemeKind::Word && self.text.eq_ignore_ascii_case(word)
    }

    /// Whether it is the character `symbol`.
    pub(crate) fn is_symbol(&self, symbol: u8) -> bool {
        self.kind == LexemeKind::Symbol && self.text.as_bytes() == [symbol]
    }
}

/// The lexemes of a text, in order; together they cover the whole text.
#[derive(Debug, Clone)]
pub(crate) struct Lexer<'a> {
    /// The text.
    sql: &'a str,
    /// Where the next lexeme starts.
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `sql`.
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer { sql, pos: 0 }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Lexeme<'a>;

    fn next(&mut self) -> Option<Lexeme<'a>> {
        let bytes = self.sql.as_bytes();
        let start = self.pos;
        let first = *bytes.get(start)?;
        let second = bytes.get(start + 1).copied();
        // Every end is at an ASCII delimiter or at the end of the text, so on a char boundary:
        // non-ASCII characters only ever appear inside words, quotes and comments.
        let (kind, end) = match first {
            c if is_space(c) => (LexemeKind::Space, skip(bytes, start, is_space)),
            b'-' if second == Some(b'-') => (LexemeKind::Comment, line_end(bytes, start)),
            b'/' if second == Some(b'*') => {
                (LexemeKind::Comment, block_comment_end(bytes, start + 2))
            }
            b'\'' => (LexemeKind::String, string_end(bytes, start + 1, false)),
            b'"' => (LexemeKind::QuotedIdent, quoted_ident_end(bytes, start + 1)),
            b'$' => dollar(self.sql, start),
            b'0'..=b'9' => (LexemeKind::Number, number_end(bytes, start)),
            b'.' if second.is_some_and(|c| c.is_ascii_digit()) => {
                (LexemeKind::Number, number_end(bytes, start))
            }
            c if is_ident_start(c) => word(bytes, start),
            _ => (LexemeKind::Symbol, start + 1),
        };
        self.pos = end;
        Some(Lexeme {
            kind,
            text: self.sql.get(start..end).unwrap_or_default(),
            start,
        })
    }
}

/// PostgreSQL's whitespace.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The end of a line.
fn is_newline(c: u8) -> bool {
    matches!(c, b'\n' | b'\r')
}

/// A character that may start an unquoted identifier (any non-ASCII byte counts).
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// A character that may continue an unquoted identifier.
fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// A character of a dollar quote's tag (after the first).
fn is_tag_char(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// The first index at or after `from` whose byte is not `keep`, or the end.
fn skip(bytes: &[u8], from: usize, keep: impl Fn(u8) -> bool) -> usize {
    bytes
        .iter()
        .skip(from)
        .position(|&c| !keep(c))
        .map_or(bytes.len(), |offset| from + offset)
}

/// The end of a `--` comment starting at `from`: its newline, which is not part of it.
fn line_end(bytes: &[u8], from: usize) -> usize {
    skip(bytes, from, |c| !is_newline(c))
}

/// The end of a block comment whose `/*` ends at `from`; `/* */` nest.
fn block_comment_end(bytes: &[u8], from: usize) -> usize {
    let mut depth = 1usize;
    let mut i = from;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The end of a string constant whose opening quote ends at `from`: `''` is a quote, and so
/// is `\'` with `backslash` escapes (`E'…'`). A string continues after whitespace with a
/// newline followed by another quote, in the same style.
fn string_end(bytes: &[u8], from: usize, backslash: bool) -> usize {
    let mut i = from;
    loop {
        match bytes.get(i) {
            None => return bytes.len(),
            Some(b'\\') if backslash => i += 2,
            Some(b'\'') => {
                if bytes.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else if let Some(next) = continuation(bytes, i + 1) {
                    i = next;
                } else {
                    return i + 1;
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// Where a string constant that closed just before `from` continues: after whitespace (and
/// `--` comments) with at least one newline, another `'` carries on the same string.
fn continuation(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let mut newline = false;
    loop {
        match bytes.get(i) {
            Some(b' ' | b'\t' | 0x0b | 0x0c) => i += 1,
            Some(b'\n' | b'\r') => {
                newline = true;
                i += 1;
            }
            Some(b'-') if bytes.get(i + 1) == Some(&b'-') => i = line_end(bytes, i),
            Some(b'\'') if newline => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The end of a quoted identifier whose opening `"` ends at `from`; `""` is a `"`.
fn quoted_ident_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    loop {
        match bytes.get(i) {
            None => return bytes.len(),
            Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
            Some(b'"') => return i + 1,
            Some(_) => i += 1,
        }
    }
}

/// What starts with the `$` at `start`: a parameter (`$1`), a dollar-quoted string (`$$`,
/// `$tag$`, running to the same delimiter) or else the character `$` alone.
fn dollar(sql: &str, start: usize) -> (LexemeKind, usize) {
    let bytes = sql.as_bytes();
    match bytes.get(start + 1) {
        Some(c) if c.is_ascii_digit() => (
            LexemeKind::Param,
            skip(bytes, start + 1, |c| c.is_ascii_digit()),
        ),
        Some(&c) if c == b'$' || is_ident_start(c) => {
            let tag_end = skip(bytes, start + 1, is_tag_char);
            if bytes.get(tag_end) != Some(&b'$') {
                return (LexemeKind::Symbol, start + 1);
            }
            let tag = sql.get(start..=tag_end).unwrap_or("$$");
            let body = tag_end + 1;
            let end = sql
                .get(body..)
                .and_then(|rest| rest.find(tag))
                .map_or(sql.len(), |at| body + at + tag.len());
            (LexemeKind::DollarString, end)
        }
        _ => (LexemeKind::Symbol, start + 1),
    }
}

/// The end of a numeric constant starting at `start` (a digit, or `.` before a digit).
/// Letters and digits straight after it are taken with it (PostgreSQL rejects them as
/// trailing junk).
fn number_end(bytes: &[u8], start: usize) -> usize {
    let digits = |from: usize| skip(bytes, from, |c| c.is_ascii_digit() || c == b'_');
    let junk = |from: usize| {
        skip(bytes, from, |c| {
            c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
        })
    };
    let radix = matches!(
        bytes.get(start + 1),
        Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
    );
    if bytes[start] == b'0' && radix && bytes.get(start + 2).is_some_and(u8::is_ascii_hexdigit) {
        return junk(start + 2);
    }
    let mut i = digits(start);
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        let sign = matches!(bytes.get(i + 1), Some(b'+' | b'-'));
        let exponent = if sign { i + 2 } else { i + 1 };
        if bytes.get(exponent).is_some_and(u8::is_ascii_digit) {
            i = digits(exponent);
        }
    }
    junk(i)
}

/// The word starting at `start`, or the string or identifier it prefixes (`E'…'`, `B'…'`,
/// `X'…'`, `N'…'`, `U&'…'`, `U&"…"`).
fn word(bytes: &[u8], start: usize) -> (LexemeKind, usize) {
    let end = skip(bytes, start, is_ident_cont);
    match (&bytes[start..end], bytes.get(end), bytes.get(end + 1)) {
        ([b'e' | b'E'], Some(b'\''), _) => (LexemeKind::String, string_end(bytes, end + 1, true)),
        ([b'b' | b'B' | b'x' | b'X' | b'n' | b'N'], Some(b'\''), _) => {
            (LexemeKind::String, string_end(bytes, end + 1, false))
        }
        ([b'u' | b'U'], Some(b'&'), Some(b'\'')) => {
            (LexemeKind::String, string_end(bytes, end + 2, false))
        }
        ([b'u' | b'U'], Some(b'&'), Some(b'"')) => {
            (LexemeKind::QuotedIdent, quoted_ident_end(bytes, end + 2))
        }
        _ => (LexemeKind::Word, end),
    }
}

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
fn trim_space(text: &str) -> &str {
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

/// The longest fingerprint, in bytes.
const FINGERPRINT_BYTES: usize = 200;

/// Words after which a `-` or `+` is the sign of a number rather than an operator.
const OPERAND_AFTER: [&str; 22] = [
    "SELECT",
    "DISTINCT",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "BETWEEN",
    "LIMIT",
    "OFFSET",
    "HAVING",
    "ON",
    "BY",
    "IS",
    "LIKE",
    "ILIKE",
    "TO",
    "RETURN",
    "RETURNING",
];

/// How far the fingerprint has got into a possible `IN (…)` list of literals.
#[derive(Debug, Clone, Copy)]
enum InList {
    /// Not in one.
    Idle,
    /// Just after `IN`.
    AfterIn,
    /// After `(` or `,` of a list whose `(` is at this byte of the fingerprint.
    Open(usize),
    /// After a literal of a list whose `(` is at this byte of the fingerprint.
    Item(usize),
}

impl InList {
    /// Where the list's `(` is in the fingerprint, if in one.
    fn start(self) -> Option<usize> {
        match self {
            InList::Open(start) | InList::Item(start) => Some(start),
            InList::Idle | InList::AfterIn => None,
        }
    }

    /// The state after `lexeme`, whose text was written at byte `at` of `out`; a list that
    /// closes is replaced by `(?)`.
    fn next(self, lexeme: &Lexeme, at: usize, out: &mut String) -> InList {
        let literal = matches!(
            lexeme.kind,
            LexemeKind::String | LexemeKind::DollarString | LexemeKind::Number | LexemeKind::Param
        ) || lexeme.is_symbol(b'?');
        let next = match self {
            InList::AfterIn if lexeme.is_symbol(b'(') => InList::Open(at),
            InList::Open(start) if literal => InList::Item(start),
            InList::Item(start) if lexeme.is_symbol(b',') => InList::Open(start),
            InList::Item(start) if lexeme.is_symbol(b')') => {
                out.truncate(start);
                out.push_str("(?)");
                InList::Idle
            }
            _ => InList::Idle,
        };
        if matches!(next, InList::Idle) && lexeme.is_word("IN") {
            InList::AfterIn
        } else {
            next
        }
    }
}

/// Whether a `-` or `+` after `previous` (the last significant lexeme) is a sign.
fn starts_operand(previous: Option<&Lexeme>) -> bool {
    match previous {
        None => true,
        Some(lexeme) => match lexeme.kind {
            LexemeKind::Symbol => !matches!(lexeme.text, ")" | "]" | "?"),
            LexemeKind::Word => OPERAND_AFTER.iter().any(|word| lexeme.is_word(word)),
            _ => false,
        },
    }
}

/// A short, literal-free form of a statement for records and metrics: its words, quoted
/// identifiers, parameters (`$1`) and punctuation as written (keywords keep their case),
/// whitespace runs and comments as one space, and every literal as `?` — quoted strings with
/// their prefix (`E'…'`, `U&'…'`, `B'…'`, `X'…'`), dollar-quoted strings and numbers (with
/// a sign where one is a sign, `= -1`), but not the digits of identifiers (`t1`). A list of
/// only literals and parameters after `IN` becomes `(?)`: `WHERE id IN (1, 2, $1)` →
/// `WHERE id IN (?)`. At most 200 bytes, cut on a character boundary.
#[must_use]
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::new();
    let mut space = false;
    let mut previous: Option<Lexeme> = None;
    let mut list = InList::Idle;
    let mut lexer = Lexer::new(sql);
    while let Some(mut lexeme) = lexer.next() {
        if !lexeme.is_significant() {
            space = true;
            continue;
        }
        if matches!(lexeme.text, "-" | "+") && starts_operand(previous.as_ref()) {
            let mut ahead = lexer.clone();
            if let Some(number) = ahead
                .find(Lexeme::is_significant)
                .filter(|next| next.kind == LexemeKind::Number)
            {
                lexeme = number;
                lexer = ahead;
            }
        }
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        let at = out.len();
        match lexeme.kind {
            LexemeKind::String | LexemeKind::DollarString | LexemeKind::Number => out.push('?'),
            _ => out.push_str(lexeme.text),
        }
        list = list.next(&lexeme, at, &mut out);
        previous = Some(lexeme);
        // Nothing later can shorten what is written before an open list.
        if out.len() > FINGERPRINT_BYTES
            && list.start().is_none_or(|start| start > FINGERPRINT_BYTES)
        {
            break;
        }
    }
    let mut end = out.len().min(FINGERPRINT_BYTES);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out.truncate(out.trim_end_matches(' ').len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn fingerprints_drop_literals_and_comments() {
        let cases = [
            (
                "INSERT  INTO items\n VALUES (1, 'secret')",
                "INSERT INTO items VALUES (?, ?)",
            ),
            (
                "select * from t1 where col_2 = 42 -- the answer\n and x = $1",
                "select * from t1 where col_2 = ? and x = $1",
            ),
            ("SELECT /* a /* b */ c */ 1", "SELECT ?"),
            (
                "SELECT E'it\\'s', U&'d\\0061t', B'0101', X'1F', N'n', 'a' 'b'",
                "SELECT ?, ?, ?, ?, ?, ? ?",
            ),
            ("SELECT 'a'\n'b'", "SELECT ?"),
            ("SELECT $$x$$, $tag$ 'y' $tag$", "SELECT ?, ?"),
            (
                "SELECT 3.14, .5, 1e-3, 2E+10, 0x1F, 1_000",
                "SELECT ?, ?, ?, ?, ?, ?",
            ),
            ("WHERE id IN (1, 2, 3)", "WHERE id IN (?)"),
            (
                "WHERE id IN ( 'a' , $1,-2 ) OR id not in(7)",
                "WHERE id IN (?) OR id not in(?)",
            ),
            ("WHERE id IN (SELECT 1)", "WHERE id IN (SELECT ?)"),
            ("WHERE id IN ((1, 2))", "WHERE id IN ((?, ?))"),
            ("WHERE id IN (a, 1)", "WHERE id IN (a, ?)"),
            ("WHERE id IN ()", "WHERE id IN ()"),
            (
                "WHERE a = -1 AND b = - 2 AND c = d -3",
                "WHERE a = ? AND b = ? AND c = d -?",
            ),
            ("SELECT -1, x - 1, (y) - 1", "SELECT ?, x - ?, (y) - ?"),
            (
                "SELECT \"Col 1\", a$1, t.c FROM s.t",
                "SELECT \"Col 1\", a$1, t.c FROM s.t",
            ),
            ("  \n ", ""),
            ("SELECT 'unterminated", "SELECT ?"),
        ];
        for (sql, expected) in cases {
            assert_eq!(fingerprint(sql), expected, "{sql}");
        }
    }

    #[test]
    fn fingerprints_are_at_most_200_bytes() {
        let long = format!("SELECT {}", "abc, ".repeat(100));
        let print = fingerprint(&long);
        assert_eq!(print.len(), 200);
        assert!(long.starts_with(&print));
        let spaced = format!("{} y", "x".repeat(199));
        assert_eq!(
            fingerprint(&spaced),
            "x".repeat(199),
            "the trailing space goes too"
        );
        let wide = format!("SELECT {}", "é".repeat(150));
        let print = fingerprint(&wide);
        assert_eq!(print.len(), 199);
        assert!(print.ends_with('é'));
        // A long IN list still collapses.
        let list = (0..1000).map(|n| n.to_string()).collect::<Vec<_>>();
        let sql = format!(
            "SELECT * FROM t WHERE id IN ({}) AND x = 1",
            list.join(", ")
        );
        assert_eq!(
            fingerprint(&sql),
            "SELECT * FROM t WHERE id IN (?) AND x = ?"
        );
    }

    // ---- Properties ----

    /// One fragment of a generated statement, and whether it is a comment.
    fn fragment() -> impl Strategy<Value = (String, bool)> {
        let word = prop_oneof![
            prop_oneof![
                Just("SELECT"),
                Just("insert"),
                Just("Into"),
                Just("from"),
                Just("e"),
                Just("U"),
                Just("x"),
                Just("values"),
            ]
            .prop_map(str::to_owned),
            "w_[a-z0-9_$]{0,6}",
        ];
        let text = "[a-z ;\"]{0,6}";
        let leaf = prop_oneof![
            word,
            "[0-9]{1,4}(\\.[0-9]{1,3})?(e-?[0-9])?",
            "\\$[1-9][0-9]?",
            prop::collection::vec(
                prop_oneof![text.boxed(), Just("''".to_owned()).boxed()],
                0..4
            )
            .prop_map(|parts| format!("'{}'", parts.concat())),
            prop::collection::vec(
                prop_oneof![
                    text.boxed(),
                    Just("''".to_owned()).boxed(),
                    Just("\\'".to_owned()).boxed(),
                    Just("\\\\".to_owned()).boxed(),
                ],
                0..4
            )
            .prop_map(|parts| format!("E'{}'", parts.concat())),
            prop::collection::vec(
                prop_oneof!["[a-z ;']{1,6}".boxed(), Just("\"\"".to_owned()).boxed()],
                1..4
            )
            .prop_map(|parts| format!("\"{}\"", parts.concat())),
            (
                prop_oneof![Just(""), Just("t"), Just("tag_1"), Just("é")],
                "[a-z ;'\"\n]{0,8}"
            )
                .prop_map(|(tag, body)| format!("${tag}${body}${tag}$")),
            prop_oneof![Just(","), Just("="), Just("+"), Just("*"), Just(".")]
                .prop_map(str::to_owned),
        ]
        .prop_map(|text| (text, false));
        let comment = prop_oneof![
            "[a-z ;'\"$]{0,8}".prop_map(|text| format!("--{text}\n")),
            ("[a-z ;'\"$]{0,6}", "[a-z ;'\"$]{0,6}")
                .prop_map(|(outer, inner)| format!("/*{outer}/*{inner}*/{outer}*/")),
        ]
        .prop_map(|text| (text, true));
        let fragment = prop_oneof![4 => leaf, 1 => comment];
        fragment.prop_recursive(3, 32, 5, |inner| {
            prop::collection::vec(
                (inner, prop_oneof![Just(" "), Just(" ; "), Just("\n;")]),
                0..5,
            )
            .prop_map(|parts| {
                let inside: String = parts
                    .into_iter()
                    .map(|((text, _), separator)| format!("{text}{separator}"))
                    .collect();
                (format!("( {inside})"), false)
            })
        })
    }

    /// A generated statement: its text and whether it has anything but comments.
    fn statement() -> impl Strategy<Value = (String, bool)> {
        (
            "[ \t\n]{0,3}",
            prop::collection::vec((fragment(), "[ \t\n]{1,3}"), 0..6),
            "[ \t\n]{0,3}",
        )
            .prop_map(|(lead, fragments, trail)| {
                let content = fragments.iter().any(|((_, comment), _)| !comment);
                let body: String = fragments
                    .into_iter()
                    .map(|((text, _), space)| format!("{text}{space}"))
                    .collect();
                (format!("{lead}{body}{trail}"), content)
            })
    }

    /// A literal for the fingerprint property: no digit or `zq9` of it may show.
    fn literal() -> impl Strategy<Value = String> {
        let text = "[a-z ;\"]{0,5}";
        prop_oneof![
            any::<u32>().prop_map(|n| n.to_string()),
            any::<i32>().prop_map(|n| n.to_string()),
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| format!("{a}.{b}")),
            (1u8..100, -30i8..30).prop_map(|(a, e)| format!("{a}e{e}")),
            any::<u16>().prop_map(|n| format!("- {n}")),
            text.prop_map(|s| format!("'zq9{s}''{s}7'")),
            text.prop_map(|s| format!("E'zq9\\'{s}\\\\8'")),
            text.prop_map(|s| format!("U&'zq9 {s}\\0061'")),
            text.prop_map(|s| format!("$$zq9 {s}$$")),
            text.prop_map(|s| format!("$q$zq9 ;{s} 5$q$")),
            "[01]{1,8}".prop_map(|s| format!("B'{s}'")),
            "[0-9a-f]{1,8}".prop_map(|s| format!("X'{s}'")),
        ]
    }

    /// A clause with literals in it, rendered twice with different literals.
    fn clause() -> impl Strategy<Value = (String, String)> {
        let name = "[a-z_]{1,8}";
        let pair = || (literal(), literal());
        prop_oneof![
            (name, pair()).prop_map(|(n, (a, b))| (format!("{n} = {a}"), format!("{n} = {b}"))),
            (
                name,
                prop::collection::vec(literal(), 1..6),
                prop::collection::vec(literal(), 1..6)
            )
                .prop_map(|(n, a, b)| (
                    format!("{n} IN ({})", a.join(", ")),
                    format!("{n}\n IN\t({})", b.join(" ,"))
                )),
            (pair(), pair()).prop_map(|((a, b), (c, d))| (
                format!("VALUES ({a}, {c})"),
                format!("VALUES\n({b},\t {d})")
            )),
            pair().prop_map(|(a, b)| (format!("SELECT {a}"), format!("SELECT {b}"))),
            name.prop_map(|n| (n.clone(), n)),
            ("[a-z ]{0,5}", "[a-z ]{0,5}")
                .prop_map(|(a, b)| (format!("/* zq9 1 {a} */"), format!("-- zq9 2 {b}\n"))),
        ]
    }

    proptest! {
        #[test]
        fn split_returns_the_non_empty_statements(
            statements in prop::collection::vec(statement(), 0..6),
            last_semicolon in any::<bool>(),
        ) {
            let texts: Vec<&str> = statements.iter().map(|(text, _)| text.as_str()).collect();
            let mut sql = texts.join(";");
            if last_semicolon {
                sql.push(';');
            }
            let expected: Vec<&str> = statements
                .iter()
                .filter(|(_, content)| *content)
                .map(|(text, _)| trim_space(text))
                .collect();
            prop_assert_eq!(split_statements(&sql), expected, "{:?}", sql);
        }

        #[test]
        fn split_returns_ordered_disjoint_substrings(
            sql in prop_oneof![
                any::<String>(),
                "[a-zEU&'\"$;/*()\\\\\\- \n0-9_é]{0,80}",
            ]
        ) {
            let base = sql.as_ptr() as usize;
            let mut end = 0;
            for statement in split_statements(&sql) {
                let start = statement.as_ptr() as usize - base;
                prop_assert!(start >= end, "{:?} overlaps in {:?}", statement, sql);
                end = start + statement.len();
                prop_assert_eq!(sql.get(start..end), Some(statement));
                prop_assert!(!statement.is_empty());
                prop_assert_eq!(trim_space(statement), statement);
            }
            let _ = statement_kind(&sql);
        }

        #[test]
        fn fingerprints_never_panic_and_stay_short(
            sql in prop_oneof![
                any::<String>(),
                "[a-zEU&'\"$;/*()\\\\\\-+ \n0-9_.,é]{0,300}",
            ]
        ) {
            let print = fingerprint(&sql);
            prop_assert!(print.len() <= 200);
            prop_assert!(!print.starts_with(' ') && !print.ends_with(' '), "{:?}", print);
        }

        #[test]
        fn fingerprints_hide_literals_and_ignore_their_values(
            clauses in prop::collection::vec(clause(), 1..8),
        ) {
            let first: Vec<&str> = clauses.iter().map(|(a, _)| a.as_str()).collect();
            let second: Vec<&str> = clauses.iter().map(|(_, b)| b.as_str()).collect();
            let first = fingerprint(&first.join(" AND "));
            let second = fingerprint(&second.join("\n AND  "));
            prop_assert!(!first.contains("zq9"), "{}", first);
            prop_assert!(!first.contains(|c: char| c.is_ascii_digit()), "{}", first);
            prop_assert_eq!(first, second);
        }
    }
}
