//! Task actions, locks and segment metadata over HTTP on one node: locks through `/action`
//! (blocking acquire woken by a release, revocation by priority), publishing with Druid's
//! results, the Overlord and Coordinator segment views, and bad input that changes nothing.

mod common;

use std::time::Duration;

use common::{wait_for, SingleNode, SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};

type Dev = SingleNode;

const DAY: &str = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z";

impl Dev {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        // Task actions need the cluster secret (or a task's token); other routes ignore it.
        let mut r = self
            .client
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(SECRET);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn submit(&self, id: &str, priority: i32) {
        let mut spec = raftlord_harness::index_task(id, "wiki");
        spec["context"] = json!({"priority": priority});
        let (s, v) = self.post("/druid/indexer/v1/task", spec).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    async fn action(&self, task: &str, action: Value) -> (StatusCode, Value) {
        let body = json!({"task": {"type": "index", "id": task, "dataSource": "wiki"}, "action": action});
        self.post("/druid/indexer/v1/action", body).await
    }

    async fn stored(&self) -> String {
        let g = self.node.raft.shared.read().await;
        serde_json::to_string(&(&g.state.locks, &g.state.segments)).unwrap()
    }

    /// Asserts a 4xx with a JSON message mentioning `part`, and no change to locks or segments.
    async fn expect_bad(&self, fut: impl std::future::Future<Output = (StatusCode, Value)>, part: &str) {
        let before = self.stored().await;
        let (s, v) = fut.await;
        assert!(s.is_client_error(), "{s}: {v}");
        let msg = common::error_reason(&v).unwrap_or_else(|| panic!("JSON error expected: {v}"));
        assert!(msg.contains(part), "{msg:?} should mention {part:?}");
        assert_eq!(self.stored().await, before, "bad input changed the state");
    }
}

fn segment(version: &str, partition: u32, partitions: u32) -> Value {
    json!({"dataSource": "wiki", "interval": DAY, "version": version,
           "loadSpec": {"type": "local", "path": format!("/deep/wiki/{partition}.zip")},
           "dimensions": ["page"], "metrics": ["count"],
           "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": partitions},
           "binaryVersion": 9, "size": 100})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_publish_and_segment_views_over_http() {
    let d = Dev::start(Default::default()).await;
    d.submit("low", 25).await;
    d.submit("mid", 25).await;
    d.submit("high", 75).await;

    // low takes the day.
    let (s, v) = d
        .action(
            "low",
            json!({"type": "lockTryAcquire", "lockType": "EXCLUSIVE", "interval": DAY}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let low_lock = v["result"].clone();
    assert_eq!(
        (
            low_lock["type"].as_str(),
            low_lock["granularity"].as_str(),
            low_lock["revoked"].as_bool()
        ),
        (Some("EXCLUSIVE"), Some("timeChunk"), Some(false))
    );
    assert!(low_lock["fencingToken"].as_u64().unwrap() > 0);
    let (_, v) = d
        .action("mid", json!({"type": "lockTryAcquire", "interval": DAY}))
        .await;
    assert_eq!(v["result"], Value::Null, "equal priority cannot take it");

    // mid blocks in lockAcquire until low releases.
    let applied_before = *d.node.raft.shared.subscribe().borrow();
    let waiter = {
        let (client, url) = (d.client.clone(), d.url.clone());
        tokio::spawn(async move {
            let body =
                json!({"task": {"id": "mid"}, "action": {"type": "lockAcquire", "interval": DAY, "timeoutMs": 30000}});
            let r = client
                .post(format!("{url}/druid/indexer/v1/action"))
                .bearer_auth(SECRET)
                .json(&body)
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    // Its first (refused) try goes through the log: nothing else writes meanwhile.
    wait_for("mid to have tried", Duration::from_secs(10), || async {
        (*d.node.raft.shared.subscribe().borrow() > applied_before).then_some(())
    })
    .await;
    assert!(!waiter.is_finished());
    let (s, _) = d.action("low", json!({"type": "lockRelease", "interval": DAY})).await;
    assert_eq!(s, StatusCode::OK);
    let mid_lock = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap()["result"]
        .clone();
    assert_eq!(mid_lock["groupId"], "mid", "{mid_lock}");
    assert!(mid_lock["version"].as_str().unwrap() > low_lock["version"].as_str().unwrap());
    let (_, v) = d.action("mid", json!({"type": "lockList"})).await;
    assert_eq!(v["result"], json!([mid_lock.clone()]));

    // mid publishes two partitions under its lock.
    let version = mid_lock["version"].as_str().unwrap();
    let token = mid_lock["fencingToken"].as_u64().unwrap();
    let publish = json!({"type": "segmentTransactionalInsert",
        "segments": [segment(version, 0, 2), segment(version, 1, 2)],
        "startMetadata": {"type": "object", "theObject": null}, "endMetadata": {"type": "object", "theObject": {"offset": 5}},
        "fencingTokens": [token]});
    let (s, v) = d.action("mid", publish.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["result"]["success"].as_bool(),
            v["result"]["segments"].as_array().map(Vec::len)
        ),
        (Some(true), Some(2))
    );
    let id1 = format!("wiki_2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z_{version}_1");
    assert_eq!(v["result"]["segments"][1]["identifier"], id1.as_str());
    // The same start metadata again: a permanent failure with Druid's message.
    let (_, v) = d.action("mid", publish).await;
    assert_eq!(v["result"]["success"], false);
    assert!(v["result"]["errorMsg"]
        .as_str()
        .unwrap()
        .starts_with("Inconsistency between stored metadata state"));
    let (_, v) = d.get("/druid/indexer/v1/datasources/wiki/metadata").await;
    assert_eq!(v["theObject"], json!({"offset": 5}));

    // Readers: the action and the Coordinator's views.
    let (_, v) = d
        .action(
            "mid",
            json!({"type": "retrieveUsedSegments", "dataSource": "wiki", "intervals": [DAY]}),
        )
        .await;
    assert_eq!(v["result"].as_array().unwrap().len(), 2);
    let (_, v) = d.get("/druid/coordinator/v1/metadata/datasources").await;
    assert_eq!(v, json!(["wiki"]));
    let (_, v) = d.get("/druid/coordinator/v1/metadata/datasources/wiki/segments").await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (s, v) = d
        .get(&format!(
            "/druid/coordinator/v1/metadata/datasources/wiki/segments/{id1}"
        ))
        .await;
    assert_eq!((s, v["shardSpec"]["partitionNum"].as_u64()), (StatusCode::OK, Some(1)));
    let (_, v) = d.get("/druid/coordinator/v1/datasources/wiki/intervals?simple").await;
    assert_eq!(v, json!({DAY: {"count": 2, "size": 200}}));
    let (_, v) = d
        .get("/druid/coordinator/v1/metadata/segments?includeOvershadowedStatus")
        .await;
    assert_eq!(v[0]["overshadowed"], false);
    let (_, v) = d
        .post("/druid/indexer/v1/activeLocks", json!([{"datasource": "wiki"}]))
        .await;
    assert_eq!(v["datasourceToLocks"]["wiki"].as_array().unwrap().len(), 1);
    let (_, v) = d
        .post(
            "/druid/indexer/v1/lockedIntervals/v2",
            json!([{"datasource": "wiki", "priority": 50}]),
        )
        .await;
    assert_eq!(v, json!({}), "mid's priority 25 is below the filter's 50");

    // high revokes mid; mid's next publish fails with Druid's message.
    let (_, v) = d
        .action("high", json!({"type": "lockTryAcquire", "interval": DAY}))
        .await;
    assert_eq!(v["result"]["priority"], 75);
    let (_, v) = d
        .action(
            "mid",
            json!({"type": "segmentTransactionalInsert", "segments": [segment(version, 0, 1)]}),
        )
        .await;
    assert_eq!(v["result"]["success"], false);
    assert!(v["result"]["errorMsg"]
        .as_str()
        .unwrap()
        .contains("revoked by a higher priority task"));
    let (_, v) = d.action("mid", json!({"type": "lockList"})).await;
    assert_eq!(v["result"][0]["revoked"], true);

    // Mark unused and used again through the Overlord's datasource routes.
    let (s, v) = d
        .post(
            "/druid/indexer/v1/datasources/wiki/markUnused",
            json!({"segmentIds": [id1]}),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"numChangedSegments": 1})));
    let (_, v) = d
        .get("/druid/coordinator/v1/metadata/datasources/wiki/unusedSegments")
        .await;
    assert_eq!(v[0]["dataSegment"]["identifier"], id1.as_str());
    let (_, v) = d.post("/druid/indexer/v1/datasources/wiki", json!({})).await;
    assert_eq!(v, json!({"numChangedSegments": 1}));

    // Completing a task releases its locks in the same command.
    let (s, _) = d.post("/druid/indexer/v1/task/high/shutdown", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = d
        .post("/druid/indexer/v1/activeLocks", json!([{"datasource": "wiki"}]))
        .await;
    assert_eq!(v["datasourceToLocks"]["wiki"].as_array().map(Vec::len), None, "{v}");
    let (_, v) = d
        .get("/druid/indexer/v1/audit?datasource=wiki&type=lock&count=50")
        .await;
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"lock.revoked") && kinds[0] == "lock.released",
        "{kinds:?}"
    );
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actions_and_segment_requests_are_4xx_and_change_nothing() {
    let d = Dev::start(Default::default()).await;
    d.submit("t", 50).await;
    let (_, v) = d.action("t", json!({"type": "lockTryAcquire", "interval": DAY})).await;
    let version = v["result"]["version"].as_str().unwrap().to_string();

    d.expect_bad(d.action("t", json!({"type": "teleport"})), "unknown task action type")
        .await;
    d.expect_bad(
        d.action("t", json!({"type": "lockTryAcquire", "interval": "yesterday"})),
        "invalid interval",
    )
    .await;
    d.expect_bad(
        d.action(
            "t",
            json!({"type": "lockTryAcquire", "interval": "2024-01-02/2024-01-01"}),
        ),
        "before the start",
    )
    .await;
    d.expect_bad(d.action("nobody", json!({"type": "lockList"})), "not found")
        .await;
    let bad_publishes = [
        (
            json!({"dataSource": "wiki", "interval": "2024-02-01/2024-02-02", "version": version}),
            "are not covered by locks",
        ),
        (
            json!({"dataSource": "other", "interval": DAY, "version": version}),
            "datasource",
        ),
        (json!({"dataSource": "", "interval": DAY, "version": version}), "empty"),
    ];
    for (segment, part) in bad_publishes {
        let publish = json!({"type": "segmentTransactionalInsert", "segments": [segment]});
        d.expect_bad(d.action("t", publish), part).await;
    }
    d.expect_bad(
        d.post(
            "/druid/indexer/v1/datasources/wiki/markUnused",
            json!({"segmentIds": ["wiki_garbage"]}),
        ),
        "Could not parse segment id",
    )
    .await;
    d.expect_bad(
        d.post("/druid/indexer/v1/datasources/wiki/markUnused", json!({})),
        "Exactly one of interval or segmentIds",
    )
    .await;
    d.expect_bad(
        d.post(
            "/druid/indexer/v1/datasources/a%2Fb/markUnused",
            json!({"interval": DAY}),
        ),
        "'/'",
    )
    .await;
    d.expect_bad(
        d.post("/druid/indexer/v1/lockedIntervals/v2", json!([])),
        "No filter provided",
    )
    .await;
    // A task that is no longer active may not act.
    d.post("/druid/indexer/v1/task/t/shutdown", json!({})).await;
    d.expect_bad(
        d.action("t", json!({"type": "lockTryAcquire", "interval": DAY})),
        "not active",
    )
    .await;
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_allocate_and_pending_segment_deletion() {
    let d = Dev::start(Default::default()).await;
    d.submit("a", 50).await;
    let alloc = |seq: &str, granularity: Value, shard: &str| {
        json!({"type": "segmentAllocate", "dataSource": "wiki", "timestamp": "2024-01-01T05:00:00Z",
               "queryGranularity": "NONE", "preferredSegmentGranularity": granularity, "sequenceName": seq,
               "previousSegmentId": null, "skipSegmentLineageCheck": false,
               "partialShardSpec": {"type": shard}, "lockGranularity": "TIME_CHUNK"})
    };
    let (s, v) = d.action("a", alloc("s0", json!("DAY"), "numbered")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let id = v["result"].clone();
    assert_eq!(
        (id["interval"].as_str(), id["shardSpec"].clone()),
        (
            Some(DAY),
            json!({"type": "numbered", "partitionNum": 0, "partitions": 0})
        )
    );
    let (_, again) = d.action("a", alloc("s0", json!("DAY"), "numbered")).await;
    assert_eq!(again["result"], id, "a retry gets the same segment");
    let (_, other) = d
        .action("a", alloc("s1", json!({"type": "period", "period": "P1D"}), "numbered"))
        .await;
    assert_eq!(other["result"]["shardSpec"]["partitionNum"], 1);
    d.expect_bad(
        d.action("a", alloc("s2", json!("FORTNIGHT"), "numbered")),
        "unknown granularity",
    )
    .await;
    d.expect_bad(d.action("a", alloc("s2", json!("DAY"), "hashed")), "not supported")
        .await;
    let (s, v) = d
        .send(reqwest::Method::DELETE, "/druid/indexer/v1/pendingSegments/wiki", None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"numDeleted": 2})));
    d.node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_replace_unused_and_mark_actions() {
    let d = Dev::start(Default::default()).await;
    d.submit("stream", 50).await;
    d.submit("compact", 50).await;
    let (_, r) = d
        .action(
            "compact",
            json!({"type": "lockTryAcquire", "lockType": "REPLACE", "interval": DAY}),
        )
        .await;
    let replace_version = r["result"]["version"].as_str().unwrap().to_string();
    let (_, a) = d
        .action(
            "stream",
            json!({"type": "lockTryAcquire", "lockType": "APPEND", "interval": DAY}),
        )
        .await;
    assert_eq!(a["result"]["version"], "1970-01-01T00:00:00.000Z", "{a}");
    let (_, v) = d
        .action(
            "stream",
            json!({"type": "segmentTransactionalAppend", "segments": [segment("1970-01-01T00:00:01.000Z", 0, 1)]}),
        )
        .await;
    assert_eq!(v["result"]["success"], true, "{v}");
    let (_, v) = d
        .action(
            "compact",
            json!({"type": "segmentTransactionalReplace", "segments": [segment(&replace_version, 0, 1)]}),
        )
        .await;
    assert_eq!(v["result"]["success"], true, "{v}");
    // Visible: the replace's segment and the append upgraded into the replace's version.
    let (_, used) = d
        .action(
            "compact",
            json!({"type": "retrieveUsedSegments", "dataSource": "wiki", "intervals": [DAY]}),
        )
        .await;
    let versions: Vec<&str> = used["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec![replace_version.as_str(), replace_version.as_str()]);
    let (_, all) = d
        .action(
            "compact",
            json!({"type": "retrieveUsedSegments", "dataSource": "wiki", "intervals": [DAY], "visibility": "INCLUDING_OVERSHADOWED"}),
        )
        .await;
    assert_eq!(all["result"].as_array().unwrap().len(), 3);
    // markSegmentsAsUnused and retrieveUnusedSegments.
    let (_, n) = d
        .action(
            "compact",
            json!({"type": "markSegmentsAsUnused", "dataSource": "wiki", "interval": DAY}),
        )
        .await;
    assert_eq!(n["result"], 3);
    let (_, unused) = d
        .action(
            "compact",
            json!({"type": "retrieveUnusedSegments", "dataSource": "wiki", "interval": DAY, "limit": 2}),
        )
        .await;
    assert_eq!(unused["result"].as_array().unwrap().len(), 2);
    d.expect_bad(
        d.action(
            "stream",
            json!({"type": "lockRelease", "interval": "2030-01-01/2030-01-02"}),
        ),
        "holds no lock",
    )
    .await;
    d.node.stop().await;
}
