//! The HTTP API: Druid's Overlord routes, raftlord's status and internal routes.
//!
//! Druid clients talk to any node. A node that is not the leader answers Druid routes with
//! `307 Temporary Redirect` to the same path on the leader (with auth on it forwards the request
//! to the leader instead, since clients drop credentials on a redirect to another host), or
//! `503` with `Retry-After` while there is no leader (or the new leader has not yet applied its
//! own term's first entry). Only `/druid/indexer/v1/leader` and `/isLeader`, `/status*` are
//! answered by every node. [`auth`] checks who calls and what they may do.
//!
//! Errors go through [`ApiError`], mapped to an HTTP status in exactly one place; the body is
//! Druid's `ErrorResponse` (`errorCode`, `persona`, `category`, `errorMessage`, `context`), or
//! Druid's older `{"error": "<message>"}` on the routes where Druid answers that.
//! [`guard`] bounds every request body and turns the errors of axum's own extractors into the
//! same JSON shape.

mod actions;
pub mod auth;
mod coordinator;
mod error;
pub mod guard;
mod load;
pub mod openapi;
mod security;
mod segments;
mod status;
mod tasks;
mod workers;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;

use crate::config::NodeConfig;
use crate::leader::Heartbeats;
use crate::nodes::discovery::NodeDiscovery;
use crate::sm::{Command, Reply};
use crate::Raft;

/// Longest a write waits for its commit before the client gets a 503.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub raft: Arc<Raft>,
    pub config: Arc<NodeConfig>,
    pub discovery: NodeDiscovery,
    /// Worker and Historical heartbeats received while this node leads.
    pub heartbeats: Heartbeats,
    /// The Coordinator duties' last runs, while this node leads.
    pub duties: crate::coordinator::duties::DutyLog,
    /// Client for fetching logs and reports from workers.
    pub http: reqwest::Client,
}

impl AppState {
    /// Proposes a command on this (leader) node and waits for its reply, for at most
    /// [`WRITE_TIMEOUT`]: a leader cut off from its quorum answers 503 instead of hanging.
    pub async fn propose(&self, command: Command) -> Result<Reply, ApiError> {
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.raft.proposer.propose(command))
            .await
            .map_err(|_| {
                ApiError::Unavailable(format!(
                    "the write was not committed within {} s (no quorum?); it may still commit, and retrying is safe",
                    WRITE_TIMEOUT.as_secs()
                ))
            })?;
        result.map_err(|e| match e {
            raftlord_raft::ProposeError::NotLeader { .. } => ApiError::NoLeader,
            raftlord_raft::ProposeError::Unavailable(m) => ApiError::Unavailable(m),
            raftlord_raft::ProposeError::Invalid(m) => ApiError::BadRequest(m),
        })
    }
}

/// Longest a long poll (a worker's or a Historical's sync) may wait.
const MAX_POLL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Answers a long poll on the leader: `poll` is asked now and after every applied change, with
/// whether the deadline (`timeout_ms`, at most 30 s) has passed, until it gives an answer (it
/// must at the deadline). Refused when the timeout is not positive; 503 once this node no
/// longer leads.
pub(crate) async fn long_poll<T, F, Fut>(state: &AppState, timeout_ms: i64, mut poll: F) -> Result<T, ApiError>
where
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    if timeout_ms <= 0 {
        return Err(ApiError::BadRequest(
            "timeout must be a positive number of milliseconds".into(),
        ));
    }
    let wait = std::time::Duration::from_millis(timeout_ms as u64).min(MAX_POLL_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = state.raft.shared.subscribe();
    loop {
        // Changes from here on wake the next round, even those applied while `poll` reads.
        applied.borrow_and_update();
        if let Some(answer) = poll(tokio::time::Instant::now() >= deadline).await {
            return Ok(answer);
        }
        tokio::select! {
            _ = applied.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        if !state.raft.is_leader() {
            return Err(ApiError::NoLeader);
        }
    }
}

/// Who made a change and why, from Druid's `X-Druid-Author` and `X-Druid-Comment` headers (and
/// the client's address as a proxy forwarded it).
pub(crate) fn audit_info(headers: &axum::http::HeaderMap) -> crate::workers::AuditInfo {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    crate::workers::AuditInfo {
        author: text("X-Druid-Author"),
        comment: text("X-Druid-Comment"),
        ip: text("X-Forwarded-For"),
    }
}

/// The whole HTTP surface of a node, with `extra` routes (the worker's, on a node that is one)
/// under the same guards; `/openapi.json` describes all of them.
pub fn router(state: AppState, extra: Option<OpenApiRouter>) -> Router {
    let secret: Arc<str> = state.config.cluster_secret.as_str().into();
    let internal = workers::internal_routes()
        .merge(crate::historical::protocol::internal_routes())
        .layer(middleware::from_fn_with_state(state.clone(), leader_only))
        .layer(middleware::from_fn_with_state(
            secret,
            raftlord_raft::server::require_secret,
        ));
    let druid = OpenApiRouter::new()
        .merge(tasks::routes())
        .merge(workers::routes())
        .merge(actions::routes())
        .merge(segments::routes())
        .merge(coordinator::routes())
        .merge(load::routes())
        .merge(security::routes())
        .layer(middleware::from_fn_with_state(state.clone(), leader_only))
        .merge(tasks::any_node_routes())
        .merge(coordinator::any_node_routes())
        .merge(workers::any_node_routes())
        .merge(internal);
    let mut app = OpenApiRouter::with_openapi(openapi::base())
        .merge(druid)
        .merge(status::routes(state.clone()))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .with_state(state.clone());
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    let (app, mut doc) = app
        .layer(middleware::from_fn(error::legacy_errors))
        .fallback(not_found)
        .split_for_parts();
    doc.merge(<raftlord_raft::server::RaftApi as utoipa::OpenApi>::openapi());
    guard::guarded(app.merge(openapi::route(doc)), state.config.limits.max_payload_bytes)
        .merge(raftlord_raft::server::router(state.raft.clone()))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
}

/// The URL of the leader if this node is not it, or an error while there is no ready leader.
pub fn leader_redirect(raft: &Raft) -> Result<Option<String>, ApiError> {
    if raft.is_leader() {
        return if raft.leader_ready() {
            Ok(None)
        } else {
            Err(ApiError::NoLeader)
        };
    }
    match raft.leader() {
        Some((_, url)) => Ok(Some(url)),
        None => Err(ApiError::NoLeader),
    }
}

/// Serves leader-only routes on the leader; elsewhere redirects to the leader, or with auth on
/// forwards the request there (HTTP clients drop credentials on a redirect to another host).
async fn leader_only(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match leader_redirect(&state.raft) {
        Ok(None) => next.run(req).await,
        Ok(Some(leader)) if state.config.auth.enabled => forward(&state, &leader, req).await,
        Ok(Some(leader)) => {
            let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let location = format!("{}{}", leader.trim_end_matches('/'), path_and_query);
            match HeaderValue::from_str(&location) {
                Ok(v) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response(),
                Err(_) => ApiError::Unavailable(format!("the leader's URL is not usable: {leader}")).into_response(),
            }
        }
        Err(e) => e.into_response(),
    }
}

/// Headers that belong to one connection, not to the request or answer they travel with.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// The client a follower forwards requests with: no redirects (the answer goes back as it is)
/// and no overall timeout (a blocking `lockAcquire` may wait for minutes).
static FORWARDER: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
    raftlord_raft::tls::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("an HTTP client without TLS settings builds")
});

/// Sends `req` to the leader at `leader` and streams its answer back.
async fn forward(state: &AppState, leader: &str, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let limit = state.config.limits.max_payload_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return ApiError::PayloadTooLarge(format!("the request body is larger than the limit of {limit} bytes"))
            .into_response();
    };
    let path_and_query = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{}", leader.trim_end_matches('/'), path_and_query);
    let mut request = FORWARDER.request(parts.method.clone(), &url).body(bytes);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(answer) => {
            let mut resp = Response::builder().status(answer.status());
            for (name, value) in answer.headers().iter().filter(|(n, _)| !hop_by_hop(n)) {
                resp = resp.header(name, value);
            }
            resp.body(axum::body::Body::from_stream(answer.bytes_stream()))
                .unwrap_or_else(|e| {
                    ApiError::Unavailable(format!("the leader's answer is not usable: {e}")).into_response()
                })
        }
        Err(e) => ApiError::Unavailable(format!("the leader at {leader} did not answer: {e}")).into_response(),
    }
}

/// The `/status` URL of the node at `base`.
pub fn status_url(base: &str) -> String {
    format!("{}/status", base.trim_end_matches('/'))
}
