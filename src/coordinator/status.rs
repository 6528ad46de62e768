//! Load status: how much of each datasource the Historicals serve, as Druid's
//! `/druid/coordinator/v1/loadstatus` and `/datasources/{ds}/loadstatus` report it.
//!
//! A segment counts when it is used, not overshadowed, not a tombstone, and its first matching
//! rule asks for at least one replica (a load rule with replicas, or a broadcast rule). It is
//! *available* when some Historical serves it; a tier's replicas *left* are what its rule asks
//! for there minus what is loaded there.

use std::collections::BTreeMap;

use super::load::{LoadTable, Replica, SegmentRef};
use super::rules::{first_match, Action};
use super::{CoordinatorState, DEFAULT_RULES};
use crate::interval::Interval;
use crate::segments::segment::ShardKind;
use crate::segments::SegmentTable;

/// One datasource's load status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasourceLoad {
    /// Segments that should be served.
    pub total: u64,
    /// Of those, served by at least one Historical.
    pub available: u64,
    /// Replicas still to load, by tier.
    pub left_by_tier: BTreeMap<String, u64>,
}

impl DatasourceLoad {
    /// Druid's percentage: 100 when nothing is to be served.
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            100.0 * self.available as f64 / self.total as f64
        }
    }
}

/// The load status of every datasource (or of `only`, within `interval`) at leader time `now`.
pub fn load_status(
    segments: &SegmentTable,
    coordinator: &CoordinatorState,
    now: i64,
    only: Option<&str>,
    interval: Option<&Interval>,
) -> BTreeMap<String, DatasourceLoad> {
    let servers: &LoadTable = &coordinator.load;
    let serving: Vec<_> = servers.serving().collect();
    let defaults = coordinator.rules_of(DEFAULT_RULES);
    let mut out = BTreeMap::new();
    for (name, ds) in segments.datasources() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let own = coordinator.rules_of(name);
        let overshadowed = ds.overshadowed();
        let mut status = DatasourceLoad::default();
        let mut any = false;
        for (key, seg) in ds.used() {
            if interval.is_some_and(|iv| !iv.overlaps(&key.interval())) {
                continue;
            }
            any = true;
            if overshadowed.contains(key) || seg.shard_spec.kind == ShardKind::Tombstone {
                continue;
            }
            let targets: BTreeMap<String, u64> =
                match first_match(&own, &defaults, &key.interval(), now).map(|r| r.action()) {
                    Some(Action::Load(tiers)) => tiers
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(t, n)| (t, u64::from(n)))
                        .collect(),
                    Some(Action::Broadcast) => {
                        let mut t = BTreeMap::new();
                        for s in &serving {
                            *t.entry(s.server.tier.clone()).or_default() += 1;
                        }
                        t
                    }
                    Some(Action::Drop) | None => BTreeMap::new(),
                };
            if targets.is_empty() {
                continue;
            }
            let seg_ref = SegmentRef {
                datasource: name.as_str().into(),
                key: key.clone(),
            };
            let mut loaded: BTreeMap<&str, u64> = BTreeMap::new();
            for s in &serving {
                if matches!(s.replica(&seg_ref), Some(Replica::Loaded { .. })) {
                    *loaded.entry(s.server.tier.as_str()).or_default() += 1;
                }
            }
            status.total += 1;
            if !loaded.is_empty() {
                status.available += 1;
            }
            for (tier, want) in targets {
                let have = loaded.get(tier.as_str()).copied().unwrap_or(0);
                *status.left_by_tier.entry(tier).or_default() += want.saturating_sub(have);
            }
        }
        if any {
            out.insert(name.clone(), status);
        }
    }
    out
}
