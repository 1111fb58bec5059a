//! Hostile input: deep or wide JSON, NUL bytes, operator-shaped values and ids. Every one
//! gets a clean 4xx or is stored faithfully; none reaches MongoDB as an operator.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, on_both_stores, parts, TestApp};

on_both_stores!(
    json_nested_deeper_than_32_levels_is_refused,
    a_huge_number_of_keys_is_bounded_by_the_size_limits,
    nul_bytes_are_stored_faithfully_in_values_and_refused_in_keys,
    operator_shaped_input_is_data_never_an_operator,
    hostile_ids_are_refused_everywhere,
    an_array_of_the_fields_is_no_body_object,
    integers_beyond_64_bits_are_refused_not_rounded,
    floats_come_back_as_the_same_double,
    query_parameters_are_refused_where_a_route_takes_none,
    times_beyond_what_rfc_3339_can_write_are_refused,
    a_key_twice_in_one_object_is_refused_not_dropped,
);

async fn post_raw(app: &TestApp, path: &str, body: String) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    parts(response).await
}

async fn json_nested_deeper_than_32_levels_is_refused(app: TestApp) {
    app.create_session("h1").await;
    let nest = |depth: usize| (0..depth).fold(json!("leaf"), |inner, _| json!({ "k": inner }));
    let fits = json!({"eventId": "ok", "type": "t", "payload": nest(32)});
    let (status, _) = app.post("/sessions/h1/events", &fits).await;
    assert_eq!(status, StatusCode::CREATED);
    for depth in [33, 100] {
        let deep = json!({"eventId": "deep", "type": "t", "payload": nest(depth)});
        let (status, body) = app.post("/sessions/h1/events", &deep).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], "payload");
    }
    // Deeper than the JSON parser's own recursion limit: still a clean 400.
    let abyss = format!(
        r#"{{"eventId":"x","type":"t","payload":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let (status, body) = post_raw(&app, "/sessions/h1/events", abyss).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

async fn a_huge_number_of_keys_is_bounded_by_the_size_limits(app: TestApp) {
    app.create_session("h2").await;
    let wide: serde_json::Map<String, Value> =
        (0..30_000).map(|i| (format!("k{i}"), json!(1))).collect();
    let (status, body) = app
        .post(
            "/sessions/h2/events",
            &json!({"eventId": "wide", "type": "t", "payload": wide}),
        )
        .await;
    assert_error(status, &body, 413, "payload_too_large");
    let within_body: serde_json::Map<String, Value> =
        (0..9_000).map(|i| (format!("k{i}"), json!(1))).collect();
    let (status, body) = app
        .post(
            "/sessions/h2/events",
            &json!({"eventId": "wide", "type": "t", "payload": within_body}),
        )
        .await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "payload", "over 64 KiB serialized");
}

async fn nul_bytes_are_stored_faithfully_in_values_and_refused_in_keys(app: TestApp) {
    app.create_session("h3").await;
    let payload = json!({"text": "before\u{0}after", "list": ["\u{0}"]});
    let stored = app
        .append(
            "h3",
            json!({"eventId": "nul", "type": "t", "payload": payload}),
        )
        .await;
    assert_eq!(stored["payload"], payload);
    let (_, read) = app.get("/sessions/h3/events/nul").await;
    assert_eq!(read["payload"], payload);
    let (status, body) = post_raw(
        &app,
        "/sessions/h3/events",
        r#"{"eventId":"k","type":"t","payload":{"a\u0000b":1}}"#.to_owned(),
    )
    .await;
    assert_error(status, &body, 400, "validation_failed");
    let (status, body) = app
        .post(
            "/sessions",
            &json!({"sessionId": "h3x", "metadata": {"nested": {"k\u{0}": 1}}}),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
}

async fn operator_shaped_input_is_data_never_an_operator(app: TestApp) {
    for (id, caller) in [("o1", "alice"), ("o2", "bob")] {
        app.post(
            "/sessions",
            &json!({"sessionId": id, "metadata": {"caller": caller}}),
        )
        .await;
    }
    // A filter value shaped like an operator is a string that matches nothing.
    for value in [
        r#"{"$ne":null}"#,
        r#"{"$gt":""}"#,
        "$where",
        r#"{"$regex":".*"}"#,
    ] {
        let encoded: String = form_encode(value);
        let (status, body) = app
            .get(&format!("/sessions?metadata.caller={encoded}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["data"], json!([]), "{value} matched sessions");
    }
    // Operator-shaped values are stored as data, not run.
    let payload = json!({"query": {"text": "$ne"}, "note": "{\"$gt\": 1}"});
    let stored = app
        .append(
            "o1",
            json!({"eventId": "op", "type": "t", "payload": payload}),
        )
        .await;
    assert_eq!(stored["payload"], payload);
    for key in ["$set", "$where", "a.b", "$", "."] {
        let (status, body) = app
            .post(
                "/sessions/o1/events",
                &json!({"eventId": "bad", "type": "t", "payload": {"x": [{key: 1}]}}),
            )
            .await;
        assert_error(status, &body, 400, "validation_failed");
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn hostile_ids_are_refused_everywhere(app: TestApp) {
    app.create_session("h5").await;
    for id in [
        "%24where",
        "%7B%22%24gt%22%3A%22%22%7D",
        "a%00b",
        "..%2F..%2Fetc",
        "a%2Fb",
        "%20",
        "%C3%A9",
        "a%FFb",
    ] {
        for path in [
            format!("/sessions/{id}"),
            format!("/sessions/{id}/events"),
            format!("/sessions/h5/events/{id}"),
        ] {
            let (status, body) = app.get(&path).await;
            assert_error(status, &body, 400, "validation_failed");
            // Named as the id, however the id breaks the rule: even bytes that do not
            // decode as UTF-8.
            let field = if path.starts_with("/sessions/h5/events/") {
                "eventId"
            } else {
                "sessionId"
            };
            assert_eq!(body["error"]["details"]["field"], field, "{path}");
        }
    }
    for id in [
        "$where",
        "{\"$gt\":\"\"}",
        "a\u{0}b",
        "../etc",
        "a/b",
        " ",
        "é",
        "..",
    ] {
        let (status, body) = app.post("/sessions", &json!({"sessionId": id})).await;
        assert_error(status, &body, 400, "validation_failed");
        let (status, body) = app
            .post("/sessions/h5/events", &json!({"eventId": id, "type": "t"}))
            .await;
        assert_error(status, &body, 400, "validation_failed");
    }
}

async fn an_array_of_the_fields_is_no_body_object(app: TestApp) {
    app.create_session("h6").await;
    for (path, body) in [
        ("/sessions", r#"["arr1", "en-US", {"k": "v"}]"#),
        ("/sessions/h6/events", r#"["e1", "t"]"#),
        (
            "/sessions/h6/events:batch",
            r#"[[{"eventId": "e2", "type": "t"}]]"#,
        ),
        ("/sessions/h6/complete", r#"["failed"]"#),
        ("/sessions", r#"[]"#),
        ("/sessions/h6/events", r#""e1""#),
    ] {
        let (status, body) = post_raw(&app, path, body.to_owned()).await;
        assert_error(status, &body, 400, "validation_failed");
        // Said plainly, not in the parser's words about the service's own types.
        assert_eq!(body["error"]["message"], "must be a JSON object", "{path}");
    }
    let (status, body) = post_raw(
        &app,
        "/sessions/h6/events:batch",
        r#"{"events": [["e3", "t"], {"eventId": "e4", "type": "t"}, "e5", 7]}"#.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], 400);
    assert_eq!(body["results"][1]["status"], 201);
    for item in [0, 2, 3] {
        let error = &body["results"][item]["error"];
        assert_eq!(error["message"], "must be a JSON object", "{body}");
    }
    let (_, session) = app.get("/sessions/h6").await;
    assert_eq!(session["status"], "active", "the array did not complete it");
    let (status, _) = app.get("/sessions/arr1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn integers_beyond_64_bits_are_refused_not_rounded(app: TestApp) {
    app.create_session("h7").await;
    for n in [
        "12345678901234567890123",
        "-9223372036854775809",
        "9223372036854775808",
    ] {
        let event = format!(r#"{{"eventId": "n", "type": "t", "payload": {{"amount": {n}}}}}"#);
        let (status, body) = post_raw(&app, "/sessions/h7/events", event.clone()).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], "payload", "{n}");
        let batch = format!(r#"{{"events": [{event}]}}"#);
        let (status, body) = post_raw(&app, "/sessions/h7/events:batch", batch).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["error"]["details"]["field"], "payload");
        let create = format!(r#"{{"sessionId": "h7n", "metadata": {{"n": [{n}]}}}}"#);
        let (status, body) = post_raw(&app, "/sessions", create).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], "metadata", "{n}");
    }
    // The edges of i64 and big floats are stored as sent.
    let event = r#"{"eventId": "edge", "type": "t", "payload":
        {"min": -9223372036854775808, "max": 9223372036854775807, "f": 1e300}}"#;
    let (status, body) = post_raw(&app, "/sessions/h7/events", event.to_owned()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, read) = app.get("/sessions/h7/events/edge").await;
    assert_eq!(read["payload"]["min"], json!(i64::MIN));
    assert_eq!(read["payload"]["max"], json!(i64::MAX));
    assert_eq!(read["payload"]["f"], json!(1e300));
    // A retry's numbers must be the stored ones exactly: -0.0 is not 0.0, as 1.0 is not 1.
    let zero = |f: &str, i: &str| {
        format!(r#"{{"eventId": "zero", "type": "t", "payload": {{"f": {f}, "i": {i}}}}}"#)
    };
    for (f, i, want) in [
        ("0.0", "1", 201),
        ("-0.0", "1", 409),
        ("0.0", "1.0", 409),
        ("0.0", "1", 200),
    ] {
        let (status, body) = post_raw(&app, "/sessions/h7/events", zero(f, i)).await;
        assert_eq!(status.as_u16(), want, "f {f}, i {i}: {body}");
    }
}

/// Each is the shortest text of its double, as JavaScript and Python print it. A parser that
/// rounds twice (digits to a float, then a power of ten) lands one unit off on some of them.
async fn floats_come_back_as_the_same_double(app: TestApp) {
    app.create_session("h7f").await;
    let floats = [
        "0.42451918914251396",
        "0.8888888888888888",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "5e-324",
        "0.30000000000000004",
        "123456.78901234567",
    ];
    let payload = floats
        .iter()
        .enumerate()
        .map(|(i, f)| format!(r#""f{i}": {f}"#))
        .collect::<Vec<_>>()
        .join(", ");
    let event = format!(r#"{{"eventId": "floats", "type": "t", "payload": {{{payload}}}}}"#);
    let (status, body) = post_raw(&app, "/sessions/h7f/events", event.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let read = app
        .get_raw("/sessions/h7f/events/floats")
        .await
        .text()
        .await
        .unwrap();
    for (i, f) in floats.iter().enumerate() {
        let want: f64 = f.parse().unwrap();
        let text = format!(r#""f{i}":"#);
        let at = read.find(&text).expect(&read) + text.len();
        let got = &read[at..read[at..].find([',', '}']).unwrap() + at];
        let got: f64 = got.parse().unwrap();
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "{f} came back as {got}: {read}"
        );
    }
    let (status, body) = post_raw(&app, "/sessions/h7f/events", event).await;
    assert_eq!(status, StatusCode::OK, "the same text is a retry: {body}");
}

async fn query_parameters_are_refused_where_a_route_takes_none(app: TestApp) {
    app.create_session("h8").await;
    app.append("h8", json!({"eventId": "e1", "type": "t"}))
        .await;
    let event = json!({"eventId": "e2", "type": "t"});
    let requests = [
        app.client
            .post(app.url("/sessions?x=1"))
            .json(&json!({"sessionId": "h8b"})),
        app.client
            .post(app.url("/sessions/h8/events?x=1"))
            .json(&event),
        app.client
            .post(app.url("/sessions/h8/events:batch?x=1"))
            .json(&json!({"events": [event]})),
        app.client.get(app.url("/sessions/h8/events/e1?x=1")),
        app.client
            .post(app.url("/sessions/h8/complete?status=failed")),
        app.client.delete(app.url("/sessions/h8?confirm=no")),
    ];
    for request in requests {
        let (status, body) = parts(request.send().await.unwrap()).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert!(["x", "status", "confirm"].contains(&details["field"].as_str().unwrap()));
    }
    // Nothing was done: no session h8b, no e2, h8 open and still there.
    assert_eq!(app.get("/sessions/h8b").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.get("/sessions/h8/events/e2").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/sessions/h8").await.1["status"], "active");
}

async fn times_beyond_what_rfc_3339_can_write_are_refused(app: TestApp) {
    let (status, body) = app
        .post(
            "/sessions",
            &json!({"sessionId": "h9", "startedAt": "9999-12-31T23:59:59.999-23:59"}),
        )
        .await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "startedAt");
    app.create_session("h9").await;
    let late = json!({"eventId": "e", "type": "t", "timestamp": "0000-01-01T00:00:00+23:59"});
    let (status, body) = app.post("/sessions/h9/events", &late).await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "timestamp");
    // A leap second falls only at the end of a UTC day.
    let leap = json!({"eventId": "e", "type": "t", "timestamp": "2026-06-30T12:00:60Z"});
    let (status, body) = app.post("/sessions/h9/events", &leap).await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "timestamp");
    let edge = json!({"eventId": "e", "type": "t", "timestamp": "9999-12-31T23:59:59.999Z"});
    let stored = app.append("h9", edge).await;
    assert_eq!(stored["timestamp"], "9999-12-31T23:59:59.999Z");
}

/// A parser would keep one of two values of a key and drop the other unseen.
async fn a_key_twice_in_one_object_is_refused_not_dropped(app: TestApp) {
    app.create_session("h10").await;
    for payload in [
        r#"{"a": 1, "a": 2}"#,
        r#"{"a": 1, "a": 1}"#,
        r#"{"x": [{"y": {"$gt": 1}, "y": 2}]}"#,
    ] {
        let event = format!(r#"{{"eventId": "d", "type": "t", "payload": {payload}}}"#);
        let (status, body) = post_raw(&app, "/sessions/h10/events", event.clone()).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert!(
            details["field"].as_str().unwrap().starts_with("payload"),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("appears twice"), "{message}");
        let batch = format!(r#"{{"events": [{event}]}}"#);
        let (status, body) = post_raw(&app, "/sessions/h10/events:batch", batch).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["results"][0]["error"]["code"], "validation_failed",
            "{body}"
        );
        let create = format!(r#"{{"sessionId": "h10m", "metadata": {payload}}}"#);
        let (status, body) = post_raw(&app, "/sessions", create).await;
        assert_error(status, &body, 400, "validation_failed");
    }
    let (_, page) = app.get("/sessions/h10/events").await;
    assert_eq!(page["data"], json!([]), "nothing was stored");
    let (status, _) = app.get("/sessions/h10m").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
