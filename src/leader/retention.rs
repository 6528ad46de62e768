//! Keeps the replicated state bounded over a long run (Druid's metadata-store management
//! duties): complete task records, audit records, and the history of the worker config, the
//! rules, the Coordinator's config and the compaction configs are forgotten once older than their
//! retention, by `PruneHistory` commands the leader proposes (so every replica forgets the same
//! things at the same log position); pending segments whose task is no longer active and
//! datasources left with no segment (their commit metadata with them) go by `CleanMetadata`.
//!
//! Defaults follow Druid: task records as long as task logs (`druid.indexer.logs.kill.
//! durationToRetain`, 90 days), audit records as the Coordinator's audit kill duty keeps them
//! (`druid.coordinator.kill.audit.durationToRetain`, 90 days). The check runs when the service
//! starts and then every tenth of the shorter retention (between 1 second and 10 minutes).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::clock::now_ms;
use crate::sm::{Command, Reply, PRUNE_MAX_TASKS};
use crate::Raft;

/// How long finished things are kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub completed_tasks: Duration,
    pub audit: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        let ninety_days = Duration::from_secs(90 * 24 * 3600);
        Retention {
            completed_tasks: ninety_days,
            audit: ninety_days,
        }
    }
}

impl Retention {
    /// How often the leader checks.
    pub fn period(&self) -> Duration {
        (self.completed_tasks.min(self.audit) / 10).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }
}

/// Proposes `PruneHistory` on a schedule until cancelled.
pub async fn run(raft: Arc<Raft>, retention: Retention, cancel: CancellationToken) {
    loop {
        prune_once(&raft, retention).await;
        match raft.proposer.propose(Command::CleanMetadata {}).await {
            Ok(Reply::MetadataCleaned {
                pending_segments,
                datasource_metadata,
            }) if pending_segments + datasource_metadata > 0 => {
                info!(
                    pending_segments,
                    datasource_metadata, "forgot stale pending segments and unused datasource metadata"
                );
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "metadata cleanup did not complete; trying again later"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retention.period()) => {}
        }
    }
}

async fn prune_once(raft: &Raft, retention: Retention) {
    let now = now_ms();
    let command = Command::PruneHistory {
        completed_tasks_before_ms: now.saturating_sub(retention.completed_tasks.as_millis() as u64),
        audit_before_ms: now.saturating_sub(retention.audit.as_millis() as u64),
    };
    loop {
        match raft.proposer.propose(command.clone()).await {
            Ok(Reply::Pruned {
                tasks,
                audit,
                worker_config_history,
                coordinator_history,
            }) => {
                if tasks + audit + worker_config_history + coordinator_history > 0 {
                    info!(
                        tasks,
                        audit, worker_config_history, coordinator_history, "forgot records past their retention"
                    );
                }
                if tasks < PRUNE_MAX_TASKS {
                    return;
                }
            }
            other => {
                debug!(result = ?other, "pruning did not complete; trying again later");
                return;
            }
        }
    }
}
