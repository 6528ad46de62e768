//! The Historical <-> leader protocol: the wire shapes and the leader's handlers.
//!
//! As with workers, the replicated state holds what each Historical should do, and the
//! Historical long-polls for it, so a leader change loses nothing:
//!
//! - `GET /internal/historicals/sync?host=H&hash=X&timeout=MS` (long poll, on the leader): the
//!   segments this Historical is asked to load (with their load specs and sizes) and to drop.
//!   Loaded segments are not listed: a Historical keeps what it has unless asked to drop it.
//!   Answered at once when the view differs from the one the Historical last saw (`hash`),
//!   else when it changes or the timeout passes.
//! - `POST /internal/historicals/report` (on the leader): the Historical's identity and its
//!   outcomes (loaded, failed with the reason, dropped); with `full`, everything its cache
//!   holds (sent on start, and again whenever the leader asks, after it was found lost). The
//!   leader registers it when needed and turns the outcomes that change anything into
//!   `ReportReplicas` commands.
//!
//! Both count as heartbeats. Both need the cluster secret.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::{ApiError, AppState};
use crate::coordinator::load::{Historical, Outcome, Replica, ReplicaReport, SegmentRef};
use crate::leader::Heartbeats;
use crate::sm::validate::MAX_REPLICA_REQUESTS;
use crate::sm::Command;

/// A segment to load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToLoad {
    pub segment: SegmentRef,
    pub load_spec: Box<RawValue>,
    pub size: u64,
}

/// The answer to a sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    /// The Historical is known and serving; when not, it must send a full report.
    pub registered: bool,
    /// Applied index of the state the view was read from.
    pub index: u64,
    pub hash: u64,
    pub load: Vec<ToLoad>,
    pub drop: Vec<SegmentRef>,
}

/// What a Historical reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoricalReport {
    pub server: Historical,
    pub reports: Vec<ReplicaReport>,
    /// `reports` lists every segment the cache holds.
    #[serde(default)]
    pub full: bool,
}

/// The answer to a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportAnswer {
    /// Applied index at which the outcomes are stored.
    pub index: u64,
    /// The leader did not know this Historical as serving: send a full report.
    pub full_needed: bool,
}

#[derive(Deserialize)]
struct SyncQuery {
    host: String,
    #[serde(default)]
    hash: u64,
    timeout: i64,
}

/// The protocol's routes, served by the leader behind the cluster secret.
pub fn internal_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync)).routes(routes!(report))
}

async fn view(state: &AppState, host: &str) -> SyncView {
    let g = state.raft.shared.read().await;
    let index = g.last_applied.map_or(0, |l| l.index);
    let record = g.state.coordinator.load.get(host).filter(|r| !r.lost);
    let mut load = Vec::new();
    let mut drop = Vec::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    record.is_some().hash(&mut h);
    if let Some(r) = record {
        for (seg, rep) in r.replicas() {
            match rep {
                Replica::Load { size, .. } => {
                    let spec = g
                        .state
                        .segments
                        .datasource(&seg.datasource)
                        .and_then(|d| d.get(&seg.key))
                        .map(|s| s.load_spec.0.clone());
                    if let Some(load_spec) = spec {
                        (0u8, seg).hash(&mut h);
                        load.push(ToLoad {
                            segment: seg.clone(),
                            load_spec,
                            size: *size,
                        });
                    }
                }
                Replica::Drop { .. } => {
                    (1u8, seg).hash(&mut h);
                    drop.push(seg.clone());
                }
                _ => {}
            }
        }
    }
    SyncView {
        registered: record.is_some(),
        index,
        hash: h.finish(),
        load,
        drop,
    }
}

/// Long poll: answers when the Historical's view differs from what it last saw, or at the
/// timeout.
#[utoipa::path(
    get,
    path = "/internal/historicals/sync",
    tag = "internal",
    summary = "A Historical's loads and drops (long poll; cluster secret)",
    params(("host" = String, Query), ("hash" = Option<u64>, Query), ("timeout" = u64, Query)),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn sync(State(state): State<AppState>, Query(q): Query<SyncQuery>) -> Result<Json<SyncView>, ApiError> {
    crate::api::long_poll(&state, q.timeout, |expired| {
        let (state, q) = (&state, &q);
        async move {
            state.heartbeats.beat(&Heartbeats::historical_key(&q.host));
            let v = view(state, &q.host).await;
            (v.hash != q.hash || expired).then_some(Json(v))
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/internal/historicals/report",
    tag = "internal",
    summary = "A Historical's outcomes (cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn report(
    State(state): State<AppState>,
    Json(r): Json<HistoricalReport>,
) -> Result<Json<ReportAnswer>, ApiError> {
    r.server.check().map_err(ApiError::BadRequest)?;
    let host = r.server.host.clone();
    // Alive until answered: the answer waits on commits, which a busy log can make slow.
    let _alive = state.heartbeats.in_flight(&Heartbeats::historical_key(&host));
    let (known, mut needed) = {
        let g = state.raft.shared.read().await;
        let rec = g.state.coordinator.load.get(&host).filter(|rec| !rec.lost);
        let known = rec.is_some_and(|rec| rec.server == r.server);
        let mut needed: Vec<ReplicaReport> = r
            .reports
            .iter()
            .filter(|x| rec.is_none_or(|rec| changes(rec.replica(&x.segment), &x.outcome)))
            .cloned()
            .collect();
        // A full report that does not list a segment the state counts as loaded: it is gone.
        if r.full {
            if let Some(rec) = rec {
                let listed: HashSet<&SegmentRef> = r.reports.iter().map(|x| &x.segment).collect();
                needed.extend(
                    rec.replicas()
                        .iter()
                        .filter(|(s, rep)| matches!(rep, Replica::Loaded { .. }) && !listed.contains(s))
                        .map(|(s, _)| ReplicaReport {
                            segment: s.clone(),
                            outcome: Outcome::Dropped,
                        }),
                );
            }
        }
        (known, needed)
    };
    let was_serving = {
        let g = state.raft.shared.read().await;
        g.state.coordinator.load.get(&host).is_some_and(|rec| !rec.lost)
    };
    if !known {
        state
            .propose(Command::RegisterHistorical {
                server: r.server.clone(),
            })
            .await?;
    }
    // A Historical the leader had lost (or never knew) must say everything it holds.
    let full_needed = !was_serving && !r.full;
    if full_needed {
        needed.clear();
    }
    for chunk in needed.chunks(MAX_REPLICA_REQUESTS) {
        state
            .propose(Command::ReportReplicas {
                host: host.clone(),
                reports: chunk.to_vec(),
                full: false,
            })
            .await?;
    }
    let index = state.raft.shared.read().await.last_applied.map_or(0, |l| l.index);
    Ok(Json(ReportAnswer { index, full_needed }))
}

/// Whether an outcome changes a replica the state holds (see `LoadTable::apply_report`).
fn changes(replica: Option<&Replica>, outcome: &Outcome) -> bool {
    matches!(
        (outcome, replica),
        (
            Outcome::Loaded,
            None | Some(Replica::Load { .. } | Replica::Failed { .. })
        ) | (Outcome::Failed { .. }, Some(Replica::Load { .. }))
            | (Outcome::Dropped, Some(Replica::Drop { .. } | Replica::Loaded { .. }))
    )
}
