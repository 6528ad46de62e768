//! The worker <-> leader protocol, and the client a worker uses to reach the leader.
//!
//! Druid's HTTP remote task runner pushes assignments to each MiddleManager and long-polls it
//! for task announcements. In raftlord assignments are replicated state, so the direction of
//! the long poll turns around and nothing is lost when the leader changes:
//!
//! - `GET /internal/workers/sync?host=H&hash=X&timeout=MS` (long poll, on the leader): the
//!   worker's assignments. Answered at once when the view differs from the one the worker last
//!   saw (`hash`), else when it changes or the timeout passes. `resetCounter` is set when the
//!   answer comes from a different leader term than the worker's last one: the worker then
//!   re-reports everything it has (Druid's counter reset).
//! - `POST /internal/workers/report` (on the leader): the worker's identity and every task it
//!   knows (running, or finished and not yet acknowledged). The leader registers the worker when
//!   needed and turns changes into one `ReportTasks` command; it answers which final reports are
//!   stored (the worker may forget them) and which tasks are not this worker's (it must stop
//!   them), with the applied index the answer holds at. A sync view read at an older index can
//!   still list a task the worker has since forgotten; the worker compares the two indexes
//!   and ignores such a view for that task.
//!
//! Both requests count as heartbeats. Both need the cluster secret.

use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::workers::{TaskUpdate, UpdatesApplied, Worker};

/// One task in a worker's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedTask {
    pub id: String,
    /// The worker has already reported this task once (its peon was started).
    pub accepted: bool,
    /// The task is complete (a shutdown request): stop its peon.
    pub stop: bool,
    /// The task spec, sent while the task still has to be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// The peon's task token ([`crate::tasks::token`]), sent with the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The answer to a sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResponse {
    /// Leader term the view comes from.
    pub term: u64,
    /// Applied index of the state the view was read from.
    pub index: u64,
    pub hash: u64,
    pub reset_counter: bool,
    /// The worker is unknown to the state: it must report (register) first.
    pub registered: bool,
    pub disabled: bool,
    pub assignments: Vec<AssignedTask>,
}

/// What a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub worker: Worker,
    pub tasks: Vec<TaskUpdate>,
}

/// The answer to a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportResponse {
    #[serde(flatten)]
    pub applied: UpdatesApplied,
    /// Applied index at which the answer holds: a sync view computed before it may still
    /// list the tasks in `finished`.
    pub index: u64,
}

/// Errors talking to the leader. All are retried by the caller after a pause.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("no node answered as leader")]
    NoLeader,
}

/// Reaches the leader through any of a list of nodes, following Druid-style redirects itself
/// (so the cluster secret is never dropped the way an HTTP client drops credentials on a
/// redirect to another host).
pub struct LeaderClient {
    http: reqwest::Client,
    seeds: Vec<String>,
    secret: String,
    leader: Mutex<Option<String>>,
    next_seed: Mutex<usize>,
}

impl LeaderClient {
    pub fn new(seeds: Vec<String>, secret: String) -> Self {
        let http = raftlord_raft::tls::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        LeaderClient {
            http,
            seeds,
            secret,
            leader: Mutex::new(None),
            next_seed: Mutex::new(0),
        }
    }

    fn base(&self) -> String {
        if let Some(l) = self.leader.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return l;
        }
        let mut i = self.next_seed.lock().unwrap_or_else(|p| p.into_inner());
        let seed = self.seeds[*i % self.seeds.len().max(1)].clone();
        *i += 1;
        seed
    }

    fn forget_leader(&self) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A long poll (`GET path`, which asks the leader to wait up to `wait`), given up when
    /// `cancel` fires: then `None`.
    pub async fn long_poll<T: DeserializeOwned>(
        &self,
        path: &str,
        wait: Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Option<Result<T, LeaderError>> {
        tokio::select! {
            _ = cancel.cancelled() => None,
            r = self.call::<T>(path, None, wait + Duration::from_secs(5)) => Some(r),
        }
    }

    /// Sends a request to the leader (`body` for a POST, none for a GET), following at most a
    /// few redirects. `timeout` bounds the whole request.
    pub async fn call<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<T, LeaderError> {
        let mut base = self.base();
        for _ in 0..4 {
            let url = format!("{}{path_and_query}", base.trim_end_matches('/'));
            let req = match body {
                Some(b) => self
                    .http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_vec()),
                None => self.http.get(&url),
            };
            let resp = req
                .bearer_auth(&self.secret)
                .timeout(timeout)
                .send()
                .await
                .map_err(|source| {
                    self.forget_leader();
                    LeaderError::Unreachable {
                        url: url.clone(),
                        source,
                    }
                })?;
            let status = resp.status();
            if status == StatusCode::TEMPORARY_REDIRECT {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| reqwest::Url::parse(l).ok());
                let Some(location) = location else {
                    break;
                };
                base = location.origin().ascii_serialization();
                *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(base.clone());
                continue;
            }
            if !status.is_success() {
                self.forget_leader();
                let body = resp.text().await.unwrap_or_default();
                return Err(LeaderError::Status { url, status, body });
            }
            *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(base.clone());
            return resp
                .json::<T>()
                .await
                .map_err(|source| LeaderError::Unreachable { url, source });
        }
        self.forget_leader();
        Err(LeaderError::NoLeader)
    }
}
