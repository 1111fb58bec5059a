//! Faults under load: the database stops while clients append, and the service is killed
//! with SIGKILL. Clients retry whatever failed with the same eventIds; afterwards every
//! event that got a 2xx is stored, and every event is stored exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conversation_sessions::store::mongo::MongoConfig;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend};
use crate::outage::OwnServer;
use crate::process::Service;

const CLIENTS: usize = 8;

/// What each eventId got: `true` once a 2xx came back.
type Outcomes = Arc<Mutex<HashMap<String, bool>>>;

/// Clients that append new events to `session` until `until`, recording every outcome.
fn load(
    base: String,
    session: &'static str,
    until: Instant,
    outcomes: Outcomes,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|client| {
            let (base, outcomes) = (base.clone(), Arc::clone(&outcomes));
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0;
                while Instant::now() < until {
                    let id = format!("c{client}-{n}");
                    n += 1;
                    let body = json!({"eventId": id, "type": "system", "payload": {"n": n}});
                    let sent = http
                        .post(format!("{base}/sessions/{session}/events"))
                        .json(&body)
                        .send()
                        .await;
                    let acked = sent.is_ok_and(|r| r.status().is_success());
                    outcomes.lock().unwrap().insert(id, acked);
                    if !acked {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// Sends every event again: one that got a 2xx must come back as a replay (200), since it
/// is stored; one that did not is sent until it gets a 2xx. Then checks the stored list.
async fn settle(base: &str, session: &str, outcomes: &Outcomes) -> (usize, usize) {
    let http = reqwest::Client::new();
    let snapshot: Vec<(String, bool)> = outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let retried = snapshot.iter().filter(|(_, acked)| !acked).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, acked) in &snapshot {
        let n: u64 = id.rsplit('-').next().unwrap().parse::<u64>().unwrap() + 1;
        let body = json!({"eventId": id, "type": "system", "payload": {"n": n}});
        loop {
            let sent = http
                .post(format!("{base}/sessions/{session}/events"))
                .json(&body)
                .send()
                .await;
            match sent.map(|r| r.status()) {
                Ok(s) if s.is_success() => {
                    assert!(
                        !acked || s == 200,
                        "{id} was acknowledged, yet stored anew: {s}"
                    );
                    break;
                }
                Ok(s) => assert!(s.as_u16() == 503, "{id}: {s}"),
                Err(_) => {}
            }
            assert!(Instant::now() < deadline, "{id} never went through");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut stored: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/sessions/{session}/events?limit=1000&cursor={c}"),
            None => format!("{base}/sessions/{session}/events?limit=1000"),
        };
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        stored.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let ids: HashSet<&str> = stored
        .iter()
        .map(|e| e["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), stored.len(), "an event is stored twice");
    let attempted: HashSet<&str> = snapshot.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, attempted, "stored events differ from the ones sent");
    (snapshot.len(), retried)
}

mod mongo {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_under_load_loses_and_duplicates_nothing() {
        let mut server = OwnServer::start();
        let uri = server.uri.clone();
        let app = spawn_app_with(Backend::Mongo, |c| {
            c.mongo = Some(MongoConfig {
                db_name: Some("faults".to_owned()),
                timeout: Duration::from_millis(500),
                ..MongoConfig::new(uri)
            });
        })
        .await;
        app.create_session("load").await;
        let outcomes = Outcomes::default();
        let until = Instant::now() + Duration::from_secs(4);
        let clients = load(app.address.clone(), "load", until, Arc::clone(&outcomes));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A clean stop: killed with SIGKILL, the test database loses its last acknowledged
        // writes (see outage.rs), which is its fault, not the service's.
        server.stop("TERM");
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.restart();
        for c in clients {
            c.await.unwrap();
        }
        let (sent, retried) = settle(&app.address, "load", &outcomes).await;
        println!(
            "database outage under load: {sent} events sent, {retried} retried, each stored once"
        );
        assert!(retried > 0, "the outage refused nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killing_the_service_under_load_loses_and_duplicates_nothing() {
        let server = OwnServer::start();
        let env = [("DB_URI", server.uri.as_str()), ("DB_NAME", "killed")];
        let first = Service::start(&env);
        let http = reqwest::Client::new();
        let created = http
            .post(format!("{}/sessions", first.address))
            .json(&json!({"sessionId": "load"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let outcomes = Outcomes::default();
        let until = Instant::now() + Duration::from_secs(2);
        let clients = load(first.address.clone(), "load", until, Arc::clone(&outcomes));
        tokio::time::sleep(Duration::from_secs(1)).await;
        first.signal("KILL");
        for c in clients {
            c.await.unwrap();
        }
        drop(first);
        let second = Service::start(&env);
        let (sent, retried) = settle(&second.address, "load", &outcomes).await;
        println!(
            "service killed under load: {sent} events sent, {retried} retried, each stored once"
        );
        assert!(retried > 0, "the kill refused nothing");
        second.signal("TERM");
    }
}
