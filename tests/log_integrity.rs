//! What can enter the replicated log is always storable, readable and appliable: each request
//! that once poisoned the log (and so every node at once) is now refused with a 400 and a JSON
//! body, changes nothing, and the node still restarts and serves. Every error answer is JSON,
//! and a submission retried with an `Idempotency-Key` creates one task.

mod common;

use common::{start_single, SECRET};
use raftlord::config::Limits;
use raftlord::node::RunningNode;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DAY: &str = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z";

struct Node {
    node: RunningNode,
    url: String,
    client: reqwest::Client,
}

async fn start(dir: &std::path::Path) -> Node {
    start_with(dir, Limits::default()).await
}

async fn start_with(dir: &std::path::Path, limits: Limits) -> Node {
    let node = start_single(dir, limits).await;
    Node {
        url: node.url.clone(),
        node,
        client: reqwest::Client::new(),
    }
}

impl Node {
    async fn send(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let r = r.send().await.unwrap();
        let status = r.status();
        let json = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
        let text = r.text().await.unwrap();
        if !status.is_success() {
            assert!(json, "a {status} answer is not JSON: {text}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(format!("{}{path}", self.url)).json(&body))
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(format!("{}{path}", self.url))).await
    }

    async fn action(&self, task: &str, action: Value) -> (StatusCode, Value) {
        let body = json!({"task": {"id": task}, "action": action});
        let r = self
            .client
            .post(format!("{}/druid/indexer/v1/action", self.url))
            .bearer_auth(SECRET);
        self.send(r.json(&body)).await
    }

    async fn applied(&self) -> u64 {
        self.node.raft.shared.read().await.last_applied.map_or(0, |l| l.index)
    }

    /// Asserts a 400 whose message contains `part`, and that nothing was written.
    async fn refused(&self, what: (StatusCode, Value), part: &str, applied_before: u64) {
        let (status, body) = what;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errorCode"], "invalidInput", "{body}");
        let message = body["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(part), "expected '{part}' in: {message}");
        assert_eq!(
            self.applied().await,
            applied_before,
            "a refused request wrote to the log"
        );
    }
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({ "a": v }))
}

fn segment(partition: u64, size: i64, load_spec: Value) -> Value {
    json!({"dataSource": "wiki", "interval": DAY, "version": "v1", "loadSpec": load_spec,
           "dimensions": "", "metrics": "", "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": 0},
           "binaryVersion": 9, "size": size})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_once_poisoned_the_log_are_refused_and_the_node_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let (s, v) = n
        .post("/druid/indexer/v1/task", raftlord_harness::index_task("t1", "wiki"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let before = n.applied().await;

    // Eternity's end with a DAY bucket, and a duration granularity of i64::MAX: the bucket
    // reaches past what prints as ISO-8601.
    let allocate = |ts: &str, g: Value| {
        json!({"type": "segmentAllocate", "dataSource": "wiki", "timestamp": ts, "preferredSegmentGranularity": g,
               "sequenceName": "s1", "skipSegmentLineageCheck": true})
    };
    n.refused(
        n.action("t1", allocate("146140482-04-24T15:36:27.903Z", json!("DAY")))
            .await,
        "0000 to 9999",
        before,
    )
    .await;
    n.refused(
        n.action(
            "t1",
            allocate(
                "2024-01-01T00:00:00Z",
                json!({"type": "duration", "duration": i64::MAX}),
            ),
        )
        .await,
        "0000 to 9999",
        before,
    )
    .await;
    // endMetadata and loadSpec nested past what the log codec reads back.
    let insert = |segments: Value, end: Value| json!({"type": "segmentTransactionalInsert", "segments": segments, "startMetadata": null, "endMetadata": end});
    n.refused(
        n.action("t1", insert(json!([segment(0, 1, json!({}))]), nested(125)))
            .await,
        "levels deep",
        before,
    )
    .await;
    n.refused(
        n.action("t1", insert(json!([segment(0, 1, nested(200))]), Value::Null))
            .await,
        "levels deep",
        before,
    )
    .await;

    // The largest partition number and the largest size: stored, and what follows works.
    let (s, v) = n
        .action(
            "t1",
            json!({"type": "lockAcquire", "interval": DAY, "timeoutMs": i64::MAX}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let version = v["result"]["version"].as_str().unwrap().to_string();
    let mut big = segment(u32::MAX as u64, i64::MAX, json!({"type": "local"}));
    big["version"] = json!(version);
    let mut more: Vec<Value> = (7..9).map(|p| segment(p, i64::MAX, json!({"type": "local"}))).collect();
    for m in &mut more {
        m["version"] = json!(version);
    }
    let (s, v) = n
        .action("t1", insert(json!([big, more[0], more[1]]), Value::Null))
        .await;
    assert_eq!((s, &v["result"]["success"]), (StatusCode::OK, &json!(true)), "{v}");
    let (s, v) = n.action("t1", allocate("2024-01-01T05:00:00Z", json!("DAY"))).await;
    assert_eq!((s, &v["result"]), (StatusCode::OK, &Value::Null), "{v}");
    for view in ["?simple", "?full", ""] {
        let (s, v) = n.get(&format!("/druid/coordinator/v1/datasources{view}")).await;
        assert_eq!(s, StatusCode::OK, "{view}: {v}");
    }
    let (_, v) = n.get("/druid/coordinator/v1/datasources?simple").await;
    assert_eq!(v[0]["properties"]["segments"]["size"], json!(u64::MAX), "{v}");

    // Everything that was written reads back: the node restarts and serves.
    let applied = n.applied().await;
    n.node.stop().await;
    let n = start(dir.path()).await;
    assert!(n.applied().await >= applied);
    let (s, v) = n.get("/druid/indexer/v1/task/t1/status").await;
    assert_eq!((s, &v["status"]["status"]), (StatusCode::OK, &json!("RUNNING")), "{v}");
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json() {
    let dir = tempfile::tempdir().unwrap();
    // A small body limit, so that the over-limit body is sent whole before the answer.
    let limits = Limits {
        max_payload_bytes: 4096,
        ..Limits::default()
    };
    let n = start_with(dir.path(), limits).await;
    let base = &n.url;
    let c = &n.client;
    let cases: Vec<(reqwest::RequestBuilder, StatusCode)> = vec![
        (
            c.get(format!("{base}/druid/indexer/v1/tasks?max=lots")),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.get(format!(
                "{base}/druid/coordinator/v1/metadata/datasources/wiki/unusedSegments?limit=many"
            )),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.post(format!("{base}/druid/indexer/v1/worker"))
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.post(format!("{base}/druid/indexer/v1/worker"))
                .header("content-type", "application/json")
                .body(vec![0xffu8, 0xfe, b'{', b'}']),
            StatusCode::BAD_REQUEST,
        ),
        (
            c.post(format!("{base}/druid/indexer/v1/worker"))
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"selectStrategy\": {{\"type\": \"fillCapacity\"}}, \"x\": \"{}\"}}",
                    "y".repeat(5000)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            c.put(format!("{base}/druid/indexer/v1/task")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            c.post(format!("{base}/druid/indexer/v1/task"))
                .header("content-type", "application/json")
                .body(vec![b' '; 8192]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (c.get(format!("{base}/no/such/route")), StatusCode::NOT_FOUND),
    ];
    for (request, expected) in cases {
        let (status, body) = n.send(request).await;
        assert_eq!(status, expected, "{body}");
        // Druid's `ErrorResponse`, or on its older routes `{"error": "<message>"}`.
        let reason = common::error_reason(&body).filter(|m| !m.is_empty() && *m != "druidException");
        assert!(reason.is_some(), "{body}");
        assert!(
            body["errorCode"].is_string() || body.as_object().is_some_and(|o| o.len() == 1),
            "{body}"
        );
    }
    n.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_with_an_idempotency_key_creates_one_task() {
    let dir = tempfile::tempdir().unwrap();
    let n = start(dir.path()).await;
    let spec = json!({"type": "noop", "dataSource": "wiki"});
    let submit = |key: &str| {
        n.client
            .post(format!("{}/druid/indexer/v1/task", n.url))
            .header("Idempotency-Key", key)
            .json(&spec)
    };
    let (s, first) = n.send(submit("retry-1")).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (s, again) = n.send(submit("retry-1")).await;
    assert_eq!((s, &again), (StatusCode::OK, &first));
    let (s, other) = n.send(submit("retry-2")).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(other, first);
    let (_, tasks) = n.get("/druid/indexer/v1/tasks").await;
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks}");
    let before = n.applied().await;
    n.refused(n.send(submit("has space")).await, "Idempotency-Key", before)
        .await;
    n.node.stop().await;
}
