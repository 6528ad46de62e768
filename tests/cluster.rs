//! In-process three-node clusters over real HTTP, with a fault injector that partitions nodes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{node_config, wait_for, Cluster};
use raftlord::node::RunningNode;
use raftlord::sm::{Command, Reply};
use raftlord::tasks::NewTask;
use raftlord_raft::ClusterFormation;
use serde_json::value::RawValue;
use tokio::net::TcpListener;

fn submit(id: &str) -> Command {
    Command::SubmitTask {
        task: NewTask {
            id: id.into(),
            task_type: "noop".into(),
            group_id: id.into(),
            datasource: "wiki".into(),
            priority: 0,
            payload: RawValue::from_string(format!(r#"{{"type":"noop","id":"{id}"}}"#)).unwrap(),
            resource: Default::default(),
            readiness: Default::default(),
            locks: vec![],
        },
        max_active: None,
        idempotency_key: None,
    }
}

async fn task_ids(node: &RunningNode) -> BTreeSet<String> {
    node.raft
        .shared
        .read()
        .await
        .state
        .tasks
        .all()
        .map(|t| t.spec.id.clone())
        .collect()
}

/// Submits tasks `t0..t{n-1}` through `leader`, one at a time so each is its own log entry
/// (and the log grows past snapshots), returning their ids.
async fn submit_one_by_one(c: &Cluster, leader: u64, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = format!("t{i}");
        c.nodes[&leader].raft.proposer.propose(submit(&id)).await.unwrap();
        ids.insert(id);
    }
    ids
}

async fn wait_all_have(c: &Cluster, ids: &BTreeSet<String>) {
    for (id, node) in &c.nodes {
        wait_for(
            &format!("node {id} to apply every task"),
            Duration::from_secs(30),
            || async { task_ids(node).await.is_superset(ids).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_form_one_cluster_and_followers_redirect() {
    let c = Cluster::start(3, 1000).await;
    let leader = c.leader().await;
    let status = c.nodes[&leader].raft.status().await;
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    // The membership entries are in RocksDB's memtables, and /status says how much that takes.
    assert!(status.storage_memory_bytes > 0, "{status:?}");
    assert!(status.storage_memory_bytes <= raftlord_storage::MEMTABLE_BUDGET as u64 * 2);

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let r = http
        .post(format!("{}/druid/indexer/v1/task?x=1", c.url(follower)))
        .body(r#"{"type":"noop","id":"via-follower"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!("{}/druid/indexer/v1/task?x=1", c.url(leader)).as_str()
    );

    // A client that follows redirects submits through any node.
    let follow = reqwest::Client::new();
    let r = follow
        .post(format!("{}/druid/indexer/v1/task", c.url(follower)))
        .body(r#"{"type":"noop","id":"via-follower"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    wait_all_have(&c, &BTreeSet::from(["via-follower".to_string()])).await;
    let r = http
        .get(format!("{}/druid/indexer/v1/isLeader", c.url(follower)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);

    // The Coordinator leads where the Overlord does, and every node says where.
    let leader = c.leader().await;
    for (id, expected) in [
        (leader, reqwest::StatusCode::OK),
        (follower, reqwest::StatusCode::NOT_FOUND),
    ] {
        let r = http
            .get(format!("{}/druid/coordinator/v1/isLeader", c.url(id)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "node {id}");
        let r = http
            .get(format!("{}/druid/coordinator/v1/leader", c.url(id)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), c.url(leader), "node {id}");
    }
    // Retention rules set through a follower reach every node's state.
    let r = follow
        .post(format!("{}/druid/coordinator/v1/rules/wiki", c.url(follower)))
        .header("content-type", "application/json")
        .body(r#"[{"type": "loadByPeriod", "period": "P1M"}, {"type": "dropForever"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    wait_for("the rules on every node", Duration::from_secs(10), || async {
        for n in c.nodes.values() {
            if n.raft.shared.read().await.state.coordinator.rules_of("wiki").len() != 2 {
                return None;
            }
        }
        Some(())
    })
    .await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_cannot_commit_and_the_majority_elects_a_new_one() {
    let c = Cluster::start(3, 1000).await;
    let old = c.leader().await;
    let others: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    c.faults.isolate(old, &others);

    // The old leader cannot commit while cut off.
    let stuck = tokio::time::timeout(
        Duration::from_secs(2),
        c.nodes[&old].raft.proposer.propose(submit("lost")),
    )
    .await;
    assert!(
        !matches!(stuck, Ok(Ok(Reply::Submitted { .. }))),
        "an isolated leader committed: {stuck:?}"
    );

    // Nor does it keep serving reads once its lease has run out.
    wait_for(
        "the isolated leader to stop serving",
        Duration::from_secs(10),
        || async { (!c.nodes[&old].raft.leader_ready()).then_some(()) },
    )
    .await;
    let new = c.leader_among(&others).await;
    assert_ne!(new, old);
    let reply = c.nodes[&new].raft.proposer.propose(submit("kept")).await.unwrap();
    assert_eq!(reply, Reply::Submitted { id: "kept".into() });

    c.faults.heal();
    let leader = c.leader().await;
    assert_ne!(leader, old, "the old leader's term is over");
    wait_all_have(&c, &BTreeSet::from(["kept".to_string()])).await;
    for node in c.nodes.values() {
        assert!(
            !task_ids(node).await.contains("lost"),
            "a write from the isolated leader survived"
        );
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_through_a_snapshot() {
    let c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let rest: Vec<u64> = c.nodes.keys().copied().filter(|id| *id != lagging).collect();
    c.faults.isolate(lagging, &rest);

    let ids = submit_one_by_one(&c, leader, 150).await;
    let leader_status = c.nodes[&leader].raft.status().await;
    assert!(
        leader_status.snapshot_index.unwrap_or(0) > 0,
        "the leader took no snapshot"
    );

    c.faults.heal();
    wait_all_have(&c, &ids).await;
    let s = c.nodes[&lagging].raft.status().await;
    assert!(
        s.snapshots_installed > 0,
        "the follower caught up without a snapshot: {s:?}"
    );
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_node_joins_as_learner_catches_up_then_votes() {
    let mut c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let ids = submit_one_by_one(&c, leader, 60).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cfg = node_config(4, &c.dir.path().join("node-4"), ClusterFormation::Join, 20);
    let node4 = RunningNode::start_on(listener, cfg, c.faults.clone()).await.unwrap();
    c.nodes[&leader].raft.add_node(4, url).await.unwrap();
    c.nodes.insert(4, node4);
    wait_all_have(&c, &ids).await;
    let status = c.nodes[&leader].raft.status().await;
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 4);
    assert!(
        c.nodes[&4].raft.status().await.snapshots_installed > 0,
        "the new node caught up without a snapshot"
    );

    // Removing it again leaves three voters, and the cluster still commits.
    c.nodes[&leader].raft.remove_node(4).await.unwrap();
    c.stop(4).await;
    let leader = c.leader().await;
    assert_eq!(c.nodes[&leader].raft.status().await.members.len(), 3);
    c.nodes[&leader]
        .raft
        .proposer
        .propose(submit("after-remove"))
        .await
        .unwrap();
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_restores_from_snapshot_not_by_replaying_the_whole_log() {
    let mut c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let ids = submit_one_by_one(&c, leader, 80).await;
    wait_all_have(&c, &ids).await;
    for id in [1, 2, 3] {
        c.stop(id).await;
    }
    for id in [1, 2, 3] {
        c.restart(id).await;
    }
    c.leader().await;
    for (id, node) in &c.nodes {
        // The log up to `purged` is gone, so the tasks submitted before it can only have come
        // back from the snapshot (plus the log tail after it).
        let purged = node.raft.raft.metrics().borrow().purged.map(|l| l.index).unwrap_or(0);
        assert!(
            purged > 0,
            "node {id} kept its whole log; a restart would replay all of it"
        );
        let s = node.raft.status().await;
        assert!(
            s.snapshot_index.unwrap_or(0) >= purged,
            "node {id}: snapshot {s:?} is older than the purge point"
        );
    }
    wait_all_have(&c, &ids).await;
    c.stop_all().await;
}

/// Found a bug: without openraft's `loosen-follower-log-revert`, the leader panicked when a
/// member came back with an empty log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_survives_a_member_restarted_with_a_wiped_data_dir_and_it_rejoins() {
    let mut c = Cluster::start(3, 20).await;
    let leader = c.leader().await;
    let ids = submit_one_by_one(&c, leader, 40).await;
    wait_all_have(&c, &ids).await;
    let wiped = *c.nodes.keys().find(|id| **id != leader).unwrap();
    c.stop(wiped).await;
    std::fs::remove_dir_all(c.node_dir(wiped)).unwrap();
    c.restart(wiped).await;

    // It must not form a cluster of its own: it waits for the existing leader and catches up.
    wait_all_have(&c, &ids).await;
    let leader = c.leader().await;
    let status = c.nodes[&wiped].raft.status().await;
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 3);
    c.nodes[&leader]
        .raft
        .proposer
        .propose(submit("after-wipe"))
        .await
        .unwrap();
    wait_all_have(&c, &BTreeSet::from(["after-wipe".to_string()])).await;
    c.stop_all().await;
}
