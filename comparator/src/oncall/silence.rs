//! Alertmanager silences and tandem's acknowledgements, kept in step both ways: an
//! acknowledged alert is silenced in Alertmanager for exactly that alert (its `alertname` and
//! tandem `fingerprint` labels), by whoever acknowledged it, and once it is no longer
//! acknowledged (resolved) that silence is expired; an open alert that a person's silence in
//! Alertmanager covers is acknowledged in tandem by the silence's creator. Done from the store
//! on every evaluation, so it holds across restarts and whichever instance acknowledged or
//! resolved the alert (or the CLI).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use regex::Regex;
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};
use tandem_control::{Alert, ControlError, ControlStore, Timestamp};

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
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] ControlError),
}

/// The labels an alert carries in Alertmanager.
pub(super) fn labels(alert: &Alert) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("alertname", format!("tandem_{}", alert.kind)),
        ("source", alert.source.clone()),
        ("subject", alert.subject.clone()),
        ("severity", alert.severity.clone()),
        ("fingerprint", alert.fingerprint.clone()),
    ])
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
#[serde(rename_all = "camelCase")]
struct ListedSilence {
    id: String,
    matchers: Vec<Matcher>,
    comment: String,
    created_by: String,
    status: SilenceStatus,
}

impl ListedSilence {
    /// Whether it silences an alert with these labels, as Alertmanager decides it (a regex
    /// matches the whole value; a missing label is the empty value).
    fn covers(&self, labels: &BTreeMap<&'static str, String>) -> bool {
        self.matchers.iter().all(|matcher| {
            let value = labels.get(matcher.name.as_str()).map_or("", String::as_str);
            let matched = if matcher.is_regex {
                Regex::new(&format!("^(?:{})$", matcher.value))
                    .is_ok_and(|regex| regex.is_match(value))
            } else {
                matcher.value == value
            };
            matched == matcher.is_equal
        })
    }
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

    /// Acknowledges the open alerts a person's active silence covers; silences every
    /// acknowledged alert no active silence covers; expires the active tandem silences of
    /// alerts no longer acknowledged (and duplicates).
    pub(super) async fn sync(&self, store: &ControlStore) -> Result<(), SilenceError> {
        let silences: Vec<ListedSilence> = self
            .list()
            .await?
            .into_iter()
            .filter(|silence| silence.status.state == "active")
            .collect();
        let (theirs, ours): (Vec<&ListedSilence>, Vec<&ListedSilence>) = silences
            .iter()
            .partition(|silence| !silence.comment.starts_with(MARK));
        for alert in store.alerts(Some("open")).await? {
            let labels = labels(&alert);
            if let Some(silence) = theirs.iter().find(|silence| silence.covers(&labels)) {
                acknowledge(store, &alert, silence).await;
            }
        }
        let mut active: BTreeMap<Vec<Matcher>, Vec<String>> = BTreeMap::new();
        for silence in ours {
            let mut matchers = silence.matchers.clone();
            matchers.sort();
            active.entry(matchers).or_default().push(silence.id.clone());
        }
        let mut wanted = BTreeSet::new();
        for alert in store.alerts(Some("acknowledged")).await? {
            let matchers = matchers_for(&alert);
            let labels = labels(&alert);
            let covered = active.contains_key(&matchers)
                || theirs.iter().any(|silence| silence.covers(&labels));
            if !covered {
                self.create(&alert, matchers.clone()).await?;
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

/// Acknowledges `alert` in tandem for a person's silence in Alertmanager (an alert that
/// someone acknowledged meanwhile is left as it is).
async fn acknowledge(store: &ControlStore, alert: &Alert, silence: &ListedSilence) {
    let by = if silence.created_by.trim().is_empty() {
        "alertmanager"
    } else {
        silence.created_by.as_str()
    };
    let comment = format!(
        "silenced in Alertmanager ({}): {}",
        silence.id, silence.comment
    );
    match store.acknowledge_alert(alert.id, by, Some(&comment)).await {
        Ok(_) => tracing::info!(
            alert = alert.id,
            by,
            "alert acknowledged by a silence in Alertmanager"
        ),
        Err(err) => {
            tracing::debug!(alert = alert.id, error = %err, "not acknowledged for a silence")
        }
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

    fn silence(matchers: &[(&str, &str, bool, bool)]) -> ListedSilence {
        ListedSilence {
            id: "s1".to_owned(),
            matchers: matchers
                .iter()
                .map(|(name, value, is_regex, is_equal)| Matcher {
                    name: (*name).to_owned(),
                    value: (*value).to_owned(),
                    is_regex: *is_regex,
                    is_equal: *is_equal,
                })
                .collect(),
            comment: "maintenance".to_owned(),
            created_by: "bob".to_owned(),
            status: SilenceStatus {
                state: "active".to_owned(),
            },
        }
    }

    #[test]
    fn silences_cover_alerts_as_alertmanager_matches_them() {
        let labels = labels(&drift());
        for (matchers, covers) in [
            (vec![("alertname", "tandem_drift", false, true)], true),
            (vec![("alertname", "tandem_.*", true, true)], true),
            // A regex matches the whole value.
            (vec![("alertname", "tandem", true, true)], false),
            (vec![("subject", "orders", false, false)], false),
            (vec![("subject", "customers", false, false)], true),
            (
                vec![
                    ("alertname", "tandem_drift", false, true),
                    ("subject", "customers", false, true),
                ],
                false,
            ),
            (vec![("team", "payments", false, true)], false),
            (vec![("team", "", false, true)], true),
        ] {
            assert_eq!(silence(&matchers).covers(&labels), covers, "{matchers:?}");
        }
    }

    fn drift() -> Alert {
        Alert {
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
        }
    }

    #[test]
    fn a_silence_selects_one_alert_by_name_and_fingerprint() {
        let alert = drift();
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
