//! The rules a command must meet before it is proposed, beyond what the log codec itself checks
//! (that it encodes, nests at most [`MAX_COMMAND_DEPTH`](raftlord_raft::MAX_COMMAND_DEPTH)
//! levels and reads back equal: [`raftlord_raft::check_storable`]).
//!
//! Every command, whoever proposes it (an HTTP handler, a leader service, a worker's report),
//! passes through here once, in the proposer: a value that could not be stored, read back or
//! applied on every replica never reaches the log. The rules are about what the codec cannot
//! see: instants kept as plain numbers must still lie in the range that prints as ISO-8601.

use super::Command;
use crate::interval::{is_valid_instant, iso, Interval};
use crate::segments::SegmentFilter;
use crate::segments::SegmentKey;

/// Checks `command` against the rules above; the error says what is wrong.
pub fn validate(command: &Command) -> Result<(), String> {
    match command {
        Command::SubmitTask {
            task, idempotency_key, ..
        } => {
            if let Some(key) = idempotency_key {
                crate::tasks::idempotency::validate_key(key)?;
            }
            task.locks.iter().try_for_each(|l| l.interval.check())
        }
        Command::AcquireLock { request, .. } => request.interval.check(),
        Command::ReleaseLock { interval, .. } => interval.check(),
        Command::PublishSegments { publish, .. } => {
            let mut keys = publish.segments.iter().map(|s| &s.key).chain(&publish.overwritten);
            keys.try_for_each(check_key)
        }
        Command::MarkSegments { filter, .. } => match filter {
            SegmentFilter::All => Ok(()),
            SegmentFilter::Interval { interval, .. } => interval.check(),
            SegmentFilter::Keys { keys } => keys.iter().try_for_each(check_key),
        },
        Command::AllocateSegment { request, .. } => {
            if !is_valid_instant(request.timestamp) {
                return Err(format!(
                    "timestamp [{}] is out of range: it must lie in the years 0000 to 9999",
                    iso(request.timestamp)
                ));
            }
            request.preferred_interval.check()
        }
        Command::DeletePendingSegments { created, .. } => created.as_ref().map_or(Ok(()), Interval::check),
        Command::DeleteSegments { keys, .. } => keys.iter().try_for_each(check_key),
        Command::Security(command) => crate::security::validate(command),
        Command::SetCoordinatorConfig { config, .. } => config.check(),
        Command::SetCompactionConfig { datasource, config, .. } => {
            crate::segments::validate_datasource(datasource)?;
            match config {
                Some(c) if c.data_source != *datasource => {
                    Err(format!("dataSource: [{}] is not [{datasource}]", c.data_source))
                }
                Some(c) => c.check(),
                None => Ok(()),
            }
        }
        Command::SetCompactionSlots { slots } => slots.check(),
        Command::SetRules { datasource, rules, .. } => {
            if datasource != crate::coordinator::DEFAULT_RULES {
                crate::segments::validate_datasource(datasource)?;
            }
            rules
                .iter()
                .enumerate()
                .try_for_each(|(i, r)| r.check(&format!("[{i}]")).map_err(|e| e.to_string()))
        }
        Command::RegisterHistorical { server } => server.check(),
        Command::PlanReplicas { loads, drops } => {
            if loads.len() + drops.len() > MAX_REPLICA_REQUESTS {
                return Err(format!("at most {MAX_REPLICA_REQUESTS} loads and drops per command"));
            }
            let mut keys = loads
                .iter()
                .map(|l| &l.segment.key)
                .chain(drops.iter().map(|d| &d.segment.key));
            keys.try_for_each(check_key)
        }
        Command::ReportReplicas { reports, .. } => {
            if reports.len() > MAX_REPLICA_REQUESTS {
                return Err(format!("at most {MAX_REPLICA_REQUESTS} outcomes per report"));
            }
            reports.iter().try_for_each(|r| check_key(&r.segment.key))
        }
        Command::HistoricalLost { .. }
        | Command::ShutdownTask { .. }
        | Command::ShutdownDatasourceTasks { .. }
        | Command::AnnounceNode { .. }
        | Command::WithdrawNode { .. }
        | Command::RegisterWorker { .. }
        | Command::SetWorkerEnabled { .. }
        | Command::WorkerLost { .. }
        | Command::AssignTasks { .. }
        | Command::UnassignTask { .. }
        | Command::FailUnstartedTask { .. }
        | Command::ReportTasks { .. }
        | Command::SetWorkerConfig { .. }
        | Command::SetDatasourceMetadata { .. }
        | Command::PruneHistory { .. }
        | Command::CleanMetadata {} => Ok(()),
    }
}

/// Most loads, drops or outcomes one command carries: a run or a report with more is split.
pub const MAX_REPLICA_REQUESTS: usize = 20_000;

fn check_key(key: &SegmentKey) -> Result<(), String> {
    key.interval().check()
}

/// The command's name as it appears in the log (`submitTask`, `publishSegments`, ...).
pub fn kind(command: &Command) -> &'static str {
    match command {
        Command::SubmitTask { .. } => "submitTask",
        Command::ShutdownTask { .. } => "shutdownTask",
        Command::ShutdownDatasourceTasks { .. } => "shutdownDatasourceTasks",
        Command::AnnounceNode { .. } => "announceNode",
        Command::WithdrawNode { .. } => "withdrawNode",
        Command::RegisterWorker { .. } => "registerWorker",
        Command::SetWorkerEnabled { .. } => "setWorkerEnabled",
        Command::WorkerLost { .. } => "workerLost",
        Command::AssignTasks { .. } => "assignTasks",
        Command::UnassignTask { .. } => "unassignTask",
        Command::FailUnstartedTask { .. } => "failUnstartedTask",
        Command::ReportTasks { .. } => "reportTasks",
        Command::SetWorkerConfig { .. } => "setWorkerConfig",
        Command::SetRules { .. } => "setRules",
        Command::SetCoordinatorConfig { .. } => "setCoordinatorConfig",
        Command::SetCompactionConfig { .. } => "setCompactionConfig",
        Command::SetCompactionSlots { .. } => "setCompactionSlots",
        Command::RegisterHistorical { .. } => "registerHistorical",
        Command::HistoricalLost { .. } => "historicalLost",
        Command::PlanReplicas { .. } => "planReplicas",
        Command::ReportReplicas { .. } => "reportReplicas",
        Command::AcquireLock { .. } => "acquireLock",
        Command::ReleaseLock { .. } => "releaseLock",
        Command::PublishSegments { .. } => "publishSegments",
        Command::MarkSegments { .. } => "markSegments",
        Command::AllocateSegment { .. } => "allocateSegment",
        Command::DeletePendingSegments { .. } => "deletePendingSegments",
        Command::DeleteSegments { .. } => "deleteSegments",
        Command::SetDatasourceMetadata { .. } => "setDatasourceMetadata",
        Command::PruneHistory { .. } => "pruneHistory",
        Command::CleanMetadata {} => "cleanMetadata",
        Command::Security(_) => "security",
    }
}
