//! Blob files: object bodies (and multipart parts) too large to keep in the metadata database.
//!
//! # On-disk layout
//! ```text
//! DATA_DIR/blobs/ab/cd/abcd...   committed blobs, named by their 32-hex-char id
//! DATA_DIR/staging/abcd...       blobs being written, or committed but not yet moved
//! ```
//! File names are ids minted by Ferry, never derived from object keys.
//!
//! # Write protocol and crash behaviour
//! 1. The body streams into `staging/<id>`, then the file is fsynced ([`StagedBlob::finish`]).
//! 2. The metadata transaction that references the blob records it in the `blobs` table; the
//!    metadata writer fsyncs `staging/` before committing, so the directory entry is durable
//!    before any committed record points at it.
//! 3. After the commit the file is renamed to `blobs/ab/cd/<id>` ([`BlobStore::promote`]).
//!
//! A crash before 2 leaves an unreferenced file in `staging/`; a crash between 2 and 3 leaves a
//! referenced one. [`BlobStore::recover`] at start-up promotes the referenced files and deletes the
//! rest. Readers look in `blobs/` first, then in `staging/`, then in `blobs/` again (the rename
//! may happen in between), so a committed blob is always found.
//!
//! Deletion: a record that stops referencing a blob moves it to the `garbage` table in the same
//! transaction; the garbage collector unlinks it after a grace period.
//!
//! # Shared blobs (a region of several nodes)
//! With a [`Remote`] store (an S3-compatible bucket every node of the region reads), the staged
//! file is still written and fsynced here first (memory stays bounded whatever the body, and
//! the upload can be retried from it), then, in [`StagedBlob::finish`], an intent is recorded
//! for the blob id (`meta::pg::intents`) and the file uploaded as one immutable object. The
//! transaction that references the blob turns the intent into its `blobs` row (and fails if the
//! intent was swept); after the commit the local file is deleted. A blob nothing references is
//! deleted from the store with its intent; the intents of a node that died are swept by the
//! others ([`BlobStore::sweep_intents`]). Reads go to the store, so any node serves any GET.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream, Length};
use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use crate::meta::pg::PgMeta;
use crate::meta::pg::intents;
use crate::meta::pg::nodes::Life;
use crate::model::PartRef;
use crate::s3_blobs::S3Blobs;

/// Read size used when streaming a blob out.
const READ_CHUNK: usize = 256 * 1024;
/// Bytes of a body gathered before they are written (as one vectored write, without copying).
const WRITE_BUFFER: usize = 1024 * 1024;
/// Chunks gathered at most before a write (a body of tiny chunks still writes in bounded steps).
const WRITE_CHUNKS: usize = 1024;

/// The blob files of one region.
#[derive(Clone)]
pub struct BlobStore {
    blobs: PathBuf,
    staging: PathBuf,
    remote: Option<Arc<Remote>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("blobs", &self.blobs).field("remote", &self.remote.is_some()).finish()
    }
}

/// What becomes of a staged blob once its transaction's outcome is known ([`BlobStore::settle`]).
pub type Settle = Box<dyn FnOnce() + Send + 'static>;

/// The store a region's nodes share their blobs in, and what records this node's intents.
pub struct Remote {
    pub s3: S3Blobs,
    pub meta: Arc<PgMeta>,
    /// This node's current life (its intents carry its epoch).
    pub node: Life,
}

impl Remote {
    /// Deletes a blob nobody references from the store, then its intent (the other order could
    /// leave an object no intent leads to).
    async fn forget(&self, id: &str) -> crate::Result<()> {
        self.s3.delete(id).await?;
        let client = self.meta.client().await?;
        intents::forget(&**client, id).await
    }
}

fn io_err(e: crate::Error) -> io::Error {
    match e {
        crate::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

impl BlobStore {
    /// Opens (creating) the blob directories under `data_dir`.
    ///
    /// # Errors
    /// When the directories cannot be created.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let blobs = data_dir.join("blobs");
        let staging = data_dir.join("staging");
        std::fs::create_dir_all(&blobs)?;
        std::fs::create_dir_all(&staging)?;
        Ok(Self { blobs, staging, remote: None })
    }

    /// The same directories, with committed blobs kept in `remote` (shared by the region's
    /// nodes) instead of `blobs/`.
    #[must_use]
    pub fn with_remote(self, remote: Remote) -> Self {
        Self { remote: Some(Arc::new(remote)), ..self }
    }

    /// True when committed blobs live in a store shared by the region's nodes.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.remote.is_some()
    }

    /// Sweeps the intents of nodes that can no longer commit them (fenced, gone, or restarted)
    /// and older than `before_us`: each blob is deleted from the shared store, then its intent.
    /// Returns how many. Nothing to do without a shared store.
    ///
    /// # Errors
    /// Database or store errors (the next sweep tries again).
    pub async fn sweep_intents(&self, before_us: i64) -> crate::Result<u64> {
        let Some(remote) = &self.remote else { return Ok(0) };
        let ids = {
            let client = remote.meta.client().await?;
            intents::sweepable(&**client, before_us, 500).await?
        };
        for id in &ids {
            remote.forget(id).await?;
        }
        Ok(ids.len() as u64)
    }

    /// The staging directory (fsynced by the metadata writer before commits that add blobs).
    #[must_use]
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn final_path(&self, id: &str) -> PathBuf {
        let (a, b) = (id.get(0..2).unwrap_or("00"), id.get(2..4).unwrap_or("00"));
        self.blobs.join(a).join(b).join(id)
    }

    fn staged_path(&self, id: &str) -> PathBuf {
        self.staging.join(id)
    }

    /// For a staged blob whose guard was disarmed ([`StagedBlob::keep`]): a function that moves
    /// it into place (run once its row committed), and one that deletes it (when nothing
    /// refers to it). Both own their paths, so the metadata writer can run them.
    ///
    /// With a shared store, promoting deletes the local copy (the blob is in the store), and
    /// discarding deletes the store's object and its intent too (in the background).
    pub fn settle(&self, id: &str) -> (Settle, Settle) {
        let (from, to) = (self.staged_path(id), self.final_path(id));
        let discard = from.clone();
        if let Some(remote) = self.remote.clone() {
            let id = id.to_owned();
            let promote = move || {
                let _ = std::fs::remove_file(from);
            };
            let discard = move || {
                let _ = std::fs::remove_file(discard);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = remote.forget(&id).await {
                            // Its intent stays; the sweep deletes it once this node is gone.
                            tracing::warn!(blob = %id, error = %e, "could not delete an unused blob");
                        }
                    });
                }
            };
            return (Box::new(promote), Box::new(discard));
        }
        let promote = move || {
            let moved = to.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::rename(&from, &to));
            if let Err(e) = moved {
                // Still readable from staging; the next start-up finishes the move.
                tracing::warn!(blob = %from.display(), error = %e, "could not move blob out of staging");
            }
        };
        (
            Box::new(promote),
            Box::new(move || {
                let _ = std::fs::remove_file(discard);
            }),
        )
    }

    /// Creates a new staged blob to stream a body into.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub async fn create(&self) -> io::Result<StagedBlob> {
        let id = ferry_core::ids::new_blob_id();
        let path = self.staged_path(&id);
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?.into_std().await;
        Ok(StagedBlob {
            id,
            path: Some(path),
            file: Some(file),
            pending: Vec::new(),
            pending_len: 0,
            remote: self.remote.clone(),
        })
    }

    /// Moves a committed blob from staging to its final place. Not fsynced: after a crash the
    /// file is found in either place, and [`recover`](Self::recover) finishes the move.
    ///
    /// # Errors
    /// When the rename fails (the blob stays readable from staging).
    pub fn promote(&self, id: &str) -> io::Result<()> {
        let to = self.final_path(id);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(self.staged_path(id), to)
    }

    /// Opens a committed blob for reading, wherever it currently is.
    ///
    /// # Errors
    /// `NotFound` when the blob is in neither place.
    pub async fn open_read(&self, id: &str) -> io::Result<tokio::fs::File> {
        let finals = self.final_path(id);
        let mut last = None;
        for path in [&finals, &self.staged_path(id), &finals] {
            match tokio::fs::File::open(path).await {
                Ok(f) => return Ok(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
    }

    /// `len` bytes of a committed blob from `offset`, as a request body.
    ///
    /// # Errors
    /// `NotFound` when the blob is missing; I/O or store errors.
    pub async fn body(&self, id: &str, offset: u64, len: u64) -> io::Result<ByteStream> {
        if let Some(remote) = &self.remote {
            return remote.s3.read(id, Some(offset..offset + len)).await.map_err(io_err);
        }
        let file = self.open_read(id).await?;
        ByteStream::read_from().file(file).offset(offset).length(Length::Exact(len)).build().await.map_err(io::Error::other)
    }

    /// `len` bytes of a committed blob from `offset`, as a reader.
    async fn reader(&self, id: &str, offset: u64, len: u64) -> io::Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        if let Some(remote) = self.remote.clone() {
            let id = id.to_owned();
            // On a task of its own: the SDK's future is not `Sync`.
            let body = tokio::spawn(async move { remote.s3.read(&id, Some(offset..offset + len)).await })
                .await
                .map_err(io::Error::other)?
                .map_err(io_err)?;
            return Ok(Box::new(body.into_async_read()));
        }
        let mut f = self.open_read(id).await?;
        f.seek(SeekFrom::Start(offset)).await?;
        Ok(Box::new(f.take(len)))
    }

    /// Whether a committed blob exists (in either place; in the shared store): `Ok(false)` only
    /// when it is not found anywhere, which callers take as the data being gone for good.
    ///
    /// # Errors
    /// The store could not be read or reached (EIO, EACCES, a file where a directory should be,
    /// a shared store that does not answer): whether the blob is there is not known.
    pub async fn exists(&self, id: &str) -> io::Result<bool> {
        if let Some(remote) = &self.remote {
            return remote.s3.exists(id).await.map_err(io::Error::other);
        }
        for path in [self.final_path(id), self.staged_path(id), self.final_path(id)] {
            match tokio::fs::metadata(&path).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Deletes a blob from wherever it is (with a shared store: its object there). Missing
    /// files are not an error.
    ///
    /// # Errors
    /// Other I/O errors, store errors.
    pub async fn remove(&self, id: &str) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.s3.delete(id).await.map_err(io_err);
        }
        let this = self.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || this.unlink(&id)).await.map_err(io::Error::other)?
    }

    fn unlink(&self, id: &str) -> io::Result<()> {
        for path in [self.final_path(id), self.staged_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Start-up recovery of the staging directory: promotes the blobs `is_live` says are
    /// referenced and deletes everything else. Returns (promoted, deleted).
    ///
    /// # Errors
    /// I/O errors, or `is_live`'s error.
    pub fn recover<E: From<io::Error>>(&self, mut is_live: impl FnMut(&str) -> Result<bool, E>) -> Result<(u64, u64), E> {
        let (mut promoted, mut deleted) = (0, 0);
        for entry in std::fs::read_dir(&self.staging)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // With a shared store a committed blob is there already: the local copy goes too.
            if self.remote.is_none() && ferry_core::ids::is_hex_id(&name) && is_live(&name)? {
                self.promote(&name)?;
                promoted += 1;
            } else {
                std::fs::remove_file(entry.path())?;
                deleted += 1;
            }
        }
        Ok((promoted, deleted))
    }

    /// Streams `range` (byte offsets within the object) of an object made of `parts`.
    #[must_use]
    pub fn read_parts(&self, parts: Vec<PartRef>, range: std::ops::Range<u64>) -> PartsReader {
        PartsReader { store: self.clone(), parts, next_part: 0, part_start: 0, range, state: ReadState::Between }
    }

    /// Reads a whole blob range into memory (for small copies). Prefer [`read_parts`](Self::read_parts).
    ///
    /// # Errors
    /// I/O errors.
    pub async fn read_range(&self, id: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut f = self.reader(id, offset, len as u64).await?;
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

/// A blob being written in the staging directory. Dropped before [`StagedBlob::keep`], the file
/// is deleted.
///
/// The body's chunks are kept as they arrive (reference-counted, not copied) until about
/// [`WRITE_BUFFER`] bytes are gathered, then written with one vectored write on a blocking
/// thread: the only copy of the bytes on their way in is the kernel's.
pub struct StagedBlob {
    id: String,
    path: Option<PathBuf>,
    /// `None` while a write runs on a blocking thread, and after [`StagedBlob::finish`].
    file: Option<std::fs::File>,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// The shared store it is uploaded to when finished.
    remote: Option<Arc<Remote>>,
}

impl StagedBlob {
    /// The blob's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends a copy of `data` (prefer [`write_bytes`](Self::write_bytes)).
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk).
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_bytes(Bytes::copy_from_slice(data)).await
    }

    /// Appends `data`, without copying it.
    ///
    /// # Errors
    /// I/O errors (e.g. a full disk).
    pub async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        if self.file.is_none() {
            return Err(io::Error::other("blob already finished"));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.pending_len += data.len();
        self.pending.push(data);
        if self.pending_len >= WRITE_BUFFER || self.pending.len() >= WRITE_CHUNKS {
            self.flush_pending(false).await?;
        }
        Ok(())
    }

    /// Writes the gathered chunks (and fsyncs the file if `sync`) on a blocking thread.
    async fn flush_pending(&mut self, sync: bool) -> io::Result<()> {
        let Some(mut file) = self.file.take() else { return Err(io::Error::other("blob already finished")) };
        let chunks = std::mem::take(&mut self.pending);
        self.pending_len = 0;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let mut r = write_all_vectored(&mut file, &chunks);
            if sync && r.is_ok() {
                r = file.sync_all();
            }
            (file, r)
        })
        .await
        .map_err(io::Error::other)?;
        self.file = Some(file);
        written
    }

    /// Writes what is gathered and fsyncs the file. The blob is durable content; it becomes
    /// referenced only when a metadata transaction adds it.
    ///
    /// # Errors
    /// I/O errors.
    ///
    /// With a shared store, it is then uploaded there, under an intent recorded first.
    pub async fn finish(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            self.flush_pending(true).await?;
            self.file = None;
            if let (Some(remote), Some(path)) = (&self.remote, &self.path) {
                let client = remote.meta.client().await.map_err(io_err)?;
                intents::record(&**client, &remote.node.current(), &self.id, ferry_core::time::now_micros())
                    .await
                    .map_err(io_err)?;
                drop(client);
                remote.s3.put_file(&self.id, path).await.map_err(io_err)?;
            }
        }
        Ok(())
    }

    /// Disarms the delete-on-drop guard (call once the referencing transaction committed).
    pub fn keep(mut self) -> String {
        self.path = None;
        std::mem::take(&mut self.id)
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            drop(self.file.take());
            let _ = std::fs::remove_file(p);
            // An upload that may have happened is swept with its intent once this node is gone;
            // forgetting it now saves the wait.
            if let (Some(remote), Ok(rt)) = (self.remote.clone(), tokio::runtime::Handle::try_current()) {
                let id = std::mem::take(&mut self.id);
                rt.spawn(async move {
                    let _ = remote.forget(&id).await;
                });
            }
        }
    }
}

/// `write_all` for a list of buffers (the standard library's is not stable yet).
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Bytes]) -> io::Result<()> {
    use std::io::{IoSlice, Write as _};
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + Sync>>;
type PartRead = Box<dyn AsyncRead + Send + Sync + Unpin>;

enum ReadState {
    /// Between parts: the next poll opens the part the range continues in.
    Between,
    /// Opening a part (a file, seeking; an object of the shared store, by range); yields the
    /// reader and the bytes to read from it.
    Opening(BoxFuture<io::Result<(PartRead, u64)>>),
    /// A part positioned at the next byte, with the bytes left to read from it.
    Reading(PartRead, u64),
    /// Reading one chunk.
    Pending(BoxFuture<(PartRead, io::Result<Vec<u8>>, u64)>),
    Done,
}

/// Streams a byte range of an object stored as a sequence of blob parts, opening each part only
/// when the range reaches it. Holds at most one read chunk in memory.
pub struct PartsReader {
    store: BlobStore,
    parts: Vec<PartRef>,
    next_part: usize,
    /// Object offset where `parts[next_part]` starts.
    part_start: u64,
    /// Remaining object range to produce.
    range: std::ops::Range<u64>,
    state: ReadState,
}

impl PartsReader {
    /// Bytes still to produce.
    #[must_use]
    pub fn remaining(&self) -> u64 {
        self.range.end.saturating_sub(self.range.start)
    }
}

impl Stream for PartsReader {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReadState::Done => return Poll::Ready(None),
                ReadState::Between => {
                    if this.range.start >= this.range.end {
                        this.state = ReadState::Done;
                        continue;
                    }
                    // Skip parts that end before the range starts.
                    let Some(part) = this.parts.get(this.next_part).cloned() else {
                        this.state = ReadState::Done;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "object shorter than its parts",
                        ))));
                    };
                    let part_end = this.part_start + part.size;
                    if this.range.start >= part_end {
                        this.part_start = part_end;
                        this.next_part += 1;
                        continue;
                    }
                    let offset = this.range.start - this.part_start;
                    let len = (part_end.min(this.range.end)) - this.range.start;
                    let store = this.store.clone();
                    this.state = ReadState::Opening(Box::pin(async move {
                        let r = store.reader(&part.blob, offset, len).await?;
                        Ok((r, len))
                    }));
                }
                ReadState::Opening(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        this.state = ReadState::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Ready(Ok((f, len))) => this.state = ReadState::Reading(f, len),
                },
                ReadState::Reading(..) => {
                    let ReadState::Reading(mut f, left) = std::mem::replace(&mut this.state, ReadState::Done) else {
                        continue;
                    };
                    if left == 0 {
                        // This part's share of the range is done; move to the next part.
                        let size = this.parts.get(this.next_part).map_or(0, |p| p.size);
                        this.part_start += size;
                        this.next_part += 1;
                        this.state = ReadState::Between;
                        continue;
                    }
                    let want = usize::try_from(left.min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
                    this.state = ReadState::Pending(Box::pin(async move {
                        let mut buf = vec![0u8; want];
                        let r = f.read_exact(&mut buf).await.map(|_| buf);
                        (f, r, left)
                    }));
                }
                ReadState::Pending(fut) => match fut.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready((f, Ok(buf), left)) => {
                        let n = buf.len() as u64;
                        this.range.start += n;
                        this.state = ReadState::Reading(f, left - n);
                        return Poll::Ready(Some(Ok(Bytes::from(buf))));
                    }
                    Poll::Ready((_, Err(e), _)) => {
                        this.state = ReadState::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn blob(store: &BlobStore, data: &[u8]) -> PartRef {
        let mut b = store.create().await.unwrap();
        b.write(data).await.unwrap();
        b.finish().await.unwrap();
        let id = b.keep();
        store.promote(&id).unwrap();
        PartRef { blob: id, size: data.len() as u64, etag: String::new(), checksums: None }
    }

    /// Only a blob not found anywhere is missing: one the disk fails to look up (here a file
    /// where its directory should be) is not known to be missing, so a replication job is not
    /// failed for good as "source data missing", nor a GET answered so.
    #[tokio::test]
    async fn only_a_blob_not_found_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = blob(&store, b"kept").await;
        assert!(store.exists(&kept.blob).await.unwrap());
        // Not hex: no blob id shares its directory.
        let gone = "zz23456789abcdef0123456789abcdef";
        assert!(!store.exists(gone).await.unwrap());
        std::fs::write(dir.path().join("blobs").join(&gone[0..2]), b"not a directory").unwrap();
        let looked = store.exists(gone).await;
        assert!(looked.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::NotFound), "{looked:?}");
    }

    #[tokio::test]
    async fn ranges_across_parts() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = blob(&store, b"hello ").await;
        let b = blob(&store, &vec![b'x'; READ_CHUNK + 10]).await;
        let c = blob(&store, b"world").await;
        let full: Vec<u8> = [b"hello ".to_vec(), vec![b'x'; READ_CHUNK + 10], b"world".to_vec()].concat();
        let parts = vec![a, b, c];
        for (s, e) in
            [(0, full.len()), (3, 9), (6, 6 + READ_CHUNK + 10), (full.len() - 3, full.len()), (5, full.len() - 1), (4, 4)]
        {
            let mut r = store.read_parts(parts.clone(), s as u64..e as u64);
            let mut got = Vec::new();
            while let Some(chunk) = r.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(got, &full[s..e], "range {s}..{e}");
        }
    }

    #[tokio::test]
    async fn dropped_staged_blob_is_deleted_and_recovery_sorts_staging() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut b = store.create().await.unwrap();
        b.write(b"abc").await.unwrap();
        let id = b.id().to_owned();
        drop(b);
        assert!(!dir.path().join("staging").join(&id).exists());

        let mut live = store.create().await.unwrap();
        live.write(b"live").await.unwrap();
        live.finish().await.unwrap();
        let live_id = live.keep();
        let mut dead = store.create().await.unwrap();
        dead.write(b"dead").await.unwrap();
        dead.finish().await.unwrap();
        let dead_id = dead.keep();
        std::fs::write(dir.path().join("staging/garbage.tmp"), b"x").unwrap();
        let (p, d) = store.recover(|id| Ok::<_, io::Error>(id == live_id)).unwrap();
        assert_eq!((p, d), (1, 2));
        assert!(store.open_read(&live_id).await.is_ok());
        assert!(store.open_read(&dead_id).await.is_err());
    }
}
