//! `timestampSpec.format`: how a row's time is read, as Druid's `TimestampParser` reads it.
//!
//! `iso` (ISO-8601), `millis`, `posix` (seconds), `micro`, `nano`, `auto` (a number is
//! milliseconds, text is ISO-8601 or a number), `ruby` (seconds with a fraction), or a Joda-style
//! pattern such as `yyyy-MM-dd HH:mm:ss` (UTC unless the pattern has a zone).

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::Value;

use raftlord_time::interval::{is_valid_instant, parse_instant};

/// A parsed `timestampSpec.format`.
#[derive(Debug, Clone, PartialEq)]
pub enum TimestampFormat {
    Auto,
    Iso,
    Millis,
    Posix,
    Micro,
    Nano,
    Ruby,
    /// A Joda pattern turned into a chrono format; `zoned` when it reads an offset.
    Pattern {
        chrono: String,
        zoned: bool,
        date_only: bool,
    },
}

impl TimestampFormat {
    pub fn parse(s: &str) -> Result<TimestampFormat, String> {
        Ok(match s {
            "auto" => TimestampFormat::Auto,
            "iso" => TimestampFormat::Iso,
            "millis" => TimestampFormat::Millis,
            "posix" => TimestampFormat::Posix,
            "micro" => TimestampFormat::Micro,
            "nano" => TimestampFormat::Nano,
            "ruby" => TimestampFormat::Ruby,
            pattern => joda_to_chrono(pattern)?,
        })
    }

    /// The instant (ms since the epoch, UTC) of a JSON value, or `None` when it is not a time
    /// in this format or lies outside the years 0000 to 9999.
    pub fn parse_value(&self, v: &Value) -> Option<i64> {
        let ms = match v {
            Value::Number(n) => match self {
                TimestampFormat::Auto | TimestampFormat::Millis | TimestampFormat::Iso => n
                    .as_i64()
                    .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
                _ => return self.parse_str(&n.to_string()),
            },
            Value::String(s) => return self.parse_str(s),
            _ => None,
        }?;
        is_valid_instant(ms).then_some(ms)
    }

    /// The instant of a text field.
    pub fn parse_str(&self, s: &str) -> Option<i64> {
        let s = s.trim();
        let int = || s.parse::<i64>().ok();
        let ms = match self {
            TimestampFormat::Auto => match int() {
                Some(n) => Some(n),
                None => parse_instant(s).ok(),
            },
            TimestampFormat::Iso => parse_instant(s).ok(),
            TimestampFormat::Millis => int(),
            TimestampFormat::Posix => int().and_then(|n| n.checked_mul(1000)),
            TimestampFormat::Micro => int().map(|n| n.div_euclid(1000)),
            TimestampFormat::Nano => int().map(|n| n.div_euclid(1_000_000)),
            TimestampFormat::Ruby => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && f.abs() < 1e14)
                .map(|f| (f * 1000.0).floor() as i64),
            TimestampFormat::Pattern {
                chrono,
                zoned,
                date_only,
            } => {
                if *zoned {
                    DateTime::parse_from_str(s, chrono).ok().map(|d| d.timestamp_millis())
                } else if *date_only {
                    NaiveDate::parse_from_str(s, chrono)
                        .ok()
                        .and_then(|d| d.and_hms_opt(0, 0, 0))
                        .map(|d| d.and_utc().timestamp_millis())
                } else {
                    NaiveDateTime::parse_from_str(s, chrono)
                        .ok()
                        .map(|d| d.and_utc().timestamp_millis())
                }
            }
        }?;
        is_valid_instant(ms).then_some(ms)
    }
}

/// Turns the Joda pattern letters Druid users write into chrono's format.
fn joda_to_chrono(p: &str) -> Result<TimestampFormat, String> {
    let mut out = String::new();
    let mut zoned = false;
    let mut has_time = false;
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; '' is a single quote.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\'' {
                push_literal(&mut out, chars[j]);
                j += 1;
            }
            if j == i + 1 {
                out.push('\'');
            }
            i = j + 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let piece = match (c, n) {
            ('y' | 'Y' | 'u', 2) => "%y",
            ('y' | 'Y' | 'u', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', _) => {
                has_time = true;
                "%H"
            }
            ('h', _) => {
                has_time = true;
                "%I"
            }
            ('a', _) => "%p",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S', _) => "%.f",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('Z', 1) => {
                zoned = true;
                "%z"
            }
            ('Z', _) => {
                zoned = true;
                "%:z"
            }
            (c, _) if c.is_ascii_alphabetic() => {
                return Err(format!(
                    "timestamp format [{p}] uses the pattern letter '{c}', which raftlord does not read; use iso, \
                     millis, posix, micro, nano, auto, or a pattern of y M d H h m s S a E Z"
                ))
            }
            (c, n) => {
                for _ in 0..n {
                    push_literal(&mut out, c);
                }
                i += n;
                continue;
            }
        };
        // `%.f` reads the dot too: drop a literal dot written before the fraction.
        if piece == "%.f" && out.ends_with('.') {
            out.pop();
        }
        out.push_str(piece);
        i += n;
    }
    let date_only = !has_time && !zoned;
    Ok(TimestampFormat::Pattern {
        chrono: out,
        zoned,
        date_only,
    })
}

fn push_literal(out: &mut String, c: char) {
    if c == '%' {
        out.push_str("%%");
    } else {
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(format: &str, v: Value) -> Option<i64> {
        TimestampFormat::parse(format).unwrap().parse_value(&v)
    }

    #[test]
    fn every_named_format_reads_the_same_instant() {
        let t = 1_715_780_710_123; // 2024-05-15T13:45:10.123Z
        assert_eq!(at("iso", json!("2024-05-15T13:45:10.123Z")), Some(t));
        assert_eq!(at("auto", json!("2024-05-15T13:45:10.123Z")), Some(t));
        assert_eq!(at("auto", json!(t)), Some(t));
        assert_eq!(at("auto", json!(t.to_string())), Some(t));
        assert_eq!(at("millis", json!(t)), Some(t));
        assert_eq!(at("posix", json!(t / 1000)), Some(t - 123));
        assert_eq!(at("micro", json!(t * 1000 + 999)), Some(t));
        assert_eq!(at("nano", json!(format!("{}", t as i128 * 1_000_000))), Some(t));
        assert_eq!(at("ruby", json!(1_715_780_710.123_f64)), Some(t));
    }

    #[test]
    fn joda_patterns_read_as_druid_users_write_them() {
        assert_eq!(
            at("yyyy-MM-dd HH:mm:ss", json!("2024-05-15 13:45:10")),
            Some(1_715_780_710_000)
        );
        assert_eq!(
            at("yyyy-MM-dd'T'HH:mm:ss.SSSZ", json!("2024-05-15T15:45:10.123+0200")),
            Some(1_715_780_710_123)
        );
        assert_eq!(at("yyyyMMdd", json!("20240515")), Some(1_715_731_200_000));
        assert_eq!(
            at("dd/MMM/yyyy:HH:mm:ss Z", json!("15/May/2024:13:45:10 +0000")),
            Some(1_715_780_710_000)
        );
        assert!(TimestampFormat::parse("yyyy-ww").is_err());
    }

    #[test]
    fn garbage_and_out_of_range_times_are_none() {
        assert_eq!(at("iso", json!("yesterday")), None);
        assert_eq!(at("millis", json!("12x")), None);
        assert_eq!(at("auto", json!(i64::MAX)), None);
        assert_eq!(at("posix", json!(i64::MAX)), None);
        assert_eq!(at("auto", json!(null)), None);
        assert_eq!(at("auto", json!([1])), None);
    }
}
