//! The read path: the plaintext bytes of a body, whatever its layout (inline, one blob, the
//! parts of a multipart upload) and whether it is encrypted ([`crate::sse`]).
//!
//! # Invariants
//! 1. A reader holds at most one read chunk (plain bodies) or one sealed chunk (encrypted
//!    ones) of a blob in memory, whatever the body's size; an inline body is at most the
//!    inline threshold.
//! 2. A range of an encrypted body opens only the chunks it covers, and every byte it yields
//!    has been authenticated: a body that was changed, cut or extended ends the stream with an
//!    `InvalidData` error, never with plaintext that was not written.
//! 3. Nothing here decides who may read: the caller has checked permissions and unwrapped the
//!    data key.

use std::io;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::Store;
use crate::model::{BodyLayout, PartRef};
use crate::sse::{self, Key, OpenStream};

/// A body being read: plaintext bytes in order.
pub type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync>>;

fn failed(e: io::Error) -> BodyStream {
    Box::pin(futures::stream::iter([Err(e)]))
}

fn once(b: Bytes) -> BodyStream {
    Box::pin(futures::stream::iter([Ok(b)]))
}

use crate::sse::corrupt as invalid;

impl Store {
    /// Plaintext bytes `range` of a body stored in `layout`, opened with the data key `key`
    /// when the body is encrypted. `range` lies within the body (the caller's plan says so).
    #[must_use]
    pub fn read_body(&self, layout: &BodyLayout, range: Range<u64>, key: Option<&Key>) -> BodyStream {
        match (layout, key) {
            (BodyLayout::Inline(data), key) => inline(data, range, key),
            (BodyLayout::Parts { parts, .. }, None) => Box::pin(self.blobs.read_parts(parts.clone(), range)),
            (BodyLayout::Parts { parts, .. }, Some(key)) => {
                let mut streams = Vec::new();
                let mut start = 0;
                for p in parts {
                    let end = start + p.size;
                    if range.start < end && range.end > start {
                        let from = range.start.max(start) - start;
                        let to = range.end.min(end) - start;
                        streams.push(self.read_part(p, from..to, Some(key)));
                    }
                    start = end;
                }
                Box::pin(futures::stream::iter(streams).flatten())
            }
        }
    }

    /// Plaintext bytes `range` of one stored part (a blob), opened with `key` when encrypted.
    #[must_use]
    pub fn read_part(&self, part: &PartRef, range: Range<u64>, key: Option<&Key>) -> BodyStream {
        let Some(key) = key else { return Box::pin(self.blobs.read_parts(vec![part.clone()], range)) };
        if range.start >= range.end {
            return Box::pin(futures::stream::empty());
        }
        let span = match sse::span(part.size, range.start, range.end) {
            Ok(s) => s,
            Err(e) => return failed(invalid(e)),
        };
        let stored = PartRef { size: sse::sealed_len(part.size), ..part.clone() };
        let inner = self.blobs.read_parts(vec![stored], span.offset..span.offset + span.len);
        Box::pin(OpenStream::new(inner, key.body(&part.blob), part.size, &span, range.end - range.start))
    }
}

/// An inline body's bytes `range` (bounded by the inline threshold: opened in memory).
fn inline(data: &[u8], range: Range<u64>, key: Option<&Key>) -> BodyStream {
    let cut = |d: &[u8]| {
        let (s, e) = (
            usize::try_from(range.start).unwrap_or(usize::MAX),
            usize::try_from(range.end).unwrap_or(usize::MAX),
        );
        d.get(s..e)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "range outside the body"))
    };
    let Some(key) = key else {
        return match cut(data) {
            Ok(b) => once(b),
            Err(e) => failed(e),
        };
    };
    let plain_len = sse::plain_len(data.len() as u64);
    let mut o = sse::Opener::new(key.body(sse::INLINE), plain_len, &sse::whole(plain_len));
    let plain = o.push(data).and_then(|mut p| {
        p.extend(o.finish()?);
        Ok(p)
    });
    match plain.map_err(invalid).and_then(|p| cut(&p)) {
        Ok(b) => once(b),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ingested;

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap_or(0)).collect()
    }

    fn blob_path(dir: &std::path::Path, id: &str) -> std::path::PathBuf {
        dir.join("blobs").join(&id[..2]).join(&id[2..4]).join(id)
    }

    async fn collect(mut s: BodyStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    /// Stores `plain` as `pieces` parts (each its own blob, as a multipart upload does).
    async fn store_parts(store: &Store, plain: &[u8], pieces: usize, key: Option<&Key>) -> BodyLayout {
        let mut parts = Vec::new();
        for piece in plain.chunks(plain.len().div_ceil(pieces).max(1)) {
            let stream = futures::stream::iter([Ok::<_, io::Error>(Bytes::copy_from_slice(piece))]);
            let (ingested, digest) = store.ingest(stream, &[], None, 1 << 30, false, key).await.unwrap();
            let Ingested::Staged(blob) = ingested else { panic!("a part is a blob") };
            let id = blob.keep();
            store.blobs.promote(&id).unwrap();
            parts.push(PartRef { blob: id, size: digest.len, etag: String::new(), checksums: None });
        }
        BodyLayout::Parts { parts, multipart: pieces > 1 }
    }

    /// Encrypted bodies read back as written, inline or in blobs, whole or in parts, over
    /// every range around chunk and part boundaries; the stored bytes are not the plaintext.
    #[tokio::test]
    async fn encrypted_bodies_read_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1000).unwrap();
        let key = Key::random();
        let c = sse::CHUNK;
        let plain = body(3 * c + 100);
        for pieces in [1, 2, 3] {
            let layout = store_parts(&store, &plain, pieces, Some(&key)).await;
            if let BodyLayout::Parts { parts, .. } = &layout {
                let raw = std::fs::read(blob_path(dir.path(), &parts[0].blob)).unwrap();
                assert_eq!(raw.len() as u64, sse::sealed_len(parts[0].size));
                assert!(!raw.windows(64).any(|w| plain.windows(64).next() == Some(w)), "plaintext on disk");
            }
            let n = plain.len();
            for (s, e) in [(0, n), (1, 2), (c - 1, c + 1), (c, 2 * c), (n - 1, n), (5, n - 5), (2 * c + 3, 3 * c + 50)] {
                let got = collect(store.read_body(&layout, s as u64..e as u64, Some(&key))).await.unwrap();
                assert_eq!(got, &plain[s..e], "{pieces} parts, range {s}..{e}");
            }
            // Another key fails authentication instead of yielding bytes.
            assert!(collect(store.read_body(&layout, 0..10, Some(&Key::random()))).await.is_err());
        }
        // Inline: a small body in the database.
        let small = body(500);
        let stream = futures::stream::iter([Ok::<_, io::Error>(Bytes::from(small.clone()))]);
        let (ingested, _) = store.ingest(stream, &[], Some(500), 1 << 20, true, Some(&key)).await.unwrap();
        let Ingested::Inline(sealed) = ingested else { panic!("inline") };
        assert_eq!(sealed.len() as u64, sse::sealed_len(500));
        let layout = BodyLayout::Inline(sealed);
        for (s, e) in [(0usize, 500usize), (10, 20), (499, 500)] {
            assert_eq!(
                collect(store.read_body(&layout, s as u64..e as u64, Some(&key))).await.unwrap(),
                &small[s..e]
            );
        }
        // An empty body, sealed, is one tag.
        let (ingested, _) =
            store.ingest(futures::stream::empty::<io::Result<Bytes>>(), &[], Some(0), 1 << 20, true, Some(&key)).await.unwrap();
        let Ingested::Inline(sealed) = ingested else { panic!("inline") };
        assert_eq!(sealed.len(), sse::TAG);
        assert_eq!(
            collect(store.read_body(&BodyLayout::Inline(sealed), 0..0, Some(&key))).await.unwrap(),
            b""
        );
    }

    /// A blob cut short after it was written ends the read with an error.
    #[tokio::test]
    async fn a_truncated_encrypted_blob_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        let key = Key::random();
        let plain = body(2 * sse::CHUNK + 10);
        let layout = store_parts(&store, &plain, 1, Some(&key)).await;
        let BodyLayout::Parts { parts, .. } = &layout else { panic!("parts") };
        let f = std::fs::OpenOptions::new().write(true).open(blob_path(dir.path(), &parts[0].blob)).unwrap();
        f.set_len(sse::sealed_len(plain.len() as u64) - 5).unwrap();
        let n = plain.len() as u64;
        assert!(collect(store.read_body(&layout, 0..n, Some(&key))).await.is_err());
        assert!(collect(store.read_body(&layout, n - 3..n, Some(&key))).await.is_err());
    }
}
