//! Bodies in an S3-compatible object store (AWS S3, Ceph RGW, SeaweedFS, Garage...): the blob
//! backend of a region of several nodes, where any node serves any GET (docs/SCALE-OUT.md).
//!
//! # Layout
//! One immutable backend object per blob, at `PREFIX ab/cd/<id>` (the id's first two byte
//! pairs spread the keys, as the local directory layout does). Ids are minted by Ferry, never
//! derived from object keys; a blob is written once and never changed, only deleted.
//!
//! # Write protocol and crash behaviour
//! 1. The node records an intent for the blob id (`meta::pg::intents::record`, autocommit).
//! 2. It uploads the body ([`S3Blobs::put`]).
//! 3. The metadata transaction that references the blob turns the intent into a `blobs` row
//!    (`meta::pg::intents::commit`), in the same transaction as the record that uses it.
//!
//! A crash before 3 leaves an intent and maybe a backend object, never a row pointing at a
//! missing blob. Intents of a node that was fenced (or restarted: a new epoch) are swept: the
//! backend object deleted ([`S3Blobs::delete`], which succeeds when there is nothing to
//! delete), then the intent. No listing of the backend bucket is ever needed.

#[cfg(any(test, feature = "testing"))]
pub mod seaweed;

use std::ops::Range;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use crate::error::{Error, Result};

/// The blob objects of a region in one bucket of an S3-compatible store.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

fn s3_err<E: std::fmt::Debug>(what: &str, id: &str, e: E) -> Error {
    Error::Other(format!("blob store: {what} {id}: {e:?}"))
}

impl S3Blobs {
    /// Blobs in `bucket` under `prefix` (empty, or ending in `/`), through `client` (built by
    /// the caller with the store's endpoint, credentials and trust).
    #[must_use]
    pub fn new(client: aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Self {
        Self { client, bucket: bucket.to_owned(), prefix: prefix.to_owned() }
    }

    /// The backend key of blob `id`.
    #[must_use]
    pub fn object_key(&self, id: &str) -> String {
        match (id.get(0..2), id.get(2..4)) {
            (Some(a), Some(b)) => format!("{}{a}/{b}/{id}", self.prefix),
            _ => format!("{}{id}", self.prefix),
        }
    }

    /// Stores blob `id` with `body` (one PutObject; the caller cuts large bodies into parts,
    /// each its own blob, as multipart uploads are stored).
    ///
    /// # Errors
    /// The store refused or could not be reached.
    pub async fn put(&self, id: &str, body: Bytes) -> Result<()> {
        let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(id))
            .content_length(len)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_err("put", id, e))?;
        Ok(())
    }

    /// Stores blob `id` with the contents of the file at `path` (streamed from the file: one
    /// PutObject, retried from the file by the SDK).
    ///
    /// # Errors
    /// The file cannot be read; the store refused or could not be reached.
    pub async fn put_file(&self, id: &str, path: &std::path::Path) -> Result<()> {
        let body = ByteStream::from_path(path).await.map_err(|e| s3_err("read staged", id, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(id))
            .body(body)
            .send()
            .await
            .map_err(|e| s3_err("put", id, e))?;
        Ok(())
    }

    /// Reads blob `id` (the bytes of `range` when given) as a stream.
    ///
    /// # Errors
    /// `NotFound` (as an I/O error) when the blob is missing; the store could not be reached.
    pub async fn read(&self, id: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let mut get = self.client.get_object().bucket(&self.bucket).key(self.object_key(id));
        if let Some(r) = range {
            if r.is_empty() {
                return Ok(ByteStream::from(Bytes::new()));
            }
            get = get.range(format!("bytes={}-{}", r.start, r.end - 1));
        }
        match get.send().await {
            Ok(out) => Ok(out.body),
            Err(e) if e.as_service_error().is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key) => Err(
                Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("blob {id} is missing"))),
            ),
            Err(e) => Err(s3_err("read", id, e)),
        }
    }

    /// Reads a whole blob (or a range of it) into memory: for small blobs and tests.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_all(&self, id: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let body = self.read(id, range).await?;
        Ok(body.collect().await.map_err(|e| s3_err("read", id, e))?.into_bytes())
    }

    /// True when blob `id` is stored.
    ///
    /// # Errors
    /// The store could not be reached.
    pub async fn exists(&self, id: &str) -> Result<bool> {
        match self.client.head_object().bucket(&self.bucket).key(self.object_key(id)).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(s3_err("head", id, e)),
        }
    }

    /// Deletes blob `id`; succeeds when it is already gone (a sweep may run twice).
    ///
    /// # Errors
    /// The store refused or could not be reached.
    pub async fn delete(&self, id: &str) -> Result<()> {
        match self.client.delete_object().bucket(&self.bucket).key(self.object_key(id)).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(()),
            Err(e) => Err(s3_err("delete", id, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::seaweed::Seaweed;
    use super::*;
    use crate::meta::pg::test_cluster::TestCluster;
    use crate::meta::pg::{PgMeta, intents, nodes};

    /// The write protocol against real parts (PostgreSQL, and SeaweedFS with three volume
    /// servers and replication 001): a blob recorded, uploaded and committed reads back whole
    /// and by range; the upload of a node that restarted before committing is swept (object
    /// and intent), and its late commit fails; a live node's fresh intent is left alone; after
    /// kill -9 of a volume server the committed blob is still served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_are_committed_swept_and_survive_a_volume_server() {
        let Some(pg) = TestCluster::start(&[]) else { return };
        let Some(mut weed) = Seaweed::start().await else { return };
        let meta = PgMeta::open(&pg.url(), 4, false).await.unwrap();
        let blobs = S3Blobs::new(weed.bucket("ferry-blobs").await, "ferry-blobs", "region-a/");
        let mut pooled = meta.client().await.unwrap();
        let c: &mut tokio_postgres::Client = &mut pooled;
        let node = nodes::join(c, "n1", 1, 1_000).await.unwrap();
        let id = ferry_core::ids::new_blob_id();
        assert!(blobs.object_key(&id).starts_with(&format!("region-a/{}/{}/", &id[..2], &id[2..4])));
        let body: Bytes = (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
        intents::record(&*c, &node, &id, 1_000).await.unwrap();
        blobs.put(&id, body.clone()).await.unwrap();
        let tx = c.transaction().await.unwrap();
        node.check_slot(&tx, 0).await.unwrap();
        intents::commit(&tx, &id).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(blobs.read_all(&id, None).await.unwrap(), body);
        assert_eq!(blobs.read_all(&id, Some(1_000..1_010)).await.unwrap(), body.slice(1_000..1_010));
        // The node uploads a body, then restarts before its transaction commits.
        let orphan = ferry_core::ids::new_blob_id();
        intents::record(&*c, &node, &orphan, 1_100).await.unwrap();
        blobs.put(&orphan, Bytes::from_static(b"never committed")).await.unwrap();
        let restarted = nodes::join(c, "n1", 1, 2_000).await.unwrap();
        let fresh = ferry_core::ids::new_blob_id();
        intents::record(&*c, &restarted, &fresh, 1_200).await.unwrap();
        let swept = intents::sweepable(&*c, 1_500, 100).await.unwrap();
        assert_eq!(
            swept,
            std::slice::from_ref(&orphan),
            "only the restarted life's intent; the live epoch's is in progress"
        );
        for s in &swept {
            blobs.delete(s).await.unwrap();
            blobs.delete(s).await.unwrap();
            intents::forget(&*c, s).await.unwrap();
        }
        assert!(!blobs.exists(&orphan).await.unwrap(), "the orphan's object is gone");
        assert!(blobs.exists(&id).await.unwrap());
        let tx = c.transaction().await.unwrap();
        assert!(intents::commit(&tx, &orphan).await.is_err(), "a swept blob cannot be committed");
        drop(tx);
        let missing = blobs.read(&orphan, None).await.expect_err("missing");
        assert!(
            matches!(missing, Error::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound),
            "{missing}"
        );
        // kill -9 of a volume server that holds a copy (one of the two copies is always on an
        // extra server): the other copy serves the blob.
        let holders = weed.holders(&format!("/buckets/ferry-blobs/{}", blobs.object_key(&id))).await;
        assert_eq!(holders.len(), 2, "replication 001 keeps two copies: {holders:?}");
        let at = weed.volumes.iter().position(|(port, _)| holders.contains(port)).expect("a copy on an extra server");
        let (_, mut victim) = weed.volumes.remove(at);
        victim.kill().unwrap();
        victim.wait().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match blobs.read_all(&id, None).await {
                Ok(read) => {
                    assert_eq!(read, body);
                    break;
                }
                Err(e) => assert!(std::time::Instant::now() < deadline, "not served after a volume server died: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
