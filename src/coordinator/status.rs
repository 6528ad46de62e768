//! Load status: how much of each datasource the Historicals serve, as Druid's
//! `/druid/coordinator/v1/loadstatus` and `/datasources/{ds}/loadstatus` report it.
//!
//! A segment counts when it is used, not overshadowed, not a tombstone, and its first matching
//! rule asks for at least one replica (a load rule with replicas, or a broadcast rule). It is
//! *available* when some Historical serves it; a tier's replicas *left* are what its rule asks
//! for there minus what is loaded there.

use std::collections::BTreeMap;

use super::load::{LoadTable, Replica, SegmentRef};
use super::rules::Action;
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
///
/// One pass per datasource over its used segments and, in step (both are in key order), each
/// Historical's replicas of that datasource: no lookup per segment and Historical.
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
    let mut broadcast: BTreeMap<String, u64> = BTreeMap::new();
    for s in &serving {
        *broadcast.entry(s.server.tier.clone()).or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for (name, ds) in segments.datasources() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let own = coordinator.rules_of(name);
        // Each rule's replicas per tier, worked out once per datasource.
        let targets: Vec<BTreeMap<String, u64>> = own
            .iter()
            .chain(defaults.iter())
            .map(|r| match r.action() {
                Action::Load(tiers) => tiers
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(t, n)| (t, u64::from(n)))
                    .collect(),
                Action::Broadcast => broadcast.clone(),
                Action::Drop => BTreeMap::new(),
            })
            .collect();
        let first = SegmentRef {
            datasource: name.as_str().into(),
            key: crate::segments::SegmentKey {
                start: i64::MIN,
                end: i64::MIN,
                version: "".into(),
                partition: 0,
            },
        };
        let mut cursors: Vec<_> = serving
            .iter()
            .map(|s| {
                let tier = s.server.tier.as_str();
                let reps = s.replicas().range(first.clone()..);
                (tier, reps.take_while(|(r, _)| *r.datasource == **name).peekable())
            })
            .collect();
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
            let rule = own
                .iter()
                .chain(defaults.iter())
                .position(|r| r.applies_to(&key.interval(), now));
            let Some(targets) = rule.map(|i| &targets[i]).filter(|t| !t.is_empty()) else {
                continue;
            };
            let mut loaded: BTreeMap<&str, u64> = BTreeMap::new();
            for (tier, reps) in &mut cursors {
                while reps.next_if(|(r, _)| r.key < *key).is_some() {}
                if let Some((_, rep)) = reps.next_if(|(r, _)| r.key == *key) {
                    if matches!(rep, Replica::Loaded { .. }) {
                        *loaded.entry(*tier).or_default() += 1;
                    }
                }
            }
            status.total += 1;
            if !loaded.is_empty() {
                status.available += 1;
            }
            for (tier, want) in targets {
                let have = loaded.get(tier.as_str()).copied().unwrap_or(0);
                *status.left_by_tier.entry(tier.clone()).or_default() += want.saturating_sub(have);
            }
        }
        if any {
            out.insert(name.clone(), status);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::load::{Historical, LoadRequest, Outcome, ReplicaReport};
    use crate::coordinator::rules::Rule;
    use crate::segments::DataSegment;
    use crate::workers::AuditInfo;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_767_225_600_000;

    fn segment(ds: &str, day: i64, partition: u32) -> DataSegment {
        let start = NOW - day * DAY;
        DataSegment::parse(
            &serde_json::json!({
                "dataSource": ds,
                "interval": format!("{}/{}", crate::interval::iso(start), crate::interval::iso(start + DAY)),
                "version": "v1",
                "shardSpec": {"type": "numbered", "partitionNum": partition, "partitions": 0},
                "loadSpec": {"type": "local", "path": "/x"},
                "size": 1,
            })
            .to_string(),
        )
        .unwrap()
    }

    /// Replicas in every state on two tiers, two datasources interleaved on each Historical:
    /// the walk in step counts exactly the loaded ones, per tier.
    #[test]
    fn load_status_counts_the_loaded_replicas_of_each_datasource_per_tier() {
        let mut segments = SegmentTable::default();
        let mut c = CoordinatorState::default();
        for (ds, days) in [("a", 0..6), ("b", 0..4)] {
            segments.apply_insert(0, days.map(|d| segment(ds, d, 0)).collect());
        }
        c.apply_set_rules(
            0,
            "a",
            vec![Rule::LoadForever {
                tiered_replicants: Some([("hot".to_string(), 1), ("_default_tier".to_string(), 2)].into()),
                use_default_tier_for_null: true,
            }],
            AuditInfo::default(),
        );
        for (host, tier) in [("h0", "hot"), ("h1", "_default_tier"), ("h2", "_default_tier")] {
            c.load.apply_register(
                0,
                Historical {
                    scheme: "http".into(),
                    host: host.into(),
                    tier: tier.into(),
                    max_size: 1 << 20,
                },
            );
        }
        let r = |ds: &str, day: i64| SegmentRef {
            datasource: ds.into(),
            key: segment(ds, day, 0).key,
        };
        // h0 (hot): a0..a2 loaded, a3 loading; h1: a0, a1, b0..b3 loaded; h2: a0 loaded, a5 failed.
        let mut loads = Vec::new();
        let mut plan = |host: &str, segs: Vec<SegmentRef>| {
            for s in segs {
                loads.push(LoadRequest {
                    host: host.into(),
                    segment: s,
                    moved_from: None,
                });
            }
        };
        plan("h0", (0..4).map(|d| r("a", d)).collect());
        plan(
            "h1",
            vec![r("a", 0), r("a", 1), r("b", 0), r("b", 1), r("b", 2), r("b", 3)],
        );
        plan("h2", vec![r("a", 0), r("a", 5)]);
        c.load.apply_plan(1, &segments, &loads, &[]);
        let report = |outcomes: Vec<(SegmentRef, Outcome)>| -> Vec<ReplicaReport> {
            outcomes
                .into_iter()
                .map(|(segment, outcome)| ReplicaReport { segment, outcome })
                .collect()
        };
        let loaded = |segs: Vec<SegmentRef>| report(segs.into_iter().map(|s| (s, Outcome::Loaded)).collect());
        c.load
            .apply_report(2, &segments, "h0", &loaded((0..3).map(|d| r("a", d)).collect()), false);
        c.load.apply_report(
            2,
            &segments,
            "h1",
            &loaded(vec![r("a", 0), r("a", 1), r("b", 0), r("b", 1), r("b", 2), r("b", 3)]),
            false,
        );
        let failed = Outcome::Failed { reason: "no".into() };
        c.load.apply_report(
            2,
            &segments,
            "h2",
            &report(vec![(r("a", 0), Outcome::Loaded), (r("a", 5), failed)]),
            false,
        );
        let status = load_status(&segments, &c, NOW, None, None);
        // a: 6 segments; served: a0..a2; hot has 3 of 6, _default_tier 3 of 12.
        assert_eq!(
            status["a"],
            DatasourceLoad {
                total: 6,
                available: 3,
                left_by_tier: [("hot".to_string(), 3), ("_default_tier".to_string(), 9)].into(),
            }
        );
        // b, by the default rule (2 on _default_tier): 4 of 8 loaded, all on h1.
        assert_eq!(
            status["b"],
            DatasourceLoad {
                total: 4,
                available: 4,
                left_by_tier: [("_default_tier".to_string(), 4)].into(),
            }
        );
        let only_b = load_status(&segments, &c, NOW, Some("b"), None);
        assert_eq!(only_b.keys().collect::<Vec<_>>(), vec!["b"]);
    }
}
