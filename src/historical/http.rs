//! The Historical's own routes: Druid's `/druid/historical/v1/loadstatus` and `/readiness`, and
//! `/druid/historical/v1/segments`, each cached segment with its state (`LOADING`, `LOADED`,
//! `FAILED` with the reason, `DROPPING`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{HistoricalService, Local};

pub fn routes(historical: HistoricalService) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(loadstatus))
        .routes(routes!(readiness))
        .routes(routes!(segments))
        .with_state(historical)
}

#[utoipa::path(
    get,
    path = "/druid/historical/v1/loadstatus",
    tag = "historical",
    summary = "Whether the segment cache was announced to the cluster",
    responses((status = 200, description = "success", body = serde_json::Value))
)]
async fn loadstatus(State(h): State<HistoricalService>) -> Json<serde_json::Value> {
    Json(json!({ "cacheInitialized": h.initialized() }))
}

#[utoipa::path(
    get,
    path = "/druid/historical/v1/readiness",
    tag = "historical",
    summary = "200 once the segment cache was announced, else 503",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready yet"))
)]
async fn readiness(State(h): State<HistoricalService>) -> Response {
    if h.initialized() {
        StatusCode::OK.into_response()
    } else {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

#[utoipa::path(
    get,
    path = "/druid/historical/v1/segments",
    tag = "historical",
    summary = "Every segment this Historical holds or is loading, with its state",
    responses((status = 200, description = "success", body = serde_json::Value))
)]
async fn segments(State(h): State<HistoricalService>) -> Json<serde_json::Value> {
    let rows: Vec<serde_json::Value> = h
        .segments()
        .into_iter()
        .map(|(seg, local, size)| {
            let mut row = json!({
                "id": seg.id(),
                "dataSource": &*seg.datasource,
                "size": size,
            });
            match local {
                Local::Failed { reason, .. } => {
                    row["state"] = "FAILED".into();
                    row["reason"] = reason.into();
                }
                other => row["state"] = serde_json::to_value(other).unwrap_or_default()["state"].clone(),
            }
            row
        })
        .collect();
    Json(json!(rows))
}
