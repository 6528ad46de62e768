//! Druid's worker select strategies and the assigner's plan.
//!
//! [`plan`] is a pure function of the replicated state and the leader's clock: it walks the
//! waiting tasks in priority order (FIFO within a priority), checks each one's readiness, and
//! places it on a worker chosen by the configured [`SelectStrategy`], counting the slots and
//! availability groups it has already handed out. The leader proposes the result as one
//! `AssignTasks` command, whose apply checks every placement again.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{WorkerTable, DEFAULT_CATEGORY};
use crate::locks::{LockTable, Requester};
use crate::tasks::{ReadyResult, Task, TaskTable};

/// Druid's `AffinityConfig`: datasources pinned to workers (`host:port`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityConfig {
    #[serde(default)]
    pub affinity: BTreeMap<String, BTreeSet<String>>,
    /// Strong: a datasource's tasks wait for its workers rather than run elsewhere.
    #[serde(default)]
    pub strong: bool,
}

/// Druid's `WorkerCategorySpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerCategorySpec {
    /// Task type -> where its tasks go.
    #[serde(default)]
    pub category_map: BTreeMap<String, CategoryConfig>,
    /// Strong: a task whose category has no free worker waits.
    #[serde(default)]
    pub strong: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CategoryConfig {
    #[serde(default)]
    pub default_category: Option<String>,
    /// Datasource -> category.
    #[serde(default)]
    pub category_affinity: BTreeMap<String, String>,
}

/// Druid's select strategies (`IS/overlord/setup/*WorkerSelectStrategy.java`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SelectStrategy {
    /// The eligible worker with the most free capacity (Druid's default).
    #[serde(rename_all = "camelCase")]
    EqualDistribution {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_config: Option<AffinityConfig>,
    },
    /// The eligible worker with the most capacity in use: fill workers one by one.
    #[serde(rename_all = "camelCase")]
    FillCapacity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_config: Option<AffinityConfig>,
    },
    #[serde(rename_all = "camelCase")]
    EqualDistributionWithAffinity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_config: Option<AffinityConfig>,
    },
    #[serde(rename_all = "camelCase")]
    FillCapacityWithAffinity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_config: Option<AffinityConfig>,
    },
    #[serde(rename_all = "camelCase")]
    EqualDistributionWithCategorySpec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_category_spec: Option<WorkerCategorySpec>,
    },
    #[serde(rename_all = "camelCase")]
    FillCapacityWithCategorySpec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_category_spec: Option<WorkerCategorySpec>,
    },
}

impl Default for SelectStrategy {
    fn default() -> Self {
        SelectStrategy::EqualDistribution { affinity_config: None }
    }
}

impl SelectStrategy {
    fn fill(&self) -> bool {
        matches!(
            self,
            SelectStrategy::FillCapacity { .. }
                | SelectStrategy::FillCapacityWithAffinity { .. }
                | SelectStrategy::FillCapacityWithCategorySpec { .. }
        )
    }

    fn affinity(&self) -> Option<&AffinityConfig> {
        match self {
            SelectStrategy::EqualDistribution { affinity_config }
            | SelectStrategy::FillCapacity { affinity_config }
            | SelectStrategy::EqualDistributionWithAffinity { affinity_config }
            | SelectStrategy::FillCapacityWithAffinity { affinity_config } => affinity_config.as_ref(),
            _ => None,
        }
    }

    fn category_spec(&self) -> Option<&WorkerCategorySpec> {
        match self {
            SelectStrategy::EqualDistributionWithCategorySpec { worker_category_spec }
            | SelectStrategy::FillCapacityWithCategorySpec { worker_category_spec } => worker_category_spec.as_ref(),
            _ => None,
        }
    }
}

/// A worker as the planner sees it: room left and groups present, updated as it plans.
#[derive(Debug, Clone)]
struct Slots {
    host: String,
    category: String,
    capacity: u32,
    used: u32,
    groups: BTreeSet<String>,
}

impl Slots {
    fn can_run(&self, task: &Task) -> bool {
        self.capacity.saturating_sub(self.used) >= task.spec.required_capacity()
            && !self.groups.contains(task.spec.availability_group())
    }
}

/// What the assigner should do now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (task, worker host), in the order the tasks were offered.
    pub assignments: Vec<(String, String)>,
    /// Tasks whose readiness check failed: they end FAILED with this message.
    pub failures: Vec<(String, String)>,
    /// Earliest leader time at which a task not yet ready becomes ready.
    pub next_ready_ms: Option<u64>,
}

/// Druid's message for a task whose `isReady` threw.
pub const NOT_READY_FAILURE: &str =
    "Failed while waiting for the task to be ready to run. See overlord logs for more details.";

/// Plans assignments for the waiting tasks (see the module docs).
pub fn plan(tasks: &TaskTable, workers: &WorkerTable, locks: &LockTable, now_ms: u64) -> Plan {
    // Locks granted by this plan so far, so two waiting tasks that conflict are not both placed.
    let mut locks = locks.clone();
    let mut slots: Vec<Slots> = workers
        .all()
        .filter(|r| r.usable())
        .map(|r| Slots {
            host: r.worker.host.clone(),
            category: r.worker.category.clone(),
            capacity: r.worker.capacity,
            used: r.used(tasks),
            groups: r
                .tasks
                .iter()
                .filter_map(|id| tasks.get(id))
                .map(|t| t.spec.availability_group().to_string())
                .collect(),
        })
        .collect();
    let strategy = &workers.config.select_strategy;
    let mut out = Plan::default();
    for task in tasks.waiting_in_order() {
        if slots.iter().all(|s| s.used >= s.capacity) {
            break;
        }
        if !matches!(readiness(task, now_ms), Readiness::Ready) {
            continue;
        }
        if let Some(i) = select_worker(strategy, task, &slots) {
            if !task.spec.locks.is_empty() {
                let requester = Requester::from(&task.spec);
                if locks
                    .apply_acquire_all(0, now_ms, &requester, &task.spec.locks, |_| None)
                    .is_err()
                {
                    continue;
                }
            }
            let s = &mut slots[i];
            s.used = s.used.saturating_add(task.spec.required_capacity());
            s.groups.insert(task.spec.availability_group().to_string());
            out.assignments.push((task.spec.id.clone(), s.host.clone()));
        }
    }
    // Readiness is checked for every waiting task, as Druid's queue does, even when no worker
    // has room: a task whose check fails must fail now, not when a slot frees up. Only tasks
    // with a readiness gate can fail it or become ready later, and the table indexes those.
    for task in tasks.gated_in_order() {
        match readiness(task, now_ms) {
            Readiness::Fails => out.failures.push((task.spec.id.clone(), NOT_READY_FAILURE.to_string())),
            Readiness::At(at) => out.next_ready_ms = Some(out.next_ready_ms.map_or(at, |t| t.min(at))),
            Readiness::Ready | Readiness::Never => {}
        }
    }
    out
}

/// What Druid's `isReady` answers for a task at a time.
enum Readiness {
    Ready,
    /// Ready from this leader time on.
    At(u64),
    Never,
    Fails,
}

fn readiness(task: &Task, now_ms: u64) -> Readiness {
    match task.spec.readiness.result {
        ReadyResult::No => Readiness::Never,
        ReadyResult::Exception => Readiness::Fails,
        ReadyResult::Yes => {
            let at = task.created_ms.saturating_add(task.spec.readiness.after_ms);
            if at > now_ms {
                Readiness::At(at)
            } else {
                Readiness::Ready
            }
        }
    }
}

/// Druid's `WorkerSelectUtils.selectWorker`: affinity or category first, then the strategy's
/// preference among what remains. Returns an index into `slots`.
fn select_worker(strategy: &SelectStrategy, task: &Task, slots: &[Slots]) -> Option<usize> {
    let runnable: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].can_run(task)).collect();
    let pick = |candidates: &[usize]| best(strategy.fill(), slots, candidates);
    if let Some(spec) = strategy.category_spec() {
        if let Some(cfg) = spec.category_map.get(&task.spec.task_type) {
            let preferred = cfg
                .category_affinity
                .get(&task.spec.datasource)
                .or(cfg.default_category.as_ref());
            if let Some(category) = preferred {
                let in_category: Vec<usize> = runnable
                    .iter()
                    .copied()
                    .filter(|&i| &slots[i].category == category)
                    .collect();
                match pick(&in_category) {
                    Some(i) => return Some(i),
                    None if spec.strong => return None,
                    None => {}
                }
            }
        }
        return pick(&runnable);
    }
    let Some(affinity) = strategy.affinity() else {
        return pick(&runnable);
    };
    let affinity_hosts: BTreeSet<&String> = affinity.affinity.values().flatten().collect();
    let non_affinity: Vec<usize> = runnable
        .iter()
        .copied()
        .filter(|&i| !affinity_hosts.contains(&slots[i].host))
        .collect();
    match affinity.affinity.get(&task.spec.datasource) {
        None => pick(&non_affinity),
        Some(hosts) => {
            let own: Vec<usize> = runnable
                .iter()
                .copied()
                .filter(|&i| hosts.contains(&slots[i].host))
                .collect();
            match pick(&own) {
                Some(i) => Some(i),
                None if affinity.strong => None,
                None => pick(&non_affinity),
            }
        }
    }
}

/// equalDistribution: most free capacity; fillCapacity: most capacity in use. Ties go to the
/// smaller host name, so plans are deterministic.
fn best(fill: bool, slots: &[Slots], candidates: &[usize]) -> Option<usize> {
    candidates.iter().copied().min_by(|&a, &b| {
        let (sa, sb) = (&slots[a], &slots[b]);
        let key = |s: &Slots| {
            if fill {
                -(s.used as i64)
            } else {
                -((s.capacity as i64) - (s.used as i64))
            }
        };
        key(sa).cmp(&key(sb)).then_with(|| sa.host.cmp(&sb.host))
    })
}

/// The category a worker has when none is configured.
pub fn default_category() -> String {
    DEFAULT_CATEGORY.to_string()
}

#[cfg(test)]
mod tests;
