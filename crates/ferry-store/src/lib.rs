//! Ferry's storage layer for one region: the metadata database and the blob files.
//!
//! - [`meta`]: transactional metadata (buckets, versions, uploads, blob references, the
//!   replication tables) with group commit; the write API takes a transaction the domain
//!   modules add rows to. Backends hold storage, never domain decisions.
//! - [`ingest`]: a request body becomes a hashed body in memory or a fsynced staging file,
//!   then commits with the metadata that references it ([`Store::write_with_body`]).
//! - [`read`]: a body's plaintext bytes, whatever its layout and encryption.
//! - [`blobs`]: bodies in files, written to staging, fsynced, promoted after commit.
//! - [`objects`]: S3 versioning semantics as functions over a write transaction.
//! - [`replication`]: rules, the outbox (jobs recorded in the write's transaction), backfill,
//!   progress and the replica wire format.
//! - [`lock`]: Object Lock decisions (what a retention or legal hold forbids).
//! - [`sse`]: the encrypted body format (chunked AES-256-GCM) and its keys.
//! - [`gc`]: unlinks released blob files, aborts idle replica uploads.
//! - [`checksum`]: MD5 / CRC / SHA digests computed while bodies stream.
//!
//! # Data directory
//! ```text
//! DATA_DIR/LOCK          held (flock) while a process serves the region
//! DATA_DIR/meta.db       SQLite database (+ meta.db-wal, meta.db-shm)
//! DATA_DIR/blobs/        committed blob files
//! DATA_DIR/staging/      blobs being written
//! ```
//!
//! # Crash behaviour of a write
//! body → staging file → fsync file → (writer) fsync staging dir → commit metadata → acknowledge
//! → promote file. A crash before the commit leaves the old state plus an unreferenced staging
//! file, deleted at the next start; after the commit the new state is complete. Small bodies
//! (up to the inline threshold) skip the files and live in the database row. The whole story,
//! step by step: docs/ARCHITECTURE.md, "Why a crash loses nothing".

pub mod blobs;
pub mod checksum;
pub mod error;
pub mod gc;
pub mod ingest;
pub mod lifecycle;
pub mod lock;
pub mod meta;
pub mod model;
pub mod objects;
pub mod read;
pub mod replication;
pub mod s3_blobs;
pub mod sse;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blobs::BlobStore;
pub use crate::error::{Error, Result};
pub use crate::gc::GcWorker;
pub use crate::ingest::Ingested;
use crate::meta::pg::PgStore;
use crate::meta::sqlite::SqliteMeta;
use crate::meta::{MetaStore, ReadTx, Signals, WriteTx};

/// The metadata store of a region: SQLite (the region is this process) or PostgreSQL (this
/// process is one node of the region). Callers see one API ([`MetaStore`]); the few things only
/// a region of several nodes does (job leases) answer trivially on SQLite.
pub enum Meta {
    Sqlite(SqliteMeta),
    Pg(PgStore),
}

impl Meta {
    /// Runs `f` in a write transaction ([`MetaStore::write`]).
    ///
    /// # Errors
    /// `f`'s error or the backend's.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        match self {
            Self::Sqlite(m) => m.write(f).await,
            Self::Pg(m) => m.write(f).await,
        }
    }

    /// Runs `f` in a write transaction that may wait a few milliseconds to commit with other
    /// writes (SQLite: [`SqliteMeta::write_deferred`]); for changes nobody waits on
    /// interactively. Durable once it returns, as [`write`](Self::write). PostgreSQL commits
    /// it at once.
    ///
    /// # Errors
    /// `f`'s error or the backend's.
    pub async fn write_deferred<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        match self {
            Self::Sqlite(m) => m.write_deferred(f).await,
            Self::Pg(m) => m.write(f).await,
        }
    }

    /// Runs `f` on a snapshot ([`MetaStore::read`]).
    ///
    /// # Errors
    /// `f`'s error or the backend's.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        match self {
            Self::Sqlite(m) => m.read(f).await,
            Self::Pg(m) => m.read(f).await,
        }
    }

    /// The signals on-commit hooks fire.
    #[must_use]
    pub fn signals(&self) -> &Signals {
        match self {
            Self::Sqlite(m) => m.signals(),
            Self::Pg(m) => MetaStore::signals(m),
        }
    }

    /// Takes the jobs `ids` (found runnable) for this process before their transfers start, for
    /// `lease_us`; returns those it got. One process has nothing to share them with: all of
    /// them. A node of a region leases them ([`PgStore::take_jobs`]): a job another node holds
    /// is not returned.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_jobs(&self, ids: Vec<i64>, now_us: i64, lease_us: i64) -> Result<Vec<i64>> {
        match self {
            Self::Sqlite(_) => Ok(ids),
            Self::Pg(m) => m.take_jobs(ids, now_us, lease_us).await,
        }
    }

    /// Whether this process does what a region must do once, not once per node (recording RPO
    /// events, failing the jobs of removed peers). One process always does; in a region of
    /// several nodes, one of them ([`PgStore::leads`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn leads(&self) -> Result<bool> {
        match self {
            Self::Sqlite(_) => Ok(true),
            Self::Pg(m) => m.leads().await,
        }
    }

    /// Takes the released blobs `ids` (found due) for this process's garbage collector, for
    /// `lease_us`; returns those it got. One process: all of them. A node of a region skips
    /// those another node took ([`PgStore::take_garbage`]).
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_garbage(&self, ids: Vec<String>, now_us: i64, lease_us: i64) -> Result<Vec<String>> {
        match self {
            Self::Sqlite(_) => Ok(ids),
            Self::Pg(m) => m.take_garbage(ids, now_us, lease_us).await,
        }
    }

    /// Takes backfill `id` for this process's next step of it, for `lease_us`; false when
    /// another node of the region holds it (it steps it). One process always gets it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn take_backfill(&self, id: i64, now_us: i64, lease_us: i64) -> Result<bool> {
        match self {
            Self::Sqlite(_) => Ok(true),
            Self::Pg(m) => m.take_backfill(id, now_us, lease_us).await,
        }
    }

    /// Stops accepting writes once those under way are done.
    pub fn shutdown(&self) {
        match self {
            Self::Sqlite(m) => m.shutdown(),
            Self::Pg(m) => m.shutdown(),
        }
    }
}

impl MetaStore for Meta {
    fn write<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        Meta::write(self, f)
    }

    fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&dyn ReadTx) -> Result<T> + Send + 'static,
    {
        Meta::read(self, f)
    }

    fn signals(&self) -> &Signals {
        Meta::signals(self)
    }
}

/// The storage of one region.
pub struct Store {
    /// Metadata database.
    pub meta: Meta,
    /// Blob files.
    pub blobs: BlobStore,
    /// Bodies up to this size are stored inline in the metadata database.
    pub inline_threshold: u64,
    /// The keys encrypted bodies' data keys are wrapped under (from the configuration).
    pub keys: sse::Keyring,
    data_dir: PathBuf,
    /// Held for the life of the store: the data directory's exclusive lock.
    _lock: std::fs::File,
}

impl Store {
    /// Opens the region's data directory: takes its lock, opens the database, and recovers the
    /// staging directory.
    ///
    /// # Errors
    /// When the directory is not writable, is locked by another process, or the database fails.
    pub fn open(data_dir: &Path, inline_threshold: u64) -> Result<Arc<Self>> {
        Self::open_with(data_dir, inline_threshold, None, None, sse::Keyring::default())
    }

    /// [`Store::open`] for a node of a region on PostgreSQL (`pg`, opened with the staging
    /// directory of `data_dir`): the metadata are the region's, the directory this node's;
    /// with `remote`, committed blobs live in the store the region's nodes share.
    ///
    /// # Errors
    /// Those of [`Store::open`].
    pub fn open_with(
        data_dir: &Path,
        inline_threshold: u64,
        pg: Option<PgStore>,
        remote: Option<blobs::Remote>,
        keys: sse::Keyring,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::Other(format!("data directory {}: cannot create: {e}", data_dir.display())))?;
        let lock_path = data_dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Other(format!("data directory {}: not writable: {e}", data_dir.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Other(format!(
                    "data directory {} is locked by another ferry process",
                    data_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Other(format!("data directory {}: cannot lock: {e}", data_dir.display())));
            }
        }
        let mut blobs = BlobStore::open(data_dir)?;
        if let Some(r) = remote {
            blobs = blobs.with_remote(r);
        }
        let meta = match pg {
            Some(pg) => {
                let (promoted, deleted) = blobs.recover(|id| pg.blob_is_live_blocking(id))?;
                if promoted + deleted > 0 {
                    tracing::info!(promoted, deleted, dir = %data_dir.display(), "recovered staging directory");
                }
                Meta::Pg(pg)
            }
            None => Meta::Sqlite(SqliteMeta::open(&data_dir.join("meta.db"), Some(blobs.staging_dir().to_owned()))?),
        };
        let (promoted, deleted) = match &meta {
            Meta::Sqlite(m) => blobs.recover(|id| m.read_blocking(|r| r.blob_is_live(id)))?,
            Meta::Pg(_) => (0, 0),
        };
        if promoted + deleted > 0 {
            tracing::info!(promoted, deleted, dir = %data_dir.display(), "recovered staging directory");
        }
        Ok(Arc::new(Self {
            meta,
            blobs,
            inline_threshold,
            keys,
            data_dir: data_dir.to_owned(),
            _lock: lock,
        }))
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the metadata writer after it has committed what it holds.
    pub fn shutdown(&self) {
        self.meta.shutdown();
    }
}
