//! Auto-kill (Druid's `KillUnusedSegments` duty): which unused segments to delete for good, as
//! `kill` tasks, decided from the replicated state by one pure function.
//!
//! A segment is eligible when it is unused, was marked unused at least `bufferPeriod` ago, and
//! its interval ended at least `durationToRetain` ago, in a datasource of
//! `killDataSourceWhitelist` (every datasource when the list is empty). Per datasource with no
//! kill task active, the earliest eligible segments are taken, up to `maxSegments`, while their
//! umbrella interval overlaps no interval an active task holds or waits to lock, so a kill task
//! never waits behind (or collides with) another task. Kill tasks take at most
//! `killTaskSlotRatio` of the workers' slots, and no more than `maxKillTaskSlots`.
//!
//! Each kill task names the umbrella interval and `maxUsedStatusLastUpdatedTime` (now minus the
//! buffer period), so it deletes nothing that was marked unused more recently, even inside
//! that interval.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::interval::{iso, Interval};
use crate::sm::State;

/// The prefix of the ids of kill tasks the Coordinator submits (Druid's).
pub const TASK_PREFIX: &str = "coordinator-issued_kill_";

/// Auto-kill's settings (Druid's `druid.coordinator.kill.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillSettings {
    /// `druid.coordinator.kill.on`.
    pub enabled: bool,
    pub period: Duration,
    pub duration_to_retain_ms: u64,
    pub buffer_period_ms: u64,
    pub max_segments: usize,
}

impl Default for KillSettings {
    fn default() -> Self {
        KillSettings {
            enabled: false,
            period: Duration::from_secs(86_400),
            duration_to_retain_ms: 90 * 86_400_000,
            buffer_period_ms: 30 * 86_400_000,
            max_segments: 100,
        }
    }
}

/// What one auto-kill run found and decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KillStats {
    /// Unused segments past retention and buffer, in the datasources considered.
    pub eligible: u64,
    /// Segments the submitted tasks cover.
    pub submitted_segments: u64,
    pub submitted_tasks: u64,
    /// Datasources skipped because a kill task of theirs is still active.
    pub skipped_active: u64,
    /// Eligible segments left for later because an active task holds or waits for their
    /// interval.
    pub skipped_locked: u64,
    /// Kill task slots available this run.
    pub slots: u64,
}

/// One kill task to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillTask {
    pub datasource: String,
    pub interval: Interval,
    /// Only segments marked unused at or before this time are deleted.
    pub max_used_updated_ms: u64,
    pub segments: usize,
}

impl KillTask {
    /// Druid's `kill` task spec, with an id that says who submitted it and when (the
    /// datasource's name shortened where the id would pass 255 bytes).
    pub fn spec(&self, now_ms: u64) -> Value {
        json!({
            "type": "kill",
            "id": super::duties::task_id(TASK_PREFIX, &self.datasource, &format!("_{now_ms}")),
            "dataSource": self.datasource,
            "interval": self.interval.to_string(),
            "maxUsedStatusLastUpdatedTime": iso(self.max_used_updated_ms as i64),
            "limit": self.segments,
            "context": {"priority": 0},
        })
    }
}

/// The kill tasks one run submits at leader time `now_ms`.
pub fn plan_kills(state: &State, settings: &KillSettings, now_ms: u64) -> (Vec<KillTask>, KillStats) {
    let config = &state.coordinator.dynamic_config;
    let mut stats = KillStats::default();
    let capacity: u64 = state
        .workers
        .all()
        .filter(|w| w.usable())
        .map(|w| u64::from(w.worker.capacity))
        .sum();
    let by_ratio = (capacity as f64 * config.kill_task_slot_ratio).floor() as u64;
    let limit = by_ratio.max(1).min(u64::from(config.max_kill_task_slots));
    let active_kills: Vec<&str> = state
        .tasks
        .active()
        .filter(|t| t.spec.task_type == "kill")
        .map(|t| t.spec.datasource.as_str())
        .collect();
    stats.slots = limit.saturating_sub(active_kills.len() as u64);
    let mut tasks = Vec::new();
    let buffer_cut = now_ms.saturating_sub(settings.buffer_period_ms);
    let retain_cut = (now_ms as i64).saturating_sub(settings.duration_to_retain_ms.min(i64::MAX as u64) as i64);
    for (name, ds) in state.segments.datasources() {
        if !config.kill_data_source_whitelist.is_empty() && !config.kill_data_source_whitelist.contains(name) {
            continue;
        }
        let eligible: Vec<Interval> = ds
            .all()
            .filter(|(k, s)| !s.used && s.used_updated_ms <= buffer_cut && k.end <= retain_cut)
            .map(|(k, _)| k.interval())
            .collect();
        if eligible.is_empty() {
            continue;
        }
        stats.eligible += eligible.len() as u64;
        if active_kills.contains(&name.as_str()) {
            stats.skipped_active += 1;
            continue;
        }
        if tasks.len() as u64 >= stats.slots {
            continue;
        }
        let busy = super::busy_intervals(state, name);
        let mut umbrella: Option<Interval> = None;
        let mut count = 0;
        for iv in &eligible {
            if count >= settings.max_segments {
                break;
            }
            let grown = match umbrella {
                None => *iv,
                Some(u) => Interval {
                    start: u.start.min(iv.start),
                    end: u.end.max(iv.end),
                },
            };
            if busy.iter().any(|b| b.overlaps(&grown)) {
                stats.skipped_locked += 1;
                if umbrella.is_some() {
                    break;
                }
                continue;
            }
            umbrella = Some(grown);
            count += 1;
        }
        if let Some(interval) = umbrella {
            stats.submitted_segments += count as u64;
            stats.submitted_tasks += 1;
            tasks.push(KillTask {
                datasource: name.clone(),
                interval,
                max_used_updated_ms: buffer_cut,
                segments: count,
            });
        }
    }
    (tasks, stats)
}

#[cfg(test)]
mod tests;
