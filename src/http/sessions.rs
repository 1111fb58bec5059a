//! `/sessions` routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::events::{limit_and_order, page_request, time_param};
use super::extract::{ApiJson, ApiPath, OptionalJson, QueryParams};
use super::written;
use crate::app::AppState;
use crate::domain::{
    Event, FinalStatus, JsonObject, Language, NewSession, Order, Session, SessionId, SessionStatus,
    Timestamp, MAX_METADATA_BYTES,
};
use crate::service::{Page, SessionListRequest};
use crate::store::SessionFilter;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions", post(create).get(list))
        .route("/sessions/{session_id}", get(read).delete(erase))
        .route("/sessions/{session_id}/complete", post(complete))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateSessionBody {
    session_id: String,
    language: Option<String>,
    metadata: Option<Value>,
    status: Option<String>,
    started_at: Option<String>,
}

impl CreateSessionBody {
    fn parse(self) -> Result<NewSession, ApiError> {
        let status = match self.status.as_deref() {
            None => SessionStatus::Initiated,
            Some(raw) => SessionStatus::parse(raw)
                .filter(|s| s.is_open())
                .ok_or_else(|| {
                    ApiError::validation("status", "must be \"initiated\" or \"active\"")
                })?,
        };
        Ok(NewSession {
            session_id: SessionId::parse(self.session_id)?,
            language: self.language.map(Language::parse).transpose()?,
            metadata: match self.metadata {
                Some(v) => JsonObject::parse("metadata", v, MAX_METADATA_BYTES)?,
                None => JsonObject::default(),
            },
            status,
            started_at: self
                .started_at
                .map(|raw| Timestamp::parse("startedAt", &raw))
                .transpose()?,
        })
    }
}

const MAX_METADATA_FILTERS: usize = 5;

async fn list(State(state): State<AppState>, mut query: QueryParams) -> Result<Response, ApiError> {
    let (limit, order) = limit_and_order(&mut query, Order::Desc)?;
    let cursor = query.take("cursor")?;
    let statuses = query
        .take_all("status")
        .iter()
        .map(|raw| {
            SessionStatus::parse(raw).ok_or_else(|| {
                ApiError::validation("status", "must be initiated, active, completed or failed")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let language = query.take("language")?.map(Language::parse).transpose()?;
    let started_after = time_param(&mut query, "startedAfter")?;
    let started_before = time_param(&mut query, "startedBefore")?;
    if let (Some(after), Some(before)) = (started_after, started_before) {
        if after >= before {
            return Err(ApiError::validation(
                "startedBefore",
                "must be later than startedAfter",
            ));
        }
    }
    let metadata = metadata_filters(query.take_prefixed("metadata."))?;
    query.finish()?;
    let filter = SessionFilter {
        statuses,
        language,
        started_after,
        started_before,
        metadata,
    };
    let request = SessionListRequest {
        order,
        limit,
        cursor,
        filter,
    };
    Ok(Json(state.sessions.list(&request).await?).into_response())
}

/// `metadata.<key>=<value>` filters: at most 5, each key once, keys under the metadata key
/// rules so that none can reach MongoDB as an operator or a path.
fn metadata_filters(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>, ApiError> {
    if pairs.len() > MAX_METADATA_FILTERS {
        return Err(ApiError::validation(
            "metadata",
            "at most 5 metadata filters",
        ));
    }
    for (i, (key, _)) in pairs.iter().enumerate() {
        let field = format!("metadata.{key}");
        if key.is_empty() || key.starts_with('$') || key.contains('.') || key.contains('\0') {
            return Err(ApiError::validation(
                field,
                "must name a top-level metadata key: not empty, no leading '$', no '.' or NUL",
            ));
        }
        if pairs[..i].iter().any(|(k, _)| k == key) {
            return Err(ApiError::validation(field, "may be given only once"));
        }
    }
    Ok(pairs)
}

async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<Response, ApiError> {
    let written_session = state.sessions.create(body.parse()?).await?;
    Ok(written(written_session, |s| {
        format!("/sessions/{}", s.session_id)
    }))
}

/// A session, with a page of its events when `include=events` asked for them.
#[derive(Serialize)]
struct SessionView {
    #[serde(flatten)]
    session: Session,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Page<Event>>,
}

async fn read(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    mut query: QueryParams,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(session_id)?;
    let include = query.take("include")?;
    let page = match include.as_deref() {
        None => None,
        Some("events") => Some(page_request(&mut query)?),
        Some(_) => {
            return Err(ApiError::validation(
                "include",
                "the only value is \"events\"",
            ))
        }
    };
    query.finish()?;
    let session = state.sessions.get(&id).await?;
    let events = match page {
        Some(request) => Some(state.events.page(&id, &request).await?),
        None => None,
    };
    Ok(Json(SessionView { session, events }).into_response())
}

/// `DELETE /sessions/{id}`: erases the session and its events; 204, or 404.
async fn erase(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = SessionId::parse(session_id)?;
    state.sessions.erase(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default)]
    status: FinalStatus,
}

async fn complete(
    State(state): State<AppState>,
    ApiPath(session_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CompleteBody>,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(session_id)?;
    let status = body.unwrap_or_default().status;
    let session = state.sessions.complete(&id, status).await?;
    Ok(Json(session).into_response())
}
