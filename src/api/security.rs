//! Druid's basic-security routes: users, credentials, roles and permissions, under
//! `/druid-ext/basic-security/authentication/db/{authenticator}` and
//! `/druid-ext/basic-security/authorization/db/{authorizer}`, with Druid's paths, bodies and
//! messages. The authenticator and authorizer names are the node's `--authenticator-name` and
//! `--authorizer-name`; another name is a 400, as in Druid. Every change is one replicated
//! command ([`crate::security::SecurityCommand`]); a password is hashed on the leader and only
//! its salted hash is replicated.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::security::{Credentials, Permission, SecurityCommand as C};
use crate::sm::{Command, Reply};

const AUTHN: &str = "/druid-ext/basic-security/authentication";
const AUTHZ: &str = "/druid-ext/basic-security/authorization";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{AUTHN}/loadStatus"), get(authn_load_status))
        .route(&format!("{AUTHN}/refreshAll"), post(refresh_all))
        .route(&format!("{AUTHN}/db/{{authenticator}}/users"), get(authn_users))
        .route(
            &format!("{AUTHN}/db/{{authenticator}}/users/{{user}}"),
            get(authn_user).post(create_authn_user).delete(delete_authn_user),
        )
        .route(
            &format!("{AUTHN}/db/{{authenticator}}/users/{{user}}/credentials"),
            post(set_credentials),
        )
        .route(&format!("{AUTHZ}/loadStatus"), get(authz_load_status))
        .route(&format!("{AUTHZ}/refreshAll"), post(refresh_all))
        .route(&format!("{AUTHZ}/db/{{authorizer}}/users"), get(authz_users))
        .route(
            &format!("{AUTHZ}/db/{{authorizer}}/users/{{user}}"),
            get(authz_user).post(create_authz_user).delete(delete_authz_user),
        )
        .route(&format!("{AUTHZ}/db/{{authorizer}}/roles"), get(roles))
        .route(
            &format!("{AUTHZ}/db/{{authorizer}}/roles/{{role}}"),
            get(role).post(create_role).delete(delete_role),
        )
        .route(
            &format!("{AUTHZ}/db/{{authorizer}}/users/{{user}}/roles/{{role}}"),
            post(assign_role).delete(unassign_role),
        )
        .route(
            &format!("{AUTHZ}/db/{{authorizer}}/roles/{{role}}/permissions"),
            get(permissions).post(set_permissions),
        )
}

fn authenticator(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.config.auth.authenticator {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "Basic authenticator with name [{name}] does not exist."
    )))
}

fn authorizer(state: &AppState, name: &str) -> Result<(), ApiError> {
    if name == state.config.auth.authorizer {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "Basic authorizer with name [{name}] does not exist."
    )))
}

/// Proposes `command`; a refusal (what it names is missing or already there) is a 400.
async fn change(state: &AppState, command: C) -> Result<Response, ApiError> {
    crate::security::validate(&command).map_err(ApiError::BadRequest)?;
    match state.propose(Command::Security(command)).await? {
        Reply::Security { error: None } => Ok(axum::http::StatusCode::OK.into_response()),
        Reply::Security { error: Some(e) } => Err(ApiError::BadRequest(e)),
        other => Err(ApiError::Unavailable(format!("unexpected reply: {other:?}"))),
    }
}

async fn authn_load_status(State(state): State<AppState>) -> Response {
    Json(json!({ state.config.auth.authenticator.clone(): true })).into_response()
}

async fn authz_load_status(State(state): State<AppState>) -> Response {
    Json(json!({ state.config.auth.authorizer.clone(): true })).into_response()
}

/// Druid's nodes poll the metadata store; here every node applies the same log: nothing to do.
async fn refresh_all() -> Response {
    axum::http::StatusCode::OK.into_response()
}

async fn authn_users(State(state): State<AppState>, Path(a): Path<String>) -> Result<Response, ApiError> {
    authenticator(&state, &a)?;
    let g = state.raft.shared.view().await;
    Ok(Json(g.state.security.users.keys().collect::<Vec<_>>()).into_response())
}

async fn authn_user(
    State(state): State<AppState>,
    Path((a, user)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authenticator(&state, &a)?;
    let g = state.raft.shared.view().await;
    match g.state.security.users.get(&user) {
        Some(credentials) => Ok(Json(json!({"name": user, "credentials": credentials})).into_response()),
        None => Err(ApiError::BadRequest(format!("User [{user}] does not exist."))),
    }
}

async fn create_authn_user(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authenticator(&state, &a)?;
    change(&state, C::CreateUser { name }).await
}

async fn delete_authn_user(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authenticator(&state, &a)?;
    change(&state, C::DeleteUser { name }).await
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

async fn set_credentials(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authenticator(&state, &a)?;
    let PasswordBody { password } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"password\": \"<password>\"}}: {e}")))?;
    if password.is_empty() {
        return Err(ApiError::BadRequest("the password must not be empty".into()));
    }
    // PBKDF2's rounds take milliseconds: off the async workers.
    let credentials = tokio::task::spawn_blocking(move || Credentials::new(&password))
        .await
        .map_err(|e| ApiError::Unavailable(format!("hashing the password failed: {e}")))?;
    change(&state, C::SetCredentials { name, credentials }).await
}

#[derive(Deserialize)]
struct FullQuery {
    full: Option<String>,
}

async fn authz_users(State(state): State<AppState>, Path(a): Path<String>) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let g = state.raft.shared.view().await;
    Ok(Json(g.state.security.authz_users.keys().collect::<Vec<_>>()).into_response())
}

async fn authz_user(
    State(state): State<AppState>,
    Path((a, user)): Path<(String, String)>,
    Query(q): Query<FullQuery>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let g = state.raft.shared.view().await;
    let s = &g.state.security;
    let u = s
        .authz_users
        .get(&user)
        .ok_or_else(|| ApiError::BadRequest(format!("User [{user}] does not exist.")))?;
    if q.full.is_some() {
        let roles: Vec<Value> = u
            .roles
            .iter()
            .map(|r| json!({"name": r, "permissions": s.roles.get(r).cloned().unwrap_or_default()}))
            .collect();
        return Ok(Json(json!({"name": user, "roles": roles})).into_response());
    }
    Ok(Json(json!({"name": user, "roles": u.roles})).into_response())
}

async fn create_authz_user(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::CreateAuthzUser { name }).await
}

async fn delete_authz_user(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::DeleteAuthzUser { name }).await
}

async fn roles(State(state): State<AppState>, Path(a): Path<String>) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let g = state.raft.shared.view().await;
    Ok(Json(g.state.security.roles.keys().collect::<Vec<_>>()).into_response())
}

async fn role(State(state): State<AppState>, Path((a, role)): Path<(String, String)>) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let g = state.raft.shared.view().await;
    let s = &g.state.security;
    let permissions = s
        .roles
        .get(&role)
        .ok_or_else(|| ApiError::BadRequest(format!("Role [{role}] does not exist.")))?;
    let users: Vec<&String> = s
        .authz_users
        .iter()
        .filter(|(_, u)| u.roles.contains(&role))
        .map(|(n, _)| n)
        .collect();
    Ok(Json(json!({"name": role, "users": users, "permissions": permissions})).into_response())
}

async fn create_role(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::CreateRole { name }).await
}

async fn delete_role(
    State(state): State<AppState>,
    Path((a, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::DeleteRole { name }).await
}

async fn assign_role(
    State(state): State<AppState>,
    Path((a, user, role)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::AssignRole { user, role }).await
}

async fn unassign_role(
    State(state): State<AppState>,
    Path((a, user, role)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    change(&state, C::UnassignRole { user, role }).await
}

async fn permissions(
    State(state): State<AppState>,
    Path((a, role)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let g = state.raft.shared.view().await;
    match g.state.security.roles.get(&role) {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::BadRequest(format!("Role [{role}] does not exist."))),
    }
}

async fn set_permissions(
    State(state): State<AppState>,
    Path((a, role)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorizer(&state, &a)?;
    let permissions: Vec<Permission> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected a list of permissions like [{{\"resource\": {{\"name\": \"wiki.*\", \"type\": \"DATASOURCE\"}}, \"action\": \"READ\"}}]: {e}"
        ))
    })?;
    change(&state, C::SetPermissions { role, permissions }).await
}
