//! One contract, two stores: the same functions run against the in-memory store and MongoDB
//! so that the embedded store cannot drift from the real one.

use std::sync::Arc;

use conversation_sessions::domain::{
    Event, EventId, EventPosition, EventType, FinalStatus, JsonObject, Language, NewSession, Order,
    SessionId, SessionStatus, Timestamp,
};
use conversation_sessions::store::{
    CreateOutcome, EraseHold, EraseStart, EventFilter, EventPageQuery, EventRepository, Inserted,
    MongoStore, PageStart, SessionFilter, SessionPageQuery, SessionRepository, StoreError,
    ERASE_LEASE,
};
use serde_json::json;

use crate::helpers::fresh_mongo_config;

trait Store: SessionRepository + EventRepository {}
impl<T: SessionRepository + EventRepository> Store for T {}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new(conversation_sessions::store::MemoryStore::default())).await
                }
            )*
        }
        mod mongo {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::mongo_store().await).await
                }
            )*
        }
    };
}

contract!(
    create_stores_once_and_then_returns_the_stored_session,
    reserve_seq_counts_up_and_advances_the_clock_monotonically,
    reserve_seq_refuses_missing_and_closed_sessions,
    close_ends_at_or_after_every_reservation_and_only_once,
    insert_refuses_a_second_event_with_the_same_id,
    insert_tells_a_taken_seq_from_a_taken_event_id,
    last_seq_and_raise_seq_let_reservations_pass_stored_seqs,
    events_are_scoped_to_their_session,
    pages_order_by_timestamp_then_seq_in_both_directions,
    pages_apply_type_and_time_filters_with_cursors,
    after_seq_pages_follow_seq_order,
    sessions_list_by_start_time_with_filters,
    an_erasure_deletes_only_its_own_sessions_events,
    an_erasure_of_a_missing_id_spares_a_session_created_meanwhile,
    a_second_erasure_spares_a_session_created_after_the_first,
);

async fn mongo_store() -> Arc<MongoStore> {
    Arc::new(
        MongoStore::connect(&fresh_mongo_config())
            .await
            .expect("MongoDB is reachable at TEST_MONGO_URI"),
    )
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).unwrap()
}

fn new_session(id: &str, caller: &str) -> NewSession {
    NewSession {
        session_id: sid(id),
        language: None,
        metadata: JsonObject::parse("metadata", json!({"caller": caller}), 1024).unwrap(),
        status: SessionStatus::Initiated,
        started_at: None,
    }
}

/// The first page of sessions, unfiltered.
fn first_ten_sessions() -> SessionPageQuery {
    SessionPageQuery {
        filter: SessionFilter::default(),
        order: Order::Asc,
        after: None,
        limit: 10,
    }
}

fn event(session: &str, id: &str, millis: i64, seq: i64) -> Event {
    Event {
        session_id: sid(session),
        event_id: EventId::parse(id).unwrap(),
        event_type: EventType::parse("system").unwrap(),
        payload: JsonObject::parse("payload", json!({"id": id}), 1024).unwrap(),
        timestamp: Timestamp::from_millis(millis),
        seq,
        received_at: Timestamp::from_millis(millis),
    }
}

async fn create_stores_once_and_then_returns_the_stored_session(store: Arc<impl Store>) {
    let now = Timestamp::from_millis(1_000);
    let CreateOutcome::Created(created) = store.create(new_session("a", "x"), now).await.unwrap()
    else {
        panic!("first create must create");
    };
    assert_eq!(created.updated_at, now);
    let later = Timestamp::from_millis(2_000);
    match store
        .create(new_session("a", "other"), later)
        .await
        .unwrap()
    {
        CreateOutcome::Existing(stored) => assert_eq!(stored, created),
        CreateOutcome::Created(_) => panic!("second create must find the first"),
    }
    assert_eq!(
        SessionRepository::get(&*store, &sid("a")).await.unwrap(),
        Some(created)
    );
    assert_eq!(
        SessionRepository::get(&*store, &sid("b")).await.unwrap(),
        None
    );
}

async fn reserve_seq_counts_up_and_advances_the_clock_monotonically(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1_000))
        .await
        .unwrap();
    let first = store
        .reserve_seqs(&sid("a"), 1, Timestamp::from_millis(5_000))
        .await
        .unwrap()
        .unwrap();
    // An instance whose clock is behind cannot move the session's clock back.
    let second = store
        .reserve_seqs(&sid("a"), 1, Timestamp::from_millis(3_000))
        .await
        .unwrap()
        .unwrap();
    assert!(second.first_seq > first.first_seq);
    assert_eq!(first.received_at, Timestamp::from_millis(5_000));
    assert_eq!(second.received_at, Timestamp::from_millis(5_000));
    let session = SessionRepository::get(&*store, &sid("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.status, SessionStatus::Active);
}

async fn reserve_seq_refuses_missing_and_closed_sessions(store: Arc<impl Store>) {
    let now = Timestamp::from_millis(1_000);
    assert_eq!(
        store.reserve_seqs(&sid("none"), 1, now).await.unwrap(),
        None
    );
    store.create(new_session("a", "x"), now).await.unwrap();
    store
        .close(&sid("a"), FinalStatus::Failed, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.reserve_seqs(&sid("a"), 1, now).await.unwrap(), None);
}

async fn close_ends_at_or_after_every_reservation_and_only_once(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1_000))
        .await
        .unwrap();
    let slot = store
        .reserve_seqs(&sid("a"), 1, Timestamp::from_millis(9_000))
        .await
        .unwrap()
        .unwrap();
    let closed = store
        .close(
            &sid("a"),
            FinalStatus::Completed,
            Timestamp::from_millis(4_000),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.status, SessionStatus::Completed);
    let ended = closed.ended_at.unwrap();
    assert!(ended >= slot.received_at, "ended {ended:?} before {slot:?}");
    assert_eq!(closed.updated_at, ended);
    let again = store
        .close(
            &sid("a"),
            FinalStatus::Completed,
            Timestamp::from_millis(99_000),
        )
        .await;
    assert!(again.unwrap().is_none());
    let stored = SessionRepository::get(&*store, &sid("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, closed);
    assert!(store
        .close(&sid("none"), FinalStatus::Completed, ended)
        .await
        .unwrap()
        .is_none());
}

async fn insert_refuses_a_second_event_with_the_same_id(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    let original = event("a", "e1", 10, 1);
    store.insert(&original).await.unwrap();
    let clash = event("a", "e1", 20, 2);
    assert!(matches!(
        store.insert(&clash).await,
        Err(StoreError::Duplicate)
    ));
    let e1 = EventId::parse("e1").unwrap();
    let stored = EventRepository::get(&*store, &sid("a"), &e1).await.unwrap();
    assert_eq!(stored, Some(original));
}

/// An event that holds a seq the session hands out again (one stored after its session was
/// erased, under the same id) makes an insert at that seq fail as `SeqTaken`, storing nothing.
async fn insert_tells_a_taken_seq_from_a_taken_event_id(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    let left = event("a", "left", 10, 1);
    store.insert(&left).await.unwrap();
    assert!(matches!(
        store.insert(&event("a", "new", 10, 1)).await,
        Err(StoreError::SeqTaken)
    ));
    let outcomes = store
        .insert_many(&[
            event("a", "b1", 10, 1),
            event("a", "b2", 10, 2),
            event("a", "left", 10, 3),
            event("a", "b3", 10, 2),
        ])
        .await
        .unwrap();
    use Inserted::{EventIdTaken, SeqTaken, Stored};
    assert_eq!(outcomes, [SeqTaken, Stored, EventIdTaken, SeqTaken]);
    let all = EventPageQuery {
        order: Order::Asc,
        start: PageStart::First,
        filter: EventFilter::default(),
        limit: 10,
    };
    let page = store.page(&sid("a"), &all).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["left", "b2"]);
}

async fn next_seq(store: &impl Store, session: &str) -> i64 {
    let session = sid(session);
    let slot = store
        .reserve_seqs(&session, 1, Timestamp::from_millis(2))
        .await;
    slot.unwrap().unwrap().first_seq
}

async fn last_seq_and_raise_seq_let_reservations_pass_stored_seqs(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    assert_eq!(store.last_seq(&sid("a")).await.unwrap(), None);
    for (id, seq) in [("e3", 3), ("e7", 7), ("e5", 5)] {
        store.insert(&event("a", id, 10, seq)).await.unwrap();
    }
    assert_eq!(store.last_seq(&sid("a")).await.unwrap(), Some(7));
    assert_eq!(store.last_seq(&sid("b")).await.unwrap(), None);
    store.raise_seq(&sid("a"), 7).await.unwrap();
    assert_eq!(next_seq(&*store, "a").await, 8);
    // Never lowered; a missing session is left alone.
    store.raise_seq(&sid("a"), 4).await.unwrap();
    assert_eq!(next_seq(&*store, "a").await, 9);
    store.raise_seq(&sid("b"), 4).await.unwrap();
    assert!(SessionRepository::get(&*store, &sid("b"))
        .await
        .unwrap()
        .is_none());
}

async fn events_are_scoped_to_their_session(store: Arc<impl Store>) {
    for s in ["a", "b"] {
        store
            .create(new_session(s, "x"), Timestamp::from_millis(1))
            .await
            .unwrap();
    }
    store.insert(&event("a", "e1", 10, 1)).await.unwrap();
    store.insert(&event("b", "e1", 10, 1)).await.unwrap();
    let query = EventPageQuery {
        order: Order::Asc,
        start: PageStart::First,
        filter: EventFilter::default(),
        limit: 10,
    };
    let page = store.page(&sid("b"), &query).await.unwrap();
    assert_eq!(page, vec![event("b", "e1", 10, 1)]);
    assert!(store.page(&sid("c"), &query).await.unwrap().is_empty());
}

async fn pages_order_by_timestamp_then_seq_in_both_directions(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    // Inserted out of order; three share timestamp 20.
    let events = [
        event("a", "e5", 30, 5),
        event("a", "e2", 20, 2),
        event("a", "e1", 40, 1),
        event("a", "e4", 20, 4),
        event("a", "e3", 20, 3),
        event("a", "e6", 10, 6),
    ];
    for e in &events {
        store.insert(e).await.unwrap();
    }
    let ids = |page: Vec<Event>| -> Vec<String> {
        page.into_iter().map(|e| e.event_id.to_string()).collect()
    };
    let query = |order, start, limit| EventPageQuery {
        order,
        start,
        filter: EventFilter::default(),
        limit,
    };
    let all = store
        .page(&sid("a"), &query(Order::Asc, PageStart::First, 10))
        .await
        .unwrap();
    assert_eq!(ids(all), ["e6", "e2", "e3", "e4", "e5", "e1"]);
    let tie = EventPosition {
        timestamp: Timestamp::from_millis(20),
        seq: 3,
    };
    let after = store
        .page(&sid("a"), &query(Order::Asc, PageStart::After(tie), 2))
        .await;
    assert_eq!(ids(after.unwrap()), ["e4", "e5"]);
    let before = store
        .page(&sid("a"), &query(Order::Desc, PageStart::After(tie), 10))
        .await;
    assert_eq!(ids(before.unwrap()), ["e2", "e6"]);
    let desc = store
        .page(&sid("a"), &query(Order::Desc, PageStart::First, 3))
        .await;
    assert_eq!(ids(desc.unwrap()), ["e1", "e5", "e4"]);
    let offset = store
        .page(&sid("a"), &query(Order::Asc, PageStart::Offset(4), 10))
        .await;
    assert_eq!(ids(offset.unwrap()), ["e5", "e1"]);
    let offset_desc = store
        .page(&sid("a"), &query(Order::Desc, PageStart::Offset(5), 10))
        .await;
    assert_eq!(ids(offset_desc.unwrap()), ["e6"]);
}

fn typed_event(session: &str, id: &str, kind: &str, millis: i64, seq: i64) -> Event {
    Event {
        event_type: EventType::parse(kind).unwrap(),
        ..event(session, id, millis, seq)
    }
}

async fn pages_apply_type_and_time_filters_with_cursors(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    let kinds = ["user_speech", "bot_speech", "system"];
    for i in 0..30_i64 {
        let kind = kinds[(i % 3) as usize];
        store
            .insert(&typed_event(
                "a",
                &format!("e{i:02}"),
                kind,
                100 + i / 2,
                i + 1,
            ))
            .await
            .unwrap();
    }
    let filter = EventFilter {
        types: vec![
            EventType::parse("user_speech").unwrap(),
            EventType::parse("system").unwrap(),
        ],
        from: Some(Timestamp::from_millis(103)),
        to: Some(Timestamp::from_millis(110)),
    };
    let expected: Vec<i64> = (0..30_i64)
        .filter(|i| i % 3 != 1 && (103..110).contains(&(100 + i / 2)))
        .map(|i| i + 1)
        .collect();
    for order in [Order::Asc, Order::Desc] {
        let mut start = PageStart::First;
        let mut seen = Vec::new();
        loop {
            let query = EventPageQuery {
                order,
                start,
                filter: filter.clone(),
                limit: 2,
            };
            let page = store.page(&sid("a"), &query).await.unwrap();
            let Some(last) = page.last() else { break };
            start = PageStart::After(last.position());
            seen.extend(page.iter().map(|e| e.seq));
        }
        let mut want = expected.clone();
        if order == Order::Desc {
            want.reverse();
        }
        assert_eq!(seen, want, "{order:?}");
    }
    // A start beyond the time range narrows nothing and widens nothing. No page hands out
    // such a position, but a cursor can be made by hand.
    for (order, millis) in [(Order::Desc, 120), (Order::Asc, 50)] {
        let query = EventPageQuery {
            order,
            start: PageStart::After(EventPosition {
                timestamp: Timestamp::from_millis(millis),
                seq: 100,
            }),
            filter: filter.clone(),
            limit: 100,
        };
        let page = store.page(&sid("a"), &query).await.unwrap();
        let seen: Vec<i64> = page.iter().map(|e| e.seq).collect();
        let mut want = expected.clone();
        if order == Order::Desc {
            want.reverse();
        }
        assert_eq!(seen, want, "{order:?} after {millis}");
    }
}

async fn after_seq_pages_follow_seq_order(store: Arc<impl Store>) {
    store
        .create(new_session("a", "x"), Timestamp::from_millis(1))
        .await
        .unwrap();
    // Timestamps run against seq: seq order differs from timeline order.
    for seq in [3_i64, 1, 2, 5, 4] {
        store
            .insert(&event("a", &format!("e{seq}"), 100 - seq, seq))
            .await
            .unwrap();
    }
    let query = EventPageQuery {
        order: Order::Asc,
        start: PageStart::AfterSeq(2),
        filter: EventFilter::default(),
        limit: 10,
    };
    let seqs: Vec<i64> = store
        .page(&sid("a"), &query)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [3, 4, 5]);
}

async fn sessions_list_by_start_time_with_filters(store: Arc<impl Store>) {
    let mut created = Vec::new();
    for i in 0..12_i64 {
        let mut new = new_session(&format!("s{i:02}"), if i % 2 == 0 { "even" } else { "odd" });
        new.started_at = Some(Timestamp::from_millis(1_000 + i / 3));
        new.language = (i % 3 == 0).then(|| Language::parse("en-US").unwrap());
        store
            .create(new, Timestamp::from_millis(5_000))
            .await
            .unwrap();
        created.push(i);
    }
    store
        .close(
            &sid("s04"),
            FinalStatus::Failed,
            Timestamp::from_millis(6_000),
        )
        .await
        .unwrap();
    let walk = |filter: SessionFilter, order: Order| {
        let store = Arc::clone(&store);
        async move {
            let mut after = None;
            let mut ids = Vec::new();
            loop {
                let query = SessionPageQuery {
                    order,
                    filter: filter.clone(),
                    after,
                    limit: 5,
                };
                let page = store.list(&query).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some((last.started_at, last.session_id.clone()));
                ids.extend(page.iter().map(|s| s.session_id.to_string()));
            }
            ids
        }
    };
    let newest_first = walk(SessionFilter::default(), Order::Desc).await;
    let mut want: Vec<String> = (0..12).map(|i| format!("s{i:02}")).collect();
    want.reverse();
    assert_eq!(newest_first, want);
    let odd_english = SessionFilter {
        language: Some(Language::parse("en-US").unwrap()),
        metadata: vec![("caller".to_owned(), "odd".to_owned())],
        ..SessionFilter::default()
    };
    assert_eq!(walk(odd_english, Order::Asc).await, ["s03", "s09"]);
    let failed = SessionFilter {
        statuses: vec![SessionStatus::Failed],
        ..SessionFilter::default()
    };
    assert_eq!(walk(failed, Order::Desc).await, ["s04"]);
    let window = SessionFilter {
        started_after: Some(Timestamp::from_millis(1_001)),
        started_before: Some(Timestamp::from_millis(1_003)),
        statuses: vec![SessionStatus::Initiated, SessionStatus::Active],
        ..SessionFilter::default()
    };
    assert_eq!(
        walk(window.clone(), Order::Asc).await,
        ["s03", "s05", "s06", "s07", "s08"]
    );
    // A start past the window's end (made by hand: no page hands one out) does not widen it.
    let query = SessionPageQuery {
        order: Order::Desc,
        filter: window,
        after: Some((Timestamp::from_millis(2_000), sid("zz"))),
        limit: 10,
    };
    let ids: Vec<String> = store
        .list(&query)
        .await
        .unwrap()
        .iter()
        .map(|s| s.session_id.to_string())
        .collect();
    assert_eq!(ids, ["s08", "s07", "s06", "s05", "s03"]);
}

/// Between the start and the end of an erasure, the session reads as missing and takes
/// nothing; a create of its id either waits for the end (MongoDB: 503) or makes a new
/// session (memory: the whole erasure happened at once), whose events the erasure leaves.
async fn an_erasure_deletes_only_its_own_sessions_events(store: Arc<impl Store>) {
    let list = first_ten_sessions();
    let at = Timestamp::from_millis(1);
    store.create(new_session("a", "x"), at).await.unwrap();
    store.insert(&event("a", "old", 10, 1)).await.unwrap();
    let (existed, lease) = hold(&*store, "a").await;
    assert!(existed);
    assert!(!hold(&*store, "none").await.0);
    assert!(SessionRepository::get(&*store, &sid("a"))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .reserve_seqs(&sid("a"), 1, at)
        .await
        .unwrap()
        .is_none());
    let closed = store.close(&sid("a"), FinalStatus::Completed, at).await;
    assert!(closed.unwrap().is_none());
    assert!(store.list(&list).await.unwrap().is_empty());
    let recreated = match store.create(new_session("a", "y"), at).await {
        Ok(CreateOutcome::Created(_)) => {
            assert_eq!(next_seq(&*store, "a").await, 1);
            store.insert(&event("a", "new", 10, 1)).await.unwrap();
            true
        }
        Err(StoreError::Busy(_)) => false,
        other => panic!("a create during the erasure: {other:?}"),
    };
    store.delete_session_events(&sid("a")).await.unwrap();
    store.delete(&sid("a"), &lease).await.unwrap();
    let kept = EventRepository::get(&*store, &sid("a"), &EventId::parse("new").unwrap()).await;
    let gone = EventRepository::get(&*store, &sid("a"), &EventId::parse("old").unwrap()).await;
    assert!(gone.unwrap().is_none());
    if recreated {
        assert!(
            kept.unwrap().is_some(),
            "the new session's event was erased"
        );
        let session = SessionRepository::get(&*store, &sid("a")).await.unwrap();
        assert!(session.is_some(), "the new session was erased");
    } else {
        let again = store.create(new_session("a", "y"), at).await.unwrap();
        assert!(matches!(again, CreateOutcome::Created(_)), "{again:?}");
    }
}

/// A `DELETE` of an id with no session still deletes the id's events (those an append in
/// flight left behind an earlier erasure). A session created during it keeps its own: the
/// create waits for the end (MongoDB: 503), or the erasure held nothing (memory).
async fn an_erasure_of_a_missing_id_spares_a_session_created_meanwhile(store: Arc<impl Store>) {
    let at = Timestamp::from_millis(1);
    let (existed, lease) = hold(&*store, "m").await;
    assert!(!existed);
    // MongoDB: the first erasure holds the id. Memory: nothing is held (an empty lease).
    let second = store.begin_erase(&sid("m")).await.unwrap();
    let holds_nothing = matches!(&second, EraseStart::Holding(EraseHold { existed: false, lease, .. }) if lease.is_empty());
    assert!(second == EraseStart::Busy || holds_nothing, "{second:?}");
    assert!(SessionRepository::get(&*store, &sid("m"))
        .await
        .unwrap()
        .is_none());
    let everything = first_ten_sessions();
    assert!(store.list(&everything).await.unwrap().is_empty());
    let created = match store.create(new_session("m", "y"), at).await {
        Ok(CreateOutcome::Created(_)) => {
            store.insert(&event("m", "new", 10, 1)).await.unwrap();
            true
        }
        Err(StoreError::Busy(_)) => false,
        other => panic!("a create during the erasure: {other:?}"),
    };
    store.delete_session_events(&sid("m")).await.unwrap();
    store.delete(&sid("m"), &lease).await.unwrap();
    if created {
        let kept = EventRepository::get(&*store, &sid("m"), &EventId::parse("new").unwrap()).await;
        assert!(
            kept.unwrap().is_some(),
            "the new session's event was erased"
        );
    } else {
        let again = store.create(new_session("m", "y"), at).await.unwrap();
        assert!(matches!(again, CreateOutcome::Created(_)), "{again:?}");
    }
    let session = SessionRepository::get(&*store, &sid("m")).await.unwrap();
    assert!(session.is_some(), "the session created after the erasure");
}

/// Two erasures of one id at once (a duplicate `DELETE`): the second cannot run its
/// `deleteMany` after the first freed the id, where it would take the events of a session
/// created in between. MongoDB: the second finds the id busy. Memory: the first erased
/// everything at once, and the second has nothing of the new session to take.
async fn a_second_erasure_spares_a_session_created_after_the_first(store: Arc<impl Store>) {
    let at = Timestamp::from_millis(1);
    store.create(new_session("d", "x"), at).await.unwrap();
    store.insert(&event("d", "old", 10, 1)).await.unwrap();
    let (existed, first) = hold(&*store, "d").await;
    assert!(existed);
    let second = store.begin_erase(&sid("d")).await.unwrap();
    store.delete_session_events(&sid("d")).await.unwrap();
    store.delete(&sid("d"), &first).await.unwrap();
    let created = store.create(new_session("d", "y"), at).await.unwrap();
    assert!(matches!(created, CreateOutcome::Created(_)), "{created:?}");
    store.insert(&event("d", "new", 10, 1)).await.unwrap();
    // The second erasure, late, does what it was let do; the first's end, repeated, too.
    if let EraseStart::Holding(EraseHold { lease, .. }) = &second {
        store.delete_session_events(&sid("d")).await.unwrap();
        store.delete(&sid("d"), lease).await.unwrap();
    }
    store.delete(&sid("d"), &first).await.unwrap();
    let kept = EventRepository::get(&*store, &sid("d"), &EventId::parse("new").unwrap()).await;
    assert!(
        kept.unwrap().is_some(),
        "the new session's event was erased ({second:?})"
    );
    let session = SessionRepository::get(&*store, &sid("d")).await.unwrap();
    assert!(session.is_some(), "the new session was erased");
}

/// Starts an erasure that must get the id: whether there was a session, and its lease.
async fn hold(store: &impl Store, id: &str) -> (bool, String) {
    match store.begin_erase(&sid(id)).await.unwrap() {
        EraseStart::Holding(hold) => (hold.existed, hold.lease),
        EraseStart::Busy => panic!("the erasure of {id} found another under way"),
    }
}

/// Erasure behaviour that only MongoDB has: the in-memory store erases at once.
mod erasure {
    pub mod mongo {
        use super::super::*;

        /// A store on a fresh database, and that database's sessions as raw documents.
        async fn store_and_raw_sessions(
        ) -> (MongoStore, mongodb::Collection<mongodb::bson::Document>) {
            let config = fresh_mongo_config();
            let store = MongoStore::connect(&config).await.unwrap();
            let raw = mongodb::Client::with_uri_str(&config.uri)
                .await
                .unwrap()
                .database(config.db_name.as_deref().unwrap())
                .collection::<mongodb::bson::Document>("sessions");
            (store, raw)
        }

        /// A session an erasure holds cannot expire under it: the mark restarts `closedAt`,
        /// the field of the retention TTL index, which would otherwise free the id to a
        /// create while the erasure still deletes events by session id.
        #[tokio::test]
        async fn a_held_session_does_not_expire_during_its_erasure() {
            let (store, raw) = store_and_raw_sessions().await;
            store
                .create(new_session("old", "x"), Timestamp::from_millis(1))
                .await
                .unwrap();
            let old = sid("old");
            let long_ago = Timestamp::from_millis(1_000);
            let closed = store.close(&old, FinalStatus::Completed, long_ago);
            assert!(closed.await.unwrap().is_some());
            let stored = |id: &'static str| {
                let raw = raw.clone();
                async move {
                    raw.find_one(mongodb::bson::doc! {"_id": id})
                        .await
                        .unwrap()
                        .unwrap()
                }
            };
            let closed_at = |doc: mongodb::bson::Document| {
                doc.get_datetime("closedAt").unwrap().timestamp_millis()
            };
            assert_eq!(closed_at(stored("old").await), long_ago.millis());
            let marked_from = Timestamp::now();
            let (existed, _) = hold(&store, "old").await;
            assert!(existed);
            assert!(closed_at(stored("old").await) >= marked_from.millis());
        }

        /// An erasure that stopped midway (its instance died, or the database failed a step)
        /// holds its id only until its lease runs out. Then a repeated erasure takes the id
        /// over and finishes it; the stopped one, should it finish late, cannot free the id
        /// under it.
        #[tokio::test]
        async fn a_stopped_erasure_is_taken_over_after_its_lease() {
            let (store, raw) = store_and_raw_sessions().await;
            let lease_ran_out = |id: &'static str| {
                let raw = raw.clone();
                async move {
                    let past = ERASE_LEASE + std::time::Duration::from_secs(1);
                    let long_ago =
                        mongodb::bson::DateTime::from_millis(Timestamp::now().minus(past).millis());
                    let moved = raw
                        .update_one(
                            mongodb::bson::doc! {"_id": id},
                            mongodb::bson::doc! {"$set": {"eraseSince": long_ago}},
                        )
                        .await
                        .unwrap();
                    assert_eq!(moved.matched_count, 1);
                }
            };
            let at = Timestamp::from_millis(1);
            store.create(new_session("s", "x"), at).await.unwrap();
            store.insert(&event("s", "e", 10, 1)).await.unwrap();
            let (existed, stopped) = hold(&store, "s").await;
            assert!(existed);
            assert_eq!(
                store.begin_erase(&sid("s")).await.unwrap(),
                EraseStart::Busy
            );
            lease_ran_out("s").await;
            let (existed, taken) = hold(&store, "s").await;
            assert!(existed, "the session was there");
            assert_ne!(taken, stopped);
            store.delete(&sid("s"), &stopped).await.unwrap();
            let meanwhile = store.create(new_session("s", "y"), at).await;
            assert!(
                matches!(meanwhile, Err(StoreError::Busy(_))),
                "the stopped erasure freed the id: {meanwhile:?}"
            );
            store.delete_session_events(&sid("s")).await.unwrap();
            store.delete(&sid("s"), &taken).await.unwrap();
            let gone = EventRepository::get(&store, &sid("s"), &EventId::parse("e").unwrap()).await;
            assert!(gone.unwrap().is_none());
            let again = store.create(new_session("s", "y"), at).await.unwrap();
            assert!(matches!(again, CreateOutcome::Created(_)), "{again:?}");

            // The stand-in of an id with no session: held the same way, and taken over, it is still
            // no session.
            assert!(!hold(&store, "m").await.0);
            assert_eq!(
                store.begin_erase(&sid("m")).await.unwrap(),
                EraseStart::Busy
            );
            lease_ran_out("m").await;
            assert!(!hold(&store, "m").await.0, "a stand-in taken over");
        }

        /// An append that reserved its seq before an erasure's mark and inserts its event after the
        /// erasure deleted the events (an append in flight) does not outlive the erasure: a session
        /// written to that recently is swept once more when the inserts it may await are done.
        #[tokio::test]
        async fn an_erasure_sweeps_the_event_of_an_append_in_flight() {
            use conversation_sessions::feed::SessionFeed;
            use conversation_sessions::service::SessionService;

            let store = mongo_store().await;
            let settle = std::time::Duration::from_secs(3);
            let service = SessionService::new(
                Arc::clone(&store) as _,
                Arc::clone(&store) as _,
                Arc::new(SessionFeed::default()),
                settle,
            );
            let now = Timestamp::now();
            store.create(new_session("f", "x"), now).await.unwrap();
            let first = store
                .reserve_seqs(&sid("f"), 1, now)
                .await
                .unwrap()
                .unwrap();
            store
                .insert(&event("f", "stored", 10, first.first_seq))
                .await
                .unwrap();
            let slot = store
                .reserve_seqs(&sid("f"), 2, now)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(slot.first_seq, 2);
            let started = std::time::Instant::now();
            let erasure = tokio::spawn({
                let service = service.clone();
                async move { service.erase(&sid("f")).await }
            });
            // Once the erasure has marked the session and deleted its events, and while it
            // waits, the append in flight lands.
            let stored = EventId::parse("stored").unwrap();
            while EventRepository::get(&*store, &sid("f"), &stored)
                .await
                .unwrap()
                .is_some()
            {
                assert!(started.elapsed() < settle, "the first sweep never ran");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            store.insert(&event("f", "late", 10, 2)).await.unwrap();
            assert!(!erasure.is_finished(), "the erasure did not wait");
            erasure.await.unwrap().unwrap();
            assert!(started.elapsed() < settle + std::time::Duration::from_secs(3));
            let late =
                EventRepository::get(&*store, &sid("f"), &EventId::parse("late").unwrap()).await;
            assert!(
                late.unwrap().is_none(),
                "the append in flight outlived the erasure"
            );

            // Every reserved seq among the events deleted: nothing can be in flight, no wait.
            store.create(new_session("g", "x"), now).await.unwrap();
            let slot = store
                .reserve_seqs(&sid("g"), 1, Timestamp::now())
                .await
                .unwrap()
                .unwrap();
            store
                .insert(&event("g", "only", 10, slot.first_seq))
                .await
                .unwrap();
            let started = std::time::Instant::now();
            service.erase(&sid("g")).await.unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
        }
    }
}
