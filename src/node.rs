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
//!
//! Crash-only: when Raft stops on a fatal error (storage failed, an entry cannot be read or
//! applied), the proposer dies, or a critical background task (discovery, the leader's
//! services, the worker) panics, [`RunningNode::failed`] resolves with the reason and the CLI
//! exits non-zero. Nothing keeps serving with a dead core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use raftlord_raft::network::Faults;
use raftlord_storage::Engine;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::clock::now_ms;
use crate::config::{DataNodeConfig, NodeConfig, WorkerSettings};
use crate::historical::HistoricalService;
use crate::leader::{Heartbeats, LeaderServices};
use crate::nodes::discovery::NodeDiscovery;
use crate::nodes::{NodeAnnouncement, NodeRole};
use crate::sm::Command;
use crate::tasks::TaskLocation;
use crate::worker::protocol::LeaderClient;
use crate::worker::runner::{PeonRunner, RunnerConfig};
use crate::worker::WorkerService;
use crate::workers::Worker;
use crate::Raft;
use utoipa_axum::router::OpenApiRouter;

/// Why a node could not start; the message names the stage.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage stage failed: {0}")]
    Storage(String),
    #[error("raft stage failed: {0}")]
    Raft(String),
    #[error("http stage failed: cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("worker stage failed: {0}")]
    Worker(String),
    #[error("historical stage failed: {0}")]
    Historical(String),
    #[error("TLS settings: {0}")]
    Tls(String),
}

/// The server side of `tls`, after trusting its CA in every client of this process.
fn tls_server(tls: Option<&crate::config::TlsSettings>) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    let Some(t) = tls else { return Ok(None) };
    if let Some(ca) = &t.ca {
        raftlord_raft::tls::trust(ca).map_err(StartError::Tls)?;
    }
    raftlord_raft::tls::server_config(&t.cert, &t.key)
        .map(Some)
        .map_err(StartError::Tls)
}

fn scheme(tls: &Option<Arc<rustls::ServerConfig>>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// A started node.
pub struct RunningNode {
    pub raft: Arc<Raft>,
    pub url: String,
    pub discovery: NodeDiscovery,
    /// This node's worker, when it is one.
    pub worker: Option<WorkerService>,
    /// This node's Historical, when it is one.
    pub historical: Option<HistoricalService>,
    config: Arc<NodeConfig>,
    engine: Engine,
    http_stop: CancellationToken,
    services_stop: CancellationToken,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// Reasons sent by critical tasks that panicked.
    fatal: mpsc::UnboundedReceiver<String>,
}

/// Spawns a task the node cannot work without: if it panics, the reason goes to `fatal`.
fn critical<F>(name: &'static str, fatal: &mpsc::UnboundedSender<String>, task: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let fatal = fatal.clone();
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            let _ = fatal.send(format!("{name} panicked: {why}"));
        }
    })
}

impl RunningNode {
    /// Resolves, with the reason, when the node can no longer work (see the module docs); the
    /// caller should then stop it and exit non-zero.
    pub async fn failed(&mut self) -> String {
        tokio::select! {
            reason = self.raft.failed() => reason,
            Some(reason) = self.fatal.recv() => reason,
        }
    }

    /// Starts a node on `config.listen`.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let (listener, _) = bind(config.listen).await?;
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
        let tls = tls_server(config.tls.as_ref())?;
        if config.advertise.is_empty() {
            config.advertise = format!("{}://{local}", scheme(&tls));
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
        let heartbeats = Heartbeats::default();
        let duties = crate::coordinator::duties::DutyLog::default();
        let (fatal_tx, fatal) = mpsc::unbounded_channel();
        let mut background = vec![
            critical(
                "node discovery",
                &fatal_tx,
                discovery.clone().run(raft.clone(), services_stop.child_token()),
            ),
            critical(
                "the leader's services",
                &fatal_tx,
                LeaderServices::new(
                    raft.clone(),
                    heartbeats.clone(),
                    duties.clone(),
                    config.overlord.clone(),
                    config
                        .auth
                        .initial_admin_password
                        .clone()
                        .filter(|_| config.auth.enabled),
                )
                .run(services_stop.child_token()),
            ),
        ];
        let worker = match &config.worker {
            Some(settings) => {
                let w = start_worker(
                    settings,
                    &url,
                    &config.task_log_dir,
                    vec![url.clone()],
                    &config.cluster_secret,
                )?;
                background.push(critical(
                    "the worker",
                    &fatal_tx,
                    w.clone().run(services_stop.child_token()),
                ));
                config.roles.push(NodeRole::MiddleManager);
                Some(w)
            }
            None => None,
        };
        let historical = match &config.historical {
            Some(settings) => {
                let h = start_historical(settings, &url, vec![url.clone()], &config.cluster_secret)?;
                background.push(critical(
                    "the historical",
                    &fatal_tx,
                    h.clone().run(services_stop.child_token()),
                ));
                config.roles.push(NodeRole::Historical);
                Some(h)
            }
            None => None,
        };

        // 4. http, then cluster formation
        let config = Arc::new(config);
        let state = AppState {
            raft: raft.clone(),
            config: config.clone(),
            discovery: discovery.clone(),
            heartbeats,
            duties,
            http: raftlord_raft::tls::client_builder().build().unwrap_or_default(),
        };
        let http_stop = CancellationToken::new();
        let mut extra = OpenApiRouter::new();
        if let Some(w) = &worker {
            extra = extra.merge(crate::worker::http::routes(
                w.clone(),
                &config.cluster_secret,
                !config.auth.enabled,
            ));
        }
        if let Some(h) = &historical {
            extra = extra.merge(crate::historical::http::routes(h.clone()));
        }
        let app = api::router(state, Some(extra));
        let http = serve(listener, app, http_stop.clone(), tls);
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

        // Task logs and reports of tasks whose records were pruned go too (each node's own
        // task log directory).
        {
            let raft = raft.clone();
            let dir = config.task_log_dir.clone();
            let retention = config.overlord.retention;
            let cancel = services_stop.child_token();
            background.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(retention.period()) => {}
                    }
                    let before = std::time::SystemTime::now() - retention.completed_tasks;
                    let g = raft.shared.read().await;
                    let ids: std::collections::HashSet<String> =
                        g.state.tasks.all().map(|t| t.spec.id.clone()).collect();
                    drop(g);
                    let d = dir.clone();
                    let removed = tokio::task::spawn_blocking(move || {
                        crate::worker::runner::prune_task_logs(&d, |id| ids.contains(id), before)
                    })
                    .await
                    .unwrap_or(0);
                    if removed > 0 {
                        info!(
                            files = removed,
                            "deleted the logs and reports of tasks past their retention"
                        );
                    }
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
            worker,
            historical,
            config,
            engine,
            http_stop,
            services_stop,
            http,
            background,
            fatal,
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

/// Binds the HTTP port; returns the listener and the address it got.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let local = listener.local_addr().map_err(listen_error)?;
    Ok((listener, local))
}

/// Serves `app` on `listener` until `stop` is cancelled, finishing requests in flight. The
/// descriptor limit is raised first and the connection cap set below it.
fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> JoinHandle<()> {
    let limits = crate::http_server::ServerLimits::for_fd_limit(crate::http_server::raise_fd_limit());
    crate::http_server::serve(listener, app, stop, limits, tls)
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
    let resp = raftlord_raft::tls::client_builder()
        .build()
        .map_err(|e| e.to_string())?
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

/// The worker identity of a node reachable at `url`: Druid's `host` is `host:port`.
fn worker_identity(settings: &WorkerSettings, url: &str) -> Result<Worker, StartError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| StartError::Worker(format!("bad URL {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| StartError::Worker(format!("URL {url} has no host")))?
        .to_string();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| StartError::Worker(format!("URL {url} has no port")))?;
    Ok(Worker {
        scheme: parsed.scheme().to_string(),
        host: format!("{host}:{port}"),
        ip: host,
        capacity: settings.capacity,
        version: settings.version.clone(),
        category: settings.category.clone(),
    })
}

/// Opens the worker's task directories (adopting peons left by an earlier process) and builds
/// its service; the caller runs it.
fn start_worker(
    settings: &WorkerSettings,
    url: &str,
    task_log_dir: &std::path::Path,
    seeds: Vec<String>,
    secret: &str,
) -> Result<WorkerService, StartError> {
    let worker = worker_identity(settings, url)?;
    let (peon_command, launcher) = if settings.peon_command.is_empty() {
        let exe = std::env::current_exe()
            .map_err(|e| StartError::Worker(format!("cannot find this binary to run peons: {e}")))?;
        (vec![exe.to_string_lossy().into_owned(), "peon".to_string()], Some(exe))
    } else {
        (settings.peon_command.clone(), None)
    };
    let port = worker
        .host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(-1);
    let runner = PeonRunner::open(RunnerConfig {
        base_dir: settings.base_dir.clone(),
        log_dir: task_log_dir.to_path_buf(),
        peon_command,
        launcher,
        graceful_stop: settings.graceful_stop,
        location: TaskLocation {
            host: Some(worker.ip.clone()),
            port,
            tls_port: -1,
        },
        peon_env: vec![
            (
                crate::worker::task_actions::API_ENV.to_string(),
                std::iter::once(url.to_string())
                    .chain(seeds.iter().filter(|s| s.as_str() != url).cloned())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                crate::worker::index_task::DEEP_STORAGE_ENV.to_string(),
                settings.deep_storage.clone(),
            ),
            (
                raftlord_raft::tls::CA_ENV.to_string(),
                settings
                    .tls_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
        ],
    })
    .map_err(|e| {
        StartError::Worker(format!(
            "cannot open task directories under {}: {e}",
            settings.base_dir.display()
        ))
    })?;
    info!(worker = %worker.host, capacity = worker.capacity, "worker ready");
    Ok(WorkerService::new(
        worker,
        runner,
        LeaderClient::new(seeds, secret.to_string()),
        settings.timing.clone(),
    ))
}

/// Opens the Historical's segment cache (serving again what it finds intact there) and builds
/// its service; the caller runs it.
fn start_historical(
    settings: &crate::config::HistoricalSettings,
    url: &str,
    seeds: Vec<String>,
    secret: &str,
) -> Result<HistoricalService, StartError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| StartError::Historical(format!("bad URL {url}: {e}")))?;
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return Err(StartError::Historical(format!("URL {url} has no host or port")));
    };
    let server = crate::coordinator::load::Historical {
        scheme: parsed.scheme().to_string(),
        host: format!("{host}:{port}"),
        tier: settings.tier.clone(),
        max_size: settings.max_size,
    };
    server.check().map_err(StartError::Historical)?;
    let deep = crate::worker::deep_storage::DeepStorage::parse(&settings.deep_storage)
        .map_err(|e| StartError::Historical(format!("deep storage: {e}")))?;
    let (cache, found) =
        crate::historical::cache::SegmentCache::open(&settings.cache_dir, deep).map_err(StartError::Historical)?;
    info!(
        historical = %server.host,
        cache = %settings.cache_dir.display(),
        found = found.len(),
        "segment cache opened"
    );
    Ok(HistoricalService::new(
        server,
        cache,
        found,
        LeaderClient::new(seeds, secret.to_string()),
        settings.timing.clone(),
    ))
}

/// A node that is no Raft member: a worker (it runs peons), a Historical (it serves segments),
/// or both, for a cluster it reaches over HTTP; no Raft, no state.
pub struct RunningDataNode {
    pub url: String,
    pub worker: Option<WorkerService>,
    pub historical: Option<HistoricalService>,
    client: LeaderClient,
    http_stop: CancellationToken,
    services_stop: CancellationToken,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    announcement_id: String,
    fatal: mpsc::UnboundedReceiver<String>,
}

impl RunningDataNode {
    /// Starts the node on `config.listen`.
    pub async fn start(config: DataNodeConfig) -> Result<RunningDataNode, StartError> {
        let (listener, local) = bind(config.listen).await?;
        let tls = tls_server(config.tls.as_ref())?;
        let url = if config.advertise.is_empty() {
            format!("{}://{local}", scheme(&tls))
        } else {
            config.advertise.trim_end_matches('/').to_string()
        };
        let services_stop = CancellationToken::new();
        let (fatal_tx, fatal) = mpsc::unbounded_channel();
        let mut background = Vec::new();
        let mut roles = Vec::new();
        let mut app = OpenApiRouter::new();
        // storage (task directories, segment cache) and the services
        let worker = match &config.worker {
            Some(settings) => {
                let w = start_worker(
                    settings,
                    &url,
                    &config.task_log_dir,
                    config.seeds.clone(),
                    &config.cluster_secret,
                )?;
                background.push(critical(
                    "the worker",
                    &fatal_tx,
                    w.clone().run(services_stop.child_token()),
                ));
                app = app.merge(crate::worker::http::routes(
                    w.clone(),
                    &config.cluster_secret,
                    config.open_reads,
                ));
                roles.push(NodeRole::MiddleManager);
                Some(w)
            }
            None => None,
        };
        let historical = match &config.historical {
            Some(settings) => {
                let h = start_historical(settings, &url, config.seeds.clone(), &config.cluster_secret)?;
                background.push(critical(
                    "the historical",
                    &fatal_tx,
                    h.clone().run(services_stop.child_token()),
                ));
                app = app.merge(crate::historical::http::routes(h.clone()));
                roles.push(NodeRole::Historical);
                Some(h)
            }
            None => None,
        };
        // http
        let http_stop = CancellationToken::new();
        let (app, _) = app.split_for_parts();
        let app = app.route("/status/health", axum::routing::get(|| async { axum::Json(true) }));
        let app = api::guard::guarded(app, crate::config::Limits::default().max_payload_bytes);
        let http = serve(listener, app, http_stop.clone(), tls);
        info!(url = %url, "serving http");
        // announcement
        let host = url.split_once("://").map_or(url.as_str(), |(_, h)| h).to_string();
        let announcement_id = match &worker {
            Some(w) => format!("worker-{}", w.worker.host),
            None => format!("historical-{host}"),
        };
        let node = NodeAnnouncement {
            id: announcement_id.clone(),
            raft_id: None,
            roles,
            url: url.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            announced_ms: 0,
        };
        let client = LeaderClient::new(config.seeds.clone(), config.cluster_secret.clone());
        let announcer = LeaderClient::new(config.seeds.clone(), config.cluster_secret.clone());
        let cancel = services_stop.child_token();
        background.push(tokio::spawn(async move {
            let body = serde_json::to_vec(&node).unwrap_or_default();
            loop {
                let sent: Result<serde_json::Value, _> = announcer
                    .call("/internal/nodes/announce", Some(&body), Duration::from_secs(5))
                    .await;
                if sent.is_ok() {
                    info!(node = %node.id, "node announced");
                    return;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }));
        Ok(RunningDataNode {
            url,
            worker,
            historical,
            client,
            http_stop,
            services_stop,
            http,
            background,
            announcement_id,
            fatal,
        })
    }

    /// Resolves, with the reason, when the worker or Historical loop panicked; the caller
    /// should exit.
    pub async fn failed(&mut self) -> String {
        match self.fatal.recv().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Stops the node; its peons keep running and are adopted by the next start, and its
    /// segment cache is found again.
    pub async fn stop(self) {
        self.services_stop.cancel();
        let body = serde_json::to_vec(&serde_json::json!({ "id": self.announcement_id })).unwrap_or_default();
        let withdrawn: Result<Result<serde_json::Value, _>, _> = tokio::time::timeout(
            Duration::from_secs(1),
            self.client
                .call("/internal/nodes/withdraw", Some(&body), Duration::from_secs(1)),
        )
        .await;
        if !matches!(withdrawn, Ok(Ok(_))) {
            info!("announcement not withdrawn; it is refreshed on the next start");
        }
        self.http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http).await;
        for task in self.background {
            task.abort();
        }
        info!("node stopped");
    }
}
