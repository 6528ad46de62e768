//! Turning a submitted task spec into a [`NewTask`]: Druid's validation and id rules.

use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{NewTask, Readiness, ReadyResult, TaskResource};
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
    #[error("Could not resolve type id '{0}' as a subtype of Task: known type ids = [{known}]", known = KNOWN_TASK_TYPES.join(", "))]
    UnknownType(String),
    #[error("invalid '{field}': {problem}")]
    InvalidField { field: &'static str, problem: String },
    /// An ingestion spec that cannot run; the error names the field by its JSON path.
    #[error("invalid ingestion spec: {0}")]
    Ingestion(#[from] raftlord_ingest::SpecError),
}

/// Task types Druid knows (core and the bundled extensions); any other `type` is refused at
/// submission, as Druid's JSON binding refuses it.
pub const KNOWN_TASK_TYPES: &[&str] = &[
    "archive",
    "compact",
    "index",
    "index_hadoop",
    "index_kafka",
    "index_kinesis",
    "index_parallel",
    "index_realtime",
    "index_realtime_appenderator",
    "kill",
    "move",
    "noop",
    "partial_dimension_cardinality",
    "partial_dimension_distribution",
    "partial_index_generate",
    "partial_index_generic_merge",
    "partial_range_index_generate",
    "query_controller",
    "query_worker",
    "restore",
    "single_phase_sub_task",
];

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

/// The top-level fields a submission is validated on, borrowed from the request body: the rest
/// of the spec is stored as submitted and never parsed into a tree.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow, default)]
    task_type: Option<&'a RawValue>,
    /// `Some` whenever the key is there, even as `null` (which must then be replaced, not
    /// duplicated, when an id is generated).
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(rename = "dataSource", borrow, default)]
    data_source: Option<&'a RawValue>,
    #[serde(rename = "groupId", borrow, default)]
    group_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    context: Option<&'a RawValue>,
    #[serde(borrow, default)]
    spec: Option<&'a RawValue>,
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(rename = "runTime", borrow, default)]
    run_time: Option<&'a RawValue>,
    #[serde(rename = "isReadyTime", borrow, default)]
    is_ready_time: Option<&'a RawValue>,
    #[serde(rename = "isReadyResult", borrow, default)]
    is_ready_result: Option<&'a RawValue>,
}

/// A non-negative whole number of milliseconds, when present and not `null`.
fn millis_field(raw: Option<&RawValue>, field: &'static str) -> Result<Option<u64>, SpecError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| SpecError::InvalidField {
            field,
            problem: format!("must be a non-negative whole number of milliseconds, got {text}"),
        }),
    }
}

/// The `noop` task's readiness fields (`isReadyTime`, `isReadyResult`), validated; `runTime`
/// is checked too, although only the peon reads it.
fn noop_readiness(head: &Head) -> Result<Readiness, SpecError> {
    millis_field(head.run_time, "runTime")?;
    let after_ms = millis_field(head.is_ready_time, "isReadyTime")?.unwrap_or(0);
    let result = match string_field(head.is_ready_result, "isReadyResult")? {
        None => ReadyResult::Yes,
        Some(r) => match r.to_ascii_uppercase().as_str() {
            "YES" => ReadyResult::Yes,
            "NO" => ReadyResult::No,
            "EXCEPTION" => ReadyResult::Exception,
            _ => {
                return Err(SpecError::InvalidField {
                    field: "isReadyResult",
                    problem: format!("must be YES, NO or EXCEPTION, got \"{r}\""),
                })
            }
        },
    };
    Ok(Readiness { after_ms, result })
}

/// Druid's `{"availabilityGroup": ..., "requiredCapacity": ...}`.
fn task_resource(raw: Option<&RawValue>) -> Result<TaskResource, SpecError> {
    let Some(text) = raw.map(RawValue::get).filter(|t| *t != "null") else {
        return Ok(TaskResource::default());
    };
    let resource: TaskResource = serde_json::from_str(text).map_err(|e| SpecError::InvalidField {
        field: "resource",
        problem: format!("expected {{\"availabilityGroup\": string, \"requiredCapacity\": positive integer}}: {e}"),
    })?;
    if resource.required_capacity == Some(0) {
        return Err(SpecError::InvalidField {
            field: "resource.requiredCapacity",
            problem: "must be at least 1".into(),
        });
    }
    Ok(resource)
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// `{"priority": ...}` inside `context`.
#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    priority: Option<&'a RawValue>,
}

/// `{"dataSchema": {"dataSource": ...}}` inside `spec` (index and index_parallel tasks).
#[derive(Deserialize)]
struct IngestionSpec<'a> {
    #[serde(rename = "dataSchema", borrow, default)]
    data_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DataSchema<'a> {
    #[serde(rename = "dataSource", borrow, default)]
    data_source: Option<&'a RawValue>,
}

/// A field that must be a string when present; JSON `null` counts as absent.
fn string_field(raw: Option<&RawValue>, field: &'static str) -> Result<Option<String>, SpecError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => serde_json::from_str::<String>(text)
            .map(Some)
            .map_err(|_| SpecError::NotAString { field }),
    }
}

/// Parses an optional nested object, treating anything that is not an object as absent.
fn nested<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}

/// Parses and validates a submitted spec. When the spec has no id, one is generated in Druid's
/// format and written into the stored payload.
pub fn parse_submission(body: &[u8], now_ms: u64, rng: &mut impl Rng) -> Result<NewTask, SpecError> {
    let malformed = |e: &dyn std::fmt::Display| SpecError::MalformedJson(e.to_string());
    // One validating pass copies the spec as submitted; the fields below borrow from it.
    let payload: Box<RawValue> = serde_json::from_slice(body).map_err(|e| malformed(&e))?;
    let text = payload.get();
    if !text.starts_with('{') {
        let value: Value = serde_json::from_str(text).map_err(|e| malformed(&e))?;
        return Err(SpecError::NotAnObject(kind(&value)));
    }
    let head: Head = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    let task_type = string_field(head.task_type, "type")?
        .filter(|t| !t.is_empty())
        .ok_or(SpecError::MissingType)?;
    validate_id("task type", &task_type)?;
    if !KNOWN_TASK_TYPES.contains(&task_type.as_str()) {
        return Err(SpecError::UnknownType(task_type));
    }
    if raftlord_ingest::IngestSpec::handles(&task_type) {
        check_ingestion(text)?;
    }
    if task_type == "compact" {
        let task: Value = serde_json::from_str(text).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
        raftlord_ingest::compact::CompactSpec::from_task(&task)?;
    }
    let readiness = if task_type == "noop" {
        noop_readiness(&head)?
    } else {
        Readiness::default()
    };
    let resource = task_resource(head.resource)?;
    let locks = super::lock_needs::lock_needs(&task_type, text).map_err(|problem| SpecError::InvalidField {
        field: "interval",
        problem,
    })?;
    let nested_datasource = || {
        let spec: IngestionSpec = nested(head.spec)?;
        let schema: DataSchema = nested(spec.data_schema)?;
        string_field(schema.data_source, "spec.dataSchema.dataSource")
            .ok()
            .flatten()
    };
    let datasource = match string_field(head.data_source, "dataSource")? {
        Some(ds) => ds,
        None => match nested_datasource() {
            Some(ds) => ds,
            None if task_type == "noop" => "none".to_string(),
            None => return Err(SpecError::MissingDataSource),
        },
    };
    validate_id("dataSource", &datasource)?;
    let priority = match nested::<Context>(head.context)
        .and_then(|c| c.priority)
        .map(RawValue::get)
    {
        None | Some("null") => default_priority(&task_type),
        Some(n) => n
            .parse::<i64>()
            .ok()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(SpecError::BadPriority)?,
    };
    let given_id = string_field(head.id, "id")?;
    let group_id = string_field(head.group_id, "groupId")?;
    let (id, payload) = match given_id {
        Some(id) => {
            validate_id("task id", &id)?;
            (id, payload)
        }
        None => {
            let id = new_task_id(&task_type, &datasource, now_ms, rng);
            (id.clone(), with_id(text, head.id.is_some(), &id)?)
        }
    };
    let group_id = group_id.unwrap_or_else(|| id.clone());
    validate_id("groupId", &group_id)?;
    Ok(NewTask {
        id,
        task_type,
        group_id,
        datasource,
        priority,
        payload,
        resource,
        readiness,
        locks,
    })
}

/// Checks an `index` / `index_parallel` spec as the peon will read it, and that the local
/// files it names exist, so that a spec that cannot run is refused at submit.
fn check_ingestion(text: &str) -> Result<(), SpecError> {
    let task: Value = serde_json::from_str(text).map_err(|e| SpecError::MalformedJson(e.to_string()))?;
    let spec = raftlord_ingest::IngestSpec::from_task(&task)?;
    spec.source.check_exists().map_err(|(field, message)| {
        raftlord_ingest::SpecError::new(format!("spec.ioConfig.inputSource.{field}"), message)
    })?;
    Ok(())
}

/// The spec `text` (a JSON object) with `"id": id` set.
fn with_id(text: &str, has_null_id: bool, id: &str) -> Result<Box<RawValue>, SpecError> {
    let malformed = |e: serde_json::Error| SpecError::MalformedJson(e.to_string());
    if has_null_id {
        // `"id": null` is replaced in place; rare enough to go through a tree.
        let mut obj: Map<String, Value> = serde_json::from_str(text).map_err(malformed)?;
        obj.insert("id".into(), Value::String(id.to_string()));
        return serde_json::value::to_raw_value(&obj).map_err(malformed);
    }
    let rest = text[1..].trim_start();
    let quoted = serde_json::to_string(id).map_err(malformed)?;
    let spliced = if rest.starts_with('}') {
        format!("{{\"id\":{quoted}}}")
    } else {
        format!("{{\"id\":{quoted},{rest}")
    };
    RawValue::from_string(spliced).map_err(malformed)
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
        let t = parse(
            r#"{"type":"index_parallel","spec":{"dataSchema":{"dataSource":"wiki","timestampSpec":{"column":"t"}},
                "ioConfig":{"inputSource":{"type":"inline","data":""},"inputFormat":{"type":"json"}}}}"#,
        )
        .unwrap();
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
    fn generated_id_is_spliced_into_any_object_shape() {
        for body in [
            r#"{"type":"noop"}"#,
            r#"  { "type" : "noop" , "x": [1, {"id": 2}] }  "#,
            r#"{"type":"noop","id":null}"#,
        ] {
            let t = parse(body).unwrap();
            let payload: Value = serde_json::from_str(t.payload.get()).unwrap();
            assert_eq!(payload["id"], Value::String(t.id.clone()), "{body}");
            assert_eq!(payload["type"], "noop");
        }
        let t = parse(r#"{"type":"noop","x":[1,{"id":2}]}"#).unwrap();
        let payload: Value = serde_json::from_str(t.payload.get()).unwrap();
        assert_eq!(payload["x"][1]["id"], 2, "nested ids are left alone");
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
        assert_eq!(
            parse(r#"{"type":"index_hadoop"}"#).unwrap_err(),
            SpecError::MissingDataSource
        );
        // An ingestion spec is checked whole, and the error names the field.
        match parse(r#"{"type":"index","spec":{"dataSchema":{"dataSource":"w"},"ioConfig":{}}}"#) {
            Err(SpecError::Ingestion(e)) => assert_eq!(e.field, "spec.dataSchema.timestampSpec"),
            other => panic!("{other:?}"),
        }
        let missing = r#"{"type":"index","spec":{"dataSchema":{"dataSource":"w","timestampSpec":{}},
            "ioConfig":{"inputSource":{"type":"local","baseDir":"/no/such/dir","filter":"*"},"inputFormat":{"type":"json"}}}}"#;
        match parse(missing) {
            Err(SpecError::Ingestion(e)) => assert_eq!(e.field, "spec.ioConfig.inputSource.baseDir"),
            other => panic!("{other:?}"),
        }
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
