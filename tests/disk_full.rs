//! A disk that fills to the last byte, on a follower and then on the leader of a three-node
//! cluster whose data directories are small tmpfs mounts in private mount namespaces. The
//! scenario and its checks are in `raftlord-harness` (`harness/src/diskfull.rs`); the benchmark
//! prints the same report (`raftlord-bench disk-full`).
//!
//! Mounting needs root and util-linux's `unshare`. Where they are missing the test says so on
//! stderr and passes without running: the README says the same.

use std::path::Path;

use raftlord_harness::diskfull;

#[test]
fn a_full_disk_refuses_writes_clearly_keeps_every_node_up_and_loses_nothing_once_freed() {
    if let Some(why) = diskfull::unavailable() {
        eprintln!("SKIPPED: the disk-full test cannot run here: {why}");
        return;
    }
    let report = diskfull::run(Path::new(env!("CARGO_BIN_EXE_raftlord")), &diskfull::Options::default())
        .expect("the disk-full run");
    eprintln!("{}", report.summary());
    let violations = report.violations();
    assert!(violations.is_empty(), "{}\n{violations:#?}", report.summary());
    assert!(report.acked_with_follower_full >= 30, "{}", report.summary());
    assert!(report.refused >= 1, "{}", report.summary());
    assert!(report.follower_caught_up_in.is_some() && report.writes_resumed_in.is_some());
}
