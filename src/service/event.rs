use std::collections::HashMap;
use std::sync::Arc;

use super::{BatchItem, Page, Refusal, ServiceError, Written};
use crate::domain::{
    Cursor, Event, EventId, NewEvent, Order, SessionId, Timestamp, ValidationError,
};
use crate::feed::SessionFeed;
use crate::store::{
    EventFilter, EventPageQuery, EventRepository, Inserted, PageStart, Reservation,
    SessionRepository, StoreError,
};

/// How many reservations an append makes while the seqs it draws are held by events that
/// appends in flight stored after an erase (see DESIGN.md, "Erasure and retention"). After
/// the first clash the session's counter is raised past every stored seq, so only events
/// stored since cost another try.
const SEQ_ATTEMPTS: u32 = 8;
/// Reservations tried on a session that refuses them and yet reads as open: each such
/// refusal means it was created in between, which an erase and a create must repeat to
/// cause again.
const RESERVE_ATTEMPTS: u32 = 3;
/// Why a retry whose event is stored, but not durable yet, gets 503.
const NOT_YET_DURABLE: &str =
    "the event is stored, but its write is not durable yet: send it again";

/// Where a requested page starts, as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagePosition {
    First,
    /// An opaque token from a previous page's `nextCursor`.
    Cursor(String),
    /// 1-based page number, for clients of the offset API.
    Page(u64),
}

/// A validated request for a page of a session's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub order: Order,
    /// 1..=1000.
    pub limit: usize,
    pub position: PagePosition,
    pub filter: EventFilter,
    /// Lists events with a greater seq, in seq order, instead of by timestamp.
    pub after_seq: Option<i64>,
}

impl PageRequest {
    /// The scope a cursor of this listing is bound to: the session, the ordering and every
    /// filter, so that a cursor replayed with other ones is refused.
    fn scope(&self, session: &SessionId) -> u64 {
        let mut types: Vec<&str> = self.filter.types.iter().map(|t| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        let millis = |t: Option<Timestamp>| t.map_or(String::new(), |t| t.millis().to_string());
        Cursor::scope_of(&[
            "events",
            session.as_str(),
            if self.after_seq.is_some() {
                "seq"
            } else {
                "time"
            },
            &types.join(","),
            &millis(self.filter.from),
            &millis(self.filter.to),
        ])
    }

    /// Refuses a cursor that is not this listing's, before anything is read.
    pub fn check(&self, session: &SessionId) -> Result<(), ServiceError> {
        self.start(self.scope(session)).map(drop)
    }

    /// Where the page starts: a cursor decoded against the listing's `scope`.
    fn start(&self, scope: u64) -> Result<PageStart, ServiceError> {
        Ok(match (&self.position, self.after_seq) {
            (PagePosition::Cursor(token), after_seq) => {
                let last = Cursor::decode_event(token, self.order, scope)?;
                match after_seq {
                    // The cursor's position, unless the client moved `afterSeq` past it.
                    Some(n) => PageStart::AfterSeq(last.seq.max(n)),
                    None => PageStart::After(last),
                }
            }
            (PagePosition::First, Some(seq)) => PageStart::AfterSeq(seq),
            (PagePosition::First, None) => PageStart::First,
            (PagePosition::Page(n), _) => {
                PageStart::Offset(n.saturating_sub(1).saturating_mul(self.limit as u64))
            }
        })
    }
}

/// Appends and reads a session's events.
#[derive(Clone)]
pub struct EventService {
    sessions: Arc<dyn SessionRepository>,
    events: Arc<dyn EventRepository>,
    feed: Arc<SessionFeed>,
}

impl EventService {
    pub fn new(
        sessions: Arc<dyn SessionRepository>,
        events: Arc<dyn EventRepository>,
        feed: Arc<SessionFeed>,
    ) -> Self {
        Self {
            sessions,
            events,
            feed,
        }
    }

    /// Appends the event, or recognises a retry of the append that stored it.
    ///
    /// New events cost two store operations: reserve a seq on the open session, insert.
    /// The unique (sessionId, eventId) index decides between concurrent duplicates.
    pub async fn append(
        &self,
        session: &SessionId,
        mut new: NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        let stamped = new.timestamp.is_some();
        for attempt in 1..=SEQ_ATTEMPTS {
            let slot = match self.reserve(session, 1).await {
                Ok(slot) => slot,
                Err(
                    refused @ (ServiceError::SessionNotFound(_) | ServiceError::SessionClosed(_)),
                ) => {
                    return self
                        .append_to_unavailable_session(session, refused, &new)
                        .await
                }
                Err(e) => return Err(e),
            };
            let event = new.into_event(session.clone(), slot.first_seq, slot.received_at);
            match self.events.insert(&event).await {
                Ok(()) => {
                    self.feed.appended(session);
                    return Ok(Written::Created(event));
                }
                Err(StoreError::Duplicate) => {
                    self.feed.voided(session, &[event.seq]);
                    return self.replay(session, &event.into_request(stamped)).await;
                }
                Err(StoreError::SeqTaken) if attempt < SEQ_ATTEMPTS => {
                    self.pass_stored_seqs(session).await?;
                    new = event.into_request(stamped);
                }
                Err(StoreError::SeqTaken) => break,
                Err(e) => return Err(self.insert_failure(session, e)),
            }
        }
        Err(seqs_kept_taken())
    }

    /// One bulk insert, and its news for live streams: a wake-up when it stored something,
    /// and the void seqs of the items whose eventId was taken.
    async fn insert_round(
        &self,
        session: &SessionId,
        events: &[Event],
    ) -> Result<Vec<Inserted>, ServiceError> {
        let inserted = self
            .events
            .insert_many(events)
            .await
            .map_err(|e| self.insert_failure(session, e))?;
        if inserted.len() != events.len() {
            let answered = format!(
                "the store answered for {} of {} events",
                inserted.len(),
                events.len()
            );
            return Err(StoreError::Backend(answered.into()).into());
        }
        if inserted.contains(&Inserted::Stored) {
            self.feed.appended(session);
        }
        let voided: Vec<i64> = events
            .iter()
            .zip(&inserted)
            .filter(|(_, outcome)| **outcome == Inserted::EventIdTaken)
            .map(|(e, _)| e.seq)
            .collect();
        self.feed.voided(session, &voided);
        Ok(inserted)
    }

    /// Raises the session's seq counter past every stored seq: its next reservation then
    /// passes at once all the events an erase left behind, instead of one per try.
    async fn pass_stored_seqs(&self, session: &SessionId) -> Result<(), ServiceError> {
        if let Some(last) = self.events.last_seq(session).await? {
            self.sessions.raise_seq(session, last).await?;
        }
        Ok(())
    }

    /// A duplicate key proved the event stored, and then it was not found: the session was
    /// erased in between (404). When a session is there, the id was created again since (or
    /// retention took the event): the request, sent again, is judged against what is there
    /// now, so it gets 503.
    async fn stored_event_missing(&self, session: &SessionId) -> ServiceError {
        match self.sessions.get(session).await {
            Ok(None) => ServiceError::SessionNotFound(session.clone()),
            Ok(Some(_)) => StoreError::Unavailable(
                "the stored event was erased while this request read it: send it again".into(),
            )
            .into(),
            Err(e) => e.into(),
        }
    }

    /// An insert that failed: a session erased since the reservation is not found.
    fn insert_failure(&self, session: &SessionId, err: StoreError) -> ServiceError {
        match err {
            StoreError::SessionGone => ServiceError::SessionNotFound(session.clone()),
            other => other.into(),
        }
    }

    /// The session is missing or closed (`refused` says which): only a replay of an already
    /// stored event succeeds.
    async fn append_to_unavailable_session(
        &self,
        session: &SessionId,
        refused: ServiceError,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        match self.stored(session, new).await? {
            Some(stored) => compare(new, stored),
            None => Err(refused),
        }
    }

    /// Fails unless the session exists and is open.
    async fn require_open(&self, session: &SessionId) -> Result<(), ServiceError> {
        match self.sessions.get(session).await? {
            None => Err(ServiceError::SessionNotFound(session.clone())),
            Some(s) if !s.status.is_open() => Err(ServiceError::SessionClosed(Box::new(s))),
            Some(_) => Ok(()),
        }
    }

    /// Reserves `count` seqs, failing with 404 or 409 when the session is missing or closed.
    /// A session found open after refusing was created (or created again) since: it is asked
    /// again.
    async fn reserve(
        &self,
        session: &SessionId,
        count: usize,
    ) -> Result<Reservation, ServiceError> {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        for _ in 0..RESERVE_ATTEMPTS {
            let reserved = self
                .sessions
                .reserve_seqs(session, count, Timestamp::now())
                .await?;
            if let Some(slot) = reserved {
                return Ok(slot);
            }
            self.require_open(session).await?;
        }
        Err(StoreError::Backend("an open session kept refusing reservations".into()).into())
    }

    /// Appends many events with one reservation and one bulk insert. Each item is judged by
    /// the single-event rules; accepted items get seqs rising in request order. A missing or
    /// closed session stores nothing: it fails the whole batch unless some items are stored
    /// already, which then come back as retries, and the rest as refused. After an erase
    /// race (items whose seqs an erased session's leftovers hold) neither holds for those
    /// items: see DESIGN.md, "Batch ingestion".
    pub async fn append_batch(
        &self,
        session: &SessionId,
        items: Vec<Result<NewEvent, ValidationError>>,
    ) -> Result<Vec<BatchItem>, ServiceError> {
        let count = items.iter().filter(|item| item.is_ok()).count();
        if count == 0 {
            self.require_open(session).await?;
            return Ok(items
                .into_iter()
                .filter_map(Result::err)
                .map(BatchItem::Invalid)
                .collect());
        }
        let slot = match self.reserve(session, count).await {
            Ok(slot) => slot,
            Err(e) => {
                let refused = Refusal::try_from(e)?;
                return self
                    .batch_to_unavailable_session(session, refused, items)
                    .await;
            }
        };
        // Each valid item becomes its event, in order; `stamped` keeps whether it carried a
        // timestamp, which a refused item's comparison with the stored event needs.
        let (mut events, mut stamped) = (Vec::with_capacity(count), Vec::with_capacity(count));
        let items: Vec<Result<(), ValidationError>> = items
            .into_iter()
            .map(|item| {
                item.map(|new| {
                    let seq = slot.first_seq + events.len() as i64;
                    stamped.push(new.timestamp.is_some());
                    events.push(new.into_event(session.clone(), seq, slot.received_at));
                })
            })
            .collect();
        let mut inserted = self.insert_round(session, &events).await?;
        // Items whose seq an event left behind by an erase holds go again at new seqs, once
        // the session's counter is past every stored seq. A session closed or erased in the
        // meantime refuses them one by one: what is stored stays stored.
        let mut refusal = None;
        for attempt in 1.. {
            let taken: Vec<usize> = (0..events.len())
                .filter(|&i| inserted[i] == Inserted::SeqTaken)
                .collect();
            if taken.is_empty() {
                break;
            }
            if attempt == SEQ_ATTEMPTS {
                return Err(seqs_kept_taken());
            }
            self.pass_stored_seqs(session).await?;
            let slot = match self.reserve(session, taken.len()).await {
                Ok(slot) => slot,
                Err(e) => {
                    refusal = Some(Refusal::try_from(e)?);
                    break;
                }
            };
            let retried: Vec<Event> = (slot.first_seq..)
                .zip(&taken)
                .map(|(seq, &i)| {
                    let new = events[i].clone().into_request(stamped[i]);
                    new.into_event(session.clone(), seq, slot.received_at)
                })
                .collect();
            let again = self.insert_round(session, &retried).await?;
            for ((i, event), outcome) in taken.into_iter().zip(retried).zip(again) {
                (events[i], inserted[i]) = (event, outcome);
            }
        }
        // The items this request did not store: taken eventIds and, after a refused round,
        // items left at a taken seq, which a duplicate of their own may have stored
        // meanwhile (with no refusal, the rounds leave none there). One lookup for all.
        let unstored: Vec<EventId> = events
            .iter()
            .zip(&inserted)
            .filter(|(_, outcome)| **outcome != Inserted::Stored)
            .map(|(e, _)| e.event_id.clone())
            .collect();
        let stored = match unstored.is_empty() {
            true => HashMap::new(),
            false => self.stored_by_id(session, &unstored).await?,
        };
        if refusal.is_none() && unstored.iter().any(|id| !stored.contains_key(id)) {
            refusal = Some(Refusal::try_from(self.stored_event_missing(session).await)?);
        }
        let mut accepted = events.into_iter().zip(stamped).zip(inserted);
        items
            .into_iter()
            .map(|item| match item {
                Err(invalid) => Ok(BatchItem::Invalid(invalid)),
                Ok(()) => match accepted.next() {
                    Some(((event, _), Inserted::Stored)) => Ok(BatchItem::Created(event)),
                    Some(((event, stamped), Inserted::EventIdTaken | Inserted::SeqTaken)) => {
                        let new = event.into_request(stamped);
                        match (stored.get(&new.event_id), &refusal) {
                            (Some(s), _) => Ok(judged(&new, s)),
                            // Erased since the insert, with the session's events; or left
                            // at a taken seq when the session closed or went.
                            (None, Some(refused)) => Ok(BatchItem::Refused(refused.clone())),
                            (None, None) => Err(vanished()),
                        }
                    }
                    None => Err(vanished()),
                },
            })
            .collect()
    }

    /// The session is missing or closed (`refused` says which): only retries of stored
    /// items succeed, as with a single append, so a batch sent again after the close gets
    /// its stored items back. One lookup of the items' ids; when none is stored, the whole
    /// batch is refused.
    async fn batch_to_unavailable_session(
        &self,
        session: &SessionId,
        refused: Refusal,
        items: Vec<Result<NewEvent, ValidationError>>,
    ) -> Result<Vec<BatchItem>, ServiceError> {
        let ids: Vec<EventId> = items
            .iter()
            .filter_map(|item| item.as_ref().ok())
            .map(|new| new.event_id.clone())
            .collect();
        let stored = self.stored_by_id(session, &ids).await?;
        if stored.is_empty() {
            return Err(refused.into());
        }
        Ok(items
            .into_iter()
            .map(|item| match item {
                Err(invalid) => BatchItem::Invalid(invalid),
                Ok(new) => match stored.get(&new.event_id) {
                    Some(s) => judged(&new, s),
                    None => BatchItem::Refused(refused.clone()),
                },
            })
            .collect())
    }

    /// The session's stored events among `ids`, by id, that a replay may be judged against:
    /// the durable ones. When one is stored but not durable yet (its first send is still
    /// replicating), the request gets 503, to be sent again once it is, lest a 200 rest on a
    /// write that a failover undoes.
    async fn stored_by_id(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<HashMap<EventId, Event>, ServiceError> {
        let found = self.events.get_durable(session, ids).await?;
        if found.pending {
            return Err(StoreError::Unavailable(NOT_YET_DURABLE.into()).into());
        }
        Ok(found
            .events
            .into_iter()
            .map(|e| (e.event_id.clone(), e))
            .collect())
    }

    /// The stored event that a replay of `new` answers with, as [`Self::stored_by_id`] finds
    /// it.
    async fn stored(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Option<Event>, ServiceError> {
        let mut found = self
            .stored_by_id(session, std::slice::from_ref(&new.event_id))
            .await?;
        Ok(found.remove(&new.event_id))
    }

    async fn replay(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        match self.stored(session, new).await? {
            Some(stored) => compare(new, stored),
            None => Err(self.stored_event_missing(session).await),
        }
    }

    pub async fn get(&self, session: &SessionId, event: &EventId) -> Result<Event, ServiceError> {
        if let Some(found) = self.events.get(session, event).await? {
            return Ok(found);
        }
        match self.sessions.get(session).await? {
            Some(_) => Err(ServiceError::EventNotFound),
            None => Err(ServiceError::SessionNotFound(session.clone())),
        }
    }

    /// One page of the session's events by (timestamp, seq), or by seq after `afterSeq`.
    /// A non-empty page costs one store query; an empty one checks that the session exists.
    pub async fn page(
        &self,
        session: &SessionId,
        request: &PageRequest,
    ) -> Result<Page<Event>, ServiceError> {
        let scope = request.scope(session);
        let start = request.start(scope)?;
        let query = EventPageQuery {
            order: request.order,
            start,
            filter: request.filter.clone(),
            limit: request.limit + 1,
        };
        let mut data = self.events.page(session, &query).await?;
        if data.is_empty() && self.sessions.get(session).await?.is_none() {
            return Err(ServiceError::SessionNotFound(session.clone()));
        }
        let has_more = data.len() > request.limit;
        data.truncate(request.limit);
        let next_cursor = has_more
            .then(|| data.last())
            .flatten()
            .map(|last| Cursor::for_event(request.order, scope, last.position()).encode());
        Ok(Page {
            data,
            next_cursor,
            has_more,
        })
    }
}

/// Each try found its seq taken by an event stored since the last: the leftovers of an
/// erase are still landing. Not a fault of the request; sent again, it is judged afresh.
fn seqs_kept_taken() -> ServiceError {
    let why = format!(
        "{SEQ_ATTEMPTS} reserved seqs in a row were taken by events left behind by an \
         erasure: send the request again"
    );
    StoreError::Unavailable(why.into()).into()
}

/// The store's answers do not add up (an event a duplicate key proved is gone though its
/// session is not, or an item has no outcome): a broken store.
fn vanished() -> ServiceError {
    StoreError::Backend("event vanished after a duplicate-key error".into()).into()
}

/// A batch item whose eventId is stored: a replay when it matches, else a conflict.
fn judged(new: &NewEvent, stored: &Event) -> BatchItem {
    match new.matches(stored) {
        true => BatchItem::Existing(stored.clone()),
        false => BatchItem::Conflict(stored.clone()),
    }
}

fn compare(new: &NewEvent, stored: Event) -> Result<Written<Event>, ServiceError> {
    if new.matches(&stored) {
        Ok(Written::Existing(stored))
    } else {
        Err(ServiceError::EventConflict(Box::new(stored)))
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use std::sync::atomic::Ordering;

    use crate::domain::{EventType, FinalStatus, JsonObject};
    use crate::service::testing::{open_session, Sessions};
    use crate::store::{DurableEvents, EraseHold, EraseStart, MemoryStore};

    fn new_event(id: &str) -> NewEvent {
        NewEvent {
            event_id: EventId::parse(id).unwrap(),
            event_type: EventType::parse("system".to_owned()).unwrap(),
            payload: JsonObject::default(),
            timestamp: None,
        }
    }

    fn service(memory: &Arc<MemoryStore>, events: Arc<dyn EventRepository>) -> EventService {
        EventService::new(
            Arc::clone(memory) as _,
            events,
            Arc::new(SessionFeed::default()),
        )
    }

    fn seq_of(item: &BatchItem) -> i64 {
        match item {
            BatchItem::Created(e) => e.seq,
            other => panic!("not created: {other:?}"),
        }
    }

    async fn leave(memory: &MemoryStore, session: &SessionId, seqs: impl Iterator<Item = i64>) {
        for seq in seqs {
            let left = new_event(&format!("left-{seq}")).into_event(
                session.clone(),
                seq,
                Timestamp::now(),
            );
            memory.insert(&left).await.unwrap();
        }
    }

    /// Events that appends in flight stored after an erase, under the id's new session,
    /// hold seqs that the new session hands out again: appends pass them all in one more
    /// try, however many there are (an erased batch leaves up to 500 in a row).
    #[tokio::test]
    async fn appends_pass_seqs_that_events_left_by_an_erase_hold() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        leave(&memory, &session, 1..=40).await;
        let events = service(&memory, Arc::clone(&memory) as _);
        match events.append(&session, new_event("e")).await.unwrap() {
            Written::Created(e) => assert_eq!(e.seq, 41),
            Written::Existing(e) => panic!("a replay: {e:?}"),
        }
        leave(&memory, &session, std::iter::once(42).chain(44..=60)).await;
        let batch = vec![Ok(new_event("a")), Ok(new_event("b")), Ok(new_event("c"))];
        let items = events.append_batch(&session, batch).await.unwrap();
        // b is stored at 43 in the first round; a and c go again past 60.
        assert_eq!(items.iter().map(seq_of).collect::<Vec<_>>(), [61, 43, 62]);
    }

    /// A service on the in-memory store, with the session erased or closed at a chosen
    /// step of an append.
    fn interfered(memory: &Arc<MemoryStore>, hook: Hook) -> EventService {
        let memory = Arc::clone(memory);
        service(
            &memory,
            Arc::new(Interfering {
                memory: Arc::clone(&memory),
                hook,
            }),
        )
    }

    /// The in-memory store, with the session erased or closed at a chosen step of an append.
    struct Interfering {
        memory: Arc<MemoryStore>,
        hook: Hook,
    }

    #[derive(PartialEq)]
    enum Hook {
        /// Erased between the reservation and the insert.
        Erase,
        /// Closed between the reservation and the insert.
        Close,
        /// Erased, with its events, when a batch looks for the highest stored seq.
        EraseBeforeSecondRound,
        /// When a batch looks for the highest stored seq, a duplicate of its item `a` is
        /// stored, and the session closed.
        DuplicateAndCloseBeforeSecondRound,
        /// Erased, with its events, when a replay reads the stored event.
        EraseBeforeRead,
        /// Erased, with its events, and created again, when a replay reads the stored event.
        RecreateBeforeRead,
        /// An event left behind by an erase lands at each seq just before its insert.
        LeftoverAhead,
        /// No stored event is durable yet: their writes all wait for their acknowledgment.
        NotYetDurable,
    }

    impl Interfering {
        async fn act(&self, session: &SessionId) {
            match self.hook {
                Hook::Erase => self.erase(session).await,
                Hook::Close => {
                    let closed =
                        self.memory
                            .close(session, FinalStatus::Completed, Timestamp::now());
                    assert!(closed.await.unwrap().is_some());
                }
                Hook::EraseBeforeSecondRound
                | Hook::DuplicateAndCloseBeforeSecondRound
                | Hook::EraseBeforeRead
                | Hook::RecreateBeforeRead
                | Hook::LeftoverAhead
                | Hook::NotYetDurable => {}
            }
        }

        async fn erase(&self, session: &SessionId) {
            let erased = self.memory.begin_erase(session).await.unwrap();
            assert!(matches!(
                erased,
                EraseStart::Holding(EraseHold { existed: true, .. })
            ));
        }

        /// Before a replay reads the stored event.
        async fn before_read(&self, session: &SessionId) {
            match self.hook {
                Hook::EraseBeforeRead => self.erase(session).await,
                Hook::RecreateBeforeRead => {
                    self.erase(session).await;
                    assert_eq!(open_session(&self.memory).await, *session);
                }
                _ => {}
            }
        }
    }

    #[async_trait]
    impl EventRepository for Interfering {
        async fn insert(&self, event: &Event) -> Result<(), StoreError> {
            self.act(&event.session_id).await;
            if self.hook == Hook::LeftoverAhead {
                leave(&self.memory, &event.session_id, std::iter::once(event.seq)).await;
            }
            self.memory.insert(event).await
        }
        async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError> {
            self.act(&events[0].session_id).await;
            if self.hook == Hook::LeftoverAhead {
                let seqs = events.iter().map(|e| e.seq);
                leave(&self.memory, &events[0].session_id, seqs).await;
            }
            self.memory.insert_many(events).await
        }
        async fn last_seq(&self, s: &SessionId) -> Result<Option<i64>, StoreError> {
            if self.hook == Hook::EraseBeforeSecondRound {
                self.erase(s).await;
            }
            if self.hook == Hook::DuplicateAndCloseBeforeSecondRound {
                let slot = self.memory.reserve_seqs(s, 1, Timestamp::now()).await;
                let slot = slot.unwrap().unwrap();
                let duplicate =
                    new_event("a").into_event(s.clone(), slot.first_seq, slot.received_at);
                self.memory.insert(&duplicate).await.unwrap();
                let closed = self
                    .memory
                    .close(s, FinalStatus::Completed, Timestamp::now());
                assert!(closed.await.unwrap().is_some());
            }
            self.memory.last_seq(s).await
        }
        async fn get(&self, s: &SessionId, e: &EventId) -> Result<Option<Event>, StoreError> {
            self.before_read(s).await;
            EventRepository::get(&*self.memory, s, e).await
        }
        async fn delete_session_events(&self, s: &SessionId) -> Result<u64, StoreError> {
            self.memory.delete_session_events(s).await
        }
        async fn get_durable(
            &self,
            s: &SessionId,
            ids: &[EventId],
        ) -> Result<DurableEvents, StoreError> {
            self.before_read(s).await;
            let found = self.memory.get_durable(s, ids).await?;
            match self.hook {
                // What is stored, the durable read misses: all of it is still replicating.
                Hook::NotYetDurable => Ok(DurableEvents {
                    events: Vec::new(),
                    pending: !found.events.is_empty(),
                }),
                _ => Ok(found),
            }
        }
        async fn page(&self, s: &SessionId, q: &EventPageQuery) -> Result<Vec<Event>, StoreError> {
            self.memory.page(s, q).await
        }
    }

    /// Leftovers that keep landing at the very seqs an append draws: after its last try it
    /// answers 503, which says that the same request may be sent again.
    #[tokio::test]
    async fn appends_outrun_by_leftovers_at_every_try_are_unavailable() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        let events = interfered(&memory, Hook::LeftoverAhead);
        let single = events.append(&session, new_event("e")).await;
        assert!(
            matches!(single, Err(ServiceError::Store(StoreError::Unavailable(_)))),
            "{single:?}"
        );
        let batch = vec![Ok(new_event("a")), Ok(new_event("b"))];
        let batch = events.append_batch(&session, batch).await;
        assert!(
            matches!(batch, Err(ServiceError::Store(StoreError::Unavailable(_)))),
            "{batch:?}"
        );
    }

    #[tokio::test]
    async fn an_append_whose_session_is_erased_before_its_insert_finds_no_session() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        let events = interfered(&memory, Hook::Erase);
        let single = events.append(&session, new_event("e")).await;
        assert!(
            matches!(single, Err(ServiceError::SessionNotFound(_))),
            "{single:?}"
        );
        let session = open_session(&memory).await;
        let batch = events
            .append_batch(&session, vec![Ok(new_event("a"))])
            .await;
        assert!(
            matches!(batch, Err(ServiceError::SessionNotFound(_))),
            "{batch:?}"
        );
    }

    /// A batch whose items must go again finds the session closed: the items stored in the
    /// first round stay stored and say so; the others are refused one by one.
    #[tokio::test]
    async fn a_batch_that_finds_its_session_closed_between_rounds_reports_each_item() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        leave(&memory, &session, 1..=1).await;
        let events = interfered(&memory, Hook::Close);
        let batch = vec![Ok(new_event("a")), Ok(new_event("b"))];
        let items = events.append_batch(&session, batch).await.unwrap();
        assert!(
            matches!(&items[0], BatchItem::Refused(Refusal::Closed(s)) if s.session_id == session),
            "{:?}",
            items[0]
        );
        assert_eq!(seq_of(&items[1]), 2);
        let a = EventId::parse("a").unwrap();
        assert_eq!(
            EventRepository::get(&*memory, &session, &a).await.unwrap(),
            None
        );
    }

    /// The same with the session erased between the rounds: a replayed item, whose stored
    /// event went with the erase, is refused too, not a store failure.
    #[tokio::test]
    async fn a_batch_that_finds_its_session_erased_between_rounds_reports_each_item() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        leave(&memory, &session, 1..=1).await;
        let old = new_event("old").into_event(session.clone(), 2, Timestamp::now());
        memory.insert(&old).await.unwrap();
        let events = interfered(&memory, Hook::EraseBeforeSecondRound);
        let batch = vec![Ok(new_event("a")), Ok(new_event("old"))];
        let items = events.append_batch(&session, batch).await.unwrap();
        for item in &items {
            assert!(
                matches!(item, BatchItem::Refused(Refusal::NotFound(id)) if *id == session),
                "{item:?}"
            );
        }
    }

    /// An item whose seq a leftover held, stored meanwhile by a duplicate of its own before
    /// the session closed: the batch's second round is refused, and the item is judged
    /// against the stored event (200), as a single append's would be, not refused.
    #[tokio::test]
    async fn a_batch_item_stored_by_a_duplicate_before_a_close_between_rounds_is_a_replay() {
        let memory = Arc::new(MemoryStore::default());
        let session = open_session(&memory).await;
        leave(&memory, &session, 1..=1).await;
        let events = interfered(&memory, Hook::DuplicateAndCloseBeforeSecondRound);
        let batch = vec![Ok(new_event("a")), Ok(new_event("b"))];
        let items = events.append_batch(&session, batch).await.unwrap();
        assert!(
            matches!(&items[0], BatchItem::Existing(e) if e.event_id.as_str() == "a"),
            "{items:?}"
        );
        assert!(matches!(&items[1], BatchItem::Created(_)), "{items:?}");
    }

    /// A retry whose stored event went with an erase between its insert and its read finds
    /// no session: 404, not a store failure.
    #[tokio::test]
    async fn a_retry_whose_session_is_erased_before_its_read_finds_no_session() {
        let memory = Arc::new(MemoryStore::default());
        let plain = service(&memory, Arc::clone(&memory) as _);
        let events = interfered(&memory, Hook::EraseBeforeRead);
        let session = open_session(&memory).await;
        plain.append(&session, new_event("old")).await.unwrap();
        let single = events.append(&session, new_event("old")).await;
        assert!(
            matches!(single, Err(ServiceError::SessionNotFound(_))),
            "{single:?}"
        );
        let session = open_session(&memory).await;
        plain.append(&session, new_event("old")).await.unwrap();
        let batch = vec![Ok(new_event("old"))];
        let items = events.append_batch(&session, batch).await.unwrap();
        assert!(
            matches!(&items[0], BatchItem::Refused(Refusal::NotFound(id)) if *id == session),
            "{:?}",
            items[0]
        );
    }

    /// A retry whose event is stored, but whose write still waits for its acknowledgment (the
    /// first send is in flight): 503, on an open session and on a closed one, alone and in
    /// a batch. A 200 then could rest on a write that a failover undoes.
    #[tokio::test]
    async fn a_retry_of_an_event_not_yet_durable_is_unavailable() {
        let memory = Arc::new(MemoryStore::default());
        let plain = service(&memory, Arc::clone(&memory) as _);
        let events = interfered(&memory, Hook::NotYetDurable);
        let session = open_session(&memory).await;
        plain.append(&session, new_event("old")).await.unwrap();
        for close in [false, true] {
            if close {
                let closed = memory.close(&session, FinalStatus::Completed, Timestamp::now());
                assert!(closed.await.unwrap().is_some());
            }
            let single = events.append(&session, new_event("old")).await;
            assert!(not_yet_durable(&single), "closed {close}: {single:?}");
            // With an item stored nowhere, and, on the open session, one stored by itself.
            let batch = vec![Ok(new_event("old")), Ok(new_event(&format!("new-{close}")))];
            let batch = events.append_batch(&session, batch).await;
            assert!(not_yet_durable(&batch), "closed {close}: {batch:?}");
        }
        // Once durable, the same retry is a replay.
        let again = plain.append(&session, new_event("old")).await.unwrap();
        assert!(matches!(again, Written::Existing(_)), "{again:?}");
        // An event that is nowhere is refused as before.
        let refused = events.append(&session, new_event("unknown")).await;
        assert!(
            matches!(refused, Err(ServiceError::SessionClosed(_))),
            "{refused:?}"
        );
    }

    fn not_yet_durable<T>(outcome: &Result<T, ServiceError>) -> bool {
        matches!(outcome, Err(ServiceError::Store(StoreError::Unavailable(why)))
            if why.to_string() == NOT_YET_DURABLE)
    }

    /// A retry whose stored event went with an erasure, and whose id was created again, before
    /// its read: 503, never a 500. Sent again, it is judged against the new session.
    #[tokio::test]
    async fn a_retry_whose_session_is_erased_and_created_again_before_its_read_is_unavailable() {
        let memory = Arc::new(MemoryStore::default());
        let plain = service(&memory, Arc::clone(&memory) as _);
        let events = interfered(&memory, Hook::RecreateBeforeRead);
        let session = open_session(&memory).await;
        plain.append(&session, new_event("old")).await.unwrap();
        let single = events.append(&session, new_event("old")).await;
        assert!(
            matches!(single, Err(ServiceError::Store(StoreError::Unavailable(_)))),
            "{single:?}"
        );
        plain.append(&session, new_event("old")).await.unwrap();
        let batch = vec![Ok(new_event("old"))];
        let batch = events.append_batch(&session, batch).await;
        assert!(
            matches!(batch, Err(ServiceError::Store(StoreError::Unavailable(_)))),
            "{batch:?}"
        );
        let again = plain.append(&session, new_event("old")).await.unwrap();
        assert!(matches!(again, Written::Created(_)), "{again:?}");
    }

    /// An append whose reservation missed a session created right after it asks again and
    /// stores the event, instead of failing as a store fault (500).
    #[tokio::test]
    async fn an_append_racing_its_sessions_create_is_stored() {
        for batch in [false, true] {
            let memory = Arc::new(MemoryStore::default());
            let sessions = Sessions::new(&memory);
            sessions.miss_next_reservation.store(true, Ordering::SeqCst);
            let events = EventService::new(
                Arc::new(sessions),
                Arc::clone(&memory) as _,
                Arc::new(SessionFeed::default()),
            );
            let session = SessionId::parse("call-1").unwrap();
            let seq = if batch {
                let items = events.append_batch(&session, vec![Ok(new_event("e"))]);
                seq_of(&items.await.unwrap()[0])
            } else {
                match events.append(&session, new_event("e")).await.unwrap() {
                    Written::Created(e) => e.seq,
                    Written::Existing(e) => panic!("a replay: {e:?}"),
                }
            };
            assert_eq!(seq, 1, "batch: {batch}");
        }
    }
}
