//! Elections called sooner and re-randomised on every attempt.
//!
//! openraft 0.9 draws a node's random election timeout once, when the node starts, and waits
//! the leader lease plus that timeout. Two surviving followers whose draws happen to be close
//! then start their elections together and split the vote, round after round with the same
//! draws: the failover benchmark showed 1.6-2.2 s failovers against a usual 0.6-0.9 s. This
//! nudger calls the election itself once the leader has been silent for its lease plus a delay
//! drawn anew for each attempt (shorter than any openraft would draw, which stays the backstop),
//! so a split vote is broken by the next draw. Before each attempt it asks the other voters for
//! their last log entry and stands back when one holds a more up-to-date log: that node would
//! refuse its vote anyway, and the attempt would only disrupt the election that node can win
//! (Raft's pre-vote, which openraft 0.9 lacks; without it a node left behind by the dead leader
//! kept calling elections for five seconds in the failover benchmark).
//!
//! Leader contact is what openraft itself counts: an AppendEntries arriving from the leader of
//! the current term (counted on arrival: the leader may give up waiting for the answer and drop
//! the request while the follower still applies it), or a vote granted to a candidate (as Raft
//! resets its timer then). A failed attempt is retried after a longer random delay, so that
//! candidates on a loaded machine do not keep cutting each other's elections short. Voters refuse a vote while the
//! lease of the leader they heard from last runs, so a nudge can never depose a live leader
//! that still reaches a quorum.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use crate::node::RaftNode;
use crate::state_machine::StateMachine;

/// How often the nudger looks.
const TICK: Duration = Duration::from_millis(10);

/// When this node last heard from a leader (or granted a vote).
#[derive(Debug)]
pub struct LeaderContact {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    /// Records contact now.
    pub fn touch(&self) {
        self.last_ms
            .fetch_max(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

/// A delay in `[0, max)`, drawn anew on each call.
fn jitter(max: Duration) -> Duration {
    Duration::from_micros(rand::random_range(0..max.as_micros().max(1) as u64))
}

/// When to call elections (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The leader lease (openraft's `election_timeout_max`): no election before the leader has
    /// been silent this long.
    pub lease: Duration,
    /// The first attempt waits a further delay below this.
    pub first_spread: Duration,
    /// A failed attempt is retried after this plus a delay below it: long enough for a vote
    /// round trip on a loaded machine, so that candidates do not keep cutting each other off.
    pub retry: Duration,
}

/// Calls elections for `node` until `cancel` fires or the node is dropped (see the module docs).
pub async fn run<S: StateMachine>(node: Weak<RaftNode<S>>, timing: Timing, cancel: CancellationToken) {
    let Some((raft, id, contact)) = node.upgrade().map(|n| (n.raft.clone(), n.id, n.contact.clone())) else {
        return;
    };
    let mut metrics = raft.metrics();
    let mut first = timing.lease + jitter(timing.first_spread);
    let mut retry = timing.retry + jitter(timing.retry);
    let mut attempted_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let (state, voter) = {
            let m = metrics.borrow_and_update();
            let voter = m.membership_config.membership().voter_ids().any(|v| v == id);
            (m.state, voter)
        };
        if state == ServerState::Leader || !voter {
            contact.touch();
            attempted_at = None;
            continue;
        }
        let silent = contact.silent_for();
        let due = match attempted_at {
            // Heard from a leader since the last attempt: start over.
            Some(at) if silent < at.elapsed() => {
                attempted_at = None;
                first = timing.lease + jitter(timing.first_spread);
                false
            }
            Some(at) => at.elapsed() >= retry,
            None => silent >= first,
        };
        if due {
            let Some(node) = node.upgrade() else { return };
            // A peer with a more up-to-date log would refuse this node's vote; leave the
            // election to it rather than disrupt it.
            if !node.a_peer_has_a_greater_log().await {
                let _ = raft.trigger().elect().await;
            }
            attempted_at = Some(Instant::now());
            retry = timing.retry + jitter(timing.retry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_below_its_bound_and_varies() {
        let max = Duration::from_millis(150);
        let draws: Vec<Duration> = (0..50).map(|_| jitter(max)).collect();
        assert!(draws.iter().all(|d| *d < max));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 25, "{distinct:?}");
    }

    #[test]
    fn contact_measures_silence_since_the_last_touch() {
        let c = LeaderContact::default();
        c.touch();
        assert!(c.silent_for() < Duration::from_secs(1));
    }
}
