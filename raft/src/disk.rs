//! Free space on the disk that holds the Raft log: writes are refused before the disk is full.
//!
//! A log append that fails with `No space left on device` is fatal to openraft, and a node that
//! cannot append cannot lead. So the leader checks the free space of its data directory every
//! [`CHECK_EVERY`] and, below the floor, refuses new proposals with a message saying so
//! (a 503 to clients, who may retry); once space is freed, writes resume by themselves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the free space is measured.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The free space of one directory's file system, measured in the background.
#[derive(Clone)]
pub struct DiskSpace {
    dir: Arc<PathBuf>,
    floor: u64,
    /// Bytes free at the last measurement (`u64::MAX` before the first, or where the file
    /// system cannot say).
    free: Arc<AtomicU64>,
}

impl DiskSpace {
    /// Measures `dir` now and then every [`CHECK_EVERY`] until the returned value and its
    /// clones are dropped; writes are refused while fewer than `floor` bytes are free.
    pub fn watch(dir: &Path, floor: u64) -> DiskSpace {
        let space = DiskSpace {
            dir: Arc::new(dir.to_path_buf()),
            floor,
            free: Arc::new(AtomicU64::new(free_bytes(dir).unwrap_or(u64::MAX))),
        };
        let weak = Arc::downgrade(&space.free);
        let dir = space.dir.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                let Some(free) = weak.upgrade() else { return };
                free.store(free_bytes(&dir).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
        });
        space
    }

    /// `Err` with a message for clients while the disk is below the floor.
    pub fn check(&self) -> Result<(), String> {
        let free = self.free.load(Ordering::Relaxed);
        if free >= self.floor {
            return Ok(());
        }
        Err(format!(
            "the disk holding {} has {} MiB free, less than the {} MiB this node keeps free to write safely; \
             writes resume by themselves once space is freed",
            self.dir.display(),
            free >> 20,
            self.floor >> 20
        ))
    }
}

/// Bytes available to this (unprivileged-equivalent) process on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads the NUL-terminated path and writes only the struct it is given.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_are_refused_below_the_floor_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works on a temp dir");
        assert!(DiskSpace::watch(dir.path(), 0).check().is_ok());
        let err = DiskSpace::watch(dir.path(), free.saturating_add(1 << 40))
            .check()
            .unwrap_err();
        assert!(err.contains("writes resume by themselves"), "{err}");
    }
}
