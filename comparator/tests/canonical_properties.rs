//! Property tests of the canonical encoding: one value in any engine's representation
//! encodes the same; any single change to a value, a NULL or a key changes the row digest.

use proptest::prelude::*;
use serde_json::Value;
use tandem_comparator::canonical::{
    decode_key, encode_key, encode_wire, encoded_key_cmp, Canonical, CanonicalSettings,
    ColumnReading, CompareKind, Wire,
};
use tandem_comparator::{EncodedRows, Row};

fn reading(kind: CompareKind) -> ColumnReading {
    ColumnReading {
        kind,
        padded: false,
        naive_time: false,
    }
}

fn canon(wire: Wire, kind: CompareKind) -> Canonical {
    Canonical::from_wire(wire, reading(kind), &CanonicalSettings::default())
}

fn encoded(value: &Canonical) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode(&mut out);
    out
}

/// A decimal's text with `extra` trailing zeros, as an engine with a wider scale shows it.
fn decimal_text(mantissa: i64, scale: u32, extra: usize) -> String {
    let digits = mantissa.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int_part, frac_part) = padded.split_at(padded.len() - scale);
    let sign = if mantissa < 0 { "-" } else { "" };
    let zeros = "0".repeat(extra);
    if scale == 0 && extra == 0 {
        format!("{sign}{int_part}")
    } else {
        format!("{sign}{int_part}.{frac_part}{zeros}")
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-z]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-e]{1,3}", inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The same JSON with every object's keys reversed and spaces added.
fn reordered(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .rev()
                .map(|(key, child)| {
                    format!("{} : {}", Value::String(key.clone()), reordered(child))
                })
                .collect();
            format!("{{ {} }}", parts.join(" , "))
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(reordered).collect();
            format!("[ {} ]", parts.join(" , "))
        }
        other => other.to_string(),
    }
}

fn any_canonical() -> impl Strategy<Value = Canonical> {
    prop_oneof![
        Just(Canonical::Null),
        any::<bool>().prop_map(Canonical::Bool),
        any::<i64>().prop_map(|n| Canonical::Number(n.to_string())),
        "[ -~]{0,12}".prop_map(Canonical::Text),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Canonical::Bytes),
        any::<i64>().prop_map(Canonical::Timestamp),
        any::<[u8; 16]>().prop_map(Canonical::Uuid),
    ]
}

fn any_wire() -> impl Strategy<Value = Wire> {
    prop_oneof![
        Just(Wire::Null),
        any::<bool>().prop_map(Wire::Bool),
        any::<i64>().prop_map(Wire::Int),
        any::<f64>().prop_map(Wire::Float),
        "[ -~]{0,12}".prop_map(Wire::Text),
        "-?(0|[1-9][0-9]{0,5})(\\.[0-9]{0,3}[1-9])?".prop_map(Wire::Text),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Wire::Bytes),
        any::<[u8; 16]>().prop_map(|bytes| Wire::Bytes(bytes.to_vec())),
    ]
}

fn any_reading() -> impl Strategy<Value = ColumnReading> {
    let kinds = prop_oneof![
        Just(CompareKind::Number),
        Just(CompareKind::Float),
        Just(CompareKind::Bool),
        Just(CompareKind::Text),
        Just(CompareKind::Bytes),
        Just(CompareKind::Timestamp),
        Just(CompareKind::Date),
        Just(CompareKind::Time),
        Just(CompareKind::Uuid),
        Just(CompareKind::Json),
    ];
    (kinds, any::<bool>(), any::<bool>()).prop_map(|(kind, padded, naive_time)| ColumnReading {
        kind,
        padded,
        naive_time,
    })
}

/// `micros` as `YYYY-MM-DDTHH:MM:SS.ffffff±HH:MM` in a zone `offset_minutes` east of UTC.
fn zoned_text(micros: i64, offset_minutes: i64) -> String {
    let local = Canonical::Timestamp(micros + offset_minutes * 60_000_000).to_json();
    let local = local
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('Z')
        .to_owned();
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let minutes = offset_minutes.abs();
    format!("{local}{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

proptest! {
    #[test]
    fn decimals_equal_by_value_whatever_the_scale(mantissa in any::<i64>(), scale in 0u32..8, extra in 0usize..4) {
        let narrow = canon(Wire::Text(decimal_text(mantissa, scale, 0)), CompareKind::Number);
        let wide = canon(Wire::Text(decimal_text(mantissa, scale, extra)), CompareKind::Number);
        prop_assert_eq!(encoded(&narrow), encoded(&wide));
        if scale == 0 {
            prop_assert_eq!(encoded(&canon(Wire::Int(mantissa), CompareKind::Number)), encoded(&narrow));
        }
    }

    #[test]
    fn different_decimals_encode_differently(a in any::<i64>(), b in any::<i64>(), scale in 0u32..6) {
        prop_assume!(a != b);
        let x = canon(Wire::Text(decimal_text(a, scale, 0)), CompareKind::Number);
        let y = canon(Wire::Text(decimal_text(b, scale, 0)), CompareKind::Number);
        prop_assert_ne!(encoded(&x), encoded(&y));
    }

    #[test]
    fn uuids_equal_in_bytes_and_either_case(bytes in any::<[u8; 16]>()) {
        let from_bytes = canon(Wire::Bytes(bytes.to_vec()), CompareKind::Uuid);
        let text = from_bytes.to_json().as_str().unwrap_or_default().to_owned();
        prop_assert_eq!(&from_bytes, &canon(Wire::Text(text.to_uppercase()), CompareKind::Uuid));
        prop_assert_eq!(&from_bytes, &canon(Wire::Text(text), CompareKind::Uuid));
    }

    #[test]
    fn json_ignores_key_order_and_whitespace(value in json_value()) {
        let compact = canon(Wire::Text(value.to_string()), CompareKind::Json);
        let spaced = canon(Wire::Text(reordered(&value)), CompareKind::Json);
        prop_assert_eq!(encoded(&compact), encoded(&spaced));
    }

    #[test]
    fn zoned_text_and_utc_microseconds_agree(
        micros in -2_000_000_000_000_000i64..4_000_000_000_000_000,
        offset_minutes in -720i64..=720,
    ) {
        let text = zoned_text(micros, offset_minutes);
        prop_assert_eq!(canon(Wire::Text(text), CompareKind::Timestamp), Canonical::Timestamp(micros));
    }

    #[test]
    fn direct_encoding_equals_the_canonical_values_encoding(
        wire in any_wire(),
        reading in any_reading(),
        offset_hours in -12i64..=12,
        precision in prop_oneof![Just(1i64), Just(1_000), Just(1_000_000)],
    ) {
        let settings = CanonicalSettings {
            assume_tz_offset_micros: offset_hours * 3_600_000_000,
            timestamp_precision_micros: precision,
            float_tolerance: None,
            timestamp_tolerance_micros: None,
        };
        let mut direct = Vec::new();
        encode_wire(wire.as_ref(), reading, &settings, &mut direct);
        let value = Canonical::from_wire(wire, reading, &settings);
        prop_assert_eq!(&direct, &encoded(&value));
        let decoded = Canonical::decode(&direct).map(|(value, rest)| (encoded(&value), rest.len()));
        prop_assert_eq!(decoded, Some((direct.clone(), 0)), "decodes back to the same value");
    }

    #[test]
    fn encoded_keys_order_as_their_values(
        a in prop::collection::vec(any_canonical(), 1..4),
        b in prop::collection::vec(any_canonical(), 1..4),
    ) {
        let (a, b): (Vec<Canonical>, Vec<Canonical>) =
            a.into_iter().zip(b).unzip();
        let by_value = a
            .iter()
            .zip(&b)
            .map(|(x, y)| x.key_cmp(y))
            .find(|ordering| ordering.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal);
        prop_assert_eq!(encoded_key_cmp(&encode_key(&a), &encode_key(&b)), by_value);
        prop_assert_eq!(decode_key(&encode_key(&a)), Some(a));
    }

    #[test]
    fn any_single_change_changes_the_digest(
        key in any::<i64>(),
        values in prop::collection::vec(any_canonical(), 1..6),
        position in any::<prop::sample::Index>(),
        replacement in any_canonical(),
        other_key in any::<i64>(),
    ) {
        let row = Row { key: vec![Canonical::Number(key.to_string())], values: values.clone() };
        let original = EncodedRows::from_rows(std::slice::from_ref(&row)).digest();
        let index = position.index(values.len());
        let mut changed = row.clone();
        changed.values[index] = replacement.clone();
        let same = encoded(&replacement) == encoded(&values[index]);
        prop_assert_eq!(original == EncodedRows::from_rows(&[changed]).digest(), same);

        let mut nulled = row.clone();
        nulled.values[index] = Canonical::Null;
        let was_null = values[index] == Canonical::Null;
        prop_assert_eq!(original == EncodedRows::from_rows(&[nulled]).digest(), was_null);

        let mut rekeyed = row;
        rekeyed.key = vec![Canonical::Number(other_key.to_string())];
        prop_assert_eq!(original == EncodedRows::from_rows(&[rekeyed]).digest(), key == other_key);
    }

    #[test]
    fn null_and_empty_text_never_meet(text in "[ ]{0,3}") {
        prop_assert_ne!(
            encoded(&canon(Wire::Null, CompareKind::Text)),
            encoded(&canon(Wire::Text(text), CompareKind::Text))
        );
    }
}
