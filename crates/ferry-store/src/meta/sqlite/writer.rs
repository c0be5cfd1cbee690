//! The group-commit writer: one thread owns the only read-write connection. It takes the
//! queued writes that arrived together (up to [`MAX_BATCH`]), runs each closure in its own
//! savepoint inside one transaction, and commits them with one fsync. A closure that fails
//! rolls back to its savepoint, and its on-commit hooks are dropped; the others commit.
//!
//! # Crash behaviour
//! Before a commit that references new blob files, the staging directory is fsynced, so a
//! committed row never points at a file whose directory entry could vanish. The commit
//! clock's high-water mark is written in every batch. Callers are answered only after the
//! commit returned (WAL fsynced) and the hooks ran: a caller that got `Ok` has a durable
//! change and its workers have been woken. A crash before the commit loses the whole batch,
//! whose callers were not answered.

use std::path::Path;

use ferry_core::time::CommitClock;
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::meta::Signals;

/// Most closures committed together in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Answers the caller of a queued write, given the batch's commit outcome.
pub(super) type Finisher = Box<dyn FnOnce(&Result<()>) + Send>;
/// A queued write: given the open transaction (or `None` when the batch could not begin), runs
/// the caller's closure and returns whether it succeeded and how to answer the caller.
pub(super) type QueuedWrite = Box<dyn FnOnce(Option<&mut SqliteWriteTx<'_>>) -> (bool, Finisher) + Send>;

/// The write transaction the closures of a batch share.
pub(super) struct SqliteWriteTx<'a> {
    pub(super) conn: &'a Connection,
    pub(super) clock: &'a mut CommitClock,
    pub(super) hooks: Vec<Box<dyn FnOnce() + Send>>,
    /// The keys of the hooks registered once per transaction, in registration order.
    pub(super) once: Vec<&'static str>,
    pub(super) signals: &'a Signals,
    /// A blob was referenced: fsync the staging directory before committing.
    pub(super) new_blobs: bool,
}

pub(super) fn writer_loop(
    conn: &Connection,
    mut receiver: mpsc::Receiver<QueuedWrite>,
    mut clock: CommitClock,
    staging: Option<&Path>,
    signals: &Signals,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let mut tx = SqliteWriteTx { conn, clock: &mut clock, hooks: Vec::new(), once: Vec::new(), signals, new_blobs: false };
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begun {
            tracing::error!(error = %e, "could not begin a metadata transaction");
            let err: Result<()> = Err(e.into());
            for write in batch {
                // Runs nothing: every caller is answered with the error.
                let (_, finish) = write(None);
                finish(&err);
            }
            continue;
        }
        for write in batch {
            let (hooks_before, once_before) = (tx.hooks.len(), tx.once.len());
            let savepoint = conn.execute_batch("SAVEPOINT closure");
            let (ok, finish) = write(Some(&mut tx));
            let closed = if ok && savepoint.is_ok() {
                conn.execute_batch("RELEASE closure")
            } else {
                tx.hooks.truncate(hooks_before);
                tx.once.truncate(once_before);
                conn.execute_batch("ROLLBACK TO closure; RELEASE closure")
            };
            if let Err(e) = savepoint.and(closed) {
                tracing::error!(error = %e, "savepoint handling failed");
            }
            finishers.push(finish);
        }
        let result = commit(conn, &mut tx, staging);
        if let Err(e) = &result {
            tracing::error!(error = %e, "metadata commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        // Hooks run before callers are answered: once a write returns, its workers are awake.
        if result.is_ok() {
            for hook in tx.hooks.drain(..) {
                hook();
            }
        }
        for finish in finishers {
            finish(&result);
        }
    }
}

fn commit(conn: &Connection, tx: &mut SqliteWriteTx<'_>, staging: Option<&Path>) -> Result<()> {
    if tx.new_blobs
        && let Some(dir) = staging
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    conn.prepare_cached("INSERT OR REPLACE INTO settings (k, v) VALUES ('clock', ?1)")?.execute([tx.clock.last().to_string()])?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}
