//! The settings that give a connection to the other side the reported parameters its
//! session's client was told (its baseline), and the statements of a session that undo them:
//! `RESET ALL`, `RESET x`, `SET x TO DEFAULT`, `SET TIME ZONE LOCAL`, which there bring back
//! that server's defaults rather than the values the client's server had.

use bytes::BytesMut;

use crate::messages::{bare, Bound};
use crate::protocol::{put_cstr, Message};
use crate::statement::{Lexeme, LexemeKind, Lexer};
use crate::tracker::StateStatement;

/// The statement a [`Setting`] runs: its name and value are bound parameters, so that no
/// text of theirs is ever quoted into SQL (which, in a client encoding such as SJIS, could
/// read a backslash inside a character).
const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";

/// [`SET_CONFIG`] for the rest of the transaction only.
const SET_CONFIG_LOCAL: &str = "SELECT pg_catalog.set_config($1, $2, true)";

/// One reported parameter set to the value its client was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The parameter's name, as the client was told it.
    pub name: String,
    /// The value the client was told.
    pub value: String,
}

impl Setting {
    /// Parameter `name` set to `value`.
    #[must_use]
    pub fn new(name: &str, value: &str) -> Setting {
        Setting {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The extended-protocol messages that set it (without the `Sync`).
    #[must_use]
    pub fn messages(&self) -> Vec<Message> {
        self.messages_of(SET_CONFIG)
    }

    /// The messages of `statement` (one of the `set_config` ones) with it bound.
    fn messages_of(&self, statement: &str) -> Vec<Message> {
        let mut parse = BytesMut::new();
        put_cstr(&mut parse, "");
        put_cstr(&mut parse, statement);
        parse.extend_from_slice(&0i16.to_be_bytes());
        let mut bind = BytesMut::new();
        put_cstr(&mut bind, "");
        put_cstr(&mut bind, "");
        bind.extend_from_slice(&0i16.to_be_bytes());
        bind.extend_from_slice(&2i16.to_be_bytes());
        for text in [&self.name, &self.value] {
            // A reported value is far below 2 GiB: the server sent it in one message.
            let length = i32::try_from(text.len()).unwrap_or(i32::MAX);
            bind.extend_from_slice(&length.to_be_bytes());
            bind.extend_from_slice(text.as_bytes());
        }
        bind.extend_from_slice(&0i16.to_be_bytes());
        let mut execute = BytesMut::new();
        put_cstr(&mut execute, "");
        execute.extend_from_slice(&0i32.to_be_bytes());
        vec![
            Message {
                tag: b'P',
                body: parse.freeze(),
            },
            Message {
                tag: b'B',
                body: bind.freeze(),
            },
            Message {
                tag: b'E',
                body: execute.freeze(),
            },
        ]
    }

    /// The messages that set it, with the `Sync` that ends them.
    #[must_use]
    pub fn synced(&self) -> Vec<Message> {
        let mut messages = self.messages();
        messages.push(bare(b'S'));
        messages
    }

    /// It as a statement of a session's settings.
    #[must_use]
    pub fn statement(&self) -> StateStatement {
        StateStatement::Messages(self.messages())
    }

    /// It as a statement that lasts for the rest of its transaction only (as after a
    /// `SET LOCAL x TO DEFAULT`).
    #[must_use]
    pub fn local_statement(&self) -> StateStatement {
        StateStatement::Messages(self.messages_of(SET_CONFIG_LOCAL))
    }
}

/// What a statement puts back to the server's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// Every parameter (`RESET ALL`, `DISCARD ALL`).
    All,
    /// One parameter, by its [`normalized`] name.
    One(String),
}

impl Reset {
    /// The settings of `baseline` that give back what this reset took away there.
    pub fn undone<'a>(&'a self, baseline: &'a [Setting]) -> impl Iterator<Item = &'a Setting> {
        baseline.iter().filter(move |setting| match self {
            Reset::All => !kept_by_reset_all(&normalized(&setting.name)),
            Reset::One(name) => normalized(&setting.name) == *name && !kept_by_reset_all(name),
        })
    }
}

/// A parameter's name as PostgreSQL compares it: case-insensitive, unquoted; `TIME ZONE`
/// (of `SET TIME ZONE`) is `timezone`.
#[must_use]
pub fn normalized(name: &str) -> String {
    let name = name.trim_matches('"').to_ascii_lowercase();
    if name == "time" {
        "timezone".to_owned()
    } else {
        name
    }
}

/// What a statement does to a session's parameters, read with the statement lexer (so
/// comments and quoting count as PostgreSQL counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SET [SESSION|LOCAL] x …`, `SET ROLE` (`role`), `SET SESSION AUTHORIZATION`
    /// (`session_authorization`), `SELECT set_config('x', value, is_local)` with a value.
    Set {
        /// The [`normalized`] name.
        name: String,
        /// Whether it lasts only for its transaction.
        local: bool,
    },
    /// `RESET x`, `RESET ALL`, `SET [SESSION|LOCAL] x TO DEFAULT`, `SET … TIME ZONE LOCAL`,
    /// `SELECT set_config('x', NULL, is_local)`, `RESET ROLE`, `RESET SESSION
    /// AUTHORIZATION`: back to the server's default.
    Reset {
        /// What it puts back.
        reset: Reset,
        /// Whether it lasts only for its transaction.
        local: bool,
    },
    /// `DISCARD ALL`: `RESET ALL`, the role and authorization back too, and more.
    DiscardAll,
}

impl Change {
    /// The name it sets or resets, when it is one parameter that outlives its transaction.
    #[must_use]
    pub fn session_name(&self) -> Option<&str> {
        match self {
            Change::Set { name, local: false }
            | Change::Reset {
                reset: Reset::One(name),
                local: false,
            } => Some(name),
            _ => None,
        }
    }
}

/// The parameters `RESET ALL` leaves as they are.
const KEPT_BY_RESET_ALL: [&str; 2] = ["role", "session_authorization"];

/// Whether `RESET ALL` leaves parameter `name` (normalized) as it is.
#[must_use]
pub fn kept_by_reset_all(name: &str) -> bool {
    KEPT_BY_RESET_ALL.contains(&name)
}

/// What statement `sql` does to the session's parameters, if it is one that sets or resets
/// them (see [`Change`]).
#[must_use]
pub fn change_of(sql: &str) -> Option<Change> {
    change_of_bound(sql, &[])
}

/// [`change_of`] for a statement run with parameters `params` bound, as the extended
/// protocol runs `SELECT set_config($1, $2, false)`.
#[must_use]
pub fn change_of_bound(sql: &str, params: &[Bound]) -> Option<Change> {
    let mut lexemes: Vec<Lexeme> = Lexer::new(sql).filter(Lexeme::is_significant).collect();
    while lexemes.last().is_some_and(|last| last.is_symbol(b';')) {
        lexemes.pop();
    }
    let word = |at: usize, word: &str| lexemes.get(at).is_some_and(|l| l.is_word(word));
    let at_end = |at: usize| lexemes.len() == at;
    if word(0, "DISCARD") && word(1, "ALL") && at_end(2) {
        return Some(Change::DiscardAll);
    }
    if word(0, "SELECT") {
        return set_config_of(&lexemes[1..], params);
    }
    if word(0, "RESET") {
        let reset = if word(1, "ALL") && at_end(2) {
            Reset::All
        } else if word(1, "SESSION") && word(2, "AUTHORIZATION") && at_end(3) {
            Reset::One("session_authorization".to_owned())
        } else {
            let (name, next) = name_at(&lexemes, 1)?;
            at_end(next).then_some(())?;
            Reset::One(name)
        };
        return Some(Change::Reset {
            reset,
            local: false,
        });
    }
    if !word(0, "SET") {
        return None;
    }
    let local = word(1, "LOCAL");
    let at = usize::from(local || word(1, "SESSION")) + 1;
    // `SET SESSION AUTHORIZATION` (the SESSION read above) or `SET LOCAL SESSION …`.
    let authorization = if word(1, "SESSION") && word(2, "AUTHORIZATION") {
        Some(3)
    } else {
        (word(at, "SESSION") && word(at + 1, "AUTHORIZATION")).then_some(at + 2)
    };
    if let Some(value) = authorization {
        return Some(set_or_reset(
            "session_authorization",
            word(value, "DEFAULT") && at_end(value + 1),
            local,
        ));
    }
    if word(at, "ROLE") {
        return Some(set_or_reset(
            "role",
            word(at + 1, "NONE") && at_end(at + 2),
            local,
        ));
    }
    if word(at, "TIME") && word(at + 1, "ZONE") {
        let resets = (word(at + 2, "DEFAULT") || word(at + 2, "LOCAL")) && at_end(at + 3);
        return Some(set_or_reset("timezone", resets, local));
    }
    if word(at, "TRANSACTION") || word(at, "CONSTRAINTS") || word(at, "CHARACTERISTICS") {
        return None;
    }
    let (name, next) = name_at(&lexemes, at)?;
    let to = lexemes
        .get(next)
        .is_some_and(|l| l.is_word("TO") || l.is_symbol(b'='));
    to.then_some(())?;
    let resets = word(next + 1, "DEFAULT") && at_end(next + 2);
    Some(set_or_reset(&name, resets, local))
}

/// A set of `name`, or its reset when `resets`.
fn set_or_reset(name: &str, resets: bool, local: bool) -> Change {
    let name = name.to_owned();
    if resets {
        Change::Reset {
            reset: Reset::One(name),
            local,
        }
    } else {
        Change::Set { name, local }
    }
}

/// The (possibly dotted, possibly quoted) parameter name at `at`, normalized, and where
/// what follows it starts.
fn name_at(lexemes: &[Lexeme], at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut next = at;
    loop {
        let part = lexemes.get(next)?;
        match part.kind {
            LexemeKind::Word => name.push_str(&part.text.to_ascii_lowercase()),
            LexemeKind::QuotedIdent => name.push_str(part.text.trim_matches('"')),
            _ => return None,
        }
        next += 1;
        if !lexemes.get(next).is_some_and(|l| l.is_symbol(b'.')) {
            return Some((normalized(&name), next));
        }
        name.push('.');
        next += 1;
    }
}

/// What `[pg_catalog.]set_config('x', value, is_local)` (the whole of a `SELECT`'s list,
/// `lexemes` being what follows `SELECT`) does, when its arguments are constants or bound
/// parameters.
fn set_config_of(lexemes: &[Lexeme], params: &[Bound]) -> Option<Change> {
    let skip = if lexemes.first()?.is_word("pg_catalog") && lexemes.get(1)?.is_symbol(b'.') {
        2
    } else {
        0
    };
    let lexemes = lexemes.get(skip..)?;
    let call = lexemes.first()?.is_word("set_config") && lexemes.get(1)?.is_symbol(b'(');
    // set_config(name, value, flag): exactly three arguments and nothing after.
    if !call || lexemes.len() != 8 || !lexemes[7].is_symbol(b')') {
        return None;
    }
    if !lexemes[3].is_symbol(b',') || !lexemes[5].is_symbol(b',') {
        return None;
    }
    let name = constant(&lexemes[2], params)??;
    let local = match constant(&lexemes[6], params)??
        .to_ascii_lowercase()
        .as_str()
    {
        "true" | "t" | "on" | "yes" | "y" | "1" => true,
        "false" | "f" | "off" | "no" | "n" | "0" => false,
        _ => return None,
    };
    let resets = constant(&lexemes[4], params)?.is_none();
    Some(set_or_reset(&normalized(&name), resets, local))
}

/// The value of a constant argument: a plain `'…'` string, `NULL` (`Some(None)`), `true` or
/// `false`, or a bound parameter; `None` for anything else.
fn constant(lexeme: &Lexeme, params: &[Bound]) -> Option<Option<String>> {
    match lexeme.kind {
        LexemeKind::Word if lexeme.is_word("NULL") => Some(None),
        LexemeKind::Word if lexeme.is_word("true") || lexeme.is_word("false") => {
            Some(Some(lexeme.text.to_owned()))
        }
        LexemeKind::Param => {
            let at: usize = lexeme.text.get(1..)?.parse().ok()?;
            match params.get(at.checked_sub(1)?)? {
                Bound::Null => Some(None),
                Bound::Text(text) => Some(Some(text.clone())),
                Bound::Binary => None,
            }
        }
        LexemeKind::String => {
            let inner = lexeme.text.strip_prefix('\'')?.strip_suffix('\'')?;
            (!inner.contains('\\') && !inner.contains('\n')).then(|| Some(inner.replace("''", "'")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What session statement `sql` puts back to the server's default for the rest of the
    /// session, if anything (see [`Change::Reset`]; `DISCARD ALL` counts as `RESET ALL`).
    fn reset_of(sql: &str) -> Option<Reset> {
        match change_of(sql)? {
            Change::Reset {
                reset,
                local: false,
            } => Some(reset),
            Change::DiscardAll => Some(Reset::All),
            _ => None,
        }
    }

    #[test]
    fn the_statements_that_bring_back_a_default_are_known() {
        let one = |name: &str| Some(Reset::One(name.to_owned()));
        assert_eq!(reset_of("RESET ALL"), Some(Reset::All));
        assert_eq!(reset_of("reset all;"), Some(Reset::All));
        assert_eq!(reset_of("DISCARD ALL"), Some(Reset::All));
        assert_eq!(reset_of("RESET TimeZone"), one("timezone"));
        assert_eq!(reset_of("RESET \"DateStyle\""), one("datestyle"));
        assert_eq!(reset_of("SET datestyle TO DEFAULT"), one("datestyle"));
        assert_eq!(
            reset_of("set session IntervalStyle=default"),
            one("intervalstyle")
        );
        assert_eq!(reset_of("SET TIME ZONE LOCAL"), one("timezone"));
        assert_eq!(reset_of("SET SESSION TIME ZONE DEFAULT"), one("timezone"));
        assert_eq!(reset_of("SET TIME ZONE 'UTC'"), None);
        assert_eq!(reset_of("SET datestyle TO 'ISO, DMY'"), None);
        assert_eq!(reset_of("SET datestyle TO DEFAULT, x"), None);
        assert_eq!(reset_of("SET LOCAL datestyle TO DEFAULT"), None);
        assert_eq!(
            reset_of("RESET SESSION AUTHORIZATION"),
            one("session_authorization")
        );
        assert_eq!(reset_of("SELECT 1"), None);
        assert_eq!(
            reset_of("SET datestyle TO DEFAULT /* back to the login value */;"),
            one("datestyle")
        );
        assert_eq!(reset_of("/* pool reset */ RESET ALL"), Some(Reset::All));
        assert_eq!(reset_of("RESET ALL -- pool\n"), Some(Reset::All));
        assert_eq!(reset_of("SET x.y TO '1' -- DEFAULT"), None);
        assert_eq!(
            reset_of("SELECT set_config('DateStyle', NULL, false)"),
            one("datestyle")
        );
        assert_eq!(
            reset_of("select pg_catalog.set_config('datestyle', null, 'f');"),
            one("datestyle")
        );
        assert_eq!(reset_of("SELECT set_config('datestyle', NULL, true)"), None);
        assert_eq!(reset_of("SELECT set_config('datestyle', $1, false)"), None);
    }

    #[test]
    fn local_resets_and_sets_are_told_apart() {
        let local_reset = |name: &str| {
            Some(Change::Reset {
                reset: Reset::One(name.to_owned()),
                local: true,
            })
        };
        assert_eq!(
            change_of("SET LOCAL datestyle TO DEFAULT"),
            local_reset("datestyle")
        );
        assert_eq!(
            change_of("SET LOCAL TIME ZONE LOCAL"),
            local_reset("timezone")
        );
        assert_eq!(
            change_of("SELECT set_config('datestyle', NULL, true)"),
            local_reset("datestyle")
        );
        let set = |name: &str, local| {
            Some(Change::Set {
                name: name.to_owned(),
                local,
            })
        };
        assert_eq!(change_of("SET app.\"X\" = 3"), set("app.x", false));
        assert_eq!(
            change_of("SELECT set_config('app.x', '1', false)"),
            set("app.x", false)
        );
        assert_eq!(change_of("SET ROLE pg_monitor"), set("role", false));
        assert_eq!(
            reset_of("SET SESSION AUTHORIZATION DEFAULT"),
            Some(Reset::One("session_authorization".to_owned()))
        );
        assert_eq!(
            change_of("SET SESSION AUTHORIZATION alice"),
            set("session_authorization", false)
        );
        assert_eq!(change_of("SET LOCAL ROLE pg_monitor"), set("role", true));
        assert_eq!(change_of("DISCARD ALL"), Some(Change::DiscardAll));
        assert_eq!(change_of("SET TRANSACTION READ ONLY"), None);
        assert_eq!(change_of("SELECT set_config('a.b', '1', false), 2"), None);
    }

    #[test]
    fn reset_all_leaves_the_role_and_the_authorization() {
        let baseline = [
            Setting::new("session_authorization", "alice"),
            Setting::new("DateStyle", "ISO, DMY"),
        ];
        let names: Vec<&str> = Reset::All
            .undone(&baseline)
            .map(|setting| setting.name.as_str())
            .collect();
        assert_eq!(names, ["DateStyle"]);
    }

    #[test]
    fn a_reset_is_undone_by_the_baseline_settings_of_what_it_reset() {
        let baseline = [
            Setting::new("TimeZone", "Europe/Paris"),
            Setting::new("DateStyle", "ISO, DMY"),
        ];
        let names = |reset: Reset| -> Vec<String> {
            reset
                .undone(&baseline)
                .map(|setting| setting.name.clone())
                .collect()
        };
        assert_eq!(names(Reset::All), ["TimeZone", "DateStyle"]);
        assert_eq!(names(Reset::One("timezone".to_owned())), ["TimeZone"]);
        assert!(names(Reset::One("search_path".to_owned())).is_empty());
    }

    #[test]
    fn a_setting_binds_its_name_and_value_instead_of_quoting_them() {
        let setting = Setting::new("application_name", "a\\' ; DROP TABLE t; --");
        let messages = setting.messages();
        let tags: Vec<u8> = messages.iter().map(|message| message.tag).collect();
        assert_eq!(tags, b"PBE");
        let parse = &messages[0].body;
        assert!(parse
            .windows(SET_CONFIG.len())
            .any(|window| window == SET_CONFIG.as_bytes()));
        let bind = &messages[1].body;
        let value = setting.value.as_bytes();
        let at = bind.len() - 2 - value.len();
        assert_eq!(&bind[at..bind.len() - 2], value);
        assert_eq!(
            i32::from_be_bytes([bind[at - 4], bind[at - 3], bind[at - 2], bind[at - 1]]),
            i32::try_from(value.len()).unwrap_or_default()
        );
    }
}
