//! `raftlord bootstrap`: a local cluster of node processes, one command.
//!
//! Starts N `raftlord server` children with the same peer list and a shared secret (kept in
//! `DIR/cluster-secret`, so running the command again restarts the same cluster), waits until
//! they elect a leader, prints their URLs, and on Ctrl-C or SIGTERM stops them all.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::serve::{secret_in, wait_for_stop_signal};
use super::BootstrapArgs;
use crate::api::status_url;

pub async fn run(args: BootstrapArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    std::fs::create_dir_all(&args.data_dir)?;
    let secret = secret_in(&args.data_dir)?;
    let peers: BTreeMap<u64, String> = (1..=args.nodes)
        .map(|id| (id, format!("http://{}:{}", args.host, args.base_port as u64 + id - 1)))
        .collect();
    let peer_list = peers
        .iter()
        .map(|(id, url)| format!("{id}={url}"))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe()?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    for (id, url) in &peers {
        let listen = url.trim_start_matches("http://").to_string();
        let child = Command::new(&exe)
            .arg("server")
            .args(["--node-id", &id.to_string(), "--listen", &listen, "--peers", &peer_list])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node-{id}")))
            .args(["--heartbeat-ms", &args.node.heartbeat_ms.to_string()])
            .args(["--election-timeout-ms", &args.node.election_timeout_ms.to_string()])
            .args(["--snapshot-every", &args.node.snapshot_every.to_string()])
            .args([
                "--max-task-payload-bytes",
                &args.node.max_task_payload_bytes.to_string(),
            ])
            .args(
                args.node
                    .max_active_tasks
                    .map(|m| vec!["--max-active-tasks".to_string(), m.to_string()])
                    .unwrap_or_default(),
            )
            .env("RAFTLORD_CLUSTER_SECRET", &secret)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        children.push((*id, child));
    }

    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(l) = find_leader(&client, &peers).await {
            break Some(l);
        }
        if Instant::now() > deadline || children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(Some(_)))) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match &leader {
        Some(l) => {
            println!("raftlord cluster of {} nodes is up; leader is node {l}", args.nodes);
            for (id, url) in &peers {
                println!("  node {id}: {url}");
            }
            println!("cluster secret: {}", args.data_dir.join("cluster-secret").display());
            println!("Ctrl-C stops all nodes.");
        }
        None => eprintln!("raftlord: the cluster did not elect a leader within 60 s; stopping the nodes"),
    }
    if leader.is_some() {
        tokio::select! {
            _ = wait_for_stop_signal() => {}
            _ = wait_any_exit(&mut children) => eprintln!("raftlord: a node exited; stopping the others"),
        }
    }
    stop_all(&mut children).await;
    Ok(if leader.is_some() { 0 } else { 1 })
}

async fn find_leader(client: &reqwest::Client, peers: &BTreeMap<u64, String>) -> Option<u64> {
    for url in peers.values() {
        let Ok(resp) = client.get(status_url(url)).send().await else {
            continue;
        };
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        if let Some(leader) = v["leader"].as_u64() {
            return Some(leader);
        }
    }
    None
}

async fn wait_any_exit(children: &mut [(u64, Child)]) {
    loop {
        if children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(Some(_)))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM every child, wait for orderly exits, SIGKILL stragglers after 10 s.
async fn stop_all(children: &mut [(u64, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for (id, child) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => println!("node {id} stopped"),
            Err(_) => {
                let _ = child.kill().await;
                println!("node {id} killed after 10 s");
            }
        }
    }
}
