//! Druid native batch ingestion for raftlord: a checked spec ([`spec`]), its input
//! ([`source`], [`format`]), rows with rollup ([`rows`], [`aggregate`], [`timestamp`]) and
//! Parquet segment files ([`segment`]).
//!
//! This crate knows no Raft, HTTP server or task table. A caller (the peon) runs it in two
//! steps, because segment versions and partition numbers come from locks that can only be taken
//! once the data's intervals are known:
//!
//! 1. [`read_input`] reads every record into per-interval buckets, rolled up, counting rows as
//!    Druid does and failing past `maxParseExceptions`;
//! 2. [`Ingested::write_bucket`] sorts one bucket and writes its partitions as Parquet files,
//!    named by the version and partition numbers the caller got from its locks.

pub mod aggregate;
pub mod format;
pub mod rows;
pub mod segment;
pub mod source;
pub mod spec;
pub mod timestamp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use raftlord_time::interval::Interval;

pub use rows::{ParseProblem, RowStats};
pub use spec::{IngestSpec, SpecError};

use rows::{Bucket, FoundDim, RowBuilder, RowError};
use segment::DimColumn;

/// The `binaryVersion` of raftlord's Parquet segments.
pub const BINARY_VERSION: u32 = 9;

/// How often (in records) [`read_input`] reports progress.
pub const PROGRESS_EVERY: u64 = 50_000;

/// Why ingestion stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Input(String),
    #[error("Max parse exceptions[{max}] exceeded; the last one: {last}")]
    TooManyParseExceptions { max: u64, last: String },
    #[error("{0}")]
    Write(String),
}

/// Where reading is, for progress reports.
pub struct Progress<'a> {
    pub stats: &'a RowStats,
    pub file: &'a str,
    pub rows_in_memory: usize,
}

/// Everything read, bucketed by segment interval.
pub struct Ingested {
    pub stats: RowStats,
    pub problems: Vec<ParseProblem>,
    buckets: BTreeMap<Interval, Bucket>,
    dims: Vec<FoundDim>,
    dicts: Vec<rows::Dict>,
    typed: bool,
    spec: IngestSpec,
}

/// One Parquet file written for one segment partition.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    pub interval: Interval,
    pub version: String,
    pub partition_num: u32,
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
    pub dimensions: Vec<String>,
    pub metrics: Vec<String>,
}

/// Reads the whole input of `spec`. `progress` is called every [`PROGRESS_EVERY`] records and
/// at the end of each file; `log` gets each parse exception when `logParseExceptions` is set.
pub fn read_input(
    spec: &IngestSpec,
    progress: &mut dyn FnMut(&Progress<'_>),
    log: &mut dyn FnMut(&str),
) -> Result<Ingested, IngestError> {
    let entities = spec.source.open().map_err(IngestError::Input)?;
    let mut b = RowBuilder::new(spec);
    for entity in entities {
        let name = entity.name.clone();
        let size = entity.size;
        let mut n: u64 = 0;
        for (line, record) in spec.format.records(entity.reader) {
            n += 1;
            let at = format!("Path: {name}, Line: {line}");
            let err = match record {
                Ok(r) => match b.add(&r, &at) {
                    Ok(()) => None,
                    Err(RowError::Unparseable(m)) => Some((rows::show(&r), m)),
                },
                Err(m) => {
                    if m.starts_with("cannot read") {
                        return Err(IngestError::Input(format!("{name}: {m}")));
                    }
                    b.stats.unparseable += 1;
                    Some((String::new(), format!("Unable to parse row: {m} ({at})")))
                }
            };
            if let Some((input, message)) = err {
                if spec.log_parse_exceptions {
                    log(&message);
                }
                b.problem("unparseable", input, message.clone());
                if b.exceptions() > spec.max_parse_exceptions {
                    return Err(IngestError::TooManyParseExceptions {
                        max: spec.max_parse_exceptions,
                        last: message,
                    });
                }
            } else if b.exceptions() > spec.max_parse_exceptions {
                let last = b.problems.last().map(|p| p.details.join("; ")).unwrap_or_default();
                return Err(IngestError::TooManyParseExceptions {
                    max: spec.max_parse_exceptions,
                    last,
                });
            }
            if n.is_multiple_of(PROGRESS_EVERY) {
                progress(&Progress {
                    stats: &b.stats,
                    file: &name,
                    rows_in_memory: b.rows_in_memory(),
                });
            }
        }
        b.stats.processed_bytes += size;
        progress(&Progress {
            stats: &b.stats,
            file: &name,
            rows_in_memory: b.rows_in_memory(),
        });
    }
    let typed = b.typed_discovery();
    Ok(Ingested {
        stats: b.stats,
        problems: b.problems,
        buckets: b.buckets,
        dims: b.dims,
        dicts: b.dicts,
        typed,
        spec: spec.clone(),
    })
}

impl Ingested {
    /// The segment intervals that hold rows, in order.
    pub fn intervals(&self) -> Vec<Interval> {
        self.buckets
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, _)| *i)
            .collect()
    }

    /// How many partitions (files) the bucket of `interval` makes.
    pub fn partitions(&self, interval: &Interval) -> usize {
        let rows = self.buckets.get(interval).map_or(0, Bucket::len) as u64;
        rows.div_ceil(self.spec.max_rows_per_segment) as usize
    }

    /// Rows after rollup, over all buckets.
    pub fn rows(&self) -> u64 {
        self.buckets.values().map(|b| b.len() as u64).sum()
    }

    /// Sorts the bucket of `interval` and writes one file per partition into `dir`, named by
    /// `partition_nums` (one per partition, see [`Ingested::partitions`]). The bucket's memory is
    /// freed.
    pub fn write_bucket(
        &mut self,
        interval: &Interval,
        version: &str,
        partition_nums: &[u32],
        dir: &Path,
    ) -> Result<Vec<SegmentFile>, IngestError> {
        let Some(bucket) = self.buckets.remove(interval) else {
            return Ok(Vec::new());
        };
        let ranks: Vec<Vec<u32>> = self.dicts.iter().map(rows::Dict::ranks).collect();
        let rows = bucket.into_sorted(&ranks);
        let chunk = self.spec.max_rows_per_segment as usize;
        let parts: Vec<&[(rows::Key, Vec<aggregate::Acc>)]> = rows.chunks(chunk.max(1)).collect();
        if parts.len() != partition_nums.len() {
            return Err(IngestError::Write(format!(
                "{} partitions for {interval}, {} partition numbers",
                parts.len(),
                partition_nums.len()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| IngestError::Write(format!("cannot create [{}]: {e}", dir.display())))?;
        let dims: Vec<DimColumn> = self
            .dims
            .iter()
            .map(|d| DimColumn {
                name: d.name.clone(),
                kind: d.kind(self.typed),
                multi: d.saw_multi,
            })
            .collect();
        let mut out = Vec::new();
        for (part, num) in parts.iter().zip(partition_nums) {
            let path = dir.join(format!("{num}.parquet"));
            let identity = json!({
                "dataSource": self.spec.datasource,
                "interval": interval.to_string(),
                "version": version,
                "partitionNum": num,
            });
            let meta = segment::schema_metadata(
                identity,
                &dims,
                &self.spec.metrics,
                &self.spec.query_granularity_json,
                self.spec.rollup,
            );
            let w = segment::write(&path, part, &dims, &self.dicts, &self.spec.metrics, meta)
                .map_err(IngestError::Write)?;
            out.push(SegmentFile {
                interval: *interval,
                version: version.to_string(),
                partition_num: *num,
                path,
                rows: w.rows,
                bytes: w.bytes,
                dimensions: dims.iter().map(|d| d.name.clone()).collect(),
                metrics: self.spec.metrics.iter().map(|m| m.name.clone()).collect(),
            });
        }
        Ok(out)
    }

    /// The spec's `dimensionsSpec` as found (declared or discovered, with types), for reports.
    pub fn dimensions_json(&self) -> Value {
        json!(self
            .dims
            .iter()
            .map(|d| json!({"type": d.kind(self.typed).druid_name(), "name": d.name}))
            .collect::<Vec<_>>())
    }
}
