use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::{EventPosition, SessionId, Timestamp};

const VERSION: u8 = 1;
/// version, order, scope, timestamp, key kind.
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 1;
/// Longer tokens are refused before decoding: no valid one comes near.
const MAX_TOKEN_LEN: usize = 256;

/// The direction of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

impl Order {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "asc" => Some(Self::Asc),
            "desc" => Some(Self::Desc),
            _ => None,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Asc => b'a',
            Self::Desc => b'd',
        }
    }
}

/// Why a cursor token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("the cursor is not a token this service issued")]
    Malformed,
    #[error("the cursor was issued for another listing (session, order or filters)")]
    WrongScope,
}

/// What breaks ties between items with the same timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorKey {
    /// An event's seq.
    Seq(i64),
    /// A session's id.
    Id(String),
}

/// An opaque page token: the (timestamp, tiebreaker) of the last item served, bound to the
/// listing it came from.
///
/// The scope is a stable hash of the listing and its filters; a token replayed against
/// another listing is refused instead of silently serving a page of something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub order: Order,
    pub scope: u64,
    pub timestamp: Timestamp,
    pub key: CursorKey,
}

impl Cursor {
    /// A stable 64-bit FNV-1a hash; the same on every instance, unlike std's seeded hasher.
    pub fn scope_of(parts: &[&str]) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in parts {
            for byte in part.bytes().chain(std::iter::once(0xff)) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }

    /// The cursor after `event` in a listing of events.
    pub fn for_event(order: Order, scope: u64, event: EventPosition) -> Self {
        Self {
            order,
            scope,
            timestamp: event.timestamp,
            key: CursorKey::Seq(event.seq),
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(HEADER_LEN + 8);
        bytes.push(VERSION);
        bytes.push(self.order.tag());
        bytes.extend_from_slice(&self.scope.to_be_bytes());
        bytes.extend_from_slice(&self.timestamp.millis().to_be_bytes());
        match &self.key {
            CursorKey::Seq(seq) => {
                bytes.push(b's');
                bytes.extend_from_slice(&seq.to_be_bytes());
            }
            CursorKey::Id(id) => {
                bytes.push(b'i');
                bytes.extend_from_slice(id.as_bytes());
            }
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes an event cursor and checks that it belongs to the listing asked for.
    pub fn decode_event(
        token: &str,
        order: Order,
        scope: u64,
    ) -> Result<EventPosition, CursorError> {
        let cursor = Self::decode(token, order, scope)?;
        match cursor.key {
            CursorKey::Seq(seq) => Ok(EventPosition {
                timestamp: cursor.timestamp,
                seq,
            }),
            CursorKey::Id(_) => Err(CursorError::Malformed),
        }
    }

    /// Decodes a session cursor: the (startedAt, sessionId) of the last session served.
    pub fn decode_session(
        token: &str,
        order: Order,
        scope: u64,
    ) -> Result<(Timestamp, SessionId), CursorError> {
        let cursor = Self::decode(token, order, scope)?;
        match cursor.key {
            CursorKey::Id(id) => SessionId::parse(id)
                .map(|id| (cursor.timestamp, id))
                .map_err(|_| CursorError::Malformed),
            CursorKey::Seq(_) => Err(CursorError::Malformed),
        }
    }

    fn decode(token: &str, order: Order, scope: u64) -> Result<Self, CursorError> {
        let cursor = Self::decode_any(token)?;
        if cursor.order != order || cursor.scope != scope {
            return Err(CursorError::WrongScope);
        }
        Ok(cursor)
    }

    fn decode_any(token: &str) -> Result<Self, CursorError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(CursorError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let order = match bytes[1] {
            b'a' => Order::Asc,
            b'd' => Order::Desc,
            _ => return Err(CursorError::Malformed),
        };
        let word = |i: usize| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&bytes[i..i + 8]);
            buf
        };
        let rest = &bytes[HEADER_LEN..];
        let key = match bytes[HEADER_LEN - 1] {
            b's' if rest.len() == 8 => {
                let seq = i64::from_be_bytes(word(HEADER_LEN));
                if seq < 0 {
                    return Err(CursorError::Malformed);
                }
                CursorKey::Seq(seq)
            }
            b'i' if !rest.is_empty() => {
                CursorKey::Id(String::from_utf8(rest.to_vec()).map_err(|_| CursorError::Malformed)?)
            }
            _ => return Err(CursorError::Malformed),
        };
        Ok(Self {
            order,
            scope: u64::from_be_bytes(word(2)),
            timestamp: Timestamp::from_millis(i64::from_be_bytes(word(10))),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(millis: i64, seq: i64) -> EventPosition {
        EventPosition {
            timestamp: Timestamp::from_millis(millis),
            seq,
        }
    }

    fn scope() -> u64 {
        Cursor::scope_of(&["events", "abc123"])
    }

    #[test]
    fn round_trips_event_positions_in_both_orders() {
        for (order, p) in [
            (Order::Asc, position(1_764_145_898_123, 1)),
            (Order::Desc, position(-5, i64::MAX)),
            (Order::Asc, position(i64::MIN, 0)),
        ] {
            let token = Cursor::for_event(order, scope(), p).encode();
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Cursor::decode_event(&token, order, scope()), Ok(p));
        }
    }

    #[test]
    fn round_trips_session_positions() {
        let cursor = Cursor {
            order: Order::Desc,
            scope: 7,
            timestamp: Timestamp::from_millis(42),
            key: CursorKey::Id("call:1@host".to_owned()),
        };
        let decoded = Cursor::decode_session(&cursor.encode(), Order::Desc, 7).unwrap();
        assert_eq!(
            decoded,
            (
                Timestamp::from_millis(42),
                SessionId::parse("call:1@host").unwrap()
            )
        );
        let as_event = Cursor::decode_event(&cursor.encode(), Order::Desc, 7);
        assert_eq!(as_event, Err(CursorError::Malformed));
    }

    #[test]
    fn refuses_a_cursor_from_another_order_or_scope() {
        let token = Cursor::for_event(Order::Asc, scope(), position(10, 3)).encode();
        assert_eq!(
            Cursor::decode_event(&token, Order::Desc, scope()),
            Err(CursorError::WrongScope)
        );
        let other = Cursor::scope_of(&["events", "abc124"]);
        assert_eq!(
            Cursor::decode_event(&token, Order::Asc, other),
            Err(CursorError::WrongScope)
        );
    }

    #[test]
    fn refuses_garbage_and_truncated_tokens() {
        let token = Cursor::for_event(Order::Asc, scope(), position(10, 3)).encode();
        let long = "A".repeat(300);
        for bad in [
            "",
            "!!!!",
            "abc",
            &token[..token.len() - 2],
            &format!("{token}AA"),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &long,
        ] {
            assert_eq!(
                Cursor::decode_event(bad, Order::Asc, scope()),
                Err(CursorError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scopes_differ_by_part_boundaries() {
        assert_ne!(
            Cursor::scope_of(&["ab", "c"]),
            Cursor::scope_of(&["a", "bc"])
        );
    }
}
