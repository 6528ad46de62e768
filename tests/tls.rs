//! A three-node cluster over HTTPS (`--tls-cert`, `--tls-key`, `--tls-ca`): it forms, serves
//! clients that trust its CA, fails over to a new leader, answers nothing to plain HTTP, and a
//! node with TLS on refuses a plain-HTTP peer.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn client(ca: &std::path::Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn leader(c: &reqwest::blocking::Client, urls: &[String]) -> Option<String> {
    urls.iter()
        .find(|u| {
            c.get(format!("{u}/druid/indexer/v1/isLeader"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        })
        .cloned()
}

/// Waits until `follower` names `leader` as the leader. A follower learns of a new leader from
/// its first heartbeat and until then answers 503 ("retry shortly"), so requests that must be
/// redirected are sent once it knows.
fn wait_follower_knows(c: &reqwest::blocking::Client, follower: &str, leader: &str) {
    wait_for_blocking("the follower to know the leader", Duration::from_secs(30), || {
        c.get(format!("{follower}/druid/indexer/v1/leader"))
            .send()
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|r| r.text().ok())
            .filter(|t| t == leader)
    });
}

#[test]
fn a_tls_cluster_forms_fails_over_and_refuses_plain_http() {
    let certs = tempfile::tempdir().unwrap();
    let ca = raftlord::cli::local_ca::make(certs.path(), &[]).unwrap();
    let tls_flags: Vec<String> = vec![
        format!("--tls-cert={}", ca.cert.display()),
        format!("--tls-key={}", ca.key.display()),
        format!("--tls-ca={}", ca.ca.display()),
    ];
    let flags: Vec<&str> = tls_flags.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().unwrap();

    // A plain-HTTP peer is refused before anything starts.
    let mut refused = spawn_server(
        1,
        free_port(),
        "1=https://127.0.0.1:1,2=http://127.0.0.1:2",
        dir.path(),
        &flags,
    );
    let status = refused.child.wait().unwrap();
    assert!(!status.success(), "a TLS node must refuse an http:// peer");

    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=https://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| {
            let mut p = spawn_server(
                i as u64 + 1,
                ports[i],
                &peers,
                &dir.path().join(format!("n{i}")),
                &[&flags[..], &["--worker-capacity", "0"]].concat(),
            );
            p.url = format!("https://127.0.0.1:{}", ports[i]);
            p
        })
        .collect();
    let urls: Vec<String> = procs.iter().map(|p| p.url.clone()).collect();
    let c = client(&ca.ca);
    let first = wait_for_blocking("a leader over HTTPS", Duration::from_secs(30), || leader(&c, &urls));

    // A client that trusts the CA is served by any node (a follower redirects to the leader's
    // https:// URL).
    let follower = urls.iter().find(|u| **u != first).unwrap();
    wait_follower_knows(&c, follower, &first);
    let r = c
        .post(format!("{follower}/druid/indexer/v1/task"))
        .json(&json!({"type": "noop", "id": "tls-1"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap_or_default());

    // Plain HTTP gets no HTTP answer, and a client that does not trust the CA is refused.
    let plain = first.replacen("https://", "http://", 1);
    assert!(
        http().get(format!("{plain}/status")).send().is_err(),
        "plain HTTP must get no answer"
    );
    assert!(
        http().get(format!("{first}/status")).send().is_err(),
        "an untrusted certificate must fail"
    );

    // Kill the leader: the others elect a new one over HTTPS and keep serving.
    let index = urls.iter().position(|u| *u == first).unwrap();
    procs[index].child.kill().unwrap();
    procs[index].child.wait().unwrap();
    let rest: Vec<String> = urls.iter().filter(|u| **u != first).cloned().collect();
    let second = wait_for_blocking("a new leader over HTTPS", Duration::from_secs(30), || leader(&c, &rest));
    assert_ne!(second, first);
    let status = wait_for_blocking("the task stored before the failover", Duration::from_secs(30), || {
        let r = c
            .get(format!("{second}/druid/indexer/v1/task/tls-1/status"))
            .send()
            .ok()?;
        (r.status() == 200).then_some(r.status())
    });
    assert_eq!(status, 200);
    let r = c
        .post(format!("{second}/druid/indexer/v1/task"))
        .json(&json!({"type": "noop", "id": "tls-2"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `bootstrap --tls` makes a throwaway CA in DATA_DIR/tls and starts every node on HTTPS with
/// it; a client that trusts `ca.pem` is served through any node. Without a password or
/// `--auth none`, bootstrap refuses to start anything.
#[test]
fn bootstrap_tls_makes_a_local_ca_and_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let refused = std::process::Command::new(raftlord_bin())
        .args(["bootstrap", "--nodes", "1"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("RAFTLORD_AUTH")
        .env_remove("RAFTLORD_INITIAL_ADMIN_PASSWORD")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--auth none"));

    let (mut proc, urls) = spawn_bootstrap(dir.path(), &["--tls", "--auth", "none"]);
    assert_eq!(urls.len(), 3, "{urls:?}");
    assert!(urls.iter().all(|u| u.starts_with("https://")), "{urls:?}");
    let c = client(&dir.path().join("tls").join("ca.pem"));
    let first = wait_for_blocking("a leader over HTTPS", Duration::from_secs(30), || leader(&c, &urls));
    let follower = urls.iter().find(|u| **u != first).unwrap();
    wait_follower_knows(&c, follower, &first);
    let r = c
        .post(format!("{follower}/druid/indexer/v1/task"))
        .json(&json!({"type": "noop", "id": "boot-tls"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(terminate(&mut proc).success());
}
