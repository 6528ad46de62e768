//! The audit trail of lock and segment changes: every grant, revocation and release of a lock,
//! every publish, every change of a segment's used flag and of datasource metadata, with the
//! Raft index and leader time of the entry that made it. Read back through
//! `GET /druid/indexer/v1/audit`.

use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::interval::{iso, Interval};
use crate::locks::TaskLock;

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Raft index of the entry that made the change.
    pub index: u64,
    /// Leader time of that entry (ISO-8601).
    pub time: String,
    /// What happened: `lock.granted`, `lock.revoked`, `lock.released`, `segments.published`,
    /// `segments.markedUsed`, `segments.markedUnused`, `datasourceMetadata.set`,
    /// `datasourceMetadata.deleted`.
    #[serde(rename = "type")]
    pub kind: String,
    pub datasource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<TaskLock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
    /// Segment ids affected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl AuditRecord {
    pub fn new(index: u64, time_ms: u64, kind: &str, datasource: &str) -> AuditRecord {
        AuditRecord {
            index,
            time: iso(time_ms as i64),
            kind: kind.to_string(),
            datasource: datasource.to_string(),
            task: None,
            lock: None,
            interval: None,
            segments: Vec::new(),
            metadata: None,
        }
    }

    pub fn task(mut self, task: &str) -> Self {
        self.task = Some(task.to_string());
        self
    }

    pub fn lock(mut self, lock: &TaskLock) -> Self {
        self.interval = Some(lock.interval);
        self.lock = Some(lock.clone());
        self
    }
}

/// Every audit record, oldest first.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AuditTrail {
    records: Vector<AuditRecord>,
}

impl AuditTrail {
    pub fn push(&mut self, record: AuditRecord) {
        self.records.push_back(record);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Removes the records made before `before_ms`; returns how many.
    pub fn apply_prune(&mut self, before_ms: u64) -> usize {
        let mut removed = 0;
        while let Some(r) = self.records.front() {
            let at = crate::interval::parse_instant(&r.time).unwrap_or(i64::MAX);
            if at >= before_ms.min(i64::MAX as u64) as i64 {
                break;
            }
            self.records.pop_front();
            removed += 1;
        }
        removed
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The newest `count` records matching the filters, newest first.
    pub fn newest<'a>(
        &'a self,
        datasource: Option<&'a str>,
        kind: Option<&'a str>,
        count: usize,
    ) -> impl Iterator<Item = &'a AuditRecord> + 'a {
        self.records
            .iter()
            .rev()
            .filter(move |r| datasource.is_none_or(|d| r.datasource == d))
            .filter(move |r| kind.is_none_or(|k| r.kind == k || r.kind.starts_with(&format!("{k}."))))
            .take(count)
    }
}
