//! RocksDB storage for raftlord.
//!
//! A node's storage directory holds a RocksDB database (`db/`) with two keyspaces, each a
//! column family, and the newest snapshot as a file (`snapshots/current.snap`, see
//! [`SnapshotStore`]):
//!
//! | column family | keys | values |
//! |---|---|---|
//! | `log` | Raft log index, 8 bytes big-endian (byte order is index order) | one log entry |
//! | `meta` | `vote`, `committed`, `last_purged`, `format_version` | small records |
//!
//! Every stored value starts with a one-byte encoding version, and the database records a
//! data-format version that is checked on open: data written by a newer raftlord is refused with a
//! clear message instead of being misread.
//!
//! Durability rules, which openraft relies on for safety:
//! - [`LogStore`] acknowledges an append (the `LogFlushed` callback) only after a synced write;
//! - the vote is written with sync before `save_vote` returns;
//! - a snapshot file is synced, renamed into place and its directory synced before it becomes
//!   the current one;
//! - how far the log was synced is also kept outside the database ([`mark`]), so a log that
//!   lost synced entries is refused on open instead of served.
//!
//! The crate knows openraft only through the storage traits it implements and nothing of Druid.

// openraft's storage and RPC error types are large by design; they are what its traits return.
#![allow(clippy::result_large_err)]

mod codec;
mod engine;
mod log_store;
pub mod mark;
mod snapshot_store;
mod writer;

pub use codec::{describe, json_depth};
pub use engine::{Engine, EngineError, FORMAT_VERSION, MEMTABLE_BUDGET};
pub use log_store::{LogStore, MAX_REPLICATION_BYTES};
pub use snapshot_store::{SnapshotStore, StoredSnapshot};
