//! Druid's `compact` task, as the `index_parallel` task that does its work.
//!
//! A compaction rewrites the segments of one interval of a datasource: it reads them back (the
//! `druid` input source) and writes them again as a new version that overshadows them, rolled up
//! again, with the partitioning, granularity and schema the spec asks for. What the spec leaves
//! out comes from the segments themselves, as in Druid:
//!
//! - dimensions: those of the segments, newest interval first, each name once;
//! - metrics: each segment metric's combining form (`count` becomes a `longSum` of the count
//!   column, a `doubleMax` a `doubleMax` of its own column, ...);
//! - `queryGranularity` and `rollup`: those of the segments when they all agree;
//! - `segmentGranularity`: the named granularity every segment's interval is one bucket of.
//!
//! The interval must hold whole segments and be aligned with the new segment granularity, so
//! that no row outside it is rewritten or lost. With `inputSpec` of type `segments` (Druid's
//! segment ids), the interval is their umbrella, and the task fails unless they are exactly the
//! segments visible there when it runs. Accepted forms: `ioConfig.inputSpec` of type
//! `interval`, and the older top-level `interval`. Each new segment carries Druid's
//! `lastCompactionState` (what the Coordinator's auto-compaction compares against).

use serde_json::{json, Map, Value};

use raftlord_time::{Granularity, Interval};

use crate::spec::SpecError;

/// A `compact` task spec.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactSpec {
    pub datasource: String,
    pub interval: Interval,
    /// `inputSpec` of type `segments`: the segments named, which must be those visible in
    /// `interval` (their umbrella) when the task runs.
    pub segments: Option<Vec<SegmentName>>,
    pub dimensions_spec: Option<Value>,
    pub metrics_spec: Option<Value>,
    /// `granularitySpec` as given (`segmentGranularity`, `queryGranularity`, `rollup`).
    pub granularity_spec: Map<String, Value>,
    pub tuning_config: Value,
    pub drop_existing: bool,
}

/// A segment id taken apart: start, end (ms), version, partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub start: i64,
    pub end: i64,
    pub version: String,
    pub partition: u32,
}

impl SegmentName {
    /// Reads Druid's segment id `dataSource_start_end_version[_partitionNum]` of `datasource`.
    pub fn parse(datasource: &str, id: &str) -> Result<SegmentName, String> {
        let rest = id
            .strip_prefix(datasource)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or_else(|| format!("[{id}] is not a segment id of datasource [{datasource}]"))?;
        let parts: Vec<&str> = rest.split('_').collect();
        if parts.len() < 3 {
            return Err(format!(
                "[{id}] is not a segment id (dataSource_start_end_version[_partition])"
            ));
        }
        let interval = Interval::parse(&format!("{}/{}", parts[0], parts[1])).map_err(|e| format!("[{id}]: {e}"))?;
        let (version, partition) = match parts[2..].split_last() {
            Some((last, head)) if !head.is_empty() && last.parse::<u32>().is_ok() => {
                (head.join("_"), last.parse::<u32>().unwrap_or(0))
            }
            _ => (parts[2..].join("_"), 0),
        };
        Ok(SegmentName {
            start: interval.start,
            end: interval.end,
            version,
            partition,
        })
    }
}

/// What a compaction reads about one existing segment.
#[derive(Debug, Clone)]
pub struct Existing {
    pub interval: Interval,
    /// The `druid.segment` metadata of its file ([`crate::segment::read_metadata`]).
    pub metadata: Value,
}

/// Granularities a set of segments is recognised as, finest first.
const NAMED: [&str; 15] = [
    "SECOND",
    "MINUTE",
    "FIVE_MINUTE",
    "TEN_MINUTE",
    "FIFTEEN_MINUTE",
    "THIRTY_MINUTE",
    "HOUR",
    "SIX_HOUR",
    "EIGHT_HOUR",
    "DAY",
    "WEEK",
    "MONTH",
    "QUARTER",
    "YEAR",
    "ALL",
];

impl CompactSpec {
    /// Reads a `compact` task; an error names the field.
    pub fn from_task(task: &Value) -> Result<CompactSpec, SpecError> {
        let datasource = task
            .get("dataSource")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| SpecError::new("dataSource", "a compact task needs \"dataSource\""))?
            .to_string();
        let mut segments = None;
        let (interval, field) = match (task.get("interval"), task.pointer("/ioConfig/inputSpec")) {
            (Some(Value::String(s)), _) => (s.as_str().to_string(), "interval"),
            (_, Some(input)) if input.get("type").and_then(Value::as_str) == Some("segments") => {
                let field = "ioConfig.inputSpec.segments";
                let ids: Vec<&str> = match input.get("segments") {
                    Some(Value::Array(a)) if !a.is_empty() => a
                        .iter()
                        .map(|v| v.as_str())
                        .collect::<Option<_>>()
                        .ok_or_else(|| SpecError::new(field, "must be a list of segment ids"))?,
                    _ => return Err(SpecError::new(field, "required, a non-empty list of segment ids")),
                };
                let mut names = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    names.push(
                        SegmentName::parse(&datasource, id).map_err(|e| SpecError::new(format!("{field}[{i}]"), e))?,
                    );
                }
                names.sort();
                names.dedup();
                let start = names.iter().map(|n| n.start).min().unwrap_or(0);
                let end = names.iter().map(|n| n.end).max().unwrap_or(0);
                let umbrella = Interval::new(start, end)
                    .ok_or_else(|| SpecError::new(field, "the segments span no valid interval"))?;
                segments = Some(names);
                (umbrella.to_string(), field)
            }
            (_, Some(input)) => {
                match input.get("type").and_then(Value::as_str) {
                    Some("interval") => {}
                    Some(other) => {
                        return Err(SpecError::new(
                            "ioConfig.inputSpec.type",
                            format!(
                                "inputSpec [{other}] is not supported; use {{\"type\": \"interval\", \"interval\": ...}} or {{\"type\": \"segments\", \"segments\": [...]}}"
                            ),
                        ))
                    }
                    None => return Err(SpecError::new("ioConfig.inputSpec.type", "required: \"interval\" or \"segments\"")),
                }
                let s = input
                    .get("interval")
                    .and_then(Value::as_str)
                    .ok_or_else(|| SpecError::new("ioConfig.inputSpec.interval", "required, an ISO-8601 interval"))?;
                (s.to_string(), "ioConfig.inputSpec.interval")
            }
            _ => {
                return Err(SpecError::new(
                    "ioConfig.inputSpec",
                    "a compact task needs {\"type\": \"interval\", \"interval\": ...} here",
                ))
            }
        };
        let interval = Interval::parse(&interval).map_err(|e| SpecError::new(field, e.to_string()))?;
        if interval.duration_ms() <= 0 {
            return Err(SpecError::new(field, "the interval is empty"));
        }
        if task.get("transformSpec").is_some_and(|t| !t.is_null()) {
            return Err(SpecError::new(
                "transformSpec",
                "a compaction with a transformSpec is not supported by this raftlord version; remove it",
            ));
        }
        let object = |name: &str| -> Result<Option<Value>, SpecError> {
            match task.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v @ Value::Object(_)) => Ok(Some(v.clone())),
                Some(_) => Err(SpecError::new(name, "must be an object")),
            }
        };
        let dimensions_spec = object("dimensionsSpec")?;
        let metrics_spec = match task.get("metricsSpec") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Array(_)) => Some(v.clone()),
            Some(_) => return Err(SpecError::new("metricsSpec", "must be a list of aggregators")),
        };
        let granularity_spec = match object("granularitySpec")? {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        // Druid's older form: a top-level segmentGranularity.
        let mut granularity_spec = granularity_spec;
        if let Some(g) = task.get("segmentGranularity").filter(|g| !g.is_null()) {
            granularity_spec
                .entry("segmentGranularity")
                .or_insert_with(|| g.clone());
        }
        let tuning_config = object("tuningConfig")?.unwrap_or_else(|| json!({}));
        let drop_existing = task
            .pointer("/ioConfig/dropExisting")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let spec = CompactSpec {
            datasource,
            interval,
            segments,
            dimensions_spec,
            metrics_spec,
            granularity_spec,
            tuning_config,
            drop_existing,
        };
        if let Some(g) = spec.granularity_spec.get("segmentGranularity").filter(|g| !g.is_null()) {
            let g = Granularity::parse(g).map_err(|e| SpecError::new("granularitySpec.segmentGranularity", e))?;
            spec.check_aligned(&g, "granularitySpec.segmentGranularity")?;
        }
        // Everything else the index task reads is checked as it will be read, with a
        // stand-in for what only the segments can tell.
        let stand_in = Existing {
            interval: spec.interval,
            metadata: json!({}),
        };
        let index = spec.index_task("check", &[stand_in], Some(json!("ALL")))?;
        crate::IngestSpec::from_task(&index).map_err(|e| {
            // Named as the compact spec names it.
            let field = e.field.strip_prefix("spec.").unwrap_or(&e.field);
            SpecError::new(field.strip_prefix("dataSchema.").unwrap_or(field), e.message)
        })?;
        Ok(spec)
    }

    /// The interval must start and end on bucket boundaries of `g`: a bucket reaching past it
    /// would be overwritten with only the rows inside.
    fn check_aligned(&self, g: &Granularity, field: &str) -> Result<(), SpecError> {
        let i = self.interval;
        let first = g.bucket(i.start);
        let last = g.bucket(i.end.saturating_sub(1));
        if first.map(|b| b.start) != Some(i.start) || last.map(|b| b.end) != Some(i.end) {
            return Err(SpecError::new(
                field,
                format!("the interval {i} is not aligned with this segment granularity; compact an interval made of whole buckets of it"),
            ));
        }
        Ok(())
    }

    /// The `index_parallel` task that compacts `existing` (the segments visible in the interval
    /// now), with task id `id`. `segment_granularity` stands in for the one found from the
    /// segments when checking a spec before any exist.
    pub fn index_task(
        &self,
        id: &str,
        existing: &[Existing],
        segment_granularity: Option<Value>,
    ) -> Result<Value, SpecError> {
        if existing.is_empty() {
            return Err(SpecError::new(
                "ioConfig.inputSpec.interval",
                format!(
                    "there are no segments of [{}] in {} to compact",
                    self.datasource, self.interval
                ),
            ));
        }
        for e in existing {
            if !self.interval.contains(&e.interval) {
                return Err(SpecError::new(
                    "ioConfig.inputSpec.interval",
                    format!(
                        "segment interval {} reaches outside {}; compact an interval holding whole segments",
                        e.interval, self.interval
                    ),
                ));
            }
        }
        let mut newest_first: Vec<&Existing> = existing.iter().collect();
        newest_first.sort_by_key(|e| std::cmp::Reverse(e.interval));

        let dimensions_spec = match &self.dimensions_spec {
            Some(d) => d.clone(),
            None => json!({"dimensions": union_by_name(&newest_first, "/dimensionsSpec/dimensions", Value::clone)}),
        };
        let metrics_spec = match &self.metrics_spec {
            Some(m) => m.clone(),
            None => Value::Array(union_by_name(&newest_first, "/metricsSpec", combining)),
        };
        let agreed = |key: &str| -> Option<Value> {
            let first = &existing[0].metadata[key];
            (!first.is_null() && existing.iter().all(|e| &e.metadata[key] == first)).then(|| first.clone())
        };
        let mut granularity = self.granularity_spec.clone();
        granularity.insert("type".into(), json!("uniform"));
        if granularity.get("queryGranularity").is_none_or(Value::is_null) {
            granularity.insert(
                "queryGranularity".into(),
                agreed("queryGranularity").unwrap_or(json!("NONE")),
            );
        }
        if granularity.get("rollup").is_none_or(Value::is_null) {
            granularity.insert("rollup".into(), agreed("rollup").unwrap_or(json!(true)));
        }
        if granularity.get("segmentGranularity").is_none_or(Value::is_null) {
            let found = match segment_granularity {
                Some(g) => g,
                None => json!(self.granularity_of(existing)?),
            };
            granularity.insert("segmentGranularity".into(), found);
        }
        granularity.insert("intervals".into(), json!([self.interval.to_string()]));

        let mut tuning = self.tuning_config.clone();
        if let Value::Object(t) = &mut tuning {
            t.insert("type".into(), json!("index_parallel"));
        }
        Ok(json!({
            "type": "index_parallel",
            "id": id,
            "dataSource": self.datasource,
            "spec": {
                "dataSchema": {
                    "dataSource": self.datasource,
                    "timestampSpec": {"column": "__time", "format": "millis"},
                    "dimensionsSpec": dimensions_spec,
                    "metricsSpec": metrics_spec,
                    "granularitySpec": granularity,
                },
                "ioConfig": {
                    "type": "index_parallel",
                    "inputSource": {"type": "druid", "dataSource": self.datasource, "interval": self.interval.to_string()},
                    "appendToExisting": false,
                    "dropExisting": self.drop_existing,
                },
                "tuningConfig": tuning,
            }
        }))
    }

    /// The named granularity every segment's interval is exactly one bucket of.
    fn granularity_of(&self, existing: &[Existing]) -> Result<&'static str, SpecError> {
        for name in NAMED {
            let Ok(g) = Granularity::parse(&json!(name)) else {
                continue;
            };
            if existing.iter().all(|e| g.bucket(e.interval.start) == Some(e.interval)) {
                self.check_aligned(&g, "ioConfig.inputSpec.interval")?;
                return Ok(name);
            }
        }
        Err(SpecError::new(
            "granularitySpec.segmentGranularity",
            format!(
                "the segments in {} are not all of one granularity; give granularitySpec.segmentGranularity",
                self.interval
            ),
        ))
    }
}

/// The entries of the list at `pointer` in each segment's metadata, the first of each name
/// kept (segments in the order given), each passed through `map`.
fn union_by_name(segments: &[&Existing], pointer: &str, map: fn(&Value) -> Value) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    segments
        .iter()
        .filter_map(|e| e.metadata.pointer(pointer).and_then(Value::as_array))
        .flatten()
        .filter(|v| v["name"].as_str().is_some_and(|n| seen.insert(n.to_string())))
        .map(map)
        .collect()
}

/// Druid's `lastCompactionState` for the segments a compaction task `index` (the index task it
/// ran, as JSON) published.
pub fn compaction_state(index: &Value, spec: &crate::IngestSpec) -> Value {
    let schema = &index["spec"]["dataSchema"];
    let g = &schema["granularitySpec"];
    json!({
        "partitionsSpec": {"type": "dynamic", "maxRowsPerSegment": spec.max_rows_per_segment, "maxTotalRows": null},
        "dimensionsSpec": schema["dimensionsSpec"],
        "metricsSpec": schema["metricsSpec"],
        "transformSpec": null,
        "indexSpec": {},
        "granularitySpec": {
            "segmentGranularity": g["segmentGranularity"],
            "queryGranularity": g["queryGranularity"],
            "rollup": g["rollup"],
        },
    })
}

/// The aggregator that combines already-aggregated values of `m` (read back from its own
/// column).
fn combining(m: &Value) -> Value {
    let name = m["name"].clone();
    let kind = m["type"].as_str().unwrap_or_default();
    let mut out = match kind {
        "count" => json!({"type": "longSum", "name": name, "fieldName": name}),
        _ => json!({"type": kind, "name": name, "fieldName": name}),
    };
    if let Some(n) = m.get("maxStringBytes") {
        out["maxStringBytes"] = n.clone();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(interval: &str, dims: &[&str], metrics: Value) -> Existing {
        Existing {
            interval: Interval::parse(interval).unwrap(),
            metadata: json!({
                "dimensionsSpec": {"dimensions": dims.iter().map(|d| json!({"type": "string", "name": d})).collect::<Vec<_>>()},
                "metricsSpec": metrics, "queryGranularity": "hour", "rollup": true}),
        }
    }

    #[test]
    fn the_schema_comes_from_the_segments_with_combining_metrics() {
        let spec = CompactSpec::from_task(&json!({"type": "compact", "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": "2024-05-01/2024-05-03"}}}))
        .unwrap();
        let metrics =
            json!([{"type": "count", "name": "count"}, {"type": "doubleMax", "name": "d", "fieldName": "delta"}]);
        let task = spec
            .index_task(
                "c",
                &[
                    existing("2024-05-01/2024-05-02", &["page", "user"], metrics.clone()),
                    existing("2024-05-02/2024-05-03", &["user", "country"], metrics),
                ],
                None,
            )
            .unwrap();
        let schema = &task["spec"]["dataSchema"];
        let names: Vec<&str> = schema["dimensionsSpec"]["dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["user", "country", "page"], "newest segment's order first");
        assert_eq!(
            schema["metricsSpec"],
            json!([{"type": "longSum", "name": "count", "fieldName": "count"},
                {"type": "doubleMax", "name": "d", "fieldName": "d"}])
        );
        assert_eq!(schema["granularitySpec"]["segmentGranularity"], "DAY");
        assert_eq!(schema["granularitySpec"]["queryGranularity"], "hour");
        assert!(crate::IngestSpec::from_task(&task).is_ok());
    }

    #[test]
    fn intervals_that_would_lose_rows_are_refused() {
        let spec = |interval: &str, g: Value| {
            CompactSpec::from_task(&json!({"type": "compact", "dataSource": "w", "interval": interval,
                "granularitySpec": {"segmentGranularity": g}}))
        };
        assert_eq!(
            spec("2024-05-01T06:00/2024-05-02", json!("DAY")).unwrap_err().field,
            "granularitySpec.segmentGranularity"
        );
        assert!(spec("2024-05-01/2024-06-01", json!("MONTH")).is_ok());
        let ok = spec("2024-05-01/2024-05-03", Value::Null).unwrap();
        // A segment reaching outside the interval.
        let e = ok
            .index_task("c", &[existing("2024-04-30/2024-05-02", &[], json!([]))], None)
            .unwrap_err();
        assert!(e.message.contains("reaches outside"), "{e:?}");
        // Segments of mixed granularity, with none given.
        let e = ok
            .index_task(
                "c",
                &[
                    existing("2024-05-01/2024-05-02", &[], json!([])),
                    existing("2024-05-02T00:00/2024-05-02T01:00", &[], json!([])),
                ],
                None,
            )
            .unwrap_err();
        assert_eq!(e.field, "granularitySpec.segmentGranularity");
        assert!(ok
            .index_task("c", &[], None)
            .unwrap_err()
            .message
            .contains("no segments"));
    }

    #[test]
    fn bad_compact_specs_name_their_field() {
        let err = |v: Value| CompactSpec::from_task(&v).unwrap_err().field;
        assert_eq!(err(json!({"type": "compact", "interval": "2024/2025"})), "dataSource");
        assert_eq!(err(json!({"type": "compact", "dataSource": "w"})), "ioConfig.inputSpec");
        assert_eq!(
            err(
                json!({"type": "compact", "dataSource": "w", "ioConfig": {"inputSpec": {"type": "segments", "segments": []}}})
            ),
            "ioConfig.inputSpec.segments"
        );
        assert_eq!(
            err(json!({"type": "compact", "dataSource": "w", "ioConfig": {"inputSpec": {"type": "pick"}}})),
            "ioConfig.inputSpec.type"
        );
        // Segment ids, datasource names with underscores included; the interval is their umbrella.
        let ok = CompactSpec::from_task(
            &json!({"type": "compact", "dataSource": "w_x", "ioConfig": {"inputSpec": {
            "type": "segments", "segments": ["w_x_2024-01-02T00:00:00.000Z_2024-01-03T00:00:00.000Z_v_1_2",
                "w_x_2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z_v1"]}}}),
        )
        .unwrap();
        assert_eq!(
            ok.interval.to_string(),
            "2024-01-01T00:00:00.000Z/2024-01-03T00:00:00.000Z"
        );
        let names = ok.segments.unwrap();
        assert_eq!((names[0].version.as_str(), names[0].partition), ("v1", 0));
        assert_eq!((names[1].version.as_str(), names[1].partition), ("v_1", 2));
        assert_eq!(
            err(json!({"type": "compact", "dataSource": "w", "interval": "soon"})),
            "interval"
        );
        assert_eq!(
            err(
                json!({"type": "compact", "dataSource": "w", "interval": "2024/2025", "metricsSpec": [{"type": "hyperUnique", "name": "u"}]})
            ),
            "metricsSpec[0].type"
        );
        assert_eq!(
            err(
                json!({"type": "compact", "dataSource": "w", "interval": "2024/2025", "transformSpec": {"filter": {}}})
            ),
            "transformSpec"
        );
    }
}
