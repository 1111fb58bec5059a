use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, on_both_stores, TestApp};

on_both_stores!(
    batch_judges_new_replayed_conflicting_and_invalid_items_one_by_one,
    batch_retry_compares_the_timestamp_only_when_it_carries_one,
    batch_seqs_rise_in_request_order,
    batch_holds_1_to_500_events,
    batch_to_a_missing_or_closed_session_fails_whole,
    batch_sent_again_after_the_close_gets_its_stored_items_back,
    batch_body_must_be_an_object_with_events,
);

fn statuses(body: &Value) -> Vec<u64> {
    body["results"]
        .as_array()
        .expect("results is an array")
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect()
}

async fn batch_judges_new_replayed_conflicting_and_invalid_items_one_by_one(app: TestApp) {
    app.create_session("b1").await;
    let stored = app
        .append(
            "b1",
            json!({"eventId": "old", "type": "system", "payload": {"v": 1}}),
        )
        .await;
    let batch = json!({"events": [
        {"eventId": "new-a", "type": "user_speech", "payload": {"text": "a"}},
        {"eventId": "old", "type": "system", "payload": {"v": 1}},
        {"eventId": "old", "type": "system", "payload": {"v": 2}},
        {"eventId": "bad", "type": "system", "payload": [1]},
        {"eventId": "new-b", "type": "bot_speech", "timestamp": "2026-11-26T08:00:00Z"},
        {"eventId": "new-a", "type": "user_speech", "payload": {"text": "a"}},
        {"eventId": "new-b", "type": "bot_speech", "payload": {"other": true}},
        {"eventId": "x y", "type": "system"},
        {"type": "system"},
        "not an object",
    ]});
    let (status, body) = app.post("/sessions/b1/events:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        statuses(&body),
        [201, 200, 409, 400, 201, 200, 409, 400, 400, 400]
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[1]["event"], stored);
    assert_eq!(results[2]["error"]["code"], "event_conflict");
    assert_eq!(results[2]["error"]["details"]["event"], stored);
    assert_eq!(results[3]["error"]["code"], "validation_failed");
    assert_eq!(results[3]["error"]["details"]["field"], "payload");
    assert_eq!(results[5]["event"], results[0]["event"]);
    assert_eq!(results[6]["error"]["details"]["event"], results[4]["event"]);
    assert_eq!(results[7]["error"]["details"]["field"], "eventId");
    assert_eq!(results[8]["error"]["details"]["field"], "eventId");
    assert_eq!(results[4]["event"]["timestamp"], "2026-11-26T08:00:00.000Z");
    let all = app.walk("b1", "limit=1000").await;
    let mut ids: Vec<&str> = all.iter().map(|e| e["eventId"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["new-a", "new-b", "old"]);
    let (_, read) = app.get("/sessions/b1/events/new-a").await;
    assert_eq!(read, results[0]["event"]);
}

async fn batch_retry_compares_the_timestamp_only_when_it_carries_one(app: TestApp) {
    app.create_session("b-ts").await;
    let stored = app
        .append(
            "b-ts",
            json!({"eventId": "t", "type": "system", "timestamp": "2026-11-26T08:00:00Z"}),
        )
        .await;
    let batch = json!({"events": [
        {"eventId": "t", "type": "system"},
        {"eventId": "t", "type": "system", "timestamp": "2026-11-26T08:00:00Z"},
        {"eventId": "t", "type": "system", "timestamp": "2026-11-26T08:00:01Z"},
    ]});
    let (status, body) = app.post("/sessions/b-ts/events:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), [200, 200, 409]);
    assert_eq!(body["results"][0]["event"], stored);
    assert_eq!(body["results"][2]["error"]["details"]["event"], stored);
}

async fn batch_seqs_rise_in_request_order(app: TestApp) {
    app.create_session("b2").await;
    let single = app
        .append("b2", json!({"eventId": "first", "type": "system"}))
        .await;
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"eventId": format!("e{i:03}"), "type": "system"}))
        .collect();
    let (status, body) = app
        .post("/sessions/b2/events:batch", &json!({"events": events}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let seqs: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"]["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs[0] > single["seq"].as_i64().unwrap());
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let (_, session) = app.get("/sessions/b2").await;
    assert_eq!(session["status"], "active");
}

async fn batch_holds_1_to_500_events(app: TestApp) {
    app.create_session("b3").await;
    let (status, body) = app
        .post("/sessions/b3/events:batch", &json!({"events": []}))
        .await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "events");
    let many = |n: usize| -> Value {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"eventId": format!("e{i}"), "type": "t"}))
            .collect();
        json!({ "events": events })
    };
    let (status, body) = app.post("/sessions/b3/events:batch", &many(501)).await;
    assert_error(status, &body, 400, "validation_failed");
    let (status, body) = app.post("/sessions/b3/events:batch", &many(500)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(statuses(&body).iter().all(|s| *s == 201));
    assert_eq!(app.walk("b3", "limit=1000").await.len(), 500);
}

async fn batch_to_a_missing_or_closed_session_fails_whole(app: TestApp) {
    // No item is stored: the whole batch is refused (a stored one comes back, see below).
    let batch = json!({"events": [{"eventId": "e9", "type": "system"}]});
    let (status, body) = app.post("/sessions/none/events:batch", &batch).await;
    assert_error(status, &body, 404, "session_not_found");
    app.create_session("b4").await;
    app.append("b4", json!({"eventId": "e1", "type": "system"}))
        .await;
    app.complete("b4").await;
    let (status, body) = app.post("/sessions/b4/events:batch", &batch).await;
    assert_error(status, &body, 409, "session_closed");
    let invalid_only = json!({"events": [{"eventId": "e2"}]});
    let (status, body) = app.post("/sessions/b4/events:batch", &invalid_only).await;
    assert_error(status, &body, 409, "session_closed");
    app.create_session("b5").await;
    let (status, body) = app.post("/sessions/b5/events:batch", &invalid_only).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(statuses(&body), [400]);
    let (_, session) = app.get("/sessions/b5").await;
    assert_eq!(
        session["status"], "initiated",
        "an all-invalid batch changes nothing"
    );
}

async fn batch_sent_again_after_the_close_gets_its_stored_items_back(app: TestApp) {
    app.create_session("b7").await;
    let first = json!({"events": [
        {"eventId": "s1", "type": "system", "payload": {"v": 1}},
        {"eventId": "s2", "type": "system", "payload": {"v": 2}},
    ]});
    let (status, body) = app.post("/sessions/b7/events:batch", &first).await;
    assert_eq!((status, statuses(&body)), (StatusCode::OK, vec![201, 201]));
    app.complete("b7").await;
    // The retry of a batch whose answer was lost before the close.
    let (status, again) = app.post("/sessions/b7/events:batch", &first).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(statuses(&again), [200, 200]);
    assert_eq!(again["results"][0]["event"], body["results"][0]["event"]);
    assert_eq!(again["results"][1]["event"], body["results"][1]["event"]);
    let mixed = json!({"events": [
        {"eventId": "s1", "type": "system", "payload": {"v": 1}},
        {"eventId": "s2", "type": "system", "payload": {"v": 3}},
        {"eventId": "s3", "type": "system"},
        {"eventId": "s4"},
    ]});
    let (status, body) = app.post("/sessions/b7/events:batch", &mixed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(statuses(&body), [200, 409, 409, 400]);
    assert_eq!(body["results"][1]["error"]["code"], "event_conflict");
    assert_eq!(body["results"][2]["error"]["code"], "session_closed");
    assert_eq!(body["results"][3]["error"]["code"], "validation_failed");
    assert_eq!(
        app.walk("b7", "limit=10").await.len(),
        2,
        "nothing new stored"
    );
}

async fn batch_body_must_be_an_object_with_events(app: TestApp) {
    app.create_session("b6").await;
    for (body, field) in [
        (json!([]), ""),
        (json!({}), "events"),
        (json!({"events": {}}), "events"),
        (json!({"events": [], "extra": 1}), "extra"),
    ] {
        let (status, response) = app.post("/sessions/b6/events:batch", &body).await;
        let details = assert_error(status, &response, 400, "validation_failed");
        assert_eq!(details["field"], field, "{body}");
    }
}
