//! The benchmark scenarios and their closed-loop load generator.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::cluster::{poll, rss_mib, status, Etcd, Raftlord};

/// Size of each written value (a task spec, or an etcd value), in bytes.
const VALUE_BYTES: usize = 256;

struct Stats {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<10} {:>9.0} writes/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors in {:.1} s)",
            self.rate(),
            self.pct(0.50),
            self.pct(0.99),
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs `clients` closed loops for `duration` (or until `total` successes); `op(client, n)`
/// performs one write and says whether it succeeded.
async fn closed_loop<F, Fut>(clients: usize, duration: Duration, total: Option<u64>, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for c in 0..clients {
        let (op, done) = (op.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut n) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline && total.is_none_or(|t| done.load(Ordering::Relaxed) < t) {
                let t0 = Instant::now();
                if op(c, n).await {
                    lat.push(t0.elapsed().as_micros() as u64);
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
                n += 1;
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await.expect("load task");
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Stats {
        ok: latencies_us.len() as u64,
        errors,
        elapsed,
        latencies_us,
    }
}

fn task_body(id: &str) -> String {
    let base = json!({"type": "noop", "id": id, "dataSource": "bench", "context": {"pad": ""}}).to_string();
    let pad = "x".repeat(VALUE_BYTES.saturating_sub(base.len()));
    json!({"type": "noop", "id": id, "dataSource": "bench", "context": {"pad": pad}}).to_string()
}

fn http_client() -> reqwest::Client {
    load_client(reqwest::Client::builder())
}

fn load_client(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// One write: POST `body` as JSON; true when the answer is 200.
async fn post_json(client: reqwest::Client, url: String, body: String) -> bool {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    matches!(r, Ok(r) if r.status() == 200)
}

async fn raftlord_load(leader_url: String, clients: usize, duration: Duration, total: Option<u64>, tag: &str) -> Stats {
    raftlord_load_with(http_client(), leader_url, clients, duration, total, tag).await
}

async fn raftlord_load_with(
    client: reqwest::Client,
    leader_url: String,
    clients: usize,
    duration: Duration,
    total: Option<u64>,
    tag: &str,
) -> Stats {
    let tag = tag.to_string();
    closed_loop(clients, duration, total, move |c, n| {
        let (client, url) = (client.clone(), format!("{leader_url}/druid/indexer/v1/task"));
        let body = task_body(&format!("{tag}-c{c}-{n}"));
        post_json(client, url, body)
    })
    .await
}

/// The client URL of etcd's current leader.
async fn etcd_leader(etcd: &Etcd) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    for url in &etcd.client_urls {
        let v: serde_json::Value = client
            .post(format!("{url}/v3/maintenance/status"))
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?;
        if v["leader"] == v["header"]["member_id"] {
            return Ok(url.clone());
        }
    }
    anyhow::bail!("etcd reports no leader")
}

async fn etcd_load(url: String, clients: usize, duration: Duration) -> Stats {
    let client = http_client();
    let b64 = base64::engine::general_purpose::STANDARD;
    let value = b64.encode("x".repeat(VALUE_BYTES));
    closed_loop(clients, duration, None, move |c, n| {
        let (client, url) = (client.clone(), format!("{url}/v3/kv/put"));
        let body = json!({"key": b64.encode(format!("bench-c{c}-{n}")), "value": value}).to_string();
        post_json(client, url, body)
    })
    .await
}

/// Submissions/s with users and HTTPS on against both off, on fresh three-node clusters
/// alternated `rounds` times; every request of the secured run carries HTTP Basic credentials
/// of a user checked against its role (not the admin), over TLS.
pub async fn secure(bin: &Path, clients: usize, seconds: u64, rounds: usize, tls: bool) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    let name = if tls { "auth+tls" } else { "auth" };
    println!("3 nodes on loopback, fsync on, {clients} concurrent clients, {VALUE_BYTES}-byte task specs, {seconds} s per run");
    println!("the two runs of a round alternate in order (odd rounds: off first), so drift of the machine within a round favours neither");
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let dir = tempfile::tempdir()?;
        let (off, on) = if round % 2 == 1 {
            let off = plain_run(bin, dir.path(), clients, duration).await?;
            println!("round {round}: {}", off.line("off"));
            let on = secured_run(bin, dir.path(), clients, duration, tls).await?;
            println!("round {round}: {}", on.line(name));
            (off, on)
        } else {
            let on = secured_run(bin, dir.path(), clients, duration, tls).await?;
            println!("round {round}: {}", on.line(name));
            let off = plain_run(bin, dir.path(), clients, duration).await?;
            println!("round {round}: {}", off.line("off"));
            (off, on)
        };
        ratios.push(on.rate() / off.rate());
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio {name}/off writes/s: median {:.2}x (rounds: {})",
        ratios[ratios.len() / 2],
        shown.join(", ")
    );
    Ok(())
}

/// One measured run against a three-node cluster with auth and TLS off.
async fn plain_run(bin: &Path, dir: &Path, clients: usize, duration: Duration) -> anyhow::Result<Stats> {
    let mut plain = Raftlord::start(bin, &dir.join("plain"), 3).await?;
    let leader = plain.wait_leader(Duration::from_secs(30)).await?;
    raftlord_load(
        plain.urls[&leader].clone(),
        clients,
        Duration::from_secs(2),
        None,
        "warm",
    )
    .await;
    let off = raftlord_load(plain.urls[&leader].clone(), clients, duration, None, "run").await;
    plain.stop_all().await;
    Ok(off)
}

/// One measured run against a three-node cluster with auth on (and TLS when `tls`), logged in
/// as a user whose permission is checked on every submission.
async fn secured_run(bin: &Path, dir: &Path, clients: usize, duration: Duration, tls: bool) -> anyhow::Result<Stats> {
    let ca = raftlord::cli::local_ca::make(&dir.join("tls"), &[])?;
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&ca.ca)?)?;
    let mut flags = vec![
        "--worker-capacity=0".to_string(),
        "--auth=basic".to_string(),
        "--initial-admin-password=bench-admin".to_string(),
    ];
    if tls {
        flags.push(format!("--tls-cert={}", ca.cert.display()));
        flags.push(format!("--tls-key={}", ca.key.display()));
        flags.push(format!("--tls-ca={}", ca.ca.display()));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut secured = Raftlord::start_with_ca(bin, &dir.join("secured"), 3, &flags, tls.then_some(cert)).await?;
    let leader = secured.wait_leader(Duration::from_secs(30)).await?;
    let url = secured.urls[&leader].clone();
    add_bench_user(&secured, &url).await?;
    let headers = {
        let mut h = reqwest::header::HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode("bench:bench-pw");
        h.insert(reqwest::header::AUTHORIZATION, format!("Basic {token}").parse()?);
        h
    };
    let client = load_client(secured.client_builder().default_headers(headers));
    raftlord_load_with(
        client.clone(),
        url.clone(),
        clients,
        Duration::from_secs(2),
        None,
        "warm",
    )
    .await;
    let on = raftlord_load_with(client, url, clients, duration, None, "run").await;
    secured.stop_all().await;
    Ok(on)
}

/// Creates the user `bench` (password `bench-pw`) with WRITE on the datasource `bench`.
async fn add_bench_user(cluster: &Raftlord, url: &str) -> anyhow::Result<()> {
    let admin = cluster.client_builder().build()?;
    let authn = format!("{url}/druid-ext/basic-security/authentication/db/basic");
    let authz = format!("{url}/druid-ext/basic-security/authorization/db/basic");
    let permissions = json!([{"resource": {"name": "bench", "type": "DATASOURCE"}, "action": "WRITE"}]);
    let steps = [
        (format!("{authn}/users/bench"), None),
        (
            format!("{authn}/users/bench/credentials"),
            Some(json!({"password": "bench-pw"})),
        ),
        (format!("{authz}/users/bench"), None),
        (format!("{authz}/roles/bench-writer"), None),
        (format!("{authz}/roles/bench-writer/permissions"), Some(permissions)),
        (format!("{authz}/users/bench/roles/bench-writer"), None),
    ];
    for (step, body) in steps {
        // The leader creates the admin user just after it is elected: retry until it exists.
        poll(&format!("POST {step}"), Duration::from_secs(30), || {
            let mut r = admin.post(&step).basic_auth("admin", Some("bench-admin"));
            if let Some(b) = &body {
                r = r.json(b);
            }
            async move { r.send().await.ok().filter(|r| r.status().is_success()) }
        })
        .await?;
    }
    Ok(())
}

/// Alternates raftlord and etcd `rounds` times (fresh clusters each time, so neither gains from
/// running second on a warm disk) and reports every round and the median ratio.
pub async fn submit(
    bin: &Path,
    clients: usize,
    seconds: u64,
    etcd: Option<String>,
    rounds: usize,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(seconds);
    println!(
        "3 nodes on loopback, fsync on, {clients} concurrent clients, {VALUE_BYTES}-byte values, {seconds} s per run"
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds.max(1) {
        let dir = tempfile::tempdir()?;
        let mut rl = Raftlord::start(bin, dir.path(), 3).await?;
        let leader = rl.wait_leader(Duration::from_secs(30)).await?;
        // Warm up connections and caches.
        raftlord_load(rl.urls[&leader].clone(), clients, Duration::from_secs(2), None, "warm").await;
        let probe = http_client();
        let term = |v: Option<serde_json::Value>| v.and_then(|v| v["term"].as_u64());
        let term_before = term(status(&probe, &rl.urls[&leader]).await);
        let ours = raftlord_load(rl.urls[&leader].clone(), clients, duration, None, "run").await;
        let term_after = term(status(&probe, &rl.urls[&leader]).await);
        rl.stop_all().await;
        println!("round {round}: {}", ours.line("raftlord"));
        match (term_before, term_after) {
            (Some(a), Some(b)) => println!(
                "round {round}: elections during the loaded run: {}",
                b.saturating_sub(a)
            ),
            _ => println!("round {round}: elections during the loaded run: unknown (no term from the leader)"),
        }
        if let Some(etcd_bin) = &etcd {
            let e = Etcd::start(etcd_bin, dir.path()).await?;
            let url = etcd_leader(&e).await?;
            etcd_load(url.clone(), clients, Duration::from_secs(2)).await;
            let theirs = etcd_load(url, clients, duration).await;
            e.stop().await;
            println!("round {round}: {}", theirs.line("etcd"));
            ratios.push(ours.rate() / theirs.rate());
        }
    }
    if !ratios.is_empty() {
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio raftlord/etcd writes/s: median {:.2}x (rounds: {})",
            ratios[ratios.len() / 2],
            shown.join(", ")
        );
    }
    Ok(())
}

pub async fn restart(bin: &Path, tasks: usize, clients: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut rl = Raftlord::start(bin, dir.path(), 3).await?;
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let fill = raftlord_load(
        rl.urls[&leader].clone(),
        clients,
        Duration::from_secs(3600),
        Some(tasks as u64),
        "fill",
    )
    .await;
    println!("stored {} tasks: {}", fill.ok, fill.line("fill"));
    let rss_before: Vec<String> = rl
        .urls
        .keys()
        .filter_map(|id| rl.pid(*id).and_then(rss_mib).map(|m| format!("node {id} {m:.0} MiB")))
        .collect();
    println!("resident memory before restart: {}", rss_before.join(", "));
    rl.stop_all().await;
    let size = dir_size(dir.path());
    println!("data on disk: {:.0} MiB for 3 nodes", size as f64 / (1 << 20) as f64);

    let started = Instant::now();
    for id in 1..=3 {
        rl.spawn(id)?;
    }
    let client = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let probe = "fill-c0-0";
    // Each try writes a new task: a write that landed while the read failed must not turn
    // every later try into a duplicate.
    let (client_ref, rl_ref) = (&client, &rl);
    let mut attempt = 0u32;
    poll("serving after the restart", Duration::from_secs(120), || {
        attempt += 1;
        let id = format!("after-restart-{attempt}");
        async move {
            let leader = rl_ref.wait_leader(Duration::from_secs(60)).await.ok()?;
            let url = &rl_ref.urls[&leader];
            let read = client_ref
                .get(format!("{url}/druid/indexer/v1/task/{probe}/status"))
                .send()
                .await
                .ok()?;
            let write = client_ref
                .post(format!("{url}/druid/indexer/v1/task"))
                .body(task_body(&id))
                .send()
                .await
                .ok()?;
            (read.status() == 200 && write.status() == 200).then_some(())
        }
    })
    .await?;
    println!(
        "restart to serving (read of an old task and a new write acknowledged): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let leader = rl.wait_leader(Duration::from_secs(10)).await?;
    let status: serde_json::Value = client
        .get(format!("{}/status", rl.urls[&leader]))
        .send()
        .await?
        .json()
        .await?;
    println!("tasks after restart: {}", status["tasks"]["total"]);
    let rss_after: Vec<String> = rl
        .urls
        .keys()
        .filter_map(|id| rl.pid(*id).and_then(rss_mib).map(|m| format!("node {id} {m:.0} MiB")))
        .collect();
    println!("resident memory after restart: {}", rss_after.join(", "));
    rl.stop_all().await;
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            total += if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// Polls a task's status until `runnerStatusCode` is RUNNING (or it completed); returns when.
async fn wait_running(client: &reqwest::Client, url: &str, id: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = client
            .get(format!("{url}/druid/indexer/v1/task/{id}/status"))
            .send()
            .await?
            .json()
            .await?;
        let s = &v["status"];
        if s["runnerStatusCode"] == "RUNNING" || s["statusCode"] != "RUNNING" {
            anyhow::ensure!(s["statusCode"] != "FAILED", "task {id} failed: {}", s["errorMsg"]);
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "task {id} did not start within 30 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub async fn tasks(
    bin: &Path,
    samples: usize,
    total: usize,
    slots: u32,
    run_time_ms: u64,
    clients: usize,
    node_flags: &[String],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let slots_arg = format!("--worker-capacity={slots}");
    let mut flags: Vec<&str> = vec![&slots_arg];
    flags.extend(node_flags.iter().map(String::as_str));
    let mut rl = Raftlord::start_with(bin, dir.path(), 3, &flags).await?;
    let leader = rl.wait_leader(Duration::from_secs(30)).await?;
    let url = rl.urls[&leader].clone();
    let client = http_client();
    // All three workers registered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w: Vec<serde_json::Value> = client
            .get(format!("{url}/druid/indexer/v1/workers"))
            .send()
            .await?
            .json()
            .await?;
        if w.len() == 3 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "workers did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. Latency with free slots: one task at a time, each long enough to be seen RUNNING.
    let mut lat = Vec::new();
    for i in 0..samples {
        let id = format!("latency-{i}");
        let body = json!({"type": "noop", "id": id, "runTime": 50}).to_string();
        let t0 = Instant::now();
        anyhow::ensure!(
            post_json(client.clone(), format!("{url}/druid/indexer/v1/task"), body).await,
            "submit failed"
        );
        let running = wait_running(&client, &url, &id).await?;
        lat.push(running - t0);
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "submit -> RUNNING over {samples} tasks (free slots): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(lat[lat.len() / 2]),
        ms(lat[((lat.len() as f64 - 1.0) * 0.99).round() as usize]),
        ms(*lat.last().unwrap())
    );

    // 2. A batch of noop tasks through 3 workers x `slots` slots, to all SUCCESS.
    let started = Instant::now();
    let submitted = closed_loop(clients, Duration::from_secs(3600), Some(total as u64), {
        let (client, url) = (client.clone(), url.clone());
        move |c, n| {
            let body = json!({"type": "noop", "id": format!("batch-c{c}-{n}"), "runTime": run_time_ms}).to_string();
            post_json(client.clone(), format!("{url}/druid/indexer/v1/task"), body)
        }
    })
    .await;
    println!(
        "submitted {} tasks in {:.2} s ({} errors)",
        submitted.ok,
        submitted.elapsed.as_secs_f64(),
        submitted.errors
    );
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let v: serde_json::Value = client.get(format!("{url}/status")).send().await?.json().await?;
        if v["tasks"]["active"] == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "tasks did not finish: {}", v["tasks"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let done: Vec<serde_json::Value> = client
        .get(format!("{url}/druid/indexer/v1/tasks?state=complete&datasource=none"))
        .send()
        .await?
        .json()
        .await?;
    let batch = done
        .iter()
        .filter(|t| t["id"].as_str().is_some_and(|i| i.starts_with("batch-")));
    let (mut succeeded, mut failed) = (0, 0);
    for t in batch {
        if t["statusCode"] == "SUCCESS" {
            succeeded += 1;
        } else {
            failed += 1;
        }
    }
    let n = succeeded + failed;
    println!(
        "{n} noop tasks (runTime {run_time_ms} ms) on 3 workers x {slots} slots: all done in {:.2} s \
         ({succeeded} SUCCESS, {failed} FAILED) = {:.0} tasks/s",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    rl.stop_all().await;
    Ok(())
}
