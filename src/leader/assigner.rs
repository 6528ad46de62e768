//! The assigner: places waiting tasks on workers with free slots.
//!
//! Level-triggered: on every change of the applied state (and at least once a second, or when
//! a not-yet-ready task becomes ready) it computes [`plan`] from the state and proposes it. The
//! apply of `AssignTasks` checks each placement again, so a plan computed from a state that has
//! moved on cannot over-fill a worker.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::clock::now_ms;
use crate::sm::{Command, Reply, TaskAssignment};
use crate::workers::select::plan;
use crate::Raft;

/// Longest pause between two plans.
const IDLE_REPLAN: Duration = Duration::from_secs(1);

pub async fn run(raft: Arc<Raft>, cancel: CancellationToken) {
    let mut applied = raft.shared.subscribe();
    loop {
        let now = now_ms();
        let p = {
            let g = raft.shared.read().await;
            plan(&g.state.tasks, &g.state.workers, &g.state.locks, now)
        };
        if !p.assignments.is_empty() {
            let assignments: Vec<TaskAssignment> = p
                .assignments
                .into_iter()
                .map(|(task, worker)| TaskAssignment { task, worker })
                .collect();
            let n = assignments.len();
            match raft.proposer.propose(Command::AssignTasks { assignments }).await {
                Ok(Reply::Assigned { refused }) => {
                    debug!(assigned = n - refused.len(), refused = refused.len(), "tasks assigned");
                    for r in refused {
                        debug!(task_id = %r.task, reason = %r.reason, "assignment refused");
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "assignment not proposed"),
            }
        }
        // After the assignments of the same plan, so that a failure seen by a client means
        // that plan's placements are committed too.
        for (id, reason) in p.failures {
            info!(task_id = %id, "task failed its readiness check");
            let _ = raft.proposer.propose(Command::ShutdownTask { id, reason }).await;
        }
        let wait = p
            .next_ready_ms
            .map(|t| Duration::from_millis(t.saturating_sub(now)))
            .unwrap_or(IDLE_REPLAN)
            .clamp(Duration::from_millis(5), IDLE_REPLAN);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
