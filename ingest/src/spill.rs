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
    let f = File::create(path).map_err(|e| format!("cannot create [{}]: {e}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut n = 0;
    for row in rows {
        let bytes = postcard::to_stdvec(&row).map_err(|e| format!("cannot encode a row: {e}"))?;
        w.write_all(&(bytes.len() as u32).to_le_bytes())
            .and_then(|_| w.write_all(&bytes))
            .map_err(|e| format!("cannot write [{}]: {e}", path.display()))?;
        n += 1;
    }
    w.flush()
        .map_err(|e| format!("cannot write [{}]: {e}", path.display()))?;
    Ok(n)
}

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
            r: BufReader::with_capacity(1 << 20, f),
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

/// Druid's row order, comparing strings themselves (runs were sorted at different times, so
/// only the strings, not any one moment's ranks, order them all).
pub fn cmp_keys(a: &Key, b: &Key, dicts: &[Dict]) -> Ordering {
    a.time.cmp(&b.time).then_with(|| {
        for i in 0..a.dims.len().max(b.dims.len()) {
            let x = a.dims.get(i).unwrap_or(&DimValue::Null);
            let y = b.dims.get(i).unwrap_or(&DimValue::Null);
            let o = match (x, y, dicts.get(i)) {
                (DimValue::Str(p), DimValue::Str(q), Some(d)) => d.get(*p).cmp(d.get(*q)),
                (DimValue::Multi(p), DimValue::Multi(q), Some(d)) => {
                    p.iter().map(|s| d.get(*s)).cmp(q.iter().map(|s| d.get(*s)))
                }
                _ => x.cmp_with(y, &[]),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    })
}

/// Merges sorted sources into one sorted stream; under rollup, rows with equal keys become one.
pub struct Merge<'a> {
    sources: Vec<Box<dyn Iterator<Item = Result<Row, String>> + 'a>>,
    heads: Vec<Option<Row>>,
    dicts: &'a [Dict],
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
        let heads = sources.iter().map(|_| None).collect();
        Merge {
            sources,
            heads,
            dicts,
            metrics,
            rollup,
            failed: false,
        }
    }

    /// Fills empty heads; an error ends the merge.
    fn fill(&mut self) -> Result<(), String> {
        for (i, s) in self.sources.iter_mut().enumerate() {
            if self.heads[i].is_none() {
                if let Some(r) = s.next() {
                    self.heads[i] = Some(r?);
                }
            }
        }
        Ok(())
    }

    /// The index of the smallest head (the earliest source on ties, keeping input order).
    fn smallest(&self) -> Option<usize> {
        let mut best: Option<(usize, &Key)> = None;
        for (i, h) in self.heads.iter().enumerate() {
            if let Some((k, _)) = h {
                if best.is_none_or(|(_, b)| cmp_keys(k, b, self.dicts) == Ordering::Less) {
                    best = Some((i, k));
                }
            }
        }
        best.map(|(i, _)| i)
    }
}

impl Iterator for Merge<'_> {
    type Item = Result<Row, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.fill() {
            self.failed = true;
            return Some(Err(e));
        }
        let i = self.smallest()?;
        let mut row = self.heads[i].take()?;
        if self.rollup {
            loop {
                if let Err(e) = self.fill() {
                    self.failed = true;
                    return Some(Err(e));
                }
                let Some(j) = self.smallest() else { break };
                let equal = self.heads[j]
                    .as_ref()
                    .is_some_and(|(k, _)| cmp_keys(k, &row.0, self.dicts) == Ordering::Equal);
                if !equal {
                    break;
                }
                if let Some((_, accs)) = self.heads[j].take() {
                    for ((m, into), other) in self.metrics.iter().zip(row.1.iter_mut()).zip(accs) {
                        m.combine(into, other);
                    }
                }
            }
        }
        Some(Ok(row))
    }
}
