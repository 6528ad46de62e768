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
pub mod compact;
pub mod expr;
pub mod filter;
pub mod format;
pub mod parquet_input;
pub mod rows;
pub mod s3;
pub mod segment;
pub mod source;
pub mod spec;
pub mod spill;
pub mod timestamp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use serde_json::{json, Value};

use raftlord_time::interval::Interval;

pub use rows::{ParseProblem, RowStats};
pub use spec::{IngestSpec, SpecError};

use rows::{Bucket, FoundDim, RowBuilder, RowError};
use segment::DimColumn;

/// Most partitions of an interval whose rows are split into runs of their own in one pass
/// (each run's writer holds a 64 KiB buffer); past that, each partition reads the merged run.
const MAX_SPLIT_RUNS: usize = 256;

/// `lgK` of the group key sketches ([`Ingested::group_key_sketches`]): Druid's.
const SKETCH_LG_K: u8 = 11;

/// The estimated number of distinct group keys over the sketches `serialized` (each from
/// [`Ingested::group_key_sketches`]), as Druid's supervisor merges its sub-tasks' sketches.
pub fn estimate_distinct(serialized: &[&str]) -> Result<f64, String> {
    let mut union = HllUnion::new(SKETCH_LG_K).map_err(|e| format!("cannot merge cardinality sketches: {e}"))?;
    for text in serialized {
        let bytes = BASE64
            .decode(text)
            .map_err(|e| format!("a cardinality sketch is not base64: {e}"))?;
        let sketch = HllSketch::deserialize(&bytes).map_err(|e| format!("an unreadable cardinality sketch: {e}"))?;
        union.update(&sketch);
    }
    Ok(union.estimate())
}

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
    /// Intervals whose rows were spilled: one merged, sorted run each, and its row count.
    merged: BTreeMap<Interval, (PathBuf, u64)>,
    /// Intervals whose rows were spilled but make one partition whatever rollup leaves of them
    /// (dynamic partitioning, at most `maxRowsPerSegment` rows before merging): their runs,
    /// merged only as the partition is written, and the rows before merging (an upper bound).
    deferred: BTreeMap<Interval, (Vec<PathBuf>, u64)>,
    /// Range partitioning: each interval's boundaries, the first values of its second, third,
    /// ... range.
    range_bounds: BTreeMap<Interval, Vec<RangeTuple>>,
    dims: Vec<FoundDim>,
    /// The indexes of `dims`, by name in order.
    dims_by_name: Vec<usize>,
    dicts: Vec<rows::Dict>,
    typed: bool,
    spec: IngestSpec,
}

/// The values of the range partition dimensions of a row, compared as Druid does (a missing
/// value first, then strings in order).
pub type RangeTuple = Vec<Option<String>>;

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
/// With a `spill_dir`, rows beyond `maxRowsInMemory` go to sorted runs there ([`spill`]), so
/// memory stays bounded; without one, everything stays in memory.
pub fn read_input(
    spec: &IngestSpec,
    spill_dir: Option<&Path>,
    progress: &mut dyn FnMut(&Progress<'_>),
    log: &mut dyn FnMut(&str),
) -> Result<Ingested, IngestError> {
    let mut b = RowBuilder::new(spec, spill_dir);
    // Each input, opened when its turn comes: its name, size, and records with their line (or
    // row) numbers.
    type Records = Box<dyn Iterator<Item = (u64, Result<format::Record, String>)> + Send>;
    type Open<'a> = Box<dyn FnOnce() -> Result<(String, u64, Records), IngestError> + 'a>;
    // Only the fields a row is built from are read out of each record.
    let keep = spec
        .input_fields()
        .map(|f| std::sync::Arc::new(format::Projection::new(f)));
    let mut inputs: Vec<Open<'_>> = Vec::new();
    if let source::InputSource::Druid { files, .. } = &spec.source {
        for f in files {
            inputs.push(Box::new(move || {
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                let rows = parquet_input::segment_records(f).map_err(IngestError::Input)?;
                Ok((f.display().to_string(), size, Box::new(rows) as Records))
            }));
        }
    }
    for open in spec.source.open().map_err(IngestError::Input)? {
        let keep = &keep;
        inputs.push(Box::new(move || {
            let entity = open().map_err(IngestError::Input)?;
            let (name, size) = (entity.name.clone(), entity.size);
            let records: Records = match &spec.format {
                format::InputFormat::Parquet {
                    flatten,
                    binary_as_string,
                } => {
                    let file = entity.into_file(spill_dir).map_err(IngestError::Input)?;
                    let options = parquet_input::Options {
                        binary_as_string: *binary_as_string,
                        flatten: flatten.clone(),
                    };
                    Box::new(parquet_input::records(name.clone(), file, options).map_err(IngestError::Input)?)
                }
                format => format.records(entity.reader, keep.clone()),
            };
            Ok((name, size, records))
        }));
    }
    for open in inputs {
        let (name, size, records) = open()?;
        let mut n: u64 = 0;
        for (line, record) in records {
            n += 1;
            let at = rows::At { file: &name, line };
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
            b.spill_if_full().map_err(IngestError::Write)?;
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
    b.finish().map_err(IngestError::Write)?;
    let typed = b.typed_discovery();
    let runs = std::mem::take(&mut b.runs);
    let spilled = std::mem::take(&mut b.spilled_rows);
    let mut ingested = Ingested {
        stats: b.stats,
        problems: b.problems,
        buckets: b.buckets,
        merged: BTreeMap::new(),
        deferred: BTreeMap::new(),
        range_bounds: BTreeMap::new(),
        dims_by_name: {
            let mut order: Vec<usize> = (0..b.dims.len()).collect();
            order.sort_by(|x, y| b.dims[*x].name.cmp(&b.dims[*y].name));
            order
        },
        dims: b.dims,
        dicts: b.dicts,
        typed,
        spec: spec.clone(),
    };
    if let Some(dir) = spill_dir {
        ingested.merge_runs(runs, &spilled, dir)?;
    }
    if spec.range.is_some() {
        ingested.find_range_bounds()?;
    }
    Ok(ingested)
}

impl Ingested {
    /// Merges each spilled interval's runs and remaining rows into one sorted, rolled-up run,
    /// so its row count (and so its partitions) is known before anything is written. An
    /// interval that makes one dynamic partition whatever the merge leaves is not merged here
    /// but as it is written ([`Ingested::deferred`]): its rows are not encoded, written and
    /// read back once more.
    fn merge_runs(
        &mut self,
        runs: BTreeMap<Interval, Vec<PathBuf>>,
        spilled: &BTreeMap<Interval, u64>,
        dir: &Path,
    ) -> Result<(), IngestError> {
        let ranks: Vec<Vec<u32>> = self.dicts.iter().map(rows::Dict::ranks).collect();
        let dynamic = self.spec.hashed.is_none() && self.spec.range.is_none();
        for (interval, paths) in runs {
            let at_most = spilled.get(&interval).copied().unwrap_or(0)
                + self.buckets.get(&interval).map_or(0, |b| b.len() as u64);
            if dynamic && at_most <= self.spec.max_rows_per_segment {
                self.deferred.insert(interval, (paths, at_most));
                continue;
            }
            let mut sources: Vec<Box<dyn Iterator<Item = Result<spill::Row, String>>>> = Vec::new();
            for p in &paths {
                sources.push(Box::new(spill::RunReader::open(p).map_err(IngestError::Write)?));
            }
            if let Some(b) = self.buckets.remove(&interval) {
                sources.push(Box::new(b.into_sorted(&ranks).map(Ok)));
            }
            let path = dir.join(format!("{}-{}-merged.run", interval.start, interval.end));
            let mut failed = None;
            let merge = spill::Merge::new(sources, &self.dicts, &self.spec.metrics, self.spec.rollup);
            let count = spill::write_run(&path, merge.map_while(|r| r.map_err(|e| failed = Some(e)).ok()))
                .map_err(IngestError::Write)?;
            if let Some(e) = failed {
                return Err(IngestError::Write(e));
            }
            for p in paths {
                let _ = std::fs::remove_file(p);
            }
            self.merged.insert(interval, (path, count));
        }
        Ok(())
    }

    /// Range partitioning: counts the rows of each interval by their partition values, and
    /// cuts ranges of about `targetRowsPerSegment` rows (a value's rows stay in one range).
    fn find_range_bounds(&mut self) -> Result<(), IngestError> {
        let Some(range) = self.spec.range.clone() else {
            return Ok(());
        };
        for interval in self.intervals() {
            let mut counts: BTreeMap<RangeTuple, u64> = BTreeMap::new();
            let mut count = |key: &rows::Key| -> Result<(), IngestError> {
                *counts.entry(self.range_tuple(key, &range)?).or_default() += 1;
                Ok(())
            };
            match self.merged.get(&interval) {
                Some((path, _)) => {
                    for row in spill::RunReader::open(path).map_err(IngestError::Write)? {
                        count(&row.map_err(IngestError::Write)?.0)?;
                    }
                }
                None => {
                    for key in self.buckets.get(&interval).into_iter().flat_map(rows::Bucket::keys) {
                        count(&key)?;
                    }
                }
            }
            let mut bounds = Vec::new();
            let mut held = 0u64;
            for (tuple, n) in counts {
                if held >= range.target_rows_per_segment {
                    bounds.push(tuple.clone());
                    held = 0;
                }
                held += n;
            }
            self.range_bounds.insert(interval, bounds);
        }
        Ok(())
    }

    /// The partition dimensions' values of a row; a multi-value row cannot be placed in a
    /// range (Druid refuses it too).
    fn range_tuple(&self, key: &rows::Key, range: &spec::Range) -> Result<RangeTuple, IngestError> {
        range
            .dimensions
            .iter()
            .map(|name| {
                let Some(i) = self.dims.iter().position(|d| d.name == *name) else {
                    return Ok(None);
                };
                match key.dims.get(i) {
                    None | Some(rows::DimValue::Null) => Ok(None),
                    Some(rows::DimValue::Str(id)) => Ok(Some(self.dicts[i].get(*id).to_string())),
                    Some(rows::DimValue::Long(v)) => Ok(Some(v.to_string())),
                    Some(rows::DimValue::Double(v)) => Ok(Some(v.to_string())),
                    Some(rows::DimValue::Multi(_)) => Err(IngestError::Write(format!(
                        "cannot partition on the multi-value dimension [{name}]: a row has several values there"
                    ))),
                }
            })
            .collect()
    }

    /// The boundaries of `interval`'s ranges: the first values of its second, third, ... range
    /// (none: one range).
    pub fn range_bounds(&self, interval: &Interval) -> &[RangeTuple] {
        self.range_bounds.get(interval).map_or(&[], Vec::as_slice)
    }

    /// The partition a row goes to: its hashed shard or its range; 0 for dynamic partitioning.
    fn partition_of(&self, interval: &Interval, key: &rows::Key, n: u32) -> usize {
        if let Some(h) = &self.spec.hashed {
            return self.shard_of(key, h, n) as usize;
        }
        match (&self.spec.range, self.range_tuple_lenient(key)) {
            (Some(_), Some(t)) => self.range_bounds(interval).partition_point(|b| *b <= t),
            _ => 0,
        }
    }

    fn range_tuple_lenient(&self, key: &rows::Key) -> Option<RangeTuple> {
        self.spec.range.as_ref().and_then(|r| self.range_tuple(key, r).ok())
    }

    /// Rows of `interval` after rollup; for a deferred interval, before its merge (at most).
    fn rows_of(&self, interval: &Interval) -> u64 {
        match (self.merged.get(interval), self.deferred.get(interval)) {
            (Some((_, n)), _) | (None, Some((_, n))) => *n,
            (None, None) => self.buckets.get(interval).map_or(0, |b| b.len() as u64),
        }
    }

    /// Whether [`Ingested::rows`] is exact: false when spilled rows are merged (and rolled up)
    /// only as they are written, and it is an upper bound.
    pub fn rows_exact(&self) -> bool {
        self.deferred.is_empty()
    }

    /// The segment intervals that hold rows, in order.
    pub fn intervals(&self) -> Vec<Interval> {
        let mut out: Vec<Interval> = self
            .buckets
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, _)| *i)
            .chain(self.merged.iter().filter(|(_, (_, n))| *n > 0).map(|(i, _)| *i))
            .chain(self.deferred.keys().copied())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// How many partitions (files) the rows of `interval` make.
    pub fn partitions(&self, interval: &Interval) -> usize {
        let rows = self.rows_of(interval);
        if self.spec.range.is_some() {
            return if rows == 0 {
                0
            } else {
                self.range_bounds(interval).len() + 1
            };
        }
        match &self.spec.hashed {
            None => rows.div_ceil(self.spec.max_rows_per_segment) as usize,
            Some(h) => match h.num_shards {
                Some(n) => n as usize,
                None => rows.div_ceil(h.target_rows_per_segment).max(1) as usize,
            },
        }
    }

    /// The hashed shard of a row among `n`: Druid's `murmur3_32_abs` over the JSON of its group
    /// key (the partition dimensions' values as lists of strings, or the row's time and every
    /// non-null dimension when none are named), so a row lands where Druid would put it.
    fn shard_of(&self, key: &rows::Key, h: &spec::Hashed, n: u32) -> u32 {
        let bytes = self.group_key(key, h);
        let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap_or(0) as i32;
        (hash % n as i32).unsigned_abs()
    }

    /// The JSON of a row's hashed-partitioning group key, the bytes Druid hashes: the
    /// partition dimensions' values as lists of strings, `[["a"], []]`, or, with none named,
    /// the time and every non-null dimension by name, `[time, {"dim": ["a"], ...}]`. Written
    /// straight from the row's dictionary ids, without building JSON values.
    fn group_key(&self, key: &rows::Key, h: &spec::Hashed) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        let written = serde_json::to_writer(
            &mut out,
            &GroupKey {
                ingested: self,
                key,
                hashed: h,
            },
        );
        debug_assert!(written.is_ok(), "a group key is plain JSON");
        out
    }

    /// Druid's cardinality phase of parallel `hashed` ingestion with `targetRowsPerSegment`:
    /// for each interval, a sketch (Apache DataSketches HLL, `lgK` 11, as Druid's) of the
    /// distinct group keys its rows hash by, serialized and in base64. Sketches of several
    /// inputs are combined by [`estimate_distinct`].
    pub fn group_key_sketches(&self) -> Result<BTreeMap<Interval, String>, IngestError> {
        let h = self
            .spec
            .hashed
            .as_ref()
            .ok_or_else(|| IngestError::Write("group key sketches need hashed partitioning".to_string()))?;
        let mut out = BTreeMap::new();
        for interval in self.intervals() {
            let mut sketch = HllSketch::new(SKETCH_LG_K, HllType::Hll4)
                .map_err(|e| IngestError::Write(format!("cannot make a cardinality sketch: {e}")))?;
            match self.merged.get(&interval) {
                Some((path, _)) => {
                    for row in spill::RunReader::open(path).map_err(IngestError::Write)? {
                        sketch.update(self.group_key(&row.map_err(IngestError::Write)?.0, h));
                    }
                }
                None => {
                    for key in self.buckets.get(&interval).into_iter().flat_map(rows::Bucket::keys) {
                        sketch.update(self.group_key(&key, h));
                    }
                }
            }
            out.insert(interval, BASE64.encode(sketch.serialize()));
        }
        Ok(out)
    }

    /// Rows after rollup, over all intervals (an upper bound unless [`Ingested::rows_exact`]).
    pub fn rows(&self) -> u64 {
        self.intervals().iter().map(|i| self.rows_of(i)).sum()
    }

    /// Writes the rows of `interval`, sorted, one file per partition into `dir`, named by
    /// `partition_nums` (one per partition, see [`Ingested::partitions`]). Rows stream from the
    /// merged run when the interval spilled; the interval's memory is freed.
    pub fn write_bucket(
        &mut self,
        interval: &Interval,
        version: &str,
        partition_nums: &[u32],
        dir: &Path,
    ) -> Result<Vec<SegmentFile>, IngestError> {
        let parts = self.partitions(interval);
        if parts != partition_nums.len() {
            return Err(IngestError::Write(format!(
                "{parts} partitions for {interval}, {} partition numbers",
                partition_nums.len()
            )));
        }
        let wanted: Vec<(u32, u32)> = partition_nums.iter().enumerate().map(|(k, n)| (k as u32, *n)).collect();
        self.write_parts(interval, version, parts, &wanted, dir)
    }

    /// Hashed partitioning with the bucket count fixed by the caller (the merge phase of
    /// Druid's two-phase parallel ingestion, whose rows were bucketed by earlier tasks): writes
    /// the rows of `interval` hashed into `num_buckets`, bucket `b` as partition `n` for each
    /// `(b, n)` of `wanted`. A row that hashes to a bucket not wanted is an error, never dropped.
    pub fn write_hashed_buckets(
        &mut self,
        interval: &Interval,
        version: &str,
        num_buckets: u32,
        wanted: &[(u32, u32)],
        dir: &Path,
    ) -> Result<Vec<SegmentFile>, IngestError> {
        if self.spec.hashed.is_none() || num_buckets == 0 || wanted.iter().any(|(b, _)| *b >= num_buckets) {
            return Err(IngestError::Write(format!(
                "cannot write hashed buckets {wanted:?} of {num_buckets} for {interval}"
            )));
        }
        self.write_parts(interval, version, num_buckets as usize, wanted, dir)
    }

    /// Writes the partitions `(k, partition number)` of `wanted` of `interval`'s rows split into
    /// `parts` partitions; fails unless every row went into one of them.
    fn write_parts(
        &mut self,
        interval: &Interval,
        version: &str,
        parts: usize,
        wanted: &[(u32, u32)],
        dir: &Path,
    ) -> Result<Vec<SegmentFile>, IngestError> {
        let expected = self.rows_of(interval);
        // Where the sorted rows come from: the merged run on disk, or the bucket in memory.
        enum Source {
            Run(PathBuf),
            Memory(rows::Sorted),
            /// Runs (and the rows still in memory) merged as they are written.
            Runs(Vec<PathBuf>, Option<rows::Sorted>),
        }
        let source = if let Some((path, _)) = self.merged.remove(interval) {
            Source::Run(path)
        } else {
            let deferred = self.deferred.remove(interval);
            let bucket = self.buckets.remove(interval);
            let ranks: Vec<Vec<u32>> = self.dicts.iter().map(rows::Dict::ranks).collect();
            let rows = bucket.map(|b| b.into_sorted(&ranks));
            match (deferred, rows) {
                (Some((paths, _)), rows) => Source::Runs(paths, rows),
                (None, Some(rows)) if rows.len() > 0 => Source::Memory(rows),
                (None, _) => return Ok(Vec::new()),
            }
        };
        let exact = !matches!(source, Source::Runs(..));
        // Dynamic partitions take the next `limit` rows each from one stream; hashed ones each
        // read the rows of their own shard (from memory, split once, or from the run again).
        let n = parts as u32;
        let mut shards: Vec<Vec<spill::Row>> = Vec::new();
        let mut shared: Option<Box<dyn Iterator<Item = Result<spill::Row, String>> + '_>> = None;
        let mut run_path = None;
        let mut split_runs: BTreeMap<usize, PathBuf> = BTreeMap::new();
        let split = self.spec.hashed.is_some() || self.spec.range.is_some();
        match (source, split) {
            (Source::Run(path), false) => {
                let reader = spill::RunReader::open(&path).map_err(IngestError::Write)?;
                // The file can go now: the reader holds it open.
                let _ = std::fs::remove_file(&path);
                shared = Some(Box::new(reader));
            }
            (Source::Memory(rows), false) => shared = Some(Box::new(rows.map(Ok))),
            (Source::Runs(paths, rows), _) => {
                let mut sources: Vec<Box<dyn Iterator<Item = Result<spill::Row, String>>>> = Vec::new();
                for p in &paths {
                    sources.push(Box::new(spill::RunReader::open(p).map_err(IngestError::Write)?));
                    // The file can go now: the reader holds it open.
                    let _ = std::fs::remove_file(p);
                }
                sources.push(Box::new(rows.into_iter().flatten().map(Ok)));
                shared = Some(Box::new(spill::Merge::new(
                    sources,
                    &self.dicts,
                    &self.spec.metrics,
                    self.spec.rollup,
                )));
            }
            (Source::Run(path), true) if wanted.len() <= MAX_SPLIT_RUNS => {
                // One pass over the merged run splits it into a run per partition, rather than
                // one pass (and a hash of every row) per partition.
                std::fs::create_dir_all(dir)
                    .map_err(|e| IngestError::Write(format!("cannot create [{}]: {e}", dir.display())))?;
                let mut writers = Vec::with_capacity(wanted.len());
                for &(k, _) in wanted {
                    let p = dir.join(format!("part-{k}.run"));
                    writers.push((
                        k as usize,
                        p.clone(),
                        spill::RunWriter::create(&p, 64 * 1024).map_err(IngestError::Write)?,
                    ));
                }
                for row in spill::RunReader::open(&path).map_err(IngestError::Write)? {
                    let row = row.map_err(IngestError::Write)?;
                    let k = self.partition_of(interval, &row.0, n).min(n as usize - 1);
                    // A row of a partition not written is left out here and counted below.
                    if let Some((_, _, w)) = writers.iter_mut().find(|(wk, _, _)| *wk == k) {
                        w.push(&row).map_err(IngestError::Write)?;
                    }
                }
                let _ = std::fs::remove_file(&path);
                for (k, p, w) in writers {
                    w.finish().map_err(IngestError::Write)?;
                    split_runs.insert(k, p);
                }
            }
            (Source::Run(path), true) => run_path = Some(path),
            (Source::Memory(rows), true) => {
                shards = (0..n).map(|_| Vec::new()).collect();
                for row in rows {
                    let k = self.partition_of(interval, &row.0, n).min(n as usize - 1);
                    shards[k].push(row);
                }
            }
        }
        let limit = if split {
            usize::MAX
        } else {
            self.spec.max_rows_per_segment.min(usize::MAX as u64) as usize
        };
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
        let this = &*self;
        for &(k, num) in wanted {
            let k = k as usize;
            let mut own: Box<dyn Iterator<Item = Result<spill::Row, String>>> = match &run_path {
                Some(path) => {
                    let reader = spill::RunReader::open(path).map_err(IngestError::Write)?;
                    let at = *interval;
                    Box::new(reader.filter(move |r| {
                        r.as_ref()
                            .map_or(true, |(key, _)| this.partition_of(&at, key, n).min(n as usize - 1) == k)
                    }))
                }
                _ if !shards.is_empty() => Box::new(std::mem::take(&mut shards[k]).into_iter().map(Ok)),
                _ if split_runs.contains_key(&k) => {
                    let p = &split_runs[&k];
                    let reader = spill::RunReader::open(p).map_err(IngestError::Write)?;
                    // The file can go now: the reader holds it open.
                    let _ = std::fs::remove_file(p);
                    Box::new(reader)
                }
                _ => Box::new(std::iter::empty()),
            };
            let rows: &mut dyn Iterator<Item = Result<spill::Row, String>> = match shared.as_mut() {
                Some(s) => s.as_mut(),
                None => own.as_mut(),
            };
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
            let w = segment::write(&path, rows, limit, &dims, &self.dicts, &self.spec.metrics, meta)
                .map_err(IngestError::Write)?;
            out.push(SegmentFile {
                interval: *interval,
                version: version.to_string(),
                partition_num: num,
                path,
                rows: w.rows,
                bytes: w.bytes,
                dimensions: dims.iter().map(|d| d.name.clone()).collect(),
                metrics: self.spec.metrics.iter().map(|m| m.name.clone()).collect(),
            });
        }
        if let Some(path) = run_path {
            let _ = std::fs::remove_file(path);
        }
        let written: u64 = out.iter().map(|f| f.rows).sum();
        // A deferred interval's count was taken before its merge: it is a bound, not a count.
        if written != expected && (exact || written > expected) {
            return Err(IngestError::Write(format!(
                "{interval}: {written} of its {expected} rows fell into the partitions written {:?}; \
                 the others would have been lost",
                wanted.iter().map(|(k, _)| k).collect::<Vec<_>>()
            )));
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

/// A row's hashed-partitioning group key, serialized as Druid writes it ([`Ingested::group_key`]).
struct GroupKey<'a> {
    ingested: &'a Ingested,
    key: &'a rows::Key,
    hashed: &'a spec::Hashed,
}

/// One dimension's values of a row, as a JSON list of strings (Druid's form for hashing).
struct DimStrings<'a> {
    ingested: &'a Ingested,
    value: Option<&'a rows::DimValue>,
    dim: usize,
}

impl DimStrings<'_> {
    fn is_empty(&self) -> bool {
        matches!(self.value, None | Some(rows::DimValue::Null))
    }
}

impl serde::Serialize for DimStrings<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let dict = &self.ingested.dicts[self.dim];
        match self.value {
            None | Some(rows::DimValue::Null) => s.serialize_seq(Some(0))?.end(),
            Some(rows::DimValue::Str(id)) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(dict.get(*id))?;
                seq.end()
            }
            Some(rows::DimValue::Long(v)) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(&v.to_string())?;
                seq.end()
            }
            Some(rows::DimValue::Double(v)) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(&v.to_string())?;
                seq.end()
            }
            Some(rows::DimValue::Multi(ids)) => {
                let mut values: Vec<&str> = ids.iter().map(|id| dict.get(*id)).collect();
                values.sort_unstable();
                values.dedup();
                let mut seq = s.serialize_seq(Some(values.len()))?;
                for v in values {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

impl serde::Serialize for GroupKey<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let ing = self.ingested;
        let strings = |dim: usize| DimStrings {
            ingested: ing,
            value: self.key.dims.get(dim),
            dim,
        };
        if self.hashed.partition_dimensions.is_empty() {
            let mut seq = s.serialize_seq(Some(2))?;
            seq.serialize_element(&self.key.time)?;
            seq.serialize_element(&AllDims {
                key: self,
                strings: &strings,
            })?;
            return seq.end();
        }
        let mut seq = s.serialize_seq(Some(self.hashed.partition_dimensions.len()))?;
        for name in &self.hashed.partition_dimensions {
            match ing.dims.iter().position(|d| d.name == *name) {
                Some(i) => seq.serialize_element(&strings(i))?,
                None => seq.serialize_element(&[(); 0])?,
            }
        }
        return seq.end();

        /// Every non-null dimension of the row, by name in order.
        struct AllDims<'a, 'b, F: Fn(usize) -> DimStrings<'a>> {
            key: &'b GroupKey<'a>,
            strings: &'b F,
        }
        impl<'a, F: Fn(usize) -> DimStrings<'a>> serde::Serialize for AllDims<'a, '_, F> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(None)?;
                for &i in &self.key.ingested.dims_by_name {
                    let values = (self.strings)(i);
                    if !values.is_empty() {
                        map.serialize_entry(&self.key.ingested.dims[i].name, &values)?;
                    }
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The group key as JSON values, the plain way: what [`Ingested::group_key`] must write
    /// byte for byte (the bytes are hashed into Druid's buckets).
    fn group_key_as_values(ing: &Ingested, key: &rows::Key, h: &spec::Hashed) -> Vec<u8> {
        let values = |i: usize| -> Vec<String> {
            let mut v: Vec<String> = match key.dims.get(i) {
                None | Some(rows::DimValue::Null) => Vec::new(),
                Some(rows::DimValue::Str(id)) => vec![ing.dicts[i].get(*id).to_string()],
                Some(rows::DimValue::Long(v)) => vec![v.to_string()],
                Some(rows::DimValue::Double(v)) => vec![v.to_string()],
                Some(rows::DimValue::Multi(ids)) => ids.iter().map(|id| ing.dicts[i].get(*id).to_string()).collect(),
            };
            v.sort();
            v.dedup();
            v
        };
        let value = if h.partition_dimensions.is_empty() {
            let mut dims = serde_json::Map::new();
            let mut named: Vec<(usize, &str)> =
                ing.dims.iter().enumerate().map(|(i, d)| (i, d.name.as_str())).collect();
            named.sort_by(|a, b| a.1.cmp(b.1));
            for (i, name) in named {
                let v = values(i);
                if !v.is_empty() {
                    dims.insert(name.to_string(), json!(v));
                }
            }
            json!([key.time, dims])
        } else {
            Value::Array(
                h.partition_dimensions
                    .iter()
                    .map(|d| {
                        json!(ing
                            .dims
                            .iter()
                            .position(|x| x.name == *d)
                            .map(values)
                            .unwrap_or_default())
                    })
                    .collect(),
            )
        };
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn group_keys_are_written_as_druid_hashes_them() {
        let data = [
            r#"{"t": "2024-01-01T00:00:00Z", "page": "Main", "n": 3, "x": 1.5, "tags": ["b", "a", "b"]}"#,
            r#"{"t": "2024-01-01T01:00:00Z", "page": "Talk \"quoted\" é", "x": -0.25}"#,
            r#"{"t": "2024-01-01T02:00:00Z", "n": -7, "tags": "solo"}"#,
            r#"{"t": "2024-01-01T03:00:00Z"}"#,
        ]
        .join("\n");
        let task = json!({"type": "index", "spec": {
            "dataSchema": {"dataSource": "d", "timestampSpec": {"column": "t", "format": "iso"},
                "dimensionsSpec": {"dimensions": ["page", {"type": "long", "name": "n"},
                    {"type": "double", "name": "x"}, "tags", "absent"]},
                "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "none"}},
            "ioConfig": {"type": "index", "inputSource": {"type": "inline", "data": data}, "inputFormat": {"type": "json"}},
            "tuningConfig": {"partitionsSpec": {"type": "hashed", "numShards": 3}}}});
        let spec = IngestSpec::from_task(&task).unwrap();
        let ing = read_input(&spec, None, &mut |_| {}, &mut |_| {}).unwrap();
        let keys: Vec<rows::Key> = ing.buckets.values().flat_map(rows::Bucket::keys).collect();
        assert_eq!(keys.len(), 4);
        for partition_dimensions in [vec![], vec!["tags".to_string(), "page".to_string(), "nope".to_string()]] {
            let h = spec::Hashed {
                num_shards: Some(3),
                target_rows_per_segment: 1,
                partition_dimensions,
            };
            for key in &keys {
                let written = ing.group_key(key, &h);
                assert_eq!(
                    String::from_utf8(written).unwrap(),
                    String::from_utf8(group_key_as_values(&ing, key, &h)).unwrap()
                );
            }
        }
    }
}
