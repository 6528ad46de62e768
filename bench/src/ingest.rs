//! `ingest`: rows per second of one ingestion (read, parse, roll up, sort, write Parquet) on one
//! core, side by side with DuckDB doing the same work on one thread in the same run.
//!
//! The input is generated: Wikipedia-edit-shaped rows (21 fields), one day, in time order,
//! gzipped, as JSON lines and as CSV. Both engines read the same file, truncate time to the hour,
//! group by the same six dimensions, compute count and three sums, sort, and write one
//! zstd-compressed Parquet file. raftlord runs in this process through `raftlord-ingest` (what a
//! peon runs); DuckDB runs from Python (`pip install duckdb`) with `SET threads = 1`.
//!
//! Each run reports its wall time and its CPU time (the ingesting thread's for raftlord, the
//! Python process's for DuckDB): rows per CPU-second is the per-core rate, and it holds still
//! on a shared machine where the wall time does not. With `--rounds`, the engines alternate
//! and the medians are reported.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use raftlord_ingest::{read_input, IngestSpec};

pub(crate) const DIMS: [&str; 6] = ["channel", "countryName", "isRobot", "namespace", "user", "page"];

/// A small deterministic generator (xorshift), so both engines see the same rows every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) const FIELDS: [&str; 21] = [
    "time",
    "channel",
    "cityName",
    "comment",
    "countryIsoCode",
    "countryName",
    "isAnonymous",
    "isMinor",
    "isNew",
    "isRobot",
    "isUnpatrolled",
    "metroCode",
    "namespace",
    "page",
    "regionIsoCode",
    "regionName",
    "user",
    "delta",
    "added",
    "deleted",
    "commentLength",
];

pub(crate) fn row(rng: &mut Rng, i: u64, rows: u64) -> Vec<Value> {
    let t = 1_714_521_600_000 + (i * 86_400_000 / rows.max(1)) as i64;
    let added = rng.below(5000) as i64;
    let deleted = rng.below(500) as i64;
    let comment_len = 10 + rng.below(60);
    vec![
        json!(raftlord::interval::iso(t)),
        json!(format!(
            "#{}.wikipedia",
            ["en", "de", "fr", "ja", "ru", "es", "it", "pl", "sv", "nl"][rng.below(10) as usize]
        )),
        json!(format!("City {}", rng.below(400))),
        json!(format!("edit summary number {} with some words", rng.below(100_000))),
        json!(format!("C{}", rng.below(30))),
        json!(format!("Country {}", rng.below(30))),
        json!(rng.below(5) == 0),
        json!(rng.below(3) == 0),
        json!(rng.below(10) == 0),
        json!(rng.below(4) == 0),
        json!(rng.below(6) == 0),
        json!(rng.below(500)),
        json!(
            [
                "Main",
                "Talk",
                "User",
                "Wikipedia",
                "File",
                "Template",
                "Help",
                "Category"
            ][rng.below(8) as usize]
        ),
        json!(format!("Page {}", rng.below(2_000))),
        json!(format!("R{}", rng.below(100))),
        json!(format!("Region {}", rng.below(100))),
        json!(format!("user{}", rng.below(300))),
        json!(added - deleted),
        json!(added),
        json!(deleted),
        json!(comment_len),
    ]
}

/// Writes `rows` rows as gzipped JSON lines and CSV; returns the two paths.
fn generate(dir: &Path, rows: u64) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let json_path = dir.join("wiki.json.gz");
    let csv_path = dir.join("wiki.csv.gz");
    let level = flate2::Compression::fast();
    // Buffered in front of the encoder: flate2 clears its output buffer on every write.
    let gz = |p: &Path| -> std::io::Result<_> {
        let f = std::fs::File::create(p)?;
        Ok(std::io::BufWriter::with_capacity(
            1 << 20,
            flate2::write::GzEncoder::new(f, level),
        ))
    };
    let mut j = gz(&json_path)?;
    let mut c = gz(&csv_path)?;
    writeln!(c, "{}", FIELDS.join(","))?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..rows {
        let values = row(&mut rng, i, rows);
        let mut obj = serde_json::Map::new();
        let mut cells = Vec::with_capacity(values.len());
        for (k, v) in FIELDS.iter().zip(values) {
            cells.push(match &v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            obj.insert(k.to_string(), v);
        }
        writeln!(j, "{}", Value::Object(obj))?;
        writeln!(c, "{}", cells.join(","))?;
    }
    for w in [j, c] {
        w.into_inner().map_err(|e| e.into_error())?.finish()?.sync_all()?;
    }
    Ok((json_path, csv_path))
}

/// The benchmarks' data schema: hourly rollup of the six dimensions, count and three sums.
pub(crate) fn data_schema(datasource: &str) -> Value {
    json!({
        "dataSource": datasource,
        "timestampSpec": {"column": "time", "format": "iso"},
        "dimensionsSpec": {"dimensions": DIMS},
        "metricsSpec": [
            {"type": "count", "name": "count"},
            {"type": "longSum", "name": "added", "fieldName": "added"},
            {"type": "longSum", "name": "deleted", "fieldName": "deleted"},
            {"type": "longSum", "name": "delta", "fieldName": "delta"}
        ],
        "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "HOUR", "rollup": true}
    })
}

fn spec(input: &Path, format: Value) -> anyhow::Result<IngestSpec> {
    let dir = input.parent().unwrap_or(Path::new("."));
    let name = input.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let task = json!({"type": "index_parallel", "id": "bench", "spec": {
        "dataSchema": data_schema("wikipedia"),
        "ioConfig": {"type": "index_parallel", "inputSource": {"type": "local", "baseDir": dir, "filter": name},
            "inputFormat": format},
        "tuningConfig": {"partitionsSpec": {"type": "dynamic", "maxRowsPerSegment": 50_000_000}}
    }});
    Ok(IngestSpec::from_task(&task)?)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

/// One raftlord run: (rows read, bytes read, rows written, wall seconds, CPU seconds).
fn raftlord_run(spec: &IngestSpec, out: &Path) -> anyhow::Result<(u64, u64, u64, f64, f64)> {
    let started = Instant::now();
    let cpu = thread_cpu_secs();
    // As the peon runs it: rows beyond the in-memory limits spill to sorted runs on disk.
    let spill = out.join("spill");
    let mut ingested = read_input(spec, Some(&spill), &mut |_| {}, &mut |_| {})?;
    let mut written = 0;
    for iv in ingested.intervals() {
        let n = ingested.partitions(&iv);
        let nums: Vec<u32> = (0..n as u32).collect();
        for f in ingested.write_bucket(&iv, "v1", &nums, out)? {
            written += f.rows;
        }
    }
    Ok((
        ingested.stats.processed,
        ingested.stats.processed_bytes,
        written,
        started.elapsed().as_secs_f64(),
        thread_cpu_secs() - cpu,
    ))
}

/// One DuckDB run through Python: (rows written, wall seconds, CPU seconds), or why it could
/// not run.
fn duckdb_run(input: &Path, csv: bool, out: &Path) -> Result<(u64, f64, f64), String> {
    let reader = if csv {
        format!("read_csv('{}', header = true)", input.display())
    } else {
        format!("read_json('{}', format = 'newline_delimited')", input.display())
    };
    let script = format!(
        r#"
import ctypes, time, duckdb
# This benchmark turned transparent huge pages off, as a peon does, and children inherit that:
# DuckDB runs with the machine's own setting (PR_SET_THP_DISABLE is 41).
ctypes.CDLL(None).prctl(41, 0, 0, 0, 0)
con = duckdb.connect()
con.execute("SET threads = 1")
con.execute("SET enable_progress_bar = false")
t = time.perf_counter()
c = time.process_time()
con.execute("""COPY (
  SELECT date_trunc('hour', CAST("time" AS TIMESTAMP)) AS __time, {dims},
         count(*) AS count, sum(added) AS added, sum(deleted) AS deleted, sum(delta) AS delta
  FROM {reader}
  GROUP BY ALL ORDER BY __time, {dims}
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)""")
secs = time.perf_counter() - t
cpu = time.process_time() - c
rows = con.execute("SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
print(rows, secs, cpu)
"#,
        dims = DIMS.map(|d| format!("\"{d}\"")).join(", "),
        out = out.display(),
    );
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut it = text.split_whitespace();
    let unreadable = || {
        format!(
            "unreadable output [{text}] [{}]",
            String::from_utf8_lossy(&o.stderr).trim()
        )
    };
    let rows = it.next().and_then(|r| r.parse().ok()).ok_or_else(unreadable)?;
    let secs = it.next().and_then(|r| r.parse().ok()).ok_or_else(unreadable)?;
    let cpu = it.next().and_then(|r| r.parse().ok()).ok_or_else(unreadable)?;
    Ok((rows, secs, cpu))
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `only`: `json` or `csv` only (both when `None`); `duckdb`: run DuckDB beside raftlord.
pub fn run(rows: u64, only: Option<&str>, duckdb: bool, rounds: usize) -> anyhow::Result<()> {
    // As a peon runs.
    raftlord::worker::peon::use_small_pages();
    let dir = tempfile::tempdir()?;
    let t = Instant::now();
    let (json_path, csv_path) = generate(dir.path(), rows)?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0);
    println!(
        "generated {rows} rows in {:.1} s: JSON lines {:.1} MiB gzipped, CSV {:.1} MiB gzipped",
        t.elapsed().as_secs_f64(),
        size(&json_path),
        size(&csv_path)
    );
    for (name, path, format, csv) in [
        ("JSON", &json_path, json!({"type": "json"}), false),
        (
            "CSV",
            &csv_path,
            json!({"type": "csv", "findColumnsFromHeader": true}),
            true,
        ),
    ] {
        if only.is_some_and(|f| f != name.to_lowercase()) {
            continue;
        }
        let (mut ours_wall, mut ours_cpu, mut theirs_wall, mut theirs_cpu) = (vec![], vec![], vec![], vec![]);
        for round in 1..=rounds.max(1) {
            let out = dir.path().join(format!("raftlord-{name}-{round}"));
            let (read, bytes, written, secs, cpu) = raftlord_run(&spec(path, format.clone())?, &out)?;
            std::fs::remove_dir_all(&out)?;
            ours_wall.push(read as f64 / secs);
            ours_cpu.push(read as f64 / cpu);
            println!(
                "{name}: raftlord {read} rows ({:.0} MiB read) -> {written} rolled-up rows in {secs:.2} s ({cpu:.2} s of CPU): \
                 {:.0} rows/s, {:.0} rows per CPU-second (peak resident memory of this process so far {:.0} MiB)",
                bytes as f64 / 1048576.0,
                read as f64 / secs,
                read as f64 / cpu,
                peak_rss_mib()
            );
            if !duckdb {
                continue;
            }
            let duck_out = dir.path().join(format!("duckdb-{name}.parquet"));
            match duckdb_run(path, csv, &duck_out) {
                Ok((duck_rows, duck_secs, duck_cpu)) => {
                    theirs_wall.push(rows as f64 / duck_secs);
                    theirs_cpu.push(rows as f64 / duck_cpu);
                    println!(
                        "{name}: DuckDB   {rows} rows -> {duck_rows} rolled-up rows in {duck_secs:.2} s ({duck_cpu:.2} s of CPU): \
                         {:.0} rows/s, {:.0} rows per CPU-second",
                        rows as f64 / duck_secs,
                        rows as f64 / duck_cpu
                    );
                    if duck_rows != written {
                        println!("{name}: the two disagree on the rolled-up row count ({written} vs {duck_rows})");
                    }
                }
                Err(e) => println!("{name}: DuckDB did not run (pip install duckdb): {e}"),
            }
        }
        let (ow, oc) = (median(ours_wall), median(ours_cpu));
        if theirs_cpu.is_empty() {
            println!("{name}: raftlord median {ow:.0} rows/s, {oc:.0} rows per CPU-second");
        } else {
            let (tw, tc) = (median(theirs_wall), median(theirs_cpu));
            println!(
                "{name}: medians over {} rounds: raftlord {ow:.0} rows/s, {oc:.0} per CPU-second; DuckDB {tw:.0} rows/s, \
                 {tc:.0} per CPU-second; raftlord/DuckDB {:.2}x by wall time, {:.2}x by CPU time",
                rounds.max(1),
                ow / tw,
                oc / tc
            );
        }
    }
    Ok(())
}
