//! Property tests over hostile input: whatever a client sends, parsing never panics and
//! every refusal is a 4xx.

use axum::response::IntoResponse;
use proptest::prelude::*;
use serde_json::Value;

use crate::domain::{Cursor, EventId, EventType, JsonObject, Language, Order, SessionId};
use crate::http::fuzzing::{parse_append_body, parse_create_body, parse_json_value};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Arbitrary JSON, nested up to a few levels, with keys drawn to hit the key rules.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        "[a-z]{1,6}",
        r"\$[a-z]{1,4}",
        "[a-z]{1,3}\\.[a-z]{1,3}",
        "[a-z]\u{0}[a-z]",
        ".{0,8}"
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

proptest! {
    // PROPTEST_CASES raises it (scripts/reliability.sh runs 20,000).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn cursor_decoding_never_panics(token in ".{0,300}", scope in any::<u64>()) {
        let _ = Cursor::decode_event(&token, Order::Asc, scope);
        let _ = Cursor::decode_session(&token, Order::Desc, scope);
    }

    #[test]
    fn cursor_decoding_of_base64_noise_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let _ = Cursor::decode_event(&token, Order::Asc, 7);
        let _ = Cursor::decode_session(&token, Order::Asc, 7);
    }

    #[test]
    fn identifiers_and_tags_parse_without_panicking(raw in ".{0,200}") {
        if let Ok(id) = SessionId::parse(raw.clone()) {
            prop_assert!(id.as_str().chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c)));
        }
        let _ = EventId::parse(raw.clone());
        if let Ok(t) = EventType::parse(raw.clone()) {
            prop_assert!(t.as_str().len() <= 64);
        }
        let _ = Language::parse(raw);
    }

    #[test]
    fn accepted_json_objects_keep_every_key_rule(value in json_value()) {
        if let Ok(object) = JsonObject::parse("payload", value, 64 * 1024) {
            fn keys_ok(v: &Value) -> bool {
                match v {
                    Value::Object(map) => map.iter().all(|(k, v)| {
                        !k.starts_with('$') && !k.contains('.') && !k.contains('\0') && keys_ok(v)
                    }),
                    Value::Array(items) => items.iter().all(keys_ok),
                    _ => true,
                }
            }
            prop_assert!(keys_ok(&Value::Object(object.as_map().clone())));
        }
    }

    #[test]
    fn request_bodies_of_any_bytes_are_accepted_or_refused_with_a_4xx(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        for result in [parse_append_body(&bytes), parse_create_body(&bytes), parse_json_value(&bytes)] {
            if let Err(refusal) = result {
                prop_assert!(refusal.into_response().status().is_client_error());
            }
        }
    }

    #[test]
    fn request_bodies_of_any_json_are_accepted_or_refused_with_a_4xx(value in json_value()) {
        let wrapped = serde_json::json!({"eventId": "e", "type": "t", "payload": value.clone()});
        for candidate in [value, wrapped] {
            let bytes = serde_json::to_vec(&candidate).unwrap();
            for result in [parse_append_body(&bytes), parse_create_body(&bytes)] {
                if let Err(refusal) = result {
                    prop_assert!(refusal.into_response().status().is_client_error());
                }
            }
        }
    }
}
