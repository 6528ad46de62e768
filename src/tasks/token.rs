//! Task tokens: what a peon shows to act in its task's name.
//!
//! The leader mints one for each assignment of a task to a worker, as an HMAC-SHA256 under the
//! cluster secret of the task id and the Raft index of the entry that made the assignment (its
//! attempt). The worker hands it to the peon in the file [`TOKEN_FILE`] of the task directory,
//! readable by its owner only, and the peon sends it as `Authorization: Bearer <token>`.
//!
//! A token is checked without any stored state, and only holds while its assignment is the
//! task's current one: it cannot act for another task, nor for a later attempt of its own
//! task, and it is worthless once the task is complete.

use ring::hmac;

/// File in the task directory that holds the peon's token.
pub const TOKEN_FILE: &str = "token";

const PREFIX: &str = "task.";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a task token at all.
    #[error("not a task token")]
    Malformed,
    /// A well-formed token that was not minted for this task.
    #[error("this token was not issued for task [{0}]")]
    OtherTask(String),
}

/// Whether `credential` has the form of a task token (as opposed to the cluster secret).
pub fn is_token(credential: &str) -> bool {
    credential.starts_with(PREFIX)
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// What the MAC covers: a purpose label, the task id and the assignment's index.
fn message(task: &str, assigned_index: u64) -> Vec<u8> {
    let mut m = b"raftlord task token\0".to_vec();
    m.extend_from_slice(task.as_bytes());
    m.push(0);
    m.extend_from_slice(&assigned_index.to_be_bytes());
    m
}

/// The token for the assignment of `task` made at Raft index `assigned_index`.
pub fn mint(secret: &str, task: &str, assigned_index: u64) -> String {
    let hex: String = hmac::sign(&key(secret), &message(task, assigned_index))
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{PREFIX}{assigned_index}.{hex}")
}

/// Checks `token` against `task`; returns the index of the assignment it was minted for.
pub fn verify(secret: &str, task: &str, token: &str) -> Result<u64, TokenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (index, hex) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let index: u64 = index.parse().map_err(|_| TokenError::Malformed)?;
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(TokenError::Malformed);
    }
    let mac: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| TokenError::Malformed)?;
    hmac::verify(&key(secret), &message(task, index), &mac).map_err(|_| TokenError::OtherTask(task.to_string()))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_holds_for_its_task_and_attempt_only() {
        let t = mint("s3cret", "index_wiki_1", 42);
        assert!(is_token(&t));
        assert_eq!(verify("s3cret", "index_wiki_1", &t), Ok(42));
        assert_eq!(
            verify("s3cret", "index_wiki_2", &t),
            Err(TokenError::OtherTask("index_wiki_2".into()))
        );
        assert!(verify("other secret", "index_wiki_1", &t).is_err());
        // Another attempt's index with this attempt's MAC.
        let forged = t.replacen("task.42.", "task.43.", 1);
        assert!(verify("s3cret", "index_wiki_1", &forged).is_err());
        for bad in ["", "task.", "task.x.00", "task.1.zz", "s3cret", "task.1.é"] {
            assert_eq!(
                verify("s3cret", "index_wiki_1", bad),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_mac_covers_where_the_task_id_ends() {
        // "a" + index vs "a\0..." style collisions: the separator keeps them apart.
        assert_ne!(mint("k", "a", 1), mint("k", "a\0", 1));
    }

    proptest! {
        #[test]
        fn any_credential_is_checked_without_panicking(task in ".{0,40}", token in ".{0,120}") {
            let _ = verify("k", &task, &token);
        }

        #[test]
        fn every_minted_token_verifies(task in ".{0,40}", index in any::<u64>()) {
            prop_assert_eq!(verify("k", &task, &mint("k", &task, index)), Ok(index));
        }
    }
}
