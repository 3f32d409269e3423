//! Properties of splitting, reading and fingerprinting generated statements.

use proptest::prelude::*;

use super::split::trim_space;
use super::{fingerprint, split_statements, statement_kind};

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
        prop_oneof![Just(","), Just("="), Just("+"), Just("*"), Just(".")].prop_map(str::to_owned),
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
