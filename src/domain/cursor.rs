use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use super::{EventPosition, Timestamp};

const VERSION: u8 = 1;
const ENCODED_LEN: usize = 1 + 1 + 8 + 8 + 8;

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

/// An opaque page token: the (timestamp, seq) of the last item served, bound to the listing
/// it came from.
///
/// The scope is a stable hash of the session and filters; a token replayed against another
/// listing is refused instead of silently serving a page of something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub order: Order,
    pub position: EventPosition,
    pub scope: u64,
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

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(ENCODED_LEN);
        bytes.push(VERSION);
        bytes.push(self.order.tag());
        bytes.extend_from_slice(&self.position.timestamp.millis().to_be_bytes());
        bytes.extend_from_slice(&self.position.seq.to_be_bytes());
        bytes.extend_from_slice(&self.scope.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a token and checks that it belongs to the listing being asked for.
    pub fn decode(token: &str, order: Order, scope: u64) -> Result<EventPosition, CursorError> {
        let cursor = Self::decode_any(token)?;
        if cursor.order != order || cursor.scope != scope {
            return Err(CursorError::WrongScope);
        }
        Ok(cursor.position)
    }

    fn decode_any(token: &str) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != ENCODED_LEN || bytes[0] != VERSION {
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
        let seq = i64::from_be_bytes(word(10));
        if seq < 1 {
            return Err(CursorError::Malformed);
        }
        Ok(Self {
            order,
            position: EventPosition {
                timestamp: Timestamp::from_millis(i64::from_be_bytes(word(2))),
                seq,
            },
            scope: u64::from_be_bytes(word(18)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(order: Order, millis: i64, seq: i64) -> Cursor {
        Cursor {
            order,
            position: EventPosition {
                timestamp: Timestamp::from_millis(millis),
                seq,
            },
            scope: Cursor::scope_of(&["abc123"]),
        }
    }

    #[test]
    fn round_trips_positions_in_both_orders() {
        for c in [
            cursor(Order::Asc, 1_764_145_898_123, 1),
            cursor(Order::Desc, -5, i64::MAX),
            cursor(Order::Asc, i64::MIN, 42),
        ] {
            let token = c.encode();
            assert!(token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Cursor::decode(&token, c.order, c.scope), Ok(c.position));
        }
    }

    #[test]
    fn refuses_a_cursor_from_another_order_or_scope() {
        let c = cursor(Order::Asc, 10, 3);
        let token = c.encode();
        assert_eq!(
            Cursor::decode(&token, Order::Desc, c.scope),
            Err(CursorError::WrongScope)
        );
        let other = Cursor::scope_of(&["abc124"]);
        assert_eq!(
            Cursor::decode(&token, Order::Asc, other),
            Err(CursorError::WrongScope)
        );
    }

    #[test]
    fn refuses_garbage_and_truncated_tokens() {
        let token = cursor(Order::Asc, 10, 3).encode();
        let scope = Cursor::scope_of(&["abc123"]);
        for bad in [
            "",
            "!!!!",
            "abc",
            &token[..token.len() - 2],
            &format!("{token}AA"),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(
                Cursor::decode(bad, Order::Asc, scope),
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
