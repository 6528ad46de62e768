//! Reading segments back as input rows (the `druid` input source, Druid's reindexing): each row
//! of each segment file becomes a record with `__time` in milliseconds, the dimensions (a
//! multi-value dimension as a list) and the metrics, under their column names.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::RecordBatch;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Map, Value};

use crate::format::Record;

/// The records of one segment file, in file order, each with its row number (1-based); one
/// batch of rows is decoded at a time.
pub fn records(path: &Path) -> Result<SegmentRows, String> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| format!("cannot open segment [{name}]: {e}"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot read segment [{name}] as Parquet: {e}"))?;
    Ok(SegmentRows {
        name,
        reader,
        batch: None,
        row: 0,
        n: 0,
    })
}

/// Rows of a segment file as records.
pub struct SegmentRows {
    name: String,
    reader: ParquetRecordBatchReader,
    batch: Option<RecordBatch>,
    row: usize,
    n: u64,
}

impl Iterator for SegmentRows {
    type Item = (u64, Result<Record, String>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = &self.batch {
                if self.row < b.num_rows() {
                    let mut m = Map::new();
                    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
                        m.insert(field.name().clone(), value(col, self.row));
                    }
                    self.row += 1;
                    self.n += 1;
                    return Some((self.n, Ok(Record::Json(m))));
                }
            }
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.row = 0;
                }
                Err(e) => return Some((self.n + 1, Err(format!("cannot read: segment [{}]: {e}", self.name)))),
            }
        }
    }
}

fn value(col: &ArrayRef, r: usize) -> Value {
    if col.is_null(r) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Timestamp(_, _) => col
            .as_primitive_opt::<TimestampMillisecondType>()
            .map_or(Value::Null, |a| Value::from(a.value(r))),
        DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(r)),
        DataType::Float64 => {
            serde_json::Number::from_f64(col.as_primitive::<Float64Type>().value(r)).map_or(Value::Null, Value::Number)
        }
        DataType::Float32 => serde_json::Number::from_f64(col.as_primitive::<Float32Type>().value(r) as f64)
            .map_or(Value::Null, Value::Number),
        DataType::Utf8 => Value::from(col.as_string::<i32>().value(r)),
        DataType::List(_) => {
            let items = col.as_list::<i32>().value(r);
            let s = items.as_string::<i32>();
            Value::Array(
                (0..s.len())
                    .map(|i| {
                        if s.is_null(i) {
                            Value::Null
                        } else {
                            Value::from(s.value(i))
                        }
                    })
                    .collect(),
            )
        }
        _ => Value::Null,
    }
}
