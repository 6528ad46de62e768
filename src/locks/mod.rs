//! Task locks: Druid's `TaskLockbox` as a replicated table.
//!
//! A lock is a time-chunk lock on one datasource and interval, of type `EXCLUSIVE`, `SHARED`,
//! `REPLACE` or `APPEND`, held by a *posse* (one lock, the set of tasks of one `groupId` sharing
//! it). The rules are Druid's (`TaskLockbox.createOrFindLockPosse` and `canXLockCoexist`):
//!
//! - a request that overlaps no lock gets a new posse;
//! - a request inside a lock of the same type and group reuses that posse (the narrowest live
//!   one when there are several; a revoked one answers "revoked": the holder learns of a
//!   revocation on its next acquire);
//! - otherwise a new posse is granted when the request can coexist with every overlapping
//!   non-revoked lock ([`compatible`]), or when every incompatible one has a strictly lower
//!   priority, in which case all of them are revoked (all or nothing). Revoked locks stay until
//!   their holders release them.
//!
//! Versions are the leader's entry time as an ISO string, strictly later than any version this
//! table gave the datasource before and than any time-like segment version in the interval;
//! `APPEND` locks use the epoch; a request's `preferredVersion` wins. Every lock carries a
//! fencing token: the Raft index of the entry that granted it. There is no resync after a
//! leader change: every replica already holds every lock.

#[cfg(test)]
mod tests;

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::interval::{iso, Interval};

/// Druid's `TaskLockType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockType {
    Exclusive,
    Shared,
    Replace,
    Append,
}

/// The version of every `APPEND` lock (Druid's `TaskLocks.defaultLockVersion`).
pub const EPOCH_VERSION: &str = "1970-01-01T00:00:00.000Z";

/// Druid's `TimeChunkLock` JSON, plus the fencing token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskLock {
    #[serde(rename = "type")]
    pub lock_type: LockType,
    /// Always `timeChunk`: segment locks are deprecated in Druid and not offered.
    pub granularity: String,
    pub group_id: String,
    pub data_source: String,
    pub interval: Interval,
    pub version: String,
    pub priority: i32,
    pub revoked: bool,
    /// Raft index of the entry that granted the lock. A publish may present it; a lock granted
    /// again later has a larger one.
    pub fencing_token: u64,
}

/// What a task asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockRequest {
    pub lock_type: LockType,
    pub interval: Interval,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_version: Option<String>,
}

/// The requesting task, as the lock table needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester<'a> {
    pub id: &'a str,
    pub group_id: &'a str,
    pub datasource: &'a str,
    pub priority: i32,
}

impl<'a> From<&'a crate::tasks::NewTask> for Requester<'a> {
    fn from(spec: &'a crate::tasks::NewTask) -> Self {
        Requester {
            id: &spec.id,
            group_id: &spec.group_id,
            datasource: &spec.datasource,
            priority: spec.priority,
        }
    }
}

/// Druid's `LockResult`, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum LockOutcome {
    /// Held now (newly granted, or the task joined or already held the posse).
    Granted {
        lock: TaskLock,
        /// Locks revoked to make room, all of strictly lower priority.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        revoked: Vec<TaskLock>,
    },
    /// The matching lock of the task's group was revoked by a higher priority task.
    Revoked { lock: TaskLock },
    /// Not grantable now; `reason` says why. Nothing changed.
    Refused { reason: String },
}

/// One lock and the tasks sharing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posse {
    pub lock: TaskLock,
    pub tasks: OrdSet<String>,
}

/// Druid's `LockFilterPolicy` (`lockedIntervals/v2`, `activeLocks`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockFilterPolicy {
    pub datasource: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub intervals: Option<Vec<Interval>>,
    #[serde(default)]
    pub context: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether a new lock of type `req` on `req_iv` may coexist with an overlapping non-revoked
/// lock `existing` of another posse (Druid's `canXLockCoexist`), given how many non-revoked
/// REPLACE locks overlap the request.
pub fn compatible(req: LockType, req_iv: &Interval, existing: &TaskLock, replace_count: usize) -> bool {
    use LockType::*;
    match (req, existing.lock_type) {
        (Shared, Shared) | (Append, Append) => true,
        (Replace, Append) => req_iv.contains(&existing.interval),
        (Append, Replace) => replace_count <= 1 && existing.interval.contains(req_iv),
        _ => false,
    }
}

/// Every lock, by posse id, with indexes by datasource and by task.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockTable {
    posses: OrdMap<u64, Posse>,
    by_datasource: OrdMap<String, OrdSet<u64>>,
    by_task: OrdMap<String, OrdSet<u64>>,
    next_id: u64,
    /// Newest version (ms) given to each datasource, so the next one is later.
    last_version_ms: OrdMap<String, i64>,
    /// Bumped whenever a lock is released or revoked: what blocked acquirers wait on.
    release_seq: u64,
}

impl LockTable {
    /// Tries to grant `req` to `task` (Druid's `tryLock`). `segment_floor_ms` is the newest
    /// time-like version of the datasource's segments overlapping the interval, if any.
    pub fn apply_acquire(
        &mut self,
        index: u64,
        time_ms: u64,
        task: &Requester<'_>,
        req: &LockRequest,
        segment_floor_ms: Option<i64>,
    ) -> LockOutcome {
        let overlapping: Vec<u64> = self.overlapping(task.datasource, &req.interval).collect();
        // Reuse: same type and group, containing the request (revoked ones included).
        let reusable: Vec<u64> = overlapping
            .iter()
            .copied()
            .filter(|id| {
                let l = &self.posses[id].lock;
                l.lock_type == req.lock_type && l.group_id == task.group_id && l.interval.contains(&req.interval)
            })
            .collect();
        // Druid expects at most one; two APPEND posses of a group can both contain a request,
        // so take the narrowest live one, and report a revocation only when all are revoked.
        let live_reusable = reusable
            .iter()
            .copied()
            .filter(|id| !self.posses[id].lock.revoked)
            .min_by_key(|id| (self.posses[id].lock.interval.duration_ms(), *id));
        if let Some(id) = live_reusable.or(reusable.first().copied()) {
            return self.join(id, task);
        }
        let live: Vec<&TaskLock> = overlapping
            .iter()
            .map(|id| &self.posses[id].lock)
            .filter(|l| !l.revoked)
            .collect();
        let replace_count = live.iter().filter(|l| l.lock_type == LockType::Replace).count();
        let incompatible: Vec<u64> = overlapping
            .iter()
            .copied()
            .filter(|id| {
                let l = &self.posses[id].lock;
                !l.revoked && !compatible(req.lock_type, &req.interval, l, replace_count)
            })
            .collect();
        if let Some(blocker) = incompatible
            .iter()
            .map(|id| &self.posses[id].lock)
            .find(|l| l.priority >= task.priority)
        {
            return LockOutcome::Refused {
                reason: format!(
                    "conflicts with a {:?} lock on [{}] of group [{}] with priority {} (not lower than {})",
                    blocker.lock_type, blocker.interval, blocker.group_id, blocker.priority, task.priority
                ),
            };
        }
        let mut revoked = Vec::with_capacity(incompatible.len());
        for id in incompatible {
            if let Some(p) = self.posses.get_mut(&id) {
                p.lock.revoked = true;
                revoked.push(p.lock.clone());
            }
        }
        if !revoked.is_empty() {
            self.release_seq += 1;
        }
        let version = self.new_version(time_ms, task.datasource, req, segment_floor_ms);
        let lock = TaskLock {
            lock_type: req.lock_type,
            granularity: "timeChunk".into(),
            group_id: task.group_id.to_string(),
            data_source: task.datasource.to_string(),
            interval: req.interval,
            version,
            priority: task.priority,
            revoked: false,
            fencing_token: index,
        };
        let id = self.next_id;
        self.next_id += 1;
        self.posses.insert(
            id,
            Posse {
                lock: lock.clone(),
                tasks: OrdSet::unit(task.id.to_string()),
            },
        );
        self.by_datasource
            .entry(task.datasource.to_string())
            .or_default()
            .insert(id);
        self.by_task.entry(task.id.to_string()).or_default().insert(id);
        if req.lock_type == LockType::Append {
            self.release_superseded_appends(task.id, id);
        }
        LockOutcome::Granted { lock, revoked }
    }

    /// Grants every request to `task`, or none: on the first one not granted, the table is
    /// left as it was and the reason returned. `segment_floor` gives each request's
    /// `segment_floor_ms` (see [`apply_acquire`](Self::apply_acquire)).
    pub fn apply_acquire_all(
        &mut self,
        index: u64,
        time_ms: u64,
        task: &Requester<'_>,
        reqs: &[LockRequest],
        segment_floor: impl Fn(&Interval) -> Option<i64>,
    ) -> Result<Vec<LockOutcome>, String> {
        let before = self.clone();
        let mut granted = Vec::with_capacity(reqs.len());
        for req in reqs {
            match self.apply_acquire(index, time_ms, task, req, segment_floor(&req.interval)) {
                o @ LockOutcome::Granted { .. } => granted.push(o),
                other => {
                    *self = before;
                    return Err(match other {
                        LockOutcome::Refused { reason } => {
                            format!("waiting for a lock on [{}]: {reason}", req.interval)
                        }
                        _ => format!("its lock on [{}] was revoked", req.interval),
                    });
                }
            }
        }
        Ok(granted)
    }

    fn join(&mut self, id: u64, task: &Requester<'_>) -> LockOutcome {
        let posse = self.posses.get_mut(&id).expect("posse exists");
        if posse.lock.revoked {
            return LockOutcome::Revoked {
                lock: posse.lock.clone(),
            };
        }
        if posse.lock.priority != task.priority {
            return LockOutcome::Refused {
                reason: format!(
                    "task priority [{}] is different from the priority [{}] of the lock of group [{}] it would share",
                    task.priority, posse.lock.priority, posse.lock.group_id
                ),
            };
        }
        posse.tasks.insert(task.id.to_string());
        let lock = posse.lock.clone();
        self.by_task.entry(task.id.to_string()).or_default().insert(id);
        LockOutcome::Granted { lock, revoked: vec![] }
    }

    /// A new APPEND lock strictly containing an older APPEND lock of the same task and group
    /// supersedes it (Druid releases the older one).
    fn release_superseded_appends(&mut self, task: &str, new_id: u64) {
        let new = self.posses[&new_id].lock.clone();
        let old: Vec<u64> = self
            .by_task
            .get(task)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| *id != new_id)
            .filter(|id| {
                let l = &self.posses[id].lock;
                l.lock_type == LockType::Append
                    && l.group_id == new.group_id
                    && l.data_source == new.data_source
                    && new.interval.contains(&l.interval)
                    && new.interval != l.interval
            })
            .collect();
        for id in old {
            self.remove_task_from(id, task);
        }
    }

    fn new_version(&mut self, time_ms: u64, ds: &str, req: &LockRequest, segment_floor_ms: Option<i64>) -> String {
        if let Some(v) = &req.preferred_version {
            return v.clone();
        }
        if req.lock_type == LockType::Append {
            return EPOCH_VERSION.to_string();
        }
        let mut ms = time_ms as i64;
        if let Some(last) = self.last_version_ms.get(ds) {
            ms = ms.max(last.saturating_add(1));
        }
        if let Some(floor) = segment_floor_ms {
            ms = ms.max(floor.saturating_add(1));
        }
        self.last_version_ms.insert(ds.to_string(), ms);
        iso(ms)
    }

    /// Releases `task`'s locks on exactly `interval` (Druid's `unlock`). Returns how many.
    pub fn apply_release(&mut self, task: &str, interval: &Interval) -> usize {
        let ids: Vec<u64> = self
            .by_task
            .get(task)
            .into_iter()
            .flatten()
            .copied()
            .filter(|id| self.posses[id].lock.interval == *interval)
            .collect();
        for id in &ids {
            self.remove_task_from(*id, task);
        }
        ids.len()
    }

    /// Releases every lock of `task` (its completion). Returns how many.
    pub fn apply_release_task(&mut self, task: &str) -> usize {
        let ids: Vec<u64> = self.by_task.get(task).into_iter().flatten().copied().collect();
        for id in &ids {
            self.remove_task_from(*id, task);
        }
        ids.len()
    }

    fn remove_task_from(&mut self, id: u64, task: &str) {
        self.release_seq += 1;
        if let Some(set) = self.by_task.get_mut(task) {
            set.remove(&id);
            if set.is_empty() {
                self.by_task.remove(task);
            }
        }
        let Some(posse) = self.posses.get_mut(&id) else {
            return;
        };
        posse.tasks.remove(task);
        if posse.tasks.is_empty() {
            let ds = posse.lock.data_source.clone();
            self.posses.remove(&id);
            if let Some(set) = self.by_datasource.get_mut(&ds) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_datasource.remove(&ds);
                }
            }
        }
    }

    fn overlapping<'a>(&'a self, ds: &str, interval: &'a Interval) -> impl Iterator<Item = u64> + 'a {
        self.by_datasource
            .get(ds)
            .into_iter()
            .flatten()
            .copied()
            .filter(move |id| self.posses[id].lock.interval.overlaps(interval))
    }

    /// Changes whenever a lock is released or revoked.
    pub fn release_seq(&self) -> u64 {
        self.release_seq
    }

    /// The locks `task` holds (revoked ones included), oldest first.
    pub fn locks_of(&self, task: &str) -> Vec<TaskLock> {
        self.by_task
            .get(task)
            .into_iter()
            .flatten()
            .map(|id| self.posses[id].lock.clone())
            .collect()
    }

    /// Every posse, oldest first.
    pub fn posses(&self) -> impl Iterator<Item = &Posse> {
        self.posses.values()
    }

    /// Druid's `lockedIntervals/v2`: per policy's datasource, the intervals of non-revoked
    /// locks with priority at least the policy's, ignoring APPEND locks when the policy's
    /// context asks for `taskLockType: REPLACE`.
    pub fn locked_intervals(&self, policies: &[LockFilterPolicy]) -> std::collections::BTreeMap<String, Vec<Interval>> {
        let mut out = std::collections::BTreeMap::<String, Vec<Interval>>::new();
        for (_, lock) in self.matching(policies) {
            let list = out.entry(lock.data_source.clone()).or_default();
            if !list.contains(&lock.interval) {
                list.push(lock.interval);
            }
        }
        out
    }

    /// Druid's `activeLocks`: the non-revoked locks matching the policies, by datasource.
    pub fn active_locks(&self, policies: &[LockFilterPolicy]) -> std::collections::BTreeMap<String, Vec<TaskLock>> {
        let mut out = std::collections::BTreeMap::<String, Vec<TaskLock>>::new();
        for (_, lock) in self.matching(policies) {
            let list = out.entry(lock.data_source.clone()).or_default();
            if !list.contains(lock) {
                list.push(lock.clone());
            }
        }
        out
    }

    fn matching<'a>(
        &'a self,
        policies: &'a [LockFilterPolicy],
    ) -> impl Iterator<Item = (&'a LockFilterPolicy, &'a TaskLock)> {
        policies.iter().flat_map(move |p| {
            let ignore_append = p
                .context
                .as_ref()
                .and_then(|c| c.get("taskLockType"))
                .and_then(|v| v.as_str())
                .is_some_and(|t| t.eq_ignore_ascii_case("REPLACE"));
            self.by_datasource
                .get(&p.datasource)
                .into_iter()
                .flatten()
                .map(|id| &self.posses[id].lock)
                .filter(move |l| !l.revoked && l.priority >= p.priority)
                .filter(move |l| !(ignore_append && l.lock_type == LockType::Append))
                .filter(move |l| {
                    p.intervals
                        .as_ref()
                        .is_none_or(|ivs| ivs.iter().any(|i| i.overlaps(&l.interval)))
                })
                .map(move |l| (p, l))
        })
    }
}
