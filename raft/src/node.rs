//! One Raft member wired together: storage, state machine, network, proposer.
//!
//! Cluster formation follows one rule: a node initialises a cluster only when it has never
//! belonged to one *and* every peer in the static peer list answers that it has never belonged
//! to one either. All nodes then call `initialize` with the identical member set, which openraft
//! documents as safe. Restarting a member never initialises again (its log and vote say it is a
//! member), and a node with an empty data directory whose peers already form a cluster just
//! waits to be brought up to date by the leader.
//!
//! openraft is built with `loosen-follower-log-revert`: without it, a follower whose log went
//! backwards (a member restarted with an emptied data directory) makes the *leader* panic, so
//! one lost disk would take down the node that is serving the cluster. With it, the leader
//! resets its view of that follower and catches it up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use raftlord_storage::{Engine, LogStore, SnapshotStore};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::network::{Faults, HttpNetwork};
use crate::proposer::{Clock, Proposer};
use crate::server::RaftState;
use crate::state_machine::{Shared, StateMachine, StateMachineStore};
use crate::types::{NodeInfo, Raft, TypeConfig};

/// Timing and sizing of the Raft layer.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot once this many log entries were applied since the last one *and* the
    /// log written since then is at least as large as that snapshot (so the cost of
    /// snapshotting stays proportional to what is written, however large the state grows).
    pub snapshot_every: u64,
    /// Most commands in one Raft entry.
    pub max_batch: usize,
    /// Most Raft entries proposed concurrently by the batcher.
    pub max_in_flight: usize,
    /// Writes are refused (503) while the data directory's disk has less free space than this.
    pub min_free_bytes: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        // A follower calls an election once the leader's lease (election_max) has run out plus
        // a random delay below election_min / 4 (see `elect`), so these detect a dead leader
        // after 400-450 ms: eight heartbeats missed before anything happens, clear of fsync
        // stalls and of a loaded two-core machine (a lease of 300 ms cost 3 elections in two
        // minutes of full write load there, 400 ms none), while failover stays near half a second.
        RaftSettings {
            heartbeat_ms: 50,
            election_min_ms: 200,
            election_max_ms: 400,
            snapshot_every: 1000,
            max_batch: 512,
            max_in_flight: 1,
            min_free_bytes: 64 << 20,
        }
    }
}

/// How this node finds its cluster.
#[derive(Debug, Clone)]
pub enum ClusterFormation {
    /// A one-node cluster of this node alone.
    Single,
    /// The same static list on every member: node id -> URL.
    Peers(BTreeMap<u64, String>),
    /// Wait to be added by `add-node` on the leader.
    Join,
}

/// Errors from node-level operations.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("opening storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(u64, String)> },
    #[error("{0}")]
    InvalidMembership(String),
    #[error("peer {id} at {url} answers as node {answered}: the peer list is inconsistent")]
    WrongPeer { id: u64, url: String, answered: u64 },
}

/// Cluster status as shown by `GET /status` and `raftlord cluster status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub leader_url: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Snapshots this node received from a leader since it started.
    pub snapshots_installed: u64,
    /// Bytes RocksDB holds in memory (memtables and table readers).
    #[serde(default)]
    pub storage_memory_bytes: u64,
    pub members: Vec<Member>,
}

/// One member of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    pub url: String,
    pub voter: bool,
}

/// A running Raft member.
pub struct RaftNode<S: StateMachine> {
    pub id: u64,
    pub url: String,
    pub raft: Raft<S>,
    pub shared: Arc<Shared<S>>,
    pub proposer: Proposer<S>,
    /// Raft metrics, read without copying on every request's leader check.
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, NodeInfo>>,
    /// No follower calls an election before this many ms without hearing from the leader.
    lease_ms: u64,
    secret: String,
    client: reqwest::Client,
    /// A handle on the log store openraft owns, to store the committed id on shutdown.
    log: LogStore<TypeConfig<S>>,
    /// Peers that refused this node's cluster secret, logged every few seconds.
    refusals: crate::network::Refusals,
    /// When this node last heard from a leader, for [`crate::elect`].
    pub(crate) contact: Arc<crate::elect::LeaderContact>,
    /// Free space of the data directory: below the floor, proposals and incoming entries are
    /// refused.
    pub(crate) disk: crate::disk::DiskSpace,
    /// Stops this node's own tasks (the election nudger) on shutdown.
    stop: CancellationToken,
    /// The node started with no Raft state at all (a new or a wiped data directory).
    started_empty: bool,
}

/// What the peers of a forming cluster answered.
enum PeerCheck {
    /// None belongs to a cluster: this set of peers forms one.
    AllNew,
    /// Peer `id` belongs to a cluster, whose log reaches `last_index`.
    Formed { id: u64, last_index: u64 },
}

/// The highest log index of a cluster formed a moment ago (its membership entry, the first
/// leader's blank entry, and the first changes a new leader makes).
const FRESH_LOG_INDEX: u64 = 5;

impl<S: StateMachine> RaftNode<S> {
    /// Opens the state from `engine` and starts Raft. The node serves RPCs once its router is
    /// mounted; call [`RaftNode::form`] to join or create the cluster.
    pub async fn start(
        id: u64,
        url: String,
        engine: Engine,
        secret: String,
        settings: &RaftSettings,
        clock: Clock,
        faults: Faults,
    ) -> Result<Arc<Self>, NodeError> {
        let config = Config {
            cluster_name: "raftlord".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_min_ms,
            election_timeout_max: settings.election_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_max_chunk_size: 8 << 20,
            // openraft gives each AppendEntries one heartbeat interval to complete; entries can
            // be large (a publish of hundreds of segments), so a lagging follower is sent a
            // bounded number per request rather than openraft's default of 300.
            max_payload_entries: 32,
            // Snapshots are scheduled by `schedule_snapshots`, which weighs the log against
            // the size of the state.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.snapshot_every,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| NodeError::Raft(e.to_string()))?);
        let data_dir = engine.path().to_path_buf();
        let log = LogStore::<TypeConfig<S>>::new(engine.clone());
        let log_bytes = log.appended_bytes();
        let (sm, shared) = StateMachineStore::<S>::open(SnapshotStore::new(engine)).map_err(NodeError::Storage)?;
        let network = HttpNetwork::new(id, &secret, faults);
        let refusals = network.refusals();
        let mut log_handle = log.clone();
        let started_empty = {
            use openraft::storage::RaftLogStorage;
            let state = log_handle
                .get_log_state()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            let vote = log_handle
                .read_vote()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            state.last_log_id.is_none() && state.last_purged_log_id.is_none() && vote.is_none()
        };
        let raft = Raft::<S>::new(id, config, network, log, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let disk = crate::disk::DiskSpace::watch(&data_dir, settings.min_free_bytes);
        let proposer = Proposer::start(
            raft.clone(),
            clock,
            settings.max_batch,
            settings.max_in_flight,
            Some(disk.clone()),
        );
        tokio::spawn(schedule_snapshots(
            raft.clone(),
            shared.clone(),
            log_bytes,
            settings.snapshot_every,
        ));
        let client = crate::tls::client_builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5))
            .build()
            .expect("building the HTTP client");
        let metrics = raft.metrics();
        let contact = Arc::new(crate::elect::LeaderContact::default());
        let stop = CancellationToken::new();
        let timing = crate::elect::Timing {
            lease: Duration::from_millis(settings.election_max_ms),
            first_spread: Duration::from_millis(settings.election_min_ms / 4),
            retry: Duration::from_millis(settings.election_min_ms / 2),
        };
        let node = Arc::new(RaftNode {
            id,
            url,
            raft,
            shared,
            proposer,
            metrics,
            lease_ms: settings.election_max_ms,
            secret,
            client,
            log: log_handle,
            refusals,
            contact,
            disk,
            stop,
            started_empty,
        });
        tokio::spawn(crate::elect::run(Arc::downgrade(&node), timing, node.stop.clone()));
        Ok(node)
    }

    /// The cluster secret this node checks on internal routes.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Joins or forms the cluster as `formation` says; returns once this node is a member
    /// (or `cancel` fires).
    pub async fn form(&self, formation: &ClusterFormation, cancel: &CancellationToken) -> Result<(), NodeError> {
        if self.is_initialized().await? && !self.started_empty {
            return Ok(());
        }
        match formation {
            ClusterFormation::Single => {
                if self.is_initialized().await? {
                    return Ok(());
                }
                let members = BTreeMap::from([(self.id, NodeInfo { url: self.url.clone() })]);
                self.initialize(members).await
            }
            ClusterFormation::Join => Ok(()),
            ClusterFormation::Peers(peers) => {
                loop {
                    // A node that started empty asks its peers even when the leader has
                    // already reached it (which can happen first): whether it joins a cluster
                    // forming now or one with history is worth telling the operator.
                    let initialized = self.is_initialized().await?;
                    match self.peers_all_new(peers).await? {
                        Some(PeerCheck::AllNew) if !initialized => {
                            let members = peers
                                .iter()
                                .map(|(id, url)| (*id, NodeInfo { url: url.clone() }))
                                .collect();
                            return self.initialize(members).await;
                        }
                        // A peer formed this same cluster a moment ago (every node of a new
                        // cluster starts together, and one initialises first): the leader
                        // brings this node in, as expected.
                        Some(PeerCheck::Formed { id, last_index }) if last_index <= FRESH_LOG_INDEX => {
                            tracing::info!(
                                node_id = self.id,
                                peer = id,
                                "peer {id} formed the cluster first; this node joins it"
                            );
                            return Ok(());
                        }
                        Some(PeerCheck::Formed { id, last_index }) => {
                            tracing::warn!(
                                node_id = self.id,
                                peer = id,
                                peer_last_log_index = last_index,
                                "this node started with no Raft state but its peers already form a cluster with \
                                 history: the leader catches this node up. If it was a member whose data was lost, \
                                 the safer procedure is `raftlord cluster remove-node` and then `add-node` with \
                                 --join"
                            );
                            return Ok(());
                        }
                        // Already a member, and a peer does not answer: nothing to wait for.
                        _ if initialized => return Ok(()),
                        _ => {}
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    }
                }
            }
        }
    }

    /// The id of the last entry in this node's log.
    pub async fn last_log_id(&self) -> Option<openraft::LogId<u64>> {
        use openraft::storage::RaftLogStorage;
        let mut log = self.log.clone();
        log.get_log_state().await.ok()?.last_log_id
    }

    /// Whether another voter that answers within a short time holds a log that is more up to
    /// date than this node's: such a node would refuse this node's vote request, and an
    /// election called here would only disrupt the one it could win (what Raft's pre-vote
    /// prevents; openraft 0.9 has none).
    pub(crate) async fn a_peer_has_a_greater_log(&self) -> bool {
        let mine = self.last_log_id().await;
        let peers: Vec<String> = {
            let m = self.metrics.borrow();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|id| *id != self.id)
                .filter_map(|id| membership.get_node(&id).map(|n| n.url.clone()))
                .collect()
        };
        let asks = peers.iter().map(|url| {
            self.client
                .get(format!("{}/internal/raft/state", url.trim_end_matches('/')))
                .bearer_auth(&self.secret)
                .timeout(Duration::from_millis(100))
                .send()
        });
        for answer in futures::future::join_all(asks).await {
            let Ok(r) = answer else { continue };
            if let Ok(state) = r.json::<RaftState>().await {
                if state.last_log > mine {
                    return true;
                }
            }
        }
        false
    }

    async fn is_initialized(&self) -> Result<bool, NodeError> {
        self.raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    async fn initialize(&self, members: BTreeMap<u64, NodeInfo>) -> Result<(), NodeError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another peer initialised first with the same member set, or we already are.
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(NodeError::Raft(e.to_string())),
        }
    }

    /// `AllNew` when every other peer answers and none belongs to a cluster, `Formed` when one
    /// does, `None` while some peer cannot be reached.
    async fn peers_all_new(&self, peers: &BTreeMap<u64, String>) -> Result<Option<PeerCheck>, NodeError> {
        let mut all_answered = true;
        for (&id, url) in peers.iter().filter(|(id, _)| **id != self.id) {
            let resp = self
                .client
                .get(format!("{}/internal/raft/state", url.trim_end_matches('/')))
                .bearer_auth(&self.secret)
                .send()
                .await;
            let state = match resp {
                Ok(r) if r.status().is_success() => r.json::<RaftState>().await.ok(),
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    self.refusals.report(id, url, r.status().as_u16());
                    None
                }
                _ => None,
            };
            match state {
                Some(s) if s.node_id != id => {
                    return Err(NodeError::WrongPeer {
                        id,
                        url: url.clone(),
                        answered: s.node_id,
                    })
                }
                Some(s) if s.initialized => {
                    return Ok(Some(PeerCheck::Formed {
                        id,
                        last_index: s.last_log.map_or(0, |l| l.index),
                    }))
                }
                Some(_) => {}
                None => all_answered = false,
            }
        }
        Ok(all_answered.then_some(PeerCheck::AllNew))
    }

    /// The current leader's id and URL, as this node knows it.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.metrics.borrow();
        let id = m.current_leader?;
        let url = m.membership_config.membership().get_node(&id)?.url.clone();
        Some((id, url))
    }

    /// Resolves, with the reason, when this node can no longer work: openraft stopped on a
    /// fatal error (a storage failure, an entry that cannot be read or applied) or the proposer
    /// died. The node must then exit rather than keep serving with a dead core.
    pub async fn failed(&self) -> String {
        let mut metrics = self.metrics.clone();
        tokio::select! {
            _ = self.proposer.stopped() => "the proposer stopped unexpectedly".to_string(),
            fatal = async {
                loop {
                    if let Err(e) = &metrics.borrow_and_update().running_state {
                        return format!("raft stopped: {e}");
                    }
                    if metrics.changed().await.is_err() {
                        return "raft stopped".to_string();
                    }
                }
            } => fatal,
        }
    }

    /// The term this node is in, from metrics.
    pub fn current_term(&self) -> u64 {
        self.metrics.borrow().current_term
    }

    /// Whether this node is the leader right now (from metrics; not a quorum check).
    pub fn is_leader(&self) -> bool {
        let m = self.metrics.borrow();
        m.current_leader == Some(self.id) && m.state == ServerState::Leader
    }

    /// Whether this node leads *and* has applied an entry of its own term, so its state holds
    /// every write acknowledged by any earlier leader, *and* a quorum acknowledged it within the
    /// leader lease, so a leader cut off from its followers stops serving (possibly stale) reads
    /// before a new leader can have been elected.
    pub fn leader_ready(&self) -> bool {
        let m = self.metrics.borrow();
        let leads = m.state == ServerState::Leader
            && m.current_leader == Some(self.id)
            && m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
        let alone = m.membership_config.membership().voter_ids().count() <= 1;
        leads && (alone || m.millis_since_quorum_ack.is_some_and(|ms| ms < self.lease_ms))
    }

    /// Adds a node: as a learner first (it catches up, by snapshot if needed), then as a voter.
    pub async fn add_node(&self, id: u64, url: String) -> Result<(), NodeError> {
        if url.is_empty() {
            return Err(NodeError::InvalidMembership("a node needs a URL".into()));
        }
        self.raft
            .add_learner(id, NodeInfo { url }, true)
            .await
            .map_err(|e| self.membership_error(e))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    /// Removes a node from the cluster.
    pub async fn remove_node(&self, id: u64) -> Result<(), NodeError> {
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !voters.contains(&id) {
            return Err(NodeError::InvalidMembership(format!("node {id} is not a voter")));
        }
        if voters.len() == 1 {
            return Err(NodeError::InvalidMembership("cannot remove the last voter".into()));
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    fn membership_error(&self, e: RaftError<u64, ClientWriteError<u64, NodeInfo>>) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.url)),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
                ChangeMembershipError::InProgress(_) => NodeError::Raft(c.to_string()),
                other => NodeError::InvalidMembership(other.to_string()),
            },
            other => NodeError::Raft(other.to_string()),
        }
    }

    /// Members, leader, term and log positions.
    pub async fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                url: n.url.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let committed = self
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        ClusterStatus {
            node_id: self.id,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            leader_url: m
                .current_leader
                .and_then(|id| membership.get_node(&id))
                .map(|n| n.url.clone()),
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: committed,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            snapshots_installed: self.shared.snapshots_installed(),
            storage_memory_bytes: self.log.storage_memory_bytes(),
            members,
        }
    }

    /// Stops Raft; pending proposals fail. Stores the committed log id, so a restart applies
    /// every committed entry without waiting for a leader.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        if let Err(e) = self.log.persist_committed() {
            tracing::warn!(error = %e, "storing the committed log id on shutdown failed");
        }
        if let Err(e) = self.log.persist_mark() {
            tracing::warn!(error = %e, "storing the log mark on shutdown failed");
        }
    }
}

/// Triggers snapshots. A snapshot costs time proportional to the whole state, so taking one
/// every N entries would make each write cost more as the state grows. Instead a snapshot is
/// due when at least `every` entries were applied since the last one and the log appended since
/// then is at least as large as the last snapshot: snapshot work stays within the log bytes
/// written, and a restart replays a log tail no larger than about the snapshot itself.
async fn schedule_snapshots<S: StateMachine>(
    raft: Raft<S>,
    shared: Arc<Shared<S>>,
    log_bytes: Arc<std::sync::atomic::AtomicU64>,
    every: u64,
) {
    use std::sync::atomic::Ordering;
    let mut metrics = raft.metrics();
    let mut bytes_at_last = log_bytes.load(Ordering::Relaxed);
    let mut pending: Option<u64> = None;
    loop {
        let applied = metrics.borrow().last_applied.map(|l| l.index).unwrap_or(0);
        let (snap_index, snap_bytes) = shared.last_snapshot();
        if pending.is_some_and(|p| snap_index >= p) {
            pending = None;
        }
        let written = log_bytes.load(Ordering::Relaxed).saturating_sub(bytes_at_last);
        if pending.is_none() && applied.saturating_sub(snap_index) >= every && written >= snap_bytes {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            pending = Some(applied);
            bytes_at_last = log_bytes.load(Ordering::Relaxed);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
