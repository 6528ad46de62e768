//! Sorted runs on disk, so that memory stays bounded whatever the input size.
//!
//! When the rows held in memory reach `maxRowsInMemory`, each segment interval's rows are
//! sorted (time, then dimensions in Druid's order) and written to a run file: each row as a
//! length-prefixed record of fixed-width little-endian fields ([`encode_row`]). At the end, an interval's runs and its last in-memory rows
//! are merged into one sorted stream, rows with equal keys combined by their aggregators under
//! rollup ([`Merge`]). Dimension strings stay in memory, once per distinct value: they are the
//! dictionary the runs' ids refer to.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::aggregate::{Acc, AggregatorSpec, Scalar};
use crate::rows::{Dict, DimValue, Key};

/// A row: its key and its metrics.
pub type Row = (Key, Vec<Acc>);

/// Writes sorted rows to `path`; returns how many.
pub fn write_run(path: &Path, rows: impl Iterator<Item = Row>) -> Result<u64, String> {
    let mut w = RunWriter::create(path, 1 << 20)?;
    for row in rows {
        w.push(&row)?;
    }
    w.finish()
}

/// Writes a run row by row (several can be written at once, each with its own buffer).
pub struct RunWriter {
    w: BufWriter<File>,
    rows: u64,
    name: String,
    /// One row's encoding, reused from row to row (grown when a row does not fit).
    scratch: Vec<u8>,
}

impl RunWriter {
    /// A new run at `path`, written through a buffer of `buffer` bytes.
    pub fn create(path: &Path, buffer: usize) -> Result<RunWriter, String> {
        let f = File::create(path).map_err(|e| format!("cannot create [{}]: {e}", path.display()))?;
        Ok(RunWriter {
            w: BufWriter::with_capacity(buffer, f),
            rows: 0,
            name: path.display().to_string(),
            scratch: Vec::with_capacity(1024),
        })
    }

    pub fn push(&mut self, row: &Row) -> Result<(), String> {
        self.push_parts(row.0.time, &row.0.dims, &row.1)
    }

    /// [`RunWriter::push`] of a row given by parts, encoded exactly as its [`Row`].
    pub fn push_parts(&mut self, time: i64, dims: &[DimValue], accs: &[Acc]) -> Result<(), String> {
        self.scratch.clear();
        encode_row(time, dims, accs, &mut self.scratch);
        let len = self.scratch.len();
        let len32 = u32::try_from(len).map_err(|_| format!("a row of {len} bytes is too long to spill"))?;
        self.w
            .write_all(&len32.to_le_bytes())
            .and_then(|_| self.w.write_all(&self.scratch))
            .map_err(|e| format!("cannot write [{}]: {e}", self.name))?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes the run; returns how many rows it holds.
    pub fn finish(mut self) -> Result<u64, String> {
        self.w
            .flush()
            .map_err(|e| format!("cannot write [{}]: {e}", self.name))?;
        Ok(self.rows)
    }
}

/// The read buffer of one run. A merge reads every run of an interval at once, and a long input
/// makes hundreds of runs: 1 MiB each made a 5 GB input's merge hold 230 MiB of buffers.
const RUN_READ_BUFFER: usize = 64 * 1024;

/// Reads a run back, row by row.
pub struct RunReader {
    r: BufReader<File>,
    buf: Vec<u8>,
    name: String,
}

impl RunReader {
    pub fn open(path: &Path) -> Result<RunReader, String> {
        let f = File::open(path).map_err(|e| format!("cannot open [{}]: {e}", path.display()))?;
        Ok(RunReader {
            r: BufReader::with_capacity(RUN_READ_BUFFER, f),
            buf: Vec::new(),
            name: path.display().to_string(),
        })
    }
}

impl Iterator for RunReader {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => return Some(Err(format!("cannot read [{}]: {e}", self.name))),
        }
        self.buf.resize(u32::from_le_bytes(len) as usize, 0);
        if let Err(e) = self.r.read_exact(&mut self.buf) {
            return Some(Err(format!("cannot read [{}]: {e}", self.name)));
        }
        Some(decode_row(&self.buf).map_err(|e| format!("[{}] holds a bad row: {e}", self.name)))
    }
}

/// Appends a row's encoding to `out`: the time, the number of dimension values and each (a tag
/// byte, then the number, the string id, or the count and ids of a multi-value), the number of
/// accumulators and each (a tag byte, then its value; first/last: the time and a tagged
/// scalar, a string as its length and bytes). Integers are little-endian and fixed-width:
/// runs are written and read once, so encoding speed counts for more than their size.
pub fn encode_row(time: i64, dims: &[DimValue], accs: &[Acc], out: &mut Vec<u8>) {
    fn tagged(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&time.to_le_bytes());
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        match d {
            DimValue::Null => out.push(0),
            DimValue::Long(v) => tagged(out, 1, &v.to_le_bytes()),
            DimValue::Double(v) => tagged(out, 2, &v.to_bits().to_le_bytes()),
            DimValue::Str(id) => tagged(out, 3, &id.to_le_bytes()),
            DimValue::Multi(ids) => {
                tagged(out, 4, &(ids.len() as u32).to_le_bytes());
                for id in ids.iter() {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
    }
    out.extend_from_slice(&(accs.len() as u32).to_le_bytes());
    for a in accs {
        match a {
            Acc::Long(None) => out.push(0),
            Acc::Long(Some(v)) => tagged(out, 1, &v.to_le_bytes()),
            Acc::Double(None) => out.push(2),
            Acc::Double(Some(v)) => tagged(out, 3, &v.to_bits().to_le_bytes()),
            Acc::Timed(None) => out.push(4),
            Acc::Timed(Some(t)) => {
                tagged(out, 5, &t.0.to_le_bytes());
                match &t.1 {
                    Scalar::Null => out.push(0),
                    Scalar::Long(v) => tagged(out, 1, &v.to_le_bytes()),
                    Scalar::Double(v) => tagged(out, 2, &v.to_bits().to_le_bytes()),
                    Scalar::Str(s) => {
                        tagged(out, 3, &(s.len() as u32).to_le_bytes());
                        out.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
    }
}

/// Reads back a row written by [`encode_row`]; an error says what is missing or wrong.
pub fn decode_row(bytes: &[u8]) -> Result<Row, String> {
    let mut r = Bytes(bytes);
    let time = r.i64()?;
    let n = r.u32()? as usize;
    let mut dims = Vec::with_capacity(n.min(bytes.len()));
    for _ in 0..n {
        dims.push(match r.u8()? {
            0 => DimValue::Null,
            1 => DimValue::Long(r.i64()?),
            2 => DimValue::Double(f64::from_bits(r.i64()? as u64)),
            3 => DimValue::Str(r.u32()?),
            4 => {
                let k = r.u32()? as usize;
                let mut ids = Vec::with_capacity(k.min(bytes.len() / 4));
                for _ in 0..k {
                    ids.push(r.u32()?);
                }
                DimValue::Multi(Box::new(ids))
            }
            t => return Err(format!("unknown dimension value tag {t}")),
        });
    }
    let n = r.u32()? as usize;
    let mut accs = Vec::with_capacity(n.min(bytes.len()));
    for _ in 0..n {
        accs.push(match r.u8()? {
            0 => Acc::Long(None),
            1 => Acc::Long(Some(r.i64()?)),
            2 => Acc::Double(None),
            3 => Acc::Double(Some(f64::from_bits(r.i64()? as u64))),
            4 => Acc::Timed(None),
            5 => {
                let at = r.i64()?;
                let value = match r.u8()? {
                    0 => Scalar::Null,
                    1 => Scalar::Long(r.i64()?),
                    2 => Scalar::Double(f64::from_bits(r.i64()? as u64)),
                    3 => {
                        let k = r.u32()? as usize;
                        let s = r.take(k)?;
                        Scalar::Str(
                            String::from_utf8(s.to_vec()).map_err(|_| "a string that is not UTF-8".to_string())?,
                        )
                    }
                    t => return Err(format!("unknown scalar tag {t}")),
                };
                Acc::Timed(Some(Box::new((at, value))))
            }
            t => return Err(format!("unknown accumulator tag {t}")),
        });
    }
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the row", r.0.len()));
    }
    Ok((Key { time, dims }, accs))
}

/// A cursor over an encoded row.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the row ends early".to_string());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
}

/// Druid's row order. `ranks` are the dimensions' string ranks ([`Dict::ranks`]) taken once
/// every string is known (at the merge, after the last row is read), so that strings compare as
/// integers: equal ids are equal strings, and a lower rank a lower string.
pub fn cmp_keys(a: &Key, b: &Key, ranks: &[Vec<u32>]) -> Ordering {
    cmp_rows(a.time, &a.dims, b.time, &b.dims, ranks)
}

/// [`cmp_keys`] of keys given by parts.
pub fn cmp_rows(at: i64, a: &[DimValue], bt: i64, b: &[DimValue], ranks: &[Vec<u32>]) -> Ordering {
    static NONE: Vec<u32> = Vec::new();
    at.cmp(&bt).then_with(|| {
        for i in 0..a.len().max(b.len()) {
            let x = a.get(i).unwrap_or(&DimValue::Null);
            let y = b.get(i).unwrap_or(&DimValue::Null);
            let o = x.cmp_with(y, ranks.get(i).unwrap_or(&NONE));
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    })
}

/// A row from source `.0` (its index, which breaks ties: the earliest source first).
type Tagged = (usize, Result<Row, String>);

/// Merges sorted sources into one sorted stream (a k-way merge on a heap: a row costs
/// O(log sources) comparisons); under rollup, rows with equal keys become one, combined in
/// source order.
pub struct Merge<'a> {
    merged: std::iter::Peekable<Box<dyn Iterator<Item = Tagged> + 'a>>,
    ranks: std::sync::Arc<Vec<Vec<u32>>>,
    metrics: &'a [AggregatorSpec],
    rollup: bool,
    failed: bool,
}

impl<'a> Merge<'a> {
    pub fn new(
        sources: Vec<Box<dyn Iterator<Item = Result<Row, String>> + 'a>>,
        dicts: &'a [Dict],
        metrics: &'a [AggregatorSpec],
        rollup: bool,
    ) -> Merge<'a> {
        let ranks = std::sync::Arc::new(dicts.iter().map(Dict::ranks).collect::<Vec<_>>());
        let order = ranks.clone();
        // An error sorts first, so that it ends the merge as soon as it is read.
        let less = move |a: &Tagged, b: &Tagged| match (&a.1, &b.1) {
            (Ok((x, _)), Ok((y, _))) => match cmp_keys(x, y, &order) {
                Ordering::Equal => a.0 < b.0,
                o => o == Ordering::Less,
            },
            (Err(_), Ok(_)) => true,
            (Ok(_), Err(_)) => false,
            (Err(_), Err(_)) => a.0 < b.0,
        };
        let tagged = sources.into_iter().enumerate().map(|(i, s)| s.map(move |r| (i, r)));
        let merged: Box<dyn Iterator<Item = Tagged> + 'a> = Box::new(itertools::kmerge_by(tagged, less));
        Merge {
            merged: merged.peekable(),
            ranks,
            metrics,
            rollup,
            failed: false,
        }
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut row = match self.merged.next()?.1 {
            Ok(r) => r,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if self.rollup {
            while let Some((_, Ok((k, _)))) = self.merged.peek() {
                if cmp_keys(k, &row.0, &self.ranks) != Ordering::Equal {
                    break;
                }
                if let Some((_, Ok((_, accs)))) = self.merged.next() {
                    for ((m, into), other) in self.metrics.iter().zip(row.1.iter_mut()).zip(accs) {
                        m.combine(into, other);
                    }
                }
            }
        }
        Some(Ok(row))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn dim_value() -> impl Strategy<Value = DimValue> {
        prop_oneof![
            Just(DimValue::Null),
            any::<i64>().prop_map(DimValue::Long),
            any::<f64>().prop_map(DimValue::Double),
            any::<u32>().prop_map(DimValue::Str),
            proptest::collection::vec(any::<u32>(), 0..4).prop_map(|v| DimValue::Multi(Box::new(v))),
        ]
    }

    fn acc() -> impl Strategy<Value = Acc> {
        let scalar = prop_oneof![
            Just(Scalar::Null),
            any::<i64>().prop_map(Scalar::Long),
            any::<f64>().prop_map(Scalar::Double),
            ".{0,12}".prop_map(Scalar::Str),
        ];
        prop_oneof![
            any::<Option<i64>>().prop_map(Acc::Long),
            any::<Option<f64>>().prop_map(Acc::Double),
            proptest::option::of((any::<i64>(), scalar)).prop_map(|t| Acc::Timed(t.map(Box::new))),
        ]
    }

    /// Bitwise equality, so that NaN payloads count as equal to themselves.
    fn same(a: &Row, b: &Row) -> bool {
        let mut x = Vec::new();
        let mut y = Vec::new();
        encode_row(a.0.time, &a.0.dims, &a.1, &mut x);
        encode_row(b.0.time, &b.0.dims, &b.1, &mut y);
        x == y && a.0.dims.len() == b.0.dims.len() && a.1.len() == b.1.len()
    }

    proptest! {
        /// Every row reads back as written, and every shorter prefix of its encoding is refused
        /// rather than read as another row.
        #[test]
        fn rows_read_back_as_written_and_truncated_rows_are_refused(
            time in any::<i64>(),
            dims in proptest::collection::vec(dim_value(), 0..6),
            accs in proptest::collection::vec(acc(), 0..5),
        ) {
            let mut bytes = Vec::new();
            encode_row(time, &dims, &accs, &mut bytes);
            let row = (Key { time, dims: dims.clone() }, accs.clone());
            let back = decode_row(&bytes).unwrap();
            prop_assert!(same(&back, &row), "{:?} vs {:?}", back, row);
            let plain = dims.iter().all(|d| !matches!(d, DimValue::Double(_)))
                && accs.iter().all(|a| !matches!(a, Acc::Double(_) | Acc::Timed(_)));
            if plain {
                prop_assert_eq!(back, row);
            }
            for cut in 0..bytes.len() {
                prop_assert!(decode_row(&bytes[..cut]).is_err(), "a prefix of {} bytes read as a row", cut);
            }
            bytes.push(0);
            prop_assert!(decode_row(&bytes).is_err());
        }
    }
}
