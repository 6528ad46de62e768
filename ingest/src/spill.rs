//! Sorted runs on disk, so that memory stays bounded whatever the input size.
//!
//! When the rows held in memory reach `maxRowsInMemory`, each segment interval's rows are
//! sorted (time, then dimensions in Druid's order) and written to a run file: each row as a
//! length-prefixed postcard record. At the end, an interval's runs and its last in-memory rows
//! are merged into one sorted stream, rows with equal keys combined by their aggregators under
//! rollup ([`Merge`]). Dimension strings stay in memory, once per distinct value: they are the
//! dictionary the runs' ids refer to.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::aggregate::{Acc, AggregatorSpec};
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
            scratch: vec![0; 1024],
        })
    }

    pub fn push(&mut self, row: &Row) -> Result<(), String> {
        self.push_parts(row.0.time, &row.0.dims, &row.1)
    }

    /// [`RunWriter::push`] of a row given by parts, encoded exactly as its [`Row`].
    pub fn push_parts(&mut self, time: i64, dims: &[DimValue], accs: &[Acc]) -> Result<(), String> {
        let row = ((time, dims), accs);
        let len = loop {
            match postcard::to_slice(&row, &mut self.scratch) {
                Ok(bytes) => break bytes.len(),
                Err(postcard::Error::SerializeBufferFull) => {
                    let grown = self.scratch.len() * 2;
                    self.scratch.resize(grown, 0);
                }
                Err(e) => return Err(format!("cannot encode a row: {e}")),
            }
        };
        let len32 = u32::try_from(len).map_err(|_| format!("a row of {len} bytes is too long to spill"))?;
        self.w
            .write_all(&len32.to_le_bytes())
            .and_then(|_| self.w.write_all(&self.scratch[..len]))
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
        Some(postcard::from_bytes(&self.buf).map_err(|e| format!("[{}] holds a bad row: {e}", self.name)))
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
