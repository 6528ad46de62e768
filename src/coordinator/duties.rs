//! The Coordinator's duties as a leader service, and the record of their runs.
//!
//! Historical management runs every `--coordinator-period`, and sooner when the state changes
//! (a publish, a Historical's report, a rule), but never more often than twice the time its
//! last run took, so a big cluster does not plan back to back. A run reads the state (a cheap
//! copy of persistent maps), plans off the async threads ([`super::planner::plan_cached`],
//! keeping the cost profiles of Historicals whose replicas did not change) and proposes the
//! plan: the segments to mark unused, then the loads and drops in commands of at
//! most [`CHUNK`] requests. Everything it decided is in the replicated state once committed,
//! so a new leader's first run starts from exactly where the old one left off.
//!
//! Auto-kill ([`run_kill`]) runs every `--kill-period` when `--kill-unused-segments` is on;
//! auto-compaction ([`run_compaction`]) every `--indexing-period`, for the datasources with a
//! compaction config.
//!
//! [`DutyLog`] keeps each duty's last run (start, duration, counts) for
//! `GET /druid/coordinator/v1/duties`; it lives in the leader's memory only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::kill::{plan_kills, KillSettings};
use super::planner::{plan_until, CostCache};
use crate::clock::{iso, now_ms};
use crate::segments::SegmentFilter;
use crate::sm::Command;
use crate::Raft;

/// Most loads and drops (or segments marked unused) one command carries.
pub const CHUNK: usize = 2_000;

/// The shortest pause between two runs triggered by state changes.
const MIN_GAP: Duration = Duration::from_millis(100);

/// The last run of one duty.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DutyRun {
    pub duty: String,
    pub group: String,
    /// The leader's clock when the run started.
    pub started: String,
    /// When this node's first run of the duty started (since it started or last led).
    #[serde(default)]
    pub first_started: String,
    pub duration_ms: u64,
    pub runs: u64,
    pub stats: serde_json::Value,
    /// Commands the run proposed that did not commit (this node lost leadership, or no quorum).
    pub failed_proposals: u64,
}

/// Every duty's last run, by duty name.
#[derive(Debug, Clone, Default)]
pub struct DutyLog(Arc<Mutex<BTreeMap<String, DutyRun>>>);

impl DutyLog {
    /// Forgets every run: a node that gains leadership starts its record afresh.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn all(&self) -> Vec<DutyRun> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn record(&self, mut run: DutyRun) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        run.runs = g.get(&run.duty).map_or(0, |r| r.runs) + 1;
        run.first_started = g
            .get(&run.duty)
            .map_or_else(|| run.started.clone(), |r| r.first_started.clone());
        g.insert(run.duty.clone(), run);
    }
}

/// Runs `f` on a thread of its own at a lower CPU priority (nice 10): a long plan on a busy
/// machine must not delay this node's Raft heartbeats and votes, or a leader planning a large
/// cluster would lose its leadership to the very load its plan is. `None` if `f` panicked.
async fn in_background<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("coordinator-plan".into())
        .spawn(move || {
            // SAFETY: setpriority only changes a scheduling attribute; on Linux, PRIO_PROCESS
            // with 0 names the calling thread alone. Failing (not permitted) leaves it as is.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

/// Sets its flag when dropped: the plan of a duty that is cancelled or aborted (its node lost
/// leadership) is given up instead of running on unseen.
struct GiveUpOnDrop(Arc<AtomicBool>);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The historical-management duty (Druid's `HistoricalManagementDuties`: rules, load, drop,
/// balance, mark overshadowed and eternity tombstones unused).
pub async fn run(raft: Arc<Raft>, period: Duration, log: DutyLog, cancel: CancellationToken) {
    let mut applied = raft.shared.subscribe();
    let mut last_took = Duration::ZERO;
    // Cost profiles of Historicals whose replicas did not change since the last run.
    let mut cache = CostCache::default();
    loop {
        // Changes from here on (this run's own commands included) wake the next run.
        applied.borrow_and_update();
        let started = Instant::now();
        let started_ms = now_ms();
        let (segments, coordinator) = {
            let g = raft.shared.read().await;
            (g.state.segments.clone(), g.state.coordinator.clone())
        };
        let paused = coordinator.dynamic_config.pause_coordination;
        let planned = if paused {
            None
        } else {
            let mut kept = std::mem::take(&mut cache);
            let stop = Arc::new(AtomicBool::new(false));
            let stop_run = stop.clone();
            let _give_up = GiveUpOnDrop(stop);
            let run = move || {
                plan_until(
                    &segments,
                    &coordinator,
                    &coordinator.load,
                    started_ms as i64,
                    &mut kept,
                    &stop_run,
                )
                .map(|p| (p, kept))
            };
            tokio::select! {
                planned = in_background(run) => planned.flatten().map(|(p, kept)| {
                    cache = kept;
                    p
                }),
                _ = cancel.cancelled() => return,
            }
        };
        let mut failed = 0u64;
        if let Some(p) = planned {
            for (datasource, keys) in &p.unused {
                for chunk in keys.chunks(CHUNK) {
                    let c = Command::MarkSegments {
                        datasource: datasource.clone(),
                        filter: SegmentFilter::Keys { keys: chunk.to_vec() },
                        used: false,
                    };
                    if let Err(e) = raft.proposer.propose(c).await {
                        debug!(error = %e, "marking segments unused was not committed");
                        failed += 1;
                    }
                }
            }
            let mut loads = p.loads.chunks(CHUNK);
            let mut drops = p.drops.chunks(CHUNK);
            loop {
                let (l, d) = (loads.next().unwrap_or(&[]), drops.next().unwrap_or(&[]));
                if l.is_empty() && d.is_empty() {
                    break;
                }
                let c = Command::PlanReplicas {
                    loads: l.to_vec(),
                    drops: d.to_vec(),
                };
                if let Err(e) = raft.proposer.propose(c).await {
                    debug!(error = %e, "loads and drops were not committed");
                    failed += 1;
                }
            }
            if p.stats.unmatched > 0 {
                warn!(
                    segments = p.stats.unmatched,
                    "no rule matched some used segments; they are left as they are"
                );
            }
            if !p.stats.unknown_tiers.is_empty() {
                warn!(tiers = ?p.stats.unknown_tiers, "rules name tiers no Historical serves");
            }
            last_took = started.elapsed();
            if p.stats.assigned + p.stats.dropped + p.stats.moved > 0 {
                info!(
                    assigned = p.stats.assigned,
                    dropped = p.stats.dropped,
                    moved = p.stats.moved,
                    took_ms = last_took.as_millis() as u64,
                    "historical management planned loads and drops"
                );
            }
            log.record(DutyRun {
                duty: "historicalManagement".into(),
                group: "HistoricalManagementDuties".into(),
                started: iso(started_ms),
                duration_ms: last_took.as_millis() as u64,
                first_started: String::new(),
                runs: 0,
                stats: serde_json::to_value(&p.stats).unwrap_or_default(),
                failed_proposals: failed,
            });
        }
        // Wait for the period, or for a change once the minimum gap has passed.
        let gap = (last_took * 2).max(MIN_GAP);
        let next = started + period;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => continue,
            _ = tokio::time::sleep(gap) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next.into()) => {}
            changed = applied.changed() => if changed.is_err() { return },
        }
    }
}

/// Auto-kill (Druid's `KillUnusedSegments` in the indexing-service duties): every
/// `--kill-period`, submits the `kill` tasks [`plan_kills`] decides.
pub async fn run_kill(raft: Arc<Raft>, settings: KillSettings, log: DutyLog, cancel: CancellationToken) {
    loop {
        let started = Instant::now();
        let started_ms = now_ms();
        let state = raft.shared.read().await.state.clone();
        let s = settings.clone();
        let planned = tokio::task::spawn_blocking(move || plan_kills(&state, &s, started_ms)).await;
        if let Ok((tasks, stats)) = planned {
            let specs = tasks.iter().map(|t| (t.datasource.as_str(), t.spec(started_ms)));
            let failed = submit(&raft, specs, started_ms, "auto-kill").await;
            log.record(DutyRun {
                duty: "killUnusedSegments".into(),
                group: "IndexingServiceDuties".into(),
                started: iso(started_ms),
                duration_ms: started.elapsed().as_millis() as u64,
                first_started: String::new(),
                runs: 0,
                stats: serde_json::to_value(&stats).unwrap_or_default(),
                failed_proposals: failed,
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until((started + settings.period).into()) => {}
        }
    }
}

/// Auto-compaction (Druid's `CompactSegments`): every `--indexing-period`, submits the
/// `compact` tasks [`super::autocompact::plan_compactions`] decides.
pub async fn run_compaction(raft: Arc<Raft>, period: Duration, log: DutyLog, cancel: CancellationToken) {
    loop {
        let started = Instant::now();
        let started_ms = now_ms();
        let state = raft.shared.read().await.state.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let tasks = super::autocompact::plan_compactions(&state, started_ms);
            (tasks, super::autocompact::status(&state, None))
        })
        .await;
        if let Ok((tasks, status)) = planned {
            let specs = tasks.iter().map(|t| (t.datasource.as_str(), t.spec.clone()));
            let failed = submit(&raft, specs, started_ms, "auto-compaction").await;
            let awaiting: u64 = status.iter().map(|s| s.interval_count_awaiting_compaction).sum();
            log.record(DutyRun {
                duty: "compactSegments".into(),
                group: "CompactSegmentsDuty".into(),
                started: iso(started_ms),
                duration_ms: started.elapsed().as_millis() as u64,
                first_started: String::new(),
                runs: 0,
                stats: serde_json::json!({"submittedTasks": tasks.len(), "intervalsAwaitingCompaction": awaiting}),
                failed_proposals: failed,
            });
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until((started + period).into()) => {}
        }
    }
}

/// Submits the tasks a duty decided on (`(datasource, spec)`), as a client's submission would
/// be read; returns how many did not commit (or did not read: a bug, logged).
async fn submit<'a>(
    raft: &Raft,
    specs: impl Iterator<Item = (&'a str, serde_json::Value)>,
    now_ms: u64,
    duty: &str,
) -> u64 {
    let mut failed = 0;
    for (datasource, spec) in specs {
        let text = spec.to_string();
        let task = match crate::tasks::spec::parse_submission(text.as_bytes(), now_ms, &mut rand::rng()) {
            Ok(task) => task,
            Err(e) => {
                warn!(%datasource, error = %e, %duty, "a duty built a task that does not read");
                failed += 1;
                continue;
            }
        };
        let (id, kind) = (task.id.clone(), task.task_type.clone());
        let command = Command::SubmitTask {
            task,
            max_active: None,
            idempotency_key: None,
        };
        match raft.proposer.propose(command).await {
            Ok(_) => info!(task_id = %id, %datasource, %duty, "{duty} submitted a {kind} task"),
            Err(e) => {
                debug!(error = %e, %duty, "the task was not committed");
                failed += 1;
            }
        }
    }
    failed
}

/// The id of a task a duty submits: `prefix`, the datasource's name, `suffix`, the name cut
/// short (on a character boundary) where the id would pass Druid's 255 bytes.
pub fn task_id(prefix: &str, datasource: &str, suffix: &str) -> String {
    let room = 255usize.saturating_sub(prefix.len() + suffix.len());
    let mut cut = room.min(datasource.len());
    while !datasource.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{prefix}{}{suffix}", &datasource[..cut])
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_duty_task_id_stays_within_255_bytes_whatever_the_datasource_name() {
        let long = "é".repeat(200);
        let id = super::task_id("coordinator-issued_kill_", &long, "_1700000000000");
        assert!(id.len() <= 255, "{}", id.len());
        assert!(id.starts_with("coordinator-issued_kill_é") && id.ends_with("_1700000000000"));
        assert_eq!(super::task_id("p_", "wiki", "_1"), "p_wiki_1");
    }
}
