use serde::Serialize;

use super::{EventId, JsonObject, SessionId, Timestamp, ValidationError};

/// The live stream's closing message; no event may pass for it.
const RESERVED_TYPE: &str = "session.closed";

/// An event type: a letter, then up to 63 letters, digits or `_.:-`
/// (`user_speech`, `bot_speech`, `system`, `TRANSCRIPT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "user_speech")]
pub struct EventType(String);

impl EventType {
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        let mut chars = raw.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        let rest_ok =
            chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
        if raw == RESERVED_TYPE {
            Err(ValidationError::new(
                "type",
                "session.closed is reserved: live streams use it for the end of a session",
            ))
        } else if first_ok && rest_ok && raw.len() <= 64 {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                "type",
                "must match ^[A-Za-z][A-Za-z0-9_.:-]{0,63}$",
            ))
        }
    }

    /// Wraps a type read back from a store, which was checked when it was written, under
    /// the rules of its day.
    pub fn from_stored(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where an event sits in a session's timeline: by timestamp, ties broken by `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventPosition {
    pub timestamp: Timestamp,
    pub seq: i64,
}

/// One immutable thing that happened in a session.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub session_id: SessionId,
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub payload: JsonObject,
    pub timestamp: Timestamp,
    /// Rises strictly within a session, in the order events were accepted; gaps are allowed.
    pub seq: i64,
    pub received_at: Timestamp,
}

impl Event {
    /// The request this event was built from, when `stamped` says whether it carried its
    /// own timestamp; the inverse of `NewEvent::into_event`.
    pub fn into_request(self, stamped: bool) -> NewEvent {
        NewEvent {
            event_id: self.event_id,
            event_type: self.event_type,
            payload: self.payload,
            timestamp: stamped.then_some(self.timestamp),
        }
    }

    pub fn position(&self) -> EventPosition {
        EventPosition {
            timestamp: self.timestamp,
            seq: self.seq,
        }
    }
}

/// A validated request to append an event.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: EventType,
    pub payload: JsonObject,
    /// When the client says it happened; the receive time when absent.
    pub timestamp: Option<Timestamp>,
}

impl NewEvent {
    /// Whether this request is a retry of the stored event: same type and payload, and the
    /// same timestamp when the request carries one.
    pub fn matches(&self, stored: &Event) -> bool {
        self.event_type == stored.event_type
            && self.payload == stored.payload
            && self.timestamp.is_none_or(|t| t == stored.timestamp)
    }

    /// The event as stored, once the store has given it a seq and a receive time.
    pub fn into_event(self, session_id: SessionId, seq: i64, received_at: Timestamp) -> Event {
        Event {
            session_id,
            event_id: self.event_id,
            event_type: self.event_type,
            payload: self.payload,
            timestamp: self.timestamp.unwrap_or(received_at),
            seq,
            received_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_conventional_and_namespaced_types() {
        let max = format!("a{}", "b".repeat(63));
        for ok in [
            "user_speech",
            "bot_speech",
            "system",
            "TRANSCRIPT",
            "call.transfer:v2-x",
            &max,
        ] {
            assert!(EventType::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_types_outside_the_pattern() {
        let long = format!("a{}", "b".repeat(64));
        for bad in [
            "",
            "1abc",
            "_x",
            "a b",
            "a/b",
            "$type",
            &long,
            "é",
            "session.closed",
        ] {
            assert_eq!(EventType::parse(bad).unwrap_err().field, "type", "{bad:?}");
        }
    }
}
