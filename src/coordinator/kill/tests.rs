use super::*;
use crate::segments::{DataSegment, SegmentFilter};
use crate::workers::Worker;

const DAY: i64 = 86_400_000;
/// 2026-06-01T00:00Z.
const NOW: u64 = 1_780_272_000_000;

fn segment(ds: &str, day: i64) -> DataSegment {
    let start = NOW as i64 - day * DAY;
    DataSegment::parse(
        &serde_json::json!({
            "dataSource": ds,
            "interval": format!("{}/{}", iso(start), iso(start + DAY)),
            "version": "v1",
        })
        .to_string(),
    )
    .unwrap()
}

/// A state with one 4-slot worker and, per datasource, segments `days` ago, all marked unused
/// at `unused_at`.
fn state(datasources: &[&str], days: &[i64], unused_at: u64) -> State {
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
    for ds in datasources {
        s.segments
            .apply_insert(0, days.iter().map(|d| segment(ds, *d)).collect());
        s.segments.apply_mark_unused(unused_at, ds, &SegmentFilter::All);
    }
    s.coordinator.dynamic_config.kill_task_slot_ratio = 1.0;
    s
}

fn settings(retain_days: u64, buffer_days: u64) -> KillSettings {
    KillSettings {
        enabled: true,
        period: Duration::from_secs(1),
        duration_to_retain_ms: retain_days * DAY as u64,
        buffer_period_ms: buffer_days * DAY as u64,
        max_segments: 100,
    }
}

fn submit(s: &mut State, spec: Value) {
    let task = crate::tasks::spec::parse_submission(spec.to_string().as_bytes(), NOW, &mut rand::rng()).unwrap();
    s.tasks.apply_submit(1, NOW, task, None).unwrap();
}

#[test]
fn only_segments_past_both_the_retention_and_the_buffer_are_killed() {
    // Marked unused 10 days ago; segments 5, 50 and 100 days old.
    let s = state(&["wiki"], &[5, 50, 100], NOW - 10 * DAY as u64);
    let (tasks, stats) = plan_kills(&s, &settings(30, 7), NOW);
    assert_eq!(
        stats.eligible, 2,
        "the 5-day-old segment is within the 30 days retained"
    );
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    assert_eq!(t.segments, 2);
    assert_eq!(t.interval.start, NOW as i64 - 100 * DAY);
    assert_eq!(t.interval.end, NOW as i64 - 49 * DAY);
    assert_eq!(t.max_used_updated_ms, NOW - 7 * DAY as u64);
    let spec = t.spec(NOW);
    assert_eq!(spec["type"], "kill");
    assert!(spec["id"].as_str().unwrap().starts_with(TASK_PREFIX));
    // Within the buffer: nothing yet.
    let (tasks, stats) = plan_kills(&s, &settings(30, 20), NOW);
    assert!(tasks.is_empty());
    assert_eq!(stats.eligible, 0);
}

#[test]
fn a_datasource_with_an_active_kill_task_is_skipped_and_the_whitelist_is_followed() {
    let mut s = state(&["a", "b", "c"], &[50], NOW - 10 * DAY as u64);
    submit(
        &mut s,
        serde_json::json!({"type": "kill", "id": "k", "dataSource": "a", "interval": "2000/2001"}),
    );
    s.coordinator.dynamic_config.kill_data_source_whitelist = ["a".to_string(), "b".to_string()].into();
    let (tasks, stats) = plan_kills(&s, &settings(30, 7), NOW);
    assert_eq!(
        tasks.iter().map(|t| t.datasource.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    assert_eq!(stats.skipped_active, 1);
}

#[test]
fn kill_tasks_stay_within_their_slots_and_never_cover_an_interval_a_task_locks() {
    let mut s = state(&["a", "b", "c"], &[40, 50, 60], NOW - 10 * DAY as u64);
    s.coordinator.dynamic_config.kill_task_slot_ratio = 0.5;
    // 4 slots x 0.5 = 2 kill tasks at most.
    let (tasks, stats) = plan_kills(&s, &settings(30, 7), NOW);
    assert_eq!((tasks.len(), stats.slots), (2, 2));
    // An index task waiting to lock the 50-days-ago day of `a`: a's kill covers only what
    // lies before it.
    let day50 = NOW as i64 - 50 * DAY;
    submit(
        &mut s,
        serde_json::json!({"type": "index_parallel", "id": "ingest", "spec": {
            "dataSchema": {"dataSource": "a", "timestampSpec": {"column": "t"}, "dimensionsSpec": {},
                "granularitySpec": {"segmentGranularity": "DAY", "intervals": [format!("{}/{}", iso(day50), iso(day50 + DAY))]}},
            "ioConfig": {"type": "index_parallel", "inputSource": {"type": "inline", "data": ""}, "inputFormat": {"type": "json"}}}}),
    );
    let (tasks, stats) = plan_kills(&s, &settings(30, 7), NOW);
    let a = tasks.iter().find(|t| t.datasource == "a").unwrap();
    assert_eq!(a.segments, 1);
    assert_eq!(a.interval.end, NOW as i64 - 59 * DAY);
    assert!(stats.skipped_locked >= 1);
}
