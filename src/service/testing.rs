//! What the services' unit tests share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::domain::{
    FinalStatus, JsonObject, NewSession, Session, SessionId, SessionStatus, Timestamp,
};
use crate::store::{
    CreateOutcome, EraseStart, MemoryStore, Reservation, SessionPageQuery, SessionRepository,
    StoreError,
};

/// Creates the active session `call-1` in `memory`.
pub async fn open_session(memory: &MemoryStore) -> SessionId {
    let session = SessionId::parse("call-1").unwrap();
    let new = NewSession {
        session_id: session.clone(),
        language: None,
        metadata: JsonObject::default(),
        status: SessionStatus::Active,
        started_at: None,
    };
    memory.create(new, Timestamp::now()).await.unwrap();
    session
}

/// The in-memory session store, with a race or a failure set up for the next call.
pub struct Sessions {
    pub memory: Arc<MemoryStore>,
    /// The next reservation misses the session, which `open_session` creates right after.
    pub miss_next_reservation: AtomicBool,
    /// The next read fails as an unavailable database.
    pub fail_next_get: AtomicBool,
    /// The next erasure's mark takes as long as a whole lease (on tokio's paused clock).
    pub stall_next_erase: AtomicBool,
    /// The next close finds no session, and `open_session` creates it right after.
    pub create_after_next_close: AtomicBool,
}

impl Sessions {
    pub fn new(memory: &Arc<MemoryStore>) -> Self {
        Self {
            memory: Arc::clone(memory),
            miss_next_reservation: AtomicBool::new(false),
            fail_next_get: AtomicBool::new(false),
            stall_next_erase: AtomicBool::new(false),
            create_after_next_close: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl SessionRepository for Sessions {
    async fn create(&self, new: NewSession, now: Timestamp) -> Result<CreateOutcome, StoreError> {
        self.memory.create(new, now).await
    }
    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        if self.fail_next_get.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the test failed this read".into()));
        }
        self.memory.get(id).await
    }
    async fn list(&self, query: &SessionPageQuery) -> Result<Vec<Session>, StoreError> {
        self.memory.list(query).await
    }
    async fn begin_erase(&self, id: &SessionId) -> Result<EraseStart, StoreError> {
        if self.stall_next_erase.swap(false, Ordering::SeqCst) {
            tokio::time::advance(crate::store::ERASE_LEASE).await;
        }
        self.memory.begin_erase(id).await
    }
    async fn delete(&self, id: &SessionId, lease: &str) -> Result<(), StoreError> {
        self.memory.delete(id, lease).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.memory.ping().await
    }
    async fn reserve_seqs(
        &self,
        id: &SessionId,
        count: u32,
        now: Timestamp,
    ) -> Result<Option<Reservation>, StoreError> {
        if self.miss_next_reservation.swap(false, Ordering::SeqCst) {
            open_session(&self.memory).await;
            return Ok(None);
        }
        self.memory.reserve_seqs(id, count, now).await
    }
    async fn close(
        &self,
        id: &SessionId,
        status: FinalStatus,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let closed = self.memory.close(id, status, now).await;
        if self.create_after_next_close.swap(false, Ordering::SeqCst) {
            open_session(&self.memory).await;
        }
        closed
    }
    async fn raise_seq(&self, id: &SessionId, seq: i64) -> Result<(), StoreError> {
        self.memory.raise_seq(id, seq).await
    }
}
