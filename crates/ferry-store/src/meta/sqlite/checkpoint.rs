//! WAL checkpoints, off the writer thread.
//!
//! By default SQLite checkpoints in the connection that commits, once the WAL holds 1,000
//! pages: the writer copied those pages into the database file and fsynced it before answering
//! the callers of that commit, and every write queued behind them waited too (several
//! milliseconds, every second or two at 500 PUT/s). Here the writer's connection only reports,
//! after each commit, how many pages the WAL holds (its WAL hook, which also turns SQLite's own
//! checkpoints off); from [`CHECKPOINT_AT`] pages on it wakes the checkpointer, a thread with a
//! connection of its own that checkpoints PASSIVE: it copies what no reader still needs and
//! waits for no reader and not for the writer, which goes on committing meanwhile.
//!
//! # Invariants
//! 1. Nothing here changes what is durable: a checkpoint copies committed pages, and a crash
//!    at any point of one leaves the WAL authoritative (SQLite's own crash story).
//! 2. The WAL stays bounded as it was: a checkpoint starts once it holds [`CHECKPOINT_AT`]
//!    pages, and the WAL restarts from its beginning at the first commit after a checkpoint
//!    that copied all of it (once no reader uses it).
//! 3. The checkpointer ends when the writer's connection closes: the hook, and with it the
//!    wake-up's sender, goes with that connection.

use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_core::sync::lock;
use rusqlite::Connection;

use crate::error::Result;

/// WAL pages from which a checkpoint starts (SQLite's default for its own checkpoints).
pub(super) const CHECKPOINT_AT: i32 = 1000;

/// The checkpointer's thread, and the lock it holds while it checkpoints (tests hold it to
/// keep checkpoints from starting).
pub(super) struct Checkpointer {
    pub(super) thread: JoinHandle<()>,
    pub(super) gate: Arc<Mutex<()>>,
}

/// Turns the automatic checkpoints of `writer` (the connection that commits) off and starts
/// the thread that checkpoints `path` instead, woken by `writer`'s commits.
///
/// # Errors
/// Opening the checkpointer's connection, or starting its thread.
pub(super) fn start(path: &Path, writer: &mut Connection) -> Result<Checkpointer> {
    let conn = super::open_connection(path, false)?;
    // It reads pages once, to copy them: no cache to keep.
    conn.pragma_update(None, "cache_size", -256)?;
    let (wake, woken) = sync_channel::<()>(1);
    writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages >= CHECKPOINT_AT {
            // Refused when a wake-up is already waiting, or the checkpointer is gone (closing).
            let _ = wake.try_send(());
        }
        Ok(())
    }))?;
    let gate = Arc::new(Mutex::new(()));
    let held = gate.clone();
    let thread = std::thread::Builder::new().name("ferry-meta-ckpt".into()).spawn(move || run(&conn, &woken, &held))?;
    Ok(Checkpointer { thread, gate })
}

fn run(conn: &Connection, woken: &Receiver<()>, gate: &Mutex<()>) {
    while woken.recv().is_ok() {
        let _held = lock(gate);
        // (busy, pages in the WAL, pages copied): busy only when another checkpoint runs.
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))) {
            Ok((wal, copied)) => tracing::trace!(wal, copied, "checkpoint"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; the next commit past the mark tries again"),
        }
    }
}
