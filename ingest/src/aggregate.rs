//! `metricsSpec`: Druid's ingestion-time aggregators, and how rows combine under rollup.
//!
//! `count`; `longSum`, `doubleSum`, `floatSum`; `longMin`/`Max`, `doubleMin`/`Max`,
//! `floatMin`/`Max`; `longFirst`/`Last`, `doubleFirst`/`Last`, `floatFirst`/`Last`,
//! `stringFirst`/`Last` (by the row's time, before truncation). Null handling is Druid's
//! SQL-compatible mode: null and unparseable inputs are skipped, and a metric that saw no value is
//! null. Any other aggregator is refused at submit, by name.

use serde::Deserialize;
use serde_json::Value;

use crate::format::FieldRef;

/// Druid's default `maxStringBytes` for `stringFirst` / `stringLast`.
pub const DEFAULT_MAX_STRING_BYTES: usize = 1024;

/// One `metricsSpec` entry, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorSpec {
    #[serde(rename = "type")]
    pub kind_name: String,
    pub name: String,
    #[serde(default)]
    pub field_name: Option<String>,
    #[serde(default)]
    pub max_string_bytes: Option<usize>,
    #[serde(default)]
    pub expression: Option<String>,
    #[serde(skip)]
    pub kind: Option<AggKind>,
}

/// What an aggregator computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum(Num),
    Min(Num),
    Max(Num),
    First(Val),
    Last(Val),
}

/// Numeric type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    Long,
    Float,
    Double,
}

/// Value type of a first/last metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val {
    Num(Num),
    String,
}

impl AggregatorSpec {
    /// Checks the entry and fills in `kind`.
    pub fn check(&mut self) -> Result<(), String> {
        let num = |p: &str| match p {
            "long" => Some(Num::Long),
            "float" => Some(Num::Float),
            "double" => Some(Num::Double),
            _ => None,
        };
        let t = self.kind_name.as_str();
        let kind = if t == "count" {
            AggKind::Count
        } else if let Some(n) = t.strip_suffix("Sum").and_then(num) {
            AggKind::Sum(n)
        } else if let Some(n) = t.strip_suffix("Min").and_then(num) {
            AggKind::Min(n)
        } else if let Some(n) = t.strip_suffix("Max").and_then(num) {
            AggKind::Max(n)
        } else if let Some(p) = t.strip_suffix("First") {
            AggKind::First(if p == "string" {
                Val::String
            } else {
                Val::Num(num(p).ok_or_else(|| unknown(t))?)
            })
        } else if let Some(p) = t.strip_suffix("Last") {
            AggKind::Last(if p == "string" {
                Val::String
            } else {
                Val::Num(num(p).ok_or_else(|| unknown(t))?)
            })
        } else {
            return Err(unknown(t));
        };
        if self.name.is_empty() {
            return Err("name: must not be empty".to_string());
        }
        if self.expression.is_some() {
            return Err(format!(
                "expression: aggregator [{}] uses an expression, which raftlord does not evaluate; use fieldName",
                self.name
            ));
        }
        if kind != AggKind::Count && self.field_name.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "fieldName: aggregator [{}] of type [{t}] needs a fieldName",
                self.name
            ));
        }
        self.kind = Some(kind);
        Ok(())
    }

    pub fn agg_kind(&self) -> AggKind {
        self.kind.unwrap_or(AggKind::Count)
    }

    /// The type of the stored column.
    pub fn output(&self) -> Val {
        match self.agg_kind() {
            AggKind::Count => Val::Num(Num::Long),
            AggKind::Sum(n) | AggKind::Min(n) | AggKind::Max(n) => Val::Num(n),
            AggKind::First(v) | AggKind::Last(v) => v,
        }
    }

    /// A fresh accumulator.
    pub fn init(&self) -> Acc {
        match self.agg_kind() {
            AggKind::Count => Acc::Long(Some(0)),
            AggKind::Sum(Num::Long) | AggKind::Min(Num::Long) | AggKind::Max(Num::Long) => Acc::Long(None),
            AggKind::Sum(_) | AggKind::Min(_) | AggKind::Max(_) => Acc::Double(None),
            AggKind::First(_) | AggKind::Last(_) => Acc::Timed(None),
        }
    }

    /// Adds one input row (its time before truncation, and the aggregator's input field).
    pub fn add(&self, acc: &mut Acc, time: i64, input: &FieldRef<'_>) {
        match (self.agg_kind(), acc) {
            (AggKind::Count, Acc::Long(Some(n))) => *n += 1,
            (AggKind::Sum(Num::Long), Acc::Long(a)) => {
                if let Some(v) = as_long(input) {
                    *a = Some(a.unwrap_or(0).wrapping_add(v));
                }
            }
            (AggKind::Min(Num::Long), Acc::Long(a)) => {
                if let Some(v) = as_long(input) {
                    *a = Some(a.map_or(v, |x| x.min(v)));
                }
            }
            (AggKind::Max(Num::Long), Acc::Long(a)) => {
                if let Some(v) = as_long(input) {
                    *a = Some(a.map_or(v, |x| x.max(v)));
                }
            }
            (AggKind::Sum(n), Acc::Double(a)) => {
                if let Some(v) = as_double(input) {
                    let s = a.unwrap_or(0.0) + v;
                    *a = Some(if n == Num::Float { s as f32 as f64 } else { s });
                }
            }
            (AggKind::Min(_), Acc::Double(a)) => {
                if let Some(v) = as_double(input) {
                    *a = Some(a.map_or(v, |x| x.min(v)));
                }
            }
            (AggKind::Max(_), Acc::Double(a)) => {
                if let Some(v) = as_double(input) {
                    *a = Some(a.map_or(v, |x| x.max(v)));
                }
            }
            (AggKind::First(v), Acc::Timed(a)) if a.as_deref().is_none_or(|(t, _)| time < *t) => {
                *a = Some(Box::new((time, self.value(v, input))));
            }
            (AggKind::Last(v), Acc::Timed(a)) if a.as_deref().is_none_or(|(t, _)| time >= *t) => {
                *a = Some(Box::new((time, self.value(v, input))));
            }
            _ => {}
        }
    }

    /// Folds `other` (the same metric of an equal row, from another run) into `into`.
    pub fn combine(&self, into: &mut Acc, other: Acc) {
        let kind = self.agg_kind();
        match (into, other) {
            (Acc::Long(a), Acc::Long(b)) => {
                *a = match (*a, b) {
                    (None, x) | (x, None) => x,
                    (Some(x), Some(y)) => Some(match kind {
                        AggKind::Min(_) => x.min(y),
                        AggKind::Max(_) => x.max(y),
                        _ => x.wrapping_add(y),
                    }),
                }
            }
            (Acc::Double(a), Acc::Double(b)) => {
                *a = match (*a, b) {
                    (None, x) | (x, None) => x,
                    (Some(x), Some(y)) => Some(match kind {
                        AggKind::Min(_) => x.min(y),
                        AggKind::Max(_) => x.max(y),
                        AggKind::Sum(Num::Float) => (x + y) as f32 as f64,
                        _ => x + y,
                    }),
                }
            }
            (Acc::Timed(a), Acc::Timed(Some(theirs))) => {
                let t = theirs.0;
                let take = match (kind, a.as_deref()) {
                    (_, None) => true,
                    (AggKind::First(_), Some((mine, _))) => t < *mine,
                    (_, Some((mine, _))) => t >= *mine,
                };
                if take {
                    *a = Some(theirs);
                }
            }
            _ => {}
        }
    }

    fn value(&self, v: Val, input: &FieldRef<'_>) -> Scalar {
        match v {
            Val::Num(Num::Long) => as_long(input).map_or(Scalar::Null, Scalar::Long),
            Val::Num(_) => as_double(input).map_or(Scalar::Null, Scalar::Double),
            Val::String => match as_text(input) {
                Some(s) => {
                    let max = self.max_string_bytes.unwrap_or(DEFAULT_MAX_STRING_BYTES);
                    let mut end = s.len().min(max);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    Scalar::Str(s[..end].to_string())
                }
                None => Scalar::Null,
            },
        }
    }
}

fn unknown(t: &str) -> String {
    format!(
        "type: aggregator [{t}] is not supported by raftlord's ingestion; use count, longSum, doubleSum, floatSum, \
         long/double/floatMin, long/double/floatMax, long/double/float/stringFirst or long/double/float/stringLast"
    )
}

/// An accumulator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub enum Acc {
    Long(Option<i64>),
    Double(Option<f64>),
    /// First/last: the time of the chosen row and its value.
    /// Boxed: most metrics are numbers, and every accumulator of a row is as large as the
    /// largest variant.
    Timed(Option<Box<(i64, Scalar)>>),
}

// A row holds one per metric: three words (down from six before first/last were boxed).
const _: () = assert!(std::mem::size_of::<Acc>() == 24);

/// A single value of a first/last metric.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub enum Scalar {
    Null,
    Long(i64),
    Double(f64),
    Str(String),
}

/// An input field as a long: integers, and numbers or numeric text truncated toward zero, as
/// Druid's long aggregators read them.
pub fn as_long(f: &FieldRef<'_>) -> Option<i64> {
    match f {
        FieldRef::Json(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|x| x.is_finite()).map(|x| x as i64)),
        FieldRef::Json(Value::Bool(b)) => Some(*b as i64),
        FieldRef::Text(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| x as i64))
        }
        _ => None,
    }
}

/// An input field as a double.
pub fn as_double(f: &FieldRef<'_>) -> Option<f64> {
    match f {
        FieldRef::Json(Value::Number(n)) => n.as_f64(),
        FieldRef::Json(Value::Bool(b)) => Some(*b as i64 as f64),
        FieldRef::Text(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// An input field as text (numbers and booleans printed).
pub fn as_text<'a>(f: &'a FieldRef<'a>) -> Option<std::borrow::Cow<'a, str>> {
    match f {
        FieldRef::Text(s) => Some(std::borrow::Cow::Borrowed(s)),
        FieldRef::Json(Value::Number(n)) => Some(std::borrow::Cow::Owned(n.to_string())),
        FieldRef::Json(Value::Bool(b)) => Some(std::borrow::Cow::Owned(b.to_string())),
        FieldRef::Json(v @ (Value::Array(_) | Value::Object(_))) => Some(std::borrow::Cow::Owned(v.to_string())),
        FieldRef::List(l) => Some(std::borrow::Cow::Owned(l.join(","))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agg(v: Value) -> AggregatorSpec {
        let mut a: AggregatorSpec = serde_json::from_value(v).unwrap();
        a.check().unwrap();
        a
    }

    fn run(a: &AggregatorSpec, inputs: &[(i64, Value)]) -> Acc {
        let mut acc = a.init();
        for (t, v) in inputs {
            let f = match v {
                Value::Null => FieldRef::Null,
                Value::String(s) => FieldRef::Text(s),
                v => FieldRef::Json(v),
            };
            a.add(&mut acc, *t, &f);
        }
        acc
    }

    #[test]
    fn aggregators_combine_as_druids() {
        let rows = [(5, json!(3)), (1, json!("4")), (9, json!(null)), (3, json!(2.5))];
        let c = |v| run(&agg(v), &rows);
        assert_eq!(c(json!({"type": "count", "name": "n"})), Acc::Long(Some(4)));
        assert_eq!(
            c(json!({"type": "longSum", "name": "s", "fieldName": "x"})),
            Acc::Long(Some(9))
        );
        assert_eq!(
            c(json!({"type": "doubleSum", "name": "s", "fieldName": "x"})),
            Acc::Double(Some(9.5))
        );
        assert_eq!(
            c(json!({"type": "longMin", "name": "s", "fieldName": "x"})),
            Acc::Long(Some(2))
        );
        assert_eq!(
            c(json!({"type": "doubleMax", "name": "s", "fieldName": "x"})),
            Acc::Double(Some(4.0))
        );
        assert_eq!(
            c(json!({"type": "longFirst", "name": "s", "fieldName": "x"})),
            Acc::Timed(Some(Box::new((1, Scalar::Long(4)))))
        );
        assert_eq!(
            c(json!({"type": "stringLast", "name": "s", "fieldName": "x", "maxStringBytes": 2})),
            Acc::Timed(Some(Box::new((9, Scalar::Null))))
        );
        let only_nulls = run(
            &agg(json!({"type": "longSum", "name": "s", "fieldName": "x"})),
            &[(1, json!(null))],
        );
        assert_eq!(only_nulls, Acc::Long(None));
    }

    #[test]
    fn unknown_aggregators_are_refused_by_name() {
        for t in ["hyperUnique", "thetaSketch", "longAny", "quantilesDoublesSketch"] {
            let mut a: AggregatorSpec =
                serde_json::from_value(json!({"type": t, "name": "x", "fieldName": "y"})).unwrap();
            let e = a.check().unwrap_err();
            assert!(e.contains(t), "{e}");
        }
        let mut a: AggregatorSpec = serde_json::from_value(json!({"type": "longSum", "name": "x"})).unwrap();
        assert!(a.check().unwrap_err().starts_with("fieldName"));
    }
}
