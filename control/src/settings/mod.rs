//! One configuration layer for every command: defaults < file < `TANDEM_*` variables < flags,
//! each value remembering where it came from, so that a refusal names its key and origin in
//! one line.

mod environment;
mod error;
mod file;
mod layers;
mod origin;
mod shown;

pub use environment::misspelt_variables;
pub use error::SettingsError;
pub use file::SettingsFile;
pub use layers::{Layers, Setting};
pub use origin::Origin;
pub use shown::shown_value;
