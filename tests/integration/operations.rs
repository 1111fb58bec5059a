//! What an operator relies on: health, metrics, authentication, erasure and retention.

use std::time::{Duration, Instant};

use conversation_sessions::store::MongoStore;
use mongodb::bson::{doc, Document};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    assert_error, fresh_mongo_config, on_both_stores, parts, spawn_app_with, Backend, TestApp,
};
use crate::live::SseStream;

on_both_stores!(
    health_and_readiness_answer_200,
    metrics_count_requests_events_store_calls_and_streams,
    delete_erases_the_session_and_its_events_and_frees_the_id,
    a_live_stream_ends_when_its_session_is_erased,
);

/// Erasure behaviour that only MongoDB has: the in-memory store erases at once.
mod erasure {
    pub mod mongo {
        #[tokio::test]
        async fn an_erasure_runs_to_its_end_when_its_client_hangs_up() {
            super::super::an_erasure_runs_to_its_end_when_its_client_hangs_up().await
        }
    }
}

async fn health_and_readiness_answer_200(app: TestApp) {
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = app.get("/readyz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));
}

async fn metrics_count_requests_events_store_calls_and_streams(app: TestApp) {
    app.create_session("m1").await;
    let event = json!({"eventId": "e1", "type": "system", "payload": {"secret": "do-not-log"}});
    app.append("m1", event.clone()).await;
    app.post("/sessions/m1/events", &event).await;
    let mut conflicting = event.clone();
    conflicting["payload"] = json!({"other": 1});
    app.post("/sessions/m1/events", &conflicting).await;
    // On a session that stays open: a closed one's stream ends half a second after.
    app.create_session("m1-live").await;
    let _stream = SseStream::open(&app, "/sessions/m1-live/events/stream", None).await;
    app.complete("m1").await;
    app.post(
        "/sessions/m1/events",
        &json!({"eventId": "late", "type": "system"}),
    )
    .await;
    // Any token is a method to HTTP; invented ones share one label value.
    for invented in ["BREW", "BREW2"] {
        let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
        let response = app.client.request(method, app.url("/sessions")).send();
        assert_eq!(
            response.await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
    let response = app.get_raw("/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for line in [
        r#"http_requests_total{method="POST",route="/sessions",status="201"} 2"#,
        r#"http_requests_total{method="POST",route="/sessions/{session_id}/events",status="409"} 2"#,
        r#"events_total{outcome="accepted"} 1"#,
        r#"events_total{outcome="replayed"} 1"#,
        r#"events_total{outcome="conflicting"} 1"#,
        r#"events_total{outcome="rejected_closed"} 1"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/sessions/{session_id}/events",le="+Inf"} 4"#,
        r#"store_operation_duration_seconds_count{operation="insert_event",result="ok"}"#,
        "live_streams_open 1",
        r#"http_requests_total{method="other",route="/sessions",status="405"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    assert!(
        !text.contains("/sessions/m1"),
        "raw paths never become labels"
    );
    assert!(!text.contains("BREW"), "nor invented methods");
}

/// A client that hangs up during a `DELETE` does not leave the erasure half done. The
/// erasure of a session with a replay just now waits for appends in flight (the replay's
/// seq is not among the events), and the client below gives up during that wait.
async fn an_erasure_runs_to_its_end_when_its_client_hangs_up() {
    let app = spawn_app_with(Backend::Mongo, |c| c.erase_settle = Duration::from_secs(3)).await;
    app.create_session("hang").await;
    let event = json!({"eventId": "e1", "type": "system"});
    app.append("hang", event.clone()).await;
    let (status, _) = app.post("/sessions/hang/events", &event).await;
    assert_eq!(status, StatusCode::OK);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung_up = impatient.delete(app.url("/sessions/hang")).send().await;
    assert!(
        hung_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client did not hang up during the erasure: {hung_up:?}"
    );
    // Creates of the id get 503 while the erasure holds it, and 201 once it is over.
    let started = Instant::now();
    loop {
        let (status, body) = app.post("/sessions", &json!({"sessionId": "hang"})).await;
        if status == StatusCode::CREATED {
            break;
        }
        assert_error(status, &body, 503, "unavailable");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("being erased"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the erasure never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, page) = app.get("/sessions/hang/events").await;
    assert_eq!(page["data"], json!([]));
}

async fn delete_erases_the_session_and_its_events_and_frees_the_id(app: TestApp) {
    app.create_session("d1").await;
    for i in 0..5 {
        app.append("d1", json!({"eventId": format!("e{i}"), "type": "system"}))
            .await;
    }
    let response = app
        .client
        .delete(app.url("/sessions/d1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, body) = app.get("/sessions/d1").await;
    assert_error(status, &body, 404, "session_not_found");
    let (status, body) = app.get("/sessions/d1/events/e1").await;
    assert_error(status, &body, 404, "session_not_found");
    let again = app
        .client
        .delete(app.url("/sessions/d1"))
        .send()
        .await
        .unwrap();
    let (status, body) = parts(again).await;
    assert_error(status, &body, 404, "session_not_found");
    // The id can be created again, and starts empty.
    app.create_session("d1").await;
    let (_, page) = app.get("/sessions/d1/events").await;
    assert_eq!(page["data"], json!([]));
    app.append("d1", json!({"eventId": "e1", "type": "user_speech"}))
        .await;
}

async fn a_live_stream_ends_when_its_session_is_erased(app: TestApp) {
    app.create_session("d2").await;
    let mut stream = SseStream::open(&app, "/sessions/d2/events/stream", None).await;
    app.client
        .delete(app.url("/sessions/d2"))
        .send()
        .await
        .unwrap();
    assert!(stream.ended(Duration::from_secs(5)).await);
}

const KEY: &str = "test-key-0123456789abcdef";

async fn app_with_keys() -> TestApp {
    spawn_app_with(Backend::Memory, |c| {
        c.api_keys = Some(vec![KEY.to_owned(), "second-key-0123456789".to_owned()]);
    })
    .await
}

mod memory_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_api_route_needs_a_valid_bearer_key() {
        let app = app_with_keys().await;
        let routes = [
            ("POST", "/sessions"),
            ("GET", "/sessions"),
            ("GET", "/sessions/a"),
            ("DELETE", "/sessions/a"),
            ("POST", "/sessions/a/complete"),
            ("POST", "/sessions/a/events"),
            ("GET", "/sessions/a/events"),
            ("POST", "/sessions/a/events:batch"),
            ("GET", "/sessions/a/events/e1"),
            ("GET", "/sessions/a/events/stream"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            // A method a path does not take: without a key, not even that is told.
            ("PUT", "/sessions"),
            ("PATCH", "/sessions/a/events"),
        ];
        let refused = [
            None,
            Some("Bearer wrong-key-0123456789abcd".to_owned()),
            Some(format!("Bearer {}", &KEY[..KEY.len() - 1])),
            Some(format!("Bearer {KEY}x")),
            Some(format!("Basic {KEY}")),
            Some(KEY.to_owned()),
            Some("Bearer".to_owned()),
            Some("Bearer ".to_owned()),
        ];
        for (method, path) in routes {
            for authorization in &refused {
                let mut request = app.client.request(method.parse().unwrap(), app.url(path));
                if let Some(value) = authorization {
                    request = request.header("authorization", value);
                }
                let response = request.send().await.unwrap();
                assert_eq!(
                    response.headers()["www-authenticate"],
                    "Bearer",
                    "{method} {path}"
                );
                let (status, body) = parts(response).await;
                assert_error(status, &body, 401, "unauthorized");
            }
        }
        for key in [KEY, "second-key-0123456789"] {
            let response = app
                .client
                .post(app.url("/sessions"))
                .header("authorization", format!("bearer {key}"))
                .json(&json!({"sessionId": format!("s-{}", key.len())}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
        }
        for open in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(app.get_raw(open).await.status(), StatusCode::OK, "{open}");
        }
        let response = app
            .client
            .put(app.url("/sessions"))
            .header("authorization", format!("Bearer {KEY}"))
            .send()
            .await
            .unwrap();
        let (status, body) = parts(response).await;
        assert_error(status, &body, 405, "method_not_allowed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_erases_closed_sessions_and_keeps_open_ones() {
        let app = spawn_app_with(Backend::Memory, |c| {
            c.retention = Some(Duration::from_millis(300))
        })
        .await;
        for id in ["old", "open"] {
            app.create_session(id).await;
            app.append(id, json!({"eventId": "e1", "type": "system"}))
                .await;
        }
        app.complete("old").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while app.get("/sessions/old").await.0 != StatusCode::NOT_FOUND {
            assert!(
                Instant::now() < deadline,
                "the closed session was never erased"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _) = app.get("/sessions/open").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(app.walk("open", "limit=10").await.len(), 1);
    }
}

mod retention {
    use super::*;

    /// The expiry of the named index, as `listIndexes` reports it.
    async fn ttl_of(db: &str, collection: &str, name: &str) -> Option<i64> {
        let client = mongodb::Client::with_uri_str(crate::helpers::mongo_uri())
            .await
            .unwrap();
        let reply = client
            .database(db)
            .run_command(doc! {"listIndexes": collection})
            .await
            .unwrap();
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        let index: &Document = batch
            .iter()
            .filter_map(|i| i.as_document())
            .find(|i| i.get_str("name").ok() == Some(name))?;
        match index.get("expireAfterSeconds")? {
            mongodb::bson::Bson::Int32(n) => Some(i64::from(*n)),
            mongodb::bson::Bson::Int64(n) => Some(*n),
            mongodb::bson::Bson::Double(n) => Some(*n as i64),
            other => panic!("expireAfterSeconds is {other:?}"),
        }
    }

    mod mongo {
        use super::*;

        /// RETENTION_DAYS becomes TTL indexes; a new value changes them, none removes them.
        #[tokio::test]
        async fn retention_is_kept_in_ttl_indexes() {
            let config = fresh_mongo_config();
            let db = config.db_name.clone().unwrap();
            let store = MongoStore::connect(&config).await.unwrap();
            let days = |d: u64| Some(Duration::from_secs(d * 86_400));
            store.apply_retention(days(30)).await.unwrap();
            assert_eq!(
                ttl_of(&db, "sessions", "sessions_retention").await,
                Some(30 * 86_400)
            );
            assert_eq!(
                ttl_of(&db, "events", "events_retention").await,
                Some(30 * 86_400)
            );
            store.apply_retention(days(7)).await.unwrap();
            assert_eq!(
                ttl_of(&db, "sessions", "sessions_retention").await,
                Some(7 * 86_400)
            );
            assert_eq!(
                ttl_of(&db, "events", "events_retention").await,
                Some(7 * 86_400)
            );
            assert!(
                store.apply_retention(None).await.unwrap(),
                "it dropped them"
            );
            assert_eq!(ttl_of(&db, "sessions", "sessions_retention").await, None);
            assert_eq!(ttl_of(&db, "events", "events_retention").await, None);
            assert!(!store.apply_retention(None).await.unwrap(), "none was left");
        }
    }
}

mod round_trips {
    use super::*;

    /// Commands the store sent, by name, from the driver's command monitoring. All of them,
    /// `getMore` and `killCursors` included: no live stream is open, so no change stream
    /// sends any in the background.
    async fn commands(app: &TestApp) -> std::collections::BTreeMap<String, u64> {
        let text = app.get_raw("/metrics").await.text().await.unwrap();
        text.lines()
            .filter_map(|line| line.strip_prefix("store_commands_total{command=\""))
            .filter_map(|rest| rest.split_once("\"} "))
            .map(|(name, count)| (name.to_owned(), count.trim().parse().unwrap()))
            .collect()
    }

    /// The status of one request and the commands it cost: GET without a body, else POST.
    async fn cost(app: &TestApp, path: &str, body: Option<serde_json::Value>) -> (StatusCode, u64) {
        let before: u64 = commands(app).await.values().sum();
        let status = match body {
            Some(body) => app.post(path, &body).await.0,
            None => app.get(path).await.0,
        };
        let after: u64 = commands(app).await.values().sum();
        (status, after - before)
    }

    mod mongo {
        use super::*;

        /// The database work per request, counted by the driver, not guessed.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn each_request_costs_the_fewest_round_trips() {
            let app = spawn_app_with(Backend::Mongo, |c| {
                if let Some(mongo) = c.mongo.as_mut() {
                    mongo.command_metrics = true;
                }
            })
            .await;
            let session = json!({"sessionId": "rt"});
            let event = json!({"eventId": "e1", "type": "system", "payload": {"k": "v"}});
            let batch: Vec<serde_json::Value> = (0..100)
                .map(|i| json!({"eventId": format!("b{i}"), "type": "system"}))
                .collect();
            let cases = [
                ("/sessions", Some(session.clone()), StatusCode::CREATED, 1),
                ("/sessions", Some(session), StatusCode::OK, 1),
                (
                    "/sessions/rt/events",
                    Some(event.clone()),
                    StatusCode::CREATED,
                    2,
                ),
                (
                    "/sessions/rt/events",
                    Some(event.clone()),
                    StatusCode::OK,
                    3,
                ),
                ("/sessions/rt/events?limit=50", None, StatusCode::OK, 1),
                (
                    "/sessions/rt/events:batch",
                    Some(json!({"events": batch})),
                    StatusCode::OK,
                    2,
                ),
                ("/sessions/rt/complete", Some(json!({})), StatusCode::OK, 1),
                // After the close: reserve, read the session, read the event.
                ("/sessions/rt/events", Some(event), StatusCode::OK, 3),
                // After the close: reserve, read the session, look for the items.
                (
                    "/sessions/rt/events:batch",
                    Some(json!({"events": batch})),
                    StatusCode::OK,
                    3,
                ),
                // An item stored nowhere durable is looked for once more among the latest
                // writes, where a retry of an append still in flight would find it (503).
                (
                    "/sessions/rt/events:batch",
                    Some(json!({"events": [{"eventId": "late", "type": "system"}]})),
                    StatusCode::CONFLICT,
                    4,
                ),
                (
                    "/sessions/rt/events",
                    Some(json!({"eventId": "late", "type": "system"})),
                    StatusCode::CONFLICT,
                    4,
                ),
            ];
            for (path, body, status, round_trips) in cases {
                assert_eq!(
                    cost(&app, path, body).await,
                    (status, round_trips),
                    "{path}"
                );
            }
        }

        /// Without `DB_COMMAND_METRICS`, the command monitoring is off: no command is counted.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn commands_are_not_counted_by_default() {
            let app = spawn_app_with(Backend::Mongo, |_| {}).await;
            let (status, _) = app.post("/sessions", &json!({"sessionId": "quiet"})).await;
            assert_eq!(status, StatusCode::CREATED);
            let text = app.get_raw("/metrics").await.text().await.unwrap();
            assert!(text.contains("http_requests_total"), "{text}");
            assert!(!text.contains("store_commands_total"), "{text}");
        }
    }
}
