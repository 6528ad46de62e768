//! Lock and segment routes: the Overlord's `lockedIntervals`, `activeLocks` and
//! `datasources/{ds}` mark-used / mark-unused routes, the Coordinator's metadata and datasource
//! views (`/druid/coordinator/v1/...`), datasource commit metadata, and the audit trail.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Identity;
use super::tasks::read_body;
use super::{ApiError, AppState};
use crate::interval::{iso, Interval};
use crate::locks::LockFilterPolicy;
use crate::segments::{validate_datasource, DataSegmentJson, SegmentFilter, SegmentKey};
use crate::sm::{Command, Reply};

/// Routes served by the leader.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(locked_intervals_v1))
        .routes(routes!(locked_intervals_v2))
        .routes(routes!(active_locks))
        .routes(routes!(audit))
        .routes(routes!(delete_pending))
        .routes(routes!(get_metadata, reset_metadata))
        .routes(routes!(metadata_datasources))
        .routes(routes!(metadata_datasource))
        .routes(routes!(metadata_segments_of, metadata_segments_in))
        .routes(routes!(metadata_segment))
        .routes(routes!(unused_segments))
        .routes(routes!(metadata_all_segments))
        .routes(routes!(coordinator_datasources))
        .routes(routes!(datasource_intervals))
        // Mark used / unused: the Overlord's routes and the Coordinator's older ones.
        .routes(routes!(overlord_mark_used))
        .routes(routes!(overlord_mark_unused))
        .routes(routes!(overlord_mark_segment_used, overlord_mark_segment_unused))
        .routes(routes!(overlord_mark_all_used, overlord_mark_all_unused))
        .routes(routes!(coordinator_mark_used))
        .routes(routes!(coordinator_mark_unused))
        .routes(routes!(coordinator_mark_segment_used, coordinator_mark_segment_unused))
        .routes(routes!(
            coordinator_datasource,
            coordinator_mark_all_used,
            coordinator_mark_all_unused
        ))
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/datasources/{ds}/markUsed",
    tag = "segments",
    summary = "Mark segments used by interval or ids",
    params(("ds" = String, Path, description = "datasource name")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_used(
    State(s): State<AppState>,
    Path(ds): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    mark_by_filter(s, ds, h, b, true).await
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/datasources/{ds}/markUnused",
    tag = "segments",
    summary = "Mark segments unused by interval or ids",
    params(("ds" = String, Path, description = "datasource name")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_unused(
    State(s): State<AppState>,
    Path(ds): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    mark_by_filter(s, ds, h, b, false).await
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/datasources/{ds}/segments/{id}",
    tag = "segments",
    summary = "Mark one segment used",
    params(("ds" = String, Path, description = "datasource name"), ("id" = String, Path, description = "segment id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_segment_used(
    State(s): State<AppState>,
    Path((ds, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    mark_one(s, ds, id, true).await
}

#[utoipa::path(
    delete,
    path = "/druid/indexer/v1/datasources/{ds}/segments/{id}",
    tag = "segments",
    summary = "Mark one segment unused",
    params(("ds" = String, Path, description = "datasource name"), ("id" = String, Path, description = "segment id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_segment_unused(
    State(s): State<AppState>,
    Path((ds, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    mark_one(s, ds, id, false).await
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/datasources/{ds}",
    tag = "segments",
    summary = "Mark every segment of a datasource used",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_all_used(State(s): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    mark_all(s, ds, true).await
}

#[utoipa::path(
    delete,
    path = "/druid/indexer/v1/datasources/{ds}",
    tag = "segments",
    summary = "Mark every segment of a datasource unused",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn overlord_mark_all_unused(State(s): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    mark_all(s, ds, false).await
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/datasources/{ds}/markUsed",
    tag = "segments",
    summary = "Mark segments used by interval or ids",
    params(("ds" = String, Path, description = "datasource name")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_used(
    State(s): State<AppState>,
    Path(ds): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    mark_by_filter(s, ds, h, b, true).await
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/datasources/{ds}/markUnused",
    tag = "segments",
    summary = "Mark segments unused by interval or ids",
    params(("ds" = String, Path, description = "datasource name")),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_unused(
    State(s): State<AppState>,
    Path(ds): Path<String>,
    h: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    mark_by_filter(s, ds, h, b, false).await
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/datasources/{ds}/segments/{id}",
    tag = "segments",
    summary = "Mark one segment used",
    params(("ds" = String, Path, description = "datasource name"), ("id" = String, Path, description = "segment id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_segment_used(
    State(s): State<AppState>,
    Path((ds, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    mark_one(s, ds, id, true).await
}

#[utoipa::path(
    delete,
    path = "/druid/coordinator/v1/datasources/{ds}/segments/{id}",
    tag = "segments",
    summary = "Mark one segment unused",
    params(("ds" = String, Path, description = "datasource name"), ("id" = String, Path, description = "segment id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_segment_unused(
    State(s): State<AppState>,
    Path((ds, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    mark_one(s, ds, id, false).await
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/datasources/{ds}",
    tag = "segments",
    summary = "Mark every segment of a datasource used",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_all_used(State(s): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    mark_all(s, ds, true).await
}

#[utoipa::path(
    delete,
    path = "/druid/coordinator/v1/datasources/{ds}",
    tag = "segments",
    summary = "Mark every segment of a datasource unused",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_mark_all_unused(State(s): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    mark_all(s, ds, false).await
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

fn check_ds(ds: &str) -> Result<(), ApiError> {
    validate_datasource(ds).map_err(ApiError::BadRequest)
}

/// A datasource name and a segment id of it that parses.
fn check_segment_id(ds: &str, id: &str) -> Result<(), ApiError> {
    check_ds(ds)?;
    if SegmentKey::parse_id(ds, id).is_empty() {
        return Err(bad(format!("Could not parse segment id [{id}] of datasource [{ds}]")));
    }
    Ok(())
}

/// A datasource that has used segments (the Coordinator's views 404 the others).
fn with_used<'a>(state: &'a crate::sm::State, ds: &str) -> Result<&'a crate::segments::Datasource, ApiError> {
    check_ds(ds)?;
    state
        .segments
        .datasource(ds)
        .filter(|d| d.used_count() > 0)
        .ok_or_else(|| ApiError::NotFound(format!("datasource [{ds}] has no used segments")))
}

async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(state, headers, body).await?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid {what}: {e}")))
}

// ---- locks ----

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/lockedIntervals",
    tag = "locks",
    summary = "Locked intervals by datasource ({datasource: minPriority})",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn locked_intervals_v1(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let min: BTreeMap<String, i32> =
        json_body(&state, &headers, body, "body: expected {\"datasource\": minPriority}").await?;
    let policies: Vec<LockFilterPolicy> = min
        .into_iter()
        .map(|(datasource, priority)| LockFilterPolicy {
            datasource,
            priority,
            intervals: None,
            context: None,
        })
        .collect();
    let g = state.raft.shared.view().await;
    Ok(Json(g.state.locks.locked_intervals(&policies)).into_response())
}

async fn policies(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<LockFilterPolicy>, ApiError> {
    let p: Vec<LockFilterPolicy> = json_body(state, headers, body, "lock filter policies").await?;
    if p.is_empty() {
        return Err(bad("No filter provided"));
    }
    Ok(p)
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/lockedIntervals/v2",
    tag = "locks",
    summary = "Locked intervals for lock filter policies",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn locked_intervals_v2(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = policies(&state, &headers, body).await?;
    let g = state.raft.shared.view().await;
    Ok(Json(g.state.locks.locked_intervals(&p)).into_response())
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/activeLocks",
    tag = "locks",
    summary = "Active locks for lock filter policies",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn active_locks(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let p = policies(&state, &headers, body).await?;
    let g = state.raft.shared.view().await;
    Ok(Json(json!({"datasourceToLocks": g.state.locks.active_locks(&p)})).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    datasource: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    count: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/audit",
    tag = "locks",
    summary = "Lock and segment changes",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn audit(State(state): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    if q.count == Some(0) {
        return Err(bad("count must be a positive integer"));
    }
    let g = state.raft.shared.view().await;
    let rows: Vec<_> = g
        .state
        .audit
        .newest(q.datasource.as_deref(), q.kind.as_deref(), q.count.unwrap_or(100))
        .collect();
    Ok(Json(rows).into_response())
}

/// An interval given in a URL (`start/end` or `start_end`), if any.
fn url_interval(given: &Option<String>) -> Result<Option<Interval>, ApiError> {
    given
        .as_deref()
        .map(|i| Interval::parse_url(i).map_err(|e| bad(e.to_string())))
        .transpose()
}

#[derive(Deserialize)]
struct PendingQuery {
    interval: Option<String>,
}

/// `DELETE /pendingSegments/{ds}?interval=`: deletes pending segments created in the interval.
#[utoipa::path(
    delete,
    path = "/druid/indexer/v1/pendingSegments/{ds}",
    tag = "segments",
    summary = "Delete a datasource's pending segments",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn delete_pending(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<PendingQuery>,
) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let created = url_interval(&q.interval)?;
    match state
        .propose(Command::DeletePendingSegments {
            datasource: ds,
            created,
        })
        .await?
    {
        Reply::PendingDeleted { count } => Ok(Json(json!({"numDeleted": count})).into_response()),
        other => Err(ApiError::Unavailable(format!("unexpected reply: {other:?}"))),
    }
}

// ---- datasource commit metadata ----

#[utoipa::path(
    get,
    path = "/druid/indexer/v1/datasources/{ds}/metadata",
    tag = "segments",
    summary = "A datasource's commit metadata",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn get_metadata(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let g = state.raft.shared.view().await;
    match g.state.segments.datasource(&ds).and_then(|d| d.metadata()) {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(ApiError::NotFound(format!("no metadata stored for datasource [{ds}]"))),
    }
}

#[utoipa::path(
    delete,
    path = "/druid/indexer/v1/datasources/{ds}/metadata",
    tag = "segments",
    summary = "Reset a datasource's commit metadata",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn reset_metadata(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    match state
        .propose(Command::SetDatasourceMetadata {
            datasource: ds.clone(),
            metadata: None,
        })
        .await?
    {
        Reply::MetadataSet { changed: true } => Ok(Json(json!({"dataSource": ds, "reset": true})).into_response()),
        _ => Err(ApiError::NotFound(format!("no metadata stored for datasource [{ds}]"))),
    }
}

// ---- mark used / unused ----

/// Druid's `SegmentsToUpdateFilter`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateFilter {
    interval: Option<Interval>,
    segment_ids: Option<Vec<String>>,
    versions: Option<Vec<String>>,
}

async fn mark(state: &AppState, ds: String, filter: SegmentFilter, used: bool) -> Result<usize, ApiError> {
    match state
        .propose(Command::MarkSegments {
            datasource: ds,
            filter,
            used,
        })
        .await?
    {
        Reply::SegmentsMarked { count } => Ok(count),
        other => Err(ApiError::Unavailable(format!("unexpected reply: {other:?}"))),
    }
}

async fn filter_from_body(
    state: &AppState,
    ds: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<SegmentFilter, ApiError> {
    let f: UpdateFilter = json_body(
        state,
        headers,
        body,
        "segment filter (expected {\"interval\"} or {\"segmentIds\"})",
    )
    .await?;
    match (f.interval, f.segment_ids, f.versions) {
        (Some(interval), None, versions) => Ok(SegmentFilter::Interval { interval, versions }),
        (None, Some(ids), None) if !ids.is_empty() => {
            let g = state.raft.shared.view().await;
            let mut keys = Vec::with_capacity(ids.len());
            for id in &ids {
                let parsed = SegmentKey::parse_id(ds, id);
                if parsed.is_empty() {
                    return Err(bad(format!("Could not parse segment id [{id}] of datasource [{ds}]")));
                }
                // An id with two readings: take the stored one, else the first.
                let stored = g.state.segments.find_id(ds, id).map(|(k, _)| k);
                keys.push(stored.unwrap_or_else(|| parsed[0].clone()));
            }
            Ok(SegmentFilter::Keys { keys })
        }
        (None, Some(_), Some(_)) => Err(bad("'versions' can only be given with 'interval'")),
        _ => Err(bad(
            "Exactly one of interval or segmentIds must be specified (segmentIds not empty)",
        )),
    }
}

/// `POST /datasources/{ds}/markUsed` and `/markUnused`.
async fn mark_by_filter(
    state: AppState,
    ds: String,
    headers: HeaderMap,
    body: Body,
    used: bool,
) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let filter = filter_from_body(&state, &ds, &headers, body).await?;
    let n = mark(&state, ds, filter, used).await?;
    Ok(Json(json!({"numChangedSegments": n})).into_response())
}

/// `POST` and `DELETE /datasources/{ds}`: every segment.
async fn mark_all(state: AppState, ds: String, used: bool) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let n = mark(&state, ds, SegmentFilter::All, used).await?;
    Ok(Json(json!({"numChangedSegments": n})).into_response())
}

/// `POST` and `DELETE /datasources/{ds}/segments/{id}`: one stored segment.
async fn mark_one(state: AppState, ds: String, id: String, used: bool) -> Result<Response, ApiError> {
    check_segment_id(&ds, &id)?;
    let key = {
        let g = state.raft.shared.view().await;
        g.state
            .segments
            .find_id(&ds, &id)
            .map(|(k, _)| k)
            .ok_or_else(|| ApiError::NotFound(format!("Segment [{id}] of datasource [{ds}] not found")))?
    };
    let n = mark(&state, ds, SegmentFilter::Keys { keys: vec![key] }, used).await?;
    Ok(Json(json!({"numChangedSegments": n, "segmentStateChanged": n > 0})).into_response())
}

// ---- Coordinator metadata views ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ViewQuery {
    full: Option<String>,
    simple: Option<String>,
    include_unused: Option<String>,
    interval: Option<String>,
    limit: Option<usize>,
}

/// Druid's `ImmutableDruidDataSource` of the used segments of `ds`.
fn druid_datasource(state: &crate::sm::State, ds: &str) -> Result<Value, ApiError> {
    let d = with_used(state, ds)?;
    let segments: Vec<Value> = d.used().map(|(k, s)| json!(DataSegmentJson::new(ds, k, s))).collect();
    Ok(json!({"name": ds, "properties": {}, "segments": segments}))
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/datasources",
    tag = "segments",
    summary = "Datasources with used segments",
    params(("full" = Option<String>, Query), ("includeUnused" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_datasources(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let g = state.raft.shared.view().await;
    let names: Vec<&String> = g
        .state
        .segments
        .datasources()
        .filter(|(n, _)| !who.is_restricted() || who.reads(&g.state, n))
        .filter(|(_, d)| d.used_count() > 0 || (q.include_unused.is_some() && d.total_count() > 0))
        .map(|(n, _)| n)
        .collect();
    if q.full.is_some() {
        let full: Vec<Value> = names
            .iter()
            .filter_map(|n| druid_datasource(&g.state, n).ok())
            .collect();
        return Json(full).into_response();
    }
    Json(names).into_response()
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/datasources/{ds}",
    tag = "segments",
    summary = "A datasource and its used segments",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_datasource(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    let g = state.raft.shared.view().await;
    Ok(Json(druid_datasource(&g.state, &ds)?).into_response())
}

fn segments_view(state: &crate::sm::State, ds: &str, intervals: Option<&[Interval]>, full: bool) -> Value {
    let Some(d) = state.segments.datasource(ds) else {
        return json!([]);
    };
    let render = |k: &SegmentKey, s| {
        if full {
            json!(DataSegmentJson::new(ds, k, s))
        } else {
            json!(k.id(ds))
        }
    };
    match intervals {
        None => json!(d.used().map(|(k, s)| render(k, s)).collect::<Vec<_>>()),
        // Druid lists overshadowed used segments here too.
        Some(ivs) => json!(d
            .used_in(ivs, true)
            .into_iter()
            .map(|(k, s)| render(k, s))
            .collect::<Vec<_>>()),
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/datasources/{ds}/segments",
    tag = "segments",
    summary = "A datasource's used segments",
    params(("ds" = String, Path, description = "datasource name"), ("full" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_segments_of(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let g = state.raft.shared.view().await;
    Ok(Json(segments_view(&g.state, &ds, None, q.full.is_some())).into_response())
}

#[utoipa::path(
    post,
    path = "/druid/coordinator/v1/metadata/datasources/{ds}/segments",
    tag = "segments",
    summary = "A datasource's used segments in the given intervals",
    params(("ds" = String, Path, description = "datasource name"), ("full" = Option<String>, Query)),
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_segments_in(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<ViewQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let intervals: Vec<Interval> =
        json_body(&state, &headers, body, "body: expected a JSON array of intervals").await?;
    let g = state.raft.shared.view().await;
    Ok(Json(segments_view(&g.state, &ds, Some(&intervals), q.full.is_some())).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/datasources/{ds}/segments/{id}",
    tag = "segments",
    summary = "One segment",
    params(("ds" = String, Path, description = "datasource name"), ("id" = String, Path, description = "segment id")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_segment(
    State(state): State<AppState>,
    Path((ds, id)): Path<(String, String)>,
    Query(q): Query<ViewQuery>,
) -> Result<Response, ApiError> {
    check_segment_id(&ds, &id)?;
    let g = state.raft.shared.view().await;
    match g.state.segments.find_id(&ds, &id) {
        Some((k, s)) if s.used || q.include_unused.is_some() => {
            Ok(Json(json!(DataSegmentJson::new(&ds, &k, s))).into_response())
        }
        _ => Err(ApiError::NotFound(format!("Segment [{id}] not found"))),
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/datasources/{ds}/unusedSegments",
    tag = "segments",
    summary = "A datasource's unused segments",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn unused_segments(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Result<Response, ApiError> {
    check_ds(&ds)?;
    let interval = url_interval(&q.interval)?.unwrap_or(Interval::ETERNITY);
    let g = state.raft.shared.view().await;
    let rows: Vec<Value> = g
        .state
        .segments
        .datasource(&ds)
        .into_iter()
        .flat_map(|d| d.overlapping(&interval))
        .filter(|(k, s)| !s.used && interval.contains(&k.interval()))
        .take(q.limit.unwrap_or(usize::MAX))
        .map(|(k, s)| {
            json!({
                "dataSegment": DataSegmentJson::new(&ds, k, s),
                "createdDate": iso(s.created_ms as i64),
                "usedStatusLastUpdatedDate": iso(s.used_updated_ms as i64),
                "used": false
            })
        })
        .collect();
    Ok(Json(rows).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/metadata/segments",
    tag = "segments",
    summary = "Used segments of every datasource",
    params(("datasources" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn metadata_all_segments(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let mut wanted: Vec<String> = Vec::new();
    let mut with_status = false;
    let mut realtime = false;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "datasources" => wanted.push(v.into_owned()),
            "includeOvershadowedStatus" => with_status = true,
            "includeRealtimeSegments" => realtime = true,
            _ => {}
        }
    }
    if realtime && !with_status {
        return Err(bad(
            "includeRealtimeSegments is only supported together with includeOvershadowedStatus",
        ));
    }
    let g = state.raft.shared.view().await;
    let mut rows = Vec::new();
    for (ds, d) in g.state.segments.datasources() {
        if !wanted.is_empty() && !wanted.contains(ds) {
            continue;
        }
        if who.is_restricted() && !who.reads(&g.state, ds) {
            continue;
        }
        let hidden = if with_status {
            d.overshadowed()
        } else {
            Default::default()
        };
        for (k, s) in d.used() {
            let mut v = json!(DataSegmentJson::new(ds, k, s));
            if with_status {
                v["overshadowed"] = json!(hidden.contains(k));
                v["replicationFactor"] = Value::Null;
                v["numRows"] = Value::Null;
                v["realtime"] = json!(false);
            }
            rows.push(v);
        }
    }
    Ok(Json(rows).into_response())
}

/// Summary of a datasource's used segments: `{count, size, minTime, maxTime}`.
fn summary(d: &crate::segments::Datasource) -> Value {
    let (mut count, mut size, mut min, mut max) = (0u64, 0u64, i64::MAX, i64::MIN);
    for (k, s) in d.used() {
        count += 1;
        size = size.saturating_add(s.size);
        min = min.min(k.start);
        max = max.max(k.end);
    }
    if count == 0 {
        return json!({"count": 0, "size": 0});
    }
    json!({"count": count, "size": size, "minTime": iso(min), "maxTime": iso(max)})
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/datasources",
    tag = "segments",
    summary = "Datasources with used segments",
    params(("simple" = Option<String>, Query), ("full" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_datasources(
    State(state): State<AppState>,
    Extension(who): Extension<Identity>,
    Query(q): Query<ViewQuery>,
) -> Response {
    let g = state.raft.shared.view().await;
    let used = g
        .state
        .segments
        .datasources()
        .filter(|(_, d)| d.used_count() > 0)
        .filter(|(n, _)| !who.is_restricted() || who.reads(&g.state, n));
    if q.simple.is_some() || q.full.is_some() {
        let rows: Vec<Value> = used
            .map(|(n, d)| json!({"name": n, "properties": {"tiers": {}, "segments": summary(d)}}))
            .collect();
        return Json(rows).into_response();
    }
    Json(used.map(|(n, _)| n).collect::<Vec<_>>()).into_response()
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/datasources/{ds}",
    tag = "segments",
    summary = "A datasource's segment summary",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn coordinator_datasource(State(state): State<AppState>, Path(ds): Path<String>) -> Result<Response, ApiError> {
    let g = state.raft.shared.view().await;
    let d = with_used(&g.state, &ds)?;
    Ok(Json(json!({"tiers": {}, "segments": summary(d)})).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/datasources/{ds}/intervals",
    tag = "segments",
    summary = "A datasource's intervals, newest first",
    params(("ds" = String, Path, description = "datasource name")),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn datasource_intervals(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Result<Response, ApiError> {
    let g = state.raft.shared.view().await;
    let d = with_used(&g.state, &ds)?;
    // Newest interval first, as Druid lists them.
    let mut by_interval: BTreeMap<std::cmp::Reverse<Interval>, (u64, u64, Vec<String>)> = BTreeMap::new();
    for (k, s) in d.used() {
        let e = by_interval.entry(std::cmp::Reverse(k.interval())).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(s.size);
        e.2.push(k.id(&ds));
    }
    if q.simple.is_some() || q.full.is_some() {
        let map: serde_json::Map<String, Value> = by_interval
            .into_iter()
            .map(|(iv, (count, size, ids))| {
                let v = if q.full.is_some() {
                    json!(ids
                        .into_iter()
                        .map(|id| (id, json!({"servers": []})))
                        .collect::<serde_json::Map<_, _>>())
                } else {
                    json!({"count": count, "size": size})
                };
                (iv.0.to_string(), v)
            })
            .collect();
        return Ok(Json(map).into_response());
    }
    Ok(Json(by_interval.keys().map(|iv| iv.0.to_string()).collect::<Vec<_>>()).into_response())
}
