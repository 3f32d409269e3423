//! Delivering alert notifications: Prometheus Alertmanager's v2 API (with silences that follow
//! acknowledgements, `silence.rs`), PagerDuty's Events API v2 (`pagerduty.rs`) and a generic
//! JSON webhook, over HTTP or HTTPS (`client.rs`). A target that is down delays only its
//! notifications: they are retried, and detection and rollback never wait for them.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_control::{Alert, ControlError, ControlStore, Timestamp};

use super::client::notification_client;
use super::pagerduty::{EventAction, Links, PagerDuty};
use super::silence::{labels, Silencer};
use super::AlertSettings;
use crate::error::CompareError;

/// How long one delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a failed notification is tried again, at most.
const RETRY: Duration = Duration::from_secs(10);

/// How long a notification taken by one instance is left to it: longer than delivering to
/// both targets can take, so that no other instance sends it again meanwhile.
const HOLD: Duration = Duration::from_secs(15);

/// Sends due notifications to the configured targets.
#[derive(Debug)]
pub(super) struct Notifier {
    client: reqwest::Client,
    alertmanager: Option<String>,
    silencer: Option<Silencer>,
    pagerduty: Option<PagerDuty>,
    webhook: Option<String>,
    runbook_url: String,
    public_url: String,
    renotify: Duration,
    retry: Duration,
    /// When this instance last sent Alertmanager the acknowledged alerts (`None`: not yet).
    refreshed: Mutex<Option<Instant>>,
}

impl Notifier {
    pub(super) fn new(
        settings: &AlertSettings,
        service_url: &str,
    ) -> Result<Notifier, CompareError> {
        for (key, url) in [
            (
                "alerts.alertmanager_url",
                settings.alertmanager_url.as_deref(),
            ),
            ("alerts.webhook_url", settings.webhook_url.as_deref()),
            (
                "alerts.pagerduty_url",
                Some(settings.pagerduty_url.as_str()),
            ),
        ] {
            if let Some(url) = url {
                let parsed = reqwest::Url::parse(url).map_err(|err| {
                    CompareError::InvalidOption(format!("invalid `{key}`: {}", err))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(CompareError::InvalidOption(format!(
                        "invalid `{key}`: only http:// and https:// targets are supported"
                    )));
                }
            }
        }
        let public_url = settings
            .public_url
            .clone()
            .unwrap_or_else(|| service_url.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let client = notification_client(SEND_TIMEOUT, settings.ca_file.as_deref())?;
        Ok(Notifier {
            pagerduty: PagerDuty::new(
                client.clone(),
                &settings.pagerduty_url,
                settings.pagerduty_routing_key_file.as_deref(),
            )?,
            silencer: settings
                .alertmanager_url
                .as_deref()
                .map(|url| Silencer::new(client.clone(), url)),
            client,
            alertmanager: settings
                .alertmanager_url
                .as_ref()
                .map(|url| format!("{}/api/v2/alerts", url.trim_end_matches('/'))),
            webhook: settings.webhook_url.clone(),
            runbook_url: settings
                .runbook_url
                .clone()
                .unwrap_or_else(|| format!("{public_url}/runbook")),
            public_url,
            renotify: settings.renotify_interval,
            retry: RETRY.min(settings.renotify_interval),
            refreshed: Mutex::new(None),
        })
    }

    /// Sends every due notification (taking each so that other instances skip it); records
    /// deliveries and schedules retries of failed ones.
    pub(super) async fn deliver_due(&self, store: &ControlStore) -> Result<(), ControlError> {
        if self.alertmanager.is_none() && self.webhook.is_none() && self.pagerduty.is_none() {
            return Ok(());
        }
        for alert in store.alerts_due().await? {
            if !store.claim_alert_notification(&alert, HOLD).await? {
                continue;
            }
            match self.send(&alert).await {
                Ok(()) => store.alert_notified(&alert, self.renotify).await?,
                Err(reason) => {
                    tracing::warn!(alert = alert.id, error = %reason, "alert notification failed; will retry");
                    store.alert_notification_failed(&alert, self.retry).await?;
                }
            }
        }
        if let Some(silencer) = &self.silencer {
            if let Err(err) = silencer.sync(store).await {
                tracing::warn!(error = %err, "Alertmanager silences not in step; will retry");
            }
        }
        if self.alertmanager.is_some() || self.pagerduty.is_some() {
            let acknowledged = store.alerts(Some("acknowledged")).await?;
            self.refresh_alertmanager(store, &acknowledged).await?;
            if let Some(pagerduty) = &self.pagerduty {
                pagerduty.acknowledge(&acknowledged).await;
            }
        }
        Ok(())
    }

    /// Sends Alertmanager the acknowledged alerts again every re-notification interval.
    /// Alertmanager ends an alert that is not sent again before its `endsAt`, and an
    /// acknowledged alert is no longer due (that is what acknowledging means for the other
    /// targets): without this it would end there, silently, while it still blocks promotion
    /// in tandem, and the silence tandem keeps for it would cover nothing. Open alerts are
    /// sent again by their own schedule (`notify_due_ms`); a failed refresh is tried again at
    /// the next evaluation. Every instance refreshes: Alertmanager merges identical alerts.
    ///
    /// An alert resolved (by another instance or the CLI) after it was read here, and whose
    /// resolution reached Alertmanager before this refresh, would be revived there by it: so
    /// the refreshed alerts are read again afterwards, and those resolved meanwhile are sent
    /// ended. One resolved after that second read has its resolution delivered after this
    /// refresh, which it then overrides.
    async fn refresh_alertmanager(
        &self,
        store: &ControlStore,
        acknowledged: &[Alert],
    ) -> Result<(), ControlError> {
        let Some(url) = &self.alertmanager else {
            return Ok(());
        };
        let last = *self
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if acknowledged.is_empty() || last.is_some_and(|at| at.elapsed() < self.renotify) {
            return Ok(());
        }
        let alerts: Vec<Value> = acknowledged
            .iter()
            .map(|alert| self.alertmanager_alert(alert))
            .collect();
        if let Err(err) = self.post(url, &Value::Array(alerts)).await {
            tracing::warn!(error = %err, "acknowledged alerts not sent again to Alertmanager; will retry");
            return Ok(());
        }
        *self
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let mut ended = Vec::new();
        for alert in acknowledged {
            if let Some(now) = store.alert(alert.id).await? {
                if now.status == "resolved" {
                    ended.push(self.alertmanager_alert(&now));
                }
            }
        }
        if !ended.is_empty() {
            if let Err(err) = self.post(url, &Value::Array(ended)).await {
                tracing::warn!(error = %err, "alerts resolved meanwhile not ended in Alertmanager");
            }
        }
        Ok(())
    }

    async fn send(&self, alert: &Alert) -> Result<(), String> {
        let mut failures = Vec::new();
        if let Some(url) = &self.alertmanager {
            if let Err(err) = self
                .post(url, &json!([self.alertmanager_alert(alert)]))
                .await
            {
                failures.push(format!("alertmanager: {err}"));
            }
        }
        if let Some(pagerduty) = &self.pagerduty {
            let event = if alert.status == "resolved" {
                pagerduty.event(alert, EventAction::Resolve)
            } else {
                let alert_url = self.alert_url(alert);
                pagerduty.trigger(
                    alert,
                    &Links {
                        alert_url: &alert_url,
                        runbook_url: &self.runbook_url,
                        public_url: &self.public_url,
                    },
                )
            };
            if let Err(err) = pagerduty.send(&event).await {
                failures.push(format!("pagerduty: {err}"));
            }
        }
        if let Some(url) = &self.webhook {
            let event = if alert.status == "resolved" {
                "resolved"
            } else {
                "firing"
            };
            let body = json!({
                "event": event,
                "alert": alert,
                "alert_url": self.alert_url(alert),
                "runbook_url": self.runbook_url,
            });
            if let Err(err) = self.post(url, &body).await {
                failures.push(format!("webhook: {err}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    async fn post(&self, url: &str, body: &Value) -> Result<(), String> {
        let response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|err| err.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }

    fn alert_url(&self, alert: &Alert) -> String {
        format!("{}/api/alerts/{}", self.public_url, alert.id)
    }

    /// The alert in Alertmanager's v2 form. An unresolved alert ends a few re-notification
    /// intervals ahead (Alertmanager keeps it firing while it is re-sent: open ones by their
    /// schedule, acknowledged ones by [`Notifier::refresh_alertmanager`]); a resolved one ends
    /// when it was resolved.
    fn alertmanager_alert(&self, alert: &Alert) -> Value {
        let ends = match alert.resolved_at {
            Some(resolved) => resolved,
            None => {
                let ahead =
                    i64::try_from(self.renotify.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
                Timestamp(Timestamp::now().millis().saturating_add(ahead))
            }
        };
        json!({
            "labels": labels(alert),
            "annotations": {
                "summary": alert.summary,
                "status": alert.status,
                "examples": alert.examples.join(", "),
                "runbook_url": self.runbook_url,
                "alert_url": self.alert_url(alert),
            },
            "startsAt": alert.first_seen.to_rfc3339(),
            "endsAt": ends.to_rfc3339(),
            "generatorURL": self.alert_url(alert),
        })
    }
}
