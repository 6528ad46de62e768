//! Opening the RocksDB database, its column families and the data-format check.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};

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
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| EngineError::Io(format!("cannot create {}: {e}", snapshots.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Keep recovery bounded and the write-ahead log small: values are also in memtables.
        opts.set_max_total_wal_size(256 << 20);
        let cfs = [CF_LOG, CF_META]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path.join("db"), cfs).map_err(|source| EngineError::Open {
            path: path.clone(),
            source,
        })?;
        let engine = Engine { db: Arc::new(db), path };
        engine.check_format()?;
        Ok(engine)
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
