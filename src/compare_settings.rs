//! Comparison settings: flags and `TANDEM_COMPARE_*` variables over a strict TOML file
//! (`--config`) over defaults, for `compare`, `repair` and `comparator` alike.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tandem_comparator::canonical::CanonicalSettings;
use tandem_comparator::oncall::{
    AlertSettings, OnCallSettings, PromotionSettings, RollbackPolicyFile,
};
use tandem_comparator::{ColumnSelection, CompareOptions, OrderingKeyPattern, TablePair};
use tandem_control::settings::{Layers, SettingsFile};

use crate::cli::{CompareArgs, TimestampPrecision};
use crate::command_line::CommandLine;

/// The file, as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareFile {
    old: Option<String>,
    new: Option<String>,
    tables: Option<Vec<TableEntry>>,
    key: Option<Vec<String>>,
    columns: Option<Vec<String>>,
    ignore_columns: Option<Vec<String>>,
    #[serde(rename = "where")]
    filter: Option<String>,
    window_rows: Option<usize>,
    threads: Option<usize>,
    recheck: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    recheck_delay: Option<Duration>,
    max_rows_per_sec: Option<u64>,
    max_divergences: Option<usize>,
    float_tolerance: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    timestamp_tolerance: Option<Duration>,
    assume_tz: Option<String>,
    timestamp_precision: Option<TimestampPrecision>,
    control_db: Option<String>,
    listen: Option<SocketAddr>,
    #[serde(default, with = "humantime_serde")]
    interval: Option<Duration>,
    sweeps: Option<u64>,
    instance: Option<String>,
    chunk_rows: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    chunk_lease: Option<Duration>,
    #[serde(default)]
    alerts: AlertSettings,
    #[serde(default)]
    promotion: PromotionSettings,
    #[serde(default)]
    rollback: Vec<RollbackPolicyFile>,
    #[serde(default)]
    backfill: BackfillFile,
}

/// The `[backfill]` section: `tandem backfill`'s own settings (its flags win).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillFile {
    /// Old-side rows per chunk.
    pub chunk_rows: Option<usize>,
    /// Rounds of conditional writes per chunk.
    pub attempts: Option<u32>,
    /// Retries of a chunk that failed with a transient error.
    pub chunk_retries: Option<u32>,
    /// The wait before a chunk's first retry.
    #[serde(default, with = "humantime_serde")]
    pub chunk_retry_delay: Option<Duration>,
    /// How long a claimed chunk is left to its instance.
    #[serde(default, with = "humantime_serde")]
    pub chunk_lease: Option<Duration>,
    /// This instance's name in the chunks it claims.
    pub instance: Option<String>,
    /// Where `/healthz` and `/metrics` are served.
    pub metrics_listen: Option<SocketAddr>,
    /// How often a progress line is logged.
    #[serde(default, with = "humantime_serde")]
    pub progress_interval: Option<Duration>,
}

/// One entry of `tables`: a name (`NAME` or `OLD_NAME:NEW_NAME`), or a `[[tables]]` section
/// with options aimed at that table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TableEntry {
    Name(String),
    Aimed(AimedTable),
}

/// A `[[tables]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AimedTable {
    name: String,
    key: Option<Vec<String>>,
    columns: Option<Vec<String>>,
    #[serde(default)]
    ignore_columns: Vec<String>,
    #[serde(rename = "where")]
    filter: Option<String>,
    /// How the proxies' ordering keys name this table's rows (`/orders/{id}`).
    ordering_key: Option<String>,
}

impl TableEntry {
    fn name(&self) -> &str {
        match self {
            TableEntry::Name(name) | TableEntry::Aimed(AimedTable { name, .. }) => name,
        }
    }
}

/// Everything a comparison command needs, resolved.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// The old database URL.
    pub old: String,
    /// The new database URL.
    pub new: String,
    /// What to compare and how.
    pub options: CompareOptions,
    /// Where runs are recorded, if anywhere.
    pub control_db: Option<String>,
    /// The continuous comparator's listener, from the file.
    pub listen: Option<SocketAddr>,
    /// The continuous comparator's pause between sweeps, from the file.
    pub interval: Option<Duration>,
    /// The continuous comparator's sweep count, from the file.
    pub sweeps: Option<u64>,
    /// The continuous comparator's instance name, from the file.
    pub instance: Option<String>,
    /// The continuous comparator's rows per chunk, from the file.
    pub chunk_rows: Option<usize>,
    /// The continuous comparator's chunk lease, from the file.
    pub chunk_lease: Option<Duration>,
    /// The continuous comparator's alerting, promotion gate and rollback policies, from the
    /// file (`[alerts]`, `[promotion]`, `[[rollback]]`).
    pub oncall: OnCallSettings,
    /// `tandem backfill`'s own settings, from the file's `[backfill]` section.
    pub backfill: BackfillFile,
    /// Where each value came from, for the errors of the commands that read more keys.
    pub layers: Layers,
}

impl CompareSettings {
    /// Reads `args.config` (if any) and lets the variables and flags of `line` override it.
    pub fn resolve(args: &CompareArgs, line: &CommandLine) -> anyhow::Result<CompareSettings> {
        let settings_file = args.config.as_deref().map(SettingsFile::read).transpose()?;
        let layers = line.layers(settings_file.as_ref());
        let file: CompareFile = match &settings_file {
            Some(file) => file.deserialize()?,
            None => CompareFile::default(),
        };
        let old = args
            .old
            .clone()
            .or(file.old)
            .ok_or_else(|| layers.missing("old"))?;
        let new = args
            .new
            .clone()
            .or(file.new)
            .ok_or_else(|| layers.missing("new"))?;
        for (key, url) in [("old", &old), ("new", &new)] {
            if url.trim().is_empty() {
                return Err(layers.refuse(key, "must be a database URL").into());
            }
        }
        let file_tables = file.tables.unwrap_or_default();
        let tables = if args.table.is_empty() {
            file_tables
                .iter()
                .map(|entry| entry.name().to_owned())
                .collect()
        } else {
            args.table.clone()
        };
        let assume_tz = args
            .assume_tz
            .clone()
            .or(file.assume_tz)
            .unwrap_or_else(|| "UTC".to_owned());
        let assume_tz_offset_micros = parse_offset(&assume_tz)
            .ok_or_else(|| layers.refuse("assume_tz", "expected UTC or ±HH:MM"))?;
        let float_tolerance = args.float_tolerance.or(file.float_tolerance);
        if float_tolerance.is_some_and(|tolerance| tolerance.is_nan() || tolerance < 0.0) {
            return Err(layers
                .refuse("float_tolerance", "must be zero or positive")
                .into());
        }
        let window_rows = args.window_rows.or(file.window_rows).unwrap_or(100_000);
        if window_rows == 0 {
            return Err(layers.refuse("window_rows", "must be at least 1").into());
        }
        let threads = args.threads.or(file.threads).unwrap_or(4);
        if threads == 0 {
            return Err(layers.refuse("threads", "must be at least 1").into());
        }
        if args.max_rows_per_sec.or(file.max_rows_per_sec) == Some(0) {
            return Err(layers
                .refuse(
                    "max_rows_per_sec",
                    "must be at least 1 (leave it out for no limit)",
                )
                .into());
        }
        let alerts = &file.alerts;
        for (key, value) in [
            ("alerts.evaluate_interval", alerts.evaluate_interval),
            ("alerts.renotify_interval", alerts.renotify_interval),
            ("alerts.rate_period", alerts.rate_period),
        ] {
            if value < Duration::from_millis(10) {
                return Err(layers.refuse(key, "must be at least 10ms").into());
            }
        }
        for (key, rate) in [
            ("alerts.mismatch_rate", alerts.mismatch_rate),
            ("alerts.mirror_failure_rate", alerts.mirror_failure_rate),
            ("alerts.new_error_rate", alerts.new_error_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(layers.refuse(key, "must be between 0 and 1").into());
            }
        }
        if !(1..=20).contains(&alerts.unconverged_sweeps) {
            // Sweeps in a row a row must stay unconverged before it alerts; past 20 such a row
            // is no write in flight, and a larger value would only hold its alert back.
            return Err(layers
                .refuse("alerts.unconverged_sweeps", "must be between 1 and 20")
                .into());
        }
        let policies = file
            .rollback
            .iter()
            .map(RollbackPolicyFile::validate)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = policies.iter().map(|policy| policy.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            anyhow::bail!("two rollback policies are named {:?}", pair[0]);
        }
        let precision = args
            .timestamp_precision
            .or(file.timestamp_precision)
            .unwrap_or(TimestampPrecision::Us);
        let mut selection = ColumnSelection::parse(
            &args
                .key
                .clone()
                .or_else(|| file.key.map(|columns| vec![columns.join(",")]))
                .unwrap_or_default(),
            args.columns.clone().or(file.columns).as_deref(),
            &args
                .ignore_columns
                .clone()
                .or(file.ignore_columns)
                .unwrap_or_default(),
            &args.table_where,
        )?;
        // `[[tables]]` sections, under what flags aimed at the same table.
        for entry in file_tables {
            let TableEntry::Aimed(aimed) = entry else {
                continue;
            };
            let old_name = TablePair::parse(&aimed.name).old;
            let scoped = selection.tables.entry(old_name).or_default();
            scoped.key = scoped.key.take().or(aimed.key);
            scoped.only = scoped.only.take().or(aimed.columns);
            scoped.ignore.extend(aimed.ignore_columns);
            scoped.filter = scoped.filter.take().or(aimed.filter);
            if let Some(pattern) = &aimed.ordering_key {
                OrderingKeyPattern::parse(pattern)
                    .with_context(|| format!("invalid `ordering_key` of table {:?}", aimed.name))?;
            }
            scoped.ordering_key = aimed.ordering_key;
        }
        let options = CompareOptions {
            tables: tables.iter().map(|table| TablePair::parse(table)).collect(),
            selection,
            filter: args.r#where.clone().or(file.filter),
            window_rows,
            threads,
            rechecks: args.recheck.or(file.recheck).unwrap_or(3),
            recheck_delay: args
                .recheck_delay
                .or(file.recheck_delay)
                .unwrap_or(Duration::from_secs(2)),
            max_rows_per_sec: args.max_rows_per_sec.or(file.max_rows_per_sec),
            reads: None,
            max_divergences: args
                .max_divergences
                .or(file.max_divergences)
                .unwrap_or(1_000),
            progress: None,
            row_width: None,
            settings: CanonicalSettings {
                assume_tz_offset_micros,
                timestamp_precision_micros: match precision {
                    TimestampPrecision::Us => 1,
                    TimestampPrecision::Ms => 1_000,
                    TimestampPrecision::S => 1_000_000,
                },
                float_tolerance,
                timestamp_tolerance_micros: args
                    .timestamp_tolerance
                    .or(file.timestamp_tolerance)
                    .map(|tolerance| u64::try_from(tolerance.as_micros()).unwrap_or(u64::MAX)),
            },
        };
        Ok(CompareSettings {
            old,
            new,
            options,
            control_db: args.control_db.clone().or(file.control_db),
            listen: file.listen,
            interval: file.interval,
            sweeps: file.sweeps,
            instance: file.instance,
            chunk_rows: file.chunk_rows,
            chunk_lease: file.chunk_lease,
            oncall: OnCallSettings {
                alerts: file.alerts,
                promotion: file.promotion,
                policies,
                admin_token: None,
            },
            backfill: file.backfill,
            layers,
        })
    }
}

/// `UTC`, `Z` or `±HH:MM` as microseconds east of UTC.
fn parse_offset(zone: &str) -> Option<i64> {
    if zone.eq_ignore_ascii_case("utc") || zone == "Z" {
        return Some(0);
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let digits = |text: &str| {
        (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<i64>().ok())
            .flatten()
    };
    let (hours, minutes) = (digits(hours)?, digits(minutes)?);
    (hours <= 14 && minutes < 60).then(|| sign * (hours * 60 + minutes) * 60_000_000)
}

#[cfg(test)]
mod tests {
    use super::parse_offset;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_offset("UTC"), Some(0));
        assert_eq!(parse_offset("+02:00"), Some(7_200_000_000));
        assert_eq!(parse_offset("-05:30"), Some(-19_800_000_000));
        assert_eq!(parse_offset("Europe/Paris"), None);
        assert_eq!(parse_offset("+-05:00"), None);
        assert_eq!(parse_offset("+05:-30"), None);
        assert_eq!(parse_offset("-9999999999999:00"), None);
    }
}
