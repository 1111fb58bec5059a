//! The OpenAPI 3.1 description, generated from the handlers' annotations, served at
//! `GET /openapi.json`, with a browsable page at `GET /docs`.

use std::sync::Arc;

use axum::response::{Html, IntoResponse, Response};
use axum::{http::header, Extension};
use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::sessions::{Include, SortOrder};
use crate::app::AppState;

/// The parts of the document not tied to one handler.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Conversation Session Service",
        description = "Sessions (phone calls) and their immutable events for voice AI platforms. \
            Every write is idempotent: retry with the same ids.",
    ),
    tags(
        (name = "sessions", description = "One session per call"),
        (name = "events", description = "What happened in a session; immutable"),
        (name = "live", description = "Live tail over Server-Sent Events"),
        (name = "operations", description = "Health, readiness, metrics and this description"),
    ),
    components(schemas(ErrorEnvelope, ErrorObject, Include, SortOrder, StreamMessage)),
)]
struct ApiDoc;

/// Every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    error: ErrorObject,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ErrorObject {
    /// A stable snake_case code, e.g. `validation_failed`, `session_not_found`.
    code: String,
    message: String,
    /// Context: the offending `field`, or the stored `session` or `event` of a conflict.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
    /// Equals the response's `x-request-id` header.
    request_id: String,
}

/// The path of a session's routes (documentation; the handlers parse the id themselves).
/// The pattern is the id rule of the request bodies; `.` and `..` fit it and are refused
/// too, since HTTP clients rewrite them as path segments.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct SessionPath {
    /// The session id: 1-128 ASCII letters, digits and `-_.:@`, but not `.` or `..`.
    #[param(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$", max_length = 128)]
    session_id: String,
}

/// The path of one event.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct EventPath {
    /// The session id: 1-128 ASCII letters, digits and `-_.:@`, but not `.` or `..`.
    #[param(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$", max_length = 128)]
    session_id: String,
    /// The event id, by the same rule.
    #[param(pattern = r"^[A-Za-z0-9_.:@-]{1,128}$", max_length = 128)]
    event_id: String,
}

/// One Server-Sent Events message of a live stream.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StreamMessage {
    /// The event's seq; absent on `session.closed`.
    id: Option<String>,
    /// The event's type, or `session.closed`.
    event: String,
    /// The event as JSON, or for `session.closed` the session as it ended.
    data: String,
}

/// The rendered document, shared by the route that serves it.
#[derive(Clone)]
pub struct Rendered(Arc<String>);

/// Routes that serve the description itself.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(docs_page))
}

/// Paths open without an API key.
pub const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Paths that neither touch the store nor read their query: no 400, no 503.
const SELF_CONTAINED_PATHS: [&str; 4] = ["/healthz", "/metrics", "/openapi.json", "/docs"];

/// Adds what every operation shares: the error responses and, where a key is needed, the
/// bearer security requirement.
pub fn finish(mut doc: Document) -> Rendered {
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "bearer".to_owned(),
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC_PATHS.contains(&path.as_str());
        let operations = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            add_shared_responses(operation, path, public);
        }
    }
    Rendered(Arc::new(serde_json::to_string(&doc).unwrap_or_default()))
}

fn add_shared_responses(operation: &mut Operation, path: &str, public: bool) {
    let mut errors = vec![("500", "Internal error: a bug or a broken database")];
    let self_contained = SELF_CONTAINED_PATHS.contains(&path);
    if !self_contained {
        errors.push((
            "503",
            "The database is unavailable, or this instance is at a limit; retry with the same ids",
        ));
    }
    if !public && !self_contained {
        errors.push((
            "400",
            "The request breaks a rule; `details.field` names the field",
        ));
    }
    if !public {
        errors.push((
            "401",
            "A valid `Authorization: Bearer <key>` is required (when API_KEYS is set)",
        ));
        operation.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
    if operation.request_body.is_some() {
        errors.push((
            "408",
            "The body paused for longer than BODY_READ_TIMEOUT_SECS",
        ));
        errors.push(("413", "The body is larger than BODY_LIMIT_BYTES"));
        errors.push((
            "415",
            "The body is not sent as uncompressed UTF-8 application/json",
        ));
    }
    if path.contains("{session_id}") {
        errors.push(("404", "No such session (or event)"));
    }
    for (status, description) in errors {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            utoipa::openapi::ContentBuilder::new()
                                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                    "ErrorEnvelope",
                                ))))
                                .build(),
                        )
                        .build(),
                )
            });
    }
}

/// The routes with their description, and the description ready to serve.
pub fn split(router: OpenApiRouter<AppState>) -> (axum::Router<AppState>, Rendered) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(router)
        .split_for_parts();
    (router, finish(doc))
}

/// This description, as OpenAPI 3.1 JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json(Extension(rendered): Extension<Rendered>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        rendered.0.as_str().to_owned(),
    )
        .into_response()
}

/// A browsable page of this description. Its scripts load from a CDN in the browser; the
/// service ships none.
#[utoipa::path(get, path = "/docs", tag = "operations",
    responses((status = 200, description = "An HTML page", content_type = "text/html", body = String)))]
async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Conversation Session Service API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js" crossorigin></script>
  <script>
    window.onload = () => { window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" }); };
  </script>
</body>
</html>
"##;
