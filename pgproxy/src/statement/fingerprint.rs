//! A literal-free fingerprint of a statement, for records and metrics.

use super::lexer::{Lexeme, LexemeKind, Lexer};

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
}
