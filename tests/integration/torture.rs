//! Concurrency torture: many clients create, append (with overlapping and conflicting
//! eventIds), page and complete a few hot sessions at once; then every invariant is checked.
//!
//! `TORTURE_SECS` sets how long it runs (default 5; the reliability suite runs it for 20).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{on_both_stores, TestApp};

on_both_stores!(invariants_hold_under_concurrent_creates_appends_pages_and_completes);

const SESSIONS: usize = 3;
const WORKERS: usize = 16;
const EVENT_IDS: u64 = 300;

#[derive(Default)]
struct Log {
    counts: BTreeMap<&'static str, u64>,
    /// (session, eventId) -> the event a 201 returned.
    created: HashMap<(String, String), Value>,
    /// Every 200 replay: (session, eventId, the event returned).
    replays: Vec<(String, String, Value)>,
    /// Every 409 event_conflict: (session, eventId, payload sent, stored event returned).
    conflicts: Vec<(String, String, Value, Value)>,
    violations: Vec<String>,
}

impl Log {
    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }
}

fn payload(event: u64, conflicting: bool) -> Value {
    if conflicting {
        json!({"n": event, "variant": "other"})
    } else {
        json!({"n": event, "text": "canonical"})
    }
}

/// A small deterministic generator, so that no extra crate is needed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `close_from`: completes race the appends only in the run's last quarter, so that the
/// sessions take events for most of it.
async fn worker(
    app: Arc<TestApp>,
    log: Arc<Mutex<Log>>,
    seed: u64,
    close_from: Instant,
    until: Instant,
) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
    while Instant::now() < until {
        let session = format!("hot-{}", rng.below(SESSIONS as u64));
        match rng.below(100) {
            0..=9 => {
                let (status, _) = app.post("/sessions", &json!({"sessionId": session})).await;
                let mut log = log.lock().unwrap();
                log.count("create");
                if !matches!(status, StatusCode::CREATED | StatusCode::OK) {
                    log.violations.push(format!("create {session}: {status}"));
                }
            }
            10..=84 => {
                let event = rng.below(EVENT_IDS);
                let conflicting = rng.below(10) == 0;
                let sent = payload(event, conflicting);
                let body =
                    json!({"eventId": format!("e{event}"), "type": "system", "payload": sent});
                let (status, reply) = app
                    .post(&format!("/sessions/{session}/events"), &body)
                    .await;
                let key = (session.clone(), format!("e{event}"));
                let mut log = log.lock().unwrap();
                log.count("append");
                match (status, reply["error"]["code"].as_str()) {
                    (StatusCode::CREATED, _) => {
                        log.count("append 201");
                        if let Some(previous) = log.created.insert(key.clone(), reply) {
                            log.violations
                                .push(format!("two 201s for {key:?}: {previous}"));
                        }
                    }
                    (StatusCode::OK, _) => {
                        log.count("append 200 replay");
                        log.replays.push((key.0, key.1, reply));
                    }
                    (StatusCode::CONFLICT, Some("event_conflict")) => {
                        log.count("append 409 conflict");
                        let stored = reply["error"]["details"]["event"].clone();
                        log.conflicts.push((key.0, key.1, sent, stored));
                    }
                    (StatusCode::CONFLICT, Some("session_closed")) => {
                        log.count("append 409 closed")
                    }
                    (StatusCode::NOT_FOUND, Some("session_not_found")) => log.count("append 404"),
                    _ => log
                        .violations
                        .push(format!("append {key:?}: {status} {reply}")),
                }
            }
            85..=99 if Instant::now() < close_from => {
                // Every event acknowledged before the walk starts must be in it.
                let acked: Vec<String> = log
                    .lock()
                    .unwrap()
                    .created
                    .keys()
                    .filter(|(s, _)| *s == session)
                    .map(|(_, id)| id.clone())
                    .collect();
                let walked = walk(&app, &session).await;
                let mut log = log.lock().unwrap();
                log.count("page walk");
                match walked {
                    Ok(events) => {
                        let ids: HashSet<&str> = events
                            .iter()
                            .filter_map(|e| e["eventId"].as_str())
                            .collect();
                        if ids.len() != events.len() {
                            log.violations
                                .push(format!("walk of {session} repeated an event"));
                        }
                        let missed = acked.iter().filter(|id| !ids.contains(id.as_str()));
                        if let Some(id) = missed.clone().next() {
                            log.violations.push(format!(
                                "walk of {session} missed {} acknowledged events, {id} among them",
                                missed.count()
                            ));
                        }
                        let ordered = events.windows(2).all(|w| {
                            (w[0]["timestamp"].as_str(), w[0]["seq"].as_i64())
                                < (w[1]["timestamp"].as_str(), w[1]["seq"].as_i64())
                        });
                        if !ordered {
                            log.violations
                                .push(format!("walk of {session} out of order"));
                        }
                    }
                    Err(e) => log.violations.push(e),
                }
            }
            _ => {
                let (status, reply) = app.complete(&session).await;
                let mut log = log.lock().unwrap();
                log.count("complete");
                let fine = status == StatusCode::OK
                    || (status == StatusCode::NOT_FOUND
                        && reply["error"]["code"] == "session_not_found");
                if !fine {
                    log.violations
                        .push(format!("complete {session}: {status} {reply}"));
                }
            }
        }
    }
}

/// A cursor walk that reports failures instead of panicking inside a worker.
async fn walk(app: &TestApp, session: &str) -> Result<Vec<Value>, String> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/sessions/{session}/events?limit=37&cursor={c}"),
            None => format!("/sessions/{session}/events?limit=37"),
        };
        let (status, page) = app.get(&path).await;
        if status == StatusCode::NOT_FOUND {
            return Ok(events);
        }
        if status != StatusCode::OK {
            return Err(format!("page of {session}: {status} {page}"));
        }
        events.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(events),
        }
    }
}

async fn invariants_hold_under_concurrent_creates_appends_pages_and_completes(app: TestApp) {
    let seconds: u64 = std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let app = Arc::new(app);
    for s in 0..SESSIONS {
        app.create_session(&format!("hot-{s}")).await;
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..WORKERS as u64)
        .map(|seed| {
            let close_from = until - Duration::from_secs(seconds) / 4;
            tokio::spawn(worker(
                Arc::clone(&app),
                Arc::clone(&log),
                seed,
                close_from,
                until,
            ))
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut violations = log.violations.clone();

    let mut stored: HashMap<(String, String), Value> = HashMap::new();
    for s in 0..SESSIONS {
        let session = format!("hot-{s}");
        let (_, state) = app.get(&format!("/sessions/{session}")).await;
        let events = walk(&app, &session).await.unwrap();
        let by_seq = crate::helpers::walk_seq(&app, &session).await;
        if !by_seq
            .windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
        {
            violations.push(format!("{session}: seq not strictly increasing"));
        }
        if by_seq.len() != events.len() {
            violations.push(format!("{session}: seq and time listings differ in size"));
        }
        let ended = state["endedAt"].as_str().map(str::to_owned);
        for event in events {
            let key = (
                session.clone(),
                event["eventId"].as_str().unwrap().to_owned(),
            );
            if let (Some(end), Some(received)) = (&ended, event["receivedAt"].as_str()) {
                if received > end.as_str() {
                    violations.push(format!("{key:?} received {received} after the end {end}"));
                }
            }
            if stored.insert(key.clone(), event).is_some() {
                violations.push(format!("{key:?} stored twice"));
            }
        }
    }
    for (key, event) in &log.created {
        if stored.get(key) != Some(event) {
            violations.push(format!("201 for {key:?} is not what is stored"));
        }
    }
    if stored.len() != log.created.len() {
        violations.push(format!(
            "{} stored, {} acknowledged with 201",
            stored.len(),
            log.created.len()
        ));
    }
    for (session, event, reply) in &log.replays {
        if stored.get(&(session.clone(), event.clone())) != Some(reply) {
            violations.push(format!(
                "replay of {session}/{event} answered {reply}, not the stored event"
            ));
        }
    }
    for (session, event, sent, stored_reply) in &log.conflicts {
        let stored_now = stored.get(&(session.clone(), event.clone()));
        if stored_now != Some(stored_reply) || stored_reply["payload"] == *sent {
            violations.push(format!(
                "conflict on {session}/{event} was not a real conflict"
            ));
        }
    }
    println!(
        "torture ({seconds} s, {WORKERS} clients, {SESSIONS} sessions): {:?}",
        log.counts
    );
    println!("stored events: {}", stored.len());
    assert!(
        violations.is_empty(),
        "{} violations: {:#?}",
        violations.len(),
        &violations[..violations.len().min(20)]
    );
    assert!(
        log.counts.get("append 201").copied().unwrap_or(0) > 0,
        "nothing was stored"
    );
}
