//! On-call duties of the comparator service: raising and resolving alerts from sweeps, proxy
//! counts and sweep staleness; automatic rollback policies; delivering notifications; and
//! publishing what the promotion gate checks.

mod client;
mod evaluate;
mod notify;
mod pagerduty;
mod policy;
mod silence;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::CompareError;

pub use evaluate::OnCall;
pub use policy::{RollbackCondition, RollbackPolicy, RollbackPolicyFile};

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// How alerts are raised, resolved and delivered (`[alerts]` in the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertSettings {
    /// Prometheus Alertmanager's base URL (alerts go to `POST /api/v2/alerts`).
    pub alertmanager_url: Option<String>,
    /// A URL that receives each notification as JSON.
    pub webhook_url: Option<String>,
    /// A file holding a PagerDuty Events v2 integration's routing key; without it the key may
    /// come from `TANDEM_PAGERDUTY_ROUTING_KEY`. With a key, alerts become PagerDuty incidents.
    pub pagerduty_routing_key_file: Option<PathBuf>,
    /// PagerDuty's Events API v2 endpoint.
    pub pagerduty_url: String,
    /// A PEM file of root certificates trusted for HTTPS targets besides the system's.
    pub ca_file: Option<PathBuf>,
    /// An open (unacknowledged) alert is notified again this often.
    #[serde(with = "humantime_serde")]
    pub renotify_interval: Duration,
    /// A drift alert resolves by itself after this many clean sweeps.
    pub resolve_after_clean_sweeps: i64,
    /// A row that never held still long enough to be compared (`unconverged`) opens a drift
    /// alert only once it has been unconverged or changed in this many consecutive sweeps
    /// (1 to 20).
    pub unconverged_sweeps: i64,
    /// A rate alert resolves by itself after its rate has been fine this long.
    #[serde(with = "humantime_serde")]
    pub resolve_after_clean: Duration,
    /// No finished sweep for this long raises a stale-comparator alert.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// Where notifications point people for what to do (default: this service's `/runbook`).
    pub runbook_url: Option<String>,
    /// How people reach this service, for links in notifications (default: its listener).
    pub public_url: Option<String>,
    /// Response mismatches per compared response above which an alert opens.
    pub mismatch_rate: f64,
    /// Mirror failures per mirrored write above which an alert opens.
    pub mirror_failure_rate: f64,
    /// Failed requests to the new side per request above which an alert opens.
    pub new_error_rate: f64,
    /// The period rates are measured over.
    #[serde(with = "humantime_serde")]
    pub rate_period: Duration,
    /// Fewer events than this in the period are not judged.
    pub min_samples: i64,
    /// How often rates, staleness and due notifications are checked.
    #[serde(with = "humantime_serde")]
    pub evaluate_interval: Duration,
}

impl AlertSettings {
    /// Checks the notification targets as the comparator does when it starts (their URLs,
    /// the routing key file, the CA file), sending nothing.
    ///
    /// # Errors
    /// [`CompareError::InvalidOption`] naming the key that is wrong.
    pub fn check_targets(&self) -> Result<(), CompareError> {
        notify::Notifier::new(self, "http://127.0.0.1").map(drop)
    }
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            alertmanager_url: None,
            webhook_url: None,
            pagerduty_routing_key_file: None,
            pagerduty_url: DEFAULT_PAGERDUTY_URL.to_owned(),
            ca_file: None,
            renotify_interval: Duration::from_secs(30 * 60),
            resolve_after_clean_sweeps: 2,
            unconverged_sweeps: 3,
            resolve_after_clean: Duration::from_secs(10 * 60),
            stale_after: Duration::from_secs(30 * 60),
            runbook_url: None,
            public_url: None,
            mismatch_rate: 0.01,
            mirror_failure_rate: 0.01,
            new_error_rate: 0.05,
            rate_period: Duration::from_secs(5 * 60),
            min_samples: 20,
            evaluate_interval: Duration::from_secs(5),
        }
    }
}

/// What the promotion gate requires (`[promotion]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromotionSettings {
    /// How long every table must have been seen clean before `live` or `new-only`.
    #[serde(with = "humantime_serde")]
    pub min_clean: Duration,
}

impl Default for PromotionSettings {
    fn default() -> Self {
        PromotionSettings {
            min_clean: Duration::from_secs(72 * 3600),
        }
    }
}

/// Everything the on-call duties are configured with.
#[derive(Debug, Clone, Default)]
pub struct OnCallSettings {
    /// Alerting.
    pub alerts: AlertSettings,
    /// The promotion gate.
    pub promotion: PromotionSettings,
    /// Automatic rollback policies.
    pub policies: Vec<RollbackPolicy>,
    /// The token that mutating API calls must present (`Authorization: Bearer …`).
    pub admin_token: Option<String>,
}
