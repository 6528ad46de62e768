//! The peon's `kill` task (Druid's `KillUnusedSegmentsTask`): deletes unused segments of an
//! interval from the metadata and from deep storage.
//!
//! Spec: `dataSource`, `interval`, optionally `versions`, `batchSize` (default 100), `limit` and
//! `maxUsedStatusLastUpdatedTime` (only segments marked unused by then).
//! The task locks the interval (EXCLUSIVE), then per batch: lists unused segments
//! (`retrieveUnusedSegments`), keeps back any whose file a used segment still names, deletes the
//! records (`segmentNuke`, one command per batch so other writes interleave), and only then the
//! files, so that a crash leaves at worst a file no segment names, never a segment without its
//! file. A file is only ever deleted inside deep storage ([`super::deep_storage`]).
//!
//! When the whole interval is killed (no `versions`, `limit` or time bound), files of segment intervals
//! inside it that no segment names any more are removed as well: files left by a peon
//! killed between pushing and publishing. The interval's lock keeps any other task from pushing
//! there meanwhile.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use super::deep_storage::DeepStorage;
use super::task_actions::TaskActions;
use crate::clock::{iso, now_ms};
use crate::interval::Interval;

/// Druid's default `batchSize` for kill tasks.
const DEFAULT_BATCH_SIZE: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KillSpec {
    data_source: String,
    interval: Interval,
    #[serde(default)]
    versions: Option<Vec<String>>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
    /// Only segments marked unused at or before this instant (Druid's; auto-kill's buffer).
    #[serde(default)]
    max_used_status_last_updated_time: Option<String>,
}

/// What the task did: Druid's `killUnusedSegments` report.
#[derive(Default)]
pub struct KillReport {
    pub killed: u64,
    pub batches: u64,
    pub files_deleted: u64,
    pub kept_back: u64,
    pub orphans_deleted: u64,
}

impl KillReport {
    pub fn to_json(&self) -> Value {
        json!({"killUnusedSegments": {"type": "killUnusedSegments", "payload": {
            "numSegmentsKilled": self.killed,
            "numBatchesProcessed": self.batches,
            "numSegmentsMarkedAsUnused": 0,
            "numFilesDeleted": self.files_deleted,
            "numSegmentsKeptForUsedFiles": self.kept_back,
            "numOrphanFilesDeleted": self.orphans_deleted,
        }}})
    }
}

fn log(msg: &str) {
    println!("{} INFO {msg}", iso(now_ms()));
}

/// Runs the kill task; `report` is filled in as it goes.
pub async fn run(task: Value, report: &mut KillReport) -> Result<(), String> {
    let spec: KillSpec = serde_json::from_value(task.clone()).map_err(|e| format!("invalid kill spec: {e}"))?;
    let deep = Arc::new(super::index_task::deep_storage()?);
    let actions = TaskActions::from_env(task)?;
    let batch_size = spec.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).clamp(1, 10_000);
    actions.lock(&spec.interval).await?;
    log(&format!("locked {}", spec.interval));
    let mut remaining = spec.limit.unwrap_or(usize::MAX);
    // Unused segments kept back (a used one names their file) are not listed again.
    let mut skip: HashSet<String> = HashSet::new();
    while remaining > 0 {
        let ask = batch_size.min(remaining).saturating_add(skip.len());
        let mut action = json!({"type": "retrieveUnusedSegments", "dataSource": spec.data_source,
            "interval": spec.interval.to_string(), "limit": ask});
        if let Some(v) = &spec.versions {
            action["versions"] = json!(v);
        }
        if let Some(t) = &spec.max_used_status_last_updated_time {
            action["maxUsedStatusLastUpdatedTime"] = json!(t);
        }
        let unused = actions.submit(action).await?;
        let batch: Vec<Value> = unused
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !skip.contains(&segment_id(s)))
            .take(batch_size.min(remaining))
            .collect();
        if batch.is_empty() {
            break;
        }
        // Files a used segment still names stay, with their records.
        let used = actions
            .submit(json!({"type": "retrieveUsedSegments", "dataSource": spec.data_source,
                "intervals": [spec.interval.to_string()], "visibility": "INCLUDING_OVERSHADOWED"}))
            .await?;
        let used_files: HashSet<String> = used
            .as_array()
            .map(|a| a.iter().filter_map(|s| deep.locate(&s["loadSpec"])).collect())
            .unwrap_or_default();
        let (kill, keep): (Vec<Value>, Vec<Value>) = batch
            .into_iter()
            .partition(|s| deep.locate(&s["loadSpec"]).is_none_or(|p| !used_files.contains(&p)));
        for s in &keep {
            log(&format!(
                "keeping unused segment [{}]: a used segment names its file",
                segment_id(s)
            ));
            skip.insert(segment_id(s));
            report.kept_back += 1;
        }
        if kill.is_empty() {
            continue;
        }
        actions.submit(json!({"type": "segmentNuke", "segments": kill})).await?;
        report.killed += kill.len() as u64;
        report.batches += 1;
        remaining = remaining.saturating_sub(kill.len());
        let (d, specs) = (
            deep.clone(),
            kill.iter().map(|s| s["loadSpec"].clone()).collect::<Vec<_>>(),
        );
        report.files_deleted += tokio::task::spawn_blocking(move || {
            let mut deleted = 0;
            for spec in specs {
                match d.delete(&spec) {
                    Ok(true) => deleted += 1,
                    Ok(false) => {}
                    Err(e) => log(&format!("could not delete the file of {spec}: {e}")),
                }
            }
            deleted
        })
        .await
        .map_err(|e| format!("the delete thread failed: {e}"))?;
        log(&format!("batch {}: killed {} segment(s)", report.batches, kill.len()));
    }
    if spec.versions.is_none() && spec.limit.is_none() && spec.max_used_status_last_updated_time.is_none() {
        let referenced = referenced_files(&actions, &deep, &spec).await?;
        let (d, ds, interval) = (deep.clone(), spec.data_source.clone(), spec.interval);
        let removed = tokio::task::spawn_blocking(move || d.remove_orphans(&ds, &interval, &referenced))
            .await
            .map_err(|e| format!("the delete thread failed: {e}"))??;
        for r in &removed {
            log(&format!("removed [{r}], which no segment names"));
        }
        report.orphans_deleted = removed.len() as u64;
    }
    log(&format!(
        "killed {} segment(s) in {} batch(es), deleted {} file(s) and {} orphan file(s)",
        report.killed, report.batches, report.files_deleted, report.orphans_deleted
    ));
    Ok(())
}

fn segment_id(s: &Value) -> String {
    format!(
        "{}_{}_{}_{}",
        s["interval"].as_str().unwrap_or(""),
        s["version"].as_str().unwrap_or(""),
        s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0),
        s["dataSource"].as_str().unwrap_or("")
    )
}

/// Every file a stored segment (used or unused) of the interval names.
async fn referenced_files(
    actions: &TaskActions,
    deep: &DeepStorage,
    spec: &KillSpec,
) -> Result<HashSet<String>, String> {
    let mut out = HashSet::new();
    let used = actions
        .submit(json!({"type": "retrieveUsedSegments", "dataSource": spec.data_source,
            "intervals": [spec.interval.to_string()], "visibility": "INCLUDING_OVERSHADOWED"}))
        .await?;
    let unused = actions
        .submit(json!({"type": "retrieveUnusedSegments", "dataSource": spec.data_source,
            "interval": spec.interval.to_string()}))
        .await?;
    for s in used.as_array().into_iter().chain(unused.as_array()).flatten() {
        if let Some(p) = deep.locate(&s["loadSpec"]) {
            out.insert(p);
        }
    }
    Ok(out)
}
