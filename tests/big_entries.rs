//! Entries near the payload limit replicate.
//!
//! openraft 0.9 gives each AppendEntries one heartbeat interval, whatever its size; a 55 MiB
//! task spec took longer than that to send and decode, so every attempt timed out, nothing
//! reached the followers, they called elections, and the entry never committed under any
//! leader. Large appends now run in the background with a timeout that scales with their size,
//! while heartbeats keep the followers in contact. On an idle machine no election happens at
//! all; on a heavily loaded one a node starved of CPU may still call one, so the test asserts
//! that the write commits and reaches every node, and reports the term.

mod common;

use std::time::Duration;

use common::{http, leader_of, local_tasks, wait_answering, wait_for_blocking, ThreeNodes};
use serde_json::{json, Value};

fn term(url: &str) -> Option<u64> {
    http().get(format!("{url}/status")).send().ok()?.json::<Value>().ok()?["term"].as_u64()
}

/// Submits `body` to the leader until it is stored, retrying after a lost leader with the same
/// id, as Druid's clients do.
fn submit_until_stored(client: &reqwest::blocking::Client, urls: &[String], body: &Value) {
    wait_for_blocking("a submission to commit", Duration::from_secs(120), || {
        let url = leader_of(urls)?.1;
        let r = client
            .post(format!("{url}/druid/indexer/v1/task"))
            .json(body)
            .send()
            .ok()?;
        let status = r.status();
        let text = r.text().unwrap_or_default();
        (status == 200 || (status == 400 && text.contains("already exists"))).then_some(())
    });
}

#[test]
fn a_55_mib_spec_commits_and_reaches_every_node() {
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
    submit_until_stored(&client, &urls, &body);
    // Small writes after it commit too: replication is not stuck behind the big entry.
    for i in 0..5 {
        submit_until_stored(
            &client,
            &urls,
            &json!({"type": "noop", "id": format!("small-{i}"), "dataSource": "big"}),
        );
    }
    for u in &urls {
        wait_for_blocking("every node to hold the big task", Duration::from_secs(60), || {
            let (_, tasks) = local_tasks(u)?;
            let ids: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
            (ids.contains(&"big") && ids.contains(&"small-4")).then_some(())
        });
    }
    let term_after = leader_of(&urls).and_then(|(_, u)| term(&u)).unwrap_or_default();
    eprintln!("term before the big write {term_before}, after {term_after}");
}
