//! Large objects go as multipart uploads: a source uploaded in parts keeps its part layout (so
//! the ETag is the same computation), other objects are cut into `part_size` pieces. The
//! destination upload id and the plan's part size are saved with the job before the first
//! part ([`Progress`]), so a transfer resumed after a crash (even with another `part_size`)
//! keeps the parts already there whose size and checksum match the plan and sends the rest.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use ferry_store::checksum::{Algorithm, Checksum};
use ferry_store::model::{BodyLayout, ChecksumKind, PartRef, VersionRecord};
use ferry_store::replication::REPLICA_PART_HEADER;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{Outcome, Transfer, blob_error, classify, content_md5, corrupt_or, object_headers, with_checksum};
use crate::peers::describe;

/// Saved in the job while a multipart transfer is under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Format version.
    pub format: u32,
    /// Destination upload id.
    pub upload_id: Option<String>,
    /// The part size of the plan (an object not uploaded in parts, cut into pieces): kept when
    /// the transfer resumes, whatever `part_size` is then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
}

impl Transfer<'_> {
    pub(super) async fn put_multipart(&self, v: &VersionRecord) -> Outcome {
        let BodyLayout::Parts { parts, multipart } = &v.layout else { return self.put_single(v).await };
        let client = &self.peer.client;
        let dest = self.job.dest_bucket.as_str();
        let mut progress: Progress = self.job.progress.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        // A plan made before a restart keeps its part size: parts already sent are of that size.
        let part_size = *progress.part_size.get_or_insert(self.ctx.settings.part_size);
        let plan = plan_parts(parts, *multipart, v.size, part_size);
        let alg = part_algorithm(v);
        // Parts the destination already has (a transfer resumed after a restart): kept only
        // when their size and checksum are those of the planned part.
        let mut done: std::collections::BTreeMap<i32, String> = std::collections::BTreeMap::new();
        if let Some(id) = &progress.upload_id {
            match list_all_parts(client, dest, &v.key, id, self.headers(None)).await {
                Ok(listed) => {
                    for p in &plan {
                        let Some(there) = listed.get(&p.number).filter(|l| l.size == p.len) else { continue };
                        if self.part_matches(v, p, there).await {
                            done.insert(p.number, there.etag.clone());
                        }
                    }
                    tracing::info!(key = %v.key, upload = %id, parts_already_there = done.len(), parts = plan.len(), "resuming multipart replication");
                }
                Err(Outcome::Permanent(_)) => progress.upload_id = None,
                Err(other) => return other,
            }
        }
        let upload_id = match progress.upload_id.clone() {
            Some(id) => id,
            None => match self.create_upload(v).await {
                Ok(id) => {
                    // Saved before any part is sent: a crash from here on resumes this upload.
                    progress = Progress { format: 1, upload_id: Some(id.clone()), part_size: Some(part_size) };
                    if let Err(e) = self.save_progress(&progress).await {
                        return Outcome::Transient(format!("saving transfer progress: {e}"));
                    }
                    id
                }
                Err(o) => return o,
            },
        };
        // The futures are built first (a closure held across the await below would not be Send).
        let mut uploads = Vec::new();
        for p in plan.iter().filter(|p| !done.contains_key(&p.number)) {
            uploads.push(self.upload_part(v, &upload_id, p, alg));
        }
        let results: Vec<Result<(i32, String), Outcome>> =
            futures::stream::iter(uploads).buffer_unordered(self.ctx.settings.part_concurrency.max(1)).collect().await;
        for r in results {
            match r {
                Ok((n, etag)) => {
                    done.insert(n, etag);
                }
                Err(Outcome::Permanent(why)) => {
                    self.abort(&v.key, &upload_id).await;
                    return Outcome::Permanent(why);
                }
                Err(other) => return other,
            }
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                done.iter().map(|(n, e)| CompletedPart::builder().part_number(*n).e_tag(format!("\"{e}\"")).build()).collect(),
            ))
            .build();
        let out = client
            .complete_multipart_upload()
            .bucket(dest)
            .key(&v.key)
            .upload_id(&upload_id)
            .multipart_upload(completed)
            .customize()
            .mutate_request(self.headers(self.replica_header(v)))
            .send()
            .await;
        match out {
            Ok(_) => Outcome::Done,
            Err(e) if e.code() == Some("NoSuchUpload") => {
                // Completed by an earlier attempt whose answer was lost, or expired: the
                // version is there (idempotent by id) or the next attempt starts over.
                let _ = self.save_progress(&Progress::default()).await;
                Outcome::Transient(describe(&e))
            }
            Err(e) => match corrupt_or(classify(&e)) {
                Outcome::Permanent(why) => {
                    self.abort(&v.key, &upload_id).await;
                    Outcome::Permanent(why)
                }
                other => other,
            },
        }
    }

    /// Opens the destination upload; returns its id.
    async fn create_upload(&self, v: &VersionRecord) -> Result<String, Outcome> {
        let req = object_headers!(
            self.peer.client.create_multipart_upload().bucket(&self.job.dest_bucket).key(&v.key),
            &v.attrs,
            self.storage_class(v),
            self.ferry()
        );
        let out = req.customize().mutate_request(self.headers(None)).send().await.map_err(|e| classify(&e))?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| Outcome::Transient("CreateMultipartUpload returned no upload id".to_owned()))
    }

    /// Best effort: aborts a destination upload and forgets it.
    async fn abort(&self, key: &str, upload_id: &str) {
        let _ = self
            .peer
            .client
            .abort_multipart_upload()
            .bucket(&self.job.dest_bucket)
            .key(key)
            .upload_id(upload_id)
            .customize()
            .mutate_request(self.headers(None))
            .send()
            .await;
        let _ = self.save_progress(&Progress::default()).await;
    }

    /// A job that ends without sending aborts the upload an earlier attempt left open.
    pub(super) async fn abandon_upload(&self) {
        let saved: Option<Progress> = self.job.progress.as_deref().and_then(|p| serde_json::from_str(p).ok());
        if let Some(id) = saved.and_then(|p| p.upload_id) {
            self.abort(&self.job.key, &id).await;
        }
    }

    /// True when a part already at the destination is the planned part: same size (checked by
    /// the caller) and the same checksum (or, to an S3 service without checksums, the same MD5).
    async fn part_matches(&self, v: &VersionRecord, p: &PartPlan, there: &ListedPart) -> bool {
        if let Some((a, value)) = &there.checksum {
            return match self.part_checksum(v, p, *a).await {
                Ok((used, expected)) => used == *a && expected == *value,
                Err(_) => false,
            };
        }
        p.md5.as_deref().is_some_and(|m| m == there.etag)
    }

    async fn upload_part(
        &self,
        v: &VersionRecord,
        upload_id: &str,
        p: &PartPlan,
        alg: Algorithm,
    ) -> Result<(i32, String), Outcome> {
        let md5 = p.md5.as_deref().filter(|m| content_md5(m).is_some());
        // To a Ferry peer a part travels with a checksum and the part's MD5 when known, and the
        // peer computes no MD5 (the slowest hash). Other services get Content-MD5 when known.
        let checksum = if self.ferry() { Some(self.part_checksum(v, p, alg).await?) } else { None };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let body = self.body(v, Some((&p.source, p.offset, p.len))).await?;
            let mut req = self
                .peer
                .client
                .upload_part()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .upload_id(upload_id)
                .part_number(p.number)
                .content_length(i64::try_from(p.len).unwrap_or(i64::MAX))
                .body(body);
            let part_header = match &checksum {
                Some((alg, value)) => {
                    req = with_checksum!(req, alg, value);
                    Some(md5.unwrap_or_default().to_owned())
                }
                None => {
                    req = req.set_content_md5(md5.and_then(content_md5));
                    None
                }
            };
            let headers = self.headers(None);
            let sent = req
                .customize()
                .mutate_request(move |r| {
                    headers(r);
                    if let Some(v) = &part_header {
                        r.headers_mut().insert(REPLICA_PART_HEADER, v.clone());
                    }
                })
                .send()
                .await;
            let err = match sent {
                Ok(out) => return Ok((p.number, out.e_tag().unwrap_or_default().trim_matches('"').to_owned())),
                Err(e) => e,
            };
            if let Some(failed) = self.source_failed() {
                return Err(failed);
            }
            if err.code() == Some("NoSuchUpload") {
                // The saved upload is gone at the destination (completed by another attempt of
                // this job, or expired there): the next attempt starts a new one.
                let _ = self.save_progress(&Progress::default()).await;
                return Err(Outcome::Transient(describe(&err)));
            }
            match classify(&err) {
                Outcome::Transient(why) if attempt < 3 => {
                    tracing::debug!(part = p.number, %why, "part upload failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                other => return Err(other),
            }
        }
    }

    /// The checksum a part travels with to a Ferry peer: the source part's stored one when the
    /// destination part is that whole part (so the bytes are checked against what the source
    /// wrote), else a CRC of the bytes in `alg` (the object's full-object CRC algorithm, so the
    /// destination can combine the parts into it), read once ahead of sending. That second read
    /// comes from the page cache and costs far less than a streamed checksum would: the SDK
    /// sends a computed checksum as a trailer, and over plain http it then signs every chunk.
    async fn part_checksum(&self, v: &VersionRecord, p: &PartPlan, alg: Algorithm) -> Result<(Algorithm, String), Outcome> {
        if p.offset == 0 && p.len == p.source.size {
            let mut stored = p.source.checksums.iter().flat_map(|c| &c.values);
            if let Some((a, value)) = stored.next() {
                return Ok((*a, value.clone()));
            }
        }
        let mut crc = Checksum::new(alg);
        let key = self.data_key(v)?;
        let mut reader = self.ctx.store.read_part(&p.source, p.offset..p.offset + p.len, key.as_ref());
        while let Some(chunk) = reader.next().await {
            crc.update(&chunk.map_err(|e| blob_error(&p.source.blob, &e))?);
        }
        Ok((alg, crc.finish()))
    }
}

/// The algorithm of the CRCs computed for parts cut from one body: the object's full-object
/// CRC algorithm when it has one (the destination combines the parts into it), else CRC64NVME.
pub(super) fn part_algorithm(v: &VersionRecord) -> Algorithm {
    let c = &v.attrs.checksums;
    if c.kind == Some(ChecksumKind::FullObject) {
        for a in [Algorithm::Crc64Nvme, Algorithm::Crc32c, Algorithm::Crc32] {
            if c.values.contains_key(&a) {
                return a;
            }
        }
    }
    Algorithm::Crc64Nvme
}

/// One destination part.
#[derive(Debug, Clone)]
struct PartPlan {
    number: i32,
    source: PartRef,
    offset: u64,
    len: u64,
    /// MD5 hex of the part, when known (source uploaded in parts).
    md5: Option<String>,
}

/// The destination parts: the source's own parts when it was uploaded in parts, else
/// `part_size` pieces of its single blob.
fn plan_parts(parts: &[PartRef], multipart: bool, size: u64, part_size: u64) -> Vec<PartPlan> {
    if multipart || parts.len() > 1 {
        return parts
            .iter()
            .enumerate()
            .map(|(i, p)| PartPlan {
                number: i32::try_from(i + 1).unwrap_or(i32::MAX),
                source: p.clone(),
                offset: 0,
                len: p.size,
                md5: Some(p.etag.clone()),
            })
            .collect();
    }
    let Some(blob) = parts.first() else { return Vec::new() };
    let part_size = part_size.max(1);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < size {
        let len = part_size.min(size - offset);
        out.push(PartPlan {
            number: i32::try_from(out.len() + 1).unwrap_or(i32::MAX),
            source: blob.clone(),
            offset,
            len,
            md5: None,
        });
        offset += len;
    }
    out
}

/// A part as the destination lists it.
#[derive(Debug, Clone)]
struct ListedPart {
    /// ETag without quotes.
    etag: String,
    size: u64,
    /// The part's checksum, when the destination reports one.
    checksum: Option<(Algorithm, String)>,
}

/// Every part of an upload on the peer, by number.
async fn list_all_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    headers: impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Send + Sync + Clone + 'static,
) -> Result<std::collections::BTreeMap<i32, ListedPart>, Outcome> {
    let mut out = std::collections::BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let page = client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .set_part_number_marker(marker.clone())
            .customize()
            .mutate_request(headers.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        for p in page.parts() {
            let checksum = [
                (Algorithm::Crc64Nvme, p.checksum_crc64_nvme()),
                (Algorithm::Crc32c, p.checksum_crc32_c()),
                (Algorithm::Crc32, p.checksum_crc32()),
                (Algorithm::Sha256, p.checksum_sha256()),
                (Algorithm::Sha1, p.checksum_sha1()),
            ]
            .into_iter()
            .find_map(|(a, v)| v.map(|v| (a, v.to_owned())));
            if let (Some(n), Some(e)) = (p.part_number(), p.e_tag()) {
                let size = u64::try_from(p.size().unwrap_or(0)).unwrap_or(0);
                out.insert(n, ListedPart { etag: e.trim_matches('"').to_owned(), size, checksum });
            }
        }
        if page.is_truncated() != Some(true) {
            return Ok(out);
        }
        marker = page.next_part_number_marker().map(str::to_owned);
        if marker.is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(size: u64) -> PartRef {
        PartRef { blob: "b".into(), size, etag: "e".into(), checksums: None }
    }

    #[test]
    fn plans() {
        let p = plan_parts(&[part(100)], false, 100, 30);
        assert_eq!(
            p.iter().map(|x| (x.number, x.offset, x.len)).collect::<Vec<_>>(),
            vec![(1, 0, 30), (2, 30, 30), (3, 60, 30), (4, 90, 10)]
        );
        let p = plan_parts(&[part(50), part(7)], true, 57, 30);
        assert_eq!(
            p.iter().map(|x| (x.number, x.len, x.md5.clone())).collect::<Vec<_>>(),
            vec![(1, 50, Some("e".into())), (2, 7, Some("e".into()))]
        );
    }
}
