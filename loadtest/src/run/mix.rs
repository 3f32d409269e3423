//! The request mix: which operations, how often, on which keys.

use std::fmt;
use std::str::FromStr;

/// An operation on the orders API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `PUT /orders/{id}`: create or replace.
    Put,
    /// `PATCH /orders/{id}`: change some fields.
    Patch,
    /// `GET /orders/{id}`.
    Get,
    /// `DELETE /orders/{id}`.
    Delete,
}

impl Operation {
    /// The lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Put => "put",
            Operation::Patch => "patch",
            Operation::Get => "get",
            Operation::Delete => "delete",
        }
    }
}

/// Weights of the operations, e.g. `put=40,patch=20,get=35,delete=5`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: Vec<(Operation, u32)>,
    total: u32,
}

impl Mix {
    /// An operation drawn by weight from `roll` (any `u32`).
    #[must_use]
    pub fn pick(&self, roll: u32) -> Operation {
        let mut left = roll % self.total.max(1);
        for &(operation, weight) in &self.weights {
            if left < weight {
                return operation;
            }
            left -= weight;
        }
        Operation::Get
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected OPERATION=WEIGHT"))?;
            let operation = match name.trim() {
                "put" => Operation::Put,
                "patch" => Operation::Patch,
                "get" => Operation::Get,
                "delete" => Operation::Delete,
                other => {
                    return Err(format!(
                        "unknown operation {other:?}: expected put, patch, get or delete"
                    ))
                }
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: the weight must be a whole number"))?;
            if weights.iter().any(|(known, _)| *known == operation) {
                return Err(format!("{name} is given twice"));
            }
            weights.push((operation, weight));
        }
        let total = weights.iter().map(|(_, weight)| weight).sum::<u32>();
        if total == 0 {
            return Err("the weights must not all be zero".to_owned());
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(operation, weight)| format!("{}={weight}", operation.as_str()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix: Mix = "put=40,patch=20,get=35,delete=5".parse().unwrap();
        let picks: Vec<Operation> = (0..100).map(|roll| mix.pick(roll)).collect();
        let count = |operation| picks.iter().filter(|pick| **pick == operation).count();
        assert_eq!(
            (
                count(Operation::Put),
                count(Operation::Patch),
                count(Operation::Get),
                count(Operation::Delete)
            ),
            (40, 20, 35, 5)
        );
        assert_eq!(mix.to_string(), "put=40,patch=20,get=35,delete=5");
        assert!("put=1,post=2"
            .parse::<Mix>()
            .unwrap_err()
            .contains("unknown operation"));
        assert!("put=0".parse::<Mix>().is_err());
        assert!("put=1,put=2".parse::<Mix>().is_err());
        assert!("put".parse::<Mix>().is_err());
    }
}
