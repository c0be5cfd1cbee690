//! Bucket and object ACLs: canned ACLs, grant headers, and AccessControlPolicy documents.

use ferry_store::model::{Acl, Grant, Grantee, Owner};
use ferry_store::objects::{AttrChange, update_attrs};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::owner_dto;
use crate::error::StoreResultExt;
use crate::perm::{GrantHeaders, Perm, acls_not_supported, check_acl_allowed, grant_headers, requested_acl};

fn grants_dto(acl: &Acl) -> Vec<s3s::dto::Grant> {
    acl.grants
        .iter()
        .map(|g| {
            let grantee = match &g.grantee {
                Grantee::User { id, display_name } => s3s::dto::Grantee {
                    type_: Type::from_static(Type::CANONICAL_USER),
                    id: Some(id.clone()),
                    display_name: display_name.clone(),
                    email_address: None,
                    uri: None,
                },
                Grantee::Group { uri } => s3s::dto::Grantee {
                    type_: Type::from_static(Type::GROUP),
                    id: None,
                    display_name: None,
                    email_address: None,
                    uri: Some(uri.clone()),
                },
                Grantee::Email { address } => s3s::dto::Grantee {
                    type_: Type::from_static(Type::AMAZON_CUSTOMER_BY_EMAIL),
                    id: None,
                    display_name: None,
                    email_address: Some(address.clone()),
                    uri: None,
                },
            };
            s3s::dto::Grant { grantee: Some(grantee), permission: Some(Permission::from(g.permission.clone())) }
        })
        .collect()
}

/// The ACL a Put*Acl request sets: an AccessControlPolicy body, or canned / grant headers.
fn acl_from_request(
    this: &FerryS3,
    policy: Option<AccessControlPolicy>,
    canned: Option<&str>,
    headers: &GrantHeaders<'_>,
    owner: &Owner,
    bucket_owner: Option<&Owner>,
) -> S3Result<Acl> {
    let Some(policy) = policy else {
        return requested_acl(canned, headers, owner, bucket_owner, &this.users);
    };
    if let Some(o) = policy.owner.as_ref().and_then(|o| o.id.as_ref())
        && *o != owner.id
    {
        return Err(s3_error!(AccessDenied, "The owner of an ACL cannot be changed"));
    }
    let mut acl = Acl::default();
    for g in policy.grants.unwrap_or_default() {
        let permission = g
            .permission
            .map(|p| p.as_str().to_owned())
            .ok_or_else(|| s3_error!(MalformedACLError, "A grant has no permission"))?;
        if !["FULL_CONTROL", "READ", "WRITE", "READ_ACP", "WRITE_ACP"].contains(&permission.as_str()) {
            return Err(s3_error!(MalformedACLError, "Unknown permission {permission}"));
        }
        let gr = g.grantee.ok_or_else(|| s3_error!(MalformedACLError, "A grant has no grantee"))?;
        let grantee = match gr.type_.as_str() {
            Type::CANONICAL_USER => {
                let id = gr.id.ok_or_else(|| s3_error!(MalformedACLError, "A CanonicalUser grantee needs an ID"))?;
                let known = this.users.find_owner(&id).ok_or_else(|| s3_error!(InvalidArgument, "Invalid id"))?;
                Grantee::User { display_name: Some(known.display_name.clone()), id }
            }
            Type::GROUP => {
                Grantee::Group { uri: gr.uri.ok_or_else(|| s3_error!(MalformedACLError, "A Group grantee needs a URI"))? }
            }
            Type::AMAZON_CUSTOMER_BY_EMAIL => {
                let email = gr.email_address.ok_or_else(|| s3_error!(MalformedACLError, "An e-mail grantee needs an address"))?;
                let known = this.users.find_email(&email).ok_or_else(|| {
                    s3_error!(
                        UnresolvableGrantByEmailAddress,
                        "The e-mail address you provided does not match any account on record."
                    )
                })?;
                Grantee::User { id: known.id.clone(), display_name: Some(known.display_name.clone()) }
            }
            other => return Err(s3_error!(MalformedACLError, "Unknown grantee type {other}")),
        };
        acl.grants.push(Grant { grantee, permission });
    }
    Ok(acl)
}

impl FerryS3 {
    pub(crate) async fn get_bucket_acl(&self, req: S3Request<GetBucketAclInput>) -> S3Result<S3Response<GetBucketAclOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::ReadAcp).await?;
        // Where ACLs are off, the one that counts: the owner's full control.
        let acl = if b.acls_disabled() { Acl::private(&b.owner) } else { b.acl.clone() };
        Ok(S3Response::new(GetBucketAclOutput {
            owner: Some(owner_dto(&b.owner)),
            grants: Some(grants_dto(&acl)),
        }))
    }

    pub(crate) async fn put_bucket_acl(&self, req: S3Request<PutBucketAclInput>) -> S3Result<S3Response<PutBucketAclOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::WriteAcp).await?;
        let i = req.input;
        let headers = grant_headers!(i);
        let acl = acl_from_request(
            self,
            i.access_control_policy,
            i.acl.as_ref().map(BucketCannedACL::as_str),
            &headers,
            &b.owner,
            None,
        )?;
        if b.acls_disabled() {
            return Err(acls_not_supported());
        }
        check_acl_allowed(&self.users, &b, &acl)?;
        self.update_bucket(b.name, move |bucket| bucket.acl = acl).await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    pub(crate) async fn get_object_acl(&self, req: S3Request<GetObjectAclInput>) -> S3Result<S3Response<GetObjectAclOutput>> {
        let i = &req.input;
        let src = self.source_version(&req, &i.bucket, &i.key, i.version_id.as_deref(), Perm::ReadAcp).await?;
        let v = &src.record;
        let bucket = self.load_bucket(&i.bucket).await?;
        // Where ACLs are off, the bucket owner owns every object, with full control.
        let (owner, acl) =
            if bucket.acls_disabled() { (&bucket.owner, Acl::private(&bucket.owner)) } else { (&v.owner, v.attrs.acl.clone()) };
        Ok(S3Response::new(GetObjectAclOutput {
            owner: Some(owner_dto(owner)),
            grants: Some(grants_dto(&acl)),
            ..Default::default()
        }))
    }

    pub(crate) async fn put_object_acl(&self, req: S3Request<PutObjectAclInput>) -> S3Result<S3Response<PutObjectAclOutput>> {
        let bucket = self.load_bucket(&req.input.bucket).await?;
        let replica = self.replica_of(&req, &bucket)?;
        let src =
            self.source_version(&req, &req.input.bucket, &req.input.key, req.input.version_id.as_deref(), Perm::WriteAcp).await?;
        let v = src.record;
        let i = req.input;
        if bucket.acls_disabled() {
            // A peer's ACL change has nothing to change here.
            return if replica.is_some() {
                Ok(S3Response::new(PutObjectAclOutput::default()))
            } else {
                Err(acls_not_supported())
            };
        }
        let headers = grant_headers!(i);
        // A replica's ACL travels in the replica header (grantees are the source's users).
        let acl = match &replica {
            Some(r) => r.meta.acl.clone().unwrap_or_else(|| Acl::private(&v.owner)),
            None => acl_from_request(
                self,
                i.access_control_policy,
                i.acl.as_ref().map(ObjectCannedACL::as_str),
                &headers,
                &v.owner,
                Some(&bucket.owner),
            )?,
        };
        if replica.is_none() {
            check_acl_allowed(&self.users, &bucket, &acl)?;
        }
        let (b, k, vid) = (i.bucket, i.key, v.version_id.clone());
        let from = replica.map(|r| r.change(false));
        self.store
            .meta
            .write(move |tx| update_attrs(tx, &b, &k, &vid, AttrChange::Acl(acl), from.as_ref()).map(|_| ()))
            .await
            .s3()?;
        Ok(S3Response::new(PutObjectAclOutput::default()))
    }
}
