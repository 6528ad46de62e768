//! Druid's `cost` balancer strategy: the joint cost of two segments, and a Historical's cost
//! profile, which answers "what would this segment cost on that Historical" without visiting
//! every segment the Historical holds.
//!
//! The joint cost of two segments with intervals X and Y is
//! `∫_X ∫_Y e^(-λ|x - y|) dy dx` with a half-life of 24 hours (`λ = ln 2 / 24 h`), doubled when
//! both belong to one datasource: segments close in time, and of one datasource, are queried
//! together and are better on different Historicals. A segment's placement cost on a
//! Historical is the sum of its joint costs with every segment the Historical holds or is
//! loading whose interval overlaps the segment's padded by 45 days (Druid's cut-off), less its
//! cost with itself when the Historical holds it already. Druid sums this segment by segment
//! (per distinct interval): with hourly segments, thousands of terms per Historical per
//! decision, which is why its runs take minutes at a million segments.
//!
//! The kernel is separable for disjoint intervals: for Y wholly after X,
//! `cost = (e^x1 - e^x0)(e^-y0 - e^-y1)` (in units of `1/λ`), so every segment of one day that
//! lies wholly after X costs, together, `(e^(x1-c) - e^(x0-c)) · Σ (e^-(y0-c) - e^-(y1-c))`,
//! one product per day, anchored at the day's start `c` so that no term can overflow; wholly
//! before X likewise, anchored at the day's latest end. A [`Profile`] keeps, per day, the
//! distinct intervals starting that day with their counts, and these two sums (kept up to date
//! as segments come and go). A query sums about 90 days' products and adds exactly, interval
//! by interval, only the days X itself overlaps.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::interval::{MAX_INSTANT, MIN_INSTANT};

const HOUR_MS: f64 = 3_600_000.0;
/// λ per hour: a half-life of 24 hours.
const LAMBDA: f64 = std::f64::consts::LN_2 / 24.0;
const INV_LAMBDA_SQUARE: f64 = 1.0 / (LAMBDA * LAMBDA);
/// Milliseconds per unit of `1/λ` (about 34.6 hours).
const MILLIS_FACTOR: f64 = HOUR_MS / LAMBDA;
/// Segments further apart than this are ignored (their joint cost is below 1e-13 of a
/// neighbour's).
const MAX_GAP_MS: i64 = 45 * DAY_MS;
const DAY_MS: i64 = 86_400_000;

/// `a - b` in units of `1/λ` (in floating point: eternity's bounds are a whole i64 apart).
fn units(a: i64, b: i64) -> f64 {
    (a as f64 - b as f64) / MILLIS_FACTOR
}

/// The joint cost of X = [0, x1) and Y = [y0, y1), in units of `1/λ`.
fn unit_cost(x1: f64, y0: f64, y1: f64) -> f64 {
    if x1 <= 0.0 || y1 <= y0 {
        return 0.0;
    }
    if y0 < 0.0 {
        // Symmetric: make the earlier-starting interval X.
        return unit_cost(y1 - y0, -y0, x1 - y0);
    }
    if y0 >= x1 {
        // Disjoint, Y after X: (e^x1 - 1)(e^-y0 - e^-y1), with small exponents only.
        return (x1 - y0).exp() - (x1 - y1).exp() - (-y0).exp() + (-y1).exp();
    }
    // Overlapping: X = A B [C], Y = B [C] with A = [0, y0), B the overlap, C the longer one's
    // tail; cost(X, Y) = cost(A, Y) + cost(B, B) + cost(B, C).
    let beta = x1.min(y1) - y0;
    let gamma = x1.max(y1) - y0;
    unit_cost(y0, y0, y1) + unit_cost(beta, beta, gamma) + 2.0 * (beta + (-beta).exp() - 1.0)
}

/// The joint cost of two intervals (start and end in milliseconds), as Druid's
/// `CostBalancerStrategy.intervalCost`.
pub fn interval_cost(a: (i64, i64), b: (i64, i64)) -> f64 {
    INV_LAMBDA_SQUARE * unit_cost(units(a.1, a.0), units(b.0, a.0), units(b.1, a.0))
}

/// The intervals a segment's cost is summed over: its own padded by [`MAX_GAP_MS`], or all of
/// time for an eternity segment.
fn window(x: (i64, i64)) -> (i64, i64) {
    if x.0 <= MIN_INSTANT && x.1 >= MAX_INSTANT {
        (i64::MIN, i64::MAX)
    } else {
        (x.0.saturating_sub(MAX_GAP_MS), x.1.saturating_add(MAX_GAP_MS))
    }
}

/// The distinct intervals starting on one day, their latest end, and their sums (see the
/// module docs).
#[derive(Debug, Clone, Default)]
struct Day {
    intervals: Vec<(i64, i64, u32)>,
    end: i64,
    /// `Σ e^-(s - start) - e^-(e - start)`, over the day's segments.
    after: f64,
    /// `Σ e^(e - end) - e^(s - end)`, over the day's segments.
    before: f64,
}

impl Day {
    fn after_term(start: i64, (s, e): (i64, i64)) -> f64 {
        (-units(s, start)).exp() - (-units(e, start)).exp()
    }

    fn before_term(end: i64, (s, e): (i64, i64)) -> f64 {
        units(e, end).exp() - units(s, end).exp()
    }

    /// Works the sums out again from the intervals.
    fn resum(&mut self, start: i64) {
        self.end = self.intervals.iter().map(|i| i.1).max().unwrap_or(start);
        (self.after, self.before) = (0.0, 0.0);
        for &(s, e, n) in &self.intervals {
            self.after += f64::from(n) * Self::after_term(start, (s, e));
            self.before += f64::from(n) * Self::before_term(self.end, (s, e));
        }
    }
}

/// What a set of segments on one Historical (all of them, or one datasource's) costs a
/// segment placed with them: the distinct intervals by the day they start.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    days: BTreeMap<i64, Day>,
    /// The longest interval ever added: how far before a window a day can reach into it.
    max_span: i64,
}

impl Profile {
    /// The profile of these intervals (one per segment).
    pub fn build(intervals: impl Iterator<Item = (i64, i64)>) -> Profile {
        let mut distinct: FxHashMap<(i64, i64), u32> = FxHashMap::default();
        for iv in intervals {
            *distinct.entry(iv).or_default() += 1;
        }
        let mut p = Profile::default();
        for ((s, e), n) in distinct {
            p.max_span = p.max_span.max(e.saturating_sub(s));
            p.days
                .entry(s.div_euclid(DAY_MS))
                .or_default()
                .intervals
                .push((s, e, n));
        }
        for (key, day) in &mut p.days {
            day.resum(key * DAY_MS);
        }
        p
    }

    /// Adds (`delta` > 0) or removes segments of one interval.
    pub fn add(&mut self, iv: (i64, i64), delta: i32) {
        self.max_span = self.max_span.max(iv.1.saturating_sub(iv.0));
        let key = iv.0.div_euclid(DAY_MS);
        let start = key * DAY_MS;
        let day = self.days.entry(key).or_default();
        let at = day.intervals.iter().position(|&(s, e, _)| (s, e) == iv);
        let had = at.map_or(0, |i| i64::from(day.intervals[i].2));
        let now = (had + i64::from(delta)).max(0);
        match at {
            Some(i) if now == 0 => {
                day.intervals.swap_remove(i);
            }
            Some(i) => day.intervals[i].2 = now as u32,
            None if now > 0 => day.intervals.push((iv.0, iv.1, now as u32)),
            None => return,
        }
        if day.intervals.is_empty() {
            self.days.remove(&key);
        } else if day.intervals.len() == 1 || iv.1 > day.end || (now == 0 && iv.1 == day.end) {
            // The latest end moved (or this is the day's first interval): sum again.
            day.resum(start);
        } else {
            let n = (now - had) as f64;
            day.after += n * Day::after_term(start, iv);
            day.before += n * Day::before_term(day.end, iv);
        }
    }

    /// The summed joint cost of a segment with interval `x` with every segment of the profile
    /// whose interval overlaps `x`'s window (its own included, if it is in the profile).
    pub fn cost(&self, x: (i64, i64)) -> f64 {
        let (lo, hi) = window(x);
        let first = lo.saturating_sub(self.max_span).div_euclid(DAY_MS);
        let last = hi.div_euclid(DAY_MS);
        let (x0, x1) = x;
        let mut total = 0.0;
        for (&key, day) in self.days.range(first..=last) {
            let start = key * DAY_MS;
            if start >= x1 {
                total += (units(x1, start).exp() - units(x0, start).exp()) * day.after;
                continue;
            }
            if day.end <= x0 {
                total += (units(day.end, x0).exp() - units(day.end, x1).exp()) * day.before;
                continue;
            }
            for &(s, e, n) in &day.intervals {
                if s < hi && e > lo {
                    total += f64::from(n) * unit_cost(units(x1, x0), units(s, x0), units(e, x0));
                }
            }
        }
        INV_LAMBDA_SQUARE * total
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: i64 = 3_600_000;

    /// The double integral by the midpoint rule, as an independent check of the closed form.
    fn integrated(a: (i64, i64), b: (i64, i64)) -> f64 {
        let steps = 400;
        let (da, db) = ((a.1 - a.0) as f64 / steps as f64, (b.1 - b.0) as f64 / steps as f64);
        let mut sum = 0.0;
        for i in 0..steps {
            let x = a.0 as f64 + (i as f64 + 0.5) * da;
            for j in 0..steps {
                let y = b.0 as f64 + (j as f64 + 0.5) * db;
                sum += (-LAMBDA * (x - y).abs() / HOUR_MS).exp();
            }
        }
        sum * (da / HOUR_MS) * (db / HOUR_MS)
    }

    fn brute(segments: &[(i64, i64)], x: (i64, i64)) -> f64 {
        let (lo, hi) = window(x);
        segments
            .iter()
            .filter(|(s, e)| *s < hi && *e > lo)
            .map(|s| interval_cost(x, *s))
            .sum()
    }

    #[test]
    fn an_interval_with_itself_costs_twice_beta_plus_e_to_minus_beta_minus_one() {
        // One day is ln 2 units: 2(β + e^-β - 1) / λ², in hours².
        let beta = std::f64::consts::LN_2;
        let want = INV_LAMBDA_SQUARE * 2.0 * (beta + (-beta).exp() - 1.0);
        let got = interval_cost((0, 24 * HOUR), (0, 24 * HOUR));
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }

    proptest! {
        /// The closed form equals the integral, whatever the overlap.
        #[test]
        fn the_joint_cost_is_the_integral_of_the_kernel(
            a0 in 0i64..200, al in 1i64..100, b0 in 0i64..200, bl in 1i64..100,
        ) {
            let a = (a0 * HOUR, (a0 + al) * HOUR);
            let b = (b0 * HOUR, (b0 + bl) * HOUR);
            let closed = interval_cost(a, b);
            let numeric = integrated(a, b);
            prop_assert!((closed - numeric).abs() <= 1e-3 * numeric.max(1e-9), "{closed} vs {numeric}");
            prop_assert!((closed - interval_cost(b, a)).abs() <= 1e-9 * closed.max(1e-9));
        }

        /// The profile's day sums give what summing every interval would, for intervals of
        /// any length anywhere around the one asked about, after additions and removals.
        #[test]
        fn a_profile_costs_what_the_sum_over_its_segments_does(
            segs in proptest::collection::vec((0i64..24 * 120, 1i64..24 * 40), 0..60),
            removed in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
            x0 in 0i64..24 * 120, xl in 1i64..24 * 10,
        ) {
            let mut segs: Vec<(i64, i64)> = segs.into_iter().map(|(s, l)| (s * HOUR, (s + l) * HOUR)).collect();
            let mut p = Profile::build(segs.iter().copied());
            for r in removed {
                if segs.is_empty() {
                    break;
                }
                let gone = segs.swap_remove(r.index(segs.len()));
                p.add(gone, -1);
            }
            p.add((5 * HOUR, 6 * HOUR), 1);
            segs.push((5 * HOUR, 6 * HOUR));
            let x = (x0 * HOUR, (x0 + xl) * HOUR);
            let (got, want) = (p.cost(x), brute(&segs, x));
            prop_assert!((got - want).abs() <= 1e-9 * want.max(1.0), "{got} vs {want}");
        }
    }

    #[test]
    fn an_eternity_segment_costs_against_everything_and_nothing_overflows() {
        let segs = [
            (0, HOUR),
            (400 * 24 * HOUR, 401 * 24 * HOUR),
            (MIN_INSTANT, MAX_INSTANT),
        ];
        let p = Profile::build(segs.iter().copied());
        let x = (MIN_INSTANT, MAX_INSTANT);
        let (got, want) = (p.cost(x), brute(&segs, x));
        assert!(got.is_finite() && want.is_finite());
        assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
        let near = p.cost((HOUR, 2 * HOUR));
        assert!(near.is_finite() && near > 0.0);
    }
}
