//! Property tests of the proxy's pure parts: response comparison, header storage, routing.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Method;
use proptest::prelude::*;
use serde_json::Value;
use tandem_proxy::{
    diff_responses, CapturedResponse, IgnorePaths, RouteClass, RouteRule, RouteTable,
};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9 ]{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn captured(status: u16, value: &Value) -> CapturedResponse {
    CapturedResponse {
        status,
        json: true,
        body: Bytes::from(value.to_string()),
    }
}

proptest! {
    #[test]
    fn an_answer_always_agrees_with_itself(value in json_value(), status in 100u16..600) {
        let answer = captured(status, &value);
        prop_assert_eq!(diff_responses(&answer, &answer, &IgnorePaths::default()), None);
    }

    #[test]
    fn answers_differ_exactly_when_their_values_differ(a in json_value(), b in json_value()) {
        let ignore = IgnorePaths::default();
        let (left, right) = (captured(200, &a), captured(200, &b));
        let differs = diff_responses(&left, &right, &ignore).is_some();
        prop_assert_eq!(differs, a != b);
        prop_assert_eq!(differs, diff_responses(&right, &left, &ignore).is_some());
    }

    #[test]
    fn ignored_fields_never_count(a in json_value(), b in json_value(), x in json_value(), y in json_value()) {
        let ignore = IgnorePaths::parse(&["/ignored"]).unwrap();
        let wrap = |inner: &Value, noise: &Value| serde_json::json!({"kept": inner, "ignored": noise});
        let (left, right) = (captured(200, &wrap(&a, &x)), captured(200, &wrap(&b, &y)));
        prop_assert_eq!(diff_responses(&left, &right, &ignore).is_some(), a != b);
    }

    #[test]
    fn stored_header_blocks_round_trip(
        headers in prop::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~&&[^\r\n]]{0,20}"), 0..8)
    ) {
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            let value = value.trim();
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let block = tandem_proxy::encode_header_block(&map);
        prop_assert_eq!(tandem_proxy::decode_header_block(&block), map);
    }

    #[test]
    fn classification_never_panics_and_writes_are_keyed_by_path(path in "/[a-z0-9/{}*]{0,30}") {
        let table = RouteTable::new(vec![
            RouteRule::new(None, "/orders/{id}", RouteClass::Write, Some("order-{id}")).unwrap(),
            RouteRule::new(Some(Method::GET), "/search/*", RouteClass::Read, None).unwrap(),
        ]);
        let found = table.classify(&Method::PUT, &path);
        if &*found.route == "*" {
            prop_assert_eq!(found.ordering_key, path);
            prop_assert_eq!(found.class, RouteClass::Write);
        }
    }
}
