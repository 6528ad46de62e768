//! The Coordinator's retention-rule, dynamic-config and compaction-config routes on one node,
//! as Druid's clients use them: rules and configs set and read back in Druid's JSON, the
//! cluster defaults, the audited history, and bad input refused with a 400 that names the
//! field, changing nothing stored.

mod common;

use common::SingleNode;
use raftlord::config::Limits;
use reqwest::StatusCode;
use serde_json::{json, Value};

const RULES: &str = "/druid/coordinator/v1/rules";

impl SingleNode {
    async fn get_rules(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{RULES}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_rules(&self, ds: &str, body: &str, author: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{RULES}/{ds}", self.url))
            .header("content-type", "application/json")
            .header("X-Druid-Author", author)
            .header("X-Druid-Comment", format!("by {author}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn stored_coordinator(&self) -> String {
        let g = self.node.raft.shared.read().await;
        serde_json::to_string(&g.state.coordinator).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_set_read_back_in_druids_json_and_audited() {
    let dev = SingleNode::start(Limits::default()).await;
    // A new cluster loads everything twice on the default tier; a datasource has no rules.
    let (s, all) = dev.get_rules("").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        all,
        json!({"_default": [{"type": "loadForever", "tieredReplicants": {"_default_tier": 2}, "useDefaultTierForNull": true}]})
    );
    assert_eq!(dev.get_rules("/wikipedia").await.1, json!([]));

    let rules = json!([
        {"type": "loadByPeriod", "period": "P1M", "includeFuture": true,
         "tieredReplicants": {"hot": 1, "_default_tier": 1}, "useDefaultTierForNull": true},
        {"type": "dropForever"}
    ]);
    let (s, v) = dev.post_rules("wikipedia", &rules.to_string(), "alice").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(dev.get_rules("/wikipedia").await.1, rules);
    // `full`: the datasource's rules, then the defaults.
    let (_, full) = dev.get_rules("/wikipedia?full").await;
    assert_eq!(full.as_array().unwrap().len(), 3, "{full}");
    assert_eq!(full[2]["type"], "loadForever");
    // New defaults, by another author.
    let defaults =
        json!([{"type": "loadForever", "tieredReplicants": {"_default_tier": 1}, "useDefaultTierForNull": true}]);
    let (s, _) = dev.post_rules("_default", &defaults.to_string(), "bob").await;
    assert_eq!(s, StatusCode::OK);
    let (_, all) = dev.get_rules("").await;
    assert_eq!(all, json!({"_default": defaults, "wikipedia": rules}));

    // History: newest first with `count`, oldest first by interval (the last week by default).
    let (s, h) = dev.get_rules("/history?count=1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["key"], "_default");
    assert_eq!(h[0]["type"], "rules");
    assert_eq!(h[0]["auditInfo"]["author"], "bob");
    assert_eq!(h[0]["auditInfo"]["comment"], "by bob");
    let (_, h) = dev.get_rules("/history").await;
    let keys: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["wikipedia", "_default"]);
    let (_, h) = dev.get_rules("/wikipedia/history").await;
    assert_eq!(h.as_array().unwrap().len(), 1);
    assert_eq!(h[0]["auditInfo"]["author"], "alice");
    assert_eq!(
        serde_json::from_str::<Value>(h[0]["payload"].as_str().unwrap()).unwrap(),
        rules
    );
    let (_, h) = dev
        .get_rules("/wikipedia/history?interval=2000-01-01T00:00:00Z/2001-01-01T00:00:00Z")
        .await;
    assert_eq!(h, json!([]));

    // An empty list removes a datasource's own rules: the defaults decide again.
    let (s, _) = dev.post_rules("wikipedia", "[]", "alice").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(dev.get_rules("/wikipedia").await.1, json!([]));
    assert_eq!(dev.get_rules("").await.1, json!({"_default": defaults}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_get_a_400_naming_the_field_and_change_nothing() {
    let dev = SingleNode::start(Limits::default()).await;
    let (s, _) = dev
        .post_rules("wikipedia", r#"[{"type": "dropForever"}]"#, "alice")
        .await;
    assert_eq!(s, StatusCode::OK);
    let cases = [
        (r#"[{"type": "keepForever"}]"#, "unknown rule type [keepForever]"),
        (r#"[{"type": "loadByPeriod", "period": "one month"}]"#, "[0].period"),
        (
            r#"[{"type": "dropForever"}, {"type": "dropByPeriod", "period": "P1D/P2D"}]"#,
            "[1].period",
        ),
        (
            r#"[{"type": "loadByInterval", "interval": "2024-01-01/P1D"}]"#,
            "[0].interval",
        ),
        (
            r#"[{"type": "loadForever", "tieredReplicants": {"hot": -1}}]"#,
            "[0].tieredReplicants.hot",
        ),
        (
            r#"[{"type": "loadForever", "tieredReplicants": {"hot": "two"}}]"#,
            "[0]",
        ),
        (r#"{"type": "dropForever"}"#, "expected a JSON array"),
        ("[{", "invalid rules"),
    ];
    for (body, part) in cases {
        let before = dev.stored_coordinator().await;
        let (s, v) = dev.post_rules("wikipedia", body, "mallory").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}: JSON error expected, got {v}"));
        assert!(msg.contains(part), "{body}: {msg}");
        assert_eq!(dev.stored_coordinator().await, before, "{body} changed what is stored");
    }
    // A datasource name Druid refuses.
    let (s, v) = dev.post_rules("bad%2Fname", "[]", "mallory").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for q in ["count=0", "count=-1", "count=x", "interval=yesterday"] {
        let (s, v) = dev.get_rules(&format!("/history?{q}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["error"].is_string(), "{q}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_config_changes_only_the_fields_given_and_refuses_bad_values() {
    let dev = SingleNode::start(Limits::default()).await;
    let url = format!("{}/druid/coordinator/v1/config", dev.url);
    let get = |u: String| {
        let client = dev.client.clone();
        async move {
            let r = client.get(u).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let post = |body: &str| {
        dev.client
            .post(&url)
            .header("content-type", "application/json")
            .header("X-Druid-Author", "carol")
            .body(body.to_string())
            .send()
    };
    let (s, before) = get(url.clone()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(before["maxSegmentsToMove"], 100);
    assert_eq!(before["replicationThrottleLimit"], 500);
    assert_eq!(before["pauseCoordination"], false);
    let r = post(r#"{"maxSegmentsToMove": 7, "killDataSourceWhitelist": "wiki,logs"}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, after) = get(url.clone()).await;
    assert_eq!(after["maxSegmentsToMove"], 7);
    assert_eq!(after["killDataSourceWhitelist"], json!(["logs", "wiki"]));
    assert_eq!(
        after["replicationThrottleLimit"], 500,
        "fields not given keep their values"
    );
    let (_, h) = get(format!("{url}/history?count=5")).await;
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    assert_eq!(h[0]["key"], "coordinator.config");
    assert_eq!(h[0]["auditInfo"]["author"], "carol");

    for (body, field) in [
        (r#"{"maxSegmentsToMove": -5}"#, "maxSegmentsToMove"),
        (r#"{"killTaskSlotRatio": 2}"#, "killTaskSlotRatio"),
        (r#"{"pauseCoordination": "soon"}"#, "pauseCoordination"),
        (r#"[]"#, "expected a JSON object"),
        ("{", "invalid Coordinator dynamic config"),
    ] {
        let stored = dev.stored_coordinator().await;
        let r = post(body).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{body}: {v}");
        assert_eq!(dev.stored_coordinator().await, stored, "{body} changed what is stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_configs_are_set_read_deleted_and_bad_ones_refused() {
    let dev = SingleNode::start(Limits::default()).await;
    let base = format!("{}/druid/coordinator/v1/config/compaction", dev.url);
    let call = |method: reqwest::Method, url: String, body: Option<Value>| {
        let mut r = dev.client.request(method, url).header("X-Druid-Author", "dan");
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    use reqwest::Method;
    let (s, all) = call(Method::GET, base.clone(), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all["compactionConfigs"], json!([]));
    assert_eq!(all["compactionTaskSlotRatio"], 0.1);
    assert_eq!(
        call(Method::GET, format!("{base}/wiki"), None).await.0,
        StatusCode::NOT_FOUND
    );

    let config = json!({"dataSource": "wiki", "skipOffsetFromLatest": "PT1H", "inputSegmentSizeBytes": 500000000,
        "granularitySpec": {"segmentGranularity": "DAY"}});
    let (s, v) = call(Method::POST, base.clone(), Some(config.clone())).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, got) = call(Method::GET, format!("{base}/wiki"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["skipOffsetFromLatest"], "PT1H");
    assert_eq!(got["taskPriority"], 25, "Druid's default");
    let (_, all) = call(Method::GET, base.clone(), None).await;
    assert_eq!(all["compactionConfigs"][0]["dataSource"], "wiki");

    let (s, _) = call(Method::POST, format!("{base}/taskslots?ratio=0.5&max=4"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, all) = call(Method::GET, base.clone(), None).await;
    assert_eq!(
        (
            all["compactionTaskSlotRatio"].as_f64(),
            all["maxCompactionTaskSlots"].as_u64()
        ),
        (Some(0.5), Some(4))
    );

    for (method, url, body, field) in [
        (
            Method::POST,
            base.clone(),
            Some(json!({"dataSource": "wiki", "skipOffsetFromLatest": "yesterday"})),
            "skipOffsetFromLatest",
        ),
        (
            Method::POST,
            base.clone(),
            Some(json!({"dataSource": "wiki", "inputSegmentSizeBytes": "lots"})),
            "inputSegmentSizeBytes",
        ),
        (
            Method::POST,
            base.clone(),
            Some(json!({"dataSource": "wiki", "inputSegmentSizeBytes": -3})),
            "inputSegmentSizeBytes",
        ),
        (
            Method::POST,
            base.clone(),
            Some(json!({"skipOffsetFromLatest": "P1D"})),
            "dataSource",
        ),
        (Method::POST, format!("{base}/taskslots?ratio=3"), None, "ratio"),
        (Method::POST, format!("{base}/taskslots?max=-1"), None, "max"),
    ] {
        let stored = dev.stored_coordinator().await;
        let (s, v) = call(method, url.clone(), body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url} {body:?}: {v}");
        assert!(
            v["error"].as_str().unwrap_or_default().contains(field),
            "{url} {body:?}: {v}"
        );
        assert_eq!(
            dev.stored_coordinator().await,
            stored,
            "{url} {body:?} changed what is stored"
        );
    }

    let (s, _) = call(Method::DELETE, format!("{base}/wiki"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        call(Method::DELETE, format!("{base}/wiki"), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, h) = call(Method::GET, format!("{base}/wiki/history"), None).await;
    assert_eq!(s, StatusCode::OK);
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0]["compactionConfig"]["skipOffsetFromLatest"], "PT1H");
    assert_eq!(h[0]["auditInfo"]["author"], "dan");
    assert!(h[1]["compactionConfig"].is_null(), "the delete");
    assert_eq!(h[1]["globalConfig"]["compactionTaskSlotRatio"], 0.5);
}
