//! Ferry's storage layer for one region: the metadata database and the blob files.
//!
//! - [`meta`]: transactional metadata (buckets, versions, uploads, blob references) with group
//!   commit; the write API takes a transaction the caller can add rows to.
//! - [`blobs`]: bodies in files, written to staging, fsynced, promoted after commit.
//! - [`objects`]: S3 versioning semantics as functions over a write transaction.
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
//! (up to the inline threshold) skip the files and live in the database row.

pub mod blobs;
pub mod checksum;
pub mod error;
pub mod meta;
pub mod model;
pub mod objects;
pub mod progress;
pub mod replication;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobStore, StagedBlob};
use crate::checksum::{Algorithm, BodyDigest, DigestResult};
pub use crate::error::{Error, Result};
use crate::meta::sqlite::SqliteMeta;
use crate::model::{BodyLayout, PartRef};
use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus};

/// The storage of one region.
pub struct Store {
    /// Metadata database.
    pub meta: SqliteMeta,
    /// Blob files.
    pub blobs: BlobStore,
    /// Bodies up to this size are stored inline in the metadata database.
    pub inline_threshold: u64,
    data_dir: PathBuf,
    /// Held for the life of the store: the data directory's exclusive lock.
    _lock: std::fs::File,
}

/// A body that has been received and hashed but not yet committed.
pub enum Ingested {
    /// Small body, kept in memory, to be stored in the metadata row.
    Inline(Vec<u8>),
    /// Large body, in a fsynced staging file.
    Staged(StagedBlob),
}

impl Ingested {
    /// The layout to record for this body, as a single part with the given ETag.
    #[must_use]
    pub fn layout(&self, size: u64, etag: &str) -> BodyLayout {
        match self {
            Self::Inline(data) => BodyLayout::Inline(data.clone()),
            Self::Staged(b) => BodyLayout::Parts {
                parts: vec![PartRef { blob: b.id().to_owned(), size, etag: etag.to_owned(), checksums: None }],
                multipart: false,
            },
        }
    }
}

impl Store {
    /// Opens the region's data directory: takes its lock, opens the database, and recovers the
    /// staging directory.
    ///
    /// # Errors
    /// When the directory is not writable, is locked by another process, or the database fails.
    pub fn open(data_dir: &Path, inline_threshold: u64) -> Result<Arc<Self>> {
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
        let blobs = BlobStore::open(data_dir)?;
        let meta = SqliteMeta::open(&data_dir.join("meta.db"), Some(blobs.staging_dir().to_owned()))?;
        let (promoted, deleted) = blobs.recover(|id| meta.read_blocking(|r| r.blob_is_live(id)))?;
        if promoted + deleted > 0 {
            tracing::info!(promoted, deleted, dir = %data_dir.display(), "recovered staging directory");
        }
        Ok(Arc::new(Self {
            meta,
            blobs,
            inline_threshold,
            data_dir: data_dir.to_owned(),
            _lock: lock,
        }))
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Receives a body: hashes it (MD5 plus `algorithms`) and keeps it in memory if it stays
    /// within the inline threshold, else streams it to a fsynced staging file. Memory use is
    /// bounded by the inline threshold plus one write buffer, whatever the body size.
    ///
    /// `expected_len`, when known, must match exactly; `max_len` caps the body. With
    /// `allow_inline` false the body always goes to a blob file (multipart parts).
    ///
    /// # Errors
    /// [`Error::Body`] when the stream fails, [`Error::IncompleteBody`] / [`Error::EntityTooLarge`]
    /// on length mismatches, I/O errors.
    pub async fn ingest<S, E>(
        &self,
        stream: S,
        algorithms: &[Algorithm],
        expected_len: Option<u64>,
        max_len: u64,
        allow_inline: bool,
    ) -> Result<(Ingested, DigestResult)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.ingest_digest(stream, BodyDigest::new(algorithms), expected_len, max_len, allow_inline).await
    }

    /// [`Store::ingest`] with a digest of the caller's choosing (without MD5 for a replica
    /// whose ETag is known and whose body a checksum verifies).
    ///
    /// # Errors
    /// As [`Store::ingest`].
    pub async fn ingest_digest<S, E>(
        &self,
        mut stream: S,
        mut digest: BodyDigest,
        expected_len: Option<u64>,
        max_len: u64,
        allow_inline: bool,
    ) -> Result<(Ingested, DigestResult)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inline_max = match expected_len {
            _ if !allow_inline => 0,
            Some(n) if n > self.inline_threshold => 0,
            _ => self.inline_threshold,
        };
        let mut buffer: Vec<u8> = Vec::new();
        let mut staged: Option<StagedBlob> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Body(e.into()))?;
            digest.update(&chunk);
            if digest.len() > max_len || expected_len.is_some_and(|n| digest.len() > n) {
                return Err(Error::EntityTooLarge);
            }
            match &mut staged {
                Some(blob) => blob.write_bytes(chunk).await?,
                None if digest.len() <= inline_max => buffer.extend_from_slice(&chunk),
                None => {
                    let mut blob = self.blobs.create().await?;
                    blob.write_bytes(Bytes::from(std::mem::take(&mut buffer))).await?;
                    blob.write_bytes(chunk).await?;
                    buffer = Vec::new();
                    staged = Some(blob);
                }
            }
        }
        if expected_len.is_some_and(|n| digest.len() < n) {
            return Err(Error::IncompleteBody);
        }
        if staged.is_none() && !allow_inline {
            let mut blob = self.blobs.create().await?;
            blob.write_bytes(Bytes::from(std::mem::take(&mut buffer))).await?;
            staged = Some(blob);
        }
        let body = match staged {
            Some(mut blob) => {
                blob.finish().await?;
                Ingested::Staged(blob)
            }
            None => Ingested::Inline(buffer),
        };
        Ok((body, digest.finish()))
    }

    /// Runs `f` in a write transaction that may reference `body`'s blob, and settles the blob
    /// in the metadata writer, whatever becomes of the caller: once `f` is handed over, the
    /// staged file belongs to the transaction. If the transaction commits with a row referring
    /// to the blob, the file is moved into place after the commit; if nothing refers to it (a
    /// duplicate replica, a failed condition, a rollback), it is deleted. A caller that goes away
    /// meanwhile (client disconnect: the request future is dropped) can no longer delete a file
    /// that a committed row refers to. A crash in between leaves the file in staging, where
    /// start-up recovery promotes or deletes it.
    ///
    /// # Errors
    /// Those of `f`, and database errors.
    pub async fn write_with_body<T, F>(&self, body: Ingested, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn meta::WriteTx) -> Result<T> + Send + 'static,
    {
        let Ingested::Staged(blob) = body else { return self.meta.write(f).await };
        let id = blob.keep();
        let (promote, discard) = self.blobs.settle(&id);
        self.meta
            .write(move |tx| {
                let out = f(tx);
                match &out {
                    Ok(_) if tx.blob_is_live(&id)? => tx.on_commit(Box::new(promote)),
                    // Referenced by nothing, committed or not.
                    _ => discard(),
                }
                out
            })
            .await
    }

    /// Stops the metadata writer after it has committed what it holds.
    pub fn shutdown(&self) {
        self.meta.shutdown();
    }
}

/// Unlinks released blob files once their grace period has passed, and aborts the multipart
/// uploads peers opened here and left idle (a transfer whose job was dropped, or whose source
/// version vanished, or a source that never came back): their parts are released.
pub struct GcWorker {
    store: Arc<Store>,
    collected: u64,
    /// Replica uploads idle this long are aborted.
    replica_upload_expiry: Duration,
    expired: u64,
}

impl GcWorker {
    /// A collector for `store`; replica uploads idle for `replica_upload_expiry` are aborted.
    #[must_use]
    pub fn new(store: Arc<Store>, replica_upload_expiry: Duration) -> Self {
        Self { store, collected: 0, replica_upload_expiry, expired: 0 }
    }

    /// Aborts idle replica uploads; returns how many.
    async fn expire_replica_uploads(&mut self) -> Result<u64> {
        let expiry = i64::try_from(self.replica_upload_expiry.as_micros()).unwrap_or(i64::MAX);
        let before = ferry_core::time::now_micros().saturating_sub(expiry);
        let idle = self.store.meta.read(move |r| r.idle_uploads(before, 100)).await?;
        let ids: Vec<String> = idle.into_iter().filter(|u| u.attrs.origin.is_some()).map(|u| u.upload_id).collect();
        let n = ids.len() as u64;
        if n > 0 {
            tracing::info!(uploads = n, "aborting replica uploads left idle");
            self.store
                .meta
                .write(move |tx| {
                    for id in &ids {
                        match objects::abort_upload(tx, id) {
                            Ok(()) | Err(Error::NoSuchUpload) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        self.expired += n;
        Ok(n)
    }
}

#[async_trait::async_trait]
impl Worker for GcWorker {
    fn name(&self) -> String {
        "blob-gc".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: Some(format!(
                "{} blobs collected, {} idle replica uploads aborted",
                self.collected, self.expired
            )),
            ..WorkerStatus::default()
        }
    }

    async fn work(&mut self, _stop: &CancellationToken) -> std::result::Result<WorkerState, WorkerError> {
        self.expire_replica_uploads().await?;
        let now = ferry_core::time::now_micros();
        let due = self.store.meta.read(move |r| r.due_garbage(now, 500)).await?;
        if due.is_empty() {
            return Ok(WorkerState::Idle);
        }
        let store = self.store.clone();
        let ids = due.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for id in &ids {
                store.blobs.remove(id)?;
            }
            Ok(())
        })
        .await??;
        let n = due.len() as u64;
        self.store.meta.write(move |tx| tx.forget_garbage(&due)).await?;
        self.collected += n;
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::time::sleep(Duration::from_secs(5)).await;
        WorkerState::Busy
    }
}
