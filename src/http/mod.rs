//! The HTTP edge: routes, extractors, the error envelope, request ids and tracing.

mod auth;
mod body_timeout;
mod error;
mod events;
mod extract;
mod health;
mod openapi;
mod sessions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::{Instrument, Span};
use utoipa_axum::router::OpenApiRouter;

pub use auth::ApiKeys;
use body_timeout::ReadTimeoutBody;
pub use error::ApiError;
use error::ErrorBody;
use extract::BodyLimit;

use crate::app::AppState;
use crate::metrics::Metrics;
use crate::service::Written;

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP API over `state`, with its middleware.
pub fn router(state: AppState, body_limit: usize, body_read_timeout: Duration) -> Router {
    let keys = state.api_keys.clone();
    let metrics = Arc::clone(&state.metrics);
    let api = OpenApiRouter::new()
        .merge(sessions::router())
        .merge(events::router())
        .merge(openapi::router())
        .route_layer(middleware::from_fn_with_state(keys, auth::require_api_key));
    let (routes, description) = openapi::split(api.merge(health::router()));
    // One `layer` call with the whole stack: each call wraps every route in another boxed
    // service, and every request clones the boxes of the layers below a middleware. Layered
    // one by one, that was about fifty allocations per request.
    let middleware = ServiceBuilder::new()
        .layer(middleware::from_fn_with_state(metrics, request_context))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a handler panicked".to_owned()).into_response()
        }))
        .layer(Extension(BodyLimit(body_limit)))
        // A body that trickles in stalls only its own request, and not for long.
        .map_request(move |req: Request| {
            req.map(|body| Body::new(ReadTimeoutBody::new(body, body_read_timeout)))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(description));
    routes
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
        .layer(middleware)
}

/// Request spans name the route template, never the raw path, plus the request id and the
/// session id.
fn request_span(req: &Request, route: &str, request_id: &str) -> Span {
    let session_id = session_id_of(route, req.uri().path()).unwrap_or("");
    tracing::info_span!("request", method = %req.method(), route, request_id, session_id)
}

/// The path segment that the route template names `{session_id}`.
fn session_id_of<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == "{session_id}")
        .map(|(_, segment)| segment)
}

/// Assigns the request id, runs the request in its span and logs it, renders every error
/// response in the one envelope, and counts the request.
async fn request_context(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    // The template lives behind an `Arc`: a clone copies no text.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_usable_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let span = request_span(&req, route, &id);
    // Every request logs `served`; a server error has also logged its cause chain, where it
    // arose.
    let (mut res, latency) = async move {
        let res = next.run(req).await;
        let latency = started.elapsed();
        tracing::info!(
            status = res.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            "served"
        );
        (res, latency)
    }
    .instrument(span)
    .await;
    let status = res.status();
    let body = res.extensions_mut().remove::<ErrorBody>();
    match body {
        Some(body) => body.render(&mut res, &id),
        None if status.is_client_error() || status.is_server_error() => {
            ErrorBody::for_status(status).render(&mut res, &id)
        }
        None => {}
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    metrics.request(method_label(&method), route, status.as_u16(), latency);
    res
}

/// The `method` label: a standard method by name, any other as `other`. hyper accepts any
/// token as a method, and a label per invented method would grow the series without bound.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

/// 1-128 visible ASCII characters.
fn is_usable_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

/// A JSON response. axum's `Json` starts from 128 bytes and writes through `BytesMut` a
/// token at a time; this writes into one `Vec` sized for an event, which serde_json fills
/// with plain slice copies.
struct JsonBody<T>(T);

impl<T: Serialize> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        let mut text = Vec::with_capacity(512);
        match serde_json::to_writer(&mut text, &self.0) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                text,
            )
                .into_response(),
            Err(e) => {
                ApiError::Internal(format!("a response did not serialise: {e}")).into_response()
            }
        }
    }
}

/// 201 with `Location` for something new, 200 for a retry that found it stored.
fn written<T: Serialize>(outcome: Written<T>, location: impl FnOnce(&T) -> String) -> Response {
    match outcome {
        Written::Created(value) => {
            let headers =
                HeaderValue::from_str(&location(&value)).map(|loc| [(header::LOCATION, loc)]);
            match headers {
                Ok(h) => (StatusCode::CREATED, h, JsonBody(value)).into_response(),
                Err(_) => (StatusCode::CREATED, JsonBody(value)).into_response(),
            }
        }
        Written::Existing(value) => (StatusCode::OK, JsonBody(value)).into_response(),
    }
}

/// Entry points for the property tests: the parsing a request body goes through, from
/// bytes to validated domain values.
#[cfg(test)]
pub(crate) mod fuzzing {
    use super::error::ApiError;
    use super::extract::parse_json;

    pub fn parse_append_body(bytes: &[u8]) -> Result<(), ApiError> {
        super::events::parse_append(bytes).map(drop)
    }

    pub fn parse_create_body(bytes: &[u8]) -> Result<(), ApiError> {
        super::sessions::parse_create(bytes).map(drop)
    }

    pub fn parse_json_value(bytes: &[u8]) -> Result<(), ApiError> {
        parse_json::<serde_json::Value>(bytes).map(drop)
    }
}
