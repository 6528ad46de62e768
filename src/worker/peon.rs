//! `raftlord peon TASK_DIR`: runs one task, as Druid's peon (`CliPeon` + `ExecutorLifecycle`).
//!
//! Reads `TASK_DIR/task.json`, runs the task, writes `report.json` and then `status.json`
//! (Druid's `TaskStatus`), each atomically, and exits 0. Its standard output is the task log.
//! SIGTERM (a shutdown request) ends the task FAILED.
//!
//! Task types the peon runs: `noop` (Druid's `NoopTask`: waits `runTime` milliseconds, 2500
//! when absent or 0, then succeeds), `index` / `index_parallel` and their sub-tasks
//! `single_phase_sub_task`, `partial_dimension_cardinality`, `partial_index_generate` and
//! `partial_index_generic_merge` (native batch ingestion, see [`super::index_task`] and
//! [`super::parallel_task`]), `compact` and `kill` ([`super::kill_task`]). Every other type
//! ends FAILED with a message saying it is not supported by this peon.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;

use super::runner::write_atomic;
use super::{index_task, kill_task};
use crate::clock::{iso, now_ms};

/// Turns transparent huge pages off for this process and the processes it forks. A peon fills
/// its row buffers once, front to back, so huge pages save it little, while faulting one in can
/// make the kernel compact physical memory first on a busy host: on the ingestion benchmark,
/// 9-11% of the ingesting thread's CPU time went to faulting in huge pages, and 0.6% to
/// faulting in small ones.
pub fn use_small_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!("cannot turn transparent huge pages off: {e}");
    }
}

/// Druid's `NoopTask` default run time, used when `runTime` is absent or 0.
pub const NOOP_DEFAULT_RUN_MS: u64 = 2500;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TaskHead {
    id: String,
    #[serde(rename = "type")]
    task_type: String,
    #[serde(default)]
    run_time: Option<u64>,
}

/// Runs the task in `dir`; returns the process exit code.
pub async fn run(dir: &Path) -> i32 {
    let started = Instant::now();
    let spec = match std::fs::read(dir.join("task.json")) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("peon: cannot read {}: {e}", dir.join("task.json").display());
            return 2;
        }
    };
    let task: serde_json::Value = match serde_json::from_slice(&spec) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("peon: task.json is not JSON: {e}");
            return 2;
        }
    };
    let head: TaskHead = match serde_json::from_value(task.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("peon: task.json is not a task spec: {e}");
            return 2;
        }
    };
    println!(
        "{} INFO peon starting task [{}] of type [{}]",
        iso(now_ms()),
        head.id,
        head.task_type
    );
    super::task_actions::set_token(dir);
    if let Err(e) = raftlord_raft::tls::trust_from_env() {
        eprintln!("peon: {e}");
        return 2;
    }
    let mut report = json!({});
    let result: Result<(), String> = match head.task_type.as_str() {
        "noop" => run_noop(&head).await,
        t if raftlord_ingest::IngestSpec::handles(t) || t == "compact" => {
            let live = Arc::new(Mutex::new(index_task::Outcome::default()));
            let pushed = Arc::new(Mutex::new(index_task::Pushed::default()));
            let actions = super::task_actions::TaskActions::from_env(task.clone());
            let r = match stop_signal() {
                Err(e) => Err(e),
                Ok(mut term) => tokio::select! {
                    r = async {
                        if t == "compact" {
                            index_task::run_compact(task, dir, live.clone(), pushed.clone()).await
                        } else {
                            index_task::run(task, dir, live.clone(), pushed.clone()).await
                        }
                    } => r,
                    _ = term.recv() => {
                        if let Ok(a) = &actions {
                            index_task::stop_subtasks(&pushed, a, index_task::SUB_TASK_STOP_WAIT).await;
                        }
                        index_task::remove_pushed(pushed.clone()).await;
                        Err("the task was stopped (SIGTERM) before it finished".to_string())
                    }
                },
            };
            let mut o = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Err(e) = &r {
                o.state = if o.state.is_empty() { "NOT_STARTED" } else { o.state };
                o.error = Some(e.clone());
            }
            report = index_task::report(&head.id, &o);
            r
        }
        "kill" => {
            let mut k = kill_task::KillReport::default();
            let r = match stop_signal() {
                Err(e) => Err(e),
                Ok(mut term) => tokio::select! {
                    r = kill_task::run(task, &mut k) => r,
                    _ = term.recv() => Err("the task was stopped (SIGTERM) before it finished".to_string()),
                },
            };
            report = k.to_json();
            r
        }
        other => Err(format!(
            "this raftlord peon cannot run '{other}' tasks; it runs noop, index, index_parallel (and its sub-tasks), compact and kill tasks"
        )),
    };
    let duration = started.elapsed().as_millis() as i64;
    let (status, error) = match &result {
        Ok(()) => ("SUCCESS", None),
        Err(e) => ("FAILED", Some(e.clone())),
    };
    println!(
        "{} INFO task [{}] finished with status [{status}]{}",
        iso(now_ms()),
        head.id,
        error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    );
    // Druid's report map; a noop task produces no reports.
    if let Err(e) = write_atomic(&dir.join("report.json"), report.to_string().as_bytes()) {
        eprintln!("peon: cannot write report.json: {e}");
        return 3;
    }
    let status = json!({
        "id": head.id,
        "status": status,
        "duration": duration,
        "errorMsg": error,
        "location": {"host": null, "port": -1, "tlsPort": -1},
    });
    if let Err(e) = write_atomic(&dir.join("status.json"), status.to_string().as_bytes()) {
        eprintln!("peon: cannot write status.json: {e}");
        return 3;
    }
    0
}

async fn run_noop(head: &TaskHead) -> Result<(), String> {
    let run_ms = match head.run_time {
        None | Some(0) => NOOP_DEFAULT_RUN_MS,
        Some(ms) => ms,
    };
    println!("{} INFO noop task running for {run_ms} ms", iso(now_ms()));
    let mut term = stop_signal()?;
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(run_ms)) => Ok(()),
        _ = term.recv() => Err("the task was stopped (SIGTERM) before it finished".to_string()),
    }
}

fn stop_signal() -> Result<tokio::signal::unix::Signal, String> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))
}
