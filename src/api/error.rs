//! [`ApiError`]: every error an HTTP handler returns, and its one mapping to a status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    BadRequest(String),
    /// A task id that does not exist (404, with Druid's `{"task": id, <field>: null}` shape).
    #[error("Task [{id}] not found")]
    TaskNotFound { id: String, field: &'static str },
    /// Anything else that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The body is larger than the configured limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Too many active tasks (429).
    #[error("{0}")]
    TooManyTasks(String),
    /// No leader is known or ready yet (503 with `Retry-After`).
    #[error("there is no leader right now; retry shortly")]
    NoLeader,
    /// The write could not complete (503 with `Retry-After`); it is safe to retry.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalidInput"),
            ApiError::TaskNotFound { .. } | ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "notFound"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payloadTooLarge"),
            ApiError::TooManyTasks(_) => (StatusCode::TOO_MANY_REQUESTS, "capacityExceeded"),
            ApiError::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "noLeader"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let mut body = json!({"error": kind, "message": self.to_string()});
        if let ApiError::TaskNotFound { id, field } = &self {
            body["task"] = json!(id);
            body[*field] = serde_json::Value::Null;
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}
