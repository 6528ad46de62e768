//! The segment cache on disk: one file per segment,
//! `dataSource/start_end_partition_version.parquet` (the datasource and version percent-encoded
//! where they hold `/`, `\`, `%`, control characters or a leading `.`, so that every name reads
//! back to exactly its segment). One file and no directory of its own per segment keeps a cache
//! of hundreds of thousands of small segments to a block each.
//!
//! A segment appears whole or not at all: it is fetched into a temporary directory, verified
//! (its size is the size the segment metadata says, and it begins and ends with Parquet's
//! magic), and renamed into place. On start the cache is scanned: every file whose name reads
//! back as a segment and whose content still verifies is served again without a download;
//! anything else inside a datasource's directory (a truncated file, a foreign file, an older
//! layout) is deleted, and so is a half-finished fetch.
//!
//! Every call blocks; async code calls them from `spawn_blocking`.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::Value;

use crate::coordinator::load::SegmentRef;
use crate::interval::{iso, parse_instant};
use crate::segments::SegmentKey;
use crate::worker::deep_storage::DeepStorage;

const SUFFIX: &str = ".parquet";
const TMP: &str = ".tmp";
const MAGIC: &[u8; 4] = b"PAR1";

/// What a name may not hold as is in a path component.
const ESCAPED: &AsciiSet = &CONTROLS.add(b'/').add(b'\\').add(b'%');

/// `name` as a path component that decodes back to it; `None` for an empty name.
fn component(name: &str) -> Option<String> {
    let encoded = utf8_percent_encode(name, ESCAPED).to_string();
    match encoded.strip_prefix('.') {
        _ if encoded.is_empty() => None,
        Some(rest) => Some(format!("%2E{rest}")),
        None => Some(encoded),
    }
}

fn decode(component: &str) -> Option<String> {
    percent_decode_str(component).decode_utf8().ok().map(|s| s.into_owned())
}

/// The file name of a segment inside its datasource's directory.
fn file_name(key: &SegmentKey) -> Option<String> {
    Some(format!(
        "{}_{}_{}_{}{SUFFIX}",
        iso(key.start),
        iso(key.end),
        key.partition,
        component(&key.version)?
    ))
}

/// The segment a cached file's name says, if the name is exactly the one [`file_name`] gives.
fn parse_file_name(datasource: &Arc<str>, name: &str) -> Option<SegmentRef> {
    let mut parts = name.strip_suffix(SUFFIX)?.splitn(4, '_');
    let start = parse_instant(parts.next()?).ok()?;
    let end = parse_instant(parts.next()?).ok()?;
    let partition = parts.next()?.parse().ok()?;
    let version = decode(parts.next()?)?;
    let key = SegmentKey {
        start,
        end,
        version: version.into(),
        partition,
    };
    (file_name(&key)? == name).then(|| SegmentRef {
        datasource: datasource.clone(),
        key,
    })
}

/// The cache directory and the deep storage segments come from.
#[derive(Debug, Clone)]
pub struct SegmentCache {
    dir: PathBuf,
    deep: DeepStorage,
}

impl SegmentCache {
    /// Opens (creating) the cache directory; returns it with the segments found there intact,
    /// and their sizes. Everything else inside the datasources' directories is deleted.
    pub fn open(dir: &Path, deep: DeepStorage) -> Result<(SegmentCache, Vec<(SegmentRef, u64)>), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the segment cache [{}]: {e}", dir.display()))?;
        let cache = SegmentCache {
            dir: dir.to_path_buf(),
            deep,
        };
        let _ = std::fs::remove_dir_all(dir.join(TMP));
        let mut found = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read the segment cache [{}]: {e}", dir.display()))?;
        for ds_dir in entries.flatten() {
            let name = ds_dir.file_name();
            let Some(datasource) = name
                .to_str()
                .filter(|n| ds_dir.path().is_dir() && *n != TMP)
                .and_then(|n| decode(n).filter(|d| component(d).as_deref() == Some(n)))
            else {
                continue;
            };
            let datasource: Arc<str> = datasource.into();
            let Ok(files) = std::fs::read_dir(ds_dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let intact = f
                    .file_name()
                    .to_str()
                    .and_then(|n| parse_file_name(&datasource, n))
                    .and_then(|seg| {
                        let len = f.metadata().ok().filter(|m| m.is_file())?.len();
                        verify(&path, len).ok().map(|()| (seg, len))
                    });
                match intact {
                    Some(seg) => found.push(seg),
                    None => {
                        tracing::warn!(path = %path.display(), "deleting what is no intact cached segment");
                        let _ = if path.is_dir() {
                            std::fs::remove_dir_all(&path)
                        } else {
                            std::fs::remove_file(&path)
                        };
                    }
                }
            }
            let _ = std::fs::remove_dir(ds_dir.path());
        }
        Ok((cache, found))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached file of a segment.
    pub fn file(&self, segment: &SegmentRef) -> Result<PathBuf, String> {
        let (Some(ds), Some(name)) = (component(&segment.datasource), file_name(&segment.key)) else {
            return Err(format!("segment [{}] has an empty datasource or version", segment.id()));
        };
        Ok(self.dir.join(ds).join(name))
    }

    /// Makes the segment present: kept when the cached copy verifies, else fetched from deep
    /// storage again.
    pub fn load(&self, segment: &SegmentRef, load_spec: &Value, size: u64) -> Result<(), String> {
        let target = self.file(segment)?;
        if verify(&target, size).is_ok() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join(TMP)
            .join(format!("{}-{}", std::process::id(), rand::random::<u64>()));
        let result = self.fetch_into(&tmp, load_spec, size, &target);
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }

    fn fetch_into(&self, tmp: &Path, load_spec: &Value, size: u64, target: &Path) -> Result<(), String> {
        std::fs::create_dir_all(tmp).map_err(|e| format!("cannot create [{}]: {e}", tmp.display()))?;
        let fetched = self.deep.fetch(load_spec, tmp)?;
        let file = tmp.join("segment");
        if fetched.starts_with(tmp) {
            std::fs::rename(&fetched, &file).map_err(|e| format!("cannot move the download into place: {e}"))?;
        } else {
            std::fs::copy(&fetched, &file)
                .map_err(|e| format!("cannot copy [{}] into the cache: {e}", fetched.display()))?;
        }
        verify(&file, size)?;
        std::fs::File::open(&file)
            .and_then(|h| h.sync_all())
            .map_err(|e| format!("cannot sync the cached segment: {e}"))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create [{}]: {e}", parent.display()))?;
        }
        std::fs::rename(&file, target).map_err(|e| format!("cannot move the segment to [{}]: {e}", target.display()))
    }

    /// Deletes a segment from the cache (and its datasource's directory when left empty).
    pub fn drop_segment(&self, segment: &SegmentRef) -> Result<(), String> {
        let file = self.file(segment)?;
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot delete [{}]: {e}", file.display())),
        }
        if let Some(parent) = file.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
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
    use crate::worker::deep_storage::SegmentPlace;
    use proptest::prelude::*;

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
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(cache.file(&seg).unwrap())
            .unwrap();
        f.set_len(50).unwrap();
        let (_, found) = SegmentCache::open(&dir, deep).unwrap();
        assert!(found.is_empty());
        assert!(!cache.file(&seg).unwrap().exists());
    }

    #[test]
    fn a_foreign_file_in_the_cache_is_replaced_by_the_real_segment() {
        let (root, deep, seg, spec) = setup();
        let (cache, _) = SegmentCache::open(&root.path().join("cache"), deep).unwrap();
        let target = cache.file(&seg).unwrap();
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

    #[test]
    fn what_is_no_segment_inside_a_datasource_directory_is_deleted_and_the_rest_left_alone() {
        let (root, deep, seg, spec) = setup();
        let dir = root.path().join("cache");
        let (cache, _) = SegmentCache::open(&dir, deep.clone()).unwrap();
        cache.load(&seg, &spec, 100).unwrap();
        // An older layout's directory, a stray file and a name that is no segment's.
        let old = dir.join("wiki/2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z/v1/0");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("index.parquet"), parquet_like(100)).unwrap();
        std::fs::write(dir.join("wiki/notes.txt"), b"x").unwrap();
        std::fs::write(dir.join("wiki/yesterday_today_0_v1.parquet"), parquet_like(100)).unwrap();
        std::fs::write(dir.join("README"), b"kept").unwrap();
        let (_, found) = SegmentCache::open(&dir, deep).unwrap();
        assert_eq!(found, vec![(seg.clone(), 100)]);
        let left: Vec<_> = std::fs::read_dir(dir.join("wiki"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(left, vec![cache.file(&seg).unwrap()]);
        assert!(dir.join("README").exists());
        cache.drop_segment(&seg).unwrap();
        assert!(!dir.join("wiki").exists(), "an emptied datasource directory goes too");
    }

    #[test]
    fn an_empty_version_cannot_be_cached_and_says_why() {
        let (root, deep, mut seg, spec) = setup();
        let (cache, _) = SegmentCache::open(&root.path().join("cache"), deep).unwrap();
        seg.key.version = "".into();
        let err = cache.load(&seg, &spec, 100).unwrap_err();
        assert!(err.contains("empty datasource or version"), "{err}");
    }

    fn instant() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(Interval::ETERNITY.start),
            Just(Interval::ETERNITY.end),
            crate::interval::MIN_PRINTABLE..=crate::interval::MAX_PRINTABLE,
        ]
    }

    proptest! {
        /// Every segment's cache file name reads back as that segment, whatever its datasource
        /// and version hold, and is one path component that hides nothing.
        #[test]
        fn a_cached_file_name_reads_back_as_its_segment(
            datasource in "\\PC{1,12}|[./\\\\%_\\x00-\\x1f]{1,6}",
            version in "\\PC{1,12}|[./\\\\%_\\x00-\\x1f]{1,6}",
            start in instant(),
            end in instant(),
            partition in any::<u32>(),
        ) {
            let datasource: Arc<str> = datasource.into();
            let key = SegmentKey { start, end, version: version.into(), partition };
            let name = file_name(&key).unwrap();
            let ds = component(&datasource).unwrap();
            for c in [&name, &ds] {
                prop_assert!(!c.contains('/') && !c.contains('\\') && !c.contains('\0') && !c.starts_with('.'), "{}", c);
            }
            prop_assert_eq!(decode(&ds), Some(datasource.to_string()));
            let back = parse_file_name(&datasource, &name);
            prop_assert_eq!(back, Some(SegmentRef { datasource: datasource.clone(), key }));
        }
    }
}
