//! `coordinator`: the historical-management run at scale, in process.
//!
//! Builds the replicated state a leader would hold with N used segments (hourly segments over
//! D datasources, 1 KiB each) and H Historicals, every segment loaded twice (Druid's default
//! rule) by driving the planner and the Historicals' reports to a steady state. Then measures:
//!
//! - one full run on the steady state (rules, overshadowed, load/drop planning, balance), as
//!   the leader's duty runs it: a copy of the state, then the plan;
//! - the resident memory the Historicals' replica view adds to the segment table;
//! - a Historical's loss: the runs, and the planning time, until every segment has its two
//!   replicas again (the Historicals' downloads themselves are not part of this figure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use raftlord::coordinator::load::{Historical, Outcome, Replica, ReplicaReport};
use raftlord::coordinator::planner::{plan_cached, CostCache};
use raftlord::coordinator::CoordinatorState;
use raftlord::segments::segment::{RawJson, ShardSpec};
use raftlord::segments::{DataSegment, SegmentKey, SegmentTable};

use crate::cluster::rss_mib;

const HOUR: i64 = 3_600_000;
/// 2020-01-01T00:00Z.
const START: i64 = 1_577_836_800_000;

fn rss() -> f64 {
    rss_mib(std::process::id()).unwrap_or(0.0)
}

fn segments(n: usize, datasources: usize) -> SegmentTable {
    let mut t = SegmentTable::default();
    let per = n.div_ceil(datasources);
    let spec: Box<serde_json::value::RawValue> =
        serde_json::value::RawValue::from_string(r#"{"type":"local","path":"/deep/x/index.parquet"}"#.into()).unwrap();
    let version: Arc<str> = "2020-01-01T00:00:00.000Z".into();
    for d in 0..datasources {
        let ds = format!("ds{d:03}");
        let batch: Vec<DataSegment> = (0..per.min(n - d * per))
            .map(|i| DataSegment {
                datasource: ds.clone(),
                key: SegmentKey {
                    start: START + i as i64 * HOUR,
                    end: START + (i as i64 + 1) * HOUR,
                    version: version.clone(),
                    partition: 0,
                },
                load_spec: RawJson(spec.clone()),
                dimensions: "page,user".into(),
                metrics: "count".into(),
                shard_spec: ShardSpec::numbered(0, 1),
                last_compaction_state: None,
                binary_version: Some(9),
                size: 1024,
            })
            .collect();
        t.apply_insert(0, batch);
    }
    t
}

/// What [`converge`] took.
struct Converged {
    /// Runs until one proposed nothing.
    runs: usize,
    planning: Duration,
    /// Runs until one assigned no new replica (balancing moves may go on after).
    replicated_after: usize,
    planning_to_replicated: Duration,
}

/// Plans, applies and reports every load and drop done until a plan proposes nothing.
fn converge(segments: &SegmentTable, c: &mut CoordinatorState, now: i64, cache: &mut CostCache) -> Converged {
    let mut planning = Duration::ZERO;
    let mut replicated: Option<(usize, Duration)> = None;
    for run in 1.. {
        let t = Instant::now();
        let p = plan_cached(segments, c, &c.load, now, cache);
        planning += t.elapsed();
        if p.stats.assigned == 0 && replicated.is_none() {
            replicated = Some((run, planning));
        }
        if p.loads.is_empty() && p.drops.is_empty() {
            let (replicated_after, planning_to_replicated) = replicated.unwrap_or((run, planning));
            return Converged {
                runs: run,
                planning,
                replicated_after,
                planning_to_replicated,
            };
        }
        c.load.apply_plan(0, segments, &p.loads, &p.drops);
        let hosts: Vec<String> = c.load.serving().map(|s| s.server.host.clone()).collect();
        for h in hosts {
            let reports: Vec<ReplicaReport> = c
                .load
                .get(&h)
                .map(|r| {
                    r.replicas()
                        .iter()
                        .filter_map(|(s, rep)| {
                            let outcome = match rep {
                                Replica::Load { .. } => Outcome::Loaded,
                                Replica::Drop { .. } => Outcome::Dropped,
                                _ => return None,
                            };
                            Some(ReplicaReport {
                                segment: s.clone(),
                                outcome,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            c.load.apply_report(0, segments, &h, &reports, false);
        }
    }
    unreachable!()
}

pub fn run(n: usize, historicals: usize, datasources: usize) -> anyhow::Result<()> {
    let now = START + (n as i64 / datasources as i64 + 24) * HOUR;
    let rss0 = rss();
    let t = Instant::now();
    let table = segments(n, datasources);
    let rss1 = rss();
    println!(
        "segment table: {n} used segments in {datasources} datasources built in {:.1} s, {:.0} MiB",
        t.elapsed().as_secs_f64(),
        rss1 - rss0
    );
    let mut c = CoordinatorState::default();
    for h in 0..historicals {
        c.load.apply_register(
            0,
            Historical {
                scheme: "http".into(),
                host: format!("historical-{h}:8083"),
                tier: "_default_tier".into(),
                max_size: 1 << 40,
            },
        );
    }
    let t = Instant::now();
    let mut cache = CostCache::default();
    let done = converge(&table, &mut c, now, &mut cache);
    let loaded: u64 = c.load.serving().map(|s| s.loaded()).sum();
    let rss2 = rss();
    println!(
        "initial load: {loaded} replicas in {} runs, {:.1} s planning ({:.1} s with the simulated reports)",
        done.runs,
        done.planning.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "memory added by the Historicals' replica view and its cost profiles: {:.0} MiB ({:.0} bytes per replica)",
        rss2 - rss1,
        (rss2 - rss1) * 1048576.0 / loaded.max(1) as f64
    );
    // As the leader's duty runs it: a copy of the state, then the plan, with the cost
    // profiles of the run before (warm), or none (cold: a new leader's first run).
    for warm in [true, false] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut fresh = CostCache::default();
            let t = Instant::now();
            let (segments, coordinator) = (table.clone(), c.clone());
            let kept = if warm { &mut cache } else { &mut fresh };
            let p = plan_cached(&segments, &coordinator, &coordinator.load, now, kept);
            times.push(t.elapsed());
            anyhow::ensure!(
                p.loads.is_empty() && p.drops.is_empty(),
                "the steady state still plans {} loads and {} drops",
                p.loads.len(),
                p.drops.len()
            );
        }
        times.sort();
        println!(
            "full historical-management run on the steady state ({n} segments, {historicals} Historicals, {}): min {:.0} ms, median {:.0} ms, max {:.0} ms",
            if warm { "cost profiles kept from the run before" } else { "cost profiles built afresh" },
            times[0].as_secs_f64() * 1e3,
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3
        );
    }
    let lost_had = c.load.get("historical-0:8083").map_or(0, |r| r.loaded());
    c.load.apply_lost("historical-0:8083");
    let t = Instant::now();
    let done = converge(&table, &mut c, now, &mut cache);
    let under: usize = table
        .datasources()
        .map(|(name, d)| {
            d.used()
                .filter(|(k, _)| {
                    let r = raftlord::coordinator::load::SegmentRef {
                        datasource: name.as_str().into(),
                        key: (*k).clone(),
                    };
                    c.load
                        .serving()
                        .filter(|s| matches!(s.replica(&r), Some(Replica::Loaded { .. })))
                        .count()
                        < 2
                })
                .count()
        })
        .sum();
    println!(
        "a Historical lost with {lost_had} replicas: new replicas assigned in {} runs ({:.1} s planning); balancing settled after {} runs in all ({:.1} s planning, {:.1} s with the simulated reports); segments under-replicated: {under}",
        done.replicated_after - 1,
        done.planning_to_replicated.as_secs_f64(),
        done.runs - 1,
        done.planning.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    anyhow::ensure!(under == 0, "{under} segments are still under-replicated");
    Ok(())
}

/// The inodes of the cached segment files under `dir`.
fn cached(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            // Downloads in progress are not the cache yet.
            if p.is_dir() && e.file_name() != ".tmp" {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                if let Ok(m) = std::fs::metadata(&p) {
                    out.insert(p, m.ino());
                }
            }
        }
    }
    out
}

/// Replicas still to load, summed over tiers and datasources, as `/loadstatus?full` says
/// (`None` when the node does not answer with a status per tier).
async fn left_to_load(client: &reqwest::Client, url: &str) -> Option<u64> {
    let r = client
        .get(format!("{url}/druid/coordinator/v1/loadstatus?full"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    let tiers = v.as_object()?;
    if tiers.is_empty() || !tiers.values().all(|t| t.is_object()) {
        return None;
    }
    Some(
        tiers
            .values()
            .filter_map(|t| t.as_object())
            .flat_map(|t| t.values())
            .filter_map(|n| n.as_u64())
            .sum(),
    )
}

/// `coordinator --cluster`: three real nodes, each a Historical, serving `n` small segment
/// files from local deep storage twice over; then the leader is killed with -9. Reports the
/// time from the kill to the new leader's first historical-management run, the segments the
/// survivors downloaded again, and the time until every segment has its two replicas again.
pub async fn failover(bin: &std::path::Path, n: usize, mid_load: bool) -> anyhow::Result<()> {
    use serde_json::json;
    let dir = tempfile::tempdir()?;
    let deep = dir.path().join("deep");
    let deep_flag = deep.display().to_string();
    let mut rl = crate::cluster::Raftlord::start_with(
        bin,
        dir.path(),
        3,
        &[
            "--worker-capacity",
            "0",
            "--deep-storage",
            &deep_flag,
            "--coordinator-period",
            "PT5S",
            "--worker-timeout-ms",
            "5000",
        ],
    )
    .await?;
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let url = rl.urls[&leader].clone();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    // One task holding a lock, publishing n segments whose files are small Parquet-framed files.
    let r = client
        .post(format!("{url}/druid/indexer/v1/task"))
        .json(&raftlord_harness::index_task("load", "bench"))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "submit: {}", r.text().await?);
    let days = n as i64;
    let version = lock_version(&client, &url, "load", START, START + days * 24 * HOUR).await?;
    let mut body = vec![0u8; 4096];
    body[..4].copy_from_slice(b"PAR1");
    body[4092..].copy_from_slice(b"PAR1");
    let t = Instant::now();
    for first in (0..n).step_by(500) {
        let mut segments = Vec::new();
        for i in first..(first + 500).min(n) {
            let start = START + i as i64 * 24 * HOUR;
            let file = deep.join(format!("bench/{i}/index.parquet"));
            std::fs::create_dir_all(file.parent().unwrap())?;
            std::fs::write(&file, &body)?;
            segments.push(json!({
                "dataSource": "bench",
                "interval": format!("{}/{}", raftlord::interval::iso(start), raftlord::interval::iso(start + 24 * HOUR)),
                "version": version,
                "loadSpec": {"type": "local", "path": file},
                "shardSpec": {"type": "numbered", "partitionNum": 0, "partitions": 1},
                "size": body.len(),
            }));
        }
        publish(&client, &url, "load", segments).await?;
    }
    if mid_load {
        // Kill once a quarter to three quarters of the replicas are loaded.
        loop {
            let left = left_to_load(&client, &url).await.unwrap_or(u64::MAX);
            if left <= (2 * n as u64) * 3 / 4 && left >= (2 * n as u64) / 4 {
                println!("{left} of {} replicas left to load: killing the leader mid-load", 2 * n);
                break;
            }
            anyhow::ensure!(left > 0, "loaded before the kill; use more segments");
            anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "not loading within 10 minutes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        return kill_leader_and_measure(&mut rl, &client, leader, dir.path()).await;
    }
    wait_loaded(&client, &url, t, Duration::from_secs(600), Duration::from_millis(100)).await?;
    println!(
        "{n} segments published and loaded twice on 3 Historicals in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    wait_settled(&client, &url, t, Duration::from_secs(900)).await?;
    println!(
        "balancing settled {:.1} s after the first publish",
        t.elapsed().as_secs_f64()
    );
    kill_leader_and_measure(&mut rl, &client, leader, dir.path()).await
}

/// Runs one task action for `task` on `url` and returns its result.
async fn action(
    client: &reqwest::Client,
    url: &str,
    task: &str,
    action: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let v: serde_json::Value = client
        .post(format!("{url}/druid/indexer/v1/action"))
        .bearer_auth(crate::cluster::SECRET)
        .json(&serde_json::json!({"task": {"id": task}, "action": action}))
        .send()
        .await?
        .json()
        .await?;
    Ok(v["result"].clone())
}

/// A time-chunk lock for `task` over `[start, end)`: its version.
async fn lock_version(client: &reqwest::Client, url: &str, task: &str, start: i64, end: i64) -> anyhow::Result<String> {
    let interval = format!("{}/{}", raftlord::interval::iso(start), raftlord::interval::iso(end));
    let r = action(
        client,
        url,
        task,
        serde_json::json!({"type": "lockTryAcquire", "interval": interval}),
    )
    .await?;
    r["version"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no lock: {r}"))
}

/// Publishes `segments` for `task` in one `segmentTransactionalInsert`.
async fn publish(
    client: &reqwest::Client,
    url: &str,
    task: &str,
    segments: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let r = action(
        client,
        url,
        task,
        serde_json::json!({"type": "segmentTransactionalInsert", "segments": segments}),
    )
    .await?;
    anyhow::ensure!(r["success"] == true, "publish failed: {r:.300}");
    Ok(())
}

/// Waits until `/loadstatus` says no replica is left to load, asking every `every`, until
/// `limit` after `t`.
async fn wait_loaded(
    client: &reqwest::Client,
    url: &str,
    t: Instant,
    limit: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    while left_to_load(client, url).await != Some(0) {
        anyhow::ensure!(t.elapsed() < limit, "not loaded within {limit:?}");
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Waits for balancing to settle: a historical-management run that planned nothing, after
/// which nothing is loading or dropping (until `limit` after `t`).
async fn wait_settled(client: &reqwest::Client, url: &str, t: Instant, limit: Duration) -> anyhow::Result<()> {
    loop {
        let duties: serde_json::Value = client
            .get(format!("{url}/druid/coordinator/v1/duties"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        let queue: serde_json::Value = client
            .get(format!("{url}/druid/coordinator/v1/loadqueue?simple"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        let empty = queue
            .as_object()
            .is_some_and(|q| q.values().all(|s| s["segmentsToLoad"] == 0 && s["segmentsToDrop"] == 0));
        if quiet_run(&duties).is_some() && empty {
            return Ok(());
        }
        anyhow::ensure!(t.elapsed() < limit, "balancing did not settle within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last historical-management run, if it planned nothing: its run count and duration (ms).
fn quiet_run(duties: &serde_json::Value) -> Option<(u64, u64)> {
    let d = duties
        .as_array()?
        .iter()
        .find(|d| d["name"] == "HistoricalManagementDuties")?;
    ["assigned", "dropped", "moved"]
        .iter()
        .all(|k| d["stats"][k] == 0)
        .then_some((d["runs"].as_u64()?, d["lastRuntimeMillis"].as_u64()?))
}

/// `coordinator --processes`: the figures of [`run`] on real processes. Three Raft members
/// (no task slots, no segment cache) and `historicals` Historical processes that are no
/// members; `n` used segments in `datasources` datasources, hourly with ten partitions per
/// hour, published through task actions. Every load spec names one small shared file in local
/// deep storage, so that the caches, not the deep storage, hold the `2n` files. Reports the
/// load, the steady run's duration on the leader, the leader's memory, a Historical killed
/// with -9 (its segments on two Historicals again), and the leader killed with -9 (its
/// successor's first run, files downloaded again).
pub async fn processes(
    bin: &std::path::Path,
    n: usize,
    historicals: usize,
    datasources: usize,
    election_timeout_ms: u64,
) -> anyhow::Result<()> {
    use serde_json::json;
    let dir = tempfile::tempdir()?;
    let deep = dir.path().join("deep");
    let shared = deep.join("shared/index.parquet");
    std::fs::create_dir_all(shared.parent().unwrap())?;
    std::fs::write(&shared, b"PAR1 segment PAR1")?;
    let size = std::fs::metadata(&shared)?.len();
    let deep_flag = deep.display().to_string();
    let (heartbeat, election) = (
        (election_timeout_ms / 4).max(1).to_string(),
        election_timeout_ms.to_string(),
    );
    let mut rl = crate::cluster::Raftlord::start_with(
        bin,
        dir.path(),
        3,
        &[
            "--worker-capacity",
            "0",
            "--deep-storage",
            &deep_flag,
            "--coordinator-period",
            "PT5S",
            "--worker-timeout-ms",
            "5000",
            "--max-segment-cache-size",
            "0",
            "--heartbeat-ms",
            &heartbeat,
            "--election-timeout-ms",
            &election,
        ],
    )
    .await?;
    let mut leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let mut url = rl.urls[&leader].clone();
    let join = rl.urls.values().cloned().collect::<Vec<_>>().join(",");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let mut procs = Vec::new();
    for h in 0..historicals {
        let port = raftlord_harness::free_port();
        let child = tokio::process::Command::new(bin)
            .args(["server", "--roles", "historical", "--join", &join])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("historical-{h}")))
            .arg("--deep-storage")
            .arg(&deep)
            .args(["--max-segment-cache-size", "1TiB"])
            .env("RAFTLORD_CLUSTER_SECRET", crate::cluster::SECRET)
            .env("RAFTLORD_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        procs.push((
            format!("127.0.0.1:{port}"),
            dir.path().join(format!("historical-{h}")),
            child,
        ));
    }
    crate::cluster::poll("the Historicals registered", Duration::from_secs(60), || async {
        let v: serde_json::Value = client
            .get(format!("{url}/druid/coordinator/v1/servers"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v.as_array()?.len() == historicals).then_some(())
    })
    .await?;
    let rss_before = rl.pid(leader).and_then(rss_mib).unwrap_or(0.0);
    // Publishing first with coordination paused, so that the load is timed on its own.
    let pause = |on: bool| {
        client
            .post(format!("{url}/druid/coordinator/v1/config"))
            .json(&json!({"pauseCoordination": on}))
            .send()
    };
    anyhow::ensure!(pause(true).await?.status() == 200, "pausing coordination");
    // One task per datasource holds the lock its segments are published under; four
    // datasources at a time.
    let per = n.div_ceil(datasources);
    let hours = per.div_ceil(10) as i64;
    let t = Instant::now();
    let publish_one = |d: usize| {
        let (client, url, shared) = (client.clone(), url.clone(), shared.clone());
        async move {
            let ds = format!("ds{d:03}");
            let task = format!("load-{ds}");
            let r = client
                .post(format!("{url}/druid/indexer/v1/task"))
                .json(&raftlord_harness::index_task(&task, &ds))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "submit: {}", r.text().await?);
            let version = lock_version(&client, &url, &task, START, START + hours * HOUR).await?;
            let count = per.min(n.saturating_sub(d * per));
            for first in (0..count).step_by(1000) {
                let segments: Vec<serde_json::Value> = (first..(first + 1000).min(count))
                    .map(|i| {
                        let start = START + (i / 10) as i64 * HOUR;
                        json!({
                            "dataSource": ds,
                            "interval": format!("{}/{}", raftlord::interval::iso(start), raftlord::interval::iso(start + HOUR)),
                            "version": version,
                            "loadSpec": {"type": "local", "path": shared},
                            "shardSpec": {"type": "numbered", "partitionNum": i % 10, "partitions": 10},
                            "size": size,
                        })
                    })
                    .collect();
                publish(&client, &url, &task, segments).await?;
            }
            anyhow::Ok(())
        }
    };
    use futures::StreamExt;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..datasources)
        .map(publish_one)
        .buffer_unordered(4)
        .collect()
        .await;
    for r in results {
        r?;
    }
    println!(
        "{n} segments in {datasources} datasources published in {:.1} s (coordination paused)",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    anyhow::ensure!(pause(false).await?.status() == 200, "resuming coordination");
    // `/loadstatus` walks every segment: asked rarely, so as not to load the leader.
    wait_loaded(&client, &url, t, Duration::from_secs(3600), Duration::from_secs(5)).await?;
    println!(
        "every segment loaded twice on {historicals} Historical processes {:.1} s after coordination resumed",
        t.elapsed().as_secs_f64()
    );
    wait_settled(&client, &url, t, Duration::from_secs(3600)).await?;
    println!(
        "balancing settled {:.1} s after coordination resumed",
        t.elapsed().as_secs_f64()
    );
    // Leadership may have moved under the load (the measures below are the leader's).
    let was = leader;
    leader = rl.wait_leader(Duration::from_secs(30)).await?;
    url = rl.urls[&leader].clone();
    if leader != was {
        println!("(leadership moved from node {was} to node {leader} during the load)");
    }
    let status: serde_json::Value = client.get(format!("{url}/status")).send().await?.json().await?;
    println!(
        "Raft term after the load: {} (1: no election since the cluster formed)",
        status["term"]
    );
    // Five steady runs on the leader, as `/duties` reports them.
    let mut times: Vec<u64> = Vec::new();
    let mut last = 0;
    let steady = Instant::now();
    while times.len() < 5 {
        let duties: serde_json::Value = client
            .get(format!("{url}/druid/coordinator/v1/duties"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if let Some((runs, ms)) = quiet_run(&duties) {
            if runs != last {
                last = runs;
                times.push(ms);
            }
        }
        anyhow::ensure!(
            steady.elapsed() < Duration::from_secs(300),
            "no five quiet runs in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    times.sort();
    let rss_after = rl.pid(leader).and_then(rss_mib).unwrap_or(0.0);
    println!(
        "steady historical-management run on the leader ({n} segments, {historicals} Historical processes): min {} ms, median {} ms, max {} ms; leader RSS {rss_before:.0} -> {rss_after:.0} MiB",
        times[0],
        times[2],
        times[4]
    );
    // A Historical killed with -9.
    let (lost_host, _, mut lost) = procs.remove(0);
    let t = Instant::now();
    lost.start_kill()?;
    lost.wait().await?;
    crate::cluster::poll("the Historical declared lost", Duration::from_secs(60), || async {
        let v: serde_json::Value = client
            .get(format!("{url}/druid/coordinator/v1/servers"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v.as_array()?.len() == historicals - 1).then_some(())
    })
    .await?;
    let declared = t.elapsed();
    wait_loaded(&client, &url, t, Duration::from_secs(3600), Duration::from_millis(100)).await?;
    println!(
        "Historical {lost_host} kill -9 -> declared lost: {:.1} s (--worker-timeout-ms 5000); -> every segment on two Historicals again: {:.1} s",
        declared.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    wait_settled(&client, &url, t, Duration::from_secs(3600)).await?;
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    // The leader killed with -9: the survivors' caches before and after.
    let before: Vec<_> = procs.iter().map(|(_, d, _)| cached(&d.join("segment-cache"))).collect();
    let files: usize = before.iter().map(|b| b.len()).sum();
    let (new_url, t) = kill_leader_until_first_run(&mut rl, &client, leader).await?;
    wait_settled(&client, &new_url, t, Duration::from_secs(600)).await?;
    let mut again = 0;
    let mut gone = 0;
    for ((_, d, _), b) in procs.iter().zip(&before) {
        let after = cached(&d.join("segment-cache"));
        for (path, ino) in b {
            match after.get(path) {
                Some(i) if i == ino => {}
                Some(_) => again += 1,
                None => gone += 1,
            }
        }
    }
    println!(
        "files the Historicals held before the leader kill: {files}; downloaded again: {again}; dropped since: {gone}"
    );
    rl.stop_all().await;
    Ok(())
}

/// Kills `leader` with -9 and waits for its successor's first historical-management run;
/// prints the time from the kill to that run. Returns the new leader's URL and the kill's time.
async fn kill_leader_until_first_run(
    rl: &mut crate::cluster::Raftlord,
    client: &reqwest::Client,
    leader: u64,
) -> anyhow::Result<(String, Instant)> {
    let killed_at = raftlord::clock::now_ms();
    let t = Instant::now();
    rl.kill9_and_wait(leader).await?;
    loop {
        let new = rl.wait_leader(Duration::from_secs(30)).await?;
        let u = rl.urls[&new].clone();
        let v: serde_json::Value = client
            .get(format!("{u}/druid/coordinator/v1/duties"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if let Some(first) = v
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == "HistoricalManagementDuties"))
            .and_then(|d| d["firstRunStart"].as_str())
        {
            let first_ms = raftlord::interval::parse_instant(first).unwrap_or(0) as u64;
            println!(
                "leader kill -9 -> the new leader's first historical-management run: {} ms",
                first_ms.saturating_sub(killed_at)
            );
            return Ok((u, t));
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "no duty run on the new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the leader with -9 and reports: the time to the new leader's first duty run, to the
/// lost Historical's segments loaded elsewhere, and the files the survivors downloaded again.
async fn kill_leader_and_measure(
    rl: &mut crate::cluster::Raftlord,
    client: &reqwest::Client,
    leader: u64,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let survivors: Vec<u64> = rl.urls.keys().copied().filter(|id| *id != leader).collect();
    let cache = |id: u64| dir.join(format!("node-{id}")).join("segment-cache");
    let before: Vec<_> = survivors.iter().map(|id| cached(&cache(*id))).collect();
    let (new_url, t) = kill_leader_until_first_run(rl, client, leader).await?;
    // The dead node's Historical is declared lost after the timeout; then its replicas are
    // loaded on the survivors.
    let lost = loop {
        let v: serde_json::Value = client
            .get(format!("{new_url}/druid/coordinator/v1/servers"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        if v.as_array().is_some_and(|a| a.len() == 2) {
            break t.elapsed();
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "the Historical was never declared lost"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_loaded(client, &new_url, t, Duration::from_secs(600), Duration::from_millis(20)).await?;
    println!(
        "leader (and its Historical) kill -9 -> declared lost: {:.1} s (--worker-timeout-ms 5000); -> every segment on two Historicals again: {:.1} s",
        lost.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    let (mut again, mut kept, mut gone) = (0, 0, 0);
    for (id, files) in survivors.iter().zip(&before) {
        let now = cached(&cache(*id));
        for (path, inode) in files {
            match now.get(path) {
                Some(i) if i == inode => kept += 1,
                Some(_) => again += 1,
                None => gone += 1,
            }
        }
    }
    println!("files the survivors held before the kill: {kept} kept, {again} downloaded again, {gone} dropped since");
    rl.stop_all().await;
    Ok(())
}
