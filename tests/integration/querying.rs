use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, on_both_stores, TestApp};

on_both_stores!(
    sessions_are_listed_newest_first_and_walked_by_cursor,
    sessions_filter_by_status_language_time_and_metadata,
    session_listing_refuses_bad_filters_and_foreign_cursors,
    events_filter_by_repeatable_type_and_time_range,
    events_after_seq_list_in_seq_order,
    event_cursors_are_bound_to_their_filters,
);

async fn walk(app: &TestApp, path: &str) -> Vec<Value> {
    app.walk_listing(path).await
}

fn ids(items: &[Value], key: &str) -> Vec<String> {
    items
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

async fn create(app: &TestApp, id: &str, started: &str, language: Option<&str>, caller: &str) {
    let (status, body) = app
        .post(
            "/sessions",
            &json!({"sessionId": id, "startedAt": started, "language": language,
                    "metadata": {"caller": caller, "n": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn seed_sessions(app: &TestApp) {
    create(app, "a", "2026-11-20T10:00:00Z", Some("en"), "alice").await;
    create(app, "b", "2026-11-21T10:00:00Z", Some("de"), "bob").await;
    create(app, "c", "2026-11-21T10:00:00Z", Some("en"), "alice").await;
    create(app, "d", "2026-11-22T10:00:00Z", None, "carol").await;
    create(app, "e", "2026-11-23T10:00:00Z", Some("en"), "alice").await;
    app.append("b", json!({"eventId": "e1", "type": "system"}))
        .await;
    app.complete("d").await;
    let (status, _) = app
        .post("/sessions/e/complete", &json!({"status": "failed"}))
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn sessions_are_listed_newest_first_and_walked_by_cursor(app: TestApp) {
    seed_sessions(&app).await;
    let all = walk(&app, "/sessions?limit=2").await;
    assert_eq!(ids(&all, "sessionId"), ["e", "d", "c", "b", "a"]);
    let oldest_first = walk(&app, "/sessions?limit=3&order=asc").await;
    assert_eq!(ids(&oldest_first, "sessionId"), ["a", "b", "c", "d", "e"]);
    let (_, first) = app.get("/sessions?limit=5").await;
    assert_eq!(first["hasMore"], false);
    assert_eq!(first["nextCursor"], Value::Null);
}

async fn sessions_filter_by_status_language_time_and_metadata(app: TestApp) {
    seed_sessions(&app).await;
    let cases = [
        ("status=active", vec!["b"]),
        ("status=completed&status=failed", vec!["e", "d"]),
        ("status=initiated", vec!["c", "a"]),
        ("language=en", vec!["e", "c", "a"]),
        (
            "startedAfter=2026-11-21T10:00:00Z",
            vec!["e", "d", "c", "b"],
        ),
        ("startedBefore=2026-11-22T10:00:00Z", vec!["c", "b", "a"]),
        (
            "startedAfter=2026-11-21T00:00:00Z&startedBefore=2026-11-22T00:00:00Z",
            vec!["c", "b"],
        ),
        ("metadata.caller=alice", vec!["e", "c", "a"]),
        (
            "metadata.caller=alice&language=en&status=initiated",
            vec!["c", "a"],
        ),
        ("metadata.caller=alice&metadata.n=1", vec![]),
        ("metadata.caller=nobody", vec![]),
    ];
    for (query, want) in cases {
        let walked = walk(&app, &format!("/sessions?limit=1&{query}")).await;
        assert_eq!(ids(&walked, "sessionId"), want, "{query}");
    }
}

async fn session_listing_refuses_bad_filters_and_foreign_cursors(app: TestApp) {
    seed_sessions(&app).await;
    for (query, field) in [
        ("status=open", "status"),
        ("language=english", "language"),
        ("startedAfter=monday", "startedAfter"),
        ("metadata.%24where=1", "metadata.$where"),
        ("metadata.a.b=1", "metadata.a.b"),
        ("metadata.=1", "metadata."),
        ("metadata.k=1&metadata.k=2", "metadata.k"),
        ("limit=0", "limit"),
        // A `+` sign, sent encoded: the description allows digits only.
        ("limit=%2B5", "limit"),
        ("sort=name", "sort"),
    ] {
        let (status, body) = app.get(&format!("/sessions?{query}")).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field, "{query}");
    }
    let six: String = (0..6).map(|i| format!("&metadata.k{i}=v")).collect();
    let (status, body) = app.get(&format!("/sessions?limit=1{six}")).await;
    assert_error(status, &body, 400, "validation_failed");

    let (_, page) = app.get("/sessions?limit=1&language=en").await;
    let token = page["nextCursor"].as_str().unwrap().to_owned();
    for query in [
        "language=de",
        "",
        "language=en&status=active",
        "language=en&order=asc",
    ] {
        let (status, body) = app
            .get(&format!("/sessions?limit=1&{query}&cursor={token}"))
            .await;
        assert_error(status, &body, 400, "invalid_cursor");
    }
    let (_, events) = app.get("/sessions/b/events?limit=1").await;
    assert_eq!(events["nextCursor"], Value::Null);
    let (status, body) = app.get("/sessions?cursor=garbage").await;
    assert_error(status, &body, 400, "invalid_cursor");
}

async fn seed_events(app: &TestApp) {
    app.create_session("s").await;
    let kinds = ["user_speech", "bot_speech", "system"];
    let events: Vec<Value> = (0..30)
        .map(|i| {
            json!({"eventId": format!("e{i:02}"), "type": kinds[i % 3],
                   "timestamp": format!("2026-11-26T08:00:{:02}.000Z", i / 2)})
        })
        .collect();
    let (status, _) = app
        .post("/sessions/s/events:batch", &json!({"events": events}))
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn events_filter_by_repeatable_type_and_time_range(app: TestApp) {
    seed_events(&app).await;
    let from_to = "from=2026-11-26T08:00:03Z&to=2026-11-26T08:00:10Z";
    let want: Vec<String> = (0..30)
        .filter(|i| i % 3 != 1 && (3..10).contains(&(i / 2)))
        .map(|i| format!("e{i:02}"))
        .collect();
    let query = format!("/sessions/s/events?limit=2&type=user_speech&type=system&{from_to}");
    assert_eq!(ids(&walk(&app, &query).await, "eventId"), want);
    let mut reversed = want.clone();
    reversed.reverse();
    let desc = walk(&app, &format!("{query}&order=desc")).await;
    assert_eq!(ids(&desc, "eventId"), reversed);
    // Bounds finer than the stored milliseconds compare as if at full precision.
    for (range, want) in [
        (
            "from=2026-11-26T08:00:02.9995Z&to=2026-11-26T08:00:03.0001Z",
            ["e06", "e07"],
        ),
        (
            "from=2026-11-26T08:00:03.0005Z&to=2026-11-26T08:00:04.0005Z",
            ["e08", "e09"],
        ),
    ] {
        let found = walk(&app, &format!("/sessions/s/events?{range}")).await;
        assert_eq!(ids(&found, "eventId"), want, "{range}");
    }
    // Ordered as sent, though both round up to the same millisecond: no stored time between.
    let (status, page) = app
        .get("/sessions/s/events?from=2026-11-26T08:00:03.0005Z&to=2026-11-26T08:00:03.001Z")
        .await;
    assert_eq!((status, page["data"].clone()), (StatusCode::OK, json!([])));
    let bots = walk(&app, "/sessions/s/events?limit=4&type=bot_speech").await;
    assert_eq!(bots.len(), 10);
    assert!(bots.iter().all(|e| e["type"] == "bot_speech"));

    let many_types: String = (0..21).map(|i| format!("&type=t{i}")).collect();
    for (query, field) in [
        (many_types.as_str(), "type"),
        ("&type=9bad", "type"),
        ("&from=2026-11-26T08:00:05Z&to=2026-11-26T08:00:05Z", "to"),
        ("&to=later", "to"),
    ] {
        let (status, body) = app.get(&format!("/sessions/s/events?limit=1{query}")).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field, "{query}");
    }
}

async fn events_after_seq_list_in_seq_order(app: TestApp) {
    seed_events(&app).await;
    let all = walk(&app, "/sessions/s/events?limit=1000").await;
    let seq_of = |i: usize| {
        all.iter()
            .find(|e| e["eventId"] == format!("e{i:02}"))
            .unwrap()["seq"]
            .as_i64()
            .unwrap()
    };
    let after = seq_of(9);
    let walked = walk(
        &app,
        &format!("/sessions/s/events?afterSeq={after}&limit=4"),
    )
    .await;
    let seqs: Vec<i64> = walked.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.len(), 20);
    assert!(seqs.iter().all(|s| *s > after));
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let speech = walk(
        &app,
        &format!("/sessions/s/events?afterSeq={after}&type=system&limit=3"),
    )
    .await;
    assert!(speech.iter().all(|e| e["type"] == "system"));
    for (query, field) in [
        ("afterSeq=-1", "afterSeq"),
        ("afterSeq=%2B1", "afterSeq"),
        ("page=%2B2", "page"),
        ("afterSeq=x", "afterSeq"),
        ("afterSeq=1&order=desc", "order"),
        ("afterSeq=1&page=2", "page"),
    ] {
        let (status, body) = app.get(&format!("/sessions/s/events?{query}")).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field, "{query}");
    }
    let (_, tail) = app
        .get(&format!("/sessions/s/events?afterSeq={}", seq_of(29)))
        .await;
    assert_eq!(tail["data"], json!([]));
    // With a cursor, a page holds the events past both the cursor and `afterSeq`.
    let (_, first) = app.get("/sessions/s/events?afterSeq=0&limit=2").await;
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    for (n, want) in [
        (after, after + 1),
        (0, first["data"][1]["seq"].as_i64().unwrap() + 1),
    ] {
        let (status, page) = app
            .get(&format!(
                "/sessions/s/events?afterSeq={n}&limit=3&cursor={cursor}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["data"][0]["seq"], want, "afterSeq={n}: {page}");
    }
}

async fn event_cursors_are_bound_to_their_filters(app: TestApp) {
    seed_events(&app).await;
    let (_, page) = app.get("/sessions/s/events?limit=1&type=system").await;
    let token = page["nextCursor"].as_str().unwrap().to_owned();
    for query in [
        "",
        "type=bot_speech",
        "type=system&type=user_speech",
        "type=system&from=2026-11-26T08:00:00Z",
        "type=system&afterSeq=0",
    ] {
        let (status, body) = app
            .get(&format!(
                "/sessions/s/events?limit=1&{query}&cursor={token}"
            ))
            .await;
        assert_error(status, &body, 400, "invalid_cursor");
    }
    let (status, _) = app
        .get(&format!(
            "/sessions/s/events?limit=1&type=system&cursor={token}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
}
