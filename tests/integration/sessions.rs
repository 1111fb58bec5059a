use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, is_millis_utc, on_both_stores, TestApp};

on_both_stores!(
    create_returns_201_with_location_and_the_defaults,
    create_keeps_language_metadata_status_and_started_at,
    identical_create_returns_200_with_the_stored_session,
    create_with_other_language_or_metadata_is_a_session_conflict,
    absent_language_and_metadata_equal_null_and_empty,
    create_rejects_each_invalid_field_naming_it,
    get_returns_the_session_or_session_not_found,
    get_with_include_events_adds_a_page_of_events,
    complete_ends_the_session_once,
    complete_with_another_final_status_is_session_closed,
    complete_validates_its_body_and_the_session,
    seed_examples_work_as_written,
);

async fn create_returns_201_with_location_and_the_defaults(app: TestApp) {
    let response = app
        .post_raw("/sessions", &json!({"sessionId": "call-1"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/sessions/call-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sessionId"], "call-1");
    assert_eq!(body["status"], "initiated");
    assert_eq!(body["language"], Value::Null);
    assert_eq!(body["metadata"], json!({}));
    assert_eq!(body["endedAt"], Value::Null);
    assert!(is_millis_utc(&body["startedAt"]), "{body}");
    assert!(is_millis_utc(&body["updatedAt"]), "{body}");
}

async fn create_keeps_language_metadata_status_and_started_at(app: TestApp) {
    let request = json!({
        "sessionId": "call-2", "language": "zh-Hant-TW", "status": "active",
        "metadata": {"caller": "+15550100", "tags": ["vip"], "ivr": {"depth": 2}},
        "startedAt": "2026-11-26T09:31:38.123987+01:00",
    });
    let (status, body) = app.post("/sessions", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["language"], "zh-Hant-TW");
    assert_eq!(body["status"], "active");
    assert_eq!(body["metadata"], request["metadata"]);
    assert_eq!(body["startedAt"], "2026-11-26T08:31:38.123Z");
    let (_, stored) = app.get("/sessions/call-2").await;
    assert_eq!(stored, body);
}

async fn identical_create_returns_200_with_the_stored_session(app: TestApp) {
    let request = json!({"sessionId": "call-3", "language": "en-US", "metadata": {"a": 1}});
    let (_, created) = app.post("/sessions", &request).await;
    // Status and startedAt are not compared: a retry may differ in them.
    let mut retry = request.clone();
    retry["status"] = json!("active");
    retry["startedAt"] = json!("2020-01-01T00:00:00Z");
    let (status, body) = app.post("/sessions", &retry).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, created);
}

async fn create_with_other_language_or_metadata_is_a_session_conflict(app: TestApp) {
    let original = json!({"sessionId": "call-4", "language": "en", "metadata": {"a": 1}});
    let (_, created) = app.post("/sessions", &original).await;
    for conflicting in [
        json!({"sessionId": "call-4", "language": "de", "metadata": {"a": 1}}),
        json!({"sessionId": "call-4", "language": "en", "metadata": {"a": 2}}),
        json!({"sessionId": "call-4", "metadata": {"a": 1}}),
        json!({"sessionId": "call-4", "language": "en"}),
    ] {
        let (status, body) = app.post("/sessions", &conflicting).await;
        let details = assert_error(status, &body, 409, "session_conflict");
        assert_eq!(details["session"], created, "{conflicting}");
    }
}

async fn absent_language_and_metadata_equal_null_and_empty(app: TestApp) {
    app.create_session("call-5").await;
    let (status, _) = app
        .post(
            "/sessions",
            &json!({"sessionId": "call-5", "language": null, "metadata": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn create_rejects_each_invalid_field_naming_it(app: TestApp) {
    let big = "x".repeat(16 * 1024);
    let cases = [
        (json!({}), "sessionId"),
        (json!({"sessionId": ""}), "sessionId"),
        (json!({"sessionId": "a b"}), "sessionId"),
        (json!({"sessionId": "x".repeat(129)}), "sessionId"),
        (json!({"sessionId": "$where"}), "sessionId"),
        (json!({"sessionId": 12}), "sessionId"),
        (json!({"sessionId": "s", "language": "english"}), "language"),
        (json!({"sessionId": "s", "language": "en_US"}), "language"),
        (json!({"sessionId": "s", "metadata": []}), "metadata"),
        (json!({"sessionId": "s", "metadata": "x"}), "metadata"),
        (
            json!({"sessionId": "s", "metadata": {"$set": 1}}),
            "metadata",
        ),
        (
            json!({"sessionId": "s", "metadata": {"a.b": 1}}),
            "metadata",
        ),
        (
            json!({"sessionId": "s", "metadata": {"a": {"b\u{0}": 1}}}),
            "metadata",
        ),
        (
            json!({"sessionId": "s", "metadata": {"a": [{"$gt": 1}]}}),
            "metadata",
        ),
        (
            json!({"sessionId": "s", "metadata": {"k": big}}),
            "metadata",
        ),
        (json!({"sessionId": "s", "status": "completed"}), "status"),
        (json!({"sessionId": "s", "status": "open"}), "status"),
        (
            json!({"sessionId": "s", "startedAt": "yesterday"}),
            "startedAt",
        ),
        (json!({"sessionId": "s", "extra": true}), "extra"),
    ];
    for (request, field) in cases {
        let (status, body) = app.post("/sessions", &request).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field, "{request}");
    }
    let (status, _) = app.get("/sessions/s").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no invalid create stored anything"
    );
}

async fn get_returns_the_session_or_session_not_found(app: TestApp) {
    let created = app.create_session("call-6").await;
    let (status, body) = app.get("/sessions/call-6").await;
    assert_eq!((status, body), (StatusCode::OK, created));
    let (status, body) = app.get("/sessions/call-404").await;
    assert_error(status, &body, 404, "session_not_found");
}

async fn get_with_include_events_adds_a_page_of_events(app: TestApp) {
    app.create_session("call-7").await;
    for i in 0..3 {
        app.append(
            "call-7",
            json!({"eventId": format!("e{i}"), "type": "system"}),
        )
        .await;
    }
    let (status, body) = app.get("/sessions/call-7?include=events&limit=2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sessionId"], "call-7");
    assert_eq!(body["events"]["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["events"]["hasMore"], true);
    let cursor = body["events"]["nextCursor"].as_str().unwrap().to_owned();
    let (_, rest) = app
        .get(&format!("/sessions/call-7?include=events&cursor={cursor}"))
        .await;
    assert_eq!(rest["events"]["data"][0]["eventId"], "e2");
    // A cursor of another listing is refused before the session is looked up, as on
    // `/events`: the same answer whether the session exists or not.
    for path in [
        format!("/sessions/call-7?include=events&cursor={cursor}&order=desc"),
        format!("/sessions/call-404?include=events&cursor={cursor}"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_error(status, &body, 400, "invalid_cursor");
    }
    let (_, plain) = app.get("/sessions/call-7").await;
    assert!(plain.get("events").is_none());
    let (status, body) = app.get("/sessions/call-7?include=everything").await;
    assert_error(status, &body, 400, "validation_failed");
}

async fn complete_ends_the_session_once(app: TestApp) {
    app.create_session("call-8").await;
    let (status, first) = app.complete("call-8").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "completed");
    assert!(is_millis_utc(&first["endedAt"]), "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (status, again) = app.complete("call-8").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["endedAt"], first["endedAt"]);
    let (_, stored) = app.get("/sessions/call-8").await;
    assert_eq!(stored, first);
}

async fn complete_with_another_final_status_is_session_closed(app: TestApp) {
    app.create_session("call-9").await;
    let (status, failed) = app
        .post("/sessions/call-9/complete", &json!({"status": "failed"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["status"], "failed");
    let (status, body) = app
        .post("/sessions/call-9/complete", &json!({"status": "failed"}))
        .await;
    assert_eq!((status, &body), (StatusCode::OK, &failed));
    let (status, body) = app.complete("call-9").await;
    let details = assert_error(status, &body, 409, "session_closed");
    assert_eq!(details["session"], failed);
}

async fn complete_validates_its_body_and_the_session(app: TestApp) {
    let (status, body) = app.complete("nobody").await;
    assert_error(status, &body, 404, "session_not_found");
    app.create_session("call-10").await;
    for bad in [
        json!({"status": "active"}),
        json!({"status": "done"}),
        json!({"other": 1}),
    ] {
        let (status, body) = app.post("/sessions/call-10/complete", &bad).await;
        assert_error(status, &body, 400, "validation_failed");
    }
    let (_, stored) = app.get("/sessions/call-10").await;
    assert_eq!(stored["status"], "initiated");
    // A null status is the default, as for the other optional fields.
    let (status, closed) = app
        .post("/sessions/call-10/complete", &json!({"status": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["status"], "completed");
}

async fn seed_examples_work_as_written(app: TestApp) {
    let (status, _) = app
        .post(
            "/sessions",
            &json!({"sessionId":"abc123","metadata":{"caller":"user@example.com"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            "/sessions/abc123/events",
            &json!({"eventId":"evt-001","type":"TRANSCRIPT","payload":{"text":"hello"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = app.get("/sessions/abc123/events?limit=50&page=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": [], "nextCursor": null, "hasMore": false})
    );
    let (_, first) = app.get("/sessions/abc123/events?limit=50&page=1").await;
    assert_eq!(first["data"][0]["payload"], json!({"text": "hello"}));
}
