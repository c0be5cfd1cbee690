//! The write path's first half: a request body becomes an [`Ingested`] body (hashed, in memory
//! or in a fsynced staging file), then [`Store::write_with_body`] commits the metadata that
//! references it and settles the file. The whole crash story of a write is in the crate docs
//! ([`crate`], "Crash behaviour of a write").

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::Store;
use crate::blobs::StagedBlob;
use crate::checksum::{Algorithm, BodyDigest, DigestResult};
use crate::error::{Error, Result};
use crate::meta;
use crate::model::{BodyLayout, PartRef};
use crate::sse::{self, Key, Sealer};

fn sse_error(e: sse::SseError) -> Error {
    Error::Other(format!("encrypting a body: {e}"))
}

/// A staging blob being written, in plaintext or through a [`Sealer`] keyed by its id.
struct Staging {
    blob: StagedBlob,
    sealer: Option<Sealer>,
}

impl Staging {
    fn new(blob: StagedBlob, seal: Option<&Key>) -> Self {
        let sealer = seal.map(|k| Sealer::new(k.body(blob.id())));
        Self { blob, sealer }
    }

    async fn write(&mut self, data: Bytes) -> Result<()> {
        match &mut self.sealer {
            None => self.blob.write_bytes(data).await?,
            Some(s) => {
                for sealed in s.push(&data).map_err(sse_error)? {
                    self.blob.write_bytes(Bytes::from(sealed)).await?;
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<StagedBlob> {
        if let Some(s) = self.sealer.take() {
            self.blob.write_bytes(Bytes::from(s.finish().map_err(sse_error)?)).await?;
        }
        self.blob.finish().await?;
        Ok(self.blob)
    }
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
    /// Receives a body: hashes it (MD5 plus `algorithms`) and keeps it in memory if it stays
    /// within the inline threshold, else streams it to a fsynced staging file. Memory use is
    /// bounded by the inline threshold plus one write buffer, whatever the body size.
    ///
    /// `expected_len`, when known, must match exactly; `max_len` caps the body. With
    /// `allow_inline` false the body always goes to a blob file (multipart parts). With `seal`
    /// (a data key) the body is stored encrypted ([`crate::sse`]): under the blob's id, or
    /// [`sse::INLINE`] in the database; digests and lengths are of the plaintext.
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
        seal: Option<&Key>,
    ) -> Result<(Ingested, DigestResult)>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.ingest_digest(stream, BodyDigest::new(algorithms), expected_len, max_len, allow_inline, seal).await
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
        seal: Option<&Key>,
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
        let mut staged: Option<Staging> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Body(e.into()))?;
            digest.update(&chunk);
            if digest.len() > max_len || expected_len.is_some_and(|n| digest.len() > n) {
                return Err(Error::EntityTooLarge);
            }
            match &mut staged {
                Some(blob) => blob.write(chunk).await?,
                None if digest.len() <= inline_max => buffer.extend_from_slice(&chunk),
                None => {
                    let mut blob = Staging::new(self.blobs.create().await?, seal);
                    blob.write(Bytes::from(std::mem::take(&mut buffer))).await?;
                    blob.write(chunk).await?;
                    staged = Some(blob);
                }
            }
        }
        if expected_len.is_some_and(|n| digest.len() < n) {
            return Err(Error::IncompleteBody);
        }
        if staged.is_none() && !allow_inline {
            let mut blob = Staging::new(self.blobs.create().await?, seal);
            blob.write(Bytes::from(std::mem::take(&mut buffer))).await?;
            staged = Some(blob);
        }
        let body = match staged {
            Some(blob) => Ingested::Staged(blob.finish().await?),
            None => match seal {
                None => Ingested::Inline(buffer),
                Some(key) => {
                    let mut s = Sealer::new(key.body(sse::INLINE));
                    let mut sealed = s.push(&buffer).map_err(sse_error)?.concat();
                    sealed.extend(s.finish().map_err(sse_error)?);
                    Ingested::Inline(sealed)
                }
            },
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
}
