//! A fault-injection check on real processes: three `raftlord server` nodes on loopback take
//! concurrent submissions (with ids, and id-less with an `Idempotency-Key`) while a nemesis
//! kills the leader or a follower with SIGKILL and pauses the leader with SIGSTOP. Clients
//! retry every unanswered write, as Druid's clients do. After healing, the checker asks every
//! node for its own copy of the task table and requires:
//! - every acknowledged submission present, and exactly once (one task per idempotency key);
//! - every node restarted, caught up to the same applied index, and holding the same tasks.
//!
//! The test suite runs a bounded number of rounds; the benchmark runs longer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{leader_of, local_tasks, wait_answering, wait_for_blocking, ThreeNodes};
use serde_json::{json, Value};

/// What the clients learned about their writes.
#[derive(Default)]
struct History {
    /// Ids whose submission was acknowledged (200, or "already exists" on a retry).
    acked_ids: BTreeSet<String>,
    /// Datasources of keyed id-less submissions that were acknowledged; each must hold
    /// exactly one task.
    acked_keys: BTreeSet<String>,
    /// Keyed submissions never answered: each may hold one task, never two.
    unknown_keys: BTreeSet<String>,
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// Sends one submission until it gets a definite answer or `give_up` passes; `Some(true)`
/// when it was stored.
fn submit_until_answered(
    c: &reqwest::blocking::Client,
    urls: &[String],
    body: &Value,
    key: Option<&str>,
    give_up: Instant,
) -> Option<bool> {
    let mut attempt = 0usize;
    while Instant::now() < give_up {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let mut r = c.post(format!("{url}/druid/indexer/v1/task")).json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        match r.send() {
            Ok(resp) if resp.status().is_success() => return Some(true),
            Ok(resp) if resp.status() == 400 => {
                let v: Value = resp.json().unwrap_or_default();
                let msg = v["errorMessage"].as_str().unwrap_or_default();
                // A retry of a write that committed before its answer was lost.
                assert!(msg.contains("already exists"), "unexpected 400: {v}");
                return Some(true);
            }
            _ => std::thread::sleep(Duration::from_millis(20)), // back off before the retry
        }
    }
    None
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill only sends a signal to the given process.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A node's own tasks by id, with its applied index.
fn tasks_by_id(url: &str) -> Option<(u64, BTreeMap<String, Value>)> {
    let (applied, tasks) = local_tasks(url)?;
    let by_id = tasks
        .into_iter()
        .map(|t| (t["id"].as_str().unwrap_or_default().to_string(), t))
        .collect();
    Some((applied, by_id))
}

#[test]
fn acknowledged_writes_survive_kills_and_pauses_exactly_once_on_every_node() {
    let mut cluster = ThreeNodes::start(&["--worker-capacity", "0"]);
    let urls = cluster.urls();
    for u in &urls {
        wait_answering(u);
    }
    wait_for_blocking("a leader", Duration::from_secs(30), || leader_of(&urls));

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (history, stop, urls) = (history.clone(), stop.clone(), urls.clone());
            std::thread::spawn(move || {
                let c = client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let give_up = Instant::now() + Duration::from_secs(20);
                    if i % 2 == 0 {
                        let id = format!("c{n}-{i}");
                        let body = json!({"type": "noop", "id": id, "dataSource": "chaos"});
                        if submit_until_answered(&c, &urls, &body, None, give_up) == Some(true) {
                            history.lock().unwrap().acked_ids.insert(id);
                        }
                    } else {
                        let ds = format!("keyed_c{n}_{i}");
                        let body = json!({"type": "noop", "dataSource": ds});
                        match submit_until_answered(&c, &urls, &body, Some(&ds), give_up) {
                            Some(_) => history.lock().unwrap().acked_keys.insert(ds),
                            None => history.lock().unwrap().unknown_keys.insert(ds),
                        };
                    }
                }
            })
        })
        .collect();

    // The nemesis: each round one fault, then the node comes back.
    for round in 0..6 {
        let (leader, _) = wait_for_blocking("a leader", Duration::from_secs(30), || leader_of(&urls));
        match round % 3 {
            0 => {
                cluster.procs.remove(&leader);
                cluster.spawn(leader);
            }
            1 => {
                let follower = (1..=3).find(|id| *id != leader).unwrap();
                cluster.procs.remove(&follower);
                cluster.spawn(follower);
            }
            _ => {
                let pid = cluster.procs[&leader].child.id();
                signal(pid, libc::SIGSTOP);
                // The pause is the fault itself: long enough for an election.
                std::thread::sleep(Duration::from_millis(1500));
                signal(pid, libc::SIGCONT);
            }
        }
        for u in &urls {
            wait_answering(u);
        }
        // Let the clients make progress on the healed cluster before the next fault.
        let before = history.lock().unwrap().acked_ids.len();
        wait_for_blocking("writes acknowledged after the fault", Duration::from_secs(30), || {
            (history.lock().unwrap().acked_ids.len() > before + 5).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    // Every node converges to the same applied index and the same tasks.
    let replicas = wait_for_blocking("every node to catch up", Duration::from_secs(60), || {
        let all: Vec<_> = urls.iter().map(|u| tasks_by_id(u)).collect::<Option<Vec<_>>>()?;
        let same = all
            .iter()
            .all(|(applied, tasks)| *applied == all[0].0 && tasks == &all[0].1);
        same.then_some(all)
    });
    let h = history.lock().unwrap();
    assert!(h.acked_ids.len() > 30, "too little was written: {}", h.acked_ids.len());
    let tasks = &replicas[0].1;
    for id in &h.acked_ids {
        assert!(tasks.contains_key(id), "acknowledged task {id} is lost");
    }
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks.values() {
        let id = t["id"].as_str().unwrap();
        // Generated ids are noop_<dataSource>_<suffix>_<time>; keyed datasources are keyed_cN_I.
        if let Some(rest) = id.strip_prefix("noop_keyed_") {
            let parts: Vec<&str> = rest.splitn(3, '_').collect();
            *per_key.entry(format!("keyed_{}_{}", parts[0], parts[1])).or_default() += 1;
        }
    }
    for key in &h.acked_keys {
        assert_eq!(
            per_key.get(key),
            Some(&1),
            "keyed submission {key} stored {:?} times",
            per_key.get(key)
        );
    }
    for (key, n) in &per_key {
        assert_eq!(*n, 1, "keyed submission {key} was stored {n} times");
        assert!(
            h.acked_keys.contains(key) || h.unknown_keys.contains(key),
            "{key} was never sent"
        );
    }
    drop(cluster);
}
