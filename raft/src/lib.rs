//! openraft glue for raftlord, generic over the application's state machine.
//!
//! This crate turns any deterministic [`StateMachine`] into a replicated one:
//!
//! - [`types`]: the openraft type configuration ([`TypeConfig`]), the [`Batch`] that is one Raft
//!   entry, and [`NodeInfo`], the per-member data kept in the membership config;
//! - [`state_machine`]: openraft's `RaftStateMachine` over the application state, with consistent
//!   snapshots stored durably through `raftlord-storage`;
//! - [`disk`]: the free-space floor under which the leader refuses writes;
//! - [`elect`]: elections called as soon as the leader's lease runs out, re-randomised on every
//!   attempt so that split votes do not repeat;
//! - [`proposer`]: the leader's write path, which groups concurrent commands into one Raft entry so
//!   that one fsync carries many writes (openraft 0.9 flushes once per append);
//! - [`network`] and [`server`]: Raft RPCs over HTTP, authenticated with the cluster secret, with
//!   a fault injector that tests use to partition nodes;
//! - [`tls`]: HTTPS for the node's port and the cluster CA its clients trust;
//! - [`node`]: one Raft member wired together, cluster formation from a static peer list, and
//!   membership changes.
//!
//! It knows nothing of Druid.

// openraft's storage and RPC error types are large by design; they are what its traits return.
#![allow(clippy::result_large_err)]

pub mod disk;
pub mod elect;
pub mod network;
pub mod node;
pub mod proposer;
pub mod server;
pub mod state_machine;
pub mod tls;
pub mod types;

pub use node::{ClusterFormation, NodeError, RaftNode, RaftSettings};
pub use proposer::{ProposeError, Proposer};
pub use state_machine::{check_storable, ApplyContext, Shared, StateMachine, View, MAX_COMMAND_DEPTH};
pub use types::{Batch, NodeInfo, TypeConfig};
