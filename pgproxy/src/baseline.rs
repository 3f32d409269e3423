//! The settings that give a connection to the other side the reported parameters its
//! session's client was told (its baseline), and the statements of a session that undo them:
//! `RESET ALL`, `RESET x`, `SET x TO DEFAULT`, `SET TIME ZONE LOCAL`, which there bring back
//! that server's defaults rather than the values the client's server had.

use bytes::BytesMut;

use crate::messages::bare;
use crate::protocol::{put_cstr, Message};
use crate::tracker::StateStatement;

/// The statement a [`Setting`] runs: its name and value are bound parameters, so that no
/// text of theirs is ever quoted into SQL (which, in a client encoding such as SJIS, could
/// read a backslash inside a character).
const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";

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
        let mut parse = BytesMut::new();
        put_cstr(&mut parse, "");
        put_cstr(&mut parse, SET_CONFIG);
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
            Reset::All => true,
            Reset::One(name) => normalized(&setting.name) == *name,
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

/// What session statement `sql` puts back to the server's default, if anything: `RESET ALL`,
/// `DISCARD ALL`, `RESET x`, `SET [SESSION] x TO DEFAULT` (or `= DEFAULT`),
/// `SET [SESSION] TIME ZONE LOCAL` or `DEFAULT`. (`SET LOCAL` lasts only for its
/// transaction.)
#[must_use]
pub fn reset_of(sql: &str) -> Option<Reset> {
    let spaced = sql.replace('=', " = ");
    let words: Vec<String> = spaced
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_uppercase)
        .collect();
    let word = |at: usize| words.get(at).map(String::as_str);
    match (word(0)?, word(1)?) {
        ("DISCARD" | "RESET", "ALL") => Some(Reset::All),
        ("RESET", "SESSION") if word(2) == Some("AUTHORIZATION") => None,
        ("RESET", name) => Some(Reset::One(normalized(name))),
        ("SET", _) => {
            let at = usize::from(word(1) == Some("SESSION")) + 1;
            let name = word(at)?;
            if name == "LOCAL" {
                return None;
            }
            let (name, value) = if name == "TIME" && word(at + 1) == Some("ZONE") {
                ("TIME", word(at + 2)?)
            } else {
                match word(at + 1)? {
                    "TO" | "=" => (name, word(at + 2)?),
                    _ => return None,
                }
            };
            let resets = value == "DEFAULT" || (name == "TIME" && value == "LOCAL");
            (resets && word(at + 3).is_none()).then(|| Reset::One(normalized(name)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(reset_of("RESET SESSION AUTHORIZATION"), None);
        assert_eq!(reset_of("SELECT 1"), None);
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
