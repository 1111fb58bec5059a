use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, fresh_mongo_config, on_both_stores, parts, spawn_app_with, Backend, TestApp,
};

on_both_stores!(
    stream_replays_stored_events_then_live_ones_then_ends_with_the_close,
    reconnecting_with_last_event_id_loses_and_repeats_nothing_while_appends_continue,
    a_closed_session_replays_after_the_position_and_ends,
    a_slow_reader_blocks_neither_ingestion_nor_other_streams,
    stream_requests_are_validated,
);

/// A minimal Server-Sent Events reader.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
    pub comments: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

impl SseStream {
    pub async fn open(app: &TestApp, path: &str, last_event_id: Option<i64>) -> Self {
        let id = last_event_id.map(|id| id.to_string());
        let header = id.as_deref().map(|id| ("last-event-id", id));
        Self::open_with(app, path, header.as_slice()).await
    }

    /// Opens the stream with these request headers besides `Accept`.
    pub async fn open_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = app
            .client
            .get(app.url(path))
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next message, or `None` when the stream ended or nothing came in time.
    pub async fn next(&mut self, within: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(message) = self.parse_one() {
                return Some(message);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Whether the server ended the stream (rather than just staying quiet).
    pub async fn ended(&mut self, within: Duration) -> bool {
        loop {
            match tokio::time::timeout(within, self.response.chunk()).await {
                Ok(Ok(None)) => return true,
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    fn parse_one(&mut self) -> Option<SseMessage> {
        while let Some(end) = self.buffer.find("\n\n") {
            let frame: String = self.buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), None);
            for line in frame.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().expect("ids are seqs"));
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("data is JSON"));
                }
            }
            if let Some(data) = data {
                return Some(SseMessage { id, event, data });
            }
        }
        None
    }
}

const SOON: Duration = Duration::from_secs(5);

async fn stream_replays_stored_events_then_live_ones_then_ends_with_the_close(app: TestApp) {
    app.create_session("l1").await;
    let first = app
        .append("l1", json!({"eventId": "e1", "type": "user_speech"}))
        .await;
    let second = app
        .append("l1", json!({"eventId": "e2", "type": "bot_speech"}))
        .await;
    let mut stream = SseStream::open(&app, "/sessions/l1/events/stream", None).await;
    for stored in [&first, &second] {
        let message = stream.next(SOON).await.expect("a replayed event");
        assert_eq!(message.id, stored["seq"].as_i64());
        assert_eq!(message.event, stored["type"].as_str().unwrap());
        assert_eq!(&message.data, stored);
    }
    let third = app
        .append(
            "l1",
            json!({"eventId": "e3", "type": "system", "payload": {"k": 1}}),
        )
        .await;
    let live = stream.next(SOON).await.expect("a live event");
    assert_eq!(live.data, third);
    let (_, closed) = app.complete("l1").await;
    let end = stream.next(SOON).await.expect("the close");
    assert_eq!(end.event, "session.closed");
    assert_eq!(end.data, closed);
    assert!(
        stream.ended(SOON).await,
        "the stream ends after session.closed"
    );
}

mod replay_in_a_live_session {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn does_not_hold_back_the_next_event_on_memory() {
        does_not_hold_back_the_next_event(Backend::Memory).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn does_not_hold_back_the_next_event_on_mongo() {
        does_not_hold_back_the_next_event(Backend::Mongo).await;
    }
}

/// A gap that may still fill is waited out for `SSE_GAP_WAIT_MS`, here 5 s; a gap left by
/// a retry is known to stay empty and is passed at once.
async fn does_not_hold_back_the_next_event(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.sse_gap_wait = Duration::from_secs(5)).await;
    let within = Duration::from_secs(2);
    app.create_session("l6").await;
    let mut stream = SseStream::open(&app, "/sessions/l6/events/stream", None).await;
    let event = json!({"eventId": "e1", "type": "user_speech"});
    let first = app.append("l6", event.clone()).await;
    assert_eq!(stream.next(SOON).await.expect("e1").data, first);
    // The retry uses up seq 2 and stores nothing.
    let (status, _) = app.post("/sessions/l6/events", &event).await;
    assert_eq!(status, StatusCode::OK);
    let third = app
        .append("l6", json!({"eventId": "e3", "type": "bot_speech"}))
        .await;
    assert_eq!(third["seq"], 3);
    assert_eq!(stream.next(within).await.expect("e3 at once").data, third);
    // In a batch too: the retried e3 uses up seq 4, e4 gets 5.
    let batch = json!({"events": [{"eventId": "e3", "type": "bot_speech"}, {"eventId": "e4", "type": "system"}]});
    let (status, body) = app.post("/sessions/l6/events:batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][1]["event"]["seq"], 5, "{body}");
    let e4 = stream.next(within).await.expect("e4 at once");
    assert_eq!(e4.data, body["results"][1]["event"]);
}

async fn reconnecting_with_last_event_id_loses_and_repeats_nothing_while_appends_continue(
    app: TestApp,
) {
    let app = Arc::new(app);
    app.create_session("l2").await;
    let writer = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            for i in 0..60 {
                app.append(
                    "l2",
                    json!({"eventId": format!("e{i:02}"), "type": "system"}),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            app.complete("l2").await;
        })
    };
    let mut received: Vec<i64> = Vec::new();
    let mut last: Option<i64> = None;
    let mut reconnects = 0;
    'streams: loop {
        let mut stream = SseStream::open(&app, "/sessions/l2/events/stream", last).await;
        // Read a few messages, then drop the connection as a flaky network would.
        for _ in 0..7 {
            let message = stream.next(SOON).await.expect("messages keep coming");
            if message.event == "session.closed" {
                break 'streams;
            }
            last = message.id;
            received.push(message.id.unwrap());
        }
        reconnects += 1;
    }
    writer.await.unwrap();
    let stored = app.walk("l2", "limit=1000").await;
    let mut want: Vec<i64> = stored.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    want.sort_unstable();
    assert_eq!(received, want, "after {reconnects} reconnects");
    assert!(reconnects >= 5);
}

async fn a_closed_session_replays_after_the_position_and_ends(app: TestApp) {
    app.create_session("l3").await;
    let mut seqs = Vec::new();
    for i in 0..4 {
        let e = app
            .append("l3", json!({"eventId": format!("e{i}"), "type": "system"}))
            .await;
        seqs.push(e["seq"].as_i64().unwrap());
    }
    app.complete("l3").await;
    let path = format!("/sessions/l3/events/stream?afterSeq={}", seqs[1]);
    let mut stream = SseStream::open(&app, &path, None).await;
    let mut got = Vec::new();
    let mut closed = None;
    while let Some(message) = stream.next(SOON).await {
        if message.event == "session.closed" {
            closed = Some(message.data);
            break;
        }
        got.push(message.id.unwrap());
    }
    assert_eq!(got, seqs[2..]);
    let closed = closed.expect("the stream ended without session.closed");
    assert_eq!(closed["status"], "completed");
    assert!(stream.ended(SOON).await);
    // Last-Event-ID wins over afterSeq, as a reconnecting browser sends it.
    let mut resumed = SseStream::open(&app, &path, Some(seqs[2])).await;
    assert_eq!(resumed.next(SOON).await.unwrap().id, Some(seqs[3]));
    // An empty one is no id yet, and afterSeq holds.
    let mut fresh = SseStream::open_with(&app, &path, &[("last-event-id", "")]).await;
    assert_eq!(fresh.next(SOON).await.unwrap().id, Some(seqs[2]));
}

async fn a_slow_reader_blocks_neither_ingestion_nor_other_streams(app: TestApp) {
    app.create_session("l4").await;
    // Opened and never read: its buffers fill up.
    let _stalled = SseStream::open(&app, "/sessions/l4/events/stream", None).await;
    let mut reader = SseStream::open(&app, "/sessions/l4/events/stream", None).await;
    let started = Instant::now();
    for batch in 0..20 {
        let events: Vec<Value> = (0..50)
            .map(|i| {
                json!({"eventId": format!("b{batch}-{i}"), "type": "system",
                            "payload": {"text": "x".repeat(4000)}})
            })
            .collect();
        let (status, _) = app
            .post("/sessions/l4/events:batch", &json!({"events": events}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "ingestion stalled"
    );
    let mut count = 0;
    while count < 1000 {
        let message = reader
            .next(SOON)
            .await
            .expect("the reading stream keeps up");
        assert_eq!(message.id, Some(count + 1));
        count += 1;
    }
}

async fn stream_requests_are_validated(app: TestApp) {
    let response = app
        .client
        .get(app.url("/sessions/none/events/stream"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let (status, body) = parts(response).await;
    assert_error(status, &body, 404, "session_not_found");
    app.create_session("l5").await;
    for (header, query, field) in [
        (Some("x"), "", "Last-Event-ID"),
        (Some("-1"), "", "Last-Event-ID"),
        (Some("+1"), "", "Last-Event-ID"),
        (None, "?afterSeq=abc", "afterSeq"),
        (Some("1"), "?afterSeq=abc", "afterSeq"),
        (None, "?limit=5", "limit"),
    ] {
        let mut request = app
            .client
            .get(app.url(&format!("/sessions/l5/events/stream{query}")))
            .header("accept", "text/event-stream");
        if let Some(h) = header {
            request = request.header("last-event-id", h);
        }
        let (status, body) = parts(request.send().await.unwrap()).await;
        let details = assert_error(status, &body, 400, "validation_failed");
        assert_eq!(details["field"], field);
    }
    let twice = app
        .client
        .get(app.url("/sessions/l5/events/stream"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "1")
        .header("last-event-id", "2");
    let (status, body) = parts(twice.send().await.unwrap()).await;
    let details = assert_error(status, &body, 400, "validation_failed");
    assert_eq!(details["field"], "Last-Event-ID");
    // Asking for JSON reads the event whose id is "stream".
    let (status, body) = parts(
        app.client
            .get(app.url("/sessions/l5/events/stream"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, 404, "event_not_found");
    app.append("l5", json!({"eventId": "stream", "type": "system"}))
        .await;
    let (status, body) = parts(
        app.client
            .get(app.url("/sessions/l5/events/stream"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["eventId"], "stream");
    // Media types are matched without regard to case, and q=0 refuses one.
    for accept in [
        "Application/JSON",
        "application/json, text/event-stream;q=0",
        "text/html, application/json;q=0.5",
    ] {
        let response = app.client.get(app.url("/sessions/l5/events/stream"));
        let (status, body) = parts(response.header("accept", accept).send().await.unwrap()).await;
        assert_eq!(
            (status, &body["eventId"]),
            (StatusCode::OK, &json!("stream")),
            "{accept}"
        );
    }
    for accept in [
        "application/json;q=0",
        "application/json, Text/Event-Stream",
        "application/jsonl",
    ] {
        let response = app.client.get(app.url("/sessions/l5/events/stream"));
        let response = response.header("accept", accept).send().await.unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{accept}: {content_type}"
        );
    }
}

mod memory_only {
    use super::*;

    async fn app_with(adjust: impl FnOnce(&mut conversation_sessions::Config)) -> TestApp {
        spawn_app_with(Backend::Memory, adjust).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_streams_get_heartbeat_comments() {
        let app = app_with(|c| c.sse_heartbeat = Duration::from_millis(300)).await;
        app.create_session("h").await;
        let mut stream = SseStream::open(&app, "/sessions/h/events/stream", None).await;
        assert!(stream.next(Duration::from_millis(1500)).await.is_none());
        assert!(stream.comments >= 2, "{} heartbeats", stream.comments);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_past_the_bound_get_503_and_a_disconnect_frees_a_slot() {
        let app = app_with(|c| c.sse_max_streams = 2).await;
        app.create_session("m").await;
        let first = SseStream::open(&app, "/sessions/m/events/stream", None).await;
        let _second = SseStream::open(&app, "/sessions/m/events/stream", None).await;
        let third = app
            .client
            .get(app.url("/sessions/m/events/stream"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let (status, body) = parts(third).await;
        assert_error(status, &body, 503, "unavailable");
        drop(first);
        let deadline = Instant::now() + SOON;
        loop {
            let retry = app
                .client
                .get(app.url("/sessions/m/events/stream"))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap();
            if retry.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "the slot was never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

mod cross_instance {
    mod mongo {
        use super::super::*;

        /// Two instances on one database: a stream on A sees an event posted to B.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cross_instance_delivery_takes_under_a_second() {
            let shared = fresh_mongo_config();
            let a = spawn_app_with(Backend::Mongo, |c| c.mongo = Some(shared.clone())).await;
            let b = spawn_app_with(Backend::Mongo, |c| c.mongo = Some(shared.clone())).await;
            a.create_session("x").await;
            let mut stream = SseStream::open(&a, "/sessions/x/events/stream", None).await;
            // Let instance A's change streams open before timing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 0..5 {
                let posted_at = Instant::now();
                let event = b
                    .append("x", json!({"eventId": format!("e{i}"), "type": "system"}))
                    .await;
                let message = stream.next(SOON).await.expect("delivered across instances");
                let delay = posted_at.elapsed();
                assert_eq!(message.data, event);
                assert!(delay < Duration::from_secs(1), "took {delay:?}");
            }
            let (_, closed) = b.complete("x").await;
            let end = stream
                .next(SOON)
                .await
                .expect("the close crosses instances too");
            assert_eq!((end.event.as_str(), &end.data), ("session.closed", &closed));
            // So does an erasure: the stream on A ends.
            a.create_session("y").await;
            let mut erased = SseStream::open(&a, "/sessions/y/events/stream", None).await;
            let deleted = b.client.delete(b.url("/sessions/y")).send().await.unwrap();
            assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
            assert!(
                erased.ended(SOON).await,
                "the erasure did not reach instance A"
            );
        }
    }
}

mod standalone {
    mod mongo {
        use super::super::*;
        use crate::outage::OwnServer;

        /// On a standalone server, which offers no change streams, streams poll the store
        /// every 500 ms: an event posted through another instance still arrives within two
        /// seconds (a tick, plus room for a loaded machine).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn without_change_streams_delivery_across_instances_polls() {
            let server = OwnServer::start_with(&["--standalone"]);
            let config = conversation_sessions::store::mongo::MongoConfig {
                db_name: Some("standalone".to_owned()),
                // A standalone server has no replica set, so no majority to wait for.
                write_acknowledgment:
                    conversation_sessions::store::mongo::WriteAcknowledgment::Nodes(1),
                retry_writes: false,
                ..conversation_sessions::store::mongo::MongoConfig::new(server.uri.clone())
            };
            let a = spawn_app_with(Backend::Mongo, |c| c.mongo = Some(config.clone())).await;
            let b = spawn_app_with(Backend::Mongo, |c| c.mongo = Some(config.clone())).await;
            a.create_session("s").await;
            let mut stream = SseStream::open(&a, "/sessions/s/events/stream", None).await;
            for i in 0..3 {
                let posted_at = Instant::now();
                let event = b
                    .append("s", json!({"eventId": format!("e{i}"), "type": "system"}))
                    .await;
                let message = stream.next(SOON).await.expect("delivered by polling");
                assert_eq!(message.data, event);
                assert!(
                    posted_at.elapsed() < Duration::from_secs(2),
                    "took {:?}",
                    posted_at.elapsed()
                );
            }
            let metrics = a
                .client
                .get(a.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                metrics.contains("live_change_streams_active 0"),
                "{metrics}"
            );
            b.complete("s").await;
            let end = stream
                .next(SOON)
                .await
                .expect("the close arrives by polling too");
            assert_eq!(end.event, "session.closed");
        }
    }
}
