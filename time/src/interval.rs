//! Time intervals as Druid writes them: half-open `[start, end)` in milliseconds (UTC), shown as
//! `2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z`.
//!
//! Parsing accepts what Druid users write: full ISO-8601 times with or without fraction or zone
//! offset, `YYYY-MM-DDTHH:MM`, `YYYY-MM-DDTHH`, dates, `YYYY-MM` and `YYYY`, separated by `/`.
//! Druid's "eternity" (`-146136543-09-08T08:23:32.096Z/146140482-04-24T15:36:27.903Z`) is read and
//! written with Druid's exact strings. Period forms (`2024-01-01/P1D`) are refused with a message
//! that says so.
//!
//! Every instant raftlord stores prints as ISO-8601 and parses back to itself: the years 0000 to
//! 9999 and eternity's two bounds ([`is_valid_instant`]). Parsing refuses anything else, and the
//! state machine's commands are checked against the same rule before they are proposed, so an
//! interval in the replicated log can always be read back.

use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Joda's smallest instant (`Long.MIN_VALUE / 2`), the start of Druid's eternity.
pub const MIN_INSTANT: i64 = i64::MIN / 2;
/// Joda's largest instant (`Long.MAX_VALUE / 2`), the end of Druid's eternity.
pub const MAX_INSTANT: i64 = i64::MAX / 2;
const MIN_INSTANT_ISO: &str = "-146136543-09-08T08:23:32.096Z";
const MAX_INSTANT_ISO: &str = "146140482-04-24T15:36:27.903Z";
/// `0000-01-01T00:00:00.000Z`, the earliest instant printed with a four-digit year.
pub const MIN_PRINTABLE: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest instant printed with a four-digit year.
pub const MAX_PRINTABLE: i64 = 253_402_300_799_999;

/// Whether `ms` is an instant raftlord stores: within the years 0000 to 9999, or one of
/// eternity's bounds. Exactly these print as ISO-8601 and parse back to themselves.
pub fn is_valid_instant(ms: i64) -> bool {
    ms == MIN_INSTANT || ms == MAX_INSTANT || (MIN_PRINTABLE..=MAX_PRINTABLE).contains(&ms)
}

/// A half-open interval `[start, end)` of milliseconds since the epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Interval {
    pub start: i64,
    pub end: i64,
}

/// Why an interval or a time did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    #[error("invalid interval [{0}]: expected <start>/<end> with ISO-8601 times, e.g. 2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z")]
    Malformed(String),
    #[error("invalid interval [{0}]: ISO-8601 periods are not supported here; give an explicit <start>/<end>")]
    Period(String),
    #[error("invalid interval [{0}]: the end is before the start")]
    EndBeforeStart(String),
    #[error("invalid time [{0}]: expected an ISO-8601 time such as 2024-01-01T00:00:00.000Z")]
    Time(String),
    #[error("time [{0}] is out of range: times must lie in the years 0000 to 9999 (or be one of eternity's bounds, {MIN_INSTANT_ISO} and {MAX_INSTANT_ISO})")]
    OutOfRange(String),
}

impl Interval {
    pub const ETERNITY: Interval = Interval {
        start: MIN_INSTANT,
        end: MAX_INSTANT,
    };

    /// An interval from its bounds; `None` when `end < start`.
    pub fn new(start: i64, end: i64) -> Option<Interval> {
        (start <= end).then_some(Interval { start, end })
    }

    /// Whether this interval may be stored: both bounds valid instants ([`is_valid_instant`])
    /// and `start <= end`.
    pub fn is_valid(&self) -> bool {
        is_valid_instant(self.start) && is_valid_instant(self.end) && self.start <= self.end
    }

    /// `Ok` when the interval may be stored, else a message naming it and the rule.
    pub fn check(&self) -> Result<(), String> {
        if self.is_valid() {
            Ok(())
        } else {
            Err(format!(
                "interval [{}/{}] is out of range: its bounds must lie in the years 0000 to 9999 (or be eternity's bounds) and the start must not be after the end",
                iso(self.start),
                iso(self.end)
            ))
        }
    }

    /// Parses `start/end`.
    pub fn parse(s: &str) -> Result<Interval, IntervalError> {
        Interval::parse_with(s, '/')
    }

    /// Parses `start<sep>end`, for URL forms that write `_` instead of `/`.
    pub fn parse_with(s: &str, sep: char) -> Result<Interval, IntervalError> {
        let malformed = || IntervalError::Malformed(s.to_string());
        let (a, b) = s.split_once(sep).ok_or_else(malformed)?;
        if a.starts_with('P') || b.starts_with('P') {
            return Err(IntervalError::Period(s.to_string()));
        }
        let instant = |t: &str| match parse_instant(t) {
            Err(IntervalError::OutOfRange(t)) => Err(IntervalError::OutOfRange(t)),
            other => other.map_err(|_| malformed()),
        };
        let start = instant(a)?;
        let end = instant(b)?;
        Interval::new(start, end).ok_or_else(|| IntervalError::EndBeforeStart(s.to_string()))
    }

    /// Parses `start/end` or, as URL parameters write it, `start_end`.
    pub fn parse_url(s: &str) -> Result<Interval, IntervalError> {
        Interval::parse(s).or_else(|e| Interval::parse_with(s, '_').map_err(|_| e))
    }

    pub fn overlaps(&self, o: &Interval) -> bool {
        self.start < o.end && o.start < self.end
    }

    /// Whether `o` lies within this interval.
    pub fn contains(&self, o: &Interval) -> bool {
        self.start <= o.start && o.end <= self.end
    }

    pub fn contains_instant(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }

    /// Length in milliseconds.
    pub fn duration_ms(&self) -> i64 {
        self.end.saturating_sub(self.start)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", iso(self.start), iso(self.end))
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Interval::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Druid's ISO-8601 rendering of an instant (`2024-01-02T03:04:05.678Z`), with eternity's
/// bounds written as Druid writes them.
pub fn iso(ms: i64) -> String {
    match ms {
        MIN_INSTANT => MIN_INSTANT_ISO.to_string(),
        MAX_INSTANT => MAX_INSTANT_ISO.to_string(),
        _ => match Utc.timestamp_millis_opt(ms).single() {
            Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => ms.to_string(),
        },
    }
}

/// Parses one ISO-8601 instant in the forms Druid users write (see the module docs); an
/// instant outside the stored range ([`is_valid_instant`]) is refused.
pub fn parse_instant(s: &str) -> Result<i64, IntervalError> {
    let ms = parse_any_instant(s)?;
    if is_valid_instant(ms) {
        Ok(ms)
    } else {
        Err(IntervalError::OutOfRange(s.to_string()))
    }
}

fn parse_any_instant(s: &str) -> Result<i64, IntervalError> {
    match s {
        MIN_INSTANT_ISO => return Ok(MIN_INSTANT),
        MAX_INSTANT_ISO => return Ok(MAX_INSTANT),
        _ => {}
    }
    let naive = |n: NaiveDateTime| n.and_utc().timestamp_millis();
    let date = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(naive);
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc).timestamp_millis());
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(d) = DateTime::parse_from_str(s, f) {
            return Ok(d.with_timezone(&Utc).timestamp_millis());
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(naive(n));
        }
    }
    let t = if let Some(hour) = s
        .strip_suffix('Z')
        .unwrap_or(s)
        .split_once('T')
        .filter(|(_, h)| h.len() == 2)
    {
        let (d, h) = hour;
        let h: u32 = h.parse().map_err(|_| IntervalError::Time(s.into()))?;
        NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(h, 0, 0))
            .map(naive)
    } else if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        date(d)
    } else if let Ok(d) = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d") {
        date(d)
    } else if s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit()) {
        NaiveDate::parse_from_str(&format!("{s}-01-01"), "%Y-%m-%d")
            .ok()
            .and_then(date)
    } else {
        None
    };
    t.ok_or_else(|| IntervalError::Time(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_druid_users_write_and_prints_druids_form() {
        let day = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z";
        for s in [
            day,
            "2024-01-01/2024-01-02",
            "2024-01-01T00:00:00Z/2024-01-02T00:00:00Z",
            "2024-01-01T00/2024-01-02T00",
            "2024-01-01T00:00/2024-01-02T00:00",
            "2024-01-01T02:00:00+02:00/2024-01-02T00:00:00.000Z",
        ] {
            assert_eq!(Interval::parse(s).unwrap().to_string(), day, "{s}");
        }
        assert_eq!(
            Interval::parse("2024/2025").unwrap().to_string(),
            "2024-01-01T00:00:00.000Z/2025-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Interval::parse("2024-02/2024-03").unwrap().to_string(),
            "2024-02-01T00:00:00.000Z/2024-03-01T00:00:00.000Z"
        );
        let eternity = "-146136543-09-08T08:23:32.096Z/146140482-04-24T15:36:27.903Z";
        assert_eq!(Interval::parse(eternity).unwrap(), Interval::ETERNITY);
        assert_eq!(Interval::ETERNITY.to_string(), eternity);
    }

    #[test]
    fn refuses_malformed_periods_and_reversed_intervals() {
        assert!(matches!(
            Interval::parse("2024-01-01"),
            Err(IntervalError::Malformed(_))
        ));
        assert!(matches!(
            Interval::parse("yesterday/today"),
            Err(IntervalError::Malformed(_))
        ));
        assert!(matches!(
            Interval::parse("2024-01-01/P1D"),
            Err(IntervalError::Period(_))
        ));
        assert!(matches!(
            Interval::parse("2024-01-02/2024-01-01"),
            Err(IntervalError::EndBeforeStart(_))
        ));
        assert!(serde_json::from_str::<Interval>("\"2024-13-01/2024-01-01\"").is_err());
    }

    #[test]
    fn instants_out_of_the_printable_range_are_refused_not_stored() {
        // Found by feeding segmentAllocate eternity's end with a DAY granularity: the bucket
        // printed as raw milliseconds, and no node could read its log back.
        let past_end = "146140482-04-24T15:36:27.903Z/146140482-04-25T00:00:00.000Z";
        assert!(Interval::parse(past_end).is_err());
        assert!(matches!(
            parse_instant("+10000-01-01T00:00:00Z"),
            Err(IntervalError::Time(_)) | Err(IntervalError::OutOfRange(_))
        ));
        assert!(!Interval {
            start: MAX_INSTANT - 5,
            end: MAX_INSTANT
        }
        .is_valid());
        assert!(Interval::ETERNITY.is_valid());
        assert!(!Interval { start: 10, end: 5 }.is_valid());
        assert_eq!(iso(MIN_PRINTABLE), "0000-01-01T00:00:00.000Z");
        assert_eq!(iso(MAX_PRINTABLE), "9999-12-31T23:59:59.999Z");
        assert!(!is_valid_instant(MAX_PRINTABLE + 1) && !is_valid_instant(MIN_PRINTABLE - 1));
    }

    proptest::proptest! {
        #[test]
        fn every_valid_instant_prints_and_parses_back_to_itself(
            ms in proptest::prop_oneof![
                MIN_PRINTABLE..=MAX_PRINTABLE,
                proptest::strategy::Just(MIN_INSTANT),
                proptest::strategy::Just(MAX_INSTANT),
                proptest::strategy::Just(MIN_PRINTABLE),
                proptest::strategy::Just(MAX_PRINTABLE),
            ],
            len in 0i64..100_000_000_000,
        ) {
            proptest::prop_assert_eq!(parse_instant(&iso(ms)), Ok(ms));
            let end = if (MIN_PRINTABLE..=MAX_PRINTABLE).contains(&ms) {
                ms.saturating_add(len).min(MAX_PRINTABLE)
            } else {
                MAX_INSTANT
            };
            let i = Interval { start: ms, end };
            let text = serde_json::to_string(&i).unwrap();
            proptest::prop_assert_eq!(serde_json::from_str::<Interval>(&text).unwrap(), i);
        }

        #[test]
        fn an_instant_that_is_not_valid_never_parses(ms in proptest::num::i64::ANY) {
            if !is_valid_instant(ms) {
                proptest::prop_assert!(parse_instant(&iso(ms)).is_err());
            }
        }
    }

    #[test]
    fn overlap_and_containment_are_half_open() {
        let i = |a, b| Interval::new(a, b).unwrap();
        assert!(!i(0, 10).overlaps(&i(10, 20)));
        assert!(i(0, 10).overlaps(&i(9, 20)));
        assert!(i(0, 10).contains(&i(0, 10)));
        assert!(!i(0, 10).contains(&i(5, 11)));
    }
}
