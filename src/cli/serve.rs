//! `raftlord dev` and `raftlord server`: run a node until SIGTERM or Ctrl-C.

use std::path::Path;

use raftlord_raft::{ClusterFormation, RaftSettings};
use rand::Rng;

use super::{DevArgs, NodeArgs, ServerArgs};
use crate::config::{Limits, NodeConfig};
use crate::node::RunningNode;
use crate::nodes::NodeRole;

fn raft_settings(args: &NodeArgs) -> RaftSettings {
    RaftSettings {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_timeout_ms,
        election_max_ms: args.election_timeout_ms * 2,
        snapshot_every: args.snapshot_every,
        max_batch: args.proposal_batch,
        max_in_flight: args.proposals_in_flight,
    }
}

fn limits(args: &NodeArgs) -> Limits {
    Limits {
        max_payload_bytes: args.max_task_payload_bytes,
        max_active_tasks: args.max_active_tasks,
    }
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
    std::fs::create_dir_all(dir)?;
    let secret = generate_secret();
    std::fs::write(&path, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

pub async fn dev(args: DevArgs) -> anyhow::Result<i32> {
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
    };
    run_until_signal(config).await
}

pub async fn server(args: ServerArgs) -> anyhow::Result<i32> {
    if args.node_id == 0 {
        anyhow::bail!("--node-id must be a positive integer");
    }
    if args.cluster_secret.is_empty() {
        anyhow::bail!("--cluster-secret (or RAFTLORD_CLUSTER_SECRET) must not be empty");
    }
    let formation = match (&args.peers, args.join) {
        (Some(peers), _) => {
            if !peers.contains_key(&args.node_id) {
                anyhow::bail!("--peers does not list this node's id {}", args.node_id);
            }
            ClusterFormation::Peers(peers.clone())
        }
        (None, true) => ClusterFormation::Join,
        (None, false) => anyhow::bail!("give --peers (to form or rejoin a cluster) or --join (to be added to one)"),
    };
    let advertise = match (&args.advertise, &args.peers) {
        (Some(a), _) => a.trim_end_matches('/').to_string(),
        (None, Some(peers)) => peers[&args.node_id].clone(),
        (None, None) => format!("http://{}", args.listen),
    };
    let config = NodeConfig {
        node_id: args.node_id,
        listen: args.listen,
        advertise,
        data_dir: args.data_dir.clone(),
        formation,
        cluster_secret: args.cluster_secret.clone(),
        roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
        raft: raft_settings(&args.node),
        limits: limits(&args.node),
    };
    run_until_signal(config).await
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
    wait_for_stop_signal().await;
    node.stop().await;
    Ok(0)
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
