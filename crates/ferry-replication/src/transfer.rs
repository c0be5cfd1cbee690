//! Delivering one job to its peer.
//!
//! To a Ferry peer every request carries the [`REPLICA_HEADER`] (signed): the replica keeps
//! the source's version id, last-modified, ETag, owner and ACL, and is applied idempotently.
//! To an S3 peer, plain requests: the target assigns its own version ids (see the fidelity
//! table in docs/REPLICATION.md).
//!
//! Large objects (above `multipart_threshold`, or uploaded in parts) go as multipart uploads:
//! a source uploaded in parts keeps its part layout (so the ETag is the same computation),
//! other objects are cut into `part_size` pieces. Parts upload `part_concurrency` at a time,
//! each retried a few times. The destination upload id is saved in the job before the first
//! part, so after a crash the transfer lists the parts already there and sends only the rest.
//!
//! Integrity: every body is checked by the destination against something the source knows.
//! To a Ferry peer that is a checksum, and the peer skips MD5 (at about 0.6 GB/s per core the
//! most expensive step of receiving a replica): a single PUT carries the object's stored
//! full-object checksum and its ETag in the replica header; a part carries the source part's
//! stored checksum, or a CRC64NVME the source computes just before sending, plus the part's MD5
//! when the source knows it ([`REPLICA_PART_HEADER`]). Without a checksum, and to other S3 services,
//! the body carries `Content-MD5` whenever the source's MD5 is known.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, StorageClass, Tag, Tagging};
use base64::Engine as _;
use ferry_core::config::{PeerKind, ReplicationSettings};
use ferry_store::Store;
use ferry_store::checksum::{Algorithm, Checksum};
use ferry_store::model::{BodyLayout, PartRef, VersionRecord};
use ferry_store::replication::{Job, JobOp, REPLICA_HEADER, REPLICA_PART_HEADER, ReplicaMeta, ReplicationConfig, Rule};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::peers::{Peer, PeerSet, describe};

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or nothing left to deliver).
    Done,
    /// Try again later (peer unreachable, 5xx, throttled, not there yet).
    Transient(String),
    /// Will not succeed by retrying (access denied, no such bucket, versioning off).
    Permanent(String),
}

/// What a transfer needs.
pub struct Ctx {
    pub store: Arc<Store>,
    pub peers: Arc<PeerSet>,
    pub settings: ReplicationSettings,
    pub metrics: Arc<ferry_core::metrics::RegionMetrics>,
}

/// Saved in the job while a multipart transfer is under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Format version.
    pub format: u32,
    /// Destination upload id.
    pub upload_id: Option<String>,
}

/// S3 error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] =
    &["SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "RequestTimeTooSkewed", "OperationAborted"];

/// Classifies a failed request.
pub fn classify<E, R>(e: &SdkError<E, R>, status: Option<u16>) -> Outcome
where
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    let why = describe(e);
    match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or("");
            let status = status.unwrap_or(0);
            if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code) {
                Outcome::Transient(why)
            } else {
                Outcome::Permanent(why)
            }
        }
        SdkError::ConstructionFailure(_) => Outcome::Permanent(why),
        _ => Outcome::Transient(why),
    }
}

macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                let status = match &err {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    _ => None,
                };
                return classify(&err, status);
            }
        }
    };
}

/// Like `check!`, but a missing key/version/upload on the peer is transient (the change it
/// depends on has not arrived yet).
macro_rules! check_ordered {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                let status = match &err {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    _ => None,
                };
                if matches!(err.code(), Some("NoSuchKey" | "NoSuchVersion")) {
                    return Outcome::Transient(describe(&err));
                }
                return classify(&err, status);
            }
        }
    };
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn tagging_header(tags: &[(String, String)]) -> String {
    tags.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect::<Vec<_>>().join("&")
}

/// `Content-MD5` for a plain MD5 ETag.
fn content_md5(etag_hex: &str) -> Option<String> {
    let raw = hex::decode(etag_hex).ok().filter(|r| r.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Runs one attempt of `job`.
pub async fn run(ctx: &Ctx, job: &Job) -> Outcome {
    let Some(peer) = ctx.peers.get(&job.peer) else {
        return Outcome::Permanent(format!("peer {} is not configured", job.peer));
    };
    let (b, k, v) = (job.bucket.clone(), job.key.clone(), job.version_id.clone());
    let loaded = ctx
        .store
        .meta
        .read(move |r| {
            let bucket = r.get_bucket(&b)?;
            let version = r.get_version(&b, &k, &v)?;
            Ok((bucket, version))
        })
        .await;
    let (bucket, version) = match loaded {
        Ok(x) => x,
        Err(e) => return Outcome::Transient(format!("reading the source: {e}")),
    };
    let rule = bucket
        .and_then(|b| b.replication)
        .and_then(|s| ReplicationConfig::from_stored(&s).ok())
        .and_then(|c| c.rules.into_iter().find(|r| r.id == job.rule_id));
    let t = Transfer { ctx, peer: &peer, job, rule: rule.as_ref() };
    match job.op {
        JobOp::Put => match version {
            Some(v) if !v.delete_marker => t.put(&v).await,
            // Deleted locally before it could be sent: nothing to replicate.
            _ => Outcome::Done,
        },
        JobOp::DeleteMarker => match version {
            Some(v) if v.delete_marker => t.delete_marker(&v).await,
            _ => Outcome::Done,
        },
        JobOp::DeleteVersion => t.delete_version().await,
        JobOp::Metadata => match version {
            Some(v) if !v.delete_marker => t.metadata(&v).await,
            _ => Outcome::Done,
        },
    }
}

struct Transfer<'a> {
    ctx: &'a Ctx,
    peer: &'a Peer,
    job: &'a Job,
    rule: Option<&'a Rule>,
}

impl Transfer<'_> {
    fn ferry(&self) -> bool {
        self.peer.kind == PeerKind::Ferry
    }

    fn owner_override(&self) -> bool {
        self.rule.is_some_and(|r| r.destination.owner_override)
    }

    /// The replica header value for `v` (Ferry peers only).
    fn replica_header(&self, v: &VersionRecord) -> Option<String> {
        if !self.ferry() {
            return None;
        }
        let keep_owner = !self.owner_override();
        ReplicaMeta {
            format: 1,
            source_region: self.ctx.peers.local().to_owned(),
            version_id: v.version_id.clone(),
            mtime_us: v.mtime_us,
            etag: (!v.delete_marker).then(|| v.etag.clone()),
            owner: keep_owner.then(|| v.owner.clone()),
            acl: keep_owner.then(|| v.attrs.acl.clone()),
            checksums: (!v.delete_marker && !v.attrs.checksums.values.is_empty()).then(|| v.attrs.checksums.clone()),
        }
        .encode()
        .ok()
    }

    fn storage_class(&self, v: &VersionRecord) -> Option<StorageClass> {
        self.rule
            .and_then(|r| r.destination.storage_class.clone())
            .or_else(|| v.storage_class.clone())
            .map(|s| StorageClass::from(s.as_str()))
    }

    async fn put(&self, v: &VersionRecord) -> Outcome {
        let multipart = match &v.layout {
            BodyLayout::Inline(_) => false,
            BodyLayout::Parts { parts, multipart } => {
                *multipart || parts.len() > 1 || v.size > self.ctx.settings.multipart_threshold
            }
        };
        if multipart { self.put_multipart(v).await } else { self.put_single(v).await }
    }

    async fn body(&self, v: &VersionRecord, part: Option<(&PartRef, u64, u64)>) -> Result<ByteStream, Outcome> {
        match (&v.layout, part) {
            (BodyLayout::Inline(data), _) => Ok(ByteStream::from(data.clone())),
            (BodyLayout::Parts { parts, .. }, sel) => {
                let (p, offset, len) = match sel {
                    Some(s) => s,
                    None => match parts.first() {
                        Some(p) => (p, 0, p.size),
                        None => return Ok(ByteStream::from(Vec::new())),
                    },
                };
                let file = self
                    .ctx
                    .store
                    .blobs
                    .open_read(&p.blob)
                    .await
                    .map_err(|e| Outcome::Transient(format!("opening blob {}: {e}", p.blob)))?;
                ByteStream::read_from()
                    .file(file)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Outcome::Transient(format!("reading blob {}: {e}", p.blob)))
            }
        }
    }

    async fn put_single(&self, v: &VersionRecord) -> Outcome {
        let body = match self.body(v, None).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        let a = &v.attrs;
        let mut req = self
            .peer
            .client
            .put_object()
            .bucket(&self.job.dest_bucket)
            .key(&v.key)
            .body(body)
            .content_length(i64::try_from(v.size).unwrap_or(i64::MAX))
            .set_content_type(a.content_type.clone())
            .set_content_encoding(a.content_encoding.clone())
            .set_content_disposition(a.content_disposition.clone())
            .set_content_language(a.content_language.clone())
            .set_cache_control(a.cache_control.clone())
            .set_website_redirect_location(a.website_redirect.clone())
            .set_metadata((!a.user_metadata.is_empty()).then(|| a.user_metadata.clone().into_iter().collect()))
            .set_storage_class(self.storage_class(v));
        // Full-object checksums travel as headers, so the destination verifies the body. A Ferry
        // destination then skips MD5 (it takes the ETag from the replica header); Content-MD5
        // is sent only when no such checksum exists, or to another S3 service.
        let full = a.checksums.kind.as_deref() == Some("FULL_OBJECT") && !a.checksums.values.is_empty();
        if !full || !self.ferry() {
            req = req.set_content_md5(content_md5(&v.etag));
        }
        if full {
            for (alg, value) in &a.checksums.values {
                req = match alg.as_str() {
                    "CRC32" => req.checksum_crc32(value),
                    "CRC32C" => req.checksum_crc32_c(value),
                    "CRC64NVME" => req.checksum_crc64_nvme(value),
                    "SHA1" => req.checksum_sha1(value),
                    "SHA256" => req.checksum_sha256(value),
                    _ => req,
                };
            }
        }
        if let Some(exp) = a
            .expires
            .as_deref()
            .and_then(|e| aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::HttpDate).ok())
        {
            req = req.expires(exp);
        }
        if !a.tags.is_empty() {
            req = req.tagging(tagging_header(&a.tags));
        }
        let header = self.replica_header(v);
        check!(req.customize().mutate_request(move |r| add_header(r, header.as_deref())).send().await);
        Outcome::Done
    }

    async fn put_multipart(&self, v: &VersionRecord) -> Outcome {
        let BodyLayout::Parts { parts, multipart } = &v.layout else { return self.put_single(v).await };
        let plan = plan_parts(parts, *multipart, v.size, self.ctx.settings.part_size);
        let client = &self.peer.client;
        let dest = self.job.dest_bucket.as_str();
        let mut progress: Progress = self.job.progress.as_deref().and_then(|p| serde_json::from_str(p).ok()).unwrap_or_default();
        // Parts the destination already has (a transfer resumed after a restart).
        let mut done: std::collections::BTreeMap<i32, String> = std::collections::BTreeMap::new();
        if let Some(id) = &progress.upload_id {
            match list_all_parts(client, dest, &v.key, id).await {
                Ok(listed) => {
                    for p in &plan {
                        if let Some((etag, size)) = listed.get(&p.number)
                            && *size == p.len
                            && p.md5.as_deref().is_none_or(|m| m == etag)
                        {
                            done.insert(p.number, etag.clone());
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
            None => {
                let a = &v.attrs;
                let mut req = client
                    .create_multipart_upload()
                    .bucket(dest)
                    .key(&v.key)
                    .set_content_type(a.content_type.clone())
                    .set_content_encoding(a.content_encoding.clone())
                    .set_content_disposition(a.content_disposition.clone())
                    .set_content_language(a.content_language.clone())
                    .set_cache_control(a.cache_control.clone())
                    .set_website_redirect_location(a.website_redirect.clone())
                    .set_metadata((!a.user_metadata.is_empty()).then(|| a.user_metadata.clone().into_iter().collect()))
                    .set_storage_class(self.storage_class(v));
                if let Some(exp) = a
                    .expires
                    .as_deref()
                    .and_then(|e| aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::HttpDate).ok())
                {
                    req = req.expires(exp);
                }
                if !a.tags.is_empty() {
                    req = req.tagging(tagging_header(&a.tags));
                }
                let out = check!(req.send().await);
                let Some(id) = out.upload_id().map(str::to_owned) else {
                    return Outcome::Transient("CreateMultipartUpload returned no upload id".to_owned());
                };
                // Saved before any part is sent: a crash from here on resumes this upload.
                progress = Progress { format: 1, upload_id: Some(id.clone()) };
                if let Err(e) = self.save_progress(&progress).await {
                    return Outcome::Transient(format!("saving transfer progress: {e}"));
                }
                id
            }
        };
        // The futures are built first (a closure held across the await below would not be Send).
        let mut uploads = Vec::new();
        for p in plan.iter().filter(|p| !done.contains_key(&p.number)) {
            uploads.push(self.upload_part(v, &upload_id, p));
        }
        let results: Vec<Result<(i32, String), Outcome>> =
            futures::stream::iter(uploads).buffer_unordered(self.ctx.settings.part_concurrency.max(1)).collect().await;
        for r in results {
            match r {
                Ok((n, etag)) => {
                    done.insert(n, etag);
                }
                Err(Outcome::Permanent(why)) => {
                    let _ = client.abort_multipart_upload().bucket(dest).key(&v.key).upload_id(&upload_id).send().await;
                    let _ = self.save_progress(&Progress::default()).await;
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
        let header = self.replica_header(v);
        let out = client
            .complete_multipart_upload()
            .bucket(dest)
            .key(&v.key)
            .upload_id(&upload_id)
            .multipart_upload(completed)
            .customize()
            .mutate_request(move |r| add_header(r, header.as_deref()))
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
            Err(e) => {
                let status = match &e {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    _ => None,
                };
                classify(&e, status)
            }
        }
    }

    async fn upload_part(&self, v: &VersionRecord, upload_id: &str, p: &PartPlan) -> Result<(i32, String), Outcome> {
        let md5 = p.md5.as_deref().filter(|m| content_md5(m).is_some());
        // To a Ferry peer a part travels with a checksum and the part's MD5 when known, and the
        // peer computes no MD5 (the slowest hash). Other services get Content-MD5 when known.
        let checksum = if self.ferry() { Some(self.part_checksum(p).await?) } else { None };
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
                    req = match alg {
                        Algorithm::Crc32 => req.checksum_crc32(value),
                        Algorithm::Crc32c => req.checksum_crc32_c(value),
                        Algorithm::Crc64Nvme => req.checksum_crc64_nvme(value),
                        Algorithm::Sha1 => req.checksum_sha1(value),
                        Algorithm::Sha256 => req.checksum_sha256(value),
                    };
                    Some(md5.unwrap_or_default().to_owned())
                }
                None => {
                    req = req.set_content_md5(md5.and_then(content_md5));
                    None
                }
            };
            let sent = req
                .customize()
                .mutate_request(move |r| {
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
            let status = match &err {
                SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                _ => None,
            };
            match classify(&err, status) {
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
    /// wrote), else CRC64NVME of the bytes, read once ahead of sending. That second read comes
    /// from the page cache and costs far less than a streamed checksum would: the SDK sends a
    /// computed checksum as a trailer, and over plain http it then signs every chunk (SHA-256).
    async fn part_checksum(&self, p: &PartPlan) -> Result<(Algorithm, String), Outcome> {
        if p.offset == 0 && p.len == p.source.size {
            let stored = p.source.checksums.iter().flat_map(|c| &c.values);
            if let Some((alg, value)) = stored.filter_map(|(a, v)| Some((Algorithm::parse(a)?, v))).next() {
                return Ok((alg, value.clone()));
            }
        }
        let mut crc = Checksum::new(Algorithm::Crc64Nvme);
        let mut reader = self.ctx.store.blobs.read_parts(vec![p.source.clone()], p.offset..p.offset + p.len);
        while let Some(chunk) = reader.next().await {
            crc.update(&chunk.map_err(|e| Outcome::Transient(format!("reading blob {}: {e}", p.source.blob)))?);
        }
        Ok((Algorithm::Crc64Nvme, crc.finish()))
    }

    async fn save_progress(&self, p: &Progress) -> ferry_store::Result<()> {
        let id = self.job.id;
        let text = if p.upload_id.is_some() { Some(serde_json::to_string(p)?) } else { None };
        self.ctx
            .store
            .meta
            .write(move |tx| match tx.get_job(id)? {
                Some(j) => tx.update_job(id, j.state, j.attempts, j.next_attempt_us, j.last_error.as_deref(), text.as_deref()),
                None => Ok(()),
            })
            .await
    }

    async fn delete_marker(&self, v: &VersionRecord) -> Outcome {
        let header = self.replica_header(v);
        check!(
            self.peer
                .client
                .delete_object()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .customize()
                .mutate_request(move |r| add_header(r, header.as_deref()))
                .send()
                .await
        );
        Outcome::Done
    }

    async fn delete_version(&self) -> Outcome {
        if !self.ferry() {
            // Version ids differ on an S3 peer: there is no version to name.
            return Outcome::Done;
        }
        let meta = ReplicaMeta {
            format: 1,
            source_region: self.ctx.peers.local().to_owned(),
            version_id: self.job.version_id.clone(),
            mtime_us: 0,
            etag: None,
            owner: None,
            acl: None,
            checksums: None,
        };
        let header = meta.encode().ok();
        check!(
            self.peer
                .client
                .delete_object()
                .bucket(&self.job.dest_bucket)
                .key(&self.job.key)
                .version_id(&self.job.version_id)
                .customize()
                .mutate_request(move |r| add_header(r, header.as_deref()))
                .send()
                .await
        );
        Outcome::Done
    }

    async fn metadata(&self, v: &VersionRecord) -> Outcome {
        let tagging = Tagging::builder()
            .set_tag_set(Some(
                v.attrs.tags.iter().filter_map(|(k, val)| Tag::builder().key(k).value(val).build().ok()).collect(),
            ))
            .build();
        let Ok(tagging) = tagging else { return Outcome::Permanent("invalid tag set".to_owned()) };
        let header = self.replica_header(v);
        let h2 = header.clone();
        let mut req = self.peer.client.put_object_tagging().bucket(&self.job.dest_bucket).key(&v.key).tagging(tagging);
        if self.ferry() {
            req = req.version_id(&v.version_id);
        }
        check_ordered!(req.customize().mutate_request(move |r| add_header(r, h2.as_deref())).send().await);
        if self.ferry() && !self.owner_override() {
            // The ACL travels in the replica header; the canned ACL only makes the request valid.
            check_ordered!(
                self.peer
                    .client
                    .put_object_acl()
                    .bucket(&self.job.dest_bucket)
                    .key(&v.key)
                    .version_id(&v.version_id)
                    .acl(ObjectCannedAcl::Private)
                    .customize()
                    .mutate_request(move |r| add_header(r, header.as_deref()))
                    .send()
                    .await
            );
        }
        Outcome::Done
    }
}

/// Adds the replica header before the request is signed (so it is part of the signature).
fn add_header(r: &mut aws_sdk_s3::config::http::HttpRequest, value: Option<&str>) {
    if let Some(v) = value {
        r.headers_mut().insert(REPLICA_HEADER, v.to_owned());
    }
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

/// Every part of an upload on the peer: number → (ETag without quotes, size).
async fn list_all_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<std::collections::BTreeMap<i32, (String, u64)>, Outcome> {
    let mut out = std::collections::BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let page = match client
            .list_parts()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .set_part_number_marker(marker.clone())
            .send()
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let status = match &e {
                    SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
                    _ => None,
                };
                return Err(classify(&e, status));
            }
        };
        for p in page.parts() {
            if let (Some(n), Some(e)) = (p.part_number(), p.e_tag()) {
                out.insert(n, (e.trim_matches('"').to_owned(), u64::try_from(p.size().unwrap_or(0)).unwrap_or(0)));
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
        assert_eq!(
            content_md5("25f9e794323b453885f5181f1b624d0b").as_deref(),
            Some("JfnnlDI7RTiF9RgfG2JNCw==")
        );
        assert_eq!(content_md5("abc-2"), None);
        assert_eq!(tagging_header(&[("a b".into(), "x&y".into())]), "a%20b=x%26y");
    }
}
