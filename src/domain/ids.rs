use std::fmt;

use serde::Serialize;
use validator::ValidateLength;

use super::ValidationError;

const MAX_ID_LEN: u64 = 128;

/// What an id with a character outside the id rule is told.
pub const ID_CHARACTERS: &str = "may only hold ASCII letters, digits and the characters - _ . : @";

/// Checks the shared id rule: 1-128 ASCII letters, digits and `-_.:@`.
///
/// `.` and `..` are refused as well: HTTP clients rewrite them as path segments, so such an id
/// could be stored but never addressed again.
fn check_id(field: &str, raw: &str) -> Result<(), ValidationError> {
    if !raw.validate_length(Some(1), Some(MAX_ID_LEN), None) {
        return Err(ValidationError::new(
            field,
            "must be 1 to 128 characters long",
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    if !raw.chars().all(allowed) {
        return Err(ValidationError::new(field, ID_CHARACTERS));
    }
    if raw == "." || raw == ".." {
        return Err(ValidationError::new(field, "must not be '.' or '..'"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, example = "call-0001")]
        pub struct $name(String);

        impl $name {
            /// Parses a client-supplied id, naming the field in the error.
            pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
                let raw = raw.into();
                check_id($field, &raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// The caller-chosen id of a session (one phone call).
    SessionId,
    "sessionId"
);
id_type!(
    /// The caller-chosen id of an event, unique within its session.
    EventId,
    "eventId"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_made_of_the_allowed_characters() {
        for ok in ["abc123", "a", "call-1_2.3:4@host", &"x".repeat(128), "..."] {
            assert_eq!(SessionId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_ids_outside_the_rule_naming_the_field() {
        let long = "x".repeat(129);
        for bad in [
            "", &long, "a b", "a/b", "$where", "{}", "a\0b", "é", "..", ".", "a%00",
        ] {
            let err = EventId::parse(bad).unwrap_err();
            assert_eq!(err.field, "eventId", "{bad:?}");
        }
    }
}
