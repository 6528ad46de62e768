//! The `raftlord` command line.
//!
//! - `raftlord dev`: one node with every role, for a laptop;
//! - `raftlord server`: one member of a real cluster;
//! - `raftlord bootstrap`: a local three-node (or N-node) cluster in child processes;
//! - `raftlord cluster ...`, `raftlord task ...`: clients for a running cluster;
//! - `raftlord debug log`: read a node's Raft log from its data directory.

mod bootstrap;
mod client;
mod debug;
pub mod local_ca;
mod serve;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Apache Druid's indexing service (Overlord, MiddleManager, Coordinator) on Raft, in one binary.
#[derive(Debug, Parser)]
#[command(name = "raftlord", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one node with every role, data in ./raftlord-data, HTTP on 127.0.0.1:8090.
    Dev(DevArgs),
    /// Run one node of a cluster: a Raft member (the same --peers list on every member, any
    /// order), or a worker or Historical that is no member (--roles worker,historical --join URL).
    Server(ServerArgs),
    /// Start a local cluster of N node processes, wait for a leader, print their URLs; Ctrl-C stops all.
    Bootstrap(BootstrapArgs),
    /// Inspect or change cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// List a datasource's segments.
    #[command(subcommand)]
    Segments(SegmentsCommand),
    /// Submit, inspect and stop tasks through Druid's task API.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Run one task from its task directory (started by a worker, not by hand).
    Peon {
        /// The task directory, holding task.json.
        task_dir: PathBuf,
    },
    /// Fork peons on request from a worker over standard input (started by a worker, not by hand).
    #[command(hide = true)]
    PeonLauncher,
    /// Look inside a node's data directory.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// List Raft log entries: index, payload and command kinds, and whether this build can read
    /// each. Exits 3 when an entry cannot be read.
    Log(DebugLogArgs),
}

#[derive(Debug, Args)]
pub struct DebugLogArgs {
    /// The node's data directory (as given to `dev` or `server`).
    #[arg(long, env = "RAFTLORD_DATA_DIR")]
    pub data_dir: PathBuf,
    /// First log index to show.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Most entries to show.
    #[arg(long, default_value_t = 20)]
    pub count: usize,
    /// Also print each entry's stored JSON.
    #[arg(long)]
    pub full: bool,
}

/// A size in bytes: a number, optionally followed by KB, MB, GB, TB (powers of 1000) or KiB,
/// MiB, GiB, TiB (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("[{s}] is not a size such as 500MiB, 10GiB or 2000000000"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit [{other}]; use KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(factor).ok_or_else(|| format!("[{s}] is too large"))
}

/// A positive duration in milliseconds (see [`parse_duration_ms`]).
fn parse_period_ms(s: &str) -> Result<u64, String> {
    match parse_duration_ms(s)? {
        0 => Err("the period must be positive".into()),
        ms => Ok(ms),
    }
}

/// A duration in milliseconds: a number of milliseconds, or an ISO-8601 duration of days,
/// hours, minutes and seconds (P90D, PT60S, PT1M, PT0S).
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("[{s}] is not a duration such as PT60S, PT1M or 5000 (milliseconds)");
    let d: iso8601::Duration = s.parse().map_err(|_| bad())?;
    let ms = match d {
        iso8601::Duration::YMDHMS {
            year: 0,
            month: 0,
            day,
            hour,
            minute,
            second,
            millisecond,
        } => {
            ((u64::from(day) * 24 + u64::from(hour)) * 60 + u64::from(minute)) * 60_000
                + u64::from(second) * 1000
                + u64::from(millisecond)
        }
        _ => return Err(bad()),
    };
    Ok(ms)
}

/// Druid's default worker capacity: one slot per CPU but one, at least one.
pub fn default_worker_capacity() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.saturating_sub(1).max(1) as u32
}

/// Settings every node takes.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// Largest task spec accepted, in bytes (Druid's default: 60 MiB).
    #[arg(long, env = "RAFTLORD_MAX_TASK_PAYLOAD_BYTES", default_value_t = crate::config::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_task_payload_bytes: usize,
    /// Most active tasks; submissions beyond it get HTTP 429. Unlimited when not set.
    #[arg(long, env = "RAFTLORD_MAX_ACTIVE_TASKS")]
    pub max_active_tasks: Option<u64>,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "RAFTLORD_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Raft election timeout T in milliseconds. A leader's lease is 2T; once it has run out, a
    /// follower calls an election after a further random delay below T/4, drawn anew for each
    /// attempt, so a dead leader is replaced after 2T to 2.25T plus one vote.
    #[arg(long, env = "RAFTLORD_ELECTION_TIMEOUT_MS", default_value_t = 200)]
    pub election_timeout_ms: u64,
    /// Take a snapshot once this many Raft log entries were applied since the last one and the
    /// log written since then is at least as large as that snapshot.
    #[arg(long, env = "RAFTLORD_SNAPSHOT_EVERY", default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Most commands the leader puts into one Raft entry.
    #[arg(long, env = "RAFTLORD_PROPOSAL_BATCH", default_value_t = 512)]
    pub proposal_batch: usize,
    /// Most Raft entries the leader proposes concurrently.
    #[arg(long, env = "RAFTLORD_PROPOSALS_IN_FLIGHT", default_value_t = 1)]
    pub proposals_in_flight: usize,
    /// Writes are refused with 503 while the data directory's disk has less than this many MiB
    /// free; they resume by themselves once space is freed.
    #[arg(long, env = "RAFTLORD_MIN_FREE_DISK_MB", default_value_t = 64)]
    pub min_free_disk_mb: u64,
    /// Task slots of this node's worker; 0: not a worker. Default: CPUs - 1 (at least 1).
    #[arg(long, env = "RAFTLORD_WORKER_CAPACITY", default_value_t = default_worker_capacity())]
    pub worker_capacity: u32,
    /// Worker category, for the category select strategies.
    #[arg(long, env = "RAFTLORD_WORKER_CATEGORY", default_value = crate::workers::DEFAULT_CATEGORY)]
    pub worker_category: String,
    /// Worker version, as Druid's `druid.worker.version`.
    #[arg(long, env = "RAFTLORD_WORKER_VERSION", default_value = "0")]
    pub worker_version: String,
    /// Command that runs a peon, split on spaces; the task directory is appended.
    /// Default: peons are forked from this binary by a peon launcher process.
    #[arg(long, env = "RAFTLORD_PEON_COMMAND")]
    pub peon_command: Option<String>,
    /// Milliseconds a peon gets between SIGTERM and SIGKILL when its task is stopped.
    #[arg(long, env = "RAFTLORD_PEON_GRACEFUL_STOP_MS", default_value_t = 10_000)]
    pub peon_graceful_stop_ms: u64,
    /// Milliseconds between a worker's heartbeats to the leader.
    #[arg(long, env = "RAFTLORD_WORKER_HEARTBEAT_MS", default_value_t = 1_000)]
    pub worker_heartbeat_ms: u64,
    /// Milliseconds without a heartbeat after which the leader declares a worker lost and
    /// fails its tasks.
    #[arg(long, env = "RAFTLORD_WORKER_TIMEOUT_MS", default_value_t = 30_000)]
    pub worker_timeout_ms: u64,
    /// Milliseconds a worker has to start an assigned task before the leader fails it (it is
    /// not placed again, so a task never runs twice).
    #[arg(long, env = "RAFTLORD_ASSIGN_TIMEOUT_MS", default_value_t = 60_000)]
    pub assign_timeout_ms: u64,
    /// Milliseconds a complete task's record is kept after it ended (Druid's task log
    /// retention: 90 days).
    #[arg(long, env = "RAFTLORD_COMPLETED_TASK_RETENTION_MS", default_value_t = 7_776_000_000)]
    pub completed_task_retention_ms: u64,
    /// Milliseconds audit records and worker-config history are kept (Druid's audit kill
    /// duty: 90 days).
    #[arg(long, env = "RAFTLORD_AUDIT_RETENTION_MS", default_value_t = 7_776_000_000)]
    pub audit_retention_ms: u64,
    /// Directory for finished tasks' logs and reports; every node serves from it, so share it
    /// between nodes where possible. Default: DATA_DIR/task-logs.
    #[arg(long, env = "RAFTLORD_TASK_LOG_DIR")]
    pub task_log_dir: Option<PathBuf>,
    /// Deep storage, where ingestion tasks push segment files
    /// (`dataSource/start_end/version/partition/index.parquet`): a directory that every node
    /// sees, or `s3://bucket/prefix` (credentials, region and endpoint from the standard AWS_*
    /// environment variables, e.g. AWS_ENDPOINT_URL for MinIO). Default: DATA_DIR/deep-storage.
    #[arg(long, env = "RAFTLORD_DEEP_STORAGE")]
    pub deep_storage: Option<String>,
    /// Where this node's Historical keeps the segments it serves. Default: DATA_DIR/segment-cache.
    #[arg(long, env = "RAFTLORD_SEGMENT_CACHE_DIR")]
    pub segment_cache_dir: Option<PathBuf>,
    /// Most bytes of segments this node's Historical serves (e.g. 500MiB, 10GiB, 2000000000);
    /// 0: not a Historical.
    #[arg(long, env = "RAFTLORD_MAX_SEGMENT_CACHE_SIZE", default_value = "10GiB", value_parser = parse_bytes)]
    pub max_segment_cache_size: u64,
    /// The Historical's tier (Druid's `druid.server.tier`); rules name tiers in `tieredReplicants`.
    #[arg(long, env = "RAFTLORD_TIER", default_value = crate::coordinator::rules::DEFAULT_TIER)]
    pub tier: String,
    /// How often the Coordinator's historical management runs at the least (it also runs soon
    /// after segments, rules or Historicals change): an ISO-8601 duration such as PT60S (Druid's
    /// `druid.coordinator.period`), or milliseconds.
    #[arg(long, env = "RAFTLORD_COORDINATOR_PERIOD", default_value = "PT5S", value_parser = parse_period_ms)]
    pub coordinator_period: u64,
    /// Auto-kill (Druid's `druid.coordinator.kill.on`): the leader submits `kill` tasks for
    /// unused segments past the retention and buffer below, in the datasources of the dynamic
    /// config's `killDataSourceWhitelist` (all when it is empty).
    #[arg(long, env = "RAFTLORD_KILL_UNUSED_SEGMENTS")]
    pub kill_unused_segments: bool,
    /// How often auto-kill runs (ISO-8601 duration or milliseconds).
    #[arg(long, env = "RAFTLORD_KILL_PERIOD", default_value = "P1D", value_parser = parse_period_ms)]
    pub kill_period: u64,
    /// Only segments whose interval ended at least this long ago are killed.
    #[arg(long, env = "RAFTLORD_KILL_DURATION_TO_RETAIN", default_value = "P90D", value_parser = parse_duration_ms)]
    pub kill_duration_to_retain: u64,
    /// Only segments marked unused at least this long ago are killed.
    #[arg(long, env = "RAFTLORD_KILL_BUFFER_PERIOD", default_value = "P30D", value_parser = parse_duration_ms)]
    pub kill_buffer_period: u64,
    /// How often auto-compaction looks for time chunks to compact (Druid's
    /// `druid.coordinator.period.indexingPeriod`), for the datasources with a compaction config.
    #[arg(long, env = "RAFTLORD_INDEXING_PERIOD", default_value = "PT1800S", value_parser = parse_period_ms)]
    pub indexing_period: u64,
    /// Most segments one auto-kill task deletes.
    #[arg(long, env = "RAFTLORD_KILL_MAX_SEGMENTS", default_value_t = 100)]
    pub kill_max_segments: usize,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// HTTPS for clients and between nodes.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) of this node: it then serves HTTPS only, and its peers must be
    /// https:// URLs.
    #[arg(long, env = "RAFTLORD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RAFTLORD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM certificates of the CA that signed the nodes' certificates, trusted beside the
    /// system's roots by this node, its peons and its clients.
    #[arg(long, env = "RAFTLORD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The node's TLS settings, if it serves HTTPS.
    pub fn settings(&self) -> Option<crate::config::TlsSettings> {
        Some(crate::config::TlsSettings {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone(),
        })
    }

    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (name, value) in [("cert", &self.tls_cert), ("key", &self.tls_key), ("ca", &self.tls_ca)] {
            if let Some(v) = value {
                flags.push(format!("--tls-{name}={}", v.display()));
            }
        }
        flags
    }

    /// Refuses `urls` that are not HTTPS when this node serves HTTPS: a node with TLS on
    /// never talks to a peer in plain HTTP.
    pub fn check_peer_urls<'a>(&self, urls: impl IntoIterator<Item = &'a String>) -> anyhow::Result<()> {
        if self.tls_cert.is_none() {
            return Ok(());
        }
        for url in urls {
            if !url.starts_with("https://") {
                anyhow::bail!("TLS is on (--tls-cert) but the peer {url} is plain HTTP: every node must use https://");
            }
        }
        Ok(())
    }
}

/// Whether requests need a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Druid's basic-security: users with passwords, roles with permissions.
    Basic,
    /// No authentication: anyone who reaches the node may do anything.
    None,
}

/// Users and permissions.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// `basic` (users and roles, as Druid's basic-security) or `none`. `server` and `bootstrap`
    /// need `basic` with --initial-admin-password, or `none` given explicitly; `dev` runs with
    /// `none` unless --initial-admin-password is given.
    #[arg(long, env = "RAFTLORD_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Password of the `admin` user (every permission), created at the cluster's first start;
    /// later changes go through the basic-security API and are kept.
    #[arg(long, env = "RAFTLORD_INITIAL_ADMIN_PASSWORD", hide_env_values = true)]
    pub initial_admin_password: Option<String>,
    /// Name of the authenticator in `/druid-ext/basic-security/authentication/db/{name}/...`,
    /// as Druid's `druid.auth.authenticatorChain`.
    #[arg(long, env = "RAFTLORD_AUTHENTICATOR_NAME", default_value = crate::config::DEFAULT_AUTH_NAME)]
    pub authenticator_name: String,
    /// Name of the authorizer in `/druid-ext/basic-security/authorization/db/{name}/...`, as
    /// Druid's `druid.auth.authorizers`.
    #[arg(long, env = "RAFTLORD_AUTHORIZER_NAME", default_value = crate::config::DEFAULT_AUTH_NAME)]
    pub authorizer_name: String,
}

impl AuthArgs {
    /// The settings these flags ask for. `dev` runs without auth unless a password is given;
    /// any other node refuses to guess.
    pub fn settings(&self, dev: bool) -> anyhow::Result<crate::config::AuthSettings> {
        let password = self.initial_admin_password.as_deref().filter(|p| !p.is_empty());
        let mut settings = match (self.auth, password) {
            (Some(AuthMode::None), _) => crate::config::AuthSettings::off(),
            (_, Some(p)) => crate::config::AuthSettings::basic(p),
            (None, None) if dev => crate::config::AuthSettings::off(),
            (Some(AuthMode::Basic), None) | (None, None) => anyhow::bail!(
                "authentication needs the admin user's first password: give --initial-admin-password \
                 (or RAFTLORD_INITIAL_ADMIN_PASSWORD), or run without authentication with --auth none"
            ),
        };
        settings.authenticator = self.authenticator_name.clone();
        settings.authorizer = self.authorizer_name.clone();
        Ok(settings)
    }

    /// The flags for a child node process; the password travels in its environment instead.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--authenticator-name={}", self.authenticator_name),
            format!("--authorizer-name={}", self.authorizer_name),
        ];
        match self.auth {
            Some(AuthMode::Basic) => flags.push("--auth=basic".into()),
            Some(AuthMode::None) => flags.push("--auth=none".into()),
            None => {}
        }
        flags
    }
}

impl NodeArgs {
    /// The same settings as command-line flags, for starting node processes.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--max-task-payload-bytes={}", self.max_task_payload_bytes),
            format!("--heartbeat-ms={}", self.heartbeat_ms),
            format!("--election-timeout-ms={}", self.election_timeout_ms),
            format!("--snapshot-every={}", self.snapshot_every),
            format!("--proposal-batch={}", self.proposal_batch),
            format!("--proposals-in-flight={}", self.proposals_in_flight),
            format!("--min-free-disk-mb={}", self.min_free_disk_mb),
            format!("--worker-capacity={}", self.worker_capacity),
            format!("--worker-category={}", self.worker_category),
            format!("--worker-version={}", self.worker_version),
            format!("--peon-graceful-stop-ms={}", self.peon_graceful_stop_ms),
            format!("--worker-heartbeat-ms={}", self.worker_heartbeat_ms),
            format!("--worker-timeout-ms={}", self.worker_timeout_ms),
            format!("--assign-timeout-ms={}", self.assign_timeout_ms),
            format!("--completed-task-retention-ms={}", self.completed_task_retention_ms),
            format!("--audit-retention-ms={}", self.audit_retention_ms),
            format!("--max-segment-cache-size={}", self.max_segment_cache_size),
            format!("--tier={}", self.tier),
            format!("--coordinator-period={}", self.coordinator_period),
            format!("--kill-period={}", self.kill_period),
            format!("--indexing-period={}", self.indexing_period),
            format!("--kill-duration-to-retain={}", self.kill_duration_to_retain),
            format!("--kill-buffer-period={}", self.kill_buffer_period),
            format!("--kill-max-segments={}", self.kill_max_segments),
        ];
        if self.kill_unused_segments {
            flags.push("--kill-unused-segments".into());
        }
        if let Some(m) = self.max_active_tasks {
            flags.push(format!("--max-active-tasks={m}"));
        }
        if let Some(c) = &self.peon_command {
            flags.push(format!("--peon-command={c}"));
        }
        if let Some(d) = &self.task_log_dir {
            flags.push(format!("--task-log-dir={}", d.display()));
        }
        if let Some(d) = &self.deep_storage {
            flags.push(format!("--deep-storage={d}"));
        }
        flags.extend(self.auth.to_flags());
        flags.extend(self.tls.to_flags());
        flags
    }
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data directory.
    #[arg(long, env = "RAFTLORD_DATA_DIR", default_value = "./raftlord-data")]
    pub data_dir: PathBuf,
    /// Address to serve HTTP on.
    #[arg(long, env = "RAFTLORD_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub node: NodeArgs,
}

/// What a `server` node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Druid's Overlord: task queue and assignment (a Raft member).
    Overlord,
    /// Druid's Coordinator: segment metadata and duties (a Raft member).
    Coordinator,
    /// Druid's MiddleManager: runs tasks in peon processes.
    #[value(alias = "middleManager")]
    Worker,
    /// Druid's Historical: serves segments from a local cache, loaded as the Coordinator asks.
    Historical,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Roles, comma separated. Without `overlord` or `coordinator` the node is no Raft member
    /// (`worker`, `historical` or both): no Raft, no state; it needs `--join URL`.
    #[arg(
        long,
        env = "RAFTLORD_ROLES",
        value_enum,
        value_delimiter = ',',
        default_value = "overlord,coordinator,worker,historical"
    )]
    pub roles: Vec<Role>,
    /// This member's Raft id (a positive integer, unique in the cluster). Not needed for a node
    /// that is no member.
    #[arg(long, env = "RAFTLORD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to serve HTTP (API and Raft) on.
    #[arg(long, env = "RAFTLORD_LISTEN")]
    pub listen: SocketAddr,
    /// URL other nodes and clients reach this node at; defaults to http://<listen>.
    #[arg(long, env = "RAFTLORD_ADVERTISE")]
    pub advertise: Option<String>,
    /// Every member as ID=URL, comma separated, the same on every member: 1=http://a:8090,2=...
    #[arg(long, env = "RAFTLORD_PEERS", value_parser = parse_peers, conflicts_with = "join")]
    pub peers: Option<BTreeMap<u64, String>>,
    /// Join an existing cluster instead of forming one. A Raft member waits to be added with
    /// `raftlord cluster add-node`; a worker or Historical that is no member gives any cluster
    /// node's URL (or several, comma separated) here.
    #[arg(long, num_args = 0..=1, value_name = "URL")]
    pub join: Option<Option<String>>,
    /// Data directory.
    #[arg(long, env = "RAFTLORD_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Shared secret that Raft RPCs and internal routes require.
    #[arg(long, env = "RAFTLORD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: String,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Parent data directory; node N keeps its data in DIR/node-N.
    #[arg(long, env = "RAFTLORD_DATA_DIR", default_value = "./raftlord-cluster")]
    pub data_dir: PathBuf,
    /// HTTP port of node 1; node N listens on BASE_PORT + N - 1.
    #[arg(long, default_value_t = 8091)]
    pub base_port: u16,
    /// Address the nodes listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Serve HTTPS with certificates from a throwaway CA made in DIR/tls (kept across
    /// restarts; clients trust DIR/tls/ca.pem). Ignored when --tls-cert is given.
    #[arg(long)]
    pub tls: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show members, leader, term and log positions.
    Status(UrlArg),
    /// Add a node: it joins as a learner, catches up, then votes. Start it first with `server --join`.
    AddNode {
        #[command(flatten)]
        url: UrlArg,
        /// Raft id of the new node.
        #[arg(long)]
        node_id: u64,
        /// URL of the new node.
        #[arg(long)]
        node_url: String,
        #[arg(long, env = "RAFTLORD_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: String,
    },
    /// Remove a node from the voters and the cluster.
    RemoveNode {
        #[command(flatten)]
        url: UrlArg,
        /// Raft id of the node to remove.
        #[arg(long)]
        node_id: u64,
        #[arg(long, env = "RAFTLORD_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// The used segments of a datasource: interval, version, partition, size and file.
    List {
        #[arg(long)]
        datasource: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit the task spec in FILE (`-` reads standard input).
    Submit {
        file: PathBuf,
        /// Follow the task to its end with a live progress line (rows, rows/s, elapsed), then
        /// print the outcome, row counts and segments published; exit 1 unless it succeeded.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Show a task's status.
    Status {
        id: String,
        #[command(flatten)]
        url: UrlArg,
    },
    /// List tasks.
    List {
        /// waiting, pending, running or complete.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        datasource: Option<String>,
        #[command(flatten)]
        url: UrlArg,
    },
    /// Stop a task.
    Shutdown {
        id: String,
        #[command(flatten)]
        url: UrlArg,
    },
}

#[derive(Debug, Clone, Args)]
pub struct UrlArg {
    /// Any node of the cluster; requests follow redirects to the leader.
    #[arg(long, env = "RAFTLORD_URL", default_value = "http://127.0.0.1:8090")]
    pub url: String,
    /// User to log in as, on a cluster with auth on.
    #[arg(long, env = "RAFTLORD_USER")]
    pub user: Option<String>,
    /// The user's password.
    #[arg(long, env = "RAFTLORD_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<String>,
    /// A file whose first line is `user:password`, instead of --user and --password (keeps the
    /// password out of the process list and shell history).
    #[arg(long, env = "RAFTLORD_CREDENTIALS_FILE", conflicts_with_all = ["user", "password"])]
    pub credentials_file: Option<PathBuf>,
    /// PEM certificates of the cluster's CA, trusted beside the system's roots (for https://).
    #[arg(long, env = "RAFTLORD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl UrlArg {
    /// The user and password to send, if any.
    pub fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        if let Some(path) = &self.credentials_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the credentials file {}: {e}", path.display()))?;
            let line = text.lines().next().unwrap_or_default().trim();
            let (user, password) = line
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("the credentials file {} must hold 'user:password'", path.display()))?;
            return Ok(Some((user.to_string(), password.to_string())));
        }
        Ok(self
            .user
            .clone()
            .map(|u| (u, self.password.clone().unwrap_or_default())))
    }
}

fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, url) = part.split_once('=').ok_or_else(|| format!("'{part}' is not ID=URL"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("'{id}' is not a node id (a positive integer)"))?;
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("peer URL '{url}' must start with http:// or https://"));
        }
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        if peers.insert(id, url.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("the peer list is empty".into());
    }
    Ok(peers)
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Dev(args) => serve::dev(args).await,
        Command::Server(args) => serve::server(args).await,
        Command::Bootstrap(args) => bootstrap::run(args).await,
        Command::Cluster(cmd) => client::cluster(cmd).await,
        Command::Task(cmd) => client::task(cmd).await,
        Command::Segments(cmd) => client::segments(cmd).await,
        Command::Peon { task_dir } => Ok(crate::worker::peon::run(&task_dir).await),
        Command::PeonLauncher => Ok(2),
        Command::Debug(DebugCommand::Log(args)) => debug::log(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_mistakes() {
        let p = parse_peers("1=http://a:1, 2=http://b:2/,3=https://c").unwrap();
        assert_eq!(p.get(&2).unwrap(), "http://b:2");
        assert!(parse_peers("1=http://a,1=http://b").is_err());
        assert!(parse_peers("x=http://a").is_err());
        assert!(parse_peers("1=a:80").is_err());
        assert!(parse_peers("0=http://a").is_err());
        assert!(parse_peers("").is_err());
    }

    #[test]
    fn node_settings_survive_a_round_trip_through_flags() {
        let cli = Cli::parse_from(["raftlord", "dev", "--max-active-tasks", "7", "--heartbeat-ms", "33"]);
        let Command::Dev(dev) = cli.command else {
            panic!("parsed as another command")
        };
        let mut argv = vec!["raftlord".to_string(), "dev".to_string()];
        argv.extend(dev.node.to_flags());
        let Command::Dev(again) = Cli::parse_from(argv).command else {
            panic!("parsed as another command")
        };
        assert_eq!(again.node.to_flags(), dev.node.to_flags());
        assert_eq!((again.node.max_active_tasks, again.node.heartbeat_ms), (Some(7), 33));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
