//! Node announcements: which raftlord nodes exist, their roles, URLs and versions.
//!
//! Druid announces each process in ZooKeeper (`DiscoveryDruidNode`); raftlord keeps the same
//! facts in the replicated state, written by the node itself through an `AnnounceNode` command
//! when it starts and withdrawn when it stops. [`discovery`] turns changes of this table into
//! Druid-style listener calls for in-process components.

pub mod discovery;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Druid's node roles that a raftlord node can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeRole {
    Overlord,
    Coordinator,
    MiddleManager,
    Historical,
}

/// One node's announcement, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAnnouncement {
    /// Stable name of the node, e.g. `node-1`.
    pub id: String,
    /// Raft member id, when the node is a Raft member.
    pub raft_id: Option<u64>,
    pub roles: Vec<NodeRole>,
    /// Base URL of the node's HTTP port.
    pub url: String,
    pub version: String,
    /// Leader time when the current announcement was applied.
    #[serde(default)]
    pub announced_ms: u64,
}

/// All announced nodes, by id.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct NodeTable {
    nodes: BTreeMap<String, NodeAnnouncement>,
}

impl NodeTable {
    pub fn get(&self, id: &str) -> Option<&NodeAnnouncement> {
        self.nodes.get(id)
    }

    pub fn all(&self) -> impl Iterator<Item = &NodeAnnouncement> {
        self.nodes.values()
    }

    /// Records an announcement; an identical re-announcement changes nothing and returns false.
    pub fn apply_announce(&mut self, time_ms: u64, node: &NodeAnnouncement) -> bool {
        if let Some(existing) = self.nodes.get(&node.id) {
            let same = NodeAnnouncement {
                announced_ms: existing.announced_ms,
                ..node.clone()
            };
            if &same == existing {
                return false;
            }
        }
        self.nodes.insert(
            node.id.clone(),
            NodeAnnouncement {
                announced_ms: time_ms,
                ..node.clone()
            },
        );
        true
    }

    /// Removes a node's announcement; returns whether it was there.
    pub fn apply_withdraw(&mut self, id: &str) -> bool {
        self.nodes.remove(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(id: &str, url: &str) -> NodeAnnouncement {
        NodeAnnouncement {
            id: id.into(),
            raft_id: Some(1),
            roles: vec![NodeRole::Overlord, NodeRole::Coordinator],
            url: url.into(),
            version: "0.1.0".into(),
            announced_ms: 0,
        }
    }

    #[test]
    fn announce_is_idempotent_and_updates_on_change() {
        let mut t = NodeTable::default();
        assert!(t.apply_announce(10, &node("n1", "http://a")));
        assert!(!t.apply_announce(20, &node("n1", "http://a")));
        assert_eq!(t.get("n1").unwrap().announced_ms, 10);
        assert!(t.apply_announce(30, &node("n1", "http://b")));
        assert_eq!(t.get("n1").unwrap().url, "http://b");
        assert!(t.apply_withdraw("n1"));
        assert!(!t.apply_withdraw("n1"));
    }
}
