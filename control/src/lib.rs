//! tandem's control plane: the stage model, the control store shared by every proxy and
//! comparator instance, and the propagation of stage changes.

mod applied;
mod counters;
mod error;
mod file_limit;
mod instance;
mod key_values;
mod redact;
pub mod settings;
mod stage;
mod store;
mod time;
mod token;
mod watch;

pub use applied::{describe_stage_metrics, follow_applied_stage, StageApplied};
pub use counters::{flush_proxy_counts, ProxyCounters};
pub use error::{sqlx_error_is_transient, ControlError};
pub use file_limit::raise_open_files_limit;
pub use instance::{claim_owner, host_name, instance_name, left_by_a_dead_namesake, owner_name};
pub use key_values::KeyValues;
pub use redact::redact_url;
pub use stage::{Side, Stage, UnknownName};
pub use store::{
    fingerprint, Alert, AlertCondition, AuditAction, AuditEntry, Backend, BackfillChunk,
    BackfillClaim, BackfillCounts, BackfillProgress, BackfillTableStatus, ComparisonRun,
    ConflictOutcome, ControlStore, CopyKind, DivergenceRecord, FailureStatus, JournalSummary,
    KeyConflict, MirrorFailure, NewBackfillChunk, NewDivergence, NewMirrorFailure,
    NewResponseMismatch, NewSweepChunk, NewTableResult, NewWindowResult, PartitionPending,
    PendingKey, PromotionPolicy, ProxyBucket, ProxyCounts, ResolveRule, ResponseMismatch,
    StageOverview, StageRecord, SweepChunk, SweepProgress, TableResult, WindowRecord,
    SQL_ORDERING_KEY, STALE_AFTER_INTERVALS,
};
pub use time::Timestamp;
pub use token::bearer_authorises;
pub use watch::{StageWatch, STAGE_CHANNEL};
