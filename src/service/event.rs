use std::sync::Arc;

use super::{Page, ServiceError, Written};
use crate::domain::{Cursor, Event, EventId, NewEvent, Order, SessionId, Timestamp};
use crate::store::{EventPageQuery, EventRepository, PageStart, SessionRepository, StoreError};

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
}

/// Appends and reads a session's events.
#[derive(Clone)]
pub struct EventService {
    sessions: Arc<dyn SessionRepository>,
    events: Arc<dyn EventRepository>,
}

impl EventService {
    pub fn new(sessions: Arc<dyn SessionRepository>, events: Arc<dyn EventRepository>) -> Self {
        Self { sessions, events }
    }

    /// Appends the event, or recognises a retry of the append that stored it.
    ///
    /// New events cost two store operations: reserve a seq on the open session, insert.
    /// The unique (sessionId, eventId) index decides between concurrent duplicates.
    #[tracing::instrument(skip_all, fields(session_id = %session, event_id = %new.event_id))]
    pub async fn append(
        &self,
        session: &SessionId,
        new: NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        let Some(slot) = self.sessions.reserve_seq(session, Timestamp::now()).await? else {
            return self.append_to_unavailable_session(session, &new).await;
        };
        let event = new
            .clone()
            .into_event(session.clone(), slot.seq, slot.received_at);
        match self.events.insert(&event).await {
            Ok(()) => Ok(Written::Created(event)),
            Err(StoreError::Duplicate) => self.replay(session, &new).await,
            Err(e) => Err(e.into()),
        }
    }

    /// The session is missing or closed: only a replay of an already stored event succeeds.
    async fn append_to_unavailable_session(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        let Some(stored_session) = self.sessions.get(session).await? else {
            return Err(ServiceError::SessionNotFound(session.clone()));
        };
        match self.events.get(session, &new.event_id).await? {
            Some(stored) => compare(new, stored),
            None => Err(ServiceError::SessionClosed(Box::new(stored_session))),
        }
    }

    async fn replay(
        &self,
        session: &SessionId,
        new: &NewEvent,
    ) -> Result<Written<Event>, ServiceError> {
        match self.events.get(session, &new.event_id).await? {
            Some(stored) => compare(new, stored),
            // The duplicate-key error proves the event exists; not finding it means the
            // store lost it in between, which only an erasure can do.
            None => {
                Err(StoreError::Backend("event vanished after a duplicate-key error".into()).into())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(session_id = %session, event_id = %event))]
    pub async fn get(&self, session: &SessionId, event: &EventId) -> Result<Event, ServiceError> {
        if let Some(found) = self.events.get(session, event).await? {
            return Ok(found);
        }
        match self.sessions.get(session).await? {
            Some(_) => Err(ServiceError::EventNotFound),
            None => Err(ServiceError::SessionNotFound(session.clone())),
        }
    }

    /// One page of the session's events by (timestamp, seq). A non-empty page costs one
    /// store query; an empty one checks that the session exists.
    #[tracing::instrument(skip_all, fields(session_id = %session))]
    pub async fn page(
        &self,
        session: &SessionId,
        request: &PageRequest,
    ) -> Result<Page<Event>, ServiceError> {
        let scope = Cursor::scope_of(&["events", session.as_str()]);
        let start = match &request.position {
            PagePosition::First => PageStart::First,
            PagePosition::Cursor(token) => {
                PageStart::After(Cursor::decode(token, request.order, scope)?)
            }
            PagePosition::Page(n) => {
                PageStart::Offset(n.saturating_sub(1).saturating_mul(request.limit as u64))
            }
        };
        let query = EventPageQuery {
            order: request.order,
            start,
            limit: request.limit + 1,
        };
        let mut data = self.events.page(session, &query).await?;
        if data.is_empty() && self.sessions.get(session).await?.is_none() {
            return Err(ServiceError::SessionNotFound(session.clone()));
        }
        let has_more = data.len() > request.limit;
        data.truncate(request.limit);
        let next_cursor = has_more.then(|| data.last()).flatten().map(|last| {
            Cursor {
                order: request.order,
                position: last.position(),
                scope,
            }
            .encode()
        });
        Ok(Page {
            data,
            next_cursor,
            has_more,
        })
    }
}

fn compare(new: &NewEvent, stored: Event) -> Result<Written<Event>, ServiceError> {
    if new.matches(&stored) {
        Ok(Written::Existing(stored))
    } else {
        Err(ServiceError::EventConflict(Box::new(stored)))
    }
}
