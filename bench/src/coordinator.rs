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
use raftlord::coordinator::planner::plan;
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
fn converge(segments: &SegmentTable, c: &mut CoordinatorState, now: i64) -> Converged {
    let mut planning = Duration::ZERO;
    let mut replicated: Option<(usize, Duration)> = None;
    for run in 1.. {
        let t = Instant::now();
        let p = plan(segments, c, &c.load, now);
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
    let done = converge(&table, &mut c, now);
    let loaded: u64 = c.load.serving().map(|s| s.loaded()).sum();
    let rss2 = rss();
    println!(
        "initial load: {loaded} replicas in {} runs, {:.1} s planning ({:.1} s with the simulated reports)",
        done.runs,
        done.planning.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    println!(
        "memory added by the Historicals' replica view: {:.0} MiB ({:.0} bytes per replica)",
        rss2 - rss1,
        (rss2 - rss1) * 1048576.0 / loaded.max(1) as f64
    );
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (segments, coordinator) = (table.clone(), c.clone());
        let p = plan(&segments, &coordinator, &coordinator.load, now);
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
        "full historical-management run on the steady state ({n} segments, {historicals} Historicals): min {:.0} ms, median {:.0} ms, max {:.0} ms",
        times[0].as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    let lost_had = c.load.get("historical-0:8083").map_or(0, |r| r.loaded());
    c.load.apply_lost("historical-0:8083");
    let t = Instant::now();
    let done = converge(&table, &mut c, now);
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
