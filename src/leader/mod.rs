//! Services that run only on the leader.
//!
//! The supervisor watches Raft metrics. When this node becomes a ready leader it starts every
//! leader service under a fresh child cancellation token; when it loses leadership it cancels
//! them. Services reload everything from the replicated state when they start, so nothing needs
//! handing over between leaders.
//!
//! Services today:
//! - **membership reconciliation**: a node removed from the Raft membership loses its
//!   announcement, so discovery never lists a member that is gone.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::sm::Command;
use crate::Raft;

/// Starts and stops leader-only services with leadership.
pub struct LeaderServices {
    raft: Arc<Raft>,
}

impl LeaderServices {
    pub fn new(raft: Arc<Raft>) -> Self {
        LeaderServices { raft }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut metrics = self.raft.raft.metrics();
        let mut term: Option<CancellationToken> = None;
        loop {
            let ready = self.raft.leader_ready();
            match (&term, ready) {
                (None, true) => {
                    info!(node_id = self.raft.id, "became leader: starting leader services");
                    let token = cancel.child_token();
                    tokio::spawn(reconcile_membership(self.raft.clone(), token.clone()));
                    term = Some(token);
                }
                (Some(token), false) => {
                    info!(node_id = self.raft.id, "lost leadership: stopping leader services");
                    token.cancel();
                    term = None;
                }
                _ => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
            }
        }
        if let Some(token) = term {
            token.cancel();
        }
    }
}

/// Withdraws announcements of Raft nodes that are no longer members.
async fn reconcile_membership(raft: Arc<Raft>, cancel: CancellationToken) {
    let mut applied = raft.shared.subscribe();
    loop {
        let members: BTreeSet<u64> = raft
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        let stale: Vec<String> = {
            let g = raft.shared.read().await;
            g.state
                .nodes
                .all()
                .filter(|n| n.raft_id.is_some_and(|id| !members.contains(&id)))
                .map(|n| n.id.clone())
                .collect()
        };
        for id in stale {
            debug!(node = %id, "withdrawing the announcement of a removed member");
            let _ = raft.proposer.propose(Command::WithdrawNode { id }).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = applied.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
