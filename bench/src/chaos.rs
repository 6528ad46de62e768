//! `failover` under load: concurrent writers keep submitting while the leader is killed with
//! SIGKILL N times; each kill is timed to the first acknowledged write through a surviving node.
//! The killed node is restarted, and the next kill waits until it has caught up.
//! Writers retry every unanswered write (ids, and id-less submissions with an
//! `Idempotency-Key`), as Druid's clients do. At the end every node's own task table is
//! compared: acknowledged writes lost, keyed submissions stored twice, replicas that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{poll, status, Raftlord, SECRET};

#[derive(Default)]
struct History {
    acked_ids: BTreeSet<String>,
    acked_keys: BTreeSet<String>,
    unknown: usize,
}

/// Sends one submission until a definite answer or `give_up`: `Some(true)` when stored.
async fn until_answered(
    client: &reqwest::Client,
    urls: &[String],
    body: &Value,
    key: Option<&str>,
    give_up: Instant,
) -> Option<bool> {
    let mut attempt = 0usize;
    while Instant::now() < give_up {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let mut r = client.post(format!("{url}/druid/indexer/v1/task")).json(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        match r.send().await {
            Ok(resp) if resp.status() == 200 => return Some(true),
            Ok(resp) if resp.status() == 400 => {
                let v: Value = resp.json().await.unwrap_or_default();
                return Some(v["errorMessage"].as_str().is_some_and(|m| m.contains("already exists")));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    None
}

async fn local_tasks(client: &reqwest::Client, url: &str) -> Option<(u64, BTreeMap<String, String>)> {
    let v: Value = client
        .get(format!("{url}/internal/state/tasks"))
        .bearer_auth(SECRET)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let tasks = v["tasks"]
        .as_array()?
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                t["status"].to_string(),
            )
        })
        .collect();
    Some((v["appliedIndex"].as_u64()?, tasks))
}

pub async fn failover(bin: &Path, rounds: usize, writers: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rl = Raftlord::start(bin, dir.path(), 3).await?;
    let urls: Vec<String> = rl.urls.values().cloned().collect();
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for w in 0..writers {
        let (history, stop, urls) = (history.clone(), stop.clone(), urls.clone());
        handles.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let give_up = Instant::now() + Duration::from_secs(30);
                if n.is_multiple_of(2) {
                    let id = format!("w{w}-{n}");
                    let body = json!({"type": "noop", "id": id, "dataSource": "failover"});
                    if until_answered(&client, &urls, &body, None, give_up).await == Some(true) {
                        history.lock().unwrap().acked_ids.insert(id);
                    }
                } else {
                    let ds = format!("keyed_w{w}_{n}");
                    let body = json!({"type": "noop", "dataSource": ds});
                    match until_answered(&client, &urls, &body, Some(&ds), give_up).await {
                        Some(_) => history.lock().unwrap().acked_keys.insert(ds),
                        None => {
                            history.lock().unwrap().unknown += 1;
                            false
                        }
                    };
                }
            }
        }));
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let leader = rl.wait_leader(Duration::from_secs(30)).await?;
        let survivors: Vec<String> = rl
            .urls
            .iter()
            .filter(|(id, _)| **id != leader)
            .map(|(_, u)| u.clone())
            .collect();
        let killed_at = Instant::now();
        rl.kill9(leader)?;
        let mut attempt = 0usize;
        loop {
            let url = &survivors[attempt % survivors.len()];
            let body = json!({"type": "noop", "id": format!("probe-{round}-{attempt}"), "dataSource": "probe"});
            attempt += 1;
            let r = quick
                .post(format!("{url}/druid/indexer/v1/task"))
                .json(&body)
                .send()
                .await;
            if matches!(r, Ok(ref r) if r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed_at.elapsed();
        println!(
            "round {:>2}: killed node {leader}; first acknowledged write after {:>6.0} ms",
            round + 1,
            took.as_secs_f64() * 1000.0
        );
        times.push(took);
        rl.spawn(leader)?;
        // The next kill comes once the restarted node has caught up with what the cluster had
        // committed by the time it answered, as a real cluster's failures are not back to back.
        let url = rl.urls[&leader].clone();
        let target = poll("the killed node to serve again", Duration::from_secs(30), || {
            let (quick, url, survivors) = (quick.clone(), url.clone(), survivors.clone());
            async move {
                status(&quick, &url).await?;
                let mut committed = None;
                for s in &survivors {
                    committed = committed.max(status(&quick, s).await.and_then(|v| v["committed_index"].as_u64()));
                }
                committed
            }
        })
        .await?;
        poll("the killed node to catch up", Duration::from_secs(60), || {
            let (quick, url) = (quick.clone(), url.clone());
            async move {
                let applied = status(&quick, &url).await?["applied_index"].as_u64()?;
                (applied >= target).then_some(())
            }
        })
        .await?;
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await?;
    }
    let replicas = poll("every node to catch up", Duration::from_secs(60), || {
        let (quick, urls) = (quick.clone(), urls.clone());
        async move {
            let mut all = Vec::new();
            for u in &urls {
                all.push(local_tasks(&quick, u).await?);
            }
            all.iter().all(|r| r.0 == all[0].0).then_some(all)
        }
    })
    .await?;
    rl.stop_all().await;
    let h = history.lock().unwrap();
    let tasks = &replicas[0].1;
    let lost = h.acked_ids.iter().filter(|id| !tasks.contains_key(*id)).count();
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for id in tasks.keys() {
        if let Some(rest) = id.strip_prefix("noop_keyed_") {
            let parts: Vec<&str> = rest.splitn(3, '_').collect();
            *per_key.entry(format!("keyed_{}_{}", parts[0], parts[1])).or_default() += 1;
        }
    }
    let duplicates: usize = per_key.values().map(|n| n - 1).sum();
    let lost_keyed = h.acked_keys.iter().filter(|k| !per_key.contains_key(*k)).count();
    let diverged = replicas.iter().filter(|r| r.1 != *tasks).count();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "failover over {rounds} kills: median {:.0} ms, worst {:.0} ms",
        ms(times[times.len() / 2]),
        ms(*times.last().unwrap())
    );
    println!(
        "writes under the kills: {} acknowledged with ids, {} keyed; lost {}, keyed lost {}, stored twice {}, \
         unanswered {}; replicas differing from node 1: {diverged}",
        h.acked_ids.len(),
        h.acked_keys.len(),
        lost,
        lost_keyed,
        duplicates,
        h.unknown
    );
    Ok(())
}
