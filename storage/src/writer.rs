//! The one thread that writes a log store's changes to RocksDB, in the order they were asked.
//!
//! openraft requires every write of the log and the vote to reach the disk in the order it was
//! asked: an append must not land before an earlier one, and a truncate, a purge or a vote
//! must not land before the appends asked ahead of it. Each write is therefore queued here and
//! done by this thread alone. Appends queued back to back are written as one group with a
//! single sync at its end (a synced RocksDB write syncs the write-ahead log up to it), so a
//! busy leader pays one fsync per group rather than one per append.
//!
//! The thread holds the database only while writing, and lets go of it before reporting, so
//! that whoever waits on a write may close and reopen the database. It ends when every sender
//! is gone.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::engine::synced;
use crate::mark::Mark;

/// Told once a write is done (or failed): `Ok` means it is durable.
pub(crate) type Done = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// What a queued write does besides its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Log entries up to `last`.
    Append { last: u64 },
    /// Removes the entries from `from` on; the mark goes below them before the write.
    Truncate { from: u64 },
    /// Anything else (the vote, a purge).
    Other,
}

struct Job {
    batch: WriteBatch,
    kind: Kind,
    done: Done,
}

/// The sending side; clones share the thread.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread. `appended(last)` is called after entries up to `last` are durable.
    pub(crate) fn start(db: &Arc<DB>, mark: Arc<Mark>, appended: Box<dyn Fn(u64) + Send>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        let db = Arc::downgrade(db);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run(rx, db, mark, appended))?;
        Ok(Writer { tx })
    }

    /// Queues a write; `done` is called once it is durable or has failed.
    pub(crate) fn queue(&self, batch: WriteBatch, kind: Kind, done: Done) -> std::io::Result<()> {
        self.tx
            .send(Job { batch, kind, done })
            .map_err(|_| std::io::Error::other("the log writer has stopped"))
    }

    /// Queues a write and waits until it is durable.
    pub(crate) async fn write(&self, batch: WriteBatch, kind: Kind) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(
            batch,
            kind,
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        )?;
        rx.await
            .map_err(|_| std::io::Error::other("the log writer stopped before the write was done"))?
    }
}

fn run(rx: mpsc::Receiver<Job>, db: Weak<DB>, mark: Arc<Mark>, appended: Box<dyn Fn(u64) + Send>) {
    let mut queue = VecDeque::new();
    while let Ok(job) = rx.recv() {
        queue.push_back(job);
        queue.extend(rx.try_iter());
        while !queue.is_empty() {
            // A run of appends goes as one group; anything else alone.
            let appends = queue
                .iter()
                .take_while(|j| matches!(j.kind, Kind::Append { .. }))
                .count();
            let group: Vec<Job> = queue.drain(..appends.max(1)).collect();
            write_group(group, &db, &mark, &*appended);
        }
    }
}

fn write_group(group: Vec<Job>, db: &Weak<DB>, mark: &Mark, appended: &dyn Fn(u64)) {
    let mut writes = Vec::with_capacity(group.len());
    let mut dones = Vec::with_capacity(group.len());
    for job in group {
        writes.push((job.batch, job.kind));
        dones.push(job.done);
    }
    let last_append = writes.iter().rev().find_map(|(_, k)| match k {
        Kind::Append { last } => Some(*last),
        _ => None,
    });
    let result: std::io::Result<()> = (|| {
        let db = db
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the database is closed"))?;
        let n = writes.len();
        for (i, (batch, kind)) in writes.into_iter().enumerate() {
            if let Kind::Truncate { from } = kind {
                // The mark goes below the removed entries first, or the next start would take
                // their removal for a loss.
                mark.truncating(from)?;
            }
            let opts = if i + 1 == n { synced() } else { WriteOptions::default() };
            db.write_opt(batch, &opts)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        // Let go of the database before reporting (see the module docs).
        drop(db);
        Ok(())
    })();
    if let (Ok(()), Some(last)) = (&result, last_append) {
        if let Err(e) = mark.synced(last) {
            // The log itself is durable; only the check on the next start is weaker.
            tracing::warn!(error = %e, "cannot write the log mark");
        }
        appended(last);
    }
    // When one write of a group fails, none of the group is known durable: all are told.
    let message = result.err().map(|e| e.to_string());
    for done in dones {
        done(match &message {
            None => Ok(()),
            Some(m) => Err(std::io::Error::other(m.clone())),
        });
    }
}
