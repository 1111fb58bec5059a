use serde::Serialize;

use super::ValidationError;

/// A language tag of BCP-47 shape: `en`, `en-US`, `zh-Hant-TW`, `es-419`.
///
/// The shape is checked, not membership in the IANA registry: a platform may use tags
/// this service has never heard of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "en-US")]
pub struct Language(String);

impl Language {
    pub fn parse(raw: impl Into<String>) -> Result<Self, ValidationError> {
        let raw = raw.into();
        if is_bcp47_shaped(&raw) {
            Ok(Self(raw))
        } else {
            Err(ValidationError::new(
                "language",
                "must be a BCP-47 language tag such as en, en-US or zh-Hant-TW",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A primary subtag of 2-3 letters (ISO 639), then subtags of 1-8 letters or digits, at most 64 characters.
fn is_bcp47_shaped(tag: &str) -> bool {
    if tag.len() > 64 {
        return false;
    }
    let mut subtags = tag.split('-');
    let primary_ok = subtags
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    primary_ok
        && subtags
            .all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_tags() {
        for ok in [
            "en",
            "en-US",
            "zh-Hant-TW",
            "es-419",
            "sr-Latn-RS",
            "de-CH-1996",
            "yue",
        ] {
            assert!(Language::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_malformed_tags() {
        for bad in [
            "",
            "e",
            "en_US",
            "en-",
            "-en",
            "en--US",
            "1en",
            "english language",
            "en-abcdefghi",
            "é",
        ] {
            assert!(Language::parse(bad).is_err(), "{bad:?}");
        }
    }
}
