//! Services that run only on the leader.
//!
//! The supervisor watches Raft metrics. When this node becomes a ready leader it starts every
//! leader service under a fresh child cancellation token; when it loses leadership it cancels
//! them. Services reload everything from the replicated state when they start, so nothing needs
//! handing over between leaders.
//!
//! Services:
//! - **membership reconciliation**: a node removed from the Raft membership loses its
//!   announcement, so discovery never lists a member that is gone;
//! - [`assigner`]: waiting tasks x free worker slots -> `AssignTasks` commands;
//! - [`worker_monitor`]: workers silent past the timeout -> `WorkerLost`; assignments not
//!   accepted in time -> `FailUnstartedTask`;
//! - [`retention`]: records past their retention -> `PruneHistory`;
//! - [`crate::coordinator::duties`]: the Coordinator's historical management -> `MarkSegments`,
//!   `PlanReplicas`.
//!
//! A service that panics takes the supervisor down with it, and so the node (crash-only).

pub mod assigner;
pub mod retention;
pub mod worker_monitor;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::sm::Command;
use crate::Raft;

/// When the leader gives up on workers and assignments.
#[derive(Debug, Clone)]
pub struct OverlordSettings {
    /// A worker with no heartbeat for this long is lost and its tasks fail.
    pub worker_timeout: Duration,
    /// An assignment the worker has not accepted within this time is taken back.
    pub assign_timeout: Duration,
    /// How long complete tasks and audit records are kept.
    pub retention: retention::Retention,
    /// How often the Coordinator's historical-management duty runs at the least.
    pub coordinator_period: Duration,
    /// Auto-kill of unused segments.
    pub kill: crate::coordinator::kill::KillSettings,
    /// How often auto-compaction runs (Druid's `druid.coordinator.period.indexingPeriod`).
    pub indexing_period: Duration,
}

impl Default for OverlordSettings {
    fn default() -> Self {
        OverlordSettings {
            worker_timeout: Duration::from_secs(30),
            assign_timeout: Duration::from_secs(60),
            retention: retention::Retention::default(),
            coordinator_period: Duration::from_secs(5),
            kill: crate::coordinator::kill::KillSettings::default(),
            indexing_period: Duration::from_secs(1800),
        }
    }
}

/// Worker heartbeats, in the leader's memory only (never replicated).
#[derive(Debug, Clone, Default)]
pub struct Heartbeats(Arc<Mutex<HashMap<String, Beat>>>);

#[derive(Debug, Clone, Copy)]
struct Beat {
    last: Instant,
    /// Requests from the host this node is still answering.
    in_flight: u32,
}

/// A request being answered: its host counts as alive until it is answered (see
/// [`Heartbeats::in_flight`]).
pub struct InFlight {
    heartbeats: Heartbeats,
    host: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut g = self.heartbeats.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = g.get_mut(&self.host) {
            b.in_flight = b.in_flight.saturating_sub(1);
            b.last = Instant::now();
        }
    }
}

impl Heartbeats {
    /// The key a Historical's heartbeats are kept under (a node may be a worker too, on the
    /// same `host:port`).
    pub fn historical_key(host: &str) -> String {
        format!("historical:{host}")
    }

    pub fn beat(&self, host: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(host.to_string())
            .and_modify(|b| b.last = Instant::now())
            .or_insert(Beat {
                last: Instant::now(),
                in_flight: 0,
            });
    }

    /// A heartbeat that lasts until the returned guard is dropped: for a request whose answer
    /// waits on a commit, so that a host is not declared lost while this node is slow to
    /// answer it (a busy log), only when it stops asking.
    pub fn in_flight(&self, host: &str) -> InFlight {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let b = g.entry(host.to_string()).or_insert(Beat {
            last: Instant::now(),
            in_flight: 0,
        });
        b.last = Instant::now();
        b.in_flight += 1;
        InFlight {
            heartbeats: self.clone(),
            host: host.to_string(),
        }
    }

    /// The last heartbeat from `host`, if one reached this node (now, while one of its
    /// requests is being answered).
    pub fn last(&self, host: &str) -> Option<Instant> {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.get(host)
            .map(|b| if b.in_flight > 0 { Instant::now() } else { b.last })
    }
}

/// Starts and stops leader-only services with leadership.
pub struct LeaderServices {
    raft: Arc<Raft>,
    heartbeats: Heartbeats,
    duties: crate::coordinator::duties::DutyLog,
    settings: OverlordSettings,
    initial_admin_password: Option<String>,
}

impl LeaderServices {
    /// With `initial_admin_password` (auth on), the leader creates the `admin` user when the
    /// cluster has none.
    pub fn new(
        raft: Arc<Raft>,
        heartbeats: Heartbeats,
        duties: crate::coordinator::duties::DutyLog,
        settings: OverlordSettings,
        initial_admin_password: Option<String>,
    ) -> Self {
        LeaderServices {
            raft,
            heartbeats,
            duties,
            settings,
            initial_admin_password,
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut metrics = self.raft.raft.metrics();
        let mut term: Option<CancellationToken> = None;
        let mut services = tokio::task::JoinSet::new();
        loop {
            let ready = self.raft.leader_ready();
            match (&term, ready) {
                (None, true) => {
                    info!(node_id = self.raft.id, "became leader: starting leader services");
                    self.duties.clear();
                    let token = cancel.child_token();
                    services.spawn(reconcile_membership(self.raft.clone(), token.clone()));
                    services.spawn(assigner::run(self.raft.clone(), token.clone()));
                    services.spawn(worker_monitor::run(
                        self.raft.clone(),
                        self.heartbeats.clone(),
                        self.settings.clone(),
                        token.clone(),
                    ));
                    services.spawn(crate::coordinator::duties::run(
                        self.raft.clone(),
                        self.settings.coordinator_period,
                        self.duties.clone(),
                        token.clone(),
                    ));
                    if self.settings.kill.enabled {
                        services.spawn(crate::coordinator::duties::run_kill(
                            self.raft.clone(),
                            self.settings.kill.clone(),
                            self.duties.clone(),
                            token.clone(),
                        ));
                    }
                    services.spawn(crate::coordinator::duties::run_compaction(
                        self.raft.clone(),
                        self.settings.indexing_period,
                        self.duties.clone(),
                        token.clone(),
                    ));
                    services.spawn(retention::run(
                        self.raft.clone(),
                        self.settings.retention,
                        token.clone(),
                    ));
                    if let Some(password) = &self.initial_admin_password {
                        services.spawn(create_admin(self.raft.clone(), password.clone(), token.clone()));
                    }
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
                Some(Err(e)) = services.join_next(), if !services.is_empty() => {
                    if e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        }
        if let Some(token) = term {
            token.cancel();
        }
    }
}

/// Creates the `admin` user with its first password, unless the cluster has one already (a
/// later password change through the API is kept across restarts and leader changes).
async fn create_admin(raft: Arc<Raft>, password: String, cancel: CancellationToken) {
    let mut pause = Duration::from_millis(50);
    loop {
        if raft
            .shared
            .read()
            .await
            .state
            .security
            .users
            .contains_key(crate::security::ADMIN)
        {
            return;
        }
        let pw = password.clone();
        let Ok(credentials) = tokio::task::spawn_blocking(move || crate::security::Credentials::new(&pw)).await else {
            return;
        };
        let command = Command::Security(crate::security::SecurityCommand::InitAdmin { credentials });
        match raft.proposer.propose(command).await {
            Ok(_) => {
                info!("created the admin user with the initial admin password");
                return;
            }
            Err(e) => debug!(error = %e, "the admin user was not created yet; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {} // back off before proposing again
        }
        pause = (pause * 2).min(Duration::from_secs(2));
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

#[cfg(test)]
mod heartbeat_tests {
    use super::*;

    #[test]
    fn a_host_whose_request_is_still_being_answered_counts_as_alive() {
        let h = Heartbeats::default();
        assert!(h.last("a").is_none());
        h.beat("a");
        let first = h.last("a").unwrap();
        let guard = h.in_flight("a");
        let (during_1, during_2) = (h.last("a").unwrap(), h.last("a").unwrap());
        assert!(
            during_1 >= first && during_2 >= during_1,
            "alive now, every time it is asked"
        );
        drop(guard);
        let after = h.last("a").unwrap();
        assert_eq!(h.last("a"), Some(after), "after the answer, the last beat stays put");
    }
}
