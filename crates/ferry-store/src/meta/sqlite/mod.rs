//! SQLite backend of the metadata store.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | opening the database, the read pool, [`SqliteMeta`] |
//! | `writer.rs` | the group-commit writer thread: savepoints, hooks, commit |
//! | `schema.rs` | tables, indexes and migrations |
//! | `rows.rs` | column lists and row mapping, by column name |
//! | `reads.rs` / `writes.rs` | the object reads and writes |
//! | `outbox.rs` | the replication tables' SQL |
//!
//! # Durability
//! WAL journal with `synchronous=FULL`: a commit returns only after the WAL is fsynced. One writer
//! thread owns the only read-write connection and commits in groups (`writer.rs`). The whole
//! crash story of a write is in the store's crate docs.

mod outbox;
mod reads;
mod rows;
mod schema;
mod writer;
mod writes;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_core::sync::lock;
use ferry_core::time::CommitClock;
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use self::reads::HasConn;
use self::writer::{Finisher, MAX_BATCH, QueuedWrite, writer_loop};
use super::{MetaStore, ReadTx, Signals, WriteTx};
use crate::error::{Error, Result};
pub use schema::SCHEMA_VERSION;

/// Read connections kept open, and reads run at once from async code (more would only add
/// blocking threads and connections, each with its own page cache, on a busy server: a drain of
/// a 200,000-object backlog had 96 threads and 260 MiB resident before this bound).
const MAX_IDLE_READERS: usize = 8;
/// Page cache of a read connection, KiB (the writer's is 16 MiB; the OS caches the file too).
const READER_CACHE_KIB: i64 = 4096;
/// Prepared statements kept per connection (more than the distinct statements Ferry runs).
const STATEMENT_CACHE: usize = 128;
/// The SQLite metadata store of one region.
pub struct SqliteMeta {
    // std Mutex: only cloned out of, never held across an await.
    sender: Mutex<Option<mpsc::Sender<QueuedWrite>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReadPool>,
    signals: Arc<Signals>,
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// [`MAX_IDLE_READERS`] permits: async reads wait here, not on a blocking thread.
    slots: tokio::sync::Semaphore,
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection> {
    let conn = Connection::open(path)?;
    // Every statement Ferry runs stays prepared (rusqlite keeps 16 by default; the writer uses
    // about 40: past that, statements were parsed again on every use).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Plans do not depend on bound values. Without this, SQLite marks statements whose plan a
    // value could change (`LIMIT ?`, residual `col = ?` terms) for re-preparation whenever their
    // bindings are cleared, which the statement cache does on every return: such statements were
    // parsed and planned on every use (an eighth of a replicating region's CPU).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", if read_only { -READER_CACHE_KIB } else { -16_000 })?;
    if read_only {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    Ok(conn)
}

impl SqliteMeta {
    /// Opens (creating if needed) the database at `path`. `staging_dir`, when given, is fsynced
    /// before every commit that references a new blob.
    ///
    /// # Errors
    /// When the database cannot be opened or has a newer schema than this build.
    pub fn open(path: &Path, staging_dir: Option<PathBuf>) -> Result<Self> {
        let conn = Connection::open(path)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Other(format!("{}: could not enable WAL journal (got {mode})", path.display())));
        }
        drop(conn);
        let conn = open_connection(path, false)?;
        schema::migrate(&conn)?;
        let high_water: i64 = conn
            .query_row("SELECT v FROM settings WHERE k = 'clock'", [], |r| r.get::<_, String>(0))
            .optional()?
            .map_or(Ok(0), |s| s.parse().map_err(|_| Error::unknown("commit clock setting", s)))?;
        let (sender, receiver) = mpsc::channel::<QueuedWrite>(4 * MAX_BATCH);
        let signals = Arc::new(Signals::default());
        let writer_signals = signals.clone();
        let writer = std::thread::Builder::new().name("ferry-meta-writer".into()).spawn(move || {
            writer_loop(&conn, receiver, CommitClock::new(high_water), staging_dir.as_deref(), &writer_signals);
        })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                slots: tokio::sync::Semaphore::new(MAX_IDLE_READERS),
            }),
            signals,
        })
    }

    /// Runs `f` in a write transaction and returns its result once the transaction is durably
    /// committed. If `f` fails, its changes are rolled back and its error returned.
    ///
    /// # Errors
    /// `f`'s error, a commit error, or [`Error::Closed`] after shutdown.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        let sender = lock(&self.sender).clone().ok_or(Error::Closed)?;
        let (done_tx, done_rx) = oneshot::channel::<Result<T>>();
        let queued: QueuedWrite = Box::new(move |tx| {
            let outcome = match tx {
                Some(tx) => std::panic::catch_unwind(AssertUnwindSafe(|| f(tx)))
                    .unwrap_or_else(|_| Err(Error::Other("metadata transaction panicked".into()))),
                None => Err(Error::Other("could not begin a transaction".into())),
            };
            let ok = outcome.is_ok();
            let finish: Finisher = Box::new(move |commit: &Result<()>| {
                let result = match commit {
                    Ok(()) => outcome,
                    Err(e) if e.is_storage_full() => Err(Error::StorageFull(format!("commit failed: {e}"))),
                    Err(e) => Err(Error::Other(format!("commit failed: {e}"))),
                };
                let _ = done_tx.send(result);
            });
            (ok, finish)
        });
        sender.send(queued).await.map_err(|_| Error::Closed)?;
        done_rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` on a read snapshot, on a blocking thread.
    ///
    /// # Errors
    /// `f`'s error or a database error.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        let slot = self.readers.slots.acquire().await.map_err(|_| Error::Closed)?;
        let pool = self.readers.clone();
        let out = tokio::task::spawn_blocking(move || pool.run(f)).await;
        drop(slot);
        out.map_err(|e| Error::Other(format!("read task failed: {e}")))?
    }

    /// Same as [`read`](Self::read), for callers already on a blocking thread.
    ///
    /// # Errors
    /// `f`'s error or a database error.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<T>) -> Result<T> {
        self.readers.run(f)
    }

    /// The signals on-commit hooks of this store fire.
    #[must_use]
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Stops accepting writes, lets the writer finish what it has, and waits for it.
    pub fn shutdown(&self) {
        lock(&self.sender).take();
        if let Some(h) = lock(&self.writer).take() {
            let _ = h.join();
        }
        lock(&self.readers.idle).clear();
    }
}

impl Drop for SqliteMeta {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl ReadPool {
    fn run<T>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<T>) -> Result<T> {
        let conn = match lock(&self.idle).pop() {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        conn.execute_batch("BEGIN")?;
        let out = f(&SqliteReadTx { conn: &conn });
        let end = conn.execute_batch("COMMIT");
        let mut idle = lock(&self.idle);
        if end.is_ok() && idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        drop(idle);
        end?;
        out
    }
}

/// A read snapshot on one pooled connection.
struct SqliteReadTx<'a> {
    conn: &'a Connection,
}

impl HasConn for SqliteReadTx<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }
}

impl MetaStore for SqliteMeta {
    fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        SqliteMeta::write(self, f)
    }

    fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        SqliteMeta::read(self, f)
    }

    fn signals(&self) -> &Signals {
        SqliteMeta::signals(self)
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::params;

    use super::*;

    /// A cached statement runs its prepared plan again with new values: the statements on the
    /// write path (residual `col = ?` terms, `ORDER BY`, `LIMIT ?`) are not parsed and planned
    /// again on every use. Without the planner-stability flag SQLite marks such statements for
    /// re-preparation whenever their bindings are cleared, which the statement cache does on
    /// every return.
    #[test]
    fn cached_statements_are_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        drop(SqliteMeta::open(&path, None).unwrap());
        let conn = open_connection(&path, false).unwrap();
        let sql = "SELECT id FROM repl_jobs WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 AND state = ?4 \
                   ORDER BY id LIMIT ?5";
        for key in ["a", "b", "c"] {
            let mut stmt = conn.prepare_cached(sql).unwrap();
            let rows = stmt.query_map(params!["bucket", key.as_bytes(), "v", 0, 10], |r| r.get::<_, i64>(0)).unwrap();
            assert_eq!(rows.count(), 0);
        }
        let stmt = conn.prepare_cached(sql).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 3);
    }
}

#[cfg(test)]
mod conformance {
    crate::meta::conformance::conformance_tests!(
        fixture: Some(()),
        open: |_: &()| async |p: &std::path::Path| super::SqliteMeta::open(&p.join("meta.db"), None).unwrap()
    );
}
