//! Node configuration, as plain data. The command line ([`crate::cli`]) builds it; library code
//! never reads flags or the environment itself.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use raftlord_raft::{ClusterFormation, RaftSettings};

use crate::leader::OverlordSettings;
use crate::nodes::NodeRole;
use crate::worker::WorkerTiming;

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
    pub overlord: OverlordSettings,
    /// Where finished tasks' logs and reports are kept; every node reads it.
    pub task_log_dir: PathBuf,
    /// Set when this node is also a worker.
    pub worker: Option<WorkerSettings>,
    /// Set when this node is also a Historical.
    pub historical: Option<HistoricalSettings>,
    pub auth: AuthSettings,
    /// HTTPS instead of HTTP, for clients and between nodes.
    pub tls: Option<TlsSettings>,
}

/// A node's certificate, and the CA its peers' certificates are signed by.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain of this node.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM certificates trusted beside the system's roots (a private CA).
    pub ca: Option<PathBuf>,
}

/// Users and permissions ([`crate::security`], [`crate::api::auth`]).
#[derive(Clone)]
pub struct AuthSettings {
    /// Off: every route is open to anyone who can reach the node.
    pub enabled: bool,
    /// The `admin` user's password, set at the cluster's first start.
    pub initial_admin_password: Option<String>,
    /// Name of the authenticator in the basic-security routes.
    pub authenticator: String,
    /// Name of the authorizer in the basic-security routes.
    pub authorizer: String,
}

/// The authenticator's and authorizer's name when none is given.
pub const DEFAULT_AUTH_NAME: &str = "basic";

impl AuthSettings {
    /// Auth off.
    pub fn off() -> AuthSettings {
        AuthSettings {
            enabled: false,
            initial_admin_password: None,
            authenticator: DEFAULT_AUTH_NAME.into(),
            authorizer: DEFAULT_AUTH_NAME.into(),
        }
    }

    /// Auth on, with `admin`'s first password.
    pub fn basic(initial_admin_password: &str) -> AuthSettings {
        AuthSettings {
            enabled: true,
            initial_admin_password: Some(initial_admin_password.into()),
            ..AuthSettings::off()
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("authenticator", &self.authenticator)
            .field("authorizer", &self.authorizer)
            .finish_non_exhaustive()
    }
}

/// A worker's size and how it runs peons.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Task slots.
    pub capacity: u32,
    pub category: String,
    pub version: String,
    /// Parent of the task directories.
    pub base_dir: PathBuf,
    /// Peon command; the task directory is appended. Empty: this binary's `peon`.
    pub peon_command: Vec<String>,
    /// Time a peon gets between SIGTERM and SIGKILL.
    pub graceful_stop: Duration,
    /// Where peons push segment files: a directory or `s3://bucket/prefix`
    /// ([`crate::worker::deep_storage`]); shared by every node.
    pub deep_storage: String,
    pub timing: WorkerTiming,
    /// The cluster's CA, handed to peons so that they reach the nodes over HTTPS.
    pub tls_ca: Option<PathBuf>,
}

/// A Historical's cache and place in the cluster.
#[derive(Debug, Clone)]
pub struct HistoricalSettings {
    /// Where cached segments are kept (`--segment-cache-dir`).
    pub cache_dir: PathBuf,
    /// Bytes of segments the cache may hold (`--max-segment-cache-size`).
    pub max_size: u64,
    /// Druid's `druid.server.tier`.
    pub tier: String,
    /// Deep storage segments are read from, as [`WorkerSettings::deep_storage`].
    pub deep_storage: String,
    pub timing: crate::worker::WorkerTiming,
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

/// Everything a node that is no Raft member needs (a worker, a Historical, or both): no Raft,
/// no replicated state.
#[derive(Debug, Clone)]
pub struct DataNodeConfig {
    pub listen: SocketAddr,
    /// Base URL the cluster reaches this node at; defaults to `http://<listen>`.
    pub advertise: String,
    /// Nodes of the cluster to reach the leader through.
    pub seeds: Vec<String>,
    pub cluster_secret: String,
    pub task_log_dir: PathBuf,
    pub worker: Option<WorkerSettings>,
    pub historical: Option<HistoricalSettings>,
    pub tls: Option<TlsSettings>,
    /// The worker's read routes (task logs, reports, its task list) need no credentials:
    /// the cluster runs with auth off.
    pub open_reads: bool,
}
