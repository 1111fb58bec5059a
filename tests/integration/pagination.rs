use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, on_both_stores, TestApp};

on_both_stores!(
    cursor_walk_over_2000_events_with_1000_tied_returns_each_once_in_order,
    cursor_walk_while_appending_returns_each_event_once_in_order,
    offset_pages_follow_the_same_order,
    limit_defaults_to_50_and_must_be_1_to_1000,
    bad_cursors_are_invalid_cursor_never_5xx,
    page_and_cursor_together_are_refused,
    listing_an_unknown_session_is_session_not_found,
    unknown_and_repeated_query_parameters_are_refused,
);

const TIED: &str = "2026-11-26T08:00:00.000Z";

/// Appends `count` events with up to 16 requests in flight.
async fn append_many(app: &Arc<TestApp>, session: &str, events: Vec<Value>) {
    let session = session.to_owned();
    futures::stream::iter(events)
        .map(|event| {
            let app = Arc::clone(app);
            let session = session.clone();
            async move { app.append(&session, event).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
}

fn position(event: &Value) -> (String, i64) {
    (
        event["timestamp"].as_str().unwrap().to_owned(),
        event["seq"].as_i64().unwrap(),
    )
}

fn assert_strictly_ordered(events: &[Value], descending: bool) {
    for pair in events.windows(2) {
        let (a, b) = (position(&pair[0]), position(&pair[1]));
        let ordered = if descending { a > b } else { a < b };
        assert!(ordered, "{a:?} then {b:?}");
    }
}

fn assert_each_once(events: &[Value], expected: usize) {
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "an event came twice");
    assert_eq!(events.len(), expected, "an event is missing");
}

async fn cursor_walk_over_2000_events_with_1000_tied_returns_each_once_in_order(app: TestApp) {
    let app = Arc::new(app);
    app.create_session("p1").await;
    let events = (0..2000)
        .map(|i| {
            // Half the events share one timestamp; the rest spread around it.
            let timestamp = if i % 2 == 0 {
                TIED.to_owned()
            } else {
                format!(
                    "2026-11-26T0{}:{:02}:{:02}.000Z",
                    7 + (i % 4) / 2,
                    (i / 60) % 60,
                    i % 60
                )
            };
            json!({"eventId": format!("e{i:04}"), "type": "system", "timestamp": timestamp})
        })
        .collect();
    append_many(&app, "p1", events).await;
    let ascending = app.walk("p1", "limit=97").await;
    assert_each_once(&ascending, 2000);
    assert_strictly_ordered(&ascending, false);
    assert_eq!(
        ascending.iter().filter(|e| e["timestamp"] == TIED).count(),
        1000
    );
    let descending = app.walk("p1", "limit=1000&order=desc").await;
    assert_each_once(&descending, 2000);
    assert_strictly_ordered(&descending, true);
    let reversed: Vec<Value> = descending.into_iter().rev().collect();
    assert_eq!(reversed, ascending);
}

async fn cursor_walk_while_appending_returns_each_event_once_in_order(app: TestApp) {
    let app = Arc::new(app);
    app.create_session("p2").await;
    for i in 0..100 {
        app.append(
            "p2",
            json!({"eventId": format!("before-{i}"), "type": "system"}),
        )
        .await;
    }
    let writer = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            for i in 0..150 {
                app.append(
                    "p2",
                    json!({"eventId": format!("during-{i}"), "type": "system"}),
                )
                .await;
            }
        })
    };
    let walked = app.walk("p2", "limit=7").await;
    writer.await.unwrap();
    let ids: HashSet<&str> = walked
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), walked.len(), "an event came twice");
    assert_strictly_ordered(&walked, false);
    for i in 0..100 {
        assert!(
            ids.contains(format!("before-{i}").as_str()),
            "before-{i} was skipped"
        );
    }
    // What the walk saw is a prefix of the final timeline: nothing was skipped on the way.
    let everything = app.walk("p2", "limit=1000").await;
    assert_each_once(&everything, 250);
    assert_eq!(&everything[..walked.len()], &walked[..]);
}

async fn offset_pages_follow_the_same_order(app: TestApp) {
    let app = Arc::new(app);
    app.create_session("p3").await;
    let events = (0..25)
        .map(|i| json!({"eventId": format!("e{i:02}"), "type": "system", "timestamp": TIED}))
        .collect();
    append_many(&app, "p3", events).await;
    let all = app.walk("p3", "limit=1000").await;
    let mut paged = Vec::new();
    for page in 1..=3 {
        let (status, body) = app
            .get(&format!("/sessions/p3/events?limit=10&page={page}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["hasMore"], page < 3, "page {page}");
        paged.extend(body["data"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(paged, all);
    let (_, beyond) = app.get("/sessions/p3/events?limit=10&page=4").await;
    assert_eq!(beyond["data"], json!([]));
}

async fn limit_defaults_to_50_and_must_be_1_to_1000(app: TestApp) {
    let app = Arc::new(app);
    app.create_session("p4").await;
    let events = (0..60)
        .map(|i| json!({"eventId": format!("e{i}"), "type": "system"}))
        .collect();
    append_many(&app, "p4", events).await;
    let (_, body) = app.get("/sessions/p4/events").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 50);
    assert_eq!(body["hasMore"], true);
    let (_, body) = app.get("/sessions/p4/events?limit=1000").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 60);
    assert_eq!(body["nextCursor"], Value::Null);
    for bad in ["0", "1001", "-1", "abc", "1.5", "", "99999999999999999999"] {
        let (status, body) = app.get(&format!("/sessions/p4/events?limit={bad}")).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], "limit", "limit={bad}");
    }
    for bad in ["0", "-2", "x"] {
        let (status, body) = app.get(&format!("/sessions/p4/events?page={bad}")).await;
        assert_error(status, &body, 400, "validation_failed");
    }
    let (status, body) = app.get("/sessions/p4/events?order=sideways").await;
    assert_error(status, &body, 400, "validation_failed");
}

async fn bad_cursors_are_invalid_cursor_never_5xx(app: TestApp) {
    for id in ["c1", "c2"] {
        app.create_session(id).await;
        for i in 0..3 {
            app.append(id, json!({"eventId": format!("e{i}"), "type": "system"}))
                .await;
        }
    }
    let (_, first) = app.get("/sessions/c1/events?limit=1").await;
    let token = first["nextCursor"].as_str().unwrap().to_owned();
    let truncated = &token[..token.len() - 3];
    let cases = [
        format!("/sessions/c1/events?cursor={truncated}"),
        format!("/sessions/c1/events?cursor={token}AAAA"),
        "/sessions/c1/events?cursor=not-a-cursor".to_owned(),
        "/sessions/c1/events?cursor=%F0%9F%98%80".to_owned(),
        "/sessions/c1/events?cursor=".to_owned(),
        "/sessions/c1/events?cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
        format!("/sessions/c2/events?cursor={token}"),
        format!("/sessions/c1/events?cursor={token}&order=desc"),
        format!("/sessions/nobody/events?cursor={token}"),
    ];
    for path in cases {
        let (status, body) = app.get(&path).await;
        assert_error(status, &body, 400, "invalid_cursor");
    }
    let (status, body) = app
        .get(&format!("/sessions/c1/events?limit=1&cursor={token}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["eventId"], "e1");
}

async fn page_and_cursor_together_are_refused(app: TestApp) {
    app.create_session("p5").await;
    app.append("p5", json!({"eventId": "e1", "type": "system"}))
        .await;
    app.append("p5", json!({"eventId": "e2", "type": "system"}))
        .await;
    let (_, first) = app.get("/sessions/p5/events?limit=1").await;
    let token = first["nextCursor"].as_str().unwrap();
    let (status, body) = app
        .get(&format!("/sessions/p5/events?page=1&cursor={token}"))
        .await;
    assert_error(status, &body, 400, "validation_failed");
}

async fn listing_an_unknown_session_is_session_not_found(app: TestApp) {
    let (status, body) = app.get("/sessions/nobody/events").await;
    assert_error(status, &body, 404, "session_not_found");
    app.create_session("empty").await;
    let (status, body) = app.get("/sessions/empty/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"data": [], "nextCursor": null, "hasMore": false})
    );
}

async fn unknown_and_repeated_query_parameters_are_refused(app: TestApp) {
    app.create_session("p6").await;
    for (query, field) in [("limt=5", "limt"), ("limit=5&limit=6", "limit")] {
        let (status, body) = app.get(&format!("/sessions/p6/events?{query}")).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field);
    }
}
