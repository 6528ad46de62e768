//! `segments`: one million segments (by default) across 100 datasources on a three-node cluster.
//!
//! Each datasource gets one `index` task holding one lock over the whole range; the segments
//! (four numbered partitions per day, Druid-like load specs) are published through the task
//! action API in batches by concurrent clients. Reported: publish rate, resident memory (now and
//! peak) of every node, snapshot size, p50/p99 of a used-segment query for one datasource and
//! one week, restart-to-serving, the time for a wiped node to catch up through a snapshot, and
//! the overshadow pass over the whole set (in process, on the same segments).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{hwm_mib, poll, rss_mib, status, Raftlord};

const DAY_MS: i64 = 86_400_000;
/// 2000-01-01T00:00:00Z.
const BASE_MS: i64 = 946_684_800_000;
const PARTITIONS: usize = 4;

fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

fn interval(day: i64, days: i64) -> String {
    format!(
        "{}/{}",
        iso(BASE_MS + day * DAY_MS),
        iso(BASE_MS + (day + days) * DAY_MS)
    )
}

/// One Druid-like segment.
fn segment(ds: &str, version: &str, day: i64, partition: usize) -> Value {
    json!({
        "dataSource": ds,
        "interval": interval(day, 1),
        "version": version,
        "loadSpec": {"type": "s3_zip", "bucket": "druid-deep-storage",
                     "key": format!("druid/segments/{ds}/{day}/{version}/{partition}/index.zip")},
        "dimensions": ["channel", "cityName", "countryName", "page", "user"],
        "metrics": ["count", "added"],
        "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": PARTITIONS},
        "binaryVersion": 9,
        "size": 52_428_800 + partition as u64
    })
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Whether every node answers `/status` and none is building a snapshot.
async fn no_snapshot_building(rl: &Raftlord, probe: &reqwest::Client) -> bool {
    for url in rl.urls.values() {
        match status(probe, url).await {
            Some(v) if v["snapshot"]["building"] == false => {}
            _ => return false,
        }
    }
    true
}

/// p50 and p99 of 1,000 used-segment queries: one datasource, one week, full segments.
async fn query_latency(
    client: &reqwest::Client,
    url: &str,
    datasources: usize,
    days: i64,
    when: &str,
) -> anyhow::Result<()> {
    let mut lat = Vec::new();
    for q in 0..1000usize {
        let ds = format!("ds{:03}", q % datasources);
        let day = (q * 37) as i64 % (days - 7).max(1);
        let t = Instant::now();
        let v: Value = client
            .post(format!(
                "{url}/druid/coordinator/v1/metadata/datasources/{ds}/segments?full"
            ))
            .json(&json!([interval(day, 7)]))
            .send()
            .await?
            .json()
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(v.as_array().is_some_and(|a| !a.is_empty()), "empty query result");
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "used-segment query (one datasource, one week, {} segments, over HTTP), {when}: p50 {:.2} ms, p99 {:.2} ms",
        7 * PARTITIONS,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    Ok(())
}

fn memory(rl: &Raftlord) -> String {
    rl.urls
        .keys()
        .filter_map(|id| {
            let pid = rl.pid(*id)?;
            Some(format!(
                "node {id} {:.0} MiB (peak {:.0} MiB)",
                rss_mib(pid)?,
                hwm_mib(pid)?
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(
    bin: &Path,
    total: usize,
    datasources: usize,
    batch: usize,
    clients: usize,
    node_flags: &[String],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Segment metadata only: no worker, and no Historical (the load specs name no real files).
    let mut flags = vec!["--worker-capacity", "0", "--max-segment-cache-size", "0"];
    flags.extend(node_flags.iter().map(String::as_str));
    let mut rl = Raftlord::start_with(bin, dir.path(), 3, &flags).await?;
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let url = rl.urls[&leader].clone();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let per_ds = total / datasources;
    let days = per_ds.div_ceil(PARTITIONS) as i64;

    // One task and one lock per datasource.
    let mut versions = Vec::with_capacity(datasources);
    for i in 0..datasources {
        let (ds, id) = (format!("ds{i:03}"), format!("load-ds{i:03}"));
        let r = client
            .post(format!("{url}/druid/indexer/v1/task"))
            .json(&raftlord_harness::index_task(&id, &ds))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "submit {id}: {}", r.text().await?);
        let v: Value = client
            .post(format!("{url}/druid/indexer/v1/action"))
            .bearer_auth(crate::cluster::SECRET)
            .json(&json!({"task": {"id": id}, "action": {"type": "lockTryAcquire", "interval": interval(0, days)}}))
            .send()
            .await?
            .json()
            .await?;
        let version = v["result"]["version"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no lock for {id}: {v}"))?;
        versions.push(version.to_string());
    }

    // The work: (datasource, first segment index) batches.
    let work: Arc<Vec<(usize, usize)>> = Arc::new(
        (0..datasources)
            .flat_map(|d| (0..per_ds).step_by(batch).map(move |s| (d, s)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(versions);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (work, next, versions, client, url) = (
            work.clone(),
            next.clone(),
            versions.clone(),
            client.clone(),
            url.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut published = 0usize;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(d, first)) = work.get(n) else {
                    return Ok::<usize, anyhow::Error>(published);
                };
                let ds = format!("ds{d:03}");
                let segments: Vec<Value> = (first..(first + batch).min(per_ds))
                    .map(|s| segment(&ds, &versions[d], (s / PARTITIONS) as i64, s % PARTITIONS))
                    .collect();
                let body = json!({"task": {"id": format!("load-{ds}")},
                                  "action": {"type": "segmentTransactionalInsert", "segments": segments}});
                // As Druid's peons do, retry while there is no leader (a publish is idempotent:
                // stored ids are skipped).
                let deadline = Instant::now() + Duration::from_secs(60);
                let v: Value = loop {
                    let r = client
                        .post(format!("{url}/druid/indexer/v1/action"))
                        .bearer_auth(crate::cluster::SECRET)
                        .json(&body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 503 && Instant::now() < deadline => {}
                        Ok(r) => break r.json().await?,
                        Err(e) if Instant::now() >= deadline => return Err(e.into()),
                        Err(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                anyhow::ensure!(v["result"]["success"] == true, "publish failed: {v:.300}");
                published += v["result"]["segments"].as_array().map_or(0, Vec::len);
            }
        }));
    }
    let mut published = 0;
    for h in handles {
        published += h.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {published} segments in {secs:.1} s: {:.0} segments/s ({clients} clients, {batch} per publish)",
        published as f64 / secs
    );
    println!("resident memory after publishing: {}", memory(&rl));

    query_latency(
        &client,
        &url,
        datasources,
        days,
        "just after publishing (snapshots may be being built)",
    )
    .await?;

    let st = status(&client, &url).await.unwrap_or_default();
    println!(
        "snapshot: {:.0} MiB at index {} (segments stored: {})",
        st["snapshot"]["bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        st["snapshot"]["index"],
        st["segments"]["total"]
    );

    // Restart the whole cluster.
    rl.stop_all().await;
    let started = Instant::now();
    for id in 1..=3 {
        rl.spawn(id)?;
    }
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    poll("serving after the restart", Duration::from_secs(300), || async {
        let leader = rl.wait_leader(Duration::from_secs(120)).await.ok()?;
        let url = format!("{}/druid/coordinator/v1/metadata/datasources/ds000", rl.urls[&leader]);
        let r = probe.get(url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await?;
    println!(
        "restart to serving (leader elected, segment metadata answered): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    println!("resident memory after restart: {}", memory(&rl));
    // Steady state: every node has loaded its snapshot and applied the leader's log.
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let target = status(&client, &rl.urls[&leader])
        .await
        .and_then(|v| v["applied_index"].as_u64());
    let target = target.unwrap_or(0);
    for url in rl.urls.values() {
        poll(
            &format!("{url} catching up after the restart"),
            Duration::from_secs(300),
            || async {
                let applied = status(&probe, url).await?["applied_index"].as_u64()?;
                (applied >= target).then_some(())
            },
        )
        .await?;
    }
    query_latency(
        &client,
        &rl.urls[&leader],
        datasources,
        days,
        "after the restart, every node caught up",
    )
    .await?;
    // Quiescent: no node encoding a snapshot (the restart's replay can start one, which takes
    // a core for seconds on this state).
    let calm = std::cell::Cell::new(0);
    poll("no node building a snapshot", Duration::from_secs(300), || async {
        let idle = no_snapshot_building(&rl, &probe).await;
        calm.set(if idle { calm.get() + 1 } else { 0 });
        (calm.get() >= 5).then_some(())
    })
    .await?;
    query_latency(
        &client,
        &rl.urls[&leader],
        datasources,
        days,
        "quiescent (every node caught up, no snapshot being built)",
    )
    .await?;

    // Wipe a follower and time its catch-up through a snapshot.
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    rl.kill9_and_wait(victim).await?;
    std::fs::remove_dir_all(dir.path().join(format!("node-{victim}")))?;
    let target = status(&client, &rl.urls[&leader])
        .await
        .and_then(|v| v["applied_index"].as_u64());
    let target = target.unwrap_or(0);
    let started = Instant::now();
    rl.spawn(victim)?;
    let installed = poll("the wiped node catching up", Duration::from_secs(300), || async {
        let v = status(&probe, &rl.urls[&victim]).await?;
        (v["applied_index"].as_u64()? >= target).then(|| v["snapshots_installed"].as_u64().unwrap_or(0))
    })
    .await?;
    println!(
        "wiped follower caught up to the leader's applied index: {:.2} s ({installed} snapshot(s) installed)",
        started.elapsed().as_secs_f64()
    );
    rl.stop_all().await;

    // The overshadow pass over the whole set, in process, on the same segments.
    let mut table = raftlord::segments::SegmentTable::default();
    for d in 0..datasources {
        let ds = format!("ds{d:03}");
        let segs: Vec<raftlord::segments::DataSegment> = (0..per_ds)
            .map(|s| {
                raftlord::segments::DataSegment::parse(
                    &segment(&ds, &versions[d], (s / PARTITIONS) as i64, s % PARTITIONS).to_string(),
                )
                .expect("valid segment")
            })
            .collect();
        table.apply_insert(0, segs);
        // Every tenth day also gets a newer, complete single-partition version (a compaction),
        // so the pass has something to find.
        let newer: Vec<raftlord::segments::DataSegment> = (0..days)
            .step_by(10)
            .map(|day| {
                let mut v = segment(&ds, "2099-01-01T00:00:00.000Z", day, 0);
                v["shardSpec"] = json!({"type": "numbered", "partitionNum": 0, "partitions": 1});
                raftlord::segments::DataSegment::parse(&v.to_string()).expect("valid segment")
            })
            .collect();
        table.apply_insert(0, newer);
    }
    let t = Instant::now();
    let hidden: usize = table.datasources().map(|(_, d)| d.overshadowed().len()).sum();
    println!(
        "overshadow pass over {} segments: {:.3} s ({hidden} overshadowed)",
        table.total_count(),
        t.elapsed().as_secs_f64()
    );
    // The same query as over HTTP, in process: the metadata store's own cost.
    let mut lat = Vec::new();
    for q in 0..10_000usize {
        let ds = format!("ds{:03}", q % datasources);
        let day = (q * 37) as i64 % (days - 7).max(1);
        let start = BASE_MS + day * DAY_MS;
        let iv = raftlord::interval::Interval::new(start, start + 7 * DAY_MS).expect("an interval");
        let t = Instant::now();
        let d = table.datasource(&ds).expect("a datasource");
        let found: Vec<Value> = d
            .visible_overlapping(&iv)
            .into_iter()
            .map(|(k, s)| json!(raftlord::segments::DataSegmentJson::new(&ds, k, s)))
            .collect();
        let body = serde_json::to_vec(&found)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(!body.is_empty() && !found.is_empty(), "empty query result");
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "the same query in process (visible segments, JSON): p50 {:.3} ms, p99 {:.3} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    Ok(())
}
