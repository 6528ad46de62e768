//! The peon's `index`, `index_parallel` and `compact` tasks: Druid's native batch ingestion, run
//! in one process (a compaction runs as the index task it stands for,
//! [`raftlord_ingest::compact`]).
//!
//! 1. With `granularitySpec.intervals` (or a `druid` input source's interval), lock the segment
//!    intervals they cover first (as Druid's `isReady` does; the Overlord took the same locks
//!    before the task started), so a task that cannot get its locks reads nothing, and a `druid`
//!    source's segments cannot change between being listed and being overwritten.
//! 2. Read the input into rolled-up, per-interval buckets ([`raftlord_ingest::read_input`]) on a
//!    blocking thread, logging progress and rewriting the live report every few seconds.
//! 3. Overwrite (the default): lock each interval found (EXCLUSIVE); the lock's version is the
//!    segments' version and partitions are numbered from 0. Append (`appendToExisting`): one
//!    `segmentAllocate` per partition, which adds partitions to the interval's current version.
//! 4. Write each partition as a Parquet file in the task directory, copy it into deep storage
//!    ([`super::deep_storage`]: `dataSource/start_end/version/partitionNum/index.parquet` in a
//!    directory or an S3 bucket), and publish every segment in one `segmentTransactionalInsert`.
//!
//! A task that fails or is stopped after pushing files removes them: nothing it wrote stays in
//! deep storage unless its segments were published.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use raftlord_ingest::{read_input, IngestSpec, Ingested, ParseProblem, RowStats, SegmentFile};

use super::deep_storage::{DeepStorage, SegmentPlace};
use super::runner::write_atomic;
use super::task_actions::TaskActions;
use crate::clock::{iso, now_ms};
use crate::interval::Interval;

/// Environment variable naming deep storage (a directory or `s3://bucket/prefix`), set by the
/// worker for its peons.
pub const DEEP_STORAGE_ENV: &str = "RAFTLORD_DEEP_STORAGE";

/// How long a stopped parallel task waits for the sub-tasks it shut down to end (a stopped peon
/// has `--peon-graceful-stop-ms`, 10 s by default, before it is killed).
pub const SUB_TASK_STOP_WAIT: Duration = Duration::from_secs(5);

/// How often progress is logged and the live report rewritten.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What the task did, for its report.
#[derive(Default, Clone)]
pub struct Outcome {
    pub stats: RowStats,
    pub problems: Vec<ParseProblem>,
    pub state: &'static str,
    pub segments_published: u64,
    pub error: Option<String>,
    /// A sub-task's segments, pushed for its supervisor to publish.
    pub pushed_segments: Vec<Value>,
    /// A parallel task's sub-tasks: (spec id, attempt's task id, status).
    pub subtasks: Vec<(usize, String, String)>,
    /// A cardinality sub-task's sketches: interval -> base64 of the serialized sketch.
    pub cardinalities: Option<Value>,
}

/// Whether the task publishes its own segments, or is a sub-task that pushes them for its
/// supervisor (the parallel `index_parallel` task) to publish.
#[derive(Clone, Copy)]
pub(super) enum Role<'a> {
    Task,
    SubTask {
        supervisor: &'a str,
    },
    /// The first phase of hashed parallel ingestion: each interval's rows are written as one
    /// partial segment per non-empty hash bucket, for the second phase to merge.
    Partial {
        supervisor: &'a str,
        /// Each interval's bucket count, found by the cardinality phase; `None`: `numShards`.
        num_shards: Option<&'a BTreeMap<Interval, u32>>,
    },
    /// The cardinality phase (hashed with `targetRowsPerSegment`): each interval's distinct
    /// group keys, sketched, in the report; nothing pushed.
    Cardinality {
        supervisor: &'a str,
    },
    /// The second phase: the buckets given, in the versions given, as final segments.
    Merge {
        supervisor: &'a str,
        partitions: &'a BTreeMap<Interval, MergeInterval>,
    },
}

impl<'a> Role<'a> {
    fn supervisor(self) -> Option<&'a str> {
        match self {
            Role::Task => None,
            Role::SubTask { supervisor }
            | Role::Partial { supervisor, .. }
            | Role::Cardinality { supervisor }
            | Role::Merge { supervisor, .. } => Some(supervisor),
        }
    }
}

/// What a second-phase sub-task writes of one interval.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeInterval {
    /// The version of the supervisor's lock on the interval.
    pub version: String,
    /// How many hash buckets the interval's rows were split into.
    pub num_buckets: u32,
    /// How many partitions the interval's segment set has (its non-empty buckets).
    pub num_core_partitions: u32,
    /// `(bucket, partition number)` of each bucket this sub-task writes.
    pub buckets: Vec<(u32, u32)>,
}

/// Druid's `ingestionStatsAndErrors` report.
pub fn report(task_id: &str, o: &Outcome) -> Value {
    let mut r = ingestion_report(task_id, o);
    if !o.pushed_segments.is_empty() {
        r["pushedSegments"] = json!({"type": "pushedSegments", "taskId": task_id,
            "payload": {"segments": o.pushed_segments}});
    }
    if let Some(c) = &o.cardinalities {
        r["partialDimensionCardinality"] =
            json!({"type": "partialDimensionCardinality", "taskId": task_id, "payload": {"sketches": c}});
    }
    if !o.subtasks.is_empty() {
        let count = |status: &str| o.subtasks.iter().filter(|(_, _, s)| s == status).count();
        r["parallelIndexProgress"] = json!({"type": "parallelIndexProgress", "taskId": task_id,
        "payload": {
            "running": count("RUNNING"),
            "succeeded": count("SUCCESS"),
            "failed": count("FAILED"),
            "expectedSucceeded": o.subtasks.iter().map(|(spec, _, _)| spec).collect::<std::collections::BTreeSet<_>>().len(),
            "subtasks": o.subtasks.iter().map(|(spec, id, status)| json!({"specId": spec, "taskId": id, "status": status})).collect::<Vec<_>>(),
        }});
    }
    r
}

fn ingestion_report(task_id: &str, o: &Outcome) -> Value {
    json!({
        "ingestionStatsAndErrors": {
            "type": "ingestionStatsAndErrors",
            "taskId": task_id,
            "payload": {
                "ingestionState": o.state,
                "unparseableEvents": {"buildSegments": o.problems},
                "rowStats": {"buildSegments": o.stats},
                "errorMsg": o.error,
                "segmentAvailabilityConfirmed": false,
                "segmentAvailabilityWaitTimeMs": 0,
                "recordsProcessed": null,
                "segmentsRead": null,
                "segmentsPublished": o.segments_published,
            }
        }
    })
}

pub(super) fn log(msg: &str) {
    println!("{} INFO {msg}", iso(now_ms()));
}

/// Files a task has pushed to deep storage and not yet published (their load specs). Once
/// closed (the task failed or was stopped), nothing more is pushed.
#[derive(Default)]
pub struct Pushed {
    pub(super) deep: Option<Arc<DeepStorage>>,
    pub(super) files: Vec<Value>,
    closed: bool,
    /// A parallel task's sub-tasks still running, shut down when it stops.
    pub(super) running_subtasks: Vec<String>,
}

/// The deep storage the worker gave this peon.
pub fn deep_storage() -> Result<DeepStorage, String> {
    let location =
        std::env::var(DEEP_STORAGE_ENV).map_err(|_| "the worker gave this peon no deep storage".to_string())?;
    DeepStorage::parse(&location)
}

/// Runs the task; the outcome is `Ok` when its segments are published. On an error the pushed
/// files are removed; on a stop the caller calls [`remove_pushed`].
pub async fn run(task: Value, dir: &Path, live: Arc<Mutex<Outcome>>, pushed: Arc<Mutex<Pushed>>) -> Result<(), String> {
    let id = task.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let spec = IngestSpec::from_task(&task).map_err(|e| format!("invalid spec: {e}"))?;
    let actions = TaskActions::from_env(task.clone())?;
    use raftlord_ingest::spec::{CARDINALITY_TYPE, PARTIAL_GENERATE_TYPE, PARTIAL_MERGE_TYPE, SUB_TASK_TYPE};
    let sub_task = [
        SUB_TASK_TYPE,
        CARDINALITY_TYPE,
        PARTIAL_GENERATE_TYPE,
        PARTIAL_MERGE_TYPE,
    ]
    .contains(&spec.task_type.as_str());
    let result = if sub_task {
        let num_shards = interval_to_num_shards(&task);
        match (task.get("supervisorTaskId").and_then(Value::as_str), &num_shards) {
            (None, _) => Err(format!("a {} needs supervisorTaskId", spec.task_type)),
            (_, Err(e)) => Err(e.clone()),
            (Some(supervisor), _) if spec.task_type == PARTIAL_MERGE_TYPE => {
                super::parallel_task::run_merge(&task, &spec, supervisor, dir, &actions, &live, &pushed).await
            }
            (Some(supervisor), Ok(num_shards)) => {
                let role = match spec.task_type.as_str() {
                    PARTIAL_GENERATE_TYPE => Role::Partial {
                        supervisor,
                        num_shards: num_shards.as_ref(),
                    },
                    CARDINALITY_TYPE => Role::Cardinality { supervisor },
                    _ => Role::SubTask { supervisor },
                };
                run_spec(&id, spec, None, role, dir, &actions, &live, &pushed).await
            }
        }
    } else {
        match super::parallel_task::splits(&task, &spec, &actions).await {
            Err(e) => Err(e),
            Ok(Some((splits, at_once))) => {
                super::parallel_task::run(&task, &spec, splits, at_once, dir, &actions, &live, &pushed).await
            }
            Ok(None) => run_spec(&id, spec, None, Role::Task, dir, &actions, &live, &pushed).await,
        }
    };
    if result.is_err() {
        stop_subtasks(&pushed, &actions, SUB_TASK_STOP_WAIT).await;
        remove_pushed(pushed).await;
    }
    result
}

/// A `partial_index_generate` task's `intervalToNumShards` (Druid's field: each interval's
/// bucket count, from the cardinality phase), when given.
fn interval_to_num_shards(task: &Value) -> Result<Option<BTreeMap<Interval, u32>>, String> {
    let Some(map) = task.get("intervalToNumShards").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let map = map.as_object().ok_or("intervalToNumShards must be an object")?;
    let mut out = BTreeMap::new();
    for (interval, n) in map {
        let i = Interval::parse(interval).map_err(|e| format!("intervalToNumShards: {e}"))?;
        let n = n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("intervalToNumShards[{interval}] must be a positive shard count"))?;
        out.insert(i, n);
    }
    Ok(Some(out))
}

/// Shuts down the sub-tasks a parallel task still has running and waits up to `wait` for them
/// to end, so that whatever one of them pushed before it ended (a sub-task that succeeded just
/// before) is known, and removed with the rest of what this task pushed.
pub async fn stop_subtasks(pushed: &Mutex<Pushed>, actions: &TaskActions, wait: Duration) {
    let running = std::mem::take(&mut pushed.lock().unwrap_or_else(|p| p.into_inner()).running_subtasks);
    for id in &running {
        match actions.shutdown_task(id).await {
            Ok(()) => log(&format!("shut down sub-task [{id}]")),
            Err(e) => log(&format!("could not shut down sub-task [{id}]: {e}")),
        }
    }
    let deadline = Instant::now() + wait;
    for id in &running {
        let code = loop {
            let code = match actions.task_status(id).await {
                Ok(s) => s["statusCode"].as_str().unwrap_or("").to_string(),
                Err(_) => String::new(),
            };
            if code == "SUCCESS" || code == "FAILED" || Instant::now() >= deadline {
                break code;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        match code.as_str() {
            "SUCCESS" => {
                if let Ok(r) = actions.task_reports(id).await {
                    let theirs = r.pointer("/pushedSegments/payload/segments").and_then(Value::as_array);
                    pushed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .files
                        .extend(theirs.into_iter().flatten().map(|s| s["loadSpec"].clone()));
                }
            }
            "FAILED" => {}
            _ => log(&format!(
                "sub-task [{id}] had not ended after {} s; it removes what it pushed itself",
                wait.as_secs()
            )),
        }
    }
}

/// Runs a `compact` task ([`raftlord_ingest::compact`]): locks its interval, reads the schema of
/// the segments visible there, and runs the `index_parallel` task that rewrites them, its
/// segments carrying `lastCompactionState`.
pub async fn run_compact(
    task: Value,
    dir: &Path,
    live: Arc<Mutex<Outcome>>,
    pushed: Arc<Mutex<Pushed>>,
) -> Result<(), String> {
    use raftlord_ingest::compact::{compaction_state, CompactSpec, Existing};
    let id = task.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    let compact = CompactSpec::from_task(&task).map_err(|e| format!("invalid spec: {e}"))?;
    let actions = TaskActions::from_env(task.clone())?;
    let deep = Arc::new(deep_storage()?);
    // The lock first: what the interval holds cannot change after it is read.
    actions.lock(&compact.interval).await?;
    if let Some(named) = &compact.segments {
        check_named_segments(&actions, &compact.datasource, &compact.interval, named).await?;
    }
    let used = used_segment_files(&actions, &deep, dir, &compact.datasource, &compact.interval).await?;
    let existing = tokio::task::spawn_blocking(move || {
        used.into_iter()
            .map(|(interval, path)| {
                raftlord_ingest::segment::read_metadata(&path).map(|metadata| Existing { interval, metadata })
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(|e| format!("the reader thread failed: {e}"))??;
    let index = compact.index_task(&id, &existing, None).map_err(|e| e.to_string())?;
    log(&format!(
        "compacting {} segment(s) of [{}] in {} as: {}",
        existing.len(),
        compact.datasource,
        compact.interval,
        index["spec"]["dataSchema"]
    ));
    let spec = IngestSpec::from_task(&index).map_err(|e| format!("the compaction's index spec: {e}"))?;
    let state = compaction_state(&index, &spec);
    let result = run_spec(&id, spec, Some(state), Role::Task, dir, &actions, &live, &pushed).await;
    if result.is_err() {
        remove_pushed(pushed).await;
    }
    result
}

/// A compaction given segment ids runs only on exactly the segments visible now in their
/// umbrella interval, as Druid's: anything else means they changed since the spec was written.
async fn check_named_segments(
    actions: &TaskActions,
    datasource: &str,
    interval: &Interval,
    named: &[raftlord_ingest::compact::SegmentName],
) -> Result<(), String> {
    let used = actions
        .submit(json!({"type": "retrieveUsedSegments", "dataSource": datasource,
            "intervals": [interval.to_string()], "visibility": "ONLY_VISIBLE"}))
        .await?;
    let mut visible: Vec<raftlord_ingest::compact::SegmentName> = used
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["loadSpec"]["type"] != "tombstone")
        .filter_map(|s| {
            let i = Interval::parse(s["interval"].as_str()?).ok()?;
            Some(raftlord_ingest::compact::SegmentName {
                start: i.start,
                end: i.end,
                version: s["version"].as_str()?.to_string(),
                partition: s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0) as u32,
            })
        })
        .collect();
    visible.sort();
    if visible == named {
        return Ok(());
    }
    let show = |names: &[raftlord_ingest::compact::SegmentName]| {
        names
            .iter()
            .map(|n| {
                let mut id = format!(
                    "{datasource}_{}_{}_{}",
                    crate::interval::iso(n.start),
                    crate::interval::iso(n.end),
                    n.version
                );
                if n.partition > 0 {
                    id.push_str(&format!("_{}", n.partition));
                }
                id
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "the segments in ioConfig.inputSpec.segments are not those visible now in {interval}: given [{}], visible [{}]",
        show(named),
        show(&visible)
    ))
}

/// The used segments visible now in `interval` of `datasource`: interval and local file of each
/// (downloaded into the task directory when deep storage is remote).
async fn used_segment_files(
    actions: &TaskActions,
    deep: &Arc<DeepStorage>,
    dir: &Path,
    datasource: &str,
    interval: &Interval,
) -> Result<Vec<(Interval, PathBuf)>, String> {
    let used = actions
        .submit(json!({"type": "retrieveUsedSegments", "dataSource": datasource,
            "intervals": [interval.to_string()], "visibility": "ONLY_VISIBLE"}))
        .await?;
    let mut files = Vec::new();
    for s in used.as_array().into_iter().flatten() {
        let spec = &s["loadSpec"];
        if spec["type"] == "tombstone" {
            // Holds no rows: it only hides older data.
            continue;
        }
        let segment_interval = s["interval"]
            .as_str()
            .and_then(|i| Interval::parse(i).ok())
            .ok_or_else(|| format!("segment {} has no readable interval", s["identifier"]))?;
        files.push((segment_interval, spec.clone()));
    }
    let (deep, into) = (deep.clone(), dir.join("segments-read"));
    tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(i, spec)| deep.fetch(&spec, &into).map(|p| (i, p)))
            .collect()
    })
    .await
    .map_err(|e| format!("the download thread failed: {e}"))?
}

/// Opens deep storage for the task and registers it for removing what the task pushes and
/// does not publish.
pub(super) fn open_deep_storage(pushed: &Mutex<Pushed>) -> Result<Arc<DeepStorage>, String> {
    let deep = Arc::new(deep_storage()?);
    pushed.lock().unwrap_or_else(|p| p.into_inner()).deep = Some(deep.clone());
    Ok(deep)
}

/// Locks what the spec names up front, resolves a `druid` source's segments (under those
/// locks), then ingests.
#[allow(clippy::too_many_arguments)]
async fn run_spec(
    id: &str,
    mut spec: IngestSpec,
    compaction_state: Option<Value>,
    role: Role<'_>,
    dir: &Path,
    actions: &TaskActions,
    live: &Arc<Mutex<Outcome>>,
    pushed: &Arc<Mutex<Pushed>>,
) -> Result<(), String> {
    let deep = open_deep_storage(pushed)?;
    let versions = lock_up_front(&spec, actions).await?;
    if let raftlord_ingest::source::InputSource::Druid {
        datasource, interval, ..
    } = &spec.source
    {
        // Reindexing reads the segments visible now in the interval, which the locks above
        // keep as they are.
        let files: Vec<PathBuf> = used_segment_files(actions, &deep, dir, datasource, interval)
            .await?
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        log(&format!(
            "reading {} segment(s) of [{datasource}] in {interval}",
            files.len()
        ));
        spec.source.with_segment_files(files);
    }
    ingest(
        id,
        &spec,
        versions,
        compaction_state,
        role,
        dir,
        &deep,
        actions,
        live,
        pushed,
    )
    .await
}

/// With `granularitySpec.intervals` (or a `druid` source's interval), locks the segment
/// intervals they cover before anything is read, as Druid's `isReady` does; returns each lock's
/// version.
pub(super) async fn lock_up_front(
    spec: &IngestSpec,
    actions: &TaskActions,
) -> Result<BTreeMap<Interval, String>, String> {
    let mut versions = BTreeMap::new();
    if let Some(cover) = spec.lock_intervals() {
        for i in cover {
            let v = actions.lock(&i).await?;
            versions.insert(i, v);
        }
        log(&format!("locked {} interval(s) before reading", versions.len()));
    }
    Ok(versions)
}

/// Removes the files a task pushed to deep storage and did not publish, and stops any more from
/// being pushed.
pub async fn remove_pushed(pushed: Arc<Mutex<Pushed>>) {
    let removal = tokio::task::spawn_blocking(move || {
        // Taken while a push is under way, it waits for that push and then removes its file.
        let mut g = pushed.lock().unwrap_or_else(|p| p.into_inner());
        g.closed = true;
        let files = std::mem::take(&mut g.files);
        let Some(deep) = g.deep.clone() else { return };
        for f in files {
            match deep.delete(&f) {
                Ok(true) => log(&format!("removed {f}, which was not published")),
                Ok(false) => {}
                Err(e) => log(&format!("could not remove {f}, which was not published: {e}")),
            }
        }
    });
    if let Err(e) = removal.await {
        log(&format!("removing unpublished files failed: {e}"));
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn ingest(
    id: &str,
    spec: &IngestSpec,
    mut versions: BTreeMap<Interval, String>,
    compaction_state: Option<Value>,
    role: Role<'_>,
    dir: &Path,
    deep: &Arc<DeepStorage>,
    actions: &TaskActions,
    live: &Arc<Mutex<Outcome>>,
    pushed: &Arc<Mutex<Pushed>>,
) -> Result<(), String> {
    set_state(live, "BUILD_SEGMENTS", dir, id);
    let read_spec = spec.clone();
    let live_read = live.clone();
    let dir_read = dir.to_path_buf();
    let id_read = id.to_string();
    let started = Instant::now();
    let ingested: Ingested = tokio::task::spawn_blocking(move || {
        let mut last = Instant::now();
        let mut progress = |p: &raftlord_ingest::Progress<'_>| {
            if last.elapsed() < PROGRESS_EVERY {
                return;
            }
            last = Instant::now();
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            log(&format!(
                "read {} rows ({:.0} rows/s, {} bytes done), {} unparseable, {} thrown away, {} rows in memory; reading [{}]",
                p.stats.processed,
                p.stats.processed as f64 / secs,
                p.stats.processed_bytes,
                p.stats.unparseable,
                p.stats.thrown_away,
                p.rows_in_memory,
                p.file
            ));
            let mut o = live_read.lock().unwrap_or_else(|e| e.into_inner());
            o.stats = p.stats.clone();
            write_report(&dir_read, &id_read, &o);
        };
        // Rows past maxRowsInMemory / maxBytesInMemory go to sorted runs in the task directory.
        let spill = dir_read.join("spill");
        read_input(&read_spec, Some(&spill), &mut progress, &mut |m| {
            println!("{} WARN {m}", iso(now_ms()))
        })
    })
    .await
    .map_err(|e| format!("the reader thread failed: {e}"))?
    .map_err(|e| e.to_string())?;
    {
        let mut o = live.lock().unwrap_or_else(|e| e.into_inner());
        o.stats = ingested.stats.clone();
        o.problems = ingested.problems.clone();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    log(&format!(
        "read {} rows in {secs:.1} s ({:.0} rows/s): {}{} after rollup in {} interval(s); {} unparseable, {} with errors, {} thrown away",
        ingested.stats.processed,
        ingested.stats.processed as f64 / secs,
        if ingested.rows_exact() { "" } else { "at most " },
        ingested.rows(),
        ingested.intervals().len(),
        ingested.stats.unparseable,
        ingested.stats.processed_with_error,
        ingested.stats.thrown_away
    ));

    if let Role::Cardinality { supervisor } = role {
        let sketches = tokio::task::spawn_blocking(move || ingested.group_key_sketches())
            .await
            .map_err(|e| format!("the sketching thread failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let payload: serde_json::Map<String, Value> = sketches
            .into_iter()
            .map(|(i, sketch)| (i.to_string(), json!(sketch)))
            .collect();
        log(&format!(
            "sketched the group keys of {} interval(s) for supervisor task [{supervisor}]",
            payload.len()
        ));
        let mut o = live.lock().unwrap_or_else(|e| e.into_inner());
        o.cardinalities = Some(Value::Object(payload));
        o.state = "COMPLETED";
        return Ok(());
    }

    // Versions and partition numbers.
    let mut plan: Vec<Planned> = Vec::new();
    let hashed_shard = |n: usize| {
        spec.hashed.as_ref().map(|h| {
            json!({"type": "hashed", "partitionNum": 0, "partitions": n, "bucketId": 0, "numBuckets": n,
                "partitionDimensions": h.partition_dimensions, "partitionFunction": "murmur3_32_abs"})
        })
    };
    for interval in ingested.intervals() {
        let n = ingested.partitions(&interval);
        if let Role::Merge { partitions, .. } = role {
            let m = partitions.get(&interval).ok_or_else(|| {
                format!("the partial segments hold rows in {interval}, which this merge task was not given")
            })?;
            let mut shard = hashed_shard(m.num_buckets as usize);
            if let Some(s) = shard.as_mut() {
                s["partitions"] = json!(m.num_core_partitions);
            }
            plan.push(Planned {
                interval,
                version: m.version.clone(),
                parts: m.buckets.clone(),
                num_buckets: Some(m.num_buckets),
                shard,
            });
            continue;
        }
        if let Role::Partial { num_shards, .. } = role {
            let n = match num_shards {
                None => n as u32,
                Some(m) => *m.get(&interval).ok_or_else(|| {
                    format!("rows in {interval}, where the cardinality phase found none; was the input changed?")
                })?,
            };
            // Partial segments live under the sub-task's own id until the merge phase.
            plan.push(Planned {
                interval,
                version: id.to_string(),
                parts: (0..n).map(|k| (k, k)).collect(),
                num_buckets: Some(n),
                shard: hashed_shard(n as usize),
            });
            continue;
        }
        // A sub-task allocates through the Overlord for its supervisor, appending or in the
        // version of the group's lock.
        let supervisor = role.supervisor().map(|s| (s, !spec.append_to_existing));
        if spec.append_to_existing || supervisor.is_some() {
            let mut nums = Vec::new();
            let mut version = None;
            let mut previous: Option<String> = None;
            let mut shard = None;
            for _ in 0..n {
                let a = actions
                    .allocate(spec, &interval, previous.as_deref(), supervisor)
                    .await?;
                if a.interval != interval {
                    return Err(format!(
                        "interval {interval} already holds segments of another granularity ({}); append with the \
                         datasource's own segmentGranularity",
                        a.interval
                    ));
                }
                if version.as_ref().is_some_and(|v| *v != a.version) {
                    return Err(format!("allocations for {interval} came back with two versions"));
                }
                version = Some(a.version.clone());
                nums.push(a.partition_num);
                previous = Some(a.id.clone());
                shard = Some(a.shard_spec.clone());
            }
            let version = version.ok_or("nothing was allocated")?;
            plan.push(Planned {
                interval,
                version,
                parts: nums.into_iter().enumerate().map(|(k, num)| (k as u32, num)).collect(),
                num_buckets: None,
                shard,
            });
        } else {
            let version = match versions.iter().find(|(i, _)| i.contains(&interval)) {
                Some((_, v)) => v.clone(),
                None => {
                    let v = actions.lock(&interval).await?;
                    versions.insert(interval, v.clone());
                    v
                }
            };
            // Hashed and range partitions say how rows were split, as Druid's shard specs.
            let mut shard = hashed_shard(n);
            if let Some(r) = &spec.range {
                shard = Some(json!({"type": if r.single_dim { "single" } else { "range" },
                    "dimensions": r.dimensions, "partitionNum": 0, "numCorePartitions": n,
                    "bounds": ingested.range_bounds(&interval)}));
            }
            plan.push(Planned {
                interval,
                version,
                parts: (0..n as u32).map(|k| (k, k)).collect(),
                num_buckets: None,
                shard,
            });
        }
    }

    // dropExisting: a tombstone for each empty bucket of the intervals that holds data now.
    let tombstones = if spec.drop_existing && matches!(role, Role::Task) {
        tombstones(spec, &ingested.intervals(), &mut versions, actions).await?
    } else {
        Vec::new()
    };

    // Write, push, describe.
    set_state(live, "BUILD_SEGMENTS", dir, id);
    let segments_dir = dir.join("segments");
    let partial = matches!(role, Role::Partial { .. });
    let deep = deep.clone();
    let datasource = spec.datasource.clone();
    let pushed_w = pushed.clone();
    let segments: Vec<Value> = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
        let mut ingested = ingested;
        let mut out = Vec::new();
        for Planned {
            interval,
            version,
            parts,
            num_buckets,
            shard,
        } in plan
        {
            let local = segments_dir.join(interval.to_string().replace('/', "_"));
            let files = match num_buckets {
                Some(n) => ingested.write_hashed_buckets(&interval, &version, n, &parts, &local),
                None => {
                    let nums: Vec<u32> = parts.iter().map(|(_, num)| *num).collect();
                    ingested.write_bucket(&interval, &version, &nums, &local)
                }
            }
            .map_err(|e| e.to_string())?;
            let total = files.len();
            for f in files {
                if partial && f.rows == 0 {
                    // An empty hash bucket: nothing for the merge phase.
                    std::fs::remove_file(&f.path).ok();
                    continue;
                }
                let load_spec = {
                    // Pushed under the lock, so a stop either waits for this file or sees it.
                    let mut g = pushed_w.lock().unwrap_or_else(|p| p.into_inner());
                    if g.closed {
                        return Err("the task was stopped".to_string());
                    }
                    let place = SegmentPlace {
                        datasource: &datasource,
                        interval: &f.interval,
                        version: &f.version,
                        partition: f.partition_num,
                    };
                    let load_spec = deep.push(&f.path, &place)?;
                    g.files.push(load_spec.clone());
                    load_spec
                };
                std::fs::remove_file(&f.path).ok();
                let mut shard_spec = match &shard {
                    Some(s) => shard_spec_for(s.clone(), &f),
                    None => json!({"type": "numbered", "partitionNum": f.partition_num, "partitions": total}),
                };
                if let Some((bucket, _)) = parts.iter().find(|(_, num)| *num == f.partition_num) {
                    if shard_spec.get("bucketId").is_some() {
                        shard_spec["bucketId"] = json!(bucket);
                    }
                }
                let mut segment = json!({
                    "dataSource": datasource,
                    "interval": interval.to_string(),
                    "version": version,
                    "loadSpec": load_spec,
                    "dimensions": f.dimensions.join(","),
                    "metrics": f.metrics.join(","),
                    "shardSpec": shard_spec,
                    "binaryVersion": raftlord_ingest::BINARY_VERSION,
                    "size": f.bytes,
                });
                if let Some(state) = &compaction_state {
                    segment["lastCompactionState"] = state.clone();
                }
                log(&format!(
                    "pushed segment {}_{}_{}_{}_{} ({} rows, {} bytes): {}",
                    datasource,
                    crate::interval::iso(interval.start),
                    crate::interval::iso(interval.end),
                    version,
                    f.partition_num,
                    f.rows,
                    f.bytes,
                    segment["loadSpec"]
                ));
                out.push(segment);
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("the writer thread failed: {e}"))??;

    if let Some(supervisor) = role.supervisor() {
        // Pushed: the supervisor publishes them, or removes them if it fails.
        let n = segments.len();
        pushed.lock().unwrap_or_else(|p| p.into_inner()).files.clear();
        log(&format!(
            "pushed {n} segment(s) for supervisor task [{supervisor}] to publish"
        ));
        let mut o = live.lock().unwrap_or_else(|e| e.into_inner());
        o.pushed_segments = segments;
        o.state = "COMPLETED";
        return Ok(());
    }
    set_state(live, "PUBLISHING", dir, id);
    let n = segments.len();
    if !tombstones.is_empty() {
        log(&format!(
            "dropExisting: {} tombstone(s) for intervals the input left empty",
            tombstones.len()
        ));
    }
    let mut segments = segments;
    segments.extend(tombstones);
    if !segments.is_empty() {
        actions.publish(segments).await?;
    }
    // Published: the files are the segments' now.
    pushed.lock().unwrap_or_else(|p| p.into_inner()).files.clear();
    log(&format!("published {n} segment(s)"));
    let mut o = live.lock().unwrap_or_else(|e| e.into_inner());
    o.segments_published = n as u64;
    o.state = "COMPLETED";
    Ok(())
}

/// One interval's segments to write: their version, `(partition index, partition number)` of
/// each, the hash bucket count when fixed by the caller, and the shard spec they share.
struct Planned {
    interval: Interval,
    version: String,
    parts: Vec<(u32, u32)>,
    num_buckets: Option<u32>,
    shard: Option<Value>,
}

/// Most tombstones one task writes: a bucket per hour over years of existing data would make
/// millions of records.
const MAX_TOMBSTONES: usize = 10_000;

/// Druid's tombstones for `dropExisting`: one for each `segmentGranularity` bucket of
/// `granularitySpec.intervals` that the input left empty (`filled` holds the buckets with rows)
/// and where used segments hold data now, under the task's lock of that bucket.
pub(super) async fn tombstones(
    spec: &IngestSpec,
    filled: &[Interval],
    versions: &mut BTreeMap<Interval, String>,
    actions: &TaskActions,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for given in spec.intervals.iter().flatten() {
        let used = actions
            .submit(json!({"type": "retrieveUsedSegments", "dataSource": spec.datasource,
                "intervals": [given.to_string()], "visibility": "ONLY_VISIBLE"}))
            .await?;
        let held: Vec<Interval> = used
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["loadSpec"]["type"] != "tombstone")
            .filter_map(|s| s["interval"].as_str().and_then(|i| Interval::parse(i).ok()))
            .collect();
        let mut t = given.start;
        while t < given.end {
            let bucket = spec
                .segment_granularity
                .bucket(t)
                .ok_or_else(|| format!("{t} has no {} bucket", spec.segment_granularity_json))?;
            t = bucket.end;
            if filled.contains(&bucket) || !held.iter().any(|h| h.overlaps(&bucket)) {
                continue;
            }
            if out.len() == MAX_TOMBSTONES {
                return Err(format!(
                    "dropExisting would write more than {MAX_TOMBSTONES} tombstones; use a coarser segmentGranularity or narrower intervals"
                ));
            }
            let version = match versions.iter().find(|(i, _)| i.contains(&bucket)) {
                Some((_, v)) => v.clone(),
                None => {
                    let v = actions.lock(&bucket).await?;
                    versions.insert(bucket, v.clone());
                    v
                }
            };
            out.push(json!({
                "dataSource": spec.datasource,
                "interval": bucket.to_string(),
                "version": version,
                "loadSpec": {"type": "tombstone"},
                "dimensions": "",
                "metrics": "",
                "shardSpec": {"type": "tombstone", "partitionNum": 0, "partitions": 1},
                "binaryVersion": raftlord_ingest::BINARY_VERSION,
                "size": 1,
            }));
        }
    }
    Ok(out)
}

/// An appended partition keeps the allocated shard spec, numbered as allocated; a hashed one is
/// its own bucket; a range one gets its range from the interval's boundaries (Druid's `single`
/// shard spec takes one value, `range` a list, null at the open ends).
fn shard_spec_for(mut shard: Value, f: &SegmentFile) -> Value {
    if let Some(bounds) = shard.as_object_mut().and_then(|o| o.remove("bounds")) {
        let k = f.partition_num as usize;
        let bound = |i: Option<usize>| -> Value {
            match i.and_then(|i| bounds.get(i)) {
                None => Value::Null,
                Some(tuple) if shard["type"] == "single" => tuple.get(0).cloned().unwrap_or(Value::Null),
                Some(tuple) => tuple.clone(),
            }
        };
        let (start, end) = (bound(k.checked_sub(1)), bound(Some(k)));
        if shard["type"] == "single" {
            shard["dimension"] = shard["dimensions"][0].clone();
            if let Some(o) = shard.as_object_mut() {
                o.remove("dimensions");
            }
        }
        shard["start"] = start;
        shard["end"] = end;
        shard["partitionNum"] = json!(f.partition_num);
        return shard;
    }
    if shard.get("partitionNum").is_some() {
        shard["partitionNum"] = json!(f.partition_num);
    }
    if shard.get("bucketId").is_some() {
        shard["bucketId"] = json!(f.partition_num);
    }
    shard
}

pub(super) fn set_state(live: &Arc<Mutex<Outcome>>, state: &'static str, dir: &Path, id: &str) {
    let mut o = live.lock().unwrap_or_else(|e| e.into_inner());
    o.state = state;
    write_report(dir, id, &o);
}

/// Rewrites `report.json`, which the worker serves live while the task runs.
pub fn write_report(dir: &Path, id: &str, o: &Outcome) {
    if let Err(e) = write_atomic(&dir.join("report.json"), report(id, o).to_string().as_bytes()) {
        eprintln!("peon: cannot write report.json: {e}");
    }
}
