//! A peon's client for Druid's task actions (`POST /druid/indexer/v1/action`), the only way a
//! peon changes cluster state: locks, segment allocation, publishing; and for the task API a
//! parallel task uses to run its sub-tasks (submit, status, reports, shutdown).
//!
//! The worker names the cluster's nodes in [`API_ENV`]; a follower redirects to the leader
//! (307, which keeps the method and body). A request that fails to connect, times out or gets a
//! 503 is retried on the next node with a short back-off for up to [`RETRY_FOR`], which rides
//! out a leader election. Actions are idempotent at the state machine where they need to be:
//! a lock already held is granted again, and a publish repeated after its commit answers that
//! the segments exist.

use std::time::Duration;

use serde_json::{json, Value};

use raftlord_ingest::IngestSpec;

use crate::interval::Interval;

/// Environment variable with the comma-separated URLs of nodes that serve the task API.
pub const API_ENV: &str = "RAFTLORD_PEON_API";

/// This peon's task token, read from its task directory at start ([`set_token`]).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Reads the task token the worker left in `dir` (if any): every later request of this peon
/// carries it as `Authorization: Bearer <token>`.
pub fn set_token(dir: &std::path::Path) {
    if let Ok(t) = std::fs::read_to_string(dir.join(crate::tasks::token::TOKEN_FILE)) {
        let _ = TOKEN.set(t.trim().to_string());
    }
}

/// How long an action is retried through failovers before the task fails.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// One allocated segment.
pub struct Allocated {
    pub id: String,
    pub interval: Interval,
    pub version: String,
    pub partition_num: u32,
    pub shard_spec: Value,
}

pub struct TaskActions {
    urls: Vec<String>,
    task: Value,
    http: reqwest::Client,
}

impl TaskActions {
    /// A client for `task`, reaching the nodes the worker named in [`API_ENV`].
    pub fn from_env(task: Value) -> Result<TaskActions, String> {
        let urls: Vec<String> = std::env::var(API_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(format!("the worker gave this peon no task API ({API_ENV})"));
        }
        let http = raftlord_raft::tls::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(660))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(TaskActions { urls, task, http })
    }

    /// Sends one action; returns its `result`.
    pub async fn submit(&self, action: Value) -> Result<Value, String> {
        let kind = action["type"].as_str().unwrap_or("action").to_string();
        let body = json!({"task": self.task, "action": action}).to_string();
        let v = self.call(&kind, "/druid/indexer/v1/action", Some(body)).await?;
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Submits a task (`POST /druid/indexer/v1/task`).
    pub async fn submit_task(&self, task: &Value) -> Result<(), String> {
        self.call("task submission", "/druid/indexer/v1/task", Some(task.to_string()))
            .await
            .map(|_| ())
    }

    /// A task's status (`statusCode`, `errorMsg`, ...).
    pub async fn task_status(&self, id: &str) -> Result<Value, String> {
        let v = self
            .call("task status", &format!("/druid/indexer/v1/task/{id}/status"), None)
            .await?;
        Ok(v["status"].clone())
    }

    /// Task slots of every worker of the cluster.
    pub async fn total_worker_capacity(&self) -> Result<u64, String> {
        let v = self
            .call("worker capacity", "/druid/indexer/v1/totalWorkerCapacity", None)
            .await?;
        v["currentClusterCapacity"]
            .as_u64()
            .ok_or_else(|| format!("worker capacity: unexpected answer {v}"))
    }

    /// A task's reports.
    pub async fn task_reports(&self, id: &str) -> Result<Value, String> {
        self.call("task reports", &format!("/druid/indexer/v1/task/{id}/reports"), None)
            .await
    }

    /// Asks for a task to be shut down.
    pub async fn shutdown_task(&self, id: &str) -> Result<(), String> {
        self.call(
            "task shutdown",
            &format!("/druid/indexer/v1/task/{id}/shutdown"),
            Some(String::new()),
        )
        .await
        .map(|_| ())
    }

    /// One request to the task API (POST with `body`, else GET), retried through failovers;
    /// returns the JSON answer.
    async fn call(&self, kind: &str, path: &str, body: Option<String>) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut attempt = 0usize;
        // Where a follower's 307 pointed: followed by hand, because a client following a
        // redirect to another host drops the `Authorization` header the token travels in.
        let mut redirected: Option<String> = None;
        loop {
            let target = match redirected.take() {
                Some(location) => location,
                None => {
                    let url = &self.urls[attempt % self.urls.len()];
                    attempt += 1;
                    format!("{url}{path}")
                }
            };
            let mut request = match &body {
                Some(b) => self
                    .http
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(b.clone()),
                None => self.http.get(&target),
            };
            if let Some(token) = TOKEN.get() {
                request = request.bearer_auth(token);
            }
            let sent = request.send().await;
            let retry_why = match sent {
                Ok(r) if r.status().is_success() => {
                    return r.json().await.map_err(|e| format!("{kind}: unreadable answer: {e}"));
                }
                Ok(r) if r.status().as_u16() == 307 => {
                    let location = r.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok());
                    match location {
                        Some(l) if target != l && tokio::time::Instant::now() < deadline => {
                            redirected = Some(l.to_string());
                            continue;
                        }
                        _ => format!("307 without a usable Location from {target}"),
                    }
                }
                Ok(r) if r.status().as_u16() == 503 => {
                    format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!("{kind} was refused ({status}): {text}"));
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{kind} failed for {} s: {retry_why}", RETRY_FOR.as_secs()));
            }
            let pause = Duration::from_millis((50 * attempt as u64).min(1000));
            tokio::time::sleep(pause).await;
        }
    }

    /// Takes an EXCLUSIVE time-chunk lock on `interval`, waiting for it as Druid's
    /// `lockAcquire` does; returns the lock's version.
    pub async fn lock(&self, interval: &Interval) -> Result<String, String> {
        let r = self
            .submit(json!({"type": "lockAcquire", "lockType": "EXCLUSIVE", "interval": interval.to_string()}))
            .await?;
        if r.get("revoked").and_then(Value::as_bool) == Some(true) {
            return Err(format!("the lock on {interval} was revoked"));
        }
        r.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("could not lock {interval} (another task holds it, or the wait timed out)"))
    }

    /// Allocates the next partition of `interval` for appending; for a sub-task, `supervisor`
    /// names its parallel task (granted the same lock) and whether it overwrites (the
    /// allocation is then in the lock's version).
    pub async fn allocate(
        &self,
        spec: &IngestSpec,
        interval: &Interval,
        previous: Option<&str>,
        supervisor: Option<(&str, bool)>,
    ) -> Result<Allocated, String> {
        let task_id = self.task["id"].as_str().unwrap_or_default();
        let r = self
            .submit(json!({
                "supervisorTaskId": supervisor.map(|s| s.0),
                "useLockVersion": supervisor.is_some_and(|s| s.1),
                "type": "segmentAllocate",
                "dataSource": spec.datasource,
                "timestamp": crate::interval::iso(interval.start),
                "queryGranularity": spec.query_granularity_json,
                "preferredSegmentGranularity": spec.segment_granularity_json,
                "sequenceName": format!("{task_id}_{interval}"),
                "previousSegmentId": previous,
                "skipSegmentLineageCheck": false,
                "shardSpecFactory": {"type": "numbered"},
                "lockGranularity": "TIME_CHUNK",
                "taskLockType": "EXCLUSIVE",
            }))
            .await?;
        if r.is_null() {
            return Err(format!(
                "no segment could be allocated in {interval} (its lock is held by another task)"
            ));
        }
        let interval_text = r["interval"].as_str().ok_or("allocation without an interval")?;
        let allocated = Interval::parse(interval_text).map_err(|e| e.to_string())?;
        let version = r["version"].as_str().ok_or("allocation without a version")?.to_string();
        let partition_num = r["shardSpec"]["partitionNum"].as_u64().unwrap_or(0) as u32;
        let mut id = format!(
            "{}_{}_{}_{}",
            spec.datasource,
            crate::interval::iso(allocated.start),
            crate::interval::iso(allocated.end),
            version
        );
        if partition_num > 0 {
            id.push_str(&format!("_{partition_num}"));
        }
        Ok(Allocated {
            id,
            interval: allocated,
            version,
            partition_num,
            shard_spec: r["shardSpec"].clone(),
        })
    }

    /// Publishes the segments in one transaction.
    pub async fn publish(&self, segments: Vec<Value>) -> Result<(), String> {
        let r = self
            .submit(json!({"type": "segmentTransactionalInsert", "segments": segments}))
            .await?;
        if r.get("success").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(format!(
                "publishing was refused: {}",
                r.get("errorMsg").and_then(Value::as_str).unwrap_or("no reason given")
            ))
        }
    }
}
