//! Errors of the control plane.

/// What went wrong while talking to the control store.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control-store URL is not one tandem can use.
    #[error("invalid control store URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with any password replaced.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The store could not be reached or a query failed.
    #[error("control store {operation} failed: {source}")]
    Database {
        /// What tandem was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded schema migrations failed.
    #[error("control store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A row in the store holds a value this version does not understand.
    #[error("control store holds an invalid {field}: {reason}")]
    Corrupt {
        /// Which field.
        field: &'static str,
        /// Why it could not be read.
        reason: String,
    },
    /// A caller passed a value the store refuses.
    #[error("{0}")]
    InvalidInput(String),
    /// A record the caller named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// The promotion gate refused a stage change.
    #[error("promotion to {stage} refused: {}; `--force` overrides this (and is audited)", blockers.join("; "))]
    PromotionRefused {
        /// The stage asked for.
        stage: crate::stage::Stage,
        /// What is missing.
        blockers: Vec<String>,
    },
}

impl ControlError {
    pub(crate) fn database(operation: &'static str) -> impl FnOnce(sqlx::Error) -> ControlError {
        move |source| ControlError::Database { operation, source }
    }
}
