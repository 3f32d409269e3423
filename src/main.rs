//! The `tandem` command: parses arguments and hands each subcommand to the library crates.

mod cli;
mod command_line;
mod commands;
mod compare_settings;
mod demo;
mod output;
mod shutdown;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

fn main() -> ExitCode {
    let root = cli::Cli::command();
    let matches = root.clone().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let line = command_line::CommandLine::of(&root, &matches);
    // The demo narrates on stdout; its components' routine logs would drown it.
    let quiet = matches!(cli.command, cli::Command::Demo(_));
    init_tracing(if quiet { "warn" } else { "info" }, cli.log_format);
    warn_of_misspelt_variables(&root);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::run(cli.command, &line, cli.log_format)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// A `TANDEM_*` variable no command reads is most often a misspelt one whose value would be
/// ignored without a word: each is named.
fn warn_of_misspelt_variables(root: &clap::Command) {
    let known = command_line::known_variables(root);
    let set = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| !command_line::read_by_other_tools(name));
    for name in tandem_control::settings::misspelt_variables(known.iter().map(String::as_str), set)
    {
        tracing::warn!("{name} is set but no tandem command reads it (misspelt?)");
    }
}

/// Logs go to stderr (stdout carries command output); `TANDEM_LOG` or `RUST_LOG` filter them,
/// `default` otherwise. As JSON, an event's fields sit at the top level beside `timestamp`,
/// `level` and `message`, with the fields of the spans it happened in (`span`, `spans`).
fn init_tracing(default: &str, format: cli::LogFormat) {
    let filter = std::env::var("TANDEM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        cli::LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        cli::LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
