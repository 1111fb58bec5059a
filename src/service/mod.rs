//! Business rules: idempotency decisions, session life cycle, paging.

mod event;
mod live;
mod session;
#[cfg(test)]
mod testing;

pub use event::{EventService, PagePosition, PageRequest};
pub use live::{LiveService, TailMessage};
pub use session::{SessionListRequest, SessionService};

use serde::Serialize;

use crate::domain::{CursorError, Event, Session, SessionId, ValidationError};
use crate::store::StoreError;

/// Whether a write stored something new or found its retry already stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Written<T> {
    Created(T),
    /// An identical earlier request already stored this; nothing changed.
    Existing(T),
}

/// What became of one item of a batch append.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItem {
    Created(Event),
    /// A replay of a stored event.
    Existing(Event),
    /// The eventId is stored with other content; this is the stored event.
    Conflict(Event),
    Invalid(ValidationError),
    /// Not stored: the session is missing or closed. The whole batch fails so unless some of
    /// its items are stored already (a batch sent again after the close), or the session was
    /// erased or closed while the batch was being stored (after an erase race; see
    /// `EventService::append_batch`).
    Refused(Refusal),
}

/// Why a session takes no events.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    NotFound(SessionId),
    Closed(Box<Session>),
}

/// A missing or closed session as the refusal it is; any other error as it is.
impl TryFrom<ServiceError> for Refusal {
    type Error = ServiceError;

    fn try_from(err: ServiceError) -> Result<Self, ServiceError> {
        match err {
            ServiceError::SessionNotFound(id) => Ok(Self::NotFound(id)),
            ServiceError::SessionClosed(session) => Ok(Self::Closed(session)),
            other => Err(other),
        }
    }
}

impl From<Refusal> for ServiceError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(id) => Self::SessionNotFound(id),
            Refusal::Closed(session) => Self::SessionClosed(session),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass back as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// Why a service refused or failed a request, in domain words.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("session {0} does not exist")]
    SessionNotFound(SessionId),
    #[error("no such event in this session")]
    EventNotFound,
    #[error("the session exists with a different language or metadata")]
    SessionConflict(Box<Session>),
    #[error("the eventId exists with different content")]
    EventConflict(Box<Event>),
    #[error("the session is {}", .0.status.as_str())]
    SessionClosed(Box<Session>),
    #[error(transparent)]
    InvalidCursor(#[from] CursorError),
    /// This instance is at a configured capacity; another instance or a retry may succeed.
    #[error("{0}")]
    Overloaded(&'static str),
    /// Another request holds what this one needs, for now; a retry may succeed.
    #[error("{0}")]
    Busy(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}
