//! The segment cache on disk: one directory per segment, laid out as deep storage is
//! (`dataSource/start_end/version/partitionNum/`), holding `index.parquet` and
//! `descriptor.json` (the segment, its size and the load spec it came from).
//!
//! A segment appears whole or not at all: it is fetched into a temporary directory, verified
//! (its size is the size the segment metadata says, and it begins and ends with Parquet's
//! magic), described, and renamed into place. On start the cache is scanned: every directory
//! whose descriptor reads and whose file still verifies is served again without a download;
//! anything else there (a truncated file, a foreign file, a half-finished fetch) is deleted.
//!
//! Every call blocks; async code calls them from `spawn_blocking`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::coordinator::load::SegmentRef;
use crate::worker::deep_storage::{DeepStorage, SegmentPlace};

const FILE: &str = "index.parquet";
const DESCRIPTOR: &str = "descriptor.json";
const TMP: &str = ".tmp";
const MAGIC: &[u8; 4] = b"PAR1";

/// What `descriptor.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    segment: SegmentRef,
    size: u64,
    load_spec: Value,
}

/// The cache directory and the deep storage segments come from.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    dir: PathBuf,
    deep: DeepStorage,
}

impl SegmentCache {
    /// Opens (creating) the cache directory; returns it with the segments found there intact,
    /// and their sizes. Everything else in it is deleted.
    pub fn open(dir: &Path, deep: DeepStorage) -> Result<(SegmentCache, Vec<(SegmentRef, u64)>), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the segment cache [{}]: {e}", dir.display()))?;
        let cache = SegmentCache {
            dir: dir.to_path_buf(),
            deep,
        };
        let _ = std::fs::remove_dir_all(dir.join(TMP));
        let mut found = Vec::new();
        let mut descriptors = Vec::new();
        find_descriptors(dir, 0, &mut descriptors);
        for path in descriptors {
            let seg_dir = path.parent().unwrap_or(dir).to_path_buf();
            let intact = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok())
                .filter(|d| cache.segment_dir(&d.segment) == seg_dir && verify(&seg_dir.join(FILE), d.size).is_ok());
            match intact {
                Some(d) => found.push((d.segment, d.size)),
                None => {
                    tracing::warn!(dir = %seg_dir.display(), "deleting a cached segment that does not verify");
                    let _ = std::fs::remove_dir_all(&seg_dir);
                }
            }
        }
        Ok((cache, found))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_dir(&self, segment: &SegmentRef) -> PathBuf {
        let interval = segment.key.interval();
        self.dir.join(
            SegmentPlace {
                datasource: &segment.datasource,
                interval: &interval,
                version: &segment.key.version,
                partition: segment.key.partition,
            }
            .dir(),
        )
    }

    /// The cached file of a segment.
    pub fn file(&self, segment: &SegmentRef) -> PathBuf {
        self.segment_dir(segment).join(FILE)
    }

    /// Makes the segment present: kept when the cached copy came from `load_spec` and verifies,
    /// else fetched from deep storage again.
    pub fn load(&self, segment: &SegmentRef, load_spec: &Value, size: u64) -> Result<(), String> {
        let target = self.segment_dir(segment);
        let wanted = Descriptor {
            segment: segment.clone(),
            size,
            load_spec: load_spec.clone(),
        };
        let cached = std::fs::read(target.join(DESCRIPTOR))
            .ok()
            .and_then(|b| serde_json::from_slice::<Descriptor>(&b).ok());
        if cached.as_ref() == Some(&wanted) && verify(&target.join(FILE), size).is_ok() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(TMP)
            .join(format!("{}-{}", std::process::id(), rand::random::<u64>()));
        let result = self.fetch_into(&tmp, &wanted, &target);
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn fetch_into(&self, tmp: &Path, wanted: &Descriptor, target: &Path) -> Result<(), String> {
        std::fs::create_dir_all(tmp).map_err(|e| format!("cannot create [{}]: {e}", tmp.display()))?;
        let fetched = self.deep.fetch(&wanted.load_spec, tmp)?;
        let file = tmp.join(FILE);
        if fetched.starts_with(tmp) {
            std::fs::rename(&fetched, &file).map_err(|e| format!("cannot move the download into place: {e}"))?;
        } else {
            std::fs::copy(&fetched, &file)
                .map_err(|e| format!("cannot copy [{}] into the cache: {e}", fetched.display()))?;
        }
        verify(&file, wanted.size)?;
        let descriptor = serde_json::to_vec(wanted).map_err(|e| e.to_string())?;
        std::fs::write(tmp.join(DESCRIPTOR), descriptor).map_err(|e| format!("cannot write the descriptor: {e}"))?;
        for f in [FILE, DESCRIPTOR] {
            std::fs::File::open(tmp.join(f))
                .and_then(|h| h.sync_all())
                .map_err(|e| format!("cannot sync the cached segment: {e}"))?;
        }
        if target.exists() {
            std::fs::remove_dir_all(target).map_err(|e| format!("cannot replace [{}]: {e}", target.display()))?;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create [{}]: {e}", parent.display()))?;
        }
        std::fs::rename(tmp, target).map_err(|e| format!("cannot move the segment into [{}]: {e}", target.display()))
    }

    /// Deletes a segment from the cache (and its directories left empty).
    pub fn drop_segment(&self, segment: &SegmentRef) -> Result<(), String> {
        let dir = self.segment_dir(segment);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot delete [{}]: {e}", dir.display())),
        }
        let mut up = dir.parent();
        while let Some(d) = up {
            if d == self.dir || !d.starts_with(&self.dir) || std::fs::remove_dir(d).is_err() {
                break;
            }
            up = d.parent();
        }
        Ok(())
    }
}

/// Collects `descriptor.json` files at the segment depth (four levels down) under `dir`.
fn find_descriptors(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if depth == 0 && e.file_name() == TMP {
            continue;
        }
        if depth == 4 {
            if e.file_name() == DESCRIPTOR {
                out.push(path);
            }
        } else if path.is_dir() {
            find_descriptors(&path, depth + 1, out);
        }
    }
}

/// Checks a segment file: `size` bytes, Parquet's magic at both ends.
pub fn verify(file: &Path, size: u64) -> Result<(), String> {
    let mut f = std::fs::File::open(file).map_err(|e| format!("cannot open [{}]: {e}", file.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != size {
        return Err(format!(
            "[{}] has {len} bytes; the segment's metadata says {size}",
            file.display()
        ));
    }
    let mut head = [0u8; 4];
    let mut tail = [0u8; 4];
    let read = f
        .read_exact(&mut head)
        .and_then(|_| f.seek(SeekFrom::End(-4)))
        .and_then(|_| f.read_exact(&mut tail));
    if read.is_err() || &head != MAGIC || &tail != MAGIC {
        return Err(format!("[{}] is not a Parquet file", file.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interval::Interval;

    fn parquet_like(len: usize) -> Vec<u8> {
        let mut b = vec![7u8; len];
        b[..4].copy_from_slice(MAGIC);
        b[len - 4..].copy_from_slice(MAGIC);
        b
    }

    fn setup() -> (tempfile::TempDir, DeepStorage, SegmentRef, Value) {
        let root = tempfile::tempdir().unwrap();
        let deep = DeepStorage::parse(root.path().join("deep").to_str().unwrap()).unwrap();
        let seg = SegmentRef {
            datasource: "wiki".into(),
            key: crate::segments::SegmentKey {
                start: 0,
                end: 86_400_000,
                version: "v1".into(),
                partition: 0,
            },
        };
        let file = root.path().join("src.parquet");
        std::fs::write(&file, parquet_like(100)).unwrap();
        let iv = Interval {
            start: 0,
            end: 86_400_000,
        };
        let spec = deep
            .push(
                &file,
                &SegmentPlace {
                    datasource: "wiki",
                    interval: &iv,
                    version: "v1",
                    partition: 0,
                },
            )
            .unwrap();
        (root, deep, seg, spec)
    }

    #[test]
    fn a_loaded_segment_is_found_again_on_restart_and_a_truncated_one_is_deleted() {
        let (root, deep, seg, spec) = setup();
        let dir = root.path().join("cache");
        let (cache, found) = SegmentCache::open(&dir, deep.clone()).unwrap();
        assert!(found.is_empty());
        cache.load(&seg, &spec, 100).unwrap();
        let (_, found) = SegmentCache::open(&dir, deep.clone()).unwrap();
        assert_eq!(found, vec![(seg.clone(), 100)]);
        // Truncate it: the next start deletes it instead of serving it.
        let f = std::fs::OpenOptions::new().write(true).open(cache.file(&seg)).unwrap();
        f.set_len(50).unwrap();
        let (_, found) = SegmentCache::open(&dir, deep).unwrap();
        assert!(found.is_empty());
        assert!(!cache.file(&seg).exists());
    }

    #[test]
    fn a_foreign_file_in_the_cache_is_replaced_by_the_real_segment() {
        let (root, deep, seg, spec) = setup();
        let (cache, _) = SegmentCache::open(&root.path().join("cache"), deep).unwrap();
        let target = cache.file(&seg);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, b"not a segment at all").unwrap();
        cache.load(&seg, &spec, 100).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), parquet_like(100));
        // A size that does not match the metadata fails the load, with the reason.
        let err = cache.load(&seg, &spec, 99).unwrap_err();
        assert!(err.contains("100 bytes") && err.contains("says 99"), "{err}");
    }

    #[test]
    fn a_load_spec_outside_deep_storage_is_refused() {
        let (root, deep, seg, _) = setup();
        let (cache, _) = SegmentCache::open(&root.path().join("cache"), deep).unwrap();
        let outside = serde_json::json!({"type": "local", "path": "/etc/passwd"});
        assert!(cache.load(&seg, &outside, 100).is_err());
        cache.drop_segment(&seg).unwrap();
    }
}
