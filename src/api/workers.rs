//! Druid's worker routes on the Overlord (`/workers`, `/worker`, `/totalWorkerCapacity`, task
//! logs and reports) and the internal worker protocol (`/internal/workers/{sync,report}`, see
//! [`crate::worker::protocol`]).

use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::sm::{Command, Reply};
use crate::tasks::spec::validate_id;
use crate::worker::http::{no_log, no_report, serve_log, serve_report, Offset};
use crate::worker::protocol::{AssignedTask, Report, ReportResponse, SyncResponse};
use crate::worker::runner::{log_file, report_file};
use crate::workers::{Classified, UpdatesApplied, WorkerBehaviorConfig};

/// Overlord routes served by the leader.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(workers))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(get_config, set_config))
        .routes(routes!(history))
        .routes(routes!(total_capacity))
}

/// Routes every node answers from its own replica (logs and reports are read from the task log
/// directory or fetched from the worker).
pub fn any_node_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(task_log))
        .routes(routes!(task_reports))
}

/// The worker protocol, served by the leader, behind the cluster secret.
pub fn internal_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync)).routes(routes!(report))
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/workers",
    tag = "workers",
    summary = "Workers (ImmutableWorkerInfo)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn workers(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    let rows: Vec<serde_json::Value> = g
        .state
        .workers
        .all()
        .filter(|r| !r.lost)
        .map(|r| r.info(&g.state.tasks))
        .collect();
    Json(rows).into_response()
}

async fn set_enabled(state: &AppState, host: String, enabled: bool) -> Result<Response, ApiError> {
    let reply = state
        .propose(Command::SetWorkerEnabled {
            host: host.clone(),
            enabled,
        })
        .await?;
    match reply {
        Reply::WorkerChanged { changed: Some(_) } => {
            let word = if enabled { "enabled" } else { "disabled" };
            Ok(Json(json!({ host: word })).into_response())
        }
        _ => Err(ApiError::NotFound(format!("Worker [{host}] not found"))),
    }
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/worker/{host}/enable",
    tag = "workers",
    summary = "Enable a worker",
    params(("host" = String, Path, description = "worker host:port")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn enable(State(state): State<AppState>, Path(host): Path<String>) -> Result<Response, ApiError> {
    set_enabled(&state, host, true).await
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/worker/{host}/disable",
    tag = "workers",
    summary = "Disable a worker: it keeps its tasks and gets no new ones",
    params(("host" = String, Path, description = "worker host:port")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn disable(State(state): State<AppState>, Path(host): Path<String>) -> Result<Response, ApiError> {
    set_enabled(&state, host, false).await
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/worker",
    tag = "workers",
    summary = "The worker behaviour config",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn get_config(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    Json(g.state.workers.config.clone()).into_response()
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/worker",
    tag = "workers",
    summary = "Replace the worker behaviour config (audited)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn set_config(State(state): State<AppState>, headers: HeaderMap, body: String) -> Result<Response, ApiError> {
    let config: WorkerBehaviorConfig = serde_json::from_str(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid worker behavior config: {e}")))?;
    if config.auto_scaler.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::BadRequest(
            "autoScaler is not supported; set it to null or leave it out".into(),
        ));
    }
    let audit = super::audit_info(&headers);
    state.propose(Command::SetWorkerConfig { config, audit }).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    count: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/worker/history",
    tag = "workers",
    summary = "Worker config history",
    params(("count" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn history(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    if q.count == Some(0) {
        return Err(ApiError::BadRequest("count must be a positive integer".into()));
    }
    let g = state.raft.shared.read().await;
    let all = g.state.workers.history();
    let skip = q.count.map_or(0, |c| all.len().saturating_sub(c));
    Ok(Json(&all[skip..]).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/totalWorkerCapacity",
    tag = "workers",
    summary = "Task slots of the cluster",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn total_capacity(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    let (capacity, used) = g.state.workers.capacity(&g.state.tasks);
    Json(json!({
        "currentClusterCapacity": capacity,
        "maximumCapacityWithAutoScale": capacity,
        "usedClusterCapacity": used,
    }))
    .into_response()
}

/// Where to look for a task's log or report: the shared directory, then the worker.
async fn worker_of(state: &AppState, id: &str) -> Result<Option<String>, ApiError> {
    let g = state.raft.shared.read().await;
    let task = g.state.tasks.get(id).ok_or_else(|| no_log(id))?;
    Ok(task
        .assignment
        .as_ref()
        .and_then(|a| g.state.workers.get(&a.worker))
        .map(|r| r.worker.url()))
}

async fn proxy(state: &AppState, url: String) -> Option<Response> {
    let resp = state
        .http
        .get(url)
        .bearer_auth(&state.config.cluster_secret)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("text/plain"));
    let body = Body::from_stream(resp.bytes_stream());
    Some(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/task/{id}/log",
    tag = "tasks",
    summary = "A task's log (text)",
    params(("id" = String, Path, description = "task id"), ("offset" = Option<i64>, Query, description = "byte offset; negative: the last N bytes")),
    responses((status = 200, description = "success", body = String), crate::api::openapi::Refused)
)]
async fn task_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<Offset>,
) -> Result<Response, ApiError> {
    validate_id("task id", &id).map_err(|_| no_log(&id))?;
    let worker = worker_of(&state, &id).await?;
    if let Ok(path) = log_file(&state.config.task_log_dir, &id) {
        if path.exists() {
            return serve_log(&path, q.offset);
        }
    }
    if let Some(url) = worker {
        let url = format!("{url}/druid/worker/v1/task/{id}/log?offset={}", q.offset);
        if let Some(resp) = proxy(&state, url).await {
            return Ok(resp);
        }
    }
    Err(no_log(&id))
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/task/{id}/reports",
    tag = "tasks",
    summary = "A task's reports",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn task_reports(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    validate_id("task id", &id).map_err(|_| no_report(&id))?;
    let worker = worker_of(&state, &id).await.map_err(|_| no_report(&id))?;
    if let Ok(path) = report_file(&state.config.task_log_dir, &id) {
        if path.exists() {
            return serve_report(&path);
        }
    }
    if let Some(url) = worker {
        if let Some(resp) = proxy(&state, format!("{url}/druid/worker/v1/task/{id}/reports")).await {
            return Ok(resp);
        }
    }
    Err(no_report(&id))
}

#[derive(Debug, Deserialize)]
struct SyncQuery {
    host: String,
    #[serde(default)]
    hash: u64,
    #[serde(default)]
    term: u64,
    timeout: i64,
}

fn current_term(state: &AppState) -> u64 {
    state.raft.raft.metrics().borrow().current_term
}

/// This worker's view of the state, and its hash.
async fn view(state: &AppState, host: &str, term: u64) -> SyncResponse {
    let g = state.raft.shared.read().await;
    let index = g.last_applied.map_or(0, |l| l.index);
    let record = g.state.workers.get(host).filter(|r| !r.lost);
    let mut assignments = Vec::new();
    if let Some(r) = record {
        for id in r.tasks.iter() {
            let Some(task) = g.state.tasks.get(id) else { continue };
            let accepted = task.assignment.as_ref().is_some_and(|a| a.accepted);
            let stop = !task.is_active();
            let to_start = !accepted && !stop;
            assignments.push(AssignedTask {
                id: id.clone(),
                accepted,
                stop,
                payload: to_start.then(|| task.spec.payload.clone()),
                token: task
                    .assignment
                    .as_ref()
                    .filter(|_| to_start)
                    .map(|a| crate::tasks::token::mint(&state.config.cluster_secret, id, a.index)),
            });
        }
    }
    let registered = record.is_some();
    let disabled = record.is_some_and(|r| r.disabled);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (term, registered, disabled).hash(&mut h);
    for a in &assignments {
        (&a.id, a.accepted, a.stop).hash(&mut h);
    }
    SyncResponse {
        term,
        index,
        hash: h.finish(),
        reset_counter: false,
        registered,
        disabled,
        assignments,
    }
}

/// Long poll: answers when the worker's view differs from what it last saw, or at the timeout.
#[utoipa::path(
    get,
    path = "/internal/workers/sync",
    tag = "internal",
    summary = "A worker's assignments (long poll; cluster secret)",
    params(("host" = String, Query), ("hash" = Option<u64>, Query), ("timeout" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn sync(State(state): State<AppState>, Query(q): Query<SyncQuery>) -> Result<Response, ApiError> {
    super::long_poll(&state, q.timeout, |expired| {
        let (state, q) = (&state, &q);
        async move {
            state.heartbeats.beat(&q.host);
            let term = current_term(state);
            let mut v = view(state, &q.host, term).await;
            let changed_leader = q.term != term;
            (v.hash != q.hash || changed_leader || expired).then(|| {
                v.reset_counter = changed_leader && q.term != 0;
                Json(v).into_response()
            })
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/internal/workers/report",
    tag = "internal",
    summary = "A worker's task reports (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn report(State(state): State<AppState>, Json(r): Json<Report>) -> Result<Response, ApiError> {
    let w = &r.worker;
    if w.host.is_empty() || w.capacity == 0 || !(w.scheme == "http" || w.scheme == "https") {
        return Err(ApiError::BadRequest(
            "a worker needs a host, a capacity of at least 1 and scheme http or https".into(),
        ));
    }
    state.heartbeats.beat(&w.host);
    let needs_register = {
        let g = state.raft.shared.read().await;
        g.state
            .workers
            .get(&w.host)
            .is_none_or(|rec| rec.lost || rec.worker != *w)
    };
    if needs_register {
        state.propose(Command::RegisterWorker { worker: w.clone() }).await?;
    }
    let mut answer = UpdatesApplied::default();
    let mut needed = Vec::new();
    let mut index = {
        let g = state.raft.shared.read().await;
        for u in &r.tasks {
            match g.state.workers.classify(&g.state.tasks, &w.host, u) {
                Classified::Apply => needed.push(u.clone()),
                Classified::Finished => answer.finished.push(u.id.clone()),
                Classified::NotAssigned => answer.not_assigned.push(u.id.clone()),
                Classified::Unchanged => {}
            }
        }
        g.last_applied.map_or(0, |l| l.index)
    };
    if !needed.is_empty() {
        let reply = state
            .propose(Command::ReportTasks {
                worker: w.host.clone(),
                updates: needed,
            })
            .await?;
        if let Reply::Reported { applied } = reply {
            answer.finished.extend(applied.finished);
            answer.not_assigned.extend(applied.not_assigned);
        }
        // The reply comes after the command applied: this index is at or past it.
        index = state.raft.shared.read().await.last_applied.map_or(0, |l| l.index);
    }
    Ok(Json(ReportResponse { applied: answer, index }).into_response())
}
