//! `raftlord debug log`: what a node's Raft log holds, entry by entry, read from its data
//! directory without starting the node (it also works beside a running node).
//!
//! Each line shows the index, what the entry holds (payload kind and each command's kind) and
//! whether this build can read it; `--full` prints the stored JSON too. When a node stops
//! because an entry cannot be read or applied, its log names the index to start from.

use std::io::Write;

use raftlord_storage::Engine;

use super::DebugLogArgs;

/// The entry as this build decodes it.
type Entry = openraft::Entry<raftlord_raft::TypeConfig<crate::sm::State>>;

pub fn log(args: DebugLogArgs) -> anyhow::Result<i32> {
    let dir = args.data_dir.join("raft");
    let engine = Engine::open_read_only(&dir)
        .map_err(|e| anyhow::anyhow!("{e} (is {} a raftlord data directory?)", args.data_dir.display()))?;
    let entries = engine.raw_log_entries(args.from, args.count)?;
    let mut out = std::io::stdout().lock();
    if entries.is_empty() {
        writeln!(out, "no log entries from index {} on", args.from)?;
    }
    let mut unreadable = 0;
    for (index, bytes) in entries {
        let what = raftlord_storage::describe(&bytes);
        let verdict = match bytes.split_first() {
            Some((1, json)) => match serde_json::from_slice::<Entry>(json) {
                Ok(_) => "readable".to_string(),
                Err(e) => {
                    unreadable += 1;
                    format!("UNREADABLE: {e}")
                }
            },
            Some((v, _)) => {
                unreadable += 1;
                format!("UNREADABLE: encoding version {v}")
            }
            None => {
                unreadable += 1;
                "UNREADABLE: empty".to_string()
            }
        };
        writeln!(out, "{index}\t{what}\t{verdict}")?;
        if args.full {
            writeln!(out, "{}", String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()))?;
        }
    }
    Ok(if unreadable > 0 { 3 } else { 0 })
}
