//! Extractors that turn every malformed request into the API's error envelope.

use axum::body::Bytes;
use axum::extract::path::ErrorKind as PathErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::error::Error;

use super::body_timeout::BodyPaused;
use super::error::ApiError;
use crate::domain::{ValidationError, ID_CHARACTERS};

/// A JSON body, required, with `Content-Type: application/json`.
pub struct ApiJson<T>(pub T);

/// A JSON body that may be left out entirely (no bytes at all).
pub struct OptionalJson<T>(pub Option<T>);

/// As [`ApiJson`], for a body of items that are judged one by one ([`from_raw`]): an item's
/// integer beyond 64 bits fails that item, not the whole body.
pub struct ItemsJson<T>(pub T);

const NOT_JSON: &str = "the body must be JSON, sent with Content-Type: application/json";

/// Whether the body is declared as JSON: `application/json` or `application/*+json`. JSON
/// in a charset other than UTF-8, the only encoding of JSON text (RFC 8259), or its subset
/// ASCII, or sent compressed (it would be parsed as is), is refused with 415.
fn declared_json(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(false);
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Ok(false);
    }
    let foreign_charset = parts
        .filter_map(|p| p.split_once('='))
        .any(|(name, value)| {
            let value = value.trim().trim_matches('"').trim();
            name.trim().eq_ignore_ascii_case("charset")
                && !["utf-8", "utf8", "us-ascii"]
                    .iter()
                    .any(|ok| value.eq_ignore_ascii_case(ok))
        });
    if foreign_charset {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be JSON in UTF-8: send no charset, or charset=utf-8",
        ));
    }
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
    if encoded {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Encoding is not supported: send the body uncompressed",
        ));
    }
    Ok(true)
}

/// Refuses a body declared larger than the limit before any byte of it is read, so that a
/// client that sent `Expect: 100-continue` is spared the upload.
fn check_declared_length(headers: &HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(())
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
    check_declared_length(req.headers(), limit)?;
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else if paused_too_long(&rejection) {
            ApiError::BodyTimeout
        } else {
            // Broken framing, such as a chunk size that is not hexadecimal.
            let cause = causes(&rejection)
                .last()
                .map_or_else(String::new, ToString::to_string);
            ApiError::BodyUnreadable(cause)
        }
    })
}

/// Whether the body failed because it paused past `BODY_READ_TIMEOUT_SECS`.
fn paused_too_long(rejection: &(dyn Error + 'static)) -> bool {
    causes(rejection).any(|e| e.is::<BodyPaused>())
}

/// The error and its sources, outermost first.
fn causes<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&e| e.source())
}

/// A required body declared as JSON.
async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    if !declared_json(req.headers())? {
        return Err(ApiError::UnsupportedMediaType(NOT_JSON));
    }
    read_body(req, state).await
}

/// The configured body limit, put in request extensions so errors can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&json_body(req, state).await?).map(ApiJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ItemsJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_body(&json_body(req, state).await?, Integers::LeftToItems).map(ItemsJson)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let declared = declared_json(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        if !declared? {
            return Err(ApiError::UnsupportedMediaType(NOT_JSON));
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// Parses a JSON object, telling syntax errors (`invalid_json`) from well-formed JSON of the
/// wrong shape (`validation_failed`, naming the field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_body(bytes, Integers::Checked)
}

/// Whether a body's integers are checked against 64 bits with the body or item by item.
#[derive(Clone, Copy, PartialEq)]
enum Integers {
    Checked,
    LeftToItems,
}

fn parse_body<T: DeserializeOwned>(bytes: &[u8], integers: Integers) -> Result<T, ApiError> {
    // Tracking the path costs time on every request; only a failed parse needs it.
    if let Ok(value) = serde_json::from_slice(bytes) {
        whole_object(bytes, integers)?;
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = strip_position(&inner.to_string());
        // Deserialization stops at the first mismatch, which may come before a syntax error
        // further on: malformed JSON must be reported as such whatever it contains.
        // Well-formed JSON that does not fit is a shape error, whatever serde_json calls
        // it: it reports `null` where a string was expected as a syntax error.
        // Skipping a string does not check its bytes, so UTF-8 is checked on its own.
        let well_formed = std::str::from_utf8(bytes).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        if well_formed {
            if is_object(bytes) {
                ApiError::validation(field_of(&path, &message), message)
            } else {
                not_an_object().into()
            }
        } else {
            ApiError::InvalidJson(message)
        }
    })?;
    de.end()
        .map_err(|e| ApiError::InvalidJson(strip_position(&e.to_string())))?;
    whole_object(bytes, integers)?;
    Ok(value)
}

/// What serde does not check of a parsed body: that it is an object (its derived structs
/// also take an array of the fields in order) and that no integer was too big for 64 bits
/// (serde_json reads one as the nearest float, so two different integers could compare
/// equal and a changed retry pass as identical).
fn whole_object(text: &[u8], integers: Integers) -> Result<(), ValidationError> {
    if !is_object(text) {
        return Err(not_an_object());
    }
    if integers == Integers::LeftToItems {
        return Ok(());
    }
    match oversized_integer(text) {
        Some(field) => Err(ValidationError::new(
            field,
            "holds an integer out of range: integers must fit in a signed 64-bit integer",
        )),
        None => Ok(()),
    }
}

/// Whether well-formed JSON `text` is an object.
fn is_object(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Whether `text` holds `n` (at least 1) ASCII digits in a row. It reads every `n`th byte
/// until one is a digit, since a run of `n` covers one of them, and then that digit's run.
fn has_digit_run(text: &[u8], n: usize) -> bool {
    let mut probe = n - 1;
    while let Some(b) = text.get(probe) {
        if !b.is_ascii_digit() {
            probe += n;
            continue;
        }
        let start = text[..probe]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        let end = text[probe..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(text.len(), |i| probe + i);
        if end - start >= n {
            return true;
        }
        // The next run starts past `end`, so its `n`th byte is at `end + n` or later.
        probe = end + n;
    }
    false
}

fn not_an_object() -> ValidationError {
    ValidationError::new("", "must be a JSON object")
}

/// The top-level field holding the first integer literal of well-formed JSON `text` that
/// does not fit in an i64, if any. Numbers with a fraction or an exponent are floats.
fn oversized_integer(text: &[u8]) -> Option<String> {
    // Up to 18 digits always fit: most bodies have no longer run of digits at all.
    if !has_digit_run(text, 19) {
        return None;
    }
    let (mut depth, mut i) = (0_usize, 0);
    // The last string closed at depth 1, and the key it became when a ':' followed it.
    let (mut last_string, mut key) = ("", "");
    while i < text.len() {
        match text[i] {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => key = last_string,
            b'"' => {
                let start = i + 1;
                i = start;
                // Escapes and the closing quote are the only bytes that matter in a string.
                loop {
                    match memchr::memchr2(b'"', b'\\', text.get(i..).unwrap_or_default()) {
                        Some(found) if text[i + found] == b'\\' => i += found + 2,
                        Some(found) => {
                            i += found;
                            break;
                        }
                        None => {
                            i = text.len();
                            break;
                        }
                    }
                }
                if depth == 1 {
                    last_string =
                        std::str::from_utf8(&text[start..i.min(text.len())]).unwrap_or("");
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < text.len() && text[i].is_ascii_digit() {
                    i += 1;
                }
                let float = matches!(text.get(i), Some(b'.' | b'e' | b'E'));
                if !float && i - start >= 19 {
                    let literal = std::str::from_utf8(&text[start..i]).unwrap_or("");
                    if literal.parse::<i64>().is_err() {
                        return Some(key.to_owned());
                    }
                }
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Reads one item of an already parsed body into `T`, naming the field of the first mismatch.
pub fn from_raw<T: DeserializeOwned>(raw: &RawValue) -> Result<T, ValidationError> {
    // As in `parse_json`: the path is tracked only once the plain parse has failed.
    if let Ok(value) = serde_json::from_str(raw.get()) {
        return whole_object(raw.get().as_bytes(), Integers::Checked).map(|()| value);
    }
    if !is_object(raw.get().as_bytes()) {
        return Err(not_an_object());
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let message = strip_position(&err.into_inner().to_string());
        ValidationError::new(field_of(&path, &message), message)
    })
}

/// serde_json appends "at line L column C"; the field name says more to a client.
fn strip_position(message: &str) -> String {
    message
        .rsplit_once(" at line ")
        .map_or(message, |(m, _)| m)
        .to_owned()
}

/// The field a data error is about: the path, which for a missing or repeated field is its
/// parent, so the name serde quotes in backticks is added.
fn field_of(path: &str, message: &str) -> String {
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, named) {
        (".", Some(name)) => name.to_owned(),
        (".", None) => String::new(),
        (p, Some(name)) => format!("{p}.{name}"),
        (p, None) => p.to_owned(),
    }
}

/// For the routes that take no query parameters: any given is refused, as on every route.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        QueryParams::from_request_parts(parts, state)
            .await?
            .finish()
            .map(|()| NoQuery)
    }
}

/// Path parameters; a segment that does not decode is a validation error, not a 500.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(path_error)
    }
}

/// An id whose percent-decoding is not UTF-8 is refused as the id rules refuse any other
/// character outside them, under the id's API name.
fn path_error(rejection: PathRejection) -> ApiError {
    if let PathRejection::FailedToDeserializePathParams(failed) = &rejection {
        if let PathErrorKind::InvalidUtf8InPathParam { key } = failed.kind() {
            let field = match key.as_str() {
                "session_id" => "sessionId",
                "event_id" => "eventId",
                _ => "path",
            };
            return ApiError::validation(field, ID_CHARACTERS);
        }
    }
    ApiError::validation("path", rejection.body_text())
}

/// The query string as name/value pairs, taken one by one so that repeated and unknown
/// parameters are refused instead of ignored.
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// The single value of `name`, if given. Giving it twice is an error.
    pub fn take(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        let mut values = self.take_all(name).into_iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::validation(name, "may be given only once"));
        }
        Ok(first)
    }

    /// Every value of a repeatable parameter, in order.
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let (taken, rest) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.0 = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// Every parameter whose name starts with `prefix`, as (rest of the name, value).
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let (taken, rest) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(k, _)| k.starts_with(prefix));
        self.0 = rest;
        taken
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_owned(), v))
            .collect()
    }

    /// Fails on the first parameter nobody took.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.into_iter().next() {
            Some((name, _)) => Err(ApiError::validation(name, "is not a known query parameter")),
            None => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        Ok(Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        event_id: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    fn field(bytes: &str) -> String {
        match parse_json::<Body>(bytes.as_bytes()) {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_the_field_of_shape_errors() {
        assert_eq!(field(r#"{}"#), "eventId");
        assert_eq!(field(r#"{"eventId": 5}"#), "eventId");
        assert_eq!(field(r#"{"eventId": "a", "extra": 1}"#), "extra");
        assert_eq!(field(r#"{"eventId": "a", "inner": {"n": 300}}"#), "inner.n");
        assert_eq!(field(r#"{"eventId": "a", "inner": {"m": 1}}"#), "inner.m");
        assert_eq!(field(r#"{"eventId": "a", "eventId": "b"}"#), "eventId");
        assert_eq!(
            field(r#"{"eventId": "a", "inner": {"n": 1, "n": 2}}"#),
            "inner.n"
        );
    }

    #[test]
    fn refuses_an_array_of_the_fields_in_place_of_the_object() {
        for shape in [r#"["a", null]"#, r#" ["a"]"#, r#""a""#] {
            assert_eq!(field(shape), "", "{shape}");
        }
        let item = RawValue::from_string(r#"["a", null]"#.to_owned()).unwrap();
        assert!(from_raw::<Body>(&item).is_err());
    }

    #[test]
    fn finds_integers_too_big_for_64_bits_and_the_field_holding_them() {
        let cases = [
            (
                r#"{"a": 1, "payload": {"n": 12345678901234567890123}}"#,
                Some("payload"),
            ),
            (
                r#"{"metadata": [0, -9223372036854775809]}"#,
                Some("metadata"),
            ),
            (
                r#"{"payload": {"n": 9223372036854775808}}"#,
                Some("payload"),
            ),
            (
                r#"{"p": {"k": "x"}, "q\"r": 99999999999999999999}"#,
                Some("q\\\"r"),
            ),
            (
                r#"{"payload": {"n": -9223372036854775808, "m": 9223372036854775807}}"#,
                None,
            ),
            (
                r#"{"a\\": "\"x\\", "b": "1234567890123456789012", "c": 12345678901234567890}"#,
                Some("c"),
            ),
            (
                r#"{"payload": {"f": 1.5e300, "g": 12345678901234567890.5, "h": 1e400}}"#,
                None,
            ),
            (
                r#"{"payload": {"s": "12345678901234567890123", "k\"": 1}}"#,
                None,
            ),
        ];
        for (text, field) in cases {
            assert_eq!(
                oversized_integer(text.as_bytes()).as_deref(),
                field,
                "{text}"
            );
        }
        let too_big = r#"{"eventId": "a", "inner": {"n": 1}, "x": 100000000000000000000}"#;
        assert!(matches!(
            parse_json::<serde_json::Value>(too_big.as_bytes()),
            Err(ApiError::Validation { field, .. }) if field == "x"
        ));
    }

    #[test]
    fn finds_a_run_of_digits_wherever_it_lies() {
        let naive = |text: &[u8], n: usize| {
            text.split(|b| !b.is_ascii_digit())
                .any(|run| run.len() >= n)
        };
        // Every text of up to 9 bytes over {digit, letter}, for runs of 1 to 4.
        for len in 0..=9 {
            for bits in 0..1_u32 << len {
                let text: Vec<u8> = (0..len)
                    .map(|i| if bits >> i & 1 == 1 { b'7' } else { b'x' })
                    .collect();
                for n in 1..=4 {
                    assert_eq!(has_digit_run(&text, n), naive(&text, n), "{text:?} {n}");
                }
            }
        }
        let long = format!("{}1234567890123456789", "x".repeat(40));
        assert!(has_digit_run(long.as_bytes(), 19));
        assert!(!has_digit_run(&long.as_bytes()[..long.len() - 1], 19));
    }

    #[test]
    fn reports_syntax_errors_as_invalid_json() {
        for bad in [
            "",
            "{",
            r#"{"eventId": "a"} trailing"#,
            "nul",
            r#"{"eventId": "a",}"#,
        ] {
            assert!(
                matches!(
                    parse_json::<Body>(bad.as_bytes()),
                    Err(ApiError::InvalidJson(_))
                ),
                "{bad:?}"
            );
        }
    }
}
