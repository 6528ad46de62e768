//! Free space on the disk that holds the Raft log: writes are refused before the disk is full.
//!
//! A log append that fails with `No space left on device` is fatal to openraft, and a node that
//! cannot append cannot lead. So the leader checks the free space of its data directory before
//! each proposal (a `statvfs`, reused for [`REUSE_FOR`]) and, below the floor, refuses it with a
//! message saying so
//! (a 503 to clients, who may retry); once space is freed, writes resume by themselves.
//! A follower below the floor refuses incoming entries and snapshot chunks (507) but still
//! takes heartbeats: it stays up and in contact, the leader backs off from it, and it catches
//! up by itself once space is freed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A measurement younger than this is reused: a disk that fills faster than this between a
/// check and a write can still fail the write (the floor is the margin for that).
pub const REUSE_FOR: Duration = Duration::from_millis(5);

/// The free space of one directory's file system, measured when a write is about to be made.
#[derive(Clone)]
pub struct DiskSpace {
    dir: Arc<PathBuf>,
    floor: u64,
    origin: Instant,
    /// Bytes free at the last measurement (`u64::MAX` where the file system cannot say), and
    /// when it was taken, in µs since `origin` (`u64::MAX` before the first).
    free: Arc<AtomicU64>,
    measured_us: Arc<AtomicU64>,
}

impl DiskSpace {
    /// Watches `dir`: writes are refused while fewer than `floor` bytes are free.
    pub fn watch(dir: &Path, floor: u64) -> DiskSpace {
        DiskSpace {
            dir: Arc::new(dir.to_path_buf()),
            floor,
            origin: Instant::now(),
            free: Arc::new(AtomicU64::new(u64::MAX)),
            measured_us: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Bytes free now (or as measured within [`REUSE_FOR`]).
    fn free(&self) -> u64 {
        let now = self.origin.elapsed().as_micros() as u64;
        let at = self.measured_us.load(Ordering::Relaxed);
        if at != u64::MAX && now.saturating_sub(at) < REUSE_FOR.as_micros() as u64 {
            return self.free.load(Ordering::Relaxed);
        }
        let free = free_bytes(&self.dir).unwrap_or(u64::MAX);
        self.free.store(free, Ordering::Relaxed);
        self.measured_us.store(now, Ordering::Relaxed);
        free
    }

    /// `Err` with a message for clients while the disk is below the floor.
    pub fn check(&self) -> Result<(), String> {
        let free = self.free();
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

    #[test]
    fn writes_are_refused_below_the_floor_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).expect("statvfs works on a temp dir");
        assert!(DiskSpace::watch(dir.path(), 0).check().is_ok());
        let err = DiskSpace::watch(dir.path(), free.saturating_add(1 << 40))
            .check()
            .unwrap_err();
        assert!(err.contains("writes resume by themselves"), "{err}");
    }
}
