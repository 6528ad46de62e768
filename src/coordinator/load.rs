//! Historicals and the segments each is asked to serve, as replicated state.
//!
//! A Historical registers through a Raft command (on its first report) and is afterwards
//! *serving* or *lost* (stopped heartbeating: its replicas are forgotten, and the next
//! historical-management run loads them elsewhere). Each Historical holds one [`Replica`]
//! entry per segment it is asked to hold or to let go of:
//!
//! ```text
//!   (plan) --load--> Load --report loaded--> Loaded --(plan) drop--> Drop --report dropped--> (gone)
//!                     |                                               ^
//!                     +--report failed--> Failed --(plan) retry/drop--+
//! ```
//!
//! The Coordinator's decisions (`PlanReplicas`) and the Historicals' outcomes
//! (`ReportReplicas`) are both commands, so a new leader knows every load in flight and every
//! segment served without asking anyone: a leader change causes no reload, no drop and no wait.
//! Heartbeats stay out of Raft, as a worker's do.

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::segments::{SegmentKey, SegmentTable};

/// One segment of one datasource; ordered by datasource, then as [`SegmentKey`], which is the
/// order the segment table iterates in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "(Arc<str>, SegmentKey)", from = "(Arc<str>, SegmentKey)")]
pub struct SegmentRef {
    pub datasource: Arc<str>,
    pub key: SegmentKey,
}

impl From<SegmentRef> for (Arc<str>, SegmentKey) {
    fn from(r: SegmentRef) -> Self {
        (r.datasource, r.key)
    }
}

impl From<(Arc<str>, SegmentKey)> for SegmentRef {
    fn from((datasource, key): (Arc<str>, SegmentKey)) -> Self {
        SegmentRef { datasource, key }
    }
}

impl SegmentRef {
    /// Druid's segment id.
    pub fn id(&self) -> String {
        self.key.id(&self.datasource)
    }
}

/// A Historical's identity, tier and cache size. `host` is `host:port` and is its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Historical {
    pub scheme: String,
    pub host: String,
    pub tier: String,
    /// Bytes of segments its cache may hold (`--max-segment-cache-size`).
    pub max_size: u64,
}

impl Historical {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// Why the identity cannot be stored, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.host.is_empty() || self.host.len() > 512 || self.host.chars().any(char::is_control) {
            return Err("a historical needs a host:port of at most 512 characters".into());
        }
        if !(self.scheme == "http" || self.scheme == "https") {
            return Err(format!("historical scheme [{}]: expected http or https", self.scheme));
        }
        if self.tier.is_empty() || self.tier.len() > 255 || self.tier.chars().any(char::is_control) {
            return Err("a historical's tier must be 1 to 255 characters with no control characters".into());
        }
        Ok(())
    }
}

/// One segment on one Historical, as the Coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "s", rename_all = "camelCase")]
pub enum Replica {
    /// Asked to load; `moved_from` names the Historical it replaces once loaded (a balancing
    /// move).
    Load {
        #[serde(rename = "t")]
        since_ms: u64,
        #[serde(rename = "z")]
        size: u64,
        #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
        moved_from: Option<String>,
    },
    /// Served; `moved_from` as in `Load`, until the replica it replaces is dropped.
    Loaded {
        #[serde(rename = "t")]
        since_ms: u64,
        #[serde(rename = "z")]
        size: u64,
        #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
        moved_from: Option<String>,
    },
    /// The Historical could not load it, and said why.
    Failed {
        #[serde(rename = "t")]
        since_ms: u64,
        #[serde(rename = "r")]
        reason: String,
    },
    /// Asked to drop; gone once the Historical says so.
    Drop {
        #[serde(rename = "t")]
        since_ms: u64,
        #[serde(rename = "z")]
        size: u64,
    },
}

impl Replica {
    /// Bytes this replica takes (or is about to take) in the cache.
    pub fn size(&self) -> u64 {
        match self {
            Replica::Load { size, .. } | Replica::Loaded { size, .. } | Replica::Drop { size, .. } => *size,
            Replica::Failed { .. } => 0,
        }
    }

    /// Druid's name for the state.
    pub fn state(&self) -> &'static str {
        match self {
            Replica::Load { .. } => "LOADING",
            Replica::Loaded { .. } => "LOADED",
            Replica::Failed { .. } => "FAILED",
            Replica::Drop { .. } => "DROPPING",
        }
    }

    /// The Historical should hold (or be fetching) the segment.
    pub fn wanted(&self) -> bool {
        matches!(self, Replica::Load { .. } | Replica::Loaded { .. })
    }
}

/// One Historical as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoricalRecord {
    pub server: Historical,
    /// Stopped heartbeating; its replicas were forgotten. Registering again clears it.
    pub lost: bool,
    pub registered_ms: u64,
    #[serde(with = "crate::segments::pairs")]
    replicas: OrdMap<SegmentRef, Replica>,
    /// Replicas loading, loaded, failed and dropping, in that order.
    counts: [u64; 4],
    /// Their bytes, in the same order.
    bytes: [u64; 4],
}

impl HistoricalRecord {
    fn new(server: Historical, time_ms: u64) -> Self {
        HistoricalRecord {
            server,
            lost: false,
            registered_ms: time_ms,
            replicas: OrdMap::new(),
            counts: [0; 4],
            bytes: [0; 4],
        }
    }

    pub fn replicas(&self) -> &OrdMap<SegmentRef, Replica> {
        &self.replicas
    }

    pub fn replica(&self, segment: &SegmentRef) -> Option<&Replica> {
        self.replicas.get(segment)
    }

    /// Bytes loading, loaded or dropping: what the cache holds once loads in flight are done
    /// and before drops in flight are.
    pub fn committed_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1] + self.bytes[3]
    }

    /// Bytes loading or loaded: what the cache holds once everything in flight is done.
    pub fn held_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }

    /// Bytes served now.
    pub fn loaded_bytes(&self) -> u64 {
        self.bytes[1]
    }

    /// Bytes still free once every load in flight is done.
    pub fn free_bytes(&self) -> u64 {
        self.server.max_size.saturating_sub(self.committed_bytes())
    }

    pub fn loading(&self) -> u64 {
        self.counts[0]
    }
    pub fn loaded(&self) -> u64 {
        self.counts[1]
    }
    pub fn failed(&self) -> u64 {
        self.counts[2]
    }
    pub fn dropping(&self) -> u64 {
        self.counts[3]
    }

    fn slot(r: &Replica) -> usize {
        match r {
            Replica::Load { .. } => 0,
            Replica::Loaded { .. } => 1,
            Replica::Failed { .. } => 2,
            Replica::Drop { .. } => 3,
        }
    }

    /// The segment with the text it shares made shared: its datasource name with this
    /// Historical's other replicas of the datasource, its version with the segment table's key.
    /// One copy of each instead of one per replica (the planner then also compares names by
    /// pointer).
    fn canonical(&self, segment: SegmentRef, segments: &SegmentTable) -> SegmentRef {
        let lo = SegmentRef {
            datasource: segment.datasource.clone(),
            key: SegmentKey {
                start: i64::MIN,
                end: i64::MIN,
                version: "".into(),
                partition: 0,
            },
        };
        let datasource = self
            .replicas
            .range(lo..)
            .next()
            .map(|(r, _)| r.datasource.clone())
            .filter(|d| *d == segment.datasource)
            .unwrap_or(segment.datasource);
        let key = segments
            .datasource(&datasource)
            .and_then(|d| d.get_key_value(&segment.key))
            .map(|(k, _)| k.clone())
            .unwrap_or(segment.key);
        SegmentRef { datasource, key }
    }

    /// Sets (or with `None`, removes) a replica, keeping the byte and state counts.
    fn set(&mut self, segment: SegmentRef, replica: Option<Replica>) {
        let old = match replica {
            Some(r) => {
                self.bytes[Self::slot(&r)] += r.size();
                self.counts[Self::slot(&r)] += 1;
                self.replicas.insert(segment, r)
            }
            None => self.replicas.remove(&segment),
        };
        if let Some(o) = old {
            self.bytes[Self::slot(&o)] -= o.size();
            self.counts[Self::slot(&o)] -= 1;
        }
    }
}

/// A load the Coordinator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadRequest {
    pub host: String,
    pub segment: SegmentRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
}

/// A drop the Coordinator asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropRequest {
    pub host: String,
    pub segment: SegmentRef,
}

/// What a Historical says about one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Outcome {
    /// It serves the segment.
    Loaded,
    /// It could not load it.
    Failed { reason: String },
    /// It no longer holds it.
    Dropped,
}

/// One outcome in a [`crate::sm::Command::ReportReplicas`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    pub segment: SegmentRef,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What a `PlanReplicas` command did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanApplied {
    pub loads: usize,
    pub drops: usize,
    /// Requests that no longer made sense when applied (server lost or full, segment gone).
    pub refused: usize,
}

/// Every Historical, by host.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadTable {
    servers: OrdMap<String, HistoricalRecord>,
}

impl LoadTable {
    pub fn get(&self, host: &str) -> Option<&HistoricalRecord> {
        self.servers.get(host)
    }

    /// Every Historical ever registered, lost ones included, by host.
    pub fn all(&self) -> impl Iterator<Item = &HistoricalRecord> {
        self.servers.values()
    }

    /// The Historicals that serve (not lost).
    pub fn serving(&self) -> impl Iterator<Item = &HistoricalRecord> {
        self.servers.values().filter(|s| !s.lost)
    }

    /// A Historical joined, came back, or changed its tier or size. Returns whether anything
    /// changed.
    pub fn apply_register(&mut self, time_ms: u64, server: Historical) -> bool {
        match self.servers.get_mut(&server.host) {
            Some(rec) if !rec.lost && rec.server == server => false,
            Some(rec) => {
                rec.server = server;
                if rec.lost {
                    rec.lost = false;
                    rec.registered_ms = time_ms;
                }
                true
            }
            None => {
                let host = server.host.clone();
                self.servers.insert(host, HistoricalRecord::new(server, time_ms));
                true
            }
        }
    }

    /// A Historical stopped heartbeating: forget its replicas. `None` when it is unknown or
    /// already lost; else how many replicas it had.
    pub fn apply_lost(&mut self, host: &str) -> Option<usize> {
        let rec = self.servers.get_mut(host).filter(|r| !r.lost)?;
        let n = rec.replicas.len();
        rec.lost = true;
        rec.replicas = OrdMap::new();
        rec.counts = [0; 4];
        rec.bytes = [0; 4];
        Some(n)
    }

    /// Forgets a lost Historical entirely (Druid forgets servers that left).
    pub fn apply_forget(&mut self, host: &str) -> bool {
        if self.servers.get(host).is_some_and(|r| r.lost) {
            self.servers.remove(host);
            true
        } else {
            false
        }
    }

    /// The Coordinator's decisions, each checked again: a load needs a serving Historical
    /// without the segment (or with it failed or dropping), room in its cache, and a used
    /// segment; a drop needs a replica.
    pub fn apply_plan(
        &mut self,
        time_ms: u64,
        segments: &SegmentTable,
        loads: &[LoadRequest],
        drops: &[DropRequest],
    ) -> PlanApplied {
        let mut done = PlanApplied::default();
        for d in drops {
            let Some(rec) = self.servers.get_mut(&d.host).filter(|r| !r.lost) else {
                done.refused += 1;
                continue;
            };
            match rec.replicas.get(&d.segment) {
                Some(Replica::Load { size, .. } | Replica::Loaded { size, .. }) => {
                    let size = *size;
                    rec.set(
                        d.segment.clone(),
                        Some(Replica::Drop {
                            since_ms: time_ms,
                            size,
                        }),
                    );
                    done.drops += 1;
                    self.finish_moves(&d.host, &d.segment);
                }
                Some(Replica::Failed { .. }) => {
                    rec.set(d.segment.clone(), None);
                    done.drops += 1;
                }
                _ => done.refused += 1,
            }
        }
        for l in loads {
            let size = segments
                .datasource(&l.segment.datasource)
                .and_then(|d| d.get(&l.segment.key))
                .filter(|s| s.used)
                .map(|s| s.size);
            let Some(size) = size else {
                done.refused += 1;
                continue;
            };
            let Some(rec) = self.servers.get_mut(&l.host).filter(|r| !r.lost) else {
                done.refused += 1;
                continue;
            };
            let held = match rec.replicas.get(&l.segment) {
                None | Some(Replica::Failed { .. }) => 0,
                // Taking back a drop not yet done: the file may still be there.
                Some(Replica::Drop { size, .. }) => *size,
                Some(_) => {
                    done.refused += 1;
                    continue;
                }
            };
            if rec.free_bytes() + held < size {
                done.refused += 1;
                continue;
            }
            let moved_from = l.moved_from.clone().filter(|m| *m != l.host);
            let segment = rec.canonical(l.segment.clone(), segments);
            rec.set(
                segment,
                Some(Replica::Load {
                    since_ms: time_ms,
                    size,
                    moved_from,
                }),
            );
            done.loads += 1;
        }
        done
    }

    /// The replica on `from` is going: a move that replaced it is done.
    fn finish_moves(&mut self, from: &str, segment: &SegmentRef) {
        let movers: Vec<String> = self
            .servers
            .iter()
            .filter(|(_, r)| {
                matches!(r.replicas.get(segment), Some(Replica::Loaded { moved_from: Some(m), .. }) if m == from)
            })
            .map(|(h, _)| h.clone())
            .collect();
        for h in movers {
            if let Some(rec) = self.servers.get_mut(&h) {
                if let Some(Replica::Loaded { since_ms, size, .. }) = rec.replicas.get(segment).cloned() {
                    rec.set(
                        segment.clone(),
                        Some(Replica::Loaded {
                            since_ms,
                            size,
                            moved_from: None,
                        }),
                    );
                }
            }
        }
    }

    /// A Historical's outcomes. With `full`, `reports` is everything it holds: a replica the
    /// state counts as loaded and the report does not list goes back to loading. A loaded
    /// segment the state did not ask for is adopted when it is used and fits (a Historical
    /// restarted with its cache); else it is asked to drop it. Returns how many replicas
    /// changed.
    pub fn apply_report(
        &mut self,
        time_ms: u64,
        segments: &SegmentTable,
        host: &str,
        reports: &[ReplicaReport],
        full: bool,
    ) -> usize {
        let Some(rec) = self.servers.get_mut(host).filter(|r| !r.lost) else {
            return 0;
        };
        let mut changed = 0;
        for r in reports {
            let now = match (&r.outcome, rec.replicas.get(&r.segment)) {
                (Outcome::Loaded, Some(Replica::Loaded { .. } | Replica::Drop { .. })) => continue,
                (Outcome::Loaded, Some(Replica::Load { size, moved_from, .. })) => Some(Replica::Loaded {
                    since_ms: time_ms,
                    size: *size,
                    moved_from: moved_from.clone(),
                }),
                (Outcome::Loaded, Some(Replica::Failed { .. }) | None) => {
                    let size = segments
                        .datasource(&r.segment.datasource)
                        .and_then(|d| d.get(&r.segment.key))
                        .filter(|s| s.used)
                        .map(|s| s.size);
                    match size {
                        Some(size) if rec.free_bytes() >= size => Some(Replica::Loaded {
                            since_ms: time_ms,
                            size,
                            moved_from: None,
                        }),
                        _ => Some(Replica::Drop {
                            since_ms: time_ms,
                            size: size.unwrap_or(0),
                        }),
                    }
                }
                (Outcome::Failed { reason }, Some(Replica::Load { .. })) => Some(Replica::Failed {
                    since_ms: time_ms,
                    reason: reason.chars().take(2000).collect(),
                }),
                (Outcome::Dropped, Some(Replica::Drop { .. })) => None,
                (Outcome::Dropped, Some(Replica::Loaded { size, .. })) => Some(Replica::Load {
                    since_ms: time_ms,
                    size: *size,
                    moved_from: None,
                }),
                _ => continue,
            };
            let segment = rec.canonical(r.segment.clone(), segments);
            rec.set(segment, now);
            changed += 1;
        }
        if full {
            let listed: std::collections::HashSet<&SegmentRef> = reports.iter().map(|r| &r.segment).collect();
            let stale: Vec<(SegmentRef, u64)> = rec
                .replicas
                .iter()
                .filter_map(|(s, r)| match r {
                    Replica::Loaded { size, .. } if !listed.contains(s) => Some((s.clone(), *size)),
                    _ => None,
                })
                .collect();
            for (s, size) in stale {
                rec.set(
                    s,
                    Some(Replica::Load {
                        since_ms: time_ms,
                        size,
                        moved_from: None,
                    }),
                );
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests;
