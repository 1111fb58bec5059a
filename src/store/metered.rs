//! A repository decorator that times every store operation into the metrics, and bounds it.
//!
//! The bound exists because the Rust driver has no socket timeout: against a database that
//! stopped answering on an open connection (a paused process, a dead network path), an
//! operation waits until the driver's heartbeat gives up on the server, about ten seconds.
//! Every write is idempotent on its unique key, so a client that gets the resulting 503
//! retries safely.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    CreateOutcome, DurableEvents, EraseStart, EventPageQuery, EventRepository, Inserted,
    Reservation, SessionPageQuery, SessionRepository, StoreError,
};
use crate::domain::{Event, EventId, FinalStatus, NewSession, Session, SessionId, Timestamp};
use crate::metrics::Metrics;

/// Wraps a store; behaves like it, records how long each call took, and turns a call that
/// outlives `bound` into [`StoreError::Unavailable`].
pub struct Metered<S> {
    inner: Arc<S>,
    metrics: Arc<Metrics>,
    bound: Option<Duration>,
}

impl<S> Metered<S> {
    pub fn new(inner: Arc<S>, metrics: Arc<Metrics>, bound: Option<Duration>) -> Self {
        Self {
            inner,
            metrics,
            bound,
        }
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match self.bound {
            None => call.await,
            Some(bound) => tokio::time::timeout(bound, call).await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    format!("{operation} had no answer within {} ms", bound.as_millis()).into(),
                ))
            }),
        };
        // A taken key or a vanished session is an answer, not a failure.
        let ok = matches!(
            result,
            Ok(_) | Err(StoreError::Duplicate | StoreError::SeqTaken | StoreError::SessionGone)
        );
        self.metrics
            .store_operation(operation, ok, started.elapsed());
        result
    }
}

#[async_trait]
impl<S: SessionRepository> SessionRepository for Metered<S> {
    async fn create(&self, new: NewSession, now: Timestamp) -> Result<CreateOutcome, StoreError> {
        self.timed("create_session", self.inner.create(new, now))
            .await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.timed("get_session", self.inner.get(id)).await
    }

    async fn list(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError> {
        self.timed("list_sessions", self.inner.list(query)).await
    }

    async fn begin_erase(&self, id: &SessionId) -> Result<EraseStart, StoreError> {
        self.timed("begin_erase", self.inner.begin_erase(id)).await
    }

    async fn delete(&self, id: &SessionId, lease: &str) -> Result<(), StoreError> {
        self.timed("delete_session", self.inner.delete(id, lease))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn reserve_seqs(
        &self,
        id: &SessionId,
        count: u32,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StoreError> {
        self.timed("reserve_seqs", self.inner.reserve_seqs(id, count, now))
            .await
    }

    async fn close(
        &self,
        id: &SessionId,
        status: FinalStatus,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.timed("close_session", self.inner.close(id, status, now))
            .await
    }

    async fn raise_seq(&self, id: &SessionId, seq: i64) -> Result<(), StoreError> {
        self.timed("raise_seq", self.inner.raise_seq(id, seq)).await
    }
}

#[async_trait]
impl<S: EventRepository> EventRepository for Metered<S> {
    async fn insert(&self, event: &Event) -> Result<(), StoreError> {
        self.timed("insert_event", self.inner.insert(event)).await
    }

    async fn insert_many(&self, events: &[Event]) -> Result<Vec<Inserted>, StoreError> {
        self.timed("insert_events", self.inner.insert_many(events))
            .await
    }

    async fn last_seq(&self, session: &SessionId) -> Result<Option<i64>, StoreError> {
        self.timed("last_seq", self.inner.last_seq(session)).await
    }

    async fn get(&self, session: &SessionId, event: &EventId) -> Result<Option<Event>, StoreError> {
        self.timed("get_event", self.inner.get(session, event))
            .await
    }

    async fn delete_session_events(&self, session: &SessionId) -> Result<u64, StoreError> {
        self.timed("delete_events", self.inner.delete_session_events(session))
            .await
    }

    async fn get_durable(
        &self,
        session: &SessionId,
        ids: &[EventId],
    ) -> Result<DurableEvents, StoreError> {
        self.timed("get_durable_events", self.inner.get_durable(session, ids))
            .await
    }

    async fn page(
        &self,
        session: &SessionId,
        query: &EventPageQuery,
    ) -> Result<Vec<Event>, StoreError> {
        self.timed("page_events", self.inner.page(session, query))
            .await
    }
}
