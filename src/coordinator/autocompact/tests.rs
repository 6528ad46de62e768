use super::*;
use crate::segments::DataSegment;
use crate::workers::{AuditInfo, Worker};

const DAY: i64 = 86_400_000;
/// 2026-06-01T00:00Z.
const NOW: u64 = 1_780_272_000_000;

fn segment(day: i64, partition: u32, state: Option<Value>) -> DataSegment {
    let start = NOW as i64 - day * DAY;
    let mut v = json!({
        "dataSource": "wiki",
        "interval": format!("{}/{}", iso(start), iso(start + DAY)),
        "version": if state.is_some() { "v2" } else { "v1" },
        "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": 0},
        "size": 100,
    });
    if let Some(s) = state {
        v["lastCompactionState"] = s;
    }
    DataSegment::parse(&v.to_string()).unwrap()
}

fn compacted_state() -> Value {
    json!({"partitionsSpec": {"type": "dynamic", "maxRowsPerSegment": 5_000_000},
        "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "HOUR", "rollup": true}})
}

/// Days 1..=5 ago with three appended partitions each; compaction configured with
/// `skipOffsetFromLatest` `skip`; one 4-slot worker.
fn state(skip: &str) -> State {
    let mut s = State::default();
    s.workers.apply_register(
        0,
        Worker {
            scheme: "http".into(),
            host: "w:8091".into(),
            ip: "w".into(),
            capacity: 4,
            version: "0".into(),
            category: crate::workers::DEFAULT_CATEGORY.into(),
        },
    );
    for day in 1..=5 {
        s.segments
            .apply_insert(0, (0..3).map(|p| segment(day, p, None)).collect());
    }
    let config = crate::coordinator::compaction::DatasourceCompactionConfig::parse(&json!({
        "dataSource": "wiki", "skipOffsetFromLatest": skip,
        "granularitySpec": {"segmentGranularity": "DAY"}
    }))
    .unwrap();
    s.coordinator
        .compaction
        .apply_set(0, "wiki", Some(config), AuditInfo::default());
    s.coordinator.compaction.slots.compaction_task_slot_ratio = 1.0;
    s
}

#[test]
fn fragmented_days_await_compaction_newest_first_and_the_latest_are_skipped() {
    let s = state("P2D");
    let snap = &status(&s, Some("wiki"))[0];
    // The latest data ends today at 00:00 minus 0 days (day 1 ends at NOW); P2D skips days 1
    // and 2.
    assert_eq!(snap.interval_count_skipped, 2);
    assert_eq!(snap.interval_count_awaiting_compaction, 3);
    assert_eq!(snap.segment_count_awaiting_compaction, 9);
    assert_eq!(snap.bytes_awaiting_compaction, 900);
    let tasks = plan_compactions(&s, NOW);
    let days: Vec<i64> = tasks.iter().map(|t| (NOW as i64 - t.interval.start) / DAY).collect();
    assert_eq!(days, vec![3, 4, 5], "newest first");
    let spec = &tasks[0].spec;
    assert_eq!(spec["type"], "compact");
    assert_eq!(spec["ioConfig"]["inputSpec"]["type"], "interval");
    assert_eq!(spec["granularitySpec"]["segmentGranularity"], "DAY");
    assert!(spec["id"].as_str().unwrap().starts_with(TASK_PREFIX));
    crate::tasks::spec::parse_submission(spec.to_string().as_bytes(), NOW, &mut rand::rng())
        .expect("the task reads as a submission");
}

#[test]
fn a_compacted_chunk_is_done_and_one_being_compacted_is_passed_over_not_waited_on() {
    let mut s = state("PT0S");
    // Day 5 compacted into one segment matching the config.
    s.segments.apply_insert(0, vec![segment(5, 0, Some(compacted_state()))]);
    let snap = &status(&s, Some("wiki"))[0];
    assert_eq!(snap.interval_count_compacted, 1);
    assert_eq!(snap.interval_count_awaiting_compaction, 4);
    // A long compaction of day 1 holds its lock: the others still get tasks.
    let day1 = Interval {
        start: NOW as i64 - DAY,
        end: NOW as i64,
    };
    let task = crate::tasks::spec::parse_submission(
        json!({"type": "compact", "id": "long", "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": day1.to_string()}}})
        .to_string()
        .as_bytes(),
        NOW,
        &mut rand::rng(),
    )
    .unwrap();
    s.tasks.apply_submit(1, NOW, task, None).unwrap();
    let tasks = plan_compactions(&s, NOW);
    let days: Vec<i64> = tasks.iter().map(|t| (NOW as i64 - t.interval.start) / DAY).collect();
    assert_eq!(days, vec![2, 3, 4], "3 free slots (4 - 1 active), day 1 passed over");
}

#[test]
fn compaction_tasks_stay_within_their_slots() {
    let mut s = state("PT0S");
    s.coordinator.compaction.slots.compaction_task_slot_ratio = 0.1;
    // 4 slots x 0.1 rounds down to 0: at least one.
    assert_eq!(plan_compactions(&s, NOW).len(), 1);
    s.coordinator.compaction.slots.max_compaction_task_slots = 0;
    assert!(plan_compactions(&s, NOW).is_empty());
}
