//! Who is calling, and whether they may: authentication and authorization of every user route.
//!
//! With auth on (`--auth basic`), every route but the health probes needs credentials:
//!
//! - HTTP Basic with a user of the authenticator ([`crate::security`]);
//! - `Bearer <cluster secret>`: the cluster itself (its tools and nodes), allowed everything;
//! - `Bearer <task token>`: a peon ([`crate::tasks::token`]), allowed what its task needs: its
//!   own datasource, and reading the cluster's state.
//!
//! Each route needs one permission, in Druid's terms ([`policy`]): `DATASOURCE` `READ` or
//! `WRITE` on the datasource it names (or on its task's datasource); `STATE` for workers, locks
//! and the cluster's status; `CONFIG` for the worker config and, on the resource `security`, for
//! users and roles. Lists (tasks, datasources, segments) need a login and show only the
//! datasources the caller may read; a task submission needs `WRITE` on its datasource.
//! Without credentials a route answers 401, without the permission 403, and changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{ApiError, AppState};
use crate::security::Action;
use crate::sm;

/// The caller of a request, as the routes see it.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Auth is off: everyone may do everything.
    Anyone,
    /// The cluster secret.
    System,
    /// A user of the authenticator.
    User(String),
    /// A task's peon.
    Task { id: String, datasource: String },
}

impl Identity {
    /// Whether this caller may do `action` on the resource `kind`/`name`.
    pub fn may(&self, state: &sm::State, kind: &str, name: &str, action: Action) -> bool {
        match self {
            Identity::Anyone | Identity::System => true,
            Identity::User(user) => state.security.allows(user, kind, name, action),
            Identity::Task { datasource, .. } => {
                (kind == "DATASOURCE" && name == datasource) || (kind == "STATE" && action == Action::Read)
            }
        }
    }

    /// Whether this caller may read `datasource`: what the lists show.
    pub fn reads(&self, state: &sm::State, datasource: &str) -> bool {
        self.may(state, "DATASOURCE", datasource, Action::Read)
    }

    /// 403 unless this caller may do `action` on `kind`/`name`.
    pub fn require(&self, state: &sm::State, kind: &str, name: &str, action: Action) -> Result<(), ApiError> {
        if self.may(state, kind, name, action) {
            return Ok(());
        }
        let action = match action {
            Action::Read => "READ",
            Action::Write => "WRITE",
        };
        Err(ApiError::Forbidden(format!(
            "{self} may not {action} the {kind} resource [{name}]: no role of theirs grants it"
        )))
    }

    /// Whether lists must be filtered for this caller.
    pub fn is_restricted(&self) -> bool {
        matches!(self, Identity::User(_) | Identity::Task { .. })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anyone => write!(f, "anyone"),
            Identity::System => write!(f, "the cluster"),
            Identity::User(u) => write!(f, "user [{u}]"),
            Identity::Task { id, .. } => write!(f, "task [{id}]"),
        }
    }
}

/// Where a route's resource name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Fixed(&'static str),
    /// The `{ds}` of the path.
    Datasource,
    /// The datasource of the task `{id}` of the path.
    TaskDatasource,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health and leadership probes.
    Open,
    /// Its own credentials check (the cluster secret or a task token): internal routes and task
    /// actions.
    OwnCheck,
    /// Any login; the handler filters what it shows or checks the body.
    Login,
    Permission(&'static str, Name, Action),
}

const STATE_READ: Need = Need::Permission("STATE", Name::Fixed("STATE"), Action::Read);
const STATE_WRITE: Need = Need::Permission("STATE", Name::Fixed("STATE"), Action::Write);
const CONFIG_READ: Need = Need::Permission("CONFIG", Name::Fixed("CONFIG"), Action::Read);
const CONFIG_WRITE: Need = Need::Permission("CONFIG", Name::Fixed("CONFIG"), Action::Write);
const DS_READ: Need = Need::Permission("DATASOURCE", Name::Datasource, Action::Read);
const DS_WRITE: Need = Need::Permission("DATASOURCE", Name::Datasource, Action::Write);
const TASK_READ: Need = Need::Permission("DATASOURCE", Name::TaskDatasource, Action::Read);
const TASK_WRITE: Need = Need::Permission("DATASOURCE", Name::TaskDatasource, Action::Write);

/// What the route `template` (axum's matched path) needs for `method`. Routes not listed need
/// `STATE` `WRITE`: a new route is closed until it is given its own rule.
pub fn policy(method: &Method, template: &str) -> Need {
    let read = method == Method::GET || method == Method::HEAD;
    if template.starts_with("/internal/") || template.starts_with("/raft/") {
        return Need::OwnCheck;
    }
    if let Some(rest) = template.strip_prefix("/druid-ext/basic-security/") {
        let _ = rest;
        return Need::Permission(
            "CONFIG",
            Name::Fixed("security"),
            if read { Action::Read } else { Action::Write },
        );
    }
    let (overlord, path) = if let Some(p) = template.strip_prefix("/druid/indexer/v1") {
        (true, p)
    } else if let Some(p) = template.strip_prefix("/druid/coordinator/v1") {
        (false, p)
    } else {
        return match template {
            "/status/health" | "/status/selfDiscovered" | "/status/selfDiscovered/status" => Need::Open,
            "/status" | "/status/nodes" | "/status/properties" => STATE_READ,
            "/openapi.json" | "/druid/historical/v1/readiness" => Need::Open,
            "/druid/historical/v1/loadstatus" | "/druid/historical/v1/segments" => STATE_READ,
            _ => STATE_WRITE,
        };
    };
    match (overlord, path) {
        (_, "/isLeader") => Need::Open,
        (true, "/action") => Need::OwnCheck,
        (_, "/leader") => STATE_READ,
        (true, "/task") => Need::Login,
        (true, "/task/{id}" | "/task/{id}/status" | "/task/{id}/log" | "/task/{id}/reports") => TASK_READ,
        (true, "/task/{id}/shutdown") => TASK_WRITE,
        (true, "/datasources/{ds}/shutdownAllTasks") => DS_WRITE,
        (true, "/tasks" | "/waitingTasks" | "/pendingTasks" | "/runningTasks" | "/completeTasks" | "/taskStatus") => {
            Need::Login
        }
        (true, "/workers" | "/totalWorkerCapacity") => STATE_READ,
        (true, "/worker/{host}/enable" | "/worker/{host}/disable") => STATE_WRITE,
        (true, "/worker" | "/worker/history") if read => CONFIG_READ,
        (true, "/worker") => CONFIG_WRITE,
        (true, "/lockedIntervals" | "/lockedIntervals/v2" | "/activeLocks" | "/audit") => STATE_READ,
        (true, "/pendingSegments/{ds}") => DS_WRITE,
        (true, "/datasources/{ds}/metadata") if read => DS_READ,
        (true, "/datasources/{ds}/metadata") => DS_WRITE,
        (false, "/metadata/datasources" | "/metadata/segments" | "/datasources") => Need::Login,
        (false, "/rules" | "/rules/history") => STATE_READ,
        (false, "/loadstatus" | "/loadqueue" | "/servers" | "/tiers" | "/tiers/{tier}" | "/duties") => STATE_READ,
        (false, "/compaction/status" | "/compaction/progress") => STATE_READ,
        (false, "/datasources/{ds}/loadstatus") => DS_READ,
        (false, p) if p == "/config" || p.starts_with("/config/") => {
            if read {
                CONFIG_READ
            } else {
                CONFIG_WRITE
            }
        }
        (false, "/rules/{ds}" | "/rules/{ds}/history") if read => DS_READ,
        (false, "/rules/{ds}") => DS_WRITE,
        (false, "/metadata/datasources/{ds}/segments") => DS_READ,
        (false, p) if p.starts_with("/metadata/datasources/{ds}") || p == "/datasources/{ds}/intervals" => DS_READ,
        (_, "/datasources/{ds}") if read => DS_READ,
        (_, p) if p.starts_with("/datasources/{ds}") => DS_WRITE,
        _ => STATE_WRITE,
    }
}

/// The value of `{name}` in `path`, aligned with the route `template`.
fn path_param(template: &str, path: &str, name: &str) -> Option<String> {
    let wanted = format!("{{{name}}}");
    template
        .split('/')
        .zip(path.split('/'))
        .find(|(t, _)| *t == wanted)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Passwords seen to be right, by a digest of the user, password and stored hash: a client
/// sending the same credentials again is not made to wait for PBKDF2's 10,000 rounds.
static VERIFIED: Mutex<Option<HashMap<Vec<u8>, ()>>> = Mutex::new(None);

/// Most entries of [`VERIFIED`]; it starts over beyond.
const MAX_VERIFIED: usize = 4096;

/// A random key for this process, so that the cache's digests say nothing outside it.
static CACHE_KEY: std::sync::LazyLock<[u8; 32]> = std::sync::LazyLock::new(rand::random);

fn cache_digest(user: &str, password: &str, stored_hash: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &*CACHE_KEY);
    let mut ctx = ring::hmac::Context::with_key(&key);
    for part in [user.as_bytes(), b"\0", password.as_bytes(), b"\0", stored_hash] {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

/// Checks a Basic `user:password` against the replicated users.
fn check_password(state: &sm::State, user: &str, password: &str) -> bool {
    let Some(Some(credentials)) = state.security.users.get(user) else {
        return false;
    };
    let digest = cache_digest(user, password, &credentials.hash);
    {
        let guard = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|m| m.contains_key(&digest)) {
            return true;
        }
    }
    if !credentials.verify(password) {
        return false;
    }
    let mut guard = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_VERIFIED {
        map.clear();
    }
    map.insert(digest, ());
    true
}

/// Who `authorization` (the header's value) names, or why it names no one.
fn identify(state: &AppState, s: &sm::State, authorization: Option<&str>) -> Result<Identity, ApiError> {
    let unauthorized = |why: &str| ApiError::Unauthorized(why.to_string());
    let Some(value) = authorization else {
        return Err(unauthorized(
            "this route needs credentials: HTTP Basic with a user's name and password",
        ));
    };
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| unauthorized("the Basic credentials are not base64 of 'user:password'"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("the Basic credentials are not base64 of 'user:password'"))?;
        if check_password(s, user, password) {
            return Ok(Identity::User(user.to_string()));
        }
        return Err(unauthorized("wrong user name or password"));
    }
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        let secret = state.config.cluster_secret.as_bytes();
        if raftlord_raft::server::constant_time_eq(bearer.as_bytes(), secret) {
            return Ok(Identity::System);
        }
        if crate::tasks::token::is_token(bearer) {
            // The token names its assignment's index; the tasks assigned by that entry are the
            // only ones it can belong to.
            let index = bearer.split('.').nth(1).and_then(|i| i.parse::<u64>().ok());
            let task = s.tasks.active().find(|t| {
                t.assignment.as_ref().map(|a| a.index) == index
                    && crate::tasks::token::verify(&state.config.cluster_secret, &t.spec.id, bearer).is_ok()
            });
            if let Some(t) = task {
                return Ok(Identity::Task {
                    id: t.spec.id.clone(),
                    datasource: t.spec.datasource.clone(),
                });
            }
            return Err(unauthorized("the task token belongs to no running task"));
        }
        return Err(unauthorized(
            "the bearer credential is neither the cluster secret nor a task token",
        ));
    }
    Err(unauthorized("only HTTP Basic and Bearer credentials are accepted"))
}

/// Authenticates the request and checks its route's permission; handlers find the caller as an
/// `Extension<Identity>`. Applied to matched routes only, after routing.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !state.config.auth.enabled {
        req.extensions_mut().insert(Identity::Anyone);
        return next.run(req).await;
    }
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let need = policy(req.method(), &template);
    if matches!(need, Need::Open | Need::OwnCheck) {
        req.extensions_mut().insert(Identity::Anyone);
        return next.run(req).await;
    }
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let checked = {
        // A short read under the lock: a copy of the state (`view`) would cost more than the
        // check itself on every request.
        let g = state.raft.shared.read().await;
        identify(&state, &g.state, authorization).and_then(|who| {
            if let Need::Permission(kind, name, action) = need {
                let name = match name {
                    Name::Fixed(n) => n.to_string(),
                    Name::Datasource => path_param(&template, req.uri().path(), "ds").unwrap_or_default(),
                    Name::TaskDatasource => {
                        let id = path_param(&template, req.uri().path(), "id").unwrap_or_default();
                        match g.state.tasks.get(&id) {
                            Some(t) => t.spec.datasource.clone(),
                            // An unknown task: only who may see every datasource learns that.
                            None => ".*".to_string(),
                        }
                    }
                };
                who.require(&g.state, kind, &name, action)?;
            }
            Ok(who)
        })
    };
    match checked {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_params_line_up_with_the_template() {
        let t = "/druid/indexer/v1/task/{id}/status";
        assert_eq!(
            path_param(t, "/druid/indexer/v1/task/a%20b/status", "id").as_deref(),
            Some("a b")
        );
        assert_eq!(path_param(t, "/druid/indexer/v1/task/x/status", "ds"), None);
    }

    #[test]
    fn routes_get_druids_resources() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(policy(&get, "/druid/indexer/v1/task/{id}"), TASK_READ);
        assert_eq!(policy(&post, "/druid/indexer/v1/task/{id}/shutdown"), TASK_WRITE);
        assert_eq!(policy(&get, "/druid/indexer/v1/worker"), CONFIG_READ);
        assert_eq!(policy(&post, "/druid/indexer/v1/worker"), CONFIG_WRITE);
        assert_eq!(
            policy(&post, "/druid/coordinator/v1/datasources/{ds}/markUnused"),
            DS_WRITE
        );
        assert_eq!(policy(&get, "/druid/coordinator/v1/datasources/{ds}"), DS_READ);
        assert_eq!(policy(&get, "/druid/coordinator/v1/rules"), STATE_READ);
        assert_eq!(policy(&get, "/druid/coordinator/v1/loadstatus"), STATE_READ);
        assert_eq!(
            policy(&get, "/druid/coordinator/v1/datasources/{ds}/loadstatus"),
            DS_READ
        );
        assert_eq!(policy(&get, "/druid/historical/v1/readiness"), Need::Open);
        assert_eq!(policy(&get, "/druid/coordinator/v1/rules/history"), STATE_READ);
        assert_eq!(policy(&get, "/druid/coordinator/v1/rules/{ds}"), DS_READ);
        assert_eq!(policy(&get, "/druid/coordinator/v1/rules/{ds}/history"), DS_READ);
        assert_eq!(policy(&post, "/druid/coordinator/v1/rules/{ds}"), DS_WRITE);
        assert_eq!(policy(&get, "/druid/coordinator/v1/config"), CONFIG_READ);
        assert_eq!(policy(&get, "/druid/coordinator/v1/config/history"), CONFIG_READ);
        assert_eq!(policy(&post, "/druid/coordinator/v1/config"), CONFIG_WRITE);
        assert_eq!(
            policy(&get, "/druid/coordinator/v1/config/compaction/{ds}"),
            CONFIG_READ
        );
        assert_eq!(
            policy(&Method::DELETE, "/druid/coordinator/v1/config/compaction/{ds}"),
            CONFIG_WRITE
        );
        assert_eq!(
            policy(&post, "/druid/coordinator/v1/config/compaction/taskslots"),
            CONFIG_WRITE
        );
        assert_eq!(policy(&post, "/druid/indexer/v1/action"), Need::OwnCheck);
        assert_eq!(policy(&get, "/status/health"), Need::Open);
        assert_eq!(policy(&get, "/something/new"), STATE_WRITE);
        assert_eq!(
            policy(
                &post,
                "/druid-ext/basic-security/authentication/db/{authenticator}/users/{user}"
            ),
            Need::Permission("CONFIG", Name::Fixed("security"), Action::Write)
        );
    }
}
