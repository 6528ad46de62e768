//! Publishing segments as one atomic command: the task is active, its locks cover every segment
//! and are not revoked (nor older than the fencing tokens it presents), the datasource's commit
//! metadata compares and swaps, then the segments are inserted, the overwritten ones marked
//! unused and the change audited. Any failed check leaves the state as it was.

use raftlord_raft::ApplyContext;
use serde::{Deserialize, Serialize};

use super::State;
use crate::audit::AuditRecord;
use crate::locks::{LockType, TaskLock};
use crate::segments::metadata::compare_and_advance;
use crate::segments::{upgrade_key, DataSegment, SegmentFilter, SegmentKey};

/// Which Druid action publishes: they differ in the locks they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PublishKind {
    /// `segmentTransactionalInsert`: any non-APPEND time-chunk lock.
    Insert,
    /// `segmentTransactionalAppend`: APPEND locks.
    Append,
    /// `segmentTransactionalReplace`: REPLACE locks.
    Replace,
}

/// What a publish carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    pub kind: PublishKind,
    pub segments: Vec<DataSegment>,
    /// Segments this publish replaces (Druid's `segmentsToBeOverwritten`): marked unused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overwritten: Vec<SegmentKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_metadata: Option<serde_json::Value>,
    /// Fencing tokens of the locks the task believes it holds; when given, every covering lock
    /// must carry one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_tokens: Option<Vec<u64>>,
}

/// Druid's `SegmentPublishResult`, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum PublishOutcome {
    /// Stored; `inserted` are the ids new to the table (ids already stored are skipped).
    Published { inserted: Vec<String> },
    /// Refused by a rule the task could not know of (a revoked lock, a stale fencing token,
    /// the metadata compare-and-swap); nothing changed. Druid answers these with
    /// `success: false`. `retryable`: the metadata was ahead, an earlier publish may be in flight.
    Rejected { message: String, retryable: bool },
    /// The publish itself is wrong (segments outside the task's locks, of another datasource,
    /// from an inactive task); nothing changed.
    Invalid { message: String },
}

/// Druid's message for a publish whose lock was revoked.
pub const REVOKED_LOCKS: &str =
    "Invalid task locks. Maybe they are revoked by a higher priority task. Please check the overlord log for details.";

fn invalid(message: String) -> PublishOutcome {
    PublishOutcome::Invalid { message }
}

fn reject(message: String) -> PublishOutcome {
    PublishOutcome::Rejected {
        message,
        retryable: false,
    }
}

impl State {
    pub(super) fn publish(&mut self, ctx: ApplyContext, task_id: &str, p: Publish) -> PublishOutcome {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return invalid(format!(
                "Task [{task_id}] is not active; only active tasks can publish segments"
            ));
        };
        let ds = task.spec.datasource.clone();
        if let Some(other) = p.segments.iter().find(|s| s.datasource != ds) {
            return invalid(format!(
                "segment [{}] is of datasource [{}], but task [{task_id}] is of datasource [{ds}]",
                other.id(),
                other.datasource
            ));
        }
        if p.start_metadata.is_some() != p.end_metadata.is_some() {
            return invalid("startMetadata and endMetadata must either be both null or both non-null".into());
        }
        let locks = self.locks.locks_of(task_id);
        let covering = |iv: &crate::interval::Interval, version: &str| -> Option<&TaskLock> {
            locks.iter().find(|l| {
                l.data_source == ds
                    && l.interval.contains(iv)
                    && match p.kind {
                        PublishKind::Insert => l.lock_type != LockType::Append && *l.version >= *version,
                        PublishKind::Append => l.lock_type == LockType::Append,
                        PublishKind::Replace => l.lock_type == LockType::Replace && *l.version >= *version,
                    }
            })
        };
        let overwritten_keys: Vec<&SegmentKey> = p.overwritten.iter().collect();
        let all_keys = p.segments.iter().map(|s| &s.key).chain(overwritten_keys);
        let mut uncovered = Vec::new();
        let mut used_locks: Vec<&TaskLock> = Vec::new();
        for key in all_keys {
            match covering(&key.interval(), &key.version) {
                Some(l) => used_locks.push(l),
                None => uncovered.push(key.id(&ds)),
            }
        }
        if !uncovered.is_empty() {
            let held: Vec<String> = locks
                .iter()
                .map(|l| format!("{:?}:{}:{}", l.lock_type, l.interval, l.version))
                .collect();
            return invalid(format!(
                "Segments[{}] are not covered by locks[{}] for task[{task_id}]",
                uncovered.join(", "),
                held.join(", ")
            ));
        }
        if used_locks.iter().any(|l| l.revoked) {
            return reject(REVOKED_LOCKS.into());
        }
        if let Some(tokens) = &p.fencing_tokens {
            if let Some(stale) = used_locks.iter().find(|l| !tokens.contains(&l.fencing_token)) {
                return reject(format!(
                    "stale fencing token: the lock on [{}] was granted at index {}, the publish presented {tokens:?}",
                    stale.interval, stale.fencing_token
                ));
            }
        }
        let new_metadata = match (&p.start_metadata, &p.end_metadata) {
            (Some(start), Some(end)) => {
                let stored = self.segments.datasource(&ds).and_then(|d| d.metadata());
                match compare_and_advance(stored, start, end) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        return PublishOutcome::Rejected {
                            message: e.message,
                            retryable: e.retryable,
                        }
                    }
                }
            }
            _ => None,
        };

        // Every check passed: apply.
        let replace_locks: Vec<TaskLock> = used_locks
            .iter()
            .filter(|l| l.lock_type == LockType::Replace)
            .map(|l| (*l).clone())
            .collect();
        let inserted_segments = self.segments.apply_insert(ctx.time_ms, p.segments);
        let inserted: Vec<String> = inserted_segments.iter().map(DataSegment::id).collect();
        let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "segments.published", &ds).task(task_id);
        record.segments = inserted.clone();
        self.audit.push(record);
        let group = task.spec.group_id.clone();
        let upgraded = match p.kind {
            PublishKind::Append => self.upgrade_appended(ctx, &ds, &group, &inserted_segments),
            PublishKind::Replace => self.upgrade_for_replace(ctx, &ds, &replace_locks, &inserted_segments),
            PublishKind::Insert => vec![],
        };
        if !upgraded.is_empty() {
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "segments.upgraded", &ds).task(task_id);
            record.segments = upgraded.iter().map(|k| k.id(&ds)).collect();
            self.audit.push(record);
        }
        if !p.overwritten.is_empty() {
            let dropped = self.segments.apply_mark_unused(
                ctx.time_ms,
                &ds,
                &SegmentFilter::Keys {
                    keys: p.overwritten.clone(),
                },
            );
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "segments.markedUnused", &ds).task(task_id);
            record.segments = dropped.iter().map(|k| k.id(&ds)).collect();
            self.audit.push(record);
        }
        if let Some(m) = new_metadata {
            self.segments.apply_set_metadata(&ds, Some(m.clone()));
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "datasourceMetadata.set", &ds).task(task_id);
            record.metadata = Some(m);
            self.audit.push(record);
        }
        PublishOutcome::Published { inserted }
    }

    /// Appended segments under a live REPLACE lock of another group are recorded for upgrade
    /// when that lock publishes; appended segments that a newer version (published by a
    /// REPLACE since the append allocated them) would overshadow are copied into it now. Either
    /// way concurrent appends are not lost to a concurrent replace.
    fn upgrade_appended(
        &mut self,
        ctx: ApplyContext,
        ds: &str,
        group: &str,
        appended: &[DataSegment],
    ) -> Vec<SegmentKey> {
        let replace_locks: Vec<TaskLock> = self
            .locks
            .posses()
            .map(|p| &p.lock)
            .filter(|l| l.data_source == ds && l.lock_type == LockType::Replace && !l.revoked && l.group_id != group)
            .cloned()
            .collect();
        let mut upgraded = Vec::new();
        for seg in appended {
            let iv = seg.interval();
            for l in replace_locks.iter().filter(|l| l.interval.contains(&iv)) {
                self.segments
                    .apply_record_upgrade(ds, upgrade_key(l.fencing_token, &l.interval), seg.key.clone());
            }
            let newer = self.segments.datasource(ds).and_then(|d| {
                d.overlapping(&iv)
                    .filter(|(k, s)| s.used && k.interval().contains(&iv) && *k.version > *seg.key.version)
                    .map(|(k, s)| (k.version.clone(), s.shard_spec.core_partitions.unwrap_or(0)))
                    .max()
            });
            if let Some((version, core)) = newer {
                upgraded.extend(self.segments.apply_upgrade(ctx.time_ms, ds, &seg.key, &version, core));
            }
        }
        upgraded
    }

    /// A REPLACE publish copies the segments appended under its locks into its version, as
    /// non-core partitions after its own.
    fn upgrade_for_replace(
        &mut self,
        ctx: ApplyContext,
        ds: &str,
        replace_locks: &[TaskLock],
        published: &[DataSegment],
    ) -> Vec<SegmentKey> {
        let mut upgraded = Vec::new();
        let mut seen = Vec::new();
        for l in replace_locks {
            let key = upgrade_key(l.fencing_token, &l.interval);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            for appended in self.segments.apply_take_upgrades(ds, &key) {
                let set = published
                    .iter()
                    .filter(|s| s.interval().contains(&appended.interval()))
                    .max_by(|a, b| a.key.version.cmp(&b.key.version));
                let (version, core) = match set {
                    Some(s) => (s.key.version.to_string(), s.shard_spec.core_partitions.unwrap_or(0)),
                    None => (l.version.clone(), 0),
                };
                upgraded.extend(self.segments.apply_upgrade(ctx.time_ms, ds, &appended, &version, core));
            }
        }
        upgraded
    }

    pub(super) fn mark_segments(&mut self, ctx: ApplyContext, ds: &str, filter: &SegmentFilter, used: bool) -> usize {
        let changed = if used {
            self.segments.apply_mark_used(ctx.time_ms, ds, filter)
        } else {
            self.segments.apply_mark_unused(ctx.time_ms, ds, filter)
        };
        if !changed.is_empty() {
            let kind = if used {
                "segments.markedUsed"
            } else {
                "segments.markedUnused"
            };
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, kind, ds);
            record.segments = changed.iter().map(|k| k.id(ds)).collect();
            self.audit.push(record);
        }
        changed.len()
    }

    /// Deletes the records of unused segments of `ds` that `task` (active, of `ds`) holds
    /// unrevoked locks covering: all of them, or none with the reason.
    pub(super) fn delete_segments(
        &mut self,
        ctx: ApplyContext,
        task_id: &str,
        ds: &str,
        keys: &[SegmentKey],
    ) -> Result<usize, String> {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return Err(format!(
                "Task [{task_id}] is not active; only active tasks can delete segments"
            ));
        };
        if task.spec.datasource != ds {
            return Err(format!(
                "task [{task_id}] is of datasource [{}], not [{ds}]",
                task.spec.datasource
            ));
        }
        let locks = self.locks.locks_of(task_id);
        let Some(d) = self.segments.datasource(ds) else {
            return Ok(0);
        };
        for k in keys {
            let id = k.id(ds);
            match d.get(k) {
                None => return Err(format!("segment [{id}] does not exist")),
                Some(s) if s.used => {
                    return Err(format!("segment [{id}] is used; only unused segments can be deleted"))
                }
                Some(_) => {}
            }
            if !locks
                .iter()
                .any(|l| !l.revoked && l.data_source == ds && l.interval.contains(&k.interval()))
            {
                return Err(format!("task [{task_id}] holds no lock covering segment [{id}]"));
            }
        }
        let deleted = self.segments.apply_delete(ds, keys);
        if !deleted.is_empty() {
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "segments.deleted", ds);
            record.segments = deleted.iter().map(|k| k.id(ds)).collect();
            self.audit.push(record);
        }
        Ok(deleted.len())
    }

    pub(super) fn delete_pending(
        &mut self,
        ctx: ApplyContext,
        ds: &str,
        created: Option<crate::interval::Interval>,
    ) -> usize {
        let n = self.segments.apply_delete_pending(ds, created);
        if n > 0 {
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, "pendingSegments.deleted", ds);
            record.interval = created;
            self.audit.push(record);
        }
        n
    }

    pub(super) fn set_metadata(&mut self, ctx: ApplyContext, ds: &str, metadata: Option<serde_json::Value>) -> bool {
        let kind = if metadata.is_some() {
            "datasourceMetadata.set"
        } else {
            "datasourceMetadata.deleted"
        };
        let changed = self.segments.apply_set_metadata(ds, metadata.clone());
        if changed {
            let mut record = AuditRecord::new(ctx.index, ctx.time_ms, kind, ds);
            record.metadata = metadata;
            self.audit.push(record);
        }
        changed
    }
}
