//! GetObject and HeadObject: version resolution, delete-marker answers, conditional requests,
//! ranges and part numbers. Bodies stream from the blob files (or the inline row).

use ferry_core::ids::is_valid_version_id;
use ferry_store::model::{BodyLayout, BucketRecord, VersionRecord, Versioning};
use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::checksums::{ChecksumFields, with_checksums};
use crate::dto::{check_key, etag, secs, ts, ts_secs};
use crate::error::StoreResultExt;
use crate::perm::{Perm, check_perm, effective_acl, effective_owner};
use crate::sse::sse_headers;

/// A version resolved for reading, with whether its bucket is versioned (to decide whether
/// `x-amz-version-id` is returned).
pub(crate) struct SourceVersion {
    pub record: VersionRecord,
    pub versioned: bool,
    /// `x-amz-expiration`: when a lifecycle rule expires it, if it is a current version one
    /// does.
    pub expiration: Option<String>,
}

/// Conditional request headers.
pub(crate) struct Conditions<'a> {
    pub if_match: Option<&'a ETagCondition>,
    pub if_none_match: Option<&'a ETagCondition>,
    pub if_modified_since: Option<&'a Timestamp>,
    pub if_unmodified_since: Option<&'a Timestamp>,
}

fn cond_matches(c: &ETagCondition, stored: &str) -> bool {
    c.is_any() || c.as_etag().is_some_and(|e| e.value() == stored)
}

/// Outcome of evaluating conditions.
pub(crate) enum Verdict {
    Proceed,
    PreconditionFailed,
    NotModified,
}

impl Conditions<'_> {
    /// RFC 9110 order: If-Match, else If-Unmodified-Since (412); If-None-Match, else
    /// If-Modified-Since (304 for reads).
    pub(crate) fn evaluate(&self, v: &VersionRecord) -> Verdict {
        let mtime = secs(v.mtime_us);
        if let Some(m) = self.if_match {
            if !cond_matches(m, &v.etag) {
                return Verdict::PreconditionFailed;
            }
        } else if let Some(t) = self.if_unmodified_since
            && mtime > ts_secs(t)
        {
            return Verdict::PreconditionFailed;
        }
        if let Some(m) = self.if_none_match {
            if cond_matches(m, &v.etag) {
                return Verdict::NotModified;
            }
        } else if let Some(t) = self.if_modified_since
            && mtime <= ts_secs(t)
        {
            return Verdict::NotModified;
        }
        Verdict::Proceed
    }

    /// For GET/HEAD: 412 or 304.
    fn check_read(&self, v: &VersionRecord) -> S3Result<()> {
        match self.evaluate(v) {
            Verdict::Proceed => Ok(()),
            Verdict::PreconditionFailed => Err(s3_error!(PreconditionFailed, "{}", crate::error::PRECONDITION_FAILED)),
            Verdict::NotModified => {
                let mut e = s3_error!(NotModified);
                let mut h = http::HeaderMap::new();
                if let Ok(val) = format!("\"{}\"", v.etag).parse() {
                    h.insert(http::header::ETAG, val);
                }
                e.set_headers(h);
                Err(e)
            }
        }
    }

    /// For copy sources: every failed condition is a 412.
    pub(crate) fn check_copy(&self, v: &VersionRecord) -> S3Result<()> {
        match self.evaluate(v) {
            Verdict::Proceed => Ok(()),
            _ => Err(s3_error!(PreconditionFailed, "{}", crate::error::PRECONDITION_FAILED)),
        }
    }
}

fn header_map(pairs: &[(&str, String)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    h
}

/// NoSuchKey for a key whose latest version is a delete marker, with the marker headers.
fn deleted_key(marker: &VersionRecord) -> S3Error {
    let mut e = s3_error!(NoSuchKey, "The specified key does not exist.");
    e.set_headers(header_map(&[
        ("x-amz-delete-marker", "true".into()),
        ("x-amz-version-id", marker.version_id.clone()),
    ]));
    e
}

/// 405 for a GET/HEAD naming a delete marker's version id.
fn marker_version(marker: &VersionRecord) -> S3Error {
    let mut e = s3_error!(MethodNotAllowed, "The specified method is not allowed against this resource.");
    let last_modified = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(marker.mtime_us).unwrap_or(0)),
    );
    e.set_headers(header_map(&[
        ("x-amz-delete-marker", "true".into()),
        ("x-amz-version-id", marker.version_id.clone()),
        ("last-modified", last_modified),
    ]));
    e
}

/// The `x-amz-copy-source-if-*` [`Conditions`] of a CopyObject or UploadPartCopy input.
macro_rules! copy_conditions {
    ($i:expr) => {
        $crate::get::Conditions {
            if_match: $i.copy_source_if_match.as_ref(),
            if_none_match: $i.copy_source_if_none_match.as_ref(),
            if_modified_since: $i.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: $i.copy_source_if_unmodified_since.as_ref(),
        }
    };
}
pub(crate) use copy_conditions;

/// How a version being read is opened: its data key (encrypted bodies) and the SSE-C key's
/// MD5 to answer.
struct Opened {
    key: Option<ferry_store::sse::Key>,
    customer_md5: Option<String>,
}

/// What a GET or HEAD asks for ([`read_request!`] takes it from either input).
struct ReadRequest<'a> {
    bucket: &'a str,
    key: &'a str,
    version_id: Option<&'a str>,
    /// The SSE-C headers: algorithm, key, key MD5.
    customer: [Option<&'a str>; 3],
    conditions: Conditions<'a>,
    range: Option<&'a Range>,
    part_number: Option<i32>,
}

/// The [`ReadRequest`] of a GetObject or HeadObject input.
macro_rules! read_request {
    ($i:expr) => {
        ReadRequest {
            bucket: &$i.bucket,
            key: &$i.key,
            version_id: $i.version_id.as_deref(),
            customer: [$i.sse_customer_algorithm.as_deref(), $i.sse_customer_key.as_deref(), $i.sse_customer_key_md5.as_deref()],
            conditions: Conditions {
                if_match: $i.if_match.as_ref(),
                if_none_match: $i.if_none_match.as_ref(),
                if_modified_since: $i.if_modified_since.as_ref(),
                if_unmodified_since: $i.if_unmodified_since.as_ref(),
            },
            range: $i.range.as_ref(),
            part_number: $i.part_number,
        }
    };
}

/// A GetObject or HeadObject output with the headers both send for the version read: content
/// headers, length and range, ETag, times, metadata, version id, storage class, replication
/// status, Object Lock, and the checksums when asked for (`x-amz-checksum-mode: ENABLED`) on a full read.
macro_rules! object_headers {
    ($ty:ident { $($field:ident: $value:expr),* $(,)? }, $src:expr, $plan:expr, $mode:expr) => {{
        let (src, plan): (&SourceVersion, &ReadPlan) = ($src, $plan);
        let (v, a) = (&src.record, &src.record.attrs);
        let asked = $mode.is_some_and(|m: &ChecksumMode| m.as_str() == ChecksumMode::ENABLED);
        let checksums = match (&plan.content_range, &plan.part_checksums) {
            _ if !asked => ChecksumFields::default(),
            (None, _) => ChecksumFields::of(&a.checksums),
            (Some(_), Some(part)) => ChecksumFields::of(part),
            (Some(_), None) => ChecksumFields::default(),
        };
        let has_checksum = checksums.any();
        let (lock_mode, lock_until, lock_hold) = crate::object_lock::headers_of(v);
        with_checksums!(
            $ty {
                $($field: $value,)*
                accept_ranges: Some("bytes".to_owned()),
                content_length: i64::try_from(plan.range.end - plan.range.start).ok(),
                content_range: plan.content_range.clone(),
                parts_count: plan.parts_count,
                e_tag: Some(etag(&v.etag)),
                last_modified: Some(ts(v.mtime_us)),
                content_type: a.content_type.clone(),
                content_encoding: a.content_encoding.clone(),
                content_disposition: a.content_disposition.clone(),
                content_language: a.content_language.clone(),
                cache_control: a.cache_control.clone(),
                expires: a.expires.as_deref().and_then(|e| Timestamp::parse(TimestampFormat::HttpDate, e).ok()),
                website_redirect_location: a.website_redirect.clone(),
                metadata: (!a.user_metadata.is_empty()).then(|| a.user_metadata.clone().into_iter().collect()),
                version_id: src.versioned.then(|| v.version_id.clone()),
                expiration: src.expiration.clone(),
                storage_class: v.storage_class.clone().map(StorageClass::from),
                replication_status: v.repl_status.map(|s| ReplicationStatus::from(s.as_str().to_owned())),
                checksum_type: if has_checksum { a.checksums.kind.map(|k| ChecksumType::from(k.as_str().to_owned())) } else { None },
                object_lock_mode: lock_mode,
                object_lock_retain_until_date: lock_until,
                object_lock_legal_hold_status: lock_hold,
            },
            checksums,
            ..Default::default()
        )
    }};
}

impl FerryS3 {
    /// The source of a CopyObject or UploadPartCopy, resolved (read permission) and checked
    /// against its `x-amz-copy-source-if-*` conditions ([`copy_conditions!`]); with the
    /// (bucket, key, version) it names.
    pub(crate) async fn copy_source<T>(
        &self,
        req: &S3Request<T>,
        source: &CopySource,
        conditions: Conditions<'_>,
    ) -> S3Result<(SourceVersion, (String, String, Option<String>))> {
        let CopySource::Bucket { bucket, key, version_id } = source else {
            return Err(s3_error!(NotImplemented, "Access points are not supported"));
        };
        let (b, k, v) = (bucket.to_string(), key.to_string(), version_id.as_deref().map(str::to_owned));
        let allowed = crate::bucket_access::source_granted(req);
        let src = self.version_checked(req, &b, &k, v.as_deref(), Perm::Read, allowed).await?;
        conditions.check_copy(&src.record)?;
        Ok((src, (b, k, v)))
    }

    /// Resolves (bucket, key, version), with S3's answers for missing keys, missing versions
    /// and delete markers, and checks `perm` against the version's ACL (unless the bucket
    /// policy allows the request). A replication request is checked against the bucket's
    /// accepted sources instead.
    pub(crate) async fn source_version<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        perm: Perm,
    ) -> S3Result<SourceVersion> {
        self.version_checked(req, bucket, key, version_id, perm, crate::bucket_access::granted(req)).await
    }

    /// [`Self::source_version`], the ACLs skipped when `policy_allows`.
    pub(crate) async fn version_checked<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        perm: Perm,
        policy_allows: bool,
    ) -> S3Result<SourceVersion> {
        check_key(key)?;
        if let Some(v) = version_id
            && !is_valid_version_id(v)
        {
            return Err(s3_error!(InvalidArgument, "Invalid version id specified"));
        }
        let (b, k, vid) = (bucket.to_owned(), key.to_owned(), version_id.map(str::to_owned));
        let (bucket_rec, version) = self
            .store
            .meta
            .read(move |r| {
                let bucket = r.get_bucket(&b)?;
                let version = match (&bucket, &vid) {
                    (None, _) => None,
                    (Some(_), Some(v)) => r.get_version(&b, &k, v)?,
                    (Some(_), None) => r.get_latest(&b, &k)?,
                };
                Ok((bucket, version))
            })
            .await
            .s3()?;
        let bucket_rec = bucket_rec.ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))?;
        // A GET or HEAD whose policy check was left to this read (one read, not two).
        let policy_allows = match crate::bucket_access::deferred(req) {
            Some(op) => {
                let asked = crate::bucket_access::asked_of(req, op, bucket, Some(key), version_id);
                crate::bucket_access::judge_bucket(&self.store, &self.users, &bucket_rec, &asked).await? || policy_allows
            }
            None => policy_allows,
        };
        // A replication request reads and writes for its source: the bucket must accept it.
        let replication = match self.replication(req) {
            Some(r) => Some(r.authorize(&bucket_rec)?),
            None => None,
        };
        let user = self.user(req).map(|u| &u.owner);
        let check_perm = |user, owner: &ferry_store::model::Owner, acl: &ferry_store::model::Acl, p| {
            if replication.is_some() || policy_allows {
                Ok(())
            } else {
                check_perm(
                    user,
                    effective_owner(&bucket_rec, owner),
                    &effective_acl(&self.users, &bucket_rec, acl),
                    p,
                )
            }
        };
        // Without READ on the bucket, or s3:ListBucket with the key as the prefix, the requester
        // may not learn whether the key exists (missing, or deleted).
        if version.as_ref().is_none_or(|v| v.delete_marker)
            && let Err(e) = check_perm(user, &bucket_rec.owner, &bucket_rec.acl, Perm::Read)
            && !self.policy_lists_key(req, &bucket_rec, key).await?
        {
            return Err(e);
        }
        let Some(record) = version else {
            return Err(if version_id.is_some() {
                s3_error!(NoSuchVersion, "The specified version does not exist.")
            } else {
                let mut e = s3_error!(NoSuchKey, "The specified key does not exist.");
                // Not a delete marker (said outright, as Ceph does: clients reading the header
                // need not guess from its absence).
                e.set_headers(header_map(&[("x-amz-delete-marker", "false".into())]));
                e
            });
        };
        if record.delete_marker {
            return Err(if version_id.is_some() { marker_version(&record) } else { deleted_key(&record) });
        }
        check_perm(user, &record.owner, &record.attrs.acl, perm)?;
        // A version whose data file is gone (damaged disk, files removed behind Ferry's back)
        // answers an error instead of a truncated body.
        if let BodyLayout::Parts { parts, .. } = &record.layout {
            for p in parts {
                match self.store.blobs.exists(&p.blob).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(bucket, key, version = %record.version_id, blob = %p.blob, "object data file missing");
                        return Err(s3_error!(InternalError, "The data of this object version is missing from storage"));
                    }
                    Err(e) => {
                        tracing::error!(bucket, key, version = %record.version_id, blob = %p.blob, error = %e, "object data cannot be read");
                        return Err(s3_error!(
                            ServiceUnavailable,
                            "The data of this object version cannot be read from storage now; please retry."
                        ));
                    }
                }
            }
        }
        let expiration = crate::lifecycle::expiration_header(&bucket_rec, &record, self.lifecycle_day_us);
        Ok(SourceVersion { record, versioned: bucket_rec.versioning != Versioning::Unversioned, expiration })
    }

    /// Whether the bucket policy grants s3:ListBucket with `key` as the prefix: a requester it
    /// grants may learn that the key is missing (404) without READ on the bucket.
    async fn policy_lists_key<T>(&self, req: &S3Request<T>, bucket: &BucketRecord, key: &str) -> S3Result<bool> {
        let asked = crate::bucket_access::Asked {
            listed_prefix: Some(key),
            ..crate::bucket_access::asked_of(req, "ListObjectsV2", &bucket.name, None, None)
        };
        crate::bucket_access::judge_bucket(&self.store, &self.users, bucket, &asked).await
    }

    /// Resolves a GET or HEAD: the version (read permission), its data key when it is
    /// encrypted and `open` (a GET) or SSE-C (a HEAD checks the customer's key too), its
    /// conditional headers, and the range or part to send.
    async fn read_target<T>(
        &self,
        req: &S3Request<T>,
        t: ReadRequest<'_>,
        open: bool,
    ) -> S3Result<(SourceVersion, ReadPlan, Opened)> {
        let [alg, key, md5] = t.customer;
        let customer = self.customer_key(req, alg, key, md5)?;
        // A read decrypts with what the object was written with; it asks for no encryption.
        for h in ["x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id"] {
            if req.headers.contains_key(h) {
                return Err(s3_error!(InvalidArgument, "The {h} header is not supported for this operation."));
            }
        }
        let src = self.source_version(req, t.bucket, t.key, t.version_id, Perm::Read).await?;
        // A part or range the version does not have is answered as such, key or no key (as
        // Ceph does; the part count is no secret: the listed ETag ends with it).
        let plan = ReadPlan::new(&src.record, t.range, t.part_number)?;
        let enc = src.record.attrs.sse.as_ref();
        let key = match enc {
            // Nothing to decrypt, nothing to check: a HEAD of an SSE-S3 or SSE-KMS object.
            Some(e) if !open && e.kind != ferry_store::sse::SseKind::Customer && customer.is_none() => None,
            _ => self.data_key(enc, customer.as_ref())?,
        };
        t.conditions.check_read(&src.record)?;
        Ok((src, plan, Opened { key, customer_md5: customer.map(|c| c.md5) }))
    }

    pub(crate) async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let i = &req.input;
        let (src, plan, opened) = self.read_target(&req, read_request!(i), true).await?;
        let v = &src.record;
        let body = StreamingBlob::wrap(self.store.read_body(&v.layout, plan.range.clone(), opened.key.as_ref()));
        let tags = &v.attrs.tags;
        let out = object_headers!(
            GetObjectOutput {
                body: Some(body),
                tag_count: (!tags.is_empty()).then(|| i32::try_from(tags.len()).unwrap_or(i32::MAX)),
            },
            &src,
            &plan,
            i.checksum_mode.as_ref()
        );
        let mut resp = S3Response::new(sse_headers!(out, v.attrs.sse.as_ref(), opened.customer_md5));
        if plan.partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        Ok(resp)
    }

    pub(crate) async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = &req.input;
        let (src, plan, opened) = self.read_target(&req, read_request!(i), false).await?;
        let out = object_headers!(HeadObjectOutput {}, &src, &plan, i.checksum_mode.as_ref());
        let mut resp = S3Response::new(sse_headers!(out, src.record.attrs.sse.as_ref(), opened.customer_md5));
        if plan.partial {
            resp.status = Some(http::StatusCode::PARTIAL_CONTENT);
        }
        // HeadObjectOutput has no tag count field; S3 sends the header on HEAD too.
        let tags = &src.record.attrs.tags;
        if !tags.is_empty() {
            resp.headers.insert("x-amz-tagging-count", http::HeaderValue::from(tags.len()));
        }
        Ok(resp)
    }
}

/// Which bytes of a version a read returns.
#[derive(Debug)]
pub(crate) struct ReadPlan {
    pub(crate) range: std::ops::Range<u64>,
    content_range: Option<String>,
    parts_count: Option<i32>,
    partial: bool,
    /// For one part of a multipart object: its own checksums, in the object's algorithms.
    part_checksums: Option<ferry_store::model::Checksums>,
}

impl ReadPlan {
    fn whole(size: u64) -> Self {
        Self { range: 0..size, content_range: None, parts_count: None, partial: false, part_checksums: None }
    }

    pub(crate) fn new(v: &VersionRecord, range: Option<&Range>, part_number: Option<i32>) -> S3Result<Self> {
        let size = v.size;
        if range.is_some() && part_number.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "Cannot specify both Range header and partNumber query parameter"
            ));
        }
        if let Some(r) = range {
            let rg = r.check(size).map_err(|_| {
                let mut e = s3_error!(InvalidRange, "The requested range is not satisfiable");
                e.set_headers(header_map(&[("content-range", format!("bytes */{size}"))]));
                e
            })?;
            let content_range = Some(format!("bytes {}-{}/{size}", rg.start, rg.end.saturating_sub(1)));
            return Ok(Self { range: rg, content_range, parts_count: None, partial: true, part_checksums: None });
        }
        let Some(n) = part_number else {
            return Ok(Self::whole(size));
        };
        // A part the object does not have: 400 InvalidPart, as S3 answers today (it once answered
        // 416 InvalidPartNumber).
        let invalid = || s3_error!(InvalidPart, "The requested part number does not exist in this object");
        if n < 1 {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            ));
        }
        match &v.layout {
            BodyLayout::Parts { parts, multipart: true } => {
                let idx = usize::try_from(n - 1).map_err(|_| invalid())?;
                let part = parts.get(idx).ok_or_else(invalid)?;
                let start: u64 = parts.iter().take(idx).map(|p| p.size).sum();
                let end = start + part.size;
                let mut part_checksums = part.checksums.clone().unwrap_or_default();
                part_checksums.values.retain(|alg, _| v.attrs.checksums.values.contains_key(alg));
                Ok(Self {
                    content_range: Some(format!("bytes {start}-{}/{size}", end.saturating_sub(1))),
                    range: start..end,
                    parts_count: i32::try_from(parts.len()).ok(),
                    partial: true,
                    part_checksums: Some(part_checksums),
                })
            }
            _ if n == 1 => Ok(Self::whole(size)),
            _ => Err(invalid()),
        }
    }
}
