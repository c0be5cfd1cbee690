//! DeleteObject and DeleteObjects.

use ferry_core::ids::is_valid_version_id;
use ferry_store::model::Owner;
use ferry_store::objects::{DeleteConditions, delete_current, delete_version, put_replica_delete_marker};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::{MAX_KEY_LEN, check_key};
use crate::error::StoreResultExt;
use crate::perm::Perm;
use crate::replication::replica::ReplicaWrite;

/// Most keys in one DeleteObjects request.
const MAX_DELETE_KEYS: usize = 1000;

/// What deleting one key did.
#[derive(Debug)]
struct Deleted {
    delete_marker: bool,
    version_id: Option<String>,
}

/// Deletes one key or version inside a transaction. With `replica`, the deletion comes from a
/// peer: a delete marker keeps the source's id and time, and nothing is replicated further.
fn delete_one(
    tx: &mut dyn ferry_store::meta::WriteTx,
    bucket: &str,
    key: &str,
    version_id: Option<&str>,
    owner: &Owner,
    replica: Option<&ReplicaWrite>,
    cond: &DeleteConditions,
) -> ferry_store::Result<Deleted> {
    if let (Some(r), None) = (replica, version_id) {
        let marker_owner = r.meta.owner.clone().unwrap_or_else(|| owner.clone());
        let m = put_replica_delete_marker(tx, bucket, key, &r.identity(), marker_owner)?;
        return Ok(Deleted { delete_marker: true, version_id: Some(m.version_id) });
    }
    match version_id {
        Some(v) => {
            let removed = delete_version(tx, bucket, key, v, replica.map(|r| &r.authority), cond)?;
            Ok(Deleted { delete_marker: removed.is_some_and(|r| r.delete_marker), version_id: Some(v.to_owned()) })
        }
        None => {
            let out = delete_current(tx, bucket, key, owner, cond)?;
            Ok(match out.marker {
                Some(m) => Deleted { delete_marker: true, version_id: Some(m.version_id) },
                None => Deleted { delete_marker: false, version_id: None },
            })
        }
    }
}

/// The conditions of a conditional delete (`If-Match`, `x-amz-if-match-last-modified-time`,
/// `x-amz-if-match-size`, or their DeleteObjects elements), and whether it may bypass
/// governance retention.
fn conditions(if_match: Option<String>, mtime: Option<&Timestamp>, size: Option<i64>, bypass: bool) -> DeleteConditions {
    DeleteConditions { if_match, mtime_secs: mtime.map(crate::dto::ts_secs), size, bypass_governance: bypass }
}

impl FerryS3 {
    pub(crate) async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        check_key(&req.input.key)?;
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Write).await?;
        let owner = self.user(&req).map_or_else(|| bucket.owner.clone(), |u| u.owner.clone());
        let replica = self.replica_of(&req, &bucket)?;
        // A version delete replicated from a source of the bucket owner's own account removes
        // what that account could remove here with a bypass; COMPLIANCE and legal holds stay.
        let bypass = match &replica {
            Some(r) => r.authority.owner,
            // The policy is read only when a bypass is asked for.
            None if req.input.bypass_governance_retention == Some(true) => {
                let policy = crate::bucket_access::policy_of(&bucket);
                self.may_bypass(&req, policy.as_ref(), Some(true), &bucket, &req.input.key).await
            }
            None => false,
        };
        let i = req.input;
        if let Some(v) = &i.version_id
            && !is_valid_version_id(v)
        {
            return Err(s3_error!(InvalidArgument, "Invalid version id specified"));
        }
        let cond = conditions(
            i.if_match.as_ref().map(crate::dto::condition_text),
            i.if_match_last_modified_time.as_ref(),
            i.if_match_size,
            bypass,
        );
        let (b, k, v) = (i.bucket, i.key, i.version_id);
        let d =
            self.store.meta.write(move |tx| delete_one(tx, &b, &k, v.as_deref(), &owner, replica.as_ref(), &cond)).await.s3()?;
        let mut resp = S3Response::new(DeleteObjectOutput {
            delete_marker: d.delete_marker.then_some(true),
            version_id: d.version_id,
            ..Default::default()
        });
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }

    pub(crate) async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        // Each key is an s3:DeleteObject of its own to the bucket policy; the ACLs (WRITE on the
        // bucket) decide the keys the policy says nothing about.
        let bucket = self.load_bucket(&req.input.bucket).await?;
        let policy = crate::bucket_access::policy_of(&bucket);
        let acl_allows = match self.authorize_bucket(&req, &bucket, Perm::Write) {
            Ok(()) => true,
            Err(e) if policy.is_none() => return Err(e),
            Err(_) => false,
        };
        let owner = self.user(&req).map_or_else(|| bucket.owner.clone(), |u| u.owner.clone());
        let objects = &req.input.delete.objects;
        if objects.len() > MAX_DELETE_KEYS {
            return Err(s3_error!(MalformedXML, "The request must contain no more than 1000 keys"));
        }
        let mut refused = Vec::with_capacity(objects.len());
        // Whether each key may bypass governance retention (judged per key, as a policy may
        // grant it for some keys only).
        let mut bypass = Vec::with_capacity(objects.len());
        for o in objects {
            bypass.push(self.may_bypass(&req, policy.as_ref(), req.input.bypass_governance_retention, &bucket, &o.key).await);
            let allowed = match &policy {
                Some(p) => {
                    let asked =
                        crate::bucket_access::asked_of(&req, "DeleteObject", &bucket.name, Some(&o.key), o.version_id.as_deref());
                    match crate::bucket_access::judge(&self.store, &self.users, &bucket, p, &asked).await {
                        Ok(granted) => granted || acl_allows,
                        Err(_) => false,
                    }
                }
                None => true,
            };
            refused.push(!allowed);
        }
        let objects = req.input.delete.objects;
        let quiet = req.input.delete.quiet == Some(true);
        let name = req.input.bucket;
        let results = self
            .store
            .meta
            .write(move |tx| {
                let mut out = Vec::with_capacity(objects.len());
                for ((o, refused), bypass) in objects.into_iter().zip(refused).zip(bypass) {
                    let invalid = if refused {
                        Some(("AccessDenied", "Access Denied"))
                    } else if o.key.is_empty() || o.key.len() > MAX_KEY_LEN {
                        Some(("InvalidArgument", "Invalid key"))
                    } else if o.version_id.as_deref().is_some_and(|v| !is_valid_version_id(v)) {
                        Some(("InvalidArgument", "Invalid version id specified"))
                    } else {
                        None
                    };
                    let cond = conditions(
                        o.e_tag.as_ref().map(|e| e.value().to_owned()),
                        o.last_modified_time.as_ref(),
                        o.size,
                        bypass,
                    );
                    let r = match invalid {
                        Some(err) => Err(err),
                        None => match delete_one(tx, &name, &o.key, o.version_id.as_deref(), &owner, None, &cond) {
                            Err(ferry_store::Error::PreconditionFailed) => {
                                Err(("PreconditionFailed", crate::error::PRECONDITION_FAILED))
                            }
                            // A version Object Lock protects.
                            Err(ferry_store::Error::AccessDenied(_)) => Err(("AccessDenied", "Access Denied")),
                            r => Ok(r?),
                        },
                    };
                    out.push((o.key, o.version_id, r));
                }
                Ok(out)
            })
            .await
            .s3()?;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for (key, requested_version, r) in results {
            match r {
                Ok(d) if !quiet => deleted.push(DeletedObject {
                    key: Some(key),
                    version_id: requested_version,
                    delete_marker: d.delete_marker.then_some(true),
                    delete_marker_version_id: if d.delete_marker { d.version_id } else { None },
                }),
                Ok(_) => {}
                Err((code, msg)) => errors.push(Error {
                    key: Some(key),
                    version_id: requested_version,
                    code: Some(code.to_owned()),
                    message: Some(msg.to_owned()),
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }
}
