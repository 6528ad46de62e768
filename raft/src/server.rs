//! Raft RPCs and cluster management over HTTP: the server side.
//!
//! Every route here requires the cluster secret as `Authorization: Bearer <secret>`; a request
//! without it is answered 401 and changes nothing.
//!
//! | route | what it does |
//! |---|---|
//! | `POST /raft/append`, `/raft/vote`, `/raft/snapshot` | openraft's RPCs |
//! | `GET /internal/raft/state` | whether this node already belongs to a cluster (used to form one) |
//! | `POST /internal/cluster/add-node` | `{"node_id", "url"}`: add as learner, catch up, then make a voter |
//! | `POST /internal/cluster/remove-node` | `{"node_id"}`: remove from the voters |

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::node::{NodeError, RaftNode};
use crate::state_machine::StateMachine;

/// Largest Raft RPC body accepted (snapshot chunks and entry batches).
const MAX_RPC_BODY: usize = 256 << 20;

/// Routes for Raft RPCs and cluster management, behind the cluster secret.
pub fn router<S: StateMachine>(node: Arc<RaftNode<S>>) -> Router {
    let secret: Arc<str> = node.secret().into();
    Router::new()
        .route("/raft/append", post(append::<S>))
        .route("/raft/vote", post(vote::<S>))
        .route("/raft/snapshot", post(snapshot::<S>))
        .route("/internal/raft/state", get(raft_state::<S>))
        .route("/internal/cluster/add-node", post(add_node::<S>))
        .route("/internal/cluster/remove-node", post(remove_node::<S>))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .layer(middleware::from_fn_with_state(secret, require_secret))
        .with_state(node)
}

/// The refusals of the routes of [`router`], in their description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refused {
    #[response(
        status = "4XX",
        description = "refused: no cluster secret (401) or a malformed request (400)"
    )]
    Client(serde_json::Value),
    #[response(status = 503, description = "not the leader, or no quorum")]
    Unavailable(serde_json::Value),
    #[response(status = 507, description = "this node is low on disk")]
    LowDisk(serde_json::Value),
}

/// The OpenAPI description of the routes of [`router`].
#[derive(utoipa::OpenApi)]
#[openapi(paths(append, vote, snapshot, raft_state, add_node, remove_node))]
pub struct RaftApi;

/// Rejects requests that do not carry the cluster secret.
pub async fn require_secret(State(secret): State<Arc<str>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), secret.as_bytes()) => next.run(req).await,
        _ => {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs the cluster secret as 'Authorization: Bearer <secret>'",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"raftlord cluster\""),
            );
            resp
        }
    }
}

/// Whether `given` is the cluster secret, compared in constant time.
pub fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(secret).into()
}

/// An error answer in the one shape every route of a node uses, that of Druid's
/// `ErrorResponse`: `{"error": "druidException", "errorCode", "persona", "category",
/// "errorMessage", "context"}`. Druid's clients show `errorMessage`.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(error_body(status, code, &message.into()))).into_response()
}

/// The body of [`error_response`]; `category` and `persona` follow from the status as Druid
/// maps its categories to statuses.
pub fn error_body(status: StatusCode, code: &str, message: &str) -> serde_json::Value {
    let (category, persona) = match status.as_u16() {
        400 | 405 | 411 | 413 | 414 | 415 | 422 => ("INVALID_INPUT", "USER"),
        401 => ("UNAUTHORIZED", "USER"),
        403 => ("FORBIDDEN", "USER"),
        404 => ("NOT_FOUND", "USER"),
        409 => ("CONFLICT", "USER"),
        429 => ("CAPACITY_EXCEEDED", "ADMIN"),
        501 => ("UNSUPPORTED", "USER"),
        503 | 507 => ("SERVICE_UNAVAILABLE", "OPERATOR"),
        504 => ("TIMEOUT", "OPERATOR"),
        s if s < 500 => ("INVALID_INPUT", "USER"),
        _ => ("UNCATEGORIZED", "OPERATOR"),
    };
    serde_json::json!({
        "error": "druidException",
        "errorCode": code,
        "persona": persona,
        "category": category,
        "errorMessage": message,
        "context": {},
    })
}

type Tc<S> = crate::types::TypeConfig<S>;

// The append and vote bodies are decoded with plain serde_json rather than axum's `Json`,
// which tracks the path of every field for its error messages: on a follower that doubled the
// cost of decoding each batch of entries.

/// A follower low on disk refuses what would fill it (entries, snapshot chunks) with 507, and
/// still takes heartbeats, so it neither crashes on a failed write nor calls elections; the
/// leader backs off and replicates again once space is freed.
fn disk_low<S: StateMachine>(node: &RaftNode<S>) -> Option<Response> {
    let message = node.disk.check().err()?;
    Some(error_response(
        StatusCode::INSUFFICIENT_STORAGE,
        "insufficientStorage",
        message,
    ))
}

/// Bodies at least this large are decoded on a blocking thread: decoding tens of MiB on an async
/// worker would hold up the heartbeats that keep this follower from calling an election.
const DECODE_APART: usize = 1 << 20;

#[utoipa::path(
    post,
    path = "/raft/append",
    tag = "raft",
    summary = "openraft's AppendEntries (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn append<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>, body: axum::body::Bytes) -> Response {
    let large = body.len() >= DECODE_APART;
    let decode = move || serde_json::from_slice::<openraft::raft::AppendEntriesRequest<Tc<S>>>(&body);
    let decoded = if large {
        match tokio::task::spawn_blocking(decode).await {
            Ok(d) => d,
            Err(e) => return invalid_rpc(format!("decoding AppendEntries failed: {e}")),
        }
    } else {
        decode()
    };
    match decoded {
        Ok(req) => {
            if req.vote.is_committed() && req.vote.leader_id().term >= node.current_term() {
                node.contact.touch();
            }
            if !req.entries.is_empty() {
                if let Some(refused) = disk_low(&node) {
                    return refused;
                }
            }
            let resp = node.raft.append_entries(req).await;
            if matches!(
                resp,
                Ok(openraft::raft::AppendEntriesResponse::Success
                    | openraft::raft::AppendEntriesResponse::PartialSuccess(_))
            ) {
                node.contact.touch();
            }
            Json(resp).into_response()
        }
        Err(e) => invalid_rpc(format!("bad AppendEntries request: {e}")),
    }
}

#[utoipa::path(
    post,
    path = "/raft/vote",
    tag = "raft",
    summary = "openraft's Vote (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn vote<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<openraft::raft::VoteRequest<u64>>(&body) {
        Ok(req) => {
            let resp = node.raft.vote(req).await;
            if resp.as_ref().is_ok_and(|r| r.vote_granted) {
                node.contact.touch();
            }
            Json(resp).into_response()
        }
        Err(e) => invalid_rpc(format!("bad Vote request: {e}")),
    }
}

fn invalid_rpc(message: String) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalidInput", message)
}

#[utoipa::path(
    post,
    path = "/raft/snapshot",
    tag = "raft",
    summary = "openraft's InstallSnapshot chunk (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn snapshot<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>, body: axum::body::Bytes) -> Response {
    if let Some(refused) = disk_low(&node) {
        return refused;
    }
    match crate::network::decode_snapshot_chunk::<Tc<S>>(&body) {
        Ok(req) => Json(node.raft.install_snapshot(req).await).into_response(),
        Err(message) => invalid_rpc(message),
    }
}

/// Whether a node already belongs to a cluster, and the last entry of its log (which a
/// would-be candidate compares with its own before it calls an election).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftState {
    pub node_id: u64,
    pub initialized: bool,
    #[serde(default)]
    pub last_log: Option<openraft::LogId<u64>>,
}

#[utoipa::path(
    get,
    path = "/internal/raft/state",
    tag = "raft",
    summary = "Whether this node belongs to a cluster (cluster secret)",
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn raft_state<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>) -> Response {
    match node.raft.is_initialized().await {
        Ok(initialized) => Json(RaftState {
            node_id: node.id,
            initialized,
            last_log: node.last_log_id().await,
        })
        .into_response(),
        Err(e) => node_error(NodeError::Raft(e.to_string())),
    }
}

#[derive(Debug, Deserialize)]
struct AddNode {
    node_id: u64,
    url: String,
}

#[derive(Debug, Deserialize)]
struct RemoveNode {
    node_id: u64,
}

#[utoipa::path(
    post,
    path = "/internal/cluster/add-node",
    tag = "raft",
    summary = "Add a node: learner, catch up, voter (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn add_node<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>, Json(req): Json<AddNode>) -> Response {
    match node.add_node(req.node_id, req.url).await {
        Ok(()) => Json(node.status().await).into_response(),
        Err(e) => node_error(e),
    }
}

#[utoipa::path(
    post,
    path = "/internal/cluster/remove-node",
    tag = "raft",
    summary = "Remove a node from the voters (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses(
        (status = 200, description = "success", body = serde_json::Value),
        Refused
    )
)]
async fn remove_node<S: StateMachine>(State(node): State<Arc<RaftNode<S>>>, Json(req): Json<RemoveNode>) -> Response {
    match node.remove_node(req.node_id).await {
        Ok(()) => Json(node.status().await).into_response(),
        Err(e) => node_error(e),
    }
}

fn node_error(e: NodeError) -> Response {
    let (status, kind) = match &e {
        NodeError::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "notLeader"),
        NodeError::InvalidMembership(_) => (StatusCode::BAD_REQUEST, "invalidMembership"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let mut resp = error_response(status, kind, e.to_string());
    if let NodeError::NotLeader { leader: Some((_, url)) } = &e {
        if let Ok(v) = header::HeaderValue::from_str(url) {
            resp.headers_mut().insert("X-Raftlord-Leader", v);
        }
    }
    resp
}
