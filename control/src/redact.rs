//! Removal of credentials from URLs before they reach logs, errors or the API.

/// Returns `url` with its password (and any `password=` query value) replaced by `***`; in a
/// NATS URL a user name without a password is a token (`nats://TOKEN@host`) and is replaced too.
///
/// Text that does not parse as a URL is returned as `<unparseable url>` rather than
/// risking a leak.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparseable url>".to_owned();
    };
    if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
        return "<unparseable url>".to_owned();
    }
    if is_token_in_user(&parsed) && parsed.set_username("***").is_err() {
        return "<unparseable url>".to_owned();
    }
    let has_secret_query = parsed
        .query_pairs()
        .any(|(key, _)| is_secret_query_key(&key));
    if has_secret_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret_query_key(&key) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Whether the URL's user name is a token: NATS takes `nats://TOKEN@host` for token
/// authentication.
fn is_token_in_user(url: &url::Url) -> bool {
    matches!(url.scheme(), "nats" | "tls" | "ws" | "wss")
        && !url.username().is_empty()
        && url.password().is_none()
}

fn is_secret_query_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("token") || key.contains("secret")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn hides_passwords_in_userinfo_and_query() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.example:5432/orders"),
            "postgres://app:***@db.example:5432/orders"
        );
        let redacted = redact_url("mysql://db/orders?user=app&password=s3cret");
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(redacted.contains("user=app"), "{redacted}");
    }

    #[test]
    fn hides_a_nats_token_given_as_the_user_name() {
        assert_eq!(
            redact_url("nats://s3cret@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("nats://app:s3cret@127.0.0.1:4222"),
            "nats://app:***@127.0.0.1:4222"
        );
        // Elsewhere a user name without a password is only a name.
        assert_eq!(
            redact_url("postgres://app@db.example/orders"),
            "postgres://app@db.example/orders"
        );
    }

    #[test]
    fn keeps_urls_without_secrets() {
        assert_eq!(redact_url("sqlite://tandem.db"), "sqlite://tandem.db");
        assert_eq!(
            redact_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080/"
        );
    }

    #[test]
    fn never_echoes_unparseable_text() {
        assert_eq!(redact_url("not a url :pw@"), "<unparseable url>");
    }
}
