//! `raftlord task submit --wait` and `raftlord segments list`: a task followed to its end with a
//! live progress line, and a datasource's segments as a table.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;

/// How often the task's status and report are read.
const POLL: Duration = Duration::from_millis(500);

async fn get_json(c: &Client, url: &str) -> Option<Value> {
    let r = c.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Druid's row stats from a task report, if it has one yet.
fn row_stats(report: &Value) -> Option<&Value> {
    report
        .get("ingestionStatsAndErrors")?
        .get("payload")?
        .get("rowStats")?
        .get("buildSegments")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Follows task `id` until it ends, showing rows, rows/s and elapsed time on standard error
/// (rewritten in place on a terminal, a line every few seconds otherwise). Prints the outcome and
/// returns the exit code: 0 for SUCCESS, 1 otherwise.
/// A parallel task's sub-tasks, as `sub-tasks: 2 running, 1 succeeded, 0 failed`.
fn subtasks(report: Option<&Value>) -> Option<String> {
    let p = report?.get("parallelIndexProgress")?.get("payload")?;
    Some(format!(
        "sub-tasks: {} running, {} succeeded, {} failed",
        n(p, "running"),
        n(p, "succeeded"),
        n(p, "failed")
    ))
}

pub async fn wait_for_task(c: &Client, base: &str, id: &str) -> anyhow::Result<i32> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let status_url = format!("{base}/druid/indexer/v1/task/{}/status", super::client::encode(id));
    let report_url = format!("{base}/druid/indexer/v1/task/{}/reports", super::client::encode(id));
    loop {
        let status = get_json(c, &status_url).await;
        let code = status
            .as_ref()
            .and_then(|s| s["status"]["statusCode"].as_str())
            .unwrap_or("UNKNOWN")
            .to_string();
        let report = get_json(c, &report_url).await;
        let stats = report.as_ref().and_then(row_stats).cloned();
        let secs = started.elapsed().as_secs_f64();
        if code == "SUCCESS" || code == "FAILED" {
            if tty {
                eprintln!();
            }
            let s = status.unwrap_or_default();
            let payload = report
                .as_ref()
                .and_then(|r| r.get("ingestionStatsAndErrors"))
                .and_then(|r| r.get("payload"));
            let published = payload.and_then(|p| p["segmentsPublished"].as_u64());
            let mut line = format!("{id}: {code} after {secs:.1} s");
            if let Some(st) = &stats {
                line.push_str(&format!(
                    "; rows: {} processed, {} with errors, {} unparseable, {} thrown away",
                    n(st, "processed"),
                    n(st, "processedWithError"),
                    n(st, "unparseable"),
                    n(st, "thrownAway")
                ));
            }
            if let Some(p) = published {
                line.push_str(&format!("; {p} segment(s) published"));
            }
            if let Some(sub) = subtasks(report.as_ref()) {
                line.push_str(&format!("; {sub}"));
            }
            println!("{line}");
            if let Some(e) = s["status"]["errorMsg"].as_str() {
                println!("error: {e}");
            }
            return Ok(if code == "SUCCESS" { 0 } else { 1 });
        }
        let rows = stats.as_ref().map(|s| n(s, "processed")).unwrap_or(0);
        let mut progress = format!(
            "{id}: {code:<8} {secs:>6.1} s  rows {rows}  ({:.0} rows/s)",
            rows as f64 / secs.max(1e-3)
        );
        if let Some(sub) = subtasks(report.as_ref()) {
            progress.push_str(&format!("  {sub}"));
        }
        if tty {
            eprint!("\r{progress}\x1b[K");
            let _ = std::io::stderr().flush();
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{progress}");
            last_line = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Prints the used segments of `datasource`: interval, version, partition, size, where.
pub async fn list_segments(c: &Client, base: &str, datasource: &str) -> anyhow::Result<i32> {
    let url = format!(
        "{base}/druid/coordinator/v1/metadata/datasources/{}/segments?full",
        super::client::encode(datasource)
    );
    let r = c.get(&url).send().await?;
    if !r.status().is_success() {
        eprintln!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default());
        return Ok(1);
    }
    let segments: Vec<Value> = r.json().await?;
    println!(
        "{:<50} {:<26} {:>9} {:>12}  load spec",
        "interval", "version", "partition", "bytes"
    );
    for s in &segments {
        println!(
            "{:<50} {:<26} {:>9} {:>12}  {}",
            s["interval"].as_str().unwrap_or(""),
            s["version"].as_str().unwrap_or(""),
            s["shardSpec"]["partitionNum"].as_u64().unwrap_or(0),
            s["size"].as_u64().unwrap_or(0),
            s["loadSpec"]["path"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| s["loadSpec"].to_string())
        );
    }
    eprintln!("{} used segment(s)", segments.len());
    Ok(0)
}
