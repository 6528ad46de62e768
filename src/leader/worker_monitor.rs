//! The worker monitor: turns missed deadlines into commands.
//!
//! - A worker whose last heartbeat (kept in this leader's memory) is older than the worker
//!   timeout is lost: one `WorkerLost` command fails its active tasks with `worker lost` and
//!   frees its slots. A new leader counts every worker as heard from when it took over.
//! - A task its worker has not started within the assignment timeout fails
//!   (`FailUnstartedTask`), as in Druid. It is not placed again: the first worker may still
//!   start a peon for it late, and a task must never run twice. That late peon is stopped when
//!   its worker reports it, and its task actions are refused (the task is no longer active).
//!
//! - A Historical silent past the same timeout is lost (`HistoricalLost`): its replicas are
//!   forgotten and the next historical-management run loads them elsewhere.
//!
//! Both deadlines run on the monotonic clock, so a wall clock stepped ahead (NTP, an operator)
//! fails nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Heartbeats, OverlordSettings};
use crate::sm::Command;
use crate::Raft;

const CHECK_EVERY: Duration = Duration::from_millis(250);

pub async fn run(raft: Arc<Raft>, heartbeats: Heartbeats, settings: OverlordSettings, cancel: CancellationToken) {
    let took_over = Instant::now();
    let assign_timeout_ms = settings.assign_timeout.as_millis() as u64;
    // When this leader first saw each assignment still waiting for its worker, by task and
    // assignment index. Measured on the monotonic clock: a wall clock stepped forward must not
    // fail every task just handed to a worker.
    let mut waiting_since: HashMap<(String, u64), Instant> = HashMap::new();
    loop {
        let mut commands = Vec::new();
        {
            let g = raft.shared.read().await;
            let mut still_waiting = HashMap::new();
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
                    if !t.is_active() || a.accepted {
                        continue;
                    }
                    let key = (t.spec.id.clone(), a.index);
                    let since = waiting_since.get(&key).copied().unwrap_or_else(Instant::now);
                    still_waiting.insert(key, since);
                    if since.elapsed() > settings.assign_timeout {
                        commands.push(Command::FailUnstartedTask {
                            task: t.spec.id.clone(),
                            worker: host.clone(),
                            assigned_index: a.index,
                            reason: format!("worker {host} did not start the task within {assign_timeout_ms} ms"),
                        });
                    }
                }
            }
            waiting_since = still_waiting;
            for h in g.state.coordinator.load.serving() {
                let host = &h.server.host;
                let last = heartbeats
                    .last(&Heartbeats::historical_key(host))
                    .map_or(took_over, |t| t.max(took_over));
                if last.elapsed() > settings.worker_timeout {
                    commands.push(Command::HistoricalLost { host: host.clone() });
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
