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

/// Prints a line to standard output, ignoring a closed one: whoever started bootstrap may stop
/// reading once the cluster is up (`raftlord bootstrap | head`), and the cluster must still run
/// and stop cleanly.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use super::BootstrapArgs;

pub async fn run(args: BootstrapArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    // Refuse before starting anything when auth is neither set up nor turned off.
    let auth = args.node.auth.settings(false)?;
    std::fs::create_dir_all(&args.data_dir)?;
    let secret = secret_in(&args.data_dir)?;
    // Every node reads finished tasks' logs from one shared directory.
    let mut node_args = args.node.clone();
    if node_args.task_log_dir.is_none() {
        node_args.task_log_dir = Some(args.data_dir.join("task-logs"));
    }
    // And every node's peons push segments to one deep storage.
    if node_args.deep_storage.is_none() {
        node_args.deep_storage = Some(args.data_dir.join("deep-storage").display().to_string());
    }
    if args.tls && node_args.tls.tls_cert.is_none() {
        let ca = super::local_ca::make(&args.data_dir.join("tls"), &[&args.host])?;
        node_args.tls.tls_cert = Some(std::path::absolute(&ca.cert)?);
        node_args.tls.tls_key = Some(std::path::absolute(&ca.key)?);
        node_args.tls.tls_ca = Some(std::path::absolute(&ca.ca)?);
    }
    if let Some(ca) = &node_args.tls.tls_ca {
        raftlord_raft::tls::trust(ca).map_err(anyhow::Error::msg)?;
    }
    let scheme = if node_args.tls.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let node_flags = node_args.to_flags();
    let peers: BTreeMap<u64, String> = (1..=args.nodes)
        .map(|id| {
            (
                id,
                format!("{scheme}://{}:{}", args.host, args.base_port as u64 + id - 1),
            )
        })
        .collect();
    let peer_list = peers
        .iter()
        .map(|(id, url)| format!("{id}={url}"))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe()?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    for (id, url) in &peers {
        let listen = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest).to_string();
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--node-id", &id.to_string(), "--listen", &listen, "--peers", &peer_list])
            .arg("--data-dir")
            .arg(args.data_dir.join(format!("node-{id}")))
            .args(node_flags.clone())
            .env("RAFTLORD_CLUSTER_SECRET", &secret)
            .env(
                "RAFTLORD_INITIAL_ADMIN_PASSWORD",
                auth.initial_admin_password.as_deref().unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // If this process dies without stopping them (SIGKILL), the nodes get SIGTERM.
        // SAFETY: the closure only makes one async-signal-safe system call.
        unsafe {
            command.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from));
        }
        let child = command.spawn()?;
        children.push((*id, child));
    }

    let client = raftlord_raft::tls::client_builder()
        .timeout(Duration::from_secs(2))
        .build()?;
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
            say!("raftlord cluster of {} nodes is up; leader is node {l}", args.nodes);
            for (id, url) in &peers {
                say!("  node {id}: {url}");
            }
            say!("cluster secret: {}", args.data_dir.join("cluster-secret").display());
            if let Some(ca) = &node_args.tls.tls_ca {
                say!("TLS: clients trust {} (--tls-ca, or curl --cacert)", ca.display());
            }
            if auth.enabled {
                say!("auth: on; log in as 'admin' with the initial admin password");
            } else {
                say!("auth: off (--auth none)");
            }
            say!("Ctrl-C stops all nodes.");
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

/// The node that answers `isLeader` with 200: elected and ready to serve Druid's API.
async fn find_leader(client: &reqwest::Client, peers: &BTreeMap<u64, String>) -> Option<u64> {
    for (id, url) in peers {
        let is_leader = format!("{}/druid/indexer/v1/isLeader", url.trim_end_matches('/'));
        if let Ok(resp) = client.get(is_leader).send().await {
            if resp.status().is_success() {
                return Some(*id);
            }
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
            Ok(_) => say!("node {id} stopped"),
            Err(_) => {
                let _ = child.kill().await;
                say!("node {id} killed after 10 s");
            }
        }
    }
}
