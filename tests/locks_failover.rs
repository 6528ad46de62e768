//! Locks and publishes across a leader kill -9, with real processes: a lock granted before the
//! kill is honoured by the new leader with no resync step, a publish racing the kill lands once
//! and whole or not at all, and every replica ends with the same segments, metadata and locks.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const DAY: &str = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z";

/// POSTs with the cluster secret to whichever node answers as the leader (a follower's redirect
/// is not followed: it would drop the secret), until a definitive (non-503) answer.
fn post_any(urls: &[String], path: &str, body: &Value) -> (u16, Value) {
    wait_for_blocking(&format!("an answer to POST {path}"), Duration::from_secs(60), || {
        urls.iter().find_map(|u| {
            let r = http_no_redirect()
                .post(format!("{u}{path}"))
                .bearer_auth(SECRET)
                .json(body)
                .send()
                .ok()?;
            let status = r.status().as_u16();
            (status != 503 && status != 307).then(|| (status, r.json().unwrap_or(Value::Null)))
        })
    })
}

fn action(urls: &[String], action: Value) -> Value {
    let (s, v) = post_any(
        urls,
        "/druid/indexer/v1/action",
        &json!({"task": {"type": "index", "id": "ingest"}, "action": action}),
    );
    assert_eq!(s, 200, "{v}");
    v["result"].clone()
}

fn segment(version: &str, partition: u32) -> Value {
    json!({"dataSource": "wiki", "interval": DAY, "version": version,
           "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": 0}, "size": 1})
}

fn publish(version: &str, partition: u32, from: i64, to: i64, token: u64) -> Value {
    json!({"type": "segmentTransactionalInsert", "segments": [segment(version, partition)],
           "startMetadata": {"type": "object", "theObject": if from == 0 { Value::Null } else { json!(from) }},
           "endMetadata": {"type": "object", "theObject": to}, "fencingTokens": [token]})
}

fn local_segments(url: &str) -> Option<Value> {
    http()
        .get(format!("{url}/internal/state/segments"))
        .bearer_auth(SECRET)
        .send()
        .ok()?
        .json()
        .ok()
}

#[test]
fn kill_9_leader_between_lock_grant_and_publish_lands_once_or_is_rejected() {
    let mut cluster = ThreeNodes::start(&["--worker-capacity", "0"]);
    let urls = cluster.urls();
    let (leader_id, leader_url) = wait_for_blocking("a leader", Duration::from_secs(30), || leader_of(&urls));
    let (s, v) = post_any(
        &urls,
        "/druid/indexer/v1/task",
        &raftlord_harness::index_task("ingest", "wiki"),
    );
    assert_eq!(s, 200, "{v}");
    let lock = action(&urls, json!({"type": "lockTryAcquire", "interval": DAY}));
    let (version, token) = (
        lock["version"].as_str().unwrap().to_string(),
        lock["fencingToken"].as_u64().unwrap(),
    );
    let first = action(&urls, publish(&version, 0, 0, 1, token));
    assert_eq!(first["success"], true, "{first}");

    // The next publish goes to the leader, which is killed while it may be in flight.
    let body = json!({"task": {"id": "ingest"}, "action": publish(&version, 1, 1, 2, token)});
    let racing = {
        let url = leader_url.clone();
        let body = body.clone();
        std::thread::spawn(move || {
            http()
                .post(format!("{url}/druid/indexer/v1/action"))
                .bearer_auth(SECRET)
                .json(&body)
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
        })
    };
    let mut killed = cluster.procs.remove(&leader_id).unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let raced = racing.join().unwrap();
    let survivors = cluster.urls();
    wait_for_blocking("a new leader", Duration::from_secs(30), || {
        leader_of(&survivors).filter(|(id, _)| *id != leader_id)
    });

    // The client does not know whether its publish landed, so it asks again: either it lands
    // now, or it landed before the kill and the compare-and-swap says the metadata moved on.
    let (s, retry) = post_any(&survivors, "/druid/indexer/v1/action", &body);
    assert_eq!(s, 200, "{retry}");
    let retry = &retry["result"];
    let landed_before = raced.as_ref().is_some_and(|v| v["result"]["success"] == true);
    if retry["success"] == false {
        assert!(
            retry["errorMsg"]
                .as_str()
                .unwrap()
                .starts_with("Inconsistency between stored metadata state"),
            "{retry}"
        );
    } else {
        assert!(
            !landed_before,
            "a publish acknowledged before the kill landed again: {retry}"
        );
    }

    // The lock granted by the old leader is still held, with its fencing token, on every replica.
    let held = action(&survivors, json!({"type": "lockList"}));
    assert_eq!(held, json!([lock]));

    // Every surviving replica holds both segments exactly once, with the metadata moved twice.
    for url in &survivors {
        let state = wait_for_blocking(
            &format!("{url} to apply both publishes"),
            Duration::from_secs(30),
            || local_segments(url).filter(|v| v["datasources"]["wiki"]["used"] == 2),
        );
        let wiki = &state["datasources"]["wiki"];
        assert_eq!(wiki["metadata"]["theObject"], 2, "{wiki}");
        assert_eq!(wiki["ids"].as_array().unwrap().len(), 2);
    }

    // A lock released and granted again has a new token; the old one is stale.
    action(&survivors, json!({"type": "lockRelease", "interval": DAY}));
    let again = action(&survivors, json!({"type": "lockTryAcquire", "interval": DAY}));
    assert!(again["fencingToken"].as_u64().unwrap() > token);
    let stale = action(&survivors, publish(again["version"].as_str().unwrap(), 2, 2, 3, token));
    assert_eq!(stale["success"], false);
    assert!(
        stale["errorMsg"].as_str().unwrap().contains("stale fencing token"),
        "{stale}"
    );

    // The killed node comes back and converges to the same state.
    drop(killed);
    cluster.spawn(leader_id);
    let all = cluster.urls();
    wait_for_blocking(
        "all three replicas to hold the same state",
        Duration::from_secs(60),
        || {
            let states: Vec<Value> = all.iter().map(|u| local_segments(u)).collect::<Option<_>>()?;
            let same = states
                .iter()
                .all(|s| s["datasources"] == states[0]["datasources"] && s["locks"] == states[0]["locks"]);
            (same && states[0]["locks"].as_array()?.len() == 1).then_some(())
        },
    );
}
