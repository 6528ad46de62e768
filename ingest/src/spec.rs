//! Druid's native batch ingestion spec (`index` and `index_parallel` tasks), read as Druid's users
//! write it today: `spec.dataSchema`, `spec.ioConfig`, `spec.tuningConfig`.
//!
//! [`IngestSpec::from_task`] reads a task's JSON and checks everything the spec alone can show
//! (the input source and format, the timestamp format, the aggregators, the granularities and
//! intervals, the partitioning); each refusal is a [`SpecError`] naming the field by its JSON
//! path, so the API answers 400 before anything runs. What only the data can show (a missing
//! timestamp, an unparseable line) is found while reading and counted per row.
//!
//! Unknown fields are ignored, as Druid's JSON mapper ignores them.

use serde::Deserialize;
use serde_json::Value;

use raftlord_time::interval::Interval;
use raftlord_time::Granularity;

use crate::aggregate::AggregatorSpec;
use crate::format::InputFormat;
use crate::source::InputSource;
use crate::timestamp::TimestampFormat;

/// A spec that cannot run, with the JSON path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A field at fault (its path relative to the part being read) and what is wrong with it.
pub(crate) type FieldError = (String, String);

pub(crate) fn field(f: &str, m: impl Into<String>) -> FieldError {
    (f.to_string(), m.into())
}

/// The task JSON as submitted.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskJson {
    #[serde(rename = "type")]
    kind: String,
    spec: Option<SpecJson>,
    #[serde(default)]
    data_schema: Option<Value>,
    #[serde(default)]
    io_config: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecJson {
    data_schema: DataSchemaJson,
    io_config: IoConfigJson,
    #[serde(default)]
    tuning_config: Option<TuningConfigJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataSchemaJson {
    data_source: String,
    #[serde(default)]
    timestamp_spec: Option<TimestampSpecJson>,
    #[serde(default)]
    dimensions_spec: Option<DimensionsSpecJson>,
    #[serde(default)]
    metrics_spec: Vec<AggregatorSpec>,
    #[serde(default)]
    granularity_spec: Option<GranularitySpecJson>,
    #[serde(default)]
    transform_spec: Option<TransformSpecJson>,
    #[serde(default)]
    parser: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimestampSpecJson {
    #[serde(default)]
    column: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    missing_value: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DimensionsSpecJson {
    #[serde(default)]
    dimensions: Vec<DimensionJson>,
    #[serde(default)]
    dimension_exclusions: Vec<String>,
    #[serde(default)]
    use_schema_discovery: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DimensionJson {
    Name(String),
    Typed {
        name: String,
        #[serde(rename = "type", default)]
        kind: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GranularitySpecJson {
    #[serde(default)]
    segment_granularity: Option<Value>,
    #[serde(default)]
    query_granularity: Option<Value>,
    #[serde(default)]
    rollup: Option<bool>,
    #[serde(default)]
    intervals: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransformSpecJson {
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    transforms: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IoConfigJson {
    input_source: Option<Value>,
    input_format: Option<Value>,
    #[serde(default)]
    firehose: Option<Value>,
    #[serde(default)]
    append_to_existing: bool,
    #[serde(default)]
    drop_existing: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TuningConfigJson {
    #[serde(default)]
    partitions_spec: Option<PartitionsSpecJson>,
    #[serde(default)]
    max_rows_per_segment: Option<u64>,
    /// An int in Druid; here at most 2^32 - 1, so that a bucket's row numbers fit in 32 bits.
    #[serde(default)]
    max_rows_in_memory: Option<u32>,
    #[serde(default)]
    max_bytes_in_memory: Option<i64>,
    #[serde(default)]
    max_parse_exceptions: Option<i64>,
    #[serde(default)]
    max_saved_parse_exceptions: Option<u64>,
    #[serde(default)]
    log_parse_exceptions: bool,
    #[serde(default)]
    max_num_concurrent_sub_tasks: Option<u64>,
    #[serde(default)]
    max_retry: Option<u64>,
    #[serde(default)]
    total_num_merge_tasks: Option<u64>,
    #[serde(default)]
    split_hint_spec: Option<SplitHintJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitHintJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    max_split_size: Option<i64>,
    #[serde(default)]
    max_num_files: Option<i64>,
}

/// How an `index_parallel` task splits its input between sub-tasks (Druid's `maxSize`
/// `splitHintSpec`): files are taken in order into a split until the next would take it past
/// `max_split_size` bytes or `max_num_files` files; a split holds at least one file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitHint {
    pub max_split_size: u64,
    pub max_num_files: u64,
}

impl Default for SplitHint {
    /// Druid's defaults: 1 GiB, 1000 files.
    fn default() -> Self {
        SplitHint {
            max_split_size: 1 << 30,
            max_num_files: 1000,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartitionsSpecJson {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    max_rows_per_segment: Option<u64>,
    #[serde(default)]
    num_shards: Option<i64>,
    #[serde(default)]
    target_rows_per_segment: Option<i64>,
    #[serde(default)]
    partition_dimensions: Vec<String>,
    #[serde(default)]
    partition_dimension: Option<String>,
}

/// `partitionsSpec` of type `single_dim` or `range`: each segment interval's rows split into
/// ranges of the partition dimensions' values (compared as strings, a missing value first), each
/// holding about `target_rows_per_segment` rows, as Druid's range partitioning does.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub dimensions: Vec<String>,
    pub target_rows_per_segment: u64,
    /// `single_dim` (Druid's `single` shard spec) rather than `range`.
    pub single_dim: bool,
}

/// `partitionsSpec` of type `hashed`: each segment interval's rows split into shards by a hash
/// of the partition dimensions (all dimensions and the time when none are named), as Druid's
/// `murmur3_32_abs` partition function does.
#[derive(Debug, Clone, PartialEq)]
pub struct Hashed {
    /// Shards per interval; `None`: as many as `target_rows_per_segment` asks for.
    pub num_shards: Option<u32>,
    pub target_rows_per_segment: u64,
    pub partition_dimensions: Vec<String>,
}

/// A dimension's Druid type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimType {
    String,
    Long,
    Float,
    Double,
}

impl DimType {
    pub fn druid_name(self) -> &'static str {
        match self {
            DimType::String => "string",
            DimType::Long => "long",
            DimType::Float => "float",
            DimType::Double => "double",
        }
    }
}

/// One declared dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Dimension {
    pub name: String,
    pub kind: DimType,
}

/// Which columns become dimensions.
#[derive(Debug, Clone, PartialEq)]
pub enum Dimensions {
    /// The listed ones, in this order.
    Declared(Vec<Dimension>),
    /// Every input field but the timestamp, the metrics' inputs and the exclusions, in order of
    /// first appearance: as strings (Druid's schemaless ingestion), or with types found from the
    /// values when `typed` (`useSchemaDiscovery`).
    Discovered { exclusions: Vec<String>, typed: bool },
}

/// How the input's time is found.
#[derive(Debug, Clone, PartialEq)]
pub struct TimestampSpec {
    pub column: String,
    pub format: TimestampFormat,
    /// Used for rows without the column.
    pub missing_value: Option<i64>,
}

/// The task's whole ingestion spec, checked.
#[derive(Debug, Clone)]
pub struct IngestSpec {
    pub task_type: String,
    pub datasource: String,
    pub timestamp: TimestampSpec,
    pub dimensions: Dimensions,
    pub metrics: Vec<AggregatorSpec>,
    pub segment_granularity: Granularity,
    pub query_granularity: Granularity,
    /// The names as written, kept for the segment files' metadata.
    pub segment_granularity_json: Value,
    pub query_granularity_json: Value,
    pub rollup: bool,
    /// `granularitySpec.intervals`; rows outside are thrown away. `None`: found from the data.
    pub intervals: Option<Vec<Interval>>,
    pub source: InputSource,
    pub format: InputFormat,
    /// `transformSpec.filter`: rows it rejects are thrown away.
    pub filter: Option<crate::filter::Filter>,
    /// `transformSpec.transforms`: each writes the field it names (`__time`: the row's time),
    /// reading the row as it was parsed.
    pub transforms: Vec<(String, crate::expr::Expr)>,
    pub append_to_existing: bool,
    pub drop_existing: bool,
    pub max_rows_per_segment: u64,
    /// `hashed` partitioning; `None`: `dynamic` (or range).
    pub hashed: Option<Hashed>,
    /// `single_dim` or `range` partitioning.
    pub range: Option<Range>,
    pub max_rows_in_memory: u64,
    /// Estimated bytes of rows held before they are spilled (`maxBytesInMemory`).
    pub max_bytes_in_memory: u64,
    pub max_parse_exceptions: u64,
    pub max_saved_parse_exceptions: u64,
    pub log_parse_exceptions: bool,
    /// `maxNumConcurrentSubTasks`: above 1, an `index_parallel` task runs its input splits as
    /// sub-tasks on the workers.
    pub max_num_concurrent_sub_tasks: u64,
    /// `maxRetry`: how often a failed sub-task is run again.
    pub max_retry: u64,
    /// `totalNumMergeTasks`: how many second-phase sub-tasks hashed parallel ingestion runs.
    pub total_num_merge_tasks: u64,
    pub split_hint: SplitHint,
}

/// Druid's type of the sub-tasks an `index_parallel` task runs with dynamic partitioning.
pub const SUB_TASK_TYPE: &str = "single_phase_sub_task";
/// Druid's type of the first-phase sub-tasks of hashed parallel ingestion: each reads a split
/// and writes its rows bucketed by hash, as partial segments.
pub const PARTIAL_GENERATE_TYPE: &str = "partial_index_generate";
/// Druid's type of the second-phase sub-tasks of hashed parallel ingestion: each merges the
/// partial segments of some buckets into the final segments.
pub const PARTIAL_MERGE_TYPE: &str = "partial_index_generic_merge";
/// Druid's type of the sub-tasks that, before hashed parallel ingestion with
/// `targetRowsPerSegment`, estimate each interval's distinct group keys (its shard count).
pub const CARDINALITY_TYPE: &str = "partial_dimension_cardinality";
/// Druid's default `totalNumMergeTasks`.
pub const DEFAULT_TOTAL_NUM_MERGE_TASKS: u64 = 10;

/// Druid's default `maxRowsPerSegment` for dynamic partitioning.
pub const DEFAULT_MAX_ROWS_PER_SEGMENT: u64 = 5_000_000;
/// Druid's default `maxRowsInMemory`.
pub const DEFAULT_MAX_ROWS_IN_MEMORY: u64 = 1_000_000;
/// The default `maxBytesInMemory` (Druid's is a sixth of the peon's heap; raftlord's peon has no
/// heap setting, so a fixed budget that keeps it well under 256 MiB).
pub const DEFAULT_MAX_BYTES_IN_MEMORY: u64 = 96 * 1024 * 1024;

impl IngestSpec {
    /// Whether raftlord's peon runs tasks of this type through [`IngestSpec`].
    pub fn handles(task_type: &str) -> bool {
        matches!(
            task_type,
            "index" | "index_parallel" | SUB_TASK_TYPE | CARDINALITY_TYPE | PARTIAL_GENERATE_TYPE | PARTIAL_MERGE_TYPE
        )
    }

    /// Reads and checks the spec of an `index` or `index_parallel` task.
    pub fn from_task(task: &Value) -> Result<IngestSpec, SpecError> {
        let t: TaskJson = serde_path_to_error::deserialize(task).map_err(path_error)?;
        if t.data_schema.is_some() || t.io_config.is_some() {
            return Err(SpecError::new(
                "dataSchema",
                "the top-level dataSchema/ioConfig form is no longer accepted; move dataSchema, ioConfig and \
                 tuningConfig under \"spec\"",
            ));
        }
        let spec = t.spec.ok_or_else(|| {
            SpecError::new(
                "spec",
                "an ingestion task needs a \"spec\" with dataSchema and ioConfig",
            )
        })?;
        let ds = spec.data_schema;
        if ds.parser.is_some() {
            return Err(SpecError::new(
                "spec.dataSchema.parser",
                "parsers are no longer accepted; give spec.ioConfig.inputFormat and spec.dataSchema.timestampSpec \
                 and dimensionsSpec instead",
            ));
        }
        if ds.data_source.trim().is_empty() {
            return Err(SpecError::new("spec.dataSchema.dataSource", "must not be empty"));
        }
        let ts = ds.timestamp_spec.ok_or_else(|| {
            SpecError::new(
                "spec.dataSchema.timestampSpec",
                "required: name the time column, e.g. {\"column\": \"timestamp\", \"format\": \"iso\"}",
            )
        })?;
        let format_text = ts.format.unwrap_or_else(|| "auto".to_string());
        let format = TimestampFormat::parse(&format_text)
            .map_err(|m| SpecError::new("spec.dataSchema.timestampSpec.format", m))?;
        let missing_value = match ts.missing_value {
            None | Some(Value::Null) => None,
            Some(v) => Some(TimestampFormat::Auto.parse_value(&v).ok_or_else(|| {
                SpecError::new(
                    "spec.dataSchema.timestampSpec.missingValue",
                    format!("{v} is not a time"),
                )
            })?),
        };
        let timestamp = TimestampSpec {
            column: ts.column.unwrap_or_else(|| "timestamp".to_string()),
            format,
            missing_value,
        };

        let mut metrics = ds.metrics_spec;
        for (i, m) in metrics.iter_mut().enumerate() {
            m.check().map_err(|e| {
                // The message starts with the sub-field at fault ("type: ...").
                let (sub, msg) = e.split_once(": ").unwrap_or(("type", e.as_str()));
                SpecError::new(format!("spec.dataSchema.metricsSpec[{i}].{sub}"), msg)
            })?;
        }
        for (i, m) in metrics.iter().enumerate() {
            if metrics[..i].iter().any(|o| o.name == m.name) {
                return Err(SpecError::new(
                    format!("spec.dataSchema.metricsSpec[{i}].name"),
                    format!("[{}] names two metrics", m.name),
                ));
            }
        }

        let dims = ds.dimensions_spec.unwrap_or_default();
        let dimensions = if dims.dimensions.is_empty() {
            Dimensions::Discovered {
                exclusions: dims.dimension_exclusions,
                typed: dims.use_schema_discovery,
            }
        } else {
            let mut out: Vec<Dimension> = Vec::new();
            for (i, d) in dims.dimensions.into_iter().enumerate() {
                let field = format!("spec.dataSchema.dimensionsSpec.dimensions[{i}]");
                let (name, kind) = match d {
                    DimensionJson::Name(n) => (n, None),
                    DimensionJson::Typed { name, kind } => (name, kind),
                };
                let kind = match kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None | Some("string") => DimType::String,
                    Some("long") => DimType::Long,
                    Some("float") => DimType::Float,
                    Some("double") => DimType::Double,
                    Some(other) => {
                        return Err(SpecError::new(
                            format!("{field}.type"),
                            format!("unknown dimension type [{other}]; raftlord knows string, long, float and double"),
                        ))
                    }
                };
                if name.is_empty() {
                    return Err(SpecError::new(format!("{field}.name"), "must not be empty"));
                }
                if name == "__time" || name == timestamp.column {
                    return Err(SpecError::new(
                        format!("{field}.name"),
                        format!("[{name}] is the time column and cannot also be a dimension"),
                    ));
                }
                if out.iter().any(|o| o.name == name) || metrics.iter().any(|m| m.name == name) {
                    return Err(SpecError::new(
                        format!("{field}.name"),
                        format!("[{name}] names two columns"),
                    ));
                }
                out.push(Dimension { name, kind });
            }
            Dimensions::Declared(out)
        };

        let gs = ds.granularity_spec;
        let (seg_json, query_json, rollup, intervals) = match gs {
            Some(g) => (g.segment_granularity, g.query_granularity, g.rollup, g.intervals),
            None => (None, None, None, None),
        };
        let seg_json = seg_json.unwrap_or_else(|| Value::String("DAY".into()));
        let query_json = query_json.unwrap_or_else(|| Value::String("NONE".into()));
        let segment_granularity = Granularity::parse(&seg_json)
            .map_err(|m| SpecError::new("spec.dataSchema.granularitySpec.segmentGranularity", m))?;
        let query_granularity = Granularity::parse(&query_json)
            .map_err(|m| SpecError::new("spec.dataSchema.granularitySpec.queryGranularity", m))?;
        if !query_granularity.is_no_coarser_than(&segment_granularity) {
            return Err(SpecError::new(
                "spec.dataSchema.granularitySpec.queryGranularity",
                format!(
                    "queryGranularity {query_json} is coarser than segmentGranularity {seg_json}; a segment cannot hold \
                     rows truncated past its own interval"
                ),
            ));
        }
        let intervals = match intervals {
            None => None,
            Some(list) if list.is_empty() => None,
            Some(list) => {
                let mut out = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    let iv = Interval::parse(s).map_err(|e| {
                        SpecError::new(format!("spec.dataSchema.granularitySpec.intervals[{i}]"), e.to_string())
                    })?;
                    if iv.start == iv.end {
                        return Err(SpecError::new(
                            format!("spec.dataSchema.granularitySpec.intervals[{i}]"),
                            "the interval is empty",
                        ));
                    }
                    out.push(iv);
                }
                Some(out)
            }
        };

        let mut filter = None;
        let mut transforms = Vec::new();
        if let Some(t) = ds.transform_spec {
            for (i, t) in t.transforms.iter().enumerate() {
                let at = |f: &str| format!("spec.dataSchema.transformSpec.transforms[{i}].{f}");
                match t.get("type").and_then(Value::as_str) {
                    Some("expression") => {}
                    other => {
                        return Err(SpecError::new(
                            at("type"),
                            format!(
                                "transform [{}] is not supported; use \"expression\"",
                                other.unwrap_or("")
                            ),
                        ))
                    }
                }
                let name = t
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| SpecError::new(at("name"), "required, the field the transform writes"))?;
                let text = t
                    .get("expression")
                    .and_then(Value::as_str)
                    .ok_or_else(|| SpecError::new(at("expression"), "required, a Druid expression"))?;
                let expr = crate::expr::Expr::parse(text).map_err(|m| SpecError::new(at("expression"), m))?;
                transforms.push((name.to_string(), expr));
            }
            if let Some(f) = t.filter.filter(|f| !f.is_null()) {
                filter = Some(
                    crate::filter::Filter::parse(&f)
                        .map_err(|(p, m)| SpecError::new(format!("spec.dataSchema.transformSpec.filter.{p}"), m))?,
                );
            }
        }

        let io = spec.io_config;
        if io.firehose.is_some() {
            return Err(SpecError::new(
                "spec.ioConfig.firehose",
                "firehoses are no longer accepted; give spec.ioConfig.inputSource and inputFormat instead",
            ));
        }
        let source_json = io
            .input_source
            .ok_or_else(|| SpecError::new("spec.ioConfig.inputSource", "required"))?;
        let source = InputSource::parse(&source_json).map_err(|(f, m)| {
            SpecError::new(
                if f.is_empty() {
                    "spec.ioConfig.inputSource".to_string()
                } else {
                    format!("spec.ioConfig.inputSource.{f}")
                },
                m,
            )
        })?;
        let format = match io.input_format {
            Some(f) => InputFormat::parse(&f).map_err(|(field, m)| {
                SpecError::new(
                    if field.is_empty() {
                        "spec.ioConfig.inputFormat".to_string()
                    } else {
                        format!("spec.ioConfig.inputFormat.{field}")
                    },
                    m,
                )
            })?,
            // Segments carry their own format.
            None if matches!(source, InputSource::Druid { .. }) => InputFormat::Json { flatten: None },
            // Segments carry their own format.
            None if matches!(source, InputSource::Druid { .. }) => InputFormat::Json { flatten: None },
            None => {
                return Err(SpecError::new(
                    "spec.ioConfig.inputFormat",
                    "required, e.g. {\"type\": \"json\"}",
                ))
            }
        };
        if io.drop_existing && io.append_to_existing {
            return Err(SpecError::new(
                "spec.ioConfig.dropExisting",
                "dropExisting cannot be combined with appendToExisting",
            ));
        }
        if io.drop_existing && intervals.is_none() {
            return Err(SpecError::new(
                "spec.ioConfig.dropExisting",
                "dropExisting needs spec.dataSchema.granularitySpec.intervals",
            ));
        }

        let tuning = spec.tuning_config.unwrap_or_default();
        let mut max_rows_per_segment = tuning.max_rows_per_segment.unwrap_or(DEFAULT_MAX_ROWS_PER_SEGMENT);
        let mut hashed = None;
        let mut range = None;
        if let Some(p) = tuning.partitions_spec {
            match p.kind.as_str() {
                "dynamic" => {
                    if let Some(m) = p.max_rows_per_segment {
                        max_rows_per_segment = m;
                    }
                }
                "hashed" => {
                    let at = |f: &str| format!("spec.tuningConfig.partitionsSpec.{f}");
                    // maxRowsPerSegment is Druid's older name for targetRowsPerSegment.
                    let target = p.target_rows_per_segment.or(p.max_rows_per_segment.map(|m| m as i64));
                    let num_shards = match (p.num_shards.filter(|n| *n != -1), target.filter(|t| *t != -1)) {
                        (Some(_), Some(_)) => {
                            return Err(SpecError::new(
                                at("numShards"),
                                "give numShards or targetRowsPerSegment, not both",
                            ))
                        }
                        (Some(n), None) => Some(
                            u32::try_from(n)
                                .ok()
                                .filter(|n| (1..=10_000).contains(n))
                                .ok_or_else(|| SpecError::new(at("numShards"), "must be between 1 and 10000"))?,
                        ),
                        (None, _) => None,
                    };
                    let target_rows_per_segment = match target {
                        None | Some(-1) => DEFAULT_MAX_ROWS_PER_SEGMENT,
                        Some(t) if t > 0 => t as u64,
                        Some(_) => return Err(SpecError::new(at("targetRowsPerSegment"), "must be positive")),
                    };
                    if io.append_to_existing {
                        return Err(SpecError::new(
                            at("type"),
                            "hashed partitioning rewrites whole intervals; it cannot append (set appendToExisting to false)",
                        ));
                    }
                    hashed = Some(Hashed {
                        num_shards,
                        target_rows_per_segment,
                        partition_dimensions: p.partition_dimensions,
                    });
                }
                kind @ ("single_dim" | "range") => {
                    let at = |f: &str| format!("spec.tuningConfig.partitionsSpec.{f}");
                    let single_dim = kind == "single_dim";
                    let (field, names) = if single_dim {
                        ("partitionDimension", p.partition_dimension.into_iter().collect::<Vec<_>>())
                    } else {
                        ("partitionDimensions", p.partition_dimensions)
                    };
                    if names.is_empty() || names.iter().any(String::is_empty) {
                        return Err(SpecError::new(at(field), format!("{kind} partitioning needs {field}")));
                    }
                    if let Dimensions::Declared(declared) = &dimensions {
                        for d in &names {
                            match declared.iter().find(|x| x.name == *d) {
                                Some(x) if x.kind == DimType::String => {}
                                Some(_) => {
                                    return Err(SpecError::new(at(field), format!("[{d}] is not a string dimension; range partitioning needs string dimensions")))
                                }
                                None => {
                                    return Err(SpecError::new(at(field), format!("[{d}] is not in dimensionsSpec.dimensions")))
                                }
                            }
                        }
                    }
                    let target = match (p.target_rows_per_segment, p.max_rows_per_segment) {
                        (Some(t), _) if t > 0 => t as u64,
                        (Some(t), _) if t != -1 => return Err(SpecError::new(at("targetRowsPerSegment"), "must be positive")),
                        (_, Some(m)) if m > 0 => m,
                        _ => DEFAULT_MAX_ROWS_PER_SEGMENT,
                    };
                    if io.append_to_existing {
                        return Err(SpecError::new(
                            at("type"),
                            format!("{kind} partitioning rewrites whole intervals; it cannot append (set appendToExisting to false)"),
                        ));
                    }
                    range = Some(Range {
                        dimensions: names,
                        target_rows_per_segment: target,
                        single_dim,
                    });
                }
                other => {
                    return Err(SpecError::new(
                        "spec.tuningConfig.partitionsSpec.type",
                        format!(
                            "partitionsSpec [{other}] is not supported by this raftlord version; use \"dynamic\", \"hashed\", \"single_dim\" or \"range\""
                        ),
                    ))
                }
            }
        }
        if max_rows_per_segment == 0 {
            return Err(SpecError::new(
                "spec.tuningConfig.partitionsSpec.maxRowsPerSegment",
                "must be positive",
            ));
        }
        let max_parse_exceptions = match tuning.max_parse_exceptions {
            None => u64::MAX,
            Some(n) if n < 0 => u64::MAX,
            Some(n) => n as u64,
        };
        let max_num_concurrent_sub_tasks = tuning.max_num_concurrent_sub_tasks.unwrap_or(1).max(1);
        let split_hint = match &tuning.split_hint_spec {
            None => SplitHint::default(),
            Some(h) if h.kind == "maxSize" => {
                let d = SplitHint::default();
                let positive = |v: Option<i64>, name: &str, default: u64| match v {
                    None => Ok(default),
                    Some(n) if n > 0 => Ok(n as u64),
                    Some(_) => Err(SpecError::new(
                        format!("spec.tuningConfig.splitHintSpec.{name}"),
                        "must be positive",
                    )),
                };
                SplitHint {
                    max_split_size: positive(h.max_split_size, "maxSplitSize", d.max_split_size)?,
                    max_num_files: positive(h.max_num_files, "maxNumFiles", d.max_num_files)?,
                }
            }
            Some(h) => {
                return Err(SpecError::new(
                    "spec.tuningConfig.splitHintSpec.type",
                    format!(
                        "splitHintSpec [{}] is not supported by this raftlord version; use \"maxSize\"",
                        h.kind
                    ),
                ))
            }
        };
        Ok(IngestSpec {
            task_type: t.kind,
            datasource: ds.data_source,
            timestamp,
            dimensions,
            metrics,
            segment_granularity,
            query_granularity,
            segment_granularity_json: seg_json,
            query_granularity_json: query_json,
            rollup: rollup.unwrap_or(true),
            intervals,
            source,
            format,
            append_to_existing: io.append_to_existing,
            drop_existing: io.drop_existing,
            filter,
            transforms,
            hashed,
            range,
            max_rows_per_segment,
            max_num_concurrent_sub_tasks,
            max_retry: tuning.max_retry.unwrap_or(3),
            total_num_merge_tasks: match tuning.total_num_merge_tasks {
                None => DEFAULT_TOTAL_NUM_MERGE_TASKS,
                Some(n) if (1..=10_000).contains(&n) => n,
                Some(_) => {
                    return Err(SpecError::new(
                        "spec.tuningConfig.totalNumMergeTasks",
                        "must be between 1 and 10000",
                    ))
                }
            },
            split_hint,
            max_rows_in_memory: tuning
                .max_rows_in_memory
                .map_or(DEFAULT_MAX_ROWS_IN_MEMORY, u64::from)
                .max(1),
            // Druid: 0 or absent means a sixth of the heap, negative means no limit.
            max_bytes_in_memory: match tuning.max_bytes_in_memory {
                None | Some(0) => DEFAULT_MAX_BYTES_IN_MEMORY,
                Some(n) if n < 0 => u64::MAX,
                Some(n) => n as u64,
            },
            max_parse_exceptions,
            max_saved_parse_exceptions: tuning.max_saved_parse_exceptions.unwrap_or(0),
            log_parse_exceptions: tuning.log_parse_exceptions,
        })
    }

    /// What an overwriting task locks before it reads, as Druid's `isReady` does: the segment
    /// intervals (`segmentGranularity` buckets) that `granularitySpec.intervals` touch, adjacent
    /// ones merged. `None` without intervals or when appending (locks come with allocation).
    pub fn lock_intervals(&self) -> Option<Vec<Interval>> {
        if self.append_to_existing {
            return None;
        }
        let reindexed = match &self.source {
            InputSource::Druid { interval, .. } => Some(vec![*interval]),
            _ => None,
        };
        let mut out: Vec<Interval> = Vec::new();
        for i in self.intervals.as_ref().or(reindexed.as_ref())? {
            let start = self.segment_granularity.bucket(i.start).map_or(i.start, |b| b.start);
            let last = i.end.saturating_sub(1).max(i.start);
            let end = self.segment_granularity.bucket(last).map_or(i.end, |b| b.end);
            out.push(Interval { start, end });
        }
        out.sort();
        let mut merged: Vec<Interval> = Vec::new();
        for i in out {
            match merged.last_mut() {
                Some(m) if i.start <= m.end => m.end = m.end.max(i.end),
                _ => merged.push(i),
            }
        }
        Some(merged)
    }

    /// The input fields the metrics read, which schemaless discovery does not make dimensions.
    pub fn metric_inputs(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().filter_map(|m| m.field_name.as_deref())
    }

    /// Every input field a row is built from (the timestamp, the dimensions, the metrics'
    /// inputs, and what the transforms and the filter read), or `None` when any field may be
    /// (dimensions discovered from the data). A reader may skip the other fields unread.
    pub fn input_fields(&self) -> Option<Vec<&str>> {
        let Dimensions::Declared(dims) = &self.dimensions else {
            return None;
        };
        let mut out = vec![self.timestamp.column.as_str()];
        out.extend(dims.iter().map(|d| d.name.as_str()));
        out.extend(self.metric_inputs());
        for (_, e) in &self.transforms {
            e.fields(&mut out);
        }
        if let Some(f) = &self.filter {
            f.fields(&mut out);
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> SpecError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    // serde_json appends " at line N column M", meaningless for a value already parsed.
    let inner = match inner.find(" at line ") {
        Some(i) => inner[..i].to_string(),
        None => inner,
    };
    SpecError::new(if path == "." { "task".to_string() } else { path }, inner)
}
