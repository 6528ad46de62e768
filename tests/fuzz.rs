//! Schema-driven fuzzing of every route in `/openapi.json` with schemathesis (from PyPI): a
//! bounded number of generated requests per operation, as the admin of a node with users on.
//! No answer may be a 5xx or take longer than the request timeout, every 4xx carries a reason
//! in Druid's error shape (`tests/fuzz_hooks.py`), and the node stops cleanly and serves again
//! after a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const PASSWORD: &str = "fuzz-admin";

fn logged_in_status(url: &str) -> Option<u16> {
    http()
        .get(format!("{url}/status"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .ok()
        .map(|r| r.status().as_u16())
}

#[test]
fn fuzzing_every_route_gets_no_server_error_and_druid_shaped_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let flags = ["--initial-admin-password", PASSWORD, "--worker-capacity", "1"];
    let mut node = spawn_dev(dir.path(), port, &flags);
    let url = node.url.clone();
    wait_for_blocking("the admin user", Duration::from_secs(30), || {
        (logged_in_status(&url) == Some(200)).then_some(())
    });

    let counts = dir.path().join("status-counts.json");
    let hooks_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let credentials = base64_basic("admin", PASSWORD);
    let mut fuzz = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run", &format!("{url}/openapi.json")])
        .args(["--header", &format!("Authorization: Basic {credentials}")])
        .args(["--checks", "not_a_server_error,druid_error_shape"])
        .args(["--max-examples", "10", "--seed", "7"])
        .args(["--request-timeout", "20", "--max-response-time", "20"])
        .env("SCHEMATHESIS_HOOKS", "fuzz_hooks")
        .env("PYTHONPATH", hooks_dir)
        .env("RAFTLORD_FUZZ_COUNTS", &counts)
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 -m schemathesis.cli (scripts/ensure-deps.sh installs schemathesis)");
    let status = wait_for_blocking("the fuzz run", Duration::from_secs(600), || fuzz.try_wait().unwrap());
    let out = fuzz.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(&counts).unwrap()).unwrap();
    let total: u64 = counts.values().sum();
    eprintln!("fuzz: {total} responses by status: {counts:?}");
    assert!(total >= 500, "too few cases ran: {counts:?}\n{stdout}");
    assert!(counts.keys().all(|s| !s.starts_with('5')), "server errors: {counts:?}");
    assert!(counts.keys().any(|s| s.starts_with('2')) && counts.keys().any(|s| s.starts_with('4')));

    // The node stops cleanly and serves again after a restart, with its users.
    assert!(
        terminate(&mut node).success(),
        "the node did not stop cleanly after the fuzz run"
    );
    let node = spawn_dev(dir.path(), port, &flags);
    wait_for_blocking("the restarted node", Duration::from_secs(30), || {
        (logged_in_status(&node.url) == Some(200)).then_some(())
    });
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
