//! The Coordinator: what decides which segments are kept and where they are served.
//!
//! Pure parts:
//! - [`rules`]: Druid's retention rules and their first-match evaluation, as functions of a
//!   segment's interval and the time of the run;
//! - [`config`]: the Coordinator's dynamic configuration; [`compaction`]: auto-compaction's;
//! - [`load`]: the Historicals and the replica each holds of each segment (loading, loaded,
//!   failed, dropping), changed only by commands;
//! - [`planner`]: one historical-management run (rules, load, drop, balance, overshadowed);
//! - [`kill`]: auto-kill's choice of kill tasks; [`autocompact`]: auto-compaction's choice of
//!   compact tasks and its progress; [`status`]: load status per datasource and tier.
//!
//! [`duties`] runs them on the leader and proposes what they decide. [`CoordinatorState`] is
//! the Coordinator's part of the replicated state: the rules of each datasource and of the
//! cluster (`_default`), both configurations and the audited history of their changes, and the
//! Historicals' replicas.

pub mod autocompact;
pub mod compaction;
pub mod config;
pub mod cost;
pub mod duties;
pub mod kill;
pub mod load;
pub mod planner;
pub mod rules;
pub mod status;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::workers::{prune_before, AuditEntry, AuditInfo};
use rules::Rule;

/// The intervals of `datasource` that an active task holds a lock on or waits to lock: what a
/// task a duty submits must stay clear of, so that it neither waits behind nor collides with
/// another task.
pub fn busy_intervals(state: &crate::sm::State, datasource: &str) -> Vec<crate::interval::Interval> {
    state
        .tasks
        .active()
        .filter(|t| t.spec.datasource == datasource)
        .flat_map(|t| {
            t.spec
                .locks
                .iter()
                .map(|l| l.interval)
                .chain(state.locks.locks_of(&t.spec.id).into_iter().map(|l| l.interval))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The name under which the cluster's default rules are kept (Druid's
/// `druid.manager.rules.defaultRule`).
pub const DEFAULT_RULES: &str = "_default";

/// The default rules of a cluster whose `_default` rules were never set: load everything,
/// twice, on the default tier (Druid's own default).
pub fn initial_default_rules() -> Vec<Rule> {
    vec![Rule::LoadForever {
        tiered_replicants: Some(BTreeMap::from([(
            rules::DEFAULT_TIER.to_string(),
            i64::from(rules::DEFAULT_REPLICANTS),
        )])),
        use_default_tier_for_null: true,
    }]
}

/// The audit key and type of the dynamic configuration's changes (Druid's).
pub const CONFIG_AUDIT_KEY: &str = "coordinator.config";

/// Rules by datasource, the dynamic configuration, and who changed them when.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorState {
    #[serde(default)]
    rules: BTreeMap<String, Vec<Rule>>,
    #[serde(default)]
    rule_history: Vec<AuditEntry>,
    #[serde(default)]
    pub dynamic_config: config::DynamicConfig,
    #[serde(default)]
    config_history: Vec<AuditEntry>,
    #[serde(default)]
    pub compaction: compaction::CompactionConfigs,
    /// Historicals and their replicas.
    #[serde(default)]
    pub load: load::LoadTable,
}

impl CoordinatorState {
    /// A datasource's own rules (none unless set); for `_default`, the cluster's defaults.
    pub fn rules_of(&self, datasource: &str) -> Vec<Rule> {
        match self.rules.get(datasource) {
            Some(r) => r.clone(),
            None if datasource == DEFAULT_RULES => initial_default_rules(),
            None => Vec::new(),
        }
    }

    /// Every datasource's rules that were set, and the defaults, as Druid's `GET /rules`.
    pub fn all_rules(&self) -> BTreeMap<String, Vec<Rule>> {
        let mut all = self.rules.clone();
        all.entry(DEFAULT_RULES.to_string())
            .or_insert_with(initial_default_rules);
        all
    }

    /// Replaces a datasource's rules (an empty list removes them: the defaults then decide)
    /// and records the change.
    pub fn apply_set_rules(&mut self, time_ms: u64, datasource: &str, rules: Vec<Rule>, audit: AuditInfo) {
        let entry = AuditEntry::new(datasource, "rules", &rules, audit, time_ms);
        if rules.is_empty() && datasource != DEFAULT_RULES {
            self.rules.remove(datasource);
        } else {
            self.rules.insert(datasource.to_string(), rules);
        }
        self.rule_history.push(entry);
    }

    /// The changes of rules, oldest first: of one datasource, or of all.
    pub fn rule_history(&self, datasource: Option<&str>) -> Vec<&AuditEntry> {
        self.rule_history
            .iter()
            .filter(|e| datasource.is_none_or(|d| e.key == d))
            .collect()
    }

    /// Replaces the dynamic configuration and records the change.
    pub fn apply_set_config(&mut self, time_ms: u64, config: config::DynamicConfig, audit: AuditInfo) {
        let entry = AuditEntry::new(CONFIG_AUDIT_KEY, CONFIG_AUDIT_KEY, &config, audit, time_ms);
        self.dynamic_config = config;
        self.config_history.push(entry);
    }

    /// The changes of the dynamic configuration, oldest first.
    pub fn config_history(&self) -> Vec<&AuditEntry> {
        self.config_history.iter().collect()
    }

    /// Removes the rule and configuration history (the compaction configs' too) made before
    /// `before_ms`; returns how many entries.
    pub fn apply_prune_history(&mut self, before_ms: u64) -> usize {
        prune_before(&mut self.rule_history, before_ms, |e| &e.audit_time)
            + prune_before(&mut self.config_history, before_ms, |e| &e.audit_time)
            + self.compaction.apply_prune_history(before_ms)
    }
}
