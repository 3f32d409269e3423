//! How a value is shown in errors and in `tandem config check`: secrets never are.

/// `value` as it may be printed for `key`: tokens, passwords and keys are replaced by
/// `<redacted>`, and URLs lose their password (a value that only looks like a URL is shown as
/// `<unparseable url>` rather than risking a leak).
#[must_use]
pub fn shown_value(key: &str, value: &str) -> String {
    let name = key
        .rsplit(['.', ']'])
        .next()
        .unwrap_or(key)
        .to_ascii_lowercase();
    let secret = !name.ends_with("_file")
        && ["token", "password", "secret", "routing_key", "users"]
            .iter()
            .any(|word| name.contains(word));
    if value.is_empty() {
        "\"\"".to_owned()
    } else if secret {
        "<redacted>".to_owned()
    } else if value.contains("://") {
        value
            .split(',')
            .map(crate::redact_url)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::shown_value;

    #[test]
    fn secrets_are_not_shown() {
        assert_eq!(shown_value("admin_token", "t0ken"), "<redacted>");
        assert_eq!(
            shown_value("alerts.pagerduty_routing_key", "abc"),
            "<redacted>"
        );
        assert_eq!(
            shown_value("old", "postgres://app:hunter2@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(shown_value("users_file", "/etc/users"), "/etc/users");
        assert_eq!(shown_value("listen", "127.0.0.1:1"), "127.0.0.1:1");
        assert_eq!(shown_value("old", ""), "\"\"");
    }
}
