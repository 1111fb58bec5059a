//! Domain types: every value a service accepts has been parsed into one of these.

mod cursor;
mod event;
mod ids;
mod json;
mod language;
mod session;
mod time;

pub use cursor::{Cursor, CursorError, CursorKey, Order};
pub use event::{Event, EventPosition, EventType, NewEvent};
pub use ids::{EventId, SessionId, ID_CHARACTERS};
pub use json::{JsonInput, JsonObject};
pub use language::Language;
pub use session::{FinalStatus, NewSession, Session, SessionStatus};
pub use time::{utc_micros, Timestamp};

/// A value a client sent that breaks a domain rule, with the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The request field (camelCase, as the client spelled it) that holds the bad value.
    pub field: String,
    /// What is wrong with it, in words a client developer can act on.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Session metadata may hold at most this many bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// An event payload may hold at most this many bytes of compact JSON.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
