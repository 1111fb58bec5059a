//! The embedded store: the same semantics as MongoDB, held in this process only.

use std::collections::hash_map::{DefaultHasher, Entry as MapEntry};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::{
    CreateOutcome, EventPageQuery, EventRepository, PageStart, Reservation, SessionRepository,
    StoreError,
};
use crate::domain::{
    Event, EventId, EventPosition, FinalStatus, NewSession, Order, Session, SessionId,
    SessionStatus, Timestamp,
};

/// Shards spread the session map's lock so that concurrent calls rarely meet.
const SHARDS: usize = 64;

/// One session with its events; every operation on it holds its mutex for a few
/// microseconds and never across an await.
#[derive(Debug)]
struct SessionEntry {
    session: Session,
    last_seq: i64,
    by_id: HashMap<EventId, Arc<Event>>,
    timeline: BTreeMap<EventPosition, Arc<Event>>,
}

impl SessionEntry {
    /// Stores the event unless its id is taken; the unique index of the in-memory store.
    fn insert(&mut self, event: &Event) -> bool {
        if self.by_id.contains_key(&event.event_id) {
            return false;
        }
        let event = Arc::new(event.clone());
        self.timeline.insert(event.position(), Arc::clone(&event));
        self.by_id.insert(event.event_id.clone(), event);
        true
    }
}

type Shard = RwLock<HashMap<SessionId, Arc<Mutex<SessionEntry>>>>;

/// Sessions and events in memory, for development and tests. Nothing survives a restart.
pub struct MemoryStore {
    shards: Box<[Shard]>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl MemoryStore {
    fn shard(&self, id: &SessionId) -> &Shard {
        let mut hasher = DefaultHasher::new();
        id.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % self.shards.len()]
    }

    fn entry(&self, id: &SessionId) -> Result<Option<Arc<Mutex<SessionEntry>>>, StoreError> {
        let shard = self.shard(id).read().map_err(|_| poisoned())?;
        Ok(shard.get(id).cloned())
    }

    /// Runs `f` on the session's entry under its lock; `None` when there is no such session.
    fn with_entry<T>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut SessionEntry) -> T,
    ) -> Result<Option<T>, StoreError> {
        let Some(entry) = self.entry(id)? else {
            return Ok(None);
        };
        let mut guard = entry.lock().map_err(|_| poisoned())?;
        Ok(Some(f(&mut guard)))
    }
}

/// A lock is poisoned only after a panic while it was held: report it as a backend fault.
fn poisoned() -> StoreError {
    StoreError::Backend("in-memory store lock poisoned".into())
}

#[async_trait]
impl SessionRepository for MemoryStore {
    async fn create(&self, new: NewSession, now: Timestamp) -> Result<CreateOutcome, StoreError> {
        let mut shard = self
            .shard(&new.session_id)
            .write()
            .map_err(|_| poisoned())?;
        match shard.entry(new.session_id.clone()) {
            MapEntry::Occupied(existing) => {
                let stored = existing.get().lock().map_err(|_| poisoned())?;
                Ok(CreateOutcome::Existing(stored.session.clone()))
            }
            MapEntry::Vacant(slot) => {
                let session = new.into_session(now);
                slot.insert(Arc::new(Mutex::new(SessionEntry {
                    session: session.clone(),
                    last_seq: 0,
                    by_id: HashMap::new(),
                    timeline: BTreeMap::new(),
                })));
                Ok(CreateOutcome::Created(session))
            }
        }
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.with_entry(id, |e| e.session.clone())
    }

    async fn reserve_seqs(
        &self,
        id: &SessionId,
        count: u32,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StoreError> {
        let reserved = self.with_entry(id, |e| {
            if !e.session.status.is_open() {
                return None;
            }
            let first_seq = e.last_seq + 1;
            e.last_seq += i64::from(count);
            e.session.status = SessionStatus::Active;
            e.session.updated_at = e.session.updated_at.max(now);
            Some(Reservation {
                first_seq,
                received_at: e.session.updated_at,
            })
        })?;
        Ok(reserved.flatten())
    }

    async fn close(
        &self,
        id: &SessionId,
        status: FinalStatus,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let closed = self.with_entry(id, |e| {
            if !e.session.status.is_open() {
                return None;
            }
            e.session.status = status.into();
            e.session.updated_at = e.session.updated_at.max(now);
            e.session.ended_at = Some(e.session.updated_at);
            Some(e.session.clone())
        })?;
        Ok(closed.flatten())
    }
}

#[async_trait]
impl EventRepository for MemoryStore {
    async fn insert(&self, event: &Event) -> Result<(), StoreError> {
        match self
            .insert_many(std::slice::from_ref(event))
            .await?
            .as_slice()
        {
            [true] => Ok(()),
            _ => Err(StoreError::Duplicate),
        }
    }

    async fn insert_many(&self, events: &[Event]) -> Result<Vec<bool>, StoreError> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let inserted = self.with_entry(&first.session_id, |e| {
            events.iter().map(|event| e.insert(event)).collect()
        })?;
        inserted.ok_or_else(|| StoreError::Backend("events for an unknown session".into()))
    }

    async fn get_many(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<Vec<Event>, StoreError> {
        let found = self.with_entry(session, |e| {
            ids.iter()
                .filter_map(|id| e.by_id.get(id).map(|ev| Event::clone(ev)))
                .collect()
        })?;
        Ok(found.unwrap_or_default())
    }

    async fn get(&self, session: &SessionId, event: &EventId) -> Result<Option<Event>, StoreError> {
        let found = self.with_entry(session, |e| e.by_id.get(event).map(|ev| Event::clone(ev)))?;
        Ok(found.flatten())
    }

    async fn page(
        &self,
        session: &SessionId,
        query: &EventPageQuery,
    ) -> Result<Vec<Event>, StoreError> {
        let page = self.with_entry(session, |e| page_of(&e.timeline, query))?;
        Ok(page.unwrap_or_default())
    }
}

fn page_of(timeline: &BTreeMap<EventPosition, Arc<Event>>, query: &EventPageQuery) -> Vec<Event> {
    let (lower, upper) = match (query.order, query.start) {
        (Order::Asc, PageStart::After(p)) => (Bound::Excluded(p), Bound::Unbounded),
        (Order::Desc, PageStart::After(p)) => (Bound::Unbounded, Bound::Excluded(p)),
        _ => (Bound::Unbounded, Bound::Unbounded),
    };
    let skip = match query.start {
        PageStart::Offset(n) => usize::try_from(n).unwrap_or(usize::MAX),
        _ => 0,
    };
    let range = timeline
        .range((lower, upper))
        .map(|(_, ev)| Event::clone(ev));
    match query.order {
        Order::Asc => range.skip(skip).take(query.limit).collect(),
        Order::Desc => range.rev().skip(skip).take(query.limit).collect(),
    }
}
