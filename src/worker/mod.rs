//! The MiddleManager: a worker that runs the tasks the leader assigns to it, each in a forked
//! peon process.
//!
//! Druid's `WorkerTaskManager` keeps a notices queue (run, status); here two loops do the same
//! job against the replicated state, both level-triggered:
//!
//! - **sync**: long-polls the leader for this worker's assignments ([`protocol`]) and makes the
//!   peons match them: start what is assigned and not yet started, stop what was shut down or
//!   is no longer this worker's.
//! - **report**: whenever a peon starts or ends, and at least every heartbeat interval, sends
//!   the full list of its tasks to the leader (which doubles as the heartbeat), then forgets the
//!   finished tasks the leader has stored and stops any the leader says are not its own.
//!
//! - [`runner`]: starting, watching, stopping and re-adopting peons;
//! - [`launcher`]: the small process that forks peons for the runner;
//! - [`peon`]: the peon code, run in each forked peon (or by `raftlord peon TASK_DIR`);
//! - [`protocol`]: the wire shapes and the client that finds the leader;
//! - [`http`]: the worker's own routes (`/druid/worker/v1/...`).

pub mod deep_storage;
pub mod http;
pub mod index_task;
pub mod kill_task;
pub mod launcher;
pub mod parallel_task;
pub mod peon;
pub mod protocol;
pub mod runner;
pub mod task_actions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::workers::Worker;
use protocol::{LeaderClient, Report, ReportResponse, SyncResponse};
use runner::PeonRunner;

/// How a worker talks to the leader.
#[derive(Debug, Clone)]
pub struct WorkerTiming {
    /// Longest a sync request waits on the leader for a change.
    pub sync_timeout: Duration,
    /// Longest time between two reports (the heartbeat).
    pub heartbeat: Duration,
}

impl Default for WorkerTiming {
    fn default() -> Self {
        WorkerTiming {
            sync_timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// A running worker.
#[derive(Clone)]
pub struct WorkerService {
    pub worker: Worker,
    pub runner: PeonRunner,
    client: Arc<LeaderClient>,
    timing: WorkerTiming,
    /// Last `disabled` flag seen from the leader.
    disabled: Arc<AtomicBool>,
    /// Tasks forgotten after the leader stored their outcome, with the applied index that
    /// answer held at; a view read before that index is stale for them.
    forgotten: Arc<Mutex<HashMap<String, u64>>>,
}

impl WorkerService {
    pub fn new(worker: Worker, runner: PeonRunner, client: LeaderClient, timing: WorkerTiming) -> Self {
        WorkerService {
            worker,
            runner,
            client: Arc::new(client),
            timing,
            disabled: Arc::new(AtomicBool::new(false)),
            forgotten: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether the leader last said this worker is disabled.
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &LeaderClient {
        &self.client
    }

    /// Runs the sync and report loops until `cancel`. Peons keep running afterwards.
    pub async fn run(self, cancel: CancellationToken) {
        info!(worker = %self.worker.host, capacity = self.worker.capacity, "worker started");
        let report = tokio::spawn(self.clone().report_loop(cancel.clone()));
        self.sync_loop(cancel).await;
        let _ = report.await;
    }

    async fn sync_loop(self, cancel: CancellationToken) {
        let mut hash = 0u64;
        let mut term = 0u64;
        loop {
            let path = format!(
                "/internal/workers/sync?host={}&hash={hash}&term={term}&timeout={}",
                urlencode(&self.worker.host),
                self.timing.sync_timeout.as_millis()
            );
            let Some(result) = self
                .client
                .long_poll::<SyncResponse>(&path, self.timing.sync_timeout, &cancel)
                .await
            else {
                return;
            };
            match result {
                Ok(view) => {
                    hash = view.hash;
                    term = view.term;
                    self.disabled.store(view.disabled, Ordering::Relaxed);
                    if view.registered {
                        self.apply_view(&view);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "worker sync failed; retrying");
                    hash = 0;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }

    /// Makes the peons match the leader's view.
    fn apply_view(&self, view: &SyncResponse) {
        let assigned: std::collections::BTreeSet<&str> = view.assignments.iter().map(|a| a.id.as_str()).collect();
        // Held through the whole pass: the report loop records a stored outcome and forgets
        // its task under this lock, so a task cannot be forgotten between reading the stale
        // set and looking the task up (it would look like a task whose directory is gone).
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        // A view at or after the index an outcome was stored at reflects it: forget those.
        forgotten.retain(|_, stored_at| *stored_at > view.index);
        for a in &view.assignments {
            if forgotten.contains_key(&a.id) {
                // Finished here and stored after this view was read.
                continue;
            }
            if a.stop {
                self.runner.stop(&a.id, "the task was shut down");
            } else if !self.runner.knows(&a.id) {
                match (&a.payload, a.accepted) {
                    (Some(payload), false) => self.runner.start(&a.id, payload.get(), a.token.as_deref()),
                    // Accepted earlier, but this worker has no trace of it (its task directory
                    // is gone): it cannot be running here.
                    _ => self.runner.finish_without_peon(
                        &a.id,
                        "the worker has no record of this task (its task directory is gone)",
                    ),
                }
            }
        }
        drop(forgotten);
        for id in self.runner.running() {
            if !assigned.contains(id.as_str()) {
                self.runner.stop(&id, "the task is no longer assigned to this worker");
            }
        }
    }

    async fn report_loop(self, cancel: CancellationToken) {
        let mut changes = self.runner.subscribe();
        loop {
            // After a failed report (no leader yet, or a leader change), try again soon rather
            // than a heartbeat later: registration and outcomes wait on it.
            let mut wait = self.timing.heartbeat;
            let report = Report {
                worker: self.worker.clone(),
                tasks: self.runner.report(),
            };
            match serde_json::to_vec(&report) {
                Ok(body) => match self
                    .client
                    .call::<ReportResponse>("/internal/workers/report", Some(&body), Duration::from_secs(15))
                    .await
                {
                    Ok(resp) => {
                        let mut f = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
                        for id in &resp.applied.finished {
                            f.insert(id.clone(), resp.index);
                            self.runner.forget(id);
                        }
                        drop(f);
                        for id in &resp.applied.not_assigned {
                            // Stop it if it runs; once stopped, forget it: it is not ours.
                            self.runner
                                .stop(id, "the leader says the task is not assigned to this worker");
                            self.runner.forget(id);
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "worker report failed; retrying");
                        wait = wait.min(RETRY_AFTER);
                    }
                },
                Err(e) => warn!(error = %e, "cannot encode the worker report"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// How soon a failed sync or report is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Percent-encodes a value for a URL (hosts are `host:port`; IPv6 hosts have brackets).
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
