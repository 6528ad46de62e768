//! Lock commands across tables: only active tasks get locks, versions stay ahead of the
//! datasource's segments, and every grant, revocation and release is audited.

use raftlord_raft::ApplyContext;

use super::State;
use crate::audit::AuditRecord;
use crate::interval::Interval;
use crate::locks::{LockOutcome, LockRequest, Requester};
use crate::workers::Refused;

/// Druid's refusal for a task that is not active.
fn inactive(task_id: &str) -> String {
    format!("Unable to grant lock to inactive Task [{task_id}]")
}

/// Audits a grant and the revocations it made.
fn audit_grant(audit: &mut crate::audit::AuditTrail, ctx: ApplyContext, task_id: &str, outcome: &LockOutcome) {
    if let LockOutcome::Granted { lock, revoked } = outcome {
        for r in revoked {
            audit.push(AuditRecord::new(ctx.index, ctx.time_ms, "lock.revoked", &r.data_source).lock(r));
        }
        audit.push(
            AuditRecord::new(ctx.index, ctx.time_ms, "lock.granted", &lock.data_source)
                .task(task_id)
                .lock(lock),
        );
    }
}

impl State {
    /// Places tasks on workers; a task that needs locks gets them all with its placement, or
    /// stays waiting (Druid's `isReady`).
    pub(super) fn assign(&mut self, ctx: ApplyContext, pairs: &[(String, String)]) -> Vec<Refused> {
        let mut refused = self
            .workers
            .apply_assign(&mut self.tasks, ctx.index, ctx.time_ms, pairs);
        for (task, worker) in pairs {
            if refused.iter().any(|r| r.task == *task) {
                continue;
            }
            let needs = match self.tasks.get(task) {
                Some(t) if !t.spec.locks.is_empty() => t.spec.locks.clone(),
                _ => continue,
            };
            if let Err(reason) = self.acquire_all(ctx, task, &needs) {
                self.workers.apply_unassign(&mut self.tasks, task, worker, ctx.index);
                refused.push(Refused {
                    task: task.clone(),
                    reason,
                });
            }
        }
        refused
    }

    pub(super) fn acquire_lock(&mut self, ctx: ApplyContext, task_id: &str, req: &LockRequest) -> LockOutcome {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return LockOutcome::Refused {
                reason: inactive(task_id),
            };
        };
        let spec = &task.spec;
        let floor = self
            .segments
            .datasource(&spec.datasource)
            .and_then(|d| d.newest_time_version(&req.interval));
        let outcome = self
            .locks
            .apply_acquire(ctx.index, ctx.time_ms, &Requester::from(spec), req, floor);
        audit_grant(&mut self.audit, ctx, task_id, &outcome);
        outcome
    }

    /// Grants all of `reqs` to the task or none (the task's readiness): locks and audit are
    /// left unchanged when one is not granted.
    pub(super) fn acquire_all(&mut self, ctx: ApplyContext, task_id: &str, reqs: &[LockRequest]) -> Result<(), String> {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return Err(inactive(task_id));
        };
        let spec = &task.spec;
        let datasource = self.segments.datasource(&spec.datasource);
        let granted = self
            .locks
            .apply_acquire_all(ctx.index, ctx.time_ms, &Requester::from(spec), reqs, |iv| {
                datasource.and_then(|d| d.newest_time_version(iv))
            })?;
        for outcome in &granted {
            audit_grant(&mut self.audit, ctx, task_id, outcome);
        }
        Ok(())
    }

    pub(super) fn release_lock(&mut self, ctx: ApplyContext, task: &str, interval: &Interval) -> usize {
        let held: Vec<_> = self
            .locks
            .locks_of(task)
            .into_iter()
            .filter(|l| l.interval == *interval)
            .collect();
        let n = self.locks.apply_release(task, interval);
        for l in &held {
            self.audit.push(
                AuditRecord::new(ctx.index, ctx.time_ms, "lock.released", &l.data_source)
                    .task(task)
                    .lock(l),
            );
        }
        self.forget_upgrades_of_gone_locks(&held);
        n
    }

    /// Appended segments recorded for a REPLACE lock that is now gone without publishing (its
    /// task failed or let go) will never be upgraded: their records are dropped, as Druid drops
    /// a task's `upgradeSegments` rows when its locks are removed.
    fn forget_upgrades_of_gone_locks(&mut self, released: &[crate::locks::TaskLock]) {
        for l in released
            .iter()
            .filter(|l| l.lock_type == crate::locks::LockType::Replace)
        {
            let live = self
                .locks
                .posses()
                .any(|p| p.lock.fencing_token == l.fencing_token && p.lock.interval == l.interval);
            if !live {
                let key = crate::segments::upgrade_key(l.fencing_token, &l.interval);
                self.segments.apply_take_upgrades(&l.data_source, &key);
            }
        }
    }

    pub(super) fn release_task_locks(&mut self, ctx: ApplyContext, task: &str) {
        let held = self.locks.locks_of(task);
        if held.is_empty() {
            return;
        }
        self.locks.apply_release_task(task);
        for l in &held {
            self.audit.push(
                AuditRecord::new(ctx.index, ctx.time_ms, "lock.released", &l.data_source)
                    .task(task)
                    .lock(l),
            );
        }
        self.forget_upgrades_of_gone_locks(&held);
    }
}
