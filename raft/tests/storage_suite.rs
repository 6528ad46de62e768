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
        assert_ne!(k, "panic", "a command this state machine cannot apply");
        self.applied_at.push((ctx.index, ctx.time_ms));
        self.map.insert(k, v)
    }

    fn command_kind(_: &Self::Command) -> &'static str {
        "put"
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

/// Found a bug: the append's blocking write still held the database when it reported the
/// entries durable, so reopening right away failed on RocksDB's lock now and then.
#[tokio::test]
async fn appended_entries_and_vote_survive_an_immediate_reopen() {
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

/// Found a bug: openraft gives each AppendEntries one heartbeat interval, and a restarted
/// cluster whose log held large entries sent followers dozens of them per request, timed out
/// every time and never caught up. Replication reads are bounded by bytes, never empty.
#[tokio::test]
async fn replication_reads_are_bounded_by_bytes_so_large_entries_still_replicate() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut log = LogStore::<C>::new(engine);
    let big = "x".repeat(300 << 10);
    let entries: Vec<Entry<C>> = (1..=20)
        .map(|i| entry(1, i, vec![(format!("k{i}"), big.clone())], i))
        .collect();
    log.blocking_append(entries).await.unwrap();
    let limit = raftlord_storage::MAX_REPLICATION_BYTES;
    let first = log.limited_get_log_entries(1, 21).await.unwrap();
    assert!(!first.is_empty() && first.len() < 20, "got {} entries", first.len());
    let bytes: usize = first.iter().map(|e| serde_json::to_vec(e).unwrap().len()).sum();
    assert!(bytes <= limit + (400 << 10), "{bytes} bytes in one read");
    // One entry larger than the budget is still returned alone.
    let huge = "y".repeat(limit + 1);
    log.blocking_append(vec![entry(1, 21, vec![("h".into(), huge)], 21)])
        .await
        .unwrap();
    let alone = log.limited_get_log_entries(21, 22).await.unwrap();
    assert_eq!(alone.len(), 1);
    // Small entries come many at a time, up to the end of the range.
    let all_small = log.limited_get_log_entries(1, 3).await.unwrap();
    assert_eq!(all_small.len(), 2);
}

/// The committed id is not written when openraft reports it (that write queued behind the
/// running log fsync and stalled openraft's core at every commit); it is written with the next
/// append, or on shutdown. After a crash in between, the older stored id comes back.
#[tokio::test]
async fn committed_id_is_stored_with_the_next_append_or_on_shutdown() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let id = |i| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), i));
    let reopen = || LogStore::<C>::new(Engine::open(dir.path()).unwrap());
    {
        let mut log = reopen();
        log.blocking_append(vec![entry(1, 1, vec![], 1)]).await.unwrap();
        log.save_committed(id(1)).await.unwrap();
        assert_eq!(log.read_committed().await.unwrap(), id(1));
        // Stored in the same write as entry 2.
        log.blocking_append(vec![entry(1, 2, vec![], 2)]).await.unwrap();
        log.save_committed(id(2)).await.unwrap();
        // A crash now: nothing stored id 2.
    }
    {
        let mut log = reopen();
        assert_eq!(log.read_committed().await.unwrap(), id(1));
        log.save_committed(id(2)).await.unwrap();
        log.persist_committed().unwrap();
    }
    let mut log = reopen();
    assert_eq!(log.read_committed().await.unwrap(), id(2));
}

/// A command whose apply panics must not leave the node serving half-applied state: the state
/// machine reports a fatal error that names the entry's index and the command's kind.
#[tokio::test]
async fn a_panicking_apply_is_a_fatal_error_naming_the_entry_and_command() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let (mut sm, _) = StateMachineStore::<Kv>::open(SnapshotStore::new(engine)).unwrap();
    let err = sm
        .apply(vec![
            entry(1, 1, vec![("a".into(), "1".into())], 1),
            entry(1, 2, vec![("b".into(), "2".into()), ("panic".into(), "x".into())], 2),
        ])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("log entry 2 (command 1, put) panicked"), "{err}");
    assert!(err.contains("raftlord debug log"), "{err}");
}

/// An entry that was stored but cannot be decoded (written by a build whose commands did not
/// read back) is reported with its index and what it holds, not as a bare JSON error.
#[tokio::test]
async fn an_undecodable_entry_is_reported_with_its_index_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let mut log = LogStore::<C>::new(engine.clone());
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(vec![entry(1, 1, vec![("a".into(), "1".into())], 5)])
            .await
            .unwrap();
        engine.flush().unwrap();
    }
    // Write index 2 as an entry nested past serde_json's limit, straight into the database.
    let deep = format!("{}1{}", "[".repeat(140), "]".repeat(140));
    let text = format!(
        r#"{{"log_id":{{"leader_id":{{"term":1,"node_id":1}},"index":2}},"payload":{{"Normal":{{"time_ms":6,"items":[["k",{deep}]]}}}}}}"#
    );
    {
        let db = rocksdb_for_test(dir.path());
        let mut value = vec![1u8];
        value.extend_from_slice(text.as_bytes());
        db.put_cf(db.cf_handle("log").unwrap(), 2u64.to_be_bytes(), value)
            .unwrap();
    }
    let engine = Engine::open(dir.path()).unwrap();
    let mut log = LogStore::<C>::new(engine.clone());
    let err = log.try_get_log_entries(1..3).await.unwrap_err().to_string();
    assert!(err.contains("log entry 2"), "{err}");
    assert!(err.contains("Normal"), "{err}");
    let raw = engine.raw_log_entries(1, 10).unwrap();
    assert_eq!(raw.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 2]);
}

/// The largest write-ahead log file of the database under `dir`: the one holding the entries.
/// Entries 1 to 50, one append (one write-ahead log record) each, then the log mark at 50.
async fn append_fifty_records_and_mark(log: &mut LogStore<C>) {
    use openraft::storage::RaftLogStorageExt;
    for i in 1..=50 {
        log.blocking_append(vec![entry(1, i, vec![(format!("key-{i}"), "v".repeat(100))], i)])
            .await
            .unwrap();
    }
    log.persist_mark().unwrap();
}

fn largest_wal(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a write-ahead log file")
}

fn rocksdb_for_test(dir: &std::path::Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf(&opts, dir.join("db"), ["log", "meta"]).unwrap()
}

/// Found by deleting `db/` and keeping the snapshot: the node started from the snapshot alone,
/// without its vote and the entries after it, and served what was left.
#[test]
fn a_missing_database_beside_a_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        SnapshotStore::new(engine).save(&"meta".to_string(), 1, b"{}").unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let err = Engine::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("database holding the log and the vote is gone"), "{err}");
    assert!(err.contains("--join"), "{err}");
}

/// Found by flipping bytes in the write-ahead log: RocksDB's default recovery stopped at the
/// damage and the node served what came before it, silently losing acknowledged entries.
#[tokio::test]
async fn a_damaged_write_ahead_log_is_refused_at_start() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let mut log = LogStore::<C>::new(engine);
        let entries: Vec<Entry<C>> = (1..=50)
            .map(|i| entry(1, i, vec![(format!("key-{i}"), "v".repeat(100))], i))
            .collect();
        log.blocking_append(entries).await.unwrap();
    }
    let wal = largest_wal(dir.path());
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 4000, "the entries are in the WAL ({} bytes)", bytes.len());
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 3] {
        *b ^= 0xff;
    }
    std::fs::write(&wal, &bytes).unwrap();
    let err = Engine::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is damaged"), "{err}");
}

/// Found by killing nodes with SIGKILL under a write load (`raftlord-bench failover`): a node
/// killed in the middle of writing a write-ahead log record refused to start ("Corruption:
/// truncated record body"). That record was never synced, so never acknowledged: the node now
/// opens with every entry before it.
#[tokio::test]
async fn a_write_ahead_log_record_torn_by_a_kill_is_dropped_and_the_node_starts() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let mut log = LogStore::<C>::new(engine);
        append_fifty_records_and_mark(&mut log).await;
        // The write the kill interrupts: a large record, cut short below.
        log.blocking_append(vec![entry(1, 51, vec![("big".to_string(), "w".repeat(20_000))], 51)])
            .await
            .unwrap();
    }
    let wal = largest_wal(dir.path());
    let bytes = std::fs::read(&wal).unwrap();
    // Half of the last record's payload is gone.
    let cut = bytes.len() - 10_000;
    std::fs::write(&wal, &bytes[..cut]).unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let last = engine.raw_log_entries(1, 100).unwrap().last().map(|(i, _)| *i);
    assert_eq!(last, Some(50));
}

/// Found by cutting the write-ahead log at a record boundary: RocksDB sees a log that simply
/// ends there, and the node served 40 of its 50 synced entries without a word. The log mark
/// kept beside the database now tells the loss apart.
#[tokio::test]
async fn a_write_ahead_log_cut_at_a_record_boundary_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path()).unwrap();
        let mut log = LogStore::<C>::new(engine);
        append_fifty_records_and_mark(&mut log).await;
    }
    let wal = largest_wal(dir.path());
    let bytes = std::fs::read(&wal).unwrap();
    // RocksDB's log format: 32 KiB blocks of records, each a 7-byte header (checksum, u16
    // little-endian length, type) and its payload. These records all fit in the first block.
    assert!(bytes.len() < 32 << 10, "the WAL fits one block ({} bytes)", bytes.len());
    let mut ends = vec![];
    let mut at = 0;
    while at + 7 <= bytes.len() {
        let len = u16::from_le_bytes([bytes[at + 4], bytes[at + 5]]) as usize;
        if len == 0 {
            break;
        }
        at += 7 + len;
        ends.push(at);
    }
    assert!(ends.len() >= 50, "{} records", ends.len());
    let cut = ends[ends.len() - 11];
    std::fs::write(&wal, &bytes[..cut]).unwrap();

    let err = Engine::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("is damaged") && err.contains("up to index 50"), "{err}");
    // What used to happen: without the mark, the shorter log opens as if nothing was lost.
    std::fs::remove_file(dir.path().join(raftlord_storage::mark::FILE)).unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let last = engine.raw_log_entries(1, 100).unwrap().last().map(|(i, _)| *i);
    assert!(last < Some(50), "the cut removed entries: the log ends at {last:?}");
}

/// Found a bug (a follower killed with SIGKILL could not restart: "Failed to get log entries,
/// expected index: [0, 64), got [None, None)"): each append was written by a blocking task of
/// its own, so two appends could reach the disk in either order, and a truncate or vote went
/// to the disk ahead of appends made before it. openraft requires every log write in the order
/// asked. Here a truncate follows an append that is not durable yet: the append must not
/// bring the truncated entries back, and the log mark must not claim them.
#[tokio::test]
async fn a_truncate_after_an_unflushed_append_is_not_undone_by_it() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = LogStore::<C>::new(Engine::open(dir.path()).unwrap());
        let entries: Vec<Entry<C>> = (1..=3000)
            .map(|i| entry(1, i, vec![(format!("k{i}"), "v".repeat(100))], i))
            .collect();
        let mut writer = log.clone();
        let mut append = std::pin::pin!(writer.blocking_append(entries));
        // Runs `append` up to waiting for the write, which is queued but not done.
        tokio::select! {
            biased;
            r = &mut append => r.unwrap(),
            () = std::future::ready(()) => {}
        }
        log.truncate(LogId::new(openraft::CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        append.await.unwrap();
        let left = log.try_get_log_entries(0..10_000).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        log.persist_mark().unwrap();
    }
    let mut log = LogStore::<C>::new(Engine::open(dir.path()).expect("the mark does not claim truncated entries"));
    let left = log.try_get_log_entries(0..10_000).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

/// Found a bug (a follower killed with SIGKILL in the partition test came back with its log
/// purged and no snapshot: "Failed to get log entries, expected index: [0, 64)"): openraft
/// purges the entries an installed snapshot covers without waiting for the state machine to
/// store it. While a snapshot is received, a purge waits until a stored snapshot covers it.
#[tokio::test]
async fn a_purge_during_a_snapshot_install_waits_for_the_snapshot_to_be_stored() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let id = |i| LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
    let engine = Engine::open(dir.path()).unwrap();
    let snapshots = SnapshotStore::new(engine.clone());
    let mut log = LogStore::<C>::new(engine);
    log.blocking_append((1..=10).map(|i| entry(1, i, vec![], i)).collect::<Vec<_>>())
        .await
        .unwrap();
    snapshots.receiving(true);
    let mut purging = log.clone();
    let purge = tokio::spawn(async move { purging.purge(id(8)).await });
    // Not before a snapshot covering 8 is stored: one at 6 is not enough.
    snapshots.save(&"meta".to_string(), 6, b"data").unwrap();
    // A later write through the log's writer: a purge that did not wait would be done by now.
    log.blocking_append(vec![entry(1, 11, vec![], 11)]).await.unwrap();
    assert!(!purge.is_finished(), "purged past the stored snapshot");
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, None);
    snapshots.save(&"meta".to_string(), 8, b"data").unwrap();
    snapshots.receiving(false);
    purge.await.unwrap().unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(id(8)));
    let left = log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(left.first().map(|e| e.log_id.index), Some(9));
}
