//! `transformSpec.filter`: which input rows are ingested. A row the filter rejects is counted as
//! thrown away, as in Druid.
//!
//! Filters: `selector`, `equals`, `in`, `bound` (lexicographic or numeric ordering), `range`,
//! `like`, `regex`, `null`, `expression` ([`crate::expr`]), `and`, `or`, `not`, `true`, `false`. A filter reads a field's value
//! as text (numbers in their JSON form); on a multi-value field it matches when any value does,
//! as Druid's do; `__time` is the row's timestamp in milliseconds. A missing field, JSON null
//! and the empty string are null.

use std::cmp::Ordering;

use serde_json::Value;

use crate::format::{FieldRef, Record};
use crate::spec::{field, FieldError};

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// `selector`, `equals` and `in`: the column's value is one of these (`None`: null).
    Values {
        column: String,
        values: Vec<Option<String>>,
    },
    /// `equals` / `range` on a numeric type, and `bound` with numeric ordering.
    Numeric {
        column: String,
        lower: Option<(f64, bool)>,
        upper: Option<(f64, bool)>,
    },
    /// `bound` / `range` compared as strings. Each bound is (value, strict).
    Lexicographic {
        column: String,
        lower: Option<(String, bool)>,
        upper: Option<(String, bool)>,
    },
    Regex {
        column: String,
        regex: regex::Regex,
    },
    Null {
        column: String,
    },
    /// `expression`: the row passes when the expression is true.
    Expr(crate::expr::Expr),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Const(bool),
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str, FieldError> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| field(name, "required, a string"))
}

/// The column a filter reads: `dimension` in the older filters, `column` in the newer.
fn column(v: &Value) -> Result<String, FieldError> {
    match (v.get("dimension"), v.get("column")) {
        (Some(Value::String(d)), _) | (_, Some(Value::String(d))) => Ok(d.clone()),
        _ => Err(field("dimension", "required, the name of a column")),
    }
}

/// A filter value as text (`null` stays null).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn is_numeric_type(t: Option<&str>) -> bool {
    matches!(
        t.map(str::to_ascii_uppercase).as_deref(),
        Some("LONG" | "FLOAT" | "DOUBLE")
    )
}

fn number(v: &Value, name: &str) -> Result<f64, FieldError> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| field(name, format!("[{v}] is not a number")))
}

/// An SQL LIKE pattern (`%`, `_`, and `escape`) as an anchored regular expression.
pub(crate) fn like_regex(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::from("(?s)^");
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            c if Some(c) == escape => {
                if let Some(next) = chars.next() {
                    out.push_str(&regex::escape(&next.to_string()));
                }
            }
            '%' => out.push_str(".*"),
            '_' => out.push('.'),
            c => out.push_str(&regex::escape(&c.to_string())),
        }
    }
    out.push('$');
    out
}

impl Filter {
    /// Reads a filter; an error names the field (relative to the filter).
    pub fn parse(v: &Value) -> Result<Filter, FieldError> {
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("type", "required"))?;
        let nested = |name: &str, i: Option<usize>, f: &Value| {
            Filter::parse(f).map_err(|(p, m)| match i {
                Some(i) => (format!("{name}[{i}].{p}"), m),
                None => (format!("{name}.{p}"), m),
            })
        };
        Ok(match kind {
            "selector" => Filter::Values {
                column: column(v)?,
                values: vec![v.get("value").and_then(text)],
            },
            "in" => Filter::Values {
                column: column(v)?,
                values: v
                    .get("values")
                    .and_then(Value::as_array)
                    .ok_or_else(|| field("values", "required, a list"))?
                    .iter()
                    .map(text)
                    .collect(),
            },
            "equals" => {
                let column = column(v)?;
                let value = v.get("matchValue").ok_or_else(|| field("matchValue", "required"))?;
                if is_numeric_type(v.get("matchValueType").and_then(Value::as_str)) {
                    let n = number(value, "matchValue")?;
                    Filter::Numeric {
                        column,
                        lower: Some((n, false)),
                        upper: Some((n, false)),
                    }
                } else {
                    Filter::Values {
                        column,
                        values: vec![text(value)],
                    }
                }
            }
            "bound" | "range" => {
                let column = column(v)?;
                let (lo_strict, hi_strict) = if kind == "bound" {
                    ("lowerStrict", "upperStrict")
                } else {
                    ("lowerOpen", "upperOpen")
                };
                let strict = |name: &str| v.get(name).and_then(Value::as_bool).unwrap_or(false);
                let bound = |name: &str| v.get(name).filter(|b| !b.is_null());
                let numeric = if kind == "bound" {
                    // A name, or Druid's older {"type": name} form.
                    let ordering = v
                        .get("ordering")
                        .map(|o| o.as_str().or_else(|| o.get("type").and_then(Value::as_str)))
                        .unwrap_or(Some("lexicographic"));
                    match ordering {
                        Some("lexicographic") => false,
                        Some("numeric") => true,
                        _ => {
                            return Err(field(
                                "ordering",
                                "this raftlord version compares bounds lexicographic or numeric only",
                            ))
                        }
                    }
                } else {
                    is_numeric_type(v.get("matchValueType").and_then(Value::as_str))
                };
                if numeric {
                    Filter::Numeric {
                        column,
                        lower: bound("lower")
                            .map(|b| number(b, "lower"))
                            .transpose()?
                            .map(|n| (n, strict(lo_strict))),
                        upper: bound("upper")
                            .map(|b| number(b, "upper"))
                            .transpose()?
                            .map(|n| (n, strict(hi_strict))),
                    }
                } else {
                    Filter::Lexicographic {
                        column,
                        lower: bound("lower").and_then(text).map(|s| (s, strict(lo_strict))),
                        upper: bound("upper").and_then(text).map(|s| (s, strict(hi_strict))),
                    }
                }
            }
            "like" => {
                let escape = match v.get("escape").and_then(Value::as_str) {
                    None => None,
                    Some(e) if e.chars().count() == 1 => e.chars().next(),
                    Some(_) => return Err(field("escape", "must be one character")),
                };
                let pattern = like_regex(str_field(v, "pattern")?, escape);
                Filter::Regex {
                    column: column(v)?,
                    regex: regex::Regex::new(&pattern).map_err(|e| field("pattern", e.to_string()))?,
                }
            }
            "regex" => Filter::Regex {
                column: column(v)?,
                regex: regex::Regex::new(str_field(v, "pattern")?)
                    .map_err(|e| field("pattern", format!("not a regular expression: {e}")))?,
            },
            "null" => Filter::Null { column: column(v)? },
            "expression" => {
                Filter::Expr(crate::expr::Expr::parse(str_field(v, "expression")?).map_err(|m| field("expression", m))?)
            }
            "and" | "or" => {
                let fields = v
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| field("fields", "required, a list of filters"))?;
                let parsed = fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| nested("fields", Some(i), f))
                    .collect::<Result<Vec<_>, _>>()?;
                if kind == "and" {
                    Filter::And(parsed)
                } else {
                    Filter::Or(parsed)
                }
            }
            "not" => Filter::Not(Box::new(nested(
                "field",
                None,
                v.get("field").ok_or_else(|| field("field", "required, a filter"))?,
            )?)),
            "true" => Filter::Const(true),
            "false" => Filter::Const(false),
            other => {
                return Err(field(
                    "type",
                    format!("filter [{other}] is not supported by this raftlord version"),
                ))
            }
        })
    }

    /// Adds the names of the fields the filter reads to `out`.
    pub fn fields<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Filter::Const(_) => {}
            Filter::And(fs) | Filter::Or(fs) => fs.iter().for_each(|f| f.fields(out)),
            Filter::Not(f) => f.fields(out),
            Filter::Expr(e) => e.fields(out),
            Filter::Null { column }
            | Filter::Values { column, .. }
            | Filter::Regex { column, .. }
            | Filter::Numeric { column, .. }
            | Filter::Lexicographic { column, .. } => out.push(column),
        }
    }

    /// Whether the row `record`, with timestamp `time_ms`, passes.
    pub fn matches(&self, record: &Record, time_ms: i64) -> bool {
        match self {
            Filter::Const(b) => *b,
            Filter::And(fs) => fs.iter().all(|f| f.matches(record, time_ms)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(record, time_ms)),
            Filter::Not(f) => !f.matches(record, time_ms),
            Filter::Null { column } => values(record, column, time_ms).iter().any(Option::is_none),
            Filter::Expr(e) => e.eval(&|name| field_val(record, name, time_ms)).truthy(),
            Filter::Values { column, values: wanted } => {
                values(record, column, time_ms).iter().any(|v| wanted.contains(v))
            }
            Filter::Regex { column, regex } => values(record, column, time_ms)
                .iter()
                .any(|v| v.as_deref().is_some_and(|s| regex.is_match(s))),
            Filter::Numeric { column, lower, upper } => values(record, column, time_ms).iter().any(|v| {
                let Some(n) = v.as_deref().and_then(|s| s.trim().parse::<f64>().ok()) else {
                    return false;
                };
                within(Some(n).filter(|n| !n.is_nan()), lower, upper, |a, b| a.partial_cmp(b))
            }),
            Filter::Lexicographic { column, lower, upper } => values(record, column, time_ms).iter().any(|v| {
                within(v.as_deref(), lower, upper, |a: &&str, b: &String| {
                    Some(a.cmp(&b.as_str()))
                })
            }),
        }
    }
}

/// Whether `v` lies between the bounds (each (value, strict)); a null never does.
fn within<V, B>(
    v: Option<V>,
    lower: &Option<(B, bool)>,
    upper: &Option<(B, bool)>,
    cmp: impl Fn(&V, &B) -> Option<Ordering>,
) -> bool {
    let Some(v) = v else { return false };
    let above = match lower {
        None => true,
        Some((b, strict)) => matches!(
            (cmp(&v, b), strict),
            (Some(Ordering::Greater), _) | (Some(Ordering::Equal), false)
        ),
    };
    let below = match upper {
        None => true,
        Some((b, strict)) => matches!(
            (cmp(&v, b), strict),
            (Some(Ordering::Less), _) | (Some(Ordering::Equal), false)
        ),
    };
    above && below
}

/// A field of `record` as an expression value (`__time`: the row's time).
pub fn field_val(record: &Record, name: &str, time_ms: i64) -> crate::expr::Val {
    use crate::expr::Val;
    if name == "__time" {
        return Val::Long(time_ms);
    }
    match record.get(name) {
        FieldRef::Absent | FieldRef::Null => Val::Null,
        FieldRef::Text("") => Val::Null,
        FieldRef::Text(s) => Val::Str(s.to_string()),
        FieldRef::List(items) => items.first().map_or(Val::Null, |s| Val::Str(s.to_string())),
        FieldRef::Json(v) => Val::from_json(v),
    }
}

/// The values of `column` in `record` as text, one per value of a multi-value field; a single
/// `None` when the field is null or missing.
fn values(record: &Record, column: &str, time_ms: i64) -> Vec<Option<String>> {
    if column == "__time" {
        return vec![Some(time_ms.to_string())];
    }
    let one = |s: &str| if s.is_empty() { None } else { Some(s.to_string()) };
    match record.get(column) {
        FieldRef::Absent | FieldRef::Null => vec![None],
        FieldRef::Text(s) => vec![one(s)],
        FieldRef::List(items) if items.is_empty() => vec![None],
        FieldRef::List(items) => items.into_iter().map(one).collect(),
        FieldRef::Json(Value::Array(items)) if items.is_empty() => vec![None],
        FieldRef::Json(Value::Array(items)) => items.iter().map(text).collect(),
        FieldRef::Json(v) => vec![text(v)],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(v: Value) -> Record {
        let Value::Object(m) = v else { unreachable!() };
        Record::Json(m)
    }

    fn passes(filter: Value, r: &Record) -> bool {
        Filter::parse(&filter).unwrap().matches(r, 1000)
    }

    #[test]
    fn each_filter_matches_as_druids_does() {
        let r = row(json!({"page": "Main", "n": 42, "tags": ["a", "b"], "empty": "", "x": 1.5}));
        assert!(passes(
            json!({"type": "selector", "dimension": "page", "value": "Main"}),
            &r
        ));
        assert!(!passes(
            json!({"type": "selector", "dimension": "page", "value": "Talk"}),
            &r
        ));
        assert!(passes(
            json!({"type": "selector", "dimension": "missing", "value": null}),
            &r
        ));
        assert!(passes(
            json!({"type": "selector", "dimension": "empty", "value": null}),
            &r
        ));
        assert!(passes(
            json!({"type": "equals", "column": "n", "matchValueType": "LONG", "matchValue": 42}),
            &r
        ));
        assert!(passes(
            json!({"type": "equals", "column": "tags", "matchValueType": "STRING", "matchValue": "b"}),
            &r
        ));
        assert!(passes(
            json!({"type": "in", "dimension": "page", "values": ["Talk", "Main"]}),
            &r
        ));
        assert!(passes(
            json!({"type": "bound", "dimension": "n", "lower": "9", "ordering": "numeric"}),
            &r
        ));
        assert!(
            !passes(json!({"type": "bound", "dimension": "n", "lower": "9"}), &r),
            "'42' < '9' as strings"
        );
        assert!(!passes(
            json!({"type": "bound", "dimension": "n", "upper": 42, "upperStrict": true, "ordering": "numeric"}),
            &r
        ));
        assert!(passes(
            json!({"type": "range", "column": "x", "matchValueType": "DOUBLE", "lower": 1, "upper": 2}),
            &r
        ));
        assert!(!passes(
            json!({"type": "range", "column": "x", "matchValueType": "DOUBLE", "lower": 1.5, "lowerOpen": true}),
            &r
        ));
        assert!(passes(
            json!({"type": "like", "dimension": "page", "pattern": "M_i%"}),
            &r
        ));
        assert!(!passes(
            json!({"type": "like", "dimension": "page", "pattern": "ai%"}),
            &r
        ));
        assert!(passes(
            json!({"type": "regex", "dimension": "page", "pattern": "ai"}),
            &r
        ));
        assert!(passes(json!({"type": "null", "column": "missing"}), &r));
        assert!(!passes(json!({"type": "null", "column": "page"}), &r));
        assert!(passes(
            json!({"type": "bound", "dimension": "__time", "upper": "1000", "ordering": "numeric"}),
            &r
        ));
        assert!(passes(
            json!({"type": "and", "fields": [{"type": "selector", "dimension": "page", "value": "Main"},
                {"type": "not", "field": {"type": "in", "dimension": "tags", "values": ["z"]}}]}),
            &r
        ));
        assert!(!passes(
            json!({"type": "or", "fields": [{"type": "false"}, {"type": "selector", "dimension": "page", "value": "x"}]}),
            &r
        ));
    }

    #[test]
    fn bad_filters_name_their_field() {
        let err = |v: Value| Filter::parse(&v).unwrap_err().0;
        assert_eq!(err(json!({"type": "selector"})), "dimension");
        assert_eq!(
            err(json!({"type": "regex", "dimension": "d", "pattern": "("})),
            "pattern"
        );
        assert_eq!(
            err(json!({"type": "and", "fields": [{"type": "in", "dimension": "d"}]})),
            "fields[0].values"
        );
        assert_eq!(err(json!({"type": "not", "field": {"type": "spatial"}})), "field.type");
        assert_eq!(
            err(json!({"type": "bound", "dimension": "d", "ordering": "strlen"})),
            "ordering"
        );
        assert_eq!(
            err(json!({"type": "equals", "column": "d", "matchValueType": "LONG", "matchValue": "x"})),
            "matchValue"
        );
    }
}
