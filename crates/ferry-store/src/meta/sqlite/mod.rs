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
use self::writer::{DEFER_AT_MOST, Deferred, Finisher, MAX_BATCH, Pushed, Queued, QueuedWrite, writer_loop};
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
    sender: Mutex<Option<mpsc::Sender<Queued>>>,
    /// Deferred writes waiting for the writer's next batch ([`SqliteMeta::write_deferred`]).
    deferred: Arc<Deferred>,
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
        let (sender, receiver) = mpsc::channel::<Queued>(4 * MAX_BATCH);
        let signals = Arc::new(Signals::default());
        let deferred = Arc::new(Deferred::default());
        let (writer_signals, writer_deferred) = (signals.clone(), deferred.clone());
        let writer = std::thread::Builder::new().name("ferry-meta-writer".into()).spawn(move || {
            let clock = CommitClock::new(high_water);
            writer_loop(&conn, receiver, &writer_deferred, clock, staging_dir.as_deref(), &writer_signals);
        })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            deferred,
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
        let (queued, done) = queued(f);
        sender.send(Queued::Write(queued)).await.map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// [`write`](Self::write) for a change nobody waits on interactively (a replication job's
    /// outcome): it commits with the writer's next batch, at most [`DEFER_AT_MOST`] from now,
    /// and returns once durable, as `write` does. Under load it shares a client write's commit.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub async fn write_deferred<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        let sender = lock(&self.sender).clone().ok_or(Error::Closed)?;
        let (queued, done) = queued(f);
        match self.deferred.push(queued) {
            Pushed::Closed => return Err(Error::Closed),
            Pushed::Joined => {}
            Pushed::Full => {
                // Commit them now. If the writer's queue is full, the writer is busy and takes
                // the deferred writes with its next batch anyway.
                let _ = sender.try_send(Queued::Flush);
            }
            Pushed::First => {
                // Weak: a pending flush does not keep the writer from stopping (it commits the
                // deferred writes left when its queue closes).
                let flusher = sender.downgrade();
                tokio::spawn(async move {
                    tokio::time::sleep(DEFER_AT_MOST).await;
                    if let Some(sender) = flusher.upgrade() {
                        let _ = sender.send(Queued::Flush).await;
                    }
                });
            }
        }
        drop(sender);
        done.await.map_err(|_| Error::Closed)?
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

/// `f` as the writer runs it, and where its result will be sent.
fn queued<T, F>(f: F) -> (QueuedWrite, oneshot::Receiver<Result<T>>)
where
    T: Send + 'static,
    F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
{
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
    (queued, done_rx)
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
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    fn open_meta(dir: &tempfile::TempDir) -> Arc<SqliteMeta> {
        Arc::new(SqliteMeta::open(&dir.path().join("meta.db"), None).unwrap())
    }

    /// A write that sets `k` and registers the once-per-transaction hook `test`, counting its runs.
    fn setting_write(k: &'static str, runs: &Arc<AtomicUsize>) -> impl FnOnce(&mut dyn WriteTx) -> Result<()> + Send + 'static {
        let runs = runs.clone();
        move |tx: &mut dyn WriteTx| {
            tx.on_commit_once(
                "test",
                Box::new(move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                }),
            );
            tx.set_setting(k, "1")
        }
    }

    async fn deferred_waiting(meta: &SqliteMeta, n: usize) {
        while meta.deferred.waiting() < n {
            tokio::task::yield_now().await;
        }
    }

    /// A deferred write joins the writer's next batch: held back while the writer is busy with
    /// a first write, it commits in one transaction with the write queued meanwhile (their
    /// once-per-transaction hook runs once), whether or not its flush came first.
    #[tokio::test]
    async fn a_deferred_write_commits_with_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open_meta(&dir);
        let (entered, is_entered) = oneshot::channel();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let m = meta.clone();
        let first = tokio::spawn(async move {
            m.write(move |_| {
                let _ = entered.send(());
                let _ = hold.recv();
                Ok(())
            })
            .await
        });
        is_entered.await.unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let m = meta.clone();
        let deferred = tokio::spawn({
            let w = setting_write("deferred", &runs);
            async move { m.write_deferred(w).await }
        });
        deferred_waiting(&meta, 1).await;
        let (write, done) = queued(setting_write("queued", &runs));
        let sender = lock(&meta.sender).clone().unwrap();
        sender.send(Queued::Write(write)).await.unwrap();
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        done.await.unwrap().unwrap();
        deferred.await.unwrap().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one transaction");
        for k in ["deferred", "queued"] {
            let v = meta.read(move |r| r.get_setting(k)).await.unwrap();
            assert_eq!(v.as_deref(), Some("1"), "{k}");
        }
    }

    /// With nothing else written, deferred writes still commit (their flush), together.
    #[tokio::test]
    async fn deferred_writes_alone_commit() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open_meta(&dir);
        let runs = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(
            meta.write_deferred(setting_write("a", &runs)),
            meta.write_deferred(setting_write("b", &runs))
        );
        a.unwrap();
        b.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "one transaction");
        assert_eq!(meta.read(|r| r.get_setting("b")).await.unwrap().as_deref(), Some("1"));
    }

    /// Deferred writes waiting when the store shuts down are committed, and answered; later
    /// ones are refused.
    #[tokio::test]
    async fn shutdown_commits_the_deferred_writes_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let meta = open_meta(&dir);
        let runs = Arc::new(AtomicUsize::new(0));
        let m = meta.clone();
        let deferred = tokio::spawn({
            let w = setting_write("late", &runs);
            async move { m.write_deferred(w).await }
        });
        deferred_waiting(&meta, 1).await;
        let m = meta.clone();
        tokio::task::spawn_blocking(move || m.shutdown()).await.unwrap();
        deferred.await.unwrap().unwrap();
        assert!(matches!(meta.write_deferred(setting_write("after", &runs)).await, Err(Error::Closed)));
        drop(meta);
        let reopened = open_meta(&dir);
        assert_eq!(reopened.read(|r| r.get_setting("late")).await.unwrap().as_deref(), Some("1"));
    }

    /// Moves every committed page into the database file and empties the WAL.
    fn checkpoint(path: &Path) {
        let conn = open_connection(path, false).unwrap();
        let (busy, _, _): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(busy, 0, "checkpoint blocked");
    }

    /// The pages in the WAL, in order (one per frame).
    fn wal_pages(path: &Path) -> Vec<Vec<u8>> {
        let wal = std::fs::read(path.with_extension("db-wal")).unwrap();
        let Some(header) = wal.get(..32) else { return Vec::new() };
        let page_size = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        wal[32..].chunks(24 + page_size).map(|frame| frame[24..].to_vec()).collect()
    }

    /// A version's replication status changes in place: the commit writes the page holding the
    /// row, not a new copy of its inline body. A record whose length changes is written anew,
    /// overflow pages included (and the freelist with them): before every stored status had
    /// the same length, each completed job rewrote the 4 KiB body of the object it sent.
    #[tokio::test]
    async fn a_status_change_does_not_rewrite_the_inline_body() {
        use crate::model::{BodyLayout, ReplStatus};
        let dir = tempfile::tempdir().unwrap();
        let meta = open_meta(&dir);
        let path = dir.path().join("meta.db");
        // Bytes no other page holds by chance.
        let body: Vec<u8> = (0..4096u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect();
        let tail = body[3800..4056].to_vec();
        let mut v = crate::meta::conformance::version("k", "v1", 10);
        v.size = 4096;
        v.layout = BodyLayout::Inline(body);
        v.repl_status = Some(ReplStatus::Pending);
        meta.write(move |tx| tx.put_version(&v)).await.unwrap();
        let body_written = || wal_pages(&path).iter().any(|p| p.windows(tail.len()).any(|w| w == tail));
        assert!(body_written(), "the body is found in its page");
        for status in [ReplStatus::Completed, ReplStatus::Pending, ReplStatus::Failed, ReplStatus::Pending] {
            checkpoint(&path);
            meta.write(move |tx| tx.set_repl_status("b", "k", "v1", Some(status))).await.unwrap();
            assert!(!wal_pages(&path).is_empty(), "{status:?}: committed");
            assert!(!body_written(), "{status:?}: the inline body was written again");
            let read = meta.read(|r| r.get_version("b", "k", "v1")).await.unwrap().unwrap();
            assert_eq!(read.repl_status, Some(status));
        }
    }

    /// Statuses written before schema 6 (bare names) read the same, and a bare REPLICA is
    /// still never overwritten.
    #[tokio::test]
    async fn statuses_written_before_schema_6_read_the_same() {
        use crate::model::ReplStatus;
        let dir = tempfile::tempdir().unwrap();
        let meta = open_meta(&dir);
        meta.write(|tx| {
            tx.put_version(&crate::meta::conformance::version("k", "v1", 10))?;
            tx.put_version(&crate::meta::conformance::version("k", "v2", 20))
        })
        .await
        .unwrap();
        let conn = open_connection(&dir.path().join("meta.db"), false).unwrap();
        conn.execute_batch(
            "UPDATE versions SET repl_status = 'REPLICA' WHERE version_id = 'v1';
             UPDATE versions SET repl_status = 'PENDING' WHERE version_id = 'v2';",
        )
        .unwrap();
        let status = |v: &'static str| meta.read(move |r| Ok(r.get_version("b", "k", v)?.and_then(|v| v.repl_status)));
        assert_eq!(status("v1").await.unwrap(), Some(ReplStatus::Replica));
        assert_eq!(status("v2").await.unwrap(), Some(ReplStatus::Pending));
        meta.write(|tx| {
            tx.set_repl_status("b", "k", "v1", Some(ReplStatus::Completed))?;
            tx.set_repl_status("b", "k", "v2", Some(ReplStatus::Completed))
        })
        .await
        .unwrap();
        assert_eq!(status("v1").await.unwrap(), Some(ReplStatus::Replica));
        assert_eq!(status("v2").await.unwrap(), Some(ReplStatus::Completed));
    }
}

#[cfg(test)]
mod conformance {
    crate::meta::conformance::conformance_tests!(
        fixture: Some(()),
        open: |_: &()| async |p: &std::path::Path| super::SqliteMeta::open(&p.join("meta.db"), None).unwrap()
    );
}
