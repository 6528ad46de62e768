//! The openraft type configuration, generic over the application state machine.

use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::state_machine::StateMachine;

/// What the cluster knows about one member: where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Base URL of the node's HTTP port, e.g. `http://10.0.0.5:8090`.
    pub url: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// One Raft log entry's payload: commands proposed together, stamped with the leader's clock.
///
/// `time_ms` is the only time `apply` ever sees; the state machine never lets it run backwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
pub struct Batch<T> {
    pub time_ms: u64,
    pub items: Vec<T>,
}

/// openraft's type configuration for a state machine `S`.
pub struct TypeConfig<S>(PhantomData<fn() -> S>);

impl<S> Clone for TypeConfig<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for TypeConfig<S> {}
impl<S> Default for TypeConfig<S> {
    fn default() -> Self {
        TypeConfig(PhantomData)
    }
}
impl<S> PartialEq for TypeConfig<S> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<S> Eq for TypeConfig<S> {}
impl<S> PartialOrd for TypeConfig<S> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<S> Ord for TypeConfig<S> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<S> fmt::Debug for TypeConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypeConfig")
    }
}

impl<S: StateMachine> openraft::RaftTypeConfig for TypeConfig<S> {
    type D = Batch<S::Command>;
    type R = Vec<S::Reply>;
    type NodeId = u64;
    type Node = NodeInfo;
    type Entry = openraft::Entry<Self>;
    type SnapshotData = Cursor<Vec<u8>>;
    type AsyncRuntime = openraft::TokioRuntime;
    type Responder = openraft::impls::OneshotResponder<Self>;
}

/// The openraft handle for state machine `S`.
pub type Raft<S> = openraft::Raft<TypeConfig<S>>;
