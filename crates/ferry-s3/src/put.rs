//! PutObject and CopyObject, and the body checks they share with UploadPart: Content-MD5,
//! flexible checksums (header or trailer), storage classes.

use ferry_store::Ingested;
use ferry_store::checksum::{Algorithm, DigestResult, is_valid_checksum_value};
use ferry_store::model::{BodyLayout, Checksums, ObjectAttrs, Versioning};
use ferry_store::objects::{NewVersion, WriteConditions, put_version};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::error::{StoreResultExt, internal};
use crate::get::Conditions;
use crate::replica::ReplicaWrite;
use crate::util::{GrantHeaders, MAX_PUT_SIZE, Perm, check_key, etag, parse_tagging_header, requested_acl, ts, user_metadata};

/// Storage classes accepted (and stored; Ferry keeps every class on the same disks).
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "GLACIER_IR",
    "OUTPOSTS",
    "SNOW",
    "EXPRESS_ONEZONE",
];

/// Validates a storage class; `STANDARD` is stored as `None`.
pub(crate) fn storage_class(sc: Option<&str>) -> S3Result<Option<String>> {
    match sc {
        None | Some("STANDARD") => Ok(None),
        Some(s) if STORAGE_CLASSES.contains(&s) => Ok(Some(s.to_owned())),
        Some(s) => Err(s3_error!(InvalidStorageClass, "The storage class {s} you specified is not valid")),
    }
}

/// Server-side encryption is not offered: refuse requests that ask for it rather than store
/// the data unencrypted while claiming otherwise.
pub(crate) fn refuse_sse(sse: Option<&ServerSideEncryption>, sse_c: Option<&str>) -> S3Result<()> {
    if sse.is_some() || sse_c.is_some() {
        return Err(s3_error!(NotImplemented, "Server-side encryption is not supported"));
    }
    Ok(())
}

/// The checksums a request carries or asks for.
#[derive(Debug, Default)]
pub(crate) struct ChecksumRequest {
    /// Values given in headers.
    pub given: Vec<(Algorithm, String)>,
    /// Algorithms to compute (given ones, the SDK's declared algorithm, trailer ones).
    pub algorithms: Vec<Algorithm>,
    /// Content-MD5, raw.
    pub content_md5: Option<Vec<u8>>,
}

impl ChecksumRequest {
    /// Collects checksum headers; `default_full` adds CRC64NVME when nothing else is asked for
    /// (AWS's default for new objects).
    pub(crate) fn new(
        headers: &http::HeaderMap,
        declared: Option<&ChecksumAlgorithm>,
        values: [Option<&String>; 5],
        content_md5: Option<&str>,
        default_full: bool,
    ) -> S3Result<Self> {
        let mut r = Self::default();
        let algs = [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme, Algorithm::Sha1, Algorithm::Sha256];
        for (a, v) in algs.into_iter().zip(values) {
            if let Some(v) = v {
                if !is_valid_checksum_value(a, v) {
                    return Err(s3_error!(
                        InvalidRequest,
                        "Value for x-amz-checksum-{} header is invalid.",
                        a.name().to_ascii_lowercase()
                    ));
                }
                r.given.push((a, v.clone()));
                r.algorithms.push(a);
            }
        }
        if let Some(d) = declared {
            let a = Algorithm::parse(d.as_str())
                .ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm {} is not supported", d.as_str()))?;
            r.algorithms.push(a);
        }
        if let Some(trailer) = headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()) {
            for name in trailer.split(',').map(str::trim) {
                if let Some(a) = name.strip_prefix("x-amz-checksum-").and_then(Algorithm::parse) {
                    r.algorithms.push(a);
                }
            }
        }
        if r.algorithms.is_empty() && default_full {
            r.algorithms.push(Algorithm::Crc64Nvme);
        }
        let content_md5 = content_md5.or_else(|| headers.get("content-md5").and_then(|v| v.to_str().ok()));
        if let Some(md5) = content_md5 {
            r.content_md5 = Some(
                ferry_store::checksum::decode_content_md5(md5)
                    .ok_or_else(|| s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid."))?,
            );
        }
        Ok(r)
    }

    /// Checks the computed digest against everything the request claimed (headers and, once the
    /// body is read, trailers). Returns how many claims it checked (Content-MD5 included).
    pub(crate) fn verify(&self, digest: &DigestResult, trailers: Option<&http::HeaderMap>) -> S3Result<usize> {
        if let Some(md5) = &self.content_md5
            && *md5 != digest.md5
        {
            return Err(s3_error!(BadDigest, "The Content-MD5 you specified did not match what we received."));
        }
        let mut claims = self.given.clone();
        if let Some(t) = trailers {
            for a in Algorithm::ALL {
                if let Some(v) = t.get(a.header()).and_then(|v| v.to_str().ok()) {
                    claims.push((a, v.to_owned()));
                }
            }
        }
        for (a, v) in &claims {
            if digest.checksum(*a) != Some(v.as_str()) {
                return Err(s3_error!(
                    BadDigest,
                    "The {} you specified did not match the calculated checksum.",
                    a.name()
                ));
            }
        }
        Ok(claims.len() + usize::from(self.content_md5.is_some()))
    }

    /// Whether the body will be checked against a checksum (a header value, or a declared
    /// trailer, which [`ChecksumRequest::verify`] must then find).
    pub(crate) fn has_checksum(&self, headers: &http::HeaderMap) -> bool {
        !self.given.is_empty() || headers.contains_key("x-amz-trailer")
    }
}

/// The stored checksums of a body.
pub(crate) fn stored_checksums(digest: &DigestResult) -> Checksums {
    Checksums {
        values: digest.checksums.iter().map(|(a, v)| (a.name().to_owned(), v.clone())).collect(),
        kind: if digest.checksums.is_empty() { None } else { Some("FULL_OBJECT".to_owned()) },
    }
}

/// Fills the five checksum fields of an output struct.
pub(crate) fn checksum_fields(c: &Checksums) -> [Option<String>; 5] {
    ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"].map(|n| c.values.get(n).cloned())
}

/// `Expires` as stored (HTTP date text).
pub(crate) fn http_date(t: &Timestamp) -> S3Result<String> {
    let mut buf = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut buf).map_err(internal)?;
    String::from_utf8(buf).map_err(internal)
}

/// A body-carrying request must say how long its body is: Content-Length, or chunked transfer
/// encoding. A request with neither has no body at all in HTTP/1.1, which for an upload is
/// almost always a client bug, so it is refused rather than stored as an empty object.
pub(crate) fn require_length(headers: &http::HeaderMap) -> S3Result<()> {
    if headers.contains_key(http::header::CONTENT_LENGTH) || headers.contains_key(http::header::TRANSFER_ENCODING) {
        Ok(())
    } else {
        Err(s3_error!(MissingContentLength, "You must provide the Content-Length HTTP header."))
    }
}

/// Trailing headers, once the body has been read.
pub(crate) fn trailers<T>(req: &S3Request<T>) -> Option<http::HeaderMap> {
    req.trailing_headers.as_ref().and_then(s3s::TrailingHeaders::take)
}

impl FerryS3 {
    pub(crate) async fn put_object(&self, mut req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        check_key(&req.input.key)?;
        require_length(&req.headers)?;
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let replica = self.replica_of(&req, &bucket)?;
        let user = self.require_user(&req).map(|u| u.owner.clone()).unwrap_or_default();
        let owner = match &replica {
            Some(r) => r.meta.owner.clone().unwrap_or_else(|| bucket.owner.clone()),
            None if user.id.is_empty() => bucket.owner.clone(),
            None => user,
        };
        let i = &req.input;
        refuse_sse(i.server_side_encryption.as_ref(), i.sse_customer_algorithm.as_deref())?;
        if i.object_lock_mode.is_some() || i.object_lock_retain_until_date.is_some() || i.object_lock_legal_hold_status.is_some()
        {
            return Err(s3_error!(InvalidRequest, "Bucket is missing Object Lock Configuration"));
        }
        let storage_class = storage_class(i.storage_class.as_ref().map(StorageClass::as_str))?;
        let checks = ChecksumRequest::new(
            &req.headers,
            i.checksum_algorithm.as_ref(),
            [
                i.checksum_crc32.as_ref(),
                i.checksum_crc32c.as_ref(),
                i.checksum_crc64nvme.as_ref(),
                i.checksum_sha1.as_ref(),
                i.checksum_sha256.as_ref(),
            ],
            i.content_md5.as_deref(),
            true,
        )?;
        let tags = i.tagging.as_deref().map(parse_tagging_header).transpose()?.unwrap_or_default();
        let grants = GrantHeaders {
            full_control: i.grant_full_control.as_deref(),
            read: i.grant_read.as_deref(),
            read_acp: i.grant_read_acp.as_deref(),
            write: crate::util::raw_header(&req, "x-amz-grant-write"),
            write_acp: i.grant_write_acp.as_deref(),
        };
        let acl = match replica.as_ref().and_then(|r| r.meta.acl.clone()) {
            Some(acl) => acl,
            None if replica.is_some() => ferry_store::model::Acl::private(&owner),
            None => requested_acl(
                i.acl.as_ref().map(ObjectCannedACL::as_str),
                &grants,
                &owner,
                Some(&bucket.owner),
                &self.users,
            )?,
        };
        let attrs = ObjectAttrs {
            content_type: Some(i.content_type.clone().unwrap_or_else(|| "binary/octet-stream".to_owned())),
            content_encoding: i.content_encoding.clone(),
            content_disposition: i.content_disposition.clone(),
            content_language: i.content_language.clone(),
            cache_control: i.cache_control.clone(),
            expires: i.expires.as_ref().map(http_date).transpose()?,
            website_redirect: i.website_redirect_location.clone(),
            user_metadata: user_metadata(i.metadata.clone())?,
            checksums: Checksums::default(),
            tags,
            acl,
            ..ObjectAttrs::default()
        };
        let cond = WriteConditions {
            if_match: i.if_match.as_ref().map(|c| c.as_etag().map_or_else(|| "*".to_owned(), |e| e.value().to_owned())),
            if_none_match: i.if_none_match.as_ref().map(|c| c.as_etag().map_or_else(|| "*".to_owned(), |e| e.value().to_owned())),
        };
        let expected_len = i.content_length.and_then(|n| u64::try_from(n).ok());
        if expected_len.is_some_and(|n| n > MAX_PUT_SIZE) {
            return Err(s3_error!(EntityTooLarge, "Your proposed upload exceeds the maximum allowed object size."));
        }
        let body = req
            .input
            .body
            .take()
            .unwrap_or_else(|| StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>()));
        // A replica whose ETag the source sent and whose body a full-object checksum verifies
        // needs no MD5 (the slowest hash by far): the checksum guards the bytes.
        let md5 = !(replica.as_ref().is_some_and(|r| r.meta.etag.is_some())
            && !checks.given.is_empty()
            && checks.content_md5.is_none());
        let digest = ferry_store::checksum::BodyDigest::with_md5(&checks.algorithms, md5);
        let (ingested, digest) = self.store.ingest_digest(body, digest, expected_len, MAX_PUT_SIZE, true).await.s3()?;
        checks.verify(&digest, trailers(&req).as_ref())?;
        let out = self
            .write_new_object(
                req.input.bucket.clone(),
                req.input.key.clone(),
                ingested,
                &digest,
                attrs,
                storage_class,
                owner,
                cond,
                replica,
            )
            .await?;
        let [c32, c32c, c64, s1, s256] = checksum_fields(&out.attrs.checksums);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&out.etag)),
            // Writes report a version id only while versioning is enabled (not for the null version).
            version_id: (bucket.versioning == Versioning::Enabled).then(|| out.version_id.clone()),
            checksum_crc32: c32,
            checksum_crc32c: c32c,
            checksum_crc64nvme: c64,
            checksum_sha1: s1,
            checksum_sha256: s256,
            checksum_type: out.attrs.checksums.kind.clone().map(ChecksumType::from),
            size: i64::try_from(out.size).ok(),
            ..Default::default()
        }))
    }

    /// Commits a received body as a new version of `key`, then moves its blob into place.
    /// A replica keeps the source's version id, time and ETag.
    #[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
    pub(crate) async fn write_new_object(
        &self,
        bucket: String,
        key: String,
        ingested: Ingested,
        digest: &DigestResult,
        mut attrs: ObjectAttrs,
        storage_class: Option<String>,
        owner: ferry_store::model::Owner,
        cond: WriteConditions,
        replica: Option<ReplicaWrite>,
    ) -> S3Result<ferry_store::model::VersionRecord> {
        attrs.checksums = match replica.as_ref().and_then(|r| r.meta.checksums.clone()) {
            Some(c) => c,
            None => stored_checksums(digest),
        };
        if let Some(r) = &replica {
            (attrs.tags_us, attrs.acl_us) = (r.meta.tags_us, r.meta.acl_us);
        }
        let etag = replica.as_ref().and_then(|r| r.meta.etag.clone()).unwrap_or_else(|| digest.md5_hex());
        // The body's own MD5 (a single part's ETag); the replica's ETag when it was not computed.
        let md5 = if digest.md5.is_empty() { etag.clone() } else { digest.md5_hex() };
        let new = NewVersion {
            key,
            size: digest.len,
            layout: ingested.layout(digest.len, &md5),
            etag,
            storage_class,
            owner,
            attrs,
            repl_status: replica.as_ref().map(|_| ferry_store::model::ReplStatus::Replica),
            replica: replica.as_ref().map(ReplicaWrite::identity),
        };
        self.store.write_with_body(ingested, move |tx| put_version(tx, &bucket, new, &cond)).await.s3()
    }

    pub(crate) async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        check_key(&req.input.key)?;
        let dest_bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let owner = self.require_user(&req)?.owner.clone();
        let i = &req.input;
        refuse_sse(i.server_side_encryption.as_ref(), i.sse_customer_algorithm.as_deref())?;
        let (src_bucket, src_key, src_vid) = match &i.copy_source {
            CopySource::Bucket { bucket, key, version_id } => {
                (bucket.to_string(), key.to_string(), version_id.as_deref().map(str::to_owned))
            }
            CopySource::AccessPoint { .. } | CopySource::Outpost { .. } => {
                return Err(s3_error!(NotImplemented, "Access points are not supported"));
            }
        };
        let src = self.source_version(&req, &src_bucket, &src_key, src_vid.as_deref(), Perm::Read).await?;
        Conditions {
            if_match: i.copy_source_if_match.as_ref(),
            if_none_match: i.copy_source_if_none_match.as_ref(),
            if_modified_since: i.copy_source_if_modified_since.as_ref(),
            if_unmodified_since: i.copy_source_if_unmodified_since.as_ref(),
        }
        .check_copy(&src.record)?;
        let replace_meta = i.metadata_directive.as_ref().is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let replace_tags = i.tagging_directive.as_ref().is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
        if let Some(d) = &i.metadata_directive
            && d.as_str() != MetadataDirective::REPLACE
            && d.as_str() != MetadataDirective::COPY
        {
            return Err(s3_error!(InvalidArgument, "Unknown metadata directive"));
        }
        let sc = storage_class(i.storage_class.as_ref().map(StorageClass::as_str))?;
        let same_object =
            src_bucket == i.bucket && src_key == i.key && src_vid.as_deref().is_none_or(|v| v == src.record.version_id);
        if same_object && !replace_meta && sc == src.record.storage_class && i.website_redirect_location.is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        if src.record.size > MAX_PUT_SIZE {
            return Err(s3_error!(
                InvalidRequest,
                "The specified copy source is larger than the maximum allowable size for a copy source: 5368709120"
            ));
        }
        let mut attrs = if replace_meta {
            ObjectAttrs {
                content_type: Some(i.content_type.clone().unwrap_or_else(|| "binary/octet-stream".to_owned())),
                content_encoding: i.content_encoding.clone(),
                content_disposition: i.content_disposition.clone(),
                content_language: i.content_language.clone(),
                cache_control: i.cache_control.clone(),
                expires: i.expires.as_ref().map(http_date).transpose()?,
                website_redirect: i.website_redirect_location.clone(),
                user_metadata: user_metadata(i.metadata.clone())?,
                ..ObjectAttrs::default()
            }
        } else {
            ObjectAttrs {
                website_redirect: i.website_redirect_location.clone().or(src.record.attrs.website_redirect.clone()),
                ..src.record.attrs.clone()
            }
        };
        attrs.tags = if replace_tags {
            i.tagging.as_deref().map(parse_tagging_header).transpose()?.unwrap_or_default()
        } else {
            src.record.attrs.tags.clone()
        };
        let grants = GrantHeaders {
            full_control: i.grant_full_control.as_deref(),
            read: i.grant_read.as_deref(),
            read_acp: i.grant_read_acp.as_deref(),
            write: crate::util::raw_header(&req, "x-amz-grant-write"),
            write_acp: i.grant_write_acp.as_deref(),
        };
        attrs.acl = requested_acl(
            i.acl.as_ref().map(ObjectCannedACL::as_str),
            &grants,
            &owner,
            Some(&dest_bucket.owner),
            &self.users,
        )?;
        // The copy keeps the source's checksum algorithms unless the request names one.
        let mut algorithms: Vec<Algorithm> =
            src.record.attrs.checksums.values.keys().filter_map(|k| Algorithm::parse(k)).collect();
        if let Some(a) = &i.checksum_algorithm {
            algorithms =
                vec![Algorithm::parse(a.as_str()).ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm not supported"))?];
        }
        if algorithms.is_empty() {
            algorithms.push(Algorithm::Crc64Nvme);
        }
        let size = src.record.size;
        let (ingested, digest) = match &src.record.layout {
            BodyLayout::Inline(data) => {
                let chunk: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::from(data.clone()));
                self.store.ingest(futures::stream::iter([chunk]), &algorithms, Some(size), MAX_PUT_SIZE, true).await.s3()?
            }
            BodyLayout::Parts { parts, .. } => {
                let reader = self.store.blobs.read_parts(parts.clone(), 0..size);
                self.store.ingest(reader, &algorithms, Some(size), MAX_PUT_SIZE, true).await.s3()?
            }
        };
        let cond = WriteConditions::default();
        let out = self.write_new_object(i.bucket.clone(), i.key.clone(), ingested, &digest, attrs, sc, owner, cond, None).await?;
        let [c32, c32c, c64, s1, s256] = checksum_fields(&out.attrs.checksums);
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&out.etag)),
                last_modified: Some(ts(out.mtime_us)),
                checksum_crc32: c32,
                checksum_crc32c: c32c,
                checksum_crc64nvme: c64,
                checksum_sha1: s1,
                checksum_sha256: s256,
                checksum_type: None,
            }),
            // Writes report a version id only while versioning is enabled (not for the null version).
            version_id: (dest_bucket.versioning == Versioning::Enabled).then(|| out.version_id.clone()),
            copy_source_version_id: src.versioned.then(|| src.record.version_id.clone()),
            ..Default::default()
        }))
    }
}
