//! The admin token check shared by every listener that accepts mutating calls.

/// Whether an `Authorization` header value presents `expected` as a bearer token (compared in
/// constant time).
#[must_use]
pub fn bearer_authorises(expected: &str, authorization: Option<&str>) -> bool {
    authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::bearer_authorises;

    #[test]
    fn only_the_exact_bearer_token_authorises() {
        assert!(bearer_authorises("s3cret", Some("Bearer s3cret")));
        assert!(!bearer_authorises("s3cret", Some("Bearer s3cre")));
        assert!(!bearer_authorises("s3cret", Some("s3cret")));
        assert!(!bearer_authorises("s3cret", None));
    }
}
