//! What the switch of the authoritative side reads and writes with plain SQL sessions: a
//! marker in one side's log, the other side's applied progress, a slot's lag and retained
//! log, and the sequences carried across.

use std::fmt::Write as _;

use tandem_control::Side;

use super::connection::{quote_identifier, quote_literal, Connection};
use super::error::WalError;
use super::lsn::Lsn;
use super::setup::{
    check_free_slot, check_identities, check_publication_rights, check_slot_name, check_wal_level,
    ensure_publication, ensure_slot,
};
use super::stream::CaptureSettings;

/// The prefix of the marker tandem writes into the log of the side it switches away from.
pub const MARKER_PREFIX: &str = "tandem_switch";

/// Checks what the capture of a side needs without changing anything: the replication
/// privilege, `wal_level = logical`, a free replication slot (unless its slot exists), the
/// right to create its publication (unless it exists), and a replica identity for every
/// table it would publish.
///
/// # Errors
/// A [`WalError`] with the fix for the first missing piece.
pub async fn check_capture(settings: &CaptureSettings) -> Result<(), WalError> {
    check_slot_name(&settings.slot)?;
    let mut connection = Connection::open(settings.side, &settings.url).await?;
    check_wal_level(&mut connection).await?;
    check_free_slot(&mut connection, &settings.slot).await?;
    check_publication_rights(&mut connection, &settings.publication, &settings.tables).await?;
    check_identities(&mut connection, &settings.publication, &settings.tables).await?;
    connection.terminate().await
}

/// Makes sure the capture's publication and slot exist on its side (creating them), so that
/// every transaction committed there from now on is kept for the capture.
///
/// # Errors
/// A [`WalError`] with the fix for each missing piece of the server's set-up.
pub async fn prepare_slot(settings: &CaptureSettings) -> Result<Lsn, WalError> {
    check_slot_name(&settings.slot)?;
    let mut connection = Connection::open(settings.side, &settings.url).await?;
    check_wal_level(&mut connection).await?;
    check_identities(&mut connection, &settings.publication, &settings.tables).await?;
    ensure_publication(&mut connection, &settings.publication, &settings.tables).await?;
    let position = ensure_slot(&mut connection, &settings.slot).await?;
    connection.terminate().await?;
    Ok(position)
}

/// One row of one column as text, from a plain session on `url`.
async fn scalar(
    side: Side,
    url: &str,
    sql: &str,
    command: &'static str,
) -> Result<Option<String>, WalError> {
    let mut connection = Connection::open_sql(side, url).await?;
    let rows = connection.query(sql, command).await?;
    connection.terminate().await?;
    Ok(rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next().flatten()))
}

fn parse_lsn(side: Side, text: Option<String>, what: &str) -> Result<Lsn, WalError> {
    match text {
        None => Ok(Lsn(0)),
        Some(text) => text.parse().map_err(|err| WalError::Protocol {
            side,
            reason: format!("{what}: {err}"),
        }),
    }
}

/// Whether the slot `slot` exists on the side at `url`.
///
/// # Errors
/// A [`WalError`] when the server cannot answer.
pub async fn slot_exists(side: Side, url: &str, slot: &str) -> Result<bool, WalError> {
    let found = scalar(
        side,
        url,
        &format!(
            "SELECT 'yes' FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ),
        "the replication slot look-up",
    )
    .await?;
    Ok(found.is_some())
}

/// Whether the side at `url` holds the replication origin `origin`: a capture into it that
/// ran and was not finished by a switch (which drops it).
///
/// # Errors
/// A [`WalError`] when the server cannot answer.
pub async fn origin_exists(side: Side, url: &str, origin: &str) -> Result<bool, WalError> {
    let found = scalar(
        side,
        url,
        &format!(
            "SELECT 'yes' FROM pg_catalog.pg_replication_origin WHERE roname = {}",
            quote_literal(origin)
        ),
        "the replication origin look-up",
    )
    .await?;
    Ok(found.is_some())
}

/// Writes a marker into the log of the side at `url` (its own transaction) and returns its
/// position: once the other side's progress reaches it, every transaction committed before
/// it has been applied there.
///
/// # Errors
/// A [`WalError`] when the server refuses (the user needs the `REPLICATION` attribute).
pub async fn write_marker(side: Side, url: &str) -> Result<Lsn, WalError> {
    let text = scalar(
        side,
        url,
        // Committed with synchronous_commit on whatever the server's default: the walsender
        // sends only what is flushed, and a server committing asynchronously would otherwise
        // hold the marker (and whoever waits on it) until its WAL writer's next round.
        &format!(
            "SELECT pg_logical_emit_message(true, {}, '') \
             FROM (SELECT set_config('synchronous_commit', 'on', false)) AS flushed",
            quote_literal(MARKER_PREFIX)
        ),
        "pg_logical_emit_message",
    )
    .await?;
    parse_lsn(side, text, "the marker's position")
}

/// The source position the replication origin `origin` on the side at `url` has applied up
/// to (`Lsn(0)` when it has none).
///
/// # Errors
/// A [`WalError`] when the server cannot answer.
pub async fn origin_progress(side: Side, url: &str, origin: &str) -> Result<Lsn, WalError> {
    let text = scalar(
        side,
        url,
        &format!(
            "SELECT pg_replication_origin_progress(roname, true) FROM pg_replication_origin \
             WHERE roname = {}",
            quote_literal(origin)
        ),
        "pg_replication_origin_progress",
    )
    .await?;
    parse_lsn(side, text, "the replication origin's progress")
}

/// A slot's distance behind its server's log (none for a slot that does not exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotLag {
    /// Log bytes the server keeps for the slot (from its restart position).
    pub retained_bytes: u64,
    /// Log bytes written since the position the slot's reader confirmed.
    pub unconfirmed_bytes: u64,
}

/// The position the reader of the slot `slot` on the side at `url` confirmed last; `None`
/// when it does not exist.
///
/// # Errors
/// A [`WalError`] when the server cannot answer.
pub async fn slot_confirmed(side: Side, url: &str, slot: &str) -> Result<Option<Lsn>, WalError> {
    let text = scalar(
        side,
        url,
        &format!(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = {}",
            quote_literal(slot)
        ),
        "the replication slot's confirmed position",
    )
    .await?;
    text.map(|text| parse_lsn(side, Some(text), "the slot's confirmed position"))
        .transpose()
}

/// How far the slot `slot` on the side at `url` lags; `None` when it does not exist.
///
/// # Errors
/// A [`WalError`] when the server cannot answer.
pub async fn slot_lag(side: Side, url: &str, slot: &str) -> Result<Option<SlotLag>, WalError> {
    let text = scalar(
        side,
        url,
        &format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint || ' ' || \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            quote_literal(slot)
        ),
        "the replication slot's lag",
    )
    .await?;
    let Some(text) = text else {
        return Ok(None);
    };
    let mut numbers = text
        .split(' ')
        .map(|number| number.parse::<i64>().map(|n| u64::try_from(n).unwrap_or(0)));
    match (numbers.next(), numbers.next()) {
        (Some(Ok(retained_bytes)), Some(Ok(unconfirmed_bytes))) => Ok(Some(SlotLag {
            retained_bytes,
            unconfirmed_bytes,
        })),
        _ => Err(WalError::Protocol {
            side,
            reason: format!("the replication slot's lag: {text:?}"),
        }),
    }
}

/// Carries every sequence of the side at `from` to the side at `to` (those `to` has by the
/// same name): each ends at least where it stands on `from`, never lower than it stood, so
/// serial ids go on without collisions on whichever side serves next. Returns how many were
/// set.
///
/// # Errors
/// A [`WalError`] when either server cannot answer or refuses.
pub async fn carry_sequences(from: (Side, &str), to: (Side, &str)) -> Result<usize, WalError> {
    let mut source = Connection::open_sql(from.0, from.1).await?;
    let rows = source
        .query(
            "SELECT schemaname::text, sequencename::text, last_value::text, \
             (increment_by < 0)::text FROM pg_catalog.pg_sequences WHERE last_value IS NOT NULL",
            "the sequences look-up",
        )
        .await?;
    source.terminate().await?;
    let mut target = Connection::open_sql(to.0, to.1).await?;
    let present: std::collections::HashSet<(Option<String>, Option<String>)> = target
        .query(
            "SELECT schemaname::text, sequencename::text FROM pg_catalog.pg_sequences",
            "the sequences look-up",
        )
        .await?
        .into_iter()
        .map(|row| {
            let mut row = row.into_iter();
            (row.next().flatten(), row.next().flatten())
        })
        .collect();
    let mut sql = String::new();
    let mut count = 0;
    for row in rows {
        let mut row = row.into_iter();
        let (schema, name, value, descending) = (
            row.next().flatten(),
            row.next().flatten(),
            row.next().flatten(),
            row.next().flatten().as_deref() == Some("true"),
        );
        let Some(value) = value.and_then(|value| value.parse::<i64>().ok()) else {
            continue;
        };
        if !present.contains(&(schema.clone(), name.clone())) {
            continue;
        }
        let (Some(schema), Some(name)) = (schema, name) else {
            continue;
        };
        let qualified = format!("{}.{}", quote_identifier(&schema), quote_identifier(&name));
        // Past every value either side handed out: the highest for an ascending sequence,
        // the lowest for a descending one.
        let furthest = if descending { "least" } else { "greatest" };
        let _ = write!(
            sql,
            "SELECT setval({}, {furthest}({value}, (SELECT last_value FROM {qualified})), true);",
            quote_literal(&qualified)
        );
        count += 1;
    }
    if count == 0 {
        target.terminate().await?;
        return Ok(0);
    }
    let outcome = target.batch(&sql).await?;
    target.terminate().await?;
    match outcome.error {
        Some((code, message)) => Err(WalError::Server {
            side: to.0,
            command: "setval",
            code,
            message,
        }),
        None => Ok(count),
    }
}

/// One side's capture slot as `tandem pg-mirror status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotStatus {
    /// The side whose log the slot keeps.
    pub side: Side,
    /// The slot.
    pub slot: String,
    /// Whether it exists.
    pub exists: bool,
    /// Whether a capture reads it now.
    pub active: bool,
    /// The position its reader confirmed last.
    pub confirmed: Option<String>,
    /// Log bytes the server keeps for it.
    pub retained_bytes: Option<u64>,
    /// Log bytes written since the confirmed position.
    pub unconfirmed_bytes: Option<u64>,
    /// The position up to which the other side has every transaction: the capture's
    /// replication origin there, or the confirmed position when further (with several apply
    /// sessions that origin moves only at the transactions applied in order with every
    /// other; the slot is confirmed only as far as everything before is applied).
    pub applied_on_other_side: Option<String>,
    /// Where the side's log ends now.
    pub current: Option<String>,
    /// How long the capture reading the slot took, lately, from a change written on the side
    /// to its confirmation (applied on the other side): the walsender's `replay_lag`, unknown
    /// when nobody reads the slot or it has had nothing to confirm for a while.
    pub lag_seconds: Option<f64>,
    /// Why the other side's progress is unknown (it could not be read).
    pub other_side_error: Option<String>,
}

/// The capture slot `slot` of the side at `url`, and what the other side (at `other_url`)
/// applied of it under `origin` (unknown, saying why, when the other side cannot answer: the
/// slot is shown, and can be dropped, while the other side is down).
///
/// # Errors
/// A [`WalError`] when the slot's side cannot answer.
pub async fn slot_status(
    side: Side,
    url: &str,
    slot: &str,
    other_url: &str,
    origin: &str,
) -> Result<SlotStatus, WalError> {
    let row = scalar(
        side,
        url,
        &format!(
            "SELECT s.active::text || ' ' || coalesce(s.confirmed_flush_lsn::text, '-') || ' ' \
             || coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint::text, \
             '-') || ' ' || coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), \
             s.confirmed_flush_lsn)::bigint::text, '-') || ' ' || pg_current_wal_lsn()::text \
             || ' ' || coalesce(extract(epoch FROM r.replay_lag)::text, '-') \
             FROM pg_catalog.pg_replication_slots s LEFT JOIN pg_catalog.pg_stat_replication r \
             ON r.pid = s.active_pid WHERE s.slot_name = {}",
            quote_literal(slot)
        ),
        "the replication slot look-up",
    )
    .await?;
    let (applied, other_side_error) = match origin_progress(side.other(), other_url, origin).await {
        Ok(applied) => (applied, None),
        Err(err) => (Lsn(0), Some(err.to_string())),
    };
    let mut status = SlotStatus {
        side,
        slot: slot.to_owned(),
        exists: row.is_some(),
        active: false,
        confirmed: None,
        retained_bytes: None,
        unconfirmed_bytes: None,
        applied_on_other_side: (applied.0 > 0).then(|| applied.to_string()),
        current: None,
        lag_seconds: None,
        other_side_error,
    };
    if let Some(row) = row {
        let fields: Vec<&str> = row.split(' ').collect();
        let field = |index: usize| fields.get(index).copied().filter(|value| *value != "-");
        status.active = field(0) == Some("true");
        status.confirmed = field(1).map(str::to_owned);
        if let Some(confirmed) = field(1).and_then(|text| text.parse::<Lsn>().ok()) {
            if confirmed > applied {
                status.applied_on_other_side = Some(confirmed.to_string());
            }
        }
        status.retained_bytes = field(2).and_then(|value| value.parse().ok());
        status.unconfirmed_bytes = field(3).and_then(|value| value.parse().ok());
        status.current = field(4).map(str::to_owned);
        status.lag_seconds = field(5).and_then(|value| value.parse().ok());
    }
    Ok(status)
}
