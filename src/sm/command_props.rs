//! Generated commands of every kind, with boundary values, through the whole path a command
//! takes: the proposer's checks ([`check_storable`]), the log entry's encoding and decoding,
//! `apply` on a state that already holds tasks, locks and segments, and the snapshot's encoding
//! and decoding. Whatever passes the checks must come back equal from the log and apply without
//! panicking; the state must always read back from its snapshot. A command the checks refuse
//! never reaches the log, so it is not applied.

use proptest::prelude::*;
use raftlord_raft::{check_storable, ApplyContext, Batch, StateMachine, TypeConfig};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::*;
use crate::interval::{MAX_INSTANT, MAX_PRINTABLE, MIN_INSTANT, MIN_PRINTABLE};
use crate::locks::LockType;
use crate::nodes::NodeRole;
use crate::segments::segment::DataSegment;
use crate::segments::SegmentKey;
use crate::tasks::TaskState;
use crate::workers::TaskUpdate;

const DAY_MS: i64 = 86_400_000;
/// 2024-01-01T00:00:00Z.
const DAY0: i64 = 1_704_067_200_000;

fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(DAY0),
        2 => Just(DAY0 + DAY_MS),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => Just(MIN_INSTANT),
        1 => Just(MAX_INSTANT),
        1 => Just(MIN_PRINTABLE),
        1 => Just(MAX_PRINTABLE),
        1 => Just(MAX_PRINTABLE + 1),
        1 => Just(0i64),
        2 => any::<i64>(),
        2 => DAY0..DAY0 + 10 * DAY_MS,
    ]
}

fn interval() -> impl Strategy<Value = Interval> {
    prop_oneof![
        3 => Just(Interval { start: DAY0, end: DAY0 + DAY_MS }),
        1 => Just(Interval::ETERNITY),
        2 => (instant(), instant()).prop_map(|(start, end)| Interval { start, end }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("t0".to_string()),
        2 => Just("wiki".to_string()),
        1 => Just(String::new()),
        1 => Just("a\u{0}b".to_string()),
        1 => Just("é漢字\u{1F600}".to_string()),
        1 => Just("x".repeat(10 * 1024)),
        2 => "\\PC{0,12}",
    ]
}

fn partition() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(1), Just(u32::MAX - 1), Just(u32::MAX), any::<u32>()]
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(json!({"type": "kafka", "partitions": {"0": 5}})),
        Just(json!(f64::MAX)),
        Just(json!(1e-300)),
        Just(json!(0.1)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        (0usize..140).prop_map(nested),
        text().prop_map(Value::String),
    ]
}

fn task(id: String, datasource: String, locks: Vec<LockRequest>) -> NewTask {
    let payload = json!({"type": "noop", "id": id, "dataSource": datasource}).to_string();
    NewTask {
        group_id: id.clone(),
        id,
        task_type: "noop".into(),
        datasource,
        priority: 50,
        payload: RawValue::from_string(payload).unwrap(),
        resource: Default::default(),
        readiness: Default::default(),
        locks,
    }
}

fn lock_request() -> impl Strategy<Value = LockRequest> {
    (
        prop_oneof![
            Just(LockType::Exclusive),
            Just(LockType::Shared),
            Just(LockType::Append),
            Just(LockType::Replace)
        ],
        interval(),
        proptest::option::of(text()),
    )
        .prop_map(|(lock_type, interval, preferred_version)| LockRequest {
            lock_type,
            interval,
            preferred_version,
        })
}

/// A segment as a peon would send it, read by the API's parser; falls back to one built
/// directly (as a buggy caller could) when the JSON is refused.
fn segment() -> impl Strategy<Value = DataSegment> {
    (interval(), text(), partition(), json_value(), any::<i64>()).prop_map(|(iv, version, p, load, size)| {
        let ok_interval = if iv.is_valid() { iv } else { Interval { start: DAY0, end: DAY0 + DAY_MS } };
        let j = json!({
            "dataSource": "wiki", "interval": ok_interval.to_string(), "version": if version.is_empty() { "v".to_string() } else { version },
            "loadSpec": {"type": "local", "path": load}, "dimensions": "a,b", "metrics": "count",
            "shardSpec": {"type": "numbered", "partitionNum": p, "partitions": 0},
            "binaryVersion": 9, "size": size.unsigned_abs() as i64 & i64::MAX,
        });
        let mut s = DataSegment::parse(&j.to_string()).expect("a well-formed segment parses");
        s.key.start = iv.start;
        s.key.end = iv.end;
        s
    })
}

fn key() -> impl Strategy<Value = SegmentKey> {
    (interval(), text(), partition()).prop_map(|(iv, version, partition)| SegmentKey {
        start: iv.start,
        end: iv.end,
        version: version.into(),
        partition,
    })
}

fn segment_ref() -> impl Strategy<Value = crate::coordinator::load::SegmentRef> {
    (prop_oneof![Just("wiki".to_string()), text()], key()).prop_map(|(ds, key)| crate::coordinator::load::SegmentRef {
        datasource: ds.into(),
        key,
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (
            text(),
            text(),
            proptest::collection::vec(lock_request(), 0..2),
            proptest::option::of(any::<u64>()),
            proptest::option::of(text())
        )
            .prop_map(|(id, ds, locks, max_active, idempotency_key)| Command::SubmitTask {
                task: task(id, ds, locks),
                max_active,
                idempotency_key
            }),
        (text(), text()).prop_map(|(id, reason)| Command::ShutdownTask { id, reason }),
        (text(), text()).prop_map(|(datasource, reason)| Command::ShutdownDatasourceTasks { datasource, reason }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(id, raft_id, announced_ms)| Command::AnnounceNode {
            node: NodeAnnouncement {
                id,
                raft_id: Some(raft_id),
                roles: vec![NodeRole::Overlord],
                url: "http://x".into(),
                version: "v".into(),
                announced_ms
            }
        }),
        text().prop_map(|id| Command::WithdrawNode { id }),
        (text(), any::<u32>()).prop_map(|(host, capacity)| Command::RegisterWorker {
            worker: crate::workers::Worker {
                scheme: "http".into(),
                host,
                ip: "h".into(),
                capacity,
                version: "0".into(),
                category: "c".into()
            }
        }),
        (text(), any::<bool>()).prop_map(|(host, enabled)| Command::SetWorkerEnabled { host, enabled }),
        (text(), text()).prop_map(|(host, reason)| Command::WorkerLost { host, reason }),
        (text(), text()).prop_map(|(task, worker)| Command::AssignTasks {
            assignments: vec![TaskAssignment { task, worker }]
        }),
        (text(), text(), any::<u64>()).prop_map(|(task, worker, assigned_index)| Command::UnassignTask {
            task,
            worker,
            assigned_index
        }),
        (text(), text(), any::<u64>(), text()).prop_map(|(task, worker, assigned_index, reason)| {
            Command::FailUnstartedTask {
                task,
                worker,
                assigned_index,
                reason,
            }
        }),
        (text(), text(), any::<i64>(), proptest::option::of(text())).prop_map(|(worker, id, duration, error_msg)| {
            Command::ReportTasks {
                worker,
                updates: vec![TaskUpdate {
                    id,
                    status: TaskState::Failed,
                    location: None,
                    duration,
                    error_msg,
                }],
            }
        }),
        (text(), lock_request()).prop_map(|(task, request)| Command::AcquireLock { task, request }),
        (text(), interval()).prop_map(|(task, interval)| Command::ReleaseLock { task, interval }),
        (
            text(),
            proptest::collection::vec(segment(), 0..3),
            proptest::collection::vec(key(), 0..2),
            proptest::option::of(json_value()),
            proptest::option::of(json_value()),
            proptest::option::of(proptest::collection::vec(any::<u64>(), 0..2))
        )
            .prop_map(
                |(task, segments, overwritten, start_metadata, end_metadata, fencing_tokens)| {
                    Command::PublishSegments {
                        task,
                        publish: Publish {
                            kind: PublishKind::Insert,
                            segments,
                            overwritten,
                            start_metadata,
                            end_metadata,
                            fencing_tokens,
                        },
                    }
                }
            ),
        (
            text(),
            prop_oneof![
                Just(SegmentFilter::All),
                (
                    interval(),
                    proptest::option::of(proptest::collection::vec(text(), 0..2))
                )
                    .prop_map(|(interval, versions)| SegmentFilter::Interval { interval, versions }),
                proptest::collection::vec(key(), 0..3).prop_map(|keys| SegmentFilter::Keys { keys }),
            ],
            any::<bool>()
        )
            .prop_map(|(datasource, filter, used)| Command::MarkSegments {
                datasource,
                filter,
                used
            }),
        (
            text(),
            instant(),
            interval(),
            text(),
            proptest::option::of(text()),
            any::<bool>(),
            proptest::option::of(text()),
            any::<bool>()
        )
            .prop_map(
                |(
                    task,
                    timestamp,
                    preferred_interval,
                    sequence_name,
                    previous_segment_id,
                    skip_lineage_check,
                    supervisor_task_id,
                    use_lock_version,
                )| {
                    Command::AllocateSegment {
                        task,
                        request: AllocateRequest {
                            timestamp,
                            preferred_interval,
                            sequence_name,
                            previous_segment_id,
                            skip_lineage_check,
                            lock_type: LockType::Exclusive,
                            supervisor_task_id,
                            use_lock_version,
                        },
                    }
                }
            ),
        (text(), proptest::option::of(interval()))
            .prop_map(|(datasource, created)| Command::DeletePendingSegments { datasource, created }),
        (text(), text(), proptest::collection::vec(key(), 0..4))
            .prop_map(|(task, datasource, keys)| Command::DeleteSegments { task, datasource, keys }),
        (text(), proptest::option::of(json_value()))
            .prop_map(|(datasource, metadata)| Command::SetDatasourceMetadata { datasource, metadata }),
        (any::<u64>(), any::<u64>()).prop_map(|(completed_tasks_before_ms, audit_before_ms)| Command::PruneHistory {
            completed_tasks_before_ms,
            audit_before_ms
        }),
        security_command().prop_map(Command::Security),
        Just(Command::CleanMetadata {}),
        (
            prop_oneof![Just("wiki".to_string()), text()],
            prop_oneof![Just("wiki".to_string()), text()],
            prop_oneof![Just("P1D".to_string()), Just("P".to_string()), text()],
            prop_oneof![Just(0u64), Just(1), Just(u64::MAX)],
            any::<bool>()
        )
            .prop_map(|(datasource, data_source, skip, size, remove)| {
                let config = crate::coordinator::compaction::DatasourceCompactionConfig::parse(&json!({
                    "dataSource": "wiki"
                }))
                .expect("a minimal compaction config reads");
                Command::SetCompactionConfig {
                    datasource,
                    config: (!remove).then_some(crate::coordinator::compaction::DatasourceCompactionConfig {
                        data_source,
                        skip_offset_from_latest: skip,
                        input_segment_size_bytes: size,
                        ..config
                    }),
                    audit: Default::default(),
                }
            }),
        (
            prop_oneof![Just(0.1f64), Just(-1.0), Just(2.0), any::<f64>()],
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(ratio, max, auto)| Command::SetCompactionSlots {
                slots: crate::coordinator::compaction::CompactionSlots {
                    compaction_task_slot_ratio: ratio,
                    max_compaction_task_slots: max,
                    use_auto_scale_slots: auto,
                }
            }),
        (coordinator_config(), text()).prop_map(|(config, author)| Command::SetCoordinatorConfig {
            config,
            audit: crate::workers::AuditInfo {
                author,
                ..Default::default()
            }
        }),
        (
            text(),
            text(),
            prop_oneof![Just("http".to_string()), text()],
            any::<u64>()
        )
            .prop_map(|(host, tier, scheme, max_size)| Command::RegisterHistorical {
                server: crate::coordinator::load::Historical {
                    scheme,
                    host,
                    tier,
                    max_size
                }
            }),
        prop_oneof![Just("h:1".to_string()), text()].prop_map(|host| Command::HistoricalLost { host }),
        (
            prop_oneof![Just("h:1".to_string()), text()],
            proptest::collection::vec((segment_ref(), proptest::option::of(text())), 0..4),
            proptest::collection::vec(segment_ref(), 0..4)
        )
            .prop_map(|(host, loads, drops)| Command::PlanReplicas {
                loads: loads
                    .into_iter()
                    .map(|(segment, moved_from)| crate::coordinator::load::LoadRequest {
                        host: host.clone(),
                        segment,
                        moved_from
                    })
                    .collect(),
                drops: drops
                    .into_iter()
                    .map(|segment| crate::coordinator::load::DropRequest {
                        host: host.clone(),
                        segment
                    })
                    .collect(),
            }),
        (
            prop_oneof![Just("h:1".to_string()), text()],
            proptest::collection::vec((segment_ref(), 0u8..3, text()), 0..4),
            any::<bool>()
        )
            .prop_map(|(host, reports, full)| Command::ReportReplicas {
                host,
                reports: reports
                    .into_iter()
                    .map(|(segment, kind, reason)| crate::coordinator::load::ReplicaReport {
                        segment,
                        outcome: match kind {
                            0 => crate::coordinator::load::Outcome::Loaded,
                            1 => crate::coordinator::load::Outcome::Dropped,
                            _ => crate::coordinator::load::Outcome::Failed { reason },
                        }
                    })
                    .collect(),
                full
            }),
        (
            prop_oneof![Just("_default".to_string()), Just("wiki".to_string()), text()],
            proptest::collection::vec(rule(), 0..3),
            (text(), text())
        )
            .prop_map(|(datasource, rules, (author, comment))| Command::SetRules {
                datasource,
                rules,
                audit: crate::workers::AuditInfo {
                    author,
                    comment,
                    ip: String::new()
                }
            }),
    ]
}

/// Dynamic configurations with values at and past Druid's limits.
fn coordinator_config() -> impl Strategy<Value = crate::coordinator::config::DynamicConfig> {
    (
        any::<u64>(),
        any::<u32>(),
        prop_oneof![
            Just(0.0f64),
            Just(1.0),
            Just(-0.5),
            Just(1.5),
            Just(f64::MAX),
            any::<f64>()
        ],
        prop_oneof![Just(0u32), Just(1), any::<u32>()],
        proptest::collection::btree_set(text(), 0..3),
        any::<bool>(),
        prop_oneof![
            Just(crate::coordinator::config::BalancerStrategy::Cost),
            Just(crate::coordinator::config::BalancerStrategy::DiskNormalized),
            Just(crate::coordinator::config::BalancerStrategy::Random),
        ],
    )
        .prop_map(|(wait, moves, ratio, threads, whitelist, pause, balancer_strategy)| {
            crate::coordinator::config::DynamicConfig {
                millis_to_wait_before_deleting: wait,
                max_segments_to_move: moves,
                kill_task_slot_ratio: ratio,
                balancer_compute_threads: threads,
                kill_data_source_whitelist: whitelist,
                pause_coordination: pause,
                balancer_strategy,
                ..Default::default()
            }
        })
}

/// Rules with boundary values: periods and intervals that do and do not read, replica counts
/// at the edges of what is allowed.
fn rule() -> impl Strategy<Value = crate::coordinator::rules::Rule> {
    use crate::coordinator::rules::Rule;
    let period = prop_oneof![
        Just("P1M".to_string()),
        Just("PT0.5S".to_string()),
        Just("P9999Y".to_string()),
        Just("P4294967295D".to_string()),
        text()
    ];
    let interval = prop_oneof![
        Just("2024-01-01/2024-02-01".to_string()),
        Just("2024-01-01/P1D".to_string()),
        text()
    ];
    let replicants = || {
        proptest::option::of(proptest::collection::btree_map(
            text(),
            prop_oneof![Just(0i64), Just(-1), Just(i64::from(u32::MAX)), any::<i64>()],
            0..3,
        ))
    };
    prop_oneof![
        (replicants(), any::<bool>()).prop_map(|(tiered_replicants, use_default_tier_for_null)| {
            Rule::LoadForever {
                tiered_replicants,
                use_default_tier_for_null,
            }
        }),
        (period.clone(), any::<bool>(), replicants()).prop_map(|(period, include_future, tiered_replicants)| {
            Rule::LoadByPeriod {
                period,
                include_future,
                tiered_replicants,
                use_default_tier_for_null: true,
            }
        }),
        interval.clone().prop_map(|interval| Rule::DropByInterval { interval }),
        period.clone().prop_map(|period| Rule::DropBeforeByPeriod { period }),
        (period, any::<bool>()).prop_map(|(period, include_future)| Rule::DropByPeriod { period, include_future }),
        interval.prop_map(|interval| Rule::BroadcastByInterval { interval }),
        Just(Rule::DropForever {}),
    ]
}

fn credentials() -> impl Strategy<Value = crate::security::Credentials> {
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..70),
        prop_oneof![Just(0u32), Just(1u32), Just(10_000u32), any::<u32>()],
    )
        .prop_map(|(salt, hash, iterations)| crate::security::Credentials { salt, hash, iterations })
}

fn security_command() -> impl Strategy<Value = crate::security::SecurityCommand> {
    use crate::security::{Action, Permission, Resource, SecurityCommand as S};
    let pattern = prop_oneof![
        Just(".*".to_string()),
        Just("wiki(".to_string()),
        Just("a{99999}".to_string()),
        text()
    ];
    let permission = (pattern, text(), any::<bool>()).prop_map(|(name, kind, write)| Permission {
        resource: Resource { name, kind },
        action: if write { Action::Write } else { Action::Read },
    });
    prop_oneof![
        text().prop_map(|name| S::CreateUser { name }),
        text().prop_map(|name| S::DeleteUser { name }),
        (text(), credentials()).prop_map(|(name, credentials)| S::SetCredentials { name, credentials }),
        text().prop_map(|name| S::CreateAuthzUser { name }),
        text().prop_map(|name| S::DeleteAuthzUser { name }),
        text().prop_map(|name| S::CreateRole { name }),
        text().prop_map(|name| S::DeleteRole { name }),
        (text(), text()).prop_map(|(user, role)| S::AssignRole { user, role }),
        (text(), text()).prop_map(|(user, role)| S::UnassignRole { user, role }),
        (text(), proptest::collection::vec(permission, 0..3))
            .prop_map(|(role, permissions)| S::SetPermissions { role, permissions }),
        credentials().prop_map(|credentials| S::InitAdmin { credentials }),
    ]
}

fn ctx(index: u64) -> ApplyContext {
    ApplyContext {
        index,
        time_ms: 1_800_000_000_000 + index,
    }
}

/// A state with an active task `t0` on `wiki` holding the day's lock, and a published segment
/// of that day at the largest partition number.
fn seeded() -> State {
    let mut s = State::default();
    s.apply(
        ctx(1),
        Command::SubmitTask {
            task: task("t0".into(), "wiki".into(), vec![]),
            max_active: None,
            idempotency_key: None,
        },
    );
    let day = Interval {
        start: DAY0,
        end: DAY0 + DAY_MS,
    };
    s.apply(
        ctx(2),
        Command::AcquireLock {
            task: "t0".into(),
            request: LockRequest {
                lock_type: LockType::Exclusive,
                interval: day,
                preferred_version: None,
            },
        },
    );
    let version = s.locks.locks_of("t0")[0].version.clone();
    let j = json!({"dataSource": "wiki", "interval": day.to_string(), "version": version, "loadSpec": {"type": "local"},
                   "shardSpec": {"type": "numbered", "partitionNum": u32::MAX, "partitions": 0}, "size": i64::MAX});
    let seg = DataSegment::parse(&j.to_string()).unwrap();
    let reply = s.apply(
        ctx(3),
        Command::PublishSegments {
            task: "t0".into(),
            publish: Publish {
                kind: PublishKind::Insert,
                segments: vec![seg],
                overwritten: vec![],
                start_metadata: None,
                end_metadata: None,
                fencing_tokens: None,
            },
        },
    );
    assert!(
        matches!(
            reply,
            Reply::Published {
                outcome: PublishOutcome::Published { .. }
            }
        ),
        "{reply:?}"
    );
    s
}

type Entry = openraft::Entry<TypeConfig<State>>;

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_command_that_passes_the_checks_is_stored_read_back_and_applied(
        commands in proptest::collection::vec(command(), 1..12),
    ) {
        let mut state = seeded();
        for (i, command) in commands.into_iter().enumerate() {
            let index = 10 + i as u64;
            if check_storable::<State>(&command).is_err() {
                continue;
            }
            let entry = Entry {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: openraft::EntryPayload::Normal(Batch { time_ms: ctx(index).time_ms, items: vec![command] }),
            };
            let bytes = serde_json::to_vec(&entry).unwrap();
            let back: Entry = serde_json::from_slice(&bytes)
                .map_err(|e| TestCaseError::fail(format!("a checked command's log entry does not read back: {e}")))?;
            let openraft::EntryPayload::Normal(batch) = back.payload else { unreachable!() };
            let openraft::EntryPayload::Normal(sent) = entry.payload else { unreachable!() };
            prop_assert_eq!(&batch, &sent);
            for c in batch.items {
                let _ = state.apply(ctx(index), c);
            }
        }
        let snapshot = serde_json::to_vec(&state).unwrap();
        let restored: State = serde_json::from_slice(&snapshot)
            .map_err(|e| TestCaseError::fail(format!("the snapshot does not read back: {e}")))?;
        prop_assert_eq!(serde_json::to_vec(&restored).unwrap(), snapshot);
    }
}

/// Found by publishing partition 4294967295 and allocating in its interval: the next partition
/// number overflowed, panicking every replica in a debug build (and handing two sequences the
/// same segment in a release build).
#[test]
fn allocating_after_the_largest_partition_is_refused_not_an_overflow() {
    let mut s = seeded();
    let day = Interval {
        start: DAY0,
        end: DAY0 + DAY_MS,
    };
    let reply = s.apply(
        ctx(5),
        Command::AllocateSegment {
            task: "t0".into(),
            request: AllocateRequest {
                timestamp: DAY0 + 5,
                preferred_interval: day,
                sequence_name: "s1".into(),
                previous_segment_id: None,
                skip_lineage_check: true,
                lock_type: LockType::Exclusive,
                supervisor_task_id: None,
                use_lock_version: false,
            },
        },
    );
    let Reply::Allocated {
        outcome: AllocateOutcome::Refused { reason },
    } = reply
    else {
        panic!("expected a refusal, got {reply:?}")
    };
    assert!(reason.contains("no partition number is left"), "{reason}");
}

/// Found by `segmentAllocate` at eternity's end with a DAY granularity: the bucket was stored
/// and printed as raw milliseconds, and no node could read its log back.
#[test]
fn an_interval_outside_the_printable_range_is_refused_before_the_log() {
    let past = Interval {
        start: MAX_INSTANT - 10,
        end: MAX_INSTANT + 86_400_000,
    };
    let cmd = Command::AllocateSegment {
        task: "t0".into(),
        request: AllocateRequest {
            timestamp: MAX_INSTANT,
            preferred_interval: past,
            sequence_name: "s1".into(),
            previous_segment_id: None,
            skip_lineage_check: true,
            lock_type: LockType::Exclusive,
            supervisor_task_id: None,
            use_lock_version: false,
        },
    };
    let err = check_storable::<State>(&cmd).unwrap_err();
    assert!(err.contains("out of range"), "{err}");
    let deep = Command::SetDatasourceMetadata {
        datasource: "wiki".into(),
        metadata: Some(nested(125)),
    };
    let err = check_storable::<State>(&deep).unwrap_err();
    assert!(err.contains("levels deep"), "{err}");
}
