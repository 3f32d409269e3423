//! A row key as a JSON object whose members stay in key-column order, through the control
//! store and back (serde_json's own map would sort them by name).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A key's columns and values, in key-column order: a JSON object whose members keep that
/// order when written, stored and read back. Values are as the comparator gives them:
/// integers within ±2^53 as numbers, every other value as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValues(pub Vec<(String, Value)>);

impl KeyValues {
    /// The columns and their values, in key-column order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0
            .iter()
            .map(|(column, value)| (column.as_str(), value))
    }

    /// The value of `column`, if the key has it.
    #[must_use]
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.iter()
            .find_map(|(name, value)| (name == column).then_some(value))
    }
}

impl Serialize for KeyValues {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (column, value) in &self.0 {
            map.serialize_entry(column, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for KeyValues {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyValues, D::Error> {
        /// Keeps the members in the order they come.
        struct InOrder;

        impl<'de> Visitor<'de> for InOrder {
            type Value = KeyValues;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object of key columns and values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyValues, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(1));
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(KeyValues(members))
            }
        }

        deserializer.deserialize_map(InOrder)
    }
}

/// The key as compact JSON text, members in key-column order (`{"b":1,"a":2}`).
impl fmt::Display for KeyValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_their_order_through_text() {
        let key = KeyValues(vec![
            ("tenant".to_owned(), Value::from("b")),
            ("id".to_owned(), Value::from(7)),
            ("at".to_owned(), Value::from("2026-01-01")),
        ]);
        let text = key.to_string();
        assert_eq!(text, r#"{"tenant":"b","id":7,"at":"2026-01-01"}"#);
        let back: KeyValues = serde_json::from_str(&text).unwrap();
        assert_eq!(back, key);
        assert_eq!(back.get("id"), Some(&Value::from(7)));
        assert!(serde_json::from_str::<KeyValues>("[1]").is_err());
    }
}
