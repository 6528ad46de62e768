//! DataSegment JSON, ids, and the table's apply functions and queries.

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn seg(ds: &str, interval: &str, version: &str, partition: u32, partitions: u32) -> DataSegment {
    DataSegment::parse(
        &json!({
            "dataSource": ds, "interval": interval, "version": version,
            "loadSpec": {"type": "local", "path": "/tmp/x.zip"},
            "dimensions": ["page", "user"], "metrics": "count",
            "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": partitions},
            "binaryVersion": 9, "size": 1024
        })
        .to_string(),
    )
    .unwrap()
}

fn to_json(s: &DataSegment) -> serde_json::Value {
    serde_json::to_value(DataSegmentJson::of(s)).unwrap()
}

#[test]
fn data_segment_json_is_druids() {
    let s = seg("wiki_edits", "2024-01-01/2024-01-02", "2024-05-01T00:00:00.000Z", 3, 4);
    assert_eq!(
        to_json(&s),
        json!({
            "dataSource": "wiki_edits",
            "interval": "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z",
            "version": "2024-05-01T00:00:00.000Z",
            "loadSpec": {"type": "local", "path": "/tmp/x.zip"},
            "dimensions": "page,user", "metrics": "count",
            "shardSpec": {"type": "numbered", "partitionNum": 3, "partitions": 4},
            "binaryVersion": 9, "size": 1024,
            "identifier": "wiki_edits_2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z_2024-05-01T00:00:00.000Z_3"
        })
    );
    // Defaults: numbered 0 of 1, partition suffix omitted.
    let minimal = DataSegment::parse(r#"{"dataSource":"w","interval":"2024/2025","version":"v1"}"#).unwrap();
    let v = to_json(&minimal);
    assert_eq!(
        v["shardSpec"],
        json!({"type": "numbered", "partitionNum": 0, "partitions": 1})
    );
    assert_eq!(
        v["identifier"],
        "w_2024-01-01T00:00:00.000Z_2025-01-01T00:00:00.000Z_v1"
    );
    assert_eq!((v["dimensions"].as_str(), v["loadSpec"].clone()), (Some(""), json!({})));
}

#[test]
fn bad_segments_are_refused_with_a_reason() {
    let bad = [
        (r#"{"dataSource":"","interval":"2024/2025","version":"v"}"#, "empty"),
        (r#"{"dataSource":"a/b","interval":"2024/2025","version":"v"}"#, "'/'"),
        (
            r#"{"dataSource":"a","interval":"2025/2024","version":"v"}"#,
            "before the start",
        ),
        (r#"{"dataSource":"a","interval":"x","version":"v"}"#, "invalid interval"),
        (r#"{"dataSource":"a","interval":"2024/2025","version":""}"#, "version"),
        (
            r#"{"dataSource":"a","interval":"2024/2025","version":"v","size":-1}"#,
            "negative",
        ),
        (
            r#"{"dataSource":"a","interval":"2024/2025","version":"v","shardSpec":{"type":"magic"}}"#,
            "unknown shardSpec",
        ),
    ];
    for (json, want) in bad {
        let e = DataSegment::parse(json).unwrap_err();
        assert!(e.contains(want), "{json}: {e}");
    }
}

#[test]
fn segment_ids_parse_back_even_with_underscores() {
    let s = seg("my_ds", "2024-01-01/2024-01-02", "v_1", 0, 1);
    let keys = SegmentKey::parse_id("my_ds", &s.id());
    assert!(keys.contains(&s.key), "{keys:?}");
    let p = seg("my_ds", "2024-01-01/2024-01-02", "v", 7, 8);
    assert_eq!(SegmentKey::parse_id("my_ds", &p.id())[1], p.key);
    assert!(SegmentKey::parse_id("my_ds", "my_ds_garbage").is_empty());
    assert!(SegmentKey::parse_id("other", &p.id()).is_empty());
    let mut t = SegmentTable::default();
    t.apply_insert(0, vec![s.clone(), p.clone()]);
    assert_eq!(t.find_id("my_ds", &p.id()).unwrap().0, p.key);
    assert_eq!(t.find_id("my_ds", &s.id()).unwrap().0, s.key);
}

#[test]
fn insert_skips_existing_ids_and_marking_changes_only_what_matches() {
    let mut t = SegmentTable::default();
    let day1 = seg("w", "2024-01-01/2024-01-02", "v1", 0, 1);
    let day2 = seg("w", "2024-01-02/2024-01-03", "v1", 0, 1);
    assert_eq!(t.apply_insert(10, vec![day1.clone(), day2.clone()]).len(), 2);
    assert!(t.apply_insert(20, vec![day1.clone()]).is_empty());
    let ds = t.datasource("w").unwrap();
    assert_eq!((ds.used_count(), ds.get(&day1.key).unwrap().created_ms), (2, 10));

    let jan1 = SegmentFilter::Interval {
        interval: Interval::parse("2024-01-01/2024-01-02").unwrap(),
        versions: None,
    };
    assert_eq!(t.apply_mark_unused(30, "w", &jan1), vec![day1.key.clone()]);
    assert!(t.apply_mark_unused(31, "w", &jan1).is_empty());
    let ds = t.datasource("w").unwrap();
    assert_eq!(ds.used_count(), 1);
    assert_eq!(ds.get(&day1.key).unwrap().used_updated_ms, 30);
    assert_eq!(t.apply_mark_used(40, "w", &SegmentFilter::All), vec![day1.key.clone()]);
    assert!(t.apply_mark_unused(50, "nope", &SegmentFilter::All).is_empty());
}

#[test]
fn mark_used_leaves_overshadowed_segments_unused() {
    let mut t = SegmentTable::default();
    let old = seg("w", "2024-01-01/2024-01-02", "v1", 0, 1);
    let new = seg("w", "2024-01-01/2024-01-02", "v2", 0, 1);
    t.apply_insert(0, vec![old.clone(), new.clone()]);
    assert_eq!(
        t.datasource("w").unwrap().overshadowed(),
        HashSet::from([old.key.clone()])
    );
    t.apply_mark_unused(1, "w", &SegmentFilter::All);
    // Marking both used: the newer complete version wins, the older stays unused.
    assert_eq!(t.apply_mark_used(2, "w", &SegmentFilter::All), vec![new.key.clone()]);
    assert!(!t.datasource("w").unwrap().get(&old.key).unwrap().used);
}

proptest! {
    #[test]
    fn interval_queries_match_a_scan(
        segs in proptest::collection::vec((0..50i64, 1..20i64), 0..40),
        q in (0..60i64, 0..20i64),
    ) {
        let mut t = SegmentTable::default();
        let list: Vec<DataSegment> = segs.iter().enumerate().map(|(i, (s, len))| {
            let mut d = seg("w", "2024/2025", &format!("v{i}"), 0, 1);
            d.key.start = *s;
            d.key.end = s + len;
            d
        }).collect();
        t.apply_insert(0, list);
        let q = Interval::new(q.0, q.0 + q.1).unwrap();
        let Some(ds) = t.datasource("w") else { return Ok(()); };
        let got: Vec<&SegmentKey> = ds.overlapping(&q).map(|(k, _)| k).collect();
        let want: Vec<&SegmentKey> = ds.all().map(|(k, _)| k).filter(|k| k.interval().overlaps(&q)).collect();
        prop_assert_eq!(got, want);
    }
}

/// The stored forms are part of the snapshot format: one per segment, so compact.
#[test]
fn stored_segment_and_key_forms_are_compact_and_read_back() {
    let s = seg("w", "2024-01-01/2024-01-02", "v1", 1, 2);
    let key = serde_json::to_string(&s.key).unwrap();
    assert_eq!(key, r#"[1704067200000,1704153600000,"v1",1]"#);
    assert_eq!(serde_json::from_str::<SegmentKey>(&key).unwrap(), s.key);
    let stored = s.clone().into_stored(5);
    let text = serde_json::to_string(&stored).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        json!({"l": {"type": "local", "path": "/tmp/x.zip"}, "d": "page,user", "m": "count",
               "s": {"type": "numbered", "partitionNum": 1, "partitions": 2}, "b": 9, "z": 1024,
               "u": true, "ut": 5, "ct": 5})
    );
    let back: StoredSegment = serde_json::from_str(&text).unwrap();
    assert_eq!(back, stored);
    assert_eq!(back.shard_spec.core_partitions, Some(2));
}
