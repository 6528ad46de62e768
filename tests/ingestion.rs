//! Native batch ingestion end to end on three real nodes sharing one deep storage directory:
//! Druid's spec submitted over HTTP, run by a worker's peon, segments published, and the Parquet
//! files read back with pyarrow (installed by scripts/ensure-deps.sh) against rows the test
//! computes on its own.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{http, wait_for_blocking, ThreeNodes};
use serde_json::{json, Value};

const API: &str = "/druid/indexer/v1";
const DAY_MS: i64 = 86_400_000;
const START_MS: i64 = 1_714_521_600_000; // 2024-05-01T00:00:00Z

fn post(urls: &[String], path: &str, body: &Value) -> (u16, Value) {
    // Any node: followers redirect to the leader; 503 while there is none.
    let mut next = urls.iter().cycle();
    wait_for_blocking(&format!("an answer to POST {path}"), Duration::from_secs(30), || {
        let url = next.next()?;
        let r = http().post(format!("{url}{path}")).json(body).send().ok()?;
        let s = r.status().as_u16();
        (s != 503).then(|| (s, r.json().unwrap_or(Value::Null)))
    })
}

fn get(urls: &[String], path: &str) -> Option<Value> {
    urls.iter().find_map(|u| {
        let r = http().get(format!("{u}{path}")).send().ok()?;
        (r.status() == 200).then(|| r.json().ok()).flatten()
    })
}

/// Submits `task` and waits for task `id` to succeed.
fn run_to_success(urls: &[String], task: &Value, id: &str) {
    let (s, v) = post(urls, &format!("{API}/task"), task);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(urls, id);
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
}

/// Submits `task`, waits for it to fail, and returns the error of its report, and the report.
fn run_to_failure(urls: &[String], task: &Value, id: &str) -> (String, Value) {
    let (s, v) = post(urls, &format!("{API}/task"), task);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(urls, id);
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    let report = get(urls, &format!("{API}/task/{id}/reports")).unwrap();
    let error = report["ingestionStatsAndErrors"]["payload"]["errorMsg"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (error, report)
}

fn wait_done(urls: &[String], id: &str) -> Value {
    wait_for_blocking(&format!("task {id} to finish"), Duration::from_secs(120), || {
        let v = get(urls, &format!("{API}/task/{id}/status"))?;
        let code = v["status"]["statusCode"].as_str()?.to_string();
        (code == "SUCCESS" || code == "FAILED").then_some(v["status"].clone())
    })
}

/// The generated input: `days` days of rows every 7 s, 3 pages x 4 users x 2 countries cycling.
fn write_input(dir: &Path, days: i64) -> Vec<Value> {
    let mut rows = Vec::new();
    for d in 0..days {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = START_MS + d * DAY_MS;
        let mut i = 0u64;
        while t < START_MS + (d + 1) * DAY_MS {
            let country = ["NO", "SE"][(i % 2) as usize];
            let r = json!({
                "time": raftlord::interval::iso(t),
                "page": format!("page-{}", i % 3),
                "user": format!("user-{}", (i / 3) % 4),
                "country": country,
                "added": (i % 50) as i64,
                "delta": (i % 7) as f64 - 3.5,
            });
            writeln!(gz, "{r}").unwrap();
            rows.push(r);
            t += 7_000 * 60; // every 7 minutes: about 205 rows a day
            i += 1;
        }
        std::fs::write(dir.join(format!("day-{d}.json.gz")), gz.finish().unwrap()).unwrap();
    }
    rows
}

/// The rolled-up rows the test expects: by hour, page, user, country; count, sum of added, max
/// of delta.
/// Hour, page, user, country.
type RowKey = (i64, String, String, String);
/// count, sum of added, max of delta.
type RowMetrics = (i64, i64, f64);

fn expected_rollup(rows: &[Value]) -> BTreeMap<RowKey, RowMetrics> {
    let mut out: BTreeMap<RowKey, RowMetrics> = BTreeMap::new();
    for r in rows {
        let t = raftlord::interval::parse_instant(r["time"].as_str().unwrap()).unwrap();
        let hour = t - t.rem_euclid(3_600_000);
        let key = (
            hour,
            r["page"].as_str().unwrap().to_string(),
            r["user"].as_str().unwrap().to_string(),
            r["country"].as_str().unwrap().to_string(),
        );
        let e = out.entry(key).or_insert((0, 0, f64::MIN));
        e.0 += 1;
        e.1 += r["added"].as_i64().unwrap();
        e.2 = e.2.max(r["delta"].as_f64().unwrap());
    }
    out
}

/// The rows read back, by key; fails if two share time and dimensions (rollup left them apart).
fn rolled_up(got: &[Value]) -> BTreeMap<RowKey, RowMetrics> {
    let mut seen = BTreeMap::new();
    for r in got {
        let key = (
            r["__time"].as_i64().unwrap(),
            r["page"].as_str().unwrap().to_string(),
            r["user"].as_str().unwrap().to_string(),
            r["country"].as_str().unwrap().to_string(),
        );
        let v = (
            r["count"].as_i64().unwrap(),
            r["added"].as_i64().unwrap(),
            r["delta_max"].as_f64().unwrap(),
        );
        assert!(seen.insert(key, v).is_none(), "two rows share time and dimensions: {r}");
    }
    seen
}

/// Reads Parquet files with pyarrow: every row as a JSON object, `__time` in ms.
fn pyarrow_rows(paths: &[String]) -> Vec<Value> {
    let script = r#"
import json, sys
import pyarrow.parquet as pq
rows = []
for path in sys.argv[1:]:
    t = pq.read_table(path)
    assert b"druid.segment" in t.schema.metadata, "no druid.segment metadata"
    for r in t.to_pylist():
        r["__time"] = int(r["__time"].timestamp() * 1000)
        rows.append(r)
print(json.dumps(rows))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(paths)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow could not read the segments (scripts/ensure-deps.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spec(id: &str, input: &Path, append: bool, extra_tuning: Value) -> Value {
    json!({
        "type": "index_parallel",
        "id": id,
        "spec": {
            "dataSchema": {
                "dataSource": "wiki",
                "timestampSpec": {"column": "time", "format": "iso"},
                "dimensionsSpec": {"dimensions": ["page", "user", "country"]},
                "metricsSpec": [
                    {"type": "count", "name": "count"},
                    {"type": "longSum", "name": "added", "fieldName": "added"},
                    {"type": "doubleMax", "name": "delta_max", "fieldName": "delta"}
                ],
                "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "HOUR", "rollup": true}
            },
            "ioConfig": {
                "type": "index_parallel",
                "inputSource": {"type": "local", "baseDir": input, "filter": "*.json.gz"},
                "inputFormat": {"type": "json"},
                "appendToExisting": append
            },
            "tuningConfig": extra_tuning
        }
    })
}

/// Three nodes, each a worker with `slots` slots, sharing the deep storage `deep`; once they
/// have a leader.
fn start(deep: &Path, slots: u32) -> (ThreeNodes, Vec<String>) {
    start_with_env(deep, slots, &[])
}

/// [`start`] with `env` added to each node's environment.
fn start_with_env(deep: &Path, slots: u32, env: &[(&str, &str)]) -> (ThreeNodes, Vec<String>) {
    let deep_flag = deep.display().to_string();
    let cluster = ThreeNodes::start_with_env(
        &["--worker-capacity", &slots.to_string(), "--deep-storage", &deep_flag],
        env,
    );
    let urls = cluster.urls();
    wait_for_blocking("a leader", Duration::from_secs(30), || common::leader_of(&urls));
    (cluster, urls)
}

/// Nothing of `datasource` is published, and deep storage holds no file of it.
fn assert_nothing_left(urls: &[String], deep: &Path, datasource: &str) {
    assert!(used_segments_of(urls, datasource).is_empty());
    let left = walk(&deep.join(datasource));
    assert!(left.is_empty(), "files of [{datasource}] stayed: {left:?}");
}

fn used_segments_of(urls: &[String], datasource: &str) -> Vec<Value> {
    get(
        urls,
        &format!("/druid/coordinator/v1/metadata/datasources/{datasource}/segments?full"),
    )
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default()
}

/// The local file of each segment.
fn load_paths(segments: &[Value]) -> Vec<String> {
    segments
        .iter()
        .map(|s| s["loadSpec"]["path"].as_str().unwrap().to_string())
        .collect()
}

/// Marks segments of `wiki` unused by id, as the Coordinator API does.
fn mark_unused(urls: &[String], ids: &[String]) {
    let (s, v) = post(
        urls,
        "/druid/coordinator/v1/datasources/wiki/markUnused",
        &json!({"segmentIds": ids}),
    );
    assert_eq!(s, 200, "{v}");
}

fn used_segments(urls: &[String]) -> Vec<Value> {
    used_segments_of(urls, "wiki")
}

#[test]
fn index_parallel_builds_rolled_up_parquet_segments_that_pyarrow_reads_back() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 3);
    let (_cluster, urls) = start(deep.path(), 2);

    // A spec that cannot run is refused at submit, naming the field.
    let mut bad = spec("bad", input.path(), false, json!({}));
    bad["spec"]["ioConfig"]["inputSource"]["baseDir"] = json!("/no/such/dir");
    let (s, v) = post(&urls, &format!("{API}/task"), &bad);
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("spec.ioConfig.inputSource.baseDir"), "{v}");
    let mut bad = spec("bad", input.path(), false, json!({}));
    bad["spec"]["dataSchema"]["metricsSpec"][1]["type"] = json!("hyperUnique");
    let (s, v) = post(&urls, &format!("{API}/task"), &bad);
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("hyperUnique"), "{v}");
    let mut bad = spec("bad", input.path(), false, json!({}));
    bad["spec"]["dataSchema"]["transformSpec"] =
        json!({"transforms": [{"type": "expression", "name": "x", "expression": "json_value(page, '$.a')"}]});
    let (s, v) = post(&urls, &format!("{API}/task"), &bad);
    assert_eq!(s, 400, "{v}");
    assert!(
        v.to_string()
            .contains("spec.dataSchema.transformSpec.transforms[0].expression")
            && v.to_string().contains("json_value"),
        "{v}"
    );

    // First ingestion: one segment per day, the rolled-up rows exactly.
    let (s, v) = post(
        &urls,
        &format!("{API}/task"),
        &spec("first", input.path(), false, json!({})),
    );
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "first");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let report = get(&urls, &format!("{API}/task/first/reports")).unwrap();
    let payload = &report["ingestionStatsAndErrors"]["payload"];
    assert_eq!(
        payload["rowStats"]["buildSegments"]["processed"],
        rows.len() as u64,
        "{report}"
    );
    assert_eq!(payload["segmentsPublished"], 3, "{report}");
    assert_eq!(payload["ingestionState"], "COMPLETED");
    let segments = used_segments(&urls);
    assert_eq!(segments.len(), 3, "{segments:?}");
    let first_versions: BTreeMap<String, String> = segments
        .iter()
        .map(|s| {
            (
                s["interval"].as_str().unwrap().to_string(),
                s["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let first_ids: Vec<String> = segments
        .iter()
        .map(|s| s["identifier"].as_str().unwrap().to_string())
        .collect();
    let paths = load_paths(&segments);
    for (s, p) in segments.iter().zip(&paths) {
        assert!(Path::new(p).starts_with(deep.path()), "{p}");
        assert_eq!(s["size"].as_u64().unwrap(), std::fs::metadata(p).unwrap().len());
        assert_eq!(s["dimensions"], "page,user,country");
        assert_eq!(s["metrics"], "count,added,delta_max");
    }
    let expect = expected_rollup(&rows);
    let got = pyarrow_rows(&paths);
    assert_eq!(got.len(), expect.len());
    assert_eq!(rolled_up(&got), expect);

    // Re-ingest with overwrite: a new version for every day, above the old one.
    run_to_success(&urls, &spec("again", input.path(), false, json!({})), "again");
    let segments = used_segments(&urls);
    let newer: BTreeMap<String, String> = segments
        .iter()
        .filter(|s| s["version"].as_str().unwrap() > first_versions[s["interval"].as_str().unwrap()].as_str())
        .map(|s| {
            (
                s["interval"].as_str().unwrap().to_string(),
                s["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(newer.len(), 3, "{segments:?}");

    // Append: new partitions of the current version, each day.
    let (s, v) = post(
        &urls,
        &format!("{API}/task"),
        &spec(
            "more",
            input.path(),
            true,
            json!({"partitionsSpec": {"type": "dynamic"}}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "more");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let segments = used_segments(&urls);
    let appended: Vec<&Value> = segments
        .iter()
        .filter(|s| s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(appended.len(), 3, "{segments:?}");
    for a in &appended {
        let interval = a["interval"].as_str().unwrap();
        assert_eq!(
            a["version"].as_str().unwrap(),
            newer[interval],
            "appended to the current version: {a}"
        );
    }

    // Reindex (the druid input source): the visible segments, now each row twice (the overwrite
    // plus the appended copy), rolled up by day into another datasource.
    let reindex = json!({"type": "index_parallel", "id": "reindex", "spec": {
        "dataSchema": {"dataSource": "wiki_daily",
            "timestampSpec": {"column": "__time", "format": "millis"},
            "dimensionsSpec": {"dimensions": ["page", "user", "country"]},
            "metricsSpec": [{"type": "longSum", "name": "count", "fieldName": "count"},
                {"type": "longSum", "name": "added", "fieldName": "added"},
                {"type": "doubleMax", "name": "delta_max", "fieldName": "delta_max"}],
            "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "DAY"}},
        "ioConfig": {"type": "index_parallel", "inputSource": {"type": "druid", "dataSource": "wiki",
            "interval": "2024-05-01T00:00:00.000Z/2024-05-04T00:00:00.000Z"}}}});
    let (s, v) = post(&urls, &format!("{API}/task"), &reindex);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "reindex");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let daily_paths = load_paths(&used_segments_of(&urls, "wiki_daily"));
    assert_eq!(daily_paths.len(), 3);
    let mut expect_daily: BTreeMap<RowKey, RowMetrics> = BTreeMap::new();
    for ((hour, page, user, country), (count, added, delta)) in &expect {
        let day = hour - hour.rem_euclid(DAY_MS);
        let e = expect_daily
            .entry((day, page.clone(), user.clone(), country.clone()))
            .or_insert((0, 0, f64::MIN));
        e.0 += 2 * count;
        e.1 += 2 * added;
        e.2 = e.2.max(*delta);
    }
    let daily: BTreeMap<RowKey, RowMetrics> = pyarrow_rows(&daily_paths)
        .iter()
        .map(|r| {
            (
                (
                    r["__time"].as_i64().unwrap(),
                    r["page"].as_str().unwrap().to_string(),
                    r["user"].as_str().unwrap().to_string(),
                    r["country"].as_str().unwrap().to_string(),
                ),
                (
                    r["count"].as_i64().unwrap(),
                    r["added"].as_i64().unwrap(),
                    r["delta_max"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(daily, expect_daily);

    // Kill: the first ingestion's segments, marked unused, go from the metadata and from deep
    // storage; so does a file no segment names (a peon killed between push and publish). What
    // used segments name stays. (The node is a Historical too: its Coordinator may have marked
    // the overshadowed first segments unused already, once the newer ones were served.)
    assert_eq!(first_ids.len(), 3);
    mark_unused(&urls, &first_ids);
    let orphan_dir = deep
        .path()
        .join("wiki/2024-05-02T00:00:00.000Z_2024-05-03T00:00:00.000Z/v-orphan/0");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    std::fs::write(orphan_dir.join("index.parquet"), b"left by a killed peon").unwrap();
    let kill = json!({"type": "kill", "id": "kill-1", "dataSource": "wiki",
        "interval": "2024-05-01T00:00:00.000Z/2024-05-04T00:00:00.000Z", "batchSize": 2});
    let (s, v) = post(&urls, &format!("{API}/task"), &kill);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "kill-1");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let report = get(&urls, &format!("{API}/task/kill-1/reports")).unwrap();
    let payload = &report["killUnusedSegments"]["payload"];
    assert_eq!(payload["numSegmentsKilled"], 3, "{report}");
    assert_eq!(payload["numBatchesProcessed"], 2, "{report}");
    assert_eq!(payload["numOrphanFilesDeleted"], 1, "{report}");
    let unused = get(&urls, "/druid/coordinator/v1/metadata/datasources/wiki/unusedSegments").unwrap();
    assert_eq!(unused.as_array().map(Vec::len), Some(0), "{unused}");
    for p in &paths {
        assert!(!Path::new(p).exists(), "{p} was not deleted");
    }
    assert!(!orphan_dir.exists());
    let left = used_segments(&urls);
    assert_eq!(left.len(), 6, "{left:?}");
    for s in &left {
        let p = s["loadSpec"]["path"].as_str().unwrap();
        assert!(
            Path::new(p).exists(),
            "the kill deleted {p}, which a used segment names"
        );
    }
    assert_eq!(walk(&deep.path().join("wiki")).len(), 6);
}

#[test]
fn unparseable_rows_are_counted_and_fail_the_task_past_the_limit_leaving_no_files() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("a.json"),
        "{\"time\": \"2024-05-01T00:00:00Z\", \"page\": \"x\"}\nnot json\n{\"time\": \"never\"}\n",
    )
    .unwrap();
    let (_cluster, urls) = start(deep.path(), 1);
    let mut tolerant = spec("tolerant", input.path(), false, json!({"maxSavedParseExceptions": 10}));
    tolerant["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    run_to_success(&urls, &tolerant, "tolerant");
    let report = get(&urls, &format!("{API}/task/tolerant/reports")).unwrap();
    let payload = &report["ingestionStatsAndErrors"]["payload"];
    assert_eq!(payload["rowStats"]["buildSegments"]["processed"], 1, "{report}");
    assert_eq!(payload["rowStats"]["buildSegments"]["unparseable"], 2, "{report}");
    let events = payload["unparseableEvents"]["buildSegments"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events[0]["details"][0].as_str().unwrap().contains("a.json, Line: 2"),
        "{report}"
    );

    let mut strict = spec("strict", input.path(), false, json!({"maxParseExceptions": 1}));
    strict["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    let (s, v) = post(&urls, &format!("{API}/task"), &strict);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "strict");
    assert_eq!(status["statusCode"], "FAILED");
    assert!(
        status["errorMsg"]
            .as_str()
            .unwrap()
            .contains("Max parse exceptions[1] exceeded"),
        "{status}"
    );
    // The tolerant task's one segment is all deep storage holds.
    let files: Vec<_> = walk(deep.path());
    assert_eq!(files.len(), 1, "{files:?}");
}

/// Every file under `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Druid's rollup tutorial spec, as shipped in examples/: WEEK segments over two days. Its lock
/// before running must be the whole week, or the peon waits for itself (found by running it).
#[test]
fn druids_rollup_tutorial_spec_runs_unchanged_and_gives_the_documented_rows() {
    let deep = tempfile::tempdir().unwrap();
    let (_cluster, urls) = start(deep.path(), 1);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rollup-index.json")).unwrap();
    let mut spec: Value = serde_json::from_str(&text).unwrap();
    spec["id"] = json!("tutorial");
    let (s, v) = post(&urls, &format!("{API}/task"), &spec);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "tutorial");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let segments = get(
        &urls,
        "/druid/coordinator/v1/metadata/datasources/rollup-tutorial/segments?full",
    )
    .and_then(|v| v.as_array().cloned())
    .unwrap_or_default();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(
        segments[0]["interval"],
        "2018-01-01T00:00:00.000Z/2018-01-08T00:00:00.000Z"
    );
    let rows = pyarrow_rows(&[segments[0]["loadSpec"]["path"].as_str().unwrap().to_string()]);
    let got: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["count"].as_i64().unwrap(),
                r["packets"].as_i64().unwrap(),
                r["bytes"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (3, 286, 35937),
            (2, 415, 366260),
            (1, 49, 10204),
            (2, 161, 100288),
            (1, 12, 2818)
        ]
    );
}

/// `big.json` in `dir`: `rows` rows `step_ms` apart from the start, `pages` distinct pages.
fn write_big_input(dir: &Path, rows: u64, step_ms: i64, pages: u64) {
    let mut text = String::with_capacity(64 << 20);
    for i in 0..rows {
        text.push_str(&format!(
            "{{\"time\": {}, \"page\": \"p{}\", \"user\": \"u{}\", \"country\": \"NO\", \"added\": {}, \"delta\": 1.5}}\n",
            START_MS + (i as i64) * step_ms,
            i % pages,
            i % 97,
            i % 50
        ));
    }
    std::fs::write(dir.join("big.json"), text).unwrap();
}

/// A peon killed -9 while it reads: the task fails, nothing is published, and deep storage holds
/// nothing of it.
#[test]
fn a_peon_killed_mid_ingestion_fails_the_task_and_publishes_nothing() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    // Enough rows that reading takes seconds, not milliseconds.
    write_big_input(input.path(), 400_000, 600, 5000);
    let (cluster, urls) = start(deep.path(), 1);
    let mut victim = spec("victim", input.path(), false, json!({}));
    victim["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    let (s, v) = post(&urls, &format!("{API}/task"), &victim);
    assert_eq!(s, 200, "{v}");
    let pid = wait_for_blocking("the peon of task victim", Duration::from_secs(30), || {
        (1..=3).find_map(|n| {
            let f = cluster.dir.path().join(format!("n{n}/worker/tasks/victim/peon.pid"));
            let v: Value = serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()?;
            v["pid"].as_i64()
        })
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = wait_done(&urls, "victim");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    assert_nothing_left(&urls, deep.path(), "wiki");
}

/// An HTTP server for the test: serves the files of `dir` under `/data/` to requests carrying
/// Basic credentials `druid:secret`, 401 to others. Returns its base URL; it lives as long as
/// the returned runtime.
fn serve_files(dir: &Path) -> (tokio::runtime::Runtime, String) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/data/{name}",
            axum::routing::get(
                |State(dir): State<std::path::PathBuf>, UrlPath(name): UrlPath<String>, headers: HeaderMap| async move {
                    // base64("druid:secret")
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Basic ZHJ1aWQ6c2VjcmV0") {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    std::fs::read(dir.join(name)).map_err(|_| StatusCode::NOT_FOUND)
                },
            ),
        )
        .with_state(dir.to_path_buf());
    rt.spawn(async move { axum::serve(listener, app).await });
    (rt, base)
}

/// The http input source: each URI fetched with Basic credentials and decompressed by its
/// extension; a wrong password fails the task with the URI and the status in its error.
#[test]
fn http_input_is_fetched_with_credentials_and_a_refused_fetch_fails_the_task() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let (_server, base) = serve_files(input.path());
    let (_cluster, urls) = start(deep.path(), 1);
    let uris: Vec<String> = (0..2).map(|d| format!("{base}/data/day-{d}.json.gz")).collect();
    let with_source = |id: &str, password: &str| {
        let mut s = spec(id, input.path(), false, json!({}));
        s["spec"]["ioConfig"]["inputSource"] = json!({"type": "http", "uris": uris,
            "httpAuthenticationUsername": "druid",
            "httpAuthenticationPassword": {"type": "default", "password": password}});
        s
    };

    let (s, v) = post(&urls, &format!("{API}/task"), &with_source("wrong", "guess"));
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "wrong");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    let msg = status["errorMsg"].as_str().unwrap_or_default();
    assert!(msg.contains(&uris[0]) && msg.contains("401"), "{status}");
    assert!(!msg.contains("guess"), "the password must not be shown: {status}");
    assert!(used_segments(&urls).is_empty());

    let (s, v) = post(&urls, &format!("{API}/task"), &with_source("fetched", "secret"));
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "fetched");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let segments = used_segments(&urls);
    assert_eq!(segments.len(), 2, "{segments:?}");
    let paths = load_paths(&segments);
    let got = pyarrow_rows(&paths);
    assert_eq!(got.len(), expected_rollup(&rows).len());
    let count: i64 = got.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(count, rows.len() as i64);

    // A URI that is not http is refused at submit, naming it.
    let mut bad = with_source("bad", "secret");
    bad["spec"]["ioConfig"]["inputSource"]["uris"][1] = json!("file:///etc/passwd");
    let (s, v) = post(&urls, &format!("{API}/task"), &bad);
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("spec.ioConfig.inputSource.uris[1]"), "{v}");
}

/// The used segments whose version is the newest of their interval (what queries see).
fn visible(segments: &[Value]) -> Vec<Value> {
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    for s in segments {
        let (i, v) = (s["interval"].as_str().unwrap(), s["version"].as_str().unwrap());
        let e = newest.entry(i.to_string()).or_default();
        if v > e.as_str() {
            *e = v.to_string();
        }
    }
    segments
        .iter()
        .filter(|s| newest[s["interval"].as_str().unwrap()] == s["version"].as_str().unwrap())
        .cloned()
        .collect()
}

/// Druid's compact task with nothing but an interval: two appended copies of each day become
/// one segment per day of a newer version, rolled up across both (counts and sums doubled), the
/// schema taken from the segments, each carrying lastCompactionState; a compaction that would
/// cut a segment granularity bucket is refused at submit.
#[test]
fn compaction_merges_appended_partitions_into_one_rolled_up_segment_per_day() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let (_cluster, urls) = start(deep.path(), 1);
    for id in ["one", "two"] {
        let (s, v) = post(&urls, &format!("{API}/task"), &spec(id, input.path(), true, json!({})));
        assert_eq!(s, 200, "{v}");
        assert_eq!(wait_done(&urls, id)["statusCode"], "SUCCESS");
    }
    let before = used_segments(&urls);
    assert_eq!(before.len(), 4, "{before:?}");

    let interval = "2024-05-01T00:00:00.000Z/2024-05-03T00:00:00.000Z";
    let (s, v) = post(
        &urls,
        &format!("{API}/task"),
        &json!({"type": "compact", "id": "misaligned", "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": "2024-05-01T06:00:00Z/2024-05-03"}},
            "granularitySpec": {"segmentGranularity": "DAY"}}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("granularitySpec.segmentGranularity"), "{v}");

    let (s, v) = post(
        &urls,
        &format!("{API}/task"),
        &json!({"type": "compact", "id": "compact-1", "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": interval}}}),
    );
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "compact-1");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");

    let now = visible(&used_segments(&urls));
    assert_eq!(now.len(), 2, "{now:?}");
    let old_versions: Vec<&str> = before.iter().map(|s| s["version"].as_str().unwrap()).collect();
    for s in &now {
        assert!(old_versions.iter().all(|v| s["version"].as_str().unwrap() > *v), "{s}");
        assert_eq!(s["dimensions"], "page,user,country");
        assert_eq!(s["metrics"], "count,added,delta_max");
        let state = &s["lastCompactionState"];
        assert_eq!(state["granularitySpec"]["segmentGranularity"], "DAY", "{s}");
        assert_eq!(state["partitionsSpec"]["type"], "dynamic", "{s}");
    }
    let paths = load_paths(&now);
    let expect = expected_rollup(&rows);
    let got = pyarrow_rows(&paths);
    assert_eq!(got.len(), expect.len(), "rows rolled up across both copies");
    for r in &got {
        let key = (
            r["__time"].as_i64().unwrap(),
            r["page"].as_str().unwrap().to_string(),
            r["user"].as_str().unwrap().to_string(),
            r["country"].as_str().unwrap().to_string(),
        );
        let (count, added, delta_max) = expect[&key];
        assert_eq!(r["count"].as_i64().unwrap(), 2 * count, "{r}");
        assert_eq!(r["added"].as_i64().unwrap(), 2 * added, "{r}");
        assert_eq!(r["delta_max"].as_f64().unwrap(), delta_max, "{r}");
    }
    let report = get(&urls, &format!("{API}/task/compact-1/reports")).unwrap();
    assert_eq!(
        report["ingestionStatsAndErrors"]["payload"]["segmentsPublished"], 2,
        "{report}"
    );
}

/// The leader killed with SIGKILL while a peon ingests: a new leader takes over, the killed node
/// is restarted (its worker adopts the peon if it ran there), and the task finishes and
/// publishes each of its segments once, holding every row.
#[test]
fn the_leader_killed_mid_ingestion_leaves_the_task_to_finish_and_publish_once() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = 300_000u64;
    let mut text = String::with_capacity(48 << 20);
    for i in 0..rows {
        text.push_str(&format!(
            "{{\"time\": {}, \"page\": \"p{}\", \"user\": \"u{}\", \"country\": \"NO\", \"added\": 1, \"delta\": 1.5}}\n",
            START_MS + (i as i64) * 500,
            i % 5000,
            i % 97
        ));
    }
    std::fs::write(input.path().join("big.json"), text).unwrap();
    let (mut cluster, urls) = start(deep.path(), 1);
    let mut task = spec("survivor", input.path(), false, json!({}));
    task["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    let (s, v) = post(&urls, &format!("{API}/task"), &task);
    assert_eq!(s, 200, "{v}");
    wait_for_blocking("the peon of task survivor", Duration::from_secs(30), || {
        (1..=3).find(|n| {
            cluster
                .dir
                .path()
                .join(format!("n{n}/worker/tasks/survivor/peon.pid"))
                .exists()
        })
    });
    let (leader, _) = wait_for_blocking("a leader", Duration::from_secs(30), || common::leader_of(&urls));
    let running = get(&urls, &format!("{API}/task/survivor/status")).unwrap();
    assert_eq!(running["status"]["statusCode"], "RUNNING", "{running}");
    drop(cluster.procs.remove(&leader)); // SIGKILL, and reaped
    let others: Vec<String> = cluster.urls();
    wait_for_blocking("a new leader", Duration::from_secs(30), || {
        common::leader_of(&others).filter(|(id, _)| *id != leader)
    });
    cluster.spawn(leader);

    let status = wait_done(&urls, "survivor");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let segments = used_segments(&urls);
    let mut intervals: Vec<&str> = segments.iter().map(|s| s["interval"].as_str().unwrap()).collect();
    intervals.sort();
    let before = intervals.len();
    intervals.dedup();
    assert_eq!(before, intervals.len(), "a segment published twice: {segments:?}");
    assert_eq!(intervals.len(), 2, "{segments:?}");
    let paths = load_paths(&segments);
    let got = pyarrow_rows(&paths);
    let count: u64 = got.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(count, rows);
}

/// Hashed partitioning through the whole path: numShards segments per day, published with
/// Druid's hashed shard spec, together holding every row once.
#[test]
fn hashed_partitions_are_published_with_druids_hashed_shard_specs() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let (_cluster, urls) = start(deep.path(), 1);
    let task = spec(
        "hashed",
        input.path(),
        false,
        json!({"partitionsSpec": {"type": "hashed", "numShards": 3, "partitionDimensions": ["page", "user"]},
            "forceGuaranteedRollup": true}),
    );
    run_to_success(&urls, &task, "hashed");
    let segments = used_segments(&urls);
    assert_eq!(segments.len(), 6, "{segments:?}");
    for s in &segments {
        let shard = &s["shardSpec"];
        assert_eq!(shard["type"], "hashed", "{s}");
        assert_eq!(shard["partitions"], 3, "{s}");
        assert_eq!(shard["bucketId"], shard["partitionNum"], "{s}");
        assert_eq!(shard["partitionDimensions"], json!(["page", "user"]), "{s}");
    }
    let paths = load_paths(&segments);
    let got = pyarrow_rows(&paths);
    assert_eq!(got.len(), expected_rollup(&rows).len());
    let count: i64 = got.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(count, rows.len() as i64);
}

/// dropExisting: re-ingesting two days with input for one leaves the other covered by a
/// tombstone (Druid's tombstone load and shard specs, the task's version), so it shows no
/// data; a reindex of both days then reads only the day with rows.
#[test]
fn drop_existing_covers_days_the_input_left_empty_with_tombstones() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    write_input(input.path(), 2);
    let (_cluster, urls) = start(deep.path(), 1);
    run_to_success(&urls, &spec("both", input.path(), false, json!({})), "both");

    std::fs::remove_file(input.path().join("day-1.json.gz")).unwrap();
    let mut again = spec("one-day", input.path(), false, json!({}));
    again["spec"]["dataSchema"]["granularitySpec"]["intervals"] = json!(["2024-05-01/2024-05-03"]);
    again["spec"]["ioConfig"]["dropExisting"] = json!(true);
    let (s, v) = post(&urls, &format!("{API}/task"), &again);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "one-day");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let now = visible(&used_segments(&urls));
    assert_eq!(now.len(), 2, "{now:?}");
    let day1 = now
        .iter()
        .find(|s| s["interval"] == "2024-05-02T00:00:00.000Z/2024-05-03T00:00:00.000Z")
        .unwrap();
    assert_eq!(day1["loadSpec"], json!({"type": "tombstone"}), "{day1}");
    assert_eq!(day1["shardSpec"]["type"], "tombstone", "{day1}");
    let day0 = now.iter().find(|s| s != &day1).unwrap();
    assert_eq!(day0["version"], day1["version"], "one task, one version");
    assert_eq!(day0["loadSpec"]["type"], "local");

    // A reindex over both days reads the rows, not the tombstone.
    let mut reindex = spec("reindex", input.path(), false, json!({}));
    reindex["spec"]["ioConfig"]["inputSource"] =
        json!({"type": "druid", "dataSource": "wiki", "interval": "2024-05-01/2024-05-03"});
    reindex["spec"]["dataSchema"]["timestampSpec"] = json!({"column": "__time", "format": "millis"});
    reindex["spec"]["dataSchema"]["metricsSpec"] = json!([
        {"type": "longSum", "name": "count", "fieldName": "count"},
        {"type": "longSum", "name": "added", "fieldName": "added"},
        {"type": "doubleMax", "name": "delta_max", "fieldName": "delta_max"}]);
    let (s, v) = post(&urls, &format!("{API}/task"), &reindex);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "reindex");
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
}

/// A real S3 API server for the test: moto's server from PyPI (scripts/ensure-deps.sh installs
/// it), on a free loopback port, stopped when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> S3Server {
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/ensure-deps.sh installs moto[server])");
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = S3Server { child, endpoint };
        wait_for_blocking("the S3 server to answer", Duration::from_secs(60), || {
            http().get(&server.endpoint).send().ok().filter(|r| r.status() == 200)
        });
        server
    }

    /// Environment for an AWS client of this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test-key".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test-secret".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    /// Runs a Python script with boto3 client `s3` and pyarrow filesystem `fs` for this server
    /// (independent clients: neither is raftlord's); returns what it prints, as JSON.
    fn python(&self, script: &str, args: &[&str]) -> Value {
        let prelude = r#"
import json, sys, os, boto3
import pyarrow.fs, pyarrow.parquet as pq
endpoint = os.environ["AWS_ENDPOINT_URL"]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
fs = pyarrow.fs.S3FileSystem(access_key="test-key", secret_key="test-secret", region="us-east-1",
    endpoint_override=endpoint.split("://")[1], scheme="http")
"#;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}\n{script}"))
            .args(args)
            .envs(self.env())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "the S3 client script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Three nodes, each a worker with one slot, with deep storage in this server's bucket
    /// `deep` under `segments/`; once they have a leader.
    fn cluster(&self) -> (ThreeNodes, Vec<String>) {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cluster = ThreeNodes::start_with_env(
            &["--worker-capacity", "1", "--deep-storage", "s3://deep/segments"],
            &env,
        );
        let urls = cluster.urls();
        wait_for_blocking("a leader", Duration::from_secs(30), || common::leader_of(&urls));
        (cluster, urls)
    }

    /// Every key in `bucket` under `prefix`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let v = self.python(
            r#"
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2])
print(json.dumps(sorted(o["Key"] for p in pages for o in p.get("Contents", []))))
"#,
            &[bucket, prefix],
        );
        serde_json::from_value(v).unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// S3 end to end against a real S3 API server: input read from a bucket by prefix and glob, and
/// by object with the spec's own endpoint and keys; segments pushed to S3 deep storage and read
/// back by pyarrow's own S3 client; a compaction that reads them from S3; a kill that deletes
/// the unused objects and an orphan, and nothing a used segment names; a missing object fails
/// the task naming it.
#[test]
fn s3_input_and_s3_deep_storage_ingest_compact_and_kill_against_a_real_s3_server() {
    let s3 = S3Server::start();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 3);
    s3.python(
        r#"
for b in ("input", "deep"):
    s3.create_bucket(Bucket=b)
for name in sorted(os.listdir(sys.argv[1])):
    s3.upload_file(os.path.join(sys.argv[1], name), "input", "wiki/" + name)
s3.put_object(Bucket="input", Key="wiki/README.txt", Body=b"not input")
"#,
        &[input.path().to_str().unwrap()],
    );
    let (_cluster, urls) = s3.cluster();

    // By prefix, with the glob leaving README.txt out; keys from the worker's environment.
    let mut first = spec("s3-one", input.path(), false, json!({}));
    first["spec"]["ioConfig"]["inputSource"] =
        json!({"type": "s3", "prefixes": ["s3://input/wiki/"], "objectGlob": "**.json.gz"});
    run_to_success(&urls, &first, "s3-one");
    let segments = used_segments(&urls);
    assert_eq!(segments.len(), 3, "{segments:?}");
    for s in &segments {
        assert_eq!(s["loadSpec"]["type"], "s3", "{s}");
        assert_eq!(s["loadSpec"]["bucket"], "deep", "{s}");
        assert!(
            s["loadSpec"]["key"]
                .as_str()
                .unwrap()
                .starts_with("segments/wiki/2024-05-0"),
            "{s}"
        );
    }
    let read_back = |segments: &[Value]| -> Vec<Value> {
        let paths: Vec<String> = segments
            .iter()
            .map(|s| format!("deep/{}", s["loadSpec"]["key"].as_str().unwrap()))
            .collect();
        let args: Vec<&str> = paths.iter().map(String::as_str).collect();
        let v = s3.python(
            r#"
rows = []
for path in sys.argv[1:]:
    t = pq.read_table(path, filesystem=fs)
    assert b"druid.segment" in t.schema.metadata
    for r in t.to_pylist():
        r["__time"] = int(r["__time"].timestamp() * 1000)
        rows.append(r)
print(json.dumps(rows))
"#,
            &args,
        );
        v.as_array().cloned().unwrap()
    };
    let expect = expected_rollup(&rows);
    let got = read_back(&segments);
    assert_eq!(got.len(), expect.len());
    // The Historicals download them from S3: two replicas of each, on two of the three nodes.
    wait_for_blocking("the segments served from S3", Duration::from_secs(60), || {
        let v = get(&urls, "/druid/coordinator/v1/loadstatus?full")?;
        (v == json!({"_default_tier": {"wiki": 0}})).then_some(())
    });
    let served: usize = urls
        .iter()
        .filter_map(|u| get(std::slice::from_ref(u), "/druid/historical/v1/segments"))
        .map(|v| {
            v.as_array()
                .map_or(0, |a| a.iter().filter(|s| s["state"] == "LOADED").count())
        })
        .sum();
    assert_eq!(served, 6, "three segments, twice each");
    let check = |got: &[Value], copies: i64| {
        for r in got {
            let key = (
                r["__time"].as_i64().unwrap(),
                r["page"].as_str().unwrap().to_string(),
                r["user"].as_str().unwrap().to_string(),
                r["country"].as_str().unwrap().to_string(),
            );
            let (count, added, delta_max) = expect[&key];
            assert_eq!(r["count"].as_i64().unwrap(), copies * count, "{r}");
            assert_eq!(r["added"].as_i64().unwrap(), copies * added, "{r}");
            assert_eq!(r["delta_max"].as_f64().unwrap(), delta_max, "{r}");
        }
    };
    check(&got, 1);

    // By object, with the endpoint and keys in the spec (Druid's endpointConfig and properties),
    // appended.
    let mut second = spec("s3-two", input.path(), true, json!({}));
    second["spec"]["ioConfig"]["inputSource"] = json!({"type": "s3",
        "objects": (0..3).map(|d| json!({"bucket": "input", "path": format!("wiki/day-{d}.json.gz")})).collect::<Vec<_>>(),
        "endpointConfig": {"url": s3.endpoint.trim_start_matches("http://"), "signingRegion": "us-east-1"},
        "clientConfig": {"protocol": "http"},
        "properties": {"accessKeyId": "test-key", "secretAccessKey": {"type": "default", "password": "test-secret"}}});
    run_to_success(&urls, &second, "s3-two");
    assert_eq!(used_segments(&urls).len(), 6);

    // A compaction reads the six segments from S3 and writes one per day.
    let interval = "2024-05-01T00:00:00.000Z/2024-05-04T00:00:00.000Z";
    run_to_success(
        &urls,
        &json!({"type": "compact", "id": "s3-compact", "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "interval", "interval": interval}}}),
        "s3-compact",
    );
    let all = used_segments(&urls);
    let now = visible(&all);
    assert_eq!(now.len(), 3, "{now:?}");
    check(&read_back(&now), 2);

    // Kill: the six overshadowed segments, marked unused, and an orphan object go; the three
    // visible segments' objects stay.
    let old_ids: Vec<String> = all
        .iter()
        .filter(|s| !now.contains(s))
        .map(|s| s["identifier"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(old_ids.len(), 6);
    mark_unused(&urls, &old_ids);
    s3.python(
        r#"s3.put_object(Bucket="deep", Key=sys.argv[1], Body=b"left by a killed peon")"#,
        &["segments/wiki/2024-05-02T00:00:00.000Z_2024-05-03T00:00:00.000Z/v-orphan/0/index.parquet"],
    );
    run_to_success(
        &urls,
        &json!({"type": "kill", "id": "s3-kill", "dataSource": "wiki", "interval": interval}),
        "s3-kill",
    );
    let report = get(&urls, &format!("{API}/task/s3-kill/reports")).unwrap();
    let payload = &report["killUnusedSegments"]["payload"];
    assert_eq!(payload["numSegmentsKilled"], 6, "{report}");
    assert_eq!(payload["numFilesDeleted"], 6, "{report}");
    assert_eq!(payload["numOrphanFilesDeleted"], 1, "{report}");
    let mut kept: Vec<String> = now
        .iter()
        .map(|s| s["loadSpec"]["key"].as_str().unwrap().to_string())
        .collect();
    kept.sort();
    assert_eq!(s3.keys("deep", "segments/"), kept);

    // A missing object fails the task with its URI; nothing is published or left behind.
    let mut missing = spec("s3-missing", input.path(), true, json!({}));
    missing["spec"]["ioConfig"]["inputSource"] =
        json!({"type": "s3", "uris": ["s3://input/wiki/day-0.json.gz", "s3://input/wiki/nope.json.gz"]});
    let (s, v) = post(&urls, &format!("{API}/task"), &missing);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "s3-missing");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    assert!(
        status["errorMsg"]
            .as_str()
            .unwrap_or("")
            .contains("s3://input/wiki/nope.json.gz"),
        "{status}"
    );
    assert_eq!(s3.keys("deep", "segments/"), kept);
}

/// `maxNumConcurrentSubTasks` 4 with one file per split: four `single_phase_sub_task`s, real
/// tasks in the task API, run on the workers; the supervisor publishes all their segments once,
/// and its report sums their rows. Appending in parallel adds partitions. A split that fails
/// every attempt fails the supervisor after `maxRetry` retries, with nothing published and no
/// file left in deep storage.
#[test]
fn index_parallel_runs_sub_tasks_and_publishes_their_segments_once() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 4);
    let (_cluster, urls) = start(deep.path(), 2);
    let parallel = json!({"maxNumConcurrentSubTasks": 4, "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}});
    run_to_success(&urls, &spec("par-1", input.path(), false, parallel.clone()), "par-1");

    let segments = used_segments(&urls);
    assert_eq!(segments.len(), 4, "{segments:?}");
    let got = pyarrow_rows(&load_paths(&segments));
    let expect = expected_rollup(&rows);
    assert_eq!(got.len(), expect.len(), "each day is one split: rollup is perfect");
    let count: i64 = got.iter().map(|r| r["count"].as_i64().unwrap()).sum();
    assert_eq!(count, rows.len() as i64);
    for s in &segments {
        assert_eq!(
            s["shardSpec"],
            json!({"type": "numbered", "partitionNum": 0, "partitions": 1}),
            "{s}"
        );
    }
    let report = get(&urls, &format!("{API}/task/par-1/reports")).unwrap();
    let payload = &report["ingestionStatsAndErrors"]["payload"];
    assert_eq!(
        payload["rowStats"]["buildSegments"]["processed"],
        rows.len(),
        "{report}"
    );
    assert_eq!(payload["segmentsPublished"], 4, "{report}");
    let progress = &report["parallelIndexProgress"]["payload"];
    assert_eq!(progress["succeeded"], 4, "{report}");
    // The sub-tasks are tasks of their own, in the supervisor's group.
    for sub in progress["subtasks"].as_array().unwrap() {
        let sub_id = sub["taskId"].as_str().unwrap();
        let status = wait_done(&urls, sub_id);
        assert_eq!(status["statusCode"], "SUCCESS", "{status}");
        assert_eq!(status["type"], "single_phase_sub_task", "{status}");
        assert_eq!(status["groupId"], "par-1", "{status}");
    }

    // Appending in parallel, from the CLI, which ends with the outcome and the sub-tasks: one
    // more partition per day, in each day's version.
    let spec_file = input.path().join("par-2.spec");
    std::fs::write(
        &spec_file,
        spec("par-2", input.path(), true, parallel.clone()).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new(common::raftlord_bin())
        .args([
            "task",
            "submit",
            spec_file.to_str().unwrap(),
            "--wait",
            "--url",
            &urls[0],
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("par-2: SUCCESS"), "{stdout}");
    assert!(
        stdout.contains("4 segment(s) published; sub-tasks: 0 running, 4 succeeded, 0 failed"),
        "{stdout}"
    );
    let after = used_segments(&urls);
    assert_eq!(after.len(), 8, "{after:?}");
    let mut per_day: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in &after {
        per_day
            .entry(format!("{}|{}", s["interval"], s["version"]))
            .or_default()
            .push(s["shardSpec"]["partitionNum"].as_u64().unwrap());
    }
    assert_eq!(
        per_day.len(),
        4,
        "appended partitions keep their day's version: {per_day:?}"
    );
    for nums in per_day.values_mut() {
        nums.sort();
        assert_eq!(*nums, vec![0, 1]);
    }

    // A split that can never be read: two attempts (maxRetry 1), then the supervisor fails.
    let bad_input = tempfile::tempdir().unwrap();
    write_input(bad_input.path(), 2);
    std::fs::write(bad_input.path().join("day-9.json.gz"), b"not gzip").unwrap();
    let mut tuning = parallel.clone();
    tuning["maxRetry"] = json!(1);
    let mut bad = spec("par-bad", bad_input.path(), false, tuning);
    bad["spec"]["dataSchema"]["dataSource"] = json!("wiki-bad");
    let (error, report) = run_to_failure(&urls, &bad, "par-bad");
    assert!(
        error.contains("after 2 attempt(s)") && error.contains("day-9.json.gz"),
        "{report}"
    );
    assert_nothing_left(&urls, deep.path(), "wiki-bad");
}

/// Found a trap: on a node with one task slot (`raftlord dev` on a 2-core machine), a parallel
/// spec's supervisor held the only slot and its sub-tasks would wait for ever. With no slot to
/// spare it runs in one peon, and succeeds.
#[test]
fn a_parallel_spec_on_a_one_slot_node_runs_in_one_peon_instead_of_waiting_for_ever() {
    let dir = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let port = common::free_port();
    let _dev = common::spawn_dev(dir.path(), port, &["--worker-capacity", "1"]);
    let urls = vec![format!("http://127.0.0.1:{port}")];
    wait_for_blocking("the dev node to lead", Duration::from_secs(30), || {
        common::leader_of(&urls)
    });
    let parallel = json!({"maxNumConcurrentSubTasks": 4, "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}});
    run_to_success(&urls, &spec("solo", input.path(), false, parallel), "solo");
    let report = get(&urls, &format!("{API}/task/solo/reports")).unwrap();
    assert!(report.get("parallelIndexProgress").is_none(), "{report}");
    assert_eq!(
        report["ingestionStatsAndErrors"]["payload"]["rowStats"]["buildSegments"]["processed"],
        rows.len(),
        "{report}"
    );
    assert_eq!(used_segments(&urls).len(), 2);
}

/// Range partitioning: `single_dim` on page (rows held in memory) and `range` on page and user
/// (rows spilled to sorted runs): each day split into ranges of about targetRowsPerSegment rows,
/// published with Druid's `single` and `range` shard specs, every file holding exactly the rows
/// of its range, and all rows there. A partition dimension that is not a string dimension is
/// refused at submit.
#[test]
fn range_partitions_hold_the_rows_of_their_ranges() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let (_cluster, urls) = start(deep.path(), 1);
    let expect = expected_rollup(&rows);
    let per_day = expect.len() as u64 / 2;

    let mut single = spec(
        "single",
        input.path(),
        false,
        json!({"partitionsSpec": {"type": "single_dim", "partitionDimension": "page", "targetRowsPerSegment": per_day / 3}}),
    );
    single["spec"]["dataSchema"]["dataSource"] = json!("by-page");
    run_to_success(&urls, &single, "single");
    let mut ranged = spec(
        "ranged",
        input.path(),
        false,
        json!({"partitionsSpec": {"type": "range", "partitionDimensions": ["page", "user"], "targetRowsPerSegment": per_day / 5},
            "maxRowsInMemory": 40}),
    );
    ranged["spec"]["dataSchema"]["dataSource"] = json!("by-page-user");
    run_to_success(&urls, &ranged, "ranged");

    for (datasource, kind) in [("by-page", "single"), ("by-page-user", "range")] {
        let segments = used_segments_of(&urls, datasource);
        let days: std::collections::BTreeSet<&str> = segments.iter().map(|s| s["interval"].as_str().unwrap()).collect();
        assert_eq!(days.len(), 2, "{segments:?}");
        assert!(segments.len() >= 6, "{kind}: {} segments for two days", segments.len());
        let mut total = 0;
        for s in &segments {
            let shard = &s["shardSpec"];
            assert_eq!(shard["type"], kind, "{s}");
            let n = segments.iter().filter(|o| o["interval"] == s["interval"]).count();
            assert_eq!(shard["numCorePartitions"], n, "{s}");
            let got = pyarrow_rows(&load_paths(std::slice::from_ref(s)));
            total += got.len();
            // The row's values against the range [start, end), null (a missing value) first.
            let tuple = |r: &Value| -> Vec<String> {
                if kind == "single" {
                    vec![r["page"].as_str().unwrap().to_string()]
                } else {
                    vec![
                        r["page"].as_str().unwrap().to_string(),
                        r["user"].as_str().unwrap().to_string(),
                    ]
                }
            };
            let bound = |b: &Value| -> Option<Vec<String>> {
                match b {
                    Value::Null => None,
                    Value::String(v) => Some(vec![v.clone()]),
                    Value::Array(a) => Some(a.iter().map(|v| v.as_str().unwrap().to_string()).collect()),
                    other => panic!("bound {other}"),
                }
            };
            let (start, end) = (bound(&shard["start"]), bound(&shard["end"]));
            if kind == "single" {
                assert_eq!(shard["dimension"], "page", "{s}");
            } else {
                assert_eq!(shard["dimensions"], json!(["page", "user"]), "{s}");
            }
            assert!(!got.is_empty(), "an empty range: {s}");
            for r in &got {
                let t = tuple(r);
                assert!(start.as_ref().is_none_or(|b| t >= *b), "{t:?} before {start:?} in {s}");
                assert!(end.as_ref().is_none_or(|b| t < *b), "{t:?} not before {end:?} in {s}");
            }
        }
        assert_eq!(total, expect.len(), "{kind}: every rolled-up row, once");
    }

    let mut bad = spec(
        "bad-range",
        input.path(),
        false,
        json!({"partitionsSpec": {"type": "single_dim", "partitionDimension": "delta"}}),
    );
    bad["spec"]["dataSchema"]["dimensionsSpec"]["dimensions"] = json!(["page", {"type": "long", "name": "delta"}]);
    let (s, v) = post(&urls, &format!("{API}/task"), &bad);
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("partitionsSpec.partitionDimension"), "{v}");
}

/// Compaction by segment ids (Druid's `segments` inputSpec): it runs on exactly the segments
/// named when they are those visible in their umbrella interval, and fails naming both lists
/// once they are not (here: after that compaction overshadowed them). An id of another
/// datasource is refused at submit.
#[test]
fn compaction_by_segment_ids_runs_only_on_the_segments_visible_now() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let (_cluster, urls) = start(deep.path(), 1);
    run_to_success(&urls, &spec("ids-in", input.path(), false, json!({})), "ids-in");
    let before = used_segments(&urls);
    assert_eq!(before.len(), 2);
    let ids: Vec<Value> = before.iter().map(|s| s["identifier"].clone()).collect();
    let by_ids = |id: &str, ids: &[Value]| {
        json!({"type": "compact", "id": id, "dataSource": "wiki",
            "ioConfig": {"type": "compact", "inputSpec": {"type": "segments", "segments": ids}}})
    };
    run_to_success(&urls, &by_ids("ids-1", &ids), "ids-1");
    let now = visible(&used_segments(&urls));
    assert_eq!(now.len(), 2);
    for s in &now {
        assert!(s["lastCompactionState"].is_object(), "{s}");
        assert!(!ids.contains(&s["identifier"]), "{s} was not rewritten");
    }
    let got = pyarrow_rows(&load_paths(&now));
    assert_eq!(got.len(), expected_rollup(&rows).len());

    // The same ids again: they are overshadowed now.
    let (error, report) = run_to_failure(&urls, &by_ids("ids-2", &ids), "ids-2");
    assert!(error.contains("not those visible now"), "{report}");
    assert!(error.contains(now[0]["identifier"].as_str().unwrap()), "{report}");

    let (s, v) = post(
        &urls,
        &format!("{API}/task"),
        &by_ids(
            "ids-3",
            &[json!("other_2024-05-01T00:00:00.000Z_2024-05-02T00:00:00.000Z_v1")],
        ),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("ioConfig.inputSpec.segments[0]"), "{v}");
}

/// A peon killed -9 between pushing its first segment and publishing: the S3 server is paused
/// (SIGSTOP) as soon as the task log shows a push, so the next upload hangs, and the peon is
/// killed there. The task fails, nothing is published, the pushed objects stay as files no
/// segment names, and a kill of the interval removes exactly those.
#[test]
fn a_peon_killed_between_push_and_publish_leaves_files_that_the_next_kill_removes() {
    let s3 = S3Server::start();
    s3.python(r#"s3.create_bucket(Bucket="deep")"#, &[]);
    let input = tempfile::tempdir().unwrap();
    // Three days of rows that hardly roll up, so writing each day's file takes a while.
    write_big_input(input.path(), 300_000, 3 * DAY_MS / 300_000, 7919);
    let (cluster, urls) = s3.cluster();
    let mut victim = spec("pushing", input.path(), false, json!({}));
    victim["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    let (s, v) = post(&urls, &format!("{API}/task"), &victim);
    assert_eq!(s, 200, "{v}");
    let task_file = |name: &str| -> Option<String> {
        (1..=3).find_map(|n| {
            std::fs::read_to_string(cluster.dir.path().join(format!("n{n}/worker/tasks/pushing/{name}"))).ok()
        })
    };
    wait_for_blocking("the first push in the task log", Duration::from_secs(120), || {
        task_file("log").filter(|l| l.contains("pushed segment"))
    });
    let s3_pid = nix::unistd::Pid::from_raw(s3.child.id() as i32);
    nix::sys::signal::kill(s3_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let pid = task_file("peon.pid")
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["pid"].as_i64())
        .expect("the peon's pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nix::sys::signal::kill(s3_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let log = task_file("log").unwrap_or_default();
    assert!(
        !log.contains("published"),
        "the task published before it was killed:\n{log}"
    );

    let status = wait_done(&urls, "pushing");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    assert!(used_segments(&urls).is_empty());
    let orphans = s3.keys("deep", "segments/");
    assert!(!orphans.is_empty(), "the push the log showed left no object");

    run_to_success(
        &urls,
        &json!({"type": "kill", "id": "sweep", "dataSource": "wiki",
            "interval": "2024-05-01T00:00:00.000Z/2024-05-04T00:00:00.000Z"}),
        "sweep",
    );
    let report = get(&urls, &format!("{API}/task/sweep/reports")).unwrap();
    assert_eq!(
        report["killUnusedSegments"]["payload"]["numOrphanFilesDeleted"],
        orphans.len(),
        "{report}"
    );
    assert_eq!(s3.keys("deep", "segments/"), Vec::<String>::new());
}

/// The (page, user) pairs of each segment of `datasource` with rows, by day and bucket.
type Buckets = BTreeMap<(String, u64), Vec<(String, String)>>;

fn pairs_by_bucket(urls: &[String], datasource: &str) -> Buckets {
    let mut out = Buckets::new();
    for s in used_segments_of(urls, datasource) {
        let pairs = pyarrow_rows(&load_paths(std::slice::from_ref(&s)))
            .iter()
            .map(|r| {
                (
                    r["page"].as_str().unwrap().to_string(),
                    r["user"].as_str().unwrap().to_string(),
                )
            })
            .collect::<std::collections::BTreeSet<_>>();
        if !pairs.is_empty() {
            let key = (
                s["interval"].as_str().unwrap().to_string(),
                s["shardSpec"]["bucketId"].as_u64().unwrap(),
            );
            out.insert(key, pairs.into_iter().collect());
        }
    }
    out
}

/// Runs a parallel hashed spec (`partitionsSpec` `hashed`) into `datasource` and checks what
/// Druid's hashed parallel ingestion promises: perfect rollup of `rows`, each day's segments
/// numbered 0..n with `num_buckets` buckets, the sub-task types `phases` ran (type -> count),
/// and phase 1's row counts in the report.
#[allow(clippy::too_many_arguments)]
fn run_hashed_parallel(
    urls: &[String],
    input: &Path,
    id: &str,
    datasource: &str,
    hashed: Value,
    rows: &[Value],
    num_buckets: u64,
    phases: &[(&str, usize)],
) {
    let tuning = json!({"partitionsSpec": hashed, "forceGuaranteedRollup": true, "maxNumConcurrentSubTasks": 4,
        "totalNumMergeTasks": 2, "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}});
    let mut task = spec(id, input, false, tuning);
    task["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    task["spec"]["dataSchema"]["dataSource"] = json!(datasource);
    run_to_success(urls, &task, id);

    let segments = used_segments_of(urls, datasource);
    let got = pyarrow_rows(&load_paths(&segments));
    // Perfect rollup: exactly the rows the test computes, each once.
    assert_eq!(rolled_up(&got), expected_rollup(rows), "{id}");

    // Each day: partitions 0..n of its non-empty buckets.
    let mut by_day: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for s in &segments {
        by_day
            .entry(s["interval"].as_str().unwrap().to_string())
            .or_default()
            .push(s);
    }
    assert_eq!(by_day.len(), 2, "{segments:?}");
    for (day, set) in &by_day {
        let mut nums: Vec<u64> = set
            .iter()
            .map(|s| s["shardSpec"]["partitionNum"].as_u64().unwrap())
            .collect();
        nums.sort();
        assert_eq!(nums, (0..set.len() as u64).collect::<Vec<_>>(), "{day}: {set:?}");
        for s in set {
            let shard = &s["shardSpec"];
            assert_eq!(shard["type"], "hashed", "{s}");
            assert_eq!(
                (shard["numBuckets"].as_u64(), shard["partitions"].as_u64()),
                (Some(num_buckets), Some(set.len() as u64)),
                "{s}"
            );
            assert_eq!(shard["partitionDimensions"], json!(["page", "user"]), "{s}");
        }
    }

    // The phases ran as Druid's sub-task types, in the supervisor's group; only the rows of the
    // phase that builds the partial segments count in the report.
    let report = get(urls, &format!("{API}/task/{id}/reports")).unwrap();
    let payload = &report["ingestionStatsAndErrors"]["payload"];
    assert_eq!(
        payload["rowStats"]["buildSegments"]["processed"],
        rows.len(),
        "{report}"
    );
    assert_eq!(payload["segmentsPublished"], segments.len(), "{report}");
    let mut types = BTreeMap::new();
    for sub in report["parallelIndexProgress"]["payload"]["subtasks"]
        .as_array()
        .unwrap()
    {
        let status = wait_done(urls, sub["taskId"].as_str().unwrap());
        assert_eq!(status["statusCode"], "SUCCESS", "{status}");
        assert_eq!(status["groupId"], id, "{status}");
        *types.entry(status["type"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, usize> = phases.iter().map(|(t, n)| (t.to_string(), *n)).collect();
    assert_eq!(types, expected, "{id}");
}

/// `hashed` partitioning in parallel: Druid's two phases with `numShards`, three with
/// `targetRowsPerSegment` (a cardinality phase first). The rows of each hour are spread over
/// four files, so only the merge phase can roll them up perfectly; the buckets must be those a
/// single peon makes, and the partial segments of phase 1 must be gone afterwards.
#[test]
fn hashed_index_parallel_runs_two_phases_and_rolls_up_perfectly_across_sub_tasks() {
    let deep = tempfile::tempdir().unwrap();
    let generated = tempfile::tempdir().unwrap();
    let rows = write_input(generated.path(), 2);
    // Row i goes to file i % 4: every (hour, page, user, country) is spread over the files.
    let input = tempfile::tempdir().unwrap();
    let mut files: Vec<Vec<u8>> = vec![Vec::new(); 4];
    for (i, r) in rows.iter().enumerate() {
        writeln!(files[i % 4], "{r}").unwrap();
    }
    for (k, f) in files.iter().enumerate() {
        std::fs::write(input.path().join(format!("part-{k}.json")), f).unwrap();
    }
    let (_cluster, urls) = start(deep.path(), 2);
    let hashed = json!({"type": "hashed", "numShards": 3, "partitionDimensions": ["page", "user"]});
    run_hashed_parallel(
        &urls,
        input.path(),
        "hash-par",
        "wiki",
        hashed.clone(),
        &rows,
        3,
        &[("partial_index_generate", 4), ("partial_index_generic_merge", 2)],
    );
    // 12 (page, user) pairs a day, 5 rows per segment: the sketches give 3 shards a day.
    let by_target = json!({"type": "hashed", "targetRowsPerSegment": 5, "partitionDimensions": ["page", "user"]});
    run_hashed_parallel(
        &urls,
        input.path(),
        "hash-card",
        "wiki-card",
        by_target,
        &rows,
        3,
        &[
            ("partial_dimension_cardinality", 4),
            ("partial_index_generate", 4),
            ("partial_index_generic_merge", 2),
        ],
    );

    // The same spec in one peon puts each (page, user) in the same bucket.
    let mut single = spec(
        "hash-one",
        input.path(),
        false,
        json!({"partitionsSpec": hashed, "forceGuaranteedRollup": true}),
    );
    single["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    single["spec"]["dataSchema"]["dataSource"] = json!("wiki-one");
    run_to_success(&urls, &single, "hash-one");
    let parallel = pairs_by_bucket(&urls, "wiki");
    assert_eq!(parallel.len(), 6, "{parallel:?}");
    assert_eq!(parallel, pairs_by_bucket(&urls, "wiki-one"));
    assert_eq!(parallel, pairs_by_bucket(&urls, "wiki-card"));

    // Nothing of phase 1 stays in deep storage: only the published files.
    let mut left: Vec<String> = walk(deep.path()).iter().map(|p| p.display().to_string()).collect();
    let mut published: Vec<String> = ["wiki", "wiki-card", "wiki-one"]
        .iter()
        .flat_map(|d| load_paths(&used_segments_of(&urls, d)))
        .map(|p| std::fs::canonicalize(p).unwrap().display().to_string())
        .collect();
    left.sort();
    published.sort();
    assert_eq!(left, published);
}

/// A parallel task shut down while its sub-tasks run: it shuts them down and waits for them,
/// so nothing is published and nothing any of them pushed (one that succeeded first included)
/// stays in deep storage.
#[test]
fn a_parallel_task_shut_down_mid_run_stops_its_sub_tasks_and_leaves_no_files() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    // Two small splits first (their sub-tasks succeed at once), then four that take seconds.
    let scratch = tempfile::tempdir().unwrap();
    let files = [
        ("a-0", 1_000),
        ("a-1", 1_000),
        ("b-0", 150_000),
        ("b-1", 150_000),
        ("b-2", 150_000),
        ("b-3", 150_000),
    ];
    for (name, rows) in files {
        write_big_input(scratch.path(), rows, 600, 5000);
        std::fs::rename(
            scratch.path().join("big.json"),
            input.path().join(format!("{name}.json")),
        )
        .unwrap();
    }
    let (_cluster, urls) = start(deep.path(), 2);
    let tuning = json!({"maxNumConcurrentSubTasks": 2, "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}});
    let mut task = spec("stopped", input.path(), false, tuning);
    task["spec"]["ioConfig"]["inputSource"]["filter"] = json!("*.json");
    let (s, v) = post(&urls, &format!("{API}/task"), &task);
    assert_eq!(s, 200, "{v}");
    // Once one sub-task has succeeded (its segments pushed, not yet published).
    wait_for_blocking("a sub-task to succeed", Duration::from_secs(60), || {
        let r = get(&urls, &format!("{API}/task/stopped/reports"))?;
        (r["parallelIndexProgress"]["payload"]["succeeded"].as_u64()? >= 1).then_some(())
    });
    let (s, v) = post(&urls, &format!("{API}/task/stopped/shutdown"), &json!({}));
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "stopped");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    // Every sub-task ended.
    let tasks = get(&urls, &format!("{API}/tasks")).unwrap();
    let subs: Vec<&Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["id"]
                .as_str()
                .unwrap_or("")
                .starts_with("single_phase_sub_task_stopped_")
        })
        .collect();
    assert!(subs.len() >= 2, "{tasks}");
    for t in subs {
        let done = wait_done(&urls, t["id"].as_str().unwrap());
        assert!(
            done["statusCode"] == "SUCCESS" || done["statusCode"] == "FAILED",
            "{done}"
        );
    }
    assert_nothing_left(&urls, deep.path(), "wiki");
}

/// The http input source over https: a real TLS server (Python's, with a certificate the test
/// makes for 127.0.0.1 and gives the nodes through `SSL_CERT_FILE`) serves the input and the
/// task reads it; a name the certificate does not cover fails the task, naming the URI.
#[test]
fn https_input_is_read_from_a_tls_server_whose_certificate_is_checked() {
    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let rows = write_input(input.path(), 2);
    let tls = tempfile::tempdir().unwrap();
    // A CA, and a server certificate it signs for 127.0.0.1 (a self-signed certificate is a CA,
    // which rustls refuses as a server's).
    let file = |name: &str| tls.path().join(name).display().to_string();
    std::fs::write(
        file("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=raftlord test CA",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-keyout".into(), file("ca.key"), "-out".into(), file("ca.pem")])
        .collect(),
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["-keyout".into(), file("key.pem"), "-out".into(), file("leaf.csr")])
            .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "-in".into(),
                file("leaf.csr"),
                "-CA".into(),
                file("ca.pem"),
                "-CAkey".into(),
                file("ca.key"),
                "-extfile".into(),
                file("leaf.ext"),
                "-out".into(),
                file("cert.pem"),
            ])
            .collect(),
    ];
    for args in steps {
        let made = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl (scripts/ensure-deps.sh installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let (cert, key) = (file("cert.pem"), file("key.pem"));
    let port = common::free_port();
    let server = r#"
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
"#;
    let child = std::process::Command::new("python3")
        .args(["-c", server])
        .arg(input.path())
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = common::Proc {
        child,
        url: String::new(),
    };
    wait_for_blocking("the TLS server to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let ca = file("ca.pem");
    let (cluster, urls) = start_with_env(deep.path(), 1, &[("SSL_CERT_FILE", ca.as_str())]);
    let with_uris = |id: &str, host: &str| {
        let mut s = spec(id, input.path(), false, json!({}));
        let uris: Vec<String> = (0..2)
            .map(|d| format!("https://{host}:{port}/day-{d}.json.gz"))
            .collect();
        s["spec"]["ioConfig"]["inputSource"] = json!({"type": "http", "uris": uris});
        s
    };
    run_to_success(&urls, &with_uris("tls", "127.0.0.1"), "tls");
    let got = pyarrow_rows(&load_paths(&used_segments(&urls)));
    assert_eq!(rolled_up(&got), expected_rollup(&rows));

    // `localhost` is not a name the certificate covers.
    let mut other = with_uris("wrong-name", "localhost");
    other["spec"]["dataSchema"]["dataSource"] = json!("wiki-wrong-name");
    let (s, v) = post(&urls, &format!("{API}/task"), &other);
    assert_eq!(s, 200, "{v}");
    let status = wait_done(&urls, "wrong-name");
    assert_eq!(status["statusCode"], "FAILED", "{status}");
    let msg = status["errorMsg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("https://localhost:{port}/day-0.json.gz")),
        "{status}"
    );
    assert!(used_segments_of(&urls, "wiki-wrong-name").is_empty());
    drop(cluster);
}
