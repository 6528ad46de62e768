//! `raftlord cluster ...` and `raftlord task ...`: HTTP clients that follow redirects to the
//! leader and print the JSON they get back.

use std::io::Read;
use std::time::Duration;

use reqwest::{Client, RequestBuilder};

use super::{ClusterCommand, SegmentsCommand, TaskCommand};
use crate::api::status_url;

/// An HTTP client that sends the credentials of `url` (if any) with every request.
fn client(url: &super::UrlArg) -> anyhow::Result<Client> {
    if let Some(ca) = &url.tls_ca {
        raftlord_raft::tls::trust(ca).map_err(anyhow::Error::msg)?;
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some((user, password)) = url.credentials()? {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {token}"))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(raftlord_raft::tls::client_builder()
        .timeout(Duration::from_secs(120))
        .default_headers(headers)
        .build()?)
}

/// How long the CLI keeps retrying while the cluster answers 503 (no leader yet).
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Sends the request (again after `Retry-After` while the cluster has no leader), prints the
/// body, and turns a non-2xx answer into exit code 1.
async fn send(req: RequestBuilder) -> anyhow::Result<i32> {
    let deadline = std::time::Instant::now() + RETRY_FOR;
    let resp = loop {
        let attempt = req
            .try_clone()
            .ok_or_else(|| anyhow::anyhow!("request cannot be retried"))?;
        let resp = attempt.send().await?;
        if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            break resp;
        }
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(1);
        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
    };
    let status = resp.status();
    let text = resp.text().await?;
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(0)
    } else {
        eprintln!("HTTP {status}: {pretty}");
        Ok(1)
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

pub async fn cluster(cmd: ClusterCommand) -> anyhow::Result<i32> {
    let url = match &cmd {
        ClusterCommand::Status(u)
        | ClusterCommand::AddNode { url: u, .. }
        | ClusterCommand::RemoveNode { url: u, .. } => u,
    };
    let c = client(url)?;
    match cmd {
        ClusterCommand::Status(u) => send(c.get(status_url(&u.url))).await,
        ClusterCommand::AddNode {
            url,
            node_id,
            node_url,
            cluster_secret,
        } => {
            let leader = leader_of(&c, &url.url).await?;
            let body = serde_json::json!({ "node_id": node_id, "url": node_url.trim_end_matches('/') });
            send(
                c.post(format!("{}/internal/cluster/add-node", base(&leader)))
                    .bearer_auth(cluster_secret)
                    .json(&body),
            )
            .await
        }
        ClusterCommand::RemoveNode {
            url,
            node_id,
            cluster_secret,
        } => {
            let leader = leader_of(&c, &url.url).await?;
            let body = serde_json::json!({ "node_id": node_id });
            send(
                c.post(format!("{}/internal/cluster/remove-node", base(&leader)))
                    .bearer_auth(cluster_secret)
                    .json(&body),
            )
            .await
        }
    }
}

/// The leader's URL, as the node at `url` knows it.
async fn leader_of(c: &Client, url: &str) -> anyhow::Result<String> {
    let v: serde_json::Value = c.get(status_url(url)).send().await?.json().await?;
    v["leader_url"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the cluster has no leader right now; try again shortly"))
}

pub async fn task(cmd: TaskCommand) -> anyhow::Result<i32> {
    let url = match &cmd {
        TaskCommand::Submit { url, .. }
        | TaskCommand::Status { url, .. }
        | TaskCommand::List { url, .. }
        | TaskCommand::Shutdown { url, .. } => url,
    };
    let c = client(url)?;
    match cmd {
        TaskCommand::Submit { file, url, wait } => {
            let mut body = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut body)?;
            } else {
                body = std::fs::read(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            }
            let req = c
                .post(format!("{}/druid/indexer/v1/task", base(&url.url)))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            if !wait {
                return send(req).await;
            }
            let resp = req.send().await?;
            let status = resp.status();
            let v: serde_json::Value = resp.json().await.unwrap_or_default();
            let Some(id) = v["task"].as_str().filter(|_| status.is_success()) else {
                eprintln!("HTTP {status}: {v}");
                return Ok(1);
            };
            println!("submitted {id}");
            super::watch::wait_for_task(&c, base(&url.url), id).await
        }
        TaskCommand::Status { id, url } => {
            send(c.get(format!(
                "{}/druid/indexer/v1/task/{}/status",
                base(&url.url),
                encode(&id)
            )))
            .await
        }
        TaskCommand::List { state, datasource, url } => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(("state", s));
            }
            if let Some(d) = datasource {
                query.push(("datasource", d));
            }
            send(
                c.get(format!("{}/druid/indexer/v1/tasks", base(&url.url)))
                    .query(&query),
            )
            .await
        }
        TaskCommand::Shutdown { id, url } => {
            send(c.post(format!(
                "{}/druid/indexer/v1/task/{}/shutdown",
                base(&url.url),
                encode(&id)
            )))
            .await
        }
    }
}

/// Percent-encodes a path segment.
pub(super) fn encode(segment: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("static URL");
    url.path_segments_mut().expect("base URL").push(segment);
    url.path().trim_start_matches('/').to_string()
}

pub async fn segments(cmd: SegmentsCommand) -> anyhow::Result<i32> {
    let SegmentsCommand::List { url, .. } = &cmd;
    let c = client(url)?;
    match cmd {
        SegmentsCommand::List { datasource, url } => super::watch::list_segments(&c, base(&url.url), &datasource).await,
    }
}
