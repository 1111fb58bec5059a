//! Baselines and probes for `bench/run.py`; not part of the service.
//!
//! - `append|replay|create|page URI DB CONNECTIONS SECONDS MAX_TIME_MS`: the raw driver doing
//!   exactly the database work of the service's append, replay, create or first page, with
//!   the same documents and the same `maxTimeMS`.
//! - `insert-many URI DB CONNECTIONS SECONDS`: raw `insert_many` of 100 events per call.
//! - `echo PORT`: a minimal axum server that parses and returns a JSON body.
//! - `tail URL STREAMS SECONDS RATE`: opens STREAMS live streams on one session, posts RATE
//!   events a second, and measures the delay from post to delivery on every stream.
//!
//! Each measuring mode prints one JSON line of results.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conversation_sessions::store::mongo::{MongoConfig, MongoStore};
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::options::{CollectionOptions, ReadConcern, ReturnDocument};
use mongodb::Collection;
use serde_json::{json, Value};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match arg(0).as_str() {
        "append" | "replay" | "create" | "page" | "insert-many" => {
            let load = Load {
                uri: arg(1),
                db: arg(2),
                connections: num(3),
                seconds: num(4),
                max_time: Duration::from_millis(num(5)),
            };
            match arg(0).as_str() {
                "append" => append(load).await,
                "replay" => replay(load).await,
                "create" => create(load).await,
                "page" => page(load).await,
                _ => insert_many(load).await,
            }
        }
        "echo" => echo(num(1) as u16).await,
        "tail" => tail(&arg(1), num(2), num(3), num(4)).await,
        _ => Err("usage: baseline append|replay|create|page|insert-many|echo|tail ...".into()),
    }
}

/// A database baseline's arguments. `max_time` is the service's `DB_TIMEOUT_MS`, which it
/// sends as `maxTimeMS`.
struct Load {
    uri: String,
    db: String,
    connections: u64,
    seconds: u64,
    max_time: Duration,
}

/// Latencies in microseconds, summarised.
fn report(
    name: &str,
    ops: u64,
    units_per_op: u64,
    elapsed: Duration,
    mut micros: Vec<u32>,
    errors: u64,
) {
    micros.sort_unstable();
    let pct = |p: f64| {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        f64::from(micros[i]) / 1000.0
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "{}",
        json!({
            "baseline": name, "ops": ops, "seconds": secs, "ops_per_sec": ops as f64 / secs,
            "units_per_sec": (ops * units_per_op) as f64 / secs,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999), "errors": errors,
        })
    );
}

async fn collections(uri: &str, db: &str) -> Result<(Collection<Document>, Collection<Document>)> {
    let database = database(uri, db).await?;
    Ok((
        database.collection("sessions"),
        database.collection("events"),
    ))
}

/// The database, with the service's indexes created.
async fn database(uri: &str, db: &str) -> Result<mongodb::Database> {
    // The service's own indexes, so that the baseline pays for the same index writes.
    MongoStore::connect(&MongoConfig {
        db_name: Some(db.to_owned()),
        timeout: Duration::from_secs(10),
        ..MongoConfig::new(uri)
    })
    .await?;
    let client = mongodb::Client::with_uri_str(uri).await?;
    Ok(client.database(db))
}

fn payload(i: u64) -> Document {
    doc! {"text": format!("caller utterance number {i} with some words to make it realistic"),
    "confidence": 0.93, "speaker": "caller", "lang": "en-US", "tokens": 17_i64,
    "channel": "inbound", "asr": "engine-a"}
}

fn event_doc(session: &str, event_id: &str, seq: i64, now: DateTime, i: u64) -> Document {
    doc! {"sessionId": session, "eventId": event_id, "type": "user_speech", "payload": payload(i),
    "timestamp": now, "seq": seq, "receivedAt": now}
}

/// Runs `op(i)` for i = 0, 1, 2, ... from the load's connections for its seconds, and
/// reports its rate and latencies; `op` tells whether the operation succeeded.
async fn drive<F, Fut>(name: &str, units_per_op: u64, load: &Load, op: F) -> Result<()>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(load.seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..load.connections)
        .map(|_| {
            let (op, counter) = (op.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let (mut micros, mut errors) = (Vec::new(), 0_u64);
                while Instant::now() < deadline {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    if op(i).await {
                        micros.push(t0.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
                (micros, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (micros, e) = task.await?;
        all.extend(micros);
        errors += e;
    }
    let ops = all.len() as u64;
    report(name, ops, units_per_op, started.elapsed(), all, errors);
    Ok(())
}

/// Inserts open sessions `{prefix}0` .. `{prefix}{count - 1}`, as the service stores them.
async fn open_sessions(sessions: &Collection<Document>, prefix: &str, count: u64) -> Result<()> {
    for s in 0..count {
        let now = DateTime::now();
        sessions
            .insert_one(doc! {"_id": format!("{prefix}{s}"), "status": "initiated", "language": Bson::Null,
                "metadata": {}, "startedAt": now, "updatedAt": now, "lastSeq": 0_i64, "createToken": "t"})
            .await?;
    }
    Ok(())
}

/// The service's seq reservation: `findOneAndUpdate` of the open session.
async fn reserve(
    sessions: &Collection<Document>,
    session: &str,
    now: DateTime,
    max_time: Duration,
) -> Option<i64> {
    sessions
        .find_one_and_update(
            doc! {"_id": session, "status": {"$in": ["initiated", "active"]}, "erasing": {"$ne": true}},
            doc! {"$inc": {"lastSeq": 1_i64}, "$set": {"status": "active"}, "$max": {"updatedAt": now}},
        )
        .return_document(ReturnDocument::After)
        .projection(doc! {"_id": 0, "lastSeq": 1, "updatedAt": 1})
        .max_time(max_time)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.get_i64("lastSeq").ok())
}

/// The raw driver doing exactly the database work of the service's append: one
/// `findOneAndUpdate` of the session, one `insert` of the event, with the same documents.
async fn append(load: Load) -> Result<()> {
    let (sessions, events) = collections(&load.uri, &load.db).await?;
    open_sessions(&sessions, "base-", 100).await?;
    let max_time = load.max_time;
    drive("driver_append", 1, &load, move |i| {
        let (sessions, events) = (sessions.clone(), events.clone());
        async move {
            let session = format!("base-{}", i % 100);
            let now = DateTime::now();
            let Some(seq) = reserve(&sessions, &session, now, max_time).await else {
                return false;
            };
            // The service writes one event as an unordered bulk insert of one.
            events
                .insert_many([event_doc(&session, &format!("e{i}"), seq, now, i)])
                .ordered(false)
                .await
                .is_ok()
        }
    })
    .await
}

/// The service's replay: the reservation, the insert that the unique index refuses, and the
/// read of the stored event with read concern `majority`.
async fn replay(load: Load) -> Result<()> {
    let database = database(&load.uri, &load.db).await?;
    let (sessions, events) = (
        database.collection("sessions"),
        database.collection("events"),
    );
    let durable = database.collection_with_options::<Document>(
        "events",
        CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .build(),
    );
    open_sessions(&sessions, "replay-", 1).await?;
    events
        .insert_one(event_doc("replay-0", "replayed", 1, DateTime::now(), 0))
        .await?;
    let max_time = load.max_time;
    drive("driver_replay", 1, &load, move |_| {
        let (sessions, events, durable) = (sessions.clone(), events.clone(), durable.clone());
        async move {
            let now = DateTime::now();
            let Some(seq) = reserve(&sessions, "replay-0", now, max_time).await else {
                return false;
            };
            let refused = events
                .insert_many([event_doc("replay-0", "replayed", seq, now, 0)])
                .ordered(false)
                .await;
            let duplicate = matches!(&refused, Err(e) if matches!(&*e.kind,
                ErrorKind::InsertMany(InsertManyError { write_errors: Some(w), .. })
                    if w.iter().all(|w| w.code == 11000)));
            let stored = match durable
                .find(doc! {"sessionId": "replay-0", "eventId": {"$in": ["replayed"]}})
                .projection(doc! {"_id": 0})
                .limit(1)
                .batch_size(1)
                .max_time(max_time)
                .await
            {
                Ok(cursor) => cursor.try_collect::<Vec<Document>>().await,
                Err(e) => Err(e),
            };
            duplicate && matches!(stored, Ok(found) if found.len() == 1)
        }
    })
    .await
}

/// The service's create: one upsert of the session by its id, returning the document.
async fn create(load: Load) -> Result<()> {
    let (sessions, _) = collections(&load.uri, &load.db).await?;
    let max_time = load.max_time;
    drive("driver_create", 1, &load, move |i| {
        let sessions = sessions.clone();
        async move {
            let now = DateTime::now();
            sessions
                .find_one_and_update(
                    doc! {"_id": format!("c-{i}")},
                    doc! {"$setOnInsert": {"status": "initiated", "language": "en-US",
                        "metadata": {"caller": "+15550100", "campaign": "renewals"},
                        "startedAt": now, "updatedAt": now, "lastSeq": 0_i64, "createToken": format!("t{i}")}},
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .max_time(max_time)
                .await
                .is_ok_and(|d| d.is_some())
        }
    })
    .await
}

/// The service's first page of 50 from a 1,000-event session: one `find` sorted by the
/// session's timeline index, 51 documents in the first batch.
async fn page(load: Load) -> Result<()> {
    let (_, events) = collections(&load.uri, &load.db).await?;
    let now = DateTime::now();
    let docs: Vec<Document> = (0..1000)
        .map(|i| event_doc("page-0", &format!("f{i}"), i as i64 + 1, now, i))
        .collect();
    events.insert_many(docs).await?;
    let max_time = load.max_time;
    drive("driver_page", 1, &load, move |_| {
        let events = events.clone();
        async move {
            let found = events
                .find(doc! {"sessionId": "page-0"})
                .sort(doc! {"timestamp": 1, "seq": 1})
                .projection(doc! {"_id": 0})
                .limit(51)
                .batch_size(51)
                .max_time(max_time)
                .await;
            match found {
                Ok(cursor) => cursor
                    .try_collect::<Vec<Document>>()
                    .await
                    .is_ok_and(|d| d.len() == 51),
                Err(_) => false,
            }
        }
    })
    .await
}

/// Raw `insert_many` of 100 events per call.
async fn insert_many(load: Load) -> Result<()> {
    let (_, events) = collections(&load.uri, &load.db).await?;
    drive("driver_insert_many_100", 100, &load, move |batch| {
        let events = events.clone();
        async move {
            let now = DateTime::now();
            let docs: Vec<Document> = (0..100)
                .map(|k| {
                    let i = batch * 100 + k;
                    event_doc(
                        &format!("many-{}", batch % 100),
                        &format!("e{i}"),
                        i as i64 + 1,
                        now,
                        i,
                    )
                })
                .collect();
            events.insert_many(docs).await.is_ok()
        }
    })
    .await
}

async fn echo(port: u16) -> Result<()> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/{*path}",
        post(|axum::Json(body): axum::Json<Value>| async move {
            (axum::http::StatusCode::CREATED, axum::Json(body))
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn tail(url: &str, streams: u64, seconds: u64, rate: u64) -> Result<()> {
    let client = reqwest::Client::new();
    let session = format!("tail-{}", micros_now());
    client
        .post(format!("{url}/sessions"))
        .json(&json!({"sessionId": session}))
        .send()
        .await?;
    let delays = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..streams {
        let mut response = client
            .get(format!("{url}/sessions/{session}/events/stream"))
            .header("accept", "text/event-stream")
            .send()
            .await?;
        let (delays, received) = (Arc::clone(&delays), Arc::clone(&received));
        readers.push(tokio::spawn(async move {
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if let Some(sent) = event["payload"]["sentAt"].as_u64() {
                        let delay = micros_now().saturating_sub(sent);
                        delays.lock().unwrap().push(delay as u32);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    if frame.contains("event: session.closed") {
                        return;
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut posted = 0_u64;
    let mut errors = 0_u64;
    let mut tick = tokio::time::interval(interval);
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let body = json!({"eventId": format!("t{posted}"), "type": "bot_speech",
                          "payload": {"sentAt": micros_now(), "text": "x".repeat(150)}});
        match client
            .post(format!("{url}/sessions/{session}/events"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => posted += 1,
            _ => errors += 1,
        }
    }
    client
        .post(format!("{url}/sessions/{session}/complete"))
        .send()
        .await?;
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    }
    let micros = std::mem::take(&mut *delays.lock().unwrap());
    let expected = posted * streams;
    let got = received.load(Ordering::Relaxed);
    let mut sorted = micros;
    sorted.sort_unstable();
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .map_or(0.0, |v| f64::from(*v) / 1000.0)
    };
    println!(
        "{}",
        json!({"baseline": "tail", "streams": streams, "posted": posted, "expected_deliveries": expected,
               "deliveries": got, "missing": expected.saturating_sub(got), "errors": errors,
               "delay_p50_ms": pct(0.5), "delay_p99_ms": pct(0.99), "delay_max_ms": pct(1.0)})
    );
    Ok(())
}
