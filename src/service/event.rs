use std::collections::HashMap;
use std::sync::Arc;

use super::{BatchItem, Page, ServiceError, Written};
use crate::domain::{
    Cursor, Event, EventId, NewEvent, Order, SessionId, Timestamp, ValidationError,
};
use crate::feed::SessionFeed;
use crate::store::{
    EventFilter, EventPageQuery, EventRepository, PageStart, SessionRepository, StoreError,
};

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
        new: NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        let reserved = self
            .sessions
            .reserve_seqs(session, 1, Timestamp::now())
            .await?;
        let Some(slot) = reserved else {
            return self.append_to_unavailable_session(session, &new).await;
        };
        let stamped = new.timestamp.is_some();
        let event = new.into_event(session.clone(), slot.first_seq, slot.received_at);
        match self.events.insert(&event).await {
            Ok(()) => {
                self.feed.appended(session);
                Ok(Written::Created(event))
            }
            Err(StoreError::Duplicate) => {
                self.feed.voided(session, &[event.seq]);
                self.replay(session, &event.into_request(stamped)).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The session is missing or closed: only a replay of an already stored event succeeds.
    async fn append_to_unavailable_session(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        let refusal = self.refusal(session).await;
        match self.events.get(session, &new.event_id).await? {
            Some(stored) => compare(new, stored),
            None => Err(refusal),
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

    /// Why a session refused a reservation: it is missing or closed.
    async fn refusal(&self, session: &SessionId) -> ServiceError {
        match self.require_open(session).await {
            Err(refusal) => refusal,
            Ok(()) => StoreError::Backend("an open session refused a reservation".into()).into(),
        }
    }

    /// Appends many events with one reservation and one bulk insert. Each item is judged by
    /// the single-event rules; accepted items get seqs rising in request order. A missing or
    /// closed session fails the whole batch.
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
        let reserved = self
            .sessions
            .reserve_seqs(
                session,
                u32::try_from(count).unwrap_or(u32::MAX),
                Timestamp::now(),
            )
            .await?;
        let Some(slot) = reserved else {
            return Err(self.refusal(session).await);
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
        let inserted = self.events.insert_many(&events).await?;
        if inserted.contains(&true) {
            self.feed.appended(session);
        }
        // Each refused item's eventId was taken, and its seq is void.
        let (voided, clashes): (Vec<i64>, Vec<EventId>) = events
            .iter()
            .zip(&inserted)
            .filter(|(_, stored)| !**stored)
            .map(|(e, _)| (e.seq, e.event_id.clone()))
            .unzip();
        self.feed.voided(session, &voided);
        let stored: HashMap<EventId, Event> = match clashes.is_empty() {
            true => HashMap::new(),
            false => self
                .events
                .get_many(session, &clashes)
                .await?
                .into_iter()
                .map(|e| (e.event_id.clone(), e))
                .collect(),
        };
        let mut accepted = events.into_iter().zip(stamped).zip(inserted);
        items
            .into_iter()
            .map(|item| match item {
                Err(invalid) => Ok(BatchItem::Invalid(invalid)),
                Ok(()) => match accepted.next() {
                    Some(((event, _), true)) => Ok(BatchItem::Created(event)),
                    Some(((event, stamped), false)) => {
                        let new = event.into_request(stamped);
                        match stored.get(&new.event_id) {
                            Some(s) if new.matches(s) => Ok(BatchItem::Existing(s.clone())),
                            Some(s) => Ok(BatchItem::Conflict(s.clone())),
                            None => Err(vanished()),
                        }
                    }
                    None => Err(vanished()),
                },
            })
            .collect()
    }

    async fn replay(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        match self.events.get(session, &new.event_id).await? {
            Some(stored) => compare(new, stored),
            None => {
                Err(StoreError::Backend("event vanished after a duplicate-key error".into()).into())
            }
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
        let start = match (&request.position, request.after_seq) {
            (PagePosition::Cursor(token), after_seq) => {
                let last = Cursor::decode_event(token, request.order, scope)?;
                match after_seq {
                    Some(_) => PageStart::AfterSeq(last.seq),
                    None => PageStart::After(last),
                }
            }
            (PagePosition::First, Some(seq)) => PageStart::AfterSeq(seq),
            (PagePosition::First, None) => PageStart::First,
            (PagePosition::Page(n), _) => {
                PageStart::Offset(n.saturating_sub(1).saturating_mul(request.limit as u64))
            }
        };
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

/// The duplicate-key error proved the event exists; not finding it means it was erased in
/// between.
fn vanished() -> ServiceError {
    StoreError::Backend("event vanished after a duplicate-key error".into()).into()
}

fn compare(new: &NewEvent, stored: Event) -> Result<Written<Event>, ServiceError> {
    if new.matches(&stored) {
        Ok(Written::Existing(stored))
    } else {
        Err(ServiceError::EventConflict(Box::new(stored)))
    }
}
