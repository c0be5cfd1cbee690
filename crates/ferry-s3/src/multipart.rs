//! Multipart uploads. Parts are blob files; completing an upload writes one version whose body
//! is the list of chosen parts (no data is copied), with the S3 ETag `md5(part md5s)-N`.

use ferry_store::Error as StoreError;
use ferry_store::checksum::{Algorithm, composite_checksum, multipart_etag};
use ferry_store::model::{BodyLayout, ChecksumKind, Checksums, Origin, PartRecord, PartRef, UploadRecord, Versioning};
use ferry_store::objects::{NewVersion, WriteConditions, abort_upload, put_version};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::checksums::{ChecksumFields, ChecksumRequest, checksum_values, given_values, stored_checksums, with_checksums};
use crate::dto::{MAX_PUT_SIZE, check_key, etag, owner_dto, parse_tagging_header, ts};
use crate::dto::{raw_header, request_attrs, write_conditions};
use crate::error::{StoreResultExt, copy_error};
use crate::get::copy_conditions;
use crate::perm::grant_headers;
use crate::perm::{Perm, new_object_acl, requested_acl};
use crate::put::{require_length, storage_class, trailers};
use crate::replication::replica::ReplicaWrite;
use crate::sse::{Asked, customer_key_of, sse_headers};

/// Smallest size of every part but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Highest part number.
const MAX_PART_NUMBER: i32 = 10_000;

fn check_part_number(n: i32) -> S3Result<u32> {
    if (1..=MAX_PART_NUMBER).contains(&n) {
        Ok(u32::try_from(n).unwrap_or(1))
    } else {
        Err(s3_error!(
            InvalidArgument,
            "Part number must be an integer between 1 and 10000, inclusive"
        ))
    }
}

/// The ETag of a replica part that skipped MD5: the source's MD5 of it when the source knows
/// it, else the hex of the checksum that verified it (a part cut from a larger source body:
/// its ETag is used only to complete this upload, as the object keeps the source's ETag).
fn replica_part_etag(md5: String, digest: &ferry_store::checksum::DigestResult) -> String {
    use base64::Engine as _;
    if !md5.is_empty() {
        return md5;
    }
    let raw = digest.checksums.first().and_then(|(_, v)| base64::engine::general_purpose::STANDARD.decode(v).ok());
    hex::encode(raw.unwrap_or_default())
}

/// The checksums a request gave in headers (a replica part keeps the source's, not the ones
/// only computed to check the transfer).
fn given_checksums(checks: &ChecksumRequest) -> Checksums {
    Checksums {
        values: checks.given.iter().map(|(a, v)| (*a, v.clone())).collect(),
        kind: (!checks.given.is_empty()).then_some(ChecksumKind::FullObject),
    }
}

fn no_such_upload() -> s3s::S3Error {
    s3_error!(
        NoSuchUpload,
        "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
    )
}

impl FerryS3 {
    /// The upload, checked against the bucket and key of the request.
    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<UploadRecord> {
        let id = upload_id.to_owned();
        let u = self.store.meta.read(move |r| r.get_upload(&id)).await.s3()?;
        u.filter(|u| u.bucket == bucket && u.key == key).ok_or_else(no_such_upload)
    }

    pub(crate) async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        check_key(&req.input.key)?;
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let writer = self.user(&req).map_or_else(|| bucket.owner.clone(), |u| u.owner.clone());
        let grant_write = raw_header(&req, "x-amz-grant-write").map(str::to_owned);
        let origin = self.replication(&req).map(|r| Origin { region: r.source.region.clone(), bucket: r.source.bucket.clone() });
        // A peer's upload takes its lock from the replica header when it completes.
        let lock = match origin {
            None => crate::object_lock::write_lock!(self, &req, &bucket, req.input).await?,
            Some(_) => ferry_store::lock::LockAttrs::default(),
        };
        let customer = customer_key_of!(self, &req, req.input)?;
        let i = req.input;
        // One data key for the upload: each part is sealed under it and its own blob id.
        let enc = self.new_encryption(
            &bucket,
            Asked::of(i.server_side_encryption.as_ref(), i.ssekms_key_id.as_deref(), customer)?,
        )?;
        let checksum_algorithm = match &i.checksum_algorithm {
            Some(a) => {
                Some(Algorithm::parse(a.as_str()).ok_or_else(|| s3_error!(InvalidRequest, "Checksum algorithm not supported"))?)
            }
            None => None,
        };
        let checksum_kind = upload_checksum_kind(checksum_algorithm, i.checksum_type.as_ref())?;
        let canned = i.acl.as_ref().map(ObjectCannedACL::as_str);
        let grants = grant_headers!(i, grant_write.as_deref());
        // A peer's upload takes its owner and ACL from the replica header when it completes.
        let (owner, acl) = match origin {
            Some(_) => {
                let acl = requested_acl(canned, &grants, &writer, Some(&bucket.owner), &self.users)?;
                (writer, acl)
            }
            None => new_object_acl(&bucket, writer, canned, &grants, &self.users)?,
        };
        let tags = i.tagging.as_deref().map(parse_tagging_header).transpose()?.unwrap_or_default();
        let mut attrs = request_attrs!(i, tags, acl);
        attrs.lock = lock;
        attrs.sse = enc.as_ref().map(|e| e.record.clone());
        // A peer's upload remembers its source, so an abandoned one can be recognised and expired.
        attrs.origin = origin;
        // Until the upload completes, the kind of checksum the object will get.
        attrs.checksums.kind = checksum_kind;
        let upload = UploadRecord {
            upload_id: ferry_core::ids::new_upload_id(),
            bucket: i.bucket.clone(),
            key: i.key.clone(),
            initiated_us: 0,
            owner,
            storage_class: storage_class(i.storage_class.as_ref().map(StorageClass::as_str))?,
            attrs,
            checksum_algorithm,
        };
        let upload_id = upload.upload_id.clone();
        self.store
            .meta
            .write(move |tx| {
                if tx.get_bucket(&upload.bucket)?.is_none() {
                    return Err(StoreError::NoSuchBucket);
                }
                let now = tx.now();
                tx.put_upload(&UploadRecord { initiated_us: now, ..upload })
            })
            .await
            .s3()?;
        let answer = CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(upload_id),
            checksum_algorithm: checksum_algorithm.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
            checksum_type: checksum_kind.map(|k| ChecksumType::from(k.as_str().to_owned())),
            ..Default::default()
        };
        let record = enc.as_ref().map(|e| e.record.clone());
        Ok(S3Response::new(sse_headers!(answer, record.as_ref(), enc.and_then(|e| e.customer_md5))))
    }

    pub(crate) async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        check_key(&req.input.key)?;
        require_length(&req.headers)?;
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let part_number = check_part_number(req.input.part_number)?;
        let upload = self.upload(&req.input.bucket, &req.input.key, &req.input.upload_id).await?;
        let replica_part = self.replica_part_of(&req, &bucket)?;
        let i = &req.input;
        let customer = customer_key_of!(self, &req, i)?;
        let seal = self.upload_key(upload.attrs.sse.as_ref(), customer.as_ref())?;
        let mut checks = ChecksumRequest::new(
            &req.headers,
            i.checksum_algorithm.as_ref(),
            checksum_values!(i),
            i.content_md5.as_deref(),
            false,
        )?;
        if let Some(a) = upload.checksum_algorithm {
            checks.algorithms.push(a);
        }
        let expected_len = i.content_length.and_then(|n| u64::try_from(n).ok());
        // A replica part verified by a checksum skips MD5, the slowest hash (see [`replica_part_etag`]).
        let replica_part = replica_part.filter(|_| checks.content_md5.is_none() && checks.has_checksum(&req.headers));
        let digest = ferry_store::checksum::BodyDigest::with_md5(&checks.algorithms, replica_part.is_none());
        let body = req.input.body.take().ok_or_else(|| s3_error!(IncompleteBody, "The request body is missing"))?;
        let (ingested, digest) =
            self.store.ingest_digest(body, digest, expected_len, MAX_PUT_SIZE, false, seal.as_ref()).await.s3()?;
        let checked = checks.verify(&digest, trailers(&req).as_ref())?;
        let (part_etag, checksums) = match replica_part {
            None => (digest.md5_hex(), stored_checksums(&digest)),
            Some(_) if checked == 0 => {
                return Err(s3_error!(BadDigest, "A replica part must carry the checksum it declares"));
            }
            Some(md5) => (replica_part_etag(md5, &digest), given_checksums(&checks)),
        };
        let part = PartRecord {
            upload_id: upload.upload_id.clone(),
            part_number,
            mtime_us: 0,
            part: PartRef {
                blob: ingested.layout(digest.len, "").blobs().into_iter().next().unwrap_or_default(),
                size: digest.len,
                etag: part_etag.clone(),
                checksums: (!checksums.values.is_empty()).then(|| checksums.clone()),
            },
        };
        self.commit_part(part, ingested).await?;
        let answer = with_checksums!(
            UploadPartOutput { e_tag: Some(etag(&part_etag)) },
            ChecksumFields::of(&checksums),
            ..Default::default()
        );
        Ok(S3Response::new(sse_headers!(answer, upload.attrs.sse.as_ref(), customer.map(|c| c.md5))))
    }

    /// Records an uploaded part (replacing a previous upload of the same number), its body
    /// settled by the transaction.
    async fn commit_part(&self, part: PartRecord, body: ferry_store::Ingested) -> S3Result<()> {
        self.store
            .write_with_body(body, move |tx| {
                if tx.get_upload(&part.upload_id)?.is_none() {
                    return Err(StoreError::NoSuchUpload);
                }
                tx.add_blob(&part.part.blob)?;
                let now = tx.now();
                if let Some(old) = tx.put_part(&PartRecord { mtime_us: now, ..part })? {
                    ferry_store::gc::release_blob(tx, &old.part.blob)?;
                }
                Ok(())
            })
            .await
            .s3()
    }

    pub(crate) async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        check_key(&req.input.key)?;
        self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let part_number = check_part_number(req.input.part_number)?;
        let upload = self.upload(&req.input.bucket, &req.input.key, &req.input.upload_id).await?;
        let i = &req.input;
        let customer = customer_key_of!(self, &req, i)?;
        let seal = self.upload_key(upload.attrs.sse.as_ref(), customer.as_ref())?;
        let source_customer = customer_key_of!(self, &req, i, copy_source)?;
        let (src, _) = self.copy_source(&req, &i.copy_source, copy_conditions!(i)).await?;
        let source_key = self.data_key(src.record.attrs.sse.as_ref(), source_customer.as_ref())?;
        let size = src.record.size;
        let range = match &i.copy_source_range {
            None => 0..size,
            Some(r) => parse_copy_range(r, size)?,
        };
        let len = range.end - range.start;
        let mut algorithms = Vec::new();
        if let Some(a) = upload.checksum_algorithm {
            algorithms.push(a);
        }
        let reader = self.store.read_body(&src.record.layout, range, source_key.as_ref());
        let (ingested, digest) =
            self.store.ingest(reader, &algorithms, Some(len), MAX_PUT_SIZE, false, seal.as_ref()).await.map_err(copy_error)?;
        let checksums = stored_checksums(&digest);
        let part = PartRecord {
            upload_id: upload.upload_id.clone(),
            part_number,
            mtime_us: 0,
            part: PartRef {
                blob: ingested.layout(digest.len, "").blobs().into_iter().next().unwrap_or_default(),
                size: digest.len,
                etag: digest.md5_hex(),
                checksums: (!checksums.values.is_empty()).then_some(checksums.clone()),
            },
        };
        self.commit_part(part, ingested).await?;
        let answer = UploadPartCopyOutput {
            copy_part_result: Some(with_checksums!(
                CopyPartResult { e_tag: Some(etag(&digest.md5_hex())), last_modified: Some(ts(ferry_core::time::now_micros())) },
                ChecksumFields::of(&checksums)
            )),
            copy_source_version_id: src.versioned.then(|| src.record.version_id.clone()),
            ..Default::default()
        };
        Ok(S3Response::new(sse_headers!(answer, upload.attrs.sse.as_ref(), customer.map(|c| c.md5))))
    }

    pub(crate) async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        check_key(&req.input.key)?;
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let replica = self.replica_of(&req, &bucket)?;
        // Completing reads no body, so an SSE-C upload completes without its key, as on AWS
        // (Ceph asks for it); a key that is sent must be the upload's.
        let customer = customer_key_of!(self, &req, req.input)?;
        if customer.is_some() {
            let upload = self.upload(&req.input.bucket, &req.input.key, &req.input.upload_id).await?;
            self.upload_key(upload.attrs.sse.as_ref(), customer.as_ref())?;
        }
        let bucket_owner = bucket.owner.clone();
        let i = req.input;
        let requested: Vec<CompletedPart> = i.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if requested.is_empty() {
            return Err(s3_error!(MalformedXML, "You must specify at least one part"));
        }
        let mut wanted: Vec<WantedPart> = Vec::with_capacity(requested.len());
        for p in &requested {
            let n = p.part_number.ok_or_else(|| s3_error!(MalformedXML, "PartNumber is required"))?;
            let n = check_part_number(n)?;
            if wanted.last().is_some_and(|prev| prev.number >= n) {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "The list of parts was not in ascending order. The parts list must be specified in order by part number."
                ));
            }
            wanted.push(WantedPart {
                number: n,
                etag: p.e_tag.as_ref().map(|e| e.value().to_owned()).unwrap_or_default(),
                checksums: given_values(checksum_values!(p)),
            });
        }
        let claimed = given_values(checksum_values!(i));
        let cond = write_conditions(i.if_match.as_ref(), i.if_none_match.as_ref());
        let (bucket_name, key, upload_id) = (i.bucket.clone(), i.key.clone(), i.upload_id.clone());
        let outcome = self
            .store
            .meta
            .write(move |tx| {
                let asked = Completion { wanted: &wanted, claimed: &claimed, cond: &cond };
                complete_in_tx(tx, &bucket_name, &key, &upload_id, &asked, replica.as_ref(), &bucket_owner)
            })
            .await;
        let record = match outcome {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(crate::error::to_s3(e)),
        };
        let answer = with_checksums!(
            CompleteMultipartUploadOutput {
                bucket: Some(i.bucket.clone()),
                key: Some(i.key.clone()),
                e_tag: Some(etag(&record.etag)),
                // Writes report a version id only while versioning is enabled (not for the null version).
                version_id: (bucket.versioning == Versioning::Enabled).then(|| record.version_id.clone()),
                location: Some(format!("/{}/{}", i.bucket, i.key)),
                checksum_type: record.attrs.checksums.kind.map(|k| ChecksumType::from(k.as_str().to_owned())),
            },
            ChecksumFields::of(&record.attrs.checksums),
            ..Default::default()
        );
        // This answer has no SSE-C fields (the parts' answers had them).
        let sse = record.attrs.sse.as_ref();
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            server_side_encryption: sse.and_then(|e| e.kind.header()).map(|h| ServerSideEncryption::from(h.to_owned())),
            ssekms_key_id: sse.filter(|e| e.kind == ferry_store::sse::SseKind::Kms).and_then(|e| e.kek.clone()),
            ..answer
        }))
    }

    pub(crate) async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        check_key(&req.input.key)?;
        self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let upload = self.upload(&req.input.bucket, &req.input.key, &req.input.upload_id).await?;
        self.store.meta.write(move |tx| abort_upload(tx, &upload.upload_id)).await.s3()?;
        let mut resp = S3Response::new(AbortMultipartUploadOutput::default());
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }

    pub(crate) async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        let i = req.input;
        let upload = self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let max = match i.max_parts {
            None => 1000,
            Some(n) if n < 0 => return Err(s3_error!(InvalidArgument, "max-parts must be a non-negative integer")),
            Some(n) => usize::try_from(n).unwrap_or(1000).min(1000),
        };
        let after: u32 = match i.part_number_marker {
            None => 0,
            Some(m) => u32::try_from(m).map_err(|_| s3_error!(InvalidArgument, "Invalid part number marker"))?,
        };
        let id = upload.upload_id.clone();
        let mut parts = self.store.meta.read(move |r| r.list_parts(&id, after, max + 1)).await.s3()?;
        let truncated = parts.len() > max;
        parts.truncate(max);
        let next = if truncated { parts.last().and_then(|p| i32::try_from(p.part_number).ok()) } else { None };
        let dto_parts = parts
            .iter()
            .map(|p| {
                with_checksums!(
                    Part {
                        part_number: i32::try_from(p.part_number).ok(),
                        e_tag: Some(etag(&p.part.etag)),
                        size: i64::try_from(p.part.size).ok(),
                        last_modified: Some(ts(p.mtime_us)),
                    },
                    ChecksumFields::of(&p.part.checksums.clone().unwrap_or_default())
                )
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(upload.upload_id),
            max_parts: i32::try_from(max).ok(),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(dto_parts),
            initiator: Some(Initiator {
                id: Some(upload.owner.id.clone()),
                display_name: Some(upload.owner.display_name.clone()),
            }),
            owner: Some(owner_dto(&upload.owner)),
            storage_class: Some(StorageClass::from(upload.storage_class.unwrap_or_else(|| "STANDARD".to_owned()))),
            checksum_algorithm: upload.checksum_algorithm.map(|a| ChecksumAlgorithm::from(a.name().to_owned())),
            ..Default::default()
        }))
    }
}

/// One part a CompleteMultipartUpload lists.
#[derive(Debug)]
struct WantedPart {
    number: u32,
    /// Empty when not given.
    etag: String,
    checksums: Vec<(Algorithm, String)>,
}

impl WantedPart {
    /// Whether the uploaded part is the one listed: its ETag and the checksums given.
    fn matches(&self, p: &PartRef) -> bool {
        let stored = |a: &Algorithm| p.checksums.as_ref().and_then(|c| c.values.get(a));
        (self.etag.is_empty() || self.etag == p.etag) && self.checksums.iter().all(|(a, v)| stored(a).is_none_or(|s| s == v))
    }
}

/// What a CompleteMultipartUpload asks: the parts, the whole object's checksum it claims, and
/// its write conditions.
#[derive(Debug)]
struct Completion<'a> {
    wanted: &'a [WantedPart],
    claimed: &'a [(Algorithm, String)],
    cond: &'a WriteConditions,
}

/// Completes an upload inside a transaction. The outer `Result` is the store's (rolls back);
/// the inner one carries S3 validation errors, which also leave nothing changed.
/// With `replica` (a completion sent by a peer), the version keeps the source's id, time, ETag,
/// owner (or `bucket_owner` under an owner override) and ACL.
fn complete_in_tx(
    tx: &mut dyn ferry_store::meta::WriteTx,
    bucket: &str,
    key: &str,
    upload_id: &str,
    asked: &Completion<'_>,
    replica: Option<&ReplicaWrite>,
    bucket_owner: &ferry_store::model::Owner,
) -> ferry_store::Result<S3Result<ferry_store::model::VersionRecord>> {
    let Some(upload) = tx.get_upload(upload_id)?.filter(|u| u.bucket == bucket && u.key == key) else {
        // A retried completion whose answer was lost: the version it made, while it is the newest.
        let made = tx.get_latest(bucket, key)?.filter(|v| !v.delete_marker && v.attrs.upload_id.as_deref() == Some(upload_id));
        return Ok(made.ok_or_else(no_such_upload));
    };
    let (wanted, cond, claimed) = (asked.wanted, asked.cond, asked.claimed);
    let stored = tx.list_parts(upload_id, 0, 20_000)?;
    let mut chosen: Vec<PartRef> = Vec::with_capacity(wanted.len());
    for (idx, w) in wanted.iter().enumerate() {
        let found = stored.iter().find(|p| p.part_number == w.number).filter(|p| w.matches(&p.part));
        let Some(p) = found else {
            return Ok(Err(s3_error!(
                InvalidPart,
                "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag."
            )));
        };
        if idx + 1 < wanted.len() && p.part.size < MIN_PART_SIZE {
            return Ok(Err(s3_error!(
                EntityTooSmall,
                "Your proposed upload is smaller than the minimum allowed object size."
            )));
        }
        chosen.push(p.part.clone());
    }
    let etags: Vec<&str> = chosen.iter().map(|p| p.etag.as_str()).collect();
    let Some(etag) = multipart_etag(&etags) else {
        return Ok(Err(s3_error!(InvalidPart, "A part has an invalid ETag")));
    };
    let mut attrs = upload.attrs.clone();
    attrs.checksums = Checksums::default();
    if let Some(a) = upload.checksum_algorithm {
        let kind = upload.attrs.checksums.kind.unwrap_or(ChecksumKind::Composite);
        if let Some(c) = parts_checksum(&chosen, a, kind) {
            if let Err(e) = check_claimed(claimed, a, &c) {
                return Ok(Err(e));
            }
            attrs.checksums = Checksums { values: [(a, c)].into_iter().collect(), kind: Some(kind) };
        }
    }
    let size = chosen.iter().map(|p| p.size).sum();
    attrs.upload_id = Some(upload_id.to_owned());
    let mut owner = upload.owner.clone();
    if let Some(r) = replica {
        let m = &r.meta;
        owner = m.owner.clone().unwrap_or_else(|| bucket_owner.clone());
        attrs.acl = m.acl.clone().unwrap_or_else(|| ferry_store::model::Acl::private(&owner));
        (attrs.tags_us, attrs.acl_us) = (m.tags_us, m.acl_us);
        attrs.lock = m.lock;
        if let Some(c) = &m.checksums {
            if let Err(why) = parts_make_up(&chosen, c) {
                return Ok(Err(s3_error!(BadDigest, "{why}")));
            }
            attrs.checksums = c.clone();
        }
    }
    let new = NewVersion {
        key: key.to_owned(),
        size,
        etag: replica.and_then(|r| r.meta.etag.clone()).unwrap_or(etag),
        storage_class: upload.storage_class.clone(),
        owner,
        layout: BodyLayout::Parts { parts: chosen.clone(), multipart: true },
        attrs,
        repl_status: replica.map(|_| ferry_store::model::ReplStatus::Replica),
        replica: replica.map(ReplicaWrite::identity),
    };
    let record = match put_version(tx, bucket, new, cond) {
        Ok(r) => r,
        Err(StoreError::PreconditionFailed) => return Ok(Err(crate::error::to_s3(StoreError::PreconditionFailed))),
        Err(StoreError::NoSuchKey) => return Ok(Err(crate::error::to_s3(StoreError::NoSuchKey))),
        Err(e) => return Err(e),
    };
    // Every part the version does not reference is released: the ones not chosen, and all of
    // them when the version was already there (a replica delivered twice).
    let kept = record.layout.blobs();
    for p in tx.take_parts(upload_id)? {
        if !kept.contains(&p.part.blob) {
            ferry_store::gc::release_blob(tx, &p.part.blob)?;
        }
    }
    tx.delete_upload(upload_id)?;
    Ok(Ok(record))
}

/// Checks that the parts of a multipart replica make up the source object: its full-object CRC
/// (combined from the parts' CRCs of the same algorithm) or its composite checksum (recomputed
/// from the parts' checksums) must equal the one the source stored. Parts without a checksum
/// of that algorithm cannot be checked this way (the source sends one whenever it can).
/// The object's checksum from its parts' ones: the checksum of their checksums (`value-N`), or
/// their CRCs combined into the whole body's. `None` when a part lacks one, or for a full-object
/// SHA (which only the bytes give).
fn parts_checksum(parts: &[PartRef], alg: Algorithm, kind: ChecksumKind) -> Option<String> {
    let values: Vec<(&str, u64)> = parts
        .iter()
        .map(|p| p.checksums.as_ref().and_then(|c| c.values.get(&alg)).map(|v| (v.as_str(), p.size)))
        .collect::<Option<_>>()?;
    match kind {
        ChecksumKind::Composite => composite_checksum(alg, &values.iter().map(|(v, _)| *v).collect::<Vec<_>>()),
        ChecksumKind::FullObject => ferry_store::checksum::combine_crcs(alg, &values),
    }
}

/// The kind of checksum an upload's object gets: `x-amz-checksum-type` if given (FULL_OBJECT
/// only for a CRC, COMPOSITE not for CRC64NVME), else FULL_OBJECT for CRC64NVME and COMPOSITE
/// for the others, as S3 decides.
fn upload_checksum_kind(alg: Option<Algorithm>, asked: Option<&ChecksumType>) -> S3Result<Option<ChecksumKind>> {
    let Some(alg) = alg else {
        return match asked {
            Some(_) => Err(s3_error!(
                InvalidRequest,
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            )),
            None => Ok(None),
        };
    };
    let crc = matches!(alg, Algorithm::Crc32 | Algorithm::Crc32c | Algorithm::Crc64Nvme);
    let kind = match asked.map(ChecksumType::as_str) {
        None if alg == Algorithm::Crc64Nvme => ChecksumKind::FullObject,
        None | Some(ChecksumType::COMPOSITE) if alg != Algorithm::Crc64Nvme => ChecksumKind::Composite,
        Some(ChecksumType::FULL_OBJECT) if crc => ChecksumKind::FullObject,
        Some(t) if t != ChecksumType::COMPOSITE && t != ChecksumType::FULL_OBJECT => {
            return Err(s3_error!(InvalidRequest, "Value for x-amz-checksum-type header is invalid."));
        }
        _ => {
            let (name, t) = (alg.name(), asked.map_or("COMPOSITE", ChecksumType::as_str));
            return Err(s3_error!(InvalidRequest, "The {name} algorithm does not support the {t} checksum type."));
        }
    };
    Ok(Some(kind))
}

/// Checks the whole-object checksum a CompleteMultipartUpload claims against the one its parts
/// give: only the upload's algorithm may be claimed; a composite value may come with or without
/// its `-N`.
fn check_claimed(claimed: &[(Algorithm, String)], alg: Algorithm, computed: &str) -> S3Result<()> {
    for (a, v) in claimed {
        if *a != alg {
            return Err(s3_error!(
                InvalidRequest,
                "The upload was created using the {} checksum algorithm; the complete request gives {}.",
                alg.name(),
                a.name()
            ));
        }
        let bare = computed.split_once('-').map_or(computed, |(b, _)| b);
        if v != computed && v != bare {
            return Err(s3_error!(
                BadDigest,
                "The {} you specified did not match the calculated checksum.",
                alg.name()
            ));
        }
    }
    Ok(())
}

fn parts_make_up(parts: &[PartRef], source: &Checksums) -> Result<(), String> {
    for (&alg, expected) in &source.values {
        let got = parts_checksum(parts, alg, source.kind.unwrap_or(ChecksumKind::FullObject));
        if got.is_some_and(|g| g != *expected) {
            let name = alg.name();
            return Err(format!(
                "The parts do not make up the source object: its {name} is {expected}, the parts give another"
            ));
        }
    }
    Ok(())
}

/// Parses `x-amz-copy-source-range: bytes=first-last` against the source size.
fn parse_copy_range(r: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        )
    };
    let spec = r.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = a.trim().parse().map_err(|_| bad())?;
    let last: u64 = b.trim().parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(InvalidRange, "The requested range is not satisfiable"));
    }
    Ok(first..last + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges() {
        assert_eq!(parse_copy_range("bytes=0-9", 10).unwrap(), 0..10);
        assert!(parse_copy_range("bytes=0-10", 10).is_err());
        assert!(parse_copy_range("bytes=5-4", 10).is_err());
        assert!(parse_copy_range("0-4", 10).is_err());
    }
}
