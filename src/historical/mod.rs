//! The Historical: a node that keeps a local cache of segments and loads and drops them as the
//! Coordinator asks.
//!
//! Like the worker ([`crate::worker`]), it is two level-triggered loops against the replicated
//! state:
//!
//! - **sync**: long-polls the leader for the segments to load and to drop ([`protocol`]);
//!   fetches each load from deep storage into the cache (a few at a time), deletes each drop;
//! - **report**: sends every outcome not yet stored (loaded, failed with the reason, dropped) to
//!   the leader whenever there is one and at least every heartbeat interval (the heartbeat).
//!   On start, and whenever the leader had lost this Historical, the report is *full*: every
//!   segment found intact in the cache, so that a restart downloads nothing it already has.
//!
//! Its own routes ([`http`]) show each segment's state and answer Druid's
//! `/druid/historical/v1/loadstatus` and `/readiness`.
//!
//! - [`cache`]: the segment cache on disk;
//! - [`protocol`]: the wire shapes and the leader's handlers;
//! - [`http`]: the Historical's routes.

pub mod cache;
pub mod http;
pub mod protocol;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::coordinator::load::{Historical, Outcome, ReplicaReport, SegmentRef};
use crate::worker::protocol::LeaderClient;
use crate::worker::{urlencode, WorkerTiming};
use cache::SegmentCache;
use protocol::{HistoricalReport, ReportAnswer, SyncView, ToLoad};

/// Segments fetched at once (Druid's `druid.segmentCache.numLoadingThreads`).
const LOADING_THREADS: usize = 4;

/// How soon a failed sync or report is tried again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// One segment's state on this Historical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Local {
    Loading,
    Loaded,
    /// `stored_at`: the applied index at which the leader stored the failure, once it has.
    Failed {
        reason: String,
        #[serde(skip)]
        stored_at: Option<u64>,
    },
    Dropping,
}

#[derive(Default)]
struct Shared {
    segments: BTreeMap<SegmentRef, (Local, u64)>,
    /// Outcomes not yet stored by the leader (the latest per segment).
    pending: BTreeMap<SegmentRef, Outcome>,
    /// The next report must list everything the cache holds.
    full: bool,
}

/// A running Historical.
#[derive(Clone)]
pub struct HistoricalService {
    pub server: Historical,
    cache: SegmentCache,
    client: Arc<LeaderClient>,
    timing: WorkerTiming,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    initialized: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
}

impl HistoricalService {
    /// A Historical serving the segments `found` intact in `cache`.
    pub fn new(
        server: Historical,
        cache: SegmentCache,
        found: Vec<(SegmentRef, u64)>,
        client: LeaderClient,
        timing: WorkerTiming,
    ) -> Self {
        let segments = found.into_iter().map(|(s, size)| (s, (Local::Loaded, size))).collect();
        HistoricalService {
            server,
            cache,
            client: Arc::new(client),
            timing,
            shared: Arc::new(Mutex::new(Shared {
                segments,
                pending: BTreeMap::new(),
                full: true,
            })),
            changed: Arc::new(Notify::new()),
            initialized: Arc::new(AtomicBool::new(false)),
            permits: Arc::new(Semaphore::new(LOADING_THREADS)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the first full report of the cache was stored (Druid's "cache initialized").
    pub fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Relaxed)
    }

    /// Every segment this Historical knows, with its state and size.
    pub fn segments(&self) -> Vec<(SegmentRef, Local, u64)> {
        self.lock()
            .segments
            .iter()
            .map(|(s, (l, size))| (s.clone(), l.clone(), *size))
            .collect()
    }

    /// Bytes of the segments served.
    pub fn served_bytes(&self) -> u64 {
        self.lock()
            .segments
            .values()
            .filter(|(l, _)| *l == Local::Loaded)
            .map(|(_, size)| size)
            .sum()
    }

    pub fn cache(&self) -> &SegmentCache {
        &self.cache
    }

    /// Runs the sync and report loops until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        info!(
            historical = %self.server.host,
            tier = %self.server.tier,
            max_size = self.server.max_size,
            cached = self.lock().segments.len(),
            "historical started"
        );
        let report = tokio::spawn(self.clone().report_loop(cancel.clone()));
        self.sync_loop(cancel).await;
        let _ = report.await;
    }

    async fn sync_loop(self, cancel: CancellationToken) {
        let mut hash = 0u64;
        loop {
            // Nothing is loaded or dropped before the leader knows what the cache holds.
            if !self.initialized() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.changed.notified() => {}
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                continue;
            }
            let path = format!(
                "/internal/historicals/sync?host={}&hash={hash}&timeout={}",
                urlencode(&self.server.host),
                self.timing.sync_timeout.as_millis()
            );
            let Some(result) = self
                .client
                .long_poll::<SyncView>(&path, self.timing.sync_timeout, &cancel)
                .await
            else {
                return;
            };
            match result {
                Ok(view) => {
                    hash = view.hash;
                    if view.registered {
                        self.apply_view(view);
                    } else {
                        self.lock().full = true;
                        self.changed.notify_one();
                    }
                }
                Err(e) => {
                    debug!(error = %e, "historical sync failed; retrying");
                    hash = 0;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }

    /// Starts the loads and drops the view asks for.
    fn apply_view(&self, view: SyncView) {
        let mut g = self.lock();
        for seg in view.drop {
            match g.segments.get(&seg).map(|(l, _)| l.clone()) {
                Some(Local::Loading | Local::Dropping) => {}
                Some(_) => {
                    if let Some(e) = g.segments.get_mut(&seg) {
                        e.0 = Local::Dropping;
                    }
                    self.spawn_drop(seg);
                }
                None => {
                    g.pending.insert(seg, Outcome::Dropped);
                    self.changed.notify_one();
                }
            }
        }
        for l in view.load {
            match g.segments.get(&l.segment).map(|(l, _)| l.clone()) {
                None => {}
                Some(Local::Failed {
                    stored_at: Some(at), ..
                }) if view.index >= at => {}
                Some(Local::Loaded) => {
                    if !g.pending.contains_key(&l.segment) {
                        g.pending.insert(l.segment.clone(), Outcome::Loaded);
                        self.changed.notify_one();
                    }
                    continue;
                }
                Some(_) => continue,
            }
            g.segments.insert(l.segment.clone(), (Local::Loading, l.size));
            self.spawn_load(l);
        }
    }

    fn spawn_load(&self, l: ToLoad) {
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_permit) = this.permits.clone().acquire_owned().await else {
                return;
            };
            let cache = this.cache.clone();
            let seg = l.segment.clone();
            let result = tokio::task::spawn_blocking(move || {
                let spec: serde_json::Value =
                    serde_json::from_str(l.load_spec.get()).map_err(|e| format!("unreadable load spec: {e}"))?;
                cache.load(&l.segment, &spec, l.size)
            })
            .await
            .unwrap_or_else(|e| Err(format!("the load panicked: {e}")));
            let mut g = this.lock();
            let size = g.segments.get(&seg).map_or(0, |(_, s)| *s);
            match result {
                Ok(()) => {
                    debug!(segment = %seg.id(), "segment loaded");
                    g.segments.insert(seg.clone(), (Local::Loaded, size));
                    g.pending.insert(seg, Outcome::Loaded);
                }
                Err(reason) => {
                    warn!(segment = %seg.id(), reason = %reason, "segment load failed");
                    g.segments.insert(
                        seg.clone(),
                        (
                            Local::Failed {
                                reason: reason.clone(),
                                stored_at: None,
                            },
                            size,
                        ),
                    );
                    g.pending.insert(seg, Outcome::Failed { reason });
                }
            }
            drop(g);
            this.changed.notify_one();
        });
    }

    fn spawn_drop(&self, seg: SegmentRef) {
        let this = self.clone();
        tokio::spawn(async move {
            let cache = this.cache.clone();
            let s = seg.clone();
            let result = tokio::task::spawn_blocking(move || cache.drop_segment(&s))
                .await
                .unwrap_or_else(|e| Err(format!("the drop panicked: {e}")));
            let mut g = this.lock();
            match result {
                Ok(()) => {
                    debug!(segment = %seg.id(), "segment dropped");
                    g.segments.remove(&seg);
                    g.pending.insert(seg, Outcome::Dropped);
                }
                Err(e) => {
                    // Still served; the next view asks again.
                    warn!(segment = %seg.id(), error = %e, "segment drop failed");
                    if let Some(entry) = g.segments.get_mut(&seg) {
                        entry.0 = Local::Loaded;
                    }
                }
            }
            drop(g);
            this.changed.notify_one();
        });
    }

    async fn report_loop(self, cancel: CancellationToken) {
        loop {
            let mut wait = self.timing.heartbeat;
            let (reports, full) = {
                let g = self.lock();
                let mut reports: Vec<ReplicaReport> = g
                    .pending
                    .iter()
                    .map(|(s, o)| ReplicaReport {
                        segment: s.clone(),
                        outcome: o.clone(),
                    })
                    .collect();
                if g.full {
                    reports.extend(
                        g.segments
                            .iter()
                            .filter(|(s, (l, _))| *l == Local::Loaded && !g.pending.contains_key(*s))
                            .map(|(s, _)| ReplicaReport {
                                segment: s.clone(),
                                outcome: Outcome::Loaded,
                            }),
                    );
                }
                (reports, g.full)
            };
            let body = HistoricalReport {
                server: self.server.clone(),
                reports,
                full,
            };
            match serde_json::to_vec(&body) {
                Ok(bytes) => match self
                    .client
                    .call::<ReportAnswer>("/internal/historicals/report", Some(&bytes), Duration::from_secs(15))
                    .await
                {
                    Ok(answer) => {
                        let mut g = self.lock();
                        for r in &body.reports {
                            if g.pending.get(&r.segment) == Some(&r.outcome) {
                                g.pending.remove(&r.segment);
                            }
                            if let Some((
                                Local::Failed {
                                    stored_at: at @ None, ..
                                },
                                _,
                            )) = g.segments.get_mut(&r.segment)
                            {
                                *at = Some(answer.index);
                            }
                        }
                        if answer.full_needed {
                            g.full = true;
                            wait = RETRY_AFTER;
                        } else if full {
                            g.full = false;
                            drop(g);
                            if !self.initialized.swap(true, Ordering::Relaxed) {
                                info!(historical = %self.server.host, "segment cache announced to the leader");
                            }
                            self.changed.notify_one();
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "historical report failed; retrying");
                        wait = wait.min(RETRY_AFTER);
                    }
                },
                Err(e) => warn!(error = %e, "cannot encode the historical report"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
