//! An `index_parallel` task with `maxNumConcurrentSubTasks` above 1: Druid's parallel
//! ingestion, single-phase for dynamic partitioning and multi-phase for `hashed`.
//!
//! 1. The input is listed and split as Druid's `maxSize` split hint does
//!    ([`raftlord_ingest::source::InputSource::splits`]); one split runs as an ordinary task.
//! 2. With `granularitySpec.intervals`, the supervisor (this task) locks them first, as a single
//!    task does.
//! 3. Each split runs as a sub-task, a real task in the task API (same group and priority,
//!    `supervisorTaskId` naming this task), at most `maxNumConcurrentSubTasks` at once, and no
//!    more than the cluster's task slots besides this task's own (with none, the task runs in
//!    one peon rather than wait for ever). A failed sub-task runs again, up to `maxRetry` times;
//!    past that the supervisor shuts down the others, removes what they pushed and fails.
//! 4. Dynamic partitioning: each split is a `single_phase_sub_task`. It reads its split,
//!    allocates its segments through the Overlord for its supervisor (which is granted the same
//!    locks; when overwriting, in the version of the group's lock), pushes them to deep storage
//!    and lists them in its report. Rollup is per sub-task (Druid's best-effort rollup).
//! 5. `hashed` partitioning (Druid's perfect rollup), in two phases:
//!    - each split is a `partial_index_generate` sub-task: it reads its split, rolls it up, and
//!      pushes each interval's non-empty hash buckets as partial segments (Parquet files under
//!      its own id in deep storage);
//!    - the supervisor locks every interval they hold, numbers each interval's non-empty
//!      buckets 0.. (the segments' partition numbers), and deals the buckets out to at most
//!      `totalNumMergeTasks` (default 10) `partial_index_generic_merge` sub-tasks;
//!    - each merge sub-task fetches the partial segments of its buckets and rolls them up again
//!      with the metrics' combining aggregators, as a compaction does, so that no two rows of a
//!      segment set share time and dimensions, and pushes one segment per bucket.
//!
//!    With `targetRowsPerSegment` instead of `numShards`, a cardinality phase comes first:
//!    each split is a `partial_dimension_cardinality` sub-task that sketches each interval's
//!    distinct group keys (HLL); the supervisor merges the sketches and gives each interval
//!    `ceil(distinct / targetRowsPerSegment)` buckets, passed to phase 1 as
//!    `intervalToNumShards`. Range partitioning runs in one peon.
//! 6. Once every sub-task has succeeded, the supervisor publishes all their segments in one
//!    `segmentTransactionalInsert` (with tombstones for `dropExisting`), then removes the
//!    partial segments.
//!
//! The report carries Druid's `ingestionStatsAndErrors` summed over the sub-tasks that read the
//! input, and `parallelIndexProgress` with each sub-task and its status, live while the task
//! runs.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use raftlord_ingest::compact::{CompactSpec, Existing};
use raftlord_ingest::source::InputSource;
use raftlord_ingest::spec::{CARDINALITY_TYPE, PARTIAL_GENERATE_TYPE, PARTIAL_MERGE_TYPE, SUB_TASK_TYPE};
use raftlord_ingest::IngestSpec;

use super::index_task::{
    ingest, lock_up_front, log, open_deep_storage, set_state, stop_subtasks, tombstones, write_report, MergeInterval,
    Outcome, Pushed, Role,
};
use super::task_actions::TaskActions;
use crate::interval::Interval;

/// How often the supervisor asks for its sub-tasks' status.
const POLL: Duration = Duration::from_millis(250);
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The splits of a task that runs as sub-tasks, and how many run at once; `None` when it runs in
/// one peon (one split, `maxNumConcurrentSubTasks` 1, hashed or range partitioning, not an
/// `index_parallel` task, or no task slot in the cluster besides this task's own).
pub async fn splits(
    task: &Value,
    spec: &IngestSpec,
    actions: &TaskActions,
) -> Result<Option<(Vec<Value>, usize)>, String> {
    if spec.task_type != "index_parallel" || spec.max_num_concurrent_sub_tasks < 2 || spec.range.is_some() {
        return Ok(None);
    }
    // Sub-tasks need slots of their own: this task holds one while it waits for them.
    let capacity = actions
        .total_worker_capacity()
        .await
        .unwrap_or(spec.max_num_concurrent_sub_tasks + 1);
    let others = capacity.saturating_sub(1);
    if others == 0 {
        log("the cluster has no task slot besides this task's own: running in one peon, without sub-tasks");
        return Ok(None);
    }
    if matches!(spec.source, InputSource::Inline { .. } | InputSource::Druid { .. }) {
        return Ok(None);
    }
    let original = task
        .pointer("/spec/ioConfig/inputSource")
        .cloned()
        .unwrap_or(Value::Null);
    let (source, hint) = (spec.source.clone(), spec.split_hint);
    let splits = tokio::task::spawn_blocking(move || source.splits(&original, &hint))
        .await
        .map_err(|e| format!("the listing thread failed: {e}"))??;
    let at_once = spec.max_num_concurrent_sub_tasks.min(others).min(splits.len() as u64) as usize;
    Ok((splits.len() > 1).then_some((splits, at_once)))
}

/// One sub-task's spec: the parent's, reading `split`.
fn sub_task(parent: &Value, kind: &str, split: &Value, spec_id: usize, attempt: u32) -> (String, Value) {
    let parent_id = parent["id"].as_str().unwrap_or_default();
    let mut id = format!("{kind}_{parent_id}_{spec_id}_{attempt}");
    if id.len() > crate::tasks::spec::MAX_ID_BYTES {
        // A long parent id: a digest of it stands in.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parent_id.hash(&mut h);
        id = format!("{kind}_{:016x}_{spec_id}_{attempt}", h.finish());
    }
    let mut t = parent.clone();
    t["type"] = json!(kind);
    t["id"] = json!(id);
    t["groupId"] = json!(parent["groupId"].as_str().unwrap_or(parent_id));
    t["supervisorTaskId"] = json!(parent_id);
    t["numAttempts"] = json!(attempt);
    t["spec"]["ioConfig"]["inputSource"] = split.clone();
    t["spec"]["tuningConfig"]["maxNumConcurrentSubTasks"] = json!(1);
    // The parent's priority, so they share one lock.
    let priority = parent
        .pointer("/context/priority")
        .cloned()
        .unwrap_or_else(|| json!(crate::tasks::spec::default_priority("index_parallel")));
    if !t["context"].is_object() {
        t["context"] = json!({});
    }
    t["context"]["priority"] = priority;
    (id, t)
}

/// Runs the task as sub-tasks, one per split (and, for hashed partitioning, a second phase that
/// merges their buckets), and publishes what they pushed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    task: &Value,
    spec: &IngestSpec,
    splits: Vec<Value>,
    concurrency: usize,
    dir: &Path,
    actions: &TaskActions,
    live: &Arc<Mutex<Outcome>>,
    pushed: &Arc<Mutex<Pushed>>,
) -> Result<(), String> {
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let deep = open_deep_storage(pushed)?;
    let mut versions = lock_up_front(spec, actions).await?;
    let total = splits.len();
    set_state(live, "BUILD_SEGMENTS", dir, &id);
    let ctx = PhaseContext {
        spec,
        concurrency,
        dir,
        id: &id,
        actions,
        live,
        pushed,
    };
    let mut partials = Vec::new();
    let mut segments = if let Some(hashed) = &spec.hashed {
        // With targetRowsPerSegment, each interval's shard count comes from its distinct group
        // keys, sketched by a first pass over the splits (Druid's cardinality phase).
        let mut num_shards = None;
        let mut next_spec_id = 0;
        if hashed.num_shards.is_none() {
            log(&format!(
                "hashed partitioning, phase 1 of 3: {total} {CARDINALITY_TYPE} sub-task(s), {concurrency} at a time"
            ));
            let (_, reports) = run_phase(&ctx, total, 0, false, |i, attempt| {
                sub_task(task, CARDINALITY_TYPE, &splits[i], i, attempt)
            })
            .await?;
            let shards = shard_counts(&reports, hashed.target_rows_per_segment)?;
            log(&format!(
                "shards per interval for {} rows per segment: {}",
                hashed.target_rows_per_segment,
                shards
                    .iter()
                    .map(|(i, n)| format!("{i}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            num_shards = Some(shards);
            next_spec_id = total;
        }
        let phases = if num_shards.is_some() { (2, 3) } else { (1, 2) };
        log(&format!(
            "hashed partitioning, phase {} of {}: {total} {PARTIAL_GENERATE_TYPE} sub-task(s), {concurrency} at a time",
            phases.0, phases.1
        ));
        let generate_from = next_spec_id;
        (partials, _) = run_phase(&ctx, total, generate_from, true, |i, attempt| {
            let (id, mut t) = sub_task(task, PARTIAL_GENERATE_TYPE, &splits[i], generate_from + i, attempt);
            if let Some(shards) = &num_shards {
                t["intervalToNumShards"] = json!(shards
                    .iter()
                    .map(|(i, n)| (i.to_string(), json!(n)))
                    .collect::<serde_json::Map<_, _>>());
            }
            (id, t)
        })
        .await?;
        let merges = plan_merges(spec, &partials, &mut versions, actions).await?;
        log(&format!(
            "phase {} of {}: {} {PARTIAL_MERGE_TYPE} sub-task(s) merge {} partial segment(s)",
            phases.1,
            phases.1,
            merges.len(),
            partials.len()
        ));
        let merge_from = generate_from + total;
        run_phase(&ctx, merges.len(), merge_from, false, |j, attempt| {
            merge_task(task, spec, &merges[j], merge_from + j, attempt)
        })
        .await?
        .0
    } else {
        log(&format!(
            "running {total} sub-task(s), {concurrency} at a time, each retried up to {} time(s)",
            spec.max_retry
        ));
        let (mut segments, _) = run_phase(&ctx, total, 0, true, |i, attempt| {
            sub_task(task, SUB_TASK_TYPE, &splits[i], i, attempt)
        })
        .await?;
        if !spec.append_to_existing {
            number_core_partitions(&mut segments);
        }
        segments
    };

    let filled: Vec<Interval> = {
        let mut f: Vec<Interval> = segments
            .iter()
            .filter_map(|s| s["interval"].as_str().and_then(|i| Interval::parse(i).ok()))
            .collect();
        f.sort();
        f.dedup();
        f
    };
    let tombstones = if spec.drop_existing {
        tombstones(spec, &filled, &mut versions, actions).await?
    } else {
        Vec::new()
    };
    set_state(live, "PUBLISHING", dir, &id);
    let n = segments.len();
    segments.extend(tombstones);
    if !segments.is_empty() {
        actions.publish(segments).await?;
    }
    pushed.lock().unwrap_or_else(|p| p.into_inner()).files.clear();
    log(&format!("published {n} segment(s) pushed by the sub-tasks"));
    if !partials.is_empty() {
        // Their rows are in the published segments now.
        let load_specs: Vec<Value> = partials.iter().map(|p| p["loadSpec"].clone()).collect();
        let removed =
            tokio::task::spawn_blocking(move || load_specs.iter().filter(|l| deep.delete(l).unwrap_or(false)).count())
                .await
                .unwrap_or(0);
        log(&format!("removed {removed} partial segment file(s) of phase 1"));
    }
    update(live, |o| {
        o.segments_published = n as u64;
        o.state = "COMPLETED";
    });
    Ok(())
}

/// What every phase of a parallel task shares.
struct PhaseContext<'a> {
    spec: &'a IngestSpec,
    concurrency: usize,
    dir: &'a Path,
    id: &'a str,
    actions: &'a TaskActions,
    live: &'a Arc<Mutex<Outcome>>,
    pushed: &'a Arc<Mutex<Pushed>>,
}

/// Runs `count` sub-tasks (`make(i, attempt)` gives the id and spec of attempt `attempt` of the
/// `i`th), at most `concurrency` at once, each retried up to `maxRetry` times; returns every
/// segment they pushed, and the report of each that succeeded. Spec ids in the progress report start at `first_spec_id`; `stats`: their
/// row counts are this task's (the phase that reads the input).
async fn run_phase(
    ctx: &PhaseContext<'_>,
    count: usize,
    first_spec_id: usize,
    stats: bool,
    make: impl Fn(usize, u32) -> (String, Value),
) -> Result<(Vec<Value>, Vec<Value>), String> {
    let PhaseContext {
        spec,
        concurrency,
        dir,
        id,
        actions,
        live,
        pushed,
    } = *ctx;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut queue: VecDeque<usize> = (0..count).collect();
    let mut attempts = vec![0u32; count];
    let mut running: BTreeMap<usize, String> = BTreeMap::new();
    let mut segments: Vec<Value> = Vec::new();
    let mut succeeded_reports: Vec<Value> = Vec::new();
    let mut reported: Vec<(String, String)> = Vec::new();
    let mut succeeded = 0usize;
    loop {
        while running.len() < concurrency {
            let Some(i) = queue.pop_front() else { break };
            attempts[i] += 1;
            let (sub_id, sub) = make(i, attempts[i]);
            actions.submit_task(&sub).await?;
            log(&format!("submitted sub-task [{sub_id}] (attempt {})", attempts[i]));
            running.insert(i, sub_id.clone());
            pushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running_subtasks
                .push(sub_id.clone());
            update(live, |o| o.subtasks.push((first_spec_id + i, sub_id, "RUNNING".into())));
        }
        if running.is_empty() {
            break;
        }
        tokio::time::sleep(POLL).await;
        for (i, sub_id) in running.clone() {
            let status = actions.task_status(&sub_id).await?;
            let code = status["statusCode"].as_str().unwrap_or("").to_string();
            if code != "SUCCESS" && code != "FAILED" {
                continue;
            }
            running.remove(&i);
            pushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running_subtasks
                .retain(|s| *s != sub_id);
            update(live, |o| {
                if let Some(s) = o.subtasks.iter_mut().find(|s| s.1 == sub_id) {
                    s.2 = code.clone();
                }
            });
            if code == "SUCCESS" {
                let reports = actions.task_reports(&sub_id).await?;
                let theirs = reports
                    .pointer("/pushedSegments/payload/segments")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                // Theirs to remove now if this task fails.
                pushed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .extend(theirs.iter().map(|s| s["loadSpec"].clone()));
                if stats {
                    add_stats(live, &reports);
                }
                segments.extend(theirs);
                succeeded_reports.push(reports);
                succeeded += 1;
                continue;
            }
            // The report holds the whole message; the status a shortened one.
            let report = actions.task_reports(&sub_id).await.unwrap_or_default();
            let why = report
                .pointer("/ingestionStatsAndErrors/payload/errorMsg")
                .or_else(|| status.get("errorMsg"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            if attempts[i] as u64 > spec.max_retry {
                // Past this, what they pushed is removed with the rest.
                stop_subtasks(pushed, actions, Duration::from_secs(120)).await;
                return Err(format!(
                    "sub-task [{sub_id}] failed after {} attempt(s) (maxRetry {}): {why}",
                    attempts[i], spec.max_retry
                ));
            }
            log(&format!("sub-task [{sub_id}] failed, running it again: {why}"));
            queue.push_back(i);
        }
        let o = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            log(&format!(
                "sub-tasks: {succeeded} of {count} succeeded, {} running; {} rows read in {:.0} s",
                running.len(),
                o.stats.processed,
                started.elapsed().as_secs_f64()
            ));
        }
        // The live report shows each sub-task's start and end as soon as they are seen.
        let seen: Vec<(String, String)> = o.subtasks.iter().map(|(_, t, s)| (t.clone(), s.clone())).collect();
        if seen != reported {
            write_report(dir, id, &o);
            reported = seen;
        }
    }
    Ok((segments, succeeded_reports))
}

/// Each interval's shard count from the cardinality sub-tasks' reports: its distinct group
/// keys (their sketches merged) over `target_rows_per_segment`, rounded up, as Druid's
/// supervisor computes it.
fn shard_counts(reports: &[Value], target_rows_per_segment: u64) -> Result<BTreeMap<Interval, u32>, String> {
    let mut sketches: BTreeMap<Interval, Vec<&str>> = BTreeMap::new();
    for r in reports {
        let Some(found) = r
            .pointer("/partialDimensionCardinality/payload/sketches")
            .and_then(Value::as_object)
        else {
            return Err(format!("a cardinality sub-task's report has no sketches: {r}"));
        };
        for (interval, sketch) in found {
            let i = Interval::parse(interval).map_err(|e| format!("a cardinality report's interval: {e}"))?;
            let s = sketch.as_str().ok_or("a cardinality sketch is not a string")?;
            sketches.entry(i).or_default().push(s);
        }
    }
    let mut out = BTreeMap::new();
    for (interval, s) in sketches {
        let distinct = raftlord_ingest::estimate_distinct(&s)?;
        let n = (distinct / target_rows_per_segment.max(1) as f64)
            .ceil()
            .clamp(1.0, 10_000.0) as u32;
        out.insert(interval, n);
    }
    Ok(out)
}

/// Overwriting with dynamic partitions: a new version's set gets its size as the core partition
/// count when it is 0..n (no partition lost to a failed attempt), else none (Druid's appending
/// form).
fn number_core_partitions(segments: &mut [Value]) {
    let key = |s: &Value| {
        (
            s["interval"].as_str().unwrap_or("").to_string(),
            s["version"].as_str().unwrap_or("").to_string(),
        )
    };
    let mut sets: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for s in segments.iter() {
        sets.entry(key(s))
            .or_default()
            .push(s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0));
    }
    for s in segments.iter_mut() {
        let nums = &sets[&key(s)];
        let contiguous = nums.iter().all(|p| *p < nums.len() as u64);
        let n = if contiguous { nums.len() } else { 0 };
        s["shardSpec"] = json!({"type": "numbered", "partitionNum": s["shardSpec"]["partitionNum"], "partitions": n});
    }
}

/// One second-phase sub-task of hashed parallel ingestion: the partial segments it reads and
/// what it writes of each interval.
#[derive(Debug, Default, PartialEq)]
struct MergePlan {
    partials: Vec<Value>,
    partitions: BTreeMap<Interval, MergeInterval>,
}

/// Groups the partial segments of phase 1 by interval and hash bucket, locks each interval
/// (its version is the segments'), numbers each interval's non-empty buckets 0.. (Druid's
/// partition ids), and deals the buckets out to at most `totalNumMergeTasks` merge tasks.
async fn plan_merges(
    spec: &IngestSpec,
    partials: &[Value],
    versions: &mut BTreeMap<Interval, String>,
    actions: &TaskActions,
) -> Result<Vec<MergePlan>, String> {
    let grouped = group_partials(partials)?;
    for interval in grouped.keys() {
        if !versions.iter().any(|(i, _)| i.contains(interval)) {
            let v = actions.lock(interval).await?;
            versions.insert(*interval, v);
        }
    }
    deal_merges(grouped, versions, spec.total_num_merge_tasks)
}

/// Per interval: the bucket count, and the partial segments of each bucket.
type Grouped = BTreeMap<Interval, (u32, BTreeMap<u32, Vec<Value>>)>;

fn group_partials(partials: &[Value]) -> Result<Grouped, String> {
    let mut grouped: Grouped = BTreeMap::new();
    for p in partials {
        let interval = p["interval"]
            .as_str()
            .and_then(|i| Interval::parse(i).ok())
            .ok_or_else(|| format!("a partial segment has no readable interval: {p}"))?;
        let (Some(bucket), Some(buckets)) = (
            p["shardSpec"]["bucketId"].as_u64().and_then(|b| u32::try_from(b).ok()),
            p["shardSpec"]["numBuckets"]
                .as_u64()
                .and_then(|b| u32::try_from(b).ok()),
        ) else {
            return Err(format!("a partial segment has no hash bucket: {p}"));
        };
        let entry = grouped.entry(interval).or_insert_with(|| (buckets, BTreeMap::new()));
        if entry.0 != buckets {
            return Err(format!("partial segments of {interval} disagree on the bucket count"));
        }
        entry.1.entry(bucket).or_default().push(p.clone());
    }
    Ok(grouped)
}

fn deal_merges(
    grouped: Grouped,
    versions: &BTreeMap<Interval, String>,
    total_num_merge_tasks: u64,
) -> Result<Vec<MergePlan>, String> {
    let all_buckets: std::collections::BTreeSet<u32> = grouped.values().flat_map(|(_, b)| b.keys().copied()).collect();
    let tasks = (total_num_merge_tasks as usize).min(all_buckets.len()).max(1);
    let task_of = |bucket: u32| all_buckets.iter().position(|b| *b == bucket).unwrap_or(0) % tasks;
    let mut plans: Vec<MergePlan> = (0..tasks).map(|_| MergePlan::default()).collect();
    for (interval, (num_buckets, buckets)) in grouped {
        let version = versions
            .iter()
            .find(|(i, _)| i.contains(&interval))
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("no lock is held on {interval}"))?;
        let num_core_partitions = buckets.len() as u32;
        for (partition, (bucket, files)) in buckets.into_iter().enumerate() {
            let plan = &mut plans[task_of(bucket)];
            plan.partials.extend(files);
            plan.partitions
                .entry(interval)
                .or_insert_with(|| MergeInterval {
                    version: version.clone(),
                    num_buckets,
                    num_core_partitions,
                    buckets: Vec::new(),
                })
                .buckets
                .push((bucket, partition as u32));
        }
    }
    plans.retain(|p| !p.partials.is_empty());
    Ok(plans)
}

/// The interval from the first start to the last end of a merge task's intervals.
fn umbrella(partitions: &BTreeMap<Interval, MergeInterval>) -> Option<Interval> {
    let start = partitions.keys().map(|i| i.start).min()?;
    let end = partitions.keys().map(|i| i.end).max()?;
    Interval::new(start, end)
}

/// The spec of a merge sub-task: the parent's, reading the partial segments of `plan` (a
/// `druid` source over their umbrella interval, whose files the sub-task fetches itself).
fn merge_task(parent: &Value, spec: &IngestSpec, plan: &MergePlan, spec_id: usize, attempt: u32) -> (String, Value) {
    let umbrella = umbrella(&plan.partitions).map(|i| i.to_string()).unwrap_or_default();
    let source = json!({"type": "druid", "dataSource": spec.datasource, "interval": umbrella});
    let (id, mut t) = sub_task(parent, PARTIAL_MERGE_TYPE, &source, spec_id, attempt);
    if let Some(io) = t.pointer_mut("/spec/ioConfig").and_then(Value::as_object_mut) {
        io.remove("inputFormat");
    }
    t["partialSegments"] = json!(plan
        .partials
        .iter()
        .map(|p| json!({"interval": p["interval"], "loadSpec": p["loadSpec"]}))
        .collect::<Vec<_>>());
    t["mergePartitions"] = json!(plan
        .partitions
        .iter()
        .map(|(i, m)| {
            let mut v = json!(m);
            v["interval"] = json!(i.to_string());
            v
        })
        .collect::<Vec<_>>());
    (id, t)
}

/// A merge sub-task (in its peon): fetches its partial segments, reads their schema, and writes
/// its buckets as final segments, combining the rows of each with the metrics' combining
/// aggregators (the perfect rollup of hashed partitioning), for its supervisor to publish.
pub async fn run_merge(
    task: &Value,
    spec: &IngestSpec,
    supervisor: &str,
    dir: &Path,
    actions: &TaskActions,
    live: &Arc<Mutex<Outcome>>,
    pushed: &Arc<Mutex<Pushed>>,
) -> Result<(), String> {
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let deep = open_deep_storage(pushed)?;
    let mut partitions: BTreeMap<Interval, MergeInterval> = BTreeMap::new();
    for p in task["mergePartitions"].as_array().into_iter().flatten() {
        let interval = p["interval"]
            .as_str()
            .and_then(|i| Interval::parse(i).ok())
            .ok_or("mergePartitions: an entry has no readable interval")?;
        let m: MergeInterval = serde_json::from_value(p.clone()).map_err(|e| format!("mergePartitions: {e}"))?;
        partitions.insert(interval, m);
    }
    let mut wanted: Vec<(Interval, Value)> = Vec::new();
    for p in task["partialSegments"].as_array().into_iter().flatten() {
        let interval = p["interval"]
            .as_str()
            .and_then(|i| Interval::parse(i).ok())
            .ok_or("partialSegments: an entry has no readable interval")?;
        wanted.push((interval, p["loadSpec"].clone()));
    }
    if partitions.is_empty() || wanted.is_empty() {
        return Err("a merge sub-task needs mergePartitions and partialSegments".to_string());
    }
    let into = dir.join("partials");
    let fetch_deep = deep.clone();
    let existing: Vec<(Existing, PathBuf)> = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(interval, load_spec)| {
                let file = fetch_deep.fetch(&load_spec, &into)?;
                let metadata = raftlord_ingest::segment::read_metadata(&file)?;
                Ok((Existing { interval, metadata }, file))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| format!("the download thread failed: {e}"))??;
    log(&format!("merging {} partial segment(s)", existing.len()));
    let mut granularity = serde_json::Map::new();
    granularity.insert("segmentGranularity".into(), spec.segment_granularity_json.clone());
    granularity.insert("queryGranularity".into(), spec.query_granularity_json.clone());
    granularity.insert("rollup".into(), json!(spec.rollup));
    let reindex = CompactSpec {
        datasource: spec.datasource.clone(),
        interval: umbrella(&partitions).ok_or("the merge partitions span no interval")?,
        segments: None,
        dimensions_spec: None,
        metrics_spec: None,
        granularity_spec: granularity,
        tuning_config: task.pointer("/spec/tuningConfig").cloned().unwrap_or_else(|| json!({})),
        drop_existing: false,
    };
    let schemas: Vec<Existing> = existing.iter().map(|(e, _)| e.clone()).collect();
    let index = reindex
        .index_task(&id, &schemas, None)
        .map_err(|e| format!("cannot read the partial segments' schema: {e}"))?;
    let mut merge_spec = IngestSpec::from_task(&index).map_err(|e| format!("invalid merge spec: {e}"))?;
    merge_spec
        .source
        .with_segment_files(existing.into_iter().map(|(_, f)| f).collect());
    let role = Role::Merge {
        supervisor,
        partitions: &partitions,
    };
    ingest(
        &id,
        &merge_spec,
        BTreeMap::new(),
        None,
        role,
        dir,
        &deep,
        actions,
        live,
        pushed,
    )
    .await
}

fn update(live: &Mutex<Outcome>, f: impl FnOnce(&mut Outcome)) {
    f(&mut live.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Adds a finished sub-task's row counts and unparseable events to this task's.
fn add_stats(live: &Mutex<Outcome>, reports: &Value) {
    let payload = &reports["ingestionStatsAndErrors"]["payload"];
    let stats = &payload["rowStats"]["buildSegments"];
    let problems: Vec<raftlord_ingest::ParseProblem> = payload["unparseableEvents"]["buildSegments"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| serde_json::from_value(p.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    update(live, |o| {
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        o.stats.processed += n("processed");
        o.stats.processed_bytes += n("processedBytes");
        o.stats.processed_with_error += n("processedWithError");
        o.stats.thrown_away += n("thrownAway");
        o.stats.unparseable += n("unparseable");
        o.problems.extend(problems);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sub_task_is_the_parents_spec_reading_its_split_in_its_group() {
        let parent = json!({"type": "index_parallel", "id": "p", "groupId": "g", "context": {"priority": 60},
            "spec": {"ioConfig": {"inputSource": {"type": "local", "baseDir": "/in", "filter": "*"}},
                     "tuningConfig": {"maxNumConcurrentSubTasks": 4}}});
        let split = json!({"type": "local", "files": ["/in/a"]});
        let (id, t) = sub_task(&parent, SUB_TASK_TYPE, &split, 2, 1);
        assert_eq!(id, "single_phase_sub_task_p_2_1");
        assert_eq!(t["id"], id.as_str());
        assert_eq!(t["type"], "single_phase_sub_task");
        assert_eq!((&t["groupId"], &t["supervisorTaskId"]), (&json!("g"), &json!("p")));
        assert_eq!(t["context"]["priority"], 60);
        assert_eq!(t["spec"]["ioConfig"]["inputSource"], split);
        assert_eq!(t["spec"]["tuningConfig"]["maxNumConcurrentSubTasks"], 1);
        // Without a group or a priority: the parent's id, and index_parallel's default priority.
        let (_, t) = sub_task(&json!({"id": "p", "spec": {}}), SUB_TASK_TYPE, &split, 0, 1);
        assert_eq!(t["groupId"], "p");
        assert_eq!(t["context"]["priority"], 50);
        // A parent id near the length limit still gives a valid id, distinct per split and attempt.
        let long = "x".repeat(250);
        let (a, _) = sub_task(&json!({"id": long, "spec": {}}), SUB_TASK_TYPE, &split, 0, 1);
        let (b, _) = sub_task(&json!({"id": long, "spec": {}}), SUB_TASK_TYPE, &split, 0, 2);
        assert!(a.len() <= crate::tasks::spec::MAX_ID_BYTES && a != b, "{a} {b}");
    }

    /// Phase 1's partial segments become merge tasks: each interval's non-empty buckets are
    /// numbered 0.. in bucket order, a bucket's partials all go to one task, and no more tasks
    /// run than `totalNumMergeTasks` or than there are buckets.
    #[test]
    fn partial_segments_are_dealt_out_by_bucket_and_numbered_per_interval() {
        let day = |d: u32| format!("2024-05-0{d}T00:00:00.000Z/2024-05-0{}T00:00:00.000Z", d + 1);
        let partial = |d: u32, bucket: u32, file: &str| {
            json!({"interval": day(d), "shardSpec": {"type": "hashed", "bucketId": bucket, "numBuckets": 4},
                "loadSpec": {"type": "local", "path": file}})
        };
        // Day 1 holds buckets 0, 2 and 3 (3 twice, from two phase-1 tasks); day 2 only bucket 2.
        let partials = vec![
            partial(1, 3, "a"),
            partial(1, 0, "b"),
            partial(2, 2, "c"),
            partial(1, 2, "d"),
            partial(1, 3, "e"),
        ];
        let grouped = group_partials(&partials).unwrap();
        let versions: BTreeMap<Interval, String> = (1..=2)
            .map(|d| (Interval::parse(&day(d)).unwrap(), format!("v{d}")))
            .collect();
        let plans = deal_merges(grouped.clone(), &versions, 2).unwrap();
        assert_eq!(plans.len(), 2);
        let files = |p: &MergePlan| -> Vec<String> {
            let mut f: Vec<String> = p
                .partials
                .iter()
                .map(|v| v["loadSpec"]["path"].as_str().unwrap().to_string())
                .collect();
            f.sort();
            f
        };
        // Buckets 0, 2, 3 in order: 0 and 3 to task 0, 2 to task 1.
        assert_eq!(files(&plans[0]), ["a", "b", "e"]);
        assert_eq!(files(&plans[1]), ["c", "d"]);
        let d1 = Interval::parse(&day(1)).unwrap();
        let d2 = Interval::parse(&day(2)).unwrap();
        assert_eq!(
            plans[0].partitions[&d1],
            MergeInterval {
                version: "v1".into(),
                num_buckets: 4,
                num_core_partitions: 3,
                buckets: vec![(0, 0), (3, 2)]
            }
        );
        assert_eq!(plans[1].partitions[&d1].buckets, vec![(2, 1)]);
        assert_eq!(
            plans[1].partitions[&d2],
            MergeInterval {
                version: "v2".into(),
                num_buckets: 4,
                num_core_partitions: 1,
                buckets: vec![(2, 0)]
            }
        );
        assert!(!plans[0].partitions.contains_key(&d2));
        // Ten merge tasks asked for, three buckets: three tasks.
        assert_eq!(deal_merges(grouped.clone(), &versions, 10).unwrap().len(), 3);
        // No lock on an interval: refused.
        let err = deal_merges(grouped, &BTreeMap::new(), 2).unwrap_err();
        assert!(err.contains("no lock"), "{err}");
        // Partials that disagree on the bucket count: refused.
        let mut odd = partial(1, 1, "f");
        odd["shardSpec"]["numBuckets"] = json!(5);
        assert!(group_partials(&[partial(1, 0, "b"), odd]).is_err());
    }
}
