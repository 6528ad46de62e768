//! The replicated state machine: the command envelope, dispatch and replies.
//!
//! [`State`] holds every table. [`Command`] is the closed set of changes; each variant is applied
//! by its concept's `apply_*` function. `apply` is pure and deterministic: time comes from the
//! leader-stamped entry ([`ApplyContext::time_ms`]), rejections are data in the [`Reply`], and
//! nothing iterates a hash map. Every command is safe to apply twice (a client write that timed
//! out may still commit): a repeated submit is refused as a duplicate, a repeated shutdown finds
//! the task complete, a repeated announcement changes nothing.

use raftlord_raft::{ApplyContext, StateMachine};
use serde::{Deserialize, Serialize};

use crate::nodes::{NodeAnnouncement, NodeTable};
use crate::tasks::{NewTask, ShutdownOutcome, SubmitRejected, TaskTable};

/// Everything raftlord replicates.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub tasks: TaskTable,
    pub nodes: NodeTable,
}

/// One change to the state.
///
/// Externally tagged (`{"submitTask": {...}}`): task payloads are kept as raw JSON, which serde
/// can only read from an unbuffered enum representation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Store a new task, unless its id exists or more than `max_active` tasks are active.
    #[serde(rename_all = "camelCase")]
    SubmitTask { task: NewTask, max_active: Option<u64> },
    /// Fail an active task with `reason`.
    #[serde(rename_all = "camelCase")]
    ShutdownTask { id: String, reason: String },
    /// Fail every active task of a datasource with `reason`.
    ShutdownDatasourceTasks { datasource: String, reason: String },
    /// Record (or refresh) a node's announcement.
    AnnounceNode { node: NodeAnnouncement },
    /// Remove a node's announcement.
    WithdrawNode { id: String },
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "camelCase")]
pub enum Reply {
    Submitted { id: String },
    SubmitRejected { id: String, rejected: SubmitRejected },
    Shutdown { outcome: ShutdownOutcome },
    ShutdownDatasource { stopped: Vec<String> },
    NodeChanged { changed: bool },
}

impl StateMachine for State {
    type Command = Command;
    type Reply = Reply;

    fn apply(&mut self, ctx: ApplyContext, command: Command) -> Reply {
        match command {
            Command::SubmitTask { task, max_active } => {
                let id = task.id.clone();
                match self.tasks.apply_submit(ctx.index, ctx.time_ms, task, max_active) {
                    Ok(()) => Reply::Submitted { id },
                    Err(rejected) => Reply::SubmitRejected { id, rejected },
                }
            }
            Command::ShutdownTask { id, reason } => Reply::Shutdown {
                outcome: self.tasks.apply_shutdown(ctx.time_ms, &id, &reason),
            },
            Command::ShutdownDatasourceTasks { datasource, reason } => Reply::ShutdownDatasource {
                stopped: self.tasks.apply_shutdown_datasource(ctx.time_ms, &datasource, &reason),
            },
            Command::AnnounceNode { node } => Reply::NodeChanged {
                changed: self.nodes.apply_announce(ctx.time_ms, &node),
            },
            Command::WithdrawNode { id } => Reply::NodeChanged {
                changed: self.nodes.apply_withdraw(&id),
            },
        }
    }
}

#[cfg(test)]
mod tests;
