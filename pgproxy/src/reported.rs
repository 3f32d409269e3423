//! The parameters a server reports to its client (ParameterStatus: `TimeZone`, `DateStyle`,
//! `server_version`, …), kept as the client was told them when its session goes on with a
//! connection of the other side: those a session may set are set back there to the values
//! told, and the others that differ are told anew (logged and counted), so that a moved
//! session never goes on with values its client does not know of. A session's mirror
//! connection (statement capture) takes them on the same way before it runs anything of the
//! session's, so that what a value's text means there (a time zone, a date order, an interval
//! style) is what it meant to the client's server; those it cannot take on are logged and
//! counted.

use bytes::BytesMut;
use metrics::counter;
use tandem_control::Side;

use crate::baseline::Setting;
use crate::error::PgProxyError;
use crate::protocol::{put_cstr, put_message};
use crate::snapshot::escaped_literal;
use crate::stream::ServerStream;
use crate::text_query::{answered_each, rows};

/// The parameters PostgreSQL reports to its clients (`GUC_REPORT`), spelled as it reports
/// them; read besides those a login reported, so that one a server of another version adds
/// is not missed.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Reported parameters that shape what a statement's text means (how a date, time, interval
/// or string literal is read, which bytes are which characters) and that every PostgreSQL
/// lets any session set: those a transaction kept for replay sets to its client's values
/// when the other side could not be read.
const SHAPING: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "standard_conforming_strings",
    "TimeZone",
];

/// Reported parameters tandem never sets itself, even where a session could: setting one
/// changes who the session is.
const NEVER_SET: &[&str] = &["session_authorization"];

/// Settings no PostgreSQL before 18 reports to its client that shape what a session's
/// statements do or answer (which table an unqualified name is, how a float, a `bytea`, a
/// currency or an XML value is written, how long a statement may run, which isolation a
/// transaction gets, whether triggers fire): a session that moves reads them on the side it
/// leaves and keeps them on the side taking over, as a database or role default of one side
/// only (`ALTER DATABASE … SET search_path`) would otherwise change them under it, silently.
/// Its client was told none of them, so none is told; one that cannot be kept is logged and
/// counted.
const UNREPORTED: &[&str] = &[
    "array_nulls",
    "backslash_quote",
    "bytea_output",
    "default_tablespace",
    "default_text_search_config",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "quote_all_identifiers",
    "row_security",
    "search_path",
    "session_replication_role",
    "statement_timeout",
    "synchronous_commit",
    "temp_tablespaces",
    "timezone_abbreviations",
    "transform_null_equals",
    "xmlbinary",
    "xmloption",
];

/// One reported parameter on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reported {
    /// Its name, as the server reports it.
    pub name: String,
    /// Its value (`current_setting`, as the server reports it); `None` when that server has
    /// no such parameter.
    pub value: Option<String>,
    /// Whether a session may set it there (`pg_settings.context` `user` or `superuser`: the
    /// latter only as a superuser, which a `SET` then finds out).
    pub settable: bool,
}

/// A reported parameter whose value on the side a session went on with differs from what its
/// client was told: the client is told the new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParameterChange {
    /// Its name.
    pub name: String,
    /// The value the client was told (`None`: it was told of no such parameter).
    pub told: Option<String>,
    /// The value now (`None`: that side has no such parameter, which cannot be told).
    pub now: Option<String>,
}

impl ParameterChange {
    /// Appends the ParameterStatus that tells the client, when there is a value to tell.
    ///
    /// # Errors
    /// When the message cannot be framed.
    pub(crate) fn put_status(&self, wire: &mut BytesMut) -> Result<(), PgProxyError> {
        let Some(now) = &self.now else {
            return Ok(());
        };
        let mut body = BytesMut::new();
        put_cstr(&mut body, &self.name);
        put_cstr(&mut body, now);
        put_message(wire, b'S', &body)
    }

    /// Counts it, and logs it for a session that went from `from` to `to`: a warning the
    /// first time this process sees the parameter change (a major-version migration changes
    /// `server_version` for every moved session), at debug level after that.
    pub(crate) fn record(&self, from: Side, to: Side) {
        self.say(
            "tandem_pg_session_parameters_changed_total",
            Some(self.name.clone()),
            (from, to),
            "a moved session's client is told a reported parameter's new value",
            "a session went on with a server whose value of a reported parameter differs from \
             what its client was told and cannot be set back; the client is told the new value \
             (when there is one); later sessions' changes of it are counted in \
             tandem_pg_session_parameters_changed_total and logged at debug level",
        );
    }

    /// Counts it, and logs it, for a moved session whose setting no server reports (its
    /// client was never told it) could not be kept at the value it had on the side it left:
    /// a warning the first time this process sees the setting, at debug level after that.
    pub(crate) fn record_unkept(&self, from: Side, to: Side) {
        self.say(
            "tandem_pg_session_settings_unkept_total",
            Some(format!("unkept {}", self.name)),
            (from, to),
            "a moved session goes on with another value of a setting",
            "a moved session goes on with another value of a setting that shapes what its \
             statements do, which the side taking over would not let it set; later sessions' \
             are counted in tandem_pg_session_settings_unkept_total and logged at debug level",
        );
    }

    /// Counts it, and logs it, for a mirror connection on the `mirror` side of a session
    /// served by `authoritative`: for a parameter that shapes what statements mean, a
    /// warning the first time this process sees it differ there (its statements run there
    /// with this value, which may make them write other values than the client's did; the
    /// comparator finds them); otherwise (`server_version`, `is_superuser`, …, which differ
    /// on every migration between major versions) and after that, at debug level.
    pub(crate) fn record_on_mirror(&self, authoritative: Side, mirror: Side) {
        self.say(
            "tandem_pg_mirror_parameters_differ_total",
            shapes(&self.name).then(|| format!("mirror {}", self.name)),
            (authoritative, mirror),
            "a mirror connection runs a session's statements with another value of a reported parameter",
            "a mirror connection cannot take on the value of a reported parameter its session's \
             client was told: the session's statements run there with another, which may make \
             them write other values; later mirror connections' differences are counted in \
             tandem_pg_mirror_parameters_differ_total and logged at debug level",
        );
    }

    /// Counts it in `metric` and logs it between sides `from` and `to` (`was`: the value told,
    /// or had on the side left; `now`: the value there): `loud` as a warning the first time
    /// this process sees `first_as` (`None`: never loud), `quiet` at debug level otherwise.
    fn say(
        &self,
        metric: &'static str,
        first_as: Option<String>,
        (from, to): (Side, Side),
        quiet: &'static str,
        loud: &'static str,
    ) {
        counter!(metric, "parameter" => self.name.clone()).increment(1);
        let (was, now) = (
            self.told.as_deref().unwrap_or("(none)"),
            self.now.as_deref().unwrap_or("(none)"),
        );
        if first_as.is_some_and(|seen_as| first_change_of(&seen_as)) {
            tracing::warn!(parameter = %self.name, was, now, %from, %to, "{loud}");
        } else {
            tracing::debug!(parameter = %self.name, was, now, %from, %to, "{quiet}");
        }
    }
}

/// Updates what a client was `told` (name, value) with the `changes` it was told since.
pub(crate) fn tell(told: &mut Vec<(String, String)>, changes: &[ParameterChange]) {
    for change in changes {
        let Some(now) = &change.now else { continue };
        match told
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(&change.name))
        {
            Some((_, value)) => value.clone_from(now),
            None => told.push((change.name.clone(), now.clone())),
        }
    }
}

/// Whether this is the first change of parameter `name` (a key: the parameter's name, with
/// where it changed) this process records.
fn first_change_of(name: &str) -> bool {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    SEEN.get_or_init(Default::default)
        .lock()
        .map_or(true, |mut seen| seen.insert(name.to_owned()))
}

/// What was done to keep a session's reported parameters as its client was told them.
#[derive(Debug, Default)]
pub(crate) struct Kept {
    /// The settings made there (as statements that make them elsewhere too).
    pub settings: Vec<Setting>,
    /// What still differs, to be told to the client.
    pub changes: Vec<ParameterChange>,
}

/// The names to read: those a login reported (`reported`), then the known ones it lacked.
pub(crate) fn names(reported: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(reported.len() + REPORTED.len());
    let known = reported
        .iter()
        .map(|(name, _)| name.as_str())
        .chain(REPORTED.iter().copied());
    for name in known {
        if !names.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    names
}

/// The names a moving session reads and keeps: those of [`names`], then the settings no
/// server reports that shape what its statements do ([`UNREPORTED`]).
pub(crate) fn moving_names(reported: &[(String, String)]) -> Vec<String> {
    let mut names = names(reported);
    for name in UNREPORTED {
        if !names.iter().any(|seen| seen.eq_ignore_ascii_case(name)) {
            names.push((*name).to_owned());
        }
    }
    names
}

/// Whether `name` is one of the settings no server reports ([`UNREPORTED`]): its client was
/// never told it, so a change of it is not told either.
pub(crate) fn unreported(name: &str) -> bool {
    UNREPORTED
        .iter()
        .any(|unreported| unreported.eq_ignore_ascii_case(name))
}

/// What the client was told at login (`greeted`, the login's ParameterStatus values), as read.
pub(crate) fn told_at_login(greeted: &[(String, String)]) -> Vec<Reported> {
    greeted
        .iter()
        .map(|(name, value)| Reported {
            name: name.clone(),
            value: Some(value.clone()),
            settable: false,
        })
        .collect()
}

/// What must be set on a server whose parameters are `there` so that its session goes on as
/// the client was `told`: each parameter that differs, that a session may set, and whose
/// told value is known (name, value).
pub(crate) fn to_set(told: &[Reported], there: &[Reported]) -> Vec<(String, String)> {
    told.iter()
        .filter_map(|told| {
            let value = told.value.as_ref()?;
            let there = find(there, &told.name)?;
            let settable = there.settable
                && there.value.is_some()
                && !NEVER_SET
                    .iter()
                    .any(|name| name.eq_ignore_ascii_case(&told.name));
            (settable && there.value.as_ref() != Some(value))
                .then(|| (there.name.clone(), value.clone()))
        })
        .collect()
}

/// What the client, `told` those values, must now be told: each parameter whose value `now`
/// differs (one it was not told of counting as told nothing).
pub(crate) fn changes(told: &[Reported], now: &[Reported]) -> Vec<ParameterChange> {
    let mut changes: Vec<ParameterChange> = told
        .iter()
        .filter_map(|told| {
            let now = find(now, &told.name).and_then(|now| now.value.clone());
            (now != told.value).then(|| ParameterChange {
                name: told.name.clone(),
                told: told.value.clone(),
                now,
            })
        })
        .collect();
    changes.extend(
        now.iter()
            .filter(|now| now.value.is_some() && find(told, &now.name).is_none())
            .map(|now| ParameterChange {
                name: now.name.clone(),
                told: None,
                now: now.value.clone(),
            }),
    );
    changes
}

/// The settings that give a session the values its client was `told` of the parameters that
/// shape what statements mean, where the server was never read (a transaction kept for
/// replay before its session had a connection there): a value that side refuses fails the
/// replay, loudly, rather than leaving that side's default in its place.
pub(crate) fn assumed_settings(told: &[(String, String)]) -> Vec<Setting> {
    told.iter()
        .filter(|(name, _)| shapes(name))
        .map(|(name, value)| Setting::new(name, value))
        .collect()
}

/// Whether reported parameter `name` shapes what a statement's text means ([`SHAPING`]).
fn shapes(name: &str) -> bool {
    SHAPING
        .iter()
        .any(|shaping| shaping.eq_ignore_ascii_case(name))
}

/// The entry named `name` (parameter names are case-insensitive).
fn find<'a>(parameters: &'a [Reported], name: &str) -> Option<&'a Reported> {
    parameters
        .iter()
        .find(|parameter| parameter.name.eq_ignore_ascii_case(name))
}

/// Reads the parameters `names` on `server` (idle): values and whether a session may set
/// them.
///
/// # Errors
/// When the server fails to answer.
pub(crate) async fn read(
    server: &mut ServerStream,
    names: &[String],
) -> Result<Vec<Reported>, PgProxyError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let listed: Vec<String> = names.iter().map(|name| escaped_literal(name)).collect();
    let sql = format!(
        "SELECT r.name, pg_catalog.current_setting(r.name, true), EXISTS (SELECT 1 \
         FROM pg_catalog.pg_settings s WHERE lower(s.name) = lower(r.name) \
         AND s.context IN ('user', 'superuser')) \
         FROM unnest(ARRAY[{}]::text[]) WITH ORDINALITY AS r(name, at) ORDER BY r.at",
        listed.join(", ")
    );
    let mut read = Vec::with_capacity(names.len());
    for row in rows(server, &sql).await? {
        let mut fields = row.into_iter();
        let (Some(Some(name)), Some(value), Some(settable)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(PgProxyError::Protocol(
                "unexpected reported-parameter row".to_owned(),
            ));
        };
        read.push(Reported {
            name,
            value,
            settable: settable.as_deref() == Some("t"),
        });
    }
    Ok(read)
}

/// Brings the session on `server` (idle, on the side taking over) to the reported values its
/// client was `told`, where a session may set them, and returns what was set and what still
/// differs. A setting the server refuses (a superuser's, say) is left as it is: it is told.
///
/// # Errors
/// When the server fails to answer tandem's reads.
pub(crate) async fn keep(
    server: &mut ServerStream,
    names: &[String],
    told: &[Reported],
) -> Result<Kept, PgProxyError> {
    let there = read(server, names).await?;
    let set = to_set(told, &there);
    if set.is_empty() {
        return Ok(Kept {
            settings: Vec::new(),
            changes: changes(told, &there),
        });
    }
    // Every setting in one round trip, each with its own Sync: one refused fails alone.
    let wanted: Vec<Setting> = set
        .iter()
        .map(|(name, value)| Setting::new(name, value))
        .collect();
    let requests: Vec<_> = wanted.iter().map(Setting::synced).collect();
    let answers = answered_each(server, &requests).await?;
    let mut settings = Vec::with_capacity(wanted.len());
    for (setting, answer) in wanted.into_iter().zip(answers) {
        match answer {
            Ok(_) => settings.push(setting),
            Err(err) => {
                tracing::debug!(parameter = %setting.name, error = %err, "a reported parameter could not be set back")
            }
        }
    }
    // Read again: what the server shows now is what the client must know.
    let now = read(server, names).await?;
    Ok(Kept {
        settings,
        changes: changes(told, &now),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reported(name: &str, value: Option<&str>, settable: bool) -> Reported {
        Reported {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            settable,
        }
    }

    fn change(name: &str, told: Option<&str>, now: Option<&str>) -> ParameterChange {
        ParameterChange {
            name: name.to_owned(),
            told: told.map(str::to_owned),
            now: now.map(str::to_owned),
        }
    }

    #[test]
    fn a_moving_session_reads_the_unreported_settings_after_the_reported_ones_once_each() {
        let login = [
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("search_path".to_owned(), "app, public".to_owned()),
        ];
        let names = moving_names(&login);
        assert_eq!(
            names[..2],
            ["TimeZone".to_owned(), "search_path".to_owned()]
        );
        assert!(names.iter().any(|name| name == "extra_float_digits"));
        let searched = names
            .iter()
            .filter(|name| name.eq_ignore_ascii_case("search_path"))
            .count();
        assert_eq!(searched, 1, "reported by PostgreSQL 18, read once");
        assert!(unreported("Search_Path") && !unreported("TimeZone"));
    }

    #[test]
    fn settable_differences_are_set_back_and_the_others_told() {
        let told = [
            reported("TimeZone", Some("Etc/UTC"), true),
            reported("DateStyle", Some("ISO, MDY"), true),
            reported("application_name", Some("app"), true),
            reported("server_version", Some("15.2"), false),
            reported("is_superuser", Some("on"), false),
            reported("session_authorization", Some("postgres"), false),
        ];
        let there = [
            reported("TimeZone", Some("Asia/Tokyo"), true),
            reported("DateStyle", Some("SQL, DMY"), true),
            reported("application_name", Some("app"), true),
            reported("server_version", Some("16.1"), false),
            reported("is_superuser", Some("off"), false),
            // A session could set it, but tandem does not change who the session is.
            reported("session_authorization", Some("app_owner"), true),
        ];
        assert_eq!(
            to_set(&told, &there),
            [
                ("TimeZone".to_owned(), "Etc/UTC".to_owned()),
                ("DateStyle".to_owned(), "ISO, MDY".to_owned()),
            ]
        );
        assert_eq!(
            changes(&told, &there),
            [
                change("TimeZone", Some("Etc/UTC"), Some("Asia/Tokyo")),
                change("DateStyle", Some("ISO, MDY"), Some("SQL, DMY")),
                change("server_version", Some("15.2"), Some("16.1")),
                change("is_superuser", Some("on"), Some("off")),
                change("session_authorization", Some("postgres"), Some("app_owner")),
            ]
        );
    }

    #[test]
    fn parameters_one_server_lacks_are_told_when_they_have_a_value() {
        // The side before lacked `in_hot_standby` (older server); the side after lacks
        // `scram_iterations`: nothing can be set, the first is told, the second only counted.
        let told = [
            reported("in_hot_standby", None, false),
            reported("scram_iterations", Some("4096"), true),
        ];
        let there = [
            reported("in_hot_standby", Some("off"), false),
            reported("scram_iterations", None, false),
        ];
        assert!(to_set(&told, &there).is_empty());
        let changes = changes(&told, &there);
        assert_eq!(
            changes,
            [
                change("in_hot_standby", None, Some("off")),
                change("scram_iterations", Some("4096"), None),
            ]
        );
        let mut wire = BytesMut::new();
        for change in &changes {
            change.put_status(&mut wire).unwrap();
        }
        assert_eq!(&wire[..], b"S\0\0\0\x17in_hot_standby\0off\0");
    }

    #[test]
    fn names_are_matched_without_case_and_unknown_ones_told() {
        let told = [reported("timezone", Some("UTC"), false)];
        let there = [
            reported("TimeZone", Some("UTC"), true),
            reported("search_path", Some("public"), true),
        ];
        assert!(to_set(&told, &there).is_empty());
        assert_eq!(
            changes(&told, &there),
            [change("search_path", None, Some("public"))]
        );
    }

    #[test]
    fn names_are_the_logins_then_the_known_ones_it_lacked() {
        let login = [
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("scram_iterations".to_owned(), "4096".to_owned()),
        ];
        let names = names(&login);
        assert_eq!(names[..2], ["TimeZone", "scram_iterations"]);
        assert_eq!(names.len(), 2 + REPORTED.len() - 1);
        assert_eq!(
            names.iter().filter(|name| *name == "TimeZone").count(),
            1,
            "{names:?}"
        );
        assert_eq!(
            told_at_login(&login)[1],
            reported("scram_iterations", Some("4096"), false)
        );
    }

    #[test]
    fn what_the_client_was_told_is_updated_with_the_changes_told_since() {
        let mut told = vec![
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("server_version".to_owned(), "15.2".to_owned()),
        ];
        tell(
            &mut told,
            &[
                change("server_version", Some("15.2"), Some("16.1")),
                // Never told: there is nothing to tell, the client keeps what it knew.
                change("TimeZone", Some("UTC"), None),
                change("in_hot_standby", None, Some("off")),
            ],
        );
        assert_eq!(
            told,
            [
                ("TimeZone".to_owned(), "UTC".to_owned()),
                ("server_version".to_owned(), "16.1".to_owned()),
                ("in_hot_standby".to_owned(), "off".to_owned()),
            ]
        );
    }

    #[test]
    fn a_server_never_read_is_assumed_to_need_every_shaping_parameter_set() {
        let told = [
            ("TimeZone".to_owned(), "Etc/UTC".to_owned()),
            ("datestyle".to_owned(), "ISO, MDY".to_owned()),
            ("server_version".to_owned(), "15.2".to_owned()),
            ("application_name".to_owned(), "it's".to_owned()),
            ("IntervalStyle".to_owned(), "postgres".to_owned()),
        ];
        assert_eq!(
            assumed_settings(&told),
            [
                Setting::new("TimeZone", "Etc/UTC"),
                Setting::new("datestyle", "ISO, MDY"),
                Setting::new("IntervalStyle", "postgres"),
            ]
        );
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![Just("a".to_owned()), Just("b".to_owned())])
    }

    proptest! {
        /// Against a model of the server: once what `to_set` names is set, only what could not
        /// be set differs, every change named differs, and nothing differs twice.
        #[test]
        fn after_the_settings_only_what_cannot_be_set_is_told(
            sides in proptest::collection::vec((value(), value(), any::<bool>()), 0..8)
        ) {
            let name = |at: usize| REPORTED[at % REPORTED.len()].to_owned();
            let told: Vec<Reported> = sides.iter().enumerate()
                .map(|(at, (told, _, _))| Reported { name: name(at), value: told.clone(), settable: false })
                .collect();
            let mut there: Vec<Reported> = sides.iter().enumerate()
                .map(|(at, (_, there, settable))| Reported { name: name(at), value: there.clone(), settable: *settable })
                .collect();
            for (name, value) in to_set(&told, &there) {
                if let Some(parameter) = there.iter_mut().find(|parameter| parameter.name == name) {
                    parameter.value = Some(value);
                }
            }
            let changes = changes(&told, &there);
            for change in &changes {
                prop_assert_ne!(&change.told, &change.now);
                let after = there.iter().find(|parameter| parameter.name == change.name).unwrap();
                prop_assert!(
                    !after.settable || after.value.is_none() || change.told.is_none()
                        || NEVER_SET.contains(&change.name.as_str())
                );
            }
            prop_assert!(to_set(&told, &there).is_empty());
            let named: std::collections::HashSet<&str> =
                changes.iter().map(|change| change.name.as_str()).collect();
            prop_assert_eq!(named.len(), changes.len());
        }
    }
}
