//! openraft's `RaftStateMachine` over an application [`StateMachine`].
//!
//! The application state lives in memory behind one lock, together with the last applied log id
//! and membership, so that a snapshot built under that lock is a consistent point-in-time view
//! (the snapshot metadata and the data always agree). Snapshots are written durably through
//! [`SnapshotStore`]; on start the state is restored from the newest snapshot and openraft
//! re-applies only the committed log tail after it, never the whole log.
//!
//! Every apply bumps a `watch` channel with the applied index, which is how in-process watchers
//! (the leader's services, discovery listeners, blocking reads) learn that state changed.

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use raftlord_storage::SnapshotStore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock, RwLockReadGuard};

use crate::types::{NodeInfo, TypeConfig};

/// Where an applied command sits in the log, and the time it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    /// Raft log index of the entry holding the command (usable as a fencing token).
    pub index: u64,
    /// Leader-stamped time in milliseconds since the Unix epoch, never lower than any earlier one.
    pub time_ms: u64,
}

/// A deterministic application state machine.
///
/// `apply` must be pure: no IO, no wall clock, no randomness. Domain rejections belong in the
/// reply, not in a panic. `clone` should be cheap (persistent collections): snapshots clone the
/// state under the lock and encode the copy outside it.
///
/// Whatever enters the log is applied on every replica, so a command that could not be stored,
/// read back or applied would stop them all. The [`Proposer`](crate::Proposer) therefore checks
/// each command before proposing it: [`validate`](Self::validate) (the application's rules),
/// then that it encodes, nests no deeper than [`MAX_COMMAND_DEPTH`] and decodes to an equal
/// value. `apply` must be total: a rejection is data in the reply.
pub trait StateMachine: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    type Command: Serialize + DeserializeOwned + std::fmt::Debug + Clone + PartialEq + Send + Sync + 'static;
    type Reply: Serialize + DeserializeOwned + std::fmt::Debug + Clone + Send + Sync + 'static;

    fn apply(&mut self, ctx: ApplyContext, command: Self::Command) -> Self::Reply;

    /// The application's rules for a command, checked before it is proposed; the error says
    /// what is wrong with it (a client gets it as a 400).
    fn validate(_command: &Self::Command) -> Result<(), String> {
        Ok(())
    }

    /// A short name for the command's kind, for log lines about it.
    fn command_kind(_command: &Self::Command) -> &'static str {
        "command"
    }
}

/// Deepest JSON nesting of one encoded command. serde_json refuses to read anything nested
/// deeper than 128 levels, and a command sits a few levels down in a log entry and deeper in a
/// snapshot: this leaves room for both.
pub const MAX_COMMAND_DEPTH: usize = 100;

/// Checks that a command can enter the log: the application's rules, then that it encodes, is
/// not nested too deeply, and decodes to an equal value.
pub fn check_storable<S: StateMachine>(command: &S::Command) -> Result<(), String> {
    S::validate(command)?;
    let bytes = serde_json::to_vec(command).map_err(|e| format!("the request cannot be stored: {e}"))?;
    let depth = raftlord_storage::json_depth(&bytes);
    if depth > MAX_COMMAND_DEPTH {
        return Err(format!(
            "the request nests JSON {depth} levels deep once stored; at most {MAX_COMMAND_DEPTH} are allowed"
        ));
    }
    match serde_json::from_slice::<S::Command>(&bytes) {
        Ok(back) if back == *command => Ok(()),
        Ok(_) => {
            Err("the request does not read back as it was written once stored; a value in it is out of range".into())
        }
        Err(e) => Err(format!("the request could not be read back once stored: {e}")),
    }
}

type NodeId = u64;
type SResult<T> = Result<T, StorageError<NodeId>>;

/// Application state plus the Raft bookkeeping that must move with it.
#[derive(Default)]
pub struct Applied<S> {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, NodeInfo>,
    /// Highest time stamp applied so far.
    pub last_time_ms: u64,
    pub state: S,
}

/// Snapshot data: the application state and the clock floor.
#[derive(Serialize, Deserialize)]
#[serde(bound = "S: Serialize + DeserializeOwned")]
struct SnapshotData<S> {
    last_time_ms: u64,
    state: S,
}

/// Serialising view of [`SnapshotData`], borrowing the state.
#[derive(Serialize)]
struct SnapshotDataRef<'a, S> {
    last_time_ms: u64,
    state: &'a S,
}

/// The state machine shared between openraft and readers in the node.
pub struct Shared<S> {
    inner: RwLock<Applied<S>>,
    applied_tx: watch::Sender<u64>,
    installed: AtomicU64,
    /// Log index and encoded size of the newest snapshot.
    last_snapshot: std::sync::Mutex<(u64, u64)>,
    /// Whether a snapshot is being encoded and written right now.
    building: AtomicBool,
}

/// A point-in-time copy of the applied state (see [`Shared::view`]).
pub struct View<S> {
    pub last_applied: Option<LogId<NodeId>>,
    pub state: S,
}

impl<S: StateMachine> Shared<S> {
    /// Read access to the applied state. Apply waits while the guard is held: keep it for
    /// lookups, and use [`view`](Self::view) for anything that walks a large table.
    pub async fn read(&self) -> RwLockReadGuard<'_, Applied<S>> {
        self.inner.read().await
    }

    /// A copy of the applied state as it is now, taken under the lock and read without it, so
    /// that a large read never stalls writes. Cheap when the state is made of persistent
    /// (copy-on-write) collections, as [`StateMachine`] asks.
    pub async fn view(&self) -> View<S> {
        let g = self.inner.read().await;
        View {
            last_applied: g.last_applied,
            state: g.state.clone(),
        }
    }

    /// How many snapshots were installed from a leader since start.
    pub fn snapshots_installed(&self) -> u64 {
        self.installed.load(Ordering::Relaxed)
    }

    /// Whether this node is building a snapshot right now (seconds of CPU on a large state).
    pub fn building_snapshot(&self) -> bool {
        self.building.load(Ordering::Relaxed)
    }

    /// Log index and size in bytes of the newest snapshot (built or installed).
    pub fn last_snapshot(&self) -> (u64, u64) {
        *self.last_snapshot.lock().expect("snapshot record lock")
    }

    fn record_snapshot(&self, index: u64, bytes: usize) {
        *self.last_snapshot.lock().expect("snapshot record lock") = (index, bytes as u64);
    }

    /// A receiver that sees the applied index every time it moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

/// openraft's view of the state machine.
///
/// The newest snapshot is kept only in its file and read back when a follower needs it.
pub struct StateMachineStore<S> {
    shared: Arc<Shared<S>>,
    snapshots: SnapshotStore,
}

impl<S: StateMachine> StateMachineStore<S> {
    /// Restores the state from the newest durable snapshot, if any.
    pub fn open(snapshots: SnapshotStore) -> Result<(Self, Arc<Shared<S>>), String> {
        let mut applied = Applied::<S>::default();
        let mut snapshot_bytes = 0;
        if let Some(stored) = snapshots
            .load::<SnapshotMeta<NodeId, NodeInfo>>()
            .map_err(|e| format!("reading the stored snapshot: {e}"))?
        {
            let data: SnapshotData<S> = serde_json::from_slice(&stored.data)
                .map_err(|e| format!("the stored snapshot cannot be decoded: {e}"))?;
            applied = Applied {
                last_applied: stored.meta.last_log_id,
                last_membership: stored.meta.last_membership.clone(),
                last_time_ms: data.last_time_ms,
                state: data.state,
            };
            snapshot_bytes = stored.data.len() as u64;
            snapshots.set_current_position(applied.last_applied.map_or(0, |l| l.index));
        }
        let index = applied.last_applied.map(|l| l.index).unwrap_or(0);
        let (applied_tx, _) = watch::channel(index);
        let shared = Arc::new(Shared {
            inner: RwLock::new(applied),
            applied_tx,
            installed: AtomicU64::new(0),
            last_snapshot: std::sync::Mutex::new((index, snapshot_bytes)),
            building: AtomicBool::new(false),
        });
        Ok((
            StateMachineStore {
                shared: shared.clone(),
                snapshots,
            },
            shared,
        ))
    }
}

/// The error for a command whose apply panicked. The state may be half changed, so the node
/// must stop: the error is fatal to openraft, and the node exits on it.
fn apply_panicked(index: u64, position: usize, kind: &str, panic: &(dyn std::any::Any + Send)) -> StorageError<NodeId> {
    let why = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    let message = format!(
        "applying log entry {index} (command {position}, {kind}) panicked: {why}; this node stops. \
         Inspect the entry with `raftlord debug log --data-dir <dir> --from {index}`"
    );
    tracing::error!(index, command = kind, "{message}");
    StorageIOError::apply(
        openraft::LogId::new(openraft::CommittedLeaderId::new(0, 0), index),
        &std::io::Error::other(message),
    )
    .into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

impl<S: StateMachine> RaftStateMachine<TypeConfig<S>> for StateMachineStore<S> {
    type SnapshotBuilder = SnapshotBuilder<S>;

    async fn applied_state(&mut self) -> SResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>)> {
        let g = self.shared.inner.read().await;
        Ok((g.last_applied, g.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Vec<S::Reply>>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig<S>>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut g = self.shared.inner.write().await;
        for entry in entries {
            g.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Vec::new()),
                EntryPayload::Membership(m) => {
                    g.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Vec::new());
                }
                EntryPayload::Normal(batch) => {
                    let time_ms = batch.time_ms.max(g.last_time_ms);
                    g.last_time_ms = time_ms;
                    let ctx = ApplyContext {
                        index: entry.log_id.index,
                        time_ms,
                    };
                    let mut out = Vec::with_capacity(batch.items.len());
                    for (position, c) in batch.items.into_iter().enumerate() {
                        let kind = S::command_kind(&c);
                        let state = &mut g.state;
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.apply(ctx, c))) {
                            Ok(reply) => out.push(reply),
                            Err(panic) => return Err(apply_panicked(ctx.index, position, kind, &panic)),
                        }
                    }
                    replies.push(out);
                }
            }
        }
        let index = g.last_applied.map(|l| l.index).unwrap_or(0);
        drop(g);
        self.shared.applied_tx.send_replace(index);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<Cursor<Vec<u8>>>> {
        self.snapshots.receiving(true);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<()> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData<S> = serde_json::from_slice(&bytes).map_err(read_err)?;
        let position = meta.last_log_id.map_or(0, |l| l.index);
        self.snapshots
            .save(meta, position, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.snapshots.receiving(false);
        {
            let mut g = self.shared.inner.write().await;
            *g = Applied {
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_time_ms: data.last_time_ms,
                state: data.state,
            };
        }
        self.shared
            .applied_tx
            .send_replace(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.shared.installed.fetch_add(1, Ordering::Relaxed);
        self.shared
            .record_snapshot(meta.last_log_id.map(|l| l.index).unwrap_or(0), bytes.len());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig<S>>>> {
        let stored = self
            .snapshots
            .load::<SnapshotMeta<NodeId, NodeInfo>>()
            .map_err(read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Lowers the calling thread's CPU priority to nice 10. On Linux `setpriority(PRIO_PROCESS,
/// tid)` applies to that one thread; elsewhere this does nothing.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority only changes this thread's nice value,
    // and a failure leaves it unchanged.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Builds a snapshot from a consistent view of the state.
pub struct SnapshotBuilder<S> {
    shared: Arc<Shared<S>>,
    snapshots: SnapshotStore,
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig<S>> for SnapshotBuilder<S> {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig<S>>> {
        /// Clears the flag however the build ends.
        struct Building<'a>(&'a AtomicBool);
        impl Drop for Building<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let shared = self.shared.clone();
        shared.building.store(true, Ordering::Relaxed);
        let _building = Building(&shared.building);
        self.build().await
    }
}

impl<S: StateMachine> SnapshotBuilder<S> {
    async fn build(&mut self) -> SResult<Snapshot<TypeConfig<S>>> {
        // Copy the state under the read lock (cheap for persistent collections) so metadata and
        // data describe the same log position, then encode without holding up writes.
        let (meta, state, last_time_ms) = {
            let g = self.shared.inner.read().await;
            let id = match g.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, g.last_time_ms),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta {
                last_log_id: g.last_applied,
                last_membership: g.last_membership.clone(),
                snapshot_id: id,
            };
            (meta, g.state.clone(), g.last_time_ms)
        };
        // Encoding and writing take time proportional to the whole state: do them on a
        // blocking thread, streaming into the file so the encoded snapshot is never held in
        // memory beside the state.
        let snapshots = self.snapshots.clone();
        let signature = meta.signature();
        let to_save = meta.clone();
        // Encoding a large state takes seconds of CPU: it runs on a thread of its own at a
        // lower priority, so request handling goes first.
        let (tx, rx) = tokio::sync::oneshot::channel::<SResult<Option<u64>>>();
        std::thread::Builder::new()
            .name("snapshot-encode".into())
            .spawn(move || {
                lower_thread_priority();
                let data = SnapshotDataRef {
                    last_time_ms,
                    state: &state,
                };
                let position = to_save.last_log_id.map_or(0, |l| l.index);
                let result = snapshots
                    .save_with(&to_save, position, |w| {
                        serde_json::to_writer(w, &data).map_err(std::io::Error::other)
                    })
                    .map_err(|e| StorageIOError::write_snapshot(Some(signature), &e).into());
                let _ = tx.send(result);
            })
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let written = rx.await;
        let saved = match written {
            Ok(result) => result?,
            Err(e) => return Err(StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()),
        };
        // `None`: a newer snapshot was installed while this one was written, and stays current.
        if let Some(bytes) = saved {
            self.shared
                .record_snapshot(meta.last_log_id.map(|l| l.index).unwrap_or(0), bytes as usize);
        }
        // openraft keeps only the metadata of a built snapshot; followers are sent the file
        // through `get_current_snapshot`.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}
