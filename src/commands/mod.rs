//! One module per subcommand; each returns the process exit code.

mod alerts;
mod audit;
mod backfill;
mod backfill_bars;
mod backfill_status;
mod comparator;
mod compare;
mod config;
mod migrate;
mod mirror;
mod pg_mirror;
mod pg_proxy;
mod proxy;
mod repair;
mod stage;

use std::process::ExitCode;

use tandem_control::ControlStore;
use tandem_proxy::resolve_control_db;

use crate::cli::{BackfillCommand, Command, ControlArgs, LogFormat};
use crate::command_line::CommandLine;

/// Runs one subcommand; its logs are written as `log_format` says.
pub async fn run(
    command: Command,
    line: &CommandLine,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Proxy(args) => proxy::run(&args, line).await,
        Command::PgProxy(args) => pg_proxy::run(args, line).await,
        Command::PgReplay(args) => pg_proxy::replay(&args).await,
        Command::PgMirror(command) => pg_mirror::run(command).await,
        Command::Stage(command) => stage::run(command).await,
        Command::Migrate(control) => migrate::run(&control).await,
        Command::Config(command) => config::run(&command),
        Command::Mirror(command) => mirror::run(command, line).await,
        Command::Alerts(command) => alerts::run(command).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Audit(args) => audit::run(&args).await,
        Command::Compare(args) => compare::run(args, line).await,
        Command::Repair(args) => repair::run(args, line).await,
        Command::Comparator(args) => comparator::run(args, line).await,
        Command::Backfill(args) => match args.action {
            Some(BackfillCommand::Status { format, control }) => {
                backfill_status::run(format, &control).await
            }
            None => backfill::run(args, line, log_format).await,
        },
    }
}

/// Opens (and migrates) the control store named by the flags, variables or file.
async fn open_store(control: &ControlArgs) -> anyhow::Result<ControlStore> {
    let url = resolve_control_db(control.config.as_deref(), control.control_db.as_deref())?;
    Ok(ControlStore::open(&url).await?)
}
