//! `tandem stage show|set`.

use std::process::ExitCode;

use anyhow::Context;
use tandem_control::Stage;

use super::open_store;
use crate::cli::{Format, StageCommand};
use crate::output::{print_json, stage_line};

pub async fn run(command: StageCommand) -> anyhow::Result<ExitCode> {
    match command {
        StageCommand::Show {
            format,
            history,
            control,
        } => {
            let store = open_store(&control).await?;
            let overview = store.stage_overview(history).await?;
            match format {
                Format::Json => print_json(&overview)?,
                Format::Table => {
                    println!("stage: {}", overview.stage);
                    println!(
                        "since: {} by {}: {}",
                        overview.since.to_rfc3339(),
                        overview.by,
                        overview.reason
                    );
                    if !overview.history.is_empty() {
                        println!("history (newest first):");
                        for record in &overview.history {
                            println!("  {}", stage_line(record));
                        }
                    }
                }
            }
        }
        StageCommand::Set {
            stage,
            reason,
            by,
            force,
            control,
        } => {
            let stage: Stage = stage.parse().context("cannot set the stage")?;
            let store = open_store(&control).await?;
            let record = if force {
                store.force_stage(stage, &by, &reason).await?
            } else {
                store.set_stage(stage, &by, &reason).await?
            };
            println!("{}", stage_line(&record));
        }
    }
    Ok(ExitCode::SUCCESS)
}
