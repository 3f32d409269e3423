//! Calendar arithmetic and the text forms of dates, times and timestamps: parsing, printing,
//! and the literals of the zero and partial dates MariaDB keeps, which are no calendar day.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days in `month` (1-12) of `year`, proleptic Gregorian.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Year, month and day of `YYYY-MM-DD`, each in the range MariaDB keeps (month and day may
/// be 0), whether or not they make a calendar day.
fn date_parts(text: &str) -> Option<(i64, i64, i64)> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let in_range =
        (0..=9999).contains(&year) && (0..=12).contains(&month) && (0..=31).contains(&day);
    in_range.then_some((year, month, day))
}

/// Days since 1970-01-01 of `YYYY-MM-DD`, when it is a calendar day.
pub(crate) fn parse_date(text: &str) -> Option<i64> {
    let (year, month, day) = date_parts(text)?;
    let valid = month >= 1 && day >= 1 && day <= days_in_month(year, month);
    valid.then(|| days_from_civil(year, month, day))
}

/// The canonical literal (`YYYY-MM-DD`) of a zero or partial date such as MariaDB keeps
/// under a permissive `sql_mode` (`0000-00-00`, `2020-00-15`, `2020-02-30`): `None` for a
/// calendar day or for text that is no date at all.
pub(crate) fn partial_date_literal(text: &str) -> Option<String> {
    let (year, month, day) = date_parts(text)?;
    parse_date(text)
        .is_none()
        .then(|| format!("{year:04}-{month:02}-{day:02}"))
}

/// The canonical literal (`YYYY-MM-DD HH:MM:SS.ffffff`) of a timestamp on a zero or partial
/// date, its time truncated to `step` microseconds; `None` as for [`partial_date_literal`].
pub(crate) fn partial_timestamp_literal(text: &str, step: i64) -> Option<String> {
    let text = text.trim();
    let (date, clock) = text.split_at(text.find([' ', 'T'])?);
    let micros = parse_time(&clock[1..])?;
    let date = partial_date_literal(date)?;
    let step = step.max(1);
    Some(format!("{date} {}", format_time(micros / step * step)))
}

pub(crate) fn parse_time(text: &str) -> Option<i64> {
    let (clock, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let mut parts = clock.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: i64 = parts.next().unwrap_or("0").parse().ok()?;
    if !(0..=1_000_000).contains(&hours)
        || !(0..60).contains(&minutes)
        || !(0..=60).contains(&seconds)
    {
        return None;
    }
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<6}").parse().ok()?
    };
    Some(((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros)
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH:MM]`; returns UTC-or-local microseconds and
/// whether a zone was given.
pub(crate) fn parse_timestamp(text: &str) -> Option<(i64, bool)> {
    let text = text.trim();
    let (date, rest) = text.split_at(text.find([' ', 'T'])?);
    let rest = &rest[1..];
    let (clock, offset, zoned) = if let Some(clock) = rest.strip_suffix('Z') {
        (clock, 0, true)
    } else if let Some(sign_at) = rest.rfind(['+', '-']).filter(|&at| at >= 8) {
        let (clock, zone) = rest.split_at(sign_at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let digits = &zone[1..];
        let (hours, minutes) = match digits.split_once(':') {
            Some(parts) => parts,
            None if digits.len() == 4 => digits.split_at(2),
            None => (digits, "0"),
        };
        let offset = (hours.parse::<i64>().ok()? * 60 + minutes.parse::<i64>().ok()?) * 60_000_000;
        (clock, sign * offset, true)
    } else {
        (rest, 0, false)
    };
    let micros = parse_date(date)? * 86_400_000_000 + parse_time(clock)?;
    Some((micros - offset, zoned))
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` for microseconds since the epoch (no zone).
pub(crate) fn timestamp_text(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000);
    format!("{} {}", format_date(days), format_time(rest))
}

pub(crate) fn format_date(days: i64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

pub(crate) fn format_time(micros: i64) -> String {
    if micros < 0 {
        return format!("-{}", format_time(micros.saturating_neg()));
    }
    let (seconds, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    format!("{hours:02}:{minutes:02}:{seconds:02}.{fraction:06}")
}

pub(crate) fn format_timestamp(micros: i64) -> String {
    timestamp_text(micros).replacen(' ', "T", 1) + "Z"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_calendar_days_are_dates() {
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for no_day in [
            "2023-02-29",
            "2020-02-30",
            "2020-04-31",
            "2020-00-15",
            "0000-00-00",
        ] {
            assert_eq!(parse_date(no_day), None, "{no_day}");
        }
    }

    #[test]
    fn zero_and_partial_dates_keep_a_literal() {
        assert_eq!(
            partial_date_literal("0000-00-00").as_deref(),
            Some("0000-00-00")
        );
        assert_eq!(
            partial_date_literal("2020-00-15").as_deref(),
            Some("2020-00-15")
        );
        assert_eq!(
            partial_date_literal("2020-02-30").as_deref(),
            Some("2020-02-30")
        );
        assert_eq!(partial_date_literal("2020-02-28"), None, "a calendar day");
        assert_eq!(partial_date_literal("2020-13-01"), None, "no date at all");
        assert_eq!(
            partial_timestamp_literal("2020-02-00 10:00:00", 1).as_deref(),
            Some("2020-02-00 10:00:00.000000")
        );
        assert_eq!(
            partial_timestamp_literal("0000-00-00 00:00:00.000000", 1),
            partial_timestamp_literal("0000-00-00 00:00:00", 1),
            "the column's precision does not matter"
        );
        assert_eq!(
            partial_timestamp_literal("0000-00-00 00:00:01.999", 1_000_000).as_deref(),
            Some("0000-00-00 00:00:01.000000")
        );
        assert_eq!(partial_timestamp_literal("2020-02-01 10:00:00", 1), None);
    }
}
