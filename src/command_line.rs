//! The command line's part of the settings layers: which flag or `TANDEM_*` variable gave each
//! value (clap records it), over the file's keys.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use tandem_control::settings::{Layers, Origin, SettingsFile};

/// Variables tandem reads without a flag (never on a command line: secrets, or the log
/// filter read before the arguments).
const VARIABLES_WITHOUT_FLAG: [&str; 3] = [
    "TANDEM_LOG",
    "TANDEM_PG_USERS",
    "TANDEM_PAGERDUTY_ROUTING_KEY",
];

/// Variables of the workspace's other tools that share the prefix: `tandem-loadtest`'s and the
/// test kit's servers (`scripts/ensure-logical-pg`); never a misspelt tandem setting.
const OTHER_TOOLS: [&str; 3] = [
    "TANDEM_LOADTEST_",
    "TANDEM_LOGICAL_PG",
    "TANDEM_LOGICAL_PG2",
];

/// Whether `name` belongs to one of the workspace's other tools.
#[must_use]
pub fn read_by_other_tools(name: &str) -> bool {
    OTHER_TOOLS
        .iter()
        .any(|other| name == *other || (other.ends_with('_') && name.starts_with(other)))
}

/// The innermost subcommand run and the arguments it was given.
#[derive(Debug, Clone)]
pub struct CommandLine {
    command: Command,
    matches: ArgMatches,
}

impl CommandLine {
    /// The subcommand `matches` chose under `root`, down to the innermost one.
    #[must_use]
    pub fn of(root: &Command, matches: &ArgMatches) -> CommandLine {
        let mut command = root.clone();
        let mut matches = matches.clone();
        while let Some((name, inner)) = matches.subcommand() {
            let Some(sub) = command.find_subcommand(name).cloned() else {
                break;
            };
            let inner = inner.clone();
            command = sub;
            matches = inner;
        }
        CommandLine { command, matches }
    }

    /// `command`'s arguments as parsed from `args` (the flags `tandem config check` is given
    /// after `--`), with the variables of the environment.
    ///
    /// # Errors
    /// clap's, when `args` are not the command's flags.
    pub fn parse(command: Command, args: &[String]) -> Result<CommandLine, clap::Error> {
        let name = command.get_name().to_owned();
        let matches = command
            .clone()
            .try_get_matches_from(std::iter::once(name).chain(args.iter().cloned()))?;
        Ok(CommandLine { command, matches })
    }

    /// The parsed arguments.
    #[must_use]
    pub fn matches(&self) -> &ArgMatches {
        &self.matches
    }

    /// The layers of this command's settings: `file`'s keys, then each variable and flag
    /// given (a flag wins over its variable, as clap decides).
    #[must_use]
    pub fn layers(&self, file: Option<&SettingsFile>) -> Layers {
        let mut layers = Layers::new(file);
        for arg in self.command.get_arguments() {
            let id = arg.get_id().as_str();
            let key = key_of(self.command.get_name(), id);
            let key = key.as_str();
            let flag = arg.get_long().map(|long| format!("--{long}"));
            let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
            layers.know(key, flag.clone(), env.clone());
            let origin = match self.matches.value_source(id) {
                Some(ValueSource::CommandLine) => flag.map(Origin::Flag),
                Some(ValueSource::EnvVariable) => env.map(Origin::Env),
                _ => None,
            };
            let raw = self.matches.get_raw(id).map(|values| {
                values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            if let (Some(origin), Some(raw)) = (origin, raw) {
                layers.give(key, origin, &raw);
            }
        }
        layers
    }
}

/// `tandem backfill`'s own settings, which its file holds in the `[backfill]` section (the
/// file's top-level `chunk_rows`, `chunk_lease` and `instance` are the comparator's).
const BACKFILL_SECTION: [&str; 8] = [
    "chunk_rows",
    "attempts",
    "chunk_retries",
    "chunk_retry_delay",
    "chunk_lease",
    "instance",
    "metrics_listen",
    "progress_interval",
];

/// The file's name of the setting clap calls `id` in `command` (the flag `--table` fills
/// `tables`, backfill's `--chunk-rows` fills `backfill.chunk_rows`).
fn key_of(command: &str, id: &str) -> String {
    match id {
        "table" => "tables".to_owned(),
        own if command == "backfill" && BACKFILL_SECTION.contains(&own) => {
            format!("backfill.{own}")
        }
        other => other.to_owned(),
    }
}

/// Every `TANDEM_*` variable some command reads.
#[must_use]
pub fn known_variables(root: &Command) -> Vec<String> {
    let mut known: Vec<String> = VARIABLES_WITHOUT_FLAG.map(str::to_owned).to_vec();
    collect_variables(root, &mut known);
    known
}

fn collect_variables(command: &Command, known: &mut Vec<String>) {
    known.extend(
        command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned()),
    );
    for sub in command.get_subcommands() {
        collect_variables(sub, known);
    }
}
