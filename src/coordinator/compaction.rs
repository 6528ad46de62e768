//! Auto-compaction's configuration (Druid's `DruidCompactionConfig`): one
//! `DataSourceCompactionConfig` per datasource, the share of task slots compaction may take, and
//! the audited history of each datasource's config. Kept in the replicated state; the duty that
//! submits `compact` tasks from it reads it there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rules::Period;
use crate::workers::AuditInfo;

/// Druid's default `inputSegmentSizeBytes`: 100 TB, in effect no limit.
pub const DEFAULT_INPUT_SEGMENT_SIZE_BYTES: u64 = 100_000_000_000_000;

/// One datasource's compaction config, as Druid's JSON; the nested specs are kept as given
/// (after the checks of [`DatasourceCompactionConfig::parse`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasourceCompactionConfig {
    pub data_source: String,
    #[serde(default = "default_priority")]
    pub task_priority: i32,
    #[serde(default = "default_input_size")]
    pub input_segment_size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_segment: Option<u64>,
    #[serde(default = "default_skip_offset")]
    pub skip_offset_from_latest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity_spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions_spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform_spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_context: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

fn default_priority() -> i32 {
    25
}

fn default_input_size() -> u64 {
    DEFAULT_INPUT_SEGMENT_SIZE_BYTES
}

fn default_skip_offset() -> String {
    "P1D".into()
}

impl DatasourceCompactionConfig {
    /// Reads a config as `POST /config/compaction` takes it; the error names the field.
    pub fn parse(v: &Value) -> Result<DatasourceCompactionConfig, String> {
        let c: DatasourceCompactionConfig =
            serde_path_to_error::deserialize(v).map_err(|e| match e.path().to_string() {
                // A missing field is reported at the top, where its name is in the message.
                p if p == "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            })?;
        c.check()?;
        Ok(c)
    }

    /// The checks Druid makes of a config before storing it.
    pub fn check(&self) -> Result<(), String> {
        crate::segments::validate_datasource(&self.data_source).map_err(|e| format!("dataSource: {e}"))?;
        if self.input_segment_size_bytes == 0 {
            return Err("inputSegmentSizeBytes: must be positive".into());
        }
        if self.max_rows_per_segment == Some(0) {
            return Err("maxRowsPerSegment: must be positive".into());
        }
        Period::parse_zero_ok(&self.skip_offset_from_latest).map_err(|e| format!("skipOffsetFromLatest: {e}"))?;
        if let Some(g) = &self.granularity_spec {
            if !g.is_object() {
                return Err("granularitySpec: expected an object".into());
            }
            for field in ["segmentGranularity", "queryGranularity"] {
                if let Some(v) = g.get(field).filter(|v| !v.is_null()) {
                    raftlord_time::granularity::Granularity::parse(v)
                        .map_err(|e| format!("granularitySpec.{field}: {e}"))?;
                }
            }
        }
        for (field, v) in [
            ("tuningConfig", &self.tuning_config),
            ("dimensionsSpec", &self.dimensions_spec),
            ("transformSpec", &self.transform_spec),
            ("ioConfig", &self.io_config),
            ("taskContext", &self.task_context),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_object() && !v.is_null()) {
                return Err(format!("{field}: expected an object"));
            }
        }
        if self
            .metrics_spec
            .as_ref()
            .is_some_and(|v| !v.is_array() && !v.is_null())
        {
            return Err("metricsSpec: expected a list of aggregators".into());
        }
        if let Some(e) = &self.engine {
            if e != "native" {
                return Err(format!("engine: [{e}] is not supported; use native"));
            }
        }
        Ok(())
    }
}

/// The task slots compaction may take: `ratio` of the cluster's, at most `max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionSlots {
    pub compaction_task_slot_ratio: f64,
    pub max_compaction_task_slots: u32,
    pub use_auto_scale_slots: bool,
}

impl Default for CompactionSlots {
    fn default() -> Self {
        CompactionSlots {
            compaction_task_slot_ratio: 0.1,
            max_compaction_task_slots: i32::MAX as u32,
            use_auto_scale_slots: false,
        }
    }
}

impl CompactionSlots {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.compaction_task_slot_ratio) {
            return Err(format!(
                "ratio: {} is not between 0 and 1",
                self.compaction_task_slot_ratio
            ));
        }
        Ok(())
    }
}

/// One change of a datasource's compaction config, as Druid's
/// `DataSourceCompactionConfigAuditEntry` (`compactionConfig` is null after a delete).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionAuditEntry {
    pub global_config: CompactionSlots,
    pub compaction_config: Option<DatasourceCompactionConfig>,
    pub audit_info: AuditInfo,
    pub audit_time: String,
}

/// Every datasource's compaction config, the slots, and the history.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionConfigs {
    #[serde(default)]
    pub configs: BTreeMap<String, DatasourceCompactionConfig>,
    #[serde(default)]
    pub slots: CompactionSlots,
    #[serde(default)]
    history: BTreeMap<String, Vec<CompactionAuditEntry>>,
}

impl CompactionConfigs {
    /// Adds or replaces a datasource's config, or with `None` removes it; records the change.
    /// Returns whether anything was there or is there now.
    pub fn apply_set(
        &mut self,
        time_ms: u64,
        datasource: &str,
        config: Option<DatasourceCompactionConfig>,
        audit: AuditInfo,
    ) -> bool {
        let had = match &config {
            Some(c) => self.configs.insert(datasource.to_string(), c.clone()).is_some(),
            None => self.configs.remove(datasource).is_some(),
        };
        if !had && config.is_none() {
            return false;
        }
        self.history
            .entry(datasource.to_string())
            .or_default()
            .push(CompactionAuditEntry {
                global_config: self.slots.clone(),
                compaction_config: config,
                audit_info: audit,
                audit_time: crate::clock::iso(time_ms),
            });
        true
    }

    pub fn apply_set_slots(&mut self, slots: CompactionSlots) {
        self.slots = slots;
    }

    /// A datasource's changes, oldest first.
    pub fn history(&self, datasource: &str) -> &[CompactionAuditEntry] {
        self.history.get(datasource).map_or(&[], Vec::as_slice)
    }

    /// Removes the history made before `before_ms`; returns how many entries.
    pub fn apply_prune_history(&mut self, before_ms: u64) -> usize {
        let removed = self
            .history
            .values_mut()
            .map(|h| crate::workers::prune_before(h, before_ms, |e| &e.audit_time))
            .sum();
        self.history.retain(|_, h| !h.is_empty());
        removed
    }

    /// Druid's `GET /config/compaction` answer.
    pub fn to_druid_json(&self) -> Value {
        serde_json::json!({
            "compactionConfigs": self.configs.values().collect::<Vec<_>>(),
            "compactionTaskSlotRatio": self.slots.compaction_task_slot_ratio,
            "maxCompactionTaskSlots": self.slots.max_compaction_task_slots,
            "useAutoScaleSlots": self.slots.use_auto_scale_slots,
            "engine": "native",
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn configs_read_with_druids_defaults_and_bad_fields_are_named() {
        let c = DatasourceCompactionConfig::parse(&json!({"dataSource": "wiki"})).unwrap();
        assert_eq!(c.task_priority, 25);
        assert_eq!(c.input_segment_size_bytes, DEFAULT_INPUT_SEGMENT_SIZE_BYTES);
        assert_eq!(c.skip_offset_from_latest, "P1D");
        let full = json!({"dataSource": "wiki", "taskPriority": 30, "inputSegmentSizeBytes": 1000,
            "skipOffsetFromLatest": "PT6H", "granularitySpec": {"segmentGranularity": "DAY"},
            "tuningConfig": {"partitionsSpec": {"type": "dynamic"}}, "taskContext": {"priority": 1}});
        let c = DatasourceCompactionConfig::parse(&full).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), full);
        for (v, field) in [
            (json!({}), "missing field `dataSource`"),
            (
                json!({"dataSource": "wiki", "inputSegmentSizeBytes": "big"}),
                "inputSegmentSizeBytes",
            ),
            (
                json!({"dataSource": "wiki", "inputSegmentSizeBytes": -1}),
                "inputSegmentSizeBytes",
            ),
            (
                json!({"dataSource": "wiki", "inputSegmentSizeBytes": 0}),
                "inputSegmentSizeBytes",
            ),
            (
                json!({"dataSource": "wiki", "skipOffsetFromLatest": "a day"}),
                "skipOffsetFromLatest",
            ),
            (
                json!({"dataSource": "wiki", "skipOffsetFromLatest": 5}),
                "skipOffsetFromLatest",
            ),
            (
                json!({"dataSource": "wiki", "granularitySpec": {"segmentGranularity": "FORTNIGHT"}}),
                "granularitySpec.segmentGranularity",
            ),
            (json!({"dataSource": "wiki", "metricsSpec": {}}), "metricsSpec"),
            (json!({"dataSource": "wiki", "engine": "msq"}), "engine"),
            (json!({"dataSource": "a/b"}), "dataSource"),
        ] {
            let e = DatasourceCompactionConfig::parse(&v).unwrap_err();
            assert!(e.starts_with(field), "{v}: {e}");
        }
    }

    #[test]
    fn changes_are_recorded_per_datasource_and_a_missing_delete_changes_nothing() {
        let mut c = CompactionConfigs::default();
        let config = DatasourceCompactionConfig::parse(&json!({"dataSource": "wiki"})).unwrap();
        assert!(c.apply_set(1000, "wiki", Some(config), AuditInfo::default()));
        assert!(c.apply_set(2000, "wiki", None, AuditInfo::default()));
        assert!(!c.apply_set(3000, "wiki", None, AuditInfo::default()));
        assert!(c.configs.is_empty());
        let h = c.history("wiki");
        assert_eq!(h.len(), 2);
        assert!(h[0].compaction_config.is_some() && h[1].compaction_config.is_none());
        assert_eq!(c.apply_prune_history(1500), 1);
        assert_eq!(c.history("wiki").len(), 1);
    }
}
