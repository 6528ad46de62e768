//! A disk that fills up, on a three-node cluster whose data directories are small tmpfs mounts.
//!
//! Each node runs in a private mount namespace (`unshare --mount`) with a tmpfs of its own
//! mounted on its data directory, so nothing outlives the run; the nemesis fills a node's
//! tmpfs to the last byte through `/proc/<pid>/root` and later frees it again.
//!
//! The run, with one client writing tasks with ids throughout:
//! 1. a follower's disk fills: the cluster keeps taking writes, the follower stays up, and once
//!    space is freed it catches up by itself;
//! 2. the leader's disk fills: writes are refused with a 503 whose JSON body says why (never a
//!    redirect to itself), and resume by themselves once space is freed;
//! 3. every node converges; every acknowledged write is on every node and no refused one is.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::partitions::SECRET;
use crate::wait;

/// Why this run cannot be done here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("mounting a tmpfs in a mount namespace needs root".into());
    }
    match Command::new("unshare").arg("--version").stdout(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        _ => Some("util-linux's `unshare` is not installed".into()),
    }
}

/// Sizes of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of each node's tmpfs.
    pub tmpfs_mb: u64,
    /// `--min-free-disk-mb` of each node.
    pub floor_mb: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tmpfs_mb: 160,
            floor_mb: 32,
        }
    }
}

/// What the run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// Writes acknowledged, and those missing on some node at the end.
    pub acked: usize,
    pub lost: Vec<String>,
    /// Writes refused while the leader's disk was full, and those stored anyway.
    pub refused: usize,
    pub refused_but_stored: Vec<String>,
    /// The answer a client got from the full leader: status and JSON body.
    pub refusal: Option<(u16, Value)>,
    /// Writes acknowledged while a follower's disk was full.
    pub acked_with_follower_full: usize,
    /// From freeing the follower's disk to it holding every acknowledged write.
    pub follower_caught_up_in: Option<Duration>,
    /// From freeing the leader's disk to the first acknowledged write.
    pub writes_resumed_in: Option<Duration>,
    /// Nodes that exited during the run, with their log's last lines.
    pub exited: Vec<String>,
    /// Other findings that fail the run.
    pub problems: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> Vec<String> {
        let mut v = vec![];
        v.extend(self.lost.iter().map(|t| format!("acknowledged task {t} lost")));
        v.extend(
            self.refused_but_stored
                .iter()
                .map(|t| format!("refused task {t} stored")),
        );
        v.extend(self.exited.iter().cloned());
        v.extend(self.problems.iter().cloned());
        match &self.refusal {
            Some((503, body)) if body["errorMessage"].as_str().is_some_and(|m| m.contains("free")) => {}
            other => v.push(format!(
                "the full leader answered {other:?}, not a 503 saying the disk is full"
            )),
        }
        v
    }

    pub fn summary(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("never".to_string(), |d| format!("{} ms", d.as_millis()));
        format!(
            "writes acknowledged {} (lost {}), acknowledged while a follower's disk was full {}, follower caught up \
             {} after its disk was freed; writes refused while the leader's disk was full {} (stored anyway {}), \
             answer {}, writes resumed {} after its disk was freed; nodes that exited {}",
            self.acked,
            self.lost.len(),
            self.acked_with_follower_full,
            ms(self.follower_caught_up_in),
            self.refused,
            self.refused_but_stored.len(),
            self.refusal
                .as_ref()
                .map_or("none".to_string(), |(s, b)| format!("{s} {b}")),
            ms(self.writes_resumed_in),
            self.exited.len(),
        )
    }
}

struct Node {
    child: Child,
    url: String,
    dir: PathBuf,
    log: PathBuf,
}

impl Node {
    /// The data directory as seen from outside the node's mount namespace.
    fn mounted(&self) -> PathBuf {
        let inner = self.dir.strip_prefix("/").unwrap_or(&self.dir);
        PathBuf::from(format!("/proc/{}/root", self.child.id())).join(inner)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fills the node's disk to the last byte.
    fn fill(&self) -> anyhow::Result<()> {
        let path = self.mounted().join("filler");
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let block = vec![0x5au8; 1 << 20];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e).context("filling the disk"),
            }
        }
        // The last partial block.
        let mut small = vec![0u8; 4096];
        while f.write_all(&small).is_ok() {}
        small.truncate(1);
        while f.write_all(&small).is_ok() {}
        Ok(())
    }

    fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.mounted().join("filler")).context("removing the filler")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building an HTTP client")
}

/// A node's own task ids, with its applied index.
fn local_tasks(c: &reqwest::blocking::Client, url: &str) -> Option<(u64, BTreeSet<String>)> {
    let v = crate::local_state(c, url, "/internal/state/tasks", SECRET)?;
    Some((v["appliedIndex"].as_u64()?, crate::task_ids(&v)))
}

/// The leader's number, as a majority of the nodes name it.
fn leader(c: &reqwest::blocking::Client, nodes: &[Node]) -> Option<usize> {
    let mut votes = std::collections::BTreeMap::<u64, usize>::new();
    for n in nodes {
        let named = c
            .get(format!("{}/status", n.url))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| v["leader"].as_u64());
        if let Some(id) = named {
            *votes.entry(id).or_default() += 1;
        }
    }
    votes
        .into_iter()
        .find(|(_, n)| *n * 2 > nodes.len())
        .map(|(id, _)| id as usize)
}

/// Submits task `id` to `url` once: its status and body.
fn submit(c: &reqwest::blocking::Client, url: &str, id: &str) -> Option<(u16, Value)> {
    let r = c
        .post(format!("{url}/druid/indexer/v1/task"))
        .json(&json!({"type": "noop", "id": id, "dataSource": "disk"}))
        .send()
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().unwrap_or_default()))
}

/// Runs the scenario in the module docs.
pub fn run(bin: &Path, opts: &Options) -> anyhow::Result<Report> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    let tmp = tempfile::tempdir()?;
    let ports: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = vec![];
    for (i, port) in ports.iter().enumerate() {
        let k = i + 1;
        let dir = tmp.path().join(format!("n{k}"));
        std::fs::create_dir_all(&dir)?;
        let log = tmp.path().join(format!("node-{k}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(format!("{}m", opts.tmpfs_mb))
            .arg(&dir)
            .arg(bin)
            .args(["server", "--node-id", &k.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--peers", &peers])
            .arg("--data-dir")
            .arg(&dir)
            .args([
                "--worker-capacity",
                "0",
                "--min-free-disk-mb",
                &opts.floor_mb.to_string(),
            ])
            .env("RAFTLORD_CLUSTER_SECRET", SECRET)
            .env("RAFTLORD_AUTH", "none")
            .env("RAFTLORD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting raftlord under unshare")?;
        nodes.push(Node {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            log,
        });
    }
    let c = client();
    let mut report = Report::default();
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let seq = std::cell::Cell::new(0usize);
    let next_id = || {
        seq.set(seq.get() + 1);
        format!("d-{}", seq.get())
    };
    // Writes `n` tasks through the leader, each retried until acknowledged.
    let write = |nodes: &[Node], n: usize, acked: &mut BTreeSet<String>| -> anyhow::Result<()> {
        for _ in 0..n {
            let id = next_id();
            wait("a write to be acknowledged", Duration::from_secs(30), || {
                let l = leader(&c, nodes)?;
                match submit(&c, &nodes[l - 1].url, &id)? {
                    (200, _) => Some(()),
                    (400, v) if v["errorMessage"].as_str().is_some_and(|m| m.contains("already exists")) => Some(()),
                    _ => None,
                }
            })?;
            acked.insert(id);
        }
        Ok(())
    };
    let outcome = (|| -> anyhow::Result<()> {
        let l = wait("a leader", Duration::from_secs(60), || leader(&c, &nodes))?;
        write(&nodes, 20, &mut acked)?;

        // 1. A follower's disk fills.
        let f = (1..=3).find(|k| *k != l).unwrap_or(1);
        nodes[f - 1].fill()?;
        let before = acked.len();
        write(&nodes, 30, &mut acked)?;
        report.acked_with_follower_full = acked.len() - before;
        nodes[f - 1].free()?;
        let freed = Instant::now();
        let follower_url = nodes[f - 1].url.clone();
        wait("the follower to catch up", Duration::from_secs(60), || {
            let (_, tasks) = local_tasks(&c, &follower_url)?;
            acked.is_subset(&tasks).then_some(())
        })?;
        report.follower_caught_up_in = Some(freed.elapsed());

        // 2. The leader's disk fills.
        let l = wait("a leader", Duration::from_secs(60), || leader(&c, &nodes))?;
        let leader_url = nodes[l - 1].url.clone();
        nodes[l - 1].fill()?;
        // The space check runs in the background: the first refusal comes within its period.
        let refusal = wait("the full leader to refuse a write", Duration::from_secs(30), || {
            let id = next_id();
            match submit(&c, &leader_url, &id)? {
                (200, _) => {
                    acked.insert(id);
                    None
                }
                answer => {
                    if answer.0 == 503 {
                        refused.insert(id);
                    }
                    Some(answer)
                }
            }
        })?;
        for _ in 0..10 {
            let id = next_id();
            match submit(&c, &leader_url, &id) {
                Some((200, _)) => {
                    acked.insert(id);
                }
                // Refused before it was proposed; any other failure leaves the outcome open.
                Some((503, v)) if v["errorMessage"].as_str().is_some_and(|m| m.contains("free")) => {
                    refused.insert(id);
                }
                _ => {}
            }
        }
        report.refusal = Some(refusal);
        nodes[l - 1].free()?;
        let freed = Instant::now();
        let mut resumed_id = String::new();
        wait("writes to resume", Duration::from_secs(30), || {
            resumed_id = next_id();
            let l = leader(&c, &nodes)?;
            match submit(&c, &nodes[l - 1].url, &resumed_id)? {
                (200, _) => Some(()),
                _ => None,
            }
        })?;
        report.writes_resumed_in = Some(freed.elapsed());
        acked.insert(resumed_id);
        write(&nodes, 10, &mut acked)?;
        Ok(())
    })();
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Ok(Some(status)) = n.child.try_wait() {
            report
                .exited
                .push(format!("node {} exited ({status}):\n{}", i + 1, n.log_tail()));
        }
    }
    if let Err(e) = outcome {
        report.problems.push(e.to_string());
        return Ok(report);
    }
    report.acked = acked.len();
    report.refused = refused.len();
    let states = wait("every node to converge", Duration::from_secs(60), || {
        let all: Vec<_> = nodes
            .iter()
            .map(|n| local_tasks(&c, &n.url))
            .collect::<Option<Vec<_>>>()?;
        all.iter().all(|s| *s == all[0]).then_some(all)
    });
    match states {
        Ok(states) => {
            let tasks = &states[0].1;
            report.lost = acked.difference(tasks).cloned().collect();
            report.refused_but_stored = refused.intersection(tasks).cloned().collect();
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    Ok(report)
}
