//! Versioned value encoding: one version byte followed by JSON.

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
    fn index_keys_sort_like_indexes() {
        let mut keys: Vec<[u8; 8]> = [300u64, 2, 70_000, 1].iter().map(|i| index_key(*i)).collect();
        keys.sort();
        let back: Vec<u64> = keys.iter().map(|k| key_index(k).unwrap()).collect();
        assert_eq!(back, vec![1, 2, 300, 70_000]);
    }
}
