//! Statements in a query's text: splitting a simple Query into its statements as PostgreSQL
//! would, telling what a statement does to the transaction or the session, and a literal-free
//! fingerprint of a statement for records and metrics.
//!
//! All three rest on one lexer that follows PostgreSQL's rules for quoting and comments
//! (`standard_conforming_strings` on, as it is by default): `'…'` with `''`, `E'…'` with
//! backslash escapes, `U&'…'`, `B'…'`, `X'…'`, `N'…'`, strings continued on a following line,
//! `"…"` and `U&"…"` identifiers with `""`, `$$…$$` and `$tag$…$tag$`, `--` comments and
//! nesting `/* */` comments. An unterminated quote or comment runs to the end of the text.

mod fingerprint;
mod kind;
mod lexer;
#[cfg(test)]
mod properties;
mod split;

pub use fingerprint::fingerprint;
pub use kind::{statement_kind, StatementKind};
pub(crate) use lexer::{Lexeme, LexemeKind, Lexer};
pub use split::split_statements;
