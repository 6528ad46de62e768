//! The assigner's plan: Druid's strategies on hand-made cases, and its invariants on random
//! states.

use proptest::prelude::*;
use serde_json::value::RawValue;

use super::*;
use crate::tasks::{NewTask, Readiness, TaskResource};
use crate::workers::{Worker, WorkerTable};

fn worker(host: &str, capacity: u32, category: &str) -> Worker {
    Worker {
        scheme: "http".into(),
        host: host.into(),
        ip: "127.0.0.1".into(),
        capacity,
        version: "0".into(),
        category: category.into(),
    }
}

fn task(id: &str, ds: &str, priority: i32) -> NewTask {
    NewTask {
        id: id.into(),
        task_type: "noop".into(),
        group_id: id.into(),
        datasource: ds.into(),
        priority,
        payload: RawValue::from_string(format!(r#"{{"type":"noop","id":"{id}"}}"#)).unwrap(),
        resource: TaskResource::default(),
        readiness: Readiness::default(),
        locks: vec![],
    }
}

struct World {
    tasks: TaskTable,
    workers: WorkerTable,
    index: u64,
}

impl World {
    fn new(workers: &[Worker]) -> World {
        let mut w = World {
            tasks: TaskTable::default(),
            workers: WorkerTable::default(),
            index: 0,
        };
        for wk in workers {
            w.workers.apply_register(0, wk.clone());
        }
        w
    }

    fn submit(&mut self, t: NewTask) {
        self.index += 1;
        self.tasks.apply_submit(self.index, 1000, t, None).unwrap();
    }

    /// Plans and applies; returns the placements.
    fn step(&mut self, now: u64) -> Vec<(String, String)> {
        let p = plan(&self.tasks, &self.workers, &Default::default(), now);
        self.index += 1;
        let refused = self
            .workers
            .apply_assign(&mut self.tasks, self.index, now, &p.assignments);
        assert!(refused.is_empty(), "the state refused its own plan: {refused:?}");
        p.assignments
    }

    fn host_of(&self, id: &str) -> Option<String> {
        self.tasks.get(id)?.assignment.as_ref().map(|a| a.worker.clone())
    }
}

#[test]
fn equal_distribution_spreads_and_fill_capacity_packs() {
    let mut w = World::new(&[worker("a:1", 2, DEFAULT_CATEGORY), worker("b:1", 2, DEFAULT_CATEGORY)]);
    for i in 0..2 {
        w.submit(task(&format!("t{i}"), "ds", 0));
    }
    w.step(2000);
    assert_ne!(w.host_of("t0"), w.host_of("t1"));

    let mut w = World::new(&[worker("a:1", 2, DEFAULT_CATEGORY), worker("b:1", 2, DEFAULT_CATEGORY)]);
    w.workers.config.select_strategy = SelectStrategy::FillCapacity { affinity_config: None };
    for i in 0..2 {
        w.submit(task(&format!("t{i}"), "ds", 0));
    }
    w.step(2000);
    assert_eq!(w.host_of("t0"), w.host_of("t1"));
}

#[test]
fn higher_priority_goes_first_and_fifo_within_a_priority() {
    let mut w = World::new(&[worker("a:1", 2, DEFAULT_CATEGORY)]);
    w.submit(task("low", "ds", 0));
    w.submit(task("high-old", "ds", 75));
    w.submit(task("high-new", "ds", 75));
    let placed: Vec<String> = w.step(2000).into_iter().map(|(t, _)| t).collect();
    assert_eq!(placed, vec!["high-old", "high-new"]);
    assert_eq!(w.host_of("low"), None);
}

#[test]
fn one_availability_group_per_worker() {
    let mut w = World::new(&[worker("a:1", 4, DEFAULT_CATEGORY)]);
    for i in 0..2 {
        let mut t = task(&format!("r{i}"), "ds", 0);
        t.resource.availability_group = Some("replica-group".into());
        w.submit(t);
    }
    assert_eq!(w.step(2000).len(), 1);
}

#[test]
fn readiness_no_waits_exception_fails_and_ready_time_delays() {
    let mut w = World::new(&[worker("a:1", 4, DEFAULT_CATEGORY)]);
    let mut never = task("never", "ds", 0);
    never.readiness.result = crate::tasks::ReadyResult::No;
    let mut broken = task("broken", "ds", 0);
    broken.readiness.result = crate::tasks::ReadyResult::Exception;
    let mut later = task("later", "ds", 0);
    later.readiness.after_ms = 500;
    w.submit(never);
    w.submit(broken);
    w.submit(later);
    let p = plan(&w.tasks, &w.workers, &Default::default(), 1200);
    assert!(p.assignments.is_empty());
    assert_eq!(p.failures, vec![("broken".to_string(), NOT_READY_FAILURE.to_string())]);
    assert_eq!(p.next_ready_ms, Some(1500));
    let p = plan(&w.tasks, &w.workers, &Default::default(), 1500);
    assert_eq!(p.assignments, vec![("later".to_string(), "a:1".to_string())]);
}

/// Found by the worker process test: with no worker free, the plan stopped at the first
/// waiting task and never ran the readiness check of the ones behind it.
#[test]
fn readiness_failures_are_found_even_when_no_worker_has_room() {
    let mut w = World::new(&[worker("a:1", 1, DEFAULT_CATEGORY)]);
    w.submit(task("fills-the-slot", "ds", 50));
    w.step(2000);
    w.submit(task("waits", "ds", 50));
    let mut broken = task("broken", "ds", 50);
    broken.readiness.result = crate::tasks::ReadyResult::Exception;
    w.submit(broken);
    let p = plan(&w.tasks, &w.workers, &Default::default(), 2000);
    assert!(p.assignments.is_empty());
    assert_eq!(p.failures, vec![("broken".to_string(), NOT_READY_FAILURE.to_string())]);
    // The same with no usable worker at all.
    w.workers.apply_set_enabled("a:1", false);
    assert_eq!(plan(&w.tasks, &w.workers, &Default::default(), 2000).failures.len(), 1);
}

#[test]
fn affinity_strong_waits_weak_falls_back_others_avoid_affinity_workers() {
    let affinity = |strong| AffinityConfig {
        affinity: [("pinned".to_string(), ["a:1".to_string()].into())].into(),
        strong,
    };
    for strong in [true, false] {
        let mut w = World::new(&[worker("a:1", 1, DEFAULT_CATEGORY), worker("b:1", 1, DEFAULT_CATEGORY)]);
        w.workers.config.select_strategy = SelectStrategy::EqualDistributionWithAffinity {
            affinity_config: Some(affinity(strong)),
        };
        w.submit(task("p1", "pinned", 0));
        w.submit(task("p2", "pinned", 0));
        w.step(2000);
        assert_eq!(w.host_of("p1").as_deref(), Some("a:1"));
        assert_eq!(w.host_of("p2").as_deref(), if strong { None } else { Some("b:1") });
    }
    let mut w = World::new(&[worker("a:1", 1, DEFAULT_CATEGORY), worker("b:1", 1, DEFAULT_CATEGORY)]);
    w.workers.config.select_strategy = SelectStrategy::EqualDistribution {
        affinity_config: Some(affinity(false)),
    };
    w.submit(task("o1", "other", 0));
    w.submit(task("o2", "other", 0));
    w.step(2000);
    assert_eq!(w.host_of("o1").as_deref(), Some("b:1"));
    assert_eq!(
        w.host_of("o2"),
        None,
        "tasks of other datasources never use affinity workers"
    );
}

#[test]
fn category_spec_prefers_its_category_and_strong_waits() {
    let spec = |strong| WorkerCategorySpec {
        category_map: [(
            "noop".to_string(),
            CategoryConfig {
                default_category: Some("fast".into()),
                category_affinity: [("slow-ds".to_string(), "slow".to_string())].into(),
            },
        )]
        .into(),
        strong,
    };
    for strong in [true, false] {
        let mut w = World::new(&[worker("f:1", 1, "fast"), worker("s:1", 1, "slow")]);
        w.workers.config.select_strategy = SelectStrategy::FillCapacityWithCategorySpec {
            worker_category_spec: Some(spec(strong)),
        };
        w.submit(task("x1", "ds", 0));
        w.submit(task("x2", "ds", 0));
        w.submit(task("y1", "slow-ds", 0));
        w.step(2000);
        assert_eq!(w.host_of("x1").as_deref(), Some("f:1"));
        if strong {
            assert_eq!(w.host_of("x2"), None, "strong: waits for its category");
            assert_eq!(w.host_of("y1").as_deref(), Some("s:1"));
        } else {
            assert_eq!(
                w.host_of("x2").as_deref(),
                Some("s:1"),
                "weak: falls back to any worker"
            );
            assert_eq!(w.host_of("y1"), None);
        }
    }
}

#[test]
fn strategies_have_druids_json() {
    let json = r#"{"type":"default","selectStrategy":{"type":"fillCapacityWithAffinity",
        "affinityConfig":{"affinity":{"wiki":["mm1:8091"]},"strong":true}},"autoScaler":null}"#;
    let c: crate::workers::WorkerBehaviorConfig = serde_json::from_str(json).unwrap();
    assert!(
        matches!(c.select_strategy, SelectStrategy::FillCapacityWithAffinity { affinity_config: Some(ref a) } if a.strong)
    );
    let back = serde_json::to_value(&c).unwrap();
    assert_eq!(back["selectStrategy"]["type"], "fillCapacityWithAffinity");
    assert_eq!(back["type"], "default");
    assert!(serde_json::from_str::<crate::workers::WorkerBehaviorConfig>(
        r#"{"type":"default","selectStrategy":{"type":"javascript","function":"x"}}"#
    )
    .is_err());
    assert_eq!(
        serde_json::to_value(crate::workers::WorkerBehaviorConfig::default()).unwrap(),
        serde_json::json!({"type":"default","selectStrategy":{"type":"equalDistribution"},"autoScaler":null})
    );
}

fn strategy() -> impl Strategy<Value = SelectStrategy> {
    prop_oneof![
        Just(SelectStrategy::EqualDistribution { affinity_config: None }),
        Just(SelectStrategy::FillCapacity { affinity_config: None }),
        any::<bool>().prop_map(|strong| SelectStrategy::EqualDistributionWithAffinity {
            affinity_config: Some(AffinityConfig {
                affinity: [("d0".to_string(), ["w0:1".to_string()].into())].into(),
                strong,
            }),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever the state, a plan never over-fills a worker, never puts two tasks of one
    /// availability group on a worker, offers tasks in priority order, leaves no waiting task
    /// that some worker could still take, and re-planning after applying it proposes nothing.
    #[test]
    fn plans_respect_capacity_groups_and_priority(
        caps in proptest::collection::vec((0u32..4, any::<bool>()), 1..4),
        batches in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 0u8..4, 1u32..3, 0usize..3), 0..12), 1..4),
        finish in proptest::collection::vec(any::<bool>(), 0..40),
        strat in strategy(),
    ) {
        let workers: Vec<Worker> = caps.iter().enumerate().map(|(i, (c, _))| worker(&format!("w{i}:1"), *c, DEFAULT_CATEGORY)).collect();
        let mut w = World::new(&workers);
        for (i, (_, disabled)) in caps.iter().enumerate() {
            if *disabled { w.workers.apply_set_enabled(&format!("w{i}:1"), false); }
        }
        w.workers.config.select_strategy = strat;
        let mut n = 0;
        let mut done = finish.into_iter();
        for batch in batches {
            for (prio, group, cap, ds) in batch {
                let mut t = task(&format!("t{n:03}"), &format!("d{ds}"), [0, 50, 75][prio]);
                t.resource.availability_group = Some(format!("g{group}"));
                t.resource.required_capacity = Some(cap);
                w.submit(t);
                n += 1;
            }
            let placed = w.step(2000);
            // Offered in priority order, FIFO within a priority.
            let keys: Vec<(i64, u64)> = placed.iter().map(|(id, _)| {
                let t = w.tasks.get(id).unwrap();
                (-(t.spec.priority as i64), t.created_index)
            }).collect();
            prop_assert!(keys.windows(2).all(|k| k[0] <= k[1]), "order {keys:?}");
            // Capacity and groups.
            for r in w.workers.all() {
                prop_assert!(r.used(&w.tasks) <= r.worker.capacity);
                let groups: Vec<&str> = r.tasks.iter().map(|id| w.tasks.get(id).unwrap().spec.availability_group()).collect();
                let unique: std::collections::BTreeSet<&&str> = groups.iter().collect();
                prop_assert_eq!(unique.len(), groups.len());
            }
            // Nothing left that a worker could take (plain strategies only: affinity may hold
            // tasks back on purpose).
            if w.workers.config.select_strategy.affinity().is_none() {
                for t in w.tasks.waiting_in_order() {
                    for r in w.workers.all().filter(|r| r.usable()) {
                        let free = r.worker.capacity - r.used(&w.tasks);
                        let group_there = r.tasks.iter().any(|id| w.tasks.get(id).unwrap().spec.availability_group() == t.spec.availability_group());
                        prop_assert!(free < t.spec.required_capacity() || group_there,
                            "{} could run on {}", t.spec.id, r.worker.host);
                    }
                }
            }
            // Re-planning proposes nothing.
            prop_assert!(plan(&w.tasks, &w.workers, &Default::default(), 2000).assignments.is_empty());
            // Some tasks finish, freeing slots for the next batch.
            let running: Vec<(String, String)> = w.workers.all()
                .flat_map(|r| r.tasks.iter().map(|id| (id.clone(), r.worker.host.clone())).collect::<Vec<_>>())
                .collect();
            for (id, host) in running {
                if done.next().unwrap_or(false) {
                    let u = crate::workers::TaskUpdate { id, status: crate::tasks::TaskState::Success, location: None, duration: 1, error_msg: None };
                    w.workers.apply_updates(&mut w.tasks, 3000, &host, &[u]);
                }
            }
        }
    }
}

fn locking(id: &str, priority: i32, day: i64) -> NewTask {
    let mut t = task(id, "wiki", priority);
    t.locks = vec![crate::locks::LockRequest {
        lock_type: crate::locks::LockType::Exclusive,
        interval: crate::interval::Interval::new(day * 86_400_000, (day + 1) * 86_400_000).unwrap(),
        preferred_version: None,
    }];
    t
}

#[test]
fn tasks_whose_locks_cannot_be_had_wait_and_higher_priority_preempts() {
    let mut w = World::new(&[worker("a:1", 4, DEFAULT_CATEGORY)]);
    w.submit(locking("first", 50, 0));
    w.submit(locking("same-day", 50, 0));
    w.submit(locking("other-day", 50, 1));
    let p = plan(&w.tasks, &w.workers, &Default::default(), 2000);
    let planned: Vec<&str> = p.assignments.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        planned,
        vec!["first", "other-day"],
        "two conflicting waiting tasks are not both placed"
    );

    // With `first`'s lock held, an equal priority task waits; a higher one would preempt it.
    let mut held = crate::locks::LockTable::default();
    let first = w.tasks.get("first").unwrap().spec.clone();
    let requester = crate::locks::Requester::from(&first);
    held.apply_acquire_all(1, 1000, &requester, &first.locks, |_| None)
        .unwrap();
    let mut w2 = World::new(&[worker("a:1", 4, DEFAULT_CATEGORY)]);
    w2.submit(locking("same-day", 50, 0));
    w2.submit(locking("urgent", 75, 0));
    let p = plan(&w2.tasks, &w2.workers, &held, 2000);
    let planned: Vec<&str> = p.assignments.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(planned, vec!["urgent"]);
}
