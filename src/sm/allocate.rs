//! Segment allocation (Druid's `segmentAllocate`) as one command: find the time chunk, take the
//! task's lock on it, and hand out the next partition of the chunk's version as a pending
//! segment. Asking again with the same sequence name and previous segment id returns the same
//! segment, so a peon that retries after a lost reply gets what it was given.
//!
//! The chunk is the interval of the used segments already holding the timestamp, else the
//! bucket of the preferred granularity. The version is that of the chunk's used segments, else
//! the lock's (for an APPEND lock, whose version is the epoch, the entry's time). Partition
//! numbers continue after the used and pending segments of that version; the core partition
//! count of an existing set is kept, a new set has none (Druid's `numbered` appending form).
//! Concurrent allocations from many peons are batched into one Raft entry by the proposer, the
//! role of Druid's allocation queue.
//!
//! Sub-tasks of a parallel `index_parallel` task allocate here too, naming their supervisor
//! task: it is granted the same lock (its group's), so that it holds every lock its sub-tasks
//! took when it publishes what they pushed, as Druid's supervisor does. When the supervisor
//! overwrites, its sub-tasks ask for the lock's version (`use_lock_version`): the chunk is the
//! preferred interval and the version the lock's, not the used segments', which is what
//! Druid's supervisor-side allocation for overwriting parallel ingestion hands out.

use raftlord_raft::ApplyContext;
use serde::{Deserialize, Serialize};

use super::State;
use crate::audit::AuditRecord;
use crate::interval::{iso, Interval};
use crate::locks::{LockOutcome, LockRequest, LockType, EPOCH_VERSION};
use crate::segments::{PendingSegment, SegmentKey};

/// What a `segmentAllocate` action asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocateRequest {
    /// The row timestamp, ms.
    pub timestamp: i64,
    /// The bucket of the preferred segment granularity holding the timestamp.
    pub preferred_interval: Interval,
    pub sequence_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_segment_id: Option<String>,
    #[serde(default)]
    pub skip_lineage_check: bool,
    pub lock_type: LockType,
    /// The supervisor task a sub-task allocates for; it is granted the same lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_task_id: Option<String>,
    /// Allocate in the version of the lock on the preferred interval (overwriting), not in the
    /// version of the used segments there (appending).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_lock_version: bool,
}

/// The outcome of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum AllocateOutcome {
    Allocated {
        segment: PendingSegment,
    },
    /// No segment: the lock was not granted (or was revoked), or the task is not active.
    Refused {
        reason: String,
    },
}

impl State {
    pub(super) fn allocate(&mut self, ctx: ApplyContext, task_id: &str, req: &AllocateRequest) -> AllocateOutcome {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return AllocateOutcome::Refused {
                reason: format!("Task [{task_id}] is not active"),
            };
        };
        let ds = task.spec.datasource.clone();
        if let Some(supervisor) = &req.supervisor_task_id {
            let same_group = self
                .tasks
                .get(supervisor)
                .is_some_and(|s| s.is_active() && s.spec.group_id == task.spec.group_id && s.spec.datasource == ds);
            if !same_group {
                return AllocateOutcome::Refused {
                    reason: format!(
                        "supervisor task [{supervisor}] is not an active task of group [{}] and datasource [{ds}]",
                        task.spec.group_id
                    ),
                };
            }
        }
        let at = Interval {
            start: req.timestamp,
            end: req.timestamp.saturating_add(1),
        };
        let d = self.segments.datasource(&ds);
        // The same request again: the same answer.
        if let Some(p) = d.into_iter().flat_map(|d| d.pending()).find(|p| {
            p.sequence_name == req.sequence_name
                && (req.skip_lineage_check || p.previous_segment_id == req.previous_segment_id)
                && p.key.interval().contains(&at)
        }) {
            return AllocateOutcome::Allocated { segment: p.clone() };
        }
        let existing = d.and_then(|d| {
            d.overlapping(&at)
                .filter(|(_, s)| s.used)
                .max_by(|a, b| a.0.version.cmp(&b.0.version))
                .map(|(k, _)| k.clone())
        });
        if req.use_lock_version && req.lock_type == LockType::Append {
            return AllocateOutcome::Refused {
                reason: "allocating in the lock's version overwrites: it needs an EXCLUSIVE or REPLACE lock".into(),
            };
        }
        let existing = existing.filter(|_| !req.use_lock_version);
        let interval = existing.as_ref().map_or(req.preferred_interval, SegmentKey::interval);
        let lock_request = LockRequest {
            lock_type: req.lock_type,
            interval,
            preferred_version: None,
        };
        let lock = match self.acquire_lock(ctx, task_id, &lock_request) {
            LockOutcome::Granted { lock, .. } => lock,
            LockOutcome::Revoked { .. } => {
                return AllocateOutcome::Refused {
                    reason: format!("the lock on [{interval}] was revoked"),
                }
            }
            LockOutcome::Refused { reason } => return AllocateOutcome::Refused { reason },
        };
        if let Some(supervisor) = &req.supervisor_task_id {
            // The same group's lock: the supervisor joins it, with the same version.
            match self.acquire_lock(ctx, supervisor, &lock_request) {
                LockOutcome::Granted { lock: l, .. } if l.version == lock.version => {}
                LockOutcome::Granted { .. } | LockOutcome::Revoked { .. } => {
                    return AllocateOutcome::Refused {
                        reason: format!(
                            "supervisor task [{supervisor}] holds another lock on [{interval}] than task [{task_id}]"
                        ),
                    }
                }
                LockOutcome::Refused { reason } => {
                    return AllocateOutcome::Refused {
                        reason: format!("supervisor task [{supervisor}]: {reason}"),
                    }
                }
            }
        }
        let version: std::sync::Arc<str> = match &existing {
            Some(k) => k.version.clone(),
            None if lock.version == EPOCH_VERSION => iso(ctx.time_ms as i64).into(),
            None => lock.version.as_str().into(),
        };
        let d = self.segments.datasource(&ds);
        let same_set = |k: &SegmentKey| k.interval() == interval && k.version == version;
        let used_max = d
            .into_iter()
            .flat_map(|d| d.overlapping(&interval))
            .filter(|(k, s)| s.used && same_set(k))
            .map(|(k, s)| (k.partition, s.shard_spec.core_partitions.unwrap_or(0)))
            .max();
        let pending_max = d
            .into_iter()
            .flat_map(|d| d.pending())
            .filter(|p| same_set(&p.key))
            .map(|p| p.key.partition)
            .max();
        let partition = match used_max.map(|(p, _)| p).max(pending_max) {
            None => 0,
            Some(p) => match p.checked_add(1) {
                Some(next) => next,
                None => {
                    return AllocateOutcome::Refused {
                        reason: format!(
                            "no partition number is left in [{interval}] version [{version}]: partition {p} is the largest there is"
                        ),
                    }
                }
            },
        };
        let segment = PendingSegment {
            key: SegmentKey {
                start: interval.start,
                end: interval.end,
                version,
                partition,
            },
            core_partitions: used_max.map_or(0, |(_, core)| core),
            sequence_name: req.sequence_name.clone(),
            previous_segment_id: req.previous_segment_id.clone(),
            task_allocator_id: task_id.to_string(),
            created_ms: ctx.time_ms,
        };
        self.segments.apply_add_pending(&ds, segment.clone());
        let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "pendingSegment.allocated", &ds).task(task_id);
        record.segments = vec![segment.key.id(&ds)];
        self.audit.push(record);
        AllocateOutcome::Allocated { segment }
    }
}
