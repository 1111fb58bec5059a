//! Keyset pages use index bounds that let MongoDB stop after `limit + 1` keys.

use conversation_sessions::domain::{EventPosition, Order, SessionId, Timestamp};
use conversation_sessions::store::{EventFilter, EventPageQuery, MongoStore, PageStart};
use mongodb::bson::{Bson, Document};
use serde_json::json;

use crate::helpers::{fresh_mongo_config, spawn_app_with, Backend};

/// Every (indexName, bounds) in a plan, at any depth.
fn index_scans(plan: &Bson, found: &mut Vec<(String, Document)>) {
    match plan {
        Bson::Document(doc) => {
            if let (Ok(name), Ok(bounds)) =
                (doc.get_str("indexName"), doc.get_document("indexBounds"))
            {
                found.push((name.to_owned(), bounds.clone()));
            }
            doc.values().for_each(|v| index_scans(v, found));
        }
        Bson::Array(items) => items.iter().for_each(|v| index_scans(v, found)),
        _ => {}
    }
}

fn keys_examined(explain: &Document) -> i64 {
    let stats = explain
        .get_document("executionStats")
        .expect("executionStats");
    match stats.get("totalKeysExamined") {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        other => panic!("totalKeysExamined is {other:?}"),
    }
}

mod mongo {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyset_pages_scan_the_timeline_index_and_stop_after_the_page() {
        let config = fresh_mongo_config();
        let app = spawn_app_with(Backend::Mongo, |c| c.mongo = Some(config.clone())).await;
        app.create_session("big").await;
        for chunk in 0..6 {
            let events: Vec<_> = (0..500)
                .map(|i| {
                    let n = chunk * 500 + i;
                    // A third of the events share one timestamp.
                    let ts = if n % 3 == 0 { 0 } else { n };
                    json!({"eventId": format!("e{n}"), "type": "system",
                           "timestamp": format!("2026-11-26T08:{:02}:{:02}.000Z", ts / 60 % 60, ts % 60)})
                })
                .collect();
            let (status, _) = app
                .post("/sessions/big/events:batch", &json!({"events": events}))
                .await;
            assert_eq!(status, reqwest::StatusCode::OK);
        }
        let store = MongoStore::connect(&config).await.unwrap();
        let session = SessionId::parse("big").unwrap();
        let middle = EventPosition {
            timestamp: Timestamp::parse("t", "2026-11-26T08:00:00Z").unwrap(),
            seq: 1500,
        };
        let cases = [
            ("first page", Order::Asc, PageStart::First, true),
            ("after a seq", Order::Asc, PageStart::AfterSeq(1500), true),
            (
                "middle page, inside a run of equal timestamps",
                Order::Asc,
                PageStart::After(middle),
                false,
            ),
            (
                "middle page, descending",
                Order::Desc,
                PageStart::After(middle),
                false,
            ),
        ];
        for (what, order, start, single_range) in cases {
            let query = EventPageQuery {
                order,
                start,
                filter: EventFilter::default(),
                limit: 51,
            };
            let explain = store.explain_page(&session, &query).await.unwrap();
            let mut scans = Vec::new();
            let winning = explain
                .get_document("queryPlanner")
                .and_then(|p| p.get_document("winningPlan"))
                .expect("a winning plan");
            index_scans(&Bson::Document(winning.clone()), &mut scans);
            assert!(!scans.is_empty(), "{what}: no index scan in {explain}");
            for (index, bounds) in &scans {
                assert!(
                    index == "session_timeline" || index == "session_seq",
                    "{what}: {index}"
                );
                println!("{what}: {index} {bounds}");
            }
            let keys = keys_examined(&explain);
            println!("{what}: {keys} keys examined for a page of 50 (+1)");
            if single_range {
                assert!(keys <= 52, "{what}: {keys} keys examined");
                continue;
            }
            // A keyset page after a position: two exact ranges, merged in index order. Each
            // starts at the cursor: the later timestamps, and the same timestamp past its seq.
            assert_eq!(scans.len(), 2, "{what}: {scans:?}");
            let later = scans.iter().any(|(_, b)| {
                let ts = format!("{}", b.get("timestamp").unwrap());
                !ts.contains("MinKey")
                    && !ts.contains("MaxKey")
                    && !ts.starts_with("[\"[new Date(1795680000000), new Date(1795680000000)]")
            });
            let tied = scans.iter().any(|(_, b)| {
                let seq = format!("{}", b.get("seq").unwrap());
                seq.contains("1500") && !seq.contains("MinKey")
            });
            assert!(
                later && tied,
                "{what}: bounds do not start at the cursor: {scans:?}"
            );
        }
    }
}
