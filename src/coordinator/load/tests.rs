use super::*;
use crate::segments::DataSegment;

fn table_with(sizes: &[u64]) -> (SegmentTable, Vec<SegmentRef>) {
    let mut t = SegmentTable::default();
    let mut refs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let seg = DataSegment::parse(
            &serde_json::json!({
                "dataSource": "wiki",
                "interval": format!("2026-01-{:02}/2026-01-{:02}", i + 1, i + 2),
                "version": "v1",
                "size": size,
            })
            .to_string(),
        )
        .unwrap();
        refs.push(SegmentRef {
            datasource: "wiki".into(),
            key: seg.key.clone(),
        });
        t.apply_insert(0, vec![seg]);
    }
    (t, refs)
}

fn historical(max_size: u64) -> Historical {
    Historical {
        scheme: "http".into(),
        host: "h:8083".into(),
        tier: "_default_tier".into(),
        max_size,
    }
}

fn report(segment: &SegmentRef, outcome: Outcome) -> ReplicaReport {
    ReplicaReport {
        segment: segment.clone(),
        outcome,
    }
}

#[test]
fn a_restarted_historical_has_its_cache_adopted_within_its_size_and_drops_the_rest() {
    let (segments, refs) = table_with(&[40, 40, 40]);
    let mut t = LoadTable::default();
    t.apply_register(1, historical(100));
    let all: Vec<ReplicaReport> = refs.iter().map(|r| report(r, Outcome::Loaded)).collect();
    assert_eq!(t.apply_report(2, &segments, "h:8083", &all, true), 3);
    let rec = t.get("h:8083").unwrap();
    assert_eq!(rec.loaded(), 2, "two fit in 100 bytes");
    assert_eq!(rec.dropping(), 1, "the third is dropped, not adopted over the size");
    assert!(rec.committed_bytes() <= 120 && rec.held_bytes() == 80);
    // The same report again changes nothing.
    assert_eq!(t.apply_report(3, &segments, "h:8083", &all, true), 0);
}

#[test]
fn a_full_report_without_a_loaded_segment_puts_it_back_to_loading() {
    let (segments, refs) = table_with(&[10, 10]);
    let mut t = LoadTable::default();
    t.apply_register(1, historical(100));
    let loads: Vec<LoadRequest> = refs
        .iter()
        .map(|r| LoadRequest {
            host: "h:8083".into(),
            segment: r.clone(),
            moved_from: None,
        })
        .collect();
    assert_eq!(t.apply_plan(2, &segments, &loads, &[]).loads, 2);
    t.apply_report(
        3,
        &segments,
        "h:8083",
        &[report(&refs[0], Outcome::Loaded), report(&refs[1], Outcome::Loaded)],
        false,
    );
    assert_eq!(t.get("h:8083").unwrap().loaded(), 2);
    // Its cache lost the second file.
    t.apply_report(4, &segments, "h:8083", &[report(&refs[0], Outcome::Loaded)], true);
    let rec = t.get("h:8083").unwrap();
    assert_eq!((rec.loaded(), rec.loading()), (1, 1));
}

#[test]
fn a_load_over_the_cache_size_or_of_an_unknown_segment_is_refused_when_applied() {
    let (segments, refs) = table_with(&[60, 60]);
    let mut t = LoadTable::default();
    t.apply_register(1, historical(100));
    let mut loads: Vec<LoadRequest> = refs
        .iter()
        .map(|r| LoadRequest {
            host: "h:8083".into(),
            segment: r.clone(),
            moved_from: None,
        })
        .collect();
    loads.push(LoadRequest {
        host: "h:8083".into(),
        segment: SegmentRef {
            datasource: "other".into(),
            key: refs[0].key.clone(),
        },
        moved_from: None,
    });
    let done = t.apply_plan(2, &segments, &loads, &[]);
    assert_eq!((done.loads, done.refused), (1, 2));
    assert_eq!(t.get("h:8083").unwrap().committed_bytes(), 60);
}

#[test]
fn a_lost_historical_forgets_its_replicas_and_registering_again_brings_it_back() {
    let (segments, refs) = table_with(&[10]);
    let mut t = LoadTable::default();
    t.apply_register(1, historical(100));
    t.apply_report(2, &segments, "h:8083", &[report(&refs[0], Outcome::Loaded)], true);
    assert_eq!(t.apply_lost("h:8083"), Some(1));
    assert_eq!(t.apply_lost("h:8083"), None, "already lost");
    assert_eq!(t.serving().count(), 0);
    assert!(t.apply_register(3, historical(100)));
    let rec = t.get("h:8083").unwrap();
    assert!(!rec.lost && rec.replicas().is_empty());
}

#[test]
fn a_failed_load_keeps_its_reason_and_a_drop_removes_it() {
    let (segments, refs) = table_with(&[10]);
    let mut t = LoadTable::default();
    t.apply_register(1, historical(100));
    let load = LoadRequest {
        host: "h:8083".into(),
        segment: refs[0].clone(),
        moved_from: None,
    };
    t.apply_plan(2, &segments, std::slice::from_ref(&load), &[]);
    t.apply_report(
        3,
        &segments,
        "h:8083",
        &[report(
            &refs[0],
            Outcome::Failed {
                reason: "checksum".into(),
            },
        )],
        false,
    );
    let rec = t.get("h:8083").unwrap();
    assert!(matches!(rec.replica(&refs[0]), Some(Replica::Failed { reason, .. }) if reason == "checksum"));
    assert_eq!(rec.committed_bytes(), 0);
    let drop = DropRequest {
        host: "h:8083".into(),
        segment: refs[0].clone(),
    };
    assert_eq!(t.apply_plan(4, &segments, &[], &[drop]).drops, 1);
    assert!(t.get("h:8083").unwrap().replicas().is_empty());
}
