//! PagerDuty Events API v2: an alert becomes an incident keyed by its fingerprint
//! (`dedup_key`): `trigger` while open (again at each re-notification, which PagerDuty folds
//! into the same incident), `acknowledge` once acknowledged in tandem, `resolve` when resolved.
//! The routing key comes from a file or `TANDEM_PAGERDUTY_ROUTING_KEY`, never a flag, and is
//! never logged.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use reqwest::Client;
use serde_json::{json, Value};
use tandem_control::Alert;

use crate::error::CompareError;

/// The variable the routing key may come from.
pub(super) const ROUTING_KEY_VARIABLE: &str = "TANDEM_PAGERDUTY_ROUTING_KEY";

/// An integration's routing key: shown as `***` in debug output.
struct RoutingKey(String);

impl std::fmt::Debug for RoutingKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("***")
    }
}

impl RoutingKey {
    /// From `file` when given, else from [`ROUTING_KEY_VARIABLE`]; `None` when neither has one.
    fn load(file: Option<&Path>) -> Result<Option<RoutingKey>, CompareError> {
        let key = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|err| {
                CompareError::InvalidOption(format!(
                    "invalid `alerts.pagerduty_routing_key_file` ({}): {err}",
                    path.display()
                ))
            })?,
            None => std::env::var(ROUTING_KEY_VARIABLE).unwrap_or_default(),
        };
        let key = key.trim();
        match (key.is_empty(), file) {
            (true, Some(path)) => Err(CompareError::InvalidOption(format!(
                "invalid `alerts.pagerduty_routing_key_file` ({}): it is empty",
                path.display()
            ))),
            (true, None) => Ok(None),
            (false, _) => Ok(Some(RoutingKey(key.to_owned()))),
        }
    }
}

/// What happened to the alert, as PagerDuty's `event_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventAction {
    /// Opened, or still open at a re-notification.
    Trigger,
    /// Acknowledged in tandem.
    Acknowledge,
    /// Resolved in tandem (by hand or by clean sweeps).
    Resolve,
}

impl EventAction {
    fn as_str(self) -> &'static str {
        match self {
            EventAction::Trigger => "trigger",
            EventAction::Acknowledge => "acknowledge",
            EventAction::Resolve => "resolve",
        }
    }
}

/// PagerDuty's severity for a tandem severity (`critical`, `warning`; anything else is info).
fn severity(tandem: &str) -> &'static str {
    match tandem {
        "critical" => "critical",
        "error" => "error",
        "warning" => "warning",
        _ => "info",
    }
}

/// The links a trigger carries.
pub(super) struct Links<'a> {
    /// The alert on the comparator's API.
    pub alert_url: &'a str,
    /// What to do.
    pub runbook_url: &'a str,
    /// The comparator (its dashboard).
    pub public_url: &'a str,
}

/// Sends events to PagerDuty.
#[derive(Debug)]
pub(super) struct PagerDuty {
    client: Client,
    url: String,
    routing_key: RoutingKey,
    /// Alerts whose acknowledgement was delivered (by this process: after a restart each is
    /// acknowledged once more, which PagerDuty takes as a no-op).
    acknowledged: Mutex<HashSet<i64>>,
}

impl PagerDuty {
    /// A sender when a routing key is configured, else `None`.
    pub(super) fn new(
        client: Client,
        url: &str,
        routing_key_file: Option<&Path>,
    ) -> Result<Option<PagerDuty>, CompareError> {
        let Some(routing_key) = RoutingKey::load(routing_key_file)? else {
            return Ok(None);
        };
        Ok(Some(PagerDuty {
            client,
            url: url.to_owned(),
            routing_key,
            acknowledged: Mutex::new(HashSet::new()),
        }))
    }

    /// The event for `alert` that only moves its incident along (acknowledge, resolve).
    pub(super) fn event(&self, alert: &Alert, action: EventAction) -> Value {
        json!({
            "routing_key": self.routing_key.0,
            "event_action": action.as_str(),
            "dedup_key": alert.fingerprint,
        })
    }

    /// The `trigger` event for `alert`, with what it is about and where to look.
    pub(super) fn trigger(&self, alert: &Alert, links: &Links<'_>) -> Value {
        let mut event = self.event(alert, EventAction::Trigger);
        event["payload"] = json!({
            "summary": alert.summary,
            "source": alert.source,
            "severity": severity(&alert.severity),
            "timestamp": alert.first_seen.to_rfc3339(),
            "component": alert.subject,
            "group": alert.source,
            "class": alert.kind,
            "custom_details": {
                "tandem_alert": alert.id,
                "status": alert.status,
                "occurrences": alert.occurrences,
                "measured": alert.measured,
                "last_seen": alert.last_seen.to_rfc3339(),
                "examples": alert.examples,
            },
        });
        event["links"] = json!([
            {"href": links.alert_url, "text": format!("tandem alert #{}", alert.id)},
            {"href": links.runbook_url, "text": "runbook"},
        ]);
        event["client"] = json!("tandem");
        event["client_url"] = json!(links.public_url);
        event
    }

    /// Sends one event; PagerDuty answers 202 when it took it.
    pub(super) async fn send(&self, event: &Value) -> Result<(), String> {
        let response = self
            .client
            .post(&self.url)
            .json(event)
            .send()
            .await
            .map_err(|err| err.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }

    /// Sends `acknowledge` for every acknowledged alert not yet acknowledged there; forgets
    /// the alerts no longer acknowledged.
    pub(super) async fn acknowledge(&self, acknowledged: &[Alert]) {
        let pending: Vec<&Alert> = {
            let Ok(mut sent) = self.acknowledged.lock() else {
                return;
            };
            sent.retain(|id| acknowledged.iter().any(|alert| alert.id == *id));
            acknowledged
                .iter()
                .filter(|alert| !sent.contains(&alert.id))
                .collect()
        };
        for alert in pending {
            let event = self.event(alert, EventAction::Acknowledge);
            match self.send(&event).await {
                Ok(()) => {
                    if let Ok(mut sent) = self.acknowledged.lock() {
                        sent.insert(alert.id);
                    }
                }
                Err(reason) => {
                    tracing::warn!(alert = alert.id, error = %reason, "PagerDuty acknowledgement failed; will retry");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_control::Timestamp;

    fn alert(severity: &str) -> Alert {
        Alert {
            id: 4,
            fingerprint: "comparator:orders:drift".to_owned(),
            source: "comparator".to_owned(),
            subject: "orders".to_owned(),
            kind: "drift".to_owned(),
            severity: severity.to_owned(),
            summary: "3 rows differ".to_owned(),
            status: "open".to_owned(),
            first_seen: Timestamp(0),
            last_seen: Timestamp(0),
            occurrences: 2,
            measured: 3,
            examples: vec!["{\"id\":7}".to_owned()],
            acknowledged_by: None,
            acknowledged_at: None,
            ack_comment: None,
            resolved_by: None,
            resolved_at: None,
            resolve_comment: None,
            notified_at: None,
            notify_due: None,
        }
    }

    fn sender() -> PagerDuty {
        PagerDuty {
            client: Client::new(),
            url: "http://127.0.0.1:1/v2/enqueue".to_owned(),
            routing_key: RoutingKey("R0UT1NG".to_owned()),
            acknowledged: Mutex::new(HashSet::new()),
        }
    }

    const LINKS: Links<'static> = Links {
        alert_url: "http://c/api/alerts/4",
        runbook_url: "http://c/runbook",
        public_url: "http://c",
    };

    #[test]
    fn severities_map_to_pagerduty_ones() {
        let pagerduty = sender();
        for (tandem, expected) in [
            ("critical", "critical"),
            ("warning", "warning"),
            ("notice", "info"),
        ] {
            let event = pagerduty.trigger(&alert(tandem), &LINKS);
            assert_eq!(event["payload"]["severity"], expected);
        }
    }

    #[test]
    fn acknowledge_and_resolve_carry_only_the_key_and_the_incident() {
        let pagerduty = sender();
        for action in [EventAction::Acknowledge, EventAction::Resolve] {
            let event = pagerduty.event(&alert("critical"), action);
            assert_eq!(
                event,
                json!({"routing_key": "R0UT1NG", "event_action": action.as_str(),
                       "dedup_key": "comparator:orders:drift"})
            );
        }
    }

    #[test]
    fn the_routing_key_is_not_in_debug_output() {
        assert!(!format!("{:?}", sender()).contains("R0UT1NG"));
    }
}
