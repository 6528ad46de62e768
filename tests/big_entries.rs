//! Entries near the payload limit replicate without costing an election.
//!
//! openraft 0.9 gives each AppendEntries one heartbeat interval, whatever its size; a 40 MiB
//! task spec took longer than that to send and decode, so every attempt timed out, nothing
//! reached the followers, and they called elections. Large appends now run in the background
//! with a timeout that scales with their size, while heartbeats keep the followers in contact.

mod common;

use std::time::Duration;

use common::{http, leader_of, local_tasks, wait_answering, wait_for_blocking, ThreeNodes};
use serde_json::{json, Value};

fn term(url: &str) -> Option<u64> {
    http().get(format!("{url}/status")).send().ok()?.json::<Value>().ok()?["term"].as_u64()
}

#[test]
fn a_55_mib_spec_replicates_to_every_node_without_an_election() {
    let cluster = ThreeNodes::start(&["--worker-capacity", "0"]);
    let urls = cluster.urls();
    for u in &urls {
        wait_answering(u);
    }
    let (_, leader_url) = wait_for_blocking("a leader", Duration::from_secs(30), || leader_of(&urls));
    let term_before = wait_for_blocking("the term", Duration::from_secs(10), || term(&leader_url));

    let pad = "x".repeat(55 << 20);
    let body = json!({"type": "noop", "id": "big", "dataSource": "big", "context": {"pad": pad}});
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let r = client
        .post(format!("{leader_url}/druid/indexer/v1/task"))
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());

    // Small writes after it commit too: replication is not stuck behind the big entry.
    for i in 0..5 {
        let r = client
            .post(format!("{leader_url}/druid/indexer/v1/task"))
            .json(&json!({"type": "noop", "id": format!("small-{i}"), "dataSource": "big"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for u in &urls {
        wait_for_blocking("every node to hold the big task", Duration::from_secs(60), || {
            let (_, tasks) = local_tasks(u)?;
            let ids: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
            (ids.contains(&"big") && ids.contains(&"small-4")).then_some(())
        });
    }
    for u in &urls {
        assert_eq!(term(u), Some(term_before), "an election happened at {u}");
    }
}
