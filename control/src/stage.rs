//! The migration stages and what each one means for routing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the two systems being migrated between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The system being migrated away from.
    Old,
    /// The system being migrated to.
    New,
}

impl Side {
    /// The other side.
    #[must_use]
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }

    /// The lower-case name used in metrics, records and the CLI.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Side {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "old" => Ok(Side::Old),
            "new" => Ok(Side::New),
            other => Err(UnknownName::new("side", other, "old, new")),
        }
    }
}

/// A stage of the migration; it decides which side answers and which side is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Everything goes to the old side only.
    OldOnly,
    /// Writes go to old (authoritative) and are mirrored to new; reads go to old only.
    DualWrite,
    /// Like dual-write, and reads are sent to new too and the answers compared.
    Shadow,
    /// New is authoritative; writes are mirrored to old; reads are compared against old.
    Live,
    /// Everything goes to the new side only.
    NewOnly,
}

impl Stage {
    /// Every stage, in migration order.
    pub const ALL: [Stage; 5] = [
        Stage::OldOnly,
        Stage::DualWrite,
        Stage::Shadow,
        Stage::Live,
        Stage::NewOnly,
    ];

    /// The stage a fresh control store starts in.
    pub const INITIAL: Stage = Stage::OldOnly;

    /// Whether moving from `self` to `to` gives the new side more authority (to `live` or
    /// `new-only` from an earlier stage): such a move passes the promotion gate.
    #[must_use]
    pub fn promotes_to(self, to: Stage) -> bool {
        matches!(to, Stage::Live | Stage::NewOnly) && to.rank() > self.rank()
    }

    /// Whether `to` comes before `self` in migration order.
    #[must_use]
    pub fn rolls_back_to(self, to: Stage) -> bool {
        to.rank() < self.rank()
    }

    fn rank(self) -> usize {
        Stage::ALL
            .iter()
            .position(|stage| *stage == self)
            .unwrap_or(0)
    }

    /// The side whose answer the client gets.
    #[must_use]
    pub fn authoritative(self) -> Side {
        match self {
            Stage::OldOnly | Stage::DualWrite | Stage::Shadow => Side::Old,
            Stage::Live | Stage::NewOnly => Side::New,
        }
    }

    /// Whether accepted writes are copied to the non-authoritative side.
    #[must_use]
    pub fn mirrors_writes(self) -> bool {
        matches!(self, Stage::DualWrite | Stage::Shadow | Stage::Live)
    }

    /// Whether reads are also sent to the non-authoritative side and the answers compared.
    #[must_use]
    pub fn compares_reads(self) -> bool {
        matches!(self, Stage::Shadow | Stage::Live)
    }

    /// The kebab-case name used in config, the CLI, the API and the store.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::OldOnly => "old-only",
            Stage::DualWrite => "dual-write",
            Stage::Shadow => "shadow",
            Stage::Live => "live",
            Stage::NewOnly => "new-only",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| {
                UnknownName::new("stage", s, "old-only, dual-write, shadow, live, new-only")
            })
    }
}

/// A name that is not one of the values a field accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?} (expected one of: {expected})")]
pub struct UnknownName {
    what: &'static str,
    name: String,
    expected: &'static str,
}

impl UnknownName {
    pub(crate) fn new(what: &'static str, name: &str, expected: &'static str) -> UnknownName {
        UnknownName {
            what,
            name: name.to_owned(),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>(), Ok(stage));
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
        }
    }

    #[test]
    fn unknown_stage_names_the_choices() {
        let err = "dual_write".parse::<Stage>().unwrap_err().to_string();
        assert!(err.contains("\"dual_write\""), "{err}");
        assert!(err.contains("dual-write"), "{err}");
    }

    #[test]
    fn routing_facts_follow_the_stage_table() {
        use Side::{New, Old};
        let table = [
            (Stage::OldOnly, Old, false, false),
            (Stage::DualWrite, Old, true, false),
            (Stage::Shadow, Old, true, true),
            (Stage::Live, New, true, true),
            (Stage::NewOnly, New, false, false),
        ];
        for (stage, authoritative, mirrors, compares) in table {
            assert_eq!(stage.authoritative(), authoritative, "{stage}");
            assert_eq!(stage.mirrors_writes(), mirrors, "{stage}");
            assert_eq!(stage.compares_reads(), compares, "{stage}");
        }
    }
}
