//! Helpers shared by the integration tests: free ports, waiting on conditions with a deadline,
//! in-process clusters and real node processes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftlord::config::{Limits, NodeConfig};
use raftlord::node::RunningNode;
use raftlord::nodes::NodeRole;
use raftlord_raft::network::Faults;
use raftlord_raft::{ClusterFormation, RaftSettings};
use tokio::net::TcpListener;

pub const SECRET: &str = "test-secret";

/// The reason an error body gives, read as Druid's clients read it: `errorMessage` (Druid's
/// `ErrorResponse`), else `error` (the older `{"error": "<message>"}` map).
pub fn error_reason(v: &serde_json::Value) -> Option<&str> {
    v["errorMessage"].as_str().or_else(|| v["error"].as_str())
}

/// Polls `cond` until it returns `Some`, failing the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval under the deadline above
    }
}

/// Blocking variant of [`wait_for`] for process tests.
pub fn wait_for_blocking<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20)); // poll interval under the deadline above
    }
}

/// Fast Raft timing for tests on a loaded machine.
pub fn test_settings(snapshot_every: u64) -> RaftSettings {
    RaftSettings {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
        snapshot_every,
        ..Default::default()
    }
}

pub fn node_config(id: u64, dir: &Path, formation: ClusterFormation, snapshot_every: u64) -> NodeConfig {
    NodeConfig {
        node_id: id,
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: String::new(),
        data_dir: dir.to_path_buf(),
        formation,
        cluster_secret: SECRET.into(),
        roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
        raft: test_settings(snapshot_every),
        limits: Limits::default(),
        overlord: Default::default(),
        task_log_dir: dir.join("task-logs"),
        worker: None,
        historical: None,
        auth: raftlord::config::AuthSettings::off(),
        tls: None,
    }
}

/// A cluster of in-process nodes sharing one fault injector.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub faults: Faults,
    pub peers: BTreeMap<u64, String>,
    pub nodes: BTreeMap<u64, RunningNode>,
    listeners: BTreeMap<u64, std::net::SocketAddr>,
    snapshot_every: u64,
}

impl Cluster {
    /// Starts `n` nodes that form one cluster from a static peer list.
    pub async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut bound = BTreeMap::new();
        for id in 1..=n {
            // Outside the ephemeral range, so the port is still free when a node restarts.
            let l = TcpListener::bind(("127.0.0.1", free_port())).await.unwrap();
            listeners.insert(id, l.local_addr().unwrap());
            bound.insert(id, l);
        }
        let peers: BTreeMap<u64, String> = listeners.iter().map(|(id, a)| (*id, format!("http://{a}"))).collect();
        let mut c = Cluster {
            dir,
            faults: Faults::default(),
            peers,
            nodes: BTreeMap::new(),
            listeners,
            snapshot_every,
        };
        for (id, l) in bound {
            c.start_node_on(id, l).await;
        }
        c
    }

    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    async fn start_node_on(&mut self, id: u64, listener: TcpListener) {
        let cfg = node_config(
            id,
            &self.node_dir(id),
            ClusterFormation::Peers(self.peers.clone()),
            self.snapshot_every,
        );
        let node = RunningNode::start_on(listener, cfg, self.faults.clone()).await.unwrap();
        self.nodes.insert(id, node);
    }

    /// Restarts a stopped node on its old address.
    pub async fn restart(&mut self, id: u64) {
        let addr = self.listeners[&id];
        let l = wait_for("the old port to be free", Duration::from_secs(10), || async {
            TcpListener::bind(addr).await.ok()
        })
        .await;
        self.start_node_on(id, l).await;
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(n) = self.nodes.remove(&id) {
            n.stop().await;
        }
    }

    /// Waits until the nodes in `among` agree on one ready leader that is among them.
    pub async fn leader_among(&self, among: &[u64]) -> u64 {
        wait_for("a ready leader", Duration::from_secs(20), || async {
            let ready: Vec<u64> = among
                .iter()
                .filter(|id| self.nodes[id].raft.leader_ready())
                .copied()
                .collect();
            let [leader] = ready[..] else { return None };
            among
                .iter()
                .all(|id| self.nodes[id].raft.leader().map(|l| l.0) == Some(leader))
                .then_some(leader)
        })
        .await
    }

    pub async fn leader(&self) -> u64 {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.leader_among(&ids).await
    }

    pub fn url(&self, id: u64) -> String {
        self.peers[&id].clone()
    }

    pub async fn stop_all(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

pub use raftlord_harness::free_port;

/// A `raftlord` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn raftlord_bin() -> &'static str {
    env!("CARGO_BIN_EXE_raftlord")
}

/// Starts `raftlord server` as a child process.
pub fn spawn_server(id: u64, port: u16, peers: &str, dir: &Path, extra: &[&str]) -> Proc {
    spawn_server_with_env(id, port, peers, dir, extra, &[])
}

/// Starts `raftlord server` as a child process with `env` added to its environment.
pub fn spawn_server_with_env(
    id: u64,
    port: u16,
    peers: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(String, String)],
) -> Proc {
    let child = Command::new(raftlord_bin())
        .args([
            "server",
            "--node-id",
            &id.to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--peers",
            peers,
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--heartbeat-ms", "50", "--election-timeout-ms", "300"])
        .args(extra)
        .env("RAFTLORD_CLUSTER_SECRET", SECRET)
        .env("RAFTLORD_AUTH", "none")
        .env("RAFTLORD_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning raftlord");
    Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Starts `raftlord dev` as a child process on `port`, data in `dir`.
pub fn spawn_dev(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(raftlord_bin())
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RAFTLORD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning raftlord dev");
    Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Starts `raftlord bootstrap` for three nodes on consecutive free ports with `extra` flags
/// and data in `dir`; returns it (stopped when dropped) and the node URLs it printed once the
/// cluster was up. Its standard output is closed after that: bootstrap must run on and stop
/// cleanly without a reader (it once panicked on the broken pipe when it stopped).
pub fn spawn_bootstrap(dir: &Path, extra: &[&str]) -> (Proc, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let base = (0..50)
        .map(|_| free_port())
        .find(|p| *p < 65000 && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
        .expect("three consecutive free ports");
    let mut child = Command::new(raftlord_bin())
        .args(["bootstrap", "--nodes", "3", "--base-port", &base.to_string()])
        .args(["--heartbeat-ms", "50", "--election-timeout-ms", "300"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .env("RAFTLORD_LOG", "warn")
        .env_remove("RAFTLORD_AUTH")
        .env_remove("RAFTLORD_INITIAL_ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Owned from here on, so a failing assertion still stops bootstrap and its nodes.
    let proc = Proc {
        child,
        url: String::new(),
    };
    let mut urls = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some((_, url)) = line.trim().strip_prefix("node ").and_then(|l| l.split_once(": ")) {
            urls.push(url.to_string());
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    (proc, urls)
}

/// Sends SIGTERM and waits for the exit status.
pub fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    wait_for_blocking("the process to exit", Duration::from_secs(20), || {
        p.child.try_wait().ok().flatten()
    })
}

/// A blocking HTTP client that does not follow redirects.
pub fn http_no_redirect() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A blocking HTTP client that follows redirects.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The leader (id, URL) as the first answering node reports it.
pub fn leader_of(urls: &[String]) -> Option<(u64, String)> {
    for url in urls {
        let Ok(r) = http().get(format!("{url}/status")).send() else {
            continue;
        };
        let Ok(v) = r.json::<serde_json::Value>() else { continue };
        if let (Some(id), Some(u)) = (v["leader"].as_u64(), v["leader_url"].as_str()) {
            return Some((id, u.to_string()));
        }
    }
    None
}

/// `--peers` for nodes 1, 2, ... on 127.0.0.1 at `ports`.
pub fn peers_flag(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Three `raftlord server` processes forming one cluster, each started with `extra` flags.
pub struct ThreeNodes {
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub peers: String,
    pub procs: BTreeMap<u64, Proc>,
    pub extra: Vec<String>,
    /// Added to each node's environment.
    pub env: Vec<(String, String)>,
}

impl ThreeNodes {
    pub fn start(extra: &[&str]) -> ThreeNodes {
        Self::start_with_env(extra, &[])
    }

    /// Three nodes with `env` added to each one's environment.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> ThreeNodes {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = peers_flag(&ports);
        let mut t = ThreeNodes {
            dir,
            ports,
            peers,
            procs: BTreeMap::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for id in 1..=3 {
            t.spawn(id);
        }
        t
    }

    pub fn spawn(&mut self, id: u64) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let p = spawn_server_with_env(
            id,
            self.ports[id as usize - 1],
            &self.peers,
            &self.dir.path().join(format!("n{id}")),
            &extra,
            &self.env,
        );
        self.procs.insert(id, p);
    }

    pub fn urls(&self) -> Vec<String> {
        self.procs.values().map(|p| p.url.clone()).collect()
    }
}

/// One in-process node forming a single-node cluster, leading, with an HTTP client for it; its
/// data dir lives as long as the value.
pub struct SingleNode {
    pub node: RunningNode,
    pub url: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Starts an in-process single-node cluster on data in `dir` and waits until it leads.
pub async fn start_single(dir: &Path, limits: Limits) -> RunningNode {
    start_single_with(dir, |cfg| cfg.limits = limits).await
}

/// [`start_single`] with the node's configuration changed by `change`.
pub async fn start_single_with(dir: &Path, change: impl FnOnce(&mut NodeConfig)) -> RunningNode {
    let mut cfg = node_config(1, dir, ClusterFormation::Single, 1000);
    change(&mut cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = RunningNode::start_on(listener, cfg, Faults::default()).await.unwrap();
    wait_for("the node to lead", Duration::from_secs(20), || async {
        node.raft.leader_ready().then_some(())
    })
    .await;
    node
}

impl SingleNode {
    pub async fn start(limits: Limits) -> SingleNode {
        SingleNode::start_with(|cfg| cfg.limits = limits).await
    }

    /// A single node whose configuration `change` adjusts.
    pub async fn start_with(change: impl FnOnce(&mut NodeConfig)) -> SingleNode {
        let dir = tempfile::tempdir().unwrap();
        let node = start_single_with(dir.path(), change).await;
        SingleNode {
            url: node.url.clone(),
            node,
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }
}

/// Waits until the node at `url` answers as the leader.
pub fn wait_leading(url: &str) {
    wait_for_blocking("the node to lead", Duration::from_secs(30), || {
        let r = http_no_redirect()
            .get(format!("{url}/druid/indexer/v1/isLeader"))
            .send()
            .ok()?;
        (r.status() == 200).then_some(())
    });
}

/// Waits until the node at `url` answers `/status`.
pub fn wait_answering(url: &str) {
    wait_for_blocking("the node to answer", Duration::from_secs(30), || {
        http()
            .get(format!("{url}/status"))
            .send()
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    });
}

/// A node's own copy of the task table (no redirect): its applied index and each task's
/// `TaskStatus` JSON.
pub fn local_tasks(url: &str) -> Option<(u64, Vec<serde_json::Value>)> {
    let v = raftlord_harness::local_state(&http(), url, "/internal/state/tasks", SECRET)?;
    Some((v["appliedIndex"].as_u64()?, v["tasks"].as_array()?.clone()))
}
