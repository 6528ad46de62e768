//! Segment files: one Parquet file per segment partition.
//!
//! Columns: `__time` (timestamp, milliseconds, UTC), then the dimensions in order (string: UTF-8,
//! or a list of UTF-8 for a multi-value dimension; long: INT64; float: FLOAT; double: DOUBLE),
//! then the metrics (long: INT64, float: FLOAT, double: DOUBLE, first/last of strings: UTF-8).
//! Rows are sorted by time, then dimensions. Strings are dictionary-encoded, pages compressed
//! with zstd, row groups at most [`ROW_GROUP_ROWS`] rows. The key-value metadata `druid.segment`
//! holds the Druid schema (dimensionsSpec, metricsSpec, queryGranularity, rollup) and the
//! segment's identity, so compaction and readers need no spec.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Float32Builder, Float64Builder, Int64Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};

use crate::aggregate::{Acc, AggregatorSpec, Num, Scalar, Val};
use crate::rows::{Dict, DimValue, Key};
use crate::spec::DimType;

/// Largest row group, in rows.
pub const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Rows per Arrow batch handed to the writer: few enough that a batch's rows (each a key and
/// its metrics, about 250 bytes for a Wikipedia-shaped row) stay in the CPU's cache while its
/// columns are built one after another from them.
const BATCH_ROWS: usize = 4 * 1024;
/// The key of the Druid schema in the file's key-value metadata.
pub const METADATA_KEY: &str = "druid.segment";

/// A dimension column of the file.
#[derive(Debug, Clone)]
pub struct DimColumn {
    pub name: String,
    pub kind: DimType,
    pub multi: bool,
}

/// What a written file holds.
#[derive(Debug, Clone)]
pub struct Written {
    pub rows: u64,
    pub bytes: u64,
}

/// Writes sorted rows to `path`; `identity` (dataSource, interval, version, partition) and the
/// schema go into the metadata.
pub fn write(
    path: &Path,
    rows: &mut dyn Iterator<Item = Result<(Key, Vec<Acc>), String>>,
    limit: usize,
    dims: &[DimColumn],
    dicts: &[Dict],
    metrics: &[AggregatorSpec],
    schema_meta: Value,
) -> Result<Written, String> {
    let mut fields = vec![Field::new(
        "__time",
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )];
    for d in dims {
        let t = match (d.kind, d.multi) {
            (DimType::String, false) => DataType::Utf8,
            (DimType::String, true) => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            (DimType::Long, _) => DataType::Int64,
            (DimType::Float, _) => DataType::Float32,
            (DimType::Double, _) => DataType::Float64,
        };
        fields.push(Field::new(&d.name, t, true));
    }
    for m in metrics {
        fields.push(Field::new(&m.name, metric_type(m.output()), true));
    }
    // In the Arrow schema too, so Arrow readers (pyarrow, DuckDB, pandas) show it as the
    // schema's metadata.
    let meta_text = schema_meta.to_string();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        std::collections::HashMap::from([(METADATA_KEY.to_string(), meta_text.clone())]),
    ));
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| e.to_string())?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            METADATA_KEY.to_string(),
            schema_meta.to_string(),
        )]))
        .build();
    let file = File::create(path).map_err(|e| format!("cannot create [{}]: {e}", path.display()))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| e.to_string())?;
    // At most one batch of rows in memory at a time.
    let mut written = 0usize;
    while written < limit {
        let chunk: Vec<(Key, Vec<Acc>)> = (&mut *rows)
            .take(BATCH_ROWS.min(limit - written))
            .collect::<Result<_, _>>()?;
        if chunk.is_empty() {
            break;
        }
        written += chunk.len();
        let batch = batch(&schema, &chunk, dims, dicts, metrics)?;
        w.write(&batch)
            .map_err(|e| format!("cannot write [{}]: {e}", path.display()))?;
    }
    let file = w
        .into_inner()
        .map_err(|e| format!("cannot finish [{}]: {e}", path.display()))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync [{}]: {e}", path.display()))?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Written {
        rows: written as u64,
        bytes,
    })
}

/// The `druid.segment` metadata of a segment file: its schema, granularity and identity, as
/// [`write`] recorded them; read from the file's footer only.
pub fn read_metadata(path: &Path) -> Result<Value, String> {
    let name = path.display();
    let f = File::open(path).map_err(|e| format!("cannot open segment [{name}]: {e}"))?;
    let reader = parquet::file::reader::SerializedFileReader::new(f)
        .map_err(|e| format!("cannot read segment [{name}] as Parquet: {e}"))?;
    let text = parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == METADATA_KEY))
        .and_then(|kv| kv.value.clone())
        .ok_or_else(|| format!("segment [{name}] has no {METADATA_KEY} metadata"))?;
    serde_json::from_str(&text).map_err(|e| format!("segment [{name}]: {METADATA_KEY} is not JSON: {e}"))
}

fn metric_type(v: Val) -> DataType {
    match v {
        Val::Num(Num::Long) => DataType::Int64,
        Val::Num(Num::Float) => DataType::Float32,
        Val::Num(Num::Double) => DataType::Float64,
        Val::String => DataType::Utf8,
    }
}

fn batch(
    schema: &Arc<Schema>,
    rows: &[(Key, Vec<Acc>)],
    dims: &[DimColumn],
    dicts: &[Dict],
    metrics: &[AggregatorSpec],
) -> Result<RecordBatch, String> {
    let empty = Dict::default();
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(1 + dims.len() + metrics.len());
    let times: TimestampMillisecondArray = rows.iter().map(|(k, _)| Some(k.time)).collect();
    cols.push(Arc::new(times.with_timezone("UTC")));
    for (i, d) in dims.iter().enumerate() {
        let value = |k| dim_at(k, i);
        let dict = dicts.get(i).unwrap_or(&empty);
        let col: ArrayRef = match (d.kind, d.multi) {
            (DimType::String, false) => {
                let mut b = StringBuilder::new();
                for (k, _) in rows {
                    match value(k) {
                        DimValue::Null => b.append_null(),
                        DimValue::Str(s) => b.append_value(dict.get(*s)),
                        DimValue::Long(v) => b.append_value(v.to_string()),
                        DimValue::Double(v) => b.append_value(v.to_string()),
                        DimValue::Multi(m) => {
                            let parts: Vec<&str> = m.iter().map(|s| dict.get(*s)).collect();
                            b.append_value(parts.join(","))
                        }
                    }
                }
                Arc::new(b.finish())
            }
            (DimType::String, true) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for (k, _) in rows {
                    match value(k) {
                        DimValue::Null => b.append_null(),
                        DimValue::Multi(m) => {
                            for s in m.iter() {
                                b.values().append_value(dict.get(*s));
                            }
                            b.append(true);
                        }
                        DimValue::Str(s) => {
                            b.values().append_value(dict.get(*s));
                            b.append(true);
                        }
                        DimValue::Long(v) => {
                            b.values().append_value(v.to_string());
                            b.append(true);
                        }
                        DimValue::Double(v) => {
                            b.values().append_value(v.to_string());
                            b.append(true);
                        }
                    }
                }
                Arc::new(b.finish())
            }
            (DimType::Long, _) => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for (k, _) in rows {
                    match value(k) {
                        DimValue::Long(v) => b.append_value(*v),
                        DimValue::Double(v) => b.append_value(*v as i64),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            (DimType::Float, _) => {
                let mut b = Float32Builder::with_capacity(rows.len());
                for (k, _) in rows {
                    match value(k) {
                        DimValue::Long(v) => b.append_value(*v as f32),
                        DimValue::Double(v) => b.append_value(*v as f32),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            (DimType::Double, _) => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for (k, _) in rows {
                    match value(k) {
                        DimValue::Long(v) => b.append_value(*v as f64),
                        DimValue::Double(v) => b.append_value(*v),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        cols.push(col);
    }
    for (i, m) in metrics.iter().enumerate() {
        let col: ArrayRef = match m.output() {
            Val::Num(Num::Long) => {
                let mut b = Int64Builder::with_capacity(rows.len());
                for (_, accs) in rows {
                    b.append_option(match &accs[i] {
                        Acc::Long(v) => *v,
                        Acc::Timed(Some(t)) => match **t {
                            (_, Scalar::Long(v)) => Some(v),
                            _ => None,
                        },
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            Val::Num(Num::Float) => {
                let mut b = Float32Builder::with_capacity(rows.len());
                for (_, accs) in rows {
                    b.append_option(double_of(&accs[i]).map(|v| v as f32));
                }
                Arc::new(b.finish())
            }
            Val::Num(Num::Double) => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for (_, accs) in rows {
                    b.append_option(double_of(&accs[i]));
                }
                Arc::new(b.finish())
            }
            Val::String => {
                let mut b = StringBuilder::new();
                for (_, accs) in rows {
                    match &accs[i] {
                        Acc::Timed(Some(t)) => match &**t {
                            (_, Scalar::Str(s)) => b.append_value(s),
                            _ => b.append_null(),
                        },
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        cols.push(col);
    }
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| e.to_string())
}

fn dim_at(k: &Key, i: usize) -> &DimValue {
    k.dims.get(i).unwrap_or(&DimValue::Null)
}

fn double_of(a: &Acc) -> Option<f64> {
    match a {
        Acc::Double(v) => *v,
        Acc::Long(v) => v.map(|x| x as f64),
        Acc::Timed(Some(t)) => match **t {
            (_, Scalar::Double(v)) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

/// The Druid schema stored in each file's metadata.
pub fn schema_metadata(
    identity: Value,
    dims: &[DimColumn],
    metrics: &[AggregatorSpec],
    query_granularity: &Value,
    rollup: bool,
) -> Value {
    let dimensions: Vec<Value> = dims
        .iter()
        .map(|d| {
            let mut v = json!({"type": d.kind.druid_name(), "name": d.name});
            if d.multi {
                v["multiValueHandling"] = json!("SORTED_ARRAY");
            }
            v
        })
        .collect();
    let metrics_spec: Vec<Value> = metrics
        .iter()
        .map(|m| {
            let mut v = json!({"type": m.kind_name, "name": m.name});
            if let Some(f) = &m.field_name {
                v["fieldName"] = json!(f);
            }
            if let Some(n) = m.max_string_bytes {
                v["maxStringBytes"] = json!(n);
            }
            v
        })
        .collect();
    json!({
        "segment": identity,
        "dimensionsSpec": {"dimensions": dimensions},
        "metricsSpec": metrics_spec,
        "queryGranularity": query_granularity,
        "rollup": rollup,
        "binaryVersion": crate::BINARY_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// A segment of more rows than a batch and a row group: every row is read back in order,
    /// with its values, in row groups of at most `ROW_GROUP_ROWS` rows.
    #[test]
    fn rows_spanning_batches_and_row_groups_read_back_in_order() {
        let task = json!({"type": "index", "spec": {
            "dataSchema": {"dataSource": "d", "timestampSpec": {"column": "t", "format": "millis"},
                "dimensionsSpec": {"dimensions": ["page"]},
                "metricsSpec": [{"type": "longSum", "name": "s", "fieldName": "v"}],
                "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "none"}},
            "ioConfig": {"type": "index", "inputSource": {"type": "inline", "data": ""}, "inputFormat": {"type": "json"}}}});
        let spec = crate::spec::IngestSpec::from_task(&task).unwrap();
        let mut dict = Dict::default();
        let ids: Vec<u32> = (0..100).map(|i| dict.id(&format!("p{i:03}"))).collect();
        let n = ROW_GROUP_ROWS + 3 * BATCH_ROWS + 17;
        let mut rows = (0..n).map(|i| {
            // Every seventh row has no page (trailing nulls are left out of a key).
            let dims = if i % 7 == 0 {
                vec![]
            } else {
                vec![DimValue::Str(ids[i % 100])]
            };
            Ok((Key { time: i as i64, dims }, vec![Acc::Long(Some(2 * i as i64))]))
        });
        let dims = [DimColumn {
            name: "page".into(),
            kind: DimType::String,
            multi: false,
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.parquet");
        let written = write(
            &path,
            &mut rows,
            usize::MAX,
            &dims,
            std::slice::from_ref(&dict),
            &spec.metrics,
            json!({}),
        )
        .unwrap();
        assert_eq!(written.rows, n as u64);
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let groups: Vec<i64> = reader.metadata().row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [ROW_GROUP_ROWS as i64, (n - ROW_GROUP_ROWS) as i64]);
        let mut i = 0;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            let col = |c: usize| batch.column(c).as_any();
            let times = col(0).downcast_ref::<TimestampMillisecondArray>().unwrap();
            let pages = col(1).downcast_ref::<StringArray>().unwrap();
            let sums = col(2).downcast_ref::<Int64Array>().unwrap();
            for r in 0..batch.num_rows() {
                assert_eq!(times.value(r), i as i64);
                if i % 7 == 0 {
                    assert!(pages.is_null(r), "row {i}");
                } else {
                    assert_eq!(pages.value(r), format!("p{:03}", i % 100), "row {i}");
                }
                assert_eq!(sums.value(r), 2 * i as i64);
                i += 1;
            }
        }
        assert_eq!(i, n);
    }
}
