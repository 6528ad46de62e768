//! `parallel`: one `index_parallel` task over N gzipped JSON-lines files on a three-node cluster
//! (each node a worker), run once in one peon (`maxNumConcurrentSubTasks` 1) and once as N
//! sub-tasks (`maxNumConcurrentSubTasks` N, one file per split): the wall time of each, from
//! submission to SUCCESS, and the speed-up. The rows are those of `ingest` (Wikipedia-shaped,
//! 21 fields), split into N files of consecutive rows. With `--hashed S`, both runs use
//! `hashed` partitioning into S shards: the sub-tasks then run Druid's two phases (partial
//! segments, then their merge), and both give perfect rollup.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{poll, Raftlord};
use crate::ingest::{data_schema, row, Rng, FIELDS};

/// Writes `rows` rows into `parts` gzipped JSON-lines files in `dir`.
fn generate(dir: &Path, rows: u64, parts: u64) -> anyhow::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for k in 0..parts {
        let f = std::fs::File::create(dir.join(format!("part-{k}.json.gz")))?;
        let mut w =
            std::io::BufWriter::with_capacity(1 << 20, flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
        for i in k * rows / parts..(k + 1) * rows / parts {
            let obj: serde_json::Map<String, Value> = FIELDS
                .iter()
                .map(|f| f.to_string())
                .zip(row(&mut rng, i, rows))
                .collect();
            writeln!(w, "{}", Value::Object(obj))?;
        }
        w.into_inner().map_err(|e| e.into_error())?.finish()?;
    }
    Ok(())
}

fn task(id: &str, datasource: &str, input: &Path, sub_tasks: u64, hashed: Option<u32>) -> Value {
    let partitions = match hashed {
        Some(n) => json!({"type": "hashed", "numShards": n}),
        None => json!({"type": "dynamic", "maxRowsPerSegment": 50_000_000}),
    };
    json!({"type": "index_parallel", "id": id, "spec": {
        "dataSchema": data_schema(datasource),
        "ioConfig": {"type": "index_parallel", "inputSource": {"type": "local", "baseDir": input, "filter": "*.json.gz"},
            "inputFormat": {"type": "json"}},
        "tuningConfig": {"partitionsSpec": partitions, "forceGuaranteedRollup": hashed.is_some(),
            "maxNumConcurrentSubTasks": sub_tasks, "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}}
    }})
}

/// Submits `task` and waits for its success; returns the seconds it took and its report.
async fn run_task(client: &reqwest::Client, url: &str, task: &Value) -> anyhow::Result<(f64, Value)> {
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let started = Instant::now();
    let r = client
        .post(format!("{url}/druid/indexer/v1/task"))
        .json(task)
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "submitting {id}: {} {}",
        r.status(),
        r.text().await?
    );
    let status: Value = poll(&format!("task {id} to finish"), Duration::from_secs(3600), || async {
        let v: Value = client
            .get(format!("{url}/druid/indexer/v1/task/{id}/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let code = v["status"]["statusCode"].as_str()?;
        (code == "SUCCESS" || code == "FAILED").then(|| v["status"].clone())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(status["statusCode"] == "SUCCESS", "task {id} failed: {status}");
    let report = client
        .get(format!("{url}/druid/indexer/v1/task/{id}/reports"))
        .send()
        .await?
        .json()
        .await?;
    Ok((secs, report))
}

pub async fn run(bin: &Path, rows: u64, parts: u64, hashed: Option<u32>) -> anyhow::Result<()> {
    anyhow::ensure!(parts >= 2, "--parts must be at least 2");
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input)?;
    let t = Instant::now();
    generate(&input, rows, parts)?;
    println!(
        "generated {rows} rows in {parts} files in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let deep = dir.path().join("deep-storage");
    let deep_flag = deep.display().to_string();
    // Two slots per worker: the supervisor and up to five sub-tasks at once.
    let mut cluster = Raftlord::start_with(
        bin,
        dir.path(),
        3,
        &["--worker-capacity", "2", "--deep-storage", &deep_flag],
    )
    .await?;
    let leader = cluster.wait_leader(Duration::from_secs(60)).await?;
    let url = cluster.urls[&leader].clone();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let (one, report) = run_task(&client, &url, &task("bench-one", "wiki-one", &input, 1, hashed)).await?;
    let processed = report["ingestionStatsAndErrors"]["payload"]["rowStats"]["buildSegments"]["processed"].clone();
    println!(
        "one peon:         {processed} rows in {one:.2} s ({:.0} rows/s)",
        rows as f64 / one
    );
    let (many, report) = run_task(&client, &url, &task("bench-many", "wiki-many", &input, parts, hashed)).await?;
    let processed = report["ingestionStatsAndErrors"]["payload"]["rowStats"]["buildSegments"]["processed"].clone();
    let subtasks = report["parallelIndexProgress"]["payload"]["succeeded"].clone();
    println!(
        "{parts} sub-tasks:      {processed} rows in {many:.2} s ({:.0} rows/s; {subtasks} sub-tasks succeeded)",
        rows as f64 / many
    );
    if let Some(n) = hashed {
        println!("(hashed into {n} shards: {subtasks} sub-tasks over the phases)");
    }
    println!(
        "speed-up {:.2}x with {parts} sub-tasks on three workers ({} cores on this machine)",
        one / many,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    cluster.stop_all().await;
    Ok(())
}
