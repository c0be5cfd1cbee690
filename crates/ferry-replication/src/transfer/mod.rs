//! Delivering one job to its peer.
//!
//! To a Ferry peer every request carries the [`SOURCE_HEADER`] (the source bucket and its
//! owner's account, which the destination bucket must accept) and, for writes, the
//! [`REPLICA_HEADER`], both signed: the replica keeps the source's version id, last-modified,
//! ETag, owner and ACL (and the times of its last tag and ACL change), and is applied
//! idempotently. To an S3 peer, plain requests: the target assigns its own version ids and its
//! current object is the last one written, so a version is sent only if no newer version of its
//! key has reached that target (see the fidelity table in docs/REPLICATION.md).
//!
//! Large objects (above `multipart_threshold`, or uploaded in parts) go as multipart uploads:
//! a source uploaded in parts keeps its part layout (so the ETag is the same computation),
//! other objects are cut into `part_size` pieces. Parts upload `part_concurrency` at a time,
//! each retried a few times. The destination upload id and the part size of the plan are saved
//! in the job before the first part, so after a crash (even with another `part_size`) the
//! transfer lists the parts already there, keeps those whose size and checksum match the plan,
//! and sends only the rest. Before a large upload to a Ferry peer, a HEAD asks whether the
//! version is there already (a duplicate delivery costs one request).
//!
//! Integrity, end to end: every body is checked by the destination against something the source
//! stored. A single PUT carries the object's stored full-object checksum. A part carries the
//! source part's stored checksum, or a CRC the source computes just before sending, in the
//! algorithm of the object's full-object CRC; the destination then combines the parts' CRCs at
//! Complete and refuses (BadDigest) an object whose parts do not make up the checksum the source
//! stored (a wrong part reused, bit rot at the source). Without a checksum, and to other S3
//! services, bodies carry `Content-MD5` whenever the source's MD5 is known.

use std::sync::Arc;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ObjectCannedAcl, StorageClass, Tag, Tagging};
use base64::Engine as _;
use ferry_core::config::ReplicationSettings;
use ferry_store::Store;
use ferry_store::checksum::Algorithm;
use ferry_store::model::{BodyLayout, ChecksumKind, PartRef, VersionRecord};
use ferry_store::replication::{Job, JobOp, REPLICA_HEADER, ReplicaMeta, SOURCE_HEADER, SourceRef};
use ferry_store::sse::SseKind;
use futures::StreamExt as _;

use aws_sdk_s3::config::http::HttpResponse;

use crate::peers::{Peer, PeerSet, describe, http_status};

mod multipart;

pub use multipart::Progress;

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Done,
    /// Nothing to send (the version is gone, superseded at an S3 target, the configuration
    /// removed): finished without a delivery.
    Skipped(String),
    /// Try again later (peer unreachable, 5xx, throttled).
    Transient(String),
    /// What the change applies to is not at the destination (yet): try again a bounded number
    /// of times, then fail.
    Missing(String),
    /// Will not succeed by retrying (access denied, no such bucket, versioning off, corrupt
    /// source data).
    Permanent(String),
}

/// What a transfer needs.
pub struct Ctx {
    pub store: Arc<Store>,
    pub peers: Arc<PeerSet>,
    pub settings: ReplicationSettings,
    pub metrics: Arc<ferry_core::metrics::RegionMetrics>,
}

/// S3 error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] =
    &["SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "RequestTimeTooSkewed", "OperationAborted"];

/// Classifies a failed request by the peer's answer (status and S3 code), or its absence.
pub fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(e: &SdkError<E, HttpResponse>) -> Outcome {
    let why = describe(e);
    match e {
        SdkError::ServiceError(s) => classify_answer(s.raw().status().as_u16(), s.err().code().unwrap_or(""), why),
        SdkError::ConstructionFailure(_) => Outcome::Permanent(why),
        _ => Outcome::Transient(why),
    }
}

/// Classifies an error answer by its status and S3 code.
fn classify_answer(status: u16, code: &str, why: String) -> Outcome {
    // 501: the target lacks the feature; retrying will not add it.
    if status == 501 || code == "NotImplemented" {
        Outcome::Permanent(why)
    } else if status >= 500 || status == 429 || status == 408 || TRANSIENT_CODES.contains(&code) {
        Outcome::Transient(why)
    } else {
        Outcome::Permanent(why)
    }
}

/// True for the errors that mean "the key or version is not there".
fn is_missing<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NoSuchVersion")) || http_status(e) == Some(404)
}

macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => return classify(&err),
        }
    };
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The `x-amz-tagging` header of a version's tags; none when it has no tags.
pub(crate) fn tagging_header(tags: &[(String, String)]) -> Option<String> {
    (!tags.is_empty())
        .then(|| tags.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect::<Vec<_>>().join("&"))
}

/// A PutObject or CreateMultipartUpload request with a version's object headers: content
/// headers, `Expires`, website redirect, user metadata, tags, and the storage class.
macro_rules! object_headers {
    ($req:expr, $attrs:expr, $storage_class:expr, $ferry:expr) => {{
        let a: &ferry_store::model::ObjectAttrs = $attrs;
        let (lock_mode, lock_until, lock_hold) = $crate::transfer::s3_lock(a, $ferry);
        let (sse, sse_kms_key) = $crate::transfer::sse_of(a, $ferry);
        $req.set_content_type(a.content_type.clone())
            .set_content_encoding(a.content_encoding.clone())
            .set_content_disposition(a.content_disposition.clone())
            .set_content_language(a.content_language.clone())
            .set_cache_control(a.cache_control.clone())
            .set_website_redirect_location(a.website_redirect.clone())
            .set_metadata((!a.user_metadata.is_empty()).then(|| a.user_metadata.clone().into_iter().collect()))
            .set_expires($crate::transfer::expires(a))
            .set_tagging($crate::transfer::tagging_header(&a.tags))
            .set_storage_class($storage_class)
            .set_object_lock_mode(lock_mode)
            .set_object_lock_retain_until_date(lock_until)
            .set_object_lock_legal_hold_status(lock_hold)
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(sse_kms_key)
    }};
}

/// The encryption a replica is asked to be stored with, under the destination's own keys: to
/// a Ferry peer, that of its source (SSE-S3, or SSE-KMS under a key of the same id); to another
/// S3 service, SSE-S3 for either (a KMS key id of this region means nothing there). The bytes
/// travel in plaintext inside the connection (TLS between regions): a destination never sees a
/// source's keys.
pub(crate) fn sse_of(
    a: &ferry_store::model::ObjectAttrs,
    ferry: bool,
) -> (Option<aws_sdk_s3::types::ServerSideEncryption>, Option<String>) {
    use aws_sdk_s3::types::ServerSideEncryption;
    match &a.sse {
        None => (None, None),
        Some(e) if !ferry => (e.kind.header().map(|_| ServerSideEncryption::Aes256), None),
        Some(e) => {
            let kms = (e.kind == SseKind::Kms).then(|| e.kek.clone()).flatten();
            (e.kind.header().map(ServerSideEncryption::from), kms)
        }
    }
}

/// Why a version cannot be sent at all: an SSE-C body can only be opened with the customer's
/// key, which Ferry never keeps.
fn unsendable(v: &VersionRecord) -> Option<String> {
    let customer = v.attrs.sse.as_ref().is_some_and(|e| e.kind == SseKind::Customer);
    customer.then(|| {
        "encrypted with a customer-provided key (SSE-C): Ferry does not keep the key, so it cannot read the version to replicate it".to_owned()
    })
}

/// A version's retention as an S3 service is sent it: its mode's name and its date, while it
/// is in force (S3 refuses a date in the past).
fn s3_retention(a: &ferry_store::model::ObjectAttrs) -> Option<(&'static str, aws_smithy_types::DateTime)> {
    let r = a.lock.retention.filter(|r| r.in_force(ferry_core::time::now_micros()))?;
    Some((r.mode.as_str(), aws_smithy_types::DateTime::from_millis(r.until_us.div_euclid(1000))))
}

/// The Object Lock headers of a replica to an S3 service (a Ferry peer reads the lock from the
/// replica header): a retention still in force, and a legal hold that is on. A retention that
/// has ended is not sent (S3 refuses a date in the past).
pub(crate) fn s3_lock(
    a: &ferry_store::model::ObjectAttrs,
    ferry: bool,
) -> (
    Option<aws_sdk_s3::types::ObjectLockMode>,
    Option<aws_smithy_types::DateTime>,
    Option<aws_sdk_s3::types::ObjectLockLegalHoldStatus>,
) {
    if ferry {
        return (None, None, None);
    }
    let hold = a.lock.legal_hold.then_some(aws_sdk_s3::types::ObjectLockLegalHoldStatus::On);
    let (mode, until) = s3_retention(a).unzip();
    (mode.map(aws_sdk_s3::types::ObjectLockMode::from), until, hold)
}
use object_headers;

/// A PutObject or UploadPart request carrying the checksum `value` in `alg`.
macro_rules! with_checksum {
    ($req:expr, $alg:expr, $value:expr) => {
        match $alg {
            Algorithm::Crc32 => $req.checksum_crc32($value),
            Algorithm::Crc32c => $req.checksum_crc32_c($value),
            Algorithm::Crc64Nvme => $req.checksum_crc64_nvme($value),
            Algorithm::Sha1 => $req.checksum_sha1($value),
            Algorithm::Sha256 => $req.checksum_sha256($value),
        }
    };
}
use with_checksum;

/// The `Expires` header of a version, when it has a valid one.
pub(crate) fn expires(a: &ferry_store::model::ObjectAttrs) -> Option<aws_smithy_types::DateTime> {
    let e = a.expires.as_deref()?;
    aws_smithy_types::DateTime::from_str(e, aws_smithy_types::date_time::Format::HttpDate).ok()
}

/// `Content-MD5` for a plain MD5 ETag.
fn content_md5(etag_hex: &str) -> Option<String> {
    let raw = hex::decode(etag_hex).ok().filter(|r| r.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// The outcome of a replica the lean client sent, alone or in a batch (an unsent one never
/// gets here: it goes another way).
fn lean_outcome(sent: Result<(), crate::lean::Failure>) -> Outcome {
    use crate::lean::Failure;
    match sent {
        Ok(()) => Outcome::Done,
        Err(f) => match &f {
            Failure::Unsendable(why) | Failure::Unreachable(why) | Failure::Transport(why) => Outcome::Transient(why.clone()),
            Failure::Answer { status, code, .. } => corrupt_or(classify_answer(*status, code, f.to_string())),
        },
    }
}

/// The owner of the job's bucket and its version, as stored now.
async fn read_source(ctx: &Ctx, job: &Job) -> Result<(String, Option<VersionRecord>), Outcome> {
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
    let (bucket, version) = loaded.map_err(|e| Outcome::Transient(format!("reading the source: {e}")))?;
    let Some(bucket) = bucket.filter(|b| b.replication.is_some()) else {
        return Err(Outcome::Skipped("the bucket's replication configuration was removed".to_owned()));
    };
    Ok((bucket.owner.id, version))
}

/// Runs one attempt of `job`.
pub async fn run(ctx: &Ctx, job: &Job) -> Outcome {
    let Some(peer) = ctx.peers.get(&job.peer) else {
        return Outcome::Permanent(format!("peer {} is not configured", job.peer));
    };
    // A handed job carries its version as committed: no read, unless something it would not
    // show has happened since.
    let current = |s: &&ferry_store::replication::Snapshot| s.is_current(&ctx.store.meta.signals().snapshots);
    let (owner, version) = match job.snapshot.as_ref().filter(|_| job.op == JobOp::Put).filter(current) {
        Some(s) => (s.owner().to_owned(), Some(std::borrow::Cow::Borrowed(s.version()))),
        None => match read_source(ctx, job).await {
            Ok((owner, version)) => (owner, version.map(std::borrow::Cow::Owned)),
            Err(o) => return o,
        },
    };
    let source = SourceRef::new(ctx.peers.local(), &job.bucket, &owner);
    let t = Transfer { ctx, peer: &peer, job, source, unreadable: Arc::default() };
    let out = match (job.op, version.as_deref()) {
        (JobOp::Put, Some(v)) if !v.delete_marker => t.put(v).await,
        (JobOp::DeleteMarker, Some(v)) if v.delete_marker => t.delete_marker(v).await,
        (JobOp::Metadata, Some(v)) if !v.delete_marker => t.metadata(v).await,
        (JobOp::DeleteVersion, _) => t.delete_version().await,
        // Deleted locally before it could be sent: nothing to replicate.
        _ => Outcome::Skipped("the version no longer exists at the source".to_owned()),
    };
    if matches!(out, Outcome::Skipped(_)) {
        t.abandon_upload().await;
    }
    out
}

struct Transfer<'a> {
    ctx: &'a Ctx,
    peer: &'a Peer,
    job: &'a Job,
    source: SourceRef,
    /// Why an encrypted source body failed to open while it was being sent (a send error is
    /// then the source's, not the network's).
    unreadable: Arc<std::sync::Mutex<Option<String>>>,
}

impl Transfer<'_> {
    fn ferry(&self) -> bool {
        self.peer.is_ferry()
    }

    /// A request customizer adding what a Ferry peer needs: the source, and the replica header
    /// when given. Other peers get plain requests.
    fn headers(
        &self,
        replica: Option<String>,
    ) -> impl Fn(&mut aws_sdk_s3::config::http::HttpRequest) + Clone + Send + Sync + 'static {
        let source = if self.ferry() { self.source.encode().ok() } else { None };
        move |r| {
            if let Some(s) = &source {
                r.headers_mut().insert(SOURCE_HEADER, s.clone());
            }
            if let Some(v) = &replica {
                r.headers_mut().insert(REPLICA_HEADER, v.clone());
            }
        }
    }

    /// The replica header value for `v` (Ferry peers only).
    fn replica_header(&self, v: &VersionRecord) -> Option<String> {
        if !self.ferry() {
            return None;
        }
        let keep_owner = !self.job.opts.owner_override;
        ReplicaMeta {
            format: 1,
            source_region: self.ctx.peers.local().to_owned(),
            version_id: v.version_id.clone(),
            mtime_us: v.mtime_us,
            etag: (!v.delete_marker).then(|| v.etag.clone()),
            owner: keep_owner.then(|| v.owner.clone()),
            acl: keep_owner.then(|| v.attrs.acl.clone()),
            checksums: (!v.delete_marker && !v.attrs.checksums.values.is_empty()).then(|| v.attrs.checksums.clone()),
            tags_us: v.attrs.tags_us,
            acl_us: v.attrs.acl_us,
            // Object Lock travels whatever the owner: a destination keeps the source's lock.
            lock: v.attrs.lock,
        }
        .encode()
        .ok()
    }

    fn storage_class(&self, v: &VersionRecord) -> Option<StorageClass> {
        self.job.opts.storage_class.clone().or_else(|| v.storage_class.clone()).map(|s| StorageClass::from(s.as_str()))
    }

    /// For an S3 target, whose current object is the last one written: the reason not to send
    /// `v` when a newer version of its key has reached the target already.
    async fn superseded(&self, v: &VersionRecord) -> Result<Option<String>, Outcome> {
        if self.ferry() {
            return Ok(None);
        }
        let (b, k, m, vid, d) = (v.bucket.clone(), v.key.clone(), v.mtime_us, v.version_id.clone(), self.job.dest());
        let newer = self.ctx.store.meta.read(move |r| r.newer_delivered(&b, &k, m, &vid, &d)).await;
        match newer {
            Ok(true) => Ok(Some("a newer version of the key is at the S3 target already".to_owned())),
            Ok(false) => Ok(None),
            Err(e) => Err(Outcome::Transient(format!("reading the source: {e}"))),
        }
    }

    async fn put(&self, v: &VersionRecord) -> Outcome {
        if let Some(why) = unsendable(v) {
            return Outcome::Permanent(why);
        }
        match self.superseded(v).await {
            Ok(Some(why)) => return Outcome::Skipped(why),
            Ok(None) => {}
            Err(o) => return o,
        }
        let multipart = match &v.layout {
            BodyLayout::Inline(_) => false,
            BodyLayout::Parts { parts, multipart } => {
                *multipart || parts.len() > 1 || v.size > self.ctx.settings.multipart_threshold
            }
        };
        if !multipart {
            return self.put_single(v).await;
        }
        // A large upload to a Ferry peer that has the version already (a duplicate delivery)
        // costs one HEAD instead.
        if self.ferry() {
            let head = self
                .peer
                .client
                .head_object()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .version_id(&v.version_id)
                .customize()
                .mutate_request(self.headers(None))
                .send()
                .await;
            match head {
                // There already: only its tags and ACL may be behind.
                Ok(h) if h.e_tag().map(|e| e.trim_matches('"')) == Some(v.etag.as_str()) => {
                    return self.send_metadata(v).await.err().unwrap_or(Outcome::Done);
                }
                Ok(_) => {}
                Err(e) if is_missing(&e) => {}
                Err(e) => return classify(&e),
            }
        }
        self.put_multipart(v).await
    }

    /// The data key of an encrypted version (SSE-S3, SSE-KMS: this region's keys open it).
    pub(super) fn data_key(&self, v: &VersionRecord) -> Result<Option<ferry_store::sse::Key>, Outcome> {
        let Some(e) = &v.attrs.sse else { return Ok(None) };
        if let Some(why) = unsendable(v) {
            return Err(Outcome::Permanent(why));
        }
        // A key missing from this region's configuration may come back (the operator restores
        // it): retried until the job gives up, with the reason. A wrapped key that does not
        // open under its own key never will.
        self.ctx.store.keys.open(e, None).map(Some).map_err(|e| {
            let why = format!("cannot decrypt the version: {e}");
            match e {
                ferry_store::sse::KeyError::Sse(_) => Outcome::Permanent(why),
                _ => Outcome::Transient(why),
            }
        })
    }

    /// After a failed send: the source's own failure, if its body failed to open meanwhile.
    fn source_failed(&self) -> Option<Outcome> {
        let why = ferry_core::sync::lock(&self.unreadable).take()?;
        Some(Outcome::Permanent(format!("source data fails to decrypt (corrupt?): {why}")))
    }

    /// The plaintext of a version held inline (at most the inline threshold: in memory).
    async fn inline_body(&self, v: &VersionRecord) -> Result<bytes::Bytes, Outcome> {
        let key = self.data_key(v)?;
        match (&v.layout, key) {
            (BodyLayout::Inline(data), None) => Ok(bytes::Bytes::from(data.clone())),
            (layout @ BodyLayout::Inline(_), Some(key)) => {
                let mut plain = Vec::new();
                let mut s = self.ctx.store.read_body(layout, 0..v.size, Some(&key));
                while let Some(b) = s.next().await {
                    plain.extend_from_slice(&b.map_err(|e| Outcome::Permanent(format!("the stored body: {e}")))?);
                }
                Ok(plain.into())
            }
            (BodyLayout::Parts { .. }, _) => Err(Outcome::Permanent("not an inline version".to_owned())),
        }
    }

    async fn body(&self, v: &VersionRecord, part: Option<(&PartRef, u64, u64)>) -> Result<ByteStream, Outcome> {
        match &v.layout {
            BodyLayout::Inline(_) => self.inline_body(v).await.map(ByteStream::from),
            BodyLayout::Parts { parts, .. } => {
                let key = self.data_key(v)?;
                let (p, offset, len) = match part {
                    Some(s) => s,
                    None => match parts.first() {
                        Some(p) => (p, 0, p.size),
                        None => return Ok(ByteStream::from(Vec::new())),
                    },
                };
                let Some(key) = key else {
                    return self.ctx.store.blobs.body(&p.blob, offset, len).await.map_err(|e| blob_error(&p.blob, &e));
                };
                // The decrypting stream opens the blob lazily: a missing one is told apart here.
                match self.ctx.store.blobs.exists(&p.blob).await {
                    Ok(true) => {}
                    Ok(false) => return Err(blob_error(&p.blob, &std::io::ErrorKind::NotFound.into())),
                    // Not known to be missing (a disk or a blob store that fails): retried.
                    Err(e) => return Err(blob_error(&p.blob, &e)),
                }
                let failed = self.unreadable.clone();
                let plain = self.ctx.store.read_part(p, offset..offset + len, Some(&key)).inspect(move |r| {
                    // Only a failed authentication is the source's own: other read errors
                    // (a blob store's 5xx, a reset connection) stay transient.
                    if let Err(e) = r
                        && ferry_store::sse::is_corrupt(e)
                    {
                        *ferry_core::sync::lock(&failed) = Some(e.to_string());
                    }
                });
                let frames = http_body_util::StreamBody::new(plain.map(|r| r.map(http_body::Frame::data)));
                Ok(ByteStream::from_body_1_x(frames))
            }
        }
    }

    /// A small version to a Ferry peer, through the lean client ([`crate::lean`]): the same
    /// headers as the SDK path sends. `None` when a header cannot go that way (the SDK sends
    /// the version then).
    async fn put_lean(&self, lean: &crate::lean::LeanClient, v: &VersionRecord) -> Option<Outcome> {
        use crate::lean::Failure;
        let body = match self.inline_body(v).await {
            Ok(b) => b,
            Err(o) => return Some(o),
        };
        let a = &v.attrs;
        let mut h: Vec<(String, String)> = Vec::new();
        let mut add = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                h.push((name.to_owned(), value));
            }
        };
        add("content-length", Some(body.len().to_string()));
        add("content-type", a.content_type.clone());
        add("content-encoding", a.content_encoding.clone());
        add("content-disposition", a.content_disposition.clone());
        add("content-language", a.content_language.clone());
        add("cache-control", a.cache_control.clone());
        add("x-amz-website-redirect-location", a.website_redirect.clone());
        add(
            "expires",
            expires(a).and_then(|d| d.fmt(aws_smithy_types::date_time::Format::HttpDate).ok()),
        );
        add("x-amz-tagging", tagging_header(&a.tags));
        add("x-amz-storage-class", self.storage_class(v).map(|c| c.as_str().to_owned()));
        let (sse, sse_kms_key) = sse_of(a, true);
        add("x-amz-server-side-encryption", sse.map(|e| e.as_str().to_owned()));
        add("x-amz-server-side-encryption-aws-kms-key-id", sse_kms_key);
        // As the SDK path: the full-object checksums, or else Content-MD5.
        let full = a.checksums.kind == Some(ChecksumKind::FullObject) && !a.checksums.values.is_empty();
        if full {
            for (alg, value) in &a.checksums.values {
                add(alg.header(), Some(value.clone()));
            }
        } else {
            add("content-md5", content_md5(&v.etag));
        }
        add(REPLICA_HEADER, self.replica_header(v));
        for (k, value) in &a.user_metadata {
            h.push((format!("x-amz-meta-{k}"), value.clone()));
        }
        let source = self.source.encode().ok()?;
        let in_flight = self.ctx.settings.batches_in_flight;
        if let Some(batcher) = self.peer.batch.as_ref().filter(|_| in_flight > 0) {
            match batcher.put(in_flight, &self.job.dest_bucket, &source, &v.key, h.clone(), body.clone()).await {
                // Not for a batch, the batch failed as a whole, or the peer takes no batches:
                // alone, below.
                Err(Failure::Unsendable(_)) => {}
                sent => {
                    self.count_put("batch");
                    return Some(lean_outcome(sent));
                }
            }
        }
        h.push((SOURCE_HEADER.to_owned(), source));
        let sent = lean.put_object(&self.job.dest_bucket, &v.key, &h, body).await;
        if matches!(sent, Err(Failure::Unsendable(_))) {
            // Never sent: the SDK sends it.
            return None;
        }
        self.count_put("lean");
        Some(lean_outcome(sent))
    }

    async fn put_single(&self, v: &VersionRecord) -> Outcome {
        if let (Some(lean), BodyLayout::Inline(_), true) = (&self.peer.lean, &v.layout, self.ctx.settings.lean_client)
            && let Some(outcome) = self.put_lean(lean, v).await
        {
            return outcome;
        }
        let body = match self.body(v, None).await {
            Ok(b) => b,
            Err(o) => return o,
        };
        let a = &v.attrs;
        let mut req = object_headers!(
            self.peer
                .client
                .put_object()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .body(body)
                .content_length(i64::try_from(v.size).unwrap_or(i64::MAX)),
            a,
            self.storage_class(v),
            self.ferry()
        );
        // Full-object checksums travel as headers, so the destination verifies the body. A Ferry
        // destination then skips MD5 (it takes the ETag from the replica header); Content-MD5
        // is sent only when no such checksum exists, or to another S3 service.
        let full = a.checksums.kind == Some(ChecksumKind::FullObject) && !a.checksums.values.is_empty();
        if !full || !self.ferry() {
            req = req.set_content_md5(content_md5(&v.etag));
        }
        if full {
            for (alg, value) in &a.checksums.values {
                req = with_checksum!(req, alg, value);
            }
        }
        self.count_put("sdk");
        match req.customize().mutate_request(self.headers(self.replica_header(v))).send().await {
            Ok(_) => Outcome::Done,
            Err(e) => self.source_failed().unwrap_or_else(|| corrupt_or(classify(&e))),
        }
    }

    /// Counts a single-request replica PUT sent by `sender`.
    fn count_put(&self, sender: &str) {
        let labels = ferry_core::metrics::SenderLabels { sender: sender.to_owned() };
        self.ctx.metrics.replication_object_puts.get_or_create(&labels).inc();
    }

    async fn save_progress(&self, p: &Progress) -> ferry_store::Result<()> {
        let id = self.job.id;
        let text = if p.upload_id.is_some() { Some(serde_json::to_string(p)?) } else { None };
        self.ctx.store.meta.write(move |tx| ferry_store::replication::outbox::save_progress(tx, id, text)).await
    }

    async fn delete_marker(&self, v: &VersionRecord) -> Outcome {
        match self.superseded(v).await {
            Ok(Some(why)) => return Outcome::Skipped(why),
            Ok(None) => {}
            Err(o) => return o,
        }
        check!(
            self.peer
                .client
                .delete_object()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .customize()
                .mutate_request(self.headers(self.replica_header(v)))
                .send()
                .await
        );
        Outcome::Done
    }

    async fn delete_version(&self) -> Outcome {
        if !self.ferry() {
            // Version ids differ on an S3 peer: there is no version to name.
            return Outcome::Skipped("an S3 target has its own version ids".to_owned());
        }
        let meta = ReplicaMeta {
            format: 1,
            source_region: self.ctx.peers.local().to_owned(),
            version_id: self.job.version_id.clone(),
            mtime_us: 0,
            ..ReplicaMeta::default()
        };
        check!(
            self.peer
                .client
                .delete_object()
                .bucket(&self.job.dest_bucket)
                .key(&self.job.key)
                .version_id(&self.job.version_id)
                .customize()
                .mutate_request(self.headers(meta.encode().ok()))
                .send()
                .await
        );
        Outcome::Done
    }

    async fn metadata(&self, v: &VersionRecord) -> Outcome {
        if !self.ferry() {
            return self.metadata_to_s3(v).await;
        }
        match self.send_metadata(v).await {
            Ok(()) => Outcome::Done,
            // Not at the destination: an original version is sent whole (its tags and ACL go
            // with it); a replica's change has nothing left to update where it came from.
            Err(Outcome::Missing(_)) if v.attrs.origin.is_some() => {
                Outcome::Skipped("the version no longer exists where it came from".to_owned())
            }
            Err(Outcome::Missing(_)) => self.put(v).await,
            Err(other) => other,
        }
    }

    /// Sends a version's tags and ACL (unless the rule gives replicas to the destination owner)
    /// to a Ferry peer, with their change times: the peer keeps the newer. `Missing` when the
    /// version is not there.
    async fn send_metadata(&self, v: &VersionRecord) -> Result<(), Outcome> {
        let fail = |e: &dyn MetaError| if e.missing() { Outcome::Missing(e.describe()) } else { e.classify() };
        let header = self.replica_header(v);
        self.peer
            .client
            .put_object_tagging()
            .bucket(&self.job.dest_bucket)
            .key(&v.key)
            .version_id(&v.version_id)
            .tagging(tag_set(v)?)
            .customize()
            .mutate_request(self.headers(header.clone()))
            .send()
            .await
            .map_err(|e| fail(&e))?;
        if !self.job.opts.owner_override {
            // The ACL travels in the replica header; the canned ACL only makes the request valid.
            self.peer
                .client
                .put_object_acl()
                .bucket(&self.job.dest_bucket)
                .key(&v.key)
                .version_id(&v.version_id)
                .acl(ObjectCannedAcl::Private)
                .customize()
                .mutate_request(self.headers(header))
                .send()
                .await
                .map_err(|e| fail(&e))?;
        }
        Ok(())
    }

    /// To an S3 target, tags go on its current object, which stands for the source's latest
    /// version; a change to an older version has nothing to land on.
    async fn metadata_to_s3(&self, v: &VersionRecord) -> Outcome {
        if !v.is_latest {
            return Outcome::Skipped("not the current version: an S3 target holds only the current object".to_owned());
        }
        let tagging = match tag_set(v) {
            Ok(t) => t,
            Err(o) => return o,
        };
        match self.peer.client.put_object_tagging().bucket(&self.job.dest_bucket).key(&v.key).tagging(tagging).send().await {
            Ok(_) => {}
            Err(e) if is_missing(&e) => return Outcome::Missing(describe(&e)),
            Err(e) => return classify(&e),
        }
        self.lock_to_s3(v).await.err().unwrap_or(Outcome::Done)
    }

    /// A lock changed on the source since it was written, onto an S3 target's current object:
    /// its legal hold, and its retention (with a bypass, for a GOVERNANCE one shortened at the
    /// source). A target without Object Lock refuses, and the job fails with its answer.
    async fn lock_to_s3(&self, v: &VersionRecord) -> Result<(), Outcome> {
        use aws_sdk_s3::types::{ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockRetention, ObjectLockRetentionMode};
        let a = &v.attrs;
        let (b, k) = (&self.job.dest_bucket, &v.key);
        if a.lock.legal_hold_us.is_some() {
            let status = if a.lock.legal_hold { ObjectLockLegalHoldStatus::On } else { ObjectLockLegalHoldStatus::Off };
            let hold = ObjectLockLegalHold::builder().status(status).build();
            self.peer.client.put_object_legal_hold().bucket(b).key(k).legal_hold(hold).send().await.map_err(|e| classify(&e))?;
        }
        if a.lock.retention_us.is_some() {
            let (mode, until) = s3_retention(a).unzip();
            let retention = ObjectLockRetention::builder()
                .set_mode(mode.map(ObjectLockRetentionMode::from))
                .set_retain_until_date(until)
                .build();
            self.peer
                .client
                .put_object_retention()
                .bucket(b)
                .key(k)
                .retention(retention)
                .bypass_governance_retention(true)
                .send()
                .await
                .map_err(|e| classify(&e))?;
        }
        Ok(())
    }
}

/// The errors of the two metadata requests, seen alike.
trait MetaError {
    fn missing(&self) -> bool;
    fn describe(&self) -> String;
    fn classify(&self) -> Outcome;
}

impl<E: ProvideErrorMetadata + std::fmt::Debug> MetaError for SdkError<E, HttpResponse> {
    fn missing(&self) -> bool {
        is_missing(self)
    }
    fn describe(&self) -> String {
        describe(self)
    }
    fn classify(&self) -> Outcome {
        classify(self)
    }
}

fn tag_set(v: &VersionRecord) -> Result<Tagging, Outcome> {
    Tagging::builder()
        .set_tag_set(Some(
            v.attrs.tags.iter().filter_map(|(k, val)| Tag::builder().key(k).value(val).build().ok()).collect(),
        ))
        .build()
        .map_err(|_| Outcome::Permanent("invalid tag set".to_owned()))
}

/// A blob that cannot be read: gone for good (permanent: nothing to send), or a passing error.
fn blob_error(blob: &str, e: &std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::NotFound {
        Outcome::Permanent(format!("source data missing: blob {blob} is not on disk"))
    } else if ferry_store::sse::is_corrupt(e) {
        // An encrypted body that fails authentication: its bytes are not what was written.
        Outcome::Permanent(format!("source data fails to decrypt (corrupt?): blob {blob}: {e}"))
    } else {
        Outcome::Transient(format!("reading blob {blob}: {e}"))
    }
}

/// A destination that refuses the body as not matching its checksum names a source whose bytes
/// no longer match what it stored (or a part reused wrongly, which the plan rules out).
fn corrupt_or(o: Outcome) -> Outcome {
    match o {
        Outcome::Permanent(why) if why.starts_with("BadDigest") => {
            Outcome::Permanent(format!("source data does not match its stored checksum (corrupt?): {why}"))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(
            content_md5("25f9e794323b453885f5181f1b624d0b").as_deref(),
            Some("JfnnlDI7RTiF9RgfG2JNCw==")
        );
        assert_eq!(content_md5("abc-2"), None);
        assert_eq!(tagging_header(&[("a b".into(), "x&y".into())]).as_deref(), Some("a%20b=x%26y"));
        assert_eq!(tagging_header(&[]), None);
    }
}
