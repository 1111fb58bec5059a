//! `/sessions` routes.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ApiError;
use super::events::page_request;
use super::extract::{ApiJson, ApiPath, OptionalJson, QueryParams};
use super::written;
use crate::app::AppState;
use crate::domain::Event;
use crate::domain::{
    FinalStatus, JsonObject, Language, NewSession, Session, SessionId, SessionStatus, Timestamp,
    MAX_METADATA_BYTES,
};
use crate::service::Page;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions", post(create))
        .route("/sessions/{session_id}", get(read))
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
