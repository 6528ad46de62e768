//! Raft RPCs over HTTP: the client side, as openraft's `RaftNetworkFactory`.
//!
//! Each RPC is a `POST` to the target's `/raft/{append,vote,snapshot}` carrying the cluster
//! secret as a bearer token; the answer is the JSON of `Result<Response, RaftError>`. Append and
//! vote requests are JSON; a snapshot chunk is binary ([`encode_snapshot_chunk`]): its bytes
//! would be a JSON array of numbers, several times their size. A peer that cannot be reached is
//! reported as `Unreachable` so openraft backs off quietly.
//!
//! [`Faults`] lets tests cut links between nodes (a partition) without touching the sockets.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::state_machine::StateMachine;
use crate::types::{NodeInfo, TypeConfig};

type NodeId = u64;

/// Links that are cut, as (from, to) pairs. Shared by every node of an in-process test cluster.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    cut: Arc<RwLock<HashSet<(NodeId, NodeId)>>>,
}

impl Faults {
    /// Cuts traffic in both directions between `node` and every node in `others`.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        let mut cut = self.cut.write().expect("fault set lock");
        for &o in others {
            cut.insert((node, o));
            cut.insert((o, node));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.write().expect("fault set lock").clear();
    }

    fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.read().expect("fault set lock").contains(&(from, to))
    }
}

/// Creates HTTP clients for Raft RPCs.
#[derive(Clone)]
pub struct HttpNetwork {
    id: NodeId,
    client: reqwest::Client,
    secret: Arc<str>,
    faults: Faults,
    refusals: Refusals,
}

/// When each peer last refused this node's cluster secret was logged, so that a
/// misconfigured cluster says why every few seconds instead of on every heartbeat.
#[derive(Clone, Default)]
pub(crate) struct Refusals(Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>);

/// How often a peer's refusal of the cluster secret is logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(5);

impl Refusals {
    pub(crate) fn report(&self, target: NodeId, url: &str, status: u16) {
        let now = std::time::Instant::now();
        let mut last = self.0.lock().expect("refusal log lock");
        if last
            .get(&target)
            .is_some_and(|t| now.duration_since(*t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        last.insert(target, now);
        tracing::error!(
            peer = target,
            address = %url,
            status,
            "the peer refuses this node's cluster secret: every node must be started with the same \
             --cluster-secret (RAFTLORD_CLUSTER_SECRET); the cluster cannot form or replicate to it until they match"
        );
    }
}

impl HttpNetwork {
    pub fn new(id: NodeId, secret: &str, faults: Faults) -> Self {
        let client = crate::tls::client_builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            // An RPC is answered by the node it is sent to or not at all.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building the HTTP client");
        HttpNetwork {
            id,
            client,
            secret: secret.into(),
            faults,
            refusals: Refusals::default(),
        }
    }
}

impl HttpNetwork {
    /// The log of peers refusing this node's secret, shared with cluster formation.
    pub(crate) fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }
}

impl<S: StateMachine> RaftNetworkFactory<TypeConfig<S>> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            link: Arc::new(Link {
                from: self.id,
                target,
                peer: Peer::new(&node.url, &self.secret),
                client: self.client.clone(),
                faults: self.faults.clone(),
                refusals: self.refusals.clone(),
            }),
            inflight: None,
        }
    }
}

/// What every request to one peer carries, prepared once.
struct Peer {
    append: reqwest::Url,
    vote: reqwest::Url,
    snapshot: reqwest::Url,
    /// `Authorization: Bearer <cluster secret>`.
    auth: reqwest::header::HeaderValue,
}

impl Peer {
    fn new(url: &str, secret: &str) -> Result<Peer, String> {
        let base = url.trim_end_matches('/');
        let url = |rpc: &str| reqwest::Url::parse(&format!("{base}/raft/{rpc}")).map_err(|e| format!("{base}: {e}"));
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| "the cluster secret is not a valid HTTP header value".to_string())?;
        auth.set_sensitive(true);
        Ok(Peer {
            append: url("append")?,
            vote: url("vote")?,
            snapshot: url("snapshot")?,
            auth,
        })
    }

    fn url(&self, rpc: Rpc) -> &reqwest::Url {
        match rpc {
            Rpc::Append => &self.append,
            Rpc::Vote => &self.vote,
            Rpc::Snapshot => &self.snapshot,
        }
    }
}

/// A lazy connection to one peer, with the large append it may have in flight.
pub struct PeerClient {
    link: Arc<Link>,
    inflight: Option<InFlight>,
}

/// What every request to one peer needs.
struct Link {
    from: NodeId,
    target: NodeId,
    /// Or why requests to it cannot be made (an unusable URL or secret).
    peer: Result<Peer, String>,
    client: reqwest::Client,
    faults: Faults,
    refusals: Refusals,
}

type AppendResult = Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>>;

/// A large append being sent in the background (see [`PeerClient::append_large`]).
struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev: Option<openraft::LogId<NodeId>>,
    last: Option<openraft::LogId<NodeId>>,
    task: tokio::task::JoinHandle<AppendResult>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An append whose body is at least this large is sent in the background.
pub const LARGE_APPEND_BYTES: usize = 1 << 20;
/// A large append may take this long plus its size at [`LARGE_APPEND_MIN_RATE`].
const LARGE_APPEND_BASE: Duration = Duration::from_secs(2);
/// The slowest transfer rate, in bytes per second, a large append is given time for.
const LARGE_APPEND_MIN_RATE: u64 = 8 << 20;

/// The timeout of an append of `bytes`.
fn large_append_timeout(bytes: usize) -> Duration {
    LARGE_APPEND_BASE + Duration::from_millis(bytes as u64 * 1000 / LARGE_APPEND_MIN_RATE)
}

/// One of the Raft RPCs, by its route.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send to this peer: {0}")]
struct BadPeer(String);

#[derive(Debug, thiserror::Error)]
#[error("link {from} -> {to} is cut by a fault injector")]
struct LinkCut {
    from: NodeId,
    to: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("peer answered HTTP {status}: {body}")]
struct BadStatus {
    status: u16,
    body: String,
}

/// The header of a binary snapshot chunk: everything but the bytes.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct SnapshotChunkHead {
    pub vote: openraft::Vote<NodeId>,
    pub meta: openraft::SnapshotMeta<NodeId, NodeInfo>,
    pub offset: u64,
    pub done: bool,
}

/// A snapshot chunk on the wire: u32 BE length of the JSON head, the head, then the bytes.
pub(crate) fn encode_snapshot_chunk<C>(rpc: &InstallSnapshotRequest<C>) -> Vec<u8>
where
    C: openraft::RaftTypeConfig<NodeId = NodeId, Node = NodeInfo>,
{
    let head = SnapshotChunkHead {
        vote: rpc.vote,
        meta: rpc.meta.clone(),
        offset: rpc.offset,
        done: rpc.done,
    };
    let head = serde_json::to_vec(&head).expect("snapshot chunk head encodes");
    let mut out = Vec::with_capacity(4 + head.len() + rpc.data.len());
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&rpc.data);
    out
}

/// Reads a chunk written by [`encode_snapshot_chunk`].
pub(crate) fn decode_snapshot_chunk<C>(body: &[u8]) -> Result<InstallSnapshotRequest<C>, String>
where
    C: openraft::RaftTypeConfig<NodeId = NodeId, Node = NodeInfo>,
{
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("snapshot chunk shorter than its header")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("snapshot chunk header is truncated".into());
    }
    let head: SnapshotChunkHead =
        serde_json::from_slice(&rest[..len]).map_err(|e| format!("bad snapshot chunk header: {e}"))?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: rest[len..].to_vec(),
        done: head.done,
    })
}

impl Link {
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.post(rpc, body, "application/json", option.hard_ttl()).await
    }

    async fn post<Resp, E>(
        &self,
        rpc: Rpc,
        body: Vec<u8>,
        content_type: &'static str,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_cut(self.from, self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&LinkCut {
                from: self.from,
                to: self.target,
            })));
        }
        let peer = self
            .peer
            .as_ref()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&BadPeer(e.clone()))))?;
        let resp = self
            .client
            .post(peer.url(rpc).clone())
            .header(reqwest::header::AUTHORIZATION, peer.auth.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // Only a peer that cannot be connected to is unreachable: openraft then stops
                // replicating to it for half a second. A request that merely took longer than
                // its heartbeat-sized budget (a follower busy for a moment) is retried at once;
                // backing off from it starved a quorum under load and cost elections.
                if e.is_connect() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            self.refusals
                .report(self.target, peer.url(rpc).as_str(), status.as_u16());
        }
        if status == reqwest::StatusCode::INSUFFICIENT_STORAGE {
            // The peer is low on disk: back off rather than resend at once.
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Unreachable(Unreachable::new(&BadStatus {
                status: status.as_u16(),
                body,
            })));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RPCError::Network(NetworkError::new(&BadStatus {
                status: status.as_u16(),
                body,
            })));
        }
        let result: Result<Resp, E> = resp
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl PeerClient {
    /// Sends an append of at least [`LARGE_APPEND_BYTES`], or waits for the one in flight.
    ///
    /// openraft gives every AppendEntries one heartbeat interval and drops it when that runs
    /// out, whatever its size: a large entry would never arrive, and the followers, hearing
    /// nothing, would call elections. So a large append runs as a task of its own, with a
    /// timeout that grows with its size, while it sends empty appends (heartbeats) every
    /// interval to keep the follower in contact. openraft's next attempt finds it in flight
    /// and waits on it again; an attempt for a longer range from the same point is answered
    /// `PartialSuccess` up to what the flight carried, so openraft sends the rest next.
    async fn append_large<S: StateMachine>(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> AppendResult {
        let last = rpc.entries.last().map(|e| e.log_id);
        let reusable = self.inflight.as_ref().is_some_and(|f| {
            f.vote == rpc.vote && f.prev == rpc.prev_log_id && f.last.map(|l| l.index) <= last.map(|l| l.index)
        });
        if !reusable {
            self.inflight = None;
            let body = serde_json::to_vec(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            if body.len() < LARGE_APPEND_BYTES {
                return self
                    .link
                    .post(Rpc::Append, body, "application/json", option.hard_ttl())
                    .await;
            }
            let heartbeat = AppendEntriesRequest::<TypeConfig<S>> {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                entries: vec![],
            };
            let heartbeat = serde_json::to_vec(&heartbeat).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            let link = self.link.clone();
            let interval = option.hard_ttl();
            let task = tokio::spawn(async move {
                let timeout = large_append_timeout(body.len());
                let send = link.post(Rpc::Append, body, "application/json", timeout);
                tokio::pin!(send);
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        result = &mut send => return result,
                        _ = tick.tick() => {
                            // Only the contact matters; the flight's answer is what counts.
                            let _: AppendResult = link
                                .post(Rpc::Append, heartbeat.clone(), "application/json", interval)
                                .await;
                        }
                    }
                }
            });
            self.inflight = Some(InFlight {
                vote: rpc.vote,
                prev: rpc.prev_log_id,
                last,
                task,
            });
        }
        let Some(flight) = self.inflight.as_mut() else {
            unreachable!("a flight was found or started above");
        };
        // openraft may drop this future when its interval runs out; the flight goes on.
        let joined = (&mut flight.task).await;
        let flight_last = flight.last;
        self.inflight = None;
        let result = joined.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        match result {
            Ok(AppendEntriesResponse::Success) if flight_last != last => {
                Ok(AppendEntriesResponse::PartialSuccess(flight_last))
            }
            other => other,
        }
    }
}

impl<S: StateMachine> RaftNetwork<TypeConfig<S>> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        if rpc.entries.is_empty() {
            // A heartbeat goes straight out, beside any large append in flight.
            return self.link.call(Rpc::Append, &rpc, &option).await;
        }
        self.append_large::<S>(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        let body = encode_snapshot_chunk(&rpc);
        self.link
            .post(Rpc::Snapshot, body, "application/octet-stream", option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.link.call(Rpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{LogId, SnapshotMeta, StoredMembership, Vote};

    use super::*;

    /// A state machine that does nothing: the chunk codec does not look at it.
    #[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
    struct Nothing;

    impl StateMachine for Nothing {
        type Command = ();
        type Reply = ();
        fn apply(&mut self, _: crate::state_machine::ApplyContext, _: ()) {}
    }

    type C = TypeConfig<Nothing>;

    #[test]
    fn snapshot_chunks_round_trip_as_bytes_and_bad_ones_are_refused() {
        let rpc = InstallSnapshotRequest::<C> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
                last_membership: StoredMembership::default(),
                snapshot_id: "s".into(),
            },
            offset: 8 << 20,
            data: (0..=255u8).cycle().take(100_000).collect(),
            done: true,
        };
        let wire = encode_snapshot_chunk(&rpc);
        assert!(wire.len() < rpc.data.len() + 1024, "bytes travel as bytes");
        let back = decode_snapshot_chunk::<C>(&wire).unwrap();
        assert_eq!(
            (back.vote, back.offset, back.done, &back.data),
            (rpc.vote, rpc.offset, rpc.done, &rpc.data)
        );
        assert_eq!(back.meta, rpc.meta);
        assert!(decode_snapshot_chunk::<C>(&wire[..3]).is_err());
        assert!(decode_snapshot_chunk::<C>(&[0, 0, 0, 9, b'{']).is_err());
    }
}
