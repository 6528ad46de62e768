//! The newest state-machine snapshot, kept as one file beside the database.
//!
//! Snapshots are large, written once and read whole, so they live in a plain file rather than
//! in RocksDB (where a big value would be written to the write-ahead log, the memtable and
//! then again to a table file). The file is `snapshots/current.snap`:
//!
//! ```text
//! "RLSNAP01"  8 bytes, magic and layout version
//! u32 BE      length of the metadata record
//! metadata    versioned record (one version byte + JSON)
//! data        the snapshot bytes, to the end of the file
//! ```
//!
//! A new snapshot is written to a temporary file of its own, synced, renamed over the current
//! one, and the directory is synced: a crash leaves either the old snapshot or the new one,
//! never a mix. A snapshot being built and one being installed from the leader can be written
//! at the same time; each has its own temporary file, and the rename happens only when the
//! snapshot is at least as new (by log position) as the current one, so an older snapshot that
//! finishes last never replaces a newer one.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::engine::{Engine, EngineError};

const MAGIC: &[u8; 8] = b"RLSNAP01";
const CURRENT: &str = "current.snap";
/// Temporary files are `current.snap.tmp.<n>`, one per write.
const TEMP: &str = "current.snap.tmp";

/// A snapshot as stored: its metadata and its data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot<M> {
    pub meta: M,
    pub data: Vec<u8>,
}

/// Reads and replaces the current snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// The log position of the current snapshot (shared through the engine with the log
    /// store); held while a finished write is renamed in.
    current: Arc<Mutex<Option<u64>>>,
    /// Numbers the temporary files.
    writes: Arc<AtomicU64>,
    /// Shared with the log store through the engine (see [`SnapshotStore::receiving`]).
    receiving: Arc<std::sync::atomic::AtomicBool>,
    stored: Arc<tokio::sync::Notify>,
}

/// Whether a snapshot file exists in `dir` (a snapshot directory).
pub(crate) fn has_snapshot(dir: &Path) -> bool {
    dir.join(CURRENT).exists()
}

impl SnapshotStore {
    /// The snapshot store of `engine`'s data directory.
    pub fn new(engine: Engine) -> Self {
        SnapshotStore {
            dir: engine.snapshot_dir(),
            current: engine.snapshot_at.clone(),
            receiving: engine.receiving_snapshot.clone(),
            stored: engine.snapshot_stored.clone(),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Marks a snapshot from the leader as being received (`true`) or stored (`false`). openraft
    /// purges the log entries such a snapshot covers without waiting for it to be stored; while
    /// one is received, a purge of the log waits for the snapshot to be stored.
    pub fn receiving(&self, on: bool) {
        self.receiving.store(on, Ordering::SeqCst);
        self.stored.notify_waiters();
    }

    /// Records the log position of the snapshot found on disk at start.
    pub fn set_current_position(&self, position: u64) {
        *self.current.lock().expect("snapshot position lock") = Some(position);
    }

    /// Makes the snapshot (`meta`, `data`) at log `position` the current one, unless a newer
    /// one is current already; durable when this returns. Returns whether it became current.
    pub fn save<M: Serialize>(&self, meta: &M, position: u64, data: &[u8]) -> Result<bool, EngineError> {
        self.save_with(meta, position, |w| w.write_all(data))
            .map(|s| s.is_some())
    }

    /// Like [`save`](Self::save), with the data written by `write` straight to the file, so a
    /// large snapshot is never held in memory whole. Returns the data's size in bytes, or
    /// `None` when a newer snapshot became current meanwhile (this one is then discarded).
    pub fn save_with<M: Serialize>(
        &self,
        meta: &M,
        position: u64,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<Option<u64>, EngineError> {
        let io = |e: std::io::Error| EngineError::Io(format!("writing a snapshot in {}: {e}", self.dir.display()));
        let meta = encode(meta);
        let meta_len =
            u32::try_from(meta.len()).map_err(|_| EngineError::Corrupt("snapshot metadata too large".into()))?;
        let temp = self
            .dir
            .join(format!("{TEMP}.{}", self.writes.fetch_add(1, Ordering::Relaxed)));
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&meta_len.to_be_bytes()).map_err(io)?;
        f.write_all(&meta).map_err(io)?;
        write(&mut f).map_err(io)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        let data_len = f.metadata().map_err(io)?.len() - 12 - meta.len() as u64;
        drop(f);
        let mut current = self.current.lock().expect("snapshot position lock");
        if current.is_some_and(|c| position < c) {
            drop(current);
            fs::remove_file(&temp).map_err(io)?;
            return Ok(None);
        }
        fs::rename(&temp, self.dir.join(CURRENT)).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        *current = Some(position);
        drop(current);
        self.stored.notify_waiters();
        Ok(Some(data_len))
    }

    /// The current snapshot, if one was ever saved. The data is read straight into one buffer
    /// of its exact size: snapshots can be hundreds of megabytes, and a second copy would
    /// double the memory a restart needs.
    pub fn load<M: DeserializeOwned>(&self) -> Result<Option<StoredSnapshot<M>>, EngineError> {
        let path = self.dir.join(CURRENT);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::Io(format!("reading {}: {e}", path.display()))),
        };
        let corrupt = |what: &str| EngineError::Corrupt(format!("snapshot file {}: {what}", path.display()));
        let io = |e: std::io::Error| EngineError::Io(format!("reading {}: {e}", path.display()));
        let total = f.metadata().map_err(io)?.len();
        let mut head = [0u8; 12];
        f.read_exact(&mut head).map_err(|_| corrupt("truncated"))?;
        if &head[..8] != MAGIC.as_slice() {
            return Err(corrupt("unknown layout"));
        }
        let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as u64;
        let data_len = total
            .checked_sub(12 + len)
            .ok_or_else(|| corrupt("truncated metadata"))?;
        let mut meta = vec![0u8; len as usize];
        f.read_exact(&mut meta).map_err(|_| corrupt("truncated metadata"))?;
        let meta = decode(&meta).map_err(|e| corrupt(&e.to_string()))?;
        let mut data = Vec::with_capacity(data_len as usize);
        f.read_to_end(&mut data).map_err(io)?;
        Ok(Some(StoredSnapshot { meta, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_replaces_and_load_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(Engine::open(dir.path()).unwrap());
        assert_eq!(store.load::<String>().unwrap(), None);
        store.save(&"first".to_string(), 1, b"one").unwrap();
        store.save(&"second".to_string(), 2, b"two").unwrap();
        let s = store.load::<String>().unwrap().unwrap();
        assert_eq!((s.meta.as_str(), s.data.as_slice()), ("second", &b"two"[..]));
        // A reopened engine finds the same snapshot.
        let reopened = SnapshotStore::new(Engine::open(dir.path()).unwrap());
        assert_eq!(reopened.load::<String>().unwrap().unwrap().data, b"two");
    }

    /// A snapshot being built and one being installed overlap: each writes its own temporary
    /// file, and the older one, finishing last, does not replace the newer.
    #[test]
    fn overlapping_writes_keep_the_newest_snapshot_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(Engine::open(dir.path()).unwrap());
        let both_writing = Arc::new(std::sync::Barrier::new(2));
        let newer_done = Arc::new(std::sync::Barrier::new(2));
        let older = {
            let (store, both_writing, newer_done) = (store.clone(), both_writing.clone(), newer_done.clone());
            std::thread::spawn(move || {
                store.save_with(&"older".to_string(), 5, |w| {
                    w.write_all(&[b'o'; 4096])?;
                    both_writing.wait();
                    newer_done.wait();
                    w.write_all(&[b'o'; 4096])
                })
            })
        };
        let saved = store.save_with(&"newer".to_string(), 9, |w| {
            w.write_all(&[b'n'; 4096])?;
            both_writing.wait();
            w.write_all(&[b'n'; 4096])
        });
        assert_eq!(saved.unwrap(), Some(8192));
        newer_done.wait();
        assert_eq!(older.join().unwrap().unwrap(), None, "the older snapshot is discarded");
        let s = store.load::<String>().unwrap().unwrap();
        assert_eq!((s.meta.as_str(), s.data.len()), ("newer", 8192));
        assert!(
            s.data.iter().all(|b| *b == b'n'),
            "no bytes of the older snapshot mixed in"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != CURRENT)
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn a_damaged_file_is_reported_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let store = SnapshotStore::new(engine.clone());
        store.save(&"m".to_string(), 1, b"data").unwrap();
        let path = engine.snapshot_dir().join(CURRENT);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(store.load::<String>(), Err(EngineError::Corrupt(_))));
        fs::write(&path, b"garbage!").unwrap();
        assert!(matches!(store.load::<String>(), Err(EngineError::Corrupt(_))));
    }
}
