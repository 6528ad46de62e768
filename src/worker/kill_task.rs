//! The peon's `kill` task (Druid's `KillUnusedSegmentsTask`): deletes unused segments of an
//! interval from the metadata and from deep storage.
//!
//! Spec: `dataSource`, `interval`, optionally `versions`, `batchSize` (default 100) and `limit`.
//! The task locks the interval (EXCLUSIVE), then per batch: lists unused segments
//! (`retrieveUnusedSegments`), keeps back any whose file a used segment still names, deletes the
//! records (`segmentNuke`, one command per batch so other writes interleave), and only then the
//! files, so that a crash leaves at worst a file no segment names, never a segment without its
//! file. A file is only ever deleted inside the deep storage directory.
//!
//! When the whole interval is killed (no `versions`, no `limit`), segment directories of
//! intervals inside it that no segment names any more are removed as well: files left by a peon
//! killed between pushing and publishing. The interval's lock keeps any other task from pushing
//! there meanwhile.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::index_task::DEEP_STORAGE_ENV;
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
    let deep = std::env::var_os(DEEP_STORAGE_ENV)
        .map(PathBuf::from)
        .ok_or("the worker gave this peon no deep storage directory")?;
    let deep = deep.canonicalize().unwrap_or(deep);
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
            .map(|a| a.iter().filter_map(load_path).collect())
            .unwrap_or_default();
        let (kill, keep): (Vec<Value>, Vec<Value>) = batch
            .into_iter()
            .partition(|s| load_path(s).is_none_or(|p| !used_files.contains(&p)));
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
        for s in &kill {
            if let Some(p) = load_path(s) {
                match delete_under(&deep, Path::new(&p)) {
                    Ok(true) => report.files_deleted += 1,
                    Ok(false) => {}
                    Err(e) => log(&format!("could not delete [{p}]: {e}")),
                }
            }
        }
        log(&format!("batch {}: killed {} segment(s)", report.batches, kill.len()));
    }
    if spec.versions.is_none() && spec.limit.is_none() {
        let referenced = referenced_files(&actions, &spec).await?;
        report.orphans_deleted = remove_orphans(&deep, &spec.data_source, &spec.interval, &referenced);
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

fn load_path(s: &Value) -> Option<String> {
    let spec = s.get("loadSpec")?;
    (spec.get("type")?.as_str()? == "local")
        .then(|| spec.get("path")?.as_str().map(str::to_string))
        .flatten()
}

/// Every file a stored segment (used or unused) of the interval names.
async fn referenced_files(actions: &TaskActions, spec: &KillSpec) -> Result<HashSet<String>, String> {
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
        if let Some(p) = load_path(s) {
            // Compared by real path: deep storage may be named through a symlink.
            if let Ok(real) = Path::new(&p).canonicalize() {
                out.insert(real.display().to_string());
            }
            out.insert(p);
        }
    }
    Ok(out)
}

/// Deletes `file` if it lies inside `deep` (after resolving it), then its now-empty parent
/// directories up to `deep`. `Ok(false)` when there was no such file.
fn delete_under(deep: &Path, file: &Path) -> std::io::Result<bool> {
    let Ok(real) = file.canonicalize() else {
        return Ok(false);
    };
    if !real.starts_with(deep) || real == deep {
        return Err(std::io::Error::other(format!(
            "[{}] is outside deep storage [{}]; not deleted",
            file.display(),
            deep.display()
        )));
    }
    std::fs::remove_file(&real)?;
    let mut dir = real.parent();
    while let Some(d) = dir {
        if d == deep || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(true)
}

/// Removes files under `deep/datasource/<start>_<end>/...` for segment intervals inside
/// `interval` that no stored segment names. Returns how many.
fn remove_orphans(deep: &Path, datasource: &str, interval: &Interval, referenced: &HashSet<String>) -> u64 {
    let ds_dir = deep.join(datasource);
    let Ok(entries) = std::fs::read_dir(&ds_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((start, end)) = name.split_once('_') else {
            continue;
        };
        let Ok(iv) = Interval::parse(&format!("{start}/{end}")) else {
            continue;
        };
        if !interval.contains(&iv) {
            continue;
        }
        for f in files_under(&e.path()) {
            let shown = f.display().to_string();
            if referenced.contains(&shown) {
                continue;
            }
            if let Ok(true) = delete_under(deep, &f) {
                log(&format!("removed [{shown}], which no segment names"));
                removed += 1;
            }
        }
    }
    removed
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
