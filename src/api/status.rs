//! raftlord's own routes: `/status` (Raft view), `/status/health`, `/status/nodes` (announced
//! nodes), the internal announcement routes nodes use to register with the leader, and
//! `/internal/state/tasks` and `/internal/state/segments`, a replica's own task table and
//! segment metadata.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::{leader_redirect, ApiError, AppState};
use crate::nodes::NodeAnnouncement;
use crate::sm::{Command, Reply};

pub fn routes(state: AppState) -> Router<AppState> {
    let secret: std::sync::Arc<str> = state.config.cluster_secret.as_str().into();
    let internal = Router::new()
        .route("/internal/nodes/announce", post(announce))
        .route("/internal/nodes/withdraw", post(withdraw))
        .route("/internal/state/tasks", get(local_tasks))
        .route("/internal/state/segments", get(local_segments))
        .layer(middleware::from_fn_with_state(
            secret,
            raftlord_raft::server::require_secret,
        ));
    Router::new()
        .route("/status", get(status))
        .route("/status/health", get(health))
        .route("/status/nodes", get(nodes))
        .merge(internal)
}

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
    v["heap_live_bytes"] = json!(crate::alloc::live_bytes());
    v["version"] = json!(env!("CARGO_PKG_VERSION"));
    Json(v).into_response()
}

async fn health() -> Response {
    Json(true).into_response()
}

async fn nodes(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    let nodes: Vec<&NodeAnnouncement> = g.state.nodes.all().collect();
    Json(nodes).into_response()
}

/// This node's own copy of the task table (no redirect): how operators and tests compare
/// replicas.
async fn local_tasks(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.view().await;
    let applied = g.last_applied.map(|l| l.index);
    let tasks: Vec<_> = g.state.tasks.all().map(|t| t.status()).collect();
    Json(json!({ "appliedIndex": applied, "tasks": tasks })).into_response()
}

/// This node's own copy of segment metadata and locks, per datasource: used and total segment
/// counts, every segment id, the commit metadata, and the locks.
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

async fn announce(State(state): State<AppState>, Json(node): Json<NodeAnnouncement>) -> Result<Response, ApiError> {
    on_leader(&state, "/internal/nodes/announce", Command::AnnounceNode { node }).await
}

#[derive(Deserialize)]
struct Withdraw {
    id: String,
}

async fn withdraw(State(state): State<AppState>, Json(w): Json<Withdraw>) -> Result<Response, ApiError> {
    on_leader(&state, "/internal/nodes/withdraw", Command::WithdrawNode { id: w.id }).await
}
