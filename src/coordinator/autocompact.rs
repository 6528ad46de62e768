//! Auto-compaction (Druid's `CompactSegments` duty): which time chunks of each configured
//! datasource need a `compact` task, and how far compaction has come, as pure functions of the
//! replicated state.
//!
//! A datasource's visible segments (used, not overshadowed, not tombstones) are grouped into
//! time chunks: the buckets of the config's `granularitySpec.segmentGranularity`, or the
//! segments' own intervals when it names none. Chunks that end within `skipOffsetFromLatest`
//! of the datasource's latest data, or hold more than `inputSegmentSizeBytes`, are *skipped*. A
//! chunk is *compacted* when it holds one segment whose `lastCompactionState` matches the config
//! (segment granularity, `maxRowsPerSegment`, dimensions and metrics where the config names
//! them); every other chunk is *awaiting* compaction.
//!
//! Each run submits, newest chunk first, one `compact` task per awaiting chunk that no active
//! task holds or waits to lock (so a chunk being compacted, or being ingested, is passed over
//! rather than waited on), within the compaction slots: `compactionTaskSlotRatio` of the workers'
//! slots (at least one), at most `maxCompactionTaskSlots`, minus compaction tasks active. Every
//! run plans from the state afresh, so one long compaction takes one slot and nothing else
//! waits behind it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use super::compaction::DatasourceCompactionConfig;
use super::rules::Period;
use crate::interval::{iso, Interval};
use crate::segments::segment::ShardKind;
use crate::sm::State;

/// The prefix of the ids of compaction tasks the Coordinator submits (Druid's).
pub const TASK_PREFIX: &str = "coordinator-issued_compact_";

/// Druid's default `maxRowsPerSegment` of a dynamic partitions spec.
const DEFAULT_MAX_ROWS: u64 = 5_000_000;

/// One datasource's compaction progress (Druid's `AutoCompactionSnapshot`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionSnapshot {
    pub data_source: String,
    pub schedule_status: String,
    pub message: String,
    pub bytes_awaiting_compaction: u64,
    pub bytes_compacted: u64,
    pub bytes_skipped: u64,
    pub segment_count_awaiting_compaction: u64,
    pub segment_count_compacted: u64,
    pub segment_count_skipped: u64,
    pub interval_count_awaiting_compaction: u64,
    pub interval_count_compacted: u64,
    pub interval_count_skipped: u64,
}

/// One compaction task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactTask {
    pub datasource: String,
    pub interval: Interval,
    pub spec: Value,
}

struct Chunk {
    interval: Interval,
    segments: u64,
    bytes: u64,
    compacted: bool,
}

/// The expected `lastCompactionState` fields of a config, as `(JSON pointer, value)`.
fn expected(config: &DatasourceCompactionConfig) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    let max_rows = config
        .tuning_config
        .as_ref()
        .and_then(|t| t.pointer("/partitionsSpec/maxRowsPerSegment"))
        .and_then(Value::as_u64)
        .or(config.max_rows_per_segment)
        .unwrap_or(DEFAULT_MAX_ROWS);
    out.push(("/partitionsSpec/maxRowsPerSegment", json!(max_rows)));
    if let Some(g) = &config.granularity_spec {
        for (field, pointer) in [
            ("segmentGranularity", "/granularitySpec/segmentGranularity"),
            ("queryGranularity", "/granularitySpec/queryGranularity"),
            ("rollup", "/granularitySpec/rollup"),
        ] {
            if let Some(v) = g.get(field).filter(|v| !v.is_null()) {
                out.push((pointer, v.clone()));
            }
        }
    }
    if let Some(d) = config.dimensions_spec.as_ref().and_then(|d| d.get("dimensions")) {
        out.push(("/dimensionsSpec/dimensions", d.clone()));
    }
    if let Some(m) = config.metrics_spec.as_ref().filter(|m| !m.is_null()) {
        out.push(("/metricsSpec", m.clone()));
    }
    out
}

/// Whether two JSON values say the same (granularity names compare without case, dimensions
/// by name).
fn same(a: &Value, b: &Value) -> bool {
    let names = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|l| {
            l.iter()
                .map(|d| {
                    d.as_str()
                        .or_else(|| d["name"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
    };
    match (a, b) {
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        (Value::Array(_), Value::Array(_)) if names(a) == names(b) => true,
        _ => a == b,
    }
}

/// The time chunks of a datasource, newest first, and the end of its latest data.
fn chunks(state: &State, name: &str, config: &DatasourceCompactionConfig) -> Vec<Chunk> {
    let Some(ds) = state.segments.datasource(name) else {
        return Vec::new();
    };
    let granularity = config
        .granularity_spec
        .as_ref()
        .and_then(|g| g.get("segmentGranularity"))
        .filter(|v| !v.is_null())
        .and_then(|v| raftlord_time::granularity::Granularity::parse(v).ok());
    let want = expected(config);
    let overshadowed = ds.overshadowed();
    let mut by_chunk: BTreeMap<(i64, i64), Chunk> = BTreeMap::new();
    for (key, seg) in ds.used() {
        if overshadowed.contains(key) || seg.shard_spec.kind == ShardKind::Tombstone {
            continue;
        }
        let iv = match &granularity {
            Some(g) => match g.bucket(key.start) {
                // A segment wider than one bucket is its own chunk.
                Some(b) if b.end >= key.end => b,
                _ => key.interval(),
            },
            None => key.interval(),
        };
        let state_ok = seg
            .last_compaction_state
            .as_ref()
            .and_then(|raw| serde_json::from_str::<Value>(raw.0.get()).ok())
            .is_some_and(|s| want.iter().all(|(p, v)| s.pointer(p).is_some_and(|got| same(got, v))));
        let c = by_chunk.entry((iv.start, iv.end)).or_insert(Chunk {
            interval: iv,
            segments: 0,
            bytes: 0,
            compacted: true,
        });
        c.segments += 1;
        c.bytes += seg.size;
        c.compacted &= state_ok && key.start == iv.start && key.end == iv.end;
    }
    let mut out: Vec<Chunk> = by_chunk
        .into_values()
        .map(|mut c| {
            c.compacted &= c.segments == 1;
            c
        })
        .collect();
    out.reverse();
    out
}

/// Where compaction of one datasource stands, and its chunks awaiting compaction (newest first).
fn assess(state: &State, name: &str, config: &DatasourceCompactionConfig) -> (CompactionSnapshot, Vec<Interval>) {
    let all = chunks(state, name, config);
    let latest = all.iter().map(|c| c.interval.end).max();
    let skip_before = latest.and_then(|l| {
        Period::parse_zero_ok(&config.skip_offset_from_latest)
            .ok()
            .and_then(|p| p.before(l))
    });
    let mut snap = CompactionSnapshot {
        data_source: name.to_string(),
        schedule_status: "RUNNING".into(),
        ..Default::default()
    };
    let mut awaiting = Vec::new();
    for c in all {
        let skipped = skip_before.is_none_or(|cut| c.interval.end > cut) || c.bytes > config.input_segment_size_bytes;
        if c.compacted {
            snap.bytes_compacted += c.bytes;
            snap.segment_count_compacted += c.segments;
            snap.interval_count_compacted += 1;
        } else if skipped {
            snap.bytes_skipped += c.bytes;
            snap.segment_count_skipped += c.segments;
            snap.interval_count_skipped += 1;
        } else {
            snap.bytes_awaiting_compaction += c.bytes;
            snap.segment_count_awaiting_compaction += c.segments;
            snap.interval_count_awaiting_compaction += 1;
            awaiting.push(c.interval);
        }
    }
    (snap, awaiting)
}

/// Every configured datasource's compaction progress (or only `datasource`'s).
pub fn status(state: &State, datasource: Option<&str>) -> Vec<CompactionSnapshot> {
    state
        .coordinator
        .compaction
        .configs
        .iter()
        .filter(|(name, _)| datasource.is_none_or(|d| d == name.as_str()))
        .map(|(name, config)| assess(state, name, config).0)
        .collect()
}

/// The task slots compaction may use now, and the compaction tasks active.
fn free_slots(state: &State) -> (u64, u64) {
    let slots = &state.coordinator.compaction.slots;
    let capacity: u64 = state
        .workers
        .all()
        .filter(|w| w.usable())
        .map(|w| u64::from(w.worker.capacity))
        .sum();
    let limit = ((capacity as f64 * slots.compaction_task_slot_ratio).floor() as u64)
        .max(1)
        .min(u64::from(slots.max_compaction_task_slots));
    let active = state.tasks.active().filter(|t| t.spec.task_type == "compact").count() as u64;
    (limit.saturating_sub(active), active)
}

/// The compaction tasks one run submits at leader time `now_ms`.
pub fn plan_compactions(state: &State, now_ms: u64) -> Vec<CompactTask> {
    let (mut free, _) = free_slots(state);
    let mut out = Vec::new();
    for (name, config) in &state.coordinator.compaction.configs {
        if free == 0 {
            break;
        }
        let (_, awaiting) = assess(state, name, config);
        let busy = super::busy_intervals(state, name);
        for interval in awaiting {
            if free == 0 {
                break;
            }
            if busy.iter().any(|b| b.overlaps(&interval)) {
                continue;
            }
            out.push(CompactTask {
                datasource: name.clone(),
                interval,
                spec: task_spec(name, config, &interval, now_ms),
            });
            free -= 1;
        }
    }
    out
}

/// Druid's `compact` task for one chunk, from the datasource's config.
fn task_spec(name: &str, config: &DatasourceCompactionConfig, interval: &Interval, now_ms: u64) -> Value {
    let suffix = format!("_{}_{now_ms}", iso(interval.start).replace(':', ""));
    let mut tuning = config.tuning_config.clone().unwrap_or_else(|| json!({}));
    if tuning.get("partitionsSpec").is_none() {
        let max_rows = config.max_rows_per_segment.unwrap_or(DEFAULT_MAX_ROWS);
        tuning["partitionsSpec"] = json!({"type": "dynamic", "maxRowsPerSegment": max_rows});
    }
    tuning["type"] = json!("index_parallel");
    let mut context = config.task_context.clone().unwrap_or_else(|| json!({}));
    context["priority"] = json!(config.task_priority);
    let mut spec = json!({
        "type": "compact",
        "id": super::duties::task_id(TASK_PREFIX, name, &suffix),
        "dataSource": name,
        "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": interval.to_string()}},
        "tuningConfig": tuning,
        "context": context,
    });
    for (field, v) in [
        ("granularitySpec", &config.granularity_spec),
        ("dimensionsSpec", &config.dimensions_spec),
        ("metricsSpec", &config.metrics_spec),
        ("transformSpec", &config.transform_spec),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            spec[field] = v.clone();
        }
    }
    spec
}

#[cfg(test)]
mod tests;
