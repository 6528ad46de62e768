//! Idempotency keys for task submission: a client that sends `Idempotency-Key` with `POST
//! /druid/indexer/v1/task` and retries after a lost answer (a timeout, a dropped connection, a
//! 503 during a leader change) gets the task its first attempt created, never a second one.
//!
//! The keys are replicated state, so the answer survives a leader change. Each is remembered for
//! [`KEY_RETENTION_MS`] after the submission that used it, and at most [`MAX_KEYS`] are kept
//! (the oldest go first); both bounds are applied deterministically on every keyed submission.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// How long a key is remembered: one hour.
pub const KEY_RETENTION_MS: u64 = 3_600_000;
/// Most keys remembered at once.
pub const MAX_KEYS: usize = 100_000;
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Checks a key as a client sent it: 1 to 255 visible ASCII characters.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters (no spaces)"
        ));
    }
    Ok(())
}

/// Keys of recent keyed submissions and the task each created.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(from = "StoredKeys")]
pub struct IdempotencyKeys {
    /// key -> (task id, time of the submission).
    by_key: OrdMap<String, (String, u64)>,
    /// (time, key), oldest first: what to forget next. Derived from `by_key`, rebuilt when a
    /// snapshot is read (a JSON map cannot have tuple keys).
    #[serde(skip)]
    by_time: OrdMap<(u64, String), ()>,
}

/// The stored form of [`IdempotencyKeys`]: the keys, without the derived index.
#[derive(Deserialize)]
struct StoredKeys {
    by_key: OrdMap<String, (String, u64)>,
}

impl From<StoredKeys> for IdempotencyKeys {
    fn from(s: StoredKeys) -> Self {
        let by_time = s.by_key.iter().map(|(k, (_, at))| ((*at, k.clone()), ())).collect();
        IdempotencyKeys {
            by_key: s.by_key,
            by_time,
        }
    }
}

impl IdempotencyKeys {
    /// The task created under `key`, if the key is still remembered at `now_ms`.
    pub fn apply_lookup(&mut self, now_ms: u64, key: &str) -> Option<String> {
        self.forget_old(now_ms);
        self.by_key.get(key).map(|(id, _)| id.clone())
    }

    /// Remembers that the submission under `key` created task `id`.
    pub fn apply_record(&mut self, now_ms: u64, key: &str, id: &str) {
        if let Some((_, at)) = self.by_key.insert(key.to_string(), (id.to_string(), now_ms)) {
            self.by_time.remove(&(at, key.to_string()));
        }
        self.by_time.insert((now_ms, key.to_string()), ());
        self.forget_old(now_ms);
    }

    fn forget_old(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(KEY_RETENTION_MS);
        while let Some(((at, key), _)) = self.by_time.get_min().cloned() {
            if at >= horizon && self.by_key.len() <= MAX_KEYS {
                break;
            }
            self.by_time.remove(&(at, key.clone()));
            self.by_key.remove(&key);
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_its_task_until_it_is_forgotten() {
        let mut k = IdempotencyKeys::default();
        assert_eq!(k.apply_lookup(1_000, "a"), None);
        k.apply_record(1_000, "a", "task-1");
        assert_eq!(k.apply_lookup(2_000, "a").as_deref(), Some("task-1"));
        assert_eq!(k.apply_lookup(1_000 + KEY_RETENTION_MS, "a").as_deref(), Some("task-1"));
        assert_eq!(k.apply_lookup(1_001 + KEY_RETENTION_MS, "a"), None);
        assert!(k.is_empty());
    }

    #[test]
    fn the_oldest_keys_go_first_beyond_the_cap() {
        let mut k = IdempotencyKeys::default();
        for i in 0..(MAX_KEYS + 3) {
            k.apply_record(i as u64, &format!("k{i}"), "t");
        }
        assert_eq!(k.len(), MAX_KEYS);
        assert_eq!(k.apply_lookup(MAX_KEYS as u64, "k0"), None);
        assert_eq!(k.apply_lookup(MAX_KEYS as u64, "k3").as_deref(), Some("t"));
    }

    /// Found by the command property test: the time index has tuple keys, which a JSON map
    /// cannot hold, so the first snapshot after a keyed submission could not be written.
    #[test]
    fn the_keys_survive_a_snapshot() {
        let mut k = IdempotencyKeys::default();
        k.apply_record(1_000, "a", "task-1");
        k.apply_record(2_000, "b", "task-2");
        let text = serde_json::to_string(&k).unwrap();
        let mut back: IdempotencyKeys = serde_json::from_str(&text).unwrap();
        assert_eq!(back.apply_lookup(2_000, "b").as_deref(), Some("task-2"));
        assert_eq!(
            back.apply_lookup(1_001 + KEY_RETENTION_MS, "a"),
            None,
            "the time index is rebuilt"
        );
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(validate_key("retry-7f3a").is_ok());
        assert!(validate_key("").is_err());
        assert!(validate_key("has space").is_err());
        assert!(validate_key("é").is_err());
        assert!(validate_key(&"x".repeat(256)).is_err());
    }
}
