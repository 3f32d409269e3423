//! Alertmanager silences that follow tandem's acknowledgements: an acknowledged alert is
//! silenced in Alertmanager for exactly that alert (its `alertname` and tandem `fingerprint`
//! labels), by whoever acknowledged it; once it is no longer acknowledged (resolved) the
//! silence is expired. Kept in step from the store on every evaluation, so it holds across
//! restarts and whichever instance acknowledged or resolved the alert (or the CLI).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use tandem_control::{Alert, Timestamp};

/// How long a silence lasts unless the alert is resolved first; a still acknowledged alert
/// gets a new one when it ends.
const SILENCE_FOR: Duration = Duration::from_secs(24 * 3600);

/// What every silence tandem creates starts its comment with, so that it only ever expires
/// its own silences, never one a person made.
const MARK: &str = "tandem alert #";

/// Why keeping the silences in step failed (tried again at the next evaluation).
#[derive(Debug, thiserror::Error)]
pub(super) enum SilenceError {
    /// Alertmanager could not be reached or its answer read.
    #[error("alertmanager silences: {0}")]
    Request(#[source] reqwest::Error),
    /// Alertmanager refused the call.
    #[error("alertmanager silences: {call} answered {status}")]
    Refused {
        /// Which call.
        call: &'static str,
        /// Its status.
        status: StatusCode,
    },
}

/// A label matcher of a silence, in Alertmanager's v2 form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Matcher {
    name: String,
    value: String,
    is_regex: bool,
    #[serde(default = "equal")]
    is_equal: bool,
}

fn equal() -> bool {
    true
}

/// A silence to create.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NewSilence {
    matchers: Vec<Matcher>,
    starts_at: String,
    ends_at: String,
    created_by: String,
    comment: String,
}

/// A silence as Alertmanager lists it.
#[derive(Debug, Deserialize)]
struct ListedSilence {
    id: String,
    matchers: Vec<Matcher>,
    comment: String,
    status: SilenceStatus,
}

#[derive(Debug, Deserialize)]
struct SilenceStatus {
    state: String,
}

/// The matchers that select exactly one tandem alert in Alertmanager.
fn matchers_for(alert: &Alert) -> Vec<Matcher> {
    let mut matchers = vec![
        Matcher {
            name: "alertname".to_owned(),
            value: format!("tandem_{}", alert.kind),
            is_regex: false,
            is_equal: true,
        },
        Matcher {
            name: "fingerprint".to_owned(),
            value: alert.fingerprint.clone(),
            is_regex: false,
            is_equal: true,
        },
    ];
    matchers.sort();
    matchers
}

/// Keeps Alertmanager's silences in step with tandem's acknowledged alerts.
#[derive(Debug)]
pub(super) struct Silencer {
    client: Client,
    /// `…/api/v2`.
    api: String,
}

impl Silencer {
    pub(super) fn new(client: Client, alertmanager_url: &str) -> Silencer {
        Silencer {
            client,
            api: format!("{}/api/v2", alertmanager_url.trim_end_matches('/')),
        }
    }

    /// Silences every acknowledged alert that has no active tandem silence, and expires the
    /// active tandem silences of alerts no longer acknowledged (and duplicates).
    pub(super) async fn sync(&self, acknowledged: &[Alert]) -> Result<(), SilenceError> {
        let mut active: BTreeMap<Vec<Matcher>, Vec<String>> = BTreeMap::new();
        for silence in self.list().await? {
            if silence.status.state == "active" && silence.comment.starts_with(MARK) {
                let mut matchers = silence.matchers;
                matchers.sort();
                active.entry(matchers).or_default().push(silence.id);
            }
        }
        let mut wanted = BTreeSet::new();
        for alert in acknowledged {
            let matchers = matchers_for(alert);
            if !active.contains_key(&matchers) {
                self.create(alert, matchers.clone()).await?;
            }
            wanted.insert(matchers);
        }
        for (matchers, ids) in active {
            let keep = usize::from(wanted.contains(&matchers));
            for id in ids.iter().skip(keep) {
                self.expire(id).await?;
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ListedSilence>, SilenceError> {
        let response = self
            .client
            .get(format!("{}/silences", self.api))
            .send()
            .await
            .map_err(|err| SilenceError::Request(err.without_url()))?;
        refused("list", response.status())?;
        response
            .json()
            .await
            .map_err(|err| SilenceError::Request(err.without_url()))
    }

    async fn create(&self, alert: &Alert, matchers: Vec<Matcher>) -> Result<(), SilenceError> {
        let now = Timestamp::now();
        let ends = Timestamp(
            now.millis()
                .saturating_add(i64::try_from(SILENCE_FOR.as_millis()).unwrap_or(i64::MAX)),
        );
        let by = alert
            .acknowledged_by
            .clone()
            .unwrap_or_else(|| "tandem".to_owned());
        let said = alert
            .ack_comment
            .as_deref()
            .filter(|comment| !comment.is_empty())
            .map(|comment| format!(": {comment}"))
            .unwrap_or_default();
        let silence = NewSilence {
            matchers,
            starts_at: now.to_rfc3339(),
            ends_at: ends.to_rfc3339(),
            created_by: by,
            comment: format!("{MARK}{} acknowledged in tandem{said}", alert.id),
        };
        let response = self
            .client
            .post(format!("{}/silences", self.api))
            .json(&silence)
            .send()
            .await
            .map_err(|err| SilenceError::Request(err.without_url()))?;
        refused("create", response.status())?;
        tracing::info!(alert = alert.id, "alert silenced in Alertmanager");
        Ok(())
    }

    async fn expire(&self, id: &str) -> Result<(), SilenceError> {
        let response = self
            .client
            .delete(format!("{}/silence/{id}", self.api))
            .send()
            .await
            .map_err(|err| SilenceError::Request(err.without_url()))?;
        refused("expire", response.status())?;
        tracing::info!(
            silence = id,
            "Alertmanager silence of a tandem alert expired"
        );
        Ok(())
    }
}

fn refused(call: &'static str, status: StatusCode) -> Result<(), SilenceError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(SilenceError::Refused { call, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silence_selects_one_alert_by_name_and_fingerprint() {
        let alert = Alert {
            id: 7,
            fingerprint: "comparator:orders:drift".to_owned(),
            source: "comparator".to_owned(),
            subject: "orders".to_owned(),
            kind: "drift".to_owned(),
            severity: "critical".to_owned(),
            summary: String::new(),
            status: "acknowledged".to_owned(),
            first_seen: Timestamp(0),
            last_seen: Timestamp(0),
            occurrences: 1,
            measured: 1,
            examples: Vec::new(),
            acknowledged_by: Some("ann".to_owned()),
            acknowledged_at: Some(Timestamp(0)),
            ack_comment: None,
            resolved_by: None,
            resolved_at: None,
            resolve_comment: None,
            notified_at: None,
            notify_due: None,
        };
        let pairs: Vec<(String, String, bool)> = matchers_for(&alert)
            .into_iter()
            .map(|matcher| (matcher.name, matcher.value, matcher.is_regex))
            .collect();
        assert_eq!(
            pairs,
            [
                ("alertname".to_owned(), "tandem_drift".to_owned(), false),
                (
                    "fingerprint".to_owned(),
                    "comparator:orders:drift".to_owned(),
                    false
                ),
            ]
        );
    }
}
