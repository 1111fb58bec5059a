use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span};

use super::{Page, ServiceError, Written};
use crate::domain::{
    Cursor, CursorKey, FinalStatus, NewSession, Order, Session, SessionId, SessionStatus, Timestamp,
};
use crate::feed::SessionFeed;
use crate::store::{
    CreateOutcome, EraseHold, EraseStart, EventRepository, LastWrite, SessionFilter,
    SessionPageQuery, SessionRepository, StoreError, ERASE_LEASE,
};

/// How long an erasure waits for another erasure of the same id to end.
const ERASE_WAIT: Duration = Duration::from_secs(5);

/// Past half its lease (this instance was paused, or the store slow), another erasure may
/// soon take the id over and free it: a `deleteMany` sent after that could take a new
/// session's events. So an erasure that late sends none; the id stays held, and a repeated
/// `DELETE` finishes the job.
fn on_time(held: Instant) -> Result<(), ServiceError> {
    if held.elapsed() > ERASE_LEASE / 2 {
        return Err(StoreError::Unavailable(
            "the erasure was held up before deleting the events: send the DELETE again".into(),
        )
        .into());
    }
    Ok(())
}

/// A validated request for a page of sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionListRequest {
    pub order: Order,
    /// 1..=1000.
    pub limit: usize,
    pub cursor: Option<String>,
    pub filter: SessionFilter,
}

impl SessionListRequest {
    /// The scope a cursor of this listing is bound to: every filter.
    fn scope(&self) -> u64 {
        let f = &self.filter;
        let mut statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        let mut metadata: Vec<String> = f
            .metadata
            .iter()
            .map(|(k, v)| format!("{}\u{0}{}", escaped(k), escaped(v)))
            .collect();
        metadata.sort_unstable();
        let millis = |t: Option<Timestamp>| t.map_or(String::new(), |t| t.millis().to_string());
        Cursor::scope_of(&[
            "sessions",
            &statuses.join(","),
            f.language.as_ref().map_or("", |l| l.as_str()),
            &millis(f.started_after),
            &millis(f.started_before),
            &metadata.join("\u{1}"),
        ])
    }
}

/// `text` with the metadata scope's separators (NUL, U+0001) and the escape U+0002 each
/// written as U+0002 and a letter, so that no two filters share a scope. Text without
/// them, all that real filters hold, is unchanged: cursors issued before still match.
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(['\u{0}', '\u{1}', '\u{2}']) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        match c {
            '\u{0}' => out.push_str("\u{2}a"),
            '\u{1}' => out.push_str("\u{2}b"),
            '\u{2}' => out.push_str("\u{2}c"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Creates, reads and closes sessions.
#[derive(Clone)]
pub struct SessionService {
    sessions: Arc<dyn SessionRepository>,
    events: Arc<dyn EventRepository>,
    feed: Arc<SessionFeed>,
    /// See [`crate::config::Config::erase_settle`].
    erase_settle: Duration,
    /// The erasures under way, so that a shutdown can let them end.
    erasures: TaskTracker,
}

impl SessionService {
    pub fn new(
        sessions: Arc<dyn SessionRepository>,
        events: Arc<dyn EventRepository>,
        feed: Arc<SessionFeed>,
        erase_settle: Duration,
    ) -> Self {
        Self {
            sessions,
            events,
            feed,
            erase_settle,
            erasures: TaskTracker::new(),
        }
    }

    /// The erasures under way. A shutdown closes it and waits for them: those whose client
    /// hung up are no request in progress, and would otherwise be cut off midway.
    pub fn erasures(&self) -> TaskTracker {
        self.erasures.clone()
    }

    /// Whether the store answers.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        Ok(self.sessions.ping().await?)
    }

    /// Creates the session, or recognises a retry of the create that made it.
    pub async fn create(&self, new: NewSession) -> Result<Written<Session>, ServiceError> {
        let retry = new.clone();
        match self.sessions.create(new, Timestamp::now()).await? {
            CreateOutcome::Created(s) => Ok(Written::Created(s)),
            CreateOutcome::Existing(s) if retry.matches(&s) => Ok(Written::Existing(s)),
            CreateOutcome::Existing(s) => Err(ServiceError::SessionConflict(Box::new(s))),
        }
    }

    pub async fn get(&self, id: &SessionId) -> Result<Session, ServiceError> {
        self.sessions
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))
    }

    /// One page of sessions, newest `startedAt` first unless asked otherwise.
    pub async fn list(&self, request: &SessionListRequest) -> Result<Page<Session>, ServiceError> {
        let scope = request.scope();
        let after = request
            .cursor
            .as_deref()
            .map(|token| Cursor::decode_session(token, request.order, scope))
            .transpose()?;
        let query = SessionPageQuery {
            order: request.order,
            filter: request.filter.clone(),
            after,
            limit: request.limit + 1,
        };
        let mut data = self.sessions.list(&query).await?;
        let has_more = data.len() > request.limit;
        data.truncate(request.limit);
        let next_cursor = has_more.then(|| data.last()).flatten().map(|last| {
            Cursor {
                order: request.order,
                scope,
                timestamp: last.started_at,
                key: CursorKey::Id(last.session_id.as_str().to_owned()),
            }
            .encode()
        });
        Ok(Page {
            data,
            next_cursor,
            has_more,
        })
    }

    /// Erases the session and all its events; afterwards the id is free again.
    ///
    /// The erasure runs to its end in a task of its own, even when the caller stops waiting
    /// (a client that hangs up): stopped midway, it would leave the id held, and the events
    /// readable, until a repeated `DELETE`.
    pub async fn erase(&self, id: &SessionId) -> Result<(), ServiceError> {
        let (service, id) = (self.clone(), id.clone());
        let (answer, answered) = oneshot::channel();
        let erasure = async move {
            let erased = service.erase_to_the_end(&id).await;
            if let Err(Err(e)) = answer.send(erased) {
                // Nobody is left to log it with the response.
                tracing::warn!(
                    session_id = %id,
                    error = %e,
                    "an erasure whose client hung up failed; a repeated DELETE finishes it"
                );
            }
        };
        self.erasures.spawn(erasure.instrument(Span::current()));
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Backend("the erasure stopped before it answered".into()).into())
        })
    }

    async fn erase_to_the_end(&self, id: &SessionId) -> Result<(), ServiceError> {
        // The session is marked first, so that no new append can reserve a seq; then its
        // events go; only then is the id free, so the events deleted are all its own.
        let held = Instant::now();
        let hold = self.hold_for_erasure(id).await?;
        on_time(held)?;
        let deleted = self.events.delete_session_events(id).await?;
        if let Some(wait) = hold
            .last_write
            .and_then(|w| self.in_flight_wait(w, deleted))
        {
            tokio::time::sleep(wait).await;
            on_time(held)?;
            self.events.delete_session_events(id).await?;
        }
        self.sessions.delete(id, &hold.lease).await?;
        self.feed.closed(id);
        if hold.existed {
            Ok(())
        } else {
            Err(ServiceError::SessionNotFound(id.clone()))
        }
    }

    /// How long to wait for appends that reserved a seq before the mark and may still be
    /// inserting, before the events are deleted once more. None when every reserved seq
    /// was among the events deleted (nothing can be in flight), or when the session's
    /// last write is older than an insert may take. A replay or a conflict also takes a
    /// seq and stores nothing, so after one a recent erasure waits without need.
    fn in_flight_wait(&self, last: LastWrite, deleted: u64) -> Option<Duration> {
        if i64::try_from(deleted).unwrap_or(i64::MAX) >= last.seq {
            return None;
        }
        let settled = last.at.plus(self.erase_settle);
        let left = settled.millis().saturating_sub(Timestamp::now().millis());
        // A clock that writes ahead of this one's must not stretch the wait past the settle.
        u64::try_from(left)
            .ok()
            .filter(|&ms| ms > 0)
            .map(|ms| Duration::from_millis(ms).min(self.erase_settle))
    }

    /// Takes the id for this erasure. While another erasure of it is under way (a duplicate
    /// `DELETE`), this one waits for it to end, a little longer each time, and then erases
    /// whatever is there by then; past [`ERASE_WAIT`] more than the other may wait for
    /// appends in flight, it gives up with 503.
    async fn hold_for_erasure(&self, id: &SessionId) -> Result<EraseHold, ServiceError> {
        let deadline = Instant::now() + ERASE_WAIT + self.erase_settle;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.sessions.begin_erase(id).await? {
                EraseStart::Holding(hold) => return Ok(hold),
                EraseStart::Busy if Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                EraseStart::Busy => {
                    return Err(ServiceError::Busy(
                        "another erasure of this session is under way: send the DELETE again",
                    ))
                }
            }
        }
    }

    /// Ends the session once. Repeating the same close returns the session as it ended.
    pub async fn complete(
        &self,
        id: &SessionId,
        status: FinalStatus,
    ) -> Result<Session, ServiceError> {
        if let Some(closed) = self.sessions.close(id, status, Timestamp::now()).await? {
            self.feed.closed(id);
            return Ok(closed);
        }
        let stored = self.get(id).await?;
        if stored.status == SessionStatus::from(status) {
            Ok(stored)
        } else if stored.status.is_open() {
            // There was no session to close, and one was created since.
            Err(ServiceError::SessionNotFound(id.clone()))
        } else {
            Err(ServiceError::SessionClosed(Box::new(stored)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::service::testing::{open_session, Sessions};
    use crate::store::MemoryStore;

    fn listing(metadata: &[(&str, &str)]) -> SessionListRequest {
        SessionListRequest {
            order: Order::Asc,
            limit: 1,
            cursor: None,
            filter: SessionFilter {
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..SessionFilter::default()
            },
        }
    }

    /// A filter value may hold the bytes that separate the metadata pairs in the scope;
    /// two different filters must still not share one.
    #[test]
    fn metadata_filters_that_differ_never_share_a_cursor_scope() {
        let pairs = listing(&[("a", "x"), ("b", "y")]);
        for one in ["x\u{1}b\u{0}y", "x\u{2}b\u{0}y", "x\u{2}bb\u{0}y"] {
            assert_ne!(listing(&[("a", one)]).scope(), pairs.scope(), "{one:?}");
        }
        assert_ne!(
            listing(&[("a", "\u{2}a")]).scope(),
            listing(&[("a", "\u{0}")]).scope()
        );
        // Filters without those bytes keep the scope that cursors were issued with.
        let before = Cursor::scope_of(&["sessions", "", "", "", "", "a\u{0}x\u{1}b\u{0}y"]);
        assert_eq!(pairs.scope(), before);
    }

    fn on(sessions: &Arc<Sessions>, memory: &Arc<MemoryStore>) -> SessionService {
        SessionService::new(
            Arc::clone(sessions) as _,
            Arc::clone(memory) as _,
            Arc::new(SessionFeed::default()),
            Duration::ZERO,
        )
    }

    /// A close that finds no session answers 404, also when the session is created before
    /// the service reads it again: not 409 `session_closed` with an open session.
    #[tokio::test]
    async fn a_close_of_a_session_created_meanwhile_answers_404() {
        let memory = Arc::new(MemoryStore::default());
        let sessions = Arc::new(Sessions::new(&memory));
        let service = on(&sessions, &memory);
        sessions
            .create_after_next_close
            .store(true, Ordering::SeqCst);
        let id = SessionId::parse("call-1").unwrap();
        let closed = service.complete(&id, FinalStatus::Completed).await;
        assert!(
            matches!(closed, Err(ServiceError::SessionNotFound(_))),
            "{closed:?}"
        );
        assert!(!sessions.create_after_next_close.load(Ordering::SeqCst));
    }

    /// An erasure held up past half its lease before deleting the events answers 503, since
    /// another erasure may take the id over and free it meanwhile; one on time answers 204.
    #[tokio::test(start_paused = true)]
    async fn an_erasure_held_up_past_half_its_lease_answers_503() {
        let memory = Arc::new(MemoryStore::default());
        let sessions = Arc::new(Sessions::new(&memory));
        let service = on(&sessions, &memory);
        let id = open_session(&memory).await;
        sessions.stall_next_erase.store(true, Ordering::SeqCst);
        let late = service.erase(&id).await;
        assert!(
            matches!(late, Err(ServiceError::Store(StoreError::Unavailable(_)))),
            "{late:?}"
        );
        let id = open_session(&memory).await;
        service.erase(&id).await.unwrap();
    }
}
