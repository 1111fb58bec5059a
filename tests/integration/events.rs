use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_millis_utc, on_both_stores, TestApp};

on_both_stores!(
    append_returns_201_with_location_seq_and_times,
    first_event_moves_an_initiated_session_to_active,
    replay_returns_200_with_the_stored_event,
    replay_with_other_content_is_an_event_conflict,
    append_to_an_unknown_session_is_session_not_found,
    append_to_a_closed_session_is_session_closed_but_replays_succeed,
    append_rejects_each_invalid_field_naming_it,
    payload_of_64_kib_is_accepted_and_one_byte_more_refused,
    get_event_returns_it_or_the_right_not_found,
    seq_rises_strictly_in_acceptance_order,
    payload_values_round_trip_exactly,
);

async fn append_returns_201_with_location_seq_and_times(app: TestApp) {
    app.create_session("s1").await;
    let request = json!({"eventId": "e1", "type": "user_speech", "payload": {"text": "hi"}});
    let response = app.post_raw("/sessions/s1/events", &request).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/sessions/s1/events/e1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sessionId"], "s1");
    assert_eq!(body["eventId"], "e1");
    assert_eq!(body["type"], "user_speech");
    assert_eq!(body["payload"], json!({"text": "hi"}));
    assert!(body["seq"].as_i64().is_some_and(|s| s >= 1), "{body}");
    assert!(
        is_millis_utc(&body["timestamp"]) && is_millis_utc(&body["receivedAt"]),
        "{body}"
    );
    assert_eq!(
        body["timestamp"], body["receivedAt"],
        "timestamp defaults to receive time"
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 7, "{body}");
}

async fn first_event_moves_an_initiated_session_to_active(app: TestApp) {
    app.create_session("s2").await;
    app.append("s2", json!({"eventId": "e1", "type": "system"}))
        .await;
    let (_, session) = app.get("/sessions/s2").await;
    assert_eq!(session["status"], "active");
}

async fn replay_returns_200_with_the_stored_event(app: TestApp) {
    app.create_session("s3").await;
    let with_time = json!({
        "eventId": "e1", "type": "bot_speech", "payload": {"text": "hello", "n": [1, 2]},
        "timestamp": "2026-11-26T08:00:00.500Z"
    });
    let stored = app.append("s3", with_time.clone()).await;
    let (status, body) = app.post("/sessions/s3/events", &with_time).await;
    assert_eq!((status, &body), (StatusCode::OK, &stored));
    // A replay without the timestamp is still the same event.
    let mut without_time = with_time.clone();
    without_time.as_object_mut().unwrap().remove("timestamp");
    let (status, body) = app.post("/sessions/s3/events", &without_time).await;
    assert_eq!((status, &body), (StatusCode::OK, &stored));
    // Key order inside the payload does not matter.
    let reordered = json!({
        "timestamp": "2026-11-26T09:00:00.500+01:00", "payload": {"n": [1, 2], "text": "hello"},
        "type": "bot_speech", "eventId": "e1"
    });
    let (status, _) = app.post("/sessions/s3/events", &reordered).await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = app.get("/sessions/s3/events").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
}

async fn replay_with_other_content_is_an_event_conflict(app: TestApp) {
    app.create_session("s4").await;
    let original = json!({
        "eventId": "e1", "type": "user_speech", "payload": {"text": "yes"},
        "timestamp": "2026-11-26T08:00:00Z"
    });
    let stored = app.append("s4", original.clone()).await;
    for (field, value) in [
        ("type", json!("bot_speech")),
        ("payload", json!({"text": "no"})),
        ("payload", json!({})),
        ("timestamp", json!("2026-11-26T08:00:00.001Z")),
    ] {
        let mut changed = original.clone();
        changed[field] = value;
        let (status, body) = app.post("/sessions/s4/events", &changed).await;
        let details = assert_error(status, &body, 409, "event_conflict");
        assert_eq!(details["event"], stored, "{changed}");
    }
}

async fn append_to_an_unknown_session_is_session_not_found(app: TestApp) {
    let (status, body) = app
        .post(
            "/sessions/ghost/events",
            &json!({"eventId": "e1", "type": "system"}),
        )
        .await;
    assert_error(status, &body, 404, "session_not_found");
}

async fn append_to_a_closed_session_is_session_closed_but_replays_succeed(app: TestApp) {
    app.create_session("s5").await;
    let event = json!({"eventId": "e1", "type": "system", "payload": {"k": "v"}});
    let stored = app.append("s5", event.clone()).await;
    app.complete("s5").await;
    let (status, body) = app
        .post(
            "/sessions/s5/events",
            &json!({"eventId": "e2", "type": "system"}),
        )
        .await;
    let details = assert_error(status, &body, 409, "session_closed");
    assert_eq!(details["session"]["status"], "completed");
    let (status, body) = app.post("/sessions/s5/events", &event).await;
    assert_eq!((status, &body), (StatusCode::OK, &stored));
    let mut changed = event.clone();
    changed["payload"] = json!({"k": "other"});
    let (status, body) = app.post("/sessions/s5/events", &changed).await;
    assert_error(status, &body, 409, "event_conflict");
}

async fn append_rejects_each_invalid_field_naming_it(app: TestApp) {
    app.create_session("s6").await;
    let cases = [
        (json!({"type": "system"}), "eventId"),
        (json!({"eventId": "", "type": "system"}), "eventId"),
        (json!({"eventId": "a/b", "type": "system"}), "eventId"),
        (
            json!({"eventId": "e", "type": "system", "payload": []}),
            "payload",
        ),
        (
            json!({"eventId": "e", "type": "system", "payload": "text"}),
            "payload",
        ),
        (
            json!({"eventId": "e", "type": "system", "payload": 3}),
            "payload",
        ),
        (
            json!({"eventId": "e", "type": "system", "payload": {"$inc": 1}}),
            "payload",
        ),
        (
            json!({"eventId": "e", "type": "system", "payload": {"x": {"a.b": 1}}}),
            "payload",
        ),
        (json!({"eventId": "e"}), "type"),
        (json!({"eventId": "e", "type": "9lives"}), "type"),
        (json!({"eventId": "e", "type": "has space"}), "type"),
        (
            json!({"eventId": "e", "type": format!("a{}", "b".repeat(64))}),
            "type",
        ),
        (
            json!({"eventId": "e", "type": "system", "timestamp": "noon"}),
            "timestamp",
        ),
        (
            json!({"eventId": "e", "type": "system", "timestamp": 1700000000}),
            "timestamp",
        ),
        (json!({"eventId": "e", "type": "system", "seq": 5}), "seq"),
    ];
    for (request, field) in cases {
        let (status, body) = app.post("/sessions/s6/events", &request).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field, "{request}");
    }
    let (_, page) = app.get("/sessions/s6/events").await;
    assert_eq!(page["data"], json!([]));
}

async fn payload_of_64_kib_is_accepted_and_one_byte_more_refused(app: TestApp) {
    app.create_session("s7").await;
    // {"t":"…"} is 8 bytes of JSON around the text.
    let fits = json!({"t": "x".repeat(64 * 1024 - 8)});
    app.append(
        "s7",
        json!({"eventId": "fits", "type": "system", "payload": fits}),
    )
    .await;
    let over = json!({"t": "x".repeat(64 * 1024 - 7)});
    let (status, body) = app
        .post(
            "/sessions/s7/events",
            &json!({"eventId": "over", "type": "system", "payload": over}),
        )
        .await;
    assert_error(status, &body, 400, "validation_failed");
}

async fn get_event_returns_it_or_the_right_not_found(app: TestApp) {
    app.create_session("s8").await;
    let stored = app
        .append("s8", json!({"eventId": "e1", "type": "system"}))
        .await;
    let (status, body) = app.get("/sessions/s8/events/e1").await;
    assert_eq!((status, body), (StatusCode::OK, stored));
    let (status, body) = app.get("/sessions/s8/events/e2").await;
    assert_error(status, &body, 404, "event_not_found");
    let (status, body) = app.get("/sessions/nope/events/e1").await;
    assert_error(status, &body, 404, "session_not_found");
    let (status, body) = app.get("/sessions/s8/events/bad%20id").await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "eventId");
}

async fn seq_rises_strictly_in_acceptance_order(app: TestApp) {
    app.create_session("s9").await;
    let mut last = 0;
    for i in 0..20 {
        let event = app
            .append("s9", json!({"eventId": format!("e{i}"), "type": "system"}))
            .await;
        let seq = event["seq"].as_i64().unwrap();
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
}

async fn payload_values_round_trip_exactly(app: TestApp) {
    app.create_session("s10").await;
    let payload = json!({
        "text": "naïve café \u{1F600} with a \u{0} NUL", "int": -9_007_199_254_740_993_i64,
        "max": i64::MAX, "float": 0.1, "whole": 2.0, "exp": 1e300, "yes": true, "none": null,
        "list": [1, "two", [3.5, {"deep": {"er": []}}]], "empty": {}
    });
    let stored = app
        .append(
            "s10",
            json!({"eventId": "e1", "type": "system", "payload": payload}),
        )
        .await;
    assert_eq!(stored["payload"], payload);
    let (_, read) = app.get("/sessions/s10/events/e1").await;
    assert_eq!(read["payload"], payload);
}
