//! Historicals end to end, on real processes with real ingested segments: a `raftlord dev` node
//! serves what it ingests (the wait of Druid's `post-index-task` for `/loadstatus` completes),
//! finds its cache again after a restart without downloading anything, and replaces a truncated
//! or foreign file; on three nodes, retention rules decide which segments stay used and where
//! they are cached, and a leader killed with -9 has its segments loaded on the others while
//! the survivors download nothing they already had; auto-kill deletes the unused segments past
//! retention, records and files, and nothing else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{free_port, http, spawn_dev, terminate, wait_for_blocking, ThreeNodes};
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

/// Days of input rows, each day `offset` days before today (UTC), one file per day.
fn write_days(dir: &Path, days_ago: &[i64]) {
    std::fs::create_dir_all(dir).unwrap();
    let today = raftlord::clock::now_ms() as i64 / DAY_MS * DAY_MS;
    for d in days_ago {
        let start = today - d * DAY_MS;
        let rows: Vec<String> = (0..24)
            .map(|h| {
                json!({"time": raftlord::interval::iso(start + h * 3_600_000), "page": format!("p{}", h % 3), "added": h})
                    .to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("day-{d}.json")), rows.join("\n")).unwrap();
    }
}

fn index_task(id: &str, input: &Path) -> Value {
    json!({
        "type": "index_parallel",
        "id": id,
        "spec": {
            "dataSchema": {
                "dataSource": "wiki",
                "timestampSpec": {"column": "time", "format": "iso"},
                "dimensionsSpec": {"dimensions": ["page"]},
                "metricsSpec": [{"type": "count", "name": "count"}, {"type": "longSum", "name": "added", "fieldName": "added"}],
                "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "HOUR", "rollup": true}
            },
            "ioConfig": {
                "type": "index_parallel",
                "inputSource": {"type": "local", "baseDir": input, "filter": "*.json"},
                "inputFormat": {"type": "json"}
            }
        }
    })
}

fn get(urls: &[String], path: &str) -> Option<Value> {
    urls.iter().find_map(|u| {
        let r = http().get(format!("{u}{path}")).send().ok()?;
        (r.status() == 200).then(|| r.json().ok()).flatten()
    })
}

/// What Druid's `post-index-task` does: submit, wait for the task to succeed, then wait until
/// `/druid/coordinator/v1/loadstatus` says the datasource is 100% loaded.
fn post_index_task(urls: &[String], task: &Value) {
    let id = task["id"].as_str().unwrap();
    let submitted = wait_for_blocking("the task submitted", Duration::from_secs(30), || {
        let r = http()
            .post(format!("{}/druid/indexer/v1/task", urls[0]))
            .json(task)
            .send()
            .ok()?;
        (r.status() == 200).then(|| r.json::<Value>().ok()).flatten()
    });
    assert_eq!(submitted["task"], id);
    let status = wait_for_blocking("the task to finish", Duration::from_secs(120), || {
        let v = get(urls, &format!("/druid/indexer/v1/task/{id}/status"))?;
        let code = v["status"]["status"].as_str()?.to_string();
        (code != "RUNNING").then_some(code)
    });
    assert_eq!(status, "SUCCESS");
    let ds = task["spec"]["dataSchema"]["dataSource"].as_str().unwrap();
    wait_for_blocking("the datasource 100% loaded", Duration::from_secs(60), || {
        let v = get(urls, "/druid/coordinator/v1/loadstatus")?;
        (v[ds].as_f64()? >= 100.0).then_some(())
    });
}

/// The cached segment files under `dir`, by segment directory, with their inodes.
fn cached_files(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            // Downloads in progress are not the cache yet.
            if p.is_dir() && e.file_name() != ".tmp" {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.insert(p.clone(), std::fs::metadata(&p).unwrap().ino());
            }
        }
    }
    out
}

/// Each node's served segment ids, from its `/druid/historical/v1/segments`.
fn served(url: &str) -> BTreeSet<String> {
    let v: Value = http()
        .get(format!("{url}/druid/historical/v1/segments"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["state"] == "LOADED")
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The historical-management duty group's entry in a `/duties` answer.
fn historical_management(duties: &Value) -> Option<Value> {
    duties
        .as_array()?
        .iter()
        .find(|d| d["name"] == "HistoricalManagementDuties")
        .cloned()
}

fn used_ids(urls: &[String]) -> BTreeSet<String> {
    get(urls, "/druid/coordinator/v1/metadata/datasources/wiki/segments")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_dev_node_serves_what_it_ingests_and_finds_its_cache_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    write_days(&input, &[1, 2, 3]);
    let data = dir.path().join("data");
    let port = free_port();
    let flags = ["--coordinator-period", "PT1S"];
    let mut dev = spawn_dev(&data, port, &flags);
    let urls = vec![dev.url.clone()];
    post_index_task(&urls, &index_task("ingest-1", &input));

    // The Druid routes agree, and the Historical serves every segment from its cache.
    let ds_status = get(
        &urls,
        "/druid/coordinator/v1/datasources/wiki/loadstatus?forceMetadataRefresh=true",
    )
    .unwrap();
    assert_eq!(ds_status, json!({"wiki": 100.0}));
    let r = http()
        .get(format!("{}/druid/coordinator/v1/datasources/wiki/loadstatus", urls[0]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "forceMetadataRefresh is required, as in Druid");
    let bad = http()
        .get(format!(
            "{}/druid/coordinator/v1/datasources/wiki/loadstatus?forceMetadataRefresh=true&interval=lastweek",
            urls[0]
        ))
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    let message = bad.json::<Value>().unwrap()["error"].as_str().unwrap_or("").to_string();
    assert!(message.contains("interval"), "{message}");
    // No used segment in the interval: 204, as in Druid.
    let empty = http()
        .get(format!(
            "{}/druid/coordinator/v1/datasources/wiki/loadstatus?forceMetadataRefresh=false&interval=2000-01-01/2000-01-02",
            urls[0]
        ))
        .send()
        .unwrap();
    assert_eq!(empty.status(), 204);
    assert_eq!(
        get(&urls, "/druid/historical/v1/loadstatus").unwrap(),
        json!({"cacheInitialized": true})
    );
    let ids = used_ids(&urls);
    assert_eq!(ids.len(), 3);
    assert_eq!(served(&urls[0]), ids);
    let cache = data.join("segment-cache");
    let before = cached_files(&cache);
    assert_eq!(before.len(), 3);
    let queue = get(&urls, "/druid/coordinator/v1/loadqueue?simple").unwrap();
    assert_eq!(queue.as_object().unwrap().len(), 1, "{queue}");

    // Restarted: the cache is served again, nothing is downloaded anew.
    assert!(terminate(&mut dev).success());
    dev = spawn_dev(&data, port, &flags);
    wait_for_blocking("the cache announced again", Duration::from_secs(60), || {
        let v = get(&urls, "/druid/historical/v1/loadstatus")?;
        (v["cacheInitialized"] == true).then_some(())
    });
    assert_eq!(served(&urls[0]), ids);
    assert_eq!(
        cached_files(&cache),
        before,
        "a restart must not download a cached segment again"
    );

    // A truncated file and a foreign one are replaced by the real segments.
    assert!(terminate(&mut dev).success());
    let files: Vec<&PathBuf> = before.keys().collect();
    let truncated = files[0].clone();
    let foreign = files[1].clone();
    let size = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    std::fs::write(
        &foreign,
        vec![b'x'; std::fs::metadata(&foreign).unwrap().len() as usize],
    )
    .unwrap();
    dev = spawn_dev(&data, port, &flags);
    wait_for_blocking("both segments loaded again", Duration::from_secs(60), || {
        (served(&urls[0]) == ids).then_some(())
    });
    for f in [&truncated, &foreign] {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
            "{} is not the segment",
            f.display()
        );
    }
    assert_eq!(
        cached_files(&cache)[files[2]],
        before[files[2]],
        "the intact file stays as it was"
    );
    drop(dev);
}

#[test]
fn rules_decide_what_is_cached_and_a_killed_leaders_segments_are_loaded_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    write_days(&input, &[1, 2, 3, 60, 61]);
    let deep = dir.path().join("deep");
    let deep_flag = deep.display().to_string();
    let mut cluster = ThreeNodes::start(&[
        "--worker-capacity",
        "2",
        "--deep-storage",
        &deep_flag,
        "--coordinator-period",
        "PT1S",
        "--worker-timeout-ms",
        "3000",
    ]);
    let urls = cluster.urls();
    wait_for_blocking("a leader", Duration::from_secs(30), || common::leader_of(&urls));
    // No balancing moves: a moved segment may come back to a node later, and this test counts
    // downloads (balancing has its own tests).
    wait_for_blocking("balancing turned off", Duration::from_secs(30), || {
        let r = http()
            .post(format!("{}/druid/coordinator/v1/config", urls[0]))
            .json(&json!({"maxSegmentsToMove": 0}))
            .send()
            .ok()?;
        (r.status() == 200).then_some(())
    });
    // Keep a month, drop the rest; the default rule keeps two replicas.
    let rules = json!([{"type": "loadByPeriod", "period": "P30D"}, {"type": "dropForever"}]);
    wait_for_blocking("the rules set", Duration::from_secs(30), || {
        let r = http()
            .post(format!("{}/druid/coordinator/v1/rules/wiki", urls[0]))
            .header("X-Druid-Author", "test")
            .json(&rules)
            .send()
            .ok()?;
        (r.status() == 200).then_some(())
    });
    post_index_task(&urls, &index_task("ingest-1", &input));

    // The two old days are matched by dropForever: marked unused, cached nowhere.
    let recent = wait_for_blocking("the old days marked unused", Duration::from_secs(60), || {
        let ids = used_ids(&urls);
        (ids.len() == 3).then_some(ids)
    });
    let cached_twice = || {
        let per_node: Vec<BTreeSet<String>> = urls.iter().map(|u| served(u)).collect();
        let all_twice = recent
            .iter()
            .all(|id| per_node.iter().filter(|s| s.contains(id)).count() == 2);
        let nothing_else = per_node.iter().all(|s| s.is_subset(&recent));
        (all_twice && nothing_else).then_some(per_node)
    };
    wait_for_blocking(
        "each recent segment cached on two nodes",
        Duration::from_secs(60),
        cached_twice,
    );
    let full = get(&urls, "/druid/coordinator/v1/loadstatus?full").unwrap();
    assert_eq!(full, json!({"_default_tier": {"wiki": 0}}));

    // kill -9 the leader: its replicas are loaded on the two others, which keep every file
    // they had (no re-download).
    let (leader, _) = common::leader_of(&urls).unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let cache_of = |id: u64| cluster.dir.path().join(format!("n{id}")).join("segment-cache");
    let before: BTreeMap<u64, BTreeMap<PathBuf, u64>> =
        survivors.iter().map(|id| (*id, cached_files(&cache_of(*id)))).collect();
    let mut killed = cluster.procs.remove(&leader).unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let surviving_urls: Vec<String> = survivors.iter().map(|id| cluster.procs[id].url.clone()).collect();
    wait_for_blocking("a new leader", Duration::from_secs(30), || {
        common::leader_of(&surviving_urls).filter(|(id, _)| *id != leader)
    });
    wait_for_blocking("the new leader's first duty run", Duration::from_secs(30), || {
        let v = get(&surviving_urls, "/druid/coordinator/v1/duties")?;
        (historical_management(&v)?["runs"].as_u64()? >= 1).then_some(())
    });
    wait_for_blocking(
        "both survivors serve every recent segment",
        Duration::from_secs(60),
        || surviving_urls.iter().all(|u| served(u) == recent).then_some(()),
    );
    for (id, files) in &before {
        let now = cached_files(&cache_of(*id));
        for (path, inode) in files {
            assert_eq!(
                now.get(path),
                Some(inode),
                "node {id} downloaded {} again",
                path.display()
            );
        }
    }
}

#[test]
fn a_historical_only_node_joins_with_its_tier_and_serves_what_the_rules_give_that_tier() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    write_days(&input, &[1, 2]);
    let data = dir.path().join("dev");
    let dev = spawn_dev(
        &data,
        free_port(),
        &["--coordinator-period", "PT1S", "--worker-timeout-ms", "3000"],
    );
    let urls = vec![dev.url.clone()];
    let secret = wait_for_blocking("the cluster secret", Duration::from_secs(30), || {
        std::fs::read_to_string(data.join("cluster-secret"))
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    let port = free_port();
    let mut hot = std::process::Command::new(common::raftlord_bin())
        .args(["server", "--roles", "historical", "--join", &urls[0]])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("hot"))
        .arg("--deep-storage")
        .arg(data.join("deep-storage"))
        .args(["--tier", "hot", "--max-segment-cache-size", "1GiB"])
        .env("RAFTLORD_CLUSTER_SECRET", secret.trim())
        .env("RAFTLORD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let hot_url = format!("http://127.0.0.1:{port}");
    let rules = json!([{"type": "loadForever", "tieredReplicants": {"_default_tier": 1, "hot": 1}}]);
    wait_for_blocking("the rules set", Duration::from_secs(30), || {
        let r = http()
            .post(format!("{}/druid/coordinator/v1/rules/wiki", urls[0]))
            .json(&rules)
            .send()
            .ok()?;
        (r.status() == 200).then_some(())
    });
    post_index_task(&urls, &index_task("ingest-1", &input));
    wait_for_blocking("one replica on each tier", Duration::from_secs(60), || {
        let v = get(&urls, "/druid/coordinator/v1/loadstatus?full")?;
        (v == json!({"_default_tier": {"wiki": 0}, "hot": {"wiki": 0}})).then_some(())
    });
    let ids = used_ids(&urls);
    assert_eq!(ids.len(), 2);
    assert_eq!(served(&hot_url), ids);
    assert_eq!(served(&urls[0]), ids);
    let tiers = get(&urls, "/druid/coordinator/v1/tiers").unwrap();
    assert_eq!(tiers, json!(["_default_tier", "hot"]));
    let servers = get(&urls, "/druid/coordinator/v1/servers?simple").unwrap();
    let hot_row = servers
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tier"] == "hot")
        .cloned()
        .unwrap();
    assert_eq!(hot_row["host"], format!("127.0.0.1:{port}"));
    assert_eq!(hot_row["maxSize"], 1u64 << 30);
    assert!(hot_row["currSize"].as_u64().unwrap() > 0);
    // Killed, it is lost after the timeout: its tier's replicas are left to load.
    hot.kill().unwrap();
    hot.wait().unwrap();
    wait_for_blocking(
        "the hot tier's replicas counted as missing",
        Duration::from_secs(30),
        || {
            let v = get(&urls, "/druid/coordinator/v1/loadstatus?full")?;
            (v["hot"]["wiki"] == 2).then_some(())
        },
    );
    // A rule naming a tier no Historical serves is reported in the duty's counts.
    wait_for_blocking("the hot tier reported unknown", Duration::from_secs(30), || {
        let v = get(&urls, "/druid/coordinator/v1/duties")?;
        (historical_management(&v)?["stats"]["unknownTiers"] == json!(["hot"])).then_some(())
    });
    drop(dev);
}

fn mark_unused(url: &str, interval: &str) {
    let r = http()
        .post(format!("{url}/druid/coordinator/v1/datasources/wiki/markUnused"))
        .json(&json!({"interval": interval}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn day_interval(days_ago: i64) -> String {
    let today = raftlord::clock::now_ms() as i64 / DAY_MS * DAY_MS;
    let start = today - days_ago * DAY_MS;
    format!(
        "{}/{}",
        raftlord::interval::iso(start),
        raftlord::interval::iso(start + DAY_MS)
    )
}

#[test]
fn auto_kill_deletes_only_unused_segments_past_retention_records_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    write_days(&input, &[1, 2, 60, 61]);
    let data = dir.path().join("data");
    let dev = spawn_dev(
        &data,
        free_port(),
        &[
            "--coordinator-period",
            "PT1S",
            "--kill-unused-segments",
            "--kill-period",
            "PT1S",
            "--kill-duration-to-retain",
            "P30D",
            "--kill-buffer-period",
            "PT0S",
        ],
    );
    let urls = vec![dev.url.clone()];
    post_index_task(&urls, &index_task("ingest-1", &input));
    let deep = data.join("deep-storage").join("wiki");
    let files_of = |days_ago: i64| {
        let name = day_interval(days_ago).replace('/', "_");
        cached_files(&deep.join(name)).len()
    };
    for d in [1, 2, 60, 61] {
        assert_eq!(files_of(d), 1, "day {d} was pushed");
    }
    // Day 1 (inside the 30 days retained) and the two old days are marked unused.
    for d in [1, 60, 61] {
        mark_unused(&urls[0], &day_interval(d));
    }
    let unused = wait_for_blocking("the old days killed", Duration::from_secs(60), || {
        let v = get(&urls, "/druid/coordinator/v1/metadata/datasources/wiki/unusedSegments")?;
        let ids: Vec<String> = v
            .as_array()?
            .iter()
            .filter_map(|s| s["dataSegment"]["identifier"].as_str().map(str::to_string))
            .collect();
        (ids.len() == 1).then_some(ids)
    });
    let day1 = day_interval(1).replace('/', "_");
    assert!(unused[0].starts_with(&format!("wiki_{day1}")), "{unused:?}");
    // A kill task deletes the records first, then the files.
    wait_for_blocking("the killed segments' files deleted", Duration::from_secs(60), || {
        (files_of(60) == 0 && files_of(61) == 0).then_some(())
    });
    assert_eq!(
        (files_of(1), files_of(2)),
        (1, 1),
        "an unused segment within retention and a used one stay"
    );
    assert_eq!(used_ids(&urls).len(), 1);
    let complete = get(&urls, "/druid/indexer/v1/completeTasks").unwrap();
    let kills: Vec<&Value> = complete
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["id"]
                .as_str()
                .unwrap_or("")
                .starts_with("coordinator-issued_kill_wiki_")
        })
        .collect();
    assert!(
        !kills.is_empty() && kills.iter().all(|t| t["statusCode"] == "SUCCESS"),
        "{complete}"
    );
    let duties = get(&urls, "/druid/coordinator/v1/duties").unwrap();
    assert!(
        duties
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "IndexingServiceDuties"),
        "{duties}"
    );
    drop(dev);
}

#[test]
fn auto_compaction_compacts_a_fragmented_datasource_until_nothing_awaits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dev = spawn_dev(
        &data,
        free_port(),
        &["--coordinator-period", "PT1S", "--indexing-period", "PT1S"],
    );
    let urls = vec![dev.url.clone()];
    // Three appends: each of the two days ends up in three partitions.
    for i in 0..3 {
        let input = dir.path().join(format!("input-{i}"));
        write_days(&input, &[3, 4]);
        let mut task = index_task(&format!("append-{i}"), &input);
        task["spec"]["ioConfig"]["appendToExisting"] = json!(true);
        post_index_task(&urls, &task);
    }
    assert_eq!(used_ids(&urls).len(), 6);
    let config =
        json!({"dataSource": "wiki", "skipOffsetFromLatest": "PT0S", "granularitySpec": {"segmentGranularity": "DAY"}});
    let r = http()
        .post(format!("{}/druid/coordinator/v1/config/compaction", urls[0]))
        .json(&config)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let done = wait_for_blocking("compaction to finish", Duration::from_secs(120), || {
        let v = get(&urls, "/druid/coordinator/v1/compaction/status?dataSource=wiki")?;
        let s = v["latestStatus"][0].clone();
        (s["bytesAwaitingCompaction"] == 0 && s["intervalCountCompacted"] == 2).then_some(s)
    });
    assert_eq!(done["scheduleStatus"], "RUNNING");
    assert_eq!(done["segmentCountCompacted"], 2);
    assert_eq!(
        get(&urls, "/druid/coordinator/v1/compaction/progress?dataSource=wiki").unwrap(),
        json!({"remainingSegmentSize": 0})
    );
    // One visible segment per day, and nothing more is submitted.
    let visible = get(
        &urls,
        "/druid/coordinator/v1/metadata/segments?includeOvershadowedStatus&datasources=wiki",
    )
    .unwrap();
    let live: Vec<&Value> = visible
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["overshadowed"] == false)
        .collect();
    assert_eq!(live.len(), 2, "{visible}");
    let r = http()
        .get(format!(
            "{}/druid/coordinator/v1/compaction/progress?dataSource=nope",
            urls[0]
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http()
        .get(format!("{}/druid/coordinator/v1/compaction/progress", urls[0]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "dataSource is required");
    // A malformed compaction config is refused, naming the field, and changes nothing.
    let r = http()
        .post(format!("{}/druid/coordinator/v1/config/compaction", urls[0]))
        .json(&json!({"dataSource": "wiki", "skipOffsetFromLatest": "one day"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let stored = get(&urls, "/druid/coordinator/v1/config/compaction/wiki").unwrap();
    assert_eq!(stored["skipOffsetFromLatest"], "PT0S");
    drop(dev);
}
