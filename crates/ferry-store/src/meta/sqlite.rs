//! SQLite backend of the metadata store.
//!
//! # Durability
//! WAL journal with `synchronous=FULL`: a commit returns only after the WAL is fsynced. One writer
//! thread owns the only read-write connection and commits in groups (see the parent module);
//! before each commit that references new blob files it fsyncs the blob staging directory, so a
//! committed reference never points at a file whose directory entry could vanish in a crash.
//!
//! # Schema (format version 1)
//! - `settings(k, v)`: store-wide values: schema version, the commit clock's high-water mark.
//! - `buckets(name, fmt, created_us, owner, versioning, acl, tagging, replication)`.
//! - `versions(id, bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag,
//!   storage_class, owner, repl_status, parts, multipart, attrs, inline_data)`: one row per
//!   version or delete marker; `key` is a BLOB compared bytewise (S3 order); `inline_data` is
//!   last so scans that do not select it never read its overflow pages.
//! - `uploads(upload_id, ...)` and `parts(upload_id, part_number, ...)`: multipart uploads.
//! - `blobs(id)`: every blob file a committed record references.
//! - `garbage(id, due_us)`: released blob files, unlinked once due.
//!
//! JSON columns (`owner`, `acl`, `attrs`, `parts`, ...) hold the serde form of the model types;
//! the row's `fmt` says which format they are in.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_core::time::CommitClock;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::sqlite_repl as repl;
use super::{ReadTx, VersionCursor, WriteTx};
use crate::error::{Error, Result};
use crate::model::*;
use crate::replication::{Backfill, DestStats, Event, Job, JobState, NewJob};

/// Most closures committed together in one transaction.
const MAX_BATCH: usize = 256;
/// Read connections kept open, and reads run at once from async code (more would only add
/// blocking threads and connections, each with its own page cache, on a busy server: a drain of
/// a 200,000-object backlog had 96 threads and 260 MiB resident before this bound).
const MAX_IDLE_READERS: usize = 8;
/// Page cache of a read connection, KiB (the writer's is 16 MiB; the OS caches the file too).
const READER_CACHE_KIB: i64 = 4096;
/// Prepared statements kept per connection (more than the distinct statements Ferry runs).
const STATEMENT_CACHE: usize = 128;
/// How long a released blob is kept before it is unlinked, so that reads which looked it up just
/// before can still open it.
pub const GARBAGE_GRACE_US: i64 = 30_000_000;

const SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS settings (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, fmt INTEGER NOT NULL, created_us INTEGER NOT NULL, owner TEXT NOT NULL,
    versioning INTEGER NOT NULL, acl TEXT NOT NULL, tagging TEXT, replication TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL,
    fmt INTEGER NOT NULL, mtime_us INTEGER NOT NULL, is_latest INTEGER NOT NULL, is_dm INTEGER NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, storage_class TEXT, owner TEXT NOT NULL, repl_status TEXT,
    parts TEXT, multipart INTEGER NOT NULL, attrs TEXT NOT NULL, inline_data BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS versions_id ON versions (bucket, key, version_id);
CREATE INDEX IF NOT EXISTS versions_by_age ON versions (bucket, key, mtime_us DESC, version_id DESC);
CREATE INDEX IF NOT EXISTS versions_current ON versions (bucket, key) WHERE is_latest = 1 AND is_dm = 0;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, fmt INTEGER NOT NULL, bucket TEXT NOT NULL, key BLOB NOT NULL,
    initiated_us INTEGER NOT NULL, owner TEXT NOT NULL, storage_class TEXT, checksum_algorithm TEXT,
    attrs TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, initiated_us, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, fmt INTEGER NOT NULL, mtime_us INTEGER NOT NULL,
    part TEXT NOT NULL, PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (id TEXT PRIMARY KEY, due_us INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS garbage_due ON garbage (due_us);
CREATE TABLE IF NOT EXISTS repl_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fmt INTEGER NOT NULL,
    bucket TEXT NOT NULL, key BLOB NOT NULL, version_id TEXT NOT NULL, op INTEGER NOT NULL,
    peer TEXT NOT NULL, dest_bucket TEXT NOT NULL, rule_id TEXT NOT NULL, created_us INTEGER NOT NULL,
    size INTEGER NOT NULL, state INTEGER NOT NULL, attempts INTEGER NOT NULL, next_attempt_us INTEGER NOT NULL,
        last_error TEXT, progress TEXT, backfill_id INTEGER, priority INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS repl_jobs_peer ON repl_jobs (peer, state, priority, id);
CREATE INDEX IF NOT EXISTS repl_jobs_key ON repl_jobs (peer, bucket, key, state, id);
CREATE INDEX IF NOT EXISTS repl_jobs_version ON repl_jobs (bucket, key, version_id);
";

const VERSION_COLS: &str = "bucket, key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, \
                            owner, repl_status, parts, multipart, attrs, inline_data";
const LIST_COLS: &str = "key, version_id, fmt, mtime_us, is_latest, is_dm, size, etag, storage_class, owner, attrs";

type Finisher = Box<dyn FnOnce(&Result<()>) + Send>;
/// A queued write: given the open transaction (or `None` when the batch could not begin), runs
/// the caller's closure and returns whether it succeeded and how to answer the caller.
type WriteJob = Box<dyn FnOnce(Option<&mut SqliteWriteTx<'_>>) -> (bool, Finisher) + Send>;

/// The SQLite metadata store of one region.
pub struct SqliteMeta {
    // std Mutex: only cloned out of, never held across an await.
    sender: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReadPool>,
    /// Bumped after every commit that recorded replication jobs.
    jobs_signal: tokio::sync::watch::Receiver<u64>,
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
        migrate(&conn)?;
        let high_water: i64 = conn
            .query_row("SELECT v FROM settings WHERE k = 'clock'", [], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (sender, receiver) = mpsc::channel::<WriteJob>(4 * MAX_BATCH);
        let (jobs_tx, jobs_signal) = tokio::sync::watch::channel(0u64);
        let writer = std::thread::Builder::new().name("ferry-meta-writer".into()).spawn(move || {
            writer_loop(&conn, receiver, CommitClock::new(high_water), staging_dir.as_deref(), &jobs_tx);
        })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(ReadPool {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
                slots: tokio::sync::Semaphore::new(MAX_IDLE_READERS),
            }),
            jobs_signal,
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
        let job: WriteJob = Box::new(move |tx| {
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
        sender.send(job).await.map_err(|_| Error::Closed)?;
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

    /// A receiver that changes after every commit that recorded replication jobs.
    #[must_use]
    pub fn subscribe_jobs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.jobs_signal.clone()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The schema this build writes. A database is created at version 1 and migrated step by
/// step, each step in one transaction (a crash in between leaves the previous version).
pub const SCHEMA_VERSION: i64 = 2;

fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(repl::SCHEMA)?;
    let schema: Option<String> = conn.query_row("SELECT v FROM settings WHERE k = 'schema'", [], |r| r.get(0)).optional()?;
    let mut version = match schema.as_deref().map(str::parse::<i64>) {
        None => {
            conn.execute("INSERT INTO settings (k, v) VALUES ('schema', '1')", [])?;
            1
        }
        Some(Ok(v)) if v <= SCHEMA_VERSION => v,
        Some(Ok(v)) => return Err(Error::UnknownFormat(v)),
        Some(Err(_)) => return Err(Error::Other("settings.schema is not a number".into())),
    };
    while version < SCHEMA_VERSION {
        let step = match version {
            1 => repl::MIGRATE_TO_2,
            _ => return Err(Error::Other(format!("no migration from schema {version}"))),
        };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {step} UPDATE settings SET v = '{next}' WHERE k = 'schema'; COMMIT;",
            next = version + 1
        ))
        .inspect_err(|_| {
            let _ = conn.execute_batch("ROLLBACK");
        })?;
        version += 1;
        tracing::info!(schema = version, "metadata database migrated");
    }
    conn.execute_batch(repl::INDEXES)?;
    Ok(())
}

fn writer_loop(
    conn: &Connection,
    mut receiver: mpsc::Receiver<WriteJob>,
    mut clock: CommitClock,
    staging: Option<&Path>,
    jobs_signal: &tokio::sync::watch::Sender<u64>,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        let mut tx = SqliteWriteTx { conn, clock: &mut clock, hooks: Vec::new(), new_blobs: false, new_jobs: false };
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        if let Err(e) = begun {
            tracing::error!(error = %e, "could not begin a metadata transaction");
            let err: Result<()> = Err(e.into());
            for job in batch {
                // Runs nothing: every caller is answered with the error.
                let (_, finish) = job(None);
                finish(&err);
            }
            continue;
        }
        for job in batch {
            let hooks_before = tx.hooks.len();
            let savepoint = conn.execute_batch("SAVEPOINT job");
            let (ok, finish) = job(Some(&mut tx));
            let closed = if ok && savepoint.is_ok() {
                conn.execute_batch("RELEASE job")
            } else {
                tx.hooks.truncate(hooks_before);
                conn.execute_batch("ROLLBACK TO job; RELEASE job")
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
        // Hooks and the job signal run before callers are answered: once a write returns,
        // its workers have been woken.
        if result.is_ok() {
            for hook in tx.hooks.drain(..) {
                hook();
            }
            if tx.new_jobs {
                jobs_signal.send_modify(|n| *n = n.wrapping_add(1));
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

struct SqliteReadTx<'a> {
    conn: &'a Connection,
}

struct SqliteWriteTx<'a> {
    conn: &'a Connection,
    clock: &'a mut CommitClock,
    hooks: Vec<Box<dyn FnOnce() + Send>>,
    new_blobs: bool,
    new_jobs: bool,
}

pub(super) fn check_fmt(fmt: i64) -> Result<()> {
    if fmt > FORMAT_VERSION { Err(Error::UnknownFormat(fmt)) } else { Ok(()) }
}

fn json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T> {
    Ok(serde_json::from_str(s)?)
}

pub(super) fn key_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

pub(super) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn version_from_row(r: &Row<'_>) -> Result<VersionRecord> {
    check_fmt(r.get(3)?)?;
    let parts: Option<String> = r.get(12)?;
    let layout = match parts {
        Some(p) => BodyLayout::Parts { parts: json(&p)?, multipart: r.get::<_, i64>(13)? != 0 },
        None => BodyLayout::Inline(r.get::<_, Option<Vec<u8>>>(15)?.unwrap_or_default()),
    };
    Ok(VersionRecord {
        bucket: r.get(0)?,
        key: key_string(r.get(1)?),
        version_id: r.get(2)?,
        mtime_us: r.get(4)?,
        is_latest: r.get::<_, i64>(5)? != 0,
        delete_marker: r.get::<_, i64>(6)? != 0,
        size: to_u64(r.get(7)?),
        etag: r.get(8)?,
        storage_class: r.get(9)?,
        owner: json(&r.get::<_, String>(10)?)?,
        repl_status: r.get::<_, Option<String>>(11)?.as_deref().and_then(ReplStatus::parse),
        layout,
        attrs: json(&r.get::<_, String>(14)?)?,
    })
}

fn list_entry_from_row(r: &Row<'_>) -> Result<ListEntry> {
    check_fmt(r.get(2)?)?;
    let attrs: ObjectAttrs = json(&r.get::<_, String>(10)?)?;
    Ok(ListEntry {
        key: key_string(r.get(0)?),
        version_id: r.get(1)?,
        mtime_us: r.get(3)?,
        is_latest: r.get::<_, i64>(4)? != 0,
        delete_marker: r.get::<_, i64>(5)? != 0,
        size: to_u64(r.get(6)?),
        etag: r.get(7)?,
        storage_class: r.get(8)?,
        owner: json(&r.get::<_, String>(9)?)?,
        checksum_algorithms: attrs.checksums.values.keys().cloned().collect(),
    })
}

fn bucket_from_row(r: &Row<'_>) -> Result<BucketRecord> {
    check_fmt(r.get(1)?)?;
    Ok(BucketRecord {
        name: r.get(0)?,
        created_us: r.get(2)?,
        owner: json(&r.get::<_, String>(3)?)?,
        versioning: Versioning::from_i64(r.get(4)?),
        acl: json(&r.get::<_, String>(5)?)?,
        tagging: r.get::<_, Option<String>>(6)?.map(|s| json(&s)).transpose()?,
        replication: r.get(7)?,
        replica_sources: r.get::<_, Option<String>>(8)?.map(|s| json(&s)).transpose()?.unwrap_or_default(),
    })
}

fn upload_from_row(r: &Row<'_>) -> Result<UploadRecord> {
    check_fmt(r.get(1)?)?;
    Ok(UploadRecord {
        upload_id: r.get(0)?,
        bucket: r.get(2)?,
        key: key_string(r.get(3)?),
        initiated_us: r.get(4)?,
        owner: json(&r.get::<_, String>(5)?)?,
        storage_class: r.get(6)?,
        checksum_algorithm: r.get(7)?,
        attrs: json(&r.get::<_, String>(8)?)?,
    })
}

fn part_from_row(r: &Row<'_>) -> Result<PartRecord> {
    check_fmt(r.get(2)?)?;
    Ok(PartRecord {
        upload_id: r.get(0)?,
        part_number: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        mtime_us: r.get(3)?,
        part: json(&r.get::<_, String>(4)?)?,
    })
}

const BUCKET_COLS: &str = "name, fmt, created_us, owner, versioning, acl, tagging, replication, replica_sources";
const UPLOAD_COLS: &str = "upload_id, fmt, bucket, key, initiated_us, owner, storage_class, checksum_algorithm, attrs";

pub(super) fn collect<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    f: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

pub(super) fn first<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    f: fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(f).transpose()
}

pub(super) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A transaction that reads through one connection: a read snapshot, or the write transaction
/// (which sees its own uncommitted changes). Every such transaction gets the read queries.
trait HasConn {
    fn conn(&self) -> &Connection;
}

impl HasConn for SqliteReadTx<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }
}

impl HasConn for SqliteWriteTx<'_> {
    fn conn(&self) -> &Connection {
        self.conn
    }
}

impl<T: HasConn> ReadTx for T {
    fn get_bucket(&self, name: &str) -> Result<Option<BucketRecord>> {
        first(
            self.conn(),
            &format!("SELECT {BUCKET_COLS} FROM buckets WHERE name = ?1"),
            &[&name],
            bucket_from_row,
        )
    }

    fn list_buckets(&self) -> Result<Vec<BucketRecord>> {
        collect(
            self.conn(),
            &format!("SELECT {BUCKET_COLS} FROM buckets ORDER BY name"),
            &[],
            bucket_from_row,
        )
    }

    fn get_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        first(
            self.conn(),
            &format!("SELECT {VERSION_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3"),
            &[&bucket, &key.as_bytes(), &version_id],
            version_from_row,
        )
    }

    fn get_latest(&self, bucket: &str, key: &str) -> Result<Option<VersionRecord>> {
        first(
            self.conn(),
            &format!(
                "SELECT {VERSION_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 \
                 ORDER BY mtime_us DESC, version_id DESC LIMIT 1"
            ),
            &[&bucket, &key.as_bytes()],
            version_from_row,
        )
    }

    fn scan_latest(&self, bucket: &str, from: &[u8], exclusive: bool, to: Option<&[u8]>, limit: usize) -> Result<Vec<ListEntry>> {
        let op = if exclusive { ">" } else { ">=" };
        let lim = limit_i64(limit);
        match to {
            Some(to) => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND is_latest = 1 AND is_dm = 0 \
                     AND key {op} ?2 AND key < ?3 ORDER BY key LIMIT ?4"
                ),
                &[&bucket, &from, &to, &lim],
                list_entry_from_row,
            ),
            None => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND is_latest = 1 AND is_dm = 0 \
                     AND key {op} ?2 ORDER BY key LIMIT ?3"
                ),
                &[&bucket, &from, &lim],
                list_entry_from_row,
            ),
        }
    }

    fn scan_versions(
        &self,
        bucket: &str,
        from: &[u8],
        cursor: &VersionCursor,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let lim = limit_i64(limit);
        if let (Some(k), Some((m, v))) = (&cursor.after_key, &cursor.after_version) {
            out = collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key = ?2 \
                     AND (mtime_us < ?3 OR (mtime_us = ?3 AND version_id < ?4)) \
                     ORDER BY mtime_us DESC, version_id DESC LIMIT ?5"
                ),
                &[&bucket, &k.as_bytes(), m, v, &lim],
                list_entry_from_row,
            )?;
            if out.len() >= limit {
                return Ok(out);
            }
        }
        let rest = limit_i64(limit - out.len());
        let (lower, exclusive): (&[u8], bool) = match &cursor.after_key {
            Some(k) if k.as_bytes() >= from => (k.as_bytes(), true),
            _ => (from, false),
        };
        let op = if exclusive { ">" } else { ">=" };
        let more = match to {
            Some(to) => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key {op} ?2 AND key < ?3 \
                     ORDER BY key, mtime_us DESC, version_id DESC LIMIT ?4"
                ),
                &[&bucket, &lower, &to, &rest],
                list_entry_from_row,
            )?,
            None => collect(
                self.conn(),
                &format!(
                    "SELECT {LIST_COLS} FROM versions WHERE bucket = ?1 AND key {op} ?2 \
                     ORDER BY key, mtime_us DESC, version_id DESC LIMIT ?3"
                ),
                &[&bucket, &lower, &rest],
                list_entry_from_row,
            )?,
        };
        out.extend(more);
        Ok(out)
    }

    fn bucket_has_versions(&self, bucket: &str) -> Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM versions WHERE bucket = ?1 LIMIT 1")?
            .query_row([bucket], |_| Ok(()))
            .optional()?
            .is_some())
    }

    fn get_upload(&self, upload_id: &str) -> Result<Option<UploadRecord>> {
        first(
            self.conn(),
            &format!("SELECT {UPLOAD_COLS} FROM uploads WHERE upload_id = ?1"),
            &[&upload_id],
            upload_from_row,
        )
    }

    fn scan_uploads(
        &self,
        bucket: &str,
        from: &[u8],
        after: Option<(&str, Option<&str>)>,
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<UploadRecord>> {
        let to = to.unwrap_or(&[0xff; 1100]);
        let lim = limit_i64(limit);
        let mut out = Vec::new();
        let mut lower: &[u8] = from;
        let mut exclusive = false;
        if let Some((k, up)) = after {
            if let Some(up) = up {
                // The rest of key `k`, after the marker upload.
                let marker = self.get_upload(up)?;
                if let Some(m) = marker.filter(|m| m.bucket == bucket && m.key == k) {
                    out = collect(
                        self.conn(),
                        &format!(
                            "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = ?1 AND key = ?2 \
                             AND (initiated_us > ?3 OR (initiated_us = ?3 AND upload_id > ?4)) \
                             ORDER BY initiated_us, upload_id LIMIT ?5"
                        ),
                        &[&bucket, &k.as_bytes(), &m.initiated_us, &up, &lim],
                        upload_from_row,
                    )?;
                }
            }
            if k.as_bytes() >= from {
                lower = k.as_bytes();
                exclusive = true;
            }
        }
        if out.len() >= limit {
            return Ok(out);
        }
        let op = if exclusive { ">" } else { ">=" };
        let rest = limit_i64(limit - out.len());
        out.extend(collect(
            self.conn(),
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads WHERE bucket = ?1 AND key {op} ?2 AND key < ?3 \
                 ORDER BY key, initiated_us, upload_id LIMIT ?4"
            ),
            &[&bucket, &lower, &to, &rest],
            upload_from_row,
        )?);
        Ok(out)
    }

    fn idle_uploads(&self, before_us: i64, limit: usize) -> Result<Vec<UploadRecord>> {
        collect(
            self.conn(),
            &format!(
                "SELECT {UPLOAD_COLS} FROM uploads u WHERE initiated_us < ?1 AND \
                 coalesce((SELECT max(mtime_us) FROM parts p WHERE p.upload_id = u.upload_id), 0) < ?1 \
                 ORDER BY initiated_us LIMIT ?2"
            ),
            &[&before_us, &limit_i64(limit)],
            upload_from_row,
        )
    }

    fn list_parts(&self, upload_id: &str, after: u32, limit: usize) -> Result<Vec<PartRecord>> {
        collect(
            self.conn(),
            "SELECT upload_id, part_number, fmt, mtime_us, part FROM parts WHERE upload_id = ?1 AND part_number > ?2 \
             ORDER BY part_number LIMIT ?3",
            &[&upload_id, &i64::from(after), &limit_i64(limit)],
            part_from_row,
        )
    }

    fn blob_is_live(&self, blob: &str) -> Result<bool> {
        Ok(self.conn().prepare_cached("SELECT 1 FROM blobs WHERE id = ?1")?.query_row([blob], |_| Ok(())).optional()?.is_some())
    }

    fn due_garbage(&self, now_us: i64, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self.conn().prepare_cached("SELECT id FROM garbage WHERE due_us <= ?1 ORDER BY due_us LIMIT ?2")?;
        let rows = stmt.query_map(params![now_us, limit_i64(limit)], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn get_setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.conn().prepare_cached("SELECT v FROM settings WHERE k = ?1")?.query_row([key], |r| r.get(0)).optional()?)
    }

    fn runnable_jobs(
        &self,
        peer: &str,
        dest_bucket: &str,
        priority: i64,
        now_us: i64,
        exclude: &[i64],
        limit: usize,
    ) -> Result<Vec<Job>> {
        repl::runnable_jobs(self.conn(), peer, dest_bucket, priority, now_us, exclude, limit)
    }

    fn due_destinations(&self, peer: &str) -> Result<Vec<String>> {
        repl::due_destinations(self.conn(), peer)
    }

    fn peers_with_jobs(&self) -> Result<Vec<String>> {
        repl::peers_with_jobs(self.conn())
    }

    fn pending_jobs_of_peer(&self, peer: &str, limit: usize) -> Result<Vec<Job>> {
        repl::pending_jobs_of_peer(self.conn(), peer, limit)
    }

    fn jobs_for_version(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<Job>> {
        repl::jobs_for_version(self.conn(), bucket, key, version_id)
    }

    fn get_job(&self, id: i64) -> Result<Option<Job>> {
        repl::get_job(self.conn(), id)
    }

    fn bucket_jobs(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Job>> {
        repl::bucket_jobs(self.conn(), bucket, after_id, limit)
    }

    fn failed_jobs(&self, bucket: &str, limit: usize) -> Result<Vec<Job>> {
        repl::failed_jobs(self.conn(), bucket, limit)
    }

    fn max_job_id(&self) -> Result<i64> {
        repl::max_job_id(self.conn())
    }

    fn dest_stats(&self, bucket: &str) -> Result<Vec<DestStats>> {
        repl::dest_stats(self.conn(), bucket)
    }

    fn delivered_to(&self, bucket: &str, key: &str, version_id: &str) -> Result<Vec<String>> {
        repl::delivered_to(self.conn(), bucket, key, version_id)
    }

    fn newer_delivered(&self, bucket: &str, key: &str, mtime_us: i64, version_id: &str, dest: &str) -> Result<bool> {
        repl::newer_delivered(self.conn(), bucket, key, mtime_us, version_id, dest)
    }

    fn committed_clock(&self) -> Result<i64> {
        repl::committed_clock(self.conn())
    }

    fn count_versions(&self, bucket: &str, from: &[u8], to: Option<&[u8]>) -> Result<(u64, u64)> {
        repl::count_versions(self.conn(), bucket, from, to)
    }

    fn get_backfill(&self, id: i64) -> Result<Option<Backfill>> {
        repl::get_backfill(self.conn(), id)
    }

    fn list_backfills(&self, bucket: Option<&str>) -> Result<Vec<Backfill>> {
        repl::list_backfills(self.conn(), bucket)
    }

    fn active_backfills(&self) -> Result<Vec<Backfill>> {
        repl::active_backfills(self.conn())
    }

    fn backfill_pending(&self, id: i64) -> Result<u64> {
        repl::backfill_pending(self.conn(), id)
    }

    fn events(&self, bucket: &str, after_id: i64, limit: usize) -> Result<Vec<Event>> {
        repl::events(self.conn(), bucket, after_id, limit)
    }

    fn latest_events(&self, bucket: &str, rule_id: Option<&str>, kind_prefix: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        repl::latest_events(self.conn(), bucket, rule_id, kind_prefix, limit)
    }
}

impl WriteTx for SqliteWriteTx<'_> {
    fn now(&mut self) -> i64 {
        self.clock.tick()
    }

    fn observe_time(&mut self, us: i64) {
        self.clock.observe(us);
    }

    fn put_bucket(&mut self, b: &BucketRecord) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO buckets ({BUCKET_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                b.name,
                FORMAT_VERSION,
                b.created_us,
                serde_json::to_string(&b.owner)?,
                b.versioning.to_i64(),
                serde_json::to_string(&b.acl)?,
                b.tagging.as_ref().map(serde_json::to_string).transpose()?,
                b.replication,
                (!b.replica_sources.is_empty()).then(|| serde_json::to_string(&b.replica_sources)).transpose()?,
            ])?;
        Ok(())
    }

    fn delete_bucket(&mut self, name: &str) -> Result<()> {
        self.conn.prepare_cached("DELETE FROM buckets WHERE name = ?1")?.execute([name])?;
        Ok(())
    }

    fn put_version(&mut self, v: &VersionRecord) -> Result<()> {
        let (parts, multipart, inline) = match &v.layout {
            BodyLayout::Inline(data) => (None, false, Some(data.as_slice())),
            BodyLayout::Parts { parts, multipart } => (Some(serde_json::to_string(parts)?), *multipart, None),
        };
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO versions ({VERSION_COLS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?
            .execute(params![
                v.bucket,
                v.key.as_bytes(),
                v.version_id,
                FORMAT_VERSION,
                v.mtime_us,
                i64::from(v.is_latest),
                i64::from(v.delete_marker),
                to_i64(v.size),
                v.etag,
                v.storage_class,
                serde_json::to_string(&v.owner)?,
                v.repl_status.map(ReplStatus::as_str),
                parts,
                i64::from(multipart),
                serde_json::to_string(&v.attrs)?,
                inline,
            ])?;
        Ok(())
    }

    fn remove_version(&mut self, bucket: &str, key: &str, version_id: &str) -> Result<Option<VersionRecord>> {
        let existing = self.get_version(bucket, key, version_id)?;
        if existing.is_some() {
            repl::forget_delivered(self.conn, bucket, key, version_id)?;
            self.conn
                .prepare_cached("DELETE FROM versions WHERE bucket = ?1 AND key = ?2 AND version_id = ?3")?
                .execute(params![bucket, key.as_bytes(), version_id])?;
        }
        Ok(existing)
    }

    fn refresh_latest(&mut self, bucket: &str, key: &str) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE versions SET is_latest = 0 WHERE bucket = ?1 AND key = ?2 AND is_latest = 1")?
            .execute(params![bucket, key.as_bytes()])?;
        self.conn
            .prepare_cached(
                "UPDATE versions SET is_latest = 1 WHERE id = (SELECT id FROM versions WHERE bucket = ?1 AND key = ?2 \
                 ORDER BY mtime_us DESC, version_id DESC LIMIT 1)",
            )?
            .execute(params![bucket, key.as_bytes()])?;
        Ok(())
    }

    fn set_version_attrs(&mut self, bucket: &str, key: &str, version_id: &str, attrs: &ObjectAttrs) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE versions SET attrs = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3")?
            .execute(params![bucket, key.as_bytes(), version_id, serde_json::to_string(attrs)?])?;
        Ok(())
    }

    fn set_repl_status(&mut self, bucket: &str, key: &str, version_id: &str, status: Option<ReplStatus>) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE versions SET repl_status = ?4 WHERE bucket = ?1 AND key = ?2 AND version_id = ?3 \
                 AND repl_status IS NOT ?4 AND repl_status IS NOT 'REPLICA'",
            )?
            .execute(params![bucket, key.as_bytes(), version_id, status.map(ReplStatus::as_str)])?;
        Ok(())
    }

    fn put_upload(&mut self, u: &UploadRecord) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO uploads ({UPLOAD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                u.upload_id,
                FORMAT_VERSION,
                u.bucket,
                u.key.as_bytes(),
                u.initiated_us,
                serde_json::to_string(&u.owner)?,
                u.storage_class,
                u.checksum_algorithm,
                serde_json::to_string(&u.attrs)?,
            ])?;
        Ok(())
    }

    fn delete_upload(&mut self, upload_id: &str) -> Result<()> {
        self.conn.prepare_cached("DELETE FROM uploads WHERE upload_id = ?1")?.execute([upload_id])?;
        Ok(())
    }

    fn put_part(&mut self, p: &PartRecord) -> Result<Option<PartRecord>> {
        let old = first(
            self.conn,
            "SELECT upload_id, part_number, fmt, mtime_us, part FROM parts WHERE upload_id = ?1 AND part_number = ?2",
            &[&p.upload_id, &i64::from(p.part_number)],
            part_from_row,
        )?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO parts (upload_id, part_number, fmt, mtime_us, part) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                p.upload_id,
                i64::from(p.part_number),
                FORMAT_VERSION,
                p.mtime_us,
                serde_json::to_string(&p.part)?
            ])?;
        Ok(old)
    }

    fn take_parts(&mut self, upload_id: &str) -> Result<Vec<PartRecord>> {
        let parts = self.list_parts(upload_id, 0, usize::MAX >> 1)?;
        self.conn.prepare_cached("DELETE FROM parts WHERE upload_id = ?1")?.execute([upload_id])?;
        Ok(parts)
    }

    fn add_blob(&mut self, blob: &str) -> Result<()> {
        self.new_blobs = true;
        self.conn.prepare_cached("INSERT OR IGNORE INTO blobs (id) VALUES (?1)")?.execute([blob])?;
        Ok(())
    }

    fn release_blob(&mut self, blob: &str) -> Result<()> {
        // The grace period is wall-clock time: readers that looked the blob up just before
        // need real time to finish, whatever the commit clock says.
        let due = ferry_core::time::now_micros().saturating_add(GARBAGE_GRACE_US);
        self.conn.prepare_cached("DELETE FROM blobs WHERE id = ?1")?.execute([blob])?;
        self.conn.prepare_cached("INSERT OR REPLACE INTO garbage (id, due_us) VALUES (?1, ?2)")?.execute(params![blob, due])?;
        Ok(())
    }

    fn forget_garbage(&mut self, blobs: &[String]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("DELETE FROM garbage WHERE id = ?1")?;
        for b in blobs {
            stmt.execute([b])?;
        }
        Ok(())
    }

    fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.prepare_cached("INSERT OR REPLACE INTO settings (k, v) VALUES (?1, ?2)")?.execute([key, value])?;
        Ok(())
    }

    fn on_commit(&mut self, hook: Box<dyn FnOnce() + Send>) {
        self.hooks.push(hook);
    }

    fn insert_job(&mut self, j: &NewJob<'_>) -> Result<i64> {
        self.new_jobs = true;
        repl::insert_job(self.conn, j)
    }

    fn delete_job(&mut self, id: i64) -> Result<Option<Job>> {
        // No wake-up: the next job of the key becomes runnable when a transfer completes, and
        // the worker that ran it looks again as it ends.
        repl::delete_job(self.conn, id)
    }

    fn update_job(&mut self, job: &Job) -> Result<()> {
        if job.state == JobState::Pending {
            self.new_jobs = true;
        }
        repl::update_job(self.conn, job)
    }

    fn mark_delivered(&mut self, bucket: &str, key: &str, version_id: &str, dest: &str) -> Result<()> {
        repl::mark_delivered(self.conn, bucket, key, version_id, dest)
    }

    fn put_backfill(&mut self, b: &Backfill) -> Result<i64> {
        repl::put_backfill(self.conn, b)
    }

    fn backfill_progress(&mut self, id: i64, done: u64, bytes: u64, failed: u64) -> Result<()> {
        repl::backfill_progress(self.conn, id, done, bytes, failed)
    }

    fn add_event(&mut self, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64> {
        let now = self.clock.last().max(ferry_core::time::now_micros());
        repl::add_event(self.conn, now, bucket, rule_id, kind, detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A released blob is kept for the grace period of wall-clock time from its release, even
    /// in a region whose commit clock last ticked long before (an idle region).
    #[tokio::test]
    async fn the_garbage_grace_period_runs_on_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db"), None).unwrap();
        meta.write(|tx| {
            tx.now();
            tx.add_blob("b1")
        })
        .await
        .unwrap();
        // Time passes without a commit that ticks the clock.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let released_at = ferry_core::time::now_micros();
        meta.write(|tx| tx.release_blob("b1")).await.unwrap();
        let early = meta.read(move |r| r.due_garbage(released_at + GARBAGE_GRACE_US - 1, 10)).await.unwrap();
        assert!(early.is_empty(), "unlinked before its grace period: {early:?}");
        let due = meta.read(move |r| r.due_garbage(ferry_core::time::now_micros() + GARBAGE_GRACE_US, 10)).await.unwrap();
        assert_eq!(due, vec!["b1".to_owned()]);
    }

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

    /// A version-1 database with jobs is migrated in place: per-key order, counters and the
    /// live flag are derived from the jobs it holds.
    #[tokio::test]
    async fn a_schema_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(repl::SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO settings (k, v) VALUES ('schema', '1');
                 INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state,
                     attempts, next_attempt_us, last_error, progress, backfill_id, priority) VALUES
                 (1, 'b', X'6b', 'v1', 0, 'eu', 'd', 'r', 10, 100, 0, 0, 0, NULL, NULL, NULL, 0),
                 (1, 'b', X'6b', 'v2', 0, 'eu', 'd', 'r', 20, 50, 0, 0, 0, NULL, NULL, 3, 1),
                 (1, 'b', X'6c', 'v3', 0, 'eu', 'd', 'r', 30, 7, 1, 2, 0, 'AccessDenied', NULL, NULL, 0);",
            )
            .unwrap();
        }
        let meta = SqliteMeta::open(&path, None).unwrap();
        let runnable = meta.read(|r| r.runnable_jobs("eu", "d", 0, i64::MAX, &[], 10)).await.unwrap();
        assert_eq!(
            runnable.iter().map(|j| j.version_id.as_str()).collect::<Vec<_>>(),
            vec!["v1"],
            "v2 waits behind v1"
        );
        let all = meta.read(|r| r.bucket_jobs("b", 0, 10)).await.unwrap();
        assert_eq!(all.iter().map(|j| j.live).collect::<Vec<_>>(), vec![true, false, true]);
        let stats = meta.read(|r| r.dest_stats("b")).await.unwrap();
        assert_eq!((stats[0].pending_ops, stats[0].pending_bytes, stats[0].failed_ops), (2, 150, 1));
        assert_eq!(stats[0].oldest_undelivered_us, Some(10));
        let schema = meta.read(|r| r.get_setting("schema")).await.unwrap();
        assert_eq!(schema.as_deref(), Some("2"));
    }
}
