//! `ioConfig.inputSource`: where the input comes from, as a list of named byte streams.
//!
//! - `inline` (`data`);
//! - `local` (`baseDir` with a `filter` glob on file names, searched recursively; or `files`): a
//!   file under `baseDir` is never read through a path that leaves it (symlinks included);
//! - `http` (`uris`, with `httpAuthenticationUsername` and `httpAuthenticationPassword` as a
//!   string, `{"type": "default", "password": ...}` or `{"type": "environment", "variable":
//!   ...}`): each URI is fetched with GET and read as it arrives; `http` or `https` (checked
//!   against the system's trusted certificates);
//! - `s3` (exactly one of `uris`, `prefixes` or `objects`; `objectGlob` on the key;
//!   `properties.accessKeyId` / `secretAccessKey` as password providers; `endpointConfig.url`
//!   and `clientConfig.protocol` for an S3-compatible server, see [`crate::s3`]): each object is
//!   read as a stream when its turn comes;
//! - `druid` reads a datasource's segments (the caller names their files).
//!
//! Input is decompressed by the extension of its name: `.gz` (gzip, also concatenated members),
//! `.bz2`, `.xz`, `.zst`, and `.zip` (every file in the archive, in archive order; Druid reads
//! the first only). The other cloud sources are refused with a message saying so.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
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
    Http {
        uris: Vec<String>,
        username: Option<String>,
        password: Option<Password>,
    },
    S3 {
        objects: S3Objects,
        /// `objectGlob`, matched against each object's key.
        glob: Option<String>,
        settings: S3Source,
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

/// What an `s3` source names: whole objects, or every object under some prefixes. Each is a
/// bucket and a key.
#[derive(Debug, Clone, PartialEq)]
pub enum S3Objects {
    Objects(Vec<(String, String)>),
    Prefixes(Vec<(String, String)>),
}

/// How an `s3` source reaches its server: the spec's `endpointConfig`, `properties` and
/// `clientConfig`; what they leave out comes from the AWS environment of the worker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct S3Source {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<Password>,
    pub secret_access_key: Option<Password>,
}

impl S3Source {
    fn settings(&self) -> Result<crate::s3::S3Settings, String> {
        Ok(crate::s3::S3Settings {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.as_ref().map(Password::resolve).transpose()?,
            secret_access_key: self.secret_access_key.as_ref().map(Password::resolve).transpose()?,
        })
    }
}

/// Druid's `PasswordProvider`: the password itself, or the environment variable holding it.
#[derive(Clone, PartialEq)]
pub enum Password {
    Plain(String),
    Environment(String),
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Plain(_) => f.write_str("Password(<redacted>)"),
            Password::Environment(v) => write!(f, "Password(environment {v})"),
        }
    }
}

impl Password {
    /// The provider at field `name`.
    fn parse(v: &Value, name: &str) -> Result<Password, FieldError> {
        match v {
            Value::String(p) => Ok(Password::Plain(p.clone())),
            Value::Object(o) => match o.get("type").and_then(Value::as_str).unwrap_or("default") {
                "default" => o
                    .get("password")
                    .and_then(Value::as_str)
                    .map(|p| Password::Plain(p.to_string()))
                    .ok_or_else(|| field(&format!("{name}.password"), "required, a string")),
                "environment" => o
                    .get("variable")
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .map(|v| Password::Environment(v.to_string()))
                    .ok_or_else(|| {
                        field(
                            &format!("{name}.variable"),
                            "required, the name of an environment variable",
                        )
                    }),
                other => Err(field(
                    &format!("{name}.type"),
                    format!("password provider [{other}] is not supported; use \"default\" or \"environment\""),
                )),
            },
            _ => Err(field(name, "a string, or {\"type\": \"default\", \"password\": ...}")),
        }
    }

    fn resolve(&self) -> Result<String, String> {
        match self {
            Password::Plain(p) => Ok(p.clone()),
            Password::Environment(v) => std::env::var(v)
                .map_err(|_| format!("the environment variable [{v}] holding a password or key is not set")),
        }
    }
}

/// Opens one input stream when called.
pub type Opener = Box<dyn FnOnce() -> Result<Entity, String> + Send>;

/// One stream of input: its name (a path, a URI, or `inline`) for reports and errors.
pub struct Entity {
    pub name: String,
    pub size: u64,
    pub reader: Box<dyn BufRead + Send>,
    /// The local file itself, when the stream is a plain (not compressed) file: a reader that
    /// needs to seek (Parquet) opens it instead of reading the stream.
    pub path: Option<PathBuf>,
}

impl Entity {
    /// The stream as a file that can be read at any offset: the local file itself, or else the
    /// stream copied to an anonymous temporary file (in `dir` if given).
    pub fn into_file(self, dir: Option<&Path>) -> Result<File, String> {
        if let Some(p) = &self.path {
            return File::open(p).map_err(|e| format!("cannot open [{}]: {e}", p.display()));
        }
        let mut reader = self.reader;
        spool(&mut reader, dir).map_err(|e| format!("cannot read [{}]: {e}", self.name))
    }
}

/// Copies `reader` to an anonymous temporary file, rewound.
fn spool(reader: &mut dyn Read, dir: Option<&Path>) -> std::io::Result<File> {
    let mut f = match dir {
        Some(d) => tempfile::tempfile_in(d)?,
        None => tempfile::tempfile()?,
    };
    std::io::copy(reader, &mut f)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
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
            "http" => {
                let uris: Vec<String> = match v.get("uris") {
                    Some(Value::Array(a)) if !a.is_empty() => a
                        .iter()
                        .map(|u| u.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| field("uris", "must be a list of URIs"))?,
                    _ => return Err(field("uris", "an http input source needs \"uris\", a non-empty list")),
                };
                for (i, u) in uris.iter().enumerate() {
                    check_http_uri(u).map_err(|m| field(&format!("uris[{i}]"), m))?;
                }
                let username = v
                    .get("httpAuthenticationUsername")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let password = match v.get("httpAuthenticationPassword") {
                    None | Some(Value::Null) => None,
                    Some(p) => Some(Password::parse(p, "httpAuthenticationPassword")?),
                };
                if password.is_some() && username.is_none() {
                    return Err(field(
                        "httpAuthenticationUsername",
                        "required with httpAuthenticationPassword",
                    ));
                }
                Ok(InputSource::Http {
                    uris,
                    username,
                    password,
                })
            }
            "s3" => parse_s3(v),
            "google" | "azure" | "hdfs" | "sql" | "combining" => Err(field(
                "type",
                format!(
                    "input source [{kind}] is not supported by this raftlord version; use \"local\", \"s3\", \"http\" or \"inline\""
                ),
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

    /// The input's streams, in a stable order (files sorted by path), each opened when it is
    /// called: an HTTP request is made when its turn comes, not all at once. A `druid` source
    /// has none: its segment files are read as Parquet by [`crate::parquet_input`].
    pub fn open(&self) -> Result<Vec<Opener>, String> {
        match self {
            InputSource::Druid { .. } => Ok(Vec::new()),
            InputSource::Inline { data } => {
                let data = data.clone();
                Ok(vec![Box::new(move || {
                    Ok(Entity {
                        name: "inline".to_string(),
                        size: data.len() as u64,
                        reader: Box::new(Cursor::new(data.into_bytes())),
                        path: None,
                    })
                })])
            }
            InputSource::Http {
                uris,
                username,
                password,
            } => {
                let password = password.as_ref().map(Password::resolve).transpose()?;
                let client = reqwest::blocking::Client::builder()
                    .connect_timeout(std::time::Duration::from_secs(30))
                    // A body is read as the rows are ingested, for as long as that takes.
                    .timeout(None)
                    .build()
                    .map_err(|e| format!("cannot start an HTTP client: {e}"))?;
                let openers = uris
                    .iter()
                    .map(|uri| {
                        let (client, uri, username, password) =
                            (client.clone(), uri.clone(), username.clone(), password.clone());
                        Box::new(move || fetch(&client, &uri, username.as_deref(), password.as_deref())) as Opener
                    })
                    .collect::<Vec<_>>();
                Ok(openers)
            }
            InputSource::S3 {
                objects,
                glob,
                settings,
            } => s3_openers(objects, glob.as_deref(), settings),
            InputSource::Local { .. } => Ok(self
                .local_paths()?
                .into_iter()
                .map(|p| Box::new(move || open_file(&p)) as Opener)
                .collect()),
        }
    }

    /// The files a `local` source names: `files`, then what `filter` matches under `baseDir`.
    fn local_paths(&self) -> Result<Vec<PathBuf>, String> {
        let InputSource::Local {
            base_dir,
            filter,
            files,
        } = self
        else {
            return Ok(Vec::new());
        };
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
        Ok(paths)
    }

    /// The input split for sub-tasks as Druid's `maxSize` split hint does, each split as the
    /// `inputSource` JSON of one sub-task (`original` is this source's JSON). A source that
    /// cannot be split (`inline`, `druid`) is one split.
    pub fn splits(&self, original: &Value, hint: &crate::spec::SplitHint) -> Result<Vec<Value>, String> {
        // Each input: its JSON for a sub-task's source, and its size (0 when unknown).
        let inputs: Vec<(Value, u64)> = match self {
            InputSource::Inline { .. } | InputSource::Druid { .. } => return Ok(vec![original.clone()]),
            InputSource::Local { .. } => self
                .local_paths()?
                .into_iter()
                .map(|p| {
                    let size = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                    (Value::String(p.display().to_string()), size)
                })
                .collect(),
            InputSource::Http { uris, .. } => uris.iter().map(|u| (Value::String(u.clone()), 0)).collect(),
            InputSource::S3 {
                objects,
                glob,
                settings,
            } => s3_list(objects, glob.as_deref(), settings)?
                .into_iter()
                .map(|(b, k, size)| (serde_json::json!({"bucket": b.name(), "path": k}), size))
                .collect(),
        };
        let mut groups: Vec<Vec<Value>> = Vec::new();
        let (mut bytes, mut current) = (0u64, Vec::new());
        for (input, size) in inputs {
            let full = current.len() as u64 >= hint.max_num_files || bytes.saturating_add(size) > hint.max_split_size;
            if !current.is_empty() && full {
                groups.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes = bytes.saturating_add(size);
            current.push(input);
        }
        if !current.is_empty() {
            groups.push(current);
        }
        Ok(groups
            .into_iter()
            .map(|group| {
                let mut source = original.clone();
                if let Some(o) = source.as_object_mut() {
                    match self {
                        InputSource::Local { .. } => {
                            o.remove("baseDir");
                            o.remove("filter");
                            o.insert("files".into(), Value::Array(group));
                        }
                        InputSource::Http { .. } => {
                            o.insert("uris".into(), Value::Array(group));
                        }
                        _ => {
                            o.remove("uris");
                            o.remove("prefixes");
                            o.remove("objectGlob");
                            o.insert("objects".into(), Value::Array(group));
                        }
                    }
                }
                source
            })
            .collect())
    }
}

/// Druid's `s3` input source.
fn parse_s3(v: &Value) -> Result<InputSource, FieldError> {
    let list = |name: &str| -> Result<Option<Vec<(String, String)>>, FieldError> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let u = u
                        .as_str()
                        .ok_or_else(|| field(&format!("{name}[{i}]"), "must be an s3:// URI"))?;
                    crate::s3::parse_uri(u).map_err(|m| field(&format!("{name}[{i}]"), m))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(field(name, "must be a non-empty list of s3:// URIs")),
        }
    };
    let uris = list("uris")?;
    let prefixes = list("prefixes")?;
    let objects = match v.get("objects") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if !a.is_empty() => Some(
            a.iter()
                .enumerate()
                .map(|(i, o)| {
                    let get = |k: &str| {
                        o.get(k)
                            .and_then(Value::as_str)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .ok_or_else(|| field(&format!("objects[{i}].{k}"), "required, a string"))
                    };
                    Ok((get("bucket")?, get("path")?))
                })
                .collect::<Result<Vec<_>, FieldError>>()?,
        ),
        Some(_) => return Err(field("objects", "must be a non-empty list of {\"bucket\", \"path\"}")),
    };
    let objects = match (uris, prefixes, objects) {
        (Some(u), None, None) => S3Objects::Objects(u),
        (None, Some(p), None) => S3Objects::Prefixes(p),
        (None, None, Some(o)) => S3Objects::Objects(o),
        _ => {
            return Err(field(
                "uris",
                "an s3 input source needs exactly one of \"uris\", \"prefixes\" or \"objects\"",
            ))
        }
    };
    if let S3Objects::Objects(o) = &objects {
        if let Some(i) = o.iter().position(|(_, k)| k.is_empty() || k.ends_with('/')) {
            return Err(field(
                &format!("uris[{i}]"),
                "names a prefix, not an object; use \"prefixes\"",
            ));
        }
    }
    let glob = v.get("objectGlob").and_then(Value::as_str).map(str::to_string);
    if let Some(g) = &glob {
        object_glob(g).map_err(|m| field("objectGlob", m))?;
    }
    let mut settings = S3Source::default();
    if let Some(p) = v.get("properties").filter(|p| !p.is_null()) {
        if p.get("assumeRoleArn").is_some_and(|a| !a.is_null()) {
            return Err(field(
                "properties.assumeRoleArn",
                "assuming a role is not supported by this raftlord version; give keys, or leave them to the worker's AWS environment",
            ));
        }
        for (name, slot) in [
            ("accessKeyId", &mut settings.access_key_id),
            ("secretAccessKey", &mut settings.secret_access_key),
        ] {
            if let Some(k) = p.get(name).filter(|k| !k.is_null()) {
                *slot = Some(Password::parse(k, &format!("properties.{name}"))?);
            }
        }
        if settings.access_key_id.is_some() != settings.secret_access_key.is_some() {
            return Err(field(
                "properties",
                "accessKeyId and secretAccessKey are given together or not at all",
            ));
        }
    }
    if let Some(e) = v.get("endpointConfig").filter(|e| !e.is_null()) {
        settings.region = e.get("signingRegion").and_then(Value::as_str).map(str::to_string);
        if let Some(url) = e.get("url").and_then(Value::as_str).filter(|u| !u.is_empty()) {
            // Druid takes a host with the scheme in clientConfig.protocol (https by default).
            let protocol = v
                .pointer("/clientConfig/protocol")
                .and_then(Value::as_str)
                .unwrap_or("https")
                .to_ascii_lowercase();
            let url = if url.contains("://") {
                url.to_string()
            } else {
                format!("{protocol}://{url}")
            };
            let parsed = reqwest::Url::parse(&url).map_err(|e| field("endpointConfig.url", format!("[{url}]: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(field(
                    "endpointConfig.url",
                    format!("[{url}] is not an http(s) URL with a host"),
                ));
            }
            settings.endpoint = Some(url.trim_end_matches('/').to_string());
        }
    }
    Ok(InputSource::S3 {
        objects,
        glob,
        settings,
    })
}

/// `objectGlob` as Druid reads it, with Java's glob rules on the key: `*` stays within one part
/// of the path and `**` crosses parts, also inside a part (`**.json` matches `a/b/c.json`). Such
/// a glob is matched with `*` crossing parts as well, which globset needs to match it at all.
fn object_glob(g: &str) -> Result<globset::GlobMatcher, String> {
    let bytes = g.as_bytes();
    let partial_double_star = g.match_indices("**").any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + 2).copied();
        !matches!(before, None | Some(b'/')) || !matches!(after, None | Some(b'/'))
    });
    globset::GlobBuilder::new(g)
        .literal_separator(!partial_double_star)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("not a glob: {e}"))
}

/// The objects an `s3` source names, listed now: bucket, key and size (0 when not listed).
fn s3_list(
    objects: &S3Objects,
    glob: Option<&str>,
    settings: &S3Source,
) -> Result<Vec<(crate::s3::Bucket, String, u64)>, String> {
    let s = settings.settings()?;
    let glob = glob.map(object_glob).transpose()?;
    let mut buckets: std::collections::BTreeMap<String, crate::s3::Bucket> = Default::default();
    let mut bucket = |name: &str| -> Result<crate::s3::Bucket, String> {
        if let Some(b) = buckets.get(name) {
            return Ok(b.clone());
        }
        let b = crate::s3::Bucket::open(name, &s)?;
        buckets.insert(name.to_string(), b.clone());
        Ok(b)
    };
    let mut found: Vec<(crate::s3::Bucket, String, u64)> = Vec::new();
    match objects {
        S3Objects::Objects(list) => {
            for (b, k) in list {
                found.push((bucket(b)?, k.clone(), 0));
            }
        }
        S3Objects::Prefixes(list) => {
            for (b, prefix) in list {
                let handle = bucket(b)?;
                for o in handle.list(prefix)? {
                    // Druid skips the zero-byte "directory" markers some tools create.
                    if o.key.ends_with('/') && o.size == 0 {
                        continue;
                    }
                    found.push((handle.clone(), o.key, o.size));
                }
            }
        }
    }
    if let Some(g) = &glob {
        found.retain(|(_, k, _)| g.is_match(k));
    }
    if found.is_empty() {
        return Err("the s3 input source matched no objects".to_string());
    }
    Ok(found)
}

/// The objects an `s3` source names, listed now, each opened when its turn comes.
fn s3_openers(objects: &S3Objects, glob: Option<&str>, settings: &S3Source) -> Result<Vec<Opener>, String> {
    Ok(s3_list(objects, glob, settings)?
        .into_iter()
        .map(|(b, k, _)| {
            Box::new(move || {
                let name = format!("s3://{}/{k}", b.name());
                let (size, body) = b.reader(&k)?;
                let reader = decompress(&name, extension(Path::new(&k)), body)?;
                Ok(Entity {
                    name,
                    size,
                    reader,
                    path: None,
                })
            }) as Opener
        })
        .collect())
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

/// GET `uri`: the body as it arrives, decompressed by the extension of the URI's path.
fn fetch(
    client: &reqwest::blocking::Client,
    uri: &str,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<Entity, String> {
    let mut request = client.get(uri);
    if let Some(user) = user {
        request = request.basic_auth(user, password);
    }
    let response = request
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("cannot fetch [{uri}]: {}", error_chain(&e)))?;
    let size = response.content_length().unwrap_or(0);
    let ext = extension(Path::new(response.url().path()));
    let reader = decompress(uri, ext, Box::new(response))?;
    Ok(Entity {
        name: uri.to_string(),
        size,
        reader,
        path: None,
    })
}

/// Only `http` and `https` URIs with a host are fetched.
fn check_http_uri(uri: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("[{uri}] is not a URI: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(()),
        "http" | "https" => Err(format!("[{uri}] has no host")),
        other => Err(format!(
            "[{uri}]: the scheme [{other}] is not supported; use http or https"
        )),
    }
}

/// An error with its causes, one after another.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn extension(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn open_file(path: &Path) -> Result<Entity, String> {
    let name = path.display().to_string();
    let f = File::open(path).map_err(|e| format!("cannot open [{name}]: {e}"))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let ext = extension(path);
    let plain = !matches!(ext.as_str(), "gz" | "bz2" | "xz" | "zst" | "zip");
    let reader = if ext == "zip" {
        unzip(&name, f)?
    } else {
        decompress(&name, ext, Box::new(f))?
    };
    Ok(Entity {
        name,
        size,
        reader,
        path: plain.then(|| path.to_path_buf()),
    })
}

/// `reader` decompressed by the extension `ext` of its name.
fn decompress(name: &str, ext: String, reader: Box<dyn Read + Send>) -> Result<Box<dyn BufRead + Send>, String> {
    let buffered = BufReader::with_capacity(1 << 16, reader);
    let decoded: Box<dyn Read + Send> = match ext.as_str() {
        "gz" => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        "bz2" => Box::new(bzip2::bufread::MultiBzDecoder::new(buffered)),
        "xz" => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(buffered)),
        "zst" => {
            Box::new(zstd::Decoder::with_buffer(buffered).map_err(|e| format!("cannot read [{name}] as zstd: {e}"))?)
        }
        "zip" => {
            let mut buffered = buffered;
            let file = spool(&mut buffered, None).map_err(|e| format!("cannot read [{name}]: {e}"))?;
            return unzip(name, file);
        }
        _ => return Ok(Box::new(buffered)),
    };
    Ok(Box::new(BufReader::with_capacity(1 << 16, decoded)))
}

/// Every file in the zip archive `file`, in archive order, as one stream. The archive's
/// directory is at its end, so its entries are decompressed to a temporary file first.
fn unzip(name: &str, file: File) -> Result<Box<dyn BufRead + Send>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("cannot read [{name}] as a zip archive: {e}");
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(&e))?;
    let mut out = tempfile::tempfile().map_err(|e| bad(&e))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(&e))?;
        if entry.is_file() {
            std::io::copy(&mut entry, &mut out).map_err(|e| bad(&e))?;
        }
    }
    out.seek(SeekFrom::Start(0)).map_err(|e| bad(&e))?;
    Ok(Box::new(BufReader::with_capacity(1 << 16, out)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    fn read_all(open: Opener) -> String {
        let mut s = String::new();
        let mut r = open().unwrap().reader;
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

    /// Every compression Druid reads by extension, each file holding its own name; a zip
    /// archive gives all of its files, in archive order.
    #[test]
    fn bz2_xz_zst_and_zip_inputs_are_decompressed_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(b"bz2\n").unwrap();
        std::fs::write(d.join("a.json.bz2"), bz.finish().unwrap()).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"xz\n").unwrap();
        std::fs::write(d.join("b.json.xz"), xz.finish().unwrap()).unwrap();
        std::fs::write(d.join("c.json.zst"), zstd::encode_all(&b"zst\n"[..], 1).unwrap()).unwrap();
        let mut zip = zip::ZipWriter::new(std::fs::File::create(d.join("d.json.zip")).unwrap());
        for (name, text) in [("one.json", "zip1\n"), ("two.json", "zip2\n")] {
            let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            zip.start_file(name, options).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        let src = InputSource::parse(&json!({"type": "local", "baseDir": d, "filter": "*.json.*"})).unwrap();
        let texts: Vec<String> = src.open().unwrap().into_iter().map(read_all).collect();
        assert_eq!(texts, vec!["bz2\n", "xz\n", "zst\n", "zip1\nzip2\n"]);
        // Not an archive: the error names the file.
        std::fs::write(d.join("e.json.zip"), "not a zip").unwrap();
        let src = InputSource::parse(&json!({"type": "local", "baseDir": d, "filter": "e.json.zip"})).unwrap();
        let err = src.open().unwrap().pop().map(|open| open().err().unwrap()).unwrap();
        assert!(err.contains("e.json.zip") && err.contains("zip archive"), "{err}");
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
        assert_eq!(err(json!({"type": "google", "uris": ["gs://x/y"]})), "type");
        assert_eq!(err(json!({"type": "s3"})), "uris");
        assert_eq!(
            err(json!({"type": "s3", "uris": ["s3://x/y"], "prefixes": ["s3://x/"]})),
            "uris"
        );
        assert_eq!(
            err(json!({"type": "s3", "uris": ["s3://x/y", "http://x/y"]})),
            "uris[1]"
        );
        assert_eq!(err(json!({"type": "s3", "uris": ["s3://x/"]})), "uris[0]");
        assert_eq!(
            err(json!({"type": "s3", "objects": [{"bucket": "x"}]})),
            "objects[0].path"
        );
        assert_eq!(
            err(json!({"type": "s3", "prefixes": ["s3://x/"], "objectGlob": "[a"})),
            "objectGlob"
        );
        assert_eq!(
            err(
                json!({"type": "s3", "prefixes": ["s3://x/"], "properties": {"assumeRoleArn": "arn:aws:iam::1:role/r"}})
            ),
            "properties.assumeRoleArn"
        );
        assert_eq!(
            err(json!({"type": "s3", "prefixes": ["s3://x/"], "properties": {"accessKeyId": "a"}})),
            "properties"
        );
        assert_eq!(
            err(json!({"type": "s3", "prefixes": ["s3://x/"], "endpointConfig": {"url": "ftp://h"}})),
            "endpointConfig.url"
        );
        let s3 = InputSource::parse(
            &json!({"type": "s3", "prefixes": ["s3://x/in/"], "objectGlob": "**.json",
            "properties": {"accessKeyId": "a", "secretAccessKey": {"type": "environment", "variable": "S"}},
            "endpointConfig": {"url": "localhost:9000"}, "clientConfig": {"protocol": "http"}}),
        )
        .unwrap();
        let InputSource::S3 { objects, settings, .. } = s3 else {
            panic!("{s3:?}")
        };
        assert_eq!(objects, S3Objects::Prefixes(vec![("x".into(), "in/".into())]));
        let glob = |g: &str, k: &str| object_glob(g).unwrap().is_match(k);
        assert!(glob("**.json", "in/a/b.json"));
        assert!(glob("in/*.json", "in/b.json"));
        assert!(!glob("in/*.json", "in/a/b.json"));
        assert!(glob("in/**/*.json", "in/a/b.json"));
        assert_eq!(settings.endpoint.as_deref(), Some("http://localhost:9000"));
        assert_eq!(settings.secret_access_key, Some(Password::Environment("S".into())));
        assert_eq!(err(json!({"type": "http"})), "uris");
        assert_eq!(err(json!({"type": "http", "uris": ["ftp://x/y"]})), "uris[0]");
        assert_eq!(
            err(json!({"type": "http", "uris": ["http://x/y", "file:///y"]})),
            "uris[1]"
        );
        assert!(InputSource::parse(&json!({"type": "http", "uris": ["https://x/y"]})).is_ok());
        assert_eq!(
            err(json!({"type": "http", "uris": ["http://x/y"], "httpAuthenticationPassword": "p"})),
            "httpAuthenticationUsername"
        );
        assert_eq!(
            err(
                json!({"type": "http", "uris": ["http://x/y"], "httpAuthenticationUsername": "u",
                        "httpAuthenticationPassword": {"type": "environment"}})
            ),
            "httpAuthenticationPassword.variable"
        );
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
