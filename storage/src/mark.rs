//! The log mark: how far the log had been synced, kept in a file beside the database.
//!
//! RocksDB notices flipped bytes inside the write-ahead log, but a log cut at its end (at a
//! record boundary, or inside the last record, which is also what a process killed in the
//! middle of a write leaves and so must open), or lost files, look like a log that simply ended
//! there: the node would start and serve what is left, its acknowledged entries gone. So the log store records the last synced index in `log-mark` outside the database:
//! after a synced append at most once per [`WRITE_EVERY`], within [`WRITE_EVERY`] once appends
//! pause, on orderly shutdown, and lowered before a truncation (a follower dropping entries a new leader overwrote). On open, a log
//! that ends before its mark has lost entries, and the node refuses to start
//! ([`crate::EngineError::Damaged`]).
//!
//! The mark can trail the log by up to [`WRITE_EVERY`] after a crash: losses within that last
//! moment are not seen, older ones are. After an orderly stop the mark is exact.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often at most the mark is written while entries are appended.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The file's name in the storage directory.
pub const FILE: &str = "log-mark";

/// Reads the mark in `dir`, if there is one.
pub fn read(dir: &Path) -> Result<Option<u64>, String> {
    let path = dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{} does not hold a log index: {:?}", path.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes `index` as the mark in `dir`, durably: a synced temporary file renamed into place,
/// then the directory synced.
fn write(dir: &Path, index: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(index.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[derive(Debug)]
struct State {
    /// The highest index known to be synced in the log.
    synced: u64,
    /// The index in the file, and when it was written.
    written: Option<u64>,
    written_at: Option<Instant>,
}

/// The mark of one log (see the module docs).
#[derive(Debug)]
pub struct Mark {
    dir: PathBuf,
    state: Mutex<State>,
}

impl Mark {
    /// The mark in `dir`, starting from the log's current last index.
    pub fn new(dir: &Path, last: u64) -> Mark {
        Mark {
            dir: dir.to_path_buf(),
            state: Mutex::new(State {
                synced: last,
                written: read(dir).ok().flatten(),
                written_at: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entries up to `index` are synced; the file is written if it is due.
    pub fn synced(&self, index: u64) -> std::io::Result<()> {
        let mut s = self.state();
        s.synced = s.synced.max(index);
        if s.written_at.is_none_or(|at| at.elapsed() >= WRITE_EVERY) && s.written != Some(s.synced) {
            write(&self.dir, s.synced)?;
            s.written = Some(s.synced);
            s.written_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Entries from `index` on are about to be removed: the mark goes below them first.
    pub fn truncating(&self, index: u64) -> std::io::Result<()> {
        let mut s = self.state();
        let below = index.saturating_sub(1);
        s.synced = s.synced.min(below);
        if s.written.is_some_and(|w| w > below) {
            write(&self.dir, below)?;
            s.written = Some(below);
            s.written_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Writes the mark now if it is behind (on orderly shutdown).
    pub fn persist(&self) -> std::io::Result<()> {
        let mut s = self.state();
        if s.written != Some(s.synced) {
            write(&self.dir, s.synced)?;
            s.written = Some(s.synced);
            s.written_at = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_follows_syncs_at_most_once_a_period_and_drops_before_a_truncation() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let m = Mark::new(dir.path(), 0);
        m.synced(5).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(5));
        // Within the period the file waits; persist brings it up to date.
        m.synced(9).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(5));
        m.persist().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(9));
        m.truncating(7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(6));
        // A mark from an earlier run is picked up.
        let again = Mark::new(dir.path(), 6);
        again.persist().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(6));
        std::fs::write(dir.path().join(FILE), "x").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("does not hold a log index"));
    }
}
