//! Raft RPCs over HTTP: the client side, as openraft's `RaftNetworkFactory`.
//!
//! Each RPC is a JSON `POST` to the target's `/raft/{append,vote,snapshot}` carrying the cluster
//! secret as a bearer token; the answer is the JSON of `Result<Response, RaftError>`. A peer that
//! cannot be reached is reported as `Unreachable` so openraft backs off quietly.
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
}

impl HttpNetwork {
    pub fn new(id: NodeId, secret: &str, faults: Faults) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .expect("building the HTTP client");
        HttpNetwork {
            id,
            client,
            secret: secret.into(),
            faults,
        }
    }
}

impl<S: StateMachine> RaftNetworkFactory<TypeConfig<S>> for HttpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            from: self.id,
            target,
            base: node.url.trim_end_matches('/').to_string(),
            client: self.client.clone(),
            secret: self.secret.clone(),
            faults: self.faults.clone(),
        }
    }
}

/// A lazy connection to one peer.
pub struct PeerClient {
    from: NodeId,
    target: NodeId,
    base: String,
    client: reqwest::Client,
    secret: Arc<str>,
    faults: Faults,
}

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

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if self.faults.is_cut(self.from, self.target) {
            return Err(RPCError::Unreachable(Unreachable::new(&LinkCut {
                from: self.from,
                to: self.target,
            })));
        }
        let url = format!("{}/raft/{}", self.base, path);
        let resp = self
            .client
            .post(url)
            .bearer_auth(&*self.secret)
            .timeout(option.hard_ttl())
            .json(req)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                }
            })?;
        let status = resp.status();
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

impl<S: StateMachine> RaftNetwork<TypeConfig<S>> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig<S>>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
