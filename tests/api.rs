//! Druid's task API on one node: the happy paths and every kind of bad input. Bad input must
//! get a 4xx with a JSON body and change nothing stored.

mod common;

use std::time::Duration;

use common::{wait_for, SingleNode, SECRET};
use raftlord::config::Limits;
use reqwest::StatusCode;
use serde_json::{json, Value};

type Dev = SingleNode;

impl Dev {
    fn u(&self, path: &str) -> String {
        format!("{}/druid/indexer/v1{}", self.url, path)
    }

    async fn submit(&self, body: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(self.u("/task"))
            .header("content-type", "application/json")
            .body(body.to_string());
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// GET of a path outside the Overlord's prefix.
    async fn get_abs(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.u(path)).send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Everything stored about tasks, for before/after comparisons.
    async fn stored(&self) -> String {
        let g = self.node.raft.shared.read().await;
        serde_json::to_string(&g.state.tasks).unwrap()
    }

    async fn expect_rejected(&self, body: &str, status: StatusCode, message_part: &str) {
        let before = self.stored().await;
        let (s, v) = self.submit(body).await;
        assert_eq!(s, status, "body {body:.80}: {v}");
        let msg = v["errorMessage"]
            .as_str()
            .unwrap_or_else(|| panic!("JSON error body expected, got {v}"));
        assert!(
            msg.contains(message_part),
            "message {msg:?} should mention {message_part:?}"
        );
        assert_eq!(v["error"], "druidException", "{v}");
        assert!(
            v["errorCode"].is_string() && v["category"].is_string() && v["persona"].is_string(),
            "{v}"
        );
        assert_eq!(self.stored().await, before, "a rejected submission changed the state");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_get_status_list_and_shutdown() {
    let d = Dev::start(Limits::default()).await;
    let (s, v) = d
        .submit(r#"{"type":"noop","id":"t1","dataSource":"wiki","runTime":10}"#)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"task": "t1"})));

    let (s, v) = d.get("/task/t1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"task": "t1", "payload": {"type":"noop","id":"t1","dataSource":"wiki","runTime":10}})
    );

    let (s, v) = d.get("/task/t1/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["task"], "t1");
    assert_eq!(v["status"]["statusCode"], "RUNNING");
    assert_eq!(v["status"]["runnerStatusCode"], "WAITING");
    assert_eq!(v["status"]["dataSource"], "wiki");

    // A spec without an id gets one in Druid's format.
    let (s, v) = d
        .submit(
            r#"{"type":"index_parallel","spec":{"dataSchema":{"dataSource":"logs","timestampSpec":{"column":"t"}},
                "ioConfig":{"inputSource":{"type":"inline","data":""},"inputFormat":{"type":"json"}}}}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let generated = v["task"].as_str().unwrap().to_string();
    assert!(generated.starts_with("index_parallel_logs_"), "{generated}");

    let (_, waiting) = d.get("/waitingTasks").await;
    assert_eq!(waiting.as_array().unwrap().len(), 2);
    let (_, running) = d.get("/runningTasks").await;
    assert_eq!(running, json!([]));
    let (_, by_ds) = d.get("/tasks?datasource=logs").await;
    assert_eq!(by_ds[0]["id"], generated.as_str());
    let (_, by_type) = d.get("/tasks?type=noop&state=waiting").await;
    assert_eq!(by_type.as_array().unwrap().len(), 1);

    // Shutdown of a waiting task fails it with Druid's message.
    let r = d.client.post(d.u("/task/t1/shutdown")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"task": "t1"}));
    let (_, v) = d.get("/task/t1/status").await;
    assert_eq!(v["status"]["statusCode"], "FAILED");
    assert_eq!(v["status"]["runnerStatusCode"], "NONE");
    assert_eq!(v["status"]["errorMsg"], "Shutdown request from user");
    let (_, complete) = d.get("/completeTasks").await;
    assert_eq!(complete[0]["id"], "t1");

    // POST /taskStatus omits unknown ids.
    let r = d
        .client
        .post(d.u("/taskStatus"))
        .json(&json!(["t1", "nope"]))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["t1"]["status"], "FAILED");
    assert!(v.get("nope").is_none());

    // shutdownAllTasks stops the datasource's active tasks; 404 once it has none.
    for (expected, body) in [
        (StatusCode::OK, json!({"dataSource": "logs"})),
        (StatusCode::NOT_FOUND, Value::Null),
    ] {
        let r = d
            .client
            .post(d.u("/datasources/logs/shutdownAllTasks"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
        if expected == StatusCode::OK {
            assert_eq!(r.json::<Value>().await.unwrap(), body);
        }
    }
    let (_, v) = d.get(&format!("/task/{generated}/status")).await;
    assert_eq!(v["status"]["statusCode"], "FAILED");

    // Leader endpoints.
    let r = d.client.get(d.u("/isLeader")).send().await.unwrap();
    assert_eq!(
        (r.status(), r.json::<Value>().await.unwrap()),
        (StatusCode::OK, json!({"leader": true}))
    );
    let leader = d.client.get(d.u("/leader")).send().await.unwrap().text().await.unwrap();
    assert_eq!(leader, d.url);
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submissions_get_a_clear_4xx_and_change_nothing() {
    let d = Dev::start(Limits {
        max_payload_bytes: 4096,
        max_active_tasks: Some(3),
    })
    .await;
    assert_eq!(d.submit(r#"{"type":"noop","id":"keep"}"#).await.0, StatusCode::OK);

    d.expect_rejected("{not json", StatusCode::BAD_REQUEST, "not valid JSON")
        .await;
    d.expect_rejected("[1,2]", StatusCode::BAD_REQUEST, "must be a JSON object")
        .await;
    d.expect_rejected(r#""noop""#, StatusCode::BAD_REQUEST, "must be a JSON object")
        .await;
    d.expect_rejected(r#"{"id":"x"}"#, StatusCode::BAD_REQUEST, "no 'type'")
        .await;
    d.expect_rejected(
        r#"{"type":"noop","id":""}"#,
        StatusCode::BAD_REQUEST,
        "must not be empty",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","id":".x"}"#,
        StatusCode::BAD_REQUEST,
        "must not start with '.'",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","id":"a/b"}"#,
        StatusCode::BAD_REQUEST,
        "must not contain '/'",
    )
    .await;
    d.expect_rejected(r#"{"type":"noop","id":"a\tb"}"#, StatusCode::BAD_REQUEST, "whitespace")
        .await;
    d.expect_rejected(r#"{"type":"noop","id":"a\u0001b"}"#, StatusCode::BAD_REQUEST, "control")
        .await;
    d.expect_rejected(
        r#"{"type":"no_such_type"}"#,
        StatusCode::BAD_REQUEST,
        "Could not resolve type id 'no_such_type'",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","runTime":"soon"}"#,
        StatusCode::BAD_REQUEST,
        "invalid 'runTime'",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","runTime":-1}"#,
        StatusCode::BAD_REQUEST,
        "invalid 'runTime'",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","isReadyTime":1.5}"#,
        StatusCode::BAD_REQUEST,
        "invalid 'isReadyTime'",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","isReadyResult":"MAYBE"}"#,
        StatusCode::BAD_REQUEST,
        "YES, NO or EXCEPTION",
    )
    .await;
    d.expect_rejected(
        r#"{"type":"noop","resource":{"availabilityGroup":"g","requiredCapacity":0}}"#,
        StatusCode::BAD_REQUEST,
        "requiredCapacity",
    )
    .await;
    let long = format!(r#"{{"type":"noop","id":"{}"}}"#, "x".repeat(256));
    d.expect_rejected(&long, StatusCode::BAD_REQUEST, "at most 255 bytes")
        .await;
    d.expect_rejected(
        r#"{"type":"noop","id":"keep"}"#,
        StatusCode::BAD_REQUEST,
        "Task [keep] already exists",
    )
    .await;
    let big = format!(r#"{{"type":"noop","id":"big","pad":"{}"}}"#, "x".repeat(5000));
    d.expect_rejected(&big, StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit")
        .await;

    assert_eq!(d.submit(r#"{"type":"noop","id":"two"}"#).await.0, StatusCode::OK);
    assert_eq!(d.submit(r#"{"type":"noop","id":"three"}"#).await.0, StatusCode::OK);
    d.expect_rejected(
        r#"{"type":"noop","id":"four"}"#,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many tasks",
    )
    .await;

    // Unknown ids are 404 in Druid's shape; bad filters are 400.
    let (s, v) = d.get("/task/missing").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!((v["task"].as_str(), v["payload"].is_null()), (Some("missing"), true));
    let (s, v) = d.get("/task/missing/status").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["status"].is_null() && v["errorMessage"].is_string());
    let (s, v) = d.get("/tasks?state=sleeping").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["errorMessage"].as_str().unwrap().contains("sleeping"));
    let (s, v) = d.get("/tasks?createdTimeInterval=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["errorMessage"].as_str().unwrap().contains("createdTimeInterval"));
    let r = d.client.post(d.u("/taskStatus")).json(&json!([])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_cluster_secret_and_reject_malformed_rpcs() {
    let d = Dev::start(Limits::default()).await;
    let before = d.stored().await;
    let status_before = d.node.raft.status().await;
    for path in [
        "/raft/vote",
        "/raft/append",
        "/raft/snapshot",
        "/internal/cluster/add-node",
        "/internal/nodes/announce",
    ] {
        let r = d
            .client
            .post(format!("{}{path}", d.url))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorCode"], "unauthorized");
        let r = d
            .client
            .post(format!("{}{path}", d.url))
            .bearer_auth("wrong")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} with a wrong secret");
    }
    // With the secret, a malformed Raft RPC is a 400 with a JSON reason, not a crash.
    for (path, body) in [
        ("/raft/append", "{\"vote\": 1}"),
        ("/raft/vote", "not json"),
        ("/raft/snapshot", "\u{1}"),
    ] {
        let r = d
            .client
            .post(format!("{}{path}", d.url))
            .bearer_auth(SECRET)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["errorCode"], "invalidInput", "{path}");
        assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {v}");
    }
    let r = d
        .client
        .get(format!("{}/internal/state/tasks", d.url))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(d.stored().await, before);
    let after = d.node.raft.status().await;
    assert_eq!(
        (after.term, after.members.len()),
        (status_before.term, status_before.members.len())
    );
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_announces_itself_and_discovery_lists_it() {
    let d = Dev::start(Limits::default()).await;
    let nodes = wait_for("the announcement", Duration::from_secs(20), || async {
        let v: Value = d
            .client
            .get(format!("{}/status/nodes", d.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v.as_array()?.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(nodes[0]["id"], "node-1");
    assert_eq!(nodes[0]["url"], d.url.as_str());
    assert_eq!(nodes[0]["roles"], json!(["overlord", "coordinator"]));
    wait_for("discovery to list the node", Duration::from_secs(10), || async {
        (d.node.discovery.nodes(Some(raftlord::nodes::NodeRole::Overlord)).len() == 1).then_some(())
    })
    .await;
    // Druid's readiness routes see it now.
    let r = d
        .client
        .get(format!("{}/status/selfDiscovered", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, v) = d.get_abs("/status/selfDiscovered/status").await;
    assert_eq!(v, json!({"selfDiscovered": true}));
    d.node.stop().await;
}

/// `/status` carries Druid's `version`, `modules` and `memory`; `/status/properties` is a map
/// of strings with the node's settings and without its secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_properties_answer_as_druids_and_leave_the_secret_out() {
    let d = Dev::start(Limits::default()).await;
    let (s, v) = d.get_abs("/status").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["modules"].is_array(), "{v}");
    let m = &v["memory"];
    for field in ["maxMemory", "totalMemory", "freeMemory", "usedMemory", "directMemory"] {
        assert!(m[field].is_u64(), "{field}: {m}");
    }
    // The live-heap count needs the binary's allocator, so this in-process node reads 0 there.
    assert!(
        m["totalMemory"].as_u64() > Some(0) && m["maxMemory"].as_u64() >= m["totalMemory"].as_u64(),
        "{m}"
    );
    assert!(m["usedMemory"].as_u64() <= m["totalMemory"].as_u64(), "{m}");

    let (s, p) = d.get_abs("/status/properties").await;
    assert_eq!(s, StatusCode::OK);
    let p = p.as_object().unwrap_or_else(|| panic!("a map expected: {p}"));
    assert!(
        p.values().all(Value::is_string),
        "Druid's properties are strings: {p:?}"
    );
    assert_eq!(p["druid.host"], d.url.as_str());
    assert_eq!(p["raftlord.nodeId"], "1");
    assert!(p.contains_key("druid.indexer.queue.maxTaskPayloadSize"));
    let text = serde_json::to_string(p).unwrap();
    assert!(!text.contains(SECRET), "the cluster secret leaked: {text}");
    d.node.stop().await;
}

/// Druid's clients (`druidapi`'s `check_error`, the web console) show `errorMessage`, else
/// `error`: task routes answer Druid's `ErrorResponse`, with the category matching the status;
/// the Coordinator's and worker config's older routes answer `{"error": "<message>"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_in_druids_shapes_with_the_reason_where_druid_clients_read_it() {
    let d = Dev::start(Limits::default()).await;
    let cases: [(reqwest::RequestBuilder, StatusCode, &str, &str); 4] = [
        (
            d.client
                .post(d.u("/task"))
                .header("content-type", "application/json")
                .body("{\"type\":"),
            StatusCode::BAD_REQUEST,
            "INVALID_INPUT",
            "invalidInput",
        ),
        (
            d.client.get(format!("{}/no/such/route", d.url)),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "notFound",
        ),
        (
            d.client.get(d.u("/task/nope/reports")),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "notFound",
        ),
        (
            d.client.put(d.u("/task")),
            StatusCode::METHOD_NOT_ALLOWED,
            "INVALID_INPUT",
            "methodNotAllowed",
        ),
    ];
    for (request, status, category, code) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "druidException", "{v}");
        assert_eq!(
            (v["category"].as_str(), v["errorCode"].as_str()),
            (Some(category), Some(code)),
            "{v}"
        );
        assert_eq!(v["persona"], "USER", "{v}");
        assert_eq!(v["context"], json!({}), "{v}");
        assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }

    // Older routes: only the reason, under `error`.
    let coordinator = format!("{}/druid/coordinator/v1/datasources/wiki/markUnused", d.url);
    let r = d
        .client
        .post(coordinator)
        .json(&json!({"interval": "not an interval"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    let reason = v["error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(reason.contains("interval"), "{v}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    let r = d
        .client
        .post(d.u("/worker"))
        .json(&json!({"selectStrategy": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m != "druidException" && !m.is_empty()),
        "{v}"
    );
}

/// Only a task's own peon acts in its name: task actions without credentials are 401, with a
/// token of another task or of an attempt that is not the task's current one 403, and nothing
/// is locked by a refused one. (The peon's own token is exercised by every ingestion test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_actions_need_the_tasks_own_token_or_the_cluster_secret() {
    use raftlord::tasks::token;
    let d = Dev::start(Limits::default()).await;
    for id in ["t1", "t2"] {
        let (s, v) = d
            .submit(&json!({"type": "noop", "id": id, "dataSource": "wiki"}).to_string())
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let locks = || async {
        let g = d.node.raft.shared.read().await;
        serde_json::to_string(&g.state.locks).unwrap()
    };
    let before = locks().await;
    let body = json!({"task": {"id": "t1"},
                      "action": {"type": "lockTryAcquire", "interval": "2024-01-01/2024-01-02"}});
    let act = |credential: Option<String>| {
        let mut r = d.client.post(d.u("/action")).json(&body);
        if let Some(c) = credential {
            r = r.bearer_auth(c);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let refused = [
        (None, StatusCode::UNAUTHORIZED, "token"),
        (Some("wrong-secret".to_string()), StatusCode::UNAUTHORIZED, "token"),
        (Some("task.7.abc".to_string()), StatusCode::UNAUTHORIZED, "malformed"),
        // t2's token, and t1's token for an assignment t1 does not have.
        (Some(token::mint(SECRET, "t2", 5)), StatusCode::FORBIDDEN, "t1"),
        (Some(token::mint(SECRET, "t1", 5)), StatusCode::FORBIDDEN, "attempt"),
        // A token made with another secret.
        (
            Some(token::mint("not-the-secret", "t1", 5)),
            StatusCode::FORBIDDEN,
            "t1",
        ),
    ];
    for (credential, status, reason) in refused {
        let (s, v) = act(credential.clone()).await;
        assert_eq!(s, status, "{credential:?}: {v}");
        let message = v["errorMessage"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{credential:?}: {v}");
        assert_eq!(locks().await, before, "a refused action changed the locks");
    }
    let (s, v) = act(Some(SECRET.to_string())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["result"]["version"].is_string(), "{v}");
    d.node.stop().await;
}
