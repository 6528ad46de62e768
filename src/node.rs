//! A raftlord node: its components, started in stages and stopped in reverse order.
//!
//! Start-up, as Druid's `Lifecycle` stages:
//! 1. **storage**: open RocksDB under the data directory (a newer data format is refused);
//! 2. **raft**: restore the state machine from its snapshot and start Raft;
//! 3. **services**: node discovery, and the supervisor of leader-only services;
//! 4. **http**: bind the port and serve the API (Raft RPCs included), then join or form the
//!    cluster;
//! 5. **announcement**: announce this node (id, roles, URL, version) in the replicated state.
//!
//! A stage that fails stops the node with a message saying which stage and why. Stopping
//! (SIGTERM or Ctrl-C in the CLI) runs the stages backwards: withdraw the announcement (best
//! effort, bounded), stop serving HTTP, stop services, shut Raft down and flush storage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftlord_raft::network::Faults;
use raftlord_storage::Engine;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::leader::LeaderServices;
use crate::nodes::discovery::NodeDiscovery;
use crate::nodes::NodeAnnouncement;
use crate::sm::Command;
use crate::Raft;

/// Why a node could not start; the message names the stage.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage stage failed: {0}")]
    Storage(String),
    #[error("raft stage failed: {0}")]
    Raft(String),
    #[error("http stage failed: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// A started node.
pub struct RunningNode {
    pub raft: Arc<Raft>,
    pub url: String,
    pub discovery: NodeDiscovery,
    config: Arc<NodeConfig>,
    engine: Engine,
    http_stop: CancellationToken,
    services_stop: CancellationToken,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Starts a node on `config.listen`.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        Self::start_on(listener, config, Faults::default()).await
    }

    /// Starts a node on an already bound listener; `faults` lets tests cut its Raft links.
    pub async fn start_on(
        listener: TcpListener,
        mut config: NodeConfig,
        faults: Faults,
    ) -> Result<RunningNode, StartError> {
        let local = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        if config.advertise.is_empty() {
            config.advertise = format!("http://{local}");
        }
        let url = config.advertise.trim_end_matches('/').to_string();

        // 1. storage
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| StartError::Storage(format!("cannot create {}: {e}", config.data_dir.display())))?;
        let engine = Engine::open(&config.data_dir.join("raft")).map_err(|e| StartError::Storage(e.to_string()))?;
        info!(node_id = config.node_id, dir = %config.data_dir.display(), "storage opened");

        // 2. raft
        let raft = Raft::start(
            config.node_id,
            url.clone(),
            engine.clone(),
            config.cluster_secret.clone(),
            &config.raft,
            Arc::new(now_ms),
            faults,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        info!(node_id = config.node_id, "raft started");

        // 3. services
        let services_stop = CancellationToken::new();
        let discovery = NodeDiscovery::default();
        let mut background = vec![
            tokio::spawn(discovery.clone().run(raft.clone(), services_stop.child_token())),
            tokio::spawn(LeaderServices::new(raft.clone()).run(services_stop.child_token())),
        ];

        // 4. http, then cluster formation
        let config = Arc::new(config);
        let state = AppState {
            raft: raft.clone(),
            config: config.clone(),
            discovery: discovery.clone(),
        };
        let http_stop = CancellationToken::new();
        let app = api::router(state);
        let stop = http_stop.clone();
        let http = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                warn!(error = %e, "http server stopped with an error");
            }
        });
        info!(url = %url, "serving http");
        {
            let raft = raft.clone();
            let formation = config.formation.clone();
            let cancel = services_stop.child_token();
            background.push(tokio::spawn(async move {
                if let Err(e) = raft.form(&formation, &cancel).await {
                    tracing::error!(error = %e, "cannot form or join the cluster");
                }
            }));
        }

        // 5. announcement
        let announcement = announcement(&config, &url);
        background.push(tokio::spawn(announce(
            raft.clone(),
            announcement,
            services_stop.child_token(),
        )));

        Ok(RunningNode {
            raft,
            url,
            discovery,
            config,
            engine,
            http_stop,
            services_stop,
            http,
            background,
        })
    }

    /// Stops the node, components in reverse order of start.
    pub async fn stop(self) {
        info!(node_id = self.config.node_id, "stopping");
        self.services_stop.cancel();
        withdraw(&self.raft, &self.config.node_name()).await;
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        for task in self.background {
            task.abort();
        }
        self.raft.shutdown().await;
        if let Err(e) = self.engine.flush() {
            warn!(error = %e, "flushing storage on stop failed");
        }
        info!(node_id = self.config.node_id, "stopped");
    }
}

fn announcement(config: &NodeConfig, url: &str) -> NodeAnnouncement {
    NodeAnnouncement {
        id: config.node_name(),
        raft_id: Some(config.node_id),
        roles: config.roles.clone(),
        url: url.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        announced_ms: 0,
    }
}

/// Sends a command to the leader: proposed directly when this node leads, else over HTTP.
async fn send_to_leader(raft: &Raft, path: &str, body: &serde_json::Value, command: Command) -> Result<(), String> {
    if raft.leader_ready() {
        return raft
            .proposer
            .propose(command)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    let (_, leader) = raft.leader().ok_or("no leader yet")?;
    let resp = reqwest::Client::new()
        .post(format!("{leader}{path}"))
        .bearer_auth(raft.secret())
        .timeout(Duration::from_secs(3))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("leader answered {}", resp.status()))
    }
}

/// Announces this node until the announcement is committed.
async fn announce(raft: Arc<Raft>, node: NodeAnnouncement, cancel: CancellationToken) {
    let body = serde_json::to_value(&node).unwrap_or_default();
    loop {
        match send_to_leader(
            &raft,
            "/internal/nodes/announce",
            &body,
            Command::AnnounceNode { node: node.clone() },
        )
        .await
        {
            Ok(()) => {
                info!(node = %node.id, "node announced");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "announcement not yet accepted"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Withdraws this node's announcement, giving up after a short bound (a whole cluster that is
/// stopping cannot commit, and that must not hold the stop up).
async fn withdraw(raft: &Raft, id: &str) {
    let body = serde_json::json!({ "id": id });
    let cmd = Command::WithdrawNode { id: id.to_string() };
    match tokio::time::timeout(
        Duration::from_secs(1),
        send_to_leader(raft, "/internal/nodes/withdraw", &body, cmd),
    )
    .await
    {
        Ok(Ok(())) => info!(node = %id, "announcement withdrawn"),
        _ => info!(node = %id, "announcement not withdrawn (no quorum); it is refreshed on the next start"),
    }
}
