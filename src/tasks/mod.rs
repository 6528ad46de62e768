//! Tasks: the replicated task table and Druid's task shapes.
//!
//! A task enters as a Druid task spec (any JSON object with a `type`), is stored with its
//! payload verbatim, and lives as *active* (Druid stores it with status `RUNNING`) until it
//! completes with `SUCCESS` or `FAILED`. Where an active task is in its run is the runner state
//! (`WAITING` until a worker takes it, then `PENDING`, `RUNNING`), shown as `runnerStatusCode`.
//!
//! - [`spec`]: validating a submitted spec and Druid's id rules;
//! - [`query`]: the filters of `GET /druid/indexer/v1/tasks`;
//! - this module: the table, its `apply_*` functions and the JSON shapes Druid clients read.

pub mod idempotency;
pub mod lock_needs;
pub mod query;
pub mod spec;
pub mod token;

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::iso;

/// Druid's `TaskState`: what is stored as a task's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Running,
    Success,
    Failed,
}

impl TaskState {
    pub fn is_complete(self) -> bool {
        self != TaskState::Running
    }
}

/// Druid's `RunnerTaskState`: where an active task is in the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunnerState {
    Waiting,
    Pending,
    Running,
    None,
}

/// Druid's `TaskLocation`; unknown is `{null, -1, -1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLocation {
    pub host: Option<String>,
    pub port: i32,
    pub tls_port: i32,
}

impl TaskLocation {
    pub fn unknown() -> Self {
        TaskLocation {
            host: None,
            port: -1,
            tls_port: -1,
        }
    }
}

/// One task as stored in the replicated state: its submitted spec and its lifecycle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub spec: NewTask,
    pub created_ms: u64,
    pub state: TaskState,
    /// Run time in milliseconds once complete; -1 while active.
    pub duration_ms: i64,
    pub error_msg: Option<String>,
    pub location: TaskLocation,
    /// Raft log index of the entry that created the task.
    pub created_index: u64,
    /// The worker the task was given to, once the assigner has placed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
}

/// A task's place on a worker. The task holds a slot there until the worker reports that its
/// peon is gone (`released`), even after the task completed by a shutdown request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// The worker's `host` (`host:port`).
    pub worker: String,
    /// Raft index of the entry that assigned it: identifies this assignment.
    pub index: u64,
    /// Leader time of the assignment.
    pub assigned_ms: u64,
    /// The worker has reported the task (its peon started).
    pub accepted: bool,
    /// The worker no longer runs the task; the slot is free.
    pub released: bool,
}

/// Order in which waiting tasks are offered to workers: higher priority first, then oldest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WaitKey {
    pub neg_priority: i64,
    pub created_index: u64,
    pub id: String,
}

impl Task {
    pub fn is_active(&self) -> bool {
        self.state == TaskState::Running
    }

    /// Where an active task is in its run, from its assignment: no worker yet (`WAITING`),
    /// given to a worker that has not started it (`PENDING`), started (`RUNNING`); `NONE` once
    /// complete.
    pub fn runner(&self) -> RunnerState {
        match (&self.assignment, self.is_active()) {
            (_, false) => RunnerState::None,
            (None, true) => RunnerState::Waiting,
            (Some(a), true) if a.accepted => RunnerState::Running,
            (Some(_), true) => RunnerState::Pending,
        }
    }

    /// Druid's `TaskStatusPlus`, the shape of `/tasks` rows and `/task/{id}/status`.
    pub fn status_plus(&self) -> TaskStatusPlus {
        TaskStatusPlus {
            id: self.spec.id.clone(),
            group_id: self.spec.group_id.clone(),
            task_type: self.spec.task_type.clone(),
            created_time: iso(self.created_ms),
            queue_insertion_time: iso(self.created_ms),
            status_code: self.state,
            status: self.state,
            runner_status_code: self.runner(),
            duration: self.duration_ms,
            location: self.location.clone(),
            data_source: self.spec.datasource.clone(),
            error_msg: self.error_msg.clone(),
        }
    }

    /// Druid's `TaskStatus`, the shape of `POST /taskStatus` values.
    pub fn status(&self) -> TaskStatus {
        TaskStatus {
            id: self.spec.id.clone(),
            status: self.state,
            duration: self.duration_ms,
            error_msg: self.error_msg.clone(),
            location: self.location.clone(),
        }
    }
}

/// Druid's `TaskStatusPlus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusPlus {
    pub id: String,
    pub group_id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub created_time: String,
    pub queue_insertion_time: String,
    pub status_code: TaskState,
    /// Deprecated duplicate of `statusCode`, still read by older clients.
    pub status: TaskState,
    pub runner_status_code: RunnerState,
    pub duration: i64,
    pub location: TaskLocation,
    pub data_source: String,
    pub error_msg: Option<String>,
}

/// Druid's `TaskStatus`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub id: String,
    pub status: TaskState,
    pub duration: i64,
    pub error_msg: Option<String>,
    pub location: TaskLocation,
}

/// A validated task spec, as submitted: what [`TaskTable::apply_submit`] stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewTask {
    pub id: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub group_id: String,
    pub datasource: String,
    pub priority: i32,
    /// The submitted spec, byte for byte (with `id` filled in when it was generated).
    pub payload: Box<RawValue>,
    /// Druid's `TaskResource`: which slots the task needs on a worker.
    #[serde(default, skip_serializing_if = "TaskResource::is_default")]
    pub resource: TaskResource,
    /// When the task is ready to run (Druid's `isReady`).
    #[serde(default, skip_serializing_if = "Readiness::is_default")]
    pub readiness: Readiness,
    /// Locks the task must hold before it runs (what Druid's `isReady` acquires), taken
    /// together when it is assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<crate::locks::LockRequest>,
}

impl NewTask {
    /// The availability group: a worker never runs two tasks of one group. Druid's default is
    /// the task id.
    pub fn availability_group(&self) -> &str {
        self.resource.availability_group.as_deref().unwrap_or(&self.id)
    }

    /// Worker slots the task occupies (at least one).
    pub fn required_capacity(&self) -> u32 {
        self.resource.required_capacity.unwrap_or(1).max(1)
    }
}

/// Druid's `TaskResource` (`{"availabilityGroup", "requiredCapacity"}`), as submitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_capacity: Option<u32>,
}

impl TaskResource {
    fn is_default(&self) -> bool {
        *self == TaskResource::default()
    }
}

/// What a task's readiness check answers (Druid's `isReady`; the `noop` task's
/// `isReadyResult` and `isReadyTime` choose it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Not ready until this many milliseconds after submission.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after_ms: u64,
    #[serde(default, skip_serializing_if = "ReadyResult::is_yes")]
    pub result: ReadyResult,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Readiness {
    fn is_default(&self) -> bool {
        *self == Readiness::default()
    }
}

/// Druid's `NoopTask.IsReadyResult`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReadyResult {
    /// Ready (after `after_ms`).
    #[default]
    Yes,
    /// Never ready: the task waits until it is shut down.
    No,
    /// The readiness check fails: the task ends FAILED.
    Exception,
}

impl ReadyResult {
    fn is_yes(&self) -> bool {
        *self == ReadyResult::Yes
    }
}

impl PartialEq for NewTask {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.id,
            &self.task_type,
            &self.group_id,
            &self.datasource,
            self.priority,
            self.payload.get(),
            &self.resource,
            &self.readiness,
            &self.locks,
        ) == (
            &o.id,
            &o.task_type,
            &o.group_id,
            &o.datasource,
            o.priority,
            o.payload.get(),
            &o.resource,
            &o.readiness,
            &o.locks,
        )
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum SubmitRejected {
    AlreadyExists,
    QueueFull { limit: u64 },
}

/// Outcome of a shutdown request for one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ShutdownOutcome {
    /// The task was active and is now FAILED.
    Stopped,
    /// The task was already complete; nothing changed.
    AlreadyComplete,
    /// No such task; nothing changed.
    Unknown,
}

/// Druid keeps at most this many characters of a failed task's `errorMsg` (the full error
/// belongs in the task's log and report).
pub const MAX_ERROR_MSG_CHARS: usize = 100;

/// Cuts an error message to Druid's limit, marking the cut with `...`.
pub fn truncate_error(msg: &str) -> String {
    if msg.chars().count() <= MAX_ERROR_MSG_CHARS {
        return msg.to_string();
    }
    let mut cut: String = msg.chars().take(MAX_ERROR_MSG_CHARS - 3).collect();
    cut.push_str("...");
    cut
}

/// Druid's message for a task stopped by `POST /task/{id}/shutdown`.
pub const SHUTDOWN_BY_USER: &str = "Shutdown request from user";

/// All tasks, by id, plus the set of active ones.
///
/// Persistent (copy-on-write) maps: cloning the table is O(1), so a snapshot takes a
/// point-in-time copy under the state lock and encodes it after releasing the lock, without
/// holding up writes for time proportional to the table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "StoredTaskTable")]
pub struct TaskTable {
    /// Each task behind its own `Arc`: a map node then holds small entries, so an insert
    /// shifts and a copy-on-write clones a few pointers, not whole tasks with their strings.
    tasks: OrdMap<String, Arc<Task>>,
    active: OrdSet<String>,
    /// Active tasks without a worker, in the order the assigner offers them: an index
    /// derived from `tasks`, rebuilt when a snapshot is read rather than stored.
    #[serde(skip)]
    waiting: OrdSet<WaitKey>,
    /// The waiting tasks whose readiness is not plain "ready now" (derived, like `waiting`):
    /// the ones the assigner must look at even when no worker has room.
    #[serde(skip)]
    gated: OrdSet<WaitKey>,
    /// Tasks completed by the command being applied, drained by the state machine to release
    /// their locks in the same command.
    #[serde(skip)]
    completed: Vec<String>,
}

/// The stored form of [`TaskTable`]: the tables, without derived indexes.
#[derive(Deserialize)]
struct StoredTaskTable {
    tasks: OrdMap<String, Arc<Task>>,
    active: OrdSet<String>,
}

impl From<StoredTaskTable> for TaskTable {
    fn from(s: StoredTaskTable) -> Self {
        let mut table = TaskTable {
            tasks: s.tasks,
            active: s.active,
            waiting: OrdSet::new(),
            gated: OrdSet::new(),
            completed: Vec::new(),
        };
        let unassigned: Vec<(WaitKey, bool)> = table
            .active()
            .filter(|t| t.assignment.is_none())
            .map(|t| (TaskTable::wait_key(t), TaskTable::is_gated(t)))
            .collect();
        for (key, gated) in unassigned {
            table.add_waiting(key, gated);
        }
        table
    }
}

impl TaskTable {
    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(|t| &**t)
    }

    /// The task, to change it; copied first if a snapshot still shares it.
    fn get_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.tasks.get_mut(id).map(Arc::make_mut)
    }

    /// The tasks completed since the last call (by any `apply_*`).
    pub fn take_completed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.completed)
    }

    fn complete(&mut self, id: &str) {
        if self.active.remove(id).is_some() {
            self.completed.push(id.to_string());
        }
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Active tasks, in id order.
    pub fn active(&self) -> impl Iterator<Item = &Task> {
        self.active.iter().filter_map(|id| self.get(id))
    }

    /// Every task, in id order.
    pub fn all(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }

    /// Active tasks that no worker has, highest priority first, then oldest first.
    pub fn waiting_in_order(&self) -> impl Iterator<Item = &Task> {
        self.waiting.iter().filter_map(|k| self.get(&k.id))
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.len()
    }

    /// Waiting tasks whose readiness is gated (not ready at once, or never), in offer order.
    pub fn gated_in_order(&self) -> impl Iterator<Item = &Task> {
        self.gated.iter().filter_map(|k| self.get(&k.id))
    }

    fn is_gated(task: &Task) -> bool {
        task.spec.readiness != Readiness::default()
    }

    fn add_waiting(&mut self, key: WaitKey, gated: bool) {
        if gated {
            self.gated.insert(key.clone());
        }
        self.waiting.insert(key);
    }

    fn remove_waiting(&mut self, key: &WaitKey) {
        self.gated.remove(key);
        self.waiting.remove(key);
    }

    fn wait_key(task: &Task) -> WaitKey {
        WaitKey {
            neg_priority: -(task.spec.priority as i64),
            created_index: task.created_index,
            id: task.spec.id.clone(),
        }
    }

    /// Gives a waiting task to `worker`; false (and no change) if it is not waiting.
    pub fn apply_assign(&mut self, index: u64, time_ms: u64, id: &str, worker: &str) -> bool {
        let Some(task) = self.get_mut(id) else {
            return false;
        };
        if !task.is_active() || task.assignment.is_some() {
            return false;
        }
        task.assignment = Some(Assignment {
            worker: worker.to_string(),
            index,
            assigned_ms: time_ms,
            accepted: false,
            released: false,
        });
        let key = Self::wait_key(task);
        self.remove_waiting(&key);
        true
    }

    /// Takes a not yet accepted assignment back: the task waits again. False if the task is
    /// not pending under the assignment made at `assigned_index`.
    pub fn apply_unassign(&mut self, id: &str, assigned_index: u64) -> bool {
        let Some(task) = self.get_mut(id) else {
            return false;
        };
        let pending = matches!(&task.assignment, Some(a) if a.index == assigned_index && !a.accepted && !a.released);
        if !task.is_active() || !pending {
            return false;
        }
        task.assignment = None;
        task.location = TaskLocation::unknown();
        let (key, gated) = (Self::wait_key(task), Self::is_gated(task));
        self.add_waiting(key, gated);
        true
    }

    /// Fails a task whose assignment made at `assigned_index` was never started (accepted) by
    /// its worker, releasing the slot. False if the task is not pending under that assignment.
    /// The task is not placed again: its first worker might still start a peon, and a task must
    /// never run twice (Druid fails a task its worker does not start in time, too).
    pub fn apply_fail_unstarted(&mut self, time_ms: u64, id: &str, assigned_index: u64, reason: &str) -> bool {
        let Some(task) = self.get_mut(id) else {
            return false;
        };
        let pending = matches!(&task.assignment, Some(a) if a.index == assigned_index && !a.accepted && !a.released);
        if !task.is_active() || !pending {
            return false;
        }
        if let Some(a) = task.assignment.as_mut() {
            a.released = true;
        }
        task.state = TaskState::Failed;
        task.duration_ms = time_ms.saturating_sub(task.created_ms) as i64;
        task.error_msg = Some(truncate_error(reason));
        self.complete(id);
        true
    }

    /// The worker runs the task at `location`. False if the task is not active on `worker`.
    pub fn apply_running(&mut self, id: &str, worker: &str, location: &TaskLocation) -> bool {
        let Some(task) = self.get_mut(id) else {
            return false;
        };
        if !task.is_active() {
            return false;
        }
        let Some(a) = task.assignment.as_mut().filter(|a| a.worker == worker && !a.released) else {
            return false;
        };
        let changed = !a.accepted || task.location != *location;
        a.accepted = true;
        task.location = location.clone();
        changed
    }

    /// The worker's peon for the task is gone: frees the slot and, when the task is still
    /// active, completes it with the reported outcome. A task already complete (stopped by a
    /// shutdown request) keeps its status, as in Druid. Returns whether the task was completed
    /// by this report, or `None` when it does not hold a slot on `worker`.
    pub fn apply_finished(
        &mut self,
        id: &str,
        worker: &str,
        state: TaskState,
        duration_ms: i64,
        error_msg: Option<String>,
    ) -> Option<bool> {
        let task = self.get_mut(id)?;
        let a = task.assignment.as_mut().filter(|a| a.worker == worker && !a.released)?;
        a.released = true;
        a.accepted = true;
        if !task.is_active() {
            return Some(false);
        }
        let (state, error_msg) = match state {
            TaskState::Running => (
                TaskState::Failed,
                Some("the worker reported an unfinished task as finished".into()),
            ),
            s => (s, error_msg),
        };
        task.state = state;
        task.duration_ms = duration_ms.max(0);
        task.error_msg = error_msg.map(|m| truncate_error(&m));
        self.complete(id);
        Some(true)
    }

    /// Releases the slot of every task in `ids` held on `worker` (a lost worker), failing the
    /// active ones with `reason`. Returns the ids failed.
    pub fn apply_worker_lost(&mut self, time_ms: u64, ids: &[String], worker: &str, reason: &str) -> Vec<String> {
        let mut failed = Vec::new();
        for id in ids {
            let Some(task) = self.get_mut(id.as_str()) else {
                continue;
            };
            let Some(a) = task.assignment.as_mut().filter(|a| a.worker == worker && !a.released) else {
                continue;
            };
            a.released = true;
            if task.is_active() {
                task.state = TaskState::Failed;
                task.duration_ms = time_ms.saturating_sub(task.created_ms) as i64;
                task.error_msg = Some(truncate_error(reason));
                self.complete(id.as_str());
                failed.push(id.clone());
            }
        }
        failed
    }

    /// Removes up to `max` complete tasks that ended (creation plus duration) before
    /// `before_ms`; returns how many. Active tasks are never removed.
    pub fn apply_prune_completed(&mut self, before_ms: u64, max: usize) -> usize {
        let ended = |t: &Task| t.created_ms.saturating_add(t.duration_ms.max(0) as u64);
        let old: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.state.is_complete() && ended(t) < before_ms)
            .take(max)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            self.tasks.remove(id);
        }
        old.len()
    }

    /// Stores a new task as active and waiting, unless its id exists or the queue is full.
    pub fn apply_submit(
        &mut self,
        index: u64,
        time_ms: u64,
        task: NewTask,
        max_active: Option<u64>,
    ) -> Result<(), SubmitRejected> {
        if self.tasks.contains_key(&task.id) {
            return Err(SubmitRejected::AlreadyExists);
        }
        if let Some(limit) = max_active {
            if self.active.len() as u64 >= limit {
                return Err(SubmitRejected::QueueFull { limit });
            }
        }
        let id = task.id.clone();
        let stored = Task {
            spec: task,
            created_ms: time_ms,
            state: TaskState::Running,
            duration_ms: -1,
            error_msg: None,
            location: TaskLocation::unknown(),
            created_index: index,
            assignment: None,
        };
        self.active.insert(id.clone());
        self.add_waiting(Self::wait_key(&stored), Self::is_gated(&stored));
        self.tasks.insert(id, Arc::new(stored));
        Ok(())
    }

    /// Fails an active task with `reason`; completed and unknown tasks are left alone.
    pub fn apply_shutdown(&mut self, time_ms: u64, id: &str, reason: &str) -> ShutdownOutcome {
        let Some(task) = self.get_mut(id) else {
            return ShutdownOutcome::Unknown;
        };
        if !task.is_active() {
            return ShutdownOutcome::AlreadyComplete;
        }
        task.state = TaskState::Failed;
        task.duration_ms = time_ms.saturating_sub(task.created_ms) as i64;
        task.error_msg = Some(truncate_error(reason));
        let key = Self::wait_key(task);
        self.complete(id);
        self.remove_waiting(&key);
        ShutdownOutcome::Stopped
    }

    /// Fails every active task of `datasource`; returns the ids stopped.
    pub fn apply_shutdown_datasource(&mut self, time_ms: u64, datasource: &str, reason: &str) -> Vec<String> {
        let ids: Vec<String> = self
            .active()
            .filter(|t| t.spec.datasource == datasource)
            .map(|t| t.spec.id.clone())
            .collect();
        for id in &ids {
            self.apply_shutdown(time_ms, id, reason);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn new_task(id: &str, ds: &str) -> NewTask {
        NewTask {
            id: id.into(),
            task_type: "noop".into(),
            group_id: id.into(),
            datasource: ds.into(),
            priority: 0,
            payload: RawValue::from_string(format!(r#"{{"type":"noop","id":"{id}"}}"#)).unwrap(),
            resource: Default::default(),
            readiness: Default::default(),
            locks: vec![],
        }
    }

    #[test]
    fn submit_then_duplicate_is_rejected_without_change() {
        let mut t = TaskTable::default();
        t.apply_submit(1, 1000, new_task("a", "ds"), None).unwrap();
        let before = serde_json::to_string(&t).unwrap();
        assert_eq!(
            t.apply_submit(2, 2000, new_task("a", "other"), None),
            Err(SubmitRejected::AlreadyExists)
        );
        assert_eq!(serde_json::to_string(&t).unwrap(), before);
        let task = t.get("a").unwrap();
        assert_eq!(
            (task.state, task.runner(), task.created_ms),
            (TaskState::Running, RunnerState::Waiting, 1000)
        );
    }

    #[test]
    fn queue_limit_counts_active_tasks_only() {
        let mut t = TaskTable::default();
        t.apply_submit(1, 0, new_task("a", "ds"), Some(1)).unwrap();
        assert_eq!(
            t.apply_submit(2, 0, new_task("b", "ds"), Some(1)),
            Err(SubmitRejected::QueueFull { limit: 1 })
        );
        assert_eq!(t.apply_shutdown(5, "a", SHUTDOWN_BY_USER), ShutdownOutcome::Stopped);
        t.apply_submit(3, 0, new_task("b", "ds"), Some(1)).unwrap();
    }

    #[test]
    fn shutdown_fails_active_task_once() {
        let mut t = TaskTable::default();
        t.apply_submit(1, 1000, new_task("a", "ds"), None).unwrap();
        assert_eq!(t.apply_shutdown(1500, "a", SHUTDOWN_BY_USER), ShutdownOutcome::Stopped);
        let task = t.get("a").unwrap();
        assert_eq!(task.state, TaskState::Failed);
        assert_eq!(task.duration_ms, 500);
        assert_eq!(task.error_msg.as_deref(), Some(SHUTDOWN_BY_USER));
        assert_eq!(t.apply_shutdown(1600, "a", "again"), ShutdownOutcome::AlreadyComplete);
        assert_eq!(t.get("a").unwrap().error_msg.as_deref(), Some(SHUTDOWN_BY_USER));
        assert_eq!(t.apply_shutdown(1600, "zzz", "x"), ShutdownOutcome::Unknown);
        assert_eq!(t.active_count(), 0);
    }

    #[test]
    fn shutdown_datasource_stops_only_its_active_tasks() {
        let mut t = TaskTable::default();
        for (id, ds) in [("a", "x"), ("b", "x"), ("c", "y")] {
            t.apply_submit(1, 0, new_task(id, ds), None).unwrap();
        }
        assert_eq!(t.apply_shutdown_datasource(10, "x", SHUTDOWN_BY_USER), vec!["a", "b"]);
        assert!(t.get("c").unwrap().is_active());
    }

    #[test]
    fn status_plus_has_druids_field_names() {
        let mut t = TaskTable::default();
        t.apply_submit(1, 0, new_task("a", "ds"), None).unwrap();
        let v = serde_json::to_value(t.get("a").unwrap().status_plus()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "a", "groupId": "a", "type": "noop",
                "createdTime": "1970-01-01T00:00:00.000Z", "queueInsertionTime": "1970-01-01T00:00:00.000Z",
                "statusCode": "RUNNING", "status": "RUNNING", "runnerStatusCode": "WAITING",
                "duration": -1, "location": {"host": null, "port": -1, "tlsPort": -1},
                "dataSource": "ds", "errorMsg": null
            })
        );
    }
}
