//! An `index_parallel` task with `maxNumConcurrentSubTasks` above 1: Druid's single-phase
//! parallel ingestion (dynamic partitioning).
//!
//! 1. The input is listed and split as Druid's `maxSize` split hint does
//!    ([`raftlord_ingest::source::InputSource::splits`]); one split runs as an ordinary task.
//! 2. With `granularitySpec.intervals`, the supervisor (this task) locks them first, as a single
//!    task does.
//! 3. Each split runs as a `single_phase_sub_task`, a real task in the task API (same group and
//!    priority, `supervisorTaskId` naming this task), at most `maxNumConcurrentSubTasks` at once,
//!    and no more than the cluster's task slots besides this task's own (with none, the task
//!    runs in one peon rather than wait for ever).
//!    A sub-task reads its split, allocates its segments through the Overlord for its
//!    supervisor (which is granted the same locks; when overwriting, in the version of the
//!    group's lock), pushes them to deep storage and lists them in its report. It publishes
//!    nothing.
//! 4. A failed sub-task runs again, up to `maxRetry` times; past that the supervisor shuts down
//!    the others, removes what they pushed and fails.
//! 5. Once every split has succeeded, the supervisor publishes all their segments in one
//!    `segmentTransactionalInsert` (with tombstones for `dropExisting`).
//!
//! The report carries Druid's `ingestionStatsAndErrors` summed over the sub-tasks, and
//! `parallelIndexProgress` with each sub-task and its status, live while the task runs. Rollup
//! is per sub-task (Druid's best-effort rollup of dynamic partitioning); `hashed` partitioning
//! runs in one peon.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use raftlord_ingest::source::InputSource;
use raftlord_ingest::spec::SUB_TASK_TYPE;
use raftlord_ingest::IngestSpec;

use super::index_task::{deep_storage, lock_up_front, log, set_state, tombstones, write_report, Outcome, Pushed};
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
    if spec.task_type != "index_parallel"
        || spec.max_num_concurrent_sub_tasks < 2
        || spec.hashed.is_some()
        || spec.range.is_some()
    {
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
fn sub_task(parent: &Value, split: &Value, spec_id: usize, attempt: u32) -> (String, Value) {
    let parent_id = parent["id"].as_str().unwrap_or_default();
    let mut id = format!("{SUB_TASK_TYPE}_{parent_id}_{spec_id}_{attempt}");
    if id.len() > crate::tasks::spec::MAX_ID_BYTES {
        // A long parent id: a digest of it stands in.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parent_id.hash(&mut h);
        id = format!("{SUB_TASK_TYPE}_{:016x}_{spec_id}_{attempt}", h.finish());
    }
    let mut t = parent.clone();
    t["type"] = json!(SUB_TASK_TYPE);
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

/// Runs the task as sub-tasks, one per split, and publishes what they pushed.
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
    let deep = Arc::new(deep_storage()?);
    pushed.lock().unwrap_or_else(|p| p.into_inner()).deep = Some(deep);
    let mut versions = lock_up_front(spec, actions).await?;
    let total = splits.len();
    log(&format!(
        "running {total} sub-task(s), {concurrency} at a time, each retried up to {} time(s)",
        spec.max_retry
    ));
    set_state(live, "BUILD_SEGMENTS", dir, &id);
    let started = Instant::now();
    let mut last_log = Instant::now();
    let mut queue: VecDeque<usize> = (0..total).collect();
    let mut attempts = vec![0u32; total];
    let mut running: BTreeMap<usize, String> = BTreeMap::new();
    let mut segments: Vec<Value> = Vec::new();
    let mut succeeded = 0usize;
    loop {
        while running.len() < concurrency {
            let Some(i) = queue.pop_front() else { break };
            attempts[i] += 1;
            let (sub_id, sub) = sub_task(task, &splits[i], i, attempts[i]);
            actions.submit_task(&sub).await?;
            log(&format!(
                "submitted sub-task [{sub_id}] (split {i}, attempt {})",
                attempts[i]
            ));
            running.insert(i, sub_id.clone());
            pushed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .running_subtasks
                .push(sub_id.clone());
            update(live, |o| o.subtasks.push((i, sub_id, "RUNNING".into())));
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
                add_stats(live, &reports);
                segments.extend(theirs);
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
                wind_down(&running, actions, pushed).await;
                return Err(format!(
                    "sub-task [{sub_id}] failed after {} attempt(s) (maxRetry {}): {why}",
                    attempts[i], spec.max_retry
                ));
            }
            log(&format!("sub-task [{sub_id}] failed, running its split again: {why}"));
            queue.push_back(i);
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            let o = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
            log(&format!(
                "sub-tasks: {succeeded} of {total} succeeded, {} running; {} rows read in {:.0} s",
                running.len(),
                o.stats.processed,
                started.elapsed().as_secs_f64()
            ));
            write_report(dir, &id, &o);
        }
    }

    // Overwriting: a new version's set gets its size as the core partition count when it is
    // 0..n (no partition lost to a failed attempt), else none (Druid's appending form).
    if !spec.append_to_existing {
        let mut sets: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for s in &segments {
            let key = (
                s["interval"].as_str().unwrap_or("").to_string(),
                s["version"].as_str().unwrap_or("").to_string(),
            );
            sets.entry(key)
                .or_default()
                .push(s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0));
        }
        for s in &mut segments {
            let key = (
                s["interval"].as_str().unwrap_or("").to_string(),
                s["version"].as_str().unwrap_or("").to_string(),
            );
            let nums = &sets[&key];
            let contiguous = nums.iter().all(|p| *p < nums.len() as u64);
            let n = if contiguous { nums.len() } else { 0 };
            s["shardSpec"] =
                json!({"type": "numbered", "partitionNum": s["shardSpec"]["partitionNum"], "partitions": n});
        }
    }
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
    log(&format!("published {n} segment(s) pushed by {total} sub-task(s)"));
    update(live, |o| {
        o.segments_published = n as u64;
        o.state = "COMPLETED";
    });
    Ok(())
}

/// Shuts down the sub-tasks still running and waits for them to end, so that whatever one of
/// them pushed before it ended is known and removed with the rest.
async fn wind_down(running: &BTreeMap<usize, String>, actions: &TaskActions, pushed: &Mutex<Pushed>) {
    for id in running.values() {
        if let Err(e) = actions.shutdown_task(id).await {
            log(&format!("could not shut down sub-task [{id}]: {e}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in running.values() {
        let code = loop {
            let code = match actions.task_status(id).await {
                Ok(s) => s["statusCode"].as_str().unwrap_or("").to_string(),
                Err(_) => String::new(),
            };
            if code == "SUCCESS" || code == "FAILED" || Instant::now() >= deadline {
                break code;
            }
            tokio::time::sleep(POLL).await;
        };
        if code == "SUCCESS" {
            if let Ok(r) = actions.task_reports(id).await {
                let theirs = r.pointer("/pushedSegments/payload/segments").and_then(Value::as_array);
                pushed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .files
                    .extend(theirs.into_iter().flatten().map(|s| s["loadSpec"].clone()));
            }
        }
    }
    pushed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .running_subtasks
        .clear();
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
        let (id, t) = sub_task(&parent, &split, 2, 1);
        assert_eq!(id, "single_phase_sub_task_p_2_1");
        assert_eq!(t["id"], id.as_str());
        assert_eq!(t["type"], "single_phase_sub_task");
        assert_eq!((&t["groupId"], &t["supervisorTaskId"]), (&json!("g"), &json!("p")));
        assert_eq!(t["context"]["priority"], 60);
        assert_eq!(t["spec"]["ioConfig"]["inputSource"], split);
        assert_eq!(t["spec"]["tuningConfig"]["maxNumConcurrentSubTasks"], 1);
        // Without a group or a priority: the parent's id, and index_parallel's default priority.
        let (_, t) = sub_task(&json!({"id": "p", "spec": {}}), &split, 0, 1);
        assert_eq!(t["groupId"], "p");
        assert_eq!(t["context"]["priority"], 50);
        // A parent id near the length limit still gives a valid id, distinct per split and attempt.
        let long = "x".repeat(250);
        let (a, _) = sub_task(&json!({"id": long, "spec": {}}), &split, 0, 1);
        let (b, _) = sub_task(&json!({"id": long, "spec": {}}), &split, 0, 2);
        assert!(a.len() <= crate::tasks::spec::MAX_ID_BYTES && a != b, "{a} {b}");
    }
}
