//! API errors as JSON responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct RejectedEvent {
    pub index: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    BadEvents { message: String, rejected: Vec<RejectedEvent> },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The body is not declared as what the endpoint reads (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unavailable(String),
    /// A write whose outcome is unknown (sent, no answer): 503 with `"outcome": "unknown"`.
    #[error("{0}")]
    OutcomeUnknown(String),
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, serde_json::json!({"error": m})),
            ApiError::BadEvents { message, rejected } => (StatusCode::BAD_REQUEST, serde_json::json!({"error": message, "accepted": 0, "rejected": rejected})),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, serde_json::json!({"error": self.to_string()})),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, serde_json::json!({"error": m})),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": m, "retry": true})),
            ApiError::OutcomeUnknown(m) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"error": m, "retry": true, "outcome": "unknown"})),
            ApiError::Unexpected(e) => {
                tracing::error!(error = %format!("{e:#}"), "unexpected error");
                (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({"error": "internal error"}))
            }
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert("www-authenticate", "Bearer".parse().expect("static header"));
        }
        response
    }
}
