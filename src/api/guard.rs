//! What every HTTP route of a node gets, whoever wrote its handler: request bodies are bounded
//! in size and in JSON nesting before a handler reads them, and every error answer is JSON.
//!
//! - [`bound_body`]: a body over the payload limit is a 413, a JSON body nested deeper than
//!   [`MAX_JSON_DEPTH`] a 400, both before any handler runs. The depth bound sits well below
//!   what serde_json reads back (128 levels), so anything accepted here can be stored in the
//!   Raft log, read back and re-encoded by every reader.
//! - [`json_errors`]: an error answered by axum's own extractors (a path, query string or body
//!   that does not decode, an unknown method) comes as `text/plain`; it is rewritten to the
//!   JSON shape of [`ApiError`](super::ApiError), Druid's `ErrorResponse`.

use axum::body::{to_bytes, Body, HttpBody as _};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Deepest nesting of arrays and objects accepted in a request body.
pub const MAX_JSON_DEPTH: usize = 64;

/// Largest error body rewritten by [`json_errors`]; extractor messages are short.
const MAX_ERROR_TEXT: usize = 64 << 10;

/// Buffers a request body up to `limit` bytes and refuses it when it is larger or nested too
/// deeply; the handler then reads it from memory.
pub async fn bound_body(State(limit): State<usize>, req: Request, next: Next) -> Response {
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes (--max-task-payload-bytes)"
        ))
        .into_response()
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, limit).await else {
        return too_large();
    };
    let depth = raftlord_storage::json_depth(&bytes);
    if depth > MAX_JSON_DEPTH {
        return ApiError::BadRequest(format!(
            "the request body nests arrays and objects {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted"
        ))
        .into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Rewrites a non-JSON error answer as a JSON error body with the same status.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match to_bytes(body, MAX_ERROR_TEXT).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_string(),
    };
    let body = raftlord_raft::server::error_body(status, kind(status), &text).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

/// The `errorCode` for a status, matching [`ApiError`]'s kinds where they overlap.
fn kind(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalidInput",
        StatusCode::NOT_FOUND => "notFound",
        StatusCode::METHOD_NOT_ALLOWED => "methodNotAllowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payloadTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupportedMediaType",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "invalidInput",
        _ => "internalError",
    }
}

/// Applies both guards to `router`.
pub fn guarded(router: axum::Router, max_body_bytes: usize) -> axum::Router {
    router
        .layer(axum::middleware::from_fn_with_state(max_body_bytes, bound_body))
        .layer(axum::middleware::from_fn(json_errors))
}
