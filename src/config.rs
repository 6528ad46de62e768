//! Node configuration, as plain data. The command line ([`crate::cli`]) builds it; library code
//! never reads flags or the environment itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use raftlord_raft::{ClusterFormation, RaftSettings};

use crate::nodes::NodeRole;

/// Druid's default `druid.indexer.queue.maxTaskPayloadSize`: 60 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 60 << 20;

/// Everything one node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Base URL other nodes and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    pub formation: ClusterFormation,
    /// Shared secret for Raft RPCs and internal routes.
    pub cluster_secret: String,
    pub roles: Vec<NodeRole>,
    pub raft: RaftSettings,
    pub limits: Limits,
}

/// Limits on what clients may submit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest task spec accepted, in bytes (larger is 413).
    pub max_payload_bytes: usize,
    /// Most active tasks; a submission beyond it is 429. `None`: no limit (Druid's default).
    pub max_active_tasks: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_active_tasks: None,
        }
    }
}

impl NodeConfig {
    /// The stable name this node announces, e.g. `node-1`.
    pub fn node_name(&self) -> String {
        format!("node-{}", self.node_id)
    }
}
