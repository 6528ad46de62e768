//! The versioned timeline: which used segments are overshadowed.
//!
//! As Druid's `VersionedIntervalTimeline`: segments group into *entries* by interval and version;
//! an entry is *complete* when its partitions are (every core partition `0..n-1` of a numbered,
//! hashed, range or tombstone shard spec present; linear and `none` chunks always are). At every
//! instant the visible entry is the highest version among the complete entries covering it, so an
//! incomplete newer version never hides a complete older one. An entry is *fully overshadowed*
//! when no instant of it is visible: its interval lies inside the union of the complete entries
//! of strictly higher versions. Versions compare as strings, as in Druid.
//!
//! The pass sorts entries by version and sweeps once, keeping the union of higher complete
//! versions as disjoint ranges: O(n log n) per datasource.

use std::collections::{BTreeMap, HashSet};

use super::segment::{SegmentKey, ShardSpec};

/// One entry: an interval and version with the partitions present.
struct Entry<'a> {
    start: i64,
    end: i64,
    version: &'a str,
    complete: bool,
    keys: Vec<&'a SegmentKey>,
}

/// The keys of fully overshadowed segments among `segments` (one datasource's used segments,
/// in key order).
pub fn overshadowed<'a>(segments: impl IntoIterator<Item = (&'a SegmentKey, &'a ShardSpec)>) -> HashSet<SegmentKey> {
    let mut entries: Vec<Entry<'a>> = Vec::new();
    let mut partitions: Vec<(u32, Option<u32>)> = Vec::new();
    let flush = |entries: &mut Vec<Entry<'a>>, partitions: &mut Vec<(u32, Option<u32>)>| {
        if let Some(e) = entries.last_mut() {
            e.complete = complete(partitions);
        }
        partitions.clear();
    };
    for (key, shard) in segments {
        let same = entries
            .last()
            .is_some_and(|e| e.start == key.start && e.end == key.end && e.version == &*key.version);
        if !same {
            flush(&mut entries, &mut partitions);
            entries.push(Entry {
                start: key.start,
                end: key.end,
                version: &key.version,
                complete: false,
                keys: Vec::new(),
            });
        }
        let e = entries.last_mut().expect("pushed above");
        e.keys.push(key);
        partitions.push((shard.partition_num, shard.core_partitions));
    }
    flush(&mut entries, &mut partitions);

    entries.sort_by(|a, b| b.version.cmp(a.version));
    let mut covered = Coverage::default();
    let mut out = HashSet::new();
    let mut i = 0;
    while i < entries.len() {
        let j = i + entries[i..]
            .iter()
            .take_while(|e| e.version == entries[i].version)
            .count();
        for e in &entries[i..j] {
            if covered.contains(e.start, e.end) {
                out.extend(e.keys.iter().map(|k| (*k).clone()));
            }
        }
        for e in entries[i..j].iter().filter(|e| e.complete) {
            covered.add(e.start, e.end);
        }
        i = j;
    }
    out
}

/// Whether a set of chunks `(partitionNum, corePartitions)` is complete.
fn complete(chunks: &[(u32, Option<u32>)]) -> bool {
    let Some(core) = chunks.iter().filter_map(|(_, c)| *c).max() else {
        return !chunks.is_empty();
    };
    (0..core).all(|p| chunks.iter().any(|(n, _)| *n == p))
}

/// A union of half-open ranges, kept disjoint and merged where they touch.
#[derive(Default)]
struct Coverage {
    ranges: BTreeMap<i64, i64>,
}

impl Coverage {
    fn contains(&self, start: i64, end: i64) -> bool {
        if start >= end {
            return false;
        }
        self.ranges.range(..=start).next_back().is_some_and(|(_, e)| *e >= end)
    }

    fn add(&mut self, mut start: i64, mut end: i64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let absorbed: Vec<(i64, i64)> = self.ranges.range(start..=end).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in absorbed {
            self.ranges.remove(&s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(start: i64, end: i64, version: &str, partition: u32) -> SegmentKey {
        SegmentKey {
            start,
            end,
            version: version.into(),
            partition,
        }
    }

    fn run(segs: &[(SegmentKey, ShardSpec)]) -> HashSet<SegmentKey> {
        let mut sorted: Vec<&(SegmentKey, ShardSpec)> = segs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        overshadowed(sorted.into_iter().map(|(k, s)| (k, s)))
    }

    #[test]
    fn newer_complete_version_hides_older_only_where_it_covers() {
        let segs = vec![
            (key(0, 10, "v1", 0), ShardSpec::numbered(0, 1)),
            (key(0, 5, "v2", 0), ShardSpec::numbered(0, 1)),
            (key(5, 10, "v2", 0), ShardSpec::numbered(0, 2)),
        ];
        // v2 over [5,10) is incomplete (1 of 2), so v1 still shows there.
        assert!(run(&segs).is_empty());
        let mut segs = segs;
        segs.push((key(5, 10, "v2", 1), ShardSpec::numbered(1, 2)));
        assert_eq!(run(&segs), HashSet::from([key(0, 10, "v1", 0)]));
    }

    type Chunks = Vec<(u32, Option<u32>)>;

    /// Brute force: at each instant, the visible version is the highest complete one covering
    /// it; an entry is overshadowed when no instant of it shows its version.
    fn brute(segs: &[(SegmentKey, ShardSpec)]) -> HashSet<SegmentKey> {
        let entry_of = |k: &SegmentKey| (k.start, k.end, k.version.to_string());
        let mut entries: BTreeMap<(i64, i64, String), Chunks> = BTreeMap::new();
        for (k, s) in segs {
            entries
                .entry(entry_of(k))
                .or_default()
                .push((s.partition_num, s.core_partitions));
        }
        let complete_entries: Vec<&(i64, i64, String)> =
            entries.iter().filter(|(_, c)| complete(c)).map(|(e, _)| e).collect();
        let mut out = HashSet::new();
        for (k, _) in segs {
            let (s, e, v) = entry_of(k);
            let hidden = (s..e.max(s + 1)).all(|t| {
                complete_entries
                    .iter()
                    .any(|(cs, ce, cv)| *cs <= t && t < *ce && cv.as_str() > v.as_str())
            });
            if hidden && s < e {
                out.insert(k.clone());
            }
        }
        out
    }

    fn segment() -> impl Strategy<Value = (SegmentKey, ShardSpec)> {
        (0..10i64, 1..6i64, 0..4u8, 0..3u32, 1..3u32).prop_map(|(start, len, v, p, core)| {
            let p = p.min(core);
            (
                key(start, start + len, &format!("v{v}"), p),
                ShardSpec::numbered(p, core),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn overshadowed_matches_a_brute_force_sweep(segs in proptest::collection::vec(segment(), 0..25)) {
            // One shard spec per key, as in a real table.
            let mut by_key: BTreeMap<SegmentKey, ShardSpec> = BTreeMap::new();
            for (k, s) in segs { by_key.entry(k).or_insert(s); }
            let segs: Vec<(SegmentKey, ShardSpec)> = by_key.into_iter().collect();
            prop_assert_eq!(run(&segs), brute(&segs));
        }
    }
}
