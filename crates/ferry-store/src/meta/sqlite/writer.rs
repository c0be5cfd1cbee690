//! The group-commit writer: one thread owns the only read-write connection. It takes the
//! queued writes that arrived together (up to [`MAX_BATCH`]) and every deferred write waiting,
//! runs each closure in its own savepoint inside one transaction, and commits them with one
//! fsync. A closure that fails rolls back to its savepoint, and its on-commit hooks are
//! dropped; the others commit.
//!
//! # Deferred writes
//! A write nobody waits on interactively (a replication job's outcome) may be deferred
//! ([`Deferred`]): it waits, in memory, for the next batch, which a queued write or, at most
//! [`DEFER_AT_MOST`] later, a [`Queued::Flush`] starts. Under load it commits with a client's
//! write, sharing its fsync and most of its pages (a job's completion touches the outbox pages
//! the new jobs of that write touch); when nothing else is written, several go together.
//!
//! # Crash behaviour
//! Before a commit that references new blob files, the staging directory is fsynced, so a
//! committed row never points at a file whose directory entry could vanish. The commit
//! clock's high-water mark is written in every batch. Callers are answered only after the
//! commit returned (WAL fsynced) and the hooks ran: a caller that got `Ok` has a durable
//! change and its workers have been woken. A crash before the commit loses the whole batch,
//! whose callers were not answered; deferred writes waiting are lost the same way, unanswered.
//! When the queue closes (shutdown), the writer commits the deferred writes left, then refuses
//! new ones.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ferry_core::sync::lock;
use ferry_core::time::CommitClock;
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::meta::Signals;

/// Most closures committed together in one transaction.
pub(super) const MAX_BATCH: usize = 256;

/// Longest a deferred write waits for a batch to join.
pub(super) const DEFER_AT_MOST: Duration = Duration::from_millis(10);

/// What the writer's queue carries.
pub(super) enum Queued {
    Write(QueuedWrite),
    /// Commit the deferred writes waiting, if any (sent [`DEFER_AT_MOST`] after the first of
    /// them, or when [`MAX_BATCH`] wait).
    Flush,
}

/// The deferred writes waiting for the next batch.
#[derive(Default)]
pub(super) struct Deferred {
    // std Mutex: held only to push or take, never across an await.
    state: Mutex<DeferredState>,
}

#[derive(Default)]
struct DeferredState {
    writes: Vec<QueuedWrite>,
    /// The writer has stopped: nothing would commit a write pushed now.
    closed: bool,
}

/// Where a pushed deferred write stands.
pub(super) enum Pushed {
    /// The first one waiting: the caller arranges a flush [`DEFER_AT_MOST`] from now.
    First,
    /// Others wait with it: a flush is on its way.
    Joined,
    /// [`MAX_BATCH`] wait: the caller asks for a flush now.
    Full,
    /// The writer has stopped; the write was not taken.
    Closed,
}

impl Deferred {
    pub(super) fn push(&self, write: QueuedWrite) -> Pushed {
        let mut state = lock(&self.state);
        if state.closed {
            return Pushed::Closed;
        }
        state.writes.push(write);
        match state.writes.len() {
            1 => Pushed::First,
            n if n >= MAX_BATCH => Pushed::Full,
            _ => Pushed::Joined,
        }
    }

    /// Deferred writes waiting now.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        lock(&self.state).writes.len()
    }

    fn take(&self, close: bool) -> Vec<QueuedWrite> {
        let mut state = lock(&self.state);
        state.closed |= close;
        std::mem::take(&mut state.writes)
    }
}

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
    mut receiver: mpsc::Receiver<Queued>,
    deferred: &Deferred,
    mut clock: CommitClock,
    staging: Option<&Path>,
    signals: &Signals,
) {
    loop {
        let mut batch = Vec::new();
        let closed = match receiver.blocking_recv() {
            Some(Queued::Write(write)) => {
                batch.push(write);
                false
            }
            Some(Queued::Flush) => false,
            None => true,
        };
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(Queued::Write(write)) => batch.push(write),
                Ok(Queued::Flush) => {}
                Err(_) => break,
            }
        }
        batch.extend(deferred.take(closed));
        if !batch.is_empty() {
            run_batch(conn, batch, &mut clock, staging, signals);
        }
        if closed {
            return;
        }
    }
}

/// Runs `batch` in one transaction, commits it and answers its callers.
fn run_batch(conn: &Connection, batch: Vec<QueuedWrite>, clock: &mut CommitClock, staging: Option<&Path>, signals: &Signals) {
    let mut finishers = Vec::with_capacity(batch.len());
    let mut tx = SqliteWriteTx { conn, clock, hooks: Vec::new(), once: Vec::new(), signals, new_blobs: false };
    let begun = conn.execute_batch("BEGIN IMMEDIATE");
    if let Err(e) = begun {
        tracing::error!(error = %e, "could not begin a metadata transaction");
        let err: Result<()> = Err(e.into());
        for write in batch {
            // Runs nothing: every caller is answered with the error.
            let (_, finish) = write(None);
            finish(&err);
        }
        return;
    }
    for write in batch {
        let (hooks_before, once_before) = (tx.hooks.len(), tx.once.len());
        let savepoint = statement(conn, "SAVEPOINT closure");
        let (ok, finish) = write(Some(&mut tx));
        let closed = if ok && savepoint.is_ok() {
            statement(conn, "RELEASE closure")
        } else {
            tx.hooks.truncate(hooks_before);
            tx.once.truncate(once_before);
            statement(conn, "ROLLBACK TO closure").and_then(|()| statement(conn, "RELEASE closure"))
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

/// Runs one of the savepoint statements, prepared once (they run twice per closure).
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
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
