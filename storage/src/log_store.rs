//! The Raft log, vote and committed index on RocksDB, as openraft's `RaftLogStorage`.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// Raft log storage over an [`Engine`]. Clones share the database.
pub struct LogStore<C> {
    engine: Engine,
    appended: Arc<AtomicU64>,
    _c: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            engine: self.engine.clone(),
            appended: self.appended.clone(),
            _c: PhantomData,
        }
    }
}

type SResult<T, C> = Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    pub fn new(engine: Engine) -> Self {
        LogStore {
            engine,
            appended: Arc::new(AtomicU64::new(0)),
            _c: PhantomData,
        }
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
    C::Entry: Serialize + DeserializeOwned,
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
    C::Entry: Serialize + DeserializeOwned,
{
    /// Entries from `start` while `in_range(index)`, stopping before the stored bytes would
    /// pass `max_bytes` (but always returning the first entry in range).
    fn read_entries(&self, start: u64, in_range: impl Fn(u64) -> bool, max_bytes: usize) -> SResult<Vec<C::Entry>, C> {
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
            out.push(decode(&value).map_err(|e| StorageIOError::read_log_at_index(index, &e))?);
        }
        Ok(out)
    }
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
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<C>, C> {
        let last_purged_log_id = self.last_purged()?;
        let cf = self.engine.cf(CF_LOG);
        let last = match self.engine.db.iterator_cf(cf, IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, value) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let entry: C::Entry = decode(&value).map_err(|e| StorageIOError::read_logs(&e))?;
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
        // Losing the newest committed index in a crash is safe: it is re-learned from the leader,
        // so this write is not synced.
        Ok(self.put_meta(KEY_COMMITTED, &committed, false)?)
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<C::NodeId>>, C> {
        Ok(self.get_meta::<Option<LogId<C::NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> SResult<(), C>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let cf = self.engine.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, index_key(entry.get_log_id().index), encode(&entry));
        }
        self.appended.fetch_add(batch.size_in_bytes() as u64, Ordering::Relaxed);
        // One synced write for the whole batch, on a blocking thread: the fsync must not hold
        // an async worker thread. openraft waits for the callback, which is only called once
        // the entries are durable, before it relies on them.
        let db = self.engine.db.clone();
        tokio::task::spawn_blocking(move || {
            let result = db
                .write_opt(batch, &synced())
                .map_err(|e| std::io::Error::other(e.to_string()));
            // Let go of the database before reporting: whoever waits on the callback may close
            // and reopen it (a restart in the same process), which needs every handle gone.
            drop(db);
            callback.log_io_completed(result);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> SResult<(), C> {
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
        let cf = self.engine.cf(CF_LOG);
        self.engine
            .db
            .delete_range_cf(cf, index_key(0), index_key(log_id.index + 1))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
