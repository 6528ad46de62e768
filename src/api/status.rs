//! Status routes every node answers, and internal state routes.
//!
//! - `/status`: Druid's `version`, `modules` and `memory` fields beside raftlord's Raft view
//!   (members, leader, term, indexes, snapshot, task and segment counts);
//! - `/status/health`, `/status/properties` (the node's effective settings under Druid's
//!   property names where Druid has one, `raftlord.*` otherwise; secrets are left out, as
//!   Druid leaves out its hidden properties), `/status/selfDiscovered/status` and
//!   `/status/selfDiscovered` (whether this node's announcement is in the replicated node
//!   table), `/status/nodes` (announced nodes);
//! - behind the cluster secret: the announcement routes nodes register with the leader through,
//!   and `/internal/state/tasks` and `/internal/state/segments`, a replica's own task table and
//!   segment metadata.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{leader_redirect, ApiError, AppState};
use crate::nodes::NodeAnnouncement;
use crate::sm::{Command, Reply};

pub fn routes(state: AppState) -> OpenApiRouter<AppState> {
    let secret: std::sync::Arc<str> = state.config.cluster_secret.as_str().into();
    let internal = OpenApiRouter::new()
        .routes(routes!(announce))
        .routes(routes!(withdraw))
        .routes(routes!(local_tasks))
        .routes(routes!(local_segments))
        .layer(middleware::from_fn_with_state(
            secret,
            raftlord_raft::server::require_secret,
        ));
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(health))
        .routes(routes!(nodes))
        .routes(routes!(properties))
        .routes(routes!(self_discovered_status))
        .routes(routes!(self_discovered))
        .merge(internal)
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "status",
    summary = "The node's Raft view, counts, memory and version",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn status(State(state): State<AppState>) -> Response {
    let mut v = serde_json::to_value(state.raft.status().await).unwrap_or_default();
    let g = state.raft.shared.read().await;
    v["tasks"] = json!({ "total": g.state.tasks.len(), "active": g.state.tasks.active_count() });
    v["segments"] = json!({
        "total": g.state.segments.total_count(),
        "datasources": g.state.segments.datasources().count(),
    });
    v["locks"] = json!(g.state.locks.posses().count());
    let (snapshot_index, snapshot_bytes) = state.raft.shared.last_snapshot();
    v["snapshot"] = json!({
        "index": snapshot_index,
        "bytes": snapshot_bytes,
        "building": state.raft.shared.building_snapshot(),
    });
    let heap = crate::alloc::live_bytes();
    v["heap_live_bytes"] = json!(heap);
    v["version"] = json!(env!("CARGO_PKG_VERSION"));
    v["modules"] = json!([]);
    v["memory"] = memory(heap as u64, v["storage_memory_bytes"].as_u64().unwrap_or(0));
    Json(v).into_response()
}

/// Druid's `memory` object, in a Rust process's terms: `maxMemory` is the machine's physical
/// memory, `totalMemory` the process's resident set, `usedMemory` the live Rust heap,
/// `freeMemory` the rest of the resident set, `directMemory` RocksDB's memtables and readers.
fn memory(heap: u64, storage: u64) -> serde_json::Value {
    // SAFETY: sysconf only reads system constants.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let page_size = u64::try_from(page_size).unwrap_or(4096);
    let max = u64::try_from(pages).unwrap_or(0).saturating_mul(page_size);
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p.saturating_mul(page_size));
    json!({
        "maxMemory": max,
        "totalMemory": resident,
        "freeMemory": resident.saturating_sub(heap),
        "usedMemory": heap,
        "directMemory": storage,
    })
}

/// The node's effective settings as Druid's `/status/properties` map of strings.
#[utoipa::path(
    get,
    path = "/status/properties",
    tag = "status",
    summary = "The node's effective settings (secrets left out)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn properties(State(state): State<AppState>) -> Response {
    let c = &state.config;
    let roles: Vec<String> = c
        .roles
        .iter()
        .filter_map(|r| serde_json::to_value(r).ok()?.as_str().map(str::to_string))
        .collect();
    let mut p: std::collections::BTreeMap<&str, String> = [
        ("druid.service", "raftlord".to_string()),
        ("druid.host", c.advertise.clone()),
        ("druid.plaintextPort", c.listen.port().to_string()),
        (
            "druid.indexer.queue.maxTaskPayloadSize",
            c.limits.max_payload_bytes.to_string(),
        ),
        ("druid.indexer.logs.directory", c.task_log_dir.display().to_string()),
        ("raftlord.nodeId", c.node_id.to_string()),
        ("raftlord.listen", c.listen.to_string()),
        ("raftlord.dataDir", c.data_dir.display().to_string()),
        ("raftlord.roles", roles.join(",")),
        ("raftlord.raft.heartbeatMs", c.raft.heartbeat_ms.to_string()),
        ("raftlord.raft.electionMinMs", c.raft.election_min_ms.to_string()),
        ("raftlord.raft.electionMaxMs", c.raft.election_max_ms.to_string()),
        ("raftlord.raft.snapshotEvery", c.raft.snapshot_every.to_string()),
        ("raftlord.raft.minFreeBytes", c.raft.min_free_bytes.to_string()),
        (
            "raftlord.workerTimeoutMs",
            c.overlord.worker_timeout.as_millis().to_string(),
        ),
        (
            "raftlord.assignTimeoutMs",
            c.overlord.assign_timeout.as_millis().to_string(),
        ),
    ]
    .into_iter()
    .collect();
    if let Some(n) = c.limits.max_active_tasks {
        p.insert("raftlord.maxActiveTasks", n.to_string());
    }
    if let Some(w) = &c.worker {
        p.insert("druid.worker.capacity", w.capacity.to_string());
        p.insert("druid.worker.category", w.category.clone());
        p.insert("druid.worker.version", w.version.clone());
        p.insert("druid.indexer.task.baseTaskDir", w.base_dir.display().to_string());
        p.insert("raftlord.deepStorage", w.deep_storage.clone());
        p.insert("raftlord.gracefulStopMs", w.graceful_stop.as_millis().to_string());
    }
    Json(p).into_response()
}

/// Whether the replicated node table holds this node's announcement.
async fn is_self_discovered(state: &AppState) -> bool {
    let g = state.raft.shared.read().await;
    g.state.nodes.get(&state.config.node_name()).is_some()
}

#[utoipa::path(
    get,
    path = "/status/selfDiscovered/status",
    tag = "status",
    summary = "Whether this node's announcement is replicated",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn self_discovered_status(State(state): State<AppState>) -> Response {
    Json(json!({ "selfDiscovered": is_self_discovered(&state).await })).into_response()
}

/// 200 once this node is discovered, else 503: what Druid's readiness probes call.
#[utoipa::path(
    get,
    path = "/status/selfDiscovered",
    tag = "status",
    summary = "200 once this node is discovered, else 503",
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn self_discovered(State(state): State<AppState>) -> Result<Response, ApiError> {
    if is_self_discovered(&state).await {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::Unavailable(format!(
            "{} has not been discovered yet: its announcement is not in the replicated node table",
            state.config.node_name()
        )))
    }
}

#[utoipa::path(
    get,
    path = "/status/health",
    tag = "status",
    summary = "true while the node serves",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn health() -> Response {
    Json(true).into_response()
}

#[utoipa::path(
    get,
    path = "/status/nodes",
    tag = "status",
    summary = "Announced nodes",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn nodes(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    let nodes: Vec<&NodeAnnouncement> = g.state.nodes.all().collect();
    Json(nodes).into_response()
}

/// This node's own copy of the task table (no redirect): how operators and tests compare
/// replicas.
#[utoipa::path(
    get,
    path = "/internal/state/tasks",
    tag = "internal",
    summary = "This replica's task table (cluster secret)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn local_tasks(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.view().await;
    let applied = g.last_applied.map(|l| l.index);
    let tasks: Vec<_> = g.state.tasks.all().map(|t| t.status()).collect();
    Json(json!({ "appliedIndex": applied, "tasks": tasks })).into_response()
}

/// This node's own copy of segment metadata and locks, per datasource: used and total segment
/// counts, every segment id, the commit metadata, and the locks.
#[utoipa::path(
    get,
    path = "/internal/state/segments",
    tag = "internal",
    summary = "This replica's segments and locks (cluster secret)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn local_segments(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.view().await;
    let applied = g.last_applied.map(|l| l.index);
    let datasources: serde_json::Map<String, serde_json::Value> = g
        .state
        .segments
        .datasources()
        .map(|(name, d)| {
            let ids: Vec<String> = d.all().map(|(k, _)| k.id(name)).collect();
            (
                name.clone(),
                json!({ "used": d.used_count(), "ids": ids, "metadata": d.metadata() }),
            )
        })
        .collect();
    let locks: Vec<_> = g.state.locks.posses().map(|p| &p.lock).collect();
    Json(json!({ "appliedIndex": applied, "datasources": datasources, "locks": locks })).into_response()
}

/// Writes go to the leader; a follower points the caller there.
async fn on_leader(state: &AppState, path: &str, command: Command) -> Result<Response, ApiError> {
    if let Some(leader) = leader_redirect(&state.raft)? {
        let location = format!("{}{path}", leader.trim_end_matches('/'));
        return Ok((StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response());
    }
    match state.propose(command).await? {
        Reply::NodeChanged { changed } => Ok(Json(json!({ "changed": changed })).into_response()),
        other => Err(ApiError::Unavailable(format!("unexpected reply: {other:?}"))),
    }
}

#[utoipa::path(
    post,
    path = "/internal/nodes/announce",
    tag = "internal",
    summary = "Record a node's announcement (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn announce(State(state): State<AppState>, Json(node): Json<NodeAnnouncement>) -> Result<Response, ApiError> {
    on_leader(&state, "/internal/nodes/announce", Command::AnnounceNode { node }).await
}

#[derive(Deserialize)]
struct Withdraw {
    id: String,
}

#[utoipa::path(
    post,
    path = "/internal/nodes/withdraw",
    tag = "internal",
    summary = "Remove a node's announcement (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn withdraw(State(state): State<AppState>, Json(w): Json<Withdraw>) -> Result<Response, ApiError> {
    on_leader(&state, "/internal/nodes/withdraw", Command::WithdrawNode { id: w.id }).await
}
