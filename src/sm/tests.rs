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
            },
            json!({"submitTask": {"task": {"id": "t1", "type": "noop", "groupId": "t1", "datasource": "wiki",
                   "priority": 50, "payload": {"type": "noop", "id": "t1"}}, "maxActive": 10}}),
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
    ];
    for (cmd, golden) in cases {
        assert_eq!(serde_json::to_value(&cmd).unwrap(), golden, "{cmd:?}");
        // Read back from text, as the log and snapshots are.
        let back: Command = serde_json::from_str(&golden.to_string()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), golden);
    }
}

#[test]
fn golden_json_of_every_reply() {
    let cases = vec![
        (
            Reply::Submitted { id: "t1".into() },
            json!({"reply": "submitted", "id": "t1"}),
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
        },
        Command::SubmitTask {
            task: new_task(),
            max_active: None,
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
                        group_id: id.clone(),
                        id,
                        task_type: "noop".into(),
                        datasource: ds,
                        priority: 0,
                    },
                    max_active,
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
