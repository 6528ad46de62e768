//! Input records to Druid rows: the time, the dimension values and the metrics, grouped into
//! segment buckets and, under rollup, combined by truncated time and dimensions.
//!
//! Row outcomes are counted as Druid counts them ([`RowStats`]): a row whose time is missing or
//! unparseable, or a line that does not parse, is `unparseable`; a row with a dimension value
//! that does not convert to the dimension's type is `processedWithError` (the value is stored as
//! null); a row outside `granularitySpec.intervals` is `thrownAway`.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use raftlord_time::interval::Interval;

use crate::aggregate::{as_double, as_long, as_text, Acc};
use crate::format::{FieldRef, Record};
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

/// The distinct strings of one dimension, each stored once.
#[derive(Debug, Default)]
pub struct Dict {
    index: std::collections::HashMap<Box<str>, u32, Hasher>,
    values: Vec<Box<str>>,
}

impl Dict {
    /// The id of `s`, added when new.
    pub fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.values.len() as u32;
        self.values.push(s.into());
        self.index.insert(s.into(), i);
        i
    }

    pub fn get(&self, id: u32) -> &str {
        self.values.get(id as usize).map_or("", |s| s)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// For each id, its position among the strings in sorted order.
    pub fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.values[*a as usize].cmp(&self.values[*b as usize]));
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

/// The rows of one segment bucket (one interval of `segmentGranularity`).
#[derive(Debug, Default)]
pub struct Bucket {
    rolled: HashMap<Key, Vec<Acc>, Hasher>,
    plain: Vec<(Key, Vec<Acc>)>,
}

impl Bucket {
    pub fn len(&self) -> usize {
        self.rolled.len() + self.plain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's key, in no order.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.rolled.keys().chain(self.plain.iter().map(|(k, _)| k))
    }

    /// The rows sorted by time, then dimensions (`ranks[i]`: the string order of dimension
    /// `i`, from [`Dict::ranks`]).
    ///
    /// Rows are sorted through a small key per row (the time and the leading dimensions packed
    /// into integers, [`Packer`]) and only rows whose keys tie are compared in full; then moved
    /// once into their order.
    pub fn into_sorted(mut self, ranks: &[Vec<u32>]) -> Vec<(Key, Vec<Acc>)> {
        self.drain_sorted(ranks)
    }

    /// [`Bucket::into_sorted`], leaving the bucket empty with its table's capacity, so that
    /// the next rows fill a table that is already grown.
    pub fn drain_sorted(&mut self, ranks: &[Vec<u32>]) -> Vec<(Key, Vec<Acc>)> {
        let mut rows: Vec<(Key, Vec<Acc>)> = self.rolled.drain().collect();
        rows.append(&mut self.plain);
        let packer = Packer::new(ranks);
        let mut order: Vec<(i64, u128, u32)> = rows
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.time, packer.pack(&k.dims, ranks), i as u32))
            .collect();
        order.sort_unstable_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| crate::spill::cmp_keys(&rows[a.2 as usize].0, &rows[b.2 as usize].0, ranks))
        });
        let mut perm: Vec<u32> = order.into_iter().map(|(_, _, i)| i).collect();
        // In place, cycle by cycle: position i takes the row that was at perm[i].
        for start in 0..perm.len() {
            let mut at = start;
            while perm[at] as usize != at {
                let next = perm[at] as usize;
                perm[at] = at as u32;
                if next == start {
                    break;
                }
                rows.swap(at, next);
                at = next;
            }
        }
        rows
    }
}

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
        let Some(dir) = self.spill_dir.clone() else {
            return Ok(());
        };
        if (self.in_memory as u64) < self.spec.max_rows_in_memory
            && self.in_memory_bytes < self.spec.max_bytes_in_memory
        {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create [{}]: {e}", dir.display()))?;
        let ranks: Vec<Vec<u32>> = self.dicts.iter().map(Dict::ranks).collect();
        for (interval, mut bucket) in std::mem::take(&mut self.buckets) {
            let runs = self.runs.entry(interval).or_default();
            let path = dir.join(format!("{}-{}-{}.run", interval.start, interval.end, runs.len()));
            let n = crate::spill::write_run(&path, bucket.drain_sorted(&ranks).into_iter())?;
            *self.spilled_rows.entry(interval).or_default() += n;
            runs.push(path);
            if self
                .spare
                .as_ref()
                .is_none_or(|s| s.rolled.capacity() < bucket.rolled.capacity())
            {
                self.spare = Some(bucket);
            }
        }
        self.in_memory = 0;
        self.in_memory_bytes = 0;
        Ok(())
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
        let time = match record.get(&spec.timestamp.column) {
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
        let mut dims: Vec<DimValue> = Vec::with_capacity(self.dims.len());
        for (d, dict) in self.dims.iter_mut().zip(self.dicts.iter_mut()) {
            let f = record.get(&d.name);
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
        let key = Key { time: truncated, dims };
        let spare = &mut self.spare;
        // The first table is made as large as memory allows at once (its slots stay untouched,
        // and so unpaid, until rows fill them) instead of growing by doubling; later tables
        // reuse the one emptied by the last spill.
        let first = self.buckets.is_empty() && self.runs.is_empty();
        let room = (spec.max_bytes_in_memory / row_bytes.max(1)).min(spec.max_rows_in_memory) as usize;
        let b = self.buckets.entry(bucket).or_insert_with(|| match spare.take() {
            Some(b) => b,
            None if first && spec.rollup => Bucket {
                rolled: HashMap::with_capacity_and_hasher(room, Hasher::default()),
                plain: Vec::new(),
            },
            None => Bucket::default(),
        });
        let metrics = &spec.metrics;
        let fold = |accs: &mut Vec<Acc>| {
            for (m, acc) in metrics.iter().zip(accs.iter_mut()) {
                let input = match &m.field_name {
                    Some(f) => record.get(f),
                    None => FieldRef::Absent,
                };
                m.add(acc, time, &input);
            }
        };
        if spec.rollup {
            let before = b.rolled.len();
            let accs = b
                .rolled
                .entry(key)
                .or_insert_with(|| metrics.iter().map(|m| m.init()).collect());
            fold(accs);
            let added = b.rolled.len() - before;
            self.in_memory += added;
            self.in_memory_bytes += added as u64 * row_bytes;
        } else {
            let mut accs: Vec<Acc> = metrics.iter().map(|m| m.init()).collect();
            fold(&mut accs);
            b.plain.push((key, accs));
            self.in_memory += 1;
            self.in_memory_bytes += row_bytes;
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
            });
        }
    }
}

/// What one row held in memory costs: its key, metrics, and the table slot around them.
fn row_bytes(dims: &[DimValue], metrics: usize) -> u64 {
    use std::mem::size_of;
    let multi: usize = dims
        .iter()
        .map(|d| match d {
            DimValue::Multi(m) => m.len() * size_of::<u32>(),
            _ => 0,
        })
        .sum();
    (size_of::<(Key, Vec<Acc>)>() + std::mem::size_of_val(dims) + multi + metrics * size_of::<Acc>() + 16) as u64
}

fn declared(d: &Dimension) -> FoundDim {
    FoundDim {
        name: d.name.clone(),
        declared: Some(d.kind),
        saw_long: false,
        saw_double: false,
        saw_text: false,
        saw_multi: false,
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
        Record::Line(l) => truncate(l.to_json().to_string(), 1024),
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
            let mut bucket = Bucket::default();
            for (time, dims) in rows {
                bucket.plain.push((Key { time, dims }, Vec::new()));
            }
            let mut expected: Vec<Key> = bucket.plain.iter().map(|(k, _)| k.clone()).collect();
            expected.sort_by(|a, b| crate::spill::cmp_keys(a, b, &ranks));
            let got: Vec<Key> = bucket.into_sorted(&ranks).into_iter().map(|(k, _)| k).collect();
            prop_assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                prop_assert_eq!(crate::spill::cmp_keys(g, e, &ranks), std::cmp::Ordering::Equal, "{:?} vs {:?}", g, e);
            }
        }
    }
}
