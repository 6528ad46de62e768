//! Druid's task routes under `/druid/indexer/v1`.

use std::collections::BTreeMap;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Identity;
use super::{leader_redirect, ApiError, AppState};
use crate::clock::now_ms;
use crate::security::Action;
use crate::sm::{Command, Reply};
use crate::tasks::idempotency::validate_key;
use crate::tasks::query::{StateFilter, TaskQuery};
use crate::tasks::spec::parse_submission;
use crate::tasks::{SubmitRejected, SHUTDOWN_BY_USER};

/// The header that makes a submission safe to retry (see [`crate::tasks::idempotency`]).
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Routes served only by the leader.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(submit))
        .routes(routes!(get_task))
        .routes(routes!(task_status))
        .routes(routes!(shutdown))
        .routes(routes!(shutdown_all))
        .routes(routes!(list))
        .routes(routes!(waiting))
        .routes(routes!(pending))
        .routes(routes!(running))
        .routes(routes!(complete))
        .routes(routes!(task_statuses))
}

/// Routes every node answers itself.
pub fn any_node_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(leader)).routes(routes!(is_leader))
}

pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.config.limits.max_payload_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than the limit of {limit} bytes (--max-task-payload-bytes)"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    to_bytes(body, limit).await.map_err(|_| too_large())
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/task",
    tag = "tasks",
    summary = "Submit a task (Druid's task spec, unchanged)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn submit(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, &headers, body).await?;
    let task = parse_submission(&bytes, now_ms(), &mut rand::rng()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if who.is_restricted() {
        let g = state.raft.shared.read().await;
        who.require(&g.state, "DATASOURCE", &task.datasource, Action::Write)?;
    }
    let max_active = state.config.limits.max_active_tasks;
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII characters".into()))?;
            validate_key(key).map_err(ApiError::BadRequest)?;
            Some(key.to_string())
        }
    };
    let command = Command::SubmitTask {
        task,
        max_active,
        idempotency_key,
    };
    match state.propose(command).await? {
        Reply::Submitted { id } => Ok(Json(json!({ "task": id })).into_response()),
        Reply::SubmitRejected {
            id,
            rejected: SubmitRejected::AlreadyExists,
        } => Err(ApiError::BadRequest(format!("Task [{id}] already exists"))),
        Reply::SubmitRejected {
            rejected: SubmitRejected::QueueFull { limit },
            ..
        } => Err(ApiError::TooManyTasks(format!(
            "Too many tasks are in the queue (Limit = {limit}), try again after some time"
        ))),
        other => Err(ApiError::Unavailable(format!(
            "unexpected reply to a submission: {other:?}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/task/{id}",
    tag = "tasks",
    summary = "A task's spec",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn get_task(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let g = state.raft.shared.read().await;
    let task = g.state.tasks.get(&id).ok_or(ApiError::TaskNotFound {
        id: id.clone(),
        field: "payload",
    })?;
    // The payload is stored verbatim; splice it in without re-parsing.
    let body = format!(
        r#"{{"task":{},"payload":{}}}"#,
        serde_json::to_string(&id).unwrap_or_default(),
        task.spec.payload.get()
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/task/{id}/status",
    tag = "tasks",
    summary = "A task's status (TaskStatusPlus)",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn task_status(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let g = state.raft.shared.read().await;
    let task = g.state.tasks.get(&id).ok_or(ApiError::TaskNotFound {
        id: id.clone(),
        field: "status",
    })?;
    Ok(Json(json!({ "task": id, "status": task.status_plus() })).into_response())
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/task/{id}/shutdown",
    tag = "tasks",
    summary = "Stop a task",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn shutdown(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    // Druid answers 200 even for unknown or finished tasks: shutdown is a no-op for them.
    state
        .propose(Command::ShutdownTask {
            id: id.clone(),
            reason: SHUTDOWN_BY_USER.into(),
        })
        .await?;
    Ok(Json(json!({ "task": id })).into_response())
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/datasources/{ds}/shutdownAllTasks",
    tag = "tasks",
    summary = "Stop every active task of a datasource",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn shutdown_all(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    let has_active = state
        .raft
        .shared
        .read()
        .await
        .state
        .tasks
        .active()
        .any(|t| t.spec.datasource == ds);
    if !has_active {
        return Err(ApiError::NotFound(format!("no active tasks for dataSource [{ds}]")));
    }
    let reason = SHUTDOWN_BY_USER.to_string();
    state
        .propose(Command::ShutdownDatasourceTasks {
            datasource: ds.clone(),
            reason,
        })
        .await?;
    Ok(Json(json!({ "dataSource": ds })).into_response())
}

fn parse_query(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or("");
    serde_urlencoded_pairs(raw).map_err(ApiError::BadRequest)
}

/// Decodes `a=b&c=d` with percent-decoding, using the URL parser reqwest already depends on.
fn serde_urlencoded_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let url = reqwest::Url::parse(&format!("http://q/?{raw}")).map_err(|e| format!("malformed query string: {e}"))?;
    Ok(url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// Runs a task list query; a caller sees only the tasks of datasources they may read.
async fn run_query(state: &AppState, who: &Identity, params: &[(String, String)]) -> Result<Response, ApiError> {
    let query = TaskQuery::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let g = state.raft.shared.view().await;
    let mut rows = query.run(&g.state.tasks);
    if who.is_restricted() {
        rows.retain(|t| who.reads(&g.state, &t.data_source));
    }
    Ok(Json(rows).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/tasks",
    tag = "tasks",
    summary = "List tasks",
    params(("state" = Option<String>, Query, description = "waiting, pending, running or complete"), ("datasource" = Option<String>, Query), ("type" = Option<String>, Query), ("max" = Option<u64>, Query), ("createdTimeInterval" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn list(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    run_query(&state, &who, &parse_query(q.as_deref())?).await
}

async fn with_state(
    state: AppState,
    who: Identity,
    q: Option<String>,
    filter: StateFilter,
) -> Result<Response, ApiError> {
    let mut params = parse_query(q.as_deref())?;
    params.retain(|(k, _)| k != "state");
    let name = match filter {
        StateFilter::Waiting => "waiting",
        StateFilter::Pending => "pending",
        StateFilter::Running => "running",
        StateFilter::Complete => "complete",
    };
    params.push(("state".into(), name.into()));
    run_query(&state, &who, &params).await
}

type Who = Extension<Identity>;

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/waitingTasks",
    tag = "tasks",
    summary = "Waiting tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn waiting(State(s): State<AppState>, Extension(w): Who, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    with_state(s, w, q, StateFilter::Waiting).await
}
#[utoipa::path(
    get,
    path = "/druid/indexer/v1/pendingTasks",
    tag = "tasks",
    summary = "Pending tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn pending(State(s): State<AppState>, Extension(w): Who, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    with_state(s, w, q, StateFilter::Pending).await
}
#[utoipa::path(
    get,
    path = "/druid/indexer/v1/runningTasks",
    tag = "tasks",
    summary = "Running tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn running(State(s): State<AppState>, Extension(w): Who, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    with_state(s, w, q, StateFilter::Running).await
}
#[utoipa::path(
    get,
    path = "/druid/indexer/v1/completeTasks",
    tag = "tasks",
    summary = "Complete tasks",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn complete(State(s): State<AppState>, Extension(w): Who, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    with_state(s, w, q, StateFilter::Complete).await
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/taskStatus",
    tag = "tasks",
    summary = "Statuses of the given task ids",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn task_statuses(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&state, &headers, body).await?;
    let ids: Vec<String> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("expected a JSON array of task ids: {e}")))?;
    if ids.is_empty() {
        return Err(ApiError::BadRequest("No Task IDs provided.".into()));
    }
    let g = state.raft.shared.view().await;
    let out: BTreeMap<&str, _> = ids
        .iter()
        .filter_map(|id| g.state.tasks.get(id).map(|t| (id.as_str(), t)))
        .filter(|(_, t)| !who.is_restricted() || who.reads(&g.state, &t.spec.datasource))
        .map(|(id, t)| (id, t.status()))
        .collect();
    Ok(Json(out).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/leader",
    tag = "status",
    summary = "The leader's URL",
    responses((status = 200, description = "success", body = String), crate::api::openapi::Refused)
)]
async fn leader(State(state): State<AppState>) -> Result<Response, ApiError> {
    leader_url(&state)
}

/// The leader's URL as Druid's `/leader` routes answer it (plain text).
pub(super) fn leader_url(state: &AppState) -> Result<Response, ApiError> {
    match state.raft.leader() {
        Some((_, url)) => Ok((StatusCode::OK, url).into_response()),
        None => Err(ApiError::NoLeader),
    }
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/isLeader",
    tag = "status",
    summary = "Whether this node leads (200) or not (404)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn is_leader(State(state): State<AppState>) -> Response {
    leadership(&state)
}

/// Whether this node leads, as Druid's `/isLeader` routes answer it: 200 or 404.
pub(super) fn leadership(state: &AppState) -> Response {
    if matches!(leader_redirect(&state.raft), Ok(None)) {
        (StatusCode::OK, Json(json!({"leader": true}))).into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(json!({"leader": false}))).into_response()
    }
}
