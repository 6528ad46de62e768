//! Segment metadata: Druid's `druid_segments` and `druid_dataSource` tables as replicated state.
//!
//! Each datasource holds its segments ordered by interval start, version and partition, each
//! used or unused with the leader time the flag last changed, plus its commit metadata for
//! exactly-once stream publishing. Overshadowing is computed from the used segments on demand
//! ([`timeline`]), so a publish is visible to every query at once.
//!
//! - [`segment`]: the `DataSegment` JSON, shard specs and segment ids;
//! - [`timeline`]: which segments are overshadowed;
//! - [`metadata`]: the commit-metadata compare-and-swap;
//! - this module: the table, its `apply_*` functions and queries.

pub use raftlord_time::granularity;
pub mod metadata;
pub mod segment;
pub mod timeline;

use std::collections::HashSet;
use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::interval::Interval;
pub use segment::{DataSegment, DataSegmentJson, SegmentKey, ShardSpec, StoredSegment};

/// Checks a datasource name: not empty, no `/`, no control characters, at most 255 bytes.
pub fn validate_datasource(ds: &str) -> Result<(), String> {
    if ds.is_empty() {
        return Err("invalid datasource name: it is empty".into());
    }
    if ds.contains('/') {
        return Err(format!("invalid datasource name [{ds}]: it contains '/'"));
    }
    if ds.chars().any(char::is_control) || ds.starts_with('.') || ds.len() > 255 {
        return Err(format!(
            "invalid datasource name [{ds}]: no control characters, no leading '.', at most 255 bytes"
        ));
    }
    Ok(())
}

/// One datasource's segments and commit metadata.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datasource {
    /// Stored as a list of `[key, segment]` pairs: JSON map keys must be strings.
    #[serde(with = "pairs")]
    segments: OrdMap<SegmentKey, Arc<StoredSegment>>,
    used: u64,
    /// The longest segment interval ever stored: bounds the range scan of an interval query.
    max_span_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<serde_json::Value>,
    /// Pending segments (allocated, not yet published), by segment id.
    #[serde(default, skip_serializing_if = "OrdMap::is_empty")]
    pending: OrdMap<String, PendingSegment>,
    /// Segments appended under an APPEND lock while a REPLACE lock covered them, by that
    /// REPLACE lock ([`upgrade_key`]): copied into the replace's version when it publishes
    /// (Druid's `druid_upgradeSegments`).
    #[serde(default, skip_serializing_if = "OrdMap::is_empty")]
    upgrades: OrdMap<String, Vec<SegmentKey>>,
}

/// Identifies a REPLACE lock across commands: its fencing token and interval.
pub fn upgrade_key(fencing_token: u64, interval: &Interval) -> String {
    format!("{fencing_token}:{}:{}", interval.start, interval.end)
}

/// A segment id handed out by `segmentAllocate` and not yet published (Druid's
/// `druid_pendingSegments` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingSegment {
    pub key: SegmentKey,
    /// Core partitions of the set the segment joins (0 for a new set).
    pub core_partitions: u32,
    pub sequence_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_segment_id: Option<String>,
    /// The task that allocated it; its completion deletes it.
    pub task_allocator_id: String,
    pub created_ms: u64,
}

impl PendingSegment {
    /// Druid's `SegmentIdWithShardSpec` JSON.
    pub fn id_with_shard_spec(&self, datasource: &str) -> serde_json::Value {
        serde_json::json!({
            "dataSource": datasource,
            "interval": self.key.interval(),
            "version": &*self.key.version,
            "shardSpec": {"type": "numbered", "partitionNum": self.key.partition, "partitions": self.core_partitions},
        })
    }
}

impl Datasource {
    pub fn used_count(&self) -> u64 {
        self.used
    }

    /// REPLACE locks with appended segments waiting to be upgraded into their version.
    pub fn upgrade_records(&self) -> usize {
        self.upgrades.len()
    }

    pub fn total_count(&self) -> usize {
        self.segments.len()
    }

    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.metadata.as_ref()
    }

    pub fn get(&self, key: &SegmentKey) -> Option<&StoredSegment> {
        self.segments.get(key).map(|s| &**s)
    }

    /// The stored key equal to `key`, and its segment: a copy of it shares the stored version
    /// text instead of holding its own.
    pub fn get_key_value(&self, key: &SegmentKey) -> Option<(&SegmentKey, &StoredSegment)> {
        self.segments.get_key_value(key).map(|(k, s)| (k, &**s))
    }

    /// Every segment in key order.
    pub fn all(&self) -> impl Iterator<Item = (&SegmentKey, &StoredSegment)> {
        self.segments.iter().map(|(k, s)| (k, &**s))
    }

    pub fn used(&self) -> impl Iterator<Item = (&SegmentKey, &StoredSegment)> {
        self.all().filter(|(_, s)| s.used)
    }

    /// Segments overlapping `iv` (used and unused), in key order.
    pub fn overlapping<'a>(&'a self, iv: &Interval) -> impl Iterator<Item = (&'a SegmentKey, &'a StoredSegment)> + 'a {
        let iv = *iv;
        let lo = SegmentKey {
            start: iv.start.saturating_sub(self.max_span_ms),
            end: i64::MIN,
            version: "".into(),
            partition: 0,
        };
        self.segments
            .range(lo..)
            .take_while(move |(k, _)| k.start < iv.end || (k.start == iv.end && iv.start == iv.end))
            .filter(move |(k, _)| k.interval().overlaps(&iv))
            .map(|(k, s)| (k, &**s))
    }

    /// Used segments overlapping `iv` that are not fully overshadowed. Only segments overlapping
    /// the span of those found can overshadow them, so only those are swept.
    pub fn visible_overlapping(&self, iv: &Interval) -> Vec<(&SegmentKey, &StoredSegment)> {
        let used: Vec<(&SegmentKey, &StoredSegment)> = self.overlapping(iv).filter(|(_, s)| s.used).collect();
        let (Some(start), Some(end)) = (
            used.iter().map(|(k, _)| k.start).min(),
            used.iter().map(|(k, _)| k.end).max(),
        ) else {
            return used;
        };
        let span = Interval { start, end };
        let hidden = timeline::overshadowed(
            self.overlapping(&span)
                .filter(|(_, s)| s.used)
                .map(|(k, s)| (k, &s.shard_spec)),
        );
        used.into_iter().filter(|(k, _)| !hidden.contains(*k)).collect()
    }

    /// Pending segments, by id.
    pub fn pending(&self) -> impl Iterator<Item = &PendingSegment> {
        self.pending.values()
    }

    /// Used segments overlapping any of `intervals`, each once, without the overshadowed ones
    /// unless asked for.
    pub fn used_in(&self, intervals: &[Interval], include_overshadowed: bool) -> Vec<(&SegmentKey, &StoredSegment)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for iv in intervals {
            let found = if include_overshadowed {
                self.overlapping(iv).filter(|(_, s)| s.used).collect()
            } else {
                self.visible_overlapping(iv)
            };
            out.extend(found.into_iter().filter(|(k, _)| seen.insert((*k).clone())));
        }
        out
    }

    /// Keys of the used segments that are fully overshadowed.
    pub fn overshadowed(&self) -> HashSet<SegmentKey> {
        timeline::overshadowed(self.used().map(|(k, s)| (k, &s.shard_spec)))
    }

    /// Newest version of the segments overlapping `iv` that reads as a time, in ms.
    pub fn newest_time_version(&self, iv: &Interval) -> Option<i64> {
        self.overlapping(iv)
            .filter_map(|(k, _)| crate::interval::parse_instant(&k.version).ok())
            .max()
    }

    fn set_used(&mut self, key: &SegmentKey, used: bool, time_ms: u64) -> bool {
        let Some(seg) = self.segments.get_mut(key) else {
            return false;
        };
        if seg.used == used {
            return false;
        }
        let s = Arc::make_mut(seg);
        s.used = used;
        s.used_updated_ms = time_ms;
        if used {
            self.used += 1;
        } else {
            self.used -= 1;
        }
        true
    }
}

/// Serde for a map with structured keys, as a sequence of pairs.
pub(crate) mod pairs {
    use imbl::OrdMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize + Ord + Clone, V: Serialize + Clone, S: Serializer>(
        m: &OrdMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<OrdMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord + Clone,
        V: Deserialize<'de> + Clone,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Which segments a mark-used or mark-unused request means (Druid's `SegmentsToUpdateFilter`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SegmentFilter {
    /// Every segment of the datasource.
    All,
    /// Segments lying inside the interval, optionally only of these versions.
    Interval {
        interval: Interval,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        versions: Option<Vec<String>>,
    },
    /// These segments.
    Keys { keys: Vec<SegmentKey> },
}

/// Every datasource's segments and metadata.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentTable {
    datasources: OrdMap<String, Datasource>,
}

impl SegmentTable {
    pub fn datasource(&self, ds: &str) -> Option<&Datasource> {
        self.datasources.get(ds)
    }

    /// Every datasource, by name.
    pub fn datasources(&self) -> impl Iterator<Item = (&String, &Datasource)> {
        self.datasources.iter()
    }

    pub fn total_count(&self) -> usize {
        self.datasources.values().map(|d| d.total_count()).sum()
    }

    /// Inserts segments as used (all of one datasource). Ids already stored are left as they
    /// are, as Druid does. Returns the inserted ones.
    pub fn apply_insert(&mut self, time_ms: u64, segments: Vec<DataSegment>) -> Vec<DataSegment> {
        let mut inserted = Vec::with_capacity(segments.len());
        for seg in segments {
            let d = self.datasources.entry(seg.datasource.clone()).or_default();
            if d.segments.contains_key(&seg.key) {
                continue;
            }
            d.max_span_ms = d.max_span_ms.max(seg.key.interval().duration_ms());
            d.used += 1;
            d.segments
                .insert(seg.key.clone(), Arc::new(seg.clone().into_stored(time_ms)));
            inserted.push(seg);
        }
        inserted
    }

    /// Marks the matching used segments unused. Returns the keys changed.
    pub fn apply_mark_unused(&mut self, time_ms: u64, ds: &str, filter: &SegmentFilter) -> Vec<SegmentKey> {
        let Some(d) = self.datasources.get_mut(ds) else {
            return vec![];
        };
        let keys: Vec<SegmentKey> = matching(d, filter)
            .filter(|(_, s)| s.used)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter().filter(|k| d.set_used(k, false, time_ms)).collect()
    }

    /// Marks the matching unused segments used, except those that used segments (or others
    /// being marked) would overshadow. Returns the keys changed.
    pub fn apply_mark_used(&mut self, time_ms: u64, ds: &str, filter: &SegmentFilter) -> Vec<SegmentKey> {
        let Some(d) = self.datasources.get_mut(ds) else {
            return vec![];
        };
        let candidates: HashSet<SegmentKey> = matching(d, filter)
            .filter(|(_, s)| !s.used)
            .map(|(k, _)| k.clone())
            .collect();
        if candidates.is_empty() {
            return vec![];
        }
        let hidden = timeline::overshadowed(
            d.all()
                .filter(|(k, s)| s.used || candidates.contains(*k))
                .map(|(k, s)| (k, &s.shard_spec)),
        );
        let mut keys: Vec<SegmentKey> = candidates.into_iter().filter(|k| !hidden.contains(k)).collect();
        keys.sort();
        keys.into_iter().filter(|k| d.set_used(k, true, time_ms)).collect()
    }

    /// Removes the records of `keys` (unused segments only; others are left); returns those
    /// removed.
    pub fn apply_delete(&mut self, ds: &str, keys: &[SegmentKey]) -> Vec<SegmentKey> {
        let Some(d) = self.datasources.get_mut(ds) else {
            return vec![];
        };
        let mut out = Vec::new();
        for k in keys {
            if d.segments.get(k).is_some_and(|s| !s.used) {
                d.segments.remove(k);
                out.push(k.clone());
            }
        }
        out
    }

    /// Sets (or with `None`, deletes) a datasource's commit metadata.
    pub fn apply_set_metadata(&mut self, ds: &str, metadata: Option<serde_json::Value>) -> bool {
        match metadata {
            Some(m) => {
                self.datasources.entry(ds.to_string()).or_default().metadata = Some(m);
                true
            }
            None => self
                .datasources
                .get_mut(ds)
                .is_some_and(|d| d.metadata.take().is_some()),
        }
    }

    /// Records that `appended` must be upgraded when the REPLACE lock `key` publishes.
    pub fn apply_record_upgrade(&mut self, ds: &str, key: String, appended: SegmentKey) {
        let d = self.datasources.entry(ds.to_string()).or_default();
        let list = d.upgrades.entry(key).or_default();
        if !list.contains(&appended) {
            list.push(appended);
        }
    }

    /// Takes the segments recorded for the REPLACE lock `key`.
    pub fn apply_take_upgrades(&mut self, ds: &str, key: &str) -> Vec<SegmentKey> {
        self.datasources
            .get_mut(ds)
            .and_then(|d| d.upgrades.remove(key))
            .unwrap_or_default()
    }

    /// Copies the used segment `from` into `version` as the next partition of its interval in
    /// that version (a non-core partition of a set with `core` core partitions). Returns the
    /// new key, or `None` when `from` is not a used segment.
    pub fn apply_upgrade(
        &mut self,
        time_ms: u64,
        ds: &str,
        from: &SegmentKey,
        version: &str,
        core: u32,
    ) -> Option<SegmentKey> {
        let d = self.datasources.get_mut(ds)?;
        let source = d.segments.get(from).filter(|s| s.used)?.clone();
        let interval = from.interval();
        let next = d
            .overlapping(&interval)
            .filter(|(k, _)| k.interval() == interval && *k.version == *version)
            .map(|(k, _)| k.partition.checked_add(1))
            .max()
            .unwrap_or(Some(0))?
            .max(core);
        let key = SegmentKey {
            start: from.start,
            end: from.end,
            version: version.into(),
            partition: next,
        };
        let mut copy = (*source).clone();
        copy.shard_spec = ShardSpec::numbered(next, core);
        copy.used_updated_ms = time_ms;
        copy.created_ms = time_ms;
        d.used += 1;
        d.segments.insert(key.clone(), Arc::new(copy));
        Some(key)
    }

    /// Stores a pending segment.
    pub fn apply_add_pending(&mut self, ds: &str, p: PendingSegment) {
        let id = p.key.id(ds);
        self.datasources
            .entry(ds.to_string())
            .or_default()
            .pending
            .insert(id, p);
    }

    /// Deletes the pending segments `task` allocated. Returns how many.
    pub fn apply_delete_pending_of_task(&mut self, task: &str) -> usize {
        let affected: Vec<String> = self
            .datasources
            .iter()
            .filter(|(_, d)| d.pending.values().any(|p| p.task_allocator_id == task))
            .map(|(name, _)| name.clone())
            .collect();
        affected
            .iter()
            .map(|ds| self.delete_pending_where(ds, |p| p.task_allocator_id == task))
            .sum()
    }

    /// Deletes `ds`'s pending segments created within `created` (all when `None`). Returns
    /// how many.
    pub fn apply_delete_pending(&mut self, ds: &str, created: Option<Interval>) -> usize {
        self.delete_pending_where(ds, |p| {
            created.is_none_or(|iv| iv.contains_instant(p.created_ms as i64))
        })
    }

    fn delete_pending_where(&mut self, ds: &str, doomed: impl Fn(&PendingSegment) -> bool) -> usize {
        let Some(d) = self.datasources.get_mut(ds) else {
            return 0;
        };
        let before = d.pending.len();
        d.pending = d.pending.clone().into_iter().filter(|(_, p)| !doomed(p)).collect();
        before - d.pending.len()
    }

    /// Deletes pending segments whose allocating task is not active (`active`), and
    /// datasources with no segment, no pending segment and no active task (`busy`), their
    /// commit metadata with them. Returns how many pending segments, and how many datasources
    /// that had commit metadata, went.
    pub fn apply_clean(&mut self, active: impl Fn(&str) -> bool, busy: impl Fn(&str) -> bool) -> (usize, usize) {
        let names: Vec<String> = self.datasources.keys().cloned().collect();
        let mut pending = 0;
        let mut metadata = 0;
        for name in names {
            pending += self.delete_pending_where(&name, |p| !active(&p.task_allocator_id));
            let empty = self
                .datasources
                .get(&name)
                .is_some_and(|d| d.segments.is_empty() && d.pending.is_empty() && d.upgrades.is_empty());
            if empty && !busy(&name) {
                if let Some(d) = self.datasources.remove(&name) {
                    metadata += usize::from(d.metadata.is_some());
                }
            }
        }
        (pending, metadata)
    }

    /// Resolves a segment id of `ds` to the stored key it names.
    pub fn find_id(&self, ds: &str, id: &str) -> Option<(SegmentKey, &StoredSegment)> {
        let d = self.datasources.get(ds)?;
        SegmentKey::parse_id(ds, id)
            .into_iter()
            .find_map(|k| d.get(&k).map(|s| (k.clone(), s)))
    }
}

fn matching<'a>(
    d: &'a Datasource,
    filter: &'a SegmentFilter,
) -> Box<dyn Iterator<Item = (&'a SegmentKey, &'a StoredSegment)> + 'a> {
    match filter {
        SegmentFilter::All => Box::new(d.all()),
        SegmentFilter::Interval { interval, versions } => Box::new(
            d.overlapping(interval)
                .filter(move |(k, _)| interval.contains(&k.interval()))
                .filter(move |(k, _)| versions.as_ref().is_none_or(|v| v.iter().any(|v| **v == *k.version))),
        ),
        SegmentFilter::Keys { keys } => Box::new(
            keys.iter()
                .filter_map(|k| d.segments.get_key_value(k))
                .map(|(k, s)| (k, &**s)),
        ),
    }
}

#[cfg(test)]
mod tests;
