//! Automatic rollback policies: a condition on the evidence, the stage to roll back to,
//! dry-run and a cooldown.

use std::time::Duration;

use serde::Deserialize;
use tandem_control::Stage;

use crate::error::CompareError;

/// A `[[rollback]]` table as written in the config file: exactly one condition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackPolicyFile {
    /// The policy's name, shown in the stage history, alerts and the audit log.
    pub name: String,
    /// Fire when a table has more confirmed divergent rows than this.
    pub divergent_rows_above: Option<i64>,
    /// Only this table (for `divergent_rows_above` and `window_divergence_percent_above`).
    pub table: Option<String>,
    /// Fire when more than this percentage of a window's rows differ …
    pub window_divergence_percent_above: Option<f64>,
    /// … in this many consecutive windows (default 1).
    pub consecutive_windows: Option<usize>,
    /// Fire when response mismatches per compared response exceed this over `period`.
    pub mismatch_rate_above: Option<f64>,
    /// Fire when failed new-side requests per request exceed this over `period`.
    pub new_error_rate_above: Option<f64>,
    /// The period rates are measured over (default 1m).
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    /// The stage to roll back to: `dual-write` or `old-only`.
    pub target: String,
    /// Only raise the alert and audit what would have happened.
    #[serde(default)]
    pub dry_run: bool,
    /// After firing, do not fire again for this long (default 10m).
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
}

/// What a policy watches.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackCondition {
    /// A table (or the named one) has more confirmed divergent rows than `above`.
    DivergentRows {
        /// The table, or every table.
        table: Option<String>,
        /// The threshold.
        above: i64,
    },
    /// More than `percent` of a window's rows differ in `consecutive` consecutive windows.
    WindowDivergence {
        /// The table, or every table.
        table: Option<String>,
        /// The threshold, in percent.
        percent: f64,
        /// How many windows in a row.
        consecutive: usize,
    },
    /// Response mismatches per compared response exceed `above` over `period`.
    MismatchRate {
        /// The threshold.
        above: f64,
        /// The period.
        period: Duration,
    },
    /// Failed new-side requests per request exceed `above` over `period`.
    NewErrorRate {
        /// The threshold.
        above: f64,
        /// The period.
        period: Duration,
    },
}

/// A validated rollback policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackPolicy {
    /// Its name.
    pub name: String,
    /// What it watches.
    pub condition: RollbackCondition,
    /// The stage it rolls back to.
    pub target: Stage,
    /// Whether it only alerts.
    pub dry_run: bool,
    /// Its quiet time after firing.
    pub cooldown: Duration,
}

impl RollbackPolicyFile {
    /// Checks the policy: one condition, a rollback target, sane thresholds.
    ///
    /// # Errors
    /// [`CompareError::InvalidOption`] naming the policy and what is wrong.
    pub fn validate(&self) -> Result<RollbackPolicy, CompareError> {
        let invalid = |reason: String| {
            CompareError::InvalidOption(format!("rollback policy {:?}: {reason}", self.name))
        };
        if self.name.trim().is_empty() {
            return Err(CompareError::InvalidOption(
                "a rollback policy needs a non-empty `name`".to_owned(),
            ));
        }
        let period = self.period.unwrap_or(Duration::from_secs(60));
        let rate = |above: f64| {
            if above.is_finite() && (0.0..=1.0).contains(&above) {
                Ok(above)
            } else {
                Err(invalid(format!(
                    "a rate must be between 0 and 1, not {above}"
                )))
            }
        };
        let conditions = [
            self.divergent_rows_above.map(|above| {
                Ok(RollbackCondition::DivergentRows {
                    table: self.table.clone(),
                    above,
                })
            }),
            self.window_divergence_percent_above.map(|percent| {
                if !(percent.is_finite() && (0.0..100.0).contains(&percent)) {
                    return Err(invalid(format!(
                        "a percentage must be from 0 to 100, not {percent}"
                    )));
                }
                Ok(RollbackCondition::WindowDivergence {
                    table: self.table.clone(),
                    percent,
                    consecutive: self.consecutive_windows.unwrap_or(1).max(1),
                })
            }),
            self.mismatch_rate_above.map(|above| {
                Ok(RollbackCondition::MismatchRate {
                    above: rate(above)?,
                    period,
                })
            }),
            self.new_error_rate_above.map(|above| {
                Ok(RollbackCondition::NewErrorRate {
                    above: rate(above)?,
                    period,
                })
            }),
        ];
        let mut given = conditions.into_iter().flatten();
        let condition = match (given.next(), given.next()) {
            (Some(condition), None) => condition?,
            (None, _) => {
                return Err(invalid(
                    "needs one of divergent_rows_above, window_divergence_percent_above, \
                     mismatch_rate_above, new_error_rate_above"
                        .to_owned(),
                ))
            }
            (Some(_), Some(_)) => return Err(invalid("has more than one condition".to_owned())),
        };
        let target: Stage = self
            .target
            .parse()
            .map_err(|err: tandem_control::UnknownName| invalid(err.to_string()))?;
        if !matches!(target, Stage::DualWrite | Stage::OldOnly) {
            return Err(invalid(format!(
                "target must be dual-write or old-only, not {target}"
            )));
        }
        Ok(RollbackPolicy {
            name: self.name.clone(),
            condition,
            target,
            dry_run: self.dry_run,
            cooldown: self.cooldown.unwrap_or(Duration::from_secs(600)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> RollbackPolicyFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn policies_need_exactly_one_condition_and_a_rollback_target() {
        let policy = file("name = \"drift\"\ndivergent_rows_above = 10\ntarget = \"dual-write\"")
            .validate()
            .unwrap();
        assert_eq!(policy.target, Stage::DualWrite);
        assert_eq!(policy.cooldown, Duration::from_secs(600));
        let none = file("name = \"x\"\ntarget = \"dual-write\"").validate();
        assert!(none.unwrap_err().to_string().contains("needs one of"));
        let two = file("name = \"x\"\ndivergent_rows_above = 1\nmismatch_rate_above = 0.1\ntarget = \"old-only\"")
            .validate();
        assert!(two.unwrap_err().to_string().contains("more than one"));
        let forward = file("name = \"x\"\ndivergent_rows_above = 1\ntarget = \"live\"").validate();
        assert!(forward
            .unwrap_err()
            .to_string()
            .contains("dual-write or old-only"));
        let rate =
            file("name = \"x\"\nmismatch_rate_above = 5.0\ntarget = \"old-only\"").validate();
        assert!(rate.unwrap_err().to_string().contains("between 0 and 1"));
    }
}
