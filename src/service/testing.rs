//! What the services' unit tests share.

use crate::domain::{JsonObject, NewSession, SessionId, SessionStatus, Timestamp};
use crate::store::{MemoryStore, SessionRepository};

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
