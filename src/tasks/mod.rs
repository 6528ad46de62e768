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

pub mod query;
pub mod spec;

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
    pub runner: RunnerState,
    /// Run time in milliseconds once complete; -1 while active.
    pub duration_ms: i64,
    pub error_msg: Option<String>,
    pub location: TaskLocation,
    /// Raft log index of the entry that created the task.
    pub created_index: u64,
}

impl Task {
    pub fn is_active(&self) -> bool {
        self.state == TaskState::Running
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
            runner_status_code: if self.is_active() {
                self.runner
            } else {
                RunnerState::None
            },
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
        ) == (
            &o.id,
            &o.task_type,
            &o.group_id,
            &o.datasource,
            o.priority,
            o.payload.get(),
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

/// Druid's message for a task stopped by `POST /task/{id}/shutdown`.
pub const SHUTDOWN_BY_USER: &str = "Shutdown request from user";

/// All tasks, by id, plus the set of active ones.
///
/// Persistent (copy-on-write) maps: cloning the table is O(1), so a snapshot takes a
/// point-in-time copy under the state lock and encodes it after releasing the lock, without
/// holding up writes for time proportional to the table.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TaskTable {
    tasks: OrdMap<String, Task>,
    active: OrdSet<String>,
}

impl TaskTable {
    pub fn get(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
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
        self.active.iter().filter_map(|id| self.tasks.get(id))
    }

    /// Every task, in id order.
    pub fn all(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
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
            runner: RunnerState::Waiting,
            duration_ms: -1,
            error_msg: None,
            location: TaskLocation::unknown(),
            created_index: index,
        };
        self.active.insert(id.clone());
        self.tasks.insert(id, stored);
        Ok(())
    }

    /// Fails an active task with `reason`; completed and unknown tasks are left alone.
    pub fn apply_shutdown(&mut self, time_ms: u64, id: &str, reason: &str) -> ShutdownOutcome {
        let Some(task) = self.tasks.get_mut(id) else {
            return ShutdownOutcome::Unknown;
        };
        if !task.is_active() {
            return ShutdownOutcome::AlreadyComplete;
        }
        task.state = TaskState::Failed;
        task.runner = RunnerState::None;
        task.duration_ms = time_ms.saturating_sub(task.created_ms) as i64;
        task.error_msg = Some(reason.to_string());
        self.active.remove(id);
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
            (task.state, task.runner, task.created_ms),
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
