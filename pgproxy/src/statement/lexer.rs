//! The lexer under every reading of a statement: PostgreSQL's rules for quoting and comments.

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
pub(super) fn is_space(c: u8) -> bool {
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
