//! Partitions under a mixed workload, and the checkers that judge the outcome.
//!
//! Three `raftlord server` nodes, each in its own network namespace with a worker, take:
//! - submissions of short `noop` tasks with ids, which workers run in peons, every fifth shut
//!   down again;
//! - lockers: each holds a task that no worker may take (a strong affinity to no host keeps it
//!   waiting and active) and, in a loop, tries an EXCLUSIVE time-chunk lock on one of a few
//!   overlapping intervals, allocates a segment id under it (`segmentAllocate`), publishes that
//!   segment, releases the lock, then publishes again with the released lock's version, which
//!   must be refused. The first locker's task has a higher priority: its locks revoke the
//!   others' where they overlap.
//!
//! Each round the nemesis injects one fault, holds it while the majority keeps taking writes,
//! and heals it: the leader isolated; a follower isolated (a 1/2 split); one link between the
//! leader and a follower cut, leaving the other follower as a bridge; a follower and its worker
//! killed with SIGKILL (restarted at healing); a running peon killed with SIGKILL; the leader's
//! wall clock stepped 3 h ahead; and 3 h behind (with libfaketime, the monotonic clock
//! untouched).
//!
//! The checkers, on the clients' histories (real time, one clock) and every node's final state:
//! - every acknowledged task is on every node, and every node holds the same tasks, segments and
//!   locks at the same applied index;
//! - no two lock grants of equal priority on overlapping intervals were held at once: grant B
//!   acknowledged before release A was sent, and grant A acknowledged before release B was
//!   sent, is a violation whatever order the cluster chose, unless one of them had been revoked
//!   by then (a revoked lock excludes nothing, as in Druid); a higher-priority grant over a held
//!   lower one revokes it, and nothing the lower one's task sends afterwards may publish;
//! - a lock granted after an overlapping one was released has a greater version, so what it
//!   publishes overshadows what came before;
//! - no segment is stored that was published under a released lock, every stored segment was
//!   allocated to its publisher, and no segment id was allocated to two sequences;
//! - no task ever had two live peons (sampled from `/proc` throughout the run);
//! - no task failed for a deadline its worker "missed" because a clock was stepped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::netns::Net;
use crate::wait;

/// The cluster secret the nodes share.
pub const SECRET: &str = "harness-secret";
/// The port every node listens on, inside its own namespace.
const PORT: u16 = 8081;
/// The priority of the first locker's task; the others have 0.
const HIGH_PRIORITY: i32 = 75;
/// The datasource of the lockers' tasks and segments.
const LOCKS_DS: &str = "locks";

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds; the nemesis cycles through its faults (seven with clock steps, five without).
    pub rounds: usize,
    /// Least time each cut is held (it is held longer until the majority has taken writes).
    pub hold: Duration,
    /// Clients looping over lock, publish, release and a stale publish.
    pub lockers: usize,
    /// Clients submitting tasks that workers run.
    pub submitters: usize,
    /// Task slots of each node's worker.
    pub worker_capacity: u32,
    /// Also step the leader's wall clock forward and back (needs libfaketime; see
    /// [`libfaketime`]).
    pub clock_jumps: bool,
}

/// The libfaketime library, if installed: it lets the harness step one node's wall clock
/// without touching the machine's (the monotonic clock is left alone, as an NTP step would).
pub fn libfaketime() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rounds: 7,
            hold: Duration::from_secs(2),
            lockers: 3,
            submitters: 2,
            worker_capacity: 2,
            clock_jumps: true,
        }
    }
}

/// What a run saw. [`Report::violations`] lists everything a checker refused.
#[derive(Debug, Default)]
pub struct Report {
    pub rounds: usize,
    /// Task submissions acknowledged, and those of them missing on some node.
    pub acked_tasks: usize,
    pub lost_tasks: Vec<String>,
    /// Lock grants, segment ids allocated, publishes acknowledged, stale publishes refused as
    /// they should be.
    pub grants: usize,
    pub allocations: usize,
    pub publishes: usize,
    pub stale_refused: usize,
    /// Grants held at once on overlapping intervals, or versions that went backwards.
    pub lock_violations: Vec<String>,
    /// Stale publishes answered success, or found stored with no later lock of their task to
    /// explain them.
    pub stale_published: Vec<String>,
    /// Lock grants that revoked an overlapping lower-priority lock while it was held.
    pub revocations: usize,
    /// Stale publishes found stored that committed late, under a lock their task was granted
    /// after sending them (Druid's rule allows it: a lock covers segments of its version or
    /// older).
    pub stale_published_late: usize,
    /// Stored segments that match no allocation their publisher was given, and segment ids
    /// allocated to two sequences.
    pub unlocked_segments: Vec<String>,
    /// Tasks seen with two live peons at once, how many peons were seen at all, and how many
    /// the nemesis killed.
    pub double_peons: Vec<String>,
    pub peons_seen: usize,
    pub peons_killed: usize,
    /// Nodes that did not converge, or whose state differs.
    pub diverged: Vec<String>,
    /// Rounds in which the majority side took no write while the cut was held.
    pub stalled_rounds: Vec<String>,
    /// Writes (submissions and lock actions) acknowledged while a cut was in place.
    pub writes_during_cuts: usize,
    /// One line per round: the cut, the leaders before and after, the writes taken.
    pub rounds_log: Vec<String>,
    /// Tasks failed for missing a deadline (their worker "did not start" them): under clock
    /// steps, none may be.
    pub deadline_failures: Vec<String>,
}

impl Report {
    /// Everything a checker refused, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut v = vec![];
        v.extend(self.lost_tasks.iter().map(|t| format!("acknowledged task {t} lost")));
        v.extend(self.lock_violations.iter().cloned());
        v.extend(self.stale_published.iter().cloned());
        v.extend(self.unlocked_segments.iter().cloned());
        v.extend(self.double_peons.iter().cloned());
        v.extend(self.diverged.iter().cloned());
        v.extend(self.stalled_rounds.iter().cloned());
        v.extend(self.deadline_failures.iter().cloned());
        v
    }

    pub fn summary(&self) -> String {
        format!(
            "rounds {}: tasks acknowledged {} (lost {}), lock grants {} (revoking {}), allocations {}, publishes {}, stale publishes refused {} \
             (stored {}; committed late under a later lock {}), lock exclusivity violations {}, unlocked segments {}, peons seen {}, killed {} (tasks with \
             two live peons {}), replicas diverged {}, stalled rounds {}, writes acknowledged during faults {}, tasks failed \
             for a missed deadline {}",
            self.rounds,
            self.acked_tasks,
            self.lost_tasks.len(),
            self.grants,
            self.revocations,
            self.allocations,
            self.publishes,
            self.stale_refused,
            self.stale_published.len(),
            self.stale_published_late,
            self.lock_violations.len(),
            self.unlocked_segments.len(),
            self.peons_seen,
            self.peons_killed,
            self.double_peons.len(),
            self.diverged.len(),
            self.stalled_rounds.len(),
            self.writes_during_cuts,
            self.deadline_failures.len(),
        )
    }
}

/// What the nemesis does in one round.
#[derive(Debug, Clone, Copy)]
enum Fault {
    IsolateLeader,
    IsolateFollower,
    Bridge,
    KillFollower,
    KillPeon,
    ClockAhead,
    ClockBehind,
}

/// Three nodes, each in its own namespace.
struct NetCluster {
    net: Net,
    dir: tempfile::TempDir,
    bin: PathBuf,
    procs: BTreeMap<usize, Child>,
    capacity: u32,
    /// libfaketime, when nodes run with a wall clock the harness can step.
    faketime: Option<PathBuf>,
}

impl NetCluster {
    fn start(bin: &Path, capacity: u32, faketime: Option<PathBuf>) -> anyhow::Result<NetCluster> {
        let net = Net::create(3)?;
        let mut c = NetCluster {
            net,
            dir: tempfile::tempdir()?,
            bin: bin.to_path_buf(),
            procs: BTreeMap::new(),
            capacity,
            faketime,
        };
        for k in 1..=3 {
            c.spawn(k)?;
        }
        Ok(c)
    }

    fn url(&self, k: usize) -> String {
        format!("http://{}:{PORT}", self.net.host_ip(k))
    }

    fn urls(&self) -> Vec<String> {
        (1..=3).map(|k| self.url(k)).collect()
    }

    fn spawn(&mut self, k: usize) -> anyhow::Result<()> {
        let peers = (1..=3)
            .map(|i| format!("{i}={}", self.url(i)))
            .collect::<Vec<_>>()
            .join(",");
        // Appended to: a restarted node's log follows what it wrote before it was killed.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{k}.log")))?;
        let mut command = self.net.command(k, &self.bin);
        if let Some(lib) = &self.faketime {
            self.set_clock(k, "+0")?;
            command
                .env("LD_PRELOAD", lib)
                .env("FAKETIME_TIMESTAMP_FILE", self.clock_file(k))
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = command
            .args(["server", "--node-id", &k.to_string()])
            .args(["--listen", &format!("{}:{PORT}", self.net.host_ip(k))])
            .args(["--peers", &peers])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("n{k}")))
            .args(["--worker-capacity", &self.capacity.to_string()])
            .env("RAFTLORD_CLUSTER_SECRET", SECRET)
            .env("RAFTLORD_AUTH", "none")
            .env("RAFTLORD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting raftlord in a network namespace")?;
        self.procs.insert(k, child);
        Ok(())
    }

    fn clock_file(&self, k: usize) -> PathBuf {
        self.dir.path().join(format!("clock-{k}"))
    }

    /// Steps node `k`'s wall clock to `offset` from the real one (libfaketime's syntax, e.g.
    /// `+3h`, `-1d`); it takes effect within a second.
    fn set_clock(&self, k: usize, offset: &str) -> anyhow::Result<()> {
        std::fs::write(self.clock_file(k), offset).context("writing a node's clock offset")
    }

    /// The index into [`NetCluster::urls`] of the node all three name as leader.
    fn leader_hint(&self, c: &reqwest::blocking::Client) -> Option<usize> {
        agreed_leader(c, &self.urls()).map(|k| k - 1)
    }

    /// Stops the nodes and keeps their directory after the cluster is dropped.
    fn keep_dir(&mut self) -> PathBuf {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let keep = std::env::temp_dir().join(format!("raftlord-partitions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&keep);
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(self.dir.path())
            .arg(&keep)
            .status();
        match copied {
            Ok(s) if s.success() => keep,
            _ => self.dir.path().to_path_buf(),
        }
    }

    /// The log a node wrote, for a failure message.
    fn log_tail(&self, k: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("node-{k}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.procs) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Peons run in their own process groups and outlive their node by design.
        for p in peons(self.dir.path()) {
            // SAFETY: kill only sends a signal.
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
    }
}

/// A live peon process: its pid and its task's id.
struct Peon {
    pid: i32,
    task: String,
}

/// The live peons whose task directory is under `root`: forked peons are named
/// `raftlord-peon` and write their output to `<task dir>/log`.
fn peons(root: &Path) -> Vec<Peon> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut found = vec![];
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "raftlord-peon" {
            continue;
        }
        // A zombie has ended: not live.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
            continue;
        }
        let Ok(out) = std::fs::read_link(e.path().join("fd/1")) else {
            continue;
        };
        if !out.starts_with(root) {
            continue;
        }
        if let Some(task) = out.parent().and_then(|d| d.file_name()).and_then(|n| n.to_str()) {
            found.push(Peon {
                pid,
                task: task.to_string(),
            });
        }
    }
    found
}

fn client(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("building an HTTP client")
}

fn status(c: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    c.get(format!("{url}/status")).send().ok()?.json().ok()
}

/// The leader all three nodes name, with its number.
fn agreed_leader(c: &reqwest::blocking::Client, urls: &[String]) -> Option<usize> {
    let ids: Vec<Option<u64>> = urls
        .iter()
        .map(|u| status(c, u).and_then(|s| s["leader"].as_u64()))
        .collect();
    let first = ids[0]?;
    ids.iter().all(|i| *i == Some(first)).then_some(first as usize)
}

/// One lock grant as its client saw it.
#[derive(Debug, Clone)]
struct Grant {
    task: String,
    /// The task's (and so the lock's) priority.
    priority: i32,
    interval: String,
    version: String,
    /// When its request was first sent: it was granted after.
    sent: Instant,
    /// When the grant's answer arrived: it was granted before.
    acked: Instant,
    /// When its release was first sent: it was held until at least then.
    released: Option<Instant>,
    /// The publish under it: when it was sent, the segment id, whether it was answered
    /// success, and whether an attempt may have been applied later than that answer.
    published: Option<(Instant, String, bool, bool)>,
}

/// A lock request that may have been granted without its task learning of it, at any time
/// after it was sent.
#[derive(Debug, Clone)]
struct Uncertain {
    task: String,
    priority: i32,
    interval: String,
    sent: Instant,
}

/// A publish under a released lock.
#[derive(Debug)]
struct Stale {
    task: String,
    interval: String,
    /// When it was first sent.
    sent: Instant,
    /// Whether an attempt may have been applied later than the answer the client got.
    ambiguous: bool,
}

/// Everything the clients were told.
#[derive(Default)]
struct History {
    acked_tasks: BTreeSet<String>,
    grants: Vec<Grant>,
    /// Segment ids handed out by `segmentAllocate`, with the sequence each was asked for.
    allocations: Vec<(String, String)>,
    /// Segments published (or tried) under released locks, by id.
    stale: BTreeMap<String, Stale>,
    /// Lock requests, by task and interval, that may have been granted without the task
    /// learning of it (an attempt timed out before a retry was answered).
    uncertain_locks: Vec<Uncertain>,
    publishes: usize,
    stale_refused: usize,
    stale_answered_success: Vec<String>,
}

/// The intervals lockers contend for: four days and two spans of two, so that locks overlap
/// without being equal.
const INTERVALS: [&str; 6] = [
    "2030-01-01T00:00:00.000Z/2030-01-02T00:00:00.000Z",
    "2030-01-02T00:00:00.000Z/2030-01-03T00:00:00.000Z",
    "2030-01-03T00:00:00.000Z/2030-01-04T00:00:00.000Z",
    "2030-01-04T00:00:00.000Z/2030-01-05T00:00:00.000Z",
    "2030-01-01T00:00:00.000Z/2030-01-03T00:00:00.000Z",
    "2030-01-03T00:00:00.000Z/2030-01-05T00:00:00.000Z",
];

/// Whether interval `outer` contains `inner`.
fn contains(outer: &str, inner: &str) -> bool {
    let (o0, o1) = outer.split_once('/').unwrap_or((outer, outer));
    let (i0, i1) = inner.split_once('/').unwrap_or((inner, inner));
    o0 <= i0 && i1 <= o1
}

fn overlap(a: &str, b: &str) -> bool {
    let (a0, a1) = a.split_once('/').unwrap_or((a, a));
    let (b0, b1) = b.split_once('/').unwrap_or((b, b));
    // ISO-8601 instants of one fixed width compare as strings.
    a0 < b1 && b0 < a1
}

/// The id a segment published under `grant` gets (partition 0), or with `partition`.
fn segment_id(interval: &str, version: &str, partition: u32) -> String {
    let (start, end) = interval.split_once('/').unwrap_or((interval, ""));
    let base = format!("{LOCKS_DS}_{start}_{end}_{version}");
    if partition == 0 {
        base
    } else {
        format!("{base}_{partition}")
    }
}

/// Sends a task action until it gets an answer from the cluster; `None` if `give_up` passes.
fn action(
    c: &reqwest::blocking::Client,
    urls: &[String],
    task: &str,
    body: &Value,
    give_up: Instant,
) -> Option<(u16, Value)> {
    action_traced(c, urls, task, body, give_up).0
}

/// Like [`action`], also saying whether an earlier attempt may still take effect later: one
/// that timed out, or was answered "may still commit". Such an attempt can be applied after the
/// answer to a retry, so the cluster may act on it at any later time.
fn action_traced(
    c: &reqwest::blocking::Client,
    urls: &[String],
    task: &str,
    body: &Value,
    give_up: Instant,
) -> (Option<(u16, Value)>, bool) {
    let mut attempt = rand::random_range(0..urls.len());
    let mut ambiguous = false;
    let envelope = json!({"task": {"id": task}, "action": body});
    while Instant::now() < give_up {
        attempt += 1;
        let url = &urls[attempt % urls.len()];
        // A follower's redirect drops the secret (another host): the 401 that follows is
        // retried on the next node like any other refusal that changed nothing.
        let request = c.post(format!("{url}/druid/indexer/v1/action")).bearer_auth(SECRET);
        match request.json(&envelope).send() {
            Ok(r) if r.status().is_success() || r.status() == 400 => {
                let s = r.status().as_u16();
                return (Some((s, r.json().unwrap_or_default())), ambiguous);
            }
            Ok(r) => {
                let text = r.text().unwrap_or_default();
                ambiguous |= text.contains("may still commit");
            }
            Err(_) => ambiguous = true,
        }
        std::thread::sleep(Duration::from_millis(20)); // back off before the retry
    }
    (None, true)
}

/// Submits a task until the cluster answers; true when it is stored.
fn submit(c: &reqwest::blocking::Client, urls: &[String], body: &Value, give_up: Instant) -> bool {
    let mut attempt = rand::random_range(0..urls.len());
    while Instant::now() < give_up {
        attempt += 1;
        let url = &urls[attempt % urls.len()];
        match c.post(format!("{url}/druid/indexer/v1/task")).json(body).send() {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status() == 400 => {
                let v: Value = r.json().unwrap_or_default();
                // A retry of a write that committed before its answer was lost.
                return v["errorMessage"].as_str().is_some_and(|m| m.contains("already exists"));
            }
            _ => std::thread::sleep(Duration::from_millis(20)), // back off before the retry
        }
    }
    false
}

/// The segment JSON a locker publishes.
fn segment(interval: &str, version: &str, partition: u32, task: &str) -> Value {
    json!({
        "dataSource": LOCKS_DS,
        "interval": interval,
        "version": version,
        "loadSpec": {"type": "local", "path": format!("/nowhere/{task}/{partition}")},
        "dimensions": "",
        "metrics": "",
        "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": 0},
        "binaryVersion": 9,
        "size": 1
    })
}

/// The id and JSON of the segment a `segmentAllocate` answer names.
fn allocated_segment(answer: &Value, task: &str) -> Option<(String, Value)> {
    let interval = answer["interval"].as_str()?;
    let version = answer["version"].as_str()?;
    let partition = answer["shardSpec"]["partitionNum"].as_u64()? as u32;
    Some((
        segment_id(interval, version, partition),
        segment(interval, version, partition, task),
    ))
}

/// One locker's loop (see the module docs).
fn locker(n: usize, urls: Vec<String>, history: Arc<Mutex<History>>, stop: Arc<AtomicBool>, writes: Arc<AtomicUsize>) {
    let c = client(Duration::from_secs(2));
    let task = format!("lk-{n}");
    let long = Duration::from_secs(120);
    // The first locker outranks the others: its locks revoke theirs.
    let priority = if n == 0 { HIGH_PRIORITY } else { 0 };
    let spec = json!({"type": "noop", "id": task, "dataSource": LOCKS_DS, "context": {"priority": priority}});
    if !submit(&c, &urls, &spec, Instant::now() + long) {
        return;
    }
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let interval = INTERVALS[rand::random_range(0..INTERVALS.len())];
        let release = json!({"type": "lockRelease", "interval": interval});
        let try_lock = json!({"type": "lockTryAcquire", "lockType": "EXCLUSIVE", "interval": interval});
        let sent = Instant::now();
        let (answer, ambiguous) = action_traced(&c, &urls, &task, &try_lock, Instant::now() + long);
        if ambiguous {
            // An attempt may still be granted later: this task may hold the interval at any
            // time from now on without knowing it.
            history.lock().unwrap().uncertain_locks.push(Uncertain {
                task: task.clone(),
                priority,
                interval: interval.to_string(),
                sent,
            });
        }
        let version = match &answer {
            Some((200, v)) => v["result"]["version"].as_str().map(str::to_string),
            _ => None,
        };
        let Some(version) = version else {
            if answer.is_none() || answer.as_ref().is_some_and(|(s, _)| *s != 200) {
                // An unanswered attempt may still hold a lock: let it go before moving on.
                action(&c, &urls, &task, &release, Instant::now() + long);
            }
            continue;
        };
        // The lock held may be wider than the one asked for: a lock this task already holds
        // (granted by an attempt it never heard back from) that covers the interval.
        let held = answer
            .as_ref()
            .and_then(|(_, v)| v["result"]["interval"].as_str())
            .unwrap_or(interval)
            .to_string();
        let release = json!({"type": "lockRelease", "interval": held});
        writes.fetch_add(1, Ordering::Relaxed);
        let grant_index = {
            let mut h = history.lock().unwrap();
            h.grants.push(Grant {
                task: task.clone(),
                priority,
                published: None,
                sent,
                interval: held.clone(),
                version: version.clone(),
                acked: Instant::now(),
                released: None,
            });
            h.grants.len() - 1
        };
        // A segment id under the lock, from the allocator, as a batch task gets one.
        let sequence = format!("{task}-{i}");
        let allocate = json!({"type": "segmentAllocate", "dataSource": LOCKS_DS,
            "timestamp": interval.split('/').next().unwrap_or(interval),
            "preferredSegmentGranularity": "DAY", "sequenceName": sequence,
            "skipSegmentLineageCheck": true});
        let allocated = match action(&c, &urls, &task, &allocate, Instant::now() + long) {
            Some((200, v)) => allocated_segment(&v["result"], &task),
            _ => None,
        };
        if let Some((id, body)) = &allocated {
            history.lock().unwrap().allocations.push((sequence.clone(), id.clone()));
            writes.fetch_add(1, Ordering::Relaxed);
            let publish = json!({"type": "segmentTransactionalInsert", "segments": [body]});
            let sent = Instant::now();
            let (answer, ambiguous) = action_traced(&c, &urls, &task, &publish, Instant::now() + long);
            let success = matches!(&answer, Some((200, v)) if v["result"]["success"] == json!(true));
            let mut h = history.lock().unwrap();
            h.grants[grant_index].published = Some((sent, id.clone(), success, ambiguous));
            if success {
                h.publishes += 1;
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        history.lock().unwrap().grants[grant_index].released = Some(Instant::now());
        let Some(_) = action(&c, &urls, &task, &release, Instant::now() + long) else {
            continue;
        };
        writes.fetch_add(1, Ordering::Relaxed);
        // The released lock's version no longer entitles this task to publish.
        let stale_partition = 1000 + i as u32;
        let stale_id = segment_id(interval, &version, stale_partition);
        let sent = Instant::now();
        let stale = json!({"type": "segmentTransactionalInsert",
            "segments": [segment(interval, &version, stale_partition, &task)]});
        let (answer, ambiguous) = action_traced(&c, &urls, &task, &stale, Instant::now() + long);
        history.lock().unwrap().stale.insert(
            stale_id,
            Stale {
                task: task.clone(),
                interval: interval.to_string(),
                sent,
                ambiguous,
            },
        );
        match answer {
            Some((200, v)) if v["result"]["success"] == json!(true) => {
                history.lock().unwrap().stale_answered_success.push(format!(
                    "{task} published under its released lock {version} on {interval} (round trip {i})"
                ))
            }
            Some(_) => history.lock().unwrap().stale_refused += 1,
            None => {}
        }
    }
}

/// One submitter's loop: short tasks that workers run.
fn submitter(
    n: usize,
    urls: Vec<String>,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicUsize>,
) {
    let c = client(Duration::from_secs(2));
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = format!("p-{n}-{i}");
        let body = json!({"type": "noop", "id": id, "dataSource": "parts", "runTime": 300});
        if submit(&c, &urls, &body, Instant::now() + Duration::from_secs(120)) {
            writes.fetch_add(1, Ordering::Relaxed);
            // Every fifth task is shut down again, waiting or running.
            if i.is_multiple_of(5) {
                let url = &urls[i % urls.len()];
                let r = c.post(format!("{url}/druid/indexer/v1/task/{id}/shutdown")).send();
                if r.is_ok_and(|r| r.status().is_success()) {
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            history.lock().unwrap().acked_tasks.insert(id);
        }
    }
}

/// Samples the live peons until `stop`; returns the tasks seen with two at once and the
/// number of distinct peons seen.
fn peon_watch(root: PathBuf, stop: Arc<AtomicBool>) -> (Vec<String>, usize) {
    let mut doubled = BTreeSet::new();
    let mut seen = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        let mut by_task: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for p in peons(&root) {
            seen.insert(p.pid);
            by_task.entry(p.task).or_default().push(p.pid);
        }
        for (task, pids) in by_task {
            if pids.len() > 1 {
                doubled.insert(format!("task {task} had live peons {pids:?} at once"));
            }
        }
        std::thread::sleep(Duration::from_millis(50)); // sampling period
    }
    (doubled.into_iter().collect(), seen.len())
}

/// A node's own copy of its state: applied index, tasks by id, segment ids, locks.
fn local_state(c: &reqwest::blocking::Client, url: &str) -> Option<(u64, BTreeSet<String>, Value, Value)> {
    let tasks = crate::local_state(c, url, "/internal/state/tasks", SECRET)?;
    let segments = crate::local_state(c, url, "/internal/state/segments", SECRET)?;
    let applied = tasks["appliedIndex"].as_u64()?;
    if segments["appliedIndex"].as_u64()? != applied {
        return None;
    }
    Some((
        applied,
        crate::task_ids(&tasks),
        segments["datasources"].clone(),
        segments["locks"].clone(),
    ))
}

/// Runs the workload under `opts.rounds` partitions and checks the outcome.
pub fn run(bin: &Path, opts: &Options) -> anyhow::Result<Report> {
    let faketime = if opts.clock_jumps {
        Some(libfaketime().context("clock steps need libfaketime (Debian's package libfaketime)")?)
    } else {
        None
    };
    // The faults, in the order the rounds cycle through them.
    let mut faults = vec![
        Fault::IsolateLeader,
        Fault::IsolateFollower,
        Fault::Bridge,
        Fault::KillFollower,
        Fault::KillPeon,
    ];
    if faketime.is_some() {
        faults.extend([Fault::ClockAhead, Fault::ClockBehind]);
    }
    let mut cluster = NetCluster::start(bin, opts.worker_capacity, faketime)?;
    let urls = cluster.urls();
    let c = client(Duration::from_secs(2));
    let leader = wait("the cluster to elect a leader", Duration::from_secs(60), || {
        agreed_leader(&c, &urls)
    })
    .map_err(|e| anyhow::anyhow!("{e}; node 1 logged:\n{}", cluster.log_tail(1)))?;
    // No worker may take the lockers' tasks: they stay waiting, and active, for the whole run.
    let config = json!({"selectStrategy": {"type": "equalDistribution",
        "affinityConfig": {"affinity": {LOCKS_DS: ["nowhere:1"]}, "strong": true}}});
    let r = c
        .post(format!("{}/druid/indexer/v1/worker", cluster.url(leader)))
        .json(&config)
        .send()?;
    if !r.status().is_success() {
        bail!(
            "setting the worker config: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        );
    }

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let stop_peons = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (root, stop) = (cluster.dir.path().to_path_buf(), stop_peons.clone());
        std::thread::spawn(move || peon_watch(root, stop))
    };
    let mut clients = vec![];
    for n in 0..opts.lockers {
        let (u, h, s, w) = (urls.clone(), history.clone(), stop.clone(), writes.clone());
        clients.push(std::thread::spawn(move || locker(n, u, h, s, w)));
    }
    for n in 0..opts.submitters {
        let (u, h, s, w) = (urls.clone(), history.clone(), stop.clone(), writes.clone());
        clients.push(std::thread::spawn(move || submitter(n, u, h, s, w)));
    }

    let mut report = Report {
        rounds: opts.rounds,
        ..Report::default()
    };
    let progress = |since: usize, n: usize, timeout: Duration| {
        wait("writes to be acknowledged", timeout, || {
            (writes.load(Ordering::Relaxed) >= since + n).then_some(())
        })
    };
    let outcome = (|| -> anyhow::Result<()> {
        progress(writes.load(Ordering::Relaxed), 10, Duration::from_secs(60))?;
        for round in 0..opts.rounds {
            let leader = wait("all nodes to agree on a leader", Duration::from_secs(60), || {
                agreed_leader(&c, &urls)
            })?;
            let followers: Vec<usize> = (1..=3).filter(|k| *k != leader).collect();
            let mut killed = None;
            let kind = match faults[round % faults.len()] {
                Fault::IsolateLeader => {
                    cluster.net.isolate(leader)?;
                    format!("leader {leader} isolated")
                }
                Fault::IsolateFollower => {
                    cluster.net.isolate(followers[0])?;
                    format!("follower {} isolated", followers[0])
                }
                Fault::Bridge => {
                    cluster.net.cut(leader, followers[0])?;
                    format!("link {leader}-{} cut, {} bridging", followers[0], followers[1])
                }
                Fault::KillFollower => {
                    // Its worker dies with it; its peons run on and are adopted on restart.
                    if let Some(mut child) = cluster.procs.remove(&followers[0]) {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    killed = Some(followers[0]);
                    format!("follower {} (and its worker) killed with SIGKILL", followers[0])
                }
                Fault::KillPeon => match wait("a running peon", Duration::from_secs(10), || {
                    peons(cluster.dir.path()).into_iter().next()
                })
                .ok()
                {
                    Some(p) => {
                        // SAFETY: kill only sends a signal.
                        unsafe {
                            libc::kill(p.pid, libc::SIGKILL);
                        }
                        report.peons_killed += 1;
                        format!("the peon of task {} killed with SIGKILL", p.task)
                    }
                    None => "no peon running to kill".to_string(),
                },
                Fault::ClockAhead => {
                    cluster.set_clock(leader, "+3h")?;
                    format!("leader {leader}'s clock 3 h ahead")
                }
                Fault::ClockBehind => {
                    cluster.set_clock(leader, "-3h")?;
                    format!("leader {leader}'s clock 3 h behind")
                }
            };
            let cut_at = Instant::now();
            let before = writes.load(Ordering::Relaxed);
            // The cut is the fault itself: it is held at least this long.
            std::thread::sleep(opts.hold);
            if progress(before, 5, Duration::from_secs(30)).is_err() {
                report.stalled_rounds.push(format!(
                    "round {round} ({kind}): the majority took no write in {:?}",
                    cut_at.elapsed()
                ));
            }
            let during = writes.load(Ordering::Relaxed) - before;
            report.writes_during_cuts += during;
            let held = cut_at.elapsed();
            cluster.net.heal()?;
            if cluster.faketime.is_some() {
                for k in 1..=3 {
                    cluster.set_clock(k, "+0")?;
                }
            }
            if let Some(k) = killed {
                cluster.spawn(k)?;
            }
            let after = wait(
                "all nodes to agree on a leader after healing",
                Duration::from_secs(60),
                || agreed_leader(&c, &urls),
            )?;
            report.rounds_log.push(format!(
                "round {round}: {kind} for {:.1} s, {during} writes acknowledged meanwhile; leader {leader} -> {after}",
                held.as_secs_f64()
            ));
            progress(writes.load(Ordering::Relaxed), 5, Duration::from_secs(60))?;
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        let _ = t.join();
    }
    stop_peons.store(true, Ordering::Relaxed);
    let (double_peons, peons_seen) = watcher.join().unwrap_or_default();
    if let Err(e) = outcome {
        let logs: Vec<String> = (1..=3).map(|k| format!("node {k}:\n{}", cluster.log_tail(k))).collect();
        // The nodes' directories stay for inspection when asked (`raftlord debug log --data-dir`).
        let kept = match std::env::var_os("RAFTLORD_KEEP_FAILED") {
            Some(_) => format!("\ndata and logs kept in {}", cluster.keep_dir().display()),
            None => String::new(),
        };
        return Err(anyhow::anyhow!("{e}\n{}{kept}", logs.join("\n")));
    }
    report.double_peons = double_peons;
    report.peons_seen = peons_seen;

    // Quiesce: the backlog of submitted tasks would keep workers (and the applied index)
    // moving for minutes. Then every node must reach one applied index with the same state.
    for ds in ["parts", LOCKS_DS] {
        wait("the remaining tasks to be shut down", Duration::from_secs(60), || {
            let url = &urls[cluster.leader_hint(&c)?];
            let r = c
                .post(format!("{url}/druid/indexer/v1/datasources/{ds}/shutdownAllTasks"))
                .send()
                .ok()?;
            r.status().is_success().then_some(())
        })?;
    }
    let mut last = String::new();
    let states = wait("every node to converge", Duration::from_secs(120), || {
        let all: Vec<_> = urls.iter().map(|u| local_state(&c, u)).collect::<Option<Vec<_>>>()?;
        if all.iter().all(|s| *s == all[0]) {
            return Some(all);
        }
        last = all
            .iter()
            .enumerate()
            .map(|(i, (applied, tasks, ds, locks))| {
                format!(
                    "node {}: applied {applied}, {} tasks, {} lock segments, {} locks",
                    i + 1,
                    tasks.len(),
                    ds[LOCKS_DS]["ids"].as_array().map_or(0, Vec::len),
                    locks.as_array().map_or(0, Vec::len)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        None
    })
    .map_err(|e| anyhow::anyhow!("{e}; last seen: {last}"));
    let h = history.lock().unwrap();
    report.acked_tasks = h.acked_tasks.len();
    report.grants = h.grants.len();
    report.allocations = h.allocations.len();
    report.publishes = h.publishes;
    report.stale_refused = h.stale_refused;
    report.stale_published = h.stale_answered_success.clone();
    let states = match states {
        Ok(s) => s,
        Err(e) => {
            report.diverged.push(e.to_string());
            return Ok(report);
        }
    };
    let (_, tasks, datasources, _) = &states[0];
    report.lost_tasks = h.acked_tasks.difference(tasks).cloned().collect();
    let statuses =
        crate::local_state(&c, &urls[0], "/internal/state/tasks", SECRET).context("reading the task statuses")?;
    report.deadline_failures = statuses["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["errorMsg"]
                .as_str()
                .is_some_and(|m| m.contains("did not start the task within"))
        })
        .map(|t| format!("task {} failed: {}", t["id"], t["errorMsg"]))
        .collect();
    let revoked_publishes = check_locks(&h.grants, &h.uncertain_locks, &mut report);
    let stored: BTreeSet<String> = datasources[LOCKS_DS]["ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    check_segments(&h, &stored, &mut report);
    for id in stored.intersection(&revoked_publishes) {
        report.lock_violations.push(format!(
            "segment {id} is stored though it was published under a revoked lock"
        ));
    }
    Ok(report)
}

/// Mutual exclusion and version order of the grants (see the module docs).
///
/// Returns the ids of segments published under a lock after it was revoked: none may be stored
/// (unless an attempt may have been applied late under a newer lock; such ids are left out).
fn check_locks(grants: &[Grant], uncertain: &[Uncertain], report: &mut Report) -> BTreeSet<String> {
    let mut forbidden = BTreeSet::new();
    for (i, a) in grants.iter().enumerate() {
        for b in &grants[i + 1..] {
            if a.task == b.task || !overlap(&a.interval, &b.interval) {
                continue;
            }
            let a_before_b_released = b.released.is_none_or(|r| a.acked < r);
            let b_before_a_released = a.released.is_none_or(|r| b.acked < r);
            if a.priority != b.priority {
                // The higher one may revoke the lower: granted while the lower was held, it
                // was revoked by then, and nothing sent under it afterwards may publish.
                let (high, low) = if a.priority > b.priority { (a, b) } else { (b, a) };
                let revoked = low.acked < high.acked && low.released.is_none_or(|r| high.acked < r);
                if revoked {
                    report.revocations += 1;
                    if let Some((sent, id, success, ambiguous)) = &low.published {
                        if *sent > high.acked && *success {
                            report.lock_violations.push(format!(
                                "{} published {id} under its lock on {} after {} was granted {} over it",
                                low.task, low.interval, high.task, high.interval
                            ));
                        }
                        if *sent > high.acked && !*ambiguous {
                            forbidden.insert(id.clone());
                        }
                    }
                }
            } else if a_before_b_released
                && b_before_a_released
                && !maybe_revoked_before(grants, uncertain, a, b.acked)
                && !maybe_revoked_before(grants, uncertain, b, a.acked)
            {
                report.lock_violations.push(format!(
                    "{} held {} (version {}) while {} held {} (version {})",
                    a.task, a.interval, a.version, b.task, b.interval, b.version
                ));
            }
            // Granted after the other's release was sent: the two cannot have been held at
            // once (checked above), so the later grant came after the release and must carry
            // a greater version, or what it publishes would not overshadow the earlier data.
            for (first, then) in [(a, b), (b, a)] {
                if first.released.is_some_and(|r| r < then.acked) && then.version <= first.version {
                    report.lock_violations.push(format!(
                        "{} got version {} on {} after {} released version {} on {}",
                        then.task, then.version, then.interval, first.task, first.version, first.interval
                    ));
                }
            }
        }
    }
    forbidden
}

/// Whether `g` may have been revoked before `t`: a higher-priority request over it may have
/// been granted while `g` was held and before `t` (a grant lands between its request's first
/// send and its answer, or, for a request never answered for sure, any time after the send).
/// A revoked lock no longer excludes others, as in Druid.
fn maybe_revoked_before(grants: &[Grant], uncertain: &[Uncertain], g: &Grant, t: Instant) -> bool {
    let held_at = |at: Instant| g.released.is_none_or(|r| at < r);
    grants.iter().any(|h| {
        h.priority > g.priority
            && overlap(&h.interval, &g.interval)
            && h.sent < t
            && g.sent < h.acked
            && held_at(h.sent)
    }) || uncertain
        .iter()
        .any(|u| u.priority > g.priority && overlap(&u.interval, &g.interval) && u.sent < t && held_at(u.sent))
}

/// Every stored segment of the lockers' datasource was allocated to its publisher under a
/// lock; none was published under a released one; no segment id was handed to two sequences.
fn check_segments(h: &History, stored: &BTreeSet<String>, report: &mut Report) {
    let mut sequences: BTreeMap<&str, &str> = BTreeMap::new();
    for (sequence, id) in &h.allocations {
        if let Some(other) = sequences.insert(id, sequence) {
            if other != sequence {
                report
                    .unlocked_segments
                    .push(format!("segment id {id} was allocated to both {other} and {sequence}"));
            }
        }
    }
    for id in stored {
        if let Some(st) = h.stale.get(id) {
            // An attempt that may have taken effect late can have been applied under a lock its
            // task got afterwards: as in Druid, a segment is accepted under any lock of its task
            // that covers its interval with a version at least its own. Such locks are the ones
            // granted after the publish was sent, and the requests whose grant may have gone
            // unseen.
            let later_cover = st.ambiguous
                && (h
                    .grants
                    .iter()
                    .any(|g| g.task == st.task && contains(&g.interval, &st.interval) && g.acked > st.sent)
                    || h.uncertain_locks
                        .iter()
                        .any(|u| u.task == st.task && contains(&u.interval, &st.interval)));
            if later_cover {
                report.stale_published_late += 1;
            } else {
                report.stale_published.push(format!(
                    "segment {id} is stored though {} published it under a released lock on {} and no later lock \
                     of its covers it",
                    st.task, st.interval
                ));
            }
        } else if !sequences.contains_key(id.as_str()) {
            report
                .unlocked_segments
                .push(format!("segment {id} matches no allocation its publisher was given"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(task: &str, interval: &str, version: &str, acked: Instant, released: Option<Instant>) -> Grant {
        Grant {
            task: task.into(),
            priority: 0,
            published: None,
            interval: interval.into(),
            version: version.into(),
            sent: acked - Duration::from_millis(1),
            acked,
            released,
        }
    }

    #[test]
    fn overlapping_grants_held_at_once_are_violations_and_sequential_ones_are_not() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut r = Report::default();
        // B granted after A released, on an overlapping interval, with a greater version: fine.
        check_locks(
            &[
                grant("a", INTERVALS[0], "v1", t(0), Some(t(10))),
                grant("b", INTERVALS[4], "v2", t(20), Some(t(30))),
            ],
            &[],
            &mut r,
        );
        assert!(r.lock_violations.is_empty(), "{:?}", r.lock_violations);
        // B granted while A still held an overlapping lock.
        check_locks(
            &[
                grant("a", INTERVALS[0], "v1", t(0), Some(t(30))),
                grant("b", INTERVALS[4], "v2", t(20), Some(t(40))),
            ],
            &[],
            &mut r,
        );
        assert_eq!(r.lock_violations.len(), 1, "{:?}", r.lock_violations);
        // Disjoint intervals never conflict; a smaller later version does.
        let mut r = Report::default();
        check_locks(
            &[
                grant("a", INTERVALS[0], "v1", t(0), Some(t(30))),
                grant("b", INTERVALS[1], "v2", t(20), Some(t(40))),
                grant("c", INTERVALS[0], "v0", t(50), None),
            ],
            &[],
            &mut r,
        );
        assert_eq!(r.lock_violations.len(), 1, "{:?}", r.lock_violations);
        assert!(r.lock_violations[0].contains("got version v0"));
    }

    #[test]
    fn a_publish_under_a_revoked_lock_is_a_violation_and_revocation_itself_is_not() {
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        let mut low = grant("low", INTERVALS[0], "v1", t(0), Some(t(50)));
        let mut high = grant("high", INTERVALS[4], "v2", t(10), Some(t(20)));
        high.priority = HIGH_PRIORITY;
        // Published before the higher grant: fine.
        low.published = Some((t(5), "s-early".into(), true, false));
        let mut r = Report::default();
        let forbidden = check_locks(&[low.clone(), high.clone()], &[], &mut r);
        assert!(r.lock_violations.is_empty(), "{:?}", r.lock_violations);
        assert_eq!(r.revocations, 1);
        assert!(forbidden.is_empty());
        // Once revoked, the low lock no longer excludes an equal-priority grant.
        let other = grant("other", INTERVALS[0], "v3", t(30), Some(t(40)));
        let mut r = Report::default();
        check_locks(&[low.clone(), high.clone(), other], &[], &mut r);
        assert!(r.lock_violations.is_empty(), "{:?}", r.lock_violations);
        // Published after it, and answered success.
        low.published = Some((t(15), "s-late".into(), true, false));
        let mut r = Report::default();
        let forbidden = check_locks(&[low, high], &[], &mut r);
        assert_eq!(r.lock_violations.len(), 1, "{:?}", r.lock_violations);
        assert!(forbidden.contains("s-late"));
    }

    #[test]
    fn stale_unknown_and_doubly_allocated_segments_are_reported() {
        let mut h = History::default();
        let ok = segment_id(INTERVALS[0], "v1", 0);
        h.allocations.push(("s1".into(), ok.clone()));
        h.allocations.push(("s2".into(), segment_id(INTERVALS[0], "v1", 1)));
        h.allocations.push(("s3".into(), segment_id(INTERVALS[0], "v1", 1)));
        let t0 = Instant::now();
        let stale = |task: &str, ambiguous| Stale {
            task: task.into(),
            interval: INTERVALS[0].into(),
            sent: t0,
            ambiguous,
        };
        h.stale.insert(segment_id(INTERVALS[0], "v1", 1001), stale("a", false));
        // Stored, but an attempt timed out and the task got the enclosing two days afterwards:
        // a late commit under that lock.
        h.stale.insert(segment_id(INTERVALS[0], "v1", 1002), stale("b", true));
        h.grants
            .push(grant("b", INTERVALS[4], "v2", t0 + Duration::from_millis(5), None));
        let stored: BTreeSet<String> = [
            ok,
            segment_id(INTERVALS[0], "v1", 1001),
            segment_id(INTERVALS[0], "v1", 1002),
            segment_id(INTERVALS[1], "v9", 0),
        ]
        .into();
        let mut r = Report::default();
        check_segments(&h, &stored, &mut r);
        assert_eq!(r.stale_published.len(), 1, "{r:?}");
        assert_eq!(r.stale_published_late, 1, "{r:?}");
        assert_eq!(r.unlocked_segments.len(), 2, "{r:?}");
        assert!(r
            .unlocked_segments
            .iter()
            .any(|v| v.contains("allocated to both s2 and s3")));
        assert_eq!(
            segment_id(INTERVALS[0], "v1", 0),
            "locks_2030-01-01T00:00:00.000Z_2030-01-02T00:00:00.000Z_v1"
        );
    }
}
