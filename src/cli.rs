//! The command line: subcommands and their flags (every flag also reads a `TANDEM_*` variable).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tandem_proxy::ProxyArgs;

/// tandem: a dual-write consistency proxy for database and service migrations.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP proxy between the old and the new service.
    Proxy(ProxyArgs),
    /// Show or change the migration stage.
    #[command(subcommand)]
    Stage(StageCommand),
    /// Apply the control store's schema migrations.
    Migrate(ControlArgs),
    /// Work with configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Inspect and replay mirror copies that could not be delivered.
    #[command(subcommand)]
    Mirror(MirrorCommand),
}

/// Where the control store is.
#[derive(Debug, Clone, Args)]
pub struct ControlArgs {
    /// TOML configuration file to read `control_db` from.
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Control store URL (`sqlite://FILE` or `postgres://…`); default `sqlite://tandem.db`.
    #[arg(long, env = "TANDEM_CONTROL_DB")]
    pub control_db: Option<String>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// `tandem stage …`
#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// Show the current stage and its history.
    Show {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// History entries to show.
        #[arg(long, default_value_t = 20)]
        history: i64,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Change the stage; every proxy sharing the store applies it within a second.
    Set {
        /// old-only, dual-write, shadow, live or new-only.
        stage: String,
        /// Why the stage changes (kept in the history).
        #[arg(long)]
        reason: String,
        /// Who changes it (kept in the history).
        #[arg(long)]
        by: String,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
}

/// `tandem config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration (file, variables and flags) without starting anything.
    Check(ProxyArgs),
}

/// `tandem mirror …`
// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// List mirror copies awaiting replay (every persisted copy with --all).
    Failures {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Include replayed and not-mirrored copies.
        #[arg(long)]
        all: bool,
        /// The control store.
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Re-send pending copies in the order their writes were accepted.
    Replay {
        /// Replay only this copy.
        #[arg(long)]
        id: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Upstreams and control store, as for `tandem proxy`.
        #[command(flatten)]
        proxy: ProxyArgs,
    },
}
