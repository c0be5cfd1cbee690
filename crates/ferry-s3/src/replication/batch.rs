//! Batches of small replicas from a Ferry peer: `POST /BUCKET?ferry-replicas`.
//!
//! A busy source sends many small replicas to the same bucket; one request each costs the
//! destination an HTTP exchange, a SigV4 check and, at the rates where it matters, a commit
//! each. A batch carries up to [`MAX_BATCH_ENTRIES`] of them in one signed request (the wire
//! layout is `ferry_store::replication::wire::batch`); this route applies each entry as the
//! PutObject it stands for, all at once, so the group-commit writer commits them together.
//!
//! # Invariants
//! 1. Only a replication credential may send a batch, under SigV4 header authentication with
//!    the payload's SHA-256 and the [`SOURCE_HEADER`] signed: the entries' headers and bodies
//!    are covered by that signature (s3s checks the hash as it reads the body). Anything else
//!    is refused with AccessDenied before the body is read.
//! 2. An entry is exactly a replica PutObject: the same checks (the bucket accepts the source,
//!    the replica header decodes, its times are within the clock skew, checksums match) and the
//!    same store write (idempotent), by [`FerryS3::put_object`] itself. It may carry only the
//!    headers the single request carries, and of Ferry's headers only the [`REPLICA_HEADER`]:
//!    the source is the batch's.
//! 3. Each entry gets its own result (the status and S3 code the single request would have
//!    answered); one entry's failure never changes another's.
//! 4. Bounded: a batch body is at most [`MAX_BATCH_BYTES`], refused before it is read when its
//!    length says more.

use ferry_store::replication::wire::batch::{
    self, BATCH_QUERY, BatchAnswer, BatchEntry, BatchResult, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES,
};
use ferry_store::replication::{REPLICA_HEADER, SOURCE_HEADER};
use http::{HeaderMap, Method, Uri};
use s3s::dto::{PutObjectInput, ServerSideEncryption, StorageClass, StreamingBlob, Timestamp, TimestampFormat};
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::bucket_access::CheckedBucket;
use crate::error::StoreResultExt as _;
use crate::replication::replica::{ReplicationRequest, check_request, denied};

/// The route of replica batches.
pub(crate) struct BatchRoute {
    pub(crate) s3: FerryS3,
}

/// True for a replica batch request.
pub(crate) fn is_batch(method: &Method, uri: &Uri) -> bool {
    method == Method::POST && uri.query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some(BATCH_QUERY)))
}

impl BatchRoute {
    /// Invariant 1: who may send a batch; the source it speaks for.
    pub(crate) fn check(&self, req: &S3Request<Body>) -> S3Result<ReplicationRequest> {
        let replicator = req.credentials.as_ref().and_then(|c| self.s3.users.get(&c.access_key)).is_some_and(|u| u.replication);
        if !replicator {
            return Err(denied("Only a replication credential may send replica batches"));
        }
        crate::auth::check_signed_region(&self.s3.region, &req.headers, &req.uri)?;
        if !crate::auth::signs_payload(&req.headers) {
            return Err(denied("A replica batch must be signed with its payload's SHA-256"));
        }
        check_request(true, "PutObject", &req.method, &req.uri, &req.headers)?
            .ok_or_else(|| denied("A replica batch must name its source"))
    }

    pub(crate) async fn call(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let source = self.check(&req)?;
        let bucket_name = crate::replication::admin::bucket_of(&req.uri)?;
        let declared = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BATCH_BYTES as u64) {
            return Err(s3_error!(EntityTooLarge, "A replica batch is at most {MAX_BATCH_BYTES} bytes"));
        }
        // s3s checks the body against its signed SHA-256 as it is read, and requires a length
        // with a signed payload: a read fails only on a body that does not match its hash (or
        // ends early).
        let body = req.input.store_all_limited(MAX_BATCH_BYTES).await.map_err(|_| crate::error::sha256_mismatch())?;
        let entries = batch::decode(&body).s3()?;
        // One read of the bucket for every entry (a single PUT reads it once too); each write
        // reads it again in its own transaction.
        let bucket = self.s3.load_bucket(&bucket_name).await?;
        let applied = entries.into_iter().map(|e| self.apply(&req, &source, &bucket, e));
        let results = futures::future::join_all(applied).await;
        debug_assert!(results.len() <= MAX_BATCH_ENTRIES);
        let text =
            serde_json::to_string(&BatchAnswer { results }).map_err(|e| s3_error!(InternalError, "encoding the answer: {e}"))?;
        let mut resp = S3Response::new(Body::from(text));
        resp.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Ok(resp)
    }

    /// Applies one entry as the PutObject it stands for.
    async fn apply(
        &self,
        batch: &S3Request<Body>,
        source: &ReplicationRequest,
        bucket: &ferry_store::model::BucketRecord,
        entry: BatchEntry,
    ) -> BatchResult {
        let outcome = async {
            let mut req = put_request(batch, &bucket.name, entry)?;
            req.extensions.insert(source.clone());
            req.extensions.insert(CheckedBucket(bucket.clone()));
            if let Some(client) = batch.extensions.get::<crate::ClientInfo>() {
                req.extensions.insert(*client);
            }
            self.s3.put_object(req).await
        }
        .await;
        match outcome {
            Ok(_) => BatchResult { status: 200, code: String::new(), message: String::new() },
            Err(e) => BatchResult {
                status: e.status_code().or_else(|| e.code().status_code()).map_or(500, |s| s.as_u16()),
                code: e.code().as_str().to_owned(),
                message: e.message().unwrap_or_default().to_owned(),
            },
        }
    }
}

/// The PutObject request an entry stands for (invariant 2): its headers as the request's,
/// read into the input as s3s reads them. A header the single request never carries is refused.
fn put_request(batch: &S3Request<Body>, bucket: &str, entry: BatchEntry) -> S3Result<S3Request<PutObjectInput>> {
    let BatchEntry { head, body } = entry;
    let mut headers = HeaderMap::new();
    let mut input = PutObjectInput { bucket: bucket.to_owned(), key: head.key.clone(), ..Default::default() };
    let bad = |name: &str, why: &str| s3_error!(InvalidArgument, "replica batch entry {}: header {name}: {why}", head.key);
    for (name, value) in &head.headers {
        let v = value.clone();
        match name.as_str() {
            "content-length" => {
                let n: i64 = value.parse().map_err(|_| bad(name, "not a length"))?;
                if u64::try_from(n).ok() != Some(body.len() as u64) {
                    return Err(s3_error!(IncompleteBody, "The entry's body is not its Content-Length"));
                }
                input.content_length = Some(n);
            }
            "content-type" => input.content_type = Some(v),
            "content-encoding" => input.content_encoding = Some(v),
            "content-disposition" => input.content_disposition = Some(v),
            "content-language" => input.content_language = Some(v),
            "cache-control" => input.cache_control = Some(v),
            "content-md5" => input.content_md5 = Some(v),
            "expires" => {
                input.expires =
                    Some(Timestamp::parse(TimestampFormat::HttpDate, value).map_err(|_| bad(name, "not an HTTP date"))?);
            }
            "x-amz-website-redirect-location" => input.website_redirect_location = Some(v),
            "x-amz-tagging" => input.tagging = Some(v),
            "x-amz-storage-class" => input.storage_class = Some(StorageClass::from(v)),
            "x-amz-server-side-encryption" => input.server_side_encryption = Some(ServerSideEncryption::from(v)),
            "x-amz-server-side-encryption-aws-kms-key-id" => input.ssekms_key_id = Some(v),
            "x-amz-checksum-crc32" => input.checksum_crc32 = Some(v),
            "x-amz-checksum-crc32c" => input.checksum_crc32c = Some(v),
            "x-amz-checksum-crc64nvme" => input.checksum_crc64nvme = Some(v),
            "x-amz-checksum-sha1" => input.checksum_sha1 = Some(v),
            "x-amz-checksum-sha256" => input.checksum_sha256 = Some(v),
            REPLICA_HEADER => {}
            _ => match name.strip_prefix("x-amz-meta-") {
                Some(meta) if !meta.is_empty() => {
                    input.metadata.get_or_insert_with(Default::default).insert(meta.to_owned(), v);
                }
                _ => return Err(bad(name, "not a header a replica batch entry may carry")),
            },
        }
        let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad(name, "not a header name"))?;
        let value = http::HeaderValue::from_str(value).map_err(|_| bad(name.as_str(), "not a header value"))?;
        headers.append(name, value);
    }
    if input.content_length.is_none() {
        return Err(s3_error!(MissingContentLength, "replica batch entry {}: no Content-Length", head.key));
    }
    debug_assert!(!headers.contains_key(SOURCE_HEADER));
    let blob = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    input.body = Some(StreamingBlob::wrap(blob));
    let path = format!(
        "/{bucket}/{}",
        percent_encoding::utf8_percent_encode(&head.key, percent_encoding::NON_ALPHANUMERIC)
    );
    Ok(S3Request {
        input,
        method: Method::PUT,
        uri: path.parse().map_err(|_| s3_error!(InvalidArgument, "replica batch entry {}: bad key", head.key))?,
        headers,
        extensions: http::Extensions::new(),
        credentials: batch.credentials.clone(),
        region: batch.region.clone(),
        service: batch.service.clone(),
        trailing_headers: None,
    })
}

/// Ferry's routes beside S3: the admin API and replica batches.
pub(crate) struct Routes {
    pub(crate) admin: crate::replication::admin::AdminRoute,
    pub(crate) batch: BatchRoute,
}

#[async_trait::async_trait]
impl s3s::route::S3Route for Routes {
    fn is_match(&self, method: &Method, uri: &Uri, headers: &HeaderMap, extensions: &mut http::Extensions) -> bool {
        is_batch(method, uri) || self.admin.is_match(method, uri, headers, extensions)
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        if is_batch(&req.method, &req.uri) { self.batch.call(req).await } else { self.admin.call(req).await }
    }
}
