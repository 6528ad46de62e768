//! Parquet files as input records: the `parquet` input format, and segments read back for the
//! `druid` input source (Druid's reindexing).
//!
//! Each row becomes a record of its columns by name. Values convert as Druid's Parquet
//! extension does: integers and floating point as numbers, decimals as doubles, timestamps (any
//! unit) and dates as milliseconds since the epoch, strings as strings, binary as base64 unless
//! `binaryAsString`, lists as lists and structs and maps as objects, which a `flattenSpec` can
//! reach into with JSON paths. A segment's `__time` column is a millisecond timestamp, and a
//! multi-value dimension a list, so a segment reads back as the rows it was built from.

use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};
use base64::Engine as _;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Map, Value};

use crate::format::{Flatten, Record};

/// How a Parquet file's values become record fields.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub binary_as_string: bool,
    pub flatten: Option<Flatten>,
}

/// The records of one Parquet file, in file order, each with its row number (1-based); one
/// batch of rows is decoded at a time.
pub fn records(name: String, file: File, options: Options) -> Result<ParquetRows, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| format!("cannot read [{name}] as Parquet: {e}"))?;
    Ok(ParquetRows {
        name,
        reader,
        options,
        batch: None,
        row: 0,
        n: 0,
    })
}

/// The records of one segment file.
pub fn segment_records(path: &Path) -> Result<ParquetRows, String> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| format!("cannot open segment [{name}]: {e}"))?;
    records(name, f, Options::default())
}

/// Rows of a Parquet file as records.
pub struct ParquetRows {
    name: String,
    reader: ParquetRecordBatchReader,
    options: Options,
    batch: Option<RecordBatch>,
    row: usize,
    n: u64,
}

impl Iterator for ParquetRows {
    type Item = (u64, Result<Record, String>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = &self.batch {
                if self.row < b.num_rows() {
                    let mut m = Map::new();
                    for (field, col) in b.schema().fields().iter().zip(b.columns()) {
                        m.insert(field.name().clone(), value(col, self.row, &self.options));
                    }
                    self.row += 1;
                    self.n += 1;
                    let m = match &self.options.flatten {
                        None => m,
                        Some(f) => f.apply(m),
                    };
                    return Some((self.n, Ok(Record::Json(m))));
                }
            }
            match self.reader.next()? {
                Ok(b) => {
                    self.batch = Some(b);
                    self.row = 0;
                }
                Err(e) => return Some((self.n + 1, Err(format!("cannot read: [{}]: {e}", self.name)))),
            }
        }
    }
}

fn number(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// The value at row `r` of `col`.
fn value(col: &ArrayRef, r: usize, o: &Options) -> Value {
    if col.is_null(r) {
        return Value::Null;
    }
    match col.data_type() {
        DataType::Boolean => Value::Bool(col.as_boolean().value(r)),
        DataType::Int8 => Value::from(col.as_primitive::<Int8Type>().value(r)),
        DataType::Int16 => Value::from(col.as_primitive::<Int16Type>().value(r)),
        DataType::Int32 => Value::from(col.as_primitive::<Int32Type>().value(r)),
        DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(r)),
        DataType::UInt8 => Value::from(col.as_primitive::<UInt8Type>().value(r)),
        DataType::UInt16 => Value::from(col.as_primitive::<UInt16Type>().value(r)),
        DataType::UInt32 => Value::from(col.as_primitive::<UInt32Type>().value(r)),
        DataType::UInt64 => Value::from(col.as_primitive::<UInt64Type>().value(r)),
        DataType::Float16 => number(col.as_primitive::<Float16Type>().value(r).to_f64()),
        DataType::Float32 => number(col.as_primitive::<Float32Type>().value(r) as f64),
        DataType::Float64 => number(col.as_primitive::<Float64Type>().value(r)),
        DataType::Decimal128(_, scale) => {
            let raw = col.as_primitive::<Decimal128Type>().value(r) as f64;
            number(raw / 10f64.powi(i32::from(*scale)))
        }
        DataType::Timestamp(unit, _) => Value::from(match unit {
            TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(r).saturating_mul(1000),
            TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(r),
            TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().value(r) / 1000,
            TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(r) / 1_000_000,
        }),
        DataType::Date32 => Value::from(i64::from(col.as_primitive::<Date32Type>().value(r)) * 86_400_000),
        DataType::Date64 => Value::from(col.as_primitive::<Date64Type>().value(r)),
        DataType::Utf8 => Value::from(col.as_string::<i32>().value(r)),
        DataType::LargeUtf8 => Value::from(col.as_string::<i64>().value(r)),
        DataType::Utf8View => Value::from(col.as_string_view().value(r)),
        DataType::Binary => binary(col.as_binary::<i32>().value(r), o),
        DataType::LargeBinary => binary(col.as_binary::<i64>().value(r), o),
        DataType::BinaryView => binary(col.as_binary_view().value(r), o),
        DataType::FixedSizeBinary(_) => binary(col.as_fixed_size_binary().value(r), o),
        DataType::List(_) => list(&col.as_list::<i32>().value(r), o),
        DataType::LargeList(_) => list(&col.as_list::<i64>().value(r), o),
        DataType::FixedSizeList(_, _) => list(&col.as_fixed_size_list().value(r), o),
        DataType::Struct(fields) => {
            let s = col.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), value(c, r, o)))
                    .collect(),
            )
        }
        DataType::Map(_, _) => {
            let entries = col.as_map().value(r);
            let (keys, values) = (entries.column(0), entries.column(1));
            Value::Object(
                (0..entries.len())
                    .map(|i| {
                        let k = match value(keys, i, o) {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        (k, value(values, i, o))
                    })
                    .collect(),
            )
        }
        DataType::Dictionary(_, _) => {
            let d = col.as_any_dictionary();
            let key = d.normalized_keys()[r];
            value(d.values(), key, o)
        }
        _ => Value::Null,
    }
}

fn binary(bytes: &[u8], o: &Options) -> Value {
    if o.binary_as_string {
        Value::from(String::from_utf8_lossy(bytes).into_owned())
    } else {
        Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

fn list(items: &ArrayRef, o: &Options) -> Value {
    Value::Array((0..items.len()).map(|i| value(items, i, o)).collect())
}
