//! Specs run through the library end to end: input read, rows rolled up, Parquet written, and the
//! files read back with the Parquet crate's own reader.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::Array;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

use raftlord_ingest::{read_input, IngestError, IngestSpec};

fn spec(data_schema: Value, io: Value, tuning: Value) -> IngestSpec {
    IngestSpec::from_task(&json!({"type": "index_parallel", "id": "t", "spec": {
        "dataSchema": data_schema, "ioConfig": io, "tuningConfig": tuning}}))
    .unwrap()
}

/// Every row of a file as strings, in file order, plus its key-value metadata.
fn read_back(path: &Path) -> (Vec<String>, Vec<Vec<String>>, Value) {
    let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    let meta = b.metadata().file_metadata().key_value_metadata().unwrap().clone();
    let druid = meta.iter().find(|kv| kv.key == "druid.segment").unwrap();
    let druid: Value = serde_json::from_str(druid.value.as_deref().unwrap()).unwrap();
    let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for batch in b.build().unwrap() {
        let batch = batch.unwrap();
        for r in 0..batch.num_rows() {
            let mut row = Vec::new();
            for c in batch.columns() {
                let v = if c.is_null(r) {
                    "null".to_string()
                } else if let Some(a) = c.as_primitive_opt::<TimestampMillisecondType>() {
                    raftlord_time::interval::iso(a.value(r))
                } else if let Some(a) = c.as_primitive_opt::<Int64Type>() {
                    a.value(r).to_string()
                } else if let Some(a) = c.as_primitive_opt::<Float64Type>() {
                    a.value(r).to_string()
                } else if let Some(a) = c.as_string_opt::<i32>() {
                    a.value(r).to_string()
                } else if let Some(a) = c.as_list_opt::<i32>() {
                    let v = a.value(r);
                    let s = v.as_string::<i32>();
                    (0..s.len()).map(|i| s.value(i)).collect::<Vec<_>>().join("|")
                } else {
                    panic!("unexpected column type {:?}", c.data_type())
                };
                row.push(v);
            }
            rows.push(row);
        }
    }
    (names, rows, druid)
}

const TUTORIAL: &str = r#"{"timestamp":"2018-01-01T01:01:35Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":20,"bytes":9024}
{"timestamp":"2018-01-01T01:01:51Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":255,"bytes":21133}
{"timestamp":"2018-01-01T01:01:59Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":11,"bytes":5780}
{"timestamp":"2018-01-01T01:02:14Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":38,"bytes":6289}
{"timestamp":"2018-01-01T01:02:29Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":377,"bytes":359971}
{"timestamp":"2018-01-01T01:03:29Z","srcIP":"1.1.1.1", "dstIP":"2.2.2.2","packets":49,"bytes":10204}
{"timestamp":"2018-01-02T21:33:14Z","srcIP":"7.7.7.7", "dstIP":"8.8.8.8","packets":38,"bytes":6289}
{"timestamp":"2018-01-02T21:33:45Z","srcIP":"7.7.7.7", "dstIP":"8.8.8.8","packets":123,"bytes":93999}
{"timestamp":"2018-01-02T21:35:45Z","srcIP":"7.7.7.7", "dstIP":"8.8.8.8","packets":12,"bytes":2818}
"#;

#[test]
fn druids_rollup_tutorial_gives_its_documented_result() {
    let s = spec(
        json!({"dataSource": "rollup-tutorial",
            "timestampSpec": {"format": "iso", "column": "timestamp"},
            "dimensionsSpec": {"dimensions": ["srcIP", "dstIP"]},
            "metricsSpec": [{"type": "count", "name": "count"},
                {"type": "longSum", "name": "packets", "fieldName": "packets"},
                {"type": "longSum", "name": "bytes", "fieldName": "bytes"}],
            "granularitySpec": {"type": "uniform", "segmentGranularity": "week", "queryGranularity": "minute",
                "intervals": ["2018-01-01/2018-01-03"], "rollup": true}}),
        json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": TUTORIAL},
            "inputFormat": {"type": "json"}, "appendToExisting": false}),
        json!({"type": "index_parallel", "maxRowsPerSegment": 5000000, "maxRowsInMemory": 25000}),
    );
    let mut got = read_input(&s, None, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(got.stats.processed, 9);
    assert_eq!(
        got.stats.unparseable + got.stats.thrown_away + got.stats.processed_with_error,
        0
    );
    let intervals = got.intervals();
    // 2018-01-01 was a Monday: one week holds both days.
    assert_eq!(intervals.len(), 1);
    assert_eq!(
        intervals[0].to_string(),
        "2018-01-01T00:00:00.000Z/2018-01-08T00:00:00.000Z"
    );
    assert_eq!(got.partitions(&intervals[0]), 1);
    let dir = tempfile::tempdir().unwrap();
    let files = got.write_bucket(&intervals[0], "v1", &[0], dir.path()).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].rows, 5);
    let (names, rows, meta) = read_back(&files[0].path);
    assert_eq!(names, ["__time", "srcIP", "dstIP", "count", "packets", "bytes"]);
    let expect = [
        ["2018-01-01T01:01:00.000Z", "1.1.1.1", "2.2.2.2", "3", "286", "35937"],
        ["2018-01-01T01:02:00.000Z", "1.1.1.1", "2.2.2.2", "2", "415", "366260"],
        ["2018-01-01T01:03:00.000Z", "1.1.1.1", "2.2.2.2", "1", "49", "10204"],
        ["2018-01-02T21:33:00.000Z", "7.7.7.7", "8.8.8.8", "2", "161", "100288"],
        ["2018-01-02T21:35:00.000Z", "7.7.7.7", "8.8.8.8", "1", "12", "2818"],
    ];
    assert_eq!(rows, expect.map(|r| r.map(str::to_string).to_vec()).to_vec());
    assert_eq!(meta["rollup"], true);
    assert_eq!(meta["queryGranularity"], "minute");
    assert_eq!(meta["segment"]["version"], "v1");
    assert_eq!(
        meta["dimensionsSpec"]["dimensions"][0],
        json!({"type": "string", "name": "srcIP"})
    );
    assert_eq!(files[0].bytes, std::fs::metadata(&files[0].path).unwrap().len());
}

#[test]
fn csv_without_rollup_discovers_dimensions_splits_partitions_and_counts_bad_rows() {
    let mut csv = String::from("ts,page,user,added,tags\n");
    for i in 0..10 {
        csv.push_str(&format!(
            "2024-03-0{}T10:00:00Z,p{},u{},{},a|b\n",
            1 + i % 2,
            i % 3,
            i,
            i * 10
        ));
    }
    csv.push_str("not a time,p,u,1,x\n");
    csv.push_str("2023-01-01T00:00:00Z,p,u,1,x\n");
    let s = spec(
        json!({"dataSource": "wiki", "timestampSpec": {"column": "ts"},
            "dimensionsSpec": {"dimensionExclusions": ["user"]},
            "metricsSpec": [{"type": "doubleSum", "name": "added", "fieldName": "added"}],
            "granularitySpec": {"segmentGranularity": "DAY", "rollup": false,
                "intervals": ["2024-03-01/2024-03-03"]}}),
        json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": csv},
            "inputFormat": {"type": "csv", "findColumnsFromHeader": true, "listDelimiter": "|"}}),
        json!({"partitionsSpec": {"type": "dynamic", "maxRowsPerSegment": 2}, "maxSavedParseExceptions": 5}),
    );
    // Discovered dimensions may be any field: every field is read.
    assert_eq!(s.input_fields(), None);
    let mut got = read_input(&s, None, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(got.stats.processed, 10);
    assert_eq!(got.stats.unparseable, 1);
    assert_eq!(got.stats.thrown_away, 1);
    assert_eq!(got.problems.len(), 1);
    assert!(got.problems[0].details[0].contains("Line: 12"), "{:?}", got.problems);
    let day1 = got.intervals()[0];
    assert_eq!(got.partitions(&day1), 3);
    let dir = tempfile::tempdir().unwrap();
    let files = got.write_bucket(&day1, "v", &[0, 1, 2], dir.path()).unwrap();
    assert_eq!(files.iter().map(|f| f.rows).collect::<Vec<_>>(), [2, 2, 1]);
    let (names, rows, _) = read_back(&files[0].path);
    assert_eq!(names, ["__time", "page", "tags", "added"]);
    // Sorted by time, then page: p0 (i=0, 6), then p1 (i=4).
    assert_eq!(rows[0], ["2024-03-01T10:00:00.000Z", "p0", "a|b", "0"]);
    assert_eq!(rows[1], ["2024-03-01T10:00:00.000Z", "p0", "a|b", "60"]);
}

#[test]
fn too_many_parse_exceptions_fail_with_druids_message() {
    let s = spec(
        json!({"dataSource": "d", "timestampSpec": {"column": "t"}}),
        json!({"type": "index", "inputSource": {"type": "inline", "data": "{\"t\": 1}\n{bad\n{bad\n"},
            "inputFormat": {"type": "json"}}),
        json!({"maxParseExceptions": 1}),
    );
    match read_input(&s, None, &mut |_| {}, &mut |_| {}) {
        Err(IngestError::TooManyParseExceptions { max: 1, last }) => assert!(last.contains("Line: 3"), "{last}"),
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("should fail"),
    }
}

#[test]
fn bad_specs_are_refused_naming_the_field() {
    let field = |v: Value| IngestSpec::from_task(&v).unwrap_err().field;
    let base = |ds: Value, io: Value| json!({"type": "index", "spec": {"dataSchema": ds, "ioConfig": io}});
    let ds = json!({"dataSource": "d", "timestampSpec": {"column": "t"}});
    let io = json!({"inputSource": {"type": "inline", "data": ""}, "inputFormat": {"type": "json"}});
    assert!(IngestSpec::from_task(&base(ds.clone(), io.clone())).is_ok());
    assert_eq!(
        field(base(
            ds.clone(),
            json!({"inputSource": {"type": "inline", "data": ""}, "inputFormat": {"type": "xml"}})
        )),
        "spec.ioConfig.inputFormat.type"
    );
    let mut bad = ds.clone();
    bad["metricsSpec"] = json!([{"type": "hyperUnique", "name": "u", "fieldName": "u"}]);
    assert_eq!(field(base(bad, io.clone())), "spec.dataSchema.metricsSpec[0].type");
    let mut bad = ds.clone();
    bad["granularitySpec"] = json!({"segmentGranularity": "HOUR", "queryGranularity": "DAY"});
    assert_eq!(
        field(base(bad, io.clone())),
        "spec.dataSchema.granularitySpec.queryGranularity"
    );
    let mut bad = ds.clone();
    bad["granularitySpec"] = json!({"intervals": ["yesterday"]});
    assert_eq!(
        field(base(bad, io.clone())),
        "spec.dataSchema.granularitySpec.intervals[0]"
    );
    let mut bad = ds.clone();
    bad["timestampSpec"]["format"] = json!("yyyy-qq");
    assert_eq!(field(base(bad, io.clone())), "spec.dataSchema.timestampSpec.format");
    let mut bad = base(ds.clone(), io.clone());
    bad["spec"]["tuningConfig"] = json!({"maxRowsInMemory": 5_000_000_000u64});
    assert_eq!(field(bad), "spec.tuningConfig.maxRowsInMemory");
    assert_eq!(field(json!({"type": "index", "dataSchema": {}})), "dataSchema");
    assert_eq!(
        field(json!({"type": "index", "spec": {"dataSchema": {"dataSource": 5}, "ioConfig": {}}})),
        "spec.dataSchema.dataSource"
    );
    assert_eq!(
        field(base(ds, json!({"firehose": {}, "inputFormat": {"type": "json"}}))),
        "spec.ioConfig.firehose"
    );
}

/// The rows of every file of `got`, in order, as strings.
fn all_rows(got: &mut raftlord_ingest::Ingested, dir: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for iv in got.intervals() {
        let n = got.partitions(&iv);
        let nums: Vec<u32> = (0..n as u32).collect();
        for f in got.write_bucket(&iv, "v", &nums, dir).unwrap() {
            out.extend(read_back(&f.path).1);
        }
    }
    out
}

/// Spilling sorted runs and merging them gives exactly what holding everything in memory gives:
/// the same rows, the same order, rollup combined across runs (sums, min, first and last). Both
/// ways a merge happens: into one merged run first (several partitions of at most 10 rows), and
/// while the one partition is written (everything fits one segment before merging).
#[test]
fn spilled_runs_merge_to_the_same_rows_as_memory() {
    let mut data = String::new();
    for i in 0..500u64 {
        // Keys repeat across the whole input, so equal rows land in different runs.
        data.push_str(&format!(
            "{{\"t\": \"2024-01-0{}T{:02}:{:02}:00Z\", \"a\": \"k{}\", \"b\": \"z{}\", \"n\": {}}}\n",
            1 + i % 3,
            i % 24,
            i % 7,
            (i * 7) % 11,
            (i / 5) % 4,
            i
        ));
    }
    for (rollup, per_segment) in [(true, 10), (false, 10), (true, 1_000_000), (false, 1_000_000)] {
        let make = |max_in_memory: u64| {
            spec(
                json!({"dataSource": "d", "timestampSpec": {"column": "t"},
                    "dimensionsSpec": {"dimensions": ["a", "b"]},
                    "metricsSpec": [{"type": "count", "name": "c"}, {"type": "longSum", "name": "s", "fieldName": "n"},
                        {"type": "longMin", "name": "lo", "fieldName": "n"},
                        {"type": "longFirst", "name": "f", "fieldName": "n"},
                        {"type": "longLast", "name": "l", "fieldName": "n"}],
                    "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "DAY", "rollup": rollup}}),
                json!({"type": "index", "inputSource": {"type": "inline", "data": data},
                    "inputFormat": {"type": "json"}}),
                json!({"maxRowsInMemory": max_in_memory, "maxRowsPerSegment": per_segment}),
            )
        };
        let spill = tempfile::tempdir().unwrap();
        let out_a = tempfile::tempdir().unwrap();
        let out_b = tempfile::tempdir().unwrap();
        let mut in_memory = read_input(&make(1_000_000), None, &mut |_| {}, &mut |_| {}).unwrap();
        let mut spilled = read_input(&make(7), Some(spill.path()), &mut |_| {}, &mut |_| {}).unwrap();
        let merged_first = per_segment == 10;
        assert_eq!(spilled.rows_exact(), merged_first, "rollup {rollup}");
        if merged_first {
            assert_eq!(spilled.rows(), in_memory.rows(), "rollup {rollup}");
        } else {
            // Counted before the merge: an upper bound of the rolled-up rows.
            assert!(spilled.rows() >= in_memory.rows(), "rollup {rollup}");
            assert!(spilled.rows() <= 500, "rollup {rollup}");
        }
        let expect = all_rows(&mut in_memory, out_a.path());
        let got = all_rows(&mut spilled, out_b.path());
        if merged_first {
            assert!(expect.len() > 10, "several partitions: {}", expect.len());
        }
        if rollup {
            assert!(expect.len() < 500, "rows must roll up: {}", expect.len());
        }
        // Without rollup, rows with equal time and dimensions may come in any order.
        let (mut got, mut expect) = (got, expect);
        if !rollup {
            got.sort();
            expect.sort();
        }
        assert!(
            got == expect,
            "rollup {rollup}: the spilled rows differ from the in-memory rows"
        );
        // Nothing is left in the spill directory once written.
        assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
    }
}

/// A Parquet input file as Druid users have them: a microsecond timestamp, a nested struct a
/// flattenSpec reaches into, a list of strings, a 32-bit integer and a binary column, written
/// by the Parquet crate's own writer and read from a local file.
#[test]
fn parquet_input_with_nested_fields_and_binary_as_string() {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{
        ArrayRef, BinaryArray, Int32Array, RecordBatch, StringArray, StructArray, TimestampMicrosecondArray,
    };
    use arrow_schema::{DataType, Field};

    let dir = tempfile::tempdir().unwrap();
    let day = 1_709_251_200_000_000i64; // 2024-03-01T00:00:00Z in microseconds
    let ts: ArrayRef =
        Arc::new(TimestampMicrosecondArray::from(vec![day + 1, day + 3_600_000_000, day + 2]).with_timezone("UTC"));
    let page: ArrayRef = Arc::new(StringArray::from(vec!["Main", "Talk", "Main"]));
    let user: ArrayRef = Arc::new(StructArray::from(vec![
        (
            Arc::new(Field::new("name", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec!["ann", "bob", "cy"])) as ArrayRef,
        ),
        (
            Arc::new(Field::new("country", DataType::Utf8, true)),
            Arc::new(StringArray::from(vec![Some("NL"), None, Some("NL")])) as ArrayRef,
        ),
    ]));
    let mut tags = ListBuilder::new(StringBuilder::new());
    for row in [vec!["a", "b"], vec![], vec!["a", "b"]] {
        for t in row {
            tags.values().append_value(t);
        }
        tags.append(true);
    }
    let tags: ArrayRef = Arc::new(tags.finish());
    let added: ArrayRef = Arc::new(Int32Array::from(vec![5, 7, 11]));
    let bin: ArrayRef = Arc::new(BinaryArray::from(vec![&b"x"[..], b"y", b"x"]));
    let batch = RecordBatch::try_from_iter([
        ("ts", ts),
        ("page", page),
        ("user", user),
        ("tags", tags),
        ("added", added),
        ("bin", bin),
    ])
    .unwrap();
    let path = dir.path().join("in.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();

    let s = spec(
        json!({"dataSource": "wiki", "timestampSpec": {"column": "ts", "format": "millis"},
            "dimensionsSpec": {"dimensions": ["page", "country", "tags", "bin"]},
            "metricsSpec": [{"type": "count", "name": "count"}, {"type": "longSum", "name": "added", "fieldName": "added"}],
            "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "hour", "rollup": true}}),
        json!({"type": "index_parallel", "inputSource": {"type": "local", "baseDir": dir.path(), "filter": "*.parquet"},
            "inputFormat": {"type": "parquet", "binaryAsString": true,
                "flattenSpec": {"fields": [{"type": "path", "name": "country", "expr": "$.user.country"}]}}}),
        json!({}),
    );
    let mut got = read_input(&s, Some(dir.path()), &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(got.stats.processed, 3);
    assert_eq!(got.stats.unparseable + got.stats.processed_with_error, 0);
    let out = tempfile::tempdir().unwrap();
    let rows = all_rows(&mut got, out.path());
    assert_eq!(
        rows,
        vec![
            vec!["2024-03-01T00:00:00.000Z", "Main", "NL", "a|b", "x", "2", "16"],
            vec!["2024-03-01T01:00:00.000Z", "Talk", "null", "null", "y", "1", "7"],
        ]
    );
    // Without binaryAsString, binary is base64, as in Druid.
    let mut s64 = s.clone();
    if let raftlord_ingest::format::InputFormat::Parquet { binary_as_string, .. } = &mut s64.format {
        *binary_as_string = false;
    }
    let mut got = read_input(&s64, Some(dir.path()), &mut |_| {}, &mut |_| {}).unwrap();
    let rows = all_rows(&mut got, out.path());
    assert_eq!(rows[0][4], "eA==");
}

/// transformSpec: rows the filter rejects are thrown away and counted, the rest rolled up as
/// before; expression transforms write fields the filter, dimensions and metrics then read; a
/// function this version lacks is refused naming the field and the function.
#[test]
fn transform_spec_filters_and_expression_transforms_shape_the_rows() {
    let schema = |transform: Value| {
        json!({"dataSource": "rollup-tutorial",
            "timestampSpec": {"format": "iso", "column": "timestamp"},
            "dimensionsSpec": {"dimensions": ["srcIP", "dstIP"]},
            "metricsSpec": [{"type": "count", "name": "count"},
                {"type": "longSum", "name": "packets", "fieldName": "packets"}],
            "granularitySpec": {"segmentGranularity": "week", "queryGranularity": "minute", "rollup": true},
            "transformSpec": transform})
    };
    let io = json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": TUTORIAL},
        "inputFormat": {"type": "json"}});
    let s = spec(
        schema(json!({"filter": {"type": "or", "fields": [
            {"type": "selector", "dimension": "srcIP", "value": "7.7.7.7"},
            {"type": "bound", "dimension": "packets", "lower": "300", "ordering": "numeric"}]}})),
        io.clone(),
        json!({}),
    );
    let mut got = read_input(&s, None, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!(got.stats.processed, 4);
    assert_eq!(got.stats.thrown_away, 5);
    let dir = tempfile::tempdir().unwrap();
    let rows = all_rows(&mut got, dir.path());
    let packets: Vec<&str> = rows.iter().map(|r| r[4].as_str()).collect();
    assert_eq!(packets, ["377", "161", "12"], "{rows:?}");

    // Transforms: a new dimension from two fields, a metric input computed, and a filter on a
    // transform's output.
    let mut with_route = schema(json!({
        "transforms": [
            {"type": "expression", "name": "srcIP", "expression": "concat(srcIP, '->', dstIP)"},
            {"type": "expression", "name": "packets", "expression": "packets * 10"},
            {"type": "expression", "name": "big", "expression": "if(packets >= 100, 'yes', 'no')"}],
        "filter": {"type": "selector", "dimension": "big", "value": "yes"}}));
    with_route["dimensionsSpec"]["dimensions"] = json!(["srcIP"]);
    let s = spec(with_route, io.clone(), json!({}));
    // Only these fields are read out of each line: what the transforms and the filter read
    // (dstIP, not a dimension any more, and big, a transform's output) and the rest.
    assert_eq!(
        s.input_fields(),
        Some(vec!["big", "dstIP", "packets", "srcIP", "timestamp"])
    );
    let mut got = read_input(&s, None, &mut |_| {}, &mut |_| {}).unwrap();
    assert_eq!((got.stats.processed, got.stats.thrown_away), (3, 6));
    let rows = all_rows(&mut got, dir.path());
    let got_rows: Vec<(&str, &str)> = rows.iter().map(|r| (r[1].as_str(), r[3].as_str())).collect();
    assert_eq!(
        got_rows,
        [
            ("1.1.1.1->2.2.2.2", "2550"),
            ("1.1.1.1->2.2.2.2", "3770"),
            ("7.7.7.7->8.8.8.8", "1230")
        ]
    );

    let err = IngestSpec::from_task(&json!({"type": "index_parallel", "spec": {
        "dataSchema": schema(json!({"transforms": [{"type": "expression", "name": "x", "expression": "json_value(srcIP, '$.a')"}]})),
        "ioConfig": io.clone()}}))
    .unwrap_err();
    assert_eq!(err.field, "spec.dataSchema.transformSpec.transforms[0].expression");
    assert!(err.message.contains("[json_value]"), "{err:?}");
    let err = IngestSpec::from_task(&json!({"type": "index_parallel", "spec": {
        "dataSchema": schema(json!({"filter": {"type": "and", "fields": [{"type": "regex", "dimension": "srcIP", "pattern": "["}]}})),
        "ioConfig": io}}))
    .unwrap_err();
    assert_eq!(err.field, "spec.dataSchema.transformSpec.filter.fields[0].pattern");
}

/// Hashed partitioning: numShards files per interval, every row of one partition-dimension
/// value in the same file, the same files whether rows stayed in memory or spilled to runs;
/// targetRowsPerSegment sets the shard count from the rows; bad specs name the field.
#[test]
fn hashed_partitions_keep_each_key_in_one_shard_in_memory_and_spilled() {
    let mut data = String::new();
    for i in 0..600u64 {
        data.push_str(&format!(
            "{{\"t\": \"2024-01-01T{:02}:00:00Z\", \"page\": \"p{}\", \"user\": \"u{}\", \"n\": {}}}\n",
            i % 24,
            i % 37,
            i % 5,
            i
        ));
    }
    let make = |partitions: Value, max_in_memory: u64| {
        spec(
            json!({"dataSource": "d", "timestampSpec": {"column": "t"},
                "dimensionsSpec": {"dimensions": ["page", "user"]},
                "metricsSpec": [{"type": "count", "name": "c"}, {"type": "longSum", "name": "s", "fieldName": "n"}],
                "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "hour"}}),
            json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": data},
                "inputFormat": {"type": "json"}}),
            json!({"partitionsSpec": partitions, "maxRowsInMemory": max_in_memory, "forceGuaranteedRollup": true}),
        )
    };
    let shards_of = |partitions: Value, max_in_memory: u64| {
        let s = make(partitions, max_in_memory);
        let dir = tempfile::tempdir().unwrap();
        let mut got = read_input(&s, Some(dir.path()), &mut |_| {}, &mut |_| {}).unwrap();
        let iv = got.intervals()[0];
        let n = got.partitions(&iv);
        let files = got
            .write_bucket(&iv, "v", &(0..n as u32).collect::<Vec<_>>(), dir.path())
            .unwrap();
        files.iter().map(|f| read_back(&f.path).1).collect::<Vec<_>>()
    };
    let by_page = json!({"type": "hashed", "numShards": 3, "partitionDimensions": ["page"]});
    let in_memory = shards_of(by_page.clone(), 1_000_000);
    assert_eq!(in_memory.len(), 3);
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (k, rows) in in_memory.iter().enumerate() {
        assert!(!rows.is_empty(), "shard {k} is empty");
        for r in rows {
            assert_eq!(
                *owner.entry(r[1].clone()).or_insert(k),
                k,
                "page {} in two shards",
                r[1]
            );
        }
    }
    let total: u64 = in_memory.iter().flatten().map(|r| r[3].parse::<u64>().unwrap()).sum();
    assert_eq!(total, 600);
    assert_eq!(shards_of(by_page, 50), in_memory, "spilled runs give the same shards");
    // Without partitionDimensions: the time and every dimension decide, rows still whole.
    let all = shards_of(json!({"type": "hashed", "numShards": 4}), 1_000_000);
    assert_eq!(
        all.iter().map(Vec::len).sum::<usize>(),
        in_memory.iter().map(Vec::len).sum::<usize>()
    );
    // 24 hours x 37 pages rolled up: 600 rows, so 200 per segment means 3 shards.
    assert_eq!(
        shards_of(json!({"type": "hashed", "targetRowsPerSegment": 200}), 1_000_000).len(),
        3
    );

    let err = |p: Value| {
        IngestSpec::from_task(&json!({"type": "index_parallel", "spec": {
            "dataSchema": {"dataSource": "d", "timestampSpec": {"column": "t"}},
            "ioConfig": {"type": "index_parallel", "inputSource": {"type": "inline", "data": "x"}, "inputFormat": {"type": "json"}},
            "tuningConfig": {"partitionsSpec": p}}}))
        .unwrap_err()
        .field
    };
    assert_eq!(
        err(json!({"type": "hashed", "numShards": 2, "targetRowsPerSegment": 5})),
        "spec.tuningConfig.partitionsSpec.numShards"
    );
    assert_eq!(
        err(json!({"type": "hashed", "numShards": 0})),
        "spec.tuningConfig.partitionsSpec.numShards"
    );
    assert_eq!(
        err(json!({"type": "sketched"})),
        "spec.tuningConfig.partitionsSpec.type"
    );
    assert_eq!(
        err(json!({"type": "range"})),
        "spec.tuningConfig.partitionsSpec.partitionDimensions"
    );
    assert_eq!(
        err(json!({"type": "single_dim", "targetRowsPerSegment": 0, "partitionDimension": "p"})),
        "spec.tuningConfig.partitionsSpec.targetRowsPerSegment"
    );
}

/// The merge phase of hashed parallel ingestion writes only the buckets it was given; a row
/// hashing elsewhere (a bucketing that disagreed between the phases) fails the write instead of
/// being dropped, in memory and after spilling.
#[test]
fn writing_some_hash_buckets_refuses_to_drop_rows_of_the_others() {
    let schema = json!({"dataSource": "rollup-tutorial",
        "timestampSpec": {"format": "iso", "column": "timestamp"},
        "dimensionsSpec": {"dimensions": ["srcIP", "dstIP"]},
        "metricsSpec": [{"type": "count", "name": "count"}],
        "granularitySpec": {"segmentGranularity": "week", "queryGranularity": "minute", "rollup": true}});
    let io = json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": TUTORIAL},
        "inputFormat": {"type": "json"}});
    let tuning = json!({"partitionsSpec": {"type": "hashed", "numShards": 2, "partitionDimensions": ["srcIP"]},
        "maxRowsInMemory": 2});
    let s = spec(schema, io, tuning);
    for spill in [false, true] {
        let spill_dir = tempfile::tempdir().unwrap();
        let read = || read_input(&s, spill.then(|| spill_dir.path()), &mut |_| {}, &mut |_| {}).unwrap();
        let mut got = read();
        let iv = got.intervals()[0];
        let out = tempfile::tempdir().unwrap();
        // Both buckets, numbered 5 and 9: every row is written.
        let files = got
            .write_hashed_buckets(&iv, "v", 2, &[(0, 5), (1, 9)], out.path())
            .unwrap();
        let nums: Vec<u32> = files.iter().map(|f| f.partition_num).collect();
        assert_eq!(nums, [5, 9]);
        let total: u64 = files.iter().map(|f| f.rows).sum();
        assert!(files.iter().all(|f| f.rows > 0), "both buckets hold rows: {files:?}");
        // One bucket only: the other's rows would be lost, so the write fails.
        let mut got = read();
        let err = got
            .write_hashed_buckets(&iv, "v", 2, &[(1, 0)], out.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("of its {total} rows")), "spill {spill}: {err}");
        // A bucket past the count is refused before anything is written.
        let mut got = read();
        assert!(got.write_hashed_buckets(&iv, "v", 2, &[(2, 0)], out.path()).is_err());
    }
}

/// The cardinality phase: each input's sketch of its distinct group keys, merged, estimates
/// the distinct keys of all inputs together (keys seen by both counted once), within HLL's
/// error at Druid's lgK 11; small sets are counted exactly.
#[test]
fn group_key_sketches_of_overlapping_inputs_merge_to_the_distinct_count() {
    let read = |pages: std::ops::Range<u32>| {
        let data: String = pages
            .map(|p| {
                format!(
                    "{{\"timestamp\":\"2018-01-01T01:00:00Z\",\"page\":\"p{p}\",\"user\":\"u{}\"}}\n",
                    p % 7
                )
            })
            .collect();
        let s = spec(
            json!({"dataSource": "d", "timestampSpec": {"format": "iso", "column": "timestamp"},
                "dimensionsSpec": {"dimensions": ["page", "user"]},
                "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "hour", "rollup": true}}),
            json!({"type": "index_parallel", "inputSource": {"type": "inline", "data": data},
                "inputFormat": {"type": "json"}}),
            json!({"partitionsSpec": {"type": "hashed", "targetRowsPerSegment": 100, "partitionDimensions": ["page"]}}),
        );
        let got = read_input(&s, None, &mut |_| {}, &mut |_| {}).unwrap();
        let sketches = got.group_key_sketches().unwrap();
        assert_eq!(sketches.len(), 1);
        sketches.into_values().next().unwrap()
    };
    let (a, b) = (read(0..20_000), read(10_000..30_000));
    let both = raftlord_ingest::estimate_distinct(&[a.as_str(), b.as_str()]).unwrap();
    assert!((both - 30_000.0).abs() < 30_000.0 * 0.05, "{both}");
    let one = raftlord_ingest::estimate_distinct(&[a.as_str()]).unwrap();
    assert!((one - 20_000.0).abs() < 20_000.0 * 0.05, "{one}");
    let small = read(0..12);
    assert_eq!(
        raftlord_ingest::estimate_distinct(&[small.as_str()]).unwrap().round(),
        12.0
    );
    assert!(raftlord_ingest::estimate_distinct(&["not a sketch"]).is_err());
}
