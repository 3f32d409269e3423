//! The canonical, engine-independent form of a value, its type-tagged length-prefixed
//! encoding, and the conversions from what each engine returns.
//!
//! Two values are equal exactly when their encodings are equal (floats with a tolerance are
//! the one exception, handled by [`values_equal`]).

use std::cmp::Ordering;

use serde_json::Value as Json;

use crate::calendar::{
    format_date, format_time, format_timestamp, parse_date, parse_time, parse_timestamp,
    partial_date_literal, partial_timestamp_literal,
};
use crate::json::canonical_json;

/// A value as read from a database, before canonicalisation (the SQL projections deliver
/// only these shapes).
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer (also days and microseconds for dates and times).
    Int(i64),
    /// A double.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl Wire {
    /// The value borrowed.
    #[must_use]
    pub fn as_ref(&self) -> WireRef<'_> {
        match self {
            Wire::Null => WireRef::Null,
            Wire::Bool(value) => WireRef::Bool(*value),
            Wire::Int(value) => WireRef::Int(*value),
            Wire::Float(value) => WireRef::Float(*value),
            Wire::Text(text) => WireRef::Text(text),
            Wire::Bytes(bytes) => WireRef::Bytes(bytes),
        }
    }
}

/// A wire value borrowed from a driver's buffer, encoded without being copied first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WireRef<'a> {
    /// SQL NULL.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
}

impl WireRef<'_> {
    /// The value owned.
    #[must_use]
    pub fn into_wire(self) -> Wire {
        match self {
            WireRef::Null => Wire::Null,
            WireRef::Bool(value) => Wire::Bool(value),
            WireRef::Int(value) => Wire::Int(value),
            WireRef::Float(value) => Wire::Float(value),
            WireRef::Text(text) => Wire::Text(text.to_owned()),
            WireRef::Bytes(bytes) => Wire::Bytes(bytes.to_vec()),
        }
    }
}

/// How the two columns of a pair are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareKind {
    /// Integers and decimals, by value.
    Number,
    /// Floating point, by value.
    Float,
    /// Booleans (MySQL `TINYINT(1)` included).
    Bool,
    /// Text, exactly.
    Text,
    /// Bytes, exactly.
    Bytes,
    /// A point in time, as UTC microseconds.
    Timestamp,
    /// A calendar date, as days since 1970-01-01.
    Date,
    /// A time of day, as microseconds since midnight.
    Time,
    /// A UUID, from its 16 bytes or its text form in any case.
    Uuid,
    /// JSON, ignoring key order and whitespace, numbers by exact decimal value.
    Json,
    /// A bit string, as `0` and `1` characters.
    Bits,
    /// A PostgreSQL interval, as `M mons D days U microseconds`.
    Interval,
    /// An IP address or network, as PostgreSQL writes it.
    Network,
    /// A PostgreSQL range, as PostgreSQL writes it (discrete ranges are normalised there).
    Range,
    /// A PostgreSQL array: its elements as canonical JSON, in order.
    Array,
}

/// How one side's column is read into the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnReading {
    /// The comparison kind of the pair.
    pub kind: CompareKind,
    /// `CHAR(n)`: trailing spaces are padding, not data.
    pub padded: bool,
    /// A timestamp without time zone: read in the assumed zone.
    pub naive_time: bool,
}

/// Settings that shape canonical values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanonicalSettings {
    /// Offset of the zone timezone-less timestamps are read in, in microseconds east of UTC.
    pub assume_tz_offset_micros: i64,
    /// Timestamps are truncated to multiples of this many microseconds (1 = full precision).
    pub timestamp_precision_micros: i64,
    /// Floats closer than this are equal (`None`: exactly equal).
    pub float_tolerance: Option<f64>,
    /// Timestamps at most this many microseconds apart are equal (`None`: exactly equal):
    /// for values each side's clock set, such as `DEFAULT now()` of a mirrored write.
    pub timestamp_tolerance_micros: Option<u64>,
}

impl Default for CanonicalSettings {
    fn default() -> Self {
        CanonicalSettings {
            assume_tz_offset_micros: 0,
            timestamp_precision_micros: 1,
            float_tolerance: None,
            timestamp_tolerance_micros: None,
        }
    }
}

/// A canonical value.
#[derive(Debug, Clone, PartialEq)]
pub enum Canonical {
    /// NULL (never equal to an empty string or zero).
    Null,
    /// A boolean.
    Bool(bool),
    /// A number in normal decimal form: no leading or trailing zeros, no `-0`.
    Number(String),
    /// A float (`-0.0` folded into `0.0`, one NaN).
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// UTC microseconds since the epoch.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i64),
    /// Microseconds since midnight.
    Time(i64),
    /// A UUID's bytes.
    Uuid([u8; 16]),
    /// Canonical JSON text (sorted keys, no whitespace, normalised numbers).
    Json(String),
}

impl Canonical {
    /// Converts a wire value read from a column.
    #[must_use]
    pub fn from_wire(
        wire: Wire,
        reading: ColumnReading,
        settings: &CanonicalSettings,
    ) -> Canonical {
        if wire == Wire::Null {
            return Canonical::Null;
        }
        match reading.kind {
            CompareKind::Number => number(wire),
            CompareKind::Float => float(wire),
            CompareKind::Bool => match wire {
                Wire::Bool(value) => Canonical::Bool(value),
                Wire::Int(0) => Canonical::Bool(false),
                Wire::Int(1) => Canonical::Bool(true),
                // A one-bit string (`BIT(1)`, `bit(1)`) compared with a boolean.
                Wire::Text(bit) if bit == "0" || bit == "1" => Canonical::Bool(bit == "1"),
                other => number(other),
            },
            CompareKind::Text => match text(wire) {
                Canonical::Text(value) if reading.padded => {
                    Canonical::Text(value.trim_end_matches(' ').to_owned())
                }
                other => other,
            },
            CompareKind::Bytes => match wire {
                Wire::Bytes(bytes) => Canonical::Bytes(bytes),
                Wire::Text(text) => Canonical::Bytes(text.into_bytes()),
                other => text(other),
            },
            CompareKind::Timestamp => timestamp(wire, reading.naive_time, settings),
            CompareKind::Date => match wire {
                Wire::Int(days) => Canonical::Date(days),
                // A zero or partial date is its own value, never NULL: its canonical literal.
                Wire::Text(text) => parse_date(&text).map_or_else(
                    || Canonical::Text(partial_date_literal(&text).unwrap_or(text)),
                    Canonical::Date,
                ),
                other => text(other),
            },
            CompareKind::Time => match wire {
                Wire::Int(micros) => Canonical::Time(micros),
                Wire::Text(text) => {
                    parse_time(&text).map_or(Canonical::Text(text), Canonical::Time)
                }
                other => text(other),
            },
            CompareKind::Uuid => match wire {
                Wire::Bytes(bytes) if bytes.len() == 16 => {
                    let mut uuid = [0; 16];
                    uuid.copy_from_slice(&bytes);
                    Canonical::Uuid(uuid)
                }
                other => match text(other) {
                    Canonical::Text(value) => {
                        parse_uuid(&value).map_or(Canonical::Text(value), Canonical::Uuid)
                    }
                    other => other,
                },
            },
            CompareKind::Bits
            | CompareKind::Interval
            | CompareKind::Network
            | CompareKind::Range => text(wire),
            CompareKind::Json | CompareKind::Array => match text(wire) {
                Canonical::Text(value) => {
                    canonical_json(&value).map_or(Canonical::Text(value), Canonical::Json)
                }
                other => other,
            },
        }
    }

    /// Appends the type-tagged, length-prefixed encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put(out, self.tag(), &self.payload());
    }

    /// Reads the value encoded at the front of `input`; returns it and the rest of the input,
    /// or `None` when `input` does not start with an encoded value.
    #[must_use]
    pub fn decode(input: &[u8]) -> Option<(Canonical, &[u8])> {
        let (tag, payload, rest) = split_encoded(input)?;
        let int = || payload.try_into().ok().map(i64::from_le_bytes);
        let text = || String::from_utf8(payload.to_vec()).ok();
        let value = match tag {
            TAG_NULL => Canonical::Null,
            TAG_BOOL => Canonical::Bool(*payload.first()? != 0),
            TAG_NUMBER => Canonical::Number(text()?),
            TAG_FLOAT => {
                Canonical::Float(f64::from_bits(u64::from_le_bytes(payload.try_into().ok()?)))
            }
            TAG_TEXT => Canonical::Text(text()?),
            TAG_BYTES => Canonical::Bytes(payload.to_vec()),
            TAG_TIMESTAMP => Canonical::Timestamp(int()?),
            TAG_DATE => Canonical::Date(int()?),
            TAG_TIME => Canonical::Time(int()?),
            TAG_UUID => Canonical::Uuid(payload.try_into().ok()?),
            TAG_JSON => Canonical::Json(text()?),
            _ => return None,
        };
        Some((value, rest))
    }

    /// The encoded bytes after the tag and the length.
    fn payload(&self) -> Payload<'_> {
        match self {
            Canonical::Null => Payload::Borrowed(&[]),
            Canonical::Bool(value) => Payload::inline(&[u8::from(*value)]),
            Canonical::Float(value) => Payload::inline(&value.to_bits().to_le_bytes()),
            Canonical::Timestamp(value) | Canonical::Date(value) | Canonical::Time(value) => {
                Payload::inline(&value.to_le_bytes())
            }
            Canonical::Number(text) | Canonical::Text(text) | Canonical::Json(text) => {
                Payload::Borrowed(text.as_bytes())
            }
            Canonical::Bytes(bytes) => Payload::Borrowed(bytes),
            Canonical::Uuid(bytes) => Payload::Borrowed(bytes),
        }
    }

    /// The value as JSON for reports: integers within ±2^53 (which every JSON reader holds
    /// exactly) as numbers, everything else, larger integers included, as canonical text.
    #[must_use]
    pub fn to_json(&self) -> Json {
        /// The largest magnitude a double holds every integer up to.
        const EXACT_IN_DOUBLE: i64 = 1 << 53;
        match self {
            Canonical::Null => Json::Null,
            Canonical::Bool(value) => Json::Bool(*value),
            Canonical::Number(text) => text
                .parse::<i64>()
                .ok()
                .filter(|value| (-EXACT_IN_DOUBLE..=EXACT_IN_DOUBLE).contains(value))
                .map_or_else(|| Json::String(text.clone()), Json::from),
            Canonical::Float(value) => Json::String(value.to_string()),
            Canonical::Text(text) | Canonical::Json(text) => Json::String(text.clone()),
            Canonical::Bytes(bytes) => Json::String(hex(bytes)),
            Canonical::Timestamp(micros) => Json::String(format_timestamp(*micros)),
            Canonical::Date(days) => Json::String(format_date(*days)),
            Canonical::Time(micros) => Json::String(format_time(*micros)),
            Canonical::Uuid(bytes) => Json::String(format_uuid(bytes)),
        }
    }

    /// The order keys are read in: numbers by value, text and bytes by bytes, UUIDs by bytes.
    #[must_use]
    pub fn key_cmp(&self, other: &Canonical) -> Ordering {
        key_value_cmp(self.tag(), &self.payload(), other.tag(), &other.payload())
    }

    fn tag(&self) -> u8 {
        match self {
            Canonical::Null => TAG_NULL,
            Canonical::Bool(_) => TAG_BOOL,
            Canonical::Number(_) => TAG_NUMBER,
            Canonical::Float(_) => TAG_FLOAT,
            Canonical::Text(_) => TAG_TEXT,
            Canonical::Bytes(_) => TAG_BYTES,
            Canonical::Timestamp(_) => TAG_TIMESTAMP,
            Canonical::Date(_) => TAG_DATE,
            Canonical::Time(_) => TAG_TIME,
            Canonical::Uuid(_) => TAG_UUID,
            Canonical::Json(_) => TAG_JSON,
        }
    }
}

const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_NUMBER: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_TEXT: u8 = 4;
const TAG_BYTES: u8 = 5;
const TAG_TIMESTAMP: u8 = 6;
const TAG_DATE: u8 = 7;
const TAG_TIME: u8 = 8;
const TAG_UUID: u8 = 9;
const TAG_JSON: u8 = 10;

/// An encoded value's payload: borrowed from the value, or a fixed-width number inline.
enum Payload<'a> {
    Borrowed(&'a [u8]),
    Inline([u8; 8], usize),
}

impl Payload<'_> {
    fn inline(bytes: &[u8]) -> Payload<'static> {
        let mut inline = [0; 8];
        inline[..bytes.len()].copy_from_slice(bytes);
        Payload::Inline(inline, bytes.len())
    }
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(bytes) => bytes,
            Payload::Inline(bytes, len) => &bytes[..*len],
        }
    }
}

/// Appends one encoded value: its tag, its payload's length (8 bytes, little-endian) and
/// its payload.
fn put(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The tag, payload and rest of an encoded value at the front of `input`.
fn split_encoded(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Orders two key values given as tag and payload (see [`Canonical::key_cmp`]).
fn key_value_cmp(tag_a: u8, a: &[u8], tag_b: u8, b: &[u8]) -> Ordering {
    if tag_a != tag_b {
        return tag_a.cmp(&tag_b);
    }
    let int = |bytes: &[u8]| bytes.try_into().map(i64::from_le_bytes).unwrap_or(0);
    match tag_a {
        TAG_NUMBER => decimal_cmp(a, b),
        TAG_TEXT | TAG_BYTES | TAG_UUID => a.cmp(b),
        TAG_TIMESTAMP | TAG_DATE | TAG_TIME => int(a).cmp(&int(b)),
        _ => Ordering::Equal,
    }
}

/// The encoding of a key's values, back to back.
#[must_use]
pub fn encode_key(key: &[Canonical]) -> Vec<u8> {
    let mut out = Vec::new();
    for value in key {
        value.encode(&mut out);
    }
    out
}

/// The values of an encoded key (or of any values back to back); `None` when the bytes are
/// not such an encoding.
#[must_use]
pub fn decode_key(mut encoded: &[u8]) -> Option<Vec<Canonical>> {
    let mut values = Vec::new();
    while !encoded.is_empty() {
        let (value, rest) = Canonical::decode(encoded)?;
        values.push(value);
        encoded = rest;
    }
    Some(values)
}

/// Orders two encoded keys (values back to back) as [`Canonical::key_cmp`] orders their
/// values, column by column.
#[must_use]
pub fn encoded_key_cmp(mut a: &[u8], mut b: &[u8]) -> Ordering {
    while let (Some((tag_a, value_a, rest_a)), Some((tag_b, value_b, rest_b))) =
        (split_encoded(a), split_encoded(b))
    {
        let ordering = key_value_cmp(tag_a, value_a, tag_b, value_b);
        if ordering.is_ne() {
            return ordering;
        }
        (a, b) = (rest_a, rest_b);
    }
    Ordering::Equal
}

/// Appends the encoding of `wire` read as `reading`: the same bytes as
/// `Canonical::from_wire(wire, …).encode(out)`, written without building the value for the
/// shapes windows are mostly made of.
#[inline]
pub fn encode_wire(
    wire: WireRef<'_>,
    reading: ColumnReading,
    settings: &CanonicalSettings,
    out: &mut Vec<u8>,
) {
    match (reading.kind, wire) {
        (_, WireRef::Null) => put(out, TAG_NULL, &[]),
        (CompareKind::Number, WireRef::Int(value)) => {
            put(
                out,
                TAG_NUMBER,
                itoa::Buffer::new().format(value).as_bytes(),
            );
        }
        (CompareKind::Number, WireRef::Text(text)) if is_normal_decimal(text) => {
            put(out, TAG_NUMBER, text.as_bytes());
        }
        (CompareKind::Text, WireRef::Text(text)) => {
            let text = if reading.padded {
                text.trim_end_matches(' ')
            } else {
                text
            };
            put(out, TAG_TEXT, text.as_bytes());
        }
        (CompareKind::Bytes, WireRef::Bytes(bytes)) => put(out, TAG_BYTES, bytes),
        (CompareKind::Bool, WireRef::Bool(value)) => put(out, TAG_BOOL, &[u8::from(value)]),
        (CompareKind::Timestamp, WireRef::Int(micros)) => put(
            out,
            TAG_TIMESTAMP,
            &utc_micros(micros, reading.naive_time, settings).to_le_bytes(),
        ),
        (CompareKind::Date, WireRef::Int(days)) => put(out, TAG_DATE, &days.to_le_bytes()),
        (CompareKind::Time, WireRef::Int(micros)) => put(out, TAG_TIME, &micros.to_le_bytes()),
        (CompareKind::Uuid, WireRef::Bytes(bytes)) if bytes.len() == 16 => {
            put(out, TAG_UUID, bytes);
        }
        _ => Canonical::from_wire(wire.into_wire(), reading, settings).encode(out),
    }
}

/// Whether two canonical values are equal under the settings (float and timestamp
/// tolerances).
#[must_use]
pub fn values_equal(a: &Canonical, b: &Canonical, settings: &CanonicalSettings) -> bool {
    match (a, b) {
        (Canonical::Float(x), Canonical::Float(y)) => {
            // NaN is folded into one value, so bits decide; infinities only equal themselves.
            x.to_bits() == y.to_bits()
                || settings.float_tolerance.is_some_and(|tolerance| {
                    x.is_finite() && y.is_finite() && (x - y).abs() <= tolerance
                })
        }
        (Canonical::Timestamp(x), Canonical::Timestamp(y)) => settings
            .timestamp_tolerance_micros
            .map_or(x == y, |tolerance| x.abs_diff(*y) <= tolerance),
        _ => a == b,
    }
}

fn text(wire: Wire) -> Canonical {
    match wire {
        Wire::Null => Canonical::Null,
        Wire::Bool(value) => Canonical::Text(value.to_string()),
        Wire::Int(value) => Canonical::Text(value.to_string()),
        Wire::Float(value) => Canonical::Text(value.to_string()),
        Wire::Text(value) => Canonical::Text(value),
        Wire::Bytes(bytes) => match String::from_utf8(bytes) {
            Ok(value) => Canonical::Text(value),
            Err(err) => Canonical::Bytes(err.into_bytes()),
        },
    }
}

fn number(wire: Wire) -> Canonical {
    match wire {
        Wire::Int(value) => Canonical::Number(value.to_string()),
        Wire::Bool(value) => Canonical::Number(u8::from(value).to_string()),
        Wire::Float(value) if value.is_finite() => Canonical::Number(
            normalize_decimal(&format!("{value}")).unwrap_or_else(|| value.to_string()),
        ),
        Wire::Float(value) => Canonical::Number(value.to_string()),
        other => match text(other) {
            Canonical::Text(value) if is_normal_decimal(&value) => Canonical::Number(value),
            Canonical::Text(value) => match normalize_decimal(value.trim()) {
                Some(normal) => Canonical::Number(normal),
                None if matches!(value.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                    Canonical::Number(value)
                }
                None => Canonical::Text(value),
            },
            other => other,
        },
    }
}

fn float(wire: Wire) -> Canonical {
    let value = match wire {
        Wire::Float(value) => value,
        #[allow(clippy::cast_precision_loss)]
        Wire::Int(value) => value as f64,
        other => match text(other) {
            Canonical::Text(value) => match value.trim().parse::<f64>() {
                Ok(parsed) => parsed,
                Err(_) => return Canonical::Text(value),
            },
            other => return other,
        },
    };
    if value.is_nan() {
        Canonical::Float(f64::NAN)
    } else if value == 0.0 {
        Canonical::Float(0.0)
    } else {
        Canonical::Float(value)
    }
}

fn timestamp(wire: Wire, naive: bool, settings: &CanonicalSettings) -> Canonical {
    let (micros, naive) = match wire {
        Wire::Int(micros) => (micros, naive),
        Wire::Text(value) => match parse_timestamp(&value) {
            Some((micros, zoned)) => (micros, naive && !zoned),
            None => {
                let step = settings.timestamp_precision_micros;
                return Canonical::Text(partial_timestamp_literal(&value, step).unwrap_or(value));
            }
        },
        other => return text(other),
    };
    Canonical::Timestamp(utc_micros(micros, naive, settings))
}

/// UTC microseconds of a timestamp (a naive one read in the assumed zone), truncated to the
/// configured precision.
fn utc_micros(micros: i64, naive: bool, settings: &CanonicalSettings) -> i64 {
    let utc = if naive {
        micros.saturating_sub(settings.assume_tz_offset_micros)
    } else {
        micros
    };
    let step = settings.timestamp_precision_micros.max(1);
    utc.div_euclid(step) * step
}

/// Whether `text` is already a decimal in normal form (the common case, kept without copying).
fn is_normal_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int_part, frac_part) = match digits.split_once('.') {
        Some((int_part, frac_part)) => (int_part, Some(frac_part)),
        None => (digits, None),
    };
    let int_ok = int_part == "0"
        || (!int_part.is_empty()
            && !int_part.starts_with('0')
            && int_part.bytes().all(|b| b.is_ascii_digit()));
    let frac_ok = frac_part.is_none_or(|frac| {
        !frac.is_empty() && !frac.ends_with('0') && frac.bytes().all(|b| b.is_ascii_digit())
    });
    let negative_zero = text.starts_with('-') && int_part == "0" && frac_part.is_none();
    int_ok && frac_ok && !negative_zero
}

/// `d.ddd` in normal form, or `None` when `text` is not a plain decimal number.
#[must_use]
pub fn normalize_decimal(text: &str) -> Option<String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let frac_part = frac_part.trim_end_matches('0');
    let int_part = if int_part.is_empty() { "0" } else { int_part };
    let mut normal = String::with_capacity(int_part.len() + frac_part.len() + 2);
    if negative && (int_part != "0" || !frac_part.is_empty()) {
        normal.push('-');
    }
    normal.push_str(int_part);
    if !frac_part.is_empty() {
        normal.push('.');
        normal.push_str(frac_part);
    }
    Some(normal)
}

/// Compares two normal-form decimals by value, without allocating.
fn decimal_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let ((a_neg, a_len, a_int, a_frac), (b_neg, b_len, b_int, b_frac)) =
        (split_decimal(a), split_decimal(b));
    let magnitude = a_len
        .cmp(&b_len)
        .then_with(|| a_int.cmp(b_int))
        .then_with(|| a_frac.cmp(b_frac));
    match (a_neg, b_neg) {
        (false, false) => magnitude,
        (true, true) => magnitude.reverse(),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
    }
}

/// Sign, integer-part length, integer part and fraction of a normal-form decimal.
fn split_decimal(text: &[u8]) -> (bool, usize, &[u8], &[u8]) {
    let (negative, rest) = text
        .strip_prefix(b"-")
        .map_or((false, text), |rest| (true, rest));
    let (int_part, frac_part) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &[][..]),
    };
    (negative, int_part.len(), int_part, frac_part)
}

/// Parses the 36-character (or 32-character) form of a UUID, in any case.
#[must_use]
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex_digits: Vec<u8> = match text.len() {
        36 => {
            let bytes = text.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
                return None;
            }
            bytes.iter().copied().filter(|&b| b != b'-').collect()
        }
        32 => text.as_bytes().to_vec(),
        _ => return None,
    };
    if !hex_digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut uuid = [0u8; 16];
    for (index, pair) in hex_digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        uuid[index] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(uuid)
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex = hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(kind: CompareKind) -> ColumnReading {
        ColumnReading {
            kind,
            padded: false,
            naive_time: false,
        }
    }

    fn canon(wire: Wire, kind: CompareKind) -> Canonical {
        Canonical::from_wire(wire, read(kind), &CanonicalSettings::default())
    }

    #[test]
    fn decimals_are_equal_by_value() {
        for (a, b) in [
            ("1.10", "1.1"),
            ("-0.00", "0"),
            ("007", "7"),
            ("+3.0", "3"),
            (".5", "0.5"),
        ] {
            assert_eq!(normalize_decimal(a), normalize_decimal(b), "{a} {b}");
        }
        assert_eq!(
            canon(Wire::Int(12), CompareKind::Number),
            canon(Wire::Text("12.000".into()), CompareKind::Number)
        );
        assert_ne!(
            canon(Wire::Text("1.1".into()), CompareKind::Number),
            canon(Wire::Text("1.01".into()), CompareKind::Number)
        );
        assert_eq!(normalize_decimal("1e5"), None);
    }

    #[test]
    fn normal_decimals_are_recognised() {
        for normal in ["0", "7", "-7", "1.5", "-0.05", "120"] {
            assert!(is_normal_decimal(normal), "{normal}");
            assert_eq!(normalize_decimal(normal).as_deref(), Some(normal));
        }
        for other in ["", "-", "007", "1.50", "1.", ".5", "-0", "1e5", "+1", " 1"] {
            assert!(!is_normal_decimal(other), "{other}");
        }
    }

    #[test]
    fn decimal_order_is_numeric() {
        let sorted = [
            "-10", "-2.5", "-2", "0", "0.05", "1", "1.5", "9", "10", "100.01",
        ];
        for pair in sorted.windows(2) {
            let (a, b) = (pair[0].as_bytes(), pair[1].as_bytes());
            assert_eq!(decimal_cmp(a, b), Ordering::Less, "{pair:?}");
            assert_eq!(decimal_cmp(b, a), Ordering::Greater, "{pair:?}");
        }
    }

    #[test]
    fn null_empty_and_padding() {
        assert_ne!(
            canon(Wire::Null, CompareKind::Text),
            canon(Wire::Text(String::new()), CompareKind::Text)
        );
        let padded = ColumnReading {
            padded: true,
            ..read(CompareKind::Text)
        };
        let settings = CanonicalSettings::default();
        assert_eq!(
            Canonical::from_wire(Wire::Text("ab  ".into()), padded, &settings),
            canon(Wire::Text("ab".into()), CompareKind::Text)
        );
        assert_ne!(
            canon(Wire::Text("ab ".into()), CompareKind::Text),
            canon(Wire::Text("ab".into()), CompareKind::Text),
            "trailing spaces matter in text"
        );
        assert_ne!(
            canon(Wire::Text("Ab".into()), CompareKind::Text),
            canon(Wire::Text("ab".into()), CompareKind::Text),
            "case matters"
        );
    }

    #[test]
    fn uuids_json_and_booleans() {
        assert_eq!(
            canon(
                Wire::Text("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11".into()),
                CompareKind::Uuid
            ),
            canon(
                Wire::Text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                CompareKind::Uuid
            )
        );
        assert_eq!(
            canon(
                Wire::Text(r#"{"b": 1, "a": [1.0, "x"]}"#.into()),
                CompareKind::Json
            ),
            canon(
                Wire::Text(r#"{"a":[1,"x"],"b":1.00}"#.into()),
                CompareKind::Json
            )
        );
        assert_ne!(
            canon(Wire::Text(r#"{"a": 1}"#.into()), CompareKind::Json),
            canon(Wire::Text(r#"{"a": 2}"#.into()), CompareKind::Json)
        );
        assert_eq!(
            canon(Wire::Int(1), CompareKind::Bool),
            canon(Wire::Bool(true), CompareKind::Bool)
        );
        assert_ne!(
            canon(Wire::Int(2), CompareKind::Bool),
            canon(Wire::Bool(true), CompareKind::Bool)
        );
    }

    #[test]
    fn timestamps_dates_and_times() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(format_date(11_017), "2000-03-01");
        assert_eq!(parse_time("01:02:03.5"), Some(3_723_500_000));
        assert_eq!(format_time(-1_500_000), "-00:00:01.500000");
        assert_eq!(
            parse_timestamp("2026-11-23 10:00:00.000001+02:00"),
            parse_timestamp("2026-11-23T08:00:00.000001Z")
        );
        assert_eq!(
            parse_timestamp("2026-11-23 10:30:00+0530"),
            parse_timestamp("2026-11-23 05:00:00Z")
        );
        assert_eq!(
            parse_date("300000-01-01"),
            None,
            "out of range, not an overflow"
        );
        assert_eq!(parse_time("99999999999999:00:00"), None);
        let naive = ColumnReading {
            naive_time: true,
            ..read(CompareKind::Timestamp)
        };
        let paris = CanonicalSettings {
            assume_tz_offset_micros: 3_600_000_000,
            ..CanonicalSettings::default()
        };
        assert_eq!(
            Canonical::from_wire(Wire::Int(3_600_000_000), naive, &paris),
            Canonical::Timestamp(0)
        );
        let millis = CanonicalSettings {
            timestamp_precision_micros: 1_000,
            ..CanonicalSettings::default()
        };
        assert_eq!(
            Canonical::from_wire(Wire::Int(1_999), read(CompareKind::Timestamp), &millis),
            Canonical::Timestamp(1_000)
        );
        assert_eq!(
            Canonical::Timestamp(0).to_json(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn floats_fold_negative_zero_and_honour_tolerance() {
        assert_eq!(
            canon(Wire::Float(-0.0), CompareKind::Float),
            canon(Wire::Float(0.0), CompareKind::Float)
        );
        let loose = CanonicalSettings {
            float_tolerance: Some(0.01),
            ..CanonicalSettings::default()
        };
        assert!(values_equal(
            &Canonical::Float(1.0),
            &Canonical::Float(1.005),
            &loose
        ));
        assert!(!values_equal(
            &Canonical::Float(1.0),
            &Canonical::Float(1.005),
            &CanonicalSettings::default()
        ));
        let lagging = CanonicalSettings {
            timestamp_tolerance_micros: Some(2_000_000),
            ..CanonicalSettings::default()
        };
        let (at, later) = (Canonical::Timestamp(1_000), Canonical::Timestamp(2_001_000));
        assert!(values_equal(&at, &later, &lagging));
        assert!(values_equal(&later, &at, &lagging));
        assert!(!values_equal(
            &at,
            &Canonical::Timestamp(2_001_001),
            &lagging
        ));
        assert!(!values_equal(&at, &later, &CanonicalSettings::default()));
    }

    #[test]
    fn encodings_are_tagged_and_length_prefixed() {
        let (mut number, mut text) = (Vec::new(), Vec::new());
        Canonical::Number("1".into()).encode(&mut number);
        Canonical::Text("1".into()).encode(&mut text);
        assert_ne!(number, text, "the same bytes of another type differ");
        let (mut split_a, mut split_b) = (Vec::new(), Vec::new());
        Canonical::Text("ab".into()).encode(&mut split_a);
        Canonical::Text("c".into()).encode(&mut split_a);
        Canonical::Text("a".into()).encode(&mut split_b);
        Canonical::Text("bc".into()).encode(&mut split_b);
        assert_ne!(split_a, split_b, "boundaries are part of the encoding");
    }
}
