//! openraft's storage conformance suite against the RocksDB log store and the snapshotting
//! state machine, in a temp dir; plus durability across reopen.

use std::collections::BTreeMap;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, LogId, StorageError, Vote};
use raftlord_raft::state_machine::StateMachineStore;
use raftlord_raft::{ApplyContext, Batch, StateMachine, TypeConfig};
use raftlord_storage::{Engine, LogStore, SnapshotStore};
use serde::{Deserialize, Serialize};

/// A tiny key-value state machine for exercising the glue.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Kv {
    map: BTreeMap<String, String>,
    applied_at: Vec<(u64, u64)>,
}

impl StateMachine for Kv {
    type Command = (String, String);
    type Reply = Option<String>;

    fn apply(&mut self, ctx: ApplyContext, (k, v): Self::Command) -> Option<String> {
        self.applied_at.push((ctx.index, ctx.time_ms));
        self.map.insert(k, v)
    }
}

type C = TypeConfig<Kv>;

struct Builder;

impl StoreBuilder<C, LogStore<C>, StateMachineStore<Kv>, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore<C>, StateMachineStore<Kv>), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let (sm, _) = StateMachineStore::<Kv>::open(SnapshotStore::new(engine.clone())).unwrap();
        Ok((dir, LogStore::new(engine), sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_rocksdb() {
    Suite::test_all(Builder).unwrap();
}

fn entry(term: u64, index: u64, items: Vec<(String, String)>, time_ms: u64) -> Entry<C> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Batch { time_ms, items }),
    }
}

#[tokio::test]
async fn appended_entries_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let mut log = LogStore::<C>::new(engine);
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(vec![entry(1, 1, vec![("a".into(), "1".into())], 5)])
            .await
            .unwrap();
    }
    let engine = Engine::open(dir.path()).unwrap();
    let mut log = LogStore::<C>::new(engine);
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    let entries = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].log_id.index, 1);
}

#[tokio::test]
async fn apply_never_lets_time_run_backwards_and_snapshots_restore() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let (mut sm, shared) = StateMachineStore::<Kv>::open(SnapshotStore::new(engine.clone())).unwrap();
    let replies = sm
        .apply(vec![
            entry(1, 1, vec![("a".into(), "1".into())], 1000),
            entry(1, 2, vec![("a".into(), "2".into()), ("b".into(), "3".into())], 900),
        ])
        .await
        .unwrap();
    assert_eq!(replies, vec![vec![None], vec![Some("1".into()), None]]);
    assert_eq!(
        shared.read().await.state.applied_at,
        vec![(1, 1000), (2, 1000), (2, 1000)]
    );
    assert_eq!(*shared.subscribe().borrow(), 2);

    use openraft::RaftSnapshotBuilder;
    let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
    drop(sm);
    let (mut reopened, shared2) = StateMachineStore::<Kv>::open(SnapshotStore::new(engine)).unwrap();
    let (applied, _) = reopened.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2));
    assert_eq!(shared2.read().await.state.map.get("b").map(String::as_str), Some("3"));
}
