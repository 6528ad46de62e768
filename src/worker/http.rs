//! The worker's routes under `/druid/worker/v1`, as a Druid MiddleManager serves them.
//!
//! `GET /enabled`, `GET /tasks`, `GET /task/{id}/log?offset=N` and `GET /task/{id}/reports`
//! are open while auth is off, and need the cluster secret (which the leader sends when it
//! fetches a running task's log or reports) when it is on; `POST /enable`, `POST /disable` and
//! `POST /task/{id}/shutdown` change state and always need the cluster secret.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::urlencode;
use super::WorkerService;
use crate::api::ApiError;

/// The worker's routes; `open_reads`: its reads need no credentials (auth off).
pub fn routes(worker: WorkerService, secret: &str, open_reads: bool) -> OpenApiRouter {
    let secret: std::sync::Arc<str> = secret.into();
    let changes = OpenApiRouter::new()
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(shutdown))
        .layer(middleware::from_fn_with_state(
            secret.clone(),
            raftlord_raft::server::require_secret,
        ));
    let mut reads = OpenApiRouter::new()
        .routes(routes!(enabled))
        .routes(routes!(tasks))
        .routes(routes!(log))
        .routes(routes!(reports));
    if !open_reads {
        reads = reads.layer(middleware::from_fn_with_state(
            secret,
            raftlord_raft::server::require_secret,
        ));
    }
    reads.merge(changes).with_state(worker)
}

#[utoipa::path(
    get,
    path = "/druid/worker/v1/enabled",
    tag = "worker",
    summary = "Whether this worker takes new tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn enabled(State(w): State<WorkerService>) -> Response {
    Json(json!({ w.worker.host.clone(): !w.disabled() })).into_response()
}

async fn set_enabled(w: &WorkerService, enable: bool) -> Result<Response, ApiError> {
    let verb = if enable { "enable" } else { "disable" };
    let path = format!("/druid/indexer/v1/worker/{}/{verb}", urlencode(&w.worker.host));
    let answer: serde_json::Value = w
        .client()
        .call(&path, Some(b"{}"), Duration::from_secs(15))
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot reach the leader to {verb} this worker: {e}")))?;
    Ok(Json(answer).into_response())
}

#[utoipa::path(
    post,
    path = "/druid/worker/v1/enable",
    tag = "worker",
    summary = "Enable this worker (cluster secret)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn enable(State(w): State<WorkerService>) -> Result<Response, ApiError> {
    set_enabled(&w, true).await
}

#[utoipa::path(
    post,
    path = "/druid/worker/v1/disable",
    tag = "worker",
    summary = "Disable this worker (cluster secret)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn disable(State(w): State<WorkerService>) -> Result<Response, ApiError> {
    set_enabled(&w, false).await
}

#[utoipa::path(
    get,
    path = "/druid/worker/v1/tasks",
    tag = "worker",
    summary = "This worker's tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn tasks(State(w): State<WorkerService>) -> Response {
    Json(w.runner.ids()).into_response()
}

#[utoipa::path(
    post,
    path = "/druid/worker/v1/task/{id}/shutdown",
    tag = "worker",
    summary = "Stop a task's peon (cluster secret)",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn shutdown(State(w): State<WorkerService>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    if !w.runner.knows(&id) {
        return Err(ApiError::NotFound(format!("this worker has no task [{id}]")));
    }
    w.runner.stop(&id, "shutdown requested on the worker");
    Ok(Json(json!({ "task": id })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct Offset {
    #[serde(default)]
    pub offset: i64,
}

#[utoipa::path(
    get,
    path = "/druid/worker/v1/task/{id}/log",
    tag = "worker",
    summary = "A task's log (text)",
    params(("id" = String, Path, description = "task id"), ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "success", body = String), crate::api::openapi::Refused)
)]
async fn log(
    State(w): State<WorkerService>,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<Offset>,
) -> Result<Response, ApiError> {
    let path = w.runner.log_path(&id).ok_or_else(|| no_log(&id))?;
    serve_log(&path, q.offset)
}

#[utoipa::path(
    get,
    path = "/druid/worker/v1/task/{id}/reports",
    tag = "worker",
    summary = "A task's reports",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn reports(State(w): State<WorkerService>, UrlPath(id): UrlPath<String>) -> Result<Response, ApiError> {
    let path = w.runner.report_path(&id).ok_or_else(|| no_report(&id))?;
    serve_report(&path)
}

/// Druid's 404 for a log that is not there (yet).
pub fn no_log(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "No log was found for this task [{id}]. The task may not exist, or it may not have begun running yet."
    ))
}

pub fn no_report(id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "No task reports were found for this task [{id}]. The task may not exist, or it may not have completed yet."
    ))
}

/// A log from `offset`: bytes from there when >= 0, the last `-offset` bytes when negative
/// (Druid's `TaskLogStreamer` semantics).
pub fn serve_log(path: &Path, offset: i64) -> Result<Response, ApiError> {
    let bytes = read_from(path, offset).map_err(|e| ApiError::NotFound(format!("cannot read the log: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

pub fn serve_report(path: &Path) -> Result<Response, ApiError> {
    let bytes = std::fs::read(path).map_err(|e| ApiError::NotFound(format!("cannot read the report: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

fn read_from(path: &Path, offset: i64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = if offset >= 0 {
        (offset as u64).min(len)
    } else {
        len.saturating_sub(offset.unsigned_abs())
    };
    f.seek(SeekFrom::Start(start))?;
    let mut out = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_offsets_follow_druid() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_from(&p, 0).unwrap(), b"0123456789");
        assert_eq!(read_from(&p, 7).unwrap(), b"789");
        assert_eq!(read_from(&p, 99).unwrap(), b"");
        assert_eq!(read_from(&p, -3).unwrap(), b"789");
        assert_eq!(read_from(&p, -99).unwrap(), b"0123456789");
    }
}
