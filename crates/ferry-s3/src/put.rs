//! PutObject and CopyObject, and the body checks they share with UploadPart: Content-MD5,
//! flexible checksums (header or trailer), storage classes.

use ferry_store::Ingested;
use ferry_store::checksum::{Algorithm, DigestResult};
use ferry_store::model::{ObjectAttrs, Versioning};
use ferry_store::objects::{NewVersion, WriteConditions, put_version};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::checksums::{ChecksumFields, ChecksumRequest, checksum_values, stored_checksums, with_checksums};
use crate::dto::{MAX_PUT_SIZE, check_key, etag, parse_tagging_header, ts};
use crate::dto::{raw_header, request_attrs, write_conditions};
use crate::error::{StoreResultExt, copy_error};
use crate::get::copy_conditions;
use crate::perm::grant_headers;
use crate::perm::{Perm, new_object_acl};
use crate::replication::replica::ReplicaWrite;
use crate::sse::{Asked, customer_key_of, sse_headers};

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
        let writer = self.user(&req).map_or_else(|| bucket.owner.clone(), |u| u.owner.clone());
        let i = &req.input;
        let customer = customer_key_of!(self, &req, i)?;
        let asked = Asked::of(i.server_side_encryption.as_ref(), i.ssekms_key_id.as_deref(), customer)?;
        let lock = match &replica {
            None => crate::object_lock::write_lock!(self, &req, &bucket, i).await?,
            Some(r) => r.meta.lock,
        };
        let storage_class = storage_class(i.storage_class.as_ref().map(StorageClass::as_str))?;
        let checks = ChecksumRequest::new(
            &req.headers,
            i.checksum_algorithm.as_ref(),
            checksum_values!(i),
            i.content_md5.as_deref(),
            true,
        )?;
        let tags = i.tagging.as_deref().map(parse_tagging_header).transpose()?.unwrap_or_default();
        let grants = grant_headers!(i, raw_header(&req, "x-amz-grant-write"));
        let (owner, acl) = match &replica {
            Some(r) => r.owner_acl(&bucket),
            None => new_object_acl(&bucket, writer, i.acl.as_ref().map(ObjectCannedACL::as_str), &grants, &self.users)?,
        };
        let mut attrs = request_attrs!(i, tags, acl);
        attrs.lock = lock;
        let enc = self.new_encryption(&bucket, asked)?;
        attrs.sse = enc.as_ref().map(|e| e.record.clone());
        let cond = write_conditions(i.if_match.as_ref(), i.if_none_match.as_ref());
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
        let seal = enc.as_ref().map(|e| &e.key);
        let (ingested, digest) = self.store.ingest_digest(body, digest, expected_len, MAX_PUT_SIZE, true, seal).await.s3()?;
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
        let customer_md5 = enc.and_then(|e| e.customer_md5);
        let answer = with_checksums!(
            PutObjectOutput {
                e_tag: Some(etag(&out.etag)),
                // Writes report a version id only while versioning is enabled (not for the null version).
                version_id: (bucket.versioning == Versioning::Enabled).then(|| out.version_id.clone()),
                checksum_type: out.attrs.checksums.kind.map(|k| ChecksumType::from(k.as_str().to_owned())),
                size: i64::try_from(out.size).ok(),
                expiration: crate::lifecycle::expiration_header(&bucket, &out, self.lifecycle_day_us),
            },
            ChecksumFields::of(&out.attrs.checksums),
            ..Default::default()
        );
        Ok(S3Response::new(sse_headers!(answer, out.attrs.sse.as_ref(), customer_md5)))
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
        let writer = self.require_user(&req)?.owner.clone();
        let i = &req.input;
        let customer = customer_key_of!(self, &req, i)?;
        let asked = Asked::of(i.server_side_encryption.as_ref(), i.ssekms_key_id.as_deref(), customer)?;
        let source_customer = customer_key_of!(self, &req, i, copy_source)?;
        let (src, (src_bucket, src_key, src_vid)) = self.copy_source(&req, &i.copy_source, copy_conditions!(i)).await?;
        let source_key = self.data_key(src.record.attrs.sse.as_ref(), source_customer.as_ref())?;
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
        // A copy onto itself may change only its encryption: what it asks for (or the bucket's
        // default) against what the source has.
        let reencrypt = match (&asked, &dest_bucket.config.encryption) {
            (Asked::Default, None) => false,
            (Asked::Default, Some(d)) => {
                let src_enc = src.record.attrs.sse.as_ref();
                src_enc.is_none_or(|e| e.kind != d.kind || (d.kms_key.is_some() && d.kms_key != e.kek))
            }
            _ => true,
        };
        if same_object && !replace_meta && sc == src.record.storage_class && i.website_redirect_location.is_none() && !reencrypt {
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
        let tags = if replace_tags {
            i.tagging.as_deref().map(parse_tagging_header).transpose()?.unwrap_or_default()
        } else {
            src.record.attrs.tags.clone()
        };
        let (owner, acl) = new_object_acl(
            &dest_bucket,
            writer,
            i.acl.as_ref().map(ObjectCannedACL::as_str),
            &grant_headers!(i, raw_header(&req, "x-amz-grant-write")),
            &self.users,
        )?;
        let mut attrs = if replace_meta {
            request_attrs!(i, tags, acl)
        } else {
            ObjectAttrs {
                website_redirect: i.website_redirect_location.clone().or(src.record.attrs.website_redirect.clone()),
                tags,
                acl,
                // The copy is this request's object: not a replica of where the source came
                // from, not the upload that made the source.
                origin: None,
                upload_id: None,
                ..src.record.attrs.clone()
            }
        };
        // The copy's lock is the one this request asks for, never the source's; so is its
        // encryption, with a data key of its own.
        attrs.lock = crate::object_lock::write_lock!(self, &req, &dest_bucket, i).await?;
        let enc = self.new_encryption(&dest_bucket, asked)?;
        attrs.sse = enc.as_ref().map(|e| e.record.clone());
        // The copy keeps the source's checksum algorithms unless the request names one.
        let mut algorithms: Vec<Algorithm> = src.record.attrs.checksums.values.keys().copied().collect();
        if let Some(a) = &i.checksum_algorithm {
            algorithms =
                vec![Algorithm::parse(a.as_str()).ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm not supported"))?];
        }
        if algorithms.is_empty() {
            algorithms.push(Algorithm::Crc64Nvme);
        }
        let size = src.record.size;
        let reader = self.store.read_body(&src.record.layout, 0..size, source_key.as_ref());
        let seal = enc.as_ref().map(|e| &e.key);
        let (ingested, digest) =
            self.store.ingest(reader, &algorithms, Some(size), MAX_PUT_SIZE, true, seal).await.map_err(copy_error)?;
        let cond = WriteConditions::default();
        let out = self.write_new_object(i.bucket.clone(), i.key.clone(), ingested, &digest, attrs, sc, owner, cond, None).await?;
        let answer = CopyObjectOutput {
            copy_object_result: Some(with_checksums!(
                CopyObjectResult { e_tag: Some(etag(&out.etag)), last_modified: Some(ts(out.mtime_us)), checksum_type: None },
                ChecksumFields::of(&out.attrs.checksums)
            )),
            // Writes report a version id only while versioning is enabled (not for the null version).
            version_id: (dest_bucket.versioning == Versioning::Enabled).then(|| out.version_id.clone()),
            copy_source_version_id: src.versioned.then(|| src.record.version_id.clone()),
            ..Default::default()
        };
        Ok(S3Response::new(sse_headers!(
            answer,
            out.attrs.sse.as_ref(),
            enc.and_then(|e| e.customer_md5)
        )))
    }
}
