//! Liveness, readiness and metrics: open to probes and scrapers without a key.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use super::JsonBody;
use crate::app::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Liveness: 200 whenever the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Serving", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> JsonBody<serde_json::Value> {
    JsonBody(json!({"status": "ok"}))
}

/// Readiness: 200 when the store answers a ping; 503 `unavailable` with the reason if not.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready", body = Object, example = json!({"status": "ready"}))))]
async fn readyz(State(state): State<AppState>) -> Result<JsonBody<serde_json::Value>, ApiError> {
    if let Err(e) = state.sessions.ready().await {
        tracing::warn!(error = %e, "readiness ping failed");
        return Err(ApiError::NotReady);
    }
    Ok(JsonBody(json!({"status": "ready"})))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state
        .metrics
        .render(state.live.open_streams(), state.live.change_streams());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
