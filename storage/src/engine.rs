//! Opening the RocksDB database, its column families and the data-format check.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

/// Memory all memtables of the database may take together before RocksDB flushes them.
pub const MEMTABLE_BUDGET: usize = 32 << 20;

/// Version of the on-disk layout this build writes and understands.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_META: &str = "meta";
const KEY_FORMAT: &[u8] = b"format_version";

/// Errors from opening or using the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open the data directory {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error(
        "the Raft log in {path} is damaged ({reason}): entries this node acknowledged may be lost, so it \
         refuses to start rather than serve or vote on what is left. On a cluster, recover the member by \
         wiping {path} and rejoining: `raftlord cluster remove-node`, start it with --join, then \
         `raftlord cluster add-node`. A single node must be restored from a copy of its data directory."
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "the data directory {path} holds data format version {found}, but this raftlord understands \
         only version {FORMAT_VERSION}; run the raftlord release that wrote it"
    )]
    NewerFormat { path: PathBuf, found: u32 },
    #[error("the data directory {path} has an unreadable format version record")]
    BadFormatRecord { path: PathBuf },
    #[error("storage operation failed: {0}")]
    Write(#[from] rocksdb::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
}

/// A handle on one node's RocksDB database. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(crate) db: Arc<DB>,
    path: PathBuf,
    /// The log index the durable snapshot file covers (`None`: no snapshot yet), shared by the
    /// snapshot store, which sets it, and the log store, which purges no further.
    pub(crate) snapshot_at: Arc<std::sync::Mutex<Option<u64>>>,
    /// Set while a snapshot from the leader is being received and stored: purges then wait
    /// for it to be durable.
    pub(crate) receiving_snapshot: Arc<std::sync::atomic::AtomicBool>,
    /// Woken when a snapshot is stored or a receive ends.
    pub(crate) snapshot_stored: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("path", &self.path).finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the storage under `dir`: the database in `dir/db` and
    /// snapshots in `dir/snapshots`; checks the data-format version.
    pub fn open(dir: &Path) -> Result<Engine, EngineError> {
        let path = dir.to_path_buf();
        let snapshots = path.join("snapshots");
        if !path.join("db").exists() && crate::snapshot_store::has_snapshot(&snapshots) {
            return Err(EngineError::Damaged {
                path: path.clone(),
                reason: "a snapshot is there but the database holding the log and the vote is gone".into(),
            });
        }
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| EngineError::Io(format!("cannot create {}: {e}", snapshots.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Appends are synced before they are acknowledged, so damage inside the write-ahead log
        // means acknowledged entries are gone: refuse to open instead of stopping at it. A torn
        // last record is what a process killed in the middle of a write leaves; it was never
        // synced, so never acknowledged, and is dropped. (Refusing it, as absolute consistency
        // does, left a node killed with SIGKILL unable to start again.) A log that lost synced
        // entries at its end is told apart by the log mark ([`crate::mark`]).
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_paranoid_checks(true);
        // Keep recovery bounded and the write-ahead log small: values are also in memtables.
        opts.set_max_total_wal_size(256 << 20);
        // Memtables of all column families together stay under this (by default each could
        // take 2 x 64 MiB): the log is mostly churn, entries purged soon after a snapshot.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let cfs = [CF_LOG, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path.join("db"), cfs).map_err(|source| {
            if source.kind() == rocksdb::ErrorKind::Corruption {
                EngineError::Damaged {
                    path: path.clone(),
                    reason: source.to_string(),
                }
            } else {
                EngineError::Open {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let engine = Engine {
            db: Arc::new(db),
            path,
            snapshot_at: Arc::default(),
            receiving_snapshot: Arc::default(),
            snapshot_stored: Arc::default(),
        };
        engine.check_format()?;
        engine.check_mark()?;
        Ok(engine)
    }

    /// The index of the last log entry, or of the last purged one if the log is empty.
    pub(crate) fn last_index(&self) -> Result<u64, EngineError> {
        let last_key = match self.db.iterator_cf(self.cf(CF_LOG), rocksdb::IteratorMode::End).next() {
            None => 0,
            Some(item) => {
                let (key, _) = item?;
                crate::codec::key_index(&key)
                    .ok_or_else(|| EngineError::Corrupt(format!("a log key is {} bytes, not 8", key.len())))?
            }
        };
        let purged = match self.db.get_cf(self.cf(CF_META), b"last_purged")? {
            None => 0,
            Some(bytes) => crate::codec::decode::<serde_json::Value>(&bytes)
                .map_err(|e| EngineError::Corrupt(format!("the last purged log id: {e}")))?["index"]
                .as_u64()
                .unwrap_or(0),
        };
        Ok(last_key.max(purged))
    }

    /// Refuses a log that ends before the index it is known to have synced ([`crate::mark`]).
    fn check_mark(&self) -> Result<(), EngineError> {
        let damaged = |reason: String| EngineError::Damaged {
            path: self.path.clone(),
            reason,
        };
        let Some(mark) = crate::mark::read(&self.path).map_err(damaged)? else {
            return Ok(());
        };
        let last = self.last_index()?;
        if last < mark {
            let file = self.path.join(crate::mark::FILE);
            return Err(damaged(format!(
                "the log ends at index {last}, but entries up to index {mark} had been synced, as {} records; \
                 to start anyway on what is left, losing every entry after {last}, remove that file",
                file.display()
            )));
        }
        Ok(())
    }

    /// Opens an existing storage directory read-only, for inspecting it (`raftlord debug log`);
    /// works beside a running node and never creates or changes anything.
    pub fn open_read_only(dir: &Path) -> Result<Engine, EngineError> {
        let path = dir.to_path_buf();
        let db = DB::open_cf_for_read_only(&Options::default(), path.join("db"), [CF_LOG, CF_META], false).map_err(
            |source| EngineError::Open {
                path: path.clone(),
                source,
            },
        )?;
        Ok(Engine {
            db: Arc::new(db),
            path,
            snapshot_at: Arc::default(),
            receiving_snapshot: Arc::default(),
            snapshot_stored: Arc::default(),
        })
    }

    /// Up to `max` stored log entries from index `from` on, as stored (version byte, then JSON).
    pub fn raw_log_entries(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, EngineError> {
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            rocksdb::IteratorMode::From(&crate::codec::index_key(from), rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(max) {
            let (key, value) = item?;
            let index = crate::codec::key_index(&key)
                .ok_or_else(|| EngineError::Corrupt(format!("a log key is {} bytes, not 8", key.len())))?;
            out.push((index, value.to_vec()));
        }
        Ok(out)
    }

    /// The storage directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where snapshot files live.
    pub(crate) fn snapshot_dir(&self) -> PathBuf {
        self.path.join("snapshots")
    }

    fn check_format(&self) -> Result<(), EngineError> {
        let meta = self.cf(CF_META);
        match self.db.get_cf(meta, KEY_FORMAT)? {
            Some(bytes) => {
                let found = <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| EngineError::BadFormatRecord {
                        path: self.path.clone(),
                    })?;
                if found > FORMAT_VERSION {
                    return Err(EngineError::NewerFormat {
                        path: self.path.clone(),
                        found,
                    });
                }
            }
            None => {
                self.db
                    .put_cf_opt(meta, KEY_FORMAT, FORMAT_VERSION.to_be_bytes(), &synced())?;
            }
        }
        Ok(())
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family is created on open")
    }

    /// Bytes RocksDB holds in memory for this database: memtables (active, immutable and
    /// pinned) and SST table readers, over every column family.
    pub fn memory_bytes(&self) -> u64 {
        let mut total = 0;
        for cf in [CF_LOG, CF_META] {
            for property in ["rocksdb.size-all-mem-tables", "rocksdb.estimate-table-readers-mem"] {
                total += self
                    .db
                    .property_int_value_cf(self.cf(cf), property)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        total
    }

    /// Flushes memtables and the write-ahead log; called on orderly shutdown.
    pub fn flush(&self) -> Result<(), EngineError> {
        self.db.flush_wal(true)?;
        for cf in [CF_LOG, CF_META] {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
}

/// Write options for writes that must be durable before they are acknowledged.
pub(crate) fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_format_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path()).unwrap();
            let meta = engine.cf(CF_META);
            engine
                .db
                .put_cf(meta, KEY_FORMAT, (FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
        }
        let err = Engine::open(dir.path()).unwrap_err();
        assert!(matches!(err, EngineError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1));
        assert!(err.to_string().contains("understands only version"));
    }

    #[test]
    fn reopen_of_current_format_succeeds_and_lays_out_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        drop(Engine::open(dir.path()).unwrap());
        let engine = Engine::open(dir.path()).unwrap();
        assert!(dir.path().join("db").is_dir() && engine.snapshot_dir().is_dir());
    }
}
