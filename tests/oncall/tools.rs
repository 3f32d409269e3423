//! The on-call tools the tests run: found on the PATH, where `scripts/ensure-prometheus` puts
//! them, and the shipped files they read.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A file of this repository.
pub fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs one of the tools to completion.
///
/// # Panics
/// When it is not installed.
pub fn run(tool: &str, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {tool} ({err}): run scripts/ensure-prometheus"))
}
