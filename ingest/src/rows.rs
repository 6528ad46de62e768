//! Input records to Druid rows: the time, the dimension values and the metrics, grouped into
//! segment buckets and, under rollup, combined by truncated time and dimensions.
//!
//! Row outcomes are counted as Druid counts them ([`RowStats`]): a row whose time is missing or
//! unparseable, or a line that does not parse, is `unparseable`; a row with a dimension value
//! that does not convert to the dimension's type is `processedWithError` (the value is stored as
//! null); a row outside `granularitySpec.intervals` is `thrownAway`.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use serde::Serialize;
use serde_json::Value;

use raftlord_time::interval::Interval;

use crate::aggregate::{as_double, as_long, as_text, Acc};
use crate::format::{FieldRef, FieldSlot, Record};
use crate::spec::{DimType, Dimension, Dimensions, IngestSpec};

/// Druid's `rowStats` for one phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowStats {
    pub processed: u64,
    pub processed_bytes: u64,
    pub processed_with_error: u64,
    pub thrown_away: u64,
    pub unparseable: u64,
}

/// One saved parse exception, in the shape of Druid's `ParseExceptionReport`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParseProblem {
    pub input: String,
    pub error_type: String,
    pub details: Vec<String>,
    pub time_of_exception_millis: i64,
}

/// Where a record was read, for messages: `Path: <file>, Line: <line>` (Druid's wording).
/// Formatted only when a message needs it.
pub struct At<'a> {
    pub file: &'a str,
    pub line: u64,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Path: {}, Line: {}", self.file, self.line)
    }
}

/// The hasher of the in-memory tables: fast, and seeded per process.
pub type Hasher = foldhash::fast::RandomState;

/// A dimension value. Strings are ids in their dimension's [`Dict`]; a row's key hashes and
/// compares ids, and only sorting for output looks at the strings' order (through
/// [`Dict::ranks`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum DimValue {
    Null,
    Long(i64),
    Double(f64),
    Str(u32),
    /// Ids of a multi-value string, in the strings' order.
    /// Boxed once more so that a value is two words, not three: a row holds one per dimension.
    Multi(Box<Vec<u32>>),
}

// A row holds one per dimension: two words.
const _: () = assert!(std::mem::size_of::<DimValue>() == 16);

impl Eq for DimValue {}

impl std::hash::Hash for DimValue {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // One word per value where it fits (a string id with its tag), as a key hashes six or
        // more of them per row.
        match self {
            DimValue::Null => h.write_u64(0),
            DimValue::Long(v) => {
                h.write_u64(1);
                h.write_i64(*v)
            }
            DimValue::Double(v) => {
                h.write_u64(2);
                h.write_u64(v.to_bits())
            }
            DimValue::Str(s) => h.write_u64((3 << 32) | u64::from(*s)),
            DimValue::Multi(m) => {
                h.write_u64(4);
                m.hash(h)
            }
        }
    }
}

impl DimValue {
    /// Druid's order: null first, then numbers, then strings (by `rank`), then multi-values.
    pub fn cmp_with(&self, o: &DimValue, rank: &[u32]) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        use DimValue::*;
        let class = |v: &DimValue| match v {
            Null => 0,
            Long(_) | Double(_) => 1,
            Str(_) => 2,
            Multi(_) => 3,
        };
        let r = |id: &u32| rank.get(*id as usize).copied().unwrap_or(u32::MAX);
        match (self, o) {
            (Long(a), Long(b)) => a.cmp(b),
            (Double(a), Double(b)) => a.total_cmp(b),
            (Long(a), Double(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
            (Double(a), Long(b)) => a.total_cmp(&(*b as f64)).then(Ordering::Greater),
            (Str(a), Str(b)) => r(a).cmp(&r(b)),
            (Multi(a), Multi(b)) => a.iter().map(r).cmp(b.iter().map(r)),
            _ => class(self).cmp(&class(o)),
        }
    }
}

/// The distinct strings of one dimension, each stored once: end to end in one buffer, found
/// by their hash through a table of ids (no allocation per string).
#[derive(Debug, Default)]
pub struct Dict {
    bytes: String,
    /// Where each id's string ends in `bytes` (it starts where the previous one ends).
    ends: Vec<usize>,
    index: hashbrown::HashTable<u32>,
    hasher: Hasher,
}

/// Item `i` of items stored end to end, `ends` holding where each ends: where it lies.
fn span(ends: &[usize], i: usize) -> std::ops::Range<usize> {
    let start = if i == 0 { 0 } else { ends[i - 1] };
    start..ends[i]
}

fn dict_str<'a>(bytes: &'a str, ends: &[usize], id: usize) -> &'a str {
    &bytes[span(ends, id)]
}

impl Dict {
    /// The id of `s`, added when new.
    pub fn id(&mut self, s: &str) -> u32 {
        let hash = self.hasher.hash_one(s);
        let Dict {
            bytes,
            ends,
            index,
            hasher,
        } = self;
        if let Some(&i) = index.find(hash, |&i| dict_str(bytes, ends, i as usize) == s) {
            return i;
        }
        let i = ends.len() as u32;
        bytes.push_str(s);
        ends.push(bytes.len());
        index.insert_unique(hash, i, |&j| hasher.hash_one(dict_str(bytes, ends, j as usize)));
        i
    }

    /// The string of `id` ("" for an id this dictionary never gave).
    pub fn get(&self, id: u32) -> &str {
        if (id as usize) < self.ends.len() {
            dict_str(&self.bytes, &self.ends, id as usize)
        } else {
            ""
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// For each id, its position among the strings in sorted order.
    pub fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.get(*a).cmp(self.get(*b)));
        let mut rank = vec![0u32; order.len()];
        for (pos, id) in order.into_iter().enumerate() {
            rank[id as usize] = pos as u32;
        }
        rank
    }
}

/// A row's grouping key: its truncated time and its dimension values, trailing nulls dropped (so
/// that rows read before a dimension was discovered group with rows that lack it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Key {
    pub time: i64,
    pub dims: Vec<DimValue>,
}

/// The rows of one segment bucket (one interval of `segmentGranularity`), held flat: every
/// row's time, dimension values and metrics side by side in three arrays, and under rollup a
/// table of row numbers found by the hash of the row's key. A row costs no allocation of its
/// own, sorting and spilling read the arrays in place, and a spill empties them without
/// freeing them, so that the next rows fill memory that is already there.
#[derive(Debug)]
pub struct Bucket {
    times: Vec<i64>,
    /// Where each row's dimension values end in `dims` (they start where the previous row's
    /// end): rows hold as many as they had up to their last non-null one.
    ends: Vec<usize>,
    dims: Vec<DimValue>,
    /// `metrics` accumulators per row.
    accs: Vec<Acc>,
    metrics: usize,
    /// Whether rows with equal keys are combined.
    rollup: bool,
    /// Under rollup: the row of each distinct key.
    table: hashbrown::HashTable<u32>,
    hasher: Hasher,
}

impl Bucket {
    /// An empty bucket for rows of `metrics` metrics, with room for `rows` rows of `dims`
    /// dimension values (reserved, not touched: memory is paid for as rows fill it).
    pub fn with_capacity(metrics: usize, rows: usize, dims: usize, rollup: bool) -> Bucket {
        Bucket {
            times: Vec::with_capacity(rows),
            ends: Vec::with_capacity(rows),
            dims: Vec::with_capacity(rows * dims),
            accs: Vec::with_capacity(rows * metrics),
            metrics,
            rollup,
            table: if rollup {
                hashbrown::HashTable::with_capacity(rows)
            } else {
                hashbrown::HashTable::new()
            },
            hasher: Hasher::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether rows with equal keys are combined as they are added (through the table); an
    /// empty bucket only. Without, rows are only appended, and the table's memory is freed.
    fn set_rollup(&mut self, rollup: bool) {
        debug_assert!(self.is_empty(), "only an empty bucket changes how it takes rows");
        if self.rollup != rollup {
            self.rollup = rollup;
            self.table = hashbrown::HashTable::new();
        }
    }

    /// Stops combining rows as they are added: the rows held stay (their keys distinct), the
    /// table goes, and later rows are appended, to be combined when sorted.
    fn stop_rollup(&mut self) {
        self.rollup = false;
        self.table = hashbrown::HashTable::new();
    }

    /// How many rows the bucket holds before its arrays must grow.
    pub fn capacity(&self) -> usize {
        self.times.capacity()
    }

    fn dims_of(&self, i: usize) -> &[DimValue] {
        row_dims(&self.ends, &self.dims, i)
    }

    fn accs_of(&self, i: usize) -> &[Acc] {
        &self.accs[i * self.metrics..(i + 1) * self.metrics]
    }

    /// Starts loading the cache lines of row `i`'s values and metrics.
    fn prefetch_row(&self, i: usize) {
        let lines = |start: *const u8, len: usize| {
            for offset in (0..len).step_by(64).chain(len.checked_sub(1)) {
                prefetch(start.wrapping_add(offset));
            }
        };
        let (dims, accs) = (self.dims_of(i), self.accs_of(i));
        lines(dims.as_ptr().cast(), size_of_val(dims));
        lines(accs.as_ptr().cast(), size_of_val(accs));
    }

    /// Adds a row of `time` and `dims` (which it empties): under rollup, a row with an equal
    /// key takes it; otherwise a new row, its accumulators from `init`. `fold` then adds the
    /// record's metrics to the row's accumulators. Returns whether a row was added.
    pub fn add(
        &mut self,
        time: i64,
        dims: &mut Vec<DimValue>,
        init: impl Fn(usize) -> Acc,
        fold: impl FnOnce(&mut [Acc]),
    ) -> bool {
        let m = self.metrics;
        if self.rollup {
            let hash = self.hasher.hash_one((time, dims.as_slice()));
            let Bucket {
                times,
                ends,
                dims: arena,
                table,
                hasher,
                ..
            } = self;
            let same = |&i: &u32| times[i as usize] == time && row_dims(ends, arena, i as usize) == dims.as_slice();
            if let Some(&i) = table.find(hash, same) {
                dims.clear();
                let i = i as usize;
                fold(&mut self.accs[i * m..(i + 1) * m]);
                return false;
            }
            let row = times.len() as u32;
            table.insert_unique(hash, row, |&i| {
                hasher.hash_one((times[i as usize], row_dims(ends, arena, i as usize)))
            });
        }
        let i = self.times.len();
        self.times.push(time);
        self.dims.append(dims);
        self.ends.push(self.dims.len());
        self.accs.extend((0..m).map(init));
        fold(&mut self.accs[i * m..(i + 1) * m]);
        true
    }

    /// Every row's key, in no order.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        (0..self.len()).map(|i| Key {
            time: self.times[i],
            dims: self.dims_of(i).to_vec(),
        })
    }

    /// The row numbers in row order: time, then dimensions (`ranks[i]`: the string order of
    /// dimension `i`, from [`Dict::ranks`]).
    ///
    /// Rows are sorted through a small key per row (the time and the leading dimensions packed
    /// into an integer, [`Packer`]) and only rows whose keys tie are compared in full.
    fn order(&self, ranks: &[Vec<u32>]) -> Vec<u32> {
        let packer = Packer::new(ranks);
        let mut order: Vec<(i64, u128, u32)> = (0..self.len())
            .map(|i| (self.times[i], packer.pack(self.dims_of(i), ranks), i as u32))
            .collect();
        // Rows with equal keys (appended without rollup in memory) stay in the order they were
        // added, the order in which their metrics are then combined.
        order.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| {
                    crate::spill::cmp_rows(a.0, self.dims_of(a.2 as usize), b.0, self.dims_of(b.2 as usize), ranks)
                })
                .then(a.2.cmp(&b.2))
        });
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    /// Writes the rows, sorted, to a run at `path` and empties the bucket, keeping its memory
    /// for the next rows. Returns how many rows were written.
    pub fn spill(&mut self, path: &std::path::Path, ranks: &[Vec<u32>]) -> Result<u64, String> {
        let mut w = crate::spill::RunWriter::create(path, 1 << 20)?;
        let order = self.order(ranks);
        for (k, &i) in order.iter().enumerate() {
            // Rows are read in sorted order, not the order they were added in, so nearly every
            // row is a cache miss: rows further on are fetched ahead (where their values end,
            // 16 rows on; then their values and metrics, 8 rows on), so that the misses of
            // several rows overlap instead of coming one after another.
            if let Some(&far) = order.get(k + 16) {
                prefetch(&self.ends[far as usize]);
                prefetch(&self.times[far as usize]);
            }
            if let Some(&near) = order.get(k + 8) {
                self.prefetch_row(near as usize);
            }
            let i = i as usize;
            w.push_parts(self.times[i], self.dims_of(i), self.accs_of(i))?;
        }
        self.times.clear();
        self.ends.clear();
        self.dims.clear();
        self.accs.clear();
        self.table.clear();
        w.finish()
    }

    /// The rows, sorted as [`Bucket::spill`] writes them, each made into a [`Key`] and its
    /// accumulators only as it is read.
    pub fn into_sorted(mut self, ranks: &[Vec<u32>]) -> Sorted {
        // The arrays of the last rows, after spills, are mostly empty room: it goes before
        // the rows are written, and with it the table (only rows are looked up from here).
        self.table = hashbrown::HashTable::new();
        self.times.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.dims.shrink_to_fit();
        self.accs.shrink_to_fit();
        let order = self.order(ranks).into_iter();
        Sorted { bucket: self, order }
    }
}

/// Asks the CPU to start loading the cache line at `p`; what the program computes does not
/// change.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint to the cache: it reads nothing the program sees and cannot
    // fault, whatever the address (SSE, which it needs, is in every x86_64 CPU).
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn row_dims<'a>(ends: &[usize], dims: &'a [DimValue], i: usize) -> &'a [DimValue] {
    &dims[span(ends, i)]
}

/// A bucket's rows in order ([`Bucket::into_sorted`]).
pub struct Sorted {
    bucket: Bucket,
    order: std::vec::IntoIter<u32>,
}

impl Iterator for Sorted {
    type Item = (Key, Vec<Acc>);

    fn next(&mut self) -> Option<Self::Item> {
        let i = self.order.next()? as usize;
        // As in a spill: rows further on are fetched ahead.
        if let Some(&far) = self.order.as_slice().get(16) {
            prefetch(&self.bucket.ends[far as usize]);
            prefetch(&self.bucket.times[far as usize]);
        }
        if let Some(&near) = self.order.as_slice().get(8) {
            self.bucket.prefetch_row(near as usize);
        }
        let b = &mut self.bucket;
        let dims = b.dims[span(&b.ends, i)]
            .iter_mut()
            .map(|d| std::mem::replace(d, DimValue::Null))
            .collect();
        let accs = b.accs[i * b.metrics..(i + 1) * b.metrics]
            .iter_mut()
            .map(|a| std::mem::replace(a, Acc::Long(None)))
            .collect();
        Some((Key { time: b.times[i], dims }, accs))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.order.size_hint()
    }
}

impl ExactSizeIterator for Sorted {}

/// Packs a row's leading dimensions into one integer that orders rows as
/// [`crate::spill::cmp_keys`] does wherever two packed values differ: per dimension, null is 0,
/// a number 1, a string its rank + 2, a multi-value the largest code; each dimension takes the
/// bits its dictionary needs, as many dimensions as fit in 128 bits. After a number or a
/// multi-value (whose order the code does not hold) the rest is zero, so such rows tie and are
/// compared in full.
pub struct Packer {
    widths: Vec<u32>,
}

impl Packer {
    pub fn new(ranks: &[Vec<u32>]) -> Packer {
        let mut widths = Vec::new();
        let mut used = 0;
        for r in ranks {
            let w = 64 - (r.len() as u64 + 2).leading_zeros();
            if used + w > 128 {
                break;
            }
            used += w;
            widths.push(w);
        }
        Packer { widths }
    }

    pub fn pack(&self, dims: &[DimValue], ranks: &[Vec<u32>]) -> u128 {
        let mut out = 0u128;
        let mut exact = true;
        for (i, w) in self.widths.iter().enumerate() {
            let top = (1u128 << w) - 1;
            let code = if !exact {
                0
            } else {
                match dims.get(i) {
                    None | Some(DimValue::Null) => 0,
                    Some(DimValue::Long(_) | DimValue::Double(_)) => {
                        exact = false;
                        1
                    }
                    Some(DimValue::Str(id)) => match ranks[i].get(*id as usize) {
                        Some(r) => u128::from(*r) + 2,
                        None => {
                            exact = false;
                            top
                        }
                    },
                    Some(DimValue::Multi(_)) => {
                        exact = false;
                        top
                    }
                }
            };
            out = (out << w) | code;
        }
        out
    }
}

/// A dimension as found: declared, or discovered with the types its values had.
#[derive(Debug, Clone)]
pub struct FoundDim {
    pub name: String,
    pub declared: Option<DimType>,
    pub saw_long: bool,
    pub saw_double: bool,
    pub saw_text: bool,
    pub saw_multi: bool,
    /// Where the field was in the last record.
    slot: FieldSlot,
}

impl FoundDim {
    /// The column's type: the declared one, or for discovered dimensions, long when every value
    /// was an integer, double when every value was a number, string otherwise (typed discovery
    /// only; schemaless discovery makes every dimension a string).
    pub fn kind(&self, typed: bool) -> DimType {
        match self.declared {
            Some(t) => t,
            None if !typed || self.saw_text || self.saw_multi => DimType::String,
            None if self.saw_double => DimType::Double,
            None if self.saw_long => DimType::Long,
            None => DimType::String,
        }
    }
}

/// The row after `transformSpec.transforms`: the parsed fields with each transform's result
/// written over them, all computed from the row as parsed; and its time (a transform named
/// `__time` replaces it; `None` when that gives no number).
fn transform(spec: &IngestSpec, record: &Record, time: i64) -> Option<(Record, i64)> {
    use crate::expr::Val;
    let mut m = serde_json::Map::new();
    for name in record.names() {
        let v = match record.get(name) {
            FieldRef::Absent => continue,
            FieldRef::Null => serde_json::Value::Null,
            FieldRef::Text(s) => serde_json::Value::from(s),
            FieldRef::Json(v) => v.clone(),
            FieldRef::List(items) => serde_json::Value::from(items),
        };
        m.insert(name.to_string(), v);
    }
    let mut new_time = time;
    for (name, expr) in &spec.transforms {
        let v = expr.eval(&|f| crate::filter::field_val(record, f, time));
        if name == "__time" {
            new_time = match v {
                Val::Long(l) => l,
                Val::Double(d) if d.is_finite() => d as i64,
                _ => return None,
            };
        } else {
            m.insert(name.clone(), v.to_json());
        }
    }
    Some((Record::Json(m), new_time))
}

/// Rows offered since the last spill after which rollup's worth is judged early (see
/// `RowBuilder::combine_at_sort`), when memory holds well more than that many rows: rows that
/// barely roll up then skip the table for most of the run, not only from the next run on.
pub const ROLLUP_CHECK_ROWS: usize = 65_536;

/// Turns records into bucketed rows.
pub struct RowBuilder<'a> {
    spec: &'a IngestSpec,
    pub dims: Vec<FoundDim>,
    /// The strings of each dimension, in `dims` order.
    pub dicts: Vec<Dict>,
    dim_index: HashMap<String, usize>,
    pub buckets: BTreeMap<Interval, Bucket>,
    /// Rows in `buckets`, and an estimate of their bytes.
    in_memory: usize,
    in_memory_bytes: u64,
    /// Sorted runs written when memory filled up, by segment interval.
    pub runs: BTreeMap<Interval, Vec<std::path::PathBuf>>,
    /// Rows written to each interval's runs.
    pub spilled_rows: BTreeMap<Interval, u64>,
    spill_dir: Option<std::path::PathBuf>,
    pub stats: RowStats,
    pub problems: Vec<ParseProblem>,
    typed_discovery: bool,
    discovering: bool,
    /// The emptied bucket of the last spill, kept to be the next new bucket: a table grown to
    /// a run's size is not grown again from nothing after every spill.
    spare: Option<Bucket>,
    /// The dimension values of the row being read, reused from row to row.
    scratch: Vec<DimValue>,
    /// Under rollup, whether rows are combined only when sorted (into runs, then by the merge)
    /// rather than as they are added: chosen when the table combined under a tenth of the rows
    /// offered since the last spill, as its lookups then cost more than they save; judged at
    /// each spill, and early in a run ([`ROLLUP_CHECK_ROWS`]).
    combine_at_sort: bool,
    /// Rows given to the buckets since the last spill, before rollup.
    offered: usize,
    /// Where the time and each metric's input field were in the last record.
    time_slot: FieldSlot,
    metric_slots: Vec<FieldSlot>,
}

/// Why a row was not taken.
pub enum RowError {
    Unparseable(String),
}

impl<'a> RowBuilder<'a> {
    /// `spill_dir`: where sorted runs go when `maxRowsInMemory` rows are held; `None` keeps
    /// everything in memory.
    pub fn new(spec: &'a IngestSpec, spill_dir: Option<&std::path::Path>) -> RowBuilder<'a> {
        let (dims, discovering, typed) = match &spec.dimensions {
            Dimensions::Declared(d) => (d.iter().map(declared).collect(), false, false),
            Dimensions::Discovered { typed, .. } => (Vec::new(), true, *typed),
        };
        let dim_index = dims
            .iter()
            .enumerate()
            .map(|(i, d): (usize, &FoundDim)| (d.name.clone(), i))
            .collect();
        let dicts = dims.iter().map(|_| Dict::default()).collect();
        RowBuilder {
            spec,
            dims,
            dicts,
            dim_index,
            buckets: BTreeMap::new(),
            in_memory: 0,
            in_memory_bytes: 0,
            runs: BTreeMap::new(),
            spilled_rows: BTreeMap::new(),
            spill_dir: spill_dir.map(|d| d.to_path_buf()),
            stats: RowStats::default(),
            problems: Vec::new(),
            typed_discovery: typed,
            discovering,
            spare: None,
            scratch: Vec::new(),
            combine_at_sort: false,
            offered: 0,
            time_slot: FieldSlot::default(),
            metric_slots: Vec::new(),
        }
    }

    pub fn typed_discovery(&self) -> bool {
        self.typed_discovery
    }

    /// Rows held in memory (after rollup).
    pub fn rows_in_memory(&self) -> usize {
        self.in_memory
    }

    /// Writes every bucket's rows to a sorted run when memory holds `maxRowsInMemory` rows.
    pub fn spill_if_full(&mut self) -> Result<(), String> {
        if (self.in_memory as u64) < self.spec.max_rows_in_memory
            && self.in_memory_bytes < self.spec.max_bytes_in_memory
        {
            return Ok(());
        }
        self.spill()
    }

    /// Called after the last record: rows held uncombined (see `combine_at_sort`) are
    /// written to runs too, so that the merge combines them.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.combine_at_sort {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), String> {
        let Some(dir) = self.spill_dir.clone() else {
            return Ok(());
        };
        self.check_rollup();
        self.offered = 0;
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create [{}]: {e}", dir.display()))?;
        let ranks: Vec<Vec<u32>> = self.dicts.iter().map(Dict::ranks).collect();
        for (interval, mut bucket) in std::mem::take(&mut self.buckets) {
            let runs = self.runs.entry(interval).or_default();
            let path = dir.join(format!("{}-{}-{}.run", interval.start, interval.end, runs.len()));
            let n = bucket.spill(&path, &ranks)?;
            *self.spilled_rows.entry(interval).or_default() += n;
            runs.push(path);
            if self.spare.as_ref().is_none_or(|s| s.capacity() < bucket.capacity()) {
                self.spare = Some(bucket);
            }
        }
        self.in_memory = 0;
        self.in_memory_bytes = 0;
        Ok(())
    }

    /// Turns in-memory rollup off when the table combined under a tenth of the rows offered
    /// since the last spill (see `combine_at_sort`): the buckets drop their tables and hold
    /// further rows as they come, the rows already held staying as they are. Only where rows
    /// can be spilled, as only the merge of runs combines rows then.
    fn check_rollup(&mut self) {
        if self.spill_dir.is_some()
            && self.spec.rollup
            && !self.combine_at_sort
            && self.in_memory * 10 >= self.offered * 9
        {
            self.combine_at_sort = true;
            for b in self.buckets.values_mut() {
                b.stop_rollup();
            }
        }
    }

    /// Counts and saves a problem; `at` is where (file and line).
    pub fn problem(&mut self, error_type: &'static str, input: String, detail: String) {
        if self.problems.len() < self.spec.max_saved_parse_exceptions as usize {
            self.problems.push(ParseProblem {
                input,
                error_type: error_type.to_string(),
                details: vec![detail],
                time_of_exception_millis: chrono::Utc::now().timestamp_millis(),
            });
        }
    }

    /// Parse exceptions so far (unparseable and processed with error).
    pub fn exceptions(&self) -> u64 {
        self.stats.unparseable + self.stats.processed_with_error
    }

    /// Adds one record; `at` names its file and line for problems.
    pub fn add(&mut self, record: &Record, at: &At<'_>) -> Result<(), RowError> {
        let spec = self.spec;
        let time = match record.get_cached(&spec.timestamp.column, &mut self.time_slot) {
            FieldRef::Absent | FieldRef::Null => spec.timestamp.missing_value,
            FieldRef::Text(s) => spec.timestamp.format.parse_str(s),
            FieldRef::Json(v) => spec.timestamp.format.parse_value(v),
            FieldRef::List(_) => None,
        };
        let Some(time) = time else {
            let shown = match record.get(&spec.timestamp.column) {
                FieldRef::Text(s) => s.to_string(),
                FieldRef::Json(v) => v.to_string(),
                _ => "null".to_string(),
            };
            self.stats.unparseable += 1;
            return Err(RowError::Unparseable(format!(
                "Timestamp[{shown}] is unparseable! Event: {} ({at})",
                show(record)
            )));
        };
        let transformed;
        let (record, time) = if spec.transforms.is_empty() {
            (record, time)
        } else {
            let (r, t) = transform(spec, record, time).ok_or_else(|| {
                self.stats.unparseable += 1;
                RowError::Unparseable(format!(
                    "a transform of __time gave no timestamp. Event: {} ({at})",
                    show(record)
                ))
            })?;
            transformed = r;
            (&transformed, t)
        };
        if spec.filter.as_ref().is_some_and(|f| !f.matches(record, time)) {
            self.stats.thrown_away += 1;
            return Ok(());
        }
        if let Some(intervals) = &spec.intervals {
            if !intervals.iter().any(|i| i.contains_instant(time)) {
                self.stats.thrown_away += 1;
                return Ok(());
            }
        }
        let Some(bucket) = spec.segment_granularity.bucket(time) else {
            self.stats.unparseable += 1;
            return Err(RowError::Unparseable(format!(
                "Timestamp[{time}] has no {} bucket in the years 0000 to 9999 ({at})",
                spec.segment_granularity_json
            )));
        };
        if self.discovering {
            self.discover(record);
        }
        let mut with_error = None;
        let mut dims = std::mem::take(&mut self.scratch);
        for (d, dict) in self.dims.iter_mut().zip(self.dicts.iter_mut()) {
            let f = record.get_cached(&d.name, &mut d.slot);
            let v = match d.declared {
                Some(DimType::String) => string_value(&f, dict),
                None if !self.typed_discovery => string_value(&f, dict),
                None => {
                    let v = typed_value(&f, dict);
                    match &v {
                        DimValue::Long(_) => d.saw_long = true,
                        DimValue::Double(_) => d.saw_double = true,
                        DimValue::Str(_) => d.saw_text = true,
                        DimValue::Multi(_) => d.saw_multi = true,
                        DimValue::Null => {}
                    }
                    v
                }
                Some(DimType::Long) => match &f {
                    FieldRef::Absent | FieldRef::Null => DimValue::Null,
                    _ => match as_long(&f) {
                        Some(v) => DimValue::Long(v),
                        None => {
                            with_error.get_or_insert_with(|| {
                                format!(
                                    "could not convert value [{}] to long for dimension [{}]",
                                    shown(&f),
                                    d.name
                                )
                            });
                            DimValue::Null
                        }
                    },
                },
                Some(DimType::Float | DimType::Double) => match &f {
                    FieldRef::Absent | FieldRef::Null => DimValue::Null,
                    _ => match as_double(&f) {
                        Some(v) => DimValue::Double(v),
                        None => {
                            with_error.get_or_insert_with(|| {
                                format!(
                                    "could not convert value [{}] to double for dimension [{}]",
                                    shown(&f),
                                    d.name
                                )
                            });
                            DimValue::Null
                        }
                    },
                },
            };
            if matches!(v, DimValue::Multi(_)) {
                d.saw_multi = true;
            }
            dims.push(v);
        }
        while dims.last() == Some(&DimValue::Null) {
            dims.pop();
        }
        let truncated = spec.query_granularity.truncate(time);
        let row_bytes = row_bytes(&dims, spec.metrics.len());
        let spare = &mut self.spare;
        // The first bucket is made as large as memory allows at once (its memory stays
        // untouched, and so unpaid, until rows fill it) instead of growing by doubling; later
        // buckets reuse the one emptied by the last spill.
        let first = self.buckets.is_empty() && self.runs.is_empty();
        // With room to spare: rows are counted against the budget after they are added, and
        // arrays that doubled at the last row would hold twice what the budget allows.
        let room = (spec.max_bytes_in_memory / row_bytes.max(1)).min(spec.max_rows_in_memory) as usize;
        let room = room + room / 8 + 1;
        let metrics = &spec.metrics;
        let width = self.dims.len();
        let rollup = spec.rollup && !self.combine_at_sort;
        let b = self.buckets.entry(bucket).or_insert_with(|| match spare.take() {
            Some(mut b) => {
                b.set_rollup(rollup);
                b
            }
            None if first => Bucket::with_capacity(metrics.len(), room, width, rollup),
            None => Bucket::with_capacity(metrics.len(), 0, 0, rollup),
        });
        let slots = &mut self.metric_slots;
        slots.resize_with(metrics.len(), FieldSlot::default);
        let added = b.add(
            truncated,
            &mut dims,
            |i| metrics[i].init(),
            |accs| {
                for ((m, acc), slot) in metrics.iter().zip(accs.iter_mut()).zip(slots.iter_mut()) {
                    let input = match &m.field_name {
                        Some(f) => record.get_cached(f, slot),
                        None => FieldRef::Absent,
                    };
                    m.add(acc, time, &input);
                }
            },
        );
        self.scratch = dims;
        self.offered += 1;
        if added {
            self.in_memory += 1;
            self.in_memory_bytes += row_bytes;
        }
        if self.offered == ROLLUP_CHECK_ROWS && room > 2 * ROLLUP_CHECK_ROWS {
            self.check_rollup();
        }
        self.stats.processed += 1;
        if let Some(e) = with_error {
            self.stats.processed_with_error += 1;
            let input = show(record);
            self.problem("processedWithError", input, format!("{e} ({at})"));
        }
        Ok(())
    }

    fn discover(&mut self, record: &Record) {
        let spec = self.spec;
        let Dimensions::Discovered { exclusions, .. } = &spec.dimensions else {
            return;
        };
        for name in record.names() {
            if self.dim_index.contains_key(name)
                || name == spec.timestamp.column
                || name == "__time"
                || exclusions.iter().any(|e| e == name)
                || spec.metric_inputs().any(|m| m == name)
                || spec.metrics.iter().any(|m| m.name == name)
            {
                continue;
            }
            self.dim_index.insert(name.to_string(), self.dims.len());
            self.dicts.push(Dict::default());
            self.dims.push(FoundDim {
                name: name.to_string(),
                declared: None,
                saw_long: false,
                saw_double: false,
                saw_text: false,
                saw_multi: false,
                slot: FieldSlot::default(),
            });
        }
    }
}

/// What one row held in memory costs: its time, where its values end, its values (and the
/// lists of multi-values), its metrics, and its slot in the rollup table.
fn row_bytes(dims: &[DimValue], metrics: usize) -> u64 {
    use std::mem::size_of;
    let multi: usize = dims
        .iter()
        .map(|d| match d {
            DimValue::Multi(m) => size_of::<Vec<u32>>() + m.len() * size_of::<u32>(),
            _ => 0,
        })
        .sum();
    (size_of::<i64>() + size_of::<usize>() + size_of_val(dims) + multi + metrics * size_of::<Acc>() + 6) as u64
}

fn declared(d: &Dimension) -> FoundDim {
    FoundDim {
        name: d.name.clone(),
        declared: Some(d.kind),
        saw_long: false,
        saw_double: false,
        saw_text: false,
        saw_multi: false,
        slot: FieldSlot::default(),
    }
}

fn shown(f: &FieldRef<'_>) -> String {
    as_text(f).map(|c| c.into_owned()).unwrap_or_else(|| "null".to_string())
}

/// A record as Druid shows it in a parse exception.
pub fn show(record: &Record) -> String {
    match record {
        Record::Json(m) => {
            let s = Value::Object(m.clone()).to_string();
            truncate(s, 1024)
        }
        Record::Line(l) => truncate(l.shown(), 1024),
        Record::Columns { header, values } => {
            let pairs: Vec<String> = header
                .names
                .iter()
                .zip(values)
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            truncate(format!("{{{}}}", pairs.join(", ")), 1024)
        }
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// A string dimension's value: text as is, numbers printed, lists as multi-value (sorted, as
/// Druid's default `SORTED_ARRAY` handling), an empty list null, a one-element list a single value.
fn string_value(f: &FieldRef<'_>, dict: &mut Dict) -> DimValue {
    let mut multi = |mut v: Vec<std::borrow::Cow<'_, str>>| match v.len() {
        0 => DimValue::Null,
        1 => DimValue::Str(dict.id(&v[0])),
        _ => {
            v.sort();
            DimValue::Multi(Box::new(v.iter().map(|s| dict.id(s)).collect()))
        }
    };
    match f {
        FieldRef::Absent | FieldRef::Null => DimValue::Null,
        FieldRef::Text(s) => DimValue::Str(dict.id(s)),
        FieldRef::List(l) => multi(l.iter().map(|s| std::borrow::Cow::Borrowed(*s)).collect()),
        FieldRef::Json(Value::Array(a)) => multi(
            a.iter()
                .filter(|x| !x.is_null())
                .map(|x| match x {
                    Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                    other => std::borrow::Cow::Owned(other.to_string()),
                })
                .collect(),
        ),
        FieldRef::Json(v) => DimValue::Str(dict.id(&v.to_string())),
    }
}

/// A discovered dimension's value with its own type (`useSchemaDiscovery`).
fn typed_value(f: &FieldRef<'_>, dict: &mut Dict) -> DimValue {
    match f {
        FieldRef::Json(Value::Number(n)) => match n.as_i64() {
            Some(i) => DimValue::Long(i),
            None => n.as_f64().map_or(DimValue::Null, DimValue::Double),
        },
        other => string_value(other, dict),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dim_value() -> impl Strategy<Value = DimValue> {
        prop_oneof![
            Just(DimValue::Null),
            (-3i64..3).prop_map(DimValue::Long),
            (-3i64..3).prop_map(|v| DimValue::Double(v as f64 / 2.0)),
            (0u32..6).prop_map(DimValue::Str),
            proptest::collection::vec(0u32..6, 1..3).prop_map(|v| DimValue::Multi(Box::new(v))),
        ]
    }

    proptest! {
        /// The packed sort keys order rows exactly as the full comparison does, whatever mix of
        /// types, nulls, missing trailing dimensions and dictionary sizes the rows have.
        #[test]
        fn packed_sort_orders_rows_as_the_full_comparison(
            rows in proptest::collection::vec(
                ((0i64..3), proptest::collection::vec(dim_value(), 0..5)), 0..60),
            dict_sizes in proptest::collection::vec(6usize..40, 4),
            shuffle in any::<u64>(),
        ) {
            let mut dicts: Vec<Dict> = Vec::new();
            for (d, n) in dict_sizes.iter().enumerate() {
                let mut dict = Dict::default();
                // Ids in an order unrelated to the strings' order.
                for i in 0..*n {
                    dict.id(&format!("{}-{}", (i as u64 * 7 + shuffle + d as u64) % 97, i));
                }
                dicts.push(dict);
            }
            let ranks: Vec<Vec<u32>> = dicts.iter().map(Dict::ranks).collect();
            let mut bucket = Bucket::with_capacity(0, 0, 0, false);
            let mut expected: Vec<Key> = Vec::new();
            for (time, dims) in rows {
                expected.push(Key { time, dims: dims.clone() });
                bucket.add(time, &mut dims.clone(), |_| Acc::Long(None), |_| {});
            }
            expected.sort_by(|a, b| crate::spill::cmp_keys(a, b, &ranks));
            let got: Vec<Key> = bucket.into_sorted(&ranks).map(|(k, _)| k).collect();
            prop_assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                prop_assert_eq!(crate::spill::cmp_keys(g, e, &ranks), std::cmp::Ordering::Equal, "{:?} vs {:?}", g, e);
            }
        }

        /// Each distinct string gets the next id, the same string the same id, and every id
        /// gives its string back; ranks order the ids as their strings sort.
        #[test]
        fn dictionary_ids_give_their_strings_back(words in proptest::collection::vec("[a-c]{0,3}|.{0,6}", 0..60)) {
            let mut dict = Dict::default();
            let mut seen: Vec<String> = Vec::new();
            for w in &words {
                let id = dict.id(w);
                match seen.iter().position(|s| s == w) {
                    Some(i) => prop_assert_eq!(id as usize, i),
                    None => {
                        prop_assert_eq!(id as usize, seen.len());
                        seen.push(w.clone());
                    }
                }
            }
            prop_assert_eq!(dict.len(), seen.len());
            for (i, w) in seen.iter().enumerate() {
                prop_assert_eq!(dict.get(i as u32), w.as_str());
            }
            prop_assert_eq!(dict.get(seen.len() as u32), "");
            let ranks = dict.ranks();
            for a in 0..seen.len() {
                for b in 0..seen.len() {
                    prop_assert_eq!(ranks[a].cmp(&ranks[b]), seen[a].cmp(&seen[b]));
                }
            }
        }

        /// Under rollup the flat bucket keeps one row per distinct key with every record's
        /// metric added, as a map from key to sum does; its sorted rows read back from a spilled
        /// run equal the rows it gives in memory (a row written by parts is encoded as a row).
        #[test]
        fn rolled_up_bucket_matches_a_map_and_its_spilled_run(
            rows in proptest::collection::vec(
                ((0i64..3), proptest::collection::vec(dim_value(), 0..4), -5i64..5), 0..80),
            capacity in 0usize..40,
        ) {
            let ranks: Vec<Vec<u32>> = (0..4).map(|_| (0..6).collect()).collect();
            let mut expected: HashMap<Key, i64> = HashMap::new();
            let fill = |bucket: &mut Bucket| {
                for (time, dims, v) in &rows {
                    bucket.add(*time, &mut dims.clone(), |_| Acc::Long(Some(0)), |accs| {
                        if let Acc::Long(Some(x)) = &mut accs[0] {
                            *x += v;
                        }
                    });
                }
            };
            for (time, dims, v) in &rows {
                *expected.entry(Key { time: *time, dims: dims.clone() }).or_default() += v;
            }
            let mut bucket = Bucket::with_capacity(1, capacity, 3, true);
            fill(&mut bucket);
            prop_assert_eq!(bucket.len(), expected.len());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("run");
            prop_assert_eq!(bucket.spill(&path, &ranks).unwrap(), expected.len() as u64);
            prop_assert!(bucket.is_empty());
            // Filled again after the spill: the same rows, from memory that was kept.
            fill(&mut bucket);
            let in_memory: Vec<(Key, Vec<Acc>)> = bucket.into_sorted(&ranks).collect();
            let from_run: Vec<(Key, Vec<Acc>)> =
                crate::spill::RunReader::open(&path).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(&in_memory, &from_run);
            let got: HashMap<Key, i64> = in_memory
                .into_iter()
                .map(|(k, a)| match a.as_slice() {
                    [Acc::Long(Some(x))] => (k, *x),
                    other => panic!("{other:?}"),
                })
                .collect();
            prop_assert_eq!(got, expected);
        }
    }

    /// A spec of one string dimension `k` and a count, rolled up, holding `max_rows` rows in
    /// memory; and its record of key `k{n}`.
    fn counting_spec(max_rows: u64) -> IngestSpec {
        let task = serde_json::json!({"type": "index", "spec": {
            "dataSchema": {"dataSource": "d", "timestampSpec": {"column": "t", "format": "millis"},
                "dimensionsSpec": {"dimensions": ["k"]},
                "metricsSpec": [{"type": "count", "name": "c"}],
                "granularitySpec": {"segmentGranularity": "day", "queryGranularity": "none"}},
            "ioConfig": {"type": "index", "inputSource": {"type": "inline", "data": ""}, "inputFormat": {"type": "json"}},
            "tuningConfig": {"maxRowsInMemory": max_rows}}});
        IngestSpec::from_task(&task).unwrap()
    }

    fn keyed_record(n: usize) -> Record {
        let v = serde_json::json!({"t": 1000, "k": format!("k{n}")});
        let Value::Object(m) = v else { unreachable!() };
        Record::Json(m)
    }

    /// Under rollup, a spill after which the table had combined under a tenth of the rows turns
    /// it off: rows are then held as they come and combined when sorted. Rows that do roll up
    /// keep it on.
    #[test]
    fn rows_that_barely_roll_up_are_then_combined_only_when_sorted() {
        let spec = counting_spec(10);
        let record = keyed_record;
        let at = At { file: "f", line: 1 };
        // Every row a new key, then each key five times over.
        for (repeats, off) in [(1, true), (5, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = RowBuilder::new(&spec, Some(dir.path()));
            // Up to the first spill (ten rows held after rollup).
            for i in 0..10 * repeats {
                assert!(b.add(&record(i / repeats), &at).is_ok());
                b.spill_if_full().unwrap();
                if !b.runs.is_empty() {
                    break;
                }
            }
            assert_eq!(b.runs.values().map(Vec::len).sum::<usize>(), 1, "{repeats} repeats");
            assert_eq!(b.combine_at_sort, off, "{repeats} repeats");
            for _ in 0..5 {
                assert!(b.add(&record(0), &at).is_ok());
            }
            // Held as they came, or combined into one row.
            assert_eq!(b.rows_in_memory(), if off { 5 } else { 1 }, "{repeats} repeats");
            b.finish().unwrap();
            let runs: usize = b.runs.values().map(Vec::len).sum();
            assert_eq!(
                runs,
                if off { 2 } else { 1 },
                "{repeats} repeats: what is held uncombined is spilled"
            );
        }
    }

    /// The same judgement made early in a run, when memory holds many more rows than the check
    /// needs: rows that barely roll up stop using the table after `ROLLUP_CHECK_ROWS` rows, and
    /// the merge of the runs still combines every row.
    #[test]
    fn rollup_is_judged_early_in_a_long_run_and_rows_still_combine() {
        let spec = counting_spec(1_000_000);
        let record = keyed_record;
        let at = At { file: "f", line: 1 };
        // Distinct keys, then each key twice over.
        for (repeats, off) in [(1, true), (2, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = RowBuilder::new(&spec, Some(dir.path()));
            let n = ROLLUP_CHECK_ROWS;
            for i in 0..n {
                assert!(b.add(&record(i / repeats), &at).is_ok());
            }
            assert!(b.runs.is_empty(), "no spill yet");
            assert_eq!(b.combine_at_sort, off, "{repeats} repeats");
            // Key 0 three more times: held as they came, or combined into its row.
            for _ in 0..3 {
                assert!(b.add(&record(0), &at).is_ok());
            }
            assert_eq!(b.rows_in_memory(), n / repeats + if off { 3 } else { 0 });
            b.finish().unwrap();
            let ranks: Vec<Vec<u32>> = b.dicts.iter().map(Dict::ranks).collect();
            let mut sources: Vec<Box<dyn Iterator<Item = Result<crate::spill::Row, String>>>> = Vec::new();
            for p in b.runs.values().flatten() {
                sources.push(Box::new(crate::spill::RunReader::open(p).unwrap()));
            }
            for (_, bucket) in std::mem::take(&mut b.buckets) {
                sources.push(Box::new(bucket.into_sorted(&ranks).map(Ok)));
            }
            let rows: Vec<crate::spill::Row> = crate::spill::Merge::new(sources, &b.dicts, &spec.metrics, true)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(rows.len(), n / repeats, "{repeats} repeats: one row per key");
            let counts: Vec<Option<i64>> = rows
                .iter()
                .map(|(_, accs)| match accs[0] {
                    Acc::Long(c) => c,
                    _ => None,
                })
                .collect();
            let key0 = b.dicts[0].id("k0");
            let at0 = rows.iter().position(|(k, _)| k.dims == [DimValue::Str(key0)]).unwrap();
            assert_eq!(counts[at0], Some(repeats as i64 + 3));
            let total: i64 = counts.iter().map(|c| c.unwrap()).sum();
            assert_eq!(total, n as i64 + 3);
        }
    }
}
