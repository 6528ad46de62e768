//! `soak`: tasks run to completion continuously on three nodes that are each a worker, for a
//! given time, with short retentions, so that complete task records and audit records are
//! forgotten while new ones arrive. Resident memory of every node and the snapshot size are
//! reported after the warm-up, at each tenth of the run and at the end: with retention working
//! they stay flat.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{rss_mib, status, Raftlord};

/// What is measured at one moment.
struct Sample {
    rss_mib: Vec<f64>,
    /// What RocksDB holds in memory (memtables, table readers), per node.
    storage_mib: Vec<f64>,
    /// Rust's live heap (allocated, not freed), per node.
    heap_mib: Vec<f64>,
    snapshot_mib: f64,
    tasks_total: u64,
}

async fn sample(rl: &Raftlord, client: &reqwest::Client) -> Sample {
    let mut rss = Vec::new();
    let mut storage = Vec::new();
    let mut heap = Vec::new();
    let mut snapshot_mib: f64 = 0.0;
    let mut tasks_total = 0;
    for (id, url) in &rl.urls {
        if let Some(r) = rl.pid(*id).and_then(rss_mib) {
            rss.push(r);
        }
        if let Some(v) = status(client, url).await {
            storage.push(v["storage_memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
            heap.push(v["heap_live_bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
            snapshot_mib = snapshot_mib.max(v["snapshot"]["bytes"].as_f64().unwrap_or(0.0) / 1048576.0);
            tasks_total = tasks_total.max(v["tasks"]["total"].as_u64().unwrap_or(0));
        }
    }
    Sample {
        rss_mib: rss,
        storage_mib: storage,
        heap_mib: heap,
        snapshot_mib,
        tasks_total,
    }
}

fn show(what: &str, s: &Sample) {
    let rss: Vec<String> = s.rss_mib.iter().map(|r| format!("{r:.0}")).collect();
    let storage: Vec<String> = s.storage_mib.iter().map(|r| format!("{r:.0}")).collect();
    let heap: Vec<String> = s.heap_mib.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{what}: resident memory per node {} MiB (live Rust heap {} MiB, RocksDB memtables and readers {} MiB); snapshot {:.1} MiB; \
         task records {}",
        rss.join(" / "),
        heap.join(" / "),
        storage.join(" / "),
        s.snapshot_mib,
        s.tasks_total
    );
}

pub async fn run(bin: &Path, seconds: u64, clients: usize, retention_ms: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let retention = format!("--completed-task-retention-ms={retention_ms}");
    let audit = format!("--audit-retention-ms={retention_ms}");
    let mut rl = Raftlord::start_with(bin, dir.path(), 3, &["--worker-capacity=4", &retention, &audit]).await?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let urls: Vec<String> = rl.urls.values().cloned().collect();
    let submit = |client: reqwest::Client, urls: Vec<String>, c: usize, n: u64| async move {
        let body = json!({"type": "noop", "id": format!("soak-c{c}-{n}"), "dataSource": "soak", "runTime": 1});
        let url = &urls[(c + n as usize) % urls.len()];
        let r = client
            .post(format!("{url}/druid/indexer/v1/task"))
            .json(&body)
            .send()
            .await;
        matches!(r, Ok(r) if r.status() == 200)
    };
    // Each client keeps one task in flight: submit, then wait for it to complete.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let warm_until = Instant::now() + Duration::from_secs((seconds / 10).max(retention_ms / 1000 * 2));
    let mut handles = Vec::new();
    for c in 0..clients {
        let (client, urls) = (client.clone(), urls.clone());
        handles.push(tokio::spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                if !submit(client.clone(), urls.clone(), c, n).await {
                    errors += 1;
                    continue;
                }
                let id = format!("soak-c{c}-{n}");
                loop {
                    let url = &urls[n as usize % urls.len()];
                    let v: Option<Value> = match client
                        .get(format!("{url}/druid/indexer/v1/task/{id}/status"))
                        .send()
                        .await
                    {
                        Ok(r) => r.json().await.ok(),
                        Err(_) => None,
                    };
                    let state = v.as_ref().and_then(|v| v["status"]["status"].as_str()).unwrap_or("");
                    if state == "SUCCESS" || state == "FAILED" {
                        done += 1;
                        break;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            (done, errors)
        }));
    }
    tokio::time::sleep_until(warm_until.into()).await;
    let start = sample(&rl, &client).await;
    show("after the warm-up", &start);
    // Ten samples between the warm-up and the end, so growth shows as a curve, not two points.
    let step = deadline.saturating_duration_since(Instant::now()) / 10;
    for i in 1..10 {
        tokio::time::sleep(step).await;
        let s = sample(&rl, &client).await;
        show(&format!("at {}0% of the measured run", i), &s);
    }
    let mut done = 0;
    let mut errors = 0;
    for h in handles {
        let (d, e) = h.await?;
        done += d;
        errors += e;
    }
    let end = sample(&rl, &client).await;
    show("at the end", &end);
    println!(
        "{done} tasks completed in {seconds} s ({:.0}/s), {errors} failed submissions, retention {retention_ms} ms",
        done as f64 / seconds as f64
    );
    rl.stop_all().await;
    Ok(())
}
