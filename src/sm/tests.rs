//! Golden JSON for every command and reply (the log and snapshot format), and apply behaviour
//! through the envelope.

use serde_json::json;
use serde_json::value::RawValue;

use super::*;
use crate::nodes::NodeRole;
use crate::tasks::{TaskState, SHUTDOWN_BY_USER};

fn ctx(index: u64, time_ms: u64) -> ApplyContext {
    ApplyContext { index, time_ms }
}

fn new_task() -> NewTask {
    NewTask {
        id: "t1".into(),
        task_type: "noop".into(),
        group_id: "t1".into(),
        datasource: "wiki".into(),
        priority: 50,
        payload: RawValue::from_string(r#"{"type":"noop","id":"t1"}"#.into()).unwrap(),
        resource: Default::default(),
        readiness: Default::default(),
        locks: vec![],
    }
}

fn worker() -> crate::workers::Worker {
    crate::workers::Worker {
        scheme: "http".into(),
        host: "mm1:8091".into(),
        ip: "mm1".into(),
        capacity: 4,
        version: "0".into(),
        category: crate::workers::DEFAULT_CATEGORY.into(),
    }
}

fn announcement() -> NodeAnnouncement {
    NodeAnnouncement {
        id: "node-1".into(),
        raft_id: Some(1),
        roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
        url: "http://127.0.0.1:8090".into(),
        version: "0.1.0".into(),
        announced_ms: 0,
    }
}

/// Each command's JSON is part of the on-disk format: changing it breaks old logs.
#[test]
fn golden_json_of_every_command() {
    let cases = vec![
        (
            Command::SubmitTask {
                task: new_task(),
                max_active: Some(10),
                idempotency_key: None,
            },
            json!({"submitTask": {"task": {"id": "t1", "type": "noop", "groupId": "t1", "datasource": "wiki",
                   "priority": 50, "payload": {"type": "noop", "id": "t1"}}, "maxActive": 10}}),
        ),
        (
            Command::SubmitTask {
                task: new_task(),
                max_active: None,
                idempotency_key: Some("retry-1".into()),
            },
            json!({"submitTask": {"task": {"id": "t1", "type": "noop", "groupId": "t1", "datasource": "wiki",
                   "priority": 50, "payload": {"type": "noop", "id": "t1"}}, "maxActive": null,
                   "idempotencyKey": "retry-1"}}),
        ),
        (
            Command::ShutdownTask {
                id: "t1".into(),
                reason: SHUTDOWN_BY_USER.into(),
            },
            json!({"shutdownTask": {"id": "t1", "reason": "Shutdown request from user"}}),
        ),
        (
            Command::ShutdownDatasourceTasks {
                datasource: "wiki".into(),
                reason: "r".into(),
            },
            json!({"shutdownDatasourceTasks": {"datasource": "wiki", "reason": "r"}}),
        ),
        (
            Command::AnnounceNode { node: announcement() },
            json!({"announceNode": {"node": {"id": "node-1", "raftId": 1, "roles": ["overlord", "coordinator"],
                   "url": "http://127.0.0.1:8090", "version": "0.1.0", "announcedMs": 0}}}),
        ),
        (
            Command::WithdrawNode { id: "node-1".into() },
            json!({"withdrawNode": {"id": "node-1"}}),
        ),
        (
            Command::RegisterWorker { worker: worker() },
            json!({"registerWorker": {"worker": {"scheme": "http", "host": "mm1:8091", "ip": "mm1",
                   "capacity": 4, "version": "0", "category": "_default_worker_category"}}}),
        ),
        (
            Command::SetWorkerEnabled {
                host: "mm1:8091".into(),
                enabled: false,
            },
            json!({"setWorkerEnabled": {"host": "mm1:8091", "enabled": false}}),
        ),
        (
            Command::WorkerLost {
                host: "mm1:8091".into(),
                reason: "worker lost".into(),
            },
            json!({"workerLost": {"host": "mm1:8091", "reason": "worker lost"}}),
        ),
        (
            Command::AssignTasks {
                assignments: vec![TaskAssignment {
                    task: "t1".into(),
                    worker: "mm1:8091".into(),
                }],
            },
            json!({"assignTasks": {"assignments": [{"task": "t1", "worker": "mm1:8091"}]}}),
        ),
        (
            Command::UnassignTask {
                task: "t1".into(),
                worker: "mm1:8091".into(),
                assigned_index: 7,
            },
            json!({"unassignTask": {"task": "t1", "worker": "mm1:8091", "assignedIndex": 7}}),
        ),
        (
            Command::FailUnstartedTask {
                task: "t1".into(),
                worker: "mm1:8091".into(),
                assigned_index: 7,
                reason: "late".into(),
            },
            json!({"failUnstartedTask": {"task": "t1", "worker": "mm1:8091", "assignedIndex": 7, "reason": "late"}}),
        ),
        (
            Command::PruneHistory {
                completed_tasks_before_ms: 5,
                audit_before_ms: 6,
            },
            json!({"pruneHistory": {"completedTasksBeforeMs": 5, "auditBeforeMs": 6}}),
        ),
        (
            Command::ReportTasks {
                worker: "mm1:8091".into(),
                updates: vec![crate::workers::TaskUpdate {
                    id: "t1".into(),
                    status: TaskState::Failed,
                    location: None,
                    duration: 12,
                    error_msg: Some("boom".into()),
                }],
            },
            json!({"reportTasks": {"worker": "mm1:8091", "updates": [{"id": "t1", "status": "FAILED",
                   "location": null, "duration": 12, "errorMsg": "boom"}]}}),
        ),
        (
            Command::SetWorkerConfig {
                config: Default::default(),
                audit: crate::workers::AuditInfo {
                    author: "ops".into(),
                    comment: "c".into(),
                    ip: "".into(),
                },
            },
            json!({"setWorkerConfig": {"config": {"type": "default", "selectStrategy": {"type": "equalDistribution"},
                   "autoScaler": null}, "audit": {"author": "ops", "comment": "c", "ip": ""}}}),
        ),
    ];
    for (cmd, golden) in cases {
        assert_eq!(serde_json::to_value(&cmd).unwrap(), golden, "{cmd:?}");
        // Read back from text, as the log and snapshots are.
        let back: Command = serde_json::from_str(&golden.to_string()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), golden);
    }
}

/// Assignment lifecycle through commands: slots are held from assignment until the worker
/// reports the peon gone, even when a shutdown completed the task first; a lost worker fails
/// what it ran.
#[test]
fn assignment_holds_a_slot_until_the_worker_reports_the_end() {
    let mut s = State::default();
    s.apply(ctx(1, 10), Command::RegisterWorker { worker: worker() });
    for (i, id) in ["a", "b"].iter().enumerate() {
        let mut t = new_task();
        t.id = id.to_string();
        t.group_id = id.to_string();
        s.apply(
            ctx(2 + i as u64, 20),
            Command::SubmitTask {
                task: t,
                max_active: None,
                idempotency_key: None,
            },
        );
    }
    let assign = |task: &str| Command::AssignTasks {
        assignments: vec![TaskAssignment {
            task: task.into(),
            worker: "mm1:8091".into(),
        }],
    };
    assert_eq!(s.apply(ctx(4, 30), assign("a")), Reply::Assigned { refused: vec![] });
    // Applying the same assignment again changes nothing.
    let Reply::Assigned { refused } = s.apply(ctx(5, 31), assign("a")) else {
        panic!()
    };
    assert_eq!(refused.len(), 1);
    s.apply(
        ctx(6, 40),
        Command::ShutdownTask {
            id: "a".into(),
            reason: SHUTDOWN_BY_USER.into(),
        },
    );
    assert_eq!(
        s.workers.get("mm1:8091").unwrap().used(&s.tasks),
        1,
        "the peon may still run"
    );
    let end = crate::workers::TaskUpdate {
        id: "a".into(),
        status: TaskState::Failed,
        location: None,
        duration: 5,
        error_msg: Some("stopped".into()),
    };
    let Reply::Reported { applied } = s.apply(
        ctx(7, 50),
        Command::ReportTasks {
            worker: "mm1:8091".into(),
            updates: vec![end],
        },
    ) else {
        panic!()
    };
    assert_eq!(applied.finished, vec!["a".to_string()]);
    let a = s.tasks.get("a").unwrap();
    assert_eq!(
        a.error_msg.as_deref(),
        Some(SHUTDOWN_BY_USER),
        "the first outcome stays"
    );
    assert_eq!(s.workers.get("mm1:8091").unwrap().used(&s.tasks), 0);
    // b runs, then the worker is lost: b fails with the reason and the slot is freed.
    s.apply(ctx(8, 60), assign("b"));
    let Reply::WorkerLost { failed } = s.apply(
        ctx(9, 70),
        Command::WorkerLost {
            host: "mm1:8091".into(),
            reason: "worker lost: gone".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!(failed, Some(vec!["b".to_string()]));
    assert_eq!(
        s.tasks.get("b").unwrap().error_msg.as_deref(),
        Some("worker lost: gone")
    );
    assert_eq!(s.workers.get("mm1:8091").unwrap().tasks.len(), 0);
    // A lost worker gets nothing until it registers again.
    let mut c = new_task();
    c.id = "c".into();
    s.apply(
        ctx(10, 80),
        Command::SubmitTask {
            task: c,
            max_active: None,
            idempotency_key: None,
        },
    );
    let Reply::Assigned { refused } = s.apply(ctx(11, 90), assign("c")) else {
        panic!()
    };
    assert_eq!(refused.len(), 1);
    s.apply(ctx(12, 95), Command::RegisterWorker { worker: worker() });
    assert_eq!(s.apply(ctx(13, 99), assign("c")), Reply::Assigned { refused: vec![] });
}

/// An assignment the worker has not accepted can be taken back, once, and only that
/// assignment: a stale take-back (older assignment index) or one after acceptance does nothing.
#[test]
fn unaccepted_assignment_is_taken_back_exactly_once() {
    let mut s = State::default();
    s.apply(ctx(1, 10), Command::RegisterWorker { worker: worker() });
    s.apply(
        ctx(2, 20),
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
    );
    let assign = Command::AssignTasks {
        assignments: vec![TaskAssignment {
            task: "t1".into(),
            worker: "mm1:8091".into(),
        }],
    };
    let unassign = |index| Command::UnassignTask {
        task: "t1".into(),
        worker: "mm1:8091".into(),
        assigned_index: index,
    };
    s.apply(ctx(3, 30), assign.clone());
    assert_eq!(s.tasks.get("t1").unwrap().runner(), crate::tasks::RunnerState::Pending);
    assert_eq!(s.apply(ctx(4, 40), unassign(99)), Reply::Unassigned { done: false });
    assert_eq!(s.apply(ctx(5, 41), unassign(3)), Reply::Unassigned { done: true });
    let t = s.tasks.get("t1").unwrap();
    assert_eq!(
        (t.runner(), t.assignment.is_none()),
        (crate::tasks::RunnerState::Waiting, true)
    );
    assert_eq!(s.tasks.waiting_count(), 1);
    assert_eq!(s.workers.get("mm1:8091").unwrap().tasks.len(), 0);
    assert_eq!(s.apply(ctx(6, 42), unassign(3)), Reply::Unassigned { done: false });
    // Assigned again and accepted (the worker reported it running): no take-back.
    s.apply(ctx(7, 50), assign);
    let running = crate::workers::TaskUpdate {
        id: "t1".into(),
        status: TaskState::Running,
        location: Some(crate::tasks::TaskLocation::unknown()),
        duration: -1,
        error_msg: None,
    };
    s.apply(
        ctx(8, 60),
        Command::ReportTasks {
            worker: "mm1:8091".into(),
            updates: vec![running],
        },
    );
    assert_eq!(s.tasks.get("t1").unwrap().runner(), crate::tasks::RunnerState::Running);
    assert_eq!(s.apply(ctx(9, 70), unassign(7)), Reply::Unassigned { done: false });
}

#[test]
fn golden_json_of_every_reply() {
    let cases = vec![
        (
            Reply::Submitted { id: "t1".into() },
            json!({"reply": "submitted", "id": "t1"}),
        ),
        (
            Reply::UnstartedFailed { done: true },
            json!({"reply": "unstartedFailed", "done": true}),
        ),
        (
            Reply::Pruned {
                tasks: 1,
                audit: 2,
                worker_config_history: 3,
                coordinator_history: 4,
            },
            json!({"reply": "pruned", "tasks": 1, "audit": 2, "workerConfigHistory": 3, "coordinatorHistory": 4}),
        ),
        (
            Reply::SubmitRejected {
                id: "t1".into(),
                rejected: SubmitRejected::QueueFull { limit: 3 },
            },
            json!({"reply": "submitRejected", "id": "t1", "rejected": {"reason": "queueFull", "limit": 3}}),
        ),
        (
            Reply::SubmitRejected {
                id: "t1".into(),
                rejected: SubmitRejected::AlreadyExists,
            },
            json!({"reply": "submitRejected", "id": "t1", "rejected": {"reason": "alreadyExists"}}),
        ),
        (
            Reply::Shutdown {
                outcome: ShutdownOutcome::Stopped,
            },
            json!({"reply": "shutdown", "outcome": "stopped"}),
        ),
        (
            Reply::ShutdownDatasource {
                stopped: vec!["a".into()],
            },
            json!({"reply": "shutdownDatasource", "stopped": ["a"]}),
        ),
        (
            Reply::NodeChanged { changed: true },
            json!({"reply": "nodeChanged", "changed": true}),
        ),
        (
            Reply::WorkerChanged { changed: None },
            json!({"reply": "workerChanged", "changed": null}),
        ),
        (
            Reply::WorkerLost {
                failed: Some(vec!["t1".into()]),
            },
            json!({"reply": "workerLost", "failed": ["t1"]}),
        ),
        (
            Reply::Assigned {
                refused: vec![crate::workers::Refused {
                    task: "t1".into(),
                    reason: "r".into(),
                }],
            },
            json!({"reply": "assigned", "refused": [{"task": "t1", "reason": "r"}]}),
        ),
        (
            Reply::Unassigned { done: true },
            json!({"reply": "unassigned", "done": true}),
        ),
        (
            Reply::Reported {
                applied: crate::workers::UpdatesApplied {
                    finished: vec!["t1".into()],
                    not_assigned: vec!["t2".into()],
                },
            },
            json!({"reply": "reported", "applied": {"finished": ["t1"], "notAssigned": ["t2"]}}),
        ),
        (Reply::ConfigSet, json!({"reply": "configSet"})),
    ];
    for (reply, golden) in cases {
        assert_eq!(serde_json::to_value(&reply).unwrap(), golden, "{reply:?}");
    }
}

#[test]
fn apply_is_deterministic_across_replicas() {
    let commands = [
        Command::AnnounceNode { node: announcement() },
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
        Command::ShutdownTask {
            id: "t1".into(),
            reason: SHUTDOWN_BY_USER.into(),
        },
        Command::ShutdownDatasourceTasks {
            datasource: "wiki".into(),
            reason: "x".into(),
        },
    ];
    let run = || {
        let mut s = State::default();
        let replies: Vec<Reply> = commands
            .iter()
            .enumerate()
            .map(|(i, c)| s.apply(ctx(i as u64 + 1, 1000 + i as u64), c.clone()))
            .collect();
        (serde_json::to_string(&s).unwrap(), replies)
    };
    let (a, replies) = run();
    let (b, _) = run();
    assert_eq!(a, b);
    assert_eq!(replies[1], Reply::Submitted { id: "t1".into() });
    assert_eq!(
        replies[2],
        Reply::SubmitRejected {
            id: "t1".into(),
            rejected: SubmitRejected::AlreadyExists
        }
    );
    assert_eq!(
        replies[3],
        Reply::Shutdown {
            outcome: ShutdownOutcome::Stopped
        }
    );
    assert_eq!(replies[4], Reply::ShutdownDatasource { stopped: vec![] });
}

#[test]
fn snapshot_round_trip_keeps_every_table() {
    let mut s = State::default();
    s.apply(ctx(1, 5), Command::AnnounceNode { node: announcement() });
    s.apply(
        ctx(2, 6),
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
    );
    let bytes = serde_json::to_vec(&s).unwrap();
    let back: State = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
    let t = back.tasks.get("t1").unwrap();
    assert_eq!((t.state, t.created_ms, t.created_index), (TaskState::Running, 6, 2));
    assert_eq!(back.nodes.get("node-1").unwrap().announced_ms, 5);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn command() -> impl Strategy<Value = Command> {
        let id = (0u8..12).prop_map(|i| format!("t{i}"));
        let ds = prop_oneof![Just("wiki".to_string()), Just("logs".to_string())];
        prop_oneof![
            4 => (id.clone(), ds.clone(), proptest::option::of(1u64..6)).prop_map(|(id, ds, max_active)| {
                Command::SubmitTask {
                    task: NewTask {
                        payload: RawValue::from_string(format!(r#"{{"type":"noop","id":"{id}"}}"#)).unwrap(),
            resource: Default::default(),
            readiness: Default::default(),
            locks: vec![],
                        group_id: id.clone(),
                        id,
                        task_type: "noop".into(),
                        datasource: ds,
                        priority: 0,
                    },
                    max_active,
                    idempotency_key: None,
                }
            }),
            2 => id.prop_map(|id| Command::ShutdownTask { id, reason: SHUTDOWN_BY_USER.into() }),
            1 => ds.prop_map(|datasource| Command::ShutdownDatasourceTasks { datasource, reason: "r".into() }),
        ]
    }

    proptest! {
        /// Replicas that apply the same commands end in the same state with the same replies,
        /// and the task table's invariants hold after every step.
        #[test]
        fn replicas_agree_and_invariants_hold(commands in proptest::collection::vec(command(), 1..60)) {
            let (mut a, mut b) = (State::default(), State::default());
            for (i, c) in commands.into_iter().enumerate() {
                let cx = ctx(i as u64 + 1, 1_000 + i as u64);
                let limit = match &c { Command::SubmitTask { max_active, .. } => *max_active, _ => None };
                let active_before = a.tasks.active_count() as u64;
                let (ra, rb) = (a.apply(cx, c.clone()), b.apply(cx, c));
                prop_assert_eq!(&ra, &rb);
                if let (Reply::Submitted { .. }, Some(limit)) = (&ra, limit) {
                    prop_assert!(active_before < limit, "a submission went past the queue limit");
                }
                let active: Vec<String> = a.tasks.active().map(|t| t.spec.id.clone()).collect();
                let running: Vec<String> =
                    a.tasks.all().filter(|t| t.state == TaskState::Running).map(|t| t.spec.id.clone()).collect();
                prop_assert_eq!(active, running, "the active set is exactly the RUNNING tasks");
                for t in a.tasks.all().filter(|t| t.state == TaskState::Failed) {
                    prop_assert!(t.error_msg.is_some() && t.duration_ms >= 0);
                }
            }
            prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        }
    }
}

#[test]
fn pruning_forgets_only_complete_tasks_and_records_past_their_retention() {
    let mut s = State::default();
    let submit = |s: &mut State, index: u64, id: &str| {
        let mut t = new_task();
        t.id = id.into();
        t.group_id = id.into();
        s.apply(
            ctx(index, 1_000),
            Command::SubmitTask {
                task: t,
                max_active: None,
                idempotency_key: None,
            },
        );
    };
    submit(&mut s, 1, "done");
    submit(&mut s, 2, "running");
    s.apply(
        ctx(3, 2_000),
        Command::ShutdownTask {
            id: "done".into(),
            reason: "stop".into(),
        },
    );
    let day = crate::interval::Interval::parse("2024-01-01/2024-01-02").unwrap();
    s.apply(
        ctx(4, 3_000),
        Command::AcquireLock {
            task: "running".into(),
            request: crate::locks::LockRequest {
                lock_type: crate::locks::LockType::Exclusive,
                interval: day,
                preferred_version: None,
            },
        },
    );
    s.apply(
        ctx(5, 3_500),
        Command::SetRules {
            datasource: "wiki".into(),
            rules: vec![crate::coordinator::rules::Rule::DropForever {}],
            audit: Default::default(),
        },
    );
    let audit_before = s.audit.len();
    assert!(audit_before > 0);
    // Nothing is old enough yet.
    let none = s.apply(
        ctx(6, 4_000),
        Command::PruneHistory {
            completed_tasks_before_ms: 1_000,
            audit_before_ms: 1_000,
        },
    );
    assert_eq!(
        none,
        Reply::Pruned {
            tasks: 0,
            audit: 0,
            worker_config_history: 0,
            coordinator_history: 0
        }
    );
    let pruned = s.apply(
        ctx(7, 10_000),
        Command::PruneHistory {
            completed_tasks_before_ms: 9_000,
            audit_before_ms: 9_000,
        },
    );
    assert_eq!(
        pruned,
        Reply::Pruned {
            tasks: 1,
            audit: audit_before,
            worker_config_history: 0,
            coordinator_history: 1
        }
    );
    // The rules stay; only their history goes.
    assert_eq!(s.coordinator.rules_of("wiki").len(), 1);
    assert!(s.coordinator.rule_history(None).is_empty());
    assert!(s.tasks.get("done").is_none());
    assert!(s.tasks.get("running").is_some_and(|t| t.is_active()));
    assert_eq!(s.locks.locks_of("running").len(), 1, "an active task keeps its locks");
}

/// Found in review: an assignment taken back after the timeout made the task wait again, so a
/// second worker could start it while the first worker's late peon ran too, and that peon
/// could still publish. The task now fails instead, the late peon's report is answered "not
/// assigned" (the worker stops it), and its task actions are refused.
#[test]
fn a_task_its_worker_did_not_start_in_time_fails_and_never_runs_twice() {
    let mut s = State::default();
    s.apply(ctx(1, 10), Command::RegisterWorker { worker: worker() });
    s.apply(
        ctx(2, 20),
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
    );
    s.apply(
        ctx(3, 30),
        Command::AssignTasks {
            assignments: vec![TaskAssignment {
                task: "t1".into(),
                worker: "mm1:8091".into(),
            }],
        },
    );
    let fail = |index| Command::FailUnstartedTask {
        task: "t1".into(),
        worker: "mm1:8091".into(),
        assigned_index: index,
        reason: "worker mm1:8091 did not start the task within 60000 ms".into(),
    };
    assert_eq!(s.apply(ctx(4, 40), fail(99)), Reply::UnstartedFailed { done: false });
    assert_eq!(s.apply(ctx(5, 41), fail(3)), Reply::UnstartedFailed { done: true });
    let t = s.tasks.get("t1").unwrap();
    assert_eq!(t.state, TaskState::Failed);
    assert!(t.error_msg.as_deref().unwrap().contains("did not start"));
    assert_eq!(s.workers.get("mm1:8091").unwrap().tasks.len(), 0, "the slot is free");
    assert_eq!(s.tasks.waiting_count(), 0, "the task is not offered again");
    // The late peon reports in: not this worker's task any more.
    let running = crate::workers::TaskUpdate {
        id: "t1".into(),
        status: TaskState::Running,
        location: Some(crate::tasks::TaskLocation::unknown()),
        duration: -1,
        error_msg: None,
    };
    let reply = s.apply(
        ctx(6, 50),
        Command::ReportTasks {
            worker: "mm1:8091".into(),
            updates: vec![running],
        },
    );
    let Reply::Reported { applied } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(applied.not_assigned, vec!["t1".to_string()]);
    // Its actions are refused: the task is not active.
    let lock = s.apply(
        ctx(7, 60),
        Command::AcquireLock {
            task: "t1".into(),
            request: crate::locks::LockRequest {
                lock_type: crate::locks::LockType::Exclusive,
                interval: crate::interval::Interval::parse("2024-01-01/2024-01-02").unwrap(),
                preferred_version: None,
            },
        },
    );
    assert!(
        matches!(
            lock,
            Reply::Lock {
                outcome: crate::locks::LockOutcome::Refused { .. }
            }
        ),
        "{lock:?}"
    );
    // Placing it again is refused too.
    let again = s.apply(
        ctx(8, 70),
        Command::AssignTasks {
            assignments: vec![TaskAssignment {
                task: "t1".into(),
                worker: "mm1:8091".into(),
            }],
        },
    );
    assert!(matches!(again, Reply::Assigned { refused } if refused.len() == 1));
}

#[test]
fn metadata_cleanup_forgets_stale_pending_segments_and_the_metadata_of_emptied_datasources() {
    use crate::segments::{PendingSegment, SegmentKey};
    let mut s = State::default();
    let pending = |task: &str, day: i64| PendingSegment {
        key: SegmentKey {
            start: day * 86_400_000,
            end: (day + 1) * 86_400_000,
            version: "v1".into(),
            partition: 0,
        },
        core_partitions: 0,
        sequence_name: "seq".into(),
        previous_segment_id: None,
        task_allocator_id: task.into(),
        created_ms: 1,
    };
    // An active task's pending segment stays; one of a task that is gone is stale.
    s.apply(
        ctx(1, 1),
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
            idempotency_key: None,
        },
    );
    let live = new_task().id;
    s.segments.apply_add_pending("wiki", pending(&live, 0));
    s.segments.apply_add_pending("gone", pending("finished-long-ago", 0));
    // A datasource with no segments keeps only its commit metadata.
    s.apply(
        ctx(2, 2),
        Command::SetDatasourceMetadata {
            datasource: "empty".into(),
            metadata: Some(json!({"type": "kafka"})),
        },
    );
    let reply = s.apply(ctx(3, 3), Command::CleanMetadata {});
    assert_eq!(
        reply,
        Reply::MetadataCleaned {
            pending_segments: 1,
            datasource_metadata: 1
        }
    );
    assert!(s.segments.datasource("empty").is_none());
    assert!(
        s.segments.datasource("gone").is_none(),
        "left with nothing, it goes too"
    );
    assert_eq!(s.segments.datasource("wiki").map(|d| d.pending().count()), Some(1));
    // Nothing more to clean.
    assert_eq!(
        s.apply(ctx(4, 4), Command::CleanMetadata {}),
        Reply::MetadataCleaned {
            pending_segments: 0,
            datasource_metadata: 0
        }
    );
}
