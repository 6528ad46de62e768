//! The Raft log, vote and committed index on RocksDB, as openraft's `RaftLogStorage`.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, RaftLogId, RaftTypeConfig, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode, index_key, key_index};
use crate::engine::{synced, Engine, CF_LOG, CF_META};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Raft log storage over an [`Engine`]. Clones share the database and the recent-entry cache.
pub struct LogStore<C: RaftTypeConfig> {
    engine: Engine,
    appended: Arc<AtomicU64>,
    recent: Arc<Mutex<Recent<C::Entry>>>,
    committed: Arc<Mutex<Committed<C::NodeId>>>,
    /// How far the log was synced, kept outside the database.
    mark: Arc<crate::mark::Mark>,
    _c: PhantomData<fn() -> C>,
}

/// The newest committed log id openraft reported, and whether it is written yet.
///
/// openraft calls `save_committed` on its core task at every commit. A RocksDB write there,
/// even an unsynced one, queues behind whatever synced log append is in progress, so each
/// commit stalled the core (and the reply to the next AppendEntries) for up to an fsync.
/// Instead the id is kept here and written in the same batch as the next append, and by
/// [`LogStore::persist_committed`] on shutdown. A stored committed id that is older than the
/// real one is safe: it only says how far a restarting node may apply on its own; the rest it
/// learns from the leader, as after a crash.
#[derive(Debug)]
struct Committed<NID: openraft::NodeId> {
    id: Option<LogId<NID>>,
    stored: bool,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            engine: self.engine.clone(),
            appended: self.appended.clone(),
            recent: self.recent.clone(),
            committed: self.committed.clone(),
            mark: self.mark.clone(),
            _c: PhantomData,
        }
    }
}

/// Most stored bytes of log entries kept in memory after they are appended.
pub const RECENT_BYTES: usize = 16 << 20;
/// Most log entries kept in memory after they are appended.
pub const RECENT_ENTRIES: usize = 8192;

/// The newest log entries, as appended, with their stored sizes: a contiguous run of indexes
/// ending at the last appended entry.
///
/// A leader sends every entry it appends to each follower right after appending it; reading
/// those back from RocksDB and decoding them once per follower cost more CPU than anything else
/// in the log. Entries are moved in on append (no copy); a read clones them.
struct Recent<E> {
    entries: VecDeque<(u64, usize, E)>,
    bytes: usize,
}

impl<E> Default for Recent<E> {
    fn default() -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<E: Clone> Recent<E> {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(i, _, _)| *i)
    }

    fn push(&mut self, index: u64, size: usize, entry: E) {
        if self.entries.back().is_some_and(|(last, _, _)| *last + 1 != index) {
            self.clear();
        }
        self.entries.push_back((index, size, entry));
        self.bytes += size;
        while self.entries.len() > RECENT_ENTRIES || (self.bytes > RECENT_BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size, _)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Drops entries at `index` and after.
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(i, _, _)| *i >= index) {
            if let Some((_, size, _)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|i| i <= index) {
            self.pop_front();
        }
    }

    /// Like [`LogStore::read_entries`], when the cache holds `start`.
    fn read(&self, start: u64, in_range: &impl Fn(u64) -> bool, max_bytes: usize) -> Option<Vec<E>> {
        let first = self.first()?;
        let skip = usize::try_from(start.checked_sub(first)?).ok()?;
        if skip >= self.entries.len() {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (index, size, entry) in self.entries.iter().skip(skip) {
            if !in_range(*index) || (!out.is_empty() && bytes.saturating_add(*size) > max_bytes) {
                break;
            }
            bytes = bytes.saturating_add(*size);
            out.push(entry.clone());
        }
        Some(out)
    }
}

type SResult<T, C> = Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    pub fn new(engine: Engine) -> Self {
        let last = engine.last_index().unwrap_or(0);
        let mark = Arc::new(crate::mark::Mark::new(engine.path(), last));
        // Brings the mark up to date once appends pause, so that it does not trail the log
        // for long; ends when the store is dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&mark);
            runtime.spawn(async move {
                loop {
                    tokio::time::sleep(crate::mark::WRITE_EVERY).await;
                    let Some(mark) = weak.upgrade() else { return };
                    let result = tokio::task::spawn_blocking(move || mark.persist()).await;
                    if let Ok(Err(e)) = result {
                        tracing::warn!(error = %e, "cannot write the log mark");
                    }
                }
            });
        }
        LogStore {
            mark,
            engine,
            appended: Arc::new(AtomicU64::new(0)),
            recent: Arc::new(Mutex::new(Recent::default())),
            committed: Arc::new(Mutex::new(Committed { id: None, stored: true })),
            _c: PhantomData,
        }
    }

    fn committed(&self) -> std::sync::MutexGuard<'_, Committed<C::NodeId>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the newest committed log id if it is not stored yet (on orderly shutdown, so a
    /// restart applies everything that was committed without waiting for a leader).
    pub fn persist_committed(&self) -> Result<(), StorageIOError<C::NodeId>> {
        let mut committed = self.committed();
        if !committed.stored {
            self.put_meta(KEY_COMMITTED, &committed.id, true)?;
            committed.stored = true;
        }
        Ok(())
    }

    /// Bytes RocksDB holds in memory for the database ([`Engine::memory_bytes`]).
    pub fn storage_memory_bytes(&self) -> u64 {
        self.engine.memory_bytes()
    }

    /// Writes the log mark if it trails the log (on orderly shutdown, so that the next start
    /// checks the whole log against it).
    pub fn persist_mark(&self) -> Result<(), StorageIOError<C::NodeId>> {
        self.mark.persist().map_err(|e| StorageIOError::write_logs(&e))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent<C::Entry>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A counter of the log bytes appended since this store was opened; snapshot scheduling
    /// compares it with the size of the last snapshot.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageIOError<C::NodeId>> {
        let cf = self.engine.cf(CF_META);
        match self.engine.db.get_cf(cf, key).map_err(|e| StorageIOError::read(&e))? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| StorageIOError::read(&e)),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), StorageIOError<C::NodeId>> {
        let cf = self.engine.cf(CF_META);
        let opts = if sync {
            synced()
        } else {
            rocksdb::WriteOptions::default()
        };
        self.engine
            .db
            .put_cf_opt(cf, key, encode(value), &opts)
            .map_err(|e| StorageIOError::write(&e))
    }

    fn last_purged(&self) -> SResult<Option<LogId<C::NodeId>>, C> {
        Ok(self.get_meta(KEY_LAST_PURGED)?)
    }
}

fn bound_start(b: Bound<&u64>) -> u64 {
    match b {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn in_end(b: Bound<&u64>, index: u64) -> bool {
    match b {
        Bound::Included(i) => index <= *i,
        Bound::Excluded(i) => index < *i,
        Bound::Unbounded => true,
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<C::Entry>, C> {
        self.read_entries(
            bound_start(range.start_bound()),
            |index| in_end(range.end_bound(), index),
            usize::MAX,
        )
    }

    /// Entries from `start`, at most [`MAX_REPLICATION_BYTES`] of them by stored size (always
    /// at least one). openraft gives an AppendEntries one heartbeat interval to complete, so a
    /// follower catching up over large entries must be sent them a few at a time.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> SResult<Vec<C::Entry>, C> {
        self.read_entries(start, |index| index < end, MAX_REPLICATION_BYTES)
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    /// Entries from `start` while `in_range(index)`, stopping before the stored bytes would
    /// pass `max_bytes` (but always returning the first entry in range).
    fn read_entries(&self, start: u64, in_range: impl Fn(u64) -> bool, max_bytes: usize) -> SResult<Vec<C::Entry>, C> {
        if let Some(found) = self.recent().read(start, &in_range, max_bytes) {
            return Ok(found);
        }
        let cf = self.engine.cf(CF_LOG);
        let iter = self
            .engine
            .db
            .iterator_cf(cf, IteratorMode::From(&index_key(start), Direction::Forward));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in iter {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let index = key_index(&key).ok_or_else(|| StorageIOError::read_logs(&BadKey))?;
            if !in_range(index) || (!out.is_empty() && bytes.saturating_add(value.len()) > max_bytes) {
                break;
            }
            bytes = bytes.saturating_add(value.len());
            out.push(decode(&value).map_err(|e| unreadable_entry(index, &value, e))?);
        }
        Ok(out)
    }
}

/// The error for a stored entry that does not decode: it names the index and what the entry
/// holds, and how to look at it.
fn unreadable_entry<NID: openraft::NodeId>(
    index: u64,
    value: &[u8],
    e: crate::codec::CodecError,
) -> StorageIOError<NID> {
    let what = crate::codec::describe(value);
    tracing::error!(index, entry = %what, error = %e, "a Raft log entry cannot be decoded; this node stops. Inspect it with `raftlord debug log --data-dir <dir> --from {index}`");
    StorageIOError::read_log_at_index(index, &UnreadableEntry { index, what, source: e })
}

#[derive(Debug, thiserror::Error)]
#[error("log entry {index} ({what}) cannot be decoded: {source}; inspect it with `raftlord debug log --data-dir <dir> --from {index}`")]
struct UnreadableEntry {
    index: u64,
    what: String,
    source: crate::codec::CodecError,
}

/// Most bytes of log entries sent to a follower in one AppendEntries (see
/// `limited_get_log_entries`).
pub const MAX_REPLICATION_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("a log key is not an 8-byte index")]
struct BadKey;

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<C>, C> {
        let last_purged_log_id = self.last_purged()?;
        let cf = self.engine.cf(CF_LOG);
        let last = match self.engine.db.iterator_cf(cf, IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let index = key_index(&key).ok_or_else(|| StorageIOError::read_logs(&BadKey))?;
                let entry: C::Entry = decode(&value).map_err(|e| unreadable_entry(index, &value, e))?;
                Some(entry.get_log_id().clone())
            }
        };
        let last_log_id = last.or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> SResult<(), C> {
        self.put_meta(KEY_VOTE, vote, true)
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<C::NodeId>>, C> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> SResult<(), C> {
        // Written with the next append (see `Committed`).
        let mut c = self.committed();
        if c.id != committed {
            c.id = committed;
            c.stored = false;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<C::NodeId>>, C> {
        if let Some(id) = self.committed().id.clone() {
            return Ok(Some(id));
        }
        Ok(self.get_meta::<Option<LogId<C::NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> SResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.engine.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        let mut last = 0;
        {
            let mut recent = self.recent();
            for entry in entries {
                let index = entry.get_log_id().index;
                last = index;
                let bytes = encode(&entry);
                batch.put_cf(cf, index_key(index), &bytes);
                recent.push(index, bytes.len(), entry);
            }
        }
        {
            let mut committed = self.committed();
            if !committed.stored {
                batch.put_cf(self.engine.cf(CF_META), KEY_COMMITTED, encode(&committed.id));
                committed.stored = true;
            }
        }
        self.appended.fetch_add(batch.size_in_bytes() as u64, Ordering::Relaxed);
        // One synced write for the whole batch, on a blocking thread: the fsync must not hold
        // an async worker thread. openraft waits for the callback, which is only called once
        // the entries are durable, before it relies on them.
        let db = self.engine.db.clone();
        let mark = self.mark.clone();
        tokio::task::spawn_blocking(move || {
            let result = db
                .write_opt(batch, &synced())
                .map_err(|e| std::io::Error::other(e.to_string()));
            if result.is_ok() {
                if let Err(e) = mark.synced(last) {
                    // The log itself is durable; only the check on the next start is weaker.
                    tracing::warn!(error = %e, "cannot write the log mark");
                }
            }
            // Let go of the database before reporting: whoever waits on the callback may close
            // and reopen it (a restart in the same process), which needs every handle gone.
            drop(db);
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> SResult<(), C> {
        // The mark goes below the removed entries first, or the next start would take their
        // removal for a loss.
        self.mark
            .truncating(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().truncate(log_id.index);
        let cf = self.engine.cf(CF_LOG);
        self.engine
            .db
            .delete_range_cf_opt(cf, index_key(log_id.index), index_key(u64::MAX), &synced())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> SResult<(), C> {
        // Record the purge point first, so a crash mid-purge never leaves an unexplained gap.
        self.put_meta(KEY_LAST_PURGED, &log_id, true)?;
        self.recent().purge(log_id.index);
        let cf = self.engine.cf(CF_LOG);
        self.engine
            .db
            .delete_range_cf(cf, index_key(0), index_key(log_id.index + 1))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(range: std::ops::RangeInclusive<u64>, size: usize) -> Recent<u64> {
        let mut r = Recent::default();
        for i in range {
            r.push(i, size, i);
        }
        r
    }

    #[test]
    fn recent_entries_are_read_back_in_range_and_within_the_byte_limit() {
        let r = filled(5..=9, 10);
        assert_eq!(r.read(5, &|i| i < 100, usize::MAX), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(r.read(7, &|i| i < 9, usize::MAX), Some(vec![7, 8]));
        // The byte limit stops before passing it, but one entry always comes back.
        assert_eq!(r.read(6, &|_| true, 25), Some(vec![6, 7]));
        assert_eq!(r.read(6, &|_| true, 1), Some(vec![6]));
        // Outside the cached run: the caller reads the database.
        assert_eq!(r.read(4, &|_| true, usize::MAX), None);
        assert_eq!(r.read(10, &|_| true, usize::MAX), None);
        assert_eq!(Recent::<u64>::default().read(0, &|_| true, usize::MAX), None);
    }

    #[test]
    fn truncate_purge_and_a_gap_keep_the_cached_run_contiguous() {
        let mut r = filled(1..=10, 1);
        r.truncate(8);
        assert_eq!(r.read(1, &|_| true, usize::MAX), Some((1..=7).collect()));
        r.push(8, 1, 80);
        assert_eq!(r.read(7, &|_| true, usize::MAX), Some(vec![7, 80]));
        r.purge(3);
        assert_eq!(r.read(3, &|_| true, usize::MAX), None);
        assert_eq!(r.read(4, &|_| true, usize::MAX), Some(vec![4, 5, 6, 7, 80]));
        // An append that does not follow the last cached entry starts a new run.
        r.push(20, 1, 20);
        assert_eq!(r.read(4, &|_| true, usize::MAX), None);
        assert_eq!(r.read(20, &|_| true, usize::MAX), Some(vec![20]));
        assert_eq!(r.bytes, 1);
        r.truncate(0);
        assert_eq!(r.bytes, 0);
        assert!(r.entries.is_empty());
    }

    #[test]
    fn the_cache_keeps_to_its_entry_and_byte_bounds() {
        let r = filled(1..=(RECENT_ENTRIES as u64 + 10), 1);
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        assert_eq!(r.first(), Some(11));
        let big = RECENT_BYTES / 4 + 1;
        let r = filled(1..=8, big);
        assert_eq!(r.entries.len(), 3);
        assert!(r.bytes <= RECENT_BYTES);
        // One entry larger than the whole budget is still kept (it is the newest).
        let mut r = Recent::default();
        r.push(1, RECENT_BYTES * 2, 1u64);
        assert_eq!(r.read(1, &|_| true, usize::MAX), Some(vec![1]));
    }
}
