//! Sets of HTTP status codes written as `2xx`, `200-299` or `409`.

/// A set of status codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    /// Parses entries such as `2xx`, `200-204` and `409`.
    ///
    /// # Errors
    /// A reason naming the entry that is not a status, a class or a range.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<StatusSet, String> {
        let ranges = entries
            .iter()
            .map(|entry| parse_entry(entry.as_ref().trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.is_empty() {
            return Err("needs at least one status".to_owned());
        }
        Ok(StatusSet { ranges })
    }

    /// Whether `status` is in the set.
    #[must_use]
    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| (low..=high).contains(&status))
    }
}

fn parse_entry(entry: &str) -> Result<(u16, u16), String> {
    let invalid = || format!("{entry:?} is not a status (409), class (2xx) or range (200-299)");
    let status = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|code| (100..=599).contains(code))
            .ok_or_else(invalid)
    };
    if let Some(class) = entry
        .strip_suffix("xx")
        .or_else(|| entry.strip_suffix("XX"))
    {
        let digit = class
            .parse::<u16>()
            .ok()
            .filter(|digit| (1..=5).contains(digit))
            .ok_or_else(invalid)?;
        return Ok((digit * 100, digit * 100 + 99));
    }
    if let Some((low, high)) = entry.split_once('-') {
        let (low, high) = (status(low)?, status(high)?);
        return if low <= high {
            Ok((low, high))
        } else {
            Err(invalid())
        };
    }
    let code = status(entry)?;
    Ok((code, code))
}

#[cfg(test)]
mod tests {
    use super::StatusSet;

    #[test]
    fn parses_classes_ranges_and_codes() {
        let set = StatusSet::parse(&["2xx", "409", "300-302"]).unwrap();
        for code in [200, 204, 299, 409, 300, 302] {
            assert!(set.contains(code), "{code}");
        }
        for code in [199, 303, 404, 500] {
            assert!(!set.contains(code), "{code}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_status() {
        for entry in ["2xy", "6xx", "abc", "700", "300-200", ""] {
            assert!(StatusSet::parse(&[entry]).is_err(), "{entry:?}");
        }
        assert!(StatusSet::parse::<&str>(&[]).is_err());
    }
}
