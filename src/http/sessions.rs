//! `/sessions` routes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::events::{limit_and_order, page_request, time_range, EventListParams};
use super::extract::{ApiJson, ApiPath, NoQuery, OptionalJson, QueryParams};
use super::openapi::{ErrorEnvelope, SessionPath};
use super::{written, JsonBody};
use crate::app::AppState;
use crate::domain::{
    Event, FinalStatus, JsonInput, JsonObject, Language, NewSession, Order, Session, SessionId,
    SessionStatus, Timestamp, MAX_METADATA_BYTES,
};
use crate::service::{Page, SessionListRequest};
use crate::store::SessionFilter;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(read, erase))
        .routes(routes!(complete))
}

/// Query parameters of `GET /sessions` (documentation; parsed by hand below).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct SessionListParams {
    /// 1 to 1000; default 50.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `nextCursor` of the previous page, with the same filters and order.
    cursor: Option<String>,
    /// `desc` (newest `startedAt` first, the default) or `asc`.
    order: Option<SortOrder>,
    /// Any of these statuses; repeat the parameter for several.
    #[param(explode, style = Form)]
    status: Option<Vec<SessionStatus>>,
    /// Exact language tag.
    language: Option<String>,
    /// `startedAt >= startedAfter` (RFC 3339).
    #[param(rename = "startedAfter", format = DateTime)]
    started_after: Option<String>,
    /// `startedAt < startedBefore` (RFC 3339).
    #[param(rename = "startedBefore", format = DateTime)]
    started_before: Option<String>,
}

/// The statuses a session can be created with.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum OpenStatus {
    Initiated,
    Active,
}

/// What `GET /sessions/{session_id}` can add to the session.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(super) enum Include {
    Events,
}

/// A listing's direction.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub(super) enum SortOrder {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateSessionBody {
    /// 1-128 ASCII letters, digits and `-_.:@`.
    #[schema(example = "abc123", pattern = r"^[A-Za-z0-9_.:@-]{1,128}$")]
    session_id: String,
    /// BCP-47 tag such as `en-US`.
    #[schema(pattern = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$", max_length = 64)]
    language: Option<String>,
    /// A JSON object of at most 16 KiB; keys never start with `$` nor hold `.`.
    #[schema(value_type = Option<Object>)]
    metadata: Option<JsonInput>,
    /// `initiated` (default) or `active`.
    #[schema(value_type = Option<OpenStatus>)]
    status: Option<String>,
    /// RFC 3339; default: now.
    #[schema(format = DateTime)]
    started_at: Option<String>,
}

/// Bytes to a validated session, as the create handler parses them.
#[cfg(test)]
pub(super) fn parse_create(bytes: &[u8]) -> Result<NewSession, ApiError> {
    super::extract::parse_json::<CreateSessionBody>(bytes)?.parse()
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
                Some(JsonInput(v)) => JsonObject::parse("metadata", v, MAX_METADATA_BYTES)?,
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

/// List sessions, newest first, with optional filters. Besides the parameters below,
/// `metadata.<key>=<value>` (at most 5) keeps sessions whose top-level metadata `key` holds
/// the string `value`, or an array holding it.
#[utoipa::path(get, path = "/sessions", tag = "sessions", params(SessionListParams),
    responses((status = 200, description = "A page of sessions", body = Page<Session>)))]
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
    let (started_after, started_before) = time_range(&mut query, "startedAfter", "startedBefore")?;
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
    Ok(JsonBody(state.sessions.list(&request).await?).into_response())
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

/// Create a session, or recognise a retry of the create that made it.
#[utoipa::path(post, path = "/sessions", tag = "sessions", request_body = CreateSessionBody,
    responses(
        (status = 201, description = "Created", body = Session,
            headers(("location" = String, description = "The session's URL"))),
        (status = 200, description = "An identical create already stored it", body = Session),
        (status = 409, description = "`session_conflict`: stored with another language or metadata", body = ErrorEnvelope),
    ))]
async fn create(
    State(state): State<AppState>,
    _: NoQuery,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<Response, ApiError> {
    let written_session = state.sessions.create(body.parse()?).await?;
    Ok(written(written_session, |s| {
        format!("/sessions/{}", s.session_id)
    }))
}

/// A session, with a page of its events when `include=events` asked for them.
#[derive(Serialize, ToSchema)]
struct SessionView {
    #[serde(flatten)]
    session: Session,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Page<Event>>,
}

/// Read a session; `include=events` adds a page of its events, chosen by the same
/// parameters as the event listing.
#[utoipa::path(get, path = "/sessions/{session_id}", tag = "sessions",
    params(
        SessionPath,
        ("include" = Option<Include>, Query, description = "`events` to add a page of events"),
        EventListParams,
    ),
    responses((status = 200, description = "The session", body = SessionView)))]
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
    // A cursor of another listing is refused as on the event listing, missing session or not.
    if let Some(request) = &page {
        request.check(&id)?;
    }
    let session = state.sessions.get(&id).await?;
    let events = match page {
        Some(request) => Some(state.events.page(&id, &request).await?),
        None => None,
    };
    Ok(JsonBody(SessionView { session, events }).into_response())
}

/// Erase the session and all its events; afterwards its id can be created again.
#[utoipa::path(delete, path = "/sessions/{session_id}", tag = "sessions",
    params(SessionPath),
    responses((status = 204, description = "Erased")))]
async fn erase(
    State(state): State<AppState>,
    _: NoQuery,
    ApiPath(session_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = SessionId::parse(session_id)?;
    state.sessions.erase(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    /// `completed` (default, also for `null`) or `failed`.
    #[schema(value_type = Option<FinalStatus>)]
    status: Option<FinalStatus>,
}

/// End the session. Repeating the same end returns the session as it ended.
#[utoipa::path(post, path = "/sessions/{session_id}/complete", tag = "sessions",
    params(SessionPath),
    request_body(content = Option<CompleteBody>, description = "Optional; default `completed`"),
    responses(
        (status = 200, description = "The ended session", body = Session),
        (status = 409, description = "`session_closed`: it already ended with the other status", body = ErrorEnvelope),
    ))]
async fn complete(
    State(state): State<AppState>,
    _: NoQuery,
    ApiPath(session_id): ApiPath<String>,
    OptionalJson(body): OptionalJson<CompleteBody>,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(session_id)?;
    let status = body.and_then(|b| b.status).unwrap_or_default();
    let session = state.sessions.complete(&id, status).await?;
    Ok(JsonBody(session).into_response())
}
