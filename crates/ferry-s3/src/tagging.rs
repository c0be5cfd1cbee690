//! Object tagging (bucket tagging is in `bucket.rs`). Tags belong to a version and change in
//! place: no new version is created.

use ferry_store::model::VersionRecord;
use ferry_store::objects::{AttrChange, update_attrs};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use crate::FerryS3;
use crate::dto::{MAX_OBJECT_TAGS, tags_from_dto, tags_to_dto, validate_tags};
use crate::error::StoreResultExt;
use crate::perm::Perm;
use crate::replication::replica::ReplicaWrite;

impl FerryS3 {
    pub(crate) async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let src =
            self.source_version(&req, &req.input.bucket, &req.input.key, req.input.version_id.as_deref(), Perm::Read).await?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tags_to_dto(&src.record.attrs.tags),
            version_id: src.versioned.then(|| src.record.version_id.clone()),
        }))
    }

    pub(crate) async fn put_object_tagging(
        &self,
        mut req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let tags = tags_from_dto(req.input.tagging.tag_set.clone());
        validate_tags(&tags, MAX_OBJECT_TAGS)?;
        let (key, version_id) = (req.input.key.clone(), req.input.version_id.clone());
        crate::bucket_access::judge_tagging(&self.store, &self.users, &mut req, &key, version_id.as_deref(), &tags).await?;
        let v = self.set_tags(&req, &req.input.bucket, &req.input.key, req.input.version_id.as_deref(), tags).await?;
        Ok(S3Response::new(PutObjectTaggingOutput { version_id: Some(v.version_id) }))
    }

    pub(crate) async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let v = self.set_tags(&req, &req.input.bucket, &req.input.key, req.input.version_id.as_deref(), Vec::new()).await?;
        let mut resp = S3Response::new(DeleteObjectTaggingOutput { version_id: Some(v.version_id) });
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }

    async fn set_tags<T>(
        &self,
        req: &S3Request<T>,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        tags: Vec<(String, String)>,
    ) -> S3Result<VersionRecord> {
        // Resolves the version with S3's answers for missing keys and delete markers; changing
        // tags takes the object's owner or a WRITE_ACP grant, like changing its ACL (a replica
        // from a peer: a bucket that accepts its source).
        let replica = self.replica_of(req, &self.load_bucket(bucket).await?)?;
        let src = self.source_version(req, bucket, key, version_id, Perm::WriteAcp).await?;
        let (b, k, v) = (bucket.to_owned(), key.to_owned(), src.record.version_id.clone());
        // A peer's tag change carries the version's lock settings too (each kept if newer).
        let locks = replica.as_ref().map(ReplicaWrite::lock_changes).unwrap_or_default();
        let from = replica.map(|r| r.change(true));
        self.store
            .meta
            .write(move |tx| {
                for (change, from) in locks {
                    update_attrs(tx, &b, &k, &v, change, Some(&from))?;
                }
                update_attrs(tx, &b, &k, &v, AttrChange::Tags(tags), from.as_ref())
            })
            .await
            .s3()
    }
}
