//! `ioConfig.inputSource`: where the input comes from, as a list of named byte streams.
//!
//! `inline` (`data`) and `local` (`baseDir` with a `filter` glob on file names, searched
//! recursively; or `files`) are read. Files are decompressed by extension: `.gz` (gzip, also
//! concatenated members) and `.zst` (zstd). A file under `baseDir` is never read through a path
//! that leaves it (symlinks included). `druid` reads a datasource's segments (the caller names
//! their files). `http` and `s3` are recognised and refused with a message saying so.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::spec::{field, FieldError};

use raftlord_time::Interval;

/// A parsed input source.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    Inline {
        data: String,
    },
    Local {
        base_dir: Option<PathBuf>,
        filter: Option<String>,
        files: Vec<PathBuf>,
    },
    /// The used, visible segments of a datasource in an interval (Druid's reindexing); `files`
    /// are their segment files, found by the caller before reading
    /// ([`InputSource::with_segment_files`]).
    Druid {
        datasource: String,
        interval: Interval,
        files: Vec<PathBuf>,
    },
}

/// One stream of input: its name (a path, or `inline`) for reports and errors.
pub struct Entity {
    pub name: String,
    pub size: u64,
    pub reader: Box<dyn BufRead + Send>,
}

impl InputSource {
    /// Reads the spec's `inputSource`; an error names the field (relative to `inputSource`).
    pub fn parse(v: &Value) -> Result<InputSource, FieldError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("type", "required"))?;
        match kind {
            "inline" => {
                let data = v
                    .get("data")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field("data", "an inline input source needs \"data\" as a string"))?;
                Ok(InputSource::Inline { data: data.to_string() })
            }
            "local" => {
                let base_dir = v.get("baseDir").and_then(Value::as_str).map(PathBuf::from);
                let filter = v.get("filter").and_then(Value::as_str).map(str::to_string);
                let files: Vec<PathBuf> = match v.get("files") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|f| {
                            f.as_str()
                                .map(PathBuf::from)
                                .ok_or_else(|| field("files", "must be a list of paths"))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => return Err(field("files", "must be a list of paths")),
                };
                if base_dir.is_none() && files.is_empty() {
                    return Err(field(
                        "baseDir",
                        "a local input source needs \"baseDir\" and \"filter\", or \"files\"",
                    ));
                }
                if base_dir.is_some() && filter.is_none() {
                    return Err(field("filter", "required with baseDir, e.g. \"*.json\""));
                }
                if let Some(f) = &filter {
                    globset::Glob::new(f).map_err(|e| field("filter", format!("not a glob: {e}")))?;
                }
                Ok(InputSource::Local {
                    base_dir,
                    filter,
                    files,
                })
            }
            "druid" => {
                let datasource = v
                    .get("dataSource")
                    .and_then(Value::as_str)
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| field("dataSource", "a druid input source needs \"dataSource\""))?;
                let interval = v
                    .get("interval")
                    .and_then(Value::as_str)
                    .ok_or_else(|| field("interval", "a druid input source needs \"interval\""))
                    .and_then(|s| Interval::parse(s).map_err(|e| field("interval", e.to_string())))?;
                Ok(InputSource::Druid {
                    datasource: datasource.to_string(),
                    interval,
                    files: Vec::new(),
                })
            }
            "http" | "s3" | "google" | "azure" | "hdfs" | "sql" | "combining" => Err(field(
                "type",
                format!("input source [{kind}] is not supported by this raftlord version; use \"local\" or \"inline\""),
            )),
            other => Err(field("type", format!("unknown input source [{other}]"))),
        }
    }

    /// Checks what the spec names exists, without reading it: a missing `baseDir` or file is
    /// refused at submit. The error names the field (relative to `inputSource`).
    pub fn check_exists(&self) -> Result<(), FieldError> {
        if let InputSource::Local { base_dir, files, .. } = self {
            if let Some(b) = base_dir {
                if !b.is_dir() {
                    return Err(field("baseDir", format!("[{}] is not a directory", b.display())));
                }
            }
            for (i, f) in files.iter().enumerate() {
                if !f.is_file() {
                    return Err(field(
                        &format!("files[{i}]"),
                        format!("[{}] is not a file", f.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The segment files to read, for a `druid` source.
    pub fn with_segment_files(&mut self, segment_files: Vec<PathBuf>) {
        if let InputSource::Druid { files, .. } = self {
            *files = segment_files;
        }
    }

    /// The input's streams, in a stable order (files sorted by path). A `druid` source has
    /// none: its segment files are read as Parquet by [`crate::segment_input`].
    pub fn open(&self) -> Result<Vec<Entity>, String> {
        match self {
            InputSource::Druid { .. } => Ok(Vec::new()),
            InputSource::Inline { data } => Ok(vec![Entity {
                name: "inline".to_string(),
                size: data.len() as u64,
                reader: Box::new(Cursor::new(data.clone().into_bytes())),
            }]),
            InputSource::Local {
                base_dir,
                filter,
                files,
            } => {
                let mut paths: Vec<PathBuf> = files.clone();
                if let (Some(base), Some(filter)) = (base_dir, filter) {
                    let glob = globset::Glob::new(filter).map_err(|e| e.to_string())?.compile_matcher();
                    let root = base
                        .canonicalize()
                        .map_err(|e| format!("baseDir [{}]: {e}", base.display()))?;
                    let mut found = Vec::new();
                    walk(&root, &root, &glob, &mut found)?;
                    found.sort();
                    paths.extend(found);
                }
                if paths.is_empty() {
                    return Err("the local input source matched no files".to_string());
                }
                paths.iter().map(|p| open_file(p)).collect()
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, glob: &globset::GlobMatcher, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list [{}]: {e}", dir.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot list [{}]: {e}", dir.display()))?;
        let path = e.path();
        // Resolve symlinks and keep only what stays under baseDir.
        let Ok(real) = path.canonicalize() else { continue };
        if !real.starts_with(root) {
            continue;
        }
        if real.is_dir() {
            walk(root, &real, glob, out)?;
        } else if real.is_file() && glob.is_match(e.file_name()) {
            out.push(real);
        }
    }
    Ok(())
}

fn open_file(path: &Path) -> Result<Entity, String> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| format!("cannot open [{name}]: {e}"))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let reader: Box<dyn Read + Send> = match ext.as_str() {
        "gz" => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, f))),
        "zst" => Box::new(zstd::Decoder::new(f).map_err(|e| format!("cannot read [{name}] as zstd: {e}"))?),
        "bz2" | "xz" | "zip" => {
            return Err(format!(
                "[{name}]: .{ext} input is not supported by this raftlord version; gzip (.gz) and zstd (.zst) are"
            ))
        }
        _ => Box::new(f),
    };
    Ok(Entity {
        name,
        size,
        reader: Box::new(BufReader::with_capacity(1 << 16, reader)),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn read_all(e: Entity) -> String {
        let mut s = String::new();
        let mut r = e.reader;
        r.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn local_source_globs_names_recursively_and_reads_gzip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.json"), "a\n").unwrap();
        std::fs::write(dir.path().join("b.csv"), "b\n").unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"c\n").unwrap();
        std::fs::write(dir.path().join("sub/c.json.gz"), gz.finish().unwrap()).unwrap();
        let src = InputSource::parse(&json!({"type": "local", "baseDir": dir.path(), "filter": "*.json*"})).unwrap();
        src.check_exists().unwrap();
        let texts: Vec<String> = src.open().unwrap().into_iter().map(read_all).collect();
        assert_eq!(texts, vec!["a\n", "c\n"]);
    }

    #[test]
    fn symlinks_out_of_base_dir_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.json"), "x\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.json"), dir.path().join("link.json")).unwrap();
        std::fs::write(dir.path().join("ok.json"), "ok\n").unwrap();
        let src = InputSource::parse(&json!({"type": "local", "baseDir": dir.path(), "filter": "*.json"})).unwrap();
        let texts: Vec<String> = src.open().unwrap().into_iter().map(read_all).collect();
        assert_eq!(texts, vec!["ok\n"]);
    }

    #[test]
    fn bad_sources_name_their_field() {
        let err = |v: Value| InputSource::parse(&v).unwrap_err().0;
        assert_eq!(err(json!({"type": "local", "baseDir": "/x"})), "filter");
        assert_eq!(err(json!({"type": "local"})), "baseDir");
        assert_eq!(err(json!({"type": "inline"})), "data");
        assert_eq!(err(json!({"type": "ftp"})), "type");
        assert_eq!(err(json!({"type": "http", "uris": ["http://x/y"]})), "type");
        assert_eq!(err(json!({"type": "druid", "interval": "2024/2025"})), "dataSource");
        assert_eq!(
            err(json!({"type": "druid", "dataSource": "w", "interval": "soon"})),
            "interval"
        );
        assert!(InputSource::parse(&json!({"type": "druid", "dataSource": "w", "interval": "2024/2025"})).is_ok());
        let missing = InputSource::parse(&json!({"type": "local", "baseDir": "/no/such/dir", "filter": "*"})).unwrap();
        assert_eq!(missing.check_exists().unwrap_err().0, "baseDir");
    }
}
