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
//! A new snapshot is written to a temporary file, synced, renamed over the current one, and the
//! directory is synced: a crash leaves either the old snapshot or the new one, never a mix.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::engine::{Engine, EngineError};

const MAGIC: &[u8; 8] = b"RLSNAP01";
const CURRENT: &str = "current.snap";
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
}

impl SnapshotStore {
    /// The snapshot store of `engine`'s data directory.
    pub fn new(engine: Engine) -> Self {
        SnapshotStore {
            dir: engine.snapshot_dir(),
        }
    }

    /// Makes the snapshot (`meta`, `data`) the current one; durable when this returns.
    pub fn save<M: Serialize>(&self, meta: &M, data: &[u8]) -> Result<(), EngineError> {
        self.save_with(meta, |w| w.write_all(data)).map(|_| ())
    }

    /// Like [`save`](Self::save), with the data written by `write` straight to the file, so a
    /// large snapshot is never held in memory whole. Returns the data's size in bytes.
    pub fn save_with<M: Serialize>(
        &self,
        meta: &M,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<u64, EngineError> {
        let io = |e: std::io::Error| EngineError::Io(format!("writing a snapshot in {}: {e}", self.dir.display()));
        let meta = encode(meta);
        let meta_len =
            u32::try_from(meta.len()).map_err(|_| EngineError::Corrupt("snapshot metadata too large".into()))?;
        let temp = self.dir.join(TEMP);
        let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(io)?);
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&meta_len.to_be_bytes()).map_err(io)?;
        f.write_all(&meta).map_err(io)?;
        write(&mut f).map_err(io)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        let data_len = f.metadata().map_err(io)?.len() - 12 - meta.len() as u64;
        drop(f);
        fs::rename(&temp, self.dir.join(CURRENT)).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(data_len)
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
        store.save(&"first".to_string(), b"one").unwrap();
        store.save(&"second".to_string(), b"two").unwrap();
        let s = store.load::<String>().unwrap().unwrap();
        assert_eq!((s.meta.as_str(), s.data.as_slice()), ("second", &b"two"[..]));
        // A reopened engine finds the same snapshot.
        let reopened = SnapshotStore::new(Engine::open(dir.path()).unwrap());
        assert_eq!(reopened.load::<String>().unwrap().unwrap().data, b"two");
    }

    #[test]
    fn a_damaged_file_is_reported_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let store = SnapshotStore::new(engine.clone());
        store.save(&"m".to_string(), b"data").unwrap();
        let path = engine.snapshot_dir().join(CURRENT);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(store.load::<String>(), Err(EngineError::Corrupt(_))));
        fs::write(&path, b"garbage!").unwrap();
        assert!(matches!(store.load::<String>(), Err(EngineError::Corrupt(_))));
    }
}
