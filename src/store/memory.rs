//! The embedded store: the same semantics as MongoDB, held in this process only.

use std::collections::hash_map::{DefaultHasher, Entry as MapEntry};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::{
    CreateOutcome, DurableEvents, EraseHold, EraseStart, EventPageQuery, EventRepository, Inserted,
    PageStart, Reservation, SessionPageQuery, SessionRepository, StoreError,
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
    by_seq: BTreeMap<i64, Arc<Event>>,
}

impl SessionEntry {
    /// Stores the event unless its id is taken; the unique index of the in-memory store.
    fn insert(&mut self, event: &Event) -> Inserted {
        // One lookup by id, which hashes the id once.
        let MapEntry::Vacant(by_id) = self.by_id.entry(event.event_id.clone()) else {
            return Inserted::EventIdTaken;
        };
        if self.by_seq.contains_key(&event.seq) {
            return Inserted::SeqTaken;
        }
        let event = Arc::new(event.clone());
        self.timeline.insert(event.position(), Arc::clone(&event));
        self.by_seq.insert(event.seq, Arc::clone(&event));
        by_id.insert(event);
        Inserted::Stored
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
    /// Erases closed sessions, with their events, that ended more than `retention` ago.
    /// Returns how many went.
    pub fn erase_expired(&self, retention: std::time::Duration) -> usize {
        let cutoff = Timestamp::now().minus(retention);
        let expired = |entry: &Arc<Mutex<SessionEntry>>| {
            entry
                .lock()
                .is_ok_and(|e| e.session.ended_at.is_some_and(|ended| ended < cutoff))
        };
        let mut erased = 0;
        for shard in self.shards.iter() {
            let Ok(mut shard) = shard.write() else {
                continue;
            };
            let before = shard.len();
            shard.retain(|_, entry| !expired(entry));
            erased += before - shard.len();
        }
        erased
    }

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
                    by_seq: BTreeMap::new(),
                })));
                Ok(CreateOutcome::Created(session))
            }
        }
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.with_entry(id, |e| e.session.clone())
    }

    /// The whole erasure at once: a session's events are held in its entry and go with it.
    /// The id is free at once, so [`Self::delete`] and `delete_session_events` have nothing
    /// left to do, and must not touch a session created again since. Nothing is held, so a
    /// concurrent erasure is never busy.
    async fn begin_erase(&self, id: &SessionId) -> Result<EraseStart, StoreError> {
        let mut shard = self.shard(id).write().map_err(|_| poisoned())?;
        let existed = shard.remove(id).is_some();
        Ok(EraseStart::Holding(EraseHold {
            existed,
            lease: String::new(),
            last_write: None,
        }))
    }

    async fn delete(&self, _id: &SessionId, _lease: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn list(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError> {
        let mut sessions = self.matching_sessions(query)?;
        sessions.sort_unstable_by(|a, b| match query.order {
            Order::Asc => session_key(a).cmp(&session_key(b)),
            Order::Desc => session_key(b).cmp(&session_key(a)),
        });
        sessions.truncate(query.limit);
        Ok(sessions)
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

    async fn raise_seq(&self, id: &SessionId, seq: i64) -> Result<(), StoreError> {
        self.with_entry(id, |e| e.last_seq = e.last_seq.max(seq))?;
        Ok(())
    }
}

#[async_trait]
impl EventRepository for MemoryStore {
    async fn last_seq(&self, session: &SessionId) -> Result<Option<i64>, StoreError> {
        let last = self.with_entry(session, |e| e.by_seq.last_key_value().map(|(seq, _)| *seq))?;
        Ok(last.flatten())
    }

    async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let inserted = self.with_entry(&first.session_id, |e| {
            events.iter().map(|event| e.insert(event)).collect()
        })?;
        inserted.ok_or(StoreError::SessionGone)
    }

    /// Nothing: the events went with their session's entry in `begin_erase`, and an entry
    /// here now is a session created since, whose events are not erased.
    async fn delete_session_events(&self, _session: &SessionId) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// One process: a write is as durable as it will be once it is visible.
    async fn get_durable(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<DurableEvents, StoreError> {
        let found = self.with_entry(session, |e| {
            ids.iter()
                .filter_map(|id| e.by_id.get(id).map(|ev| Event::clone(ev)))
                .collect()
        })?;
        Ok(DurableEvents {
            events: found.unwrap_or_default(),
            pending: false,
        })
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
        let page = self.with_entry(session, |e| e.page(query))?;
        Ok(page.unwrap_or_default())
    }
}

impl SessionEntry {
    /// Walks the right index from the right bound; the cost is the page plus the events the
    /// filter skips, never the whole session.
    fn page(&self, query: &EventPageQuery) -> Vec<Event> {
        let filter = &query.filter;
        let keep = |ev: &&Arc<Event>| filter.matches(ev);
        if let PageStart::AfterSeq(seq) = query.start {
            let range = self.by_seq.range((Bound::Excluded(seq), Bound::Unbounded));
            return collect(range.map(|(_, ev)| ev).filter(keep), 0, query.limit);
        }
        let from = filter.from.map(|t| EventPosition {
            timestamp: t,
            seq: i64::MIN,
        });
        let to = filter.to.map(|t| EventPosition {
            timestamp: t,
            seq: i64::MIN,
        });
        let mut lower = from.map_or(Bound::Unbounded, Bound::Included);
        let mut upper = to.map_or(Bound::Unbounded, Bound::Excluded);
        match (query.order, query.start) {
            (Order::Asc, PageStart::After(p)) if from.is_none_or(|f| p >= f) => {
                lower = Bound::Excluded(p);
            }
            (Order::Desc, PageStart::After(p)) if to.is_none_or(|t| p < t) => {
                upper = Bound::Excluded(p);
            }
            _ => {}
        }
        let skip = match query.start {
            PageStart::Offset(n) => usize::try_from(n).unwrap_or(usize::MAX),
            _ => 0,
        };
        if bounds_are_empty(&lower, &upper) {
            return Vec::new();
        }
        let range = self.timeline.range((lower, upper)).map(|(_, ev)| ev);
        match query.order {
            Order::Asc => collect(range.filter(keep), skip, query.limit),
            Order::Desc => collect(range.rev().filter(keep), skip, query.limit),
        }
    }
}

/// BTreeMap::range panics on inverted bounds; such a range holds nothing.
fn bounds_are_empty(lower: &Bound<EventPosition>, upper: &Bound<EventPosition>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

fn collect<'a>(
    events: impl Iterator<Item = &'a Arc<Event>>,
    skip: usize,
    limit: usize,
) -> Vec<Event> {
    events
        .skip(skip)
        .take(limit)
        .map(|ev| Event::clone(ev))
        .collect()
}

/// Sessions in listing order: by startedAt, ties broken by id.
fn session_key(s: &Session) -> (Timestamp, &SessionId) {
    (s.started_at, &s.session_id)
}

impl MemoryStore {
    /// Every session matching the filter and lying after the cursor. The in-memory store
    /// scans all sessions for a listing: it serves development, not millions of sessions.
    fn matching_sessions(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError> {
        let after = query.after.as_ref().map(|(t, id)| (*t, id));
        let beyond = |s: &Session| match (after, query.order) {
            (None, _) => true,
            (Some(cursor), Order::Asc) => session_key(s) > cursor,
            (Some(cursor), Order::Desc) => session_key(s) < cursor,
        };
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().map_err(|_| poisoned())?;
            for entry in shard.values() {
                let entry = entry.lock().map_err(|_| poisoned())?;
                if query.filter.matches(&entry.session) && beyond(&entry.session) {
                    found.push(entry.session.clone());
                }
            }
        }
        Ok(found)
    }
}
