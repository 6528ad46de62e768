//! The Coordinator's own routes (`/druid/coordinator/v1/...`): its leadership (the Raft
//! leader's, as for the Overlord); its dynamic configuration; and the retention rules: every
//! datasource's rules, one datasource's (with the cluster's `_default` rules after them on
//! `?full`), replacing them. Changes are audited with `X-Druid-Author` and `X-Druid-Comment`,
//! and each has its history route.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::tasks::read_body;
use super::{audit_info, ApiError, AppState};
use crate::coordinator::compaction::{CompactionAuditEntry, DatasourceCompactionConfig};
use crate::coordinator::{rules, DEFAULT_RULES};
use crate::interval::Interval;
use crate::sm::{Command, Reply};
use crate::workers::AuditEntry;

/// How far back the history goes when neither `interval` nor `count` is given (Druid's
/// `druid.audit.manager.auditHistoryMillis` default: one week).
const DEFAULT_HISTORY_MS: u64 = 7 * 24 * 3_600_000;

/// Routes every node answers itself.
pub fn any_node_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(leader)).routes(routes!(is_leader))
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/leader",
    tag = "coordinator",
    summary = "The leading Coordinator's URL (the Raft leader's)",
    responses((status = 200, description = "success", body = String), crate::api::openapi::Refused)
)]
async fn leader(State(state): State<AppState>) -> Result<Response, ApiError> {
    super::tasks::leader_url(&state)
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/isLeader",
    tag = "coordinator",
    summary = "Whether this node is the leading Coordinator (200) or not (404)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn is_leader(State(state): State<AppState>) -> Response {
    super::tasks::leadership(&state)
}

/// Routes served by the leader.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_config, set_config))
        .routes(routes!(config_history))
        .routes(routes!(compaction_configs, set_compaction_config))
        .routes(routes!(compaction_config, delete_compaction_config))
        .routes(routes!(compaction_slots))
        .routes(routes!(compaction_history))
        .routes(routes!(all_rules))
        .routes(routes!(all_history))
        .routes(routes!(get_rules, set_rules))
        .routes(routes!(history))
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/rules",
    tag = "coordinator",
    summary = "Every datasource's retention rules, and the cluster's defaults under `_default`",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn all_rules(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    Json(g.state.coordinator.all_rules()).into_response()
}

#[derive(Debug, Deserialize)]
struct RulesQuery {
    full: Option<String>,
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/rules/{ds}",
    tag = "coordinator",
    summary = "A datasource's retention rules; with `full`, followed by the cluster's defaults",
    params(("ds" = String, Path), ("full" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn get_rules(State(state): State<AppState>, Path(ds): Path<String>, Query(q): Query<RulesQuery>) -> Response {
    let g = state.raft.shared.read().await;
    let c = &g.state.coordinator;
    let mut list = c.rules_of(&ds);
    if q.full.is_some() && ds != DEFAULT_RULES {
        list.extend(c.rules_of(DEFAULT_RULES));
    }
    Json(list).into_response()
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/rules/{ds}",
    tag = "coordinator",
    summary = "Replace a datasource's retention rules (`_default`: the cluster's), in order; audited",
    params(("ds" = String, Path)),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn set_rules(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid rules: {e}")))?;
    let list = rules::parse_rules(&value).map_err(|e| ApiError::BadRequest(format!("invalid rules: {e}")))?;
    state
        .propose(Command::SetRules {
            datasource: ds,
            rules: list,
            audit: audit_info(&headers),
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/config",
    tag = "coordinator",
    summary = "The Coordinator's dynamic configuration",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn get_config(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    Json(&g.state.coordinator.dynamic_config).into_response()
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/config",
    tag = "coordinator",
    summary = "Change the Coordinator's dynamic configuration: the fields given, the others kept; audited",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn set_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let change: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid Coordinator dynamic config: {e}")))?;
    // Merged with the configuration as it is now; the command carries the whole result, so a
    // change committed meanwhile is replaced, as in Druid.
    let current = state.raft.shared.read().await.state.coordinator.dynamic_config.clone();
    let config = current
        .updated(&change)
        .map_err(|e| ApiError::BadRequest(format!("invalid Coordinator dynamic config: {e}")))?;
    state
        .propose(Command::SetCoordinatorConfig {
            config,
            audit: audit_info(&headers),
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/config/history",
    tag = "coordinator",
    summary = "Changes of the dynamic configuration: the last `count`, newest first, or those made within `interval` (default: the last week)",
    params(("interval" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn config_history(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    changes(&state, History::Config, &q).await
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/config/compaction",
    tag = "coordinator",
    summary = "Every datasource's auto-compaction config and the task slots compaction may take",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn compaction_configs(State(state): State<AppState>) -> Response {
    let g = state.raft.shared.read().await;
    Json(g.state.coordinator.compaction.to_druid_json()).into_response()
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/config/compaction",
    tag = "coordinator",
    summary = "Add or replace a datasource's auto-compaction config (Druid's DataSourceCompactionConfig); audited",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn set_compaction_config(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = read_body(&state, &headers, body).await?;
    let bad = |e: String| ApiError::BadRequest(format!("invalid compaction config: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    let config = DatasourceCompactionConfig::parse(&value).map_err(bad)?;
    state
        .propose(Command::SetCompactionConfig {
            datasource: config.data_source.clone(),
            config: Some(config),
            audit: audit_info(&headers),
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/config/compaction/{ds}",
    tag = "coordinator",
    summary = "A datasource's auto-compaction config (404 when it has none)",
    params(("ds" = String, Path)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn compaction_config(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    let g = state.raft.shared.read().await;
    match g.state.coordinator.compaction.configs.get(&ds) {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(no_compaction_config(&ds)),
    }
}

#[utoipa::path(
    delete,
    path = "/druid/coordinator/v1/config/compaction/{ds}",
    tag = "coordinator",
    summary = "Remove a datasource's auto-compaction config (404 when it has none); audited",
    params(("ds" = String, Path)),
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn delete_compaction_config(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let reply = state
        .propose(Command::SetCompactionConfig {
            datasource: ds.clone(),
            config: None,
            audit: audit_info(&headers),
        })
        .await?;
    match reply {
        Reply::CompactionConfigSet { changed: true } => Ok(StatusCode::OK.into_response()),
        _ => Err(no_compaction_config(&ds)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlotsQuery {
    ratio: Option<String>,
    max: Option<String>,
    use_auto_scale_slots: Option<String>,
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/config/compaction/taskslots",
    tag = "coordinator",
    summary = "Set the share (`ratio`, 0 to 1) and number (`max`) of task slots auto-compaction may take; parameters not given keep their values",
    params(("ratio" = Option<f64>, Query), ("max" = Option<u32>, Query), ("useAutoScaleSlots" = Option<bool>, Query)),
    responses((status = 200, description = "success"), crate::api::openapi::Refused)
)]
async fn compaction_slots(State(state): State<AppState>, Query(q): Query<SlotsQuery>) -> Result<Response, ApiError> {
    fn parsed<T: std::str::FromStr>(name: &str, v: &Option<String>) -> Result<Option<T>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse::<T>()
                    .map_err(|_| ApiError::BadRequest(format!("{name}: [{s}] is not a valid value")))
            })
            .transpose()
    }
    let mut slots = state
        .raft
        .shared
        .read()
        .await
        .state
        .coordinator
        .compaction
        .slots
        .clone();
    if let Some(r) = parsed::<f64>("ratio", &q.ratio)? {
        slots.compaction_task_slot_ratio = r;
    }
    if let Some(m) = parsed::<u32>("max", &q.max)? {
        slots.max_compaction_task_slots = m;
    }
    if let Some(a) = parsed::<bool>("useAutoScaleSlots", &q.use_auto_scale_slots)? {
        slots.use_auto_scale_slots = a;
    }
    slots.check().map_err(ApiError::BadRequest)?;
    state.propose(Command::SetCompactionSlots { slots }).await?;
    Ok(StatusCode::OK.into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/config/compaction/{ds}/history",
    tag = "coordinator",
    summary = "Changes of a datasource's compaction config: the last `count`, newest first, or those made within `interval` (default: the last week)",
    params(("ds" = String, Path), ("interval" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn compaction_history(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let (count, interval) = history_bounds(&q)?;
    let g = state.raft.shared.read().await;
    let all: Vec<&CompactionAuditEntry> = g.state.coordinator.compaction.history(&ds).iter().collect();
    Ok(Json(select(all, count, interval, |e| e.audit_time.as_str())).into_response())
}

fn no_compaction_config(ds: &str) -> ApiError {
    ApiError::NotFound(format!("datasource [{ds}] has no compaction config"))
}

/// Which history a route shows.
enum History<'a> {
    Rules(Option<&'a str>),
    Config,
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    interval: Option<String>,
    count: Option<String>,
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/rules/history",
    tag = "coordinator",
    summary = "Changes of every datasource's rules: the last `count`, newest first, or those made within `interval` (default: the last week)",
    params(("interval" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn all_history(State(state): State<AppState>, Query(q): Query<HistoryQuery>) -> Result<Response, ApiError> {
    changes(&state, History::Rules(None), &q).await
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/rules/{ds}/history",
    tag = "coordinator",
    summary = "Changes of a datasource's rules: the last `count`, newest first, or those made within `interval` (default: the last week)",
    params(("ds" = String, Path), ("interval" = Option<String>, Query), ("count" = Option<u64>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn history(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    changes(&state, History::Rules(Some(&ds)), &q).await
}

/// The history as Druid's audit manager gives it: `count` takes the newest entries, newest
/// first; otherwise the entries of `interval`, oldest first.
async fn changes(state: &AppState, which: History<'_>, q: &HistoryQuery) -> Result<Response, ApiError> {
    let (count, interval) = history_bounds(q)?;
    let g = state.raft.shared.read().await;
    let all = match which {
        History::Rules(ds) => g.state.coordinator.rule_history(ds),
        History::Config => g.state.coordinator.config_history(),
    };
    Ok(Json(select(all, count, interval, |e: &AuditEntry| e.audit_time.as_str())).into_response())
}

/// A history query's `count` (positive) and `interval`.
fn history_bounds(q: &HistoryQuery) -> Result<(Option<usize>, Option<Interval>), ApiError> {
    let count = match &q.count {
        None => None,
        Some(c) => match c.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(ApiError::BadRequest(format!("count [{c}] must be a positive integer"))),
        },
    };
    let interval = match &q.interval {
        Some(i) => Some(Interval::parse(i).map_err(|e| ApiError::BadRequest(format!("interval: {e}")))?),
        None => None,
    };
    Ok((count, interval))
}

/// The last `count` entries, newest first; or those made within `interval` (by default the last
/// week), oldest first.
fn select<T>(all: Vec<&T>, count: Option<usize>, interval: Option<Interval>, time: impl Fn(&T) -> &str) -> Vec<&T> {
    if let Some(n) = count {
        return all.into_iter().rev().take(n).collect();
    }
    let interval = interval.unwrap_or_else(|| {
        let now = crate::clock::now_ms().min(i64::MAX as u64) as i64;
        Interval {
            start: now.saturating_sub(DEFAULT_HISTORY_MS as i64),
            end: now.saturating_add(1),
        }
    });
    all.into_iter()
        .filter(|e| crate::interval::parse_instant(time(e)).is_ok_and(|t| interval.contains_instant(t)))
        .collect()
}
