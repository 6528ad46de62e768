//! Lock commands across tables: only active tasks get locks, versions stay ahead of the
//! datasource's segments, and every grant, revocation and release is audited.

use raftlord_raft::ApplyContext;

use super::State;
use crate::audit::AuditRecord;
use crate::interval::Interval;
use crate::locks::{LockOutcome, LockRequest, Requester};

impl State {
    pub(super) fn acquire_lock(&mut self, ctx: ApplyContext, task_id: &str, req: &LockRequest) -> LockOutcome {
        let Some(task) = self.tasks.get(task_id).filter(|t| t.is_active()) else {
            return LockOutcome::Refused {
                reason: format!("Unable to grant lock to inactive Task [{task_id}]"),
            };
        };
        let spec = &task.spec;
        let floor = self
            .segments
            .datasource(&spec.datasource)
            .and_then(|d| d.newest_time_version(&req.interval));
        let requester = Requester {
            id: &spec.id,
            group_id: &spec.group_id,
            datasource: &spec.datasource,
            priority: spec.priority,
        };
        let outcome = self.locks.apply_acquire(ctx.index, ctx.time_ms, &requester, req, floor);
        if let LockOutcome::Granted { lock, revoked } = &outcome {
            for r in revoked {
                self.audit
                    .push(AuditRecord::new(ctx.index, ctx.time_ms, "lock.revoked", &r.data_source).lock(r));
            }
            self.audit.push(
                AuditRecord::new(ctx.index, ctx.time_ms, "lock.granted", &lock.data_source)
                    .task(task_id)
                    .lock(lock),
            );
        }
        outcome
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
        n
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
    }
}
