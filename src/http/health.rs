//! Liveness, readiness and metrics: open to probes and scrapers without a key.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// 200 whenever the process serves requests.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the store answers a ping; 503 `unavailable` with the reason when it does not.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if let Err(e) = state.sessions.ready().await {
        tracing::warn!(error = %e, "readiness ping failed");
        return Err(ApiError::NotReady);
    }
    Ok(Json(json!({"status": "ready"})))
}

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
