//! The leader's write path: concurrent commands grouped into one Raft entry.
//!
//! openraft 0.9 waits for each append's fsync before it takes the next client write, so one
//! command per entry would cap a node at one write per fsync. Instead every caller hands its
//! command to the proposer's queue; the proposer takes everything that is waiting (up to
//! `max_batch`) as one [`Batch`], stamps it with the leader's clock and writes it with one
//! `client_write`. A few batches may be in flight at once so serialisation overlaps the flush.
//! Each caller gets back the reply of its own command.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::disk::DiskSpace;
use crate::state_machine::{check_storable, StateMachine};
use crate::types::{Batch, Raft};

/// Why a proposal did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is where to send the write, when one is known.
    #[error("this node is not the leader")]
    NotLeader { leader: Option<(u64, String)> },
    /// The write may or may not have committed (the node is shutting down or lost leadership
    /// while the write was in flight). Commands are idempotent, so retrying is safe.
    #[error("the write did not complete: {0}")]
    Unavailable(String),
    /// The command was not proposed: it breaks the state machine's rules, or could not be
    /// stored and read back (see [`check_storable`]). Nothing was written.
    #[error("{0}")]
    Invalid(String),
}

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Pending<S: StateMachine> {
    command: S::Command,
    reply: oneshot::Sender<Result<S::Reply, ProposeError>>,
}

/// Handle for proposing commands. Cheap to clone.
pub struct Proposer<S: StateMachine> {
    tx: mpsc::Sender<Pending<S>>,
    disk: Option<DiskSpace>,
}

impl<S: StateMachine> Clone for Proposer<S> {
    fn clone(&self) -> Self {
        Proposer {
            tx: self.tx.clone(),
            disk: self.disk.clone(),
        }
    }
}

impl<S: StateMachine> Proposer<S> {
    /// Starts the batching loop; it ends when every handle is dropped.
    /// With `disk`, proposals are refused while that disk is nearly full.
    pub fn start(raft: Raft<S>, clock: Clock, max_batch: usize, max_in_flight: usize, disk: Option<DiskSpace>) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(raft, clock, rx, max_batch.max(1), max_in_flight.max(1)));
        Proposer { tx, disk }
    }

    /// Proposes one command and waits until it is committed and applied on this node. A
    /// command that fails [`check_storable`] is refused before it reaches the log.
    pub async fn propose(&self, command: S::Command) -> Result<S::Reply, ProposeError> {
        check_storable::<S>(&command).map_err(ProposeError::Invalid)?;
        if let Some(disk) = &self.disk {
            disk.check().map_err(ProposeError::Unavailable)?;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| ProposeError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| ProposeError::Unavailable("the node is shutting down".into()))?
    }

    /// Resolves when the batching loop has ended while this handle still exists: it can only
    /// have panicked, and no write will ever commit through it again.
    pub async fn stopped(&self) {
        self.tx.closed().await
    }
}

async fn run<S: StateMachine>(
    raft: Raft<S>,
    clock: Clock,
    mut rx: mpsc::Receiver<Pending<S>>,
    max_batch: usize,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut last_time = 0u64;
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut pending = vec![first];
        while pending.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        last_time = last_time.max(clock());
        let raft = raft.clone();
        let time_ms = last_time;
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) = pending.into_iter().map(|p| (p.command, p.reply)).unzip();
            match raft.client_write(Batch { time_ms, items }).await {
                Ok(resp) => {
                    for (reply, tx) in resp.data.into_iter().zip(replies) {
                        let _ = tx.send(Ok(reply));
                    }
                }
                Err(err) => {
                    let e = match err {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                            leader: f.leader_id.zip(f.leader_node.map(|n| n.url)),
                        },
                        other => ProposeError::Unavailable(other.to_string()),
                    };
                    for tx in replies {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
