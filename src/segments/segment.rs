//! Druid's `DataSegment` JSON, its shard spec and its id.
//!
//! A segment is read from Druid's JSON (dimensions and metrics as a list or a comma-joined
//! string, `shardSpec` defaulting to `numbered` 0 of 1) and written back exactly as Druid
//! writes it. The stored form keeps the opaque parts (`loadSpec`, `shardSpec`,
//! `lastCompactionState`) as raw JSON text, which is smaller than a parsed tree and returns the
//! bytes a client sent.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::interval::{iso, Interval};

/// JSON text kept as given (valid JSON, compared by its text).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, o: &Self) -> bool {
        self.0.get() == o.0.get()
    }
}

impl Eq for RawJson {}

impl RawJson {
    fn new(text: String) -> RawJson {
        RawJson(RawValue::from_string(text).expect("valid JSON"))
    }
}

impl std::ops::Deref for RawJson {
    type Target = RawValue;
    fn deref(&self) -> &RawValue {
        &self.0
    }
}

/// The shard spec kinds Druid ships (`processing/.../timeline/partition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardKind {
    Numbered,
    Hashed,
    Linear,
    None,
    Single,
    Range,
    Tombstone,
    NumberedOverwrite,
}

impl ShardKind {
    fn parse(s: &str) -> Option<ShardKind> {
        Some(match s {
            "numbered" => ShardKind::Numbered,
            "hashed" => ShardKind::Hashed,
            "linear" => ShardKind::Linear,
            "none" => ShardKind::None,
            "single" => ShardKind::Single,
            "range" => ShardKind::Range,
            "tombstone" => ShardKind::Tombstone,
            "numbered_overwrite" => ShardKind::NumberedOverwrite,
            _ => return None,
        })
    }
}

/// A shard spec: its JSON as given plus what the timeline needs from it. Stored as the JSON
/// alone; the rest is read from it again when a snapshot is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawJson", try_from = "RawJson")]
pub struct ShardSpec {
    pub raw: RawJson,
    pub kind: ShardKind,
    pub partition_num: u32,
    /// How many core partitions make the set complete (`None`: every chunk stands alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_partitions: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShardFields {
    #[serde(rename = "type")]
    kind: String,
    partition_num: Option<u32>,
    partition_id: Option<u32>,
    partitions: Option<u32>,
    num_core_partitions: Option<u32>,
}

impl From<ShardSpec> for RawJson {
    fn from(s: ShardSpec) -> RawJson {
        s.raw
    }
}

impl TryFrom<RawJson> for ShardSpec {
    type Error = String;
    fn try_from(raw: RawJson) -> Result<ShardSpec, String> {
        ShardSpec::parse(raw.0)
    }
}

impl ShardSpec {
    /// Druid's default, `{"type":"numbered","partitionNum":0,"partitions":1}`.
    pub fn default_numbered() -> ShardSpec {
        ShardSpec::numbered(0, 1)
    }

    pub fn numbered(partition_num: u32, partitions: u32) -> ShardSpec {
        let raw = format!(r#"{{"type":"numbered","partitionNum":{partition_num},"partitions":{partitions}}}"#);
        ShardSpec {
            raw: RawJson::new(raw),
            kind: ShardKind::Numbered,
            partition_num,
            core_partitions: Some(partitions),
        }
    }

    pub fn parse(raw: Box<RawValue>) -> Result<ShardSpec, String> {
        let f: ShardFields = serde_json::from_str(raw.get()).map_err(|e| format!("invalid shardSpec: {e}"))?;
        let kind = ShardKind::parse(&f.kind).ok_or_else(|| {
            format!(
                "unknown shardSpec type [{}]; known: numbered, hashed, linear, none, single, range, tombstone, numbered_overwrite",
                f.kind
            )
        })?;
        let partition_num = f.partition_num.or(f.partition_id).unwrap_or(0);
        let core_partitions = match kind {
            ShardKind::Numbered => Some(f.partitions.unwrap_or(0)),
            ShardKind::Hashed => f.num_core_partitions.or(f.partitions),
            ShardKind::Single | ShardKind::Range => f.num_core_partitions,
            ShardKind::Tombstone => Some(1),
            ShardKind::Linear | ShardKind::None | ShardKind::NumberedOverwrite => None,
        };
        Ok(ShardSpec {
            raw: RawJson(raw),
            kind,
            partition_num,
            core_partitions,
        })
    }
}

/// What identifies a segment within its datasource: interval, version, partition. Ordered by
/// interval start first, so interval queries are range scans. Stored as
/// `[start, end, version, partition]`: there is one per segment in every snapshot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "(i64, i64, Arc<str>, u32)", from = "(i64, i64, Arc<str>, u32)")]
pub struct SegmentKey {
    pub start: i64,
    pub end: i64,
    pub version: Arc<str>,
    pub partition: u32,
}

impl From<SegmentKey> for (i64, i64, Arc<str>, u32) {
    fn from(k: SegmentKey) -> Self {
        (k.start, k.end, k.version, k.partition)
    }
}

impl From<(i64, i64, Arc<str>, u32)> for SegmentKey {
    fn from((start, end, version, partition): (i64, i64, Arc<str>, u32)) -> Self {
        SegmentKey {
            start,
            end,
            version,
            partition,
        }
    }
}

impl SegmentKey {
    pub fn interval(&self) -> Interval {
        Interval {
            start: self.start,
            end: self.end,
        }
    }

    /// Druid's segment id: `ds_start_end_version[_partition]`, partition omitted when 0.
    pub fn id(&self, datasource: &str) -> String {
        let mut id = format!("{datasource}_{}_{}_{}", iso(self.start), iso(self.end), self.version);
        if self.partition != 0 {
            id.push('_');
            id.push_str(&self.partition.to_string());
        }
        id
    }

    /// The keys a segment id may stand for, given its datasource (a version may end in
    /// `_<digits>`, so an id with a numeric tail has two readings).
    pub fn parse_id(datasource: &str, id: &str) -> Vec<SegmentKey> {
        let Some(rest) = id.strip_prefix(datasource).and_then(|r| r.strip_prefix('_')) else {
            return vec![];
        };
        let mut parts = rest.splitn(3, '_');
        let (Some(s), Some(e), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
            return vec![];
        };
        let (Ok(start), Ok(end)) = (crate::interval::parse_instant(s), crate::interval::parse_instant(e)) else {
            return vec![];
        };
        if tail.is_empty() {
            return vec![];
        }
        let key = |version: &str, partition| SegmentKey {
            start,
            end,
            version: version.into(),
            partition,
        };
        let mut out = vec![key(tail, 0)];
        if let Some((v, p)) = tail.rsplit_once('_') {
            if let Ok(p) = p.parse::<u32>() {
                if !v.is_empty() && p != 0 {
                    out.push(key(v, p));
                }
            }
        }
        out
    }
}

/// A segment as stored, without what its key and datasource already say. The stored field
/// names are short: there is one set per segment in every snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSegment {
    #[serde(rename = "l")]
    pub load_spec: RawJson,
    #[serde(rename = "d")]
    pub dimensions: Box<str>,
    #[serde(rename = "m")]
    pub metrics: Box<str>,
    #[serde(rename = "s")]
    pub shard_spec: ShardSpec,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub last_compaction_state: Option<RawJson>,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub binary_version: Option<i32>,
    #[serde(rename = "z")]
    pub size: u64,
    #[serde(rename = "u")]
    pub used: bool,
    /// Leader time the used flag last changed.
    #[serde(rename = "ut")]
    pub used_updated_ms: u64,
    #[serde(rename = "ct")]
    pub created_ms: u64,
}

/// Druid's `DataSegment` as read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSegment {
    pub datasource: String,
    pub key: SegmentKey,
    pub load_spec: RawJson,
    pub dimensions: Box<str>,
    pub metrics: Box<str>,
    pub shard_spec: ShardSpec,
    pub last_compaction_state: Option<RawJson>,
    pub binary_version: Option<i32>,
    pub size: u64,
}

fn list_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum L {
        S(String),
        L(Vec<String>),
    }
    Ok(match Option::<L>::deserialize(d)? {
        None => None,
        Some(L::S(s)) => Some(s),
        Some(L::L(l)) => Some(l.join(",")),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataSegmentIn {
    data_source: String,
    interval: Interval,
    version: String,
    #[serde(default)]
    load_spec: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "list_or_string")]
    dimensions: Option<String>,
    #[serde(default, deserialize_with = "list_or_string")]
    metrics: Option<String>,
    #[serde(default)]
    shard_spec: Option<Box<RawValue>>,
    #[serde(default)]
    last_compaction_state: Option<Box<RawValue>>,
    #[serde(default)]
    binary_version: Option<i32>,
    #[serde(default)]
    size: i64,
}

impl DataSegment {
    /// Reads Druid's `DataSegment` JSON, checking what Druid checks.
    pub fn parse(json: &str) -> Result<DataSegment, String> {
        let s: DataSegmentIn = serde_json::from_str(json).map_err(|e| format!("invalid segment: {e}"))?;
        DataSegment::from_input(s)
    }

    /// Reads a JSON array of segments.
    pub fn parse_list(raw: &RawValue) -> Result<Vec<DataSegment>, String> {
        let list: Vec<Box<RawValue>> =
            serde_json::from_str(raw.get()).map_err(|e| format!("'segments' must be a list of segments: {e}"))?;
        list.iter().map(|r| DataSegment::parse(r.get())).collect()
    }

    fn from_input(s: DataSegmentIn) -> Result<DataSegment, String> {
        crate::segments::validate_datasource(&s.data_source)?;
        if s.version.is_empty() {
            return Err("invalid segment: 'version' is empty".into());
        }
        if s.size < 0 {
            return Err(format!("invalid segment: 'size' is negative ({})", s.size));
        }
        let shard_spec = match s.shard_spec {
            Some(raw) if raw.get() != "null" => ShardSpec::parse(raw)?,
            _ => ShardSpec::default_numbered(),
        };
        let load_spec = match s.load_spec {
            Some(raw) if raw.get().trim_start().starts_with('{') => RawJson(raw),
            Some(raw) if raw.get() != "null" => return Err("invalid segment: 'loadSpec' must be an object".into()),
            _ => RawJson::new("{}".into()),
        };
        Ok(DataSegment {
            key: SegmentKey {
                start: s.interval.start,
                end: s.interval.end,
                version: s.version.into(),
                partition: shard_spec.partition_num,
            },
            datasource: s.data_source,
            load_spec,
            dimensions: s.dimensions.unwrap_or_default().into(),
            metrics: s.metrics.unwrap_or_default().into(),
            shard_spec,
            last_compaction_state: s.last_compaction_state.filter(|r| r.get() != "null").map(RawJson),
            binary_version: s.binary_version,
            size: s.size as u64,
        })
    }

    pub fn id(&self) -> String {
        self.key.id(&self.datasource)
    }

    pub fn interval(&self) -> Interval {
        self.key.interval()
    }

    /// The stored form, used since `time_ms`.
    pub fn into_stored(self, time_ms: u64) -> StoredSegment {
        StoredSegment {
            load_spec: self.load_spec,
            dimensions: self.dimensions,
            metrics: self.metrics,
            shard_spec: self.shard_spec,
            last_compaction_state: self.last_compaction_state,
            binary_version: self.binary_version,
            size: self.size,
            used: true,
            used_updated_ms: time_ms,
            created_ms: time_ms,
        }
    }
}

/// Druid's `DataSegment` JSON, written from the stored form.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataSegmentJson<'a> {
    pub data_source: &'a str,
    pub interval: Interval,
    pub version: &'a str,
    pub load_spec: &'a RawValue,
    pub dimensions: &'a str,
    pub metrics: &'a str,
    pub shard_spec: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_compaction_state: Option<&'a RawValue>,
    pub binary_version: Option<i32>,
    pub size: u64,
    pub identifier: String,
}

impl<'a> DataSegmentJson<'a> {
    pub fn new(datasource: &'a str, key: &'a SegmentKey, s: &'a StoredSegment) -> Self {
        DataSegmentJson {
            data_source: datasource,
            interval: key.interval(),
            version: &key.version,
            load_spec: &s.load_spec,
            dimensions: &s.dimensions,
            metrics: &s.metrics,
            shard_spec: &s.shard_spec.raw,
            last_compaction_state: s.last_compaction_state.as_deref(),
            binary_version: s.binary_version,
            size: s.size,
            identifier: key.id(datasource),
        }
    }

    /// The JSON of a client-given segment, as it will be stored.
    pub fn of(seg: &'a DataSegment) -> Self {
        DataSegmentJson {
            data_source: &seg.datasource,
            interval: seg.key.interval(),
            version: &seg.key.version,
            load_spec: &seg.load_spec,
            dimensions: &seg.dimensions,
            metrics: &seg.metrics,
            shard_spec: &seg.shard_spec.raw,
            last_compaction_state: seg.last_compaction_state.as_deref(),
            binary_version: seg.binary_version,
            size: seg.size,
            identifier: seg.id(),
        }
    }
}

impl Serialize for DataSegment {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        DataSegmentJson::of(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for DataSegment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DataSegment::from_input(DataSegmentIn::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
