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
use crate::writer::{Kind, Writer};

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
    /// Every write goes through it, in order ([`crate::writer`]).
    writer: Writer,
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
            writer: self.writer.clone(),
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
///
/// It is also where appended entries are readable before their write is done (openraft reads
/// them right away): an entry leaves it only once it is in the database, so that the
/// database and the cache together always hold every entry.
struct Recent<E> {
    entries: VecDeque<(u64, usize, E)>,
    bytes: usize,
    /// Entries up to this index are in the database and may leave the cache.
    written: u64,
}

impl<E> Default for Recent<E> {
    fn default() -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            written: 0,
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
        self.shrink();
    }

    /// Entries up to `last` are in the database now.
    fn written(&mut self, last: u64) {
        self.written = self.written.max(last);
        self.shrink();
    }

    /// Drops written entries from the front while over the limits.
    fn shrink(&mut self) {
        while (self.entries.len() > RECENT_ENTRIES || (self.bytes > RECENT_BYTES && self.entries.len() > 1))
            && self.first().is_some_and(|i| i <= self.written)
        {
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

    /// Drops entries at `index` and after (removed from the database too).
    fn truncate(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(i, _, _)| *i >= index) {
            if let Some((_, size, _)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
        self.written = self.written.min(index.saturating_sub(1));
    }

    /// Drops entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|i| i <= index) {
            self.pop_front();
        }
    }

    /// Adds entries from `start` on to `out` while `in_range` and within `max_bytes` (counted
    /// in `bytes`, together with what `out` already holds; the first entry always comes).
    fn read_into(
        &self,
        start: u64,
        in_range: &impl Fn(u64) -> bool,
        max_bytes: usize,
        out: &mut Vec<E>,
        bytes: &mut usize,
    ) {
        let Some(skip) = self
            .first()
            .and_then(|first| start.checked_sub(first))
            .and_then(|skip| usize::try_from(skip).ok())
        else {
            return;
        };
        for (index, size, entry) in self.entries.iter().skip(skip) {
            if !in_range(*index) || (!out.is_empty() && bytes.saturating_add(*size) > max_bytes) {
                break;
            }
            *bytes = bytes.saturating_add(*size);
            out.push(entry.clone());
        }
    }

    /// Like [`LogStore::read_entries`], when the cache holds `start`.
    #[cfg(test)]
    fn read(&self, start: u64, in_range: &impl Fn(u64) -> bool, max_bytes: usize) -> Option<Vec<E>> {
        let first = self.first()?;
        if start < first || start - first >= self.entries.len() as u64 {
            return None;
        }
        let (mut out, mut bytes) = (Vec::new(), 0);
        self.read_into(start, in_range, max_bytes, &mut out, &mut bytes);
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
        let recent: Arc<Mutex<Recent<C::Entry>>> = Arc::new(Mutex::new(Recent::default()));
        let on_written = recent.clone();
        let writer = Writer::start(
            &engine.db,
            mark.clone(),
            Box::new(move |last| on_written.lock().unwrap_or_else(|p| p.into_inner()).written(last)),
        )
        .expect("the operating system refused to start the log writer thread");
        LogStore {
            mark,
            engine,
            writer,
            appended: Arc::new(AtomicU64::new(0)),
            recent,
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
    ///
    /// Older entries come from the database and the newest from the cache of recent entries;
    /// an entry leaves the cache only once it is in the database, so when the cache moves on
    /// while the database is read, the read simply goes on in the database.
    fn read_entries(&self, start: u64, in_range: impl Fn(u64) -> bool, max_bytes: usize) -> SResult<Vec<C::Entry>, C> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = start;
        loop {
            let cached_from = {
                let recent = self.recent();
                if recent.first().is_some_and(|first| first <= next) {
                    recent.read_into(next, &in_range, max_bytes, &mut out, &mut bytes);
                    return Ok(out);
                }
                recent.first()
            };
            // From the database, up to where the cache began when it was looked at.
            let cf = self.engine.cf(CF_LOG);
            let iter = self
                .engine
                .db
                .iterator_cf(cf, IteratorMode::From(&index_key(next), Direction::Forward));
            for item in iter {
                let (key, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let index = key_index(&key).ok_or_else(|| StorageIOError::read_logs(&BadKey))?;
                if cached_from.is_some_and(|first| index >= first) {
                    break;
                }
                if !in_range(index) || (!out.is_empty() && bytes.saturating_add(value.len()) > max_bytes) {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(value.len());
                out.push(decode(&value).map_err(|e| unreadable_entry(index, &value, e))?);
                next = index + 1;
            }
            // The database ended, or reached the cache: go on from the cache if it still holds
            // what follows, or in the database if the cache moved past it meanwhile.
            match cached_from {
                None => return Ok(out),
                Some(first) => next = next.max(first),
            }
        }
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

/// Longest a purge waits for a snapshot being received to be stored (see `purge`).
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

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
        // Entries still being written are readable from the cache, and so part of the log.
        let cached = self.recent().entries.back().map(|(_, _, e)| e.get_log_id().clone());
        let last_log_id = cached.max(last).or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> SResult<(), C> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.engine.cf(CF_META), KEY_VOTE, encode(vote));
        self.writer
            .write(batch, Kind::Other)
            .await
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
        // Written in order with every other write, with one fsync per group of appends, on
        // the writer's thread; openraft waits for the callback, called once the entries are
        // durable, before it relies on them.
        self.writer
            .queue(
                batch,
                Kind::Append { last },
                Box::new(move |result| callback.log_io_completed(result)),
            )
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> SResult<(), C> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.engine.cf(CF_LOG), index_key(log_id.index), index_key(u64::MAX));
        self.writer
            .write(batch, Kind::Truncate { from: log_id.index })
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> SResult<(), C> {
        // openraft purges the entries an installed snapshot covers without waiting for the
        // state machine to store that snapshot: a crash in between would leave neither. While a
        // snapshot is received, the purge waits until a stored snapshot covers it (openraft's
        // core waits with it, so no entry is appended meanwhile and the log stays contiguous).
        let deadline = tokio::time::Instant::now() + PURGE_WAIT;
        loop {
            let stored = self.engine.snapshot_stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            let durable = *self.engine.snapshot_at.lock().unwrap_or_else(|p| p.into_inner());
            if !self.engine.receiving_snapshot.load(Ordering::SeqCst) || durable.is_some_and(|d| log_id.index <= d) {
                break;
            }
            if tokio::time::timeout_at(deadline, stored).await.is_err() {
                tracing::warn!(
                    index = log_id.index,
                    "no snapshot was stored within {PURGE_WAIT:?} of a purge; purging anyway"
                );
                break;
            }
        }
        // The purge point and the removal in one write: never an unexplained gap.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.engine.cf(CF_META), KEY_LAST_PURGED, encode(&log_id));
        batch.delete_range_cf(self.engine.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.writer
            .write(batch, Kind::Other)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().purge(log_id.index);
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
            r.written(i);
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

    /// The cache is where entries are readable until their write is done: past its limits it
    /// lets go only of entries already in the database.
    #[test]
    fn entries_not_yet_written_stay_cached_past_the_limits() {
        let mut r = Recent::default();
        for i in 1..=(RECENT_ENTRIES as u64 + 10) {
            r.push(i, 1, i);
        }
        assert_eq!(r.first(), Some(1), "nothing written yet, nothing dropped");
        r.written(5);
        assert_eq!(r.first(), Some(6));
        r.written(RECENT_ENTRIES as u64 + 10);
        assert_eq!(r.entries.len(), RECENT_ENTRIES);
        // A truncation lowers what counts as written: re-appended entries are new writes.
        r.truncate(RECENT_ENTRIES as u64);
        assert_eq!(r.written, RECENT_ENTRIES as u64 - 1);
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
