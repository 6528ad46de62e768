//! Fault injection against real `raftlord` processes, in the spirit of Jepsen and etcd's
//! robustness tests: nodes in network namespaces that this crate creates and removes, nemeses
//! that partition them, workloads that record what every client was told, and checkers that hold
//! the cluster's final state and the clients' histories to Raft's and Druid's promises.
//!
//! The test suite runs a few rounds (`tests/partitions.rs`); the benchmark runs more
//! (`raftlord-bench partitions`). Network namespaces need root and iproute2:
//! [`netns::unavailable`] says why they cannot be used, so callers can skip with that reason.

pub mod diskfull;
pub mod netns;
pub mod partitions;

/// A free TCP port on loopback for a server that will bind it later (often another process).
/// It is picked below the kernel's ephemeral port range, so no outgoing connection can take it
/// in the meantime, and never handed out twice by this process.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let span = low.saturating_sub(10_000).max(1);
    loop {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = 10_000 + (random % span as u64) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// Polls `cond` until it returns `Some`, or fails after `timeout` naming `what`.
pub fn wait<T>(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50)); // poll interval under the deadline above
    }
}

/// A node's own copy of its state at `path` (`/internal/state/tasks` or `.../segments`), read
/// without redirects behind the cluster `secret`: the JSON, which carries its `appliedIndex`.
pub fn local_state(c: &reqwest::blocking::Client, url: &str, path: &str, secret: &str) -> Option<serde_json::Value> {
    c.get(format!("{url}{path}"))
        .bearer_auth(secret)
        .send()
        .ok()?
        .json()
        .ok()
}

/// The ids of the tasks in a `/internal/state/tasks` answer.
pub fn task_ids(tasks: &serde_json::Value) -> std::collections::BTreeSet<String> {
    tasks["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// The smallest valid `index` task for `datasource`: Druid's spec with an empty inline input.
/// Control-plane tests submit it to hold locks and publish; a worker would run it to SUCCESS
/// with no rows.
pub fn index_task(id: &str, datasource: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "index",
        "id": id,
        "spec": {
            "dataSchema": {"dataSource": datasource, "timestampSpec": {"column": "timestamp"}},
            "ioConfig": {"type": "index", "inputSource": {"type": "inline", "data": ""},
                "inputFormat": {"type": "json"}},
        },
    })
}
