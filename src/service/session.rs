use std::sync::Arc;

use super::{ServiceError, Written};
use crate::domain::{FinalStatus, NewSession, Session, SessionId, SessionStatus, Timestamp};
use crate::store::{CreateOutcome, SessionRepository};

/// Creates, reads and closes sessions.
#[derive(Clone)]
pub struct SessionService {
    sessions: Arc<dyn SessionRepository>,
}

impl SessionService {
    pub fn new(sessions: Arc<dyn SessionRepository>) -> Self {
        Self { sessions }
    }

    /// Creates the session, or recognises a retry of the create that made it.
    #[tracing::instrument(skip_all, fields(session_id = %new.session_id))]
    pub async fn create(&self, new: NewSession) -> Result<Written<Session>, ServiceError> {
        let retry = new.clone();
        match self.sessions.create(new, Timestamp::now()).await? {
            CreateOutcome::Created(s) => Ok(Written::Created(s)),
            CreateOutcome::Existing(s) if retry.matches(&s) => Ok(Written::Existing(s)),
            CreateOutcome::Existing(s) => Err(ServiceError::SessionConflict(Box::new(s))),
        }
    }

    #[tracing::instrument(skip_all, fields(session_id = %id))]
    pub async fn get(&self, id: &SessionId) -> Result<Session, ServiceError> {
        self.sessions
            .get(id)
            .await?
            .ok_or_else(|| ServiceError::SessionNotFound(id.clone()))
    }

    /// Ends the session once. Repeating the same close returns the session as it ended.
    #[tracing::instrument(skip_all, fields(session_id = %id))]
    pub async fn complete(
        &self,
        id: &SessionId,
        status: FinalStatus,
    ) -> Result<Session, ServiceError> {
        if let Some(closed) = self.sessions.close(id, status, Timestamp::now()).await? {
            return Ok(closed);
        }
        let stored = self.get(id).await?;
        if stored.status == SessionStatus::from(status) {
            Ok(stored)
        } else {
            Err(ServiceError::SessionClosed(Box::new(stored)))
        }
    }
}
