//! S3-compatible object storage, for the `s3` input source and for S3 deep storage, through
//! `object_store`.
//!
//! Settings come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL`), which a spec's own `properties` and `endpointConfig` override. An
//! endpoint given by URL is addressed path-style (`http://host/bucket/key`), as MinIO, Ceph and
//! other S3-compatible servers expect; a plain-`http` endpoint is allowed because it was named.
//!
//! The calls here block: each runs on a small runtime of this module's own, so they can be made
//! from any thread that is not itself running async code (the ingestion reader thread, a
//! `spawn_blocking` task). An object is read as a stream, a chunk at a time, so memory does not
//! grow with its size; a file is uploaded in parts.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, PutPayload};

/// How to reach S3: what is not set here comes from the AWS environment variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible server; AWS itself when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// One bucket, ready for calls.
#[derive(Clone)]
pub struct Bucket {
    name: String,
    store: Arc<AmazonS3>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bucket({})", self.name)
    }
}

/// One object found by a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: String,
    pub size: u64,
}

/// The runtime every S3 call runs on; never dropped.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .expect("cannot start the S3 I/O runtime")
    })
}

/// Runs `f` on the S3 runtime and waits for it.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// An `object_store` error with its causes, which hold what the server said.
fn error_text(e: &object_store::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Splits `s3://bucket/key` into bucket and key (which may be empty).
pub fn parse_uri(uri: &str) -> Result<(String, String), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("[{uri}] is not an s3:// URI"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("[{uri}] names no bucket"));
    }
    Ok((bucket.to_string(), key.to_string()))
}

/// An object key as `object_store` takes it: refused when it has empty, `.` or `..` parts.
fn key(k: &str) -> Result<Key, String> {
    Key::parse(k).map_err(|e| format!("[{k}] is not a usable object key: {e}"))
}

impl Bucket {
    /// The bucket `name`, reached with `settings` over the AWS environment variables.
    pub fn open(name: &str, settings: &S3Settings) -> Result<Bucket, String> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(name);
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &settings.region {
            b = b.with_region(r);
        }
        if let Some(k) = &settings.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &settings.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        // A named endpoint: path-style requests, and plain http if that is what was named.
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .or_else(|| std::env::var("AWS_ENDPOINT").ok());
        if let Some(e) = endpoint {
            b = b.with_virtual_hosted_style_request(false);
            if e.starts_with("http://") {
                b = b.with_allow_http(true);
            }
        }
        let store = b
            .build()
            .map_err(|e| format!("cannot use S3 bucket [{name}]: {}", error_text(&e)))?;
        Ok(Bucket {
            name: name.to_string(),
            store: Arc::new(store),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every object whose key starts with `prefix` (all of them when it is empty), sorted by key.
    /// A prefix that ends inside a key part matches as text does (`data/2024` finds
    /// `data/2024-01.json`).
    pub fn list(&self, prefix: &str) -> Result<Vec<Object>, String> {
        // object_store lists by whole path parts: list the parent part, then filter by text.
        let parent = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let parent = if parent.is_empty() { None } else { Some(key(parent)?) };
        let mut out = block_on(async {
            let mut stream = self.store.list(parent.as_ref());
            let mut out = Vec::new();
            while let Some(item) = stream.next().await {
                let meta = item.map_err(|e| format!("cannot list s3://{}/{prefix}: {}", self.name, error_text(&e)))?;
                let k = meta.location.to_string();
                if k.starts_with(prefix) {
                    out.push(Object {
                        key: k,
                        size: meta.size,
                    });
                }
            }
            Ok::<_, String>(out)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The object `k` as a stream read as it arrives, and its size.
    pub fn reader(&self, k: &str) -> Result<(u64, Box<dyn Read + Send>), String> {
        let path = key(k)?;
        let (size, stream) = block_on(async {
            let got = self
                .store
                .get(&path)
                .await
                .map_err(|e| format!("cannot read s3://{}/{k}: {}", self.name, error_text(&e)))?;
            Ok::<_, String>((got.meta.size, got.into_stream()))
        })?;
        Ok((
            size,
            Box::new(StreamReader {
                uri: format!("s3://{}/{k}", self.name),
                stream,
                chunk: Bytes::new(),
            }),
        ))
    }

    /// Copies the object `k` into the local file `to`.
    pub fn download(&self, k: &str, to: &Path) -> Result<u64, String> {
        let (_, mut reader) = self.reader(k)?;
        let mut f = std::fs::File::create(to).map_err(|e| format!("cannot create [{}]: {e}", to.display()))?;
        std::io::copy(&mut reader, &mut f).map_err(|e| format!("cannot download s3://{}/{k}: {e}", self.name))
    }

    /// Uploads the local file `from` as the object `k`; a large file goes in parts. The object
    /// appears whole or not at all.
    pub fn upload(&self, from: &Path, k: &str) -> Result<(), String> {
        let path = key(k)?;
        let failed = |e: String| format!("cannot upload [{}] to s3://{}/{k}: {e}", from.display(), self.name);
        block_on(async {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::File::open(from).await.map_err(|e| failed(e.to_string()))?;
            let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), path);
            if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
                let _ = writer.abort().await;
                return Err(failed(e.to_string()));
            }
            writer.shutdown().await.map_err(|e| failed(e.to_string()))
        })
    }

    /// Writes `bytes` as the object `k`.
    pub fn put(&self, k: &str, bytes: Vec<u8>) -> Result<(), String> {
        let path = key(k)?;
        block_on(self.store.put(&path, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| format!("cannot write s3://{}/{k}: {}", self.name, error_text(&e)))
    }

    /// Deletes the object `k`; `Ok(false)` when there was none.
    pub fn delete(&self, k: &str) -> Result<bool, String> {
        let path = key(k)?;
        block_on(async {
            match self.store.head(&path).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(format!("cannot delete s3://{}/{k}: {}", self.name, error_text(&e))),
                Ok(_) => {}
            }
            self.store
                .delete(&path)
                .await
                .map(|_| true)
                .map_err(|e| format!("cannot delete s3://{}/{k}: {}", self.name, error_text(&e)))
        })
    }
}

/// An object's body as a blocking reader: the next chunk is awaited when the last is used up.
struct StreamReader {
    uri: String,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                Some(Err(e)) => {
                    return Err(std::io::Error::other(format!(
                        "reading {} failed: {}",
                        self.uri,
                        error_text(&e)
                    )))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_uris_split_into_bucket_and_key() {
        assert_eq!(parse_uri("s3://b/a/c.json").unwrap(), ("b".into(), "a/c.json".into()));
        assert_eq!(parse_uri("s3://b").unwrap(), ("b".into(), "".into()));
        assert!(parse_uri("s3:///k").unwrap_err().contains("no bucket"));
        assert!(parse_uri("http://b/k").unwrap_err().contains("not an s3://"));
    }

    #[test]
    fn keys_with_dot_dot_parts_are_refused() {
        assert!(key("a/../b").is_err());
        assert!(key("a//b").is_err());
        assert!(key("a/b.json").is_ok());
    }
}
