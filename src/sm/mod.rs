//! The replicated state machine: the command envelope, dispatch and replies.
//!
//! [`State`] holds every table. [`Command`] is the closed set of changes; each variant is applied
//! by its concept's `apply_*` function. `apply` is pure and deterministic: time comes from the
//! leader-stamped entry ([`ApplyContext::time_ms`]), rejections are data in the [`Reply`], and
//! nothing iterates a hash map. Every command is safe to apply twice (a client write that timed
//! out may still commit): a repeated submit is refused as a duplicate, a repeated shutdown finds
//! the task complete, a repeated announcement changes nothing.

mod allocate;
mod locking;
pub mod publish;
pub mod validate;

use raftlord_raft::{ApplyContext, StateMachine};
use serde::{Deserialize, Serialize};

use crate::audit::AuditTrail;
use crate::interval::Interval;
use crate::locks::{LockOutcome, LockRequest, LockTable};
use crate::nodes::{NodeAnnouncement, NodeTable};
use crate::segments::{SegmentFilter, SegmentTable};
use crate::tasks::idempotency::IdempotencyKeys;
use crate::tasks::{NewTask, ShutdownOutcome, SubmitRejected, TaskTable};
use crate::workers::{AuditInfo, Refused, TaskUpdate, UpdatesApplied, Worker, WorkerBehaviorConfig, WorkerTable};

/// Everything raftlord replicates.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub tasks: TaskTable,
    pub nodes: NodeTable,
    #[serde(default)]
    pub workers: WorkerTable,
    #[serde(default)]
    pub locks: LockTable,
    #[serde(default)]
    pub segments: SegmentTable,
    /// Lock and segment changes.
    #[serde(default)]
    pub audit: AuditTrail,
    /// Recent submissions' idempotency keys.
    #[serde(default)]
    pub idempotency: IdempotencyKeys,
    /// Users, roles and permissions.
    #[serde(default)]
    pub security: crate::security::SecurityState,
    /// Retention rules and their history.
    #[serde(default)]
    pub coordinator: crate::coordinator::CoordinatorState,
}

pub use allocate::{AllocateOutcome, AllocateRequest};
pub use publish::{Publish, PublishKind, PublishOutcome};

/// One placement in an [`Command::AssignTasks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub task: String,
    /// The worker's host (`host:port`).
    pub worker: String,
}

/// One change to the state.
///
/// Externally tagged (`{"submitTask": {...}}`): task payloads are kept as raw JSON, which serde
/// can only read from an unbuffered enum representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Store a new task, unless its id exists or more than `max_active` tasks are active. With
    /// an `idempotency_key` seen recently, answer the task that key created instead.
    #[serde(rename_all = "camelCase")]
    SubmitTask {
        task: NewTask,
        max_active: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
    },
    /// Fail an active task with `reason`.
    #[serde(rename_all = "camelCase")]
    ShutdownTask { id: String, reason: String },
    /// Fail every active task of a datasource with `reason`.
    ShutdownDatasourceTasks { datasource: String, reason: String },
    /// Record (or refresh) a node's announcement.
    AnnounceNode { node: NodeAnnouncement },
    /// Remove a node's announcement.
    WithdrawNode { id: String },
    /// A worker joined, came back, or changed its size or version.
    RegisterWorker { worker: Worker },
    /// Enable or disable a worker (a disabled worker keeps its tasks and gets no new ones).
    SetWorkerEnabled { host: String, enabled: bool },
    /// A worker stopped heartbeating: fail its active tasks with `reason`, free its slots.
    WorkerLost { host: String, reason: String },
    /// Place waiting tasks on workers; each placement is checked again when applied.
    AssignTasks { assignments: Vec<TaskAssignment> },
    /// Take back an assignment the worker has not accepted (identified by the index of the
    /// entry that made it).
    #[serde(rename_all = "camelCase")]
    UnassignTask {
        task: String,
        worker: String,
        assigned_index: u64,
    },
    /// Fail a task its worker did not start in time (identified by the index of the entry that
    /// assigned it); it is not placed again, so it never runs twice.
    #[serde(rename_all = "camelCase")]
    FailUnstartedTask {
        task: String,
        worker: String,
        assigned_index: u64,
        reason: String,
    },
    /// A worker's reports: tasks it runs and tasks whose peon ended.
    ReportTasks { worker: String, updates: Vec<TaskUpdate> },
    /// Replace the worker behaviour config (audited).
    SetWorkerConfig {
        config: WorkerBehaviorConfig,
        audit: AuditInfo,
    },
    /// Replace a datasource's retention rules (or, for `_default`, the cluster's), audited.
    SetRules {
        datasource: String,
        rules: Vec<crate::coordinator::rules::Rule>,
        audit: AuditInfo,
    },
    /// Replace the Coordinator's dynamic configuration, audited.
    SetCoordinatorConfig {
        config: crate::coordinator::config::DynamicConfig,
        audit: AuditInfo,
    },
    /// Add or replace (or with `null`, remove) a datasource's auto-compaction config, audited.
    SetCompactionConfig {
        datasource: String,
        config: Option<crate::coordinator::compaction::DatasourceCompactionConfig>,
        audit: AuditInfo,
    },
    /// Set the task slots auto-compaction may take.
    SetCompactionSlots {
        slots: crate::coordinator::compaction::CompactionSlots,
    },
    /// A Historical joined, came back, or changed its tier or cache size.
    RegisterHistorical {
        server: crate::coordinator::load::Historical,
    },
    /// A Historical stopped heartbeating: forget its replicas (they are loaded elsewhere).
    HistoricalLost { host: String },
    /// The Coordinator's loads and drops, each checked again when applied.
    PlanReplicas {
        loads: Vec<crate::coordinator::load::LoadRequest>,
        drops: Vec<crate::coordinator::load::DropRequest>,
    },
    /// A Historical's outcomes; with `full`, everything it holds.
    ReportReplicas {
        host: String,
        reports: Vec<crate::coordinator::load::ReplicaReport>,
        full: bool,
    },
    /// Try to grant a lock to an active task (Druid's `tryLock`).
    AcquireLock { task: String, request: LockRequest },
    /// Release a task's locks on exactly `interval`.
    ReleaseLock { task: String, interval: Interval },
    /// Publish segments for a task: lock check, metadata compare-and-swap and insert, all or
    /// nothing.
    PublishSegments { task: String, publish: Publish },
    /// Mark the segments of a datasource matching `filter` used or unused.
    MarkSegments {
        datasource: String,
        filter: SegmentFilter,
        used: bool,
    },
    /// Allocate a pending segment for an active task (Druid's `segmentAllocate`), taking the
    /// lock on its time chunk.
    AllocateSegment { task: String, request: AllocateRequest },
    /// Delete a datasource's pending segments created within `created` (all when absent).
    DeletePendingSegments {
        datasource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<Interval>,
    },
    /// Delete unused segments' records for a task that holds locks covering them (Druid's
    /// `segmentNuke`, used by kill tasks): all or nothing.
    DeleteSegments {
        task: String,
        datasource: String,
        keys: Vec<crate::segments::segment::SegmentKey>,
    },
    /// Set, or with `null` delete, a datasource's commit metadata (Druid's reset).
    SetDatasourceMetadata {
        datasource: String,
        metadata: Option<serde_json::Value>,
    },
    /// Forget complete tasks that ended before `completed_tasks_before_ms` (at most
    /// [`PRUNE_MAX_TASKS`] per command) and audit records, worker-config history and the
    /// Coordinator's rule and config history made before `audit_before_ms`.
    #[serde(rename_all = "camelCase")]
    PruneHistory {
        completed_tasks_before_ms: u64,
        audit_before_ms: u64,
    },
    /// Change users, roles or permissions.
    Security(crate::security::SecurityCommand),
    /// Forget what no one can use any more: pending segments whose allocating task is not
    /// active, and datasources with no segment, no pending segment and no active task (their
    /// commit metadata with them).
    CleanMetadata {},
}

/// Most complete tasks one [`Command::PruneHistory`] removes, so that one entry's apply stays
/// short; the leader proposes again while there are more.
pub const PRUNE_MAX_TASKS: usize = 10_000;

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub enum Reply {
    Submitted {
        id: String,
    },
    SubmitRejected {
        id: String,
        rejected: SubmitRejected,
    },
    Shutdown {
        outcome: ShutdownOutcome,
    },
    ShutdownDatasource {
        stopped: Vec<String>,
    },
    NodeChanged {
        changed: bool,
    },
    /// `changed` is `None` when the worker is unknown.
    WorkerChanged {
        changed: Option<bool>,
    },
    /// `failed` is `None` when the worker is unknown or already lost.
    WorkerLost {
        failed: Option<Vec<String>>,
    },
    Assigned {
        refused: Vec<Refused>,
    },
    Unassigned {
        done: bool,
    },
    UnstartedFailed {
        done: bool,
    },
    Reported {
        applied: UpdatesApplied,
    },
    ConfigSet,
    RulesSet,
    /// `changed` is `None` when the Historical is unknown or already lost.
    HistoricalChanged {
        changed: Option<bool>,
    },
    ReplicasPlanned {
        applied: crate::coordinator::load::PlanApplied,
    },
    ReplicasReported {
        changed: usize,
    },
    /// Whether a compaction config was there or is there now.
    CompactionConfigSet {
        changed: bool,
    },
    Lock {
        outcome: LockOutcome,
    },
    LockReleased {
        count: usize,
    },
    Published {
        outcome: PublishOutcome,
    },
    SegmentsMarked {
        count: usize,
    },
    MetadataSet {
        changed: bool,
    },
    Allocated {
        outcome: AllocateOutcome,
    },
    PendingDeleted {
        count: usize,
    },
    /// `refused` says why nothing was deleted.
    SegmentsDeleted {
        count: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    Pruned {
        tasks: usize,
        audit: usize,
        worker_config_history: usize,
        #[serde(default)]
        coordinator_history: usize,
    },
    #[serde(rename_all = "camelCase")]
    MetadataCleaned {
        pending_segments: usize,
        datasource_metadata: usize,
    },
    /// `error` says why a security command changed nothing.
    Security {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl StateMachine for State {
    type Command = Command;
    type Reply = Reply;

    fn validate(command: &Command) -> Result<(), String> {
        validate::validate(command)
    }

    fn command_kind(command: &Command) -> &'static str {
        validate::kind(command)
    }

    fn apply(&mut self, ctx: ApplyContext, command: Command) -> Reply {
        let reply = self.dispatch(ctx, command);
        // Completing a task releases its locks in the same command.
        for id in self.tasks.take_completed() {
            self.release_task_locks(ctx, &id);
            self.segments.apply_delete_pending_of_task(&id);
        }
        reply
    }
}

impl State {
    fn dispatch(&mut self, ctx: ApplyContext, command: Command) -> Reply {
        match command {
            Command::SubmitTask {
                task,
                max_active,
                idempotency_key,
            } => {
                if let Some(key) = &idempotency_key {
                    if let Some(id) = self.idempotency.apply_lookup(ctx.time_ms, key) {
                        return Reply::Submitted { id };
                    }
                }
                let id = task.id.clone();
                match self.tasks.apply_submit(ctx.index, ctx.time_ms, task, max_active) {
                    Ok(()) => {
                        if let Some(key) = &idempotency_key {
                            self.idempotency.apply_record(ctx.time_ms, key, &id);
                        }
                        Reply::Submitted { id }
                    }
                    Err(rejected) => Reply::SubmitRejected { id, rejected },
                }
            }
            Command::Security(command) => Reply::Security {
                error: self.security.apply(command).err(),
            },
            Command::ShutdownTask { id, reason } => Reply::Shutdown {
                outcome: self.tasks.apply_shutdown(ctx.time_ms, &id, &reason),
            },
            Command::ShutdownDatasourceTasks { datasource, reason } => Reply::ShutdownDatasource {
                stopped: self.tasks.apply_shutdown_datasource(ctx.time_ms, &datasource, &reason),
            },
            Command::AnnounceNode { node } => Reply::NodeChanged {
                changed: self.nodes.apply_announce(ctx.time_ms, &node),
            },
            Command::WithdrawNode { id } => Reply::NodeChanged {
                changed: self.nodes.apply_withdraw(&id),
            },
            Command::RegisterWorker { worker } => Reply::WorkerChanged {
                changed: Some(self.workers.apply_register(ctx.time_ms, worker)),
            },
            Command::SetWorkerEnabled { host, enabled } => Reply::WorkerChanged {
                changed: self.workers.apply_set_enabled(&host, enabled),
            },
            Command::WorkerLost { host, reason } => Reply::WorkerLost {
                failed: self.workers.apply_lost(&mut self.tasks, ctx.time_ms, &host, &reason),
            },
            Command::AssignTasks { assignments } => {
                let pairs: Vec<(String, String)> = assignments.into_iter().map(|a| (a.task, a.worker)).collect();
                Reply::Assigned {
                    refused: self.assign(ctx, &pairs),
                }
            }
            Command::UnassignTask {
                task,
                worker,
                assigned_index,
            } => Reply::Unassigned {
                done: self
                    .workers
                    .apply_unassign(&mut self.tasks, &task, &worker, assigned_index),
            },
            Command::FailUnstartedTask {
                task,
                worker,
                assigned_index,
                reason,
            } => Reply::UnstartedFailed {
                done: self.workers.apply_fail_unstarted(
                    &mut self.tasks,
                    ctx.time_ms,
                    &task,
                    &worker,
                    assigned_index,
                    &reason,
                ),
            },
            Command::ReportTasks { worker, updates } => Reply::Reported {
                applied: self
                    .workers
                    .apply_updates(&mut self.tasks, ctx.time_ms, &worker, &updates),
            },
            Command::SetWorkerConfig { config, audit } => {
                self.workers.apply_set_config(ctx.time_ms, config, audit);
                Reply::ConfigSet
            }
            Command::SetRules {
                datasource,
                rules,
                audit,
            } => {
                self.coordinator.apply_set_rules(ctx.time_ms, &datasource, rules, audit);
                Reply::RulesSet
            }
            Command::SetCoordinatorConfig { config, audit } => {
                self.coordinator.apply_set_config(ctx.time_ms, config, audit);
                Reply::ConfigSet
            }
            Command::SetCompactionConfig {
                datasource,
                config,
                audit,
            } => Reply::CompactionConfigSet {
                changed: self
                    .coordinator
                    .compaction
                    .apply_set(ctx.time_ms, &datasource, config, audit),
            },
            Command::SetCompactionSlots { slots } => {
                self.coordinator.compaction.apply_set_slots(slots);
                Reply::ConfigSet
            }
            Command::RegisterHistorical { server } => Reply::HistoricalChanged {
                changed: Some(self.coordinator.load.apply_register(ctx.time_ms, server)),
            },
            Command::HistoricalLost { host } => Reply::HistoricalChanged {
                changed: self.coordinator.load.apply_lost(&host).map(|_| true),
            },
            Command::PlanReplicas { loads, drops } => Reply::ReplicasPlanned {
                applied: self
                    .coordinator
                    .load
                    .apply_plan(ctx.time_ms, &self.segments, &loads, &drops),
            },
            Command::ReportReplicas { host, reports, full } => Reply::ReplicasReported {
                changed: self
                    .coordinator
                    .load
                    .apply_report(ctx.time_ms, &self.segments, &host, &reports, full),
            },
            Command::AcquireLock { task, request } => Reply::Lock {
                outcome: self.acquire_lock(ctx, &task, &request),
            },
            Command::ReleaseLock { task, interval } => Reply::LockReleased {
                count: self.release_lock(ctx, &task, &interval),
            },
            Command::PublishSegments { task, publish } => Reply::Published {
                outcome: self.publish(ctx, &task, publish),
            },
            Command::MarkSegments {
                datasource,
                filter,
                used,
            } => Reply::SegmentsMarked {
                count: self.mark_segments(ctx, &datasource, &filter, used),
            },
            Command::AllocateSegment { task, request } => Reply::Allocated {
                outcome: self.allocate(ctx, &task, &request),
            },
            Command::DeletePendingSegments { datasource, created } => Reply::PendingDeleted {
                count: self.delete_pending(ctx, &datasource, created),
            },
            Command::DeleteSegments { task, datasource, keys } => {
                match self.delete_segments(ctx, &task, &datasource, &keys) {
                    Ok(count) => Reply::SegmentsDeleted { count, refused: None },
                    Err(why) => Reply::SegmentsDeleted {
                        count: 0,
                        refused: Some(why),
                    },
                }
            }
            Command::SetDatasourceMetadata { datasource, metadata } => Reply::MetadataSet {
                changed: self.set_metadata(ctx, &datasource, metadata),
            },
            Command::CleanMetadata {} => {
                let tasks = &self.tasks;
                let active_ds: std::collections::HashSet<&str> =
                    tasks.active().map(|t| t.spec.datasource.as_str()).collect();
                let (pending_segments, datasource_metadata) = self.segments.apply_clean(
                    |task| tasks.get(task).is_some_and(|t| t.is_active()),
                    |ds| active_ds.contains(ds),
                );
                Reply::MetadataCleaned {
                    pending_segments,
                    datasource_metadata,
                }
            }
            Command::PruneHistory {
                completed_tasks_before_ms,
                audit_before_ms,
            } => Reply::Pruned {
                tasks: self
                    .tasks
                    .apply_prune_completed(completed_tasks_before_ms, PRUNE_MAX_TASKS),
                audit: self.audit.apply_prune(audit_before_ms),
                worker_config_history: self.workers.apply_prune_history(audit_before_ms),
                coordinator_history: self.coordinator.apply_prune_history(audit_before_ms),
            },
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod publish_tests;

#[cfg(test)]
mod command_props;
