//! Users, roles and permissions (`--auth basic`): every route answers 401 without credentials,
//! 403 without the permission and works with it, changing nothing on a refusal; lists show only
//! what the caller may read; a cluster with auth on serves through any node, and its peons act
//! with their own task tokens.

mod common;

use std::time::Duration;

use common::*;
use raftlord::config::AuthSettings;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_PW: &str = "admin-pw";
const AUTHN: &str = "/druid-ext/basic-security/authentication/db/basic";
const AUTHZ: &str = "/druid-ext/basic-security/authorization/db/basic";

type Who = Option<(&'static str, &'static str)>;
const ADMIN: Who = Some(("admin", ADMIN_PW));
const ANA: Who = Some(("ana", "ana-pw"));
const BOB: Who = Some(("bob", "bob-pw"));

/// A route, its body, who may call it and who may not.
type Case = (Method, String, Option<Value>, &'static [Who], &'static [Who]);

async fn call(d: &SingleNode, who: Who, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
    let mut r = d.client.request(method, format!("{}{path}", d.url));
    if let Some((user, password)) = who {
        r = r.basic_auth(user, Some(password));
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let www = r.headers().get("www-authenticate").is_some();
    let v = r.json().await.unwrap_or(Value::Null);
    if status == StatusCode::UNAUTHORIZED {
        assert!(www, "a 401 names the scheme to use: {v}");
    }
    (status, v)
}

async fn ok(d: &SingleNode, who: Who, method: Method, path: &str, body: Option<Value>) -> Value {
    let (s, v) = call(d, who, method.clone(), path, body.as_ref()).await;
    assert!(s.is_success(), "{method} {path} as {who:?}: {s} {v}");
    v
}

/// Everything a refusal must leave as it was.
async fn stored(d: &SingleNode) -> String {
    let g = d.node.raft.shared.read().await;
    let s = &g.state;
    serde_json::to_string(&(&s.tasks, &s.locks, &s.segments, &s.security, &s.workers)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_without_credentials_or_permission_and_changes_nothing() {
    // The leader creates the admin user at the first start.
    let d = start_with_users().await;

    add_ana_and_bob(&d).await;
    for (id, ds) in [("t-wiki", "wiki"), ("t-other", "other")] {
        let task = json!({"type": "noop", "id": id, "dataSource": ds});
        ok(&d, ADMIN, Method::POST, "/druid/indexer/v1/task", Some(task)).await;
    }

    // (method, path, body, who may, who may not)
    let o = "/druid/indexer/v1";
    let c = "/druid/coordinator/v1";
    let both: &[Who] = &[ADMIN, ANA];
    let admin: &[Who] = &[ADMIN];
    let cases: Vec<Case> = vec![
        (Method::GET, format!("{o}/task/t-wiki"), None, both, &[BOB]),
        (Method::GET, format!("{o}/task/t-wiki/status"), None, both, &[BOB]),
        (Method::GET, format!("{o}/task/t-wiki/reports"), None, both, &[BOB]),
        (Method::GET, format!("{o}/task/t-wiki/log"), None, both, &[BOB]),
        (
            Method::GET,
            format!("{o}/task/t-other/status"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (
            Method::POST,
            format!("{o}/task/t-other/shutdown"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (
            Method::POST,
            format!("{o}/task"),
            Some(json!({"type": "noop", "dataSource": "wiki"})),
            both,
            &[BOB],
        ),
        (
            Method::POST,
            format!("{o}/task"),
            Some(json!({"type": "noop", "dataSource": "other"})),
            admin,
            &[ANA, BOB],
        ),
        (
            Method::POST,
            format!("{o}/datasources/other/shutdownAllTasks"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (Method::GET, format!("{o}/workers"), None, both, &[BOB]),
        (Method::GET, format!("{o}/totalWorkerCapacity"), None, both, &[BOB]),
        (Method::GET, format!("{o}/leader"), None, both, &[BOB]),
        (Method::GET, format!("{o}/worker"), None, admin, &[ANA, BOB]),
        (Method::GET, format!("{o}/worker/history"), None, admin, &[ANA, BOB]),
        (
            Method::POST,
            format!("{o}/worker"),
            Some(json!({"selectStrategy": {"type": "fillCapacity"}})),
            admin,
            &[ANA, BOB],
        ),
        (
            Method::POST,
            format!("{o}/worker/h:1/disable"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (
            Method::POST,
            format!("{o}/lockedIntervals/v2"),
            Some(json!([])),
            both,
            &[BOB],
        ),
        (Method::POST, format!("{o}/activeLocks"), Some(json!([])), both, &[BOB]),
        (Method::GET, format!("{o}/audit"), None, both, &[BOB]),
        (
            Method::GET,
            format!("{o}/datasources/wiki/metadata"),
            None,
            both,
            &[BOB],
        ),
        (
            Method::DELETE,
            format!("{o}/datasources/other/metadata"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (Method::DELETE, format!("{o}/pendingSegments/wiki"), None, both, &[BOB]),
        (
            Method::GET,
            format!("{c}/metadata/datasources/wiki/segments"),
            None,
            both,
            &[BOB],
        ),
        (Method::GET, format!("{c}/datasources/wiki"), None, both, &[BOB]),
        (
            Method::POST,
            format!("{c}/datasources/other/markUnused"),
            Some(json!({"interval": "2024-01-01/2024-01-02"})),
            admin,
            &[ANA, BOB],
        ),
        (
            Method::DELETE,
            format!("{o}/datasources/other"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (Method::GET, "/status".into(), None, both, &[BOB]),
        (Method::GET, "/status/nodes".into(), None, both, &[BOB]),
        (Method::GET, "/status/properties".into(), None, both, &[BOB]),
        (Method::GET, format!("{AUTHN}/users"), None, admin, &[ANA, BOB]),
        (Method::POST, format!("{AUTHN}/users/eve"), None, admin, &[ANA, BOB]),
        (
            Method::POST,
            format!("{AUTHZ}/roles/new-role"),
            None,
            admin,
            &[ANA, BOB],
        ),
        (
            Method::GET,
            format!("{AUTHZ}/roles/wiki-rw/permissions"),
            None,
            admin,
            &[ANA, BOB],
        ),
        // Lists need only a login; what they show is filtered (below).
        (Method::GET, format!("{o}/tasks"), None, &[ADMIN, ANA, BOB], &[]),
        (
            Method::POST,
            format!("{o}/taskStatus"),
            Some(json!(["t-wiki"])),
            &[ADMIN, ANA, BOB],
            &[],
        ),
        (Method::GET, format!("{c}/datasources"), None, &[ADMIN, ANA, BOB], &[]),
        (
            Method::GET,
            format!("{c}/metadata/datasources"),
            None,
            &[ADMIN, ANA, BOB],
            &[],
        ),
        (
            Method::GET,
            format!("{c}/metadata/segments"),
            None,
            &[ADMIN, ANA, BOB],
            &[],
        ),
    ];
    for (method, path, body, allowed, refused) in &cases {
        let wrong = Some(("ana", "not-her-password"));
        for who in [None, wrong] {
            let before = stored(&d).await;
            let (s, v) = call(&d, who, method.clone(), path, body.as_ref()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path} as {who:?}: {v}");
            assert!(v["errorMessage"].is_string() || v["error"].is_string(), "{v}");
            assert_eq!(stored(&d).await, before, "{method} {path}: a 401 changed the state");
        }
        for who in refused.iter() {
            let before = stored(&d).await;
            let (s, v) = call(&d, *who, method.clone(), path, body.as_ref()).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as {who:?}: {v}");
            assert_eq!(stored(&d).await, before, "{method} {path}: a 403 changed the state");
        }
        for who in allowed.iter() {
            let (s, v) = call(&d, *who, method.clone(), path, body.as_ref()).await;
            assert!(
                s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                "{method} {path} as {who:?}: {s} {v}"
            );
        }
    }

    // Health and leadership probes are open; task actions check their own credentials.
    assert_eq!(
        call(&d, None, Method::GET, "/status/health", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&d, None, Method::GET, &format!("{o}/isLeader"), None).await.0,
        StatusCode::OK
    );

    // Lists show only what the caller may read.
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().into())
            .collect();
        ids.sort();
        ids
    };
    let all = ok(&d, ADMIN, Method::GET, &format!("{o}/tasks?datasource=other"), None).await;
    assert!(!ids(&all).is_empty());
    let theirs = ok(&d, ANA, Method::GET, &format!("{o}/tasks"), None).await;
    assert!(
        theirs.as_array().unwrap().iter().all(|t| t["dataSource"] == "wiki"),
        "{theirs}"
    );
    assert!(ids(&theirs).contains(&"t-wiki".to_string()));
    assert_eq!(ok(&d, BOB, Method::GET, &format!("{o}/tasks"), None).await, json!([]));
    let statuses = ok(
        &d,
        ANA,
        Method::POST,
        &format!("{o}/taskStatus"),
        Some(json!(["t-wiki", "t-other"])),
    )
    .await;
    assert_eq!(statuses.as_object().unwrap().keys().collect::<Vec<_>>(), ["t-wiki"]);

    // A new password replaces the old one; a deleted user cannot log in.
    let body = json!({"password": "ana-new"});
    ok(
        &d,
        ADMIN,
        Method::POST,
        &format!("{AUTHN}/users/ana/credentials"),
        Some(body),
    )
    .await;
    assert_eq!(
        call(&d, ANA, Method::GET, "/status", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&d, Some(("ana", "ana-new")), Method::GET, "/status", None).await.0,
        StatusCode::OK
    );
    ok(&d, ADMIN, Method::DELETE, &format!("{AUTHN}/users/ana"), None).await;
    assert_eq!(
        call(&d, Some(("ana", "ana-new")), Method::GET, "/status", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Druid's messages for what does not exist, in the older routes' `{"error": ...}` shape.
    let (s, v) = call(&d, ADMIN, Method::DELETE, &format!("{AUTHN}/users/nobody"), None).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "User [nobody] does not exist."})
        )
    );
    let (s, v) = call(
        &d,
        ADMIN,
        Method::GET,
        "/druid-ext/basic-security/authentication/db/other/users",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "Basic authenticator with name [other] does not exist.");
    let bad = json!([{"resource": {"name": "wiki(", "type": "DATASOURCE"}, "action": "READ"}]);
    let (s, v) = call(
        &d,
        ADMIN,
        Method::POST,
        &format!("{AUTHZ}/roles/wiki-rw/permissions"),
        Some(&bad),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    d.node.stop().await;
}

/// ana may read and write `wiki` and read the cluster's state; bob has no role.
async fn add_ana_and_bob(d: &SingleNode) {
    // ana may read and write `wiki` and read the cluster's state; bob has no role.
    for (user, pw) in [("ana", "ana-pw"), ("bob", "bob-pw")] {
        ok(d, ADMIN, Method::POST, &format!("{AUTHN}/users/{user}"), None).await;
        let body = json!({"password": pw});
        ok(
            d,
            ADMIN,
            Method::POST,
            &format!("{AUTHN}/users/{user}/credentials"),
            Some(body),
        )
        .await;
        ok(d, ADMIN, Method::POST, &format!("{AUTHZ}/users/{user}"), None).await;
    }
    ok(d, ADMIN, Method::POST, &format!("{AUTHZ}/roles/wiki-rw"), None).await;
    let permissions = json!([
        {"resource": {"name": "wiki", "type": "DATASOURCE"}, "action": "READ"},
        {"resource": {"name": "wiki", "type": "DATASOURCE"}, "action": "WRITE"},
        {"resource": {"name": ".*", "type": "STATE"}, "action": "READ"},
    ]);
    ok(
        d,
        ADMIN,
        Method::POST,
        &format!("{AUTHZ}/roles/wiki-rw/permissions"),
        Some(permissions),
    )
    .await;
    ok(
        d,
        ADMIN,
        Method::POST,
        &format!("{AUTHZ}/users/ana/roles/wiki-rw"),
        None,
    )
    .await;
    let v = ok(d, ADMIN, Method::GET, &format!("{AUTHN}/users/ana"), None).await;
    assert_eq!(v["credentials"]["iterations"], 10_000, "{v}");
    assert!(
        !v.to_string().contains("ana-pw"),
        "a password is never stored or shown: {v}"
    );
}

/// A node with users on, once the leader has created the admin user.
async fn start_with_users() -> SingleNode {
    let d = SingleNode::start_with(|cfg| cfg.auth = AuthSettings::basic(ADMIN_PW)).await;
    wait_for("the admin user", Duration::from_secs(20), || async {
        (call(&d, ADMIN, Method::GET, "/status", None).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    d
}

/// Every operation of `/openapi.json` answers by its rule: 401 without credentials (or with a
/// user's where only the cluster secret or a task token is taken), 403 for a user without the
/// permission, and serves one who has it; a refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_openapi_document_refuses_or_serves_by_its_rule() {
    use raftlord::api::auth::{policy, Need};
    let d = start_with_users().await;
    add_ana_and_bob(&d).await;
    let task = json!({"type": "noop", "id": "t-wiki", "dataSource": "wiki"});
    ok(&d, ADMIN, Method::POST, "/druid/indexer/v1/task", Some(task)).await;
    let (s, doc) = call(&d, None, Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (template, item) in paths {
        let path = template
            .replace("{id}", "t-wiki")
            .replace("{ds}", "wiki")
            .replace("{host}", "h:1")
            .replace("{authenticator}", "basic")
            .replace("{authorizer}", "basic")
            .replace("{user}", "zed")
            .replace("{role}", "zed-role");
        for (method, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = op.get("requestBody").map(|_| json!({}));
            let need = policy(&method, template);
            operations += 1;
            let refused = |who: Who, want: StatusCode| {
                let (method, path, body) = (method.clone(), path.clone(), body.clone());
                let d = &d;
                async move {
                    let before = stored(d).await;
                    let (s, v) = call(d, who, method.clone(), &path, body.as_ref()).await;
                    assert_eq!(s, want, "{method} {path} as {who:?}: {v}");
                    assert_eq!(stored(d).await, before, "{method} {path}: a refusal changed the state");
                }
            };
            let served = |who: Who| {
                let (method, path, body) = (method.clone(), path.clone(), body.clone());
                let d = &d;
                async move {
                    let (s, v) = call(d, who, method.clone(), &path, body.as_ref()).await;
                    assert!(
                        s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                        "{method} {path} as {who:?}: {s} {v}"
                    );
                }
            };
            match need {
                Need::Open => served(None).await,
                Need::OwnCheck => {
                    refused(None, StatusCode::UNAUTHORIZED).await;
                    refused(ADMIN, StatusCode::UNAUTHORIZED).await;
                    let before = stored(&d).await;
                    let r = d
                        .client
                        .request(method.clone(), format!("{}{path}", d.url))
                        .bearer_auth("wrong");
                    let r = r.send().await.unwrap();
                    assert_eq!(
                        r.status(),
                        StatusCode::UNAUTHORIZED,
                        "{method} {path} with a wrong secret"
                    );
                    assert_eq!(stored(&d).await, before);
                }
                Need::Login => {
                    refused(None, StatusCode::UNAUTHORIZED).await;
                    served(BOB).await;
                    served(ADMIN).await;
                }
                Need::Permission(..) => {
                    refused(None, StatusCode::UNAUTHORIZED).await;
                    refused(BOB, StatusCode::FORBIDDEN).await;
                    served(ADMIN).await;
                }
            }
        }
    }
    assert!(operations >= 80, "the document lists {operations} operations");
    d.node.stop().await;
}

fn write_days(dir: &std::path::Path, days: u32) {
    for day in 1..=days {
        let rows: String = (0..24)
            .map(|h| format!("{{\"time\":\"2024-05-{day:02}T{h:02}:00:00Z\",\"page\":\"p{h}\",\"added\":1}}\n"))
            .collect();
        std::fs::write(dir.join(format!("day{day}.json")), rows).unwrap();
    }
}

/// A three-node cluster with auth on: a server refuses to start without the admin password,
/// any node serves a logged-in client (followers forward instead of redirecting, which would
/// drop the credentials), and a parallel task's peons submit and follow their sub-tasks with
/// their task tokens.
#[test]
fn a_cluster_with_auth_serves_through_any_node_and_its_peons_use_task_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let refused = std::process::Command::new(raftlord_bin())
        .args([
            "server",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "1=http://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RAFTLORD_CLUSTER_SECRET", SECRET)
        .env_remove("RAFTLORD_AUTH")
        .env_remove("RAFTLORD_INITIAL_ADMIN_PASSWORD")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("--initial-admin-password") && err.contains("--auth none"),
        "{err}"
    );

    let deep = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    write_days(input.path(), 3);
    let deep_flag = deep.path().display().to_string();
    let cluster = ThreeNodes::start_with_env(
        &["--worker-capacity", "2", "--deep-storage", &deep_flag],
        &[
            ("RAFTLORD_AUTH", "basic"),
            ("RAFTLORD_INITIAL_ADMIN_PASSWORD", ADMIN_PW),
        ],
    );
    let urls = cluster.urls();
    let client = http_no_redirect();
    let leader = wait_for_blocking("a leader", Duration::from_secs(30), || {
        urls.iter().find(|u| {
            client
                .get(format!("{u}/druid/indexer/v1/isLeader"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        })
    })
    .clone();
    let follower = urls.iter().find(|u| **u != leader).unwrap().clone();
    let as_admin = |r: reqwest::blocking::RequestBuilder| r.basic_auth("admin", Some(ADMIN_PW));

    // Without credentials, a follower refuses as the leader would; a worker's own task list,
    // logs and reports need the cluster secret.
    let r = client.get(format!("{follower}/druid/indexer/v1/tasks")).send().unwrap();
    assert_eq!(r.status(), 401);
    let worker_tasks = format!("{follower}/druid/worker/v1/tasks");
    assert_eq!(client.get(&worker_tasks).send().unwrap().status(), 401);
    let r = client.get(&worker_tasks).bearer_auth(SECRET).send().unwrap();
    assert_eq!(r.status(), 200);

    let task = json!({
        "type": "index_parallel", "id": "auth-par",
        "spec": {
            "dataSchema": {
                "dataSource": "wiki",
                "timestampSpec": {"column": "time", "format": "iso"},
                "dimensionsSpec": {"dimensions": ["page"]},
                "metricsSpec": [{"type": "count", "name": "count"}, {"type": "longSum", "name": "added", "fieldName": "added"}],
                "granularitySpec": {"segmentGranularity": "DAY", "queryGranularity": "HOUR", "rollup": true}
            },
            "ioConfig": {"type": "index_parallel", "inputSource": {"type": "local", "baseDir": input.path(), "filter": "*.json"},
                         "inputFormat": {"type": "json"}},
            "tuningConfig": {"type": "index_parallel", "maxNumConcurrentSubTasks": 3,
                             "splitHintSpec": {"type": "maxSize", "maxSplitSize": 1}}
        }
    });
    // The admin user appears once the leader has created it; the follower forwards.
    let submitted = wait_for_blocking("the submission through a follower", Duration::from_secs(30), || {
        let r = as_admin(client.post(format!("{follower}/druid/indexer/v1/task")))
            .json(&task)
            .send()
            .ok()?;
        (r.status() != 401 && r.status() != 503).then(|| (r.status(), r.text().unwrap_or_default()))
    });
    assert_eq!(submitted.0, 200, "{}", submitted.1);
    let status = wait_for_blocking("the parallel task to finish", Duration::from_secs(120), || {
        let r = as_admin(client.get(format!("{follower}/druid/indexer/v1/task/auth-par/status")))
            .send()
            .ok()?;
        let v: Value = r.json().ok()?;
        let code = v["status"]["statusCode"].as_str()?.to_string();
        (code != "RUNNING").then_some(v["status"].clone())
    });
    assert_eq!(status["statusCode"], "SUCCESS", "{status}");
    let r = as_admin(client.get(format!(
        "{follower}/druid/coordinator/v1/metadata/datasources/wiki/segments"
    )))
    .send()
    .unwrap();
    assert_eq!(r.status(), 200);
    let segments: Value = r.json().unwrap();
    assert_eq!(
        segments.as_array().map(Vec::len),
        Some(3),
        "one segment per day: {segments}"
    );
    let report: Value = as_admin(client.get(format!("{leader}/druid/indexer/v1/task/auth-par/reports")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["parallelIndexProgress"]["payload"]["succeeded"], 3, "{report}");

    // The command line logs in from a credentials file or from --user and RAFTLORD_PASSWORD.
    let creds = dir.path().join("creds");
    std::fs::write(&creds, format!("admin:{ADMIN_PW}\n")).unwrap();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(raftlord_bin())
            .args(["task", "status", "auth-par", "--url", &follower])
            .args(args)
            .env_remove("RAFTLORD_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = cli(&["--credentials-file", creds.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
    let out = cli(&["--user", "admin"], &[("RAFTLORD_PASSWORD", ADMIN_PW)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&[], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
