//! Who may do what: the signed-in account, permissions checked against ACLs (and, for
//! replication credentials, against the bucket's replica sources), and the ACL a request asks
//! for (canned, or grant headers).

use ferry_store::model::{Acl, BucketRecord, Grant, Grantee, ObjectOwnership, Owner};
use s3s::{S3Error, S3Request, S3Result, s3_error};

use crate::FerryS3;
use crate::auth::User;

/// A permission checked against ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Read,
    Write,
    ReadAcp,
    WriteAcp,
    /// Only the owner (bucket configuration, deleting the bucket).
    Owner,
}

impl Perm {
    fn name(self) -> &'static str {
        match self {
            Self::Read => "READ",
            Self::Write => "WRITE",
            Self::ReadAcp => "READ_ACP",
            Self::WriteAcp => "WRITE_ACP",
            Self::Owner => "FULL_CONTROL",
        }
    }
}

pub fn access_denied() -> S3Error {
    s3_error!(AccessDenied, "Access Denied")
}

impl FerryS3 {
    /// The account that signed the request; `None` for anonymous requests and for replication
    /// credentials (not accounts: their rights come from [`crate::replication::replica::ReplicationRequest`]).
    pub(crate) fn user<T>(&self, req: &S3Request<T>) -> Option<&User> {
        req.credentials.as_ref().and_then(|c| self.users.account(&c.access_key))
    }

    /// The signed-in user or AccessDenied.
    pub(crate) fn require_user<T>(&self, req: &S3Request<T>) -> S3Result<&User> {
        self.user(req).ok_or_else(access_denied)
    }

    /// Loads a bucket (no permission check).
    pub(crate) async fn load_bucket(&self, name: &str) -> S3Result<BucketRecord> {
        let bucket = crate::bucket_access::read_bucket(&self.store, name).await?;
        bucket.ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))
    }

    /// Loads a bucket and checks that the requester has `perm` on it. A replication request
    /// (confined to the operations replication needs by the access check) is allowed when the
    /// bucket accepts its source.
    pub(crate) async fn bucket_for<T>(&self, req: &S3Request<T>, name: &str, perm: Perm) -> S3Result<BucketRecord> {
        let bucket = match req.extensions.get::<crate::bucket_access::CheckedBucket>() {
            Some(checked) if checked.0.name == name => checked.0.clone(),
            _ => self.load_bucket(name).await?,
        };
        self.authorize_bucket(req, &bucket, perm)?;
        Ok(bucket)
    }

    /// Checks that the requester has `perm` on `bucket` (see [`Self::bucket_for`]).
    pub(crate) fn authorize_bucket<T>(&self, req: &S3Request<T>, bucket: &BucketRecord, perm: Perm) -> S3Result<()> {
        match self.replication(req) {
            Some(r) => r.authorize(bucket).map(drop),
            None if crate::bucket_access::granted(req) => Ok(()),
            None => check_perm(
                self.user(req).map(|u| &u.owner),
                &bucket.owner,
                &effective_acl(&self.users, bucket, &bucket.acl),
                perm,
            ),
        }
    }
}

/// The ACL that counts for a resource of `bucket`: the bucket owner's full control alone with
/// Object Ownership's `BucketOwnerEnforced` (only the owner and policies grant); with Block
/// Public Access's `IgnorePublicAcls` (the bucket's or its owner's account's), grants to
/// everyone and to all authenticated users count for nothing.
pub fn effective_acl<'a>(users: &crate::Users, bucket: &BucketRecord, acl: &'a Acl) -> std::borrow::Cow<'a, Acl> {
    if bucket.acls_disabled() {
        std::borrow::Cow::Owned(Acl::private(&bucket.owner))
    } else if users.public_access_block(bucket).ignore_public_acls {
        std::borrow::Cow::Owned(acl.without_public())
    } else {
        std::borrow::Cow::Borrowed(acl)
    }
}

/// The owner that counts for an object of `bucket`: the bucket's owner when ACLs are off
/// (`BucketOwnerEnforced` makes it the owner of every object), else the object's.
pub fn effective_owner<'a>(bucket: &'a BucketRecord, owner: &'a Owner) -> &'a Owner {
    if bucket.acls_disabled() { &bucket.owner } else { owner }
}

/// The answer to a request that sets an ACL where ACLs are off.
pub fn acls_not_supported() -> S3Error {
    crate::dto::custom_error(
        "AccessControlListNotSupported",
        http::StatusCode::BAD_REQUEST,
        "The bucket does not allow ACLs",
    )
}

/// The owner and ACL of a client's new object in `bucket` (Object Ownership):
/// - `BucketOwnerEnforced`: the bucket owner, private; a request asking for any ACL other than
///   `bucket-owner-full-control` is refused (AccessControlListNotSupported);
/// - `BucketOwnerPreferred`: the bucket owner when the request asks for
///   `bucket-owner-full-control`, else the writer;
/// - `ObjectWriter`: the writer, with the ACL asked for.
///
/// A public ACL under Block Public Access's `BlockPublicAcls` is refused.
pub fn new_object_acl(
    bucket: &BucketRecord,
    writer: Owner,
    canned: Option<&str>,
    grants: &GrantHeaders<'_>,
    users: &crate::Users,
) -> S3Result<(Owner, Acl)> {
    const BUCKET_OWNER_FULL_CONTROL: &str = "bucket-owner-full-control";
    let ownership = bucket.config.ownership.unwrap_or_default();
    if ownership == ObjectOwnership::BucketOwnerEnforced {
        if !grants.is_empty() || canned.is_some_and(|c| c != BUCKET_OWNER_FULL_CONTROL) {
            return Err(acls_not_supported());
        }
        return Ok((bucket.owner.clone(), Acl::private(&bucket.owner)));
    }
    let owner = if ownership == ObjectOwnership::BucketOwnerPreferred && canned == Some(BUCKET_OWNER_FULL_CONTROL) {
        bucket.owner.clone()
    } else {
        writer
    };
    let acl = requested_acl(canned, grants, &owner, Some(&bucket.owner), users)?;
    check_acl_allowed(users, bucket, &acl)?;
    Ok((owner, acl))
}

/// Refuses a request that sets a public ACL on a resource of `bucket` when Block Public
/// Access's `BlockPublicAcls` is on, for the bucket or its owner's account (AccessDenied, as S3
/// answers).
pub fn check_acl_allowed(users: &crate::Users, bucket: &BucketRecord, acl: &Acl) -> S3Result<()> {
    refuse_public_acl(users.public_access_block(bucket), acl)
}

/// Refuses a public `acl` when `block`'s `BlockPublicAcls` is on (AccessDenied, as S3 answers).
pub fn refuse_public_acl(block: ferry_store::model::PublicAccessBlock, acl: &Acl) -> S3Result<()> {
    if block.block_public_acls && acl.is_public() {
        return Err(s3_error!(AccessDenied, "Block Public Access refuses public ACLs on this bucket"));
    }
    Ok(())
}

/// Checks `perm` for `user` on a resource owned by `owner` with `acl`. As in S3, the owner
/// always keeps READ_ACP and WRITE_ACP (and the owner-only operations); READ and WRITE come
/// from the ACL's grants, which give the owner FULL_CONTROL unless the owner removed it.
pub fn check_perm(user: Option<&Owner>, owner: &Owner, acl: &Acl, perm: Perm) -> S3Result<()> {
    if user.is_some_and(|u| u.id == owner.id) && matches!(perm, Perm::ReadAcp | Perm::WriteAcp | Perm::Owner) {
        return Ok(());
    }
    if perm != Perm::Owner && acl.allows(user.map(|u| u.id.as_str()), perm.name()) {
        return Ok(());
    }
    Err(access_denied())
}

/// Grant headers (`x-amz-grant-read: id="..", uri="..", emailAddress=".."`) of a request.
/// [`grant_headers!`] takes them from an s3s input.
pub struct GrantHeaders<'a> {
    pub full_control: Option<&'a str>,
    pub read: Option<&'a str>,
    pub read_acp: Option<&'a str>,
    pub write: Option<&'a str>,
    pub write_acp: Option<&'a str>,
}

impl GrantHeaders<'_> {
    fn is_empty(&self) -> bool {
        [self.full_control, self.read, self.read_acp, self.write, self.write_acp].iter().all(Option::is_none)
    }
}

/// The ACL a request asks for: a canned ACL, explicit grant headers (not both), or the default
/// private ACL.
pub fn requested_acl(
    canned: Option<&str>,
    grants: &GrantHeaders<'_>,
    owner: &Owner,
    bucket_owner: Option<&Owner>,
    users: &crate::Users,
) -> S3Result<Acl> {
    if let Some(c) = canned {
        if !grants.is_empty() {
            return Err(s3_error!(InvalidRequest, "Specifying both Canned ACLs and Header Grants is not allowed"));
        }
        return Acl::canned(c, owner, bucket_owner).ok_or_else(|| s3_error!(InvalidArgument, "Unknown canned ACL {c}"));
    }
    if grants.is_empty() {
        return Ok(Acl::private(owner));
    }
    let mut acl = Acl::default();
    for (value, perm) in [
        (grants.read, "READ"),
        (grants.write, "WRITE"),
        (grants.read_acp, "READ_ACP"),
        (grants.write_acp, "WRITE_ACP"),
        (grants.full_control, "FULL_CONTROL"),
    ] {
        let Some(value) = value else { continue };
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, v) = item.split_once('=').ok_or_else(|| s3_error!(InvalidArgument, "Invalid grant header {item}"))?;
            let v = v.trim().trim_matches('"').to_owned();
            let grantee = match kind.trim().to_ascii_lowercase().as_str() {
                "id" => {
                    let display_name = users.find_owner(&v).map(|o| o.display_name.clone());
                    if display_name.is_none() {
                        return Err(s3_error!(InvalidArgument, "Invalid id"));
                    }
                    Grantee::User { id: v, display_name }
                }
                "uri" => Grantee::Group { uri: v },
                "emailaddress" => match users.find_email(&v) {
                    Some(o) => Grantee::User { id: o.id.clone(), display_name: Some(o.display_name.clone()) },
                    None => {
                        return Err(s3_error!(
                            UnresolvableGrantByEmailAddress,
                            "The e-mail address you provided does not match any account on record."
                        ));
                    }
                },
                _ => return Err(s3_error!(InvalidArgument, "Invalid grantee type {kind}")),
            };
            acl.grants.push(Grant { grantee, permission: perm.to_owned() });
        }
    }
    Ok(acl)
}

/// The [`GrantHeaders`] of an s3s input; `write` for inputs that do not model
/// `x-amz-grant-write` (object writes: pass the raw header).
macro_rules! grant_headers {
    ($i:expr) => {
        $crate::perm::grant_headers!($i, $i.grant_write.as_deref())
    };
    ($i:expr, $write:expr) => {
        $crate::perm::GrantHeaders {
            full_control: $i.grant_full_control.as_deref(),
            read: $i.grant_read.as_deref(),
            read_acp: $i.grant_read_acp.as_deref(),
            write: $write,
            write_acp: $i.grant_write_acp.as_deref(),
        }
    };
}
pub(crate) use grant_headers;
