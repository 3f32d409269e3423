//! The order resource: what clients send, what is stored, and how it is validated.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest accepted amount (exclusive), matching `NUMERIC(12,2)`.
const AMOUNT_LIMIT: i64 = 10_000_000_000;
/// Longest accepted customer name.
const MAX_CUSTOMER: usize = 255;
/// Longest accepted status.
const MAX_STATUS: usize = 32;
/// Longest accepted note.
const MAX_NOTE: usize = 10_000;

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Client-chosen id.
    pub id: i64,
    /// Who ordered.
    pub customer: String,
    /// Amount with two decimals, as text (`"12.50"`) so no precision is lost.
    pub amount: String,
    /// Order status, e.g. `open`, `paid`, `shipped`.
    pub status: String,
    /// Optional free text.
    pub note: Option<String>,
}

/// The body of `PUT /orders/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderInput {
    customer: String,
    amount: Value,
    status: String,
    #[serde(default)]
    note: Option<String>,
}

/// The body of `PATCH /orders/{id}`: only the fields to change; `"note": null` clears the note.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPatch {
    customer: Option<String>,
    amount: Option<Value>,
    status: Option<String>,
    #[serde(default, deserialize_with = "present")]
    note: Option<Option<String>>,
}

/// Distinguishes a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(de).map(Some)
}

impl OrderInput {
    /// The order this input describes, validated.
    ///
    /// # Errors
    /// A reason naming the invalid field.
    pub fn into_order(self, id: i64) -> Result<Order, String> {
        Ok(Order {
            id,
            customer: text("customer", self.customer, MAX_CUSTOMER)?,
            amount: amount(&self.amount)?,
            status: text("status", self.status, MAX_STATUS)?,
            note: self
                .note
                .map(|note| text("note", note, MAX_NOTE))
                .transpose()?,
        })
    }
}

impl OrderPatch {
    /// `order` with this patch applied, validated.
    ///
    /// # Errors
    /// A reason naming the invalid field.
    pub fn apply(self, mut order: Order) -> Result<Order, String> {
        if let Some(customer) = self.customer {
            order.customer = text("customer", customer, MAX_CUSTOMER)?;
        }
        if let Some(value) = self.amount {
            order.amount = amount(&value)?;
        }
        if let Some(status) = self.status {
            order.status = text("status", status, MAX_STATUS)?;
        }
        if let Some(note) = self.note {
            order.note = note.map(|note| text("note", note, MAX_NOTE)).transpose()?;
        }
        Ok(order)
    }
}

fn text(field: &str, value: String, max: usize) -> Result<String, String> {
    if value.trim().is_empty() {
        Err(format!("`{field}` must not be empty"))
    } else if value.chars().count() > max {
        Err(format!("`{field}` is longer than {max} characters"))
    } else {
        Ok(value)
    }
}

/// Parses a decimal amount given as a JSON string or number into `"D.DD"` form.
fn amount(value: &Value) -> Result<String, String> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return Err("`amount` must be a decimal number or string".to_owned()),
    };
    let mut decimal = Decimal::from_str(text.trim())
        .map_err(|_| format!("`amount` {text:?} is not a decimal number"))?;
    if decimal.normalize().scale() > 2 {
        return Err(format!("`amount` {text:?} has more than two decimals"));
    }
    if decimal.abs() >= Decimal::from(AMOUNT_LIMIT) {
        return Err(format!("`amount` {text:?} is too large"));
    }
    decimal.rescale(2);
    Ok(decimal.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_normalised_to_two_decimals() {
        assert_eq!(amount(&json!("12.5")).unwrap(), "12.50");
        assert_eq!(amount(&json!(7)).unwrap(), "7.00");
        assert_eq!(amount(&json!("-0.10")).unwrap(), "-0.10");
        assert_eq!(amount(&json!("3.000")).unwrap(), "3.00");
        for bad in [
            json!("1.234"),
            json!("abc"),
            json!(true),
            json!("99999999999"),
        ] {
            assert!(amount(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patches_change_only_what_they_name() {
        let order = Order {
            id: 1,
            customer: "ada".to_owned(),
            amount: "1.00".to_owned(),
            status: "open".to_owned(),
            note: Some("x".to_owned()),
        };
        let patch: OrderPatch = serde_json::from_value(json!({"status": "paid"})).unwrap();
        let patched = patch.apply(order.clone()).unwrap();
        assert_eq!(patched.status, "paid");
        assert_eq!(patched.note.as_deref(), Some("x"));
        let clear: OrderPatch = serde_json::from_value(json!({"note": null})).unwrap();
        assert_eq!(clear.apply(order).unwrap().note, None);
    }
}
