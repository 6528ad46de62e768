//! Fault injection against real `raftlord` processes, in the spirit of Jepsen and etcd's
//! robustness tests: nodes in network namespaces that this crate creates and removes, nemeses
//! that partition them, workloads that record what every client was told, and checkers that hold
//! the cluster's final state and the clients' histories to Raft's and Druid's promises.
//!
//! The test suite runs a few rounds (`tests/partitions.rs`); the benchmark runs more
//! (`raftlord-bench partitions`). Network namespaces need root and iproute2:
//! [`netns::unavailable`] says why they cannot be used, so callers can skip with that reason.

pub mod netns;
pub mod partitions;
