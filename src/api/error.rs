//! [`ApiError`]: every error an HTTP handler returns, and its one mapping to a status and body.
//!
//! The body is Druid's `ErrorResponse` ([`raftlord_raft::server::error_body`]): Druid's own
//! clients (`druidapi`, the web console) show its `errorMessage`. Routes that Druid answers with
//! its older `{"error": "<message>"}` map are wrapped in [`legacy_errors`], which rewrites the
//! body into that shape.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or wrong ones (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this (403).
    #[error("{0}")]
    Forbidden(String),
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

/// The message of an error answer, kept on the response for [`legacy_errors`].
#[derive(Clone)]
struct ErrorMessage(String);

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalidInput"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
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
        let (status, code) = self.status_and_code();
        let message = self.to_string();
        let mut body = raftlord_raft::server::error_body(status, code, &message);
        if let ApiError::TaskNotFound { id, field } = &self {
            body["task"] = json!(id);
            body[*field] = serde_json::Value::Null;
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"raftlord\""),
            );
        }
        resp.extensions_mut().insert(ErrorMessage(message));
        resp
    }
}

/// Whether Druid answers errors on `path` with its older `{"error": "<message>"}` map: the
/// Coordinator's datasource and segment routes, the Overlord's worker config routes and the
/// basic-security routes.
pub fn is_legacy_route(path: &str) -> bool {
    path.starts_with("/druid/coordinator/v1/")
        || path.starts_with("/druid/indexer/v1/worker")
        || path.starts_with("/druid-ext/basic-security/")
}

/// Answers the errors of [`is_legacy_route`] routes as `{"error": "<message>"}`.
pub async fn legacy_errors(req: Request, next: Next) -> Response {
    let legacy = is_legacy_route(req.uri().path());
    let mut resp = next.run(req).await;
    if !legacy {
        return resp;
    }
    let Some(ErrorMessage(message)) = resp.extensions_mut().remove::<ErrorMessage>() else {
        return resp;
    };
    let (parts, _) = resp.into_parts();
    let mut legacy = (parts.status, Json(json!({ "error": message }))).into_response();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            legacy.headers_mut().insert(name, value.clone());
        }
    }
    legacy
}
