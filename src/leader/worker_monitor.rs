//! The worker monitor: turns missed deadlines into commands.
//!
//! - A worker whose last heartbeat (kept in this leader's memory) is older than the worker
//!   timeout is lost: one `WorkerLost` command fails its active tasks with `worker lost` and
//!   frees its slots. A new leader counts every worker as heard from when it took over.
//! - A task its worker has not started within the assignment timeout fails
//!   (`FailUnstartedTask`), as in Druid. It is not placed again: the first worker may still
//!   start a peon for it late, and a task must never run twice. That late peon is stopped when
//!   its worker reports it, and its task actions are refused (the task is no longer active).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Heartbeats, OverlordSettings};
use crate::clock::now_ms;
use crate::sm::Command;
use crate::Raft;

const CHECK_EVERY: Duration = Duration::from_millis(250);

pub async fn run(raft: Arc<Raft>, heartbeats: Heartbeats, settings: OverlordSettings, cancel: CancellationToken) {
    let took_over = Instant::now();
    let took_over_ms = now_ms();
    let assign_timeout_ms = settings.assign_timeout.as_millis() as u64;
    loop {
        let mut commands = Vec::new();
        {
            let g = raft.shared.read().await;
            let now = now_ms();
            for r in g.state.workers.all().filter(|r| !r.lost) {
                let host = &r.worker.host;
                let last = heartbeats.last(host).map_or(took_over, |t| t.max(took_over));
                let silent = last.elapsed();
                if silent > settings.worker_timeout {
                    commands.push(Command::WorkerLost {
                        host: host.clone(),
                        reason: format!("worker lost: {host} sent no heartbeat for {} s", silent.as_secs()),
                    });
                    continue;
                }
                for t in r.tasks.iter().filter_map(|id| g.state.tasks.get(id)) {
                    let Some(a) = &t.assignment else { continue };
                    let since = a.assigned_ms.max(took_over_ms);
                    if t.is_active() && !a.accepted && now.saturating_sub(since) > assign_timeout_ms {
                        commands.push(Command::FailUnstartedTask {
                            task: t.spec.id.clone(),
                            worker: host.clone(),
                            assigned_index: a.index,
                            reason: format!("worker {host} did not start the task within {assign_timeout_ms} ms"),
                        });
                    }
                }
            }
        }
        for c in commands {
            warn!(command = ?c, "worker deadline missed");
            let _ = raft.proposer.propose(c).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
