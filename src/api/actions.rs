//! `POST /druid/indexer/v1/action`: Druid's task actions, the peon's way to take locks and
//! publish segments (`{"task": <task JSON>, "action": <action JSON>}` -> `{"result": ...}`).
//!
//! The task is named by the `id` in its JSON and must be stored and active. Each action becomes
//! at most one command; a blocking `lockAcquire` proposes again only when a lock was released or
//! revoked (the state machine's release counter moved), never on a timer. A publish that breaks
//! a rule answers 200 with Druid's `SegmentPublishResult` (`success: false`, `errorMsg`,
//! `retryable`), as Druid does; malformed actions are 400.
//!
//! Only the task's own peon acts in its name: a request carries the token of the task's current
//! assignment ([`crate::tasks::token`]) or the cluster secret as `Authorization: Bearer`;
//! without either it is 401, and a token of another task or attempt is 403.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::tasks::read_body;
use super::{ApiError, AppState};
use crate::interval::Interval;
use crate::locks::{LockOutcome, LockRequest, LockType};
use crate::segments::segment::SegmentKey;
use crate::segments::{DataSegment, DataSegmentJson};
use crate::sm::{AllocateOutcome, AllocateRequest, Command, Publish, PublishKind, PublishOutcome, Reply};
use crate::tasks::token;

/// Druid's default `taskLockTimeout` (5 minutes).
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 300_000;

/// Longest a blocking `lockAcquire` waits, whatever `timeoutMs` or `taskLockTimeout` asks for:
/// a request never holds a connection open without limit.
pub const MAX_LOCK_WAIT_MS: u64 = 600_000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(action))
}

#[derive(Deserialize)]
struct Envelope {
    task: Box<RawValue>,
    action: Box<RawValue>,
}

#[derive(Deserialize)]
struct TaskRef {
    id: Option<String>,
    #[serde(default)]
    context: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct ActionType {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockAction {
    #[serde(default)]
    lock_type: Option<LockType>,
    interval: Interval,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    preferred_version: Option<String>,
}

#[derive(Deserialize)]
struct NukeAction {
    segments: Box<RawValue>,
}

#[derive(Deserialize)]
struct ReleaseAction {
    interval: Interval,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishAction {
    segments: Box<RawValue>,
    #[serde(default)]
    segments_to_be_overwritten: Option<Box<RawValue>>,
    #[serde(default)]
    start_metadata: Option<Value>,
    #[serde(default)]
    end_metadata: Option<Value>,
    #[serde(default)]
    fencing_tokens: Option<Vec<u64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsedAction {
    data_source: String,
    #[serde(default)]
    intervals: Option<Vec<Interval>>,
    #[serde(default)]
    interval: Option<Interval>,
    #[serde(default)]
    visibility: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UnusedAction {
    data_source: String,
    interval: Interval,
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(default)]
    limit: Option<usize>,
    /// Only segments marked unused at or before this instant (Druid's).
    #[serde(default)]
    max_used_status_last_updated_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllocateAction {
    data_source: String,
    timestamp: String,
    preferred_segment_granularity: Value,
    sequence_name: String,
    #[serde(default)]
    previous_segment_id: Option<String>,
    #[serde(default)]
    skip_segment_lineage_check: bool,
    #[serde(default, alias = "shardSpecFactory")]
    partial_shard_spec: Option<Value>,
    #[serde(default)]
    lock_granularity: Option<String>,
    #[serde(default)]
    task_lock_type: Option<LockType>,
    /// raftlord's: the supervisor task a sub-task allocates for (it is granted the same lock).
    #[serde(default)]
    supervisor_task_id: Option<String>,
    /// raftlord's: allocate in the lock's version, overwriting (a sub-task of an overwriting
    /// parallel task).
    #[serde(default)]
    use_lock_version: bool,
}

fn parse<'a, T: Deserialize<'a>>(raw: &'a RawValue, what: &str) -> Result<T, ApiError> {
    serde_json::from_str(raw.get()).map_err(|e| ApiError::BadRequest(format!("invalid {what} action: {e}")))
}

/// Who may act in a task's name: the holder of the cluster secret, or the peon of the task's
/// current assignment with its token ([`crate::tasks::token`]).
enum ActingAs {
    Secret,
    Token(String),
}

fn acting_as(state: &AppState, headers: &HeaderMap) -> Result<ActingAs, ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if token::is_token(g) => Ok(ActingAs::Token(g.to_string())),
        Some(g) if raftlord_raft::server::constant_time_eq(g.as_bytes(), state.config.cluster_secret.as_bytes()) => {
            Ok(ActingAs::Secret)
        }
        _ => Err(ApiError::Unauthorized(
            "task actions need the task's token (or the cluster secret) as 'Authorization: Bearer <token>'".into(),
        )),
    }
}

/// Checks that `who` may act for task `id`, whose current assignment was made at
/// `assigned_index`.
fn check_acting(state: &AppState, who: &ActingAs, id: &str, assigned_index: Option<u64>) -> Result<(), ApiError> {
    let ActingAs::Token(t) = who else { return Ok(()) };
    match token::verify(&state.config.cluster_secret, id, t) {
        Err(token::TokenError::Malformed) => Err(ApiError::Unauthorized(format!(
            "the task token is malformed; task [{id}]'s peon reads its token from its task directory"
        ))),
        Err(e) => Err(ApiError::Forbidden(e.to_string())),
        Ok(index) if Some(index) == assigned_index => Ok(()),
        Ok(_) => Err(ApiError::Forbidden(format!(
            "this token was issued for another attempt of task [{id}]; only the peon of its current attempt may act for it"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/druid/indexer/v1/action",
    tag = "tasks",
    summary = "A task action: locks, segment allocation, publishing (the task's token or the cluster secret)",
    request_body(content = serde_json::Value, content_type = "application/json"),
    responses((status = 200, description = "success", body = serde_json::Value), crate::api::openapi::Refused)
)]
async fn action(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let who = acting_as(&state, &headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let env: Envelope = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("expected {{\"task\": <task>, \"action\": <action>}}: {e}")))?;
    let task: TaskRef = serde_json::from_str(env.task.get())
        .map_err(|e| ApiError::BadRequest(format!("'task' must be the task's JSON: {e}")))?;
    let id = task
        .id
        .ok_or_else(|| ApiError::BadRequest("'task' has no 'id'".into()))?;
    let datasource = {
        let g = state.raft.shared.read().await;
        match g.state.tasks.get(&id) {
            Some(t) if t.is_active() => {
                check_acting(&state, &who, &id, t.assignment.as_ref().map(|a| a.index))?;
                t.spec.datasource.clone()
            }
            Some(_) => return Err(ApiError::BadRequest(format!("Task [{id}] is not active"))),
            None => return Err(ApiError::TaskNotFound { id, field: "result" }),
        }
    };
    let kind: ActionType = parse(&env.action, "task")?;
    let result = match kind.kind.as_str() {
        "lockAcquire" | "lockTryAcquire" => {
            let a: LockAction = parse(&env.action, &kind.kind)?;
            let request = LockRequest {
                lock_type: a.lock_type.unwrap_or(LockType::Exclusive),
                interval: a.interval,
                preferred_version: a.preferred_version,
            };
            let timeout = (kind.kind == "lockAcquire").then(|| {
                let from_context = task
                    .context
                    .as_ref()
                    .and_then(|c| c.get("taskLockTimeout"))
                    .and_then(Value::as_u64);
                let asked = if a.timeout_ms > 0 {
                    a.timeout_ms
                } else {
                    from_context.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS)
                };
                Duration::from_millis(asked.min(MAX_LOCK_WAIT_MS))
            });
            match acquire(&state, &id, request, timeout).await? {
                LockOutcome::Granted { lock, .. } => json!(lock),
                _ => Value::Null,
            }
        }
        "lockList" => {
            let g = state.raft.shared.read().await;
            json!(g.state.locks.locks_of(&id))
        }
        "lockRelease" => {
            let a: ReleaseAction = parse(&env.action, "lockRelease")?;
            match state
                .propose(Command::ReleaseLock {
                    task: id.clone(),
                    interval: a.interval,
                })
                .await?
            {
                Reply::LockReleased { count: 0 } => {
                    return Err(ApiError::BadRequest(format!(
                        "task [{id}] holds no lock on interval [{}]",
                        a.interval
                    )))
                }
                Reply::LockReleased { .. } => Value::Null,
                other => return Err(unexpected(other)),
            }
        }
        "segmentTransactionalInsert" | "segmentTransactionalAppend" | "segmentTransactionalReplace" => {
            let publish_kind = match kind.kind.as_str() {
                "segmentTransactionalInsert" => PublishKind::Insert,
                "segmentTransactionalAppend" => PublishKind::Append,
                _ => PublishKind::Replace,
            };
            let a: PublishAction = parse(&env.action, &kind.kind)?;
            publish(&state, &id, &datasource, publish_kind, a).await?
        }
        "retrieveUsedSegments" | "segmentListUsed" => {
            let a: UsedAction = parse(&env.action, &kind.kind)?;
            let intervals = a.intervals.or(a.interval.map(|i| vec![i])).unwrap_or_default();
            if intervals.is_empty() {
                return Err(ApiError::BadRequest("retrieveUsedSegments needs 'intervals'".into()));
            }
            let include_overshadowed = a
                .visibility
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("INCLUDING_OVERSHADOWED"));
            used_segments(&state, &a.data_source, &intervals, include_overshadowed).await
        }
        "retrieveUnusedSegments" | "segmentListUnused" => {
            let a: UnusedAction = parse(&env.action, &kind.kind)?;
            let max_updated = match &a.max_used_status_last_updated_time {
                Some(t) => Some(crate::interval::parse_instant(t).map_err(|e| {
                    ApiError::BadRequest(format!(
                        "maxUsedStatusLastUpdatedTime: [{t}] is not an ISO-8601 instant: {e}"
                    ))
                })?),
                None => None,
            };
            let g = state.raft.shared.view().await;
            let list: Vec<Value> = g
                .state
                .segments
                .datasource(&a.data_source)
                .into_iter()
                .flat_map(|d| d.overlapping(&a.interval).map(move |(k, s)| (d, k, s)))
                .filter(|(_, k, s)| !s.used && a.interval.contains(&k.interval()))
                .filter(|(_, _, s)| max_updated.is_none_or(|m| s.used_updated_ms as i64 <= m))
                .filter(|(_, k, _)| a.versions.as_ref().is_none_or(|v| v.iter().any(|v| **v == *k.version)))
                .take(a.limit.unwrap_or(usize::MAX))
                .map(|(_, k, s)| json!(DataSegmentJson::new(&a.data_source, k, s)))
                .collect();
            json!(list)
        }
        "markSegmentsAsUnused" => {
            let a: UnusedAction = parse(&env.action, "markSegmentsAsUnused")?;
            if a.data_source != datasource {
                return Err(ApiError::BadRequest(format!(
                    "task [{id}] of datasource [{datasource}] cannot mark segments of [{}]",
                    a.data_source
                )));
            }
            let reply = state
                .propose(Command::MarkSegments {
                    datasource,
                    filter: crate::segments::SegmentFilter::Interval {
                        interval: a.interval,
                        versions: a.versions,
                    },
                    used: false,
                })
                .await?;
            match reply {
                Reply::SegmentsMarked { count } => json!(count),
                other => return Err(unexpected(other)),
            }
        }
        "segmentAllocate" => {
            let a: AllocateAction = parse(&env.action, "segmentAllocate")?;
            allocate(&state, &id, &datasource, a).await?
        }
        "segmentNuke" => {
            let a: NukeAction = parse(&env.action, "segmentNuke")?;
            let segments = DataSegment::parse_list(&a.segments).map_err(ApiError::BadRequest)?;
            if let Some(other) = segments.iter().find(|s| s.datasource != datasource) {
                return Err(ApiError::BadRequest(format!(
                    "task [{id}] of datasource [{datasource}] cannot delete segment [{}]",
                    other.id()
                )));
            }
            let keys = segments.into_iter().map(|s| s.key).collect();
            match state
                .propose(Command::DeleteSegments {
                    task: id.clone(),
                    datasource,
                    keys,
                })
                .await?
            {
                Reply::SegmentsDeleted { refused: Some(why), .. } => return Err(ApiError::BadRequest(why)),
                Reply::SegmentsDeleted { .. } => Value::Null,
                other => return Err(unexpected(other)),
            }
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown task action type [{other}]; supported: lockAcquire, lockTryAcquire, lockList, lockRelease, \
                 segmentTransactionalInsert, segmentTransactionalAppend, segmentTransactionalReplace, \
                 segmentAllocate, segmentNuke, retrieveUsedSegments, retrieveUnusedSegments, markSegmentsAsUnused"
            )))
        }
    };
    Ok(Json(json!({ "result": result })).into_response())
}

async fn allocate(state: &AppState, task: &str, datasource: &str, a: AllocateAction) -> Result<Value, ApiError> {
    if a.data_source != datasource {
        return Err(ApiError::BadRequest(format!(
            "task [{task}] of datasource [{datasource}] cannot allocate segments of [{}]",
            a.data_source
        )));
    }
    let timestamp = crate::interval::parse_instant(&a.timestamp).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let granularity = crate::segments::granularity::Granularity::parse(&a.preferred_segment_granularity)
        .map_err(|e| ApiError::BadRequest(format!("invalid preferredSegmentGranularity: {e}")))?;
    if let Some(kind) = a
        .partial_shard_spec
        .as_ref()
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
    {
        if kind != "numbered" {
            return Err(ApiError::BadRequest(format!(
                "partialShardSpec type [{kind}] is not supported; raftlord allocates numbered segments"
            )));
        }
    }
    if a.lock_granularity.as_deref().is_some_and(|g| g != "TIME_CHUNK") {
        return Err(ApiError::BadRequest(
            "only lockGranularity TIME_CHUNK is supported (segment locks are deprecated in Druid)".into(),
        ));
    }
    let preferred_interval = granularity.bucket(timestamp).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the {} bucket holding timestamp [{}] reaches outside the years 0000 to 9999",
            "preferredSegmentGranularity", a.timestamp
        ))
    })?;
    let request = AllocateRequest {
        timestamp,
        preferred_interval,
        sequence_name: a.sequence_name,
        previous_segment_id: a.previous_segment_id.filter(|p| !p.is_empty()),
        skip_lineage_check: a.skip_segment_lineage_check,
        lock_type: a.task_lock_type.unwrap_or(LockType::Exclusive),
        supervisor_task_id: a.supervisor_task_id.filter(|s| !s.is_empty()),
        use_lock_version: a.use_lock_version,
    };
    match state
        .propose(Command::AllocateSegment {
            task: task.to_string(),
            request,
        })
        .await?
    {
        Reply::Allocated {
            outcome: AllocateOutcome::Allocated { segment },
        } => Ok(segment.id_with_shard_spec(datasource)),
        Reply::Allocated { .. } => Ok(Value::Null),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: Reply) -> ApiError {
    ApiError::Unavailable(format!("unexpected reply from the state machine: {reply:?}"))
}

/// Tries the lock; with a timeout, tries again each time a lock is released or revoked until it
/// is granted, revoked, or the time is up.
async fn acquire(
    state: &AppState,
    task: &str,
    request: LockRequest,
    timeout: Option<Duration>,
) -> Result<LockOutcome, ApiError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut applied = state.raft.shared.subscribe();
    loop {
        let seen = state.raft.shared.read().await.state.locks.release_seq();
        let reply = state
            .propose(Command::AcquireLock {
                task: task.to_string(),
                request: request.clone(),
            })
            .await?;
        let outcome = match reply {
            Reply::Lock { outcome } => outcome,
            other => return Err(unexpected(other)),
        };
        let Some(deadline) = deadline else {
            return Ok(outcome);
        };
        if !matches!(outcome, LockOutcome::Refused { .. }) {
            return Ok(outcome);
        }
        // Wait until a release or revocation is applied (or the task ends), or time runs out.
        loop {
            let changed = tokio::time::timeout_at(deadline, applied.changed()).await;
            match changed {
                Err(_) => return Ok(outcome),
                Ok(Err(_)) => return Err(ApiError::Unavailable("the node is shutting down".into())),
                Ok(Ok(())) => {}
            }
            let g = state.raft.shared.read().await;
            if !g.state.tasks.get(task).is_some_and(|t| t.is_active()) {
                return Ok(outcome);
            }
            if g.state.locks.release_seq() != seen {
                break;
            }
        }
    }
}

async fn publish(
    state: &AppState,
    task: &str,
    datasource: &str,
    kind: PublishKind,
    a: PublishAction,
) -> Result<Value, ApiError> {
    let segments = DataSegment::parse_list(&a.segments).map_err(ApiError::BadRequest)?;
    let overwritten: Vec<SegmentKey> = match &a.segments_to_be_overwritten {
        Some(raw) if raw.get() != "null" => DataSegment::parse_list(raw)
            .map_err(ApiError::BadRequest)?
            .into_iter()
            .map(|s| {
                if s.datasource == datasource {
                    Ok(s.key)
                } else {
                    Err(ApiError::BadRequest(format!(
                        "segmentsToBeOverwritten has segment [{}] of another datasource",
                        s.id()
                    )))
                }
            })
            .collect::<Result<_, _>>()?,
        _ => vec![],
    };
    for m in [&a.start_metadata, &a.end_metadata].into_iter().flatten() {
        crate::segments::metadata::validate(m).map_err(ApiError::BadRequest)?;
    }
    let echo: Vec<Value> = segments.iter().map(|s| json!(DataSegmentJson::of(s))).collect();
    let reply = state
        .propose(Command::PublishSegments {
            task: task.to_string(),
            publish: Publish {
                kind,
                segments,
                overwritten,
                start_metadata: a.start_metadata,
                end_metadata: a.end_metadata,
                fencing_tokens: a.fencing_tokens,
            },
        })
        .await?;
    Ok(match reply {
        Reply::Published {
            outcome: PublishOutcome::Published { inserted },
        } => {
            let segments: Vec<&Value> = echo
                .iter()
                .filter(|s| inserted.iter().any(|i| Some(i.as_str()) == s["identifier"].as_str()))
                .collect();
            json!({"segments": segments, "success": true, "errorMsg": null, "retryable": false})
        }
        Reply::Published {
            outcome: PublishOutcome::Rejected { message, retryable },
        } => json!({"segments": [], "success": false, "errorMsg": message, "retryable": retryable}),
        Reply::Published {
            outcome: PublishOutcome::Invalid { message },
        } => return Err(ApiError::BadRequest(message)),
        other => return Err(unexpected(other)),
    })
}

/// Used segments of `ds` overlapping any of `intervals`, without the overshadowed ones unless
/// asked, as Druid's `DataSegment` JSON.
async fn used_segments(state: &AppState, ds: &str, intervals: &[Interval], include_overshadowed: bool) -> Value {
    let g = state.raft.shared.view().await;
    let found = g
        .state
        .segments
        .datasource(ds)
        .map(|d| d.used_in(intervals, include_overshadowed));
    json!(found
        .unwrap_or_default()
        .into_iter()
        .map(|(k, s)| json!(DataSegmentJson::new(ds, k, s)))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    //! Druid's JSON for every action this endpoint takes, as Druid's peons send it, parsed into
    //! what the handler reads.

    use serde_json::json;

    use super::*;

    const DAY: &str = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z";

    fn raw(v: Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    fn day() -> Interval {
        Interval::parse(DAY).unwrap()
    }

    fn segment() -> Value {
        json!({"dataSource": "wiki", "interval": DAY, "version": "v1", "loadSpec": {"type": "local", "path": "/x"},
               "dimensions": "a,b", "metrics": "count", "shardSpec": {"type": "numbered", "partitionNum": 0, "partitions": 1},
               "binaryVersion": 9, "size": 10, "identifier": "wiki_2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z_v1"})
    }

    #[test]
    fn lock_actions() {
        let r = raw(json!({"type": "lockAcquire", "lockType": "EXCLUSIVE", "interval": DAY, "timeoutMs": 60000}));
        let a: LockAction = parse(&r, "lockAcquire").unwrap();
        assert_eq!(
            (a.lock_type, a.interval, a.timeout_ms),
            (Some(LockType::Exclusive), day(), 60000)
        );
        let r = raw(json!({"type": "lockTryAcquire", "lockType": "SHARED", "interval": DAY}));
        let a: LockAction = parse(&r, "lockTryAcquire").unwrap();
        assert_eq!((a.lock_type, a.timeout_ms), (Some(LockType::Shared), 0));
        let r = raw(json!({"type": "lockRelease", "interval": DAY}));
        assert_eq!(parse::<ReleaseAction>(&r, "lockRelease").unwrap().interval, day());
        let r = raw(json!({"type": "lockList"}));
        assert_eq!(parse::<ActionType>(&r, "task").unwrap().kind, "lockList");
    }

    #[test]
    fn segment_allocate() {
        let r = raw(
            json!({"type": "segmentAllocate", "dataSource": "wiki", "timestamp": "2024-01-01T05:00:00.000Z",
            "queryGranularity": {"type": "none"}, "preferredSegmentGranularity": "HOUR",
            "sequenceName": "index_kafka_wiki_0", "previousSegmentId": null, "skipSegmentLineageCheck": true,
            "shardSpecFactory": {"type": "numbered"}, "lockGranularity": "TIME_CHUNK", "taskLockType": "APPEND"}),
        );
        let a: AllocateAction = parse(&r, "segmentAllocate").unwrap();
        assert_eq!(
            (a.data_source.as_str(), a.timestamp.as_str(), a.sequence_name.as_str()),
            ("wiki", "2024-01-01T05:00:00.000Z", "index_kafka_wiki_0")
        );
        assert_eq!((a.previous_segment_id, a.skip_segment_lineage_check), (None, true));
        assert_eq!(a.preferred_segment_granularity, json!("HOUR"));
        assert_eq!(a.partial_shard_spec, Some(json!({"type": "numbered"})));
        assert_eq!(
            (a.lock_granularity.as_deref(), a.task_lock_type),
            (Some("TIME_CHUNK"), Some(LockType::Append))
        );
    }

    #[test]
    fn publish_actions() {
        let start = json!({"type": "kafka", "partitions": {"type": "start", "stream": "wiki", "partitionSequenceNumberMap": {"0": 5}}});
        let end = json!({"type": "kafka", "partitions": {"type": "end", "stream": "wiki", "partitionSequenceNumberMap": {"0": 9}}});
        for kind in [
            "segmentTransactionalInsert",
            "segmentTransactionalAppend",
            "segmentTransactionalReplace",
        ] {
            let r = raw(
                json!({"type": kind, "segments": [segment()], "segmentsToBeOverwritten": null,
                "startMetadata": start, "endMetadata": end, "dataSource": "wiki"}),
            );
            let a: PublishAction = parse(&r, kind).unwrap();
            let segments = DataSegment::parse_list(&a.segments).unwrap();
            assert_eq!(segments[0].id(), segment()["identifier"].as_str().unwrap());
            assert_eq!(
                (a.start_metadata, a.end_metadata),
                (Some(start.clone()), Some(end.clone()))
            );
            assert!(a.segments_to_be_overwritten.is_none_or(|r| r.get() == "null"));
        }
    }

    #[test]
    fn retrieval_and_mark_actions() {
        let r = raw(
            json!({"type": "retrieveUsedSegments", "dataSource": "wiki", "intervals": [DAY], "visibility": "ONLY_VISIBLE"}),
        );
        let a: UsedAction = parse(&r, "retrieveUsedSegments").unwrap();
        assert_eq!(
            (a.data_source.as_str(), a.intervals, a.visibility.as_deref()),
            ("wiki", Some(vec![day()]), Some("ONLY_VISIBLE"))
        );
        let r = raw(
            json!({"type": "retrieveUnusedSegments", "dataSource": "wiki", "interval": DAY, "versions": ["v1"],
            "limit": 10, "maxUsedStatusLastUpdatedTime": null}),
        );
        let a: UnusedAction = parse(&r, "retrieveUnusedSegments").unwrap();
        assert_eq!(
            (a.interval, a.versions, a.limit),
            (day(), Some(vec!["v1".to_string()]), Some(10))
        );
        let r = raw(json!({"type": "markSegmentsAsUnused", "dataSource": "wiki", "interval": DAY}));
        let a: UnusedAction = parse(&r, "markSegmentsAsUnused").unwrap();
        assert_eq!((a.data_source.as_str(), a.interval), ("wiki", day()));
        let bad = raw(json!({"type": "retrieveUsedSegments", "intervals": [DAY]}));
        assert!(
            parse::<UsedAction>(&bad, "retrieveUsedSegments").is_err(),
            "dataSource is required"
        );
    }
}
