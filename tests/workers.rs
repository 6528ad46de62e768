//! Workers and peons as real processes: tasks run, fail, stop, and survive the loss of a
//! worker process or of the leader.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    free_port, http, http_no_redirect, raftlord_bin, spawn_dev, spawn_server, wait_for_blocking, wait_leading, Proc,
    SECRET,
};
use serde_json::{json, Value};

const API: &str = "/druid/indexer/v1";

/// Starts `raftlord dev` with a fast worker timeout and heartbeat.
fn spawn_fast_dev(dir: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--worker-timeout-ms",
        "2000",
        "--worker-heartbeat-ms",
        "200",
        "--peon-graceful-stop-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    spawn_dev(dir, port, &args)
}

/// Starts a worker-only node for the cluster at `join`.
fn spawn_worker(dir: &Path, port: u16, join: &str, capacity: u32, secret: &str) -> Proc {
    let child = Command::new(raftlord_bin())
        .args(["server", "--roles", "worker", "--join", join])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--worker-capacity",
            &capacity.to_string(),
            "--worker-heartbeat-ms",
            "200",
        ])
        .env("RAFTLORD_CLUSTER_SECRET", secret)
        .env("RAFTLORD_AUTH", "none")
        .env("RAFTLORD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning a worker");
    Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Kills every peon found under a worker's data dir when dropped, so no test leaves processes.
struct PeonReaper(Vec<PathBuf>);

impl Drop for PeonReaper {
    fn drop(&mut self) {
        for dir in &self.0 {
            let Ok(entries) = std::fs::read_dir(dir.join("worker/tasks")) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(pid) = peon_pid_in(&e.path()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

fn peon_pid_in(task_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(task_dir.join("peon.pid")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

/// Waits for the `peon.pid` of task `id` on the worker whose data dir is `data`.
fn wait_peon_pid(data: &Path, id: &str) -> i32 {
    let dir = data.join("worker/tasks").join(id);
    wait_for_blocking(&format!("the pid file of task {id}"), Duration::from_secs(5), || {
        peon_pid_in(&dir)
    })
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn submit(url: &str, spec: Value) -> String {
    let resp = http().post(format!("{url}{API}/task")).json(&spec).send().unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text());
    resp.json::<Value>().unwrap()["task"].as_str().unwrap().to_string()
}

fn status(url: &str, id: &str) -> Option<Value> {
    let resp = http().get(format!("{url}{API}/task/{id}/status")).send().ok()?;
    if !resp.status().is_success() {
        return None;
    }
    Some(resp.json::<Value>().ok()?["status"].clone())
}

fn wait_status(url: &str, id: &str, code: &str, runner: &str, timeout: Duration) -> Value {
    wait_for_blocking(&format!("task {id} to be {code}/{runner}"), timeout, || {
        status(url, id).filter(|s| s["statusCode"] == code && s["runnerStatusCode"] == runner)
    })
}

fn wait_workers(url: &str, n: usize) -> Vec<Value> {
    wait_for_blocking(&format!("{n} registered workers"), Duration::from_secs(30), || {
        let v: Vec<Value> = http().get(format!("{url}{API}/workers")).send().ok()?.json().ok()?;
        (v.len() == n).then_some(v)
    })
}

fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    http().get(url).send().unwrap().json().unwrap()
}

fn log_of(url: &str, id: &str) -> String {
    http()
        .get(format!("{url}{API}/task/{id}/log"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

#[test]
fn noop_task_runs_in_a_peon_with_log_report_and_worker_apis() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = PeonReaper(vec![dir.path().to_path_buf()]);
    let port = free_port();
    let dev = spawn_fast_dev(dir.path(), port, &["--worker-capacity", "2"]);
    let url = dev.url.clone();
    wait_leading(&url);
    let workers = wait_workers(&url, 1);
    let host = format!("127.0.0.1:{port}");
    assert_eq!(workers[0]["worker"]["host"], host.as_str());
    assert_eq!(workers[0]["worker"]["capacity"], 2);

    let id = submit(&url, json!({"type": "noop", "id": "noop-1", "runTime": 1500}));
    let running = wait_status(&url, &id, "RUNNING", "RUNNING", Duration::from_secs(10));
    assert_eq!(
        running["location"],
        json!({"host": "127.0.0.1", "port": port, "tlsPort": -1})
    );
    // While it runs: the worker lists it, the log streams from the worker.
    let on_worker: Vec<String> = get_json(&format!("{url}/druid/worker/v1/tasks"));
    assert_eq!(on_worker, vec![id.clone()]);
    let w: Vec<Value> = get_json(&format!("{url}{API}/workers"));
    assert_eq!(w[0]["currCapacityUsed"], 1);
    assert_eq!(w[0]["runningTasks"], json!([id]));
    // RUNNING means the peon process exists; its first line follows once it has read its task.
    wait_for_blocking("the peon's first log line", Duration::from_secs(10), || {
        log_of(&url, &id).contains("peon starting task [noop-1]").then_some(())
    });

    let done = wait_status(&url, &id, "SUCCESS", "NONE", Duration::from_secs(20));
    assert!(done["duration"].as_i64().unwrap() >= 1500, "{done}");
    assert_eq!(done["errorMsg"], Value::Null);
    // After: log and report from the task log directory, with Druid's offsets.
    let log = log_of(&url, &id);
    assert!(log.contains("finished with status [SUCCESS]"), "{log}");
    let tail = http()
        .get(format!("{url}{API}/task/{id}/log?offset=-20"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(tail.len(), 20);
    assert!(log.ends_with(&tail));
    let report: Value = get_json(&format!("{url}{API}/task/{id}/reports"));
    assert_eq!(report, json!({}));
    let missing = http().get(format!("{url}{API}/task/nope/log")).send().unwrap();
    assert_eq!(missing.status(), 404);

    // Worker state changes need the secret; reads do not.
    let denied = http().post(format!("{url}/druid/worker/v1/disable")).send().unwrap();
    assert_eq!(denied.status(), 401);
    let disabled: Value = http()
        .post(format!("{url}/druid/worker/v1/disable"))
        .bearer_auth(
            std::fs::read_to_string(dir.path().join("cluster-secret"))
                .unwrap()
                .trim(),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(disabled, json!({ host.clone(): "disabled" }));
    let enabled = wait_for_blocking("the worker to see it is disabled", Duration::from_secs(10), || {
        let v: Value = http()
            .get(format!("{url}/druid/worker/v1/enabled"))
            .send()
            .ok()?
            .json()
            .ok()?;
        (v[&host] == false).then_some(v)
    });
    assert_eq!(enabled, json!({ host.clone(): false }));
    // A disabled worker gets nothing new: the task waits. The assigner fails a task whose
    // readiness check throws in the same plan, after committing that plan's placements, so
    // once that task is FAILED the plan has seen the waiting one.
    let waiting = submit(&url, json!({"type": "noop", "runTime": 10}));
    let probe = submit(&url, json!({"type": "noop", "isReadyResult": "EXCEPTION"}));
    wait_status(&url, &probe, "FAILED", "NONE", Duration::from_secs(10));
    assert_eq!(status(&url, &waiting).unwrap()["runnerStatusCode"], "WAITING");
    let r: Value = http()
        .post(format!("{url}{API}/worker/{host}/enable"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r, json!({ host.clone(): "enabled" }));
    wait_status(&url, &waiting, "SUCCESS", "NONE", Duration::from_secs(20));
    let cap: Value = get_json(&format!("{url}{API}/totalWorkerCapacity"));
    assert_eq!(cap["currentClusterCapacity"], 2);
}

#[test]
fn shutdown_stops_a_running_peon_and_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = PeonReaper(vec![dir.path().to_path_buf()]);
    let dev = spawn_fast_dev(dir.path(), free_port(), &["--worker-capacity", "1"]);
    wait_leading(&dev.url);
    let id = submit(&dev.url, json!({"type": "noop", "id": "long-1", "runTime": 600000}));
    wait_status(&dev.url, &id, "RUNNING", "RUNNING", Duration::from_secs(10));
    let pid = wait_peon_pid(dir.path(), "long-1");
    assert!(alive(pid));
    let resp = http()
        .post(format!("{}{API}/task/{id}/shutdown", dev.url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let s = wait_status(&dev.url, &id, "FAILED", "NONE", Duration::from_secs(10));
    assert_eq!(s["errorMsg"], "Shutdown request from user");
    wait_for_blocking("the peon to exit", Duration::from_secs(10), || {
        (!alive(pid)).then_some(())
    });
    // The slot is free again: the next task runs.
    let next = submit(&dev.url, json!({"type": "noop", "runTime": 10}));
    wait_status(&dev.url, &next, "SUCCESS", "NONE", Duration::from_secs(20));
}

#[test]
fn killed_peon_fails_with_the_signal_in_error_msg() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = PeonReaper(vec![dir.path().to_path_buf()]);
    let dev = spawn_fast_dev(dir.path(), free_port(), &["--worker-capacity", "1"]);
    wait_leading(&dev.url);
    let id = submit(&dev.url, json!({"type": "noop", "id": "victim", "runTime": 600000}));
    wait_status(&dev.url, &id, "RUNNING", "RUNNING", Duration::from_secs(10));
    let pid = wait_peon_pid(dir.path(), "victim");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let s = wait_status(&dev.url, &id, "FAILED", "NONE", Duration::from_secs(10));
    let msg = s["errorMsg"].as_str().unwrap();
    assert!(msg.contains("SIGKILL"), "{msg}");
}

/// The peon launchers among the children of process `parent`.
fn launchers_of(parent: u32) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains("peon-launcher") && alive(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn peons_outlive_their_launcher_and_the_next_task_gets_a_new_one_while_they_run() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = PeonReaper(vec![dir.path().to_path_buf()]);
    let dev = spawn_fast_dev(dir.path(), free_port(), &["--worker-capacity", "3"]);
    wait_leading(&dev.url);
    let long = submit(
        &dev.url,
        json!({"type": "noop", "id": "orphan-long", "runTime": 600000}),
    );
    let short = submit(&dev.url, json!({"type": "noop", "id": "orphan-short", "runTime": 3000}));
    wait_status(&dev.url, &long, "RUNNING", "RUNNING", Duration::from_secs(10));
    wait_status(&dev.url, &short, "RUNNING", "RUNNING", Duration::from_secs(10));
    let long_pid = wait_peon_pid(dir.path(), "orphan-long");
    let launchers = launchers_of(dev.child.id());
    assert_eq!(launchers.len(), 1, "one launcher per worker: {launchers:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launchers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(alive(long_pid), "killing the launcher must not kill its peons");
    // While the orphaned peons still run, the next task starts through a new launcher (a peon
    // holding the old launcher's socket open would hide its death and stall this start).
    let next = submit(&dev.url, json!({"type": "noop", "runTime": 10}));
    wait_status(&dev.url, &next, "SUCCESS", "NONE", Duration::from_secs(20));
    assert_eq!(status(&dev.url, &long).unwrap()["statusCode"], "RUNNING");
    assert!(alive(long_pid));
    let now = launchers_of(dev.child.id());
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], launchers[0]);
    // An orphaned peon that ends is judged by its status.json.
    let s = wait_status(&dev.url, &short, "SUCCESS", "NONE", Duration::from_secs(20));
    assert!(s["duration"].as_i64().unwrap() >= 3000, "{s}");
    assert!(log_of(&dev.url, &short).contains("finished with status [SUCCESS]"));
    // One still running is stopped by a shutdown as any peon is.
    let resp = http()
        .post(format!("{}{API}/task/{long}/shutdown", dev.url))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_for_blocking("the orphaned peon to stop", Duration::from_secs(10), || {
        (!alive(long_pid)).then_some(())
    });
}

#[test]
fn peon_that_writes_a_bad_status_or_none_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let _reaper = PeonReaper(vec![dir.path().to_path_buf()]);
    // A stand-in peon: writes garbage for one task, nothing for the other, and exits 0.
    let script = dir.path().join("bad-peon.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in\n  *garbage*) printf '{\"id\": oops' > \"$1/status.json\" ;;\nesac\nexit 0\n",
    )
    .unwrap();
    let cmd = format!("sh {}", script.display());
    let dev = spawn_fast_dev(
        dir.path(),
        free_port(),
        &["--worker-capacity", "2", "--peon-command", &cmd],
    );
    wait_leading(&dev.url);
    let garbage = submit(&dev.url, json!({"type": "noop", "id": "garbage-1"}));
    let silent = submit(&dev.url, json!({"type": "noop", "id": "silent-1"}));
    let s = wait_status(&dev.url, &garbage, "FAILED", "NONE", Duration::from_secs(10));
    assert!(
        s["errorMsg"]
            .as_str()
            .unwrap()
            .starts_with("The peon wrote a malformed status.json"),
        "{s}"
    );
    let s = wait_status(&dev.url, &silent, "FAILED", "NONE", Duration::from_secs(10));
    assert_eq!(s["errorMsg"], "The peon exited without writing status.json");
}

#[test]
fn restarted_worker_readopts_peons_and_a_lost_worker_fails_its_tasks_then_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (ctl_dir, w1_dir, w2_dir) = (dir.path().join("ctl"), dir.path().join("w1"), dir.path().join("w2"));
    let _reaper = PeonReaper(vec![w1_dir.clone(), w2_dir.clone()]);
    let ctl = spawn_fast_dev(&ctl_dir, free_port(), &["--worker-capacity", "0"]);
    wait_leading(&ctl.url);
    let secret = std::fs::read_to_string(ctl_dir.join("cluster-secret")).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let mut w1 = spawn_worker(&w1_dir, p1, &ctl.url, 2, &secret);
    let w2 = spawn_worker(&w2_dir, p2, &ctl.url, 2, &secret);
    wait_workers(&ctl.url, 2);

    // Pin one short task to each worker through affinity.
    let host1 = format!("127.0.0.1:{p1}");
    let host2 = format!("127.0.0.1:{p2}");
    let config = json!({"type": "default", "selectStrategy": {"type": "equalDistribution",
        "affinityConfig": {"affinity": {"on-w1": [host1], "on-w2": [host2]}, "strong": true}}});
    let resp = http()
        .post(format!("{}{API}/worker", ctl.url))
        .header("X-Druid-Author", "test")
        .json(&config)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let history: Vec<Value> = get_json(&format!("{}{API}/worker/history", ctl.url));
    assert_eq!(history.last().unwrap()["auditInfo"]["author"], "test");

    // Worker 1 restarts (kill -9) while its task runs: the peon is adopted, the task
    // succeeds, and it ran once.
    let a = submit(
        &ctl.url,
        json!({"type": "noop", "id": "adopted", "dataSource": "on-w1", "runTime": 4000}),
    );
    let s = wait_status(&ctl.url, &a, "RUNNING", "RUNNING", Duration::from_secs(10));
    assert_eq!(s["location"]["port"], p1);
    let pid = peon_pid_in(&w1_dir.join("worker/tasks/adopted")).unwrap();
    w1.child.kill().unwrap();
    w1.child.wait().unwrap();
    assert!(alive(pid), "killing the worker must not kill its peon");
    let _w1 = spawn_worker(&w1_dir, p1, &ctl.url, 2, &secret);
    wait_status(&ctl.url, &a, "SUCCESS", "NONE", Duration::from_secs(30));
    assert_eq!(log_of(&ctl.url, &a).matches("peon starting").count(), 1);

    // Worker 2 goes silent (SIGSTOP) while its tasks run: they fail as "worker lost" after the
    // timeout and its slots are no longer counted.
    let lost: Vec<String> = (0..2)
        .map(|i| {
            submit(
                &ctl.url,
                json!({"type": "noop", "id": format!("lost-{i}"), "dataSource": "on-w2", "runTime": 600000}),
            )
        })
        .collect();
    for id in &lost {
        wait_status(&ctl.url, id, "RUNNING", "RUNNING", Duration::from_secs(10));
    }
    let peons: Vec<i32> = lost
        .iter()
        .map(|id| peon_pid_in(&w2_dir.join("worker/tasks").join(id)).unwrap())
        .collect();
    let w2_pid = nix::unistd::Pid::from_raw(w2.child.id() as i32);
    nix::sys::signal::kill(w2_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for id in &lost {
        let s = wait_status(&ctl.url, id, "FAILED", "NONE", Duration::from_secs(20));
        assert!(s["errorMsg"].as_str().unwrap().starts_with("worker lost"), "{s}");
    }
    let workers = wait_workers(&ctl.url, 1);
    assert_eq!(workers[0]["worker"]["host"], format!("127.0.0.1:{p1}").as_str());
    let cap: Value = get_json(&format!("{}{API}/totalWorkerCapacity", ctl.url));
    assert_eq!(
        (
            cap["currentClusterCapacity"].as_u64(),
            cap["usedClusterCapacity"].as_u64()
        ),
        (Some(2), Some(0))
    );

    // It comes back: it registers again, learns its tasks are no longer its own and stops
    // their peons, so nothing runs that the state says failed. The outcomes stay as stored.
    nix::sys::signal::kill(w2_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_workers(&ctl.url, 2);
    for pid in peons {
        wait_for_blocking("the orphaned peon to be stopped", Duration::from_secs(20), || {
            (!alive(pid)).then_some(())
        });
    }
    for id in &lost {
        let s = status(&ctl.url, id).unwrap();
        assert!(s["errorMsg"].as_str().unwrap().starts_with("worker lost"), "{s}");
    }
    drop(w2);
}

#[test]
fn kill_9_leader_while_tasks_run_they_complete_on_the_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    let wdir = dir.path().join("worker");
    let _reaper = PeonReaper(vec![wdir.clone()]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = (1..=3)
        .map(|i| format!("{i}=http://127.0.0.1:{}", ports[i - 1]))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Proc> = (1..=3u64)
        .map(|i| {
            spawn_server(
                i,
                ports[i as usize - 1],
                &peers,
                &dir.path().join(format!("n{i}")),
                &["--worker-capacity", "0"],
            )
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let leader_url = wait_for_blocking("a leader", Duration::from_secs(30), || {
        urls.iter().find(|u| {
            http_no_redirect()
                .get(format!("{u}{API}/isLeader"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        })
    })
    .clone();
    // The worker knows every node, as an operator would configure it.
    let worker = spawn_worker(&wdir, free_port(), &urls.join(","), 4, SECRET);
    wait_workers(&leader_url, 1);
    let ids: Vec<String> = (0..4)
        .map(|i| {
            submit(
                &leader_url,
                json!({"type": "noop", "id": format!("t{i}"), "runTime": 4000}),
            )
        })
        .collect();
    for id in &ids {
        wait_status(&leader_url, id, "RUNNING", "RUNNING", Duration::from_secs(10));
    }
    let leader_idx = urls.iter().position(|u| *u == leader_url).unwrap();
    nodes[leader_idx].child.kill().unwrap();
    nodes[leader_idx].child.wait().unwrap();
    let survivor = urls[(leader_idx + 1) % 3].clone();
    for id in &ids {
        let s = wait_status(&survivor, id, "SUCCESS", "NONE", Duration::from_secs(30));
        assert_eq!(s["errorMsg"], Value::Null);
        assert_eq!(
            log_of(&survivor, id).matches("peon starting").count(),
            1,
            "{id} ran twice"
        );
    }
    drop(worker);
}
