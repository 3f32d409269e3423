//! Request classification: which requests are writes, which are reads, and what orders writes.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use serde::Deserialize;

/// What a request is, for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteClass {
    /// Changes state: sent to the authoritative side, then mirrored.
    Write,
    /// Only reads state: answered by the authoritative side, compared in shadow/live.
    Read,
    /// Sent to the authoritative side only, never mirrored nor compared.
    NoMirror,
}

impl RouteClass {
    /// A low-cardinality label for metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Write => "write",
            RouteClass::Read => "read",
            RouteClass::NoMirror => "no-mirror",
        }
    }

    fn of_method(method: &Method) -> RouteClass {
        if matches!(
            *method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            RouteClass::Write
        } else {
            RouteClass::Read
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture(String),
    Rest,
}

/// One configured rule: a method (or any) and a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    method: Option<Method>,
    pattern: Arc<str>,
    segments: Vec<Segment>,
    class: RouteClass,
    ordering_key: Option<String>,
}

impl RouteRule {
    /// Builds a rule; `path` is like `/orders/{id}` or `/search/*`, and `ordering_key` a
    /// template over its captures such as `/orders/{id}`.
    ///
    /// # Errors
    /// A reason when the pattern or template is malformed.
    pub fn new(
        method: Option<Method>,
        path: &str,
        class: RouteClass,
        ordering_key: Option<&str>,
    ) -> Result<RouteRule, String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("{path:?} must start with '/'"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = if *part == "*" {
                if index + 1 != parts.len() {
                    return Err(format!("{path:?}: '*' may only end a pattern"));
                }
                Segment::Rest
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() {
                    return Err(format!("{path:?}: empty capture name"));
                }
                Segment::Capture(name.to_owned())
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "{path:?}: segment {part:?} mixes text and a capture"
                ));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(segment);
        }
        if let Some(template) = ordering_key {
            for name in template_names(template)? {
                let captured = segments
                    .iter()
                    .any(|segment| matches!(segment, Segment::Capture(c) if c == name));
                if !captured {
                    return Err(format!(
                        "ordering_key {template:?} uses {{{name}}}, which {path:?} does not capture"
                    ));
                }
            }
        }
        Ok(RouteRule {
            method,
            pattern: Arc::from(path),
            segments,
            class,
            ordering_key: ordering_key.map(str::to_owned),
        })
    }

    fn captures<'p>(&self, method: &Method, path: &'p str) -> Option<HashMap<&str, &'p str>> {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut captures = HashMap::new();
        for segment in &self.segments {
            match segment {
                Segment::Rest => return Some(captures),
                Segment::Literal(literal) => {
                    if parts.next()? != literal {
                        return None;
                    }
                }
                Segment::Capture(name) => {
                    let part = parts.next().filter(|part| !part.is_empty())?;
                    captures.insert(name.as_str(), part);
                }
            }
        }
        parts.next().is_none().then_some(captures)
    }
}

fn template_names(template: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(format!("ordering_key {template:?} has an unclosed '{{'"));
        };
        names.push(&rest[start + 1..start + len]);
        rest = &rest[start + len + 1..];
    }
    Ok(names)
}

/// How one request is to be treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Write, read or never mirrored.
    pub class: RouteClass,
    /// The matching rule's pattern, or `*` when no rule matched.
    pub route: Arc<str>,
    /// The key whose writes must reach the secondary in order.
    pub ordering_key: String,
}

/// The configured rules, tried in order; the method decides when none matches.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    rules: Vec<RouteRule>,
}

impl RouteTable {
    /// A table of `rules`, tried in order.
    #[must_use]
    pub fn new(rules: Vec<RouteRule>) -> RouteTable {
        RouteTable { rules }
    }

    /// Classifies a request by its method and path.
    #[must_use]
    pub fn classify(&self, method: &Method, path: &str) -> Classification {
        for rule in &self.rules {
            if let Some(captures) = rule.captures(method, path) {
                let ordering_key = match &rule.ordering_key {
                    Some(template) => fill_template(template, &captures),
                    None => path.to_owned(),
                };
                return Classification {
                    class: rule.class,
                    route: Arc::clone(&rule.pattern),
                    ordering_key,
                };
            }
        }
        Classification {
            class: RouteClass::of_method(method),
            route: Arc::from("*"),
            ordering_key: path.to_owned(),
        }
    }
}

fn fill_template(template: &str, captures: &HashMap<&str, &str>) -> String {
    let mut key = template.to_owned();
    for (name, value) in captures {
        key = key.replace(&format!("{{{name}}}"), value);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::new(vec![
            RouteRule::new(Some(Method::POST), "/orders/search", RouteClass::Read, None).unwrap(),
            RouteRule::new(
                None,
                "/orders/{id}/items/{item}",
                RouteClass::Write,
                Some("/orders/{id}"),
            )
            .unwrap(),
            RouteRule::new(None, "/internal/*", RouteClass::NoMirror, None).unwrap(),
        ])
    }

    #[test]
    fn methods_decide_when_no_rule_matches() {
        let table = table();
        for (method, class) in [
            (Method::GET, RouteClass::Read),
            (Method::HEAD, RouteClass::Read),
            (Method::OPTIONS, RouteClass::Read),
            (Method::POST, RouteClass::Write),
            (Method::PUT, RouteClass::Write),
            (Method::PATCH, RouteClass::Write),
            (Method::DELETE, RouteClass::Write),
        ] {
            let found = table.classify(&method, "/orders/7");
            assert_eq!(found.class, class, "{method}");
            assert_eq!(found.ordering_key, "/orders/7");
            assert_eq!(&*found.route, "*");
        }
    }

    #[test]
    fn rules_override_methods_and_shape_ordering_keys() {
        let table = table();
        let search = table.classify(&Method::POST, "/orders/search");
        assert_eq!(search.class, RouteClass::Read);
        assert_eq!(&*search.route, "/orders/search");
        let item = table.classify(&Method::PUT, "/orders/9/items/3");
        assert_eq!(item.class, RouteClass::Write);
        assert_eq!(item.ordering_key, "/orders/9");
        let internal = table.classify(&Method::DELETE, "/internal/cache/all");
        assert_eq!(internal.class, RouteClass::NoMirror);
        assert_eq!(
            table.classify(&Method::DELETE, "/orders/9/items/").class,
            RouteClass::Write,
            "an empty capture does not match the rule, the method decides"
        );
        assert_eq!(
            &*table.classify(&Method::DELETE, "/orders/9/items/").route,
            "*"
        );
    }

    #[test]
    fn malformed_rules_are_refused() {
        for (path, key) in [
            ("orders", None),
            ("/a/*/b", None),
            ("/a/x{id}", None),
            ("/a/{}", None),
            ("/a/{id}", Some("/b/{other}")),
            ("/a/{id}", Some("/b/{id")),
        ] {
            assert!(
                RouteRule::new(None, path, RouteClass::Read, key).is_err(),
                "{path} {key:?}"
            );
        }
    }
}
