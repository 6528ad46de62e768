//! Starting and stopping local raftlord and etcd clusters for benchmarks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

pub const SECRET: &str = "bench-secret";

pub use raftlord_harness::free_port;

/// Three (or N) raftlord server processes.
pub struct Raftlord {
    pub urls: BTreeMap<u64, String>,
    pub procs: BTreeMap<u64, Child>,
    peers: String,
    ports: BTreeMap<u64, u16>,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    extra: Vec<String>,
    /// The CA of a cluster that serves HTTPS.
    ca: Option<reqwest::Certificate>,
}

impl Raftlord {
    /// Starts `n` nodes that are not workers: submissions only.
    pub async fn start(bin: &Path, dir: &Path, n: u64) -> anyhow::Result<Raftlord> {
        Self::start_with(bin, dir, n, &["--worker-capacity", "0"]).await
    }

    /// Starts `n` nodes with extra command-line flags.
    pub async fn start_with(bin: &Path, dir: &Path, n: u64, extra: &[&str]) -> anyhow::Result<Raftlord> {
        Self::start_with_ca(bin, dir, n, extra, None).await
    }

    /// Starts `n` nodes serving HTTPS with certificates `ca` signed, with extra flags.
    pub async fn start_with_ca(
        bin: &Path,
        dir: &Path,
        n: u64,
        extra: &[&str],
        ca: Option<reqwest::Certificate>,
    ) -> anyhow::Result<Raftlord> {
        let scheme = if ca.is_some() { "https" } else { "http" };
        let ports: BTreeMap<u64, u16> = (1..=n).map(|id| (id, free_port())).collect();
        let urls: BTreeMap<u64, String> = ports
            .iter()
            .map(|(id, p)| (*id, format!("{scheme}://127.0.0.1:{p}")))
            .collect();
        let peers = urls
            .iter()
            .map(|(id, u)| format!("{id}={u}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Raftlord {
            urls,
            procs: BTreeMap::new(),
            peers,
            ports,
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca,
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        c.wait_leader(Duration::from_secs(60)).await?;
        Ok(c)
    }

    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let child = Command::new(&self.bin)
            .args([
                "server",
                "--node-id",
                &id.to_string(),
                "--listen",
                &format!("127.0.0.1:{}", self.ports[&id]),
            ])
            .args(["--peers", &self.peers])
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")))
            .args(&self.extra)
            .env("RAFTLORD_CLUSTER_SECRET", SECRET)
            .env("RAFTLORD_AUTH", "none")
            .env("RAFTLORD_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        self.procs.insert(id, child);
        Ok(())
    }

    /// A client builder that trusts this cluster's CA, if it has one.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let b = reqwest::Client::builder();
        match &self.ca {
            Some(ca) => b.add_root_certificate(ca.clone()),
            None => b,
        }
    }

    /// The leader's id, waiting up to `timeout` for one.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let client = self.client_builder().timeout(Duration::from_millis(500)).build()?;
        let deadline = Instant::now() + timeout;
        loop {
            for (id, url) in &self.urls {
                if !self.procs.contains_key(id) {
                    continue;
                }
                if let Ok(r) = client.get(format!("{url}/druid/indexer/v1/isLeader")).send().await {
                    if r.status() == 200 {
                        return Ok(*id);
                    }
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "no leader within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut c) = self.procs.remove(&id) {
            c.start_kill()?;
        }
        Ok(())
    }

    /// Kills a node with SIGKILL and waits until it is gone.
    pub async fn kill9_and_wait(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut c) = self.procs.remove(&id) {
            c.kill().await?;
        }
        Ok(())
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs.get(&id).and_then(|c| c.id())
    }

    pub async fn stop_all(&mut self) {
        for c in self.procs.values() {
            if let Some(pid) = c.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for (_, mut c) in std::mem::take(&mut self.procs) {
            if tokio::time::timeout(Duration::from_secs(15), c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// Calls `check` every 20 ms until it yields a value; an error after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node's `GET /status`, if it answers.
pub async fn status(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    client.get(format!("{url}/status")).send().await.ok()?.json().await.ok()
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Peak resident memory of a process, in MiB.
pub fn hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Three etcd members on loopback.
pub struct Etcd {
    pub client_urls: Vec<String>,
    procs: Vec<Child>,
}

impl Etcd {
    pub async fn start(etcd: &str, dir: &Path) -> anyhow::Result<Etcd> {
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial = (0..3)
            .map(|i| format!("e{i}=http://127.0.0.1:{}", peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for i in 0..3 {
            let child = Command::new(etcd)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", peer_ports[i])])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{}", peer_ports[i]),
                ])
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", client_ports[i])])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{}", client_ports[i]),
                ])
                .args([
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "bench",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            procs.push(child);
        }
        let client_urls: Vec<String> = client_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = client
                .get(format!("{}/health", client_urls[0]))
                .send()
                .await
                .ok()
                .map(|r| r.status() == 200);
            if ok == Some(true) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "etcd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Etcd { client_urls, procs })
    }

    pub async fn stop(mut self) {
        for c in &mut self.procs {
            let _ = c.kill().await;
        }
    }
}
