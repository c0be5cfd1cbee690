//! Bucket operations: create, delete, head, list, location, versioning, tagging.

use ferry_store::Error as StoreError;
use ferry_store::model::{BucketRecord, ObjectOwnership, Versioning};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::{owner_dto, tags_from_dto, tags_to_dto, ts, validate_tags};
use crate::error::StoreResultExt;
use crate::perm::{Perm, grant_headers, refuse_public_acl, requested_acl};

/// Most tags on a bucket.
const MAX_BUCKET_TAGS: usize = 50;

/// The naming rule the request router does not check: each dot-separated label begins and ends
/// with a letter or digit (no `.-` or `-.`), so the name is a valid DNS host name.
fn dns_labels_ok(name: &str) -> bool {
    name.split('.').all(|label| !label.starts_with('-') && !label.ends_with('-'))
}

impl FerryS3 {
    pub(crate) async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        let user = self.require_user(&req)?.clone();
        let input = req.input;
        if !dns_labels_ok(&input.bucket) {
            return Err(s3_error!(InvalidBucketName, "The specified bucket is not valid."));
        }
        if let Some(loc) = input.create_bucket_configuration.as_ref().and_then(|c| c.location_constraint.as_ref()) {
            let loc = loc.as_str();
            let default_ok =
                loc == "us-east-1" && (self.region == "us-east-1" || self.region == ferry_core::config::DEFAULT_REGION);
            if !loc.is_empty() && loc != self.region && !default_ok {
                return Err(s3_error!(
                    IllegalLocationConstraintException,
                    "The {loc} location constraint is incompatible for the region specific endpoint this request was sent to ({}).",
                    self.region
                ));
            }
        }
        // Object Lock needs versioning, and keeps it enabled for good.
        let object_lock = input.object_lock_enabled_for_bucket == Some(true);
        let grants = grant_headers!(input);
        let acl = requested_acl(input.acl.as_ref().map(BucketCannedACL::as_str), &grants, &user.owner, None, &self.users)?;
        // A new bucket has no switches of its own: its owner's account's hold.
        refuse_public_acl(self.users.account_public_access_block(&user.owner.id), &acl)?;
        let ownership = match &input.object_ownership {
            Some(o) => Some(
                ObjectOwnership::parse(o.as_str())
                    .ok_or_else(|| s3_error!(InvalidArgument, "Unknown x-amz-object-ownership {}", o.as_str()))?,
            ),
            None => None,
        };
        if let Some(o) = ownership {
            crate::bucket_access::check_ownership_acl(o, &user.owner, &acl)?;
        }
        let config = ferry_store::model::BucketConfig {
            ownership,
            object_lock: object_lock.then(ferry_store::lock::ObjectLockConfig::default),
            ..Default::default()
        };
        let name = input.bucket;
        let owner = user.owner.clone();
        let result = self
            .store
            .meta
            .write(move |tx| {
                let now = tx.now();
                let created = tx.insert_bucket(&BucketRecord {
                    name: name.clone(),
                    created_us: now,
                    owner: owner.clone(),
                    versioning: if object_lock { Versioning::Enabled } else { Versioning::Unversioned },
                    acl,
                    tagging: None,
                    replication: None,
                    replica_sources: Vec::new(),
                    config,
                })?;
                if created {
                    return Ok(None);
                }
                // Taken by another creation (perhaps on another node), unless deleted since.
                let existing =
                    tx.get_bucket(&name)?.ok_or_else(|| StoreError::Busy("the bucket was deleted meanwhile".into()))?;
                Ok(Some(existing.owner == owner))
            })
            .await
            .s3()?;
        match result {
            // us-east-1 answers 200 to re-creating a bucket you own (a no-op), as AWS does there.
            Some(true) if self.region == "us-east-1" => Ok(S3Response::new(CreateBucketOutput::default())),
            Some(true) => Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            )),
            Some(false) => Err(s3_error!(
                BucketAlreadyExists,
                "The requested bucket name is not available. Please select a different name and try again."
            )),
            None => Ok(S3Response::new(CreateBucketOutput::default())),
        }
    }

    pub(crate) async fn delete_bucket(&self, req: S3Request<DeleteBucketInput>) -> S3Result<S3Response<DeleteBucketOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.store
            .meta
            .write(move |tx| {
                if tx.get_bucket(&b.name)?.is_none() {
                    return Err(StoreError::NoSuchBucket);
                }
                if tx.bucket_has_versions(&b.name)? {
                    return Err(StoreError::BucketNotEmpty);
                }
                // In-progress multipart uploads go with the bucket.
                loop {
                    let uploads = tx.scan_uploads(&b.name, b"", None, None, 500)?;
                    if uploads.is_empty() {
                        break;
                    }
                    for u in uploads {
                        for p in tx.take_parts(&u.upload_id)? {
                            ferry_store::gc::release_blob(tx, &p.part.blob)?;
                        }
                        tx.delete_upload(&u.upload_id)?;
                    }
                }
                tx.delete_bucket(&b.name)
            })
            .await
            .s3()?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    pub(crate) async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    pub(crate) async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let user = self.require_user(&req)?.clone();
        let all = self.store.meta.read(|r| r.list_buckets()).await.s3()?;
        let prefix = req.input.prefix.clone().unwrap_or_default();
        let after = req.input.continuation_token.clone().unwrap_or_default();
        let max = req.input.max_buckets.map_or(10_000, |m| usize::try_from(m.clamp(1, 10_000)).unwrap_or(10_000));
        let mine: Vec<_> =
            all.into_iter().filter(|b| b.owner.id == user.owner.id && b.name.starts_with(&prefix) && b.name > after).collect();
        let truncated = mine.len() > max;
        let buckets: Vec<Bucket> = mine
            .iter()
            .take(max)
            .map(|b| Bucket {
                name: Some(b.name.clone()),
                creation_date: Some(ts(b.created_us)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        let next = if truncated { buckets.last().and_then(|b| b.name.clone()) } else { None };
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner_dto(&user.owner)),
            continuation_token: next,
            prefix: req.input.prefix,
        }))
    }

    pub(crate) async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket_for(&req, &req.input.bucket, Perm::Read).await?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: Some(BucketLocationConstraint::from(self.region.clone())),
        }))
    }

    pub(crate) async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let status = match b.versioning {
            Versioning::Unversioned => None,
            Versioning::Enabled => Some(BucketVersioningStatus::from_static(BucketVersioningStatus::ENABLED)),
            Versioning::Suspended => Some(BucketVersioningStatus::from_static(BucketVersioningStatus::SUSPENDED)),
        };
        Ok(S3Response::new(GetBucketVersioningOutput { status, mfa_delete: None }))
    }

    pub(crate) async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let cfg = req.input.versioning_configuration;
        if cfg.mfa_delete.as_ref().is_some_and(|m| m.as_str() == MFADelete::ENABLED) {
            return Err(s3_error!(NotImplemented, "MFA delete is not supported"));
        }
        let target = match cfg.status.as_ref().map(BucketVersioningStatus::as_str) {
            Some(BucketVersioningStatus::ENABLED) => Versioning::Enabled,
            Some(BucketVersioningStatus::SUSPENDED) => Versioning::Suspended,
            None => return Ok(S3Response::new(PutBucketVersioningOutput::default())),
            Some(other) => return Err(s3_error!(MalformedXML, "Invalid versioning status {other}")),
        };
        self.store
            .meta
            .write(move |tx| {
                let mut bucket = tx.lock_bucket(&b.name)?.ok_or(StoreError::NoSuchBucket)?;
                if target == Versioning::Suspended && bucket.replication.is_some() {
                    return Err(StoreError::InvalidBucketState(
                        "Versioning cannot be suspended on a bucket that has a replication configuration".into(),
                    ));
                }
                if target == Versioning::Suspended && bucket.object_lock() {
                    return Err(StoreError::InvalidBucketState(
                        "An Object Lock configuration is present on this bucket, so the versioning state cannot be changed."
                            .into(),
                    ));
                }
                bucket.versioning = target;
                tx.put_bucket(&bucket)
            })
            .await
            .s3()?;
        Ok(S3Response::new(PutBucketVersioningOutput::default()))
    }

    pub(crate) async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        match b.tagging {
            Some(tags) => Ok(S3Response::new(GetBucketTaggingOutput { tag_set: tags_to_dto(&tags) })),
            None => Err(s3_error!(NoSuchTagSet, "The TagSet does not exist")),
        }
    }

    pub(crate) async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let tags = tags_from_dto(req.input.tagging.tag_set);
        validate_tags(&tags, MAX_BUCKET_TAGS)?;
        self.update_bucket(b.name, move |bucket| bucket.tagging = Some(tags)).await?;
        Ok(S3Response::new(PutBucketTaggingOutput::default()))
    }

    pub(crate) async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.tagging = None).await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput::default()))
    }

    /// Applies `change` to the bucket record in a transaction.
    pub(crate) async fn update_bucket(
        &self,
        name: String,
        change: impl FnOnce(&mut BucketRecord) + Send + 'static,
    ) -> S3Result<()> {
        self.store
            .meta
            .write(move |tx| {
                let mut bucket = tx.lock_bucket(&name)?.ok_or(StoreError::NoSuchBucket)?;
                change(&mut bucket);
                tx.put_bucket(&bucket)
            })
            .await
            .s3()
    }
}
