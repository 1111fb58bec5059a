//! The one error envelope every failure leaves the service in.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::domain::ValidationError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// Everything a request can fail with, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("the body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("no route matches this path")]
    NotFound,
    #[error("a valid API key is required: send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("not ready: the database did not answer a ping")]
    NotReady,
    #[error("the request body stopped arriving")]
    BodyTimeout,
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("internal error")]
    Internal(String),
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        Self::Validation {
            field: err.field,
            message: err.message,
        }
    }
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The status and the error object of one batch item that failed this way.
    pub fn item(self) -> (u16, Value) {
        let (status, code, details) = self.parts();
        let mut error = json!({"code": code, "message": self.client_message(status)});
        if let Some(details) = details {
            error["details"] = details;
        }
        (status.as_u16(), error)
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<Value>) {
        use ServiceError as S;
        match self {
            Self::Validation { field, .. } => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                Some(json!({ "field": field })),
            ),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json", None),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Some(json!({ "limitBytes": limit })),
            ),
            Self::Service(S::InvalidCursor(_)) => (StatusCode::BAD_REQUEST, "invalid_cursor", None),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found", None),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            Self::NotReady => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Self::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout", None),
            Self::BodyUnreadable(_) => (StatusCode::BAD_REQUEST, "invalid_body", None),
            Self::Service(S::SessionNotFound(_)) => {
                (StatusCode::NOT_FOUND, "session_not_found", None)
            }
            Self::Service(S::EventNotFound) => (StatusCode::NOT_FOUND, "event_not_found", None),
            Self::Service(S::SessionConflict(s)) => (
                StatusCode::CONFLICT,
                "session_conflict",
                Some(json!({ "session": s })),
            ),
            Self::Service(S::EventConflict(e)) => (
                StatusCode::CONFLICT,
                "event_conflict",
                Some(json!({ "event": e })),
            ),
            Self::Service(S::SessionClosed(s)) => (
                StatusCode::CONFLICT,
                "session_closed",
                Some(json!({ "session": s })),
            ),
            Self::Service(
                S::Store(StoreError::Unavailable(_) | StoreError::Busy(_))
                | S::Overloaded(_)
                | S::Busy(_),
            ) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Self::Service(S::Store(_)) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        }
    }

    /// What the client reads. Server faults get a fixed sentence: causes stay in the log.
    fn client_message(&self, status: StatusCode) -> String {
        match status {
            _ if matches!(
                self,
                Self::Service(
                    ServiceError::Overloaded(_)
                        | ServiceError::Busy(_)
                        | ServiceError::Store(StoreError::Busy(_))
                ) | Self::NotReady
            ) =>
            {
                self.to_string()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                "the database is unavailable; retry with the same ids".to_owned()
            }
            s if s.is_server_error() => "internal error".to_owned(),
            _ => self.to_string(),
        }
    }
}

/// Logs the whole cause chain of an error on one line.
fn cause_chain(err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// The error as a response extension; `render` turns it into the body once the request id
/// is known.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ErrorBody {
    /// The envelope for an error response that a layer below the handlers produced.
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no route matches this path"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this route does not accept the method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "the body must be application/json",
            ),
            StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the service is unavailable"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "a valid API key is required"),
            s if s.is_server_error() => ("internal", "internal error"),
            _ => ("bad_request", "the request is not valid"),
        };
        Self {
            code,
            message: message.to_owned(),
            details: None,
        }
    }

    /// Writes the envelope into `response`, replacing whatever body it had.
    pub fn render(self, response: &mut Response<Body>, request_id: &str) {
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "requestId": request_id,
        });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let bytes = serde_json::to_vec(&json!({ "error": error })).unwrap_or_default();
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *response.body_mut() = Body::from(bytes);
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let (status, code, details) = self.parts();
        if matches!(self, Self::NotReady) {
            // The readiness probe logged its cause already.
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %cause_chain(&self), code, "request refused");
        } else if status.is_server_error() {
            tracing::error!(error = %cause_chain(&self), code, "request failed");
        }
        let body = ErrorBody {
            code,
            message: self.client_message(status),
            details,
        };
        let mut response = status.into_response();
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        response.extensions_mut().insert(body);
        response
    }
}
