//! In-process node discovery, as Druid's `DruidNodeDiscovery`.
//!
//! A listener registers for a role and is told, never concurrently, about nodes added and
//! removed, and once that the view is initialised. A listener registered late gets the current
//! nodes as one `nodes_added` call, then `view_initialized`. The view is fed by the replicated
//! node table: every applied change of the state wakes the discovery loop, which diffs the
//! table against what listeners were last told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{NodeAnnouncement, NodeRole};
use crate::Raft;

/// Receives node changes for one role. Calls never overlap and must not block.
pub trait NodeListener: Send + Sync {
    fn nodes_added(&self, nodes: &[NodeAnnouncement]);
    fn nodes_removed(&self, nodes: &[NodeAnnouncement]);
    fn view_initialized(&self) {}
}

struct Registration {
    role: NodeRole,
    listener: Arc<dyn NodeListener>,
}

#[derive(Default)]
struct Inner {
    known: BTreeMap<String, NodeAnnouncement>,
    initialized: bool,
    listeners: Vec<Registration>,
}

/// The discovery view; clone to share.
#[derive(Clone, Default)]
pub struct NodeDiscovery {
    inner: Arc<Mutex<Inner>>,
}

fn with_role(nodes: &[NodeAnnouncement], role: NodeRole) -> Vec<NodeAnnouncement> {
    nodes.iter().filter(|n| n.roles.contains(&role)).cloned().collect()
}

impl NodeDiscovery {
    /// Registers a listener for `role`, replaying the current view to it.
    pub fn register(&self, role: NodeRole, listener: Arc<dyn NodeListener>) {
        let mut inner = self.inner.lock().expect("discovery lock");
        if inner.initialized {
            let current: Vec<_> = inner.known.values().cloned().collect();
            let nodes = with_role(&current, role);
            if !nodes.is_empty() {
                listener.nodes_added(&nodes);
            }
            listener.view_initialized();
        }
        inner.listeners.push(Registration { role, listener });
    }

    /// Nodes currently known, optionally of one role.
    pub fn nodes(&self, role: Option<NodeRole>) -> Vec<NodeAnnouncement> {
        let inner = self.inner.lock().expect("discovery lock");
        inner
            .known
            .values()
            .filter(|n| role.is_none_or(|r| n.roles.contains(&r)))
            .cloned()
            .collect()
    }

    /// Replaces the view with `now`, telling listeners what changed.
    pub fn update(&self, now: Vec<NodeAnnouncement>) {
        let mut inner = self.inner.lock().expect("discovery lock");
        let now: BTreeMap<String, NodeAnnouncement> = now.into_iter().map(|n| (n.id.clone(), n)).collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (id, n) in &now {
            match inner.known.get(id) {
                Some(old) if old == n => {}
                Some(old) => {
                    removed.push(old.clone());
                    added.push(n.clone());
                }
                None => added.push(n.clone()),
            }
        }
        for (id, old) in &inner.known {
            if !now.contains_key(id) {
                removed.push(old.clone());
            }
        }
        let first = !inner.initialized;
        inner.known = now;
        inner.initialized = true;
        for reg in &inner.listeners {
            let r = with_role(&removed, reg.role);
            if !r.is_empty() {
                reg.listener.nodes_removed(&r);
            }
            let a = with_role(&added, reg.role);
            if !a.is_empty() {
                reg.listener.nodes_added(&a);
            }
            if first {
                reg.listener.view_initialized();
            }
        }
    }

    /// Follows the replicated node table until `cancel` fires.
    pub async fn run(self, raft: Arc<Raft>, cancel: CancellationToken) {
        let mut applied = raft.shared.subscribe();
        loop {
            let nodes: Vec<NodeAnnouncement> = raft.shared.read().await.state.nodes.all().cloned().collect();
            self.update(nodes);
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = applied.changed() => if changed.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::tests::node;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl NodeListener for Recorder {
        fn nodes_added(&self, nodes: &[NodeAnnouncement]) {
            for n in nodes {
                self.0.lock().unwrap().push(format!("+{}", n.id));
            }
        }
        fn nodes_removed(&self, nodes: &[NodeAnnouncement]) {
            for n in nodes {
                self.0.lock().unwrap().push(format!("-{}", n.id));
            }
        }
        fn view_initialized(&self) {
            self.0.lock().unwrap().push("init".into());
        }
    }

    #[test]
    fn listeners_see_adds_removes_and_one_initialisation() {
        let d = NodeDiscovery::default();
        let early = Arc::new(Recorder::default());
        d.register(NodeRole::Overlord, early.clone());
        d.update(vec![node("a", "http://a")]);
        d.update(vec![node("a", "http://a"), node("b", "http://b")]);
        d.update(vec![node("b", "http://b")]);
        assert_eq!(*early.0.lock().unwrap(), vec!["+a", "init", "+b", "-a"]);

        let late = Arc::new(Recorder::default());
        d.register(NodeRole::Overlord, late.clone());
        assert_eq!(*late.0.lock().unwrap(), vec!["+b", "init"]);

        let workers = Arc::new(Recorder::default());
        d.register(NodeRole::MiddleManager, workers.clone());
        assert_eq!(*workers.0.lock().unwrap(), vec!["init"]);
    }
}
