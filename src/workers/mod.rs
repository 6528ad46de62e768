//! Workers (Druid's MiddleManagers) as the replicated state sees them, and the worker behaviour
//! config that chooses where tasks go.
//!
//! A worker registers through a Raft command and is afterwards *enabled*, *disabled* (keeps its
//! tasks, gets no new ones) or *lost* (stopped heartbeating: its tasks failed, its slots freed).
//! Heartbeats never go through Raft: the leader keeps them in memory and only turns a missed
//! deadline into a `WorkerLost` command.
//!
//! - [`select`]: Druid's worker select strategies and the assigner's pure planning function;
//! - this module: the worker table, its `apply_*` functions, Druid's `ImmutableWorkerInfo` shape
//!   and the `WorkerBehaviorConfig` with its audit trail.

pub mod select;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::clock::iso;
use crate::tasks::{RunnerState, TaskLocation, TaskTable};

/// Druid's default worker category.
pub const DEFAULT_CATEGORY: &str = "_default_worker_category";

/// Druid's `Worker`: a MiddleManager's identity and size. `host` is `host:port` and is the
/// worker's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub scheme: String,
    pub host: String,
    pub ip: String,
    pub capacity: u32,
    pub version: String,
    pub category: String,
}

impl Worker {
    /// Base URL of the worker's HTTP port.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// One worker as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    pub worker: Worker,
    pub disabled: bool,
    /// Stopped heartbeating; its tasks were failed. Registering again clears it.
    pub lost: bool,
    pub registered_ms: u64,
    pub last_completed_ms: Option<u64>,
    /// Tasks holding a slot on this worker.
    pub tasks: OrdSet<String>,
}

impl WorkerRecord {
    /// Eligible for new tasks.
    pub fn usable(&self) -> bool {
        !self.disabled && !self.lost
    }

    /// Slots in use: the required capacity of every task holding one.
    pub fn used(&self, tasks: &TaskTable) -> u32 {
        self.tasks
            .iter()
            .filter_map(|id| tasks.get(id))
            .map(|t| t.spec.required_capacity())
            .fold(0u32, u32::saturating_add)
    }

    /// Druid's `ImmutableWorkerInfo`, the shape of `GET /druid/indexer/v1/workers` rows. A
    /// disabled worker shows version `""`, as Druid marks it.
    pub fn info(&self, tasks: &TaskTable) -> serde_json::Value {
        let running: Vec<&String> = self.tasks.iter().collect();
        let groups: std::collections::BTreeSet<&str> = self
            .tasks
            .iter()
            .filter_map(|id| tasks.get(id))
            .map(|t| t.spec.availability_group())
            .collect();
        let mut worker = serde_json::to_value(&self.worker).unwrap_or_default();
        if self.disabled {
            worker["version"] = "".into();
        }
        serde_json::json!({
            "worker": worker,
            "currCapacityUsed": self.used(tasks),
            "currParallelIndexCapacityUsed": 0,
            "availabilityGroups": groups,
            "runningTasks": running,
            "lastCompletedTaskTime": self.last_completed_ms.map(iso),
            "blacklistedUntil": null,
        })
    }
}

/// Druid's `WorkerBehaviorConfig` (`{"type": "default", "selectStrategy": ..., "autoScaler": null}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "default", rename_all = "camelCase")]
pub struct WorkerBehaviorConfig {
    #[serde(default)]
    pub select_strategy: select::SelectStrategy,
    /// Autoscaling is not supported; only `null` is accepted.
    #[serde(default)]
    pub auto_scaler: Option<serde_json::Value>,
}

/// Who changed a config and why (Druid's `AuditInfo`, from the `X-Druid-Author` and
/// `X-Druid-Comment` headers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditInfo {
    pub author: String,
    pub comment: String,
    pub ip: String,
}

impl AuditEntry {
    /// A change of `key` (of `entry_type`) to `value`, made at `time_ms` by `audit`'s author.
    pub fn new(key: &str, entry_type: &str, value: &impl Serialize, audit: AuditInfo, time_ms: u64) -> AuditEntry {
        AuditEntry {
            key: key.to_string(),
            entry_type: entry_type.to_string(),
            audit_info: audit,
            payload: serde_json::to_string(value).unwrap_or_default(),
            audit_time: iso(time_ms),
        }
    }
}

/// Removes the entries of a history made before `before_ms` (`time`: an entry's ISO time;
/// one that does not read is kept); returns how many.
pub fn prune_before<T>(history: &mut Vec<T>, before_ms: u64, time: impl Fn(&T) -> &str) -> usize {
    let before = history.len();
    let cut = before_ms.min(i64::MAX as u64) as i64;
    history.retain(|e| crate::interval::parse_instant(time(e)).unwrap_or(i64::MAX) >= cut);
    before - history.len()
}

/// One change of a config, as Druid's `AuditEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub key: String,
    #[serde(rename = "type")]
    pub entry_type: String,
    pub audit_info: AuditInfo,
    /// The new value, as JSON text.
    pub payload: String,
    pub audit_time: String,
}

/// Every worker, by host, plus the behaviour config and its history.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTable {
    workers: OrdMap<String, WorkerRecord>,
    #[serde(default)]
    pub config: WorkerBehaviorConfig,
    #[serde(default)]
    history: Vec<AuditEntry>,
}

/// A worker's report about one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskUpdate {
    pub id: String,
    /// `RUNNING` (the peon runs) or the final `SUCCESS` / `FAILED`.
    pub status: crate::tasks::TaskState,
    #[serde(default)]
    pub location: Option<TaskLocation>,
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub error_msg: Option<String>,
}

/// What the state did with a worker's reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdatesApplied {
    /// Final reports now stored (or already stored): the worker can forget these tasks.
    pub finished: Vec<String>,
    /// Tasks this worker reported but does not hold: it must stop them.
    pub not_assigned: Vec<String>,
}

/// See [`WorkerTable::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// The report changes the state: propose it.
    Apply,
    /// Its final outcome is already stored: the worker may forget the task.
    Finished,
    /// The worker does not hold this task: it must stop it.
    NotAssigned,
    /// Nothing to do.
    Unchanged,
}

/// Why an assignment was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    pub task: String,
    pub reason: String,
}

impl WorkerTable {
    pub fn get(&self, host: &str) -> Option<&WorkerRecord> {
        self.workers.get(host)
    }

    pub fn all(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn history(&self) -> &[AuditEntry] {
        &self.history
    }

    /// Removes the config history made before `before_ms`; returns how many entries.
    pub fn apply_prune_history(&mut self, before_ms: u64) -> usize {
        prune_before(&mut self.history, before_ms, |e| &e.audit_time)
    }

    /// Records a worker joining (or coming back, or changing its size). Keeps its tasks;
    /// clears `lost`. Returns whether anything changed.
    pub fn apply_register(&mut self, time_ms: u64, worker: Worker) -> bool {
        match self.workers.get_mut(&worker.host) {
            Some(r) if r.worker == worker && !r.lost => false,
            Some(r) => {
                r.worker = worker;
                r.lost = false;
                r.registered_ms = time_ms;
                true
            }
            None => {
                self.workers.insert(
                    worker.host.clone(),
                    WorkerRecord {
                        worker,
                        disabled: false,
                        lost: false,
                        registered_ms: time_ms,
                        last_completed_ms: None,
                        tasks: OrdSet::new(),
                    },
                );
                true
            }
        }
    }

    /// Enables or disables a worker; `None` if it is unknown.
    pub fn apply_set_enabled(&mut self, host: &str, enabled: bool) -> Option<bool> {
        let r = self.workers.get_mut(host)?;
        let changed = r.disabled == enabled;
        r.disabled = !enabled;
        Some(changed)
    }

    /// Marks a worker lost: its active tasks fail with `reason`, every slot is freed.
    /// Returns the tasks failed, or `None` if the worker is unknown or already lost.
    pub fn apply_lost(&mut self, tasks: &mut TaskTable, time_ms: u64, host: &str, reason: &str) -> Option<Vec<String>> {
        let r = self.workers.get_mut(host).filter(|r| !r.lost)?;
        r.lost = true;
        let held: Vec<String> = r.tasks.iter().cloned().collect();
        r.tasks.clear();
        Some(tasks.apply_worker_lost(time_ms, &held, host, reason))
    }

    /// Assigns tasks to workers, each checked again against the current state: the task must
    /// be waiting, the worker usable, with room and without a task of the same availability
    /// group. Returns the ones refused.
    pub fn apply_assign(
        &mut self,
        tasks: &mut TaskTable,
        index: u64,
        time_ms: u64,
        assignments: &[(String, String)],
    ) -> Vec<Refused> {
        let mut refused = Vec::new();
        for (task_id, host) in assignments {
            let reason = self.check_assign(tasks, task_id, host);
            let reason = reason.or_else(|| {
                (!tasks.apply_assign(index, time_ms, task_id, host)).then(|| "the task is not waiting".to_string())
            });
            match reason {
                Some(reason) => refused.push(Refused {
                    task: task_id.clone(),
                    reason,
                }),
                None => {
                    if let Some(r) = self.workers.get_mut(host) {
                        r.tasks.insert(task_id.clone());
                    }
                }
            }
        }
        refused
    }

    fn check_assign(&self, tasks: &TaskTable, task_id: &str, host: &str) -> Option<String> {
        let Some(task) = tasks.get(task_id) else {
            return Some("no such task".into());
        };
        let Some(r) = self.workers.get(host) else {
            return Some(format!("no worker {host}"));
        };
        if !r.usable() {
            return Some(format!("worker {host} is disabled or lost"));
        }
        let free = r.worker.capacity.saturating_sub(r.used(tasks));
        if free < task.spec.required_capacity() {
            return Some(format!("worker {host} has no free slot"));
        }
        let group = task.spec.availability_group();
        let group_taken = r
            .tasks
            .iter()
            .filter_map(|id| tasks.get(id))
            .any(|t| t.spec.availability_group() == group);
        group_taken.then(|| format!("worker {host} already runs a task of availability group {group}"))
    }

    /// Takes back an assignment the worker did not accept in time.
    pub fn apply_unassign(&mut self, tasks: &mut TaskTable, task_id: &str, host: &str, assigned_index: u64) -> bool {
        let held = tasks
            .get(task_id)
            .and_then(|t| t.assignment.as_ref())
            .is_some_and(|a| a.worker == host);
        if !held || !tasks.apply_unassign(task_id, assigned_index) {
            return false;
        }
        if let Some(r) = self.workers.get_mut(host) {
            r.tasks.remove(task_id);
        }
        true
    }

    /// Fails `task_id` if its assignment to `host` made at `assigned_index` was never started,
    /// freeing the slot (see [`TaskTable::apply_fail_unstarted`]).
    pub fn apply_fail_unstarted(
        &mut self,
        tasks: &mut TaskTable,
        time_ms: u64,
        task_id: &str,
        host: &str,
        assigned_index: u64,
        reason: &str,
    ) -> bool {
        let held = tasks
            .get(task_id)
            .and_then(|t| t.assignment.as_ref())
            .is_some_and(|a| a.worker == host);
        if !held || !tasks.apply_fail_unstarted(time_ms, task_id, assigned_index, reason) {
            return false;
        }
        if let Some(r) = self.workers.get_mut(host) {
            r.tasks.remove(task_id);
        }
        true
    }

    /// What a worker's report about one task calls for, judged against the state without
    /// changing it: the leader only proposes the reports that change something.
    pub fn classify(&self, tasks: &TaskTable, host: &str, u: &TaskUpdate) -> Classified {
        let holds = self.workers.get(host).is_some_and(|r| r.tasks.contains(&u.id));
        let Some(task) = tasks.get(&u.id) else {
            return Classified::NotAssigned;
        };
        if !holds {
            let done_here = task.assignment.as_ref().is_some_and(|a| a.worker == host && a.released);
            return if done_here && u.status.is_complete() {
                Classified::Finished
            } else {
                Classified::NotAssigned
            };
        }
        if u.status.is_complete() {
            return Classified::Apply;
        }
        let location = u.location.clone().unwrap_or_else(TaskLocation::unknown);
        let stale = task.runner() != RunnerState::Running || task.location != location;
        if task.is_active() && stale {
            Classified::Apply
        } else {
            Classified::Unchanged
        }
    }

    /// Applies a worker's reports. A report about a task the worker does not hold changes
    /// nothing and is answered with "not assigned" so that the worker stops it.
    pub fn apply_updates(
        &mut self,
        tasks: &mut TaskTable,
        time_ms: u64,
        host: &str,
        updates: &[TaskUpdate],
    ) -> UpdatesApplied {
        let mut out = UpdatesApplied::default();
        for u in updates {
            match self.classify(tasks, host, u) {
                Classified::Finished => out.finished.push(u.id.clone()),
                Classified::NotAssigned => out.not_assigned.push(u.id.clone()),
                Classified::Unchanged => {}
                Classified::Apply if u.status.is_complete() => {
                    tasks.apply_finished(&u.id, host, u.status, u.duration, u.error_msg.clone());
                    if let Some(r) = self.workers.get_mut(host) {
                        r.tasks.remove(&u.id);
                        r.last_completed_ms = Some(time_ms);
                    }
                    out.finished.push(u.id.clone());
                }
                Classified::Apply => {
                    let location = u.location.clone().unwrap_or_else(TaskLocation::unknown);
                    tasks.apply_running(&u.id, host, &location);
                }
            }
        }
        out
    }

    /// Replaces the behaviour config and records who did it.
    pub fn apply_set_config(&mut self, time_ms: u64, config: WorkerBehaviorConfig, audit: AuditInfo) {
        let entry = AuditEntry::new("worker.config", "worker.config", &config, audit, time_ms);
        self.config = config;
        self.history.push(entry);
    }

    /// Workers with at least one free slot, counting capacity in use.
    pub fn capacity(&self, tasks: &TaskTable) -> (u64, u64) {
        let live = self.workers.values().filter(|r| !r.lost);
        live.fold((0, 0), |(cap, used), r| {
            (
                cap.saturating_add(r.worker.capacity as u64),
                used.saturating_add(r.used(tasks) as u64),
            )
        })
    }
}
