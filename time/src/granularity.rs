//! Druid's granularities: the bucket (UTC) holding an instant, for segment allocation and
//! ingestion's segment intervals, and the truncation of row times by a query granularity.
//!
//! Accepted: the names `SECOND`, `MINUTE`, `FIVE_MINUTE`, `TEN_MINUTE`, `FIFTEEN_MINUTE`,
//! `THIRTY_MINUTE`, `HOUR`, `SIX_HOUR`, `EIGHT_HOUR`, `DAY`, `WEEK`, `MONTH`, `QUARTER`, `YEAR`,
//! `ALL`, `NONE` (one millisecond: no truncation) (any case), `{"type": "<name>"}`,
//! `{"type": "period", "period": "PT1H" | "P1D" | ...}`
//! for the periods those names stand for (UTC only), and `{"type": "duration", "duration": ms}`.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use crate::interval::Interval;

/// A bucketing of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// Fixed length in milliseconds, aligned to the epoch.
    Fixed(i64),
    Week,
    Month,
    Quarter,
    Year,
    All,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Druid's granularity names, the ISO period each stands for, and the bucketing.
const NAMED: [(&str, &str, Granularity); 16] = [
    ("NONE", "", Granularity::Fixed(1)),
    ("SECOND", "PT1S", Granularity::Fixed(1000)),
    ("MINUTE", "PT1M", Granularity::Fixed(MINUTE)),
    ("FIVE_MINUTE", "PT5M", Granularity::Fixed(5 * MINUTE)),
    ("TEN_MINUTE", "PT10M", Granularity::Fixed(10 * MINUTE)),
    ("FIFTEEN_MINUTE", "PT15M", Granularity::Fixed(15 * MINUTE)),
    ("THIRTY_MINUTE", "PT30M", Granularity::Fixed(30 * MINUTE)),
    ("HOUR", "PT1H", Granularity::Fixed(HOUR)),
    ("SIX_HOUR", "PT6H", Granularity::Fixed(6 * HOUR)),
    ("EIGHT_HOUR", "PT8H", Granularity::Fixed(8 * HOUR)),
    ("DAY", "P1D", Granularity::Fixed(DAY)),
    ("WEEK", "P1W", Granularity::Week),
    ("MONTH", "P1M", Granularity::Month),
    ("QUARTER", "P3M", Granularity::Quarter),
    ("YEAR", "P1Y", Granularity::Year),
    ("ALL", "", Granularity::All),
];

impl Granularity {
    pub fn parse(v: &Value) -> Result<Granularity, String> {
        match v {
            Value::String(s) => Granularity::by_name(s),
            Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                Some("period") => {
                    if o.get("timeZone").and_then(Value::as_str).is_some_and(|z| z != "UTC") {
                        return Err("only UTC period granularities are supported".into());
                    }
                    let p = o
                        .get("period")
                        .and_then(Value::as_str)
                        .ok_or("period granularity needs 'period'")?;
                    Granularity::by_period(p)
                }
                Some("duration") => match o.get("duration").and_then(Value::as_i64) {
                    Some(ms) if ms > 0 => Ok(Granularity::Fixed(ms)),
                    _ => Err("duration granularity needs a positive 'duration' in ms".into()),
                },
                Some(name) => Granularity::by_name(name),
                None => Err("granularity object needs a 'type'".into()),
            },
            _ => Err(format!("invalid granularity {v}")),
        }
    }

    fn by_name(s: &str) -> Result<Granularity, String> {
        NAMED
            .iter()
            .find(|(name, _, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, _, g)| *g)
            .ok_or_else(|| format!("unknown granularity [{s}]"))
    }

    fn by_period(p: &str) -> Result<Granularity, String> {
        NAMED
            .iter()
            .find(|(_, period, _)| !period.is_empty() && *period == p)
            .map(|(_, _, g)| *g)
            .ok_or_else(|| format!("unsupported period granularity [{p}]"))
    }

    /// Roughly how long one bucket lasts, to order granularities as Druid's `isFinerThan` does
    /// (a month counts as 28 days, a quarter 90, a year 365).
    pub fn typical_ms(&self) -> i64 {
        match *self {
            Granularity::Fixed(ms) => ms,
            Granularity::Week => 7 * DAY,
            Granularity::Month => 28 * DAY,
            Granularity::Quarter => 90 * DAY,
            Granularity::Year => 365 * DAY,
            Granularity::All => i64::MAX,
        }
    }

    /// Whether buckets of `self` are no longer than those of `other`: a query granularity must
    /// be no coarser than its segment granularity.
    pub fn is_no_coarser_than(&self, other: &Granularity) -> bool {
        self.typical_ms() <= other.typical_ms()
    }

    /// The start of the bucket holding `t`: the truncated time Druid stores for a row under a
    /// query granularity (`ALL` truncates to the start of eternity, as Druid's does). `t`
    /// itself when the bucket reaches out of the stored range.
    pub fn truncate(&self, t: i64) -> i64 {
        self.bucket(t).map(|b| b.start).unwrap_or(t)
    }

    /// The bucket holding `t`, or `None` when that bucket reaches outside the instants raftlord
    /// stores ([`is_valid_instant`](crate::interval::is_valid_instant)).
    pub fn bucket(&self, t: i64) -> Option<Interval> {
        let month_start = |y: i32, m: u32| {
            NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc().timestamp_millis())
        };
        let months = |step: u32| {
            let d = Utc.timestamp_millis_opt(t).single()?;
            let first = (d.month0() / step) * step;
            let (y, m) = (d.year(), first + 1);
            let (ny, nm) = if m + step > 12 {
                (y.checked_add(1)?, m + step - 12)
            } else {
                (y, m + step)
            };
            Some(Interval {
                start: month_start(y, m)?,
                end: month_start(ny, nm)?,
            })
        };
        let fixed = |len: i64, offset: i64| {
            let start = t
                .checked_sub(offset)?
                .div_euclid(len)
                .checked_mul(len)?
                .checked_add(offset)?;
            Some(Interval {
                start,
                end: start.checked_add(len)?,
            })
        };
        let bucket = match *self {
            Granularity::Fixed(len) => fixed(len, 0),
            // Weeks start on Monday; 1970-01-05 was a Monday.
            Granularity::Week => fixed(7 * DAY, 4 * DAY),
            Granularity::Month => months(1),
            Granularity::Quarter => months(3),
            Granularity::Year => months(12),
            Granularity::All => Some(Interval::ETERNITY),
        };
        bucket.filter(Interval::is_valid)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::interval::parse_instant;

    fn bucket(g: Value, t: &str) -> String {
        Granularity::parse(&g)
            .unwrap()
            .bucket(parse_instant(t).unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn buckets_match_druids_utc_granularities() {
        let t = "2024-05-15T13:45:10.000Z";
        assert_eq!(
            bucket(json!("HOUR"), t),
            "2024-05-15T13:00:00.000Z/2024-05-15T14:00:00.000Z"
        );
        assert_eq!(
            bucket(json!("day"), t),
            "2024-05-15T00:00:00.000Z/2024-05-16T00:00:00.000Z"
        );
        assert_eq!(
            bucket(json!("WEEK"), t),
            "2024-05-13T00:00:00.000Z/2024-05-20T00:00:00.000Z"
        );
        assert_eq!(
            bucket(json!("MONTH"), t),
            "2024-05-01T00:00:00.000Z/2024-06-01T00:00:00.000Z"
        );
        assert_eq!(
            bucket(json!("QUARTER"), t),
            "2024-04-01T00:00:00.000Z/2024-07-01T00:00:00.000Z"
        );
        assert_eq!(
            bucket(json!({"type": "period", "period": "P1Y"}), t),
            "2024-01-01T00:00:00.000Z/2025-01-01T00:00:00.000Z"
        );
        assert_eq!(
            bucket(json!("MONTH"), "2024-12-31T23:00:00Z"),
            "2024-12-01T00:00:00.000Z/2025-01-01T00:00:00.000Z"
        );
        assert!(Granularity::parse(&json!("FORTNIGHT")).is_err());
        assert!(Granularity::parse(&json!({"type": "period", "period": "P2D"})).is_err());
    }

    #[test]
    fn a_bucket_past_the_stored_range_is_none_not_an_overflow() {
        let end = crate::interval::MAX_INSTANT;
        assert_eq!(Granularity::parse(&json!("DAY")).unwrap().bucket(end), None);
        let huge = Granularity::parse(&json!({"type": "duration", "duration": i64::MAX})).unwrap();
        assert_eq!(huge.bucket(end), None);
        assert_eq!(huge.bucket(i64::MIN), None);
        assert_eq!(Granularity::Week.bucket(i64::MIN), None);
        assert_eq!(Granularity::Year.bucket(crate::interval::MAX_PRINTABLE), None);
        assert_eq!(Granularity::All.bucket(0), Some(Interval::ETERNITY));
    }
}
