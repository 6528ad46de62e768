//! Versioned value encoding: one version byte followed by JSON, and the checks that keep every
//! value readable: [`json_depth`] (serde_json refuses input nested deeper than 128) and
//! [`describe`], which names what an unreadable log entry holds.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version byte written in front of every stored value.
const VALUE_VERSION: u8 = 1;

/// Errors that come from decoding a stored value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has encoding version {0}, this build understands only version {VALUE_VERSION}")]
    UnknownVersion(u8),
    #[error("stored value is not valid: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(VALUE_VERSION);
    // Serialising plain data structures into a Vec cannot fail.
    serde_json::to_writer(&mut out, value).expect("serialising a stored value");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&VALUE_VERSION, rest)) => Ok(serde_json::from_slice(rest)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

/// How deeply JSON text nests arrays and objects (`1` for `[]`, `0` for a scalar). Brackets
/// inside strings do not count. Input that is not JSON gives a number without meaning, never
/// an error.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Deepest nesting [`describe`] parses; deeper values are described by their depth alone.
const DESCRIBE_MAX_DEPTH: usize = 4096;

/// What a stored log entry holds, for messages about an entry that cannot be read or applied:
/// its payload kind and, for application entries, the kind of each command (the key of each
/// externally tagged item), e.g. `Normal: submitTask, publishSegments`.
pub fn describe(bytes: &[u8]) -> String {
    let Some((_, json)) = bytes.split_first() else {
        return "an empty value".into();
    };
    let depth = json_depth(json);
    if depth > DESCRIBE_MAX_DEPTH {
        return format!("{} bytes of JSON nested {depth} levels deep", json.len());
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.disable_recursion_limit();
    let value: serde_json::Value = match serde::Deserialize::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => return format!("{} bytes that are not JSON ({e})", json.len()),
    };
    let payload = &value["payload"];
    match payload.as_object().and_then(|o| o.iter().next()) {
        Some((kind, body)) => {
            let items: Vec<&str> = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| match item {
                    serde_json::Value::Object(o) => o.keys().next().map_or("?", String::as_str),
                    serde_json::Value::String(s) => s.as_str(),
                    _ => "?",
                })
                .collect();
            if items.is_empty() {
                kind.clone()
            } else {
                format!("{kind}: {} (nested {depth} levels deep)", items.join(", "))
            }
        }
        None => payload
            .as_str()
            .map_or_else(|| format!("JSON nested {depth} levels deep"), str::to_string),
    }
}

pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let bytes = encode(&vec![1u32, 2, 3]);
        assert_eq!(bytes[0], VALUE_VERSION);
        assert_eq!(decode::<Vec<u32>>(&bytes).unwrap(), vec![1, 2, 3]);
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert!(matches!(decode::<Vec<u32>>(&newer), Err(CodecError::UnknownVersion(9))));
        assert!(matches!(decode::<Vec<u32>>(&[]), Err(CodecError::Empty)));
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{"}], "c": "\\"}"#), 3);
        assert_eq!(json_depth(br#"["\"[", []]"#), 2);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(json_depth(deep.as_bytes()), 200);
    }

    #[test]
    fn describe_names_the_commands_of_an_entry_too_deep_to_decode() {
        let deep = format!("{}1{}", "[".repeat(150), "]".repeat(150));
        let text = format!(
            r#"{{"log_id": {{"index": 7}}, "payload": {{"Normal": {{"time_ms": 1, "items": [{{"publishSegments": {deep}}}, {{"submitTask": {{}}}}]}}}}}}"#
        );
        let mut bytes = vec![VALUE_VERSION];
        bytes.extend_from_slice(text.as_bytes());
        assert!(
            decode::<serde_json::Value>(&bytes).is_err(),
            "serde_json's own limit refuses it"
        );
        let d = describe(&bytes);
        assert!(d.starts_with("Normal: publishSegments, submitTask"), "{d}");
        assert_eq!(describe(&[VALUE_VERSION, b'{']).split(' ').nth(1), Some("bytes"));
    }

    #[test]
    fn index_keys_sort_like_indexes() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, 70_000, 1].iter().map(|i| index_key(*i)).collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| key_index(k).unwrap()).collect();
        assert_eq!(back, vec![1, 2, 300, 70_000]);
    }
}
