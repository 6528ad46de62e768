//! Lock rules by example, and property tests of the table against brute-force checks of
//! Druid's invariants over random sequences of requests, releases and task completions.

use proptest::prelude::*;

use super::*;
use LockType::*;

fn iv(a: i64, b: i64) -> Interval {
    Interval::new(a, b).unwrap()
}

fn task<'a>(id: &'a str, group: &'a str, priority: i32) -> Requester<'a> {
    Requester {
        id,
        group_id: group,
        datasource: "ds",
        priority,
    }
}

fn req(lock_type: LockType, a: i64, b: i64) -> LockRequest {
    LockRequest {
        lock_type,
        interval: iv(a, b),
        preferred_version: None,
    }
}

fn granted(o: &LockOutcome) -> &TaskLock {
    match o {
        LockOutcome::Granted { lock, .. } => lock,
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn exclusive_conflicts_unless_same_group_inside_its_interval() {
    let mut t = LockTable::default();
    let a = t.apply_acquire(1, 1000, &task("a", "g", 50), &req(Exclusive, 0, 10), None);
    let lock = granted(&a).clone();
    assert_eq!(
        (lock.fencing_token, lock.version.as_str()),
        (1, "1970-01-01T00:00:01.000Z")
    );
    // Same group, inside: shares the posse.
    let b = t.apply_acquire(2, 2000, &task("b", "g", 50), &req(Exclusive, 2, 5), None);
    assert_eq!(granted(&b), &lock);
    // Other group, same priority: refused, nothing changes.
    let before = serde_json::to_string(&t).unwrap();
    let c = t.apply_acquire(3, 3000, &task("c", "h", 50), &req(Shared, 5, 15), None);
    assert!(matches!(c, LockOutcome::Refused { .. }), "{c:?}");
    assert_eq!(serde_json::to_string(&t).unwrap(), before);
}

#[test]
fn higher_priority_revokes_all_incompatible_or_nothing() {
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("low", "l", 25), &req(Exclusive, 0, 10), None));
    granted(&t.apply_acquire(2, 0, &task("mid", "m", 50), &req(Exclusive, 10, 20), None));
    // Priority 50 cannot revoke 'mid' (equal), so 'low' is not revoked either.
    let r = t.apply_acquire(3, 0, &task("x", "x", 50), &req(Exclusive, 5, 15), None);
    assert!(matches!(r, LockOutcome::Refused { .. }));
    assert!(t.posses().all(|p| !p.lock.revoked));
    // Priority 75 revokes both.
    match t.apply_acquire(4, 0, &task("hi", "h", 75), &req(Exclusive, 5, 15), None) {
        LockOutcome::Granted { revoked, .. } => assert_eq!(revoked.len(), 2),
        o => panic!("{o:?}"),
    }
    // The revoked holder learns on its next acquire; its lock stays until released.
    assert!(matches!(
        t.apply_acquire(5, 0, &task("low", "l", 25), &req(Exclusive, 0, 10), None),
        LockOutcome::Revoked { .. }
    ));
    assert_eq!(t.locks_of("low").len(), 1);
    assert_eq!(t.apply_release_task("low"), 1);
    assert!(t.locks_of("low").is_empty());
}

#[test]
fn druids_compatibility_table() {
    // (existing, requested, compatible)
    let cases = [
        (Shared, Shared, true),
        (Shared, Exclusive, false),
        (Exclusive, Shared, false),
        (Append, Append, true),
        (Append, Shared, false),
        (Replace, Replace, false),
        (Replace, Exclusive, false),
    ];
    for (existing, requested, ok) in cases {
        let mut t = LockTable::default();
        granted(&t.apply_acquire(1, 0, &task("a", "a", 50), &req(existing, 0, 10), None));
        let r = t.apply_acquire(2, 0, &task("b", "b", 50), &req(requested, 0, 10), None);
        assert_eq!(
            matches!(r, LockOutcome::Granted { .. }),
            ok,
            "{existing:?} then {requested:?}"
        );
    }
    // REPLACE and APPEND coexist only when the REPLACE interval encloses the APPEND one.
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("r", "r", 50), &req(Replace, 0, 10), None));
    granted(&t.apply_acquire(2, 0, &task("a", "a", 50), &req(Append, 2, 5), None));
    assert!(matches!(
        t.apply_acquire(3, 0, &task("b", "b", 50), &req(Append, 5, 15), None),
        LockOutcome::Refused { .. }
    ));
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("a", "a", 50), &req(Append, 2, 5), None));
    granted(&t.apply_acquire(2, 0, &task("r", "r", 50), &req(Replace, 0, 10), None));
    assert!(matches!(
        t.apply_acquire(3, 0, &task("r2", "r2", 50), &req(Replace, 4, 8), None),
        LockOutcome::Refused { .. }
    ));
}

#[test]
fn versions_increase_and_append_uses_the_epoch() {
    let mut t = LockTable::default();
    let a = granted(&t.apply_acquire(1, 5000, &task("a", "a", 50), &req(Exclusive, 0, 10), None)).clone();
    t.apply_release_task("a");
    // Same leader time (clock did not move): still a later version.
    let b = granted(&t.apply_acquire(2, 5000, &task("b", "b", 50), &req(Exclusive, 0, 10), None)).clone();
    assert!(b.version > a.version, "{} > {}", b.version, a.version);
    t.apply_release_task("b");
    // A segment version later than the clock pushes the lock version past it.
    let c = granted(&t.apply_acquire(3, 5000, &task("c", "c", 50), &req(Exclusive, 0, 10), Some(9000))).clone();
    assert_eq!(c.version, "1970-01-01T00:00:09.001Z");
    let d = granted(&t.apply_acquire(4, 5000, &task("d", "d", 50), &req(Append, 20, 30), None)).clone();
    assert_eq!(d.version, EPOCH_VERSION);
}

#[test]
fn a_wider_append_lock_supersedes_the_tasks_narrower_one() {
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("a", "a", 50), &req(Append, 0, 10), None));
    granted(&t.apply_acquire(2, 0, &task("a", "a", 50), &req(Append, 0, 20), None));
    let held: Vec<Interval> = t.locks_of("a").iter().map(|l| l.interval).collect();
    assert_eq!(held, vec![iv(0, 20)]);
}

/// Found by the property test: two APPEND locks of one group that both contain a request made
/// it fail as ambiguous, even with both revoked (the holder must learn of the revocation).
#[test]
fn overlapping_append_locks_of_a_group_are_reused_or_report_revocation() {
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("a", "g", 50), &req(Append, 5, 8), None));
    granted(&t.apply_acquire(2, 0, &task("a", "g", 50), &req(Append, 4, 7), None));
    // Both contain [5, 6): the narrower live one is reused.
    let l = granted(&t.apply_acquire(3, 0, &task("b", "g", 50), &req(Append, 5, 6), None)).clone();
    assert_eq!(l.interval, iv(5, 8));
    granted(&t.apply_acquire(4, 0, &task("x", "x", 75), &req(Exclusive, 7, 8), None));
    granted(&t.apply_acquire(5, 0, &task("x", "x", 75), &req(Exclusive, 1, 5), None));
    assert!(matches!(
        t.apply_acquire(6, 0, &task("a", "g", 50), &req(Append, 5, 6), None),
        LockOutcome::Revoked { .. }
    ));
}

#[test]
fn locked_intervals_filter_by_priority_and_ignore_append_for_replace() {
    let mut t = LockTable::default();
    granted(&t.apply_acquire(1, 0, &task("a", "a", 25), &req(Append, 0, 10), None));
    granted(&t.apply_acquire(2, 0, &task("b", "b", 50), &req(Exclusive, 10, 20), None));
    let policy = |priority, ctx: Option<serde_json::Value>| LockFilterPolicy {
        datasource: "ds".into(),
        priority,
        intervals: None,
        context: ctx.and_then(|v| v.as_object().cloned()),
    };
    assert_eq!(
        t.locked_intervals(&[policy(0, None)])["ds"],
        vec![iv(0, 10), iv(10, 20)]
    );
    assert_eq!(t.locked_intervals(&[policy(30, None)])["ds"], vec![iv(10, 20)]);
    let replace = Some(serde_json::json!({"taskLockType": "REPLACE"}));
    assert_eq!(t.locked_intervals(&[policy(0, replace)])["ds"], vec![iv(10, 20)]);
}

#[test]
fn lock_json_is_druids_time_chunk_lock() {
    let mut t = LockTable::default();
    let lock = granted(&t.apply_acquire(7, 0, &task("a", "g", 50), &req(Shared, 0, 86_400_000), None)).clone();
    assert_eq!(
        serde_json::to_value(&lock).unwrap(),
        serde_json::json!({"type": "SHARED", "granularity": "timeChunk", "groupId": "g", "dataSource": "ds",
            "interval": "1970-01-01T00:00:00.000Z/1970-01-02T00:00:00.000Z", "version": "1970-01-01T00:00:00.000Z",
            "priority": 50, "revoked": false, "fencingToken": 7})
    );
}

// ---- property tests against brute-force checks ----

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        task: usize,
        lock_type: LockType,
        a: i64,
        len: i64,
    },
    Release {
        task: usize,
        a: i64,
        len: i64,
    },
    Complete {
        task: usize,
    },
}

/// Six tasks in three groups; priorities are per task.
const TASKS: [(&str, &str, i32); 6] = [
    ("t0", "g0", 0),
    ("t1", "g0", 0),
    ("t2", "g1", 50),
    ("t3", "g1", 50),
    ("t4", "g2", 75),
    ("t5", "g2", 25),
];

fn op() -> impl Strategy<Value = Op> {
    let lt = prop_oneof![Just(Exclusive), Just(Shared), Just(Replace), Just(Append)];
    prop_oneof![
        6 => (0..6usize, lt, 0..8i64, 1..5i64).prop_map(|(task, lock_type, a, len)| Op::Acquire { task, lock_type, a, len }),
        2 => (0..6usize, 0..8i64, 1..5i64).prop_map(|(task, a, len)| Op::Release { task, a, len }),
        1 => (0..6usize).prop_map(|task| Op::Complete { task }),
    ]
}

/// Pairwise coexistence of two live locks of different posses (brute force over the table).
fn may_coexist(x: &TaskLock, y: &TaskLock) -> bool {
    match (x.lock_type, y.lock_type) {
        (Shared, Shared) | (Append, Append) => true,
        (Replace, Append) => x.interval.contains(&y.interval),
        (Append, Replace) => y.interval.contains(&x.interval),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_lock_sequences_keep_druids_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let mut t = LockTable::default();
        let mut granted_versions: Vec<(Interval, String)> = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            let index = n as u64 + 1;
            let revoked_before: Vec<TaskLock> = t.posses().filter(|p| p.lock.revoked).map(|p| p.lock.clone()).collect();
            let before = serde_json::to_string(&t).unwrap();
            let mut newly_revoked_allowed: Vec<TaskLock> = vec![];
            match op {
                Op::Acquire { task: i, lock_type, a, len } => {
                    let (id, group, priority) = TASKS[i];
                    let r = req(lock_type, a, a + len);
                    let posses_before = t.posses().count();
                    match t.apply_acquire(index, 1000 + n as u64, &task(id, group, priority), &r, None) {
                        LockOutcome::Granted { lock, revoked } => {
                            prop_assert!(lock.interval.contains(&r.interval));
                            prop_assert_eq!(&lock.group_id, group);
                            for l in &revoked {
                                prop_assert!(l.priority < priority, "revoked {:?} for priority {}", l, priority);
                            }
                            newly_revoked_allowed = revoked;
                            if t.posses().count() > posses_before && lock_type != Append {
                                for (other, v) in &granted_versions {
                                    if other.overlaps(&lock.interval) {
                                        prop_assert!(lock.version > *v, "version {} not after {}", lock.version, v);
                                    }
                                }
                                granted_versions.push((lock.interval, lock.version.clone()));
                            }
                        }
                        LockOutcome::Revoked { lock } => {
                            prop_assert!(lock.revoked);
                            prop_assert_eq!(serde_json::to_string(&t).unwrap(), before);
                        }
                        LockOutcome::Refused { .. } => {
                            prop_assert_eq!(serde_json::to_string(&t).unwrap(), before);
                            // Brute force: some live overlapping lock of another posse blocks it.
                            let blocked = t.posses().any(|p| {
                                !p.lock.revoked && p.lock.interval.overlaps(&r.interval)
                                    && (p.lock.priority >= priority || p.lock.group_id == group)
                            });
                            prop_assert!(blocked, "refused without a blocker");
                        }
                    }
                }
                Op::Release { task: i, a, len } => {
                    t.apply_release(TASKS[i].0, &iv(a, a + len));
                    prop_assert!(t.locks_of(TASKS[i].0).iter().all(|l| l.interval != iv(a, a + len)));
                }
                Op::Complete { task: i } => {
                    t.apply_release_task(TASKS[i].0);
                    prop_assert!(t.locks_of(TASKS[i].0).is_empty());
                    prop_assert!(t.posses().all(|p| !p.tasks.contains(TASKS[i].0)));
                }
            }
            // Revocation is permanent and only happens as reported by a grant.
            for l in t.posses().filter(|p| p.lock.revoked).map(|p| &p.lock) {
                prop_assert!(revoked_before.contains(l) || newly_revoked_allowed.iter().any(|r| r == l));
            }
            // No two incompatible live locks overlap; posses hold one group at one priority.
            let live: Vec<&Posse> = t.posses().filter(|p| !p.lock.revoked).collect();
            for (i, x) in live.iter().enumerate() {
                prop_assert!(!x.tasks.is_empty());
                for id in &x.tasks {
                    let (_, g, p) = TASKS.iter().find(|(t, _, _)| t == id).unwrap();
                    prop_assert_eq!(*g, x.lock.group_id.as_str());
                    prop_assert_eq!(*p, x.lock.priority);
                }
                for y in &live[i + 1..] {
                    if x.lock.interval.overlaps(&y.lock.interval) {
                        prop_assert!(may_coexist(&x.lock, &y.lock), "{:?} overlaps {:?}", x.lock, y.lock);
                    }
                }
            }
        }
    }
}
