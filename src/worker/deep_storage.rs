//! Deep storage: where peons push segment files and kill tasks delete them.
//!
//! `--deep-storage` names either a local directory (Druid's local deep storage, shared by every
//! node), or `s3://bucket/prefix` (Druid's S3 deep storage; credentials, region and endpoint from
//! the standard AWS environment variables, see [`raftlord_ingest::s3`]). Either way a segment
//! partition lives at `dataSource/start_end/version/partitionNum/index.parquet` under it, and
//! its `loadSpec` says where: `{"type": "local", "path": ...}` or
//! `{"type": "s3", "bucket": ..., "key": ...}`.
//!
//! Every call blocks; async code calls them from `spawn_blocking`. Nothing outside deep storage
//! is ever deleted: a load spec that names a file elsewhere is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use raftlord_ingest::s3::{Bucket, S3Settings};

use crate::interval::Interval;

/// The file name of a segment partition in deep storage.
const SEGMENT_FILE: &str = "index.parquet";

/// Where segment files go.
#[derive(Debug, Clone)]
pub enum DeepStorage {
    /// A directory, absolute and with symlinks resolved where it exists.
    Local(PathBuf),
    /// A bucket, and the key prefix (no leading or trailing `/`; may be empty).
    S3 { bucket: Bucket, prefix: String },
}

/// The place of one segment partition, relative to deep storage.
pub struct SegmentPlace<'a> {
    pub datasource: &'a str,
    pub interval: &'a Interval,
    pub version: &'a str,
    pub partition: u32,
}

impl SegmentPlace<'_> {
    /// `dataSource/start_end/version/partitionNum`, with each part safe as a path component.
    pub fn dir(&self) -> String {
        format!(
            "{}/{}_{}/{}/{}",
            sanitize(self.datasource),
            crate::interval::iso(self.interval.start),
            crate::interval::iso(self.interval.end),
            sanitize(self.version),
            self.partition
        )
    }
}

/// A path component from a name: no separators, no `.` or `..`, nothing empty.
fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c })
        .collect();
    if s.is_empty() || s == "." || s == ".." {
        format!("_{s}")
    } else {
        s
    }
}

impl DeepStorage {
    /// `s3://bucket/prefix` or a directory.
    pub fn parse(location: &str) -> Result<DeepStorage, String> {
        if location.starts_with("s3://") {
            let (bucket, prefix) = raftlord_ingest::s3::parse_uri(location)?;
            let prefix = prefix.trim_matches('/').to_string();
            if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
                return Err(format!("[{location}]: the prefix has an empty, '.' or '..' part"));
            }
            let bucket = Bucket::open(&bucket, &S3Settings::default())?;
            return Ok(DeepStorage::S3 { bucket, prefix });
        }
        if location.contains("://") {
            return Err(format!(
                "[{location}]: deep storage is a local directory or an s3://bucket/prefix URI"
            ));
        }
        let dir = std::path::absolute(location).map_err(|e| format!("[{location}]: {e}"))?;
        Ok(DeepStorage::Local(dir.canonicalize().unwrap_or(dir)))
    }

    /// Copies the local segment file `file` into deep storage at `place`; returns its load spec.
    /// The file appears whole or not at all.
    pub fn push(&self, file: &Path, place: &SegmentPlace<'_>) -> Result<Value, String> {
        match self {
            DeepStorage::Local(root) => {
                let dir = root.join(place.dir());
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create [{}]: {e}", dir.display()))?;
                let target = dir.join(SEGMENT_FILE);
                let tmp = dir.join(format!(".{SEGMENT_FILE}.{}", std::process::id()));
                std::fs::copy(file, &tmp).map_err(|e| format!("cannot copy to [{}]: {e}", tmp.display()))?;
                std::fs::File::open(&tmp)
                    .and_then(|h| h.sync_all())
                    .map_err(|e| format!("cannot sync [{}]: {e}", tmp.display()))?;
                std::fs::rename(&tmp, &target).map_err(|e| format!("cannot rename to [{}]: {e}", target.display()))?;
                Ok(json!({"type": "local", "path": target.display().to_string()}))
            }
            DeepStorage::S3 { bucket, prefix } => {
                let key = join(prefix, &format!("{}/{SEGMENT_FILE}", place.dir()));
                bucket.upload(file, &key)?;
                Ok(json!({"type": "s3", "bucket": bucket.name(), "key": key}))
            }
        }
    }

    /// Where a load spec points, as a string that names one file, when it is in this deep
    /// storage: the canonical path, or `s3://bucket/key`. `None` for a tombstone, another kind
    /// of load spec, or a file elsewhere.
    pub fn locate(&self, load_spec: &Value) -> Option<String> {
        match (self, load_spec.get("type")?.as_str()?) {
            (DeepStorage::Local(root), "local") => {
                let p = Path::new(load_spec.get("path")?.as_str()?);
                let real = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
                (real.starts_with(root) && real != *root).then(|| real.display().to_string())
            }
            (DeepStorage::S3 { bucket, prefix }, "s3") => {
                let b = load_spec.get("bucket")?.as_str()?;
                let k = load_spec.get("key")?.as_str()?;
                let inside = prefix.is_empty() || k.starts_with(&format!("{prefix}/"));
                (b == bucket.name() && inside).then(|| format!("s3://{b}/{k}"))
            }
            _ => None,
        }
    }

    /// Deletes the file a load spec names; `Ok(false)` when it was already gone. A load spec
    /// that points outside this deep storage is an error, and nothing is deleted.
    pub fn delete(&self, load_spec: &Value) -> Result<bool, String> {
        if load_spec.get("type").and_then(Value::as_str) == Some("tombstone") {
            return Ok(false);
        }
        let place = self
            .locate(load_spec)
            .ok_or_else(|| format!("{load_spec} is not in deep storage {self}; not deleted"))?;
        self.delete_place(&place)
    }

    /// Deletes a file [`DeepStorage::locate`] returned, then (locally) its empty directories.
    fn delete_place(&self, place: &str) -> Result<bool, String> {
        match self {
            DeepStorage::Local(root) => {
                let path = Path::new(place);
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(format!("cannot delete [{place}]: {e}")),
                }
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
                Ok(true)
            }
            DeepStorage::S3 { bucket, .. } => {
                let key = place
                    .strip_prefix(&format!("s3://{}/", bucket.name()))
                    .ok_or_else(|| format!("[{place}] is not in bucket {}", bucket.name()))?;
                bucket.delete(key)
            }
        }
    }

    /// A local copy of the segment file a load spec names, to read: the file itself when deep
    /// storage is local, else a download into `dir`.
    pub fn fetch(&self, load_spec: &Value, dir: &Path) -> Result<PathBuf, String> {
        let place = self.locate(load_spec).ok_or_else(|| {
            format!("{load_spec} is not in this node's deep storage ({self}); the segment cannot be read")
        })?;
        match self {
            DeepStorage::Local(_) => Ok(PathBuf::from(place)),
            DeepStorage::S3 { bucket, .. } => {
                let key = &place[format!("s3://{}/", bucket.name()).len()..];
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create [{}]: {e}", dir.display()))?;
                let to = dir.join(format!("{:016x}.parquet", fxhash(key)));
                bucket.download(key, &to)?;
                Ok(to)
            }
        }
    }

    /// Deletes the files of `datasource` in segment intervals inside `interval` that are not
    /// in `referenced` (places as [`DeepStorage::locate`] gives them): files left by a peon
    /// killed between pushing and publishing. Returns the places deleted.
    pub fn remove_orphans(
        &self,
        datasource: &str,
        interval: &Interval,
        referenced: &HashSet<String>,
    ) -> Result<Vec<String>, String> {
        let ds = sanitize(datasource);
        let mut candidates: Vec<String> = Vec::new();
        match self {
            DeepStorage::Local(root) => {
                let Ok(entries) = std::fs::read_dir(root.join(&ds)) else {
                    return Ok(Vec::new());
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if interval_dir_inside(&name, interval) {
                        for f in files_under(&e.path()) {
                            candidates.push(f.display().to_string());
                        }
                    }
                }
            }
            DeepStorage::S3 { bucket, prefix } => {
                let base = join(prefix, &format!("{ds}/"));
                for o in bucket.list(&base)? {
                    let dir = o.key[base.len()..].split('/').next().unwrap_or("");
                    if interval_dir_inside(dir, interval) {
                        candidates.push(format!("s3://{}/{}", bucket.name(), o.key));
                    }
                }
            }
        }
        let mut removed = Vec::new();
        for c in candidates {
            if !referenced.contains(&c) && self.delete_place(&c)? {
                removed.push(c);
            }
        }
        Ok(removed)
    }
}

impl std::fmt::Display for DeepStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeepStorage::Local(d) => write!(f, "{}", d.display()),
            DeepStorage::S3 { bucket, prefix } => write!(f, "s3://{}/{prefix}", bucket.name()),
        }
    }
}

/// `prefix/rest`, or `rest` when there is no prefix.
fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Whether `name` is a segment interval directory (`start_end`) inside `interval`.
fn interval_dir_inside(name: &str, interval: &Interval) -> bool {
    let Some((start, end)) = name.split_once('_') else {
        return false;
    };
    Interval::parse(&format!("{start}/{end}")).is_ok_and(|iv| interval.contains(&iv))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A stable name for a downloaded copy.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place<'a>(iv: &'a Interval, version: &'a str) -> SegmentPlace<'a> {
        SegmentPlace {
            datasource: "wiki/../x",
            interval: iv,
            version,
            partition: 3,
        }
    }

    #[test]
    fn local_push_locate_fetch_and_delete_stay_inside_deep_storage() {
        let root = tempfile::tempdir().unwrap();
        let deep = DeepStorage::parse(root.path().to_str().unwrap()).unwrap();
        let src = root.path().join("src.parquet");
        std::fs::write(&src, b"PAR1").unwrap();
        let iv = Interval::parse("2024-01-01/2024-01-02").unwrap();
        let spec = deep.push(&src, &place(&iv, "..")).unwrap();
        let path = spec["path"].as_str().unwrap();
        assert!(
            path.contains("wiki_.._x/2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z/_../3/index.parquet"),
            "{path}"
        );
        assert!(deep.locate(&spec).is_some());
        assert_eq!(deep.fetch(&spec, root.path()).unwrap(), PathBuf::from(path));
        // A file outside is neither located nor deleted.
        let outside = json!({"type": "local", "path": src.parent().unwrap().parent().unwrap().display().to_string()});
        assert!(deep.locate(&outside).is_none());
        assert!(deep.delete(&outside).is_err());
        assert!(deep.delete(&spec).unwrap());
        assert!(!deep.delete(&spec).unwrap());
        // The emptied partition, version and interval directories went with the file.
        assert!(!root
            .path()
            .join("wiki_.._x/2024-01-01T00:00:00.000Z_2024-01-02T00:00:00.000Z")
            .exists());
        assert!(src.exists());
    }

    #[test]
    fn orphans_are_the_unreferenced_files_of_intervals_inside_the_killed_one() {
        let root = tempfile::tempdir().unwrap();
        let deep = DeepStorage::parse(root.path().to_str().unwrap()).unwrap();
        let src = root.path().join("src.parquet");
        std::fs::write(&src, b"PAR1").unwrap();
        let day1 = Interval::parse("2024-01-01/2024-01-02").unwrap();
        let day2 = Interval::parse("2024-01-02/2024-01-03").unwrap();
        let kept = deep.push(&src, &place(&day1, "v1")).unwrap();
        let orphan = deep.push(&src, &place(&day1, "v2")).unwrap();
        let outside_interval = deep.push(&src, &place(&day2, "v2")).unwrap();
        let referenced: HashSet<String> = [deep.locate(&kept).unwrap()].into();
        let removed = deep.remove_orphans("wiki/../x", &day1, &referenced).unwrap();
        assert_eq!(removed, vec![deep.locate(&orphan).unwrap()]);
        assert!(Path::new(kept["path"].as_str().unwrap()).exists());
        assert!(Path::new(outside_interval["path"].as_str().unwrap()).exists());
    }

    #[test]
    fn deep_storage_locations_other_than_a_directory_or_s3_are_refused() {
        assert!(DeepStorage::parse("hdfs://nn/x").unwrap_err().contains("s3://"));
        assert!(DeepStorage::parse("s3://b/a/../c").unwrap_err().contains("'..'"));
        assert!(DeepStorage::parse("s3:///x").is_err());
    }
}
