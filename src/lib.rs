//! raftlord: Apache Druid's indexing-service control plane on Raft, in one binary.
//!
//! The Overlord's and Coordinator's state (tasks, workers, locks, segments, nodes) is one
//! replicated state machine ([`sm::State`]) driven by openraft through `raftlord-raft` and stored
//! in RocksDB through `raftlord-storage`. Modules, by concept:
//!
//! - [`tasks`]: the task table, Druid's task JSON, id rules, status shapes and queries;
//! - [`workers`]: workers (MiddleManagers) in the replicated state, select strategies, the
//!   assigner's plan;
//! - [`locks`]: task locks with Druid's lockbox rules and fencing tokens;
//! - [`segments`]: segment metadata, the versioned timeline, commit metadata, pending segments;
//! - [`audit`]: the trail of lock and segment changes;
//! - [`coordinator`]: retention rules, dynamic and compaction configs, Historicals' replicas, the
//!   load/drop/balance planner and the duties that run it;
//! - [`interval`]: Druid's ISO-8601 intervals;
//! - [`worker`]: the MiddleManager itself: runs assigned tasks in forked peon processes;
//! - [`historical`]: the Historical: a segment cache loaded and dropped as the Coordinator asks;
//! - [`nodes`]: node announcements in the replicated state and in-process discovery;
//! - [`sm`]: the command envelope, dispatch to each concept's `apply`, and replies;
//! - [`api`]: Druid's HTTP API and raftlord's own routes, one error-to-status mapping;
//! - [`leader`]: services that run only while this node leads;
//! - [`node`]: wiring, start-up stages and orderly shutdown; [`http_server`]: the HTTP server
//!   with its connection limits;
//! - [`cli`]: the command line;
//! - [`config`] and [`clock`] (the only reader of wall-clock time).

pub mod alloc;
pub mod api;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod coordinator;
pub mod historical;
pub mod http_server;
pub use raftlord_time::interval;
pub mod leader;
pub mod locks;
pub mod node;
pub mod nodes;
pub mod security;
pub mod segments;
pub mod sm;
pub mod tasks;
pub mod worker;
pub mod workers;

/// The replicated Raft node for raftlord's state machine.
pub type Raft = raftlord_raft::RaftNode<sm::State>;
