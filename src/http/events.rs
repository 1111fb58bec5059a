//! `/sessions/{id}/events` routes.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::extract::{from_raw, ApiJson, ApiPath, ItemsJson, NoQuery, QueryParams};
use super::openapi::{ErrorEnvelope, EventPath, SessionPath, StreamMessage};
use super::sessions::SortOrder;
use super::{written, JsonBody};
use crate::app::AppState;
use crate::domain::{
    Event, EventId, EventType, JsonInput, JsonObject, NewEvent, Order, SessionId, Timestamp,
    ValidationError, MAX_PAYLOAD_BYTES,
};
use crate::metrics::EventOutcome;
use crate::service::{
    BatchItem, Page, PagePosition, PageRequest, Refusal, ServiceError, TailMessage, Written,
};
use crate::store::EventFilter;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(append, list))
        .routes(routes!(read))
        .routes(routes!(stream))
        .routes(routes!(append_batch))
}

/// Paging and filter parameters of an event listing (documentation; parsed by hand).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct EventListParams {
    /// 1 to 1000; default 50.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page, with the same filters and order.
    cursor: Option<String>,
    /// `asc` (default) or `desc`, by (timestamp, seq).
    order: Option<SortOrder>,
    /// 1-based page number for offset paging; not with `cursor` or `afterSeq`.
    #[param(minimum = 1, maximum = 1000000)]
    page: Option<u64>,
    /// Any of these event types, at most 20; repeat the parameter for several.
    #[param(rename = "type", explode, style = Form)]
    event_type: Option<Vec<String>>,
    /// `timestamp >= from` (RFC 3339).
    #[param(format = DateTime)]
    from: Option<String>,
    /// `timestamp < to` (RFC 3339).
    #[param(format = DateTime)]
    to: Option<String>,
    /// Events with a greater seq, in seq order (ascending only).
    #[param(rename = "afterSeq", minimum = 0)]
    after_seq: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppendEventBody {
    /// 1-128 ASCII letters, digits and `-_.:@`; unique within the session.
    #[schema(example = "evt-001", pattern = r"^[A-Za-z0-9_.:@-]{1,128}$")]
    event_id: String,
    /// `^[A-Za-z][A-Za-z0-9_.:-]{0,63}$`, e.g. `user_speech`, `bot_speech`, `system`.
    #[serde(rename = "type")]
    #[schema(example = "TRANSCRIPT", pattern = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")]
    event_type: String,
    /// A JSON object of at most 64 KiB; keys never start with `$` nor hold `.`.
    #[schema(value_type = Option<Object>)]
    payload: Option<JsonInput>,
    /// RFC 3339; default: the receive time.
    #[schema(format = DateTime)]
    timestamp: Option<String>,
}

/// Bytes to a validated event, as the append handler parses them.
#[cfg(test)]
pub(super) fn parse_append(bytes: &[u8]) -> Result<NewEvent, ApiError> {
    Ok(super::extract::parse_json::<AppendEventBody>(bytes)?.parse()?)
}

impl AppendEventBody {
    fn parse(self) -> Result<NewEvent, ValidationError> {
        Ok(NewEvent {
            event_id: EventId::parse(self.event_id)?,
            event_type: EventType::parse(self.event_type)?,
            payload: match self.payload {
                Some(JsonInput(v)) => JsonObject::parse("payload", v, MAX_PAYLOAD_BYTES)?,
                None => JsonObject::default(),
            },
            timestamp: self
                .timestamp
                .map(|raw| Timestamp::parse("timestamp", &raw))
                .transpose()?,
        })
    }
}

/// Append an event, or recognise a retry of the append that stored it.
#[utoipa::path(post, path = "/sessions/{session_id}/events", tag = "events",
    params(SessionPath),
    request_body = AppendEventBody,
    responses(
        (status = 201, description = "Stored", body = Event,
            headers(("location" = String, description = "The event's URL"))),
        (status = 200, description = "An identical append already stored it", body = Event),
        (status = 409, description = "`event_conflict` (the eventId holds other content) or `session_closed`", body = ErrorEnvelope),
    ))]
async fn append(
    State(state): State<AppState>,
    _: NoQuery,
    ApiPath(session_id): ApiPath<String>,
    ApiJson(body): ApiJson<AppendEventBody>,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let appended = state.events.append(&session, body.parse()?).await;
    let outcome = match &appended {
        Ok(Written::Created(_)) => Some(EventOutcome::Accepted),
        Ok(Written::Existing(_)) => Some(EventOutcome::Replayed),
        Err(ServiceError::EventConflict(_)) => Some(EventOutcome::Conflicting),
        Err(ServiceError::SessionClosed(_)) => Some(EventOutcome::RejectedClosed),
        Err(_) => None,
    };
    if let Some(outcome) = outcome {
        state.metrics.events(outcome, 1);
    }
    Ok(written(appended?, |e| {
        format!("/sessions/{}/events/{}", e.session_id, e.event_id)
    }))
}

const MAX_BATCH: usize = 500;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// 1 to 500 events, each as in a single append. Kept as raw JSON so that one malformed
    /// item fails alone.
    #[schema(value_type = Vec<AppendEventBody>, min_items = 1, max_items = 500)]
    events: Vec<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BatchResponse {
    /// One result per submitted event, in request order.
    results: Vec<BatchResult>,
}

/// One item's outcome.
#[derive(Debug, Serialize, ToSchema)]
struct BatchResult {
    /// 201 stored, 200 replay, 409 conflict, 400 invalid; 409 `session_closed` or 404
    /// `session_not_found` for an item not stored because the session is closed or missing
    /// (a batch sent again after the close, or a session that ended while the batch was
    /// stored).
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    error: Option<Value>,
}

impl From<BatchItem> for BatchResult {
    fn from(item: BatchItem) -> Self {
        let failure = match item {
            BatchItem::Created(e) => return Self::stored(201, e),
            BatchItem::Existing(e) => return Self::stored(200, e),
            BatchItem::Conflict(stored) => ServiceError::EventConflict(Box::new(stored)).into(),
            BatchItem::Refused(refusal) => ServiceError::from(refusal).into(),
            BatchItem::Invalid(invalid) => ApiError::from(invalid),
        };
        let (status, error) = failure.item();
        Self {
            status,
            event: None,
            error: Some(error),
        }
    }
}

impl BatchResult {
    fn stored(status: u16, event: Event) -> Self {
        Self {
            status,
            event: Some(event),
            error: None,
        }
    }
}

/// Append up to 500 events in one request; each is judged as a single append would be.
#[utoipa::path(post, path = "/sessions/{session_id}/events:batch", tag = "events",
    params(SessionPath),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per event, in request order", body = BatchResponse),
        (status = 409, description = "`session_closed`: the whole batch is refused, none of its events being stored", body = ErrorEnvelope),
    ))]
async fn append_batch(
    State(state): State<AppState>,
    _: NoQuery,
    ApiPath(session_id): ApiPath<String>,
    ItemsJson(body): ItemsJson<BatchBody>,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    if !(1..=MAX_BATCH).contains(&body.events.len()) {
        return Err(ApiError::validation("events", "must hold 1 to 500 events"));
    }
    let items: Vec<Result<NewEvent, ValidationError>> = body
        .events
        .iter()
        .map(|item| from_raw::<AppendEventBody>(item).and_then(AppendEventBody::parse))
        .collect();
    let count = items.iter().filter(|item| item.is_ok()).count() as u64;
    let outcomes = match state.events.append_batch(&session, items).await {
        Err(closed @ ServiceError::SessionClosed(_)) => {
            state.metrics.events(EventOutcome::RejectedClosed, count);
            return Err(closed.into());
        }
        other => other?,
    };
    for outcome in &outcomes {
        let counted = match outcome {
            BatchItem::Created(_) => EventOutcome::Accepted,
            BatchItem::Existing(_) => EventOutcome::Replayed,
            BatchItem::Conflict(_) => EventOutcome::Conflicting,
            BatchItem::Refused(Refusal::Closed(_)) => EventOutcome::RejectedClosed,
            BatchItem::Refused(Refusal::NotFound(_)) => continue,
            BatchItem::Invalid(_) => continue,
        };
        state.metrics.events(counted, 1);
    }
    let results: Vec<BatchResult> = outcomes.into_iter().map(BatchResult::from).collect();
    Ok(JsonBody(BatchResponse { results }).into_response())
}

/// Read one event.
#[utoipa::path(get, path = "/sessions/{session_id}/events/{event_id}", tag = "events",
    params(
        EventPath,
    ),
    responses((status = 200, description = "The event", body = Event)))]
async fn read(
    State(state): State<AppState>,
    _: NoQuery,
    ApiPath((session_id, event_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    read_event(&state, session_id, event_id).await
}

async fn read_event(
    state: &AppState,
    session_id: String,
    event_id: String,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let event = EventId::parse(event_id)?;
    Ok(JsonBody(state.events.get(&session, &event).await?).into_response())
}

/// A client asking for JSON and not for an event stream means the event whose id is
/// "stream"; anyone else (browsers' EventSource, curl's `*/*`) gets the live tail.
fn wants_json_not_stream(headers: &HeaderMap) -> bool {
    let (mut json, mut stream) = (false, false);
    // Media ranges, matched without regard to case; `q=0` means "not this one".
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(name, q)| {
                name.trim().eq_ignore_ascii_case("q") && q.trim().parse::<f32>() == Ok(0.0)
            })
        });
        if media.eq_ignore_ascii_case("application/json") {
            json |= !refused;
        } else if media.eq_ignore_ascii_case("text/event-stream") {
            stream |= !refused;
        }
    }
    json && !stream
}

/// The seq to resume after: `Last-Event-ID` (a reconnecting EventSource), else `afterSeq`,
/// else 0 (from the start).
fn resume_after(headers: &HeaderMap, query: &mut QueryParams) -> Result<i64, ApiError> {
    let parse = |field: &str, raw: &str| {
        digits::<i64>(raw.trim()).ok_or_else(|| {
            ApiError::validation(field, "must be an event seq: an integer of 0 or more")
        })
    };
    // A bad afterSeq is refused even when the header wins over it.
    let query_position = query
        .take("afterSeq")?
        .map(|raw| parse("afterSeq", &raw))
        .transpose()?;
    let mut sent = headers.get_all("last-event-id").iter();
    let header = sent.next();
    if sent.next().is_some() {
        return Err(ApiError::validation(
            "Last-Event-ID",
            "may be given only once",
        ));
    }
    // An empty header is a client's way of sending no id yet (the SSE specification's
    // initial last event ID): it does not override afterSeq.
    if let Some(header) = header.filter(|h| !h.as_bytes().trim_ascii().is_empty()) {
        let raw = header
            .to_str()
            .map_err(|_| ApiError::validation("Last-Event-ID", "must be an event seq"))?;
        return parse("Last-Event-ID", raw);
    }
    Ok(query_position.unwrap_or(0))
}

/// Follow a session live over Server-Sent Events: the stored events after a position, then
/// new ones as they are accepted, in seq order, then `event: session.closed`. Each message
/// carries `id: <seq>`, `event: <type>`, `data: <event JSON>`. Resume with the
/// `Last-Event-ID` header or `afterSeq`. With `Accept: application/json` (and not
/// `text/event-stream`) this path reads the event whose id is `stream`.
#[utoipa::path(get, path = "/sessions/{session_id}/events/stream", tag = "live",
    params(
        SessionPath,
        ("afterSeq" = Option<i64>, Query, minimum = 0, description = "Start after this seq; default 0"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{1,18}$",
            description = "Start after this seq; wins over afterSeq"),
    ),
    responses(
        (status = 200, description = "The event stream (or, for a JSON request, the event `stream`)",
            content((StreamMessage = "text/event-stream"), (Event = "application/json"))),
    ))]
async fn stream(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    headers: HeaderMap,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    if wants_json_not_stream(&headers) {
        query.finish()?;
        return read_event(&state, session_id, "stream".to_owned()).await;
    }
    let session = SessionId::parse(session_id)?;
    let after_seq = resume_after(&headers, &mut query)?;
    query.finish()?;
    let mut outbox = state.live.tail(&session, after_seq).await?;
    let messages = futures::stream::poll_fn(move |cx| {
        outbox
            .poll_recv(cx)
            .map(|message| message.map(|m| Ok::<_, Infallible>(sse_message(m))))
    });
    let sse = Sse::new(messages).keep_alive(KeepAlive::new().interval(state.heartbeat));
    // Proxies that buffer responses (nginx) would hold messages back.
    Ok(([(HeaderName::from_static("x-accel-buffering"), "no")], sse).into_response())
}

fn sse_message(message: TailMessage) -> SseEvent {
    // Compact JSON holds no newline, which SSE data lines cannot carry.
    match message {
        TailMessage::Event(event) => SseEvent::default()
            .id(event.seq.to_string())
            .event(event.event_type.as_str())
            .data(serde_json::to_string(&event).unwrap_or_default()),
        TailMessage::Closed(session) => SseEvent::default()
            .event("session.closed")
            .data(serde_json::to_string(&session).unwrap_or_default()),
    }
}

/// A page of the session's events, by (timestamp, seq), or by seq after `afterSeq`.
#[utoipa::path(get, path = "/sessions/{session_id}/events", tag = "events",
    params(SessionPath, EventListParams),
    responses((status = 200, description = "A page of events", body = Page<Event>)))]
async fn list(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let request = page_request(&mut query)?;
    query.finish()?;
    Ok(JsonBody(state.events.page(&session, &request).await?).into_response())
}

const MAX_TYPES: usize = 20;

/// A parameter's integer as its description gives it: ASCII digits only, so never negative.
/// Rust's parsers also take a leading `+`, which the description does not allow.
fn digits<T: std::str::FromStr>(raw: &str) -> Option<T> {
    let plain = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| raw.parse().ok()).flatten()
}

/// Reads `limit` (default 50, at most 1000) and `order` (default `default_order`).
pub(super) fn limit_and_order(
    query: &mut QueryParams,
    default_order: Order,
) -> Result<(usize, Order), ApiError> {
    let limit = match query.take("limit")? {
        None => DEFAULT_LIMIT,
        Some(raw) => digits::<usize>(&raw)
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::validation("limit", "must be an integer from 1 to 1000"))?,
    };
    let order = match query.take("order")? {
        None => default_order,
        Some(raw) => Order::parse(&raw)
            .ok_or_else(|| ApiError::validation("order", "must be \"asc\" or \"desc\""))?,
    };
    Ok((limit, order))
}

/// Reads the optional RFC 3339 bounds of a time range, `lower <= t < upper`.
pub(super) fn time_range(
    query: &mut QueryParams,
    lower: &str,
    upper: &str,
) -> Result<(Option<Timestamp>, Option<Timestamp>), ApiError> {
    let (from, to) = (query.take(lower)?, query.take(upper)?);
    Ok(Timestamp::parse_range(
        from.as_deref().map(|raw| (lower, raw)),
        to.as_deref().map(|raw| (upper, raw)),
    )?)
}

/// Reads the paging and filter parameters of an event listing.
pub(super) fn page_request(query: &mut QueryParams) -> Result<PageRequest, ApiError> {
    let (limit, order) = limit_and_order(query, Order::Asc)?;
    let position = match (query.take("cursor")?, query.take("page")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "page",
                "cannot be combined with cursor",
            ))
        }
        (Some(token), None) => PagePosition::Cursor(token),
        (None, Some(raw)) => PagePosition::Page(
            digits::<u64>(&raw)
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    ApiError::validation("page", "must be an integer from 1 to 1000000")
                })?,
        ),
        (None, None) => PagePosition::First,
    };
    let after_seq = query
        .take("afterSeq")?
        .map(|raw| {
            digits::<i64>(&raw)
                .ok_or_else(|| ApiError::validation("afterSeq", "must be an integer of 0 or more"))
        })
        .transpose()?;
    if after_seq.is_some() && order == Order::Desc {
        return Err(ApiError::validation(
            "order",
            "afterSeq lists in ascending seq order only",
        ));
    }
    if after_seq.is_some() && matches!(position, PagePosition::Page(_)) {
        return Err(ApiError::validation(
            "page",
            "cannot be combined with afterSeq",
        ));
    }
    let filter = event_filter(query)?;
    Ok(PageRequest {
        order,
        limit,
        position,
        filter,
        after_seq,
    })
}

fn event_filter(query: &mut QueryParams) -> Result<EventFilter, ApiError> {
    let types = query.take_all("type");
    if types.len() > MAX_TYPES {
        return Err(ApiError::validation(
            "type",
            "may be given at most 20 times",
        ));
    }
    let types = types
        .into_iter()
        .map(EventType::parse)
        .collect::<Result<Vec<_>, _>>()?;
    let (from, to) = time_range(query, "from", "to")?;
    Ok(EventFilter { types, from, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_item_carries_its_sessions_error() {
        let missing = SessionId::parse("gone").unwrap();
        let result = BatchResult::from(BatchItem::Refused(Refusal::NotFound(missing)));
        assert_eq!(result.status, 404);
        assert!(result.event.is_none());
        let error = result.error.unwrap();
        assert_eq!(error["code"], "session_not_found");
        assert_eq!(error["message"], "session gone does not exist");
    }
}
