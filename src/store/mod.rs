//! Persistence behind two repository traits, with a MongoDB and an in-memory implementation.
//!
//! Every guarantee a service relies on (one session per id, one event per (session, eventId),
//! no append to a closed session) is enforced inside the store by one atomic operation, never
//! by reading first and writing after.

mod bson_json;
mod memory;
mod metered;
pub mod mongo;

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{
    Event, EventId, EventPosition, EventType, FinalStatus, Language, NewSession, Order, Session,
    SessionId, SessionStatus, Timestamp,
};

pub use memory::MemoryStore;
pub use metered::Metered;
pub use mongo::MongoStore;

/// A boxed error cause, kept for logs and never shown to clients.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong in a store, in the words services need.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already holds another document.
    #[error("duplicate key")]
    Duplicate,
    /// The event's seq is held by another event of the session: one that an append in
    /// flight stored after the session was erased (see DESIGN.md, "Erasure and retention").
    /// Nothing was stored; the event needs another seq.
    #[error("the seq is taken")]
    SeqTaken,
    /// The session was erased while the event was on its way (the in-memory store, which
    /// keeps a session's events inside its entry).
    #[error("the session is gone")]
    SessionGone,
    /// The database cannot be reached or did not answer in time; worth retrying.
    #[error("the store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The id is held by an erasure for now; worth retrying shortly. The message says so.
    #[error("{0}")]
    Busy(&'static str),
    /// Anything else: a bug or a broken database.
    #[error("the store failed")]
    Backend(#[source] BoxError),
}

/// What became of one event of [`EventRepository::insert_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    Stored,
    /// Its eventId is taken: nothing was stored, and its seq stays empty.
    EventIdTaken,
    /// As [`StoreError::SeqTaken`].
    SeqTaken,
}

/// The result of an idempotent create.
#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created(Session),
    /// A session was already stored under this id; it is returned unchanged.
    Existing(Session),
}

/// Consecutive slots in an open session's timeline, taken atomically with the open-status
/// check: `first_seq`, `first_seq + 1`, ... for as many as were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub first_seq: i64,
    /// The session's clock after the reservation: never earlier than any previous receive time,
    /// so a later close always ends at or after it.
    pub received_at: Timestamp,
}

/// Where a page of events starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart {
    /// The first page, ordered by (timestamp, seq).
    First,
    /// Strictly after this position, in the page's (timestamp, seq) order.
    After(EventPosition),
    /// After skipping this many events (the compatibility `page` parameter).
    Offset(u64),
    /// Events with a greater seq, ordered by seq alone (ascending).
    AfterSeq(i64),
}

/// Conditions every event of a page meets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    /// Any of these types; all types when empty.
    pub types: Vec<EventType>,
    /// `timestamp >= from`.
    pub from: Option<Timestamp>,
    /// `timestamp < to`.
    pub to: Option<Timestamp>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        (self.types.is_empty() || self.types.contains(&event.event_type))
            && self.from.is_none_or(|from| event.timestamp >= from)
            && self.to.is_none_or(|to| event.timestamp < to)
    }
}

/// A request for one page of a session's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPageQuery {
    pub order: Order,
    pub start: PageStart,
    pub filter: EventFilter,
    /// How many events to return at most.
    pub limit: usize,
}

/// Conditions every session of a listing meets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionFilter {
    /// Any of these statuses; all when empty.
    pub statuses: Vec<SessionStatus>,
    pub language: Option<Language>,
    /// `startedAt >= started_after`.
    pub started_after: Option<Timestamp>,
    /// `startedAt < started_before`.
    pub started_before: Option<Timestamp>,
    /// Top-level metadata keys that must hold exactly these strings.
    pub metadata: Vec<(String, String)>,
}

impl SessionFilter {
    pub fn matches(&self, session: &Session) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&session.status))
            && self
                .language
                .as_ref()
                .is_none_or(|l| session.language.as_ref() == Some(l))
            && self.started_after.is_none_or(|t| session.started_at >= t)
            && self.started_before.is_none_or(|t| session.started_at < t)
            && self.metadata.iter().all(|(key, value)| {
                // MongoDB's equality: the string itself, or an array that holds it.
                match session.metadata.as_map().get(key) {
                    Some(serde_json::Value::String(s)) => s == value,
                    Some(serde_json::Value::Array(items)) => {
                        items.iter().any(|i| i.as_str() == Some(value.as_str()))
                    }
                    _ => false,
                }
            })
    }
}

/// A request for one page of sessions, ordered by (startedAt, sessionId).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPageQuery {
    pub order: Order,
    pub filter: SessionFilter,
    /// Strictly after this (startedAt, sessionId), in the page's order.
    pub after: Option<(Timestamp, SessionId)>,
    pub limit: usize,
}

/// How long an erasure holds its session id against other erasures. One that stopped midway
/// (its instance died, or the database failed a step) is taken over after this; one still
/// running is done long before.
pub const ERASE_LEASE: Duration = Duration::from_secs(60);

/// The latest reservation or close of a session: its last seq and its clock then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastWrite {
    pub seq: i64,
    pub at: Timestamp,
}

/// An erasure's hold on its session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseHold {
    /// Whether there was a session under the id.
    pub existed: bool,
    /// Names the hold for [`SessionRepository::delete`]; empty where the store holds
    /// nothing (the in-memory store, which erases at once).
    pub lease: String,
    /// The session's last reserved seq and its clock when marked, for appends that reserved
    /// before the mark and may still be inserting; `None` for an id with no session, and
    /// where no append can outlive an erasure (the in-memory store).
    pub last_write: Option<LastWrite>,
}

/// What [`SessionRepository::begin_erase`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseStart {
    /// This erasure holds the id.
    Holding(EraseHold),
    /// Another erasure of the id is under way, or creates and erasures of it kept changing
    /// it under this one: try again shortly.
    Busy,
}

/// Sessions, keyed by their id.
#[async_trait]
pub trait SessionRepository: Send + Sync {
    /// Stores the session unless one exists under its id; either way in one atomic step.
    async fn create(&self, new: NewSession, now: Timestamp) -> Result<CreateOutcome, StoreError>;

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;

    /// One page of sessions matching the query's filter.
    async fn list(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError>;

    /// Starts erasing the session and holds its id for this erasure alone. From then on the
    /// session reads as missing and takes no reservation and no close, and its id cannot be
    /// created again (a create fails with [`StoreError::Busy`]) until [`Self::delete`]
    /// finishes the erasure: so its events, erased in between through
    /// [`EventRepository::delete_session_events`], can only be its own. An id with no
    /// session is held the same way, so that a session created meanwhile cannot lose its
    /// events to that erasure either. While one erasure holds the id, another gets
    /// [`EraseStart::Busy`], until the holder deletes the id or its lease runs out.
    async fn begin_erase(&self, id: &SessionId) -> Result<EraseStart, StoreError>;

    /// Finishes the erasure that holds `lease`: the id is free again. A session not being
    /// erased, or held by another erasure, is left alone.
    async fn delete(&self, id: &SessionId, lease: &str) -> Result<(), StoreError>;

    /// Whether the store answers: a round trip to the database, or nothing in memory.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Takes the next `count` seqs of an open session, marks it active and advances its clock
    /// to at least `now`. `None` when the session is missing or closed.
    async fn reserve_seqs(
        &self,
        id: &SessionId,
        count: u32,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StoreError>;

    /// Closes an open session with `status`; it ends at its clock advanced to at least `now`.
    /// `None` when the session is missing or already closed.
    async fn close(
        &self,
        id: &SessionId,
        status: FinalStatus,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError>;

    /// Raises the session's seq counter to at least `seq` (never lowers it), so that its
    /// next reservation starts past `seq`. Nothing happens to a missing session.
    async fn raise_seq(&self, id: &SessionId, seq: i64) -> Result<(), StoreError>;
}

/// What a replay may be judged against: the stored events that no failover undoes.
#[derive(Debug)]
pub struct DurableEvents {
    /// The stored events among the ids looked for whose writes are as durable as the store
    /// acknowledges writes: with MongoDB under `w: majority`, those a majority of the members
    /// hold.
    pub events: Vec<Event>,
    /// Whether another of the ids is stored by a write that is not that durable yet: the
    /// first send of a request still replicating. A 200 for its retry could rest on a write
    /// that a failover undoes, so the retry must wait.
    pub pending: bool,
}

/// Events, unique by (sessionId, eventId).
#[async_trait]
pub trait EventRepository: Send + Sync {
    /// Stores the event, or fails with [`StoreError::Duplicate`] when its eventId is taken,
    /// [`StoreError::SeqTaken`] when its seq is. A bulk write of one: with MongoDB, the
    /// driver's single insert keeps only the first write error of a reply, and drops a
    /// write concern failure that came with a duplicate key, which must not pass for a
    /// replay of an event that may not be on a majority yet.
    async fn insert(&self, event: &Event) -> Result<(), StoreError> {
        match self
            .insert_many(std::slice::from_ref(event))
            .await?
            .as_slice()
        {
            [Inserted::Stored] => Ok(()),
            [Inserted::SeqTaken] => Err(StoreError::SeqTaken),
            _ => Err(StoreError::Duplicate),
        }
    }

    /// Stores what it can of `events` in one bulk write, and tells what became of each, in
    /// order. An eventId or seq taken by an earlier event of the same call counts as taken.
    /// Any other failure fails the call; some events may then be stored already.
    async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError>;

    async fn get(&self, session: &SessionId, event: &EventId) -> Result<Option<Event>, StoreError>;

    /// The highest seq among the session's stored events.
    async fn last_seq(&self, session: &SessionId) -> Result<Option<i64>, StoreError>;

    /// Erases every event of the session; returns how many there were.
    async fn delete_session_events(&self, session: &SessionId) -> Result<u64, StoreError>;

    /// The durable events of `session` among `ids`, in no particular order, and whether
    /// another of them is stored but not durable yet.
    async fn get_durable(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<DurableEvents, StoreError>;

    /// One page of the session's events; empty for an unknown session.
    async fn page(
        &self,
        session: &SessionId,
        query: &EventPageQuery,
    ) -> Result<Vec<Event>, StoreError>;
}
