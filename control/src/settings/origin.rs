//! Where a setting's value came from: a default, a file's key, a variable or a flag.

use std::fmt;
use std::path::PathBuf;

/// The layer a value was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nothing set it: the command's default.
    Default,
    /// A key of the configuration file.
    File {
        /// The file, as named on the command line.
        path: PathBuf,
        /// The key, as a path from the top of the file (`alerts.renotify_interval`).
        key: String,
    },
    /// A `TANDEM_*` environment variable.
    Env(String),
    /// A command-line flag (`--listen`).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, .. } => write!(f, "{}", path.display()),
            Origin::Env(name) | Origin::Flag(name) => f.write_str(name),
        }
    }
}
