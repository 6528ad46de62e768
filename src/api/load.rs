//! The Coordinator's serving-view routes: load status (`/loadstatus`,
//! `/datasources/{ds}/loadstatus`), the load queues (`/loadqueue`), the Historicals
//! (`/servers`), their tiers (`/tiers`, `/tiers/{tier}`), the duties' last runs (`/duties`) and
//! auto-compaction's progress (`/compaction/status`, `/compaction/progress`),
//! in Druid's shapes. `?simple` and `?full` are flags, as in Druid.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::coordinator::load::{HistoricalRecord, Replica};
use crate::coordinator::status::{load_status, DatasourceLoad};
use crate::interval::Interval;
use crate::segments::DataSegmentJson;

/// How far back `/datasources/{ds}/loadstatus` looks without `interval` (Druid's two weeks).
const DEFAULT_LOADSTATUS_MS: i64 = 14 * 24 * 3_600_000;

type Flags = Query<HashMap<String, String>>;

/// Routes served by the leader.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(loadstatus))
        .routes(routes!(datasource_loadstatus))
        .routes(routes!(loadqueue))
        .routes(routes!(servers))
        .routes(routes!(tiers))
        .routes(routes!(tier))
        .routes(routes!(duties))
        .routes(routes!(compaction_status))
        .routes(routes!(compaction_progress))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompactionQuery {
    #[serde(default)]
    data_source: Option<String>,
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/compaction/status",
    tag = "coordinator",
    summary = "Auto-compaction's progress per datasource with a compaction config (Druid's AutoCompactionSnapshot)",
    params(("dataSource" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), (status = 404, description = "no compaction config for the datasource"), crate::api::openapi::Refused)
)]
async fn compaction_status(
    State(state): State<AppState>,
    Query(q): Query<CompactionQuery>,
) -> Result<Json<Value>, ApiError> {
    let g = state.raft.shared.read().await;
    let snaps = crate::coordinator::autocompact::status(&g.state, q.data_source.as_deref());
    if let (Some(ds), true) = (&q.data_source, snaps.is_empty()) {
        return Err(ApiError::NotFound(format!(
            "no compaction config for datasource [{ds}]"
        )));
    }
    Ok(Json(json!({ "latestStatus": snaps })))
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/compaction/progress",
    tag = "coordinator",
    summary = "Bytes of a datasource still awaiting compaction",
    params(("dataSource" = String, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), (status = 404, description = "no compaction config for the datasource"), crate::api::openapi::Refused)
)]
async fn compaction_progress(
    State(state): State<AppState>,
    Query(q): Query<CompactionQuery>,
) -> Result<Json<Value>, ApiError> {
    let Some(ds) = q.data_source else {
        return Err(ApiError::BadRequest("dataSource is required".into()));
    };
    let g = state.raft.shared.read().await;
    let snaps = crate::coordinator::autocompact::status(&g.state, Some(&ds));
    let Some(s) = snaps.first() else {
        return Err(ApiError::NotFound(format!(
            "no compaction config for datasource [{ds}]"
        )));
    };
    Ok(Json(json!({ "remainingSegmentSize": s.bytes_awaiting_compaction })))
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name)
        .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true"))
}

/// Druid's three shapes of a load status.
fn shape(status: BTreeMap<String, DatasourceLoad>, q: &HashMap<String, String>) -> Value {
    if flag(q, "full") {
        let mut by_tier: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (ds, s) in &status {
            for (tier, left) in &s.left_by_tier {
                by_tier.entry(tier.clone()).or_default().insert(ds.clone(), *left);
            }
        }
        json!(by_tier)
    } else if flag(q, "simple") {
        json!(status
            .iter()
            .map(|(ds, s)| (ds.clone(), s.total - s.available))
            .collect::<BTreeMap<_, _>>())
    } else {
        json!(status
            .iter()
            .map(|(ds, s)| (ds.clone(), s.percent()))
            .collect::<BTreeMap<_, _>>())
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/loadstatus",
    tag = "coordinator",
    summary = "Percentage of each datasource served (?simple: segments left; ?full: replicas left per tier)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn loadstatus(State(state): State<AppState>, Query(q): Flags) -> Json<Value> {
    let g = state.raft.shared.read().await;
    let status = load_status(&g.state.segments, &g.state.coordinator, now_ms() as i64, None, None);
    Json(shape(status, &q))
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/datasources/{ds}/loadstatus",
    tag = "coordinator",
    summary = "One datasource's load status within an interval (default: the last two weeks); 204 when it has no used segments there",
    params(("ds" = String, Path), ("forceMetadataRefresh" = bool, Query), ("interval" = Option<String>, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), (status = 204, description = "no used segments"), crate::api::openapi::Refused)
)]
async fn datasource_loadstatus(
    State(state): State<AppState>,
    Path(ds): Path<String>,
    Query(q): Flags,
) -> Result<Response, ApiError> {
    match q.get("forceMetadataRefresh").map(|v| v.to_ascii_lowercase()) {
        Some(v) if v == "true" || v == "false" => {}
        _ => {
            return Err(ApiError::BadRequest(
                "forceMetadataRefresh must be given as true or false".into(),
            ))
        }
    }
    let now = now_ms() as i64;
    let interval = match q.get("interval") {
        Some(s) => Interval::parse_url(s)
            .map_err(|e| ApiError::BadRequest(format!("interval: [{s}] is not an ISO-8601 interval: {e}")))?,
        None => Interval {
            start: now - DEFAULT_LOADSTATUS_MS,
            end: now,
        },
    };
    let g = state.raft.shared.read().await;
    let status = load_status(&g.state.segments, &g.state.coordinator, now, Some(&ds), Some(&interval));
    if status.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(shape(status, &q)).into_response())
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/loadqueue",
    tag = "coordinator",
    summary = "Each Historical's segments to load and to drop (?simple: counts and bytes; ?full: the segments)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn loadqueue(State(state): State<AppState>, Query(q): Flags) -> Json<Value> {
    let g = state.raft.shared.read().await;
    let (simple, full) = (flag(&q, "simple"), flag(&q, "full"));
    let mut out = serde_json::Map::new();
    for rec in g.state.coordinator.load.serving() {
        let (mut load, mut drop) = (Vec::new(), Vec::new());
        let (mut load_bytes, mut drop_bytes) = (0u64, 0u64);
        for (seg, rep) in rec.replicas() {
            let list = match rep {
                Replica::Load { size, .. } => {
                    load_bytes += size;
                    &mut load
                }
                Replica::Drop { size, .. } => {
                    drop_bytes += size;
                    &mut drop
                }
                _ => continue,
            };
            if simple {
                list.push(Value::Null);
            } else if full {
                let stored = g
                    .state
                    .segments
                    .datasource(&seg.datasource)
                    .and_then(|d| d.get(&seg.key));
                list.push(match stored {
                    Some(s) => json!(DataSegmentJson::new(&seg.datasource, &seg.key, s)),
                    None => json!({"id": seg.id()}),
                });
            } else {
                list.push(json!(seg.id()));
            }
        }
        let entry = if simple {
            json!({
                "segmentsToLoad": load.len(),
                "segmentsToDrop": drop.len(),
                "segmentsToLoadSize": load_bytes,
                "segmentsToDropSize": drop_bytes,
            })
        } else {
            json!({"segmentsToLoad": load, "segmentsToDrop": drop})
        };
        out.insert(rec.server.host.clone(), entry);
    }
    Json(Value::Object(out))
}

/// Druid's `DruidServer` summary of a Historical.
fn server_json(rec: &HistoricalRecord) -> Value {
    json!({
        "host": rec.server.host,
        "tier": rec.server.tier,
        "type": "historical",
        "priority": 0,
        "currSize": rec.loaded_bytes(),
        "maxSize": rec.server.max_size,
    })
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/servers",
    tag = "coordinator",
    summary = "The serving Historicals (?simple: sizes and tiers; ?full: with their segments)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn servers(State(state): State<AppState>, Query(q): Flags) -> Json<Value> {
    let g = state.raft.shared.read().await;
    let serving = g.state.coordinator.load.serving();
    if flag(&q, "full") {
        Json(json!(serving
            .map(|rec| {
                let mut v = server_json(rec);
                let mut segments = serde_json::Map::new();
                for (seg, rep) in rec.replicas() {
                    if !matches!(rep, Replica::Loaded { .. }) {
                        continue;
                    }
                    if let Some(s) = g
                        .state
                        .segments
                        .datasource(&seg.datasource)
                        .and_then(|d| d.get(&seg.key))
                    {
                        segments.insert(seg.id(), json!(DataSegmentJson::new(&seg.datasource, &seg.key, s)));
                    }
                }
                v["name"] = v["host"].clone();
                v["segments"] = Value::Object(segments);
                v
            })
            .collect::<Vec<_>>()))
    } else if flag(&q, "simple") {
        Json(json!(serving.map(server_json).collect::<Vec<_>>()))
    } else {
        Json(json!(serving.map(|r| r.server.host.clone()).collect::<Vec<_>>()))
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/tiers",
    tag = "coordinator",
    summary = "The tiers of the serving Historicals (?simple: each tier's sizes)",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn tiers(State(state): State<AppState>, Query(q): Flags) -> Json<Value> {
    let g = state.raft.shared.read().await;
    let mut sizes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for rec in g.state.coordinator.load.serving() {
        let e = sizes.entry(rec.server.tier.clone()).or_default();
        e.0 += rec.loaded_bytes();
        e.1 += rec.server.max_size;
    }
    if flag(&q, "simple") {
        Json(json!(sizes
            .into_iter()
            .map(|(t, (curr, max))| (t, json!({"currSize": curr, "maxSize": max})))
            .collect::<BTreeMap<_, _>>()))
    } else {
        Json(json!(sizes.into_keys().collect::<Vec<_>>()))
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/tiers/{tier}",
    tag = "coordinator",
    summary = "The datasources a tier serves and their intervals (?simple: bytes and segment counts per interval)",
    params(("tier" = String, Path)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn tier(State(state): State<AppState>, Path(tier): Path<String>, Query(q): Flags) -> Json<Value> {
    let g = state.raft.shared.read().await;
    let mut by_ds: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    for rec in g.state.coordinator.load.serving().filter(|r| r.server.tier == tier) {
        for (seg, rep) in rec.replicas() {
            if let Replica::Loaded { size, .. } = rep {
                let e = by_ds
                    .entry(seg.datasource.to_string())
                    .or_default()
                    .entry(seg.key.interval().to_string())
                    .or_default();
                e.0 += size;
                e.1 += 1;
            }
        }
    }
    if flag(&q, "simple") {
        Json(json!(by_ds
            .into_iter()
            .map(|(ds, ivs)| (
                ds,
                ivs.into_iter()
                    .map(|(iv, (size, count))| (iv, json!({"size": size, "count": count})))
                    .collect::<BTreeMap<_, _>>()
            ))
            .collect::<BTreeMap<_, _>>()))
    } else {
        Json(json!(by_ds
            .into_iter()
            .map(|(ds, ivs)| (ds, ivs.into_keys().collect::<Vec<_>>()))
            .collect::<BTreeMap<_, _>>()))
    }
}

#[utoipa::path(
    get,
    path = "/druid/coordinator/v1/duties",
    tag = "coordinator",
    summary = "Each Coordinator duty's period and last run (start, duration, counts) on this leader",
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn duties(State(state): State<AppState>) -> Json<Value> {
    let settings = &state.config.overlord;
    let runs = state.duties.all();
    Json(json!(runs
        .into_iter()
        .map(|r| json!({
            "name": r.group,
            "dutyNames": [r.duty],
            "periodMillis": match r.group.as_str() {
                "HistoricalManagementDuties" => settings.coordinator_period.as_millis() as u64,
                "CompactSegmentsDuty" => settings.indexing_period.as_millis() as u64,
                _ => settings.kill.period.as_millis() as u64,
            },
            "lastRunStart": r.started,
            "firstRunStart": r.first_started,
            "lastRuntimeMillis": r.duration_ms,
            "runs": r.runs,
            "failedProposals": r.failed_proposals,
            "stats": r.stats,
        }))
        .collect::<Vec<_>>()))
}
