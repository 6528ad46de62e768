//! `raftlord dev` and `raftlord server`: run a node until SIGTERM or Ctrl-C.

use std::path::Path;
use std::time::Duration;

use raftlord_raft::{ClusterFormation, RaftSettings};
use rand::Rng;

use super::{DevArgs, NodeArgs, Role, ServerArgs};
use crate::config::{DataNodeConfig, Limits, NodeConfig, WorkerSettings};
use crate::leader::OverlordSettings;
use crate::node::{RunningDataNode, RunningNode};
use crate::nodes::NodeRole;
use crate::worker::WorkerTiming;

fn raft_settings(args: &NodeArgs) -> RaftSettings {
    RaftSettings {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_timeout_ms,
        election_max_ms: args.election_timeout_ms * 2,
        snapshot_every: args.snapshot_every,
        max_batch: args.proposal_batch,
        max_in_flight: args.proposals_in_flight,
        min_free_bytes: args.min_free_disk_mb.saturating_mul(1 << 20),
    }
}

fn limits(args: &NodeArgs) -> Limits {
    Limits {
        max_payload_bytes: args.max_task_payload_bytes,
        max_active_tasks: args.max_active_tasks,
    }
}

fn overlord_settings(args: &NodeArgs) -> OverlordSettings {
    OverlordSettings {
        worker_timeout: Duration::from_millis(args.worker_timeout_ms),
        assign_timeout: Duration::from_millis(args.assign_timeout_ms),
        retention: crate::leader::retention::Retention {
            completed_tasks: Duration::from_millis(args.completed_task_retention_ms),
            audit: Duration::from_millis(args.audit_retention_ms),
        },
        coordinator_period: Duration::from_millis(args.coordinator_period),
        kill: crate::coordinator::kill::KillSettings {
            enabled: args.kill_unused_segments,
            period: Duration::from_millis(args.kill_period),
            duration_to_retain_ms: args.kill_duration_to_retain,
            buffer_period_ms: args.kill_buffer_period,
            max_segments: args.kill_max_segments.max(1),
        },
        indexing_period: Duration::from_millis(args.indexing_period),
    }
}

/// The Historical settings, or `None` when the cache size is 0.
fn historical_settings(args: &NodeArgs, data_dir: &Path) -> Option<crate::config::HistoricalSettings> {
    (args.max_segment_cache_size > 0).then(|| crate::config::HistoricalSettings {
        cache_dir: args
            .segment_cache_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("segment-cache")),
        max_size: args.max_segment_cache_size,
        tier: args.tier.clone(),
        deep_storage: deep_storage(args, data_dir),
        timing: WorkerTiming {
            heartbeat: Duration::from_millis(args.worker_heartbeat_ms.max(10)),
            ..WorkerTiming::default()
        },
    })
}

fn task_log_dir(args: &NodeArgs, data_dir: &Path) -> std::path::PathBuf {
    args.task_log_dir.clone().unwrap_or_else(|| data_dir.join("task-logs"))
}

/// Deep storage: an `s3://` URI, or a directory made absolute (segment load specs name it, and
/// peons read it from a directory of their own).
fn deep_storage(args: &NodeArgs, data_dir: &Path) -> String {
    match &args.deep_storage {
        Some(d) if d.contains("://") => d.clone(),
        Some(d) => std::path::absolute(d)
            .unwrap_or_else(|_| d.into())
            .display()
            .to_string(),
        None => {
            let d = data_dir.join("deep-storage");
            std::path::absolute(&d).unwrap_or(d).display().to_string()
        }
    }
}

/// Refuses a deep storage location that no task could use, before the node starts.
fn check_deep_storage(args: &NodeArgs, data_dir: &Path) -> anyhow::Result<()> {
    crate::worker::deep_storage::DeepStorage::parse(&deep_storage(args, data_dir))
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("--deep-storage: {e}"))
}

/// The worker settings, or `None` when the capacity is 0.
fn worker_settings(args: &NodeArgs, data_dir: &Path) -> Option<WorkerSettings> {
    (args.worker_capacity > 0).then(|| WorkerSettings {
        capacity: args.worker_capacity,
        category: args.worker_category.clone(),
        version: args.worker_version.clone(),
        base_dir: data_dir.join("worker"),
        peon_command: args
            .peon_command
            .as_deref()
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        graceful_stop: Duration::from_millis(args.peon_graceful_stop_ms),
        deep_storage: deep_storage(args, data_dir),
        timing: WorkerTiming {
            heartbeat: Duration::from_millis(args.worker_heartbeat_ms.max(10)),
            ..WorkerTiming::default()
        },
        tls_ca: args.tls.tls_ca.clone(),
    })
}

/// A new random cluster secret.
pub fn generate_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the secret kept in `dir/cluster-secret`, creating it on first use.
pub fn secret_in(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("cluster-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    let secret = generate_secret();
    // Created readable by its owner only before the secret is written into it: there is no
    // moment when another user could open it. An empty file left by a crash is replaced.
    crate::worker::runner::write_private(dir, "cluster-secret", &secret)?;
    Ok(secret)
}

pub async fn dev(args: DevArgs) -> anyhow::Result<i32> {
    check_deep_storage(&args.node, &args.data_dir)?;
    let auth = args.node.auth.settings(true)?;
    if auth.enabled {
        println!("auth: on; log in as 'admin' with the initial admin password");
    } else {
        println!(
            "auth: off; anyone who can reach {} may do anything (give --initial-admin-password to turn it on)",
            args.listen
        );
        if !args.listen.ip().is_loopback() {
            eprintln!(
                "raftlord: warning: auth is off and this node listens on {}, beyond this machine",
                args.listen
            );
        }
    }
    let secret = secret_in(&args.data_dir)?;
    let config = NodeConfig {
        node_id: 1,
        listen: args.listen,
        advertise: String::new(),
        data_dir: args.data_dir.clone(),
        formation: ClusterFormation::Single,
        cluster_secret: secret,
        roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
        raft: raft_settings(&args.node),
        limits: limits(&args.node),
        overlord: overlord_settings(&args.node),
        task_log_dir: task_log_dir(&args.node, &args.data_dir),
        worker: worker_settings(&args.node, &args.data_dir),
        historical: historical_settings(&args.node, &args.data_dir),
        auth,
        tls: args.node.tls.settings(),
    };
    run_until_signal(config).await
}

pub async fn server(mut args: ServerArgs) -> anyhow::Result<i32> {
    // A secret read from a file often ends in a newline: surrounding whitespace is never part
    // of it, on any node.
    args.cluster_secret = args.cluster_secret.trim().to_string();
    if args.cluster_secret.is_empty() {
        anyhow::bail!("--cluster-secret (or RAFTLORD_CLUSTER_SECRET) must not be empty");
    }
    check_deep_storage(&args.node, &args.data_dir)?;
    let controller = args
        .roles
        .iter()
        .any(|r| matches!(r, Role::Overlord | Role::Coordinator));
    if !controller {
        return data_node(args).await;
    }
    let auth = args.node.auth.settings(false)?;
    let node_id = match args.node_id {
        Some(0) | None => anyhow::bail!("--node-id must be a positive integer for an overlord or coordinator"),
        Some(id) => id,
    };
    if let Some(peers) = &args.peers {
        args.node.tls.check_peer_urls(peers.values())?;
    }
    let formation = match (&args.peers, &args.join) {
        (Some(peers), _) => {
            if !peers.contains_key(&node_id) {
                anyhow::bail!("--peers does not list this node's id {node_id}");
            }
            ClusterFormation::Peers(peers.clone())
        }
        (None, Some(_)) => ClusterFormation::Join,
        (None, None) => anyhow::bail!("give --peers (to form or rejoin a cluster) or --join (to be added to one)"),
    };
    let advertise = match (&args.advertise, &args.peers) {
        (Some(a), _) => a.trim_end_matches('/').to_string(),
        (None, Some(peers)) => peers[&node_id].clone(),
        (None, None) if args.node.tls.tls_cert.is_some() => format!("https://{}", args.listen),
        (None, None) => format!("http://{}", args.listen),
    };
    let worker = if args.roles.contains(&Role::Worker) {
        worker_settings(&args.node, &args.data_dir)
    } else {
        None
    };
    let historical = if args.roles.contains(&Role::Historical) {
        historical_settings(&args.node, &args.data_dir)
    } else {
        None
    };
    let config = NodeConfig {
        node_id,
        listen: args.listen,
        advertise,
        data_dir: args.data_dir.clone(),
        formation,
        cluster_secret: args.cluster_secret.clone(),
        roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
        raft: raft_settings(&args.node),
        limits: limits(&args.node),
        overlord: overlord_settings(&args.node),
        task_log_dir: task_log_dir(&args.node, &args.data_dir),
        worker,
        historical,
        auth,
        tls: args.node.tls.settings(),
    };
    run_until_signal(config).await
}

/// `server --roles worker,historical --join URL` (either or both): a worker or a Historical for
/// an existing cluster, not a Raft member.
async fn data_node(args: ServerArgs) -> anyhow::Result<i32> {
    let Some(Some(seed)) = &args.join else {
        anyhow::bail!(
            "a worker or historical node that is no overlord or coordinator needs --join URL (any node of the cluster)"
        );
    };
    if args.peers.is_some() {
        anyhow::bail!("a worker or historical node is not a Raft member: give --join URL, not --peers");
    }
    let worker = if args.roles.contains(&Role::Worker) {
        let Some(w) = worker_settings(&args.node, &args.data_dir) else {
            anyhow::bail!("a worker needs --worker-capacity of at least 1");
        };
        Some(w)
    } else {
        None
    };
    let historical = if args.roles.contains(&Role::Historical) {
        let Some(h) = historical_settings(&args.node, &args.data_dir) else {
            anyhow::bail!("a historical needs --max-segment-cache-size above 0");
        };
        Some(h)
    } else {
        None
    };
    let seeds: Vec<String> = seed
        .split(',')
        .map(|s| s.trim().trim_end_matches('/').to_string())
        .collect();
    args.node.tls.check_peer_urls(&seeds)?;
    let scheme = if args.node.tls.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let config = DataNodeConfig {
        listen: args.listen,
        advertise: args
            .advertise
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", args.listen)),
        seeds,
        cluster_secret: args.cluster_secret.clone(),
        task_log_dir: task_log_dir(&args.node, &args.data_dir),
        worker,
        historical,
        tls: args.node.tls.settings(),
        // Without `--auth none`, a worker-only node assumes the cluster checks users and
        // keeps task logs and reports behind the cluster secret.
        open_reads: args.node.auth.auth == Some(super::AuthMode::None),
    };
    let node = match RunningDataNode::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("raftlord: {e}");
            return Ok(1);
        }
    };
    if let Some(w) = &node.worker {
        println!("raftlord worker {} serving on {}", w.worker.host, node.url);
    }
    if let Some(h) = &node.historical {
        println!(
            "raftlord historical {} (tier {}) serving on {}",
            h.server.host, h.server.tier, node.url
        );
    }
    let mut node = node;
    let failed = tokio::select! {
        _ = wait_for_stop_signal() => None,
        reason = node.failed() => Some(reason),
    };
    node.stop().await;
    Ok(exit_code(failed))
}

/// 0 after an orderly stop; after a failure, logs why and gives 1.
fn exit_code(failed: Option<String>) -> i32 {
    match failed {
        None => 0,
        Some(reason) => {
            tracing::error!(reason = %reason, "the node cannot go on and stops");
            eprintln!("raftlord: the node stopped: {reason}");
            1
        }
    }
}

async fn run_until_signal(config: NodeConfig) -> anyhow::Result<i32> {
    let node = match RunningNode::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("raftlord: {e}");
            return Ok(1);
        }
    };
    println!("raftlord node {} serving on {}", node.raft.id, node.url);
    let mut node = node;
    let failed = tokio::select! {
        _ = wait_for_stop_signal() => None,
        reason = node.failed() => Some(reason),
    };
    // After a failure, stopping is best effort and bounded: Raft may be dead already.
    match failed {
        None => node.stop().await,
        Some(_) => {
            let _ = tokio::time::timeout(Duration::from_secs(5), node.stop()).await;
        }
    }
    Ok(exit_code(failed))
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_file_is_private_from_creation_and_kept_across_starts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = secret_in(dir.path()).unwrap();
        let path = dir.path().join("cluster-secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(secret_in(dir.path()).unwrap(), first, "a restart must keep the secret");
        // An empty file (a crash between create and write) is replaced by a new private one.
        std::fs::write(&path, "").unwrap();
        let second = secret_in(dir.path()).unwrap();
        assert!(second.len() >= 32 && second != first);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
