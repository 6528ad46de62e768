//! Turning a submitted task spec into a [`NewTask`]: Druid's validation and id rules.

use rand::Rng;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::NewTask;
use crate::clock::iso;

/// Longest id accepted, in bytes: ids become file and directory names.
pub const MAX_ID_BYTES: usize = 255;

/// What was wrong with a submitted spec. Every variant is the client's mistake (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("a task spec must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("the task spec has no 'type'; set it to the task type, e.g. \"noop\" or \"index_parallel\"")]
    MissingType,
    #[error("'{field}' must be a string")]
    NotAString { field: &'static str },
    #[error("invalid {what} [{value}]: {problem}")]
    InvalidId {
        what: &'static str,
        value: String,
        problem: &'static str,
    },
    #[error("the task spec has no 'dataSource'")]
    MissingDataSource,
    #[error("'context.priority' must be an integer")]
    BadPriority,
}

/// Checks an id (or datasource name) against Druid's `IdUtils.validateId` rules, plus a length
/// limit: ids become file names on workers.
pub fn validate_id(what: &'static str, value: &str) -> Result<(), SpecError> {
    let problem = if value.is_empty() {
        Some("must not be empty")
    } else if value.starts_with('.') {
        Some("must not start with '.'")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value.chars().any(|c| c.is_whitespace() && c != ' ') {
        Some("must not contain whitespace other than space")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if value.len() > MAX_ID_BYTES {
        Some("must be at most 255 bytes long")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => {
            let shown: String = value.chars().take(80).collect();
            Err(SpecError::InvalidId {
                what,
                value: shown,
                problem,
            })
        }
    }
}

/// Druid's default lock priority for a task type (`Tasks.java`).
pub fn default_priority(task_type: &str) -> i32 {
    match task_type {
        "index_kafka" | "index_kinesis" | "index_realtime" | "index_realtime_appenderator" => 75,
        "index" | "index_parallel" | "index_hadoop" | "single_phase_sub_task" | "noop" => 50,
        "compact" => 25,
        _ => 0,
    }
}

/// A new task id in Druid's format: `<type>_<dataSource>_<8 random letters a-p>_<now ISO>`.
pub fn new_task_id(task_type: &str, datasource: &str, now_ms: u64, rng: &mut impl Rng) -> String {
    let suffix: String = (0..8).map(|_| (b'a' + rng.random_range(0..16u8)) as char).collect();
    format!("{task_type}_{datasource}_{suffix}_{}", iso(now_ms))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field<'a>(obj: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>, SpecError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SpecError::NotAString { field }),
    }
}

/// Parses and validates a submitted spec. When the spec has no id, one is generated in Druid's
/// format and written into the stored payload.
pub fn parse_submission(body: &[u8], now_ms: u64, rng: &mut impl Rng) -> Result<NewTask, SpecError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(SpecError::NotAnObject(kind(&value)));
    };
    let task_type = string_field(&obj, "type")?
        .filter(|t| !t.is_empty())
        .ok_or(SpecError::MissingType)?
        .to_string();
    validate_id("task type", &task_type)?;
    let datasource = match string_field(&obj, "dataSource")? {
        Some(ds) => ds.to_string(),
        None => match obj
            .get("spec")
            .and_then(|s| s.get("dataSchema"))
            .and_then(|d| d.get("dataSource"))
        {
            Some(Value::String(ds)) => ds.clone(),
            _ if task_type == "noop" => "none".to_string(),
            _ => return Err(SpecError::MissingDataSource),
        },
    };
    validate_id("dataSource", &datasource)?;
    let priority = match obj.get("context").and_then(|c| c.get("priority")) {
        None | Some(Value::Null) => default_priority(&task_type),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(SpecError::BadPriority)?,
        Some(_) => return Err(SpecError::BadPriority),
    };
    let (id, payload) = match string_field(&obj, "id")? {
        Some(id) => {
            validate_id("task id", id)?;
            // Keep the spec exactly as submitted.
            let text = std::str::from_utf8(body).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
            let raw =
                RawValue::from_string(text.trim().to_string()).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
            (id.to_string(), raw)
        }
        None => {
            let id = new_task_id(&task_type, &datasource, now_ms, rng);
            obj.insert("id".into(), Value::String(id.clone()));
            let raw = serde_json::value::to_raw_value(&obj).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
            (id, raw)
        }
    };
    let group_id = string_field(&obj, "groupId")?.unwrap_or(&id).to_string();
    validate_id("groupId", &group_id)?;
    Ok(NewTask {
        id,
        task_type,
        group_id,
        datasource,
        priority,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn parse(body: &str) -> Result<NewTask, SpecError> {
        parse_submission(body.as_bytes(), 0, &mut rand::rngs::StdRng::seed_from_u64(7))
    }

    #[test]
    fn generated_id_has_druids_shape_and_is_stored_in_the_payload() {
        let t = parse(r#"{"type":"index_parallel","spec":{"dataSchema":{"dataSource":"wiki"}}}"#).unwrap();
        let parts: Vec<&str> = t.id.rsplitn(2, '_').collect();
        assert_eq!(parts[0], "1970-01-01T00:00:00.000Z");
        let prefix = parts[1];
        assert!(prefix.starts_with("index_parallel_wiki_"), "{}", t.id);
        let suffix = &prefix["index_parallel_wiki_".len()..];
        assert_eq!(suffix.len(), 8);
        assert!(suffix.bytes().all(|b| (b'a'..=b'p').contains(&b)));
        let payload: Value = serde_json::from_str(t.payload.get()).unwrap();
        assert_eq!(payload["id"], Value::String(t.id.clone()));
        assert_eq!(
            (t.datasource.as_str(), t.priority, t.group_id == t.id),
            ("wiki", 50, true)
        );
    }

    #[test]
    fn given_id_keeps_payload_verbatim() {
        let body = r#"{"type":"noop","id":"my-task","context":{"priority":7},"zeta":1,"alpha":2}"#;
        let t = parse(body).unwrap();
        assert_eq!(t.payload.get(), body);
        assert_eq!(
            (t.id.as_str(), t.datasource.as_str(), t.priority),
            ("my-task", "none", 7)
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(parse("{nope"), Err(SpecError::MalformedJson(_))));
        assert_eq!(parse("[1]").unwrap_err(), SpecError::NotAnObject("an array"));
        assert_eq!(parse(r#"{"id":"x"}"#).unwrap_err(), SpecError::MissingType);
        assert_eq!(parse(r#"{"type":"index"}"#).unwrap_err(), SpecError::MissingDataSource);
        assert_eq!(
            parse(r#"{"type":"noop","id":5}"#).unwrap_err(),
            SpecError::NotAString { field: "id" }
        );
        assert_eq!(
            parse(r#"{"type":"noop","context":{"priority":"hi"}}"#).unwrap_err(),
            SpecError::BadPriority
        );
    }

    #[test]
    fn id_rules_follow_druid() {
        for bad in [
            "",
            ".hidden",
            "a/b",
            "tab\there",
            "new\nline",
            "bell\u{7}",
            &"x".repeat(256),
        ] {
            assert!(validate_id("task id", bad).is_err(), "{bad:?} must be refused");
        }
        for good in [
            "a b",
            "index_wiki_2024-01-01T00:00:00.000Z",
            "ünïcödé",
            &"x".repeat(255),
        ] {
            validate_id("task id", good).unwrap();
        }
    }
}
