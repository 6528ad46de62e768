//! The locks a task must hold before it runs: what Druid's `isReady` acquires for each task type.
//!
//! - `kill`: its `interval`;
//! - `compact`: its `interval`, or `ioConfig.inputSpec.interval`;
//! - `index`, `index_parallel`: the segment intervals that `spec.dataSchema.granularitySpec.intervals`
//!   (or a `druid` input source's `interval`) touch, adjacent ones merged ([`raftlord_ingest::IngestSpec::lock_intervals`]), unless
//!   `spec.ioConfig.appendToExisting` is true: appending tasks take their locks as they allocate
//!   segments; the peon's own lock requests then fall inside these locks;
//! - `index_hadoop`: its `spec.dataSchema.granularitySpec.intervals` (overlapping ones merged);
//! - every other type: none.
//!
//! The lock type follows Druid's context keys: `taskLockType`, else `useConcurrentLocks`
//! (`REPLACE`), else `useSharedLock` (`SHARED`), else `EXCLUSIVE`.

use serde_json::Value;

use crate::interval::Interval;
use crate::locks::{LockRequest, LockType};

/// The locks `task_type` with the submitted `spec` needs to be ready.
pub fn lock_needs(task_type: &str, spec: &str) -> Result<Vec<LockRequest>, String> {
    let needs_intervals = matches!(
        task_type,
        "kill" | "compact" | "index" | "index_parallel" | "index_hadoop"
    );
    if !needs_intervals {
        return Ok(vec![]);
    }
    let v: Value = serde_json::from_str(spec).map_err(|e| e.to_string())?;
    if raftlord_ingest::IngestSpec::handles(task_type) {
        let spec = raftlord_ingest::IngestSpec::from_task(&v).map_err(|e| e.to_string())?;
        let lock_type = lock_type(v.get("context"))?;
        return Ok(spec
            .lock_intervals()
            .unwrap_or_default()
            .into_iter()
            .map(|interval| LockRequest {
                lock_type,
                interval,
                preferred_version: None,
            })
            .collect());
    }
    let texts: Vec<&Value> = match task_type {
        "kill" => v.get("interval").into_iter().collect(),
        "compact" => v
            .get("interval")
            .or_else(|| v.pointer("/ioConfig/inputSpec/interval"))
            .into_iter()
            .collect(),
        _ => {
            if v.pointer("/spec/ioConfig/appendToExisting").and_then(Value::as_bool) == Some(true) {
                return Ok(vec![]);
            }
            match v.pointer("/spec/dataSchema/granularitySpec/intervals") {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(Value::Null) | None => vec![],
                Some(other) => {
                    return Err(format!(
                        "spec.dataSchema.granularitySpec.intervals must be a list of intervals, got {other}"
                    ))
                }
            }
        }
    };
    let mut intervals = Vec::with_capacity(texts.len());
    for t in texts {
        let s = t
            .as_str()
            .ok_or_else(|| format!("an interval must be a string, got {t}"))?;
        intervals.push(Interval::parse(s).map_err(|e| e.to_string())?);
    }
    let lock_type = lock_type(v.get("context"))?;
    Ok(condense(intervals)
        .into_iter()
        .map(|interval| LockRequest {
            lock_type,
            interval,
            preferred_version: None,
        })
        .collect())
}

fn lock_type(context: Option<&Value>) -> Result<LockType, String> {
    let flag = |k: &str| context.and_then(|c| c.get(k)).and_then(Value::as_bool) == Some(true);
    if let Some(t) = context.and_then(|c| c.get("taskLockType")).filter(|t| !t.is_null()) {
        return serde_json::from_value(t.clone())
            .map_err(|_| format!("context.taskLockType must be one of EXCLUSIVE, SHARED, REPLACE, APPEND, got {t}"));
    }
    Ok(if flag("useConcurrentLocks") {
        LockType::Replace
    } else if flag("useSharedLock") {
        LockType::Shared
    } else {
        LockType::Exclusive
    })
}

/// Merges overlapping and abutting intervals, sorted by start.
fn condense(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(intervals.len());
    for i in intervals {
        match out.last_mut() {
            Some(last) if i.start <= last.end => last.end = last.end.max(i.end),
            _ => out.push(i),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(t: &str, spec: &str) -> Vec<(LockType, String)> {
        lock_needs(t, spec)
            .unwrap()
            .into_iter()
            .map(|r| (r.lock_type, r.interval.to_string()))
            .collect()
    }

    #[test]
    fn each_type_needs_what_druids_is_ready_locks() {
        let day = "2024-01-01T00:00:00.000Z/2024-01-02T00:00:00.000Z".to_string();
        assert_eq!(
            needs("kill", r#"{"interval":"2024-01-01/2024-01-02"}"#),
            vec![(LockType::Exclusive, day.clone())]
        );
        assert_eq!(
            needs(
                "compact",
                r#"{"ioConfig":{"inputSpec":{"type":"interval","interval":"2024-01-01/2024-01-02"}},"context":{"useConcurrentLocks":true}}"#
            ),
            vec![(LockType::Replace, day.clone())]
        );
        let index = &index_spec(
            r#"{"intervals":["2024-01-01/2024-01-02","2024-01-02/2024-01-03","2024-02-01/2024-02-02"]}"#,
            false,
            r#"{"taskLockType":"SHARED"}"#,
        );
        assert_eq!(
            needs("index_parallel", index),
            vec![
                (
                    LockType::Shared,
                    "2024-01-01T00:00:00.000Z/2024-01-03T00:00:00.000Z".into()
                ),
                (
                    LockType::Shared,
                    "2024-02-01T00:00:00.000Z/2024-02-02T00:00:00.000Z".into()
                ),
            ]
        );
        let append = &index_spec(r#"{"intervals":["2024/2025"]}"#, true, "{}");
        assert!(needs("index", append).is_empty());
        assert!(needs("noop", r#"{"interval":"2024/2025"}"#).is_empty());
    }

    fn index_spec(granularity_spec: &str, append: bool, context: &str) -> String {
        format!(
            r#"{{"type":"index_parallel","context":{context},"spec":{{
                "dataSchema":{{"dataSource":"d","timestampSpec":{{"column":"t"}},"granularitySpec":{granularity_spec}}},
                "ioConfig":{{"appendToExisting":{append},"inputSource":{{"type":"inline","data":""}},
                    "inputFormat":{{"type":"json"}}}}}}}}"#
        )
    }

    /// Druid's rollup tutorial asks for WEEK segments of 2018-01-01/2018-01-03: the task's
    /// peon locks the whole week, so the lock taken before it runs must be that week, not the
    /// two days (which made the peon wait for itself until its lock timeout).
    #[test]
    fn an_index_task_locks_whole_segment_intervals_before_it_runs() {
        let spec = index_spec(
            r#"{"segmentGranularity":"week","intervals":["2018-01-01/2018-01-03"]}"#,
            false,
            "{}",
        );
        assert_eq!(
            needs("index_parallel", &spec),
            vec![(
                LockType::Exclusive,
                "2018-01-01T00:00:00.000Z/2018-01-08T00:00:00.000Z".into()
            )]
        );
    }

    #[test]
    fn bad_intervals_and_lock_types_are_refused() {
        assert!(lock_needs("kill", r#"{"interval":"soon"}"#).is_err());
        assert!(lock_needs("kill", r#"{"interval":5}"#).is_err());
        assert!(lock_needs("index", &index_spec(r#"{"intervals":"2024/2025"}"#, false, "{}")).is_err());
        assert!(lock_needs("kill", r#"{"interval":"2024/2025","context":{"taskLockType":"MINE"}}"#).is_err());
    }
}
