//! `/sessions/{id}/events` routes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, QueryParams};
use super::written;
use crate::app::AppState;
use crate::domain::{
    EventId, EventType, JsonObject, NewEvent, Order, SessionId, Timestamp, MAX_PAYLOAD_BYTES,
};
use crate::service::{PagePosition, PageRequest};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions/{session_id}/events", post(append).get(list))
        .route("/sessions/{session_id}/events/{event_id}", get(read))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AppendEventBody {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    payload: Option<Value>,
    timestamp: Option<String>,
}

impl AppendEventBody {
    fn parse(self) -> Result<NewEvent, ApiError> {
        Ok(NewEvent {
            event_id: EventId::parse(self.event_id)?,
            event_type: EventType::parse(self.event_type)?,
            payload: match self.payload {
                Some(v) => JsonObject::parse("payload", v, MAX_PAYLOAD_BYTES)?,
                None => JsonObject::default(),
            },
            timestamp: self
                .timestamp
                .map(|raw| Timestamp::parse("timestamp", &raw))
                .transpose()?,
        })
    }
}

async fn append(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    ApiJson(body): ApiJson<AppendEventBody>,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let written_event = state.events.append(&session, body.parse()?).await?;
    Ok(written(written_event, |e| {
        format!("/sessions/{}/events/{}", e.session_id, e.event_id)
    }))
}

async fn read(
    State(state): State<AppState>,
    ApiPath((session_id, event_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let event = EventId::parse(event_id)?;
    Ok(Json(state.events.get(&session, &event).await?).into_response())
}

async fn list(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let session = SessionId::parse(session_id)?;
    let request = page_request(&mut query)?;
    query.finish()?;
    Ok(Json(state.events.page(&session, &request).await?).into_response())
}

/// Reads `limit`, `order`, `cursor` and `page` from the query string.
pub(super) fn page_request(query: &mut QueryParams) -> Result<PageRequest, ApiError> {
    let limit = match query.take("limit")? {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::validation("limit", "must be an integer from 1 to 1000"))?,
    };
    let order = match query.take("order")? {
        None => Order::Asc,
        Some(raw) => Order::parse(&raw)
            .ok_or_else(|| ApiError::validation("order", "must be \"asc\" or \"desc\""))?,
    };
    let position = match (query.take("cursor")?, query.take("page")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(
                "page",
                "cannot be combined with cursor",
            ))
        }
        (Some(token), None) => PagePosition::Cursor(token),
        (None, Some(raw)) => PagePosition::Page(
            raw.parse::<u64>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    ApiError::validation("page", "must be an integer from 1 to 1000000")
                })?,
        ),
        (None, None) => PagePosition::First,
    };
    Ok(PageRequest {
        order,
        limit,
        position,
    })
}
