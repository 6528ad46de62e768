//! Datasource commit metadata (Druid's `DataSourceMetadata`): the compare-and-swap that makes a
//! stream ingestion's publish exactly-once.
//!
//! A publish may carry `startMetadata` and `endMetadata`. With none stored, the start must be a
//! valid start; otherwise the start must *match* the stored metadata (as start metadata). On a
//! match the stored value becomes `stored.plus(end)`. A mismatch is *retryable* when the start
//! is ahead of what is stored (an earlier task is still publishing) and permanent otherwise.
//!
//! Types: `object` (`{"type":"object","theObject":...}`: equality), and stream types (`kafka`,
//! `kinesis`, ...: `{"type":..,"partitions":{"type":"start"|"end","stream":..,
//! "partitionSequenceNumberMap":{..}}}`, also the older `topic` / `partitionOffsetMap` names).

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// Why the compare-and-swap failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataMismatch {
    pub message: String,
    pub retryable: bool,
}

/// Checks a publish's `start` against `stored` and returns the metadata to store.
pub fn compare_and_advance(stored: Option<&Value>, start: &Value, end: &Value) -> Result<Value, MetadataMismatch> {
    match stored {
        None if is_valid_start(start) => Ok(end.clone()),
        None => Err(MetadataMismatch {
            message: format!(
                "Inconsistency between stored metadata state[null] and target state[{start}]. Try resetting the supervisor."
            ),
            retryable: false,
        }),
        Some(old) if matches(start, old) => Ok(plus(old, end)),
        Some(old) if ahead(start, old) => Err(MetadataMismatch {
            message: format!(
                "The new start metadata state[{start}] is ahead of the last committed end state[{old}]. Try resetting the supervisor."
            ),
            retryable: true,
        }),
        Some(old) => Err(MetadataMismatch {
            message: format!(
                "Inconsistency between stored metadata state[{old}] and target state[{start}]. Try resetting the supervisor."
            ),
            retryable: false,
        }),
    }
}

/// Checks that a value is datasource metadata of a known shape.
pub fn validate(v: &Value) -> Result<(), String> {
    let t = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("datasource metadata needs a string 'type'")?;
    if t == "object" {
        return Ok(());
    }
    let p = v
        .get("partitions")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("'{t}' datasource metadata needs a 'partitions' object"))?;
    offsets(p).ok_or_else(|| format!("'{t}' datasource metadata needs 'partitions.partitionSequenceNumberMap'"))?;
    Ok(())
}

fn is_object(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("object")
}

fn partitions(v: &Value) -> Option<&Map<String, Value>> {
    v.get("partitions").and_then(Value::as_object)
}

fn offsets(p: &Map<String, Value>) -> Option<&Map<String, Value>> {
    p.get("partitionSequenceNumberMap")
        .or_else(|| p.get("partitionOffsetMap"))
        .and_then(Value::as_object)
}

fn stream(p: &Map<String, Value>) -> Option<&Value> {
    p.get("stream").or_else(|| p.get("topic"))
}

fn is_valid_start(v: &Value) -> bool {
    if is_object(v) {
        return v.get("theObject").is_none_or(Value::is_null);
    }
    partitions(v).and_then(|p| p.get("type")).and_then(Value::as_str) == Some("start")
}

/// Partition id -> offset or sequence number.
type Offsets = Map<String, Value>;

/// The offsets of two stream metadata values of the same stream.
fn same_stream_offsets<'a>(a: &'a Value, b: &'a Value) -> Option<(&'a Offsets, &'a Offsets)> {
    let (a, b) = (partitions(a)?, partitions(b)?);
    if stream(a) != stream(b) {
        return None;
    }
    Some((offsets(a)?, offsets(b)?))
}

fn matches(start: &Value, stored: &Value) -> bool {
    if is_object(start) || is_object(stored) {
        return start.get("type") == stored.get("type") && start.get("theObject") == stored.get("theObject");
    }
    same_stream_offsets(start, stored).is_some_and(|(ao, bo)| {
        ao.iter()
            .all(|(k, v)| bo.get(k).is_none_or(|w| compare(v, w) == Some(Ordering::Equal)))
    })
}

/// Druid's `compareTo(...) > 0`: any shared partition's start offset is past the stored one.
fn ahead(start: &Value, stored: &Value) -> bool {
    same_stream_offsets(start, stored).is_some_and(|(ao, bo)| {
        ao.iter()
            .any(|(k, v)| bo.get(k).is_some_and(|w| compare(v, w) == Some(Ordering::Greater)))
    })
}

/// `stored.plus(end)`: the union of offsets, the end's winning, as end metadata.
fn plus(stored: &Value, end: &Value) -> Value {
    let Some((old, new)) = same_stream_offsets(stored, end) else {
        return end.clone();
    };
    let key = if partitions(end).is_some_and(|p| p.contains_key("partitionSequenceNumberMap")) {
        "partitionSequenceNumberMap"
    } else {
        "partitionOffsetMap"
    };
    let mut merged = old.clone();
    for (k, v) in new {
        merged.insert(k.clone(), v.clone());
    }
    let mut out = end.clone();
    if let Some(p) = out.get_mut("partitions").and_then(Value::as_object_mut) {
        p.insert(key.into(), Value::Object(merged));
    }
    out
}

/// Offsets are numbers (Kafka) or numeric strings (Kinesis sequence numbers).
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => {
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
            if numeric(x) && numeric(y) {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                Some(x.len().cmp(&y.len()).then_with(|| x.cmp(y)))
            } else {
                Some(x.cmp(y))
            }
        }
        _ => (a == b).then_some(Ordering::Equal),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kafka(kind: &str, offsets: Value) -> Value {
        json!({"type": "kafka", "partitions": {"type": kind, "stream": "wiki", "partitionSequenceNumberMap": offsets}})
    }

    #[test]
    fn first_publish_needs_a_valid_start_then_offsets_chain() {
        let first = compare_and_advance(None, &kafka("start", json!({"0": 0})), &kafka("end", json!({"0": 10})));
        let stored = first.unwrap();
        assert_eq!(stored, kafka("end", json!({"0": 10})));
        assert!(compare_and_advance(None, &kafka("end", json!({"0": 0})), &stored).is_err());
        // The next task starts where the last ended.
        let next = compare_and_advance(
            Some(&stored),
            &kafka("start", json!({"0": 10, "1": 0})),
            &kafka("end", json!({"0": 20, "1": 5})),
        );
        assert_eq!(next.unwrap(), kafka("end", json!({"0": 20, "1": 5})));
    }

    #[test]
    fn a_start_ahead_is_retryable_and_one_behind_is_not() {
        let stored = kafka("end", json!({"0": 10, "1": 7}));
        let ahead = compare_and_advance(
            Some(&stored),
            &kafka("start", json!({"0": 15})),
            &kafka("end", json!({"0": 20})),
        );
        let e = ahead.unwrap_err();
        assert!(e.retryable, "{e:?}");
        assert!(e.message.contains("is ahead of the last committed end state"));
        let behind = compare_and_advance(
            Some(&stored),
            &kafka("start", json!({"0": 5})),
            &kafka("end", json!({"0": 20})),
        );
        let e = behind.unwrap_err();
        assert!(!e.retryable);
        assert!(e.message.starts_with("Inconsistency between stored metadata state"));
    }

    #[test]
    fn object_metadata_compares_by_equality() {
        let obj = |v: Value| json!({"type": "object", "theObject": v});
        let stored = compare_and_advance(None, &obj(Value::Null), &obj(json!({"a": 1}))).unwrap();
        assert!(compare_and_advance(Some(&stored), &obj(json!({"a": 1})), &obj(json!({"a": 2}))).is_ok());
        assert!(compare_and_advance(Some(&stored), &obj(json!({"a": 9})), &obj(json!({"a": 2}))).is_err());
    }

    #[test]
    fn kinesis_sequence_numbers_compare_numerically() {
        assert_eq!(compare(&json!("900"), &json!("1000")), Some(Ordering::Less));
        assert_eq!(compare(&json!("0100"), &json!("100")), Some(Ordering::Equal));
    }
}
