//! Druid's retention rules: their exact JSON, checked when they are set, and which rule applies
//! to a segment.
//!
//! A datasource's rules are followed by the cluster's `_default` rules; for each segment the
//! first rule that applies to its interval decides: load it on so many Historicals per tier,
//! broadcast it to every node, or drop it (Druid then marks it unused). No rule applying is
//! reported by the caller. Whether a rule applies depends on the segment's interval and, for
//! period rules, on `now`, as in Druid's `Rules.eligibleForLoad` and the drop rules'
//! `appliesTo`: a period's window is `[now - period, now)`, the period taken off `now` in UTC
//! field by field (years and months by the calendar, a month end clamped, then weeks, days
//! and the time fields), as Joda-Time does.

use std::collections::BTreeMap;

use chrono::{DateTime, Months, TimeDelta, Utc};
use raftlord_time::interval::Interval;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tier Druid loads onto when a load rule names none (`useDefaultTierForNull`).
pub const DEFAULT_TIER: &str = "_default_tier";
/// Replicas on the default tier when a load rule names none.
pub const DEFAULT_REPLICANTS: u32 = 2;

/// One retention rule, in Druid's JSON (`type` names the rule). Fields a rule does not have are
/// ignored, as Druid's JSON reader does (older Druid versions wrote `colocatedDataSources` on
/// broadcast rules, for one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Rule {
    #[serde(rename_all = "camelCase")]
    LoadForever {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tiered_replicants: Option<BTreeMap<String, i64>>,
        #[serde(default = "yes")]
        use_default_tier_for_null: bool,
    },
    #[serde(rename_all = "camelCase")]
    LoadByInterval {
        interval: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tiered_replicants: Option<BTreeMap<String, i64>>,
        #[serde(default = "yes")]
        use_default_tier_for_null: bool,
    },
    #[serde(rename_all = "camelCase")]
    LoadByPeriod {
        period: String,
        #[serde(default = "yes")]
        include_future: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tiered_replicants: Option<BTreeMap<String, i64>>,
        #[serde(default = "yes")]
        use_default_tier_for_null: bool,
    },
    DropForever {},
    DropByInterval {
        interval: String,
    },
    #[serde(rename_all = "camelCase")]
    DropByPeriod {
        period: String,
        #[serde(default = "yes")]
        include_future: bool,
    },
    DropBeforeByPeriod {
        period: String,
    },
    BroadcastForever {},
    BroadcastByInterval {
        interval: String,
    },
    #[serde(rename_all = "camelCase")]
    BroadcastByPeriod {
        period: String,
        #[serde(default = "yes")]
        include_future: bool,
    },
}

fn yes() -> bool {
    true
}

/// What the rule that applies asks for a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replicas per tier (a tier with 0 holds none).
    Load(BTreeMap<String, u32>),
    /// On every node that serves segments.
    Broadcast,
    /// Not served; marked unused.
    Drop,
}

/// A rule list that cannot be stored, naming the field (`[1].period`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

/// An ISO-8601 period (`P1M`, `P90D`, `PT6H`, `P1Y2M10DT2H30M`, `P2W`) as Joda-Time adds and
/// takes it: each field on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub millis: u64,
}

impl Period {
    /// A period that is not empty (a rule's).
    pub fn parse(s: &str) -> Result<Period, String> {
        let p = Period::parse_zero_ok(s)?;
        if p == Period::default() {
            return Err(format!("[{s}] is an empty period"));
        }
        Ok(p)
    }

    /// A period, empty ones (`PT0S`) included.
    pub fn parse_zero_ok(s: &str) -> Result<Period, String> {
        let not_a_period = || format!("[{s}] is not an ISO-8601 period such as P1M or PT6H");
        // The parser stops at the end of a period and ignores what follows (`P1D/P2D`): the
        // whole text must have the form of one.
        static FORM: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(r"^P(\d+W|(\d+Y)?(\d+M)?(\d+D)?(T(\d+H)?(\d+M)?(\d+([.,]\d+)?S)?)?)$")
                .expect("the period pattern compiles")
        });
        if !FORM.is_match(s) || s.ends_with('T') {
            return Err(not_a_period());
        }
        let d = iso8601::duration(s).map_err(|_| not_a_period())?;
        let p = match d {
            iso8601::Duration::Weeks(w) => Period {
                weeks: w,
                ..Period::default()
            },
            iso8601::Duration::YMDHMS {
                year,
                month,
                day,
                hour,
                minute,
                second,
                millisecond,
            } => Period {
                months: year.saturating_mul(12).saturating_add(month),
                weeks: 0,
                days: day,
                millis: u64::from(hour) * 3_600_000
                    + u64::from(minute) * 60_000
                    + u64::from(second) * 1000
                    + u64::from(millisecond),
            },
        };
        Ok(p)
    }

    /// `t` less this period, or `None` outside the years chrono can represent.
    pub fn before(&self, t: i64) -> Option<i64> {
        let at = DateTime::<Utc>::from_timestamp_millis(t)?;
        let at = at.checked_sub_months(Months::new(self.months))?;
        let fixed = TimeDelta::try_days(i64::from(self.weeks) * 7 + i64::from(self.days))?
            .checked_add(&TimeDelta::try_milliseconds(i64::try_from(self.millis).ok()?)?)?;
        Some(at.checked_sub_signed(fixed)?.timestamp_millis())
    }
}

impl Rule {
    /// Checks what a rule holds: its interval and period parse, its replica counts are not
    /// negative; `at` names it in errors.
    pub fn check(&self, at: &str) -> Result<(), RuleError> {
        let err = |field: &str, message: String| RuleError {
            field: format!("{at}.{field}"),
            message,
        };
        if let Some(i) = self.interval() {
            Interval::parse(i).map_err(|e| err("interval", e.to_string()))?;
        }
        if let Some(p) = self.period() {
            Period::parse(p).map_err(|m| err("period", m))?;
        }
        if let Some(tiers) = self.tiered_replicants() {
            for (tier, n) in tiers {
                if *n < 0 {
                    return Err(err(
                        &format!("tieredReplicants.{tier}"),
                        format!("{n} replicas: a count cannot be negative"),
                    ));
                }
                if *n > i64::from(u32::MAX) {
                    return Err(err(
                        &format!("tieredReplicants.{tier}"),
                        format!("{n} replicas is too many"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn interval(&self) -> Option<&str> {
        match self {
            Rule::LoadByInterval { interval, .. }
            | Rule::DropByInterval { interval }
            | Rule::BroadcastByInterval { interval } => Some(interval),
            _ => None,
        }
    }

    fn period(&self) -> Option<&str> {
        match self {
            Rule::LoadByPeriod { period, .. }
            | Rule::DropByPeriod { period, .. }
            | Rule::DropBeforeByPeriod { period }
            | Rule::BroadcastByPeriod { period, .. } => Some(period),
            _ => None,
        }
    }

    fn tiered_replicants(&self) -> Option<&BTreeMap<String, i64>> {
        match self {
            Rule::LoadForever { tiered_replicants, .. }
            | Rule::LoadByInterval { tiered_replicants, .. }
            | Rule::LoadByPeriod { tiered_replicants, .. } => tiered_replicants.as_ref(),
            _ => None,
        }
    }

    /// Whether the rule applies to a segment of `segment` at time `now` (milliseconds).
    /// A rule that does not [`Rule::check`] applies to nothing.
    pub fn applies_to(&self, segment: &Interval, now: i64) -> bool {
        // `[now - period, now)`, by the period of the rule.
        let window = |p: &str| {
            let start = Period::parse(p).ok()?.before(now)?;
            Some((start, now))
        };
        let interval = |i: &str| Interval::parse(i).ok();
        match self {
            Rule::LoadForever { .. } | Rule::DropForever {} | Rule::BroadcastForever {} => true,
            Rule::LoadByInterval { interval: i, .. } | Rule::BroadcastByInterval { interval: i } => {
                interval(i).is_some_and(|i| i.overlaps(segment))
            }
            Rule::DropByInterval { interval: i } => interval(i).is_some_and(|i| i.contains(segment)),
            Rule::LoadByPeriod {
                period, include_future, ..
            }
            | Rule::BroadcastByPeriod { period, include_future } => window(period).is_some_and(|(start, end)| {
                if *include_future {
                    start < segment.end
                } else {
                    start < segment.end && segment.start < end
                }
            }),
            Rule::DropByPeriod { period, include_future } => window(period).is_some_and(|(start, end)| {
                if *include_future {
                    start <= segment.start
                } else {
                    start <= segment.start && segment.end <= end
                }
            }),
            Rule::DropBeforeByPeriod { period } => window(period).is_some_and(|(start, _)| segment.end <= start),
        }
    }

    /// What the rule asks for the segments it applies to.
    pub fn action(&self) -> Action {
        match self {
            Rule::LoadForever {
                tiered_replicants,
                use_default_tier_for_null,
            }
            | Rule::LoadByInterval {
                tiered_replicants,
                use_default_tier_for_null,
                ..
            }
            | Rule::LoadByPeriod {
                tiered_replicants,
                use_default_tier_for_null,
                ..
            } => Action::Load(match tiered_replicants {
                Some(t) => t
                    .iter()
                    .map(|(tier, n)| (tier.clone(), u32::try_from(*n).unwrap_or(0)))
                    .collect(),
                None if *use_default_tier_for_null => BTreeMap::from([(DEFAULT_TIER.to_string(), DEFAULT_REPLICANTS)]),
                None => BTreeMap::new(),
            }),
            Rule::BroadcastForever {} | Rule::BroadcastByInterval { .. } | Rule::BroadcastByPeriod { .. } => {
                Action::Broadcast
            }
            Rule::DropForever {}
            | Rule::DropByInterval { .. }
            | Rule::DropByPeriod { .. }
            | Rule::DropBeforeByPeriod { .. } => Action::Drop,
        }
    }
}

/// Reads a rule list as Druid's `POST /rules/{ds}` takes it (a JSON array, in order) and checks
/// every rule; the error names the rule by its place (`[2].period`).
pub fn parse_rules(v: &Value) -> Result<Vec<Rule>, RuleError> {
    let Value::Array(items) = v else {
        return Err(RuleError {
            field: "rules".into(),
            message: "expected a JSON array of rules".into(),
        });
    };
    let mut rules = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("[{i}]");
        let rule: Rule = serde_json::from_value(item.clone()).map_err(|e| RuleError {
            field: at.clone(),
            message: describe(item, &e),
        })?;
        rule.check(&at)?;
        rules.push(rule);
    }
    Ok(rules)
}

/// Why a rule did not read, in words that name Druid's rule types where the type is wrong.
fn describe(item: &Value, e: &serde_json::Error) -> String {
    const TYPES: &str = "loadForever, loadByInterval, loadByPeriod, dropForever, dropByInterval, \
                         dropByPeriod, dropBeforeByPeriod, broadcastForever, broadcastByInterval, \
                         broadcastByPeriod";
    match item.get("type").and_then(Value::as_str) {
        None => format!("a rule needs a \"type\", one of {TYPES}"),
        Some(t) if !TYPES.split(", ").any(|k| k.trim() == t) => {
            format!("unknown rule type [{t}]; expected one of {TYPES}")
        }
        Some(_) => e.to_string(),
    }
}

/// The rule that decides for a segment: the first of the datasource's rules, then the
/// cluster's default rules, that applies to it.
pub fn first_match<'a>(own: &'a [Rule], defaults: &'a [Rule], segment: &Interval, now: i64) -> Option<&'a Rule> {
    own.iter().chain(defaults).find(|r| r.applies_to(segment, now))
}

#[cfg(test)]
mod tests;
