//! `tandem backfill`'s command line as the tests give it: both sides, the control store and
//! JSON output, then each test's own flags; one builder, so every test spells it alike.

use std::process::{Child, Command, Output, Stdio};

use crate::process::workspace_binary;

/// A `tandem backfill` command line being built.
#[derive(Debug, Clone)]
pub struct Backfill {
    args: Vec<String>,
}

impl Backfill {
    /// `tandem backfill --old OLD --new NEW --control-db CONTROL --format json`.
    #[must_use]
    pub fn new(old: &str, new: &str, control: &str) -> Backfill {
        let args = [
            "backfill",
            "--old",
            old,
            "--new",
            new,
            "--control-db",
            control,
            "--format",
            "json",
        ];
        Backfill {
            args: args.map(str::to_owned).to_vec(),
        }
    }

    /// Adds `--table TABLE`.
    #[must_use]
    pub fn table(self, table: &str) -> Backfill {
        self.args(&["--table", table])
    }

    /// Adds `--instance NAME`.
    #[must_use]
    pub fn instance(self, name: &str) -> Backfill {
        self.args(&["--instance", name])
    }

    /// Adds `--chunk-rows ROWS`.
    #[must_use]
    pub fn chunk_rows(self, rows: u64) -> Backfill {
        self.args(&["--chunk-rows", &rows.to_string()])
    }

    /// Adds `args` as they are.
    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Backfill {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// The command, logging warnings only.
    ///
    /// # Panics
    /// When the `tandem` binary has not been built.
    #[must_use]
    pub fn command(&self) -> Command {
        let mut command = Command::new(workspace_binary("tandem"));
        command.args(&self.args).env("TANDEM_LOG", "warn");
        command
    }

    /// Starts it with its report (stdout) and its log (stderr) piped.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn spawn(&self) -> Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tandem backfill")
    }

    /// Runs it to the end.
    ///
    /// # Panics
    /// When it cannot be started.
    #[must_use]
    pub fn output(&self) -> Output {
        self.command().output().expect("run tandem backfill")
    }
}
