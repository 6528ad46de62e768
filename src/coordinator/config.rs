//! The Coordinator's dynamic configuration (Druid's `CoordinatorDynamicConfig`): the knobs of
//! its duties, changed at run time through `POST /druid/coordinator/v1/config` and kept, with
//! the audited history of changes, in the replicated state. A change names only the fields it
//! sets; the others keep their values, as in Druid.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Druid's `CoordinatorDynamicConfig`, with Druid's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicConfig {
    /// How long an overshadowed segment stays used before it may be marked unused.
    pub millis_to_wait_before_deleting: u64,
    /// Most segments moved by one balancing run.
    pub max_segments_to_move: u32,
    /// Runs a segment may stay in a load queue before an alert.
    pub replicant_lifetime: u32,
    /// Most replicas (beyond the first) assigned per tier per run.
    pub replication_throttle_limit: u32,
    pub balancer_compute_threads: u32,
    /// Datasources whose unused segments auto-kill deletes (empty: none unless
    /// `killAllDataSources` in older Druid); a list or a comma-separated string.
    #[serde(deserialize_with = "names")]
    pub kill_data_source_whitelist: BTreeSet<String>,
    /// Share of the task slots kill tasks may take, from 0 to 1.
    pub kill_task_slot_ratio: f64,
    pub max_kill_task_slots: u32,
    #[serde(deserialize_with = "names")]
    pub kill_pending_segments_skip_list: BTreeSet<String>,
    pub max_segments_in_node_loading_queue: u32,
    /// Historicals (`host:port`) being emptied.
    #[serde(deserialize_with = "names")]
    pub decommissioning_nodes: BTreeSet<String>,
    pub pause_coordination: bool,
    pub replicate_after_load_timeout: bool,
    pub use_round_robin_segment_assignment: bool,
    pub smart_segment_loading: bool,
    pub debug_dimensions: Option<BTreeMap<String, String>>,
    #[serde(deserialize_with = "names")]
    pub turbo_loading_nodes: BTreeSet<String>,
    pub clone_servers: BTreeMap<String, String>,
    /// How segments are placed and balanced (Druid's `druid.coordinator.balancer.strategy`,
    /// a runtime property there; here replicated, so every leader uses the same one).
    pub balancer_strategy: BalancerStrategy,
}

/// Druid's balancer strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BalancerStrategy {
    /// Druid's `cost`: a segment goes where it costs least (away from segments close in
    /// time, twice as far from the same datasource's); balancing moves it where it costs less.
    /// Druid's deprecated `cachingCost` computes the same and is read as `cost`.
    #[default]
    #[serde(alias = "cachingCost")]
    Cost,
    /// Druid's `diskNormalized`: the cost divided by the Historical's segment count and
    /// multiplied by its disk use (used over `--max-segment-cache-size`), for tiers whose
    /// Historicals have caches of different sizes.
    DiskNormalized,
    /// Druid's `random`: a Historical with room, at random; no balancing.
    Random,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            millis_to_wait_before_deleting: 15 * 60 * 1000,
            max_segments_to_move: 100,
            replicant_lifetime: 15,
            replication_throttle_limit: 500,
            balancer_compute_threads: 1,
            kill_data_source_whitelist: BTreeSet::new(),
            kill_task_slot_ratio: 0.1,
            max_kill_task_slots: i32::MAX as u32,
            kill_pending_segments_skip_list: BTreeSet::new(),
            max_segments_in_node_loading_queue: 500,
            decommissioning_nodes: BTreeSet::new(),
            pause_coordination: false,
            replicate_after_load_timeout: false,
            use_round_robin_segment_assignment: true,
            smart_segment_loading: true,
            debug_dimensions: None,
            turbo_loading_nodes: BTreeSet::new(),
            clone_servers: BTreeMap::new(),
            balancer_strategy: BalancerStrategy::Cost,
        }
    }
}

/// A set of names, written as a JSON list or as one comma-separated string (Druid takes both).
fn names<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Names {
        List(Vec<String>),
        Text(String),
        Null(()),
    }
    Ok(match Names::deserialize(d)? {
        Names::List(l) => l.into_iter().collect(),
        Names::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Names::Null(()) => BTreeSet::new(),
    })
}

impl DynamicConfig {
    /// `self` with the fields of `change` (a JSON object) set; fields it does not have keep their
    /// values, unknown fields are ignored (as Druid does). The error names the field.
    pub fn updated(&self, change: &Value) -> Result<DynamicConfig, String> {
        let Value::Object(change) = change else {
            return Err("expected a JSON object of Coordinator dynamic config fields".into());
        };
        let Value::Object(mut merged) = serde_json::to_value(self).map_err(|e| e.to_string())? else {
            return Err("the current config is not an object".into());
        };
        for (k, v) in change {
            merged.insert(k.clone(), v.clone());
        }
        let config: DynamicConfig = serde_path_to_error::deserialize(Value::Object(merged))
            .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
        config.check()?;
        Ok(config)
    }

    /// The limits Druid puts on the values.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.kill_task_slot_ratio) {
            return Err(format!(
                "killTaskSlotRatio: {} is not between 0 and 1",
                self.kill_task_slot_ratio
            ));
        }
        if self.balancer_compute_threads == 0 {
            return Err("balancerComputeThreads: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_change_sets_only_its_fields_and_bad_values_name_the_field() {
        let base = DynamicConfig::default();
        let v = serde_json::to_value(&base).unwrap();
        assert_eq!(v["maxSegmentsToMove"], 100);
        assert_eq!(v["millisToWaitBeforeDeleting"], 900_000);
        assert_eq!(v["killDataSourceWhitelist"], json!([]));
        let c = base
            .updated(&json!({"maxSegmentsToMove": 5, "killDataSourceWhitelist": "a, b,", "unknownKnob": 1}))
            .unwrap();
        assert_eq!(c.max_segments_to_move, 5);
        assert_eq!(c.kill_data_source_whitelist, BTreeSet::from(["a".into(), "b".into()]));
        assert_eq!(c.replication_throttle_limit, 500, "untouched fields keep their values");
        let c = c.updated(&json!({"killDataSourceWhitelist": ["c"]})).unwrap();
        assert_eq!(c.kill_data_source_whitelist, BTreeSet::from(["c".into()]));
        assert_eq!(c.max_segments_to_move, 5);
        assert_eq!(v["balancerStrategy"], "cost");
        let c = c.updated(&json!({"balancerStrategy": "diskNormalized"})).unwrap();
        assert_eq!(c.balancer_strategy, BalancerStrategy::DiskNormalized);
        let c = c.updated(&json!({"balancerStrategy": "cachingCost"})).unwrap();
        assert_eq!(c.balancer_strategy, BalancerStrategy::Cost);
        for (change, field) in [
            (json!({"maxSegmentsToMove": -1}), "maxSegmentsToMove"),
            (json!({"replicationThrottleLimit": "many"}), "replicationThrottleLimit"),
            (json!({"killTaskSlotRatio": 1.5}), "killTaskSlotRatio"),
            (json!({"balancerComputeThreads": 0}), "balancerComputeThreads"),
            (json!({"pauseCoordination": "yes"}), "pauseCoordination"),
            (json!({"balancerStrategy": "roundRobin"}), "balancerStrategy"),
            (json!([1]), "expected a JSON object"),
        ] {
            let e = base.updated(&change).unwrap_err();
            assert!(e.contains(field), "{change}: {e}");
        }
    }
}
