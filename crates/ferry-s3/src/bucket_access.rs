//! Bucket policies and Block Public Access: their S3 operations, and what they decide for each
//! request before its operation runs (from the access check, `auth.rs`).
//!
//! # Order of the decision (docs/SECURITY.md)
//! 1. The signature (s3s) and the replication confinement (`replication/replica.rs`).
//! 2. The bucket policy ([`crate::policy`]): a matching `Deny` refuses the request (but never
//!    the owner's own Get/Put/DeleteBucketPolicy); a matching `Allow` grants it, and the
//!    handler skips the ACLs ([`PolicyGrant`]). With `RestrictPublicBuckets`, a public policy
//!    grants nothing to other accounts or anonymous requests.
//! 3. Otherwise the ACLs and the owner rules, in the handler (`perm.rs`); with
//!    `IgnorePublicAcls`, grants to everyone and to all authenticated users count for nothing.
//!
//! The Block Public Access switches that count for a bucket are its own and its owner's
//! account's (config), combined ([`Users::public_access_block`]).
//!
//! The check reads the bucket, and hands the record to the handler's permission check
//! ([`CheckedBucket`]); a write reads it again in its own transaction. Two decisions are left
//! to the handler ([`PolicyDeferred`]): GetObject and HeadObject, judged in the handler's own
//! read of the bucket and version (one read transaction, as without policies); and
//! PutObjectTagging under a policy that names `s3:RequestObjectTag` keys, judged once its body's
//! tags are read ([`judge_tagging`]).
//!
//! # Invariants
//! - A condition key is only what the request itself means: the listing keys come from a
//!   listing's parameters (or the key a missing-key answer is about), the request tags from the
//!   body or `x-amz-tagging` of a write that takes it, `s3:VersionId` from the decoded
//!   `versionId`. A parameter an operation ignores never satisfies a condition.
//! - A deferred decision is always made before the handler answers or writes anything.

use std::net::{IpAddr, SocketAddr};

use ferry_store::model::{BucketRecord, ObjectOwnership, PublicAccessBlock};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::auth::Users;
use crate::error::StoreResultExt;
use crate::perm::{Perm, access_denied};
use crate::policy::{self, Decision, Policy};

/// Where a request came from: set on each request by the connection that carried it.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// Over TLS.
    pub secure: bool,
}

impl ClientInfo {
    #[must_use]
    pub fn new(peer: SocketAddr, secure: bool) -> Self {
        Self { ip: peer.ip(), secure }
    }
}

/// Set on a request the bucket policy allows: the handler does not consult the ACLs of the
/// bucket or object the request names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicyGrant;

/// Set on a copy whose source bucket's policy allows reading the source: the source's ACLs
/// are not consulted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopySourceGrant;

/// Set on a request whose policy check is left to its handler: a GET or HEAD (checked in the
/// handler's read of the bucket and version, one read transaction instead of two), or a
/// PutObjectTagging under a policy that reads `s3:RequestObjectTag` (the tags are in the body).
/// The operation's name.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PolicyDeferred(&'static str);

/// The operation whose policy check the handler makes ([`judge_bucket`]).
pub(crate) fn deferred<T>(req: &S3Request<T>) -> Option<&'static str> {
    req.extensions.get::<PolicyDeferred>().map(|d| d.0)
}

/// Makes the policy check a PutObjectTagging left to its handler, with the tags it read: a
/// Deny refuses, an Allow is recorded as the check's would have been.
pub(crate) async fn judge_tagging<T>(
    store: &ferry_store::Store,
    users: &Users,
    req: &mut S3Request<T>,
    key: &str,
    version_id: Option<&str>,
    tags: &[(String, String)],
) -> S3Result<()> {
    if deferred(req) != Some("PutObjectTagging") {
        return Ok(());
    }
    let Some(CheckedBucket(bucket)) = req.extensions.remove::<CheckedBucket>() else { return Ok(()) };
    let asked = Asked { request_tags: Some(tags), ..asked_of(req, "PutObjectTagging", &bucket.name, Some(key), version_id) };
    let granted = judge_bucket(store, users, &bucket, &asked).await?;
    req.extensions.remove::<PolicyDeferred>();
    req.extensions.insert(CheckedBucket(bucket));
    if granted {
        req.extensions.insert(PolicyGrant);
    }
    Ok(())
}

/// Whether the request may skip the ACL check of what it names because the bucket policy
/// allows it.
pub(crate) fn granted<T>(req: &S3Request<T>) -> bool {
    req.extensions.get::<PolicyGrant>().is_some()
}

/// Whether a copy may skip the ACL check of its source because the source bucket's policy
/// allows reading it.
pub(crate) fn source_granted<T>(req: &S3Request<T>) -> bool {
    req.extensions.get::<CopySourceGrant>().is_some()
}

/// What the access check knows of a request.
#[derive(Clone, Copy)]
pub(crate) struct Asked<'a> {
    pub op: &'a str,
    pub bucket: &'a str,
    pub key: Option<&'a str>,
    /// The version the request names, if any.
    pub version_id: Option<&'a str>,
    pub access_key: Option<&'a str>,
    pub uri: &'a http::Uri,
    pub headers: &'a http::HeaderMap,
    pub client: Option<ClientInfo>,
    /// The `s3:prefix` of an s3:ListBucket asked for a key rather than by a listing: whether a
    /// GET or HEAD of a missing key may answer 404 (else 403) is that question.
    pub listed_prefix: Option<&'a str>,
    /// The tags a request sets in its body (PutObjectTagging): its `s3:RequestObjectTag/<key>`
    /// (for a PutObject, they come from `x-amz-tagging`).
    pub request_tags: Option<&'a [(String, String)]>,
    /// A browser form upload's signature version (`AWS` or `AWS4-HMAC-SHA256`): its
    /// `s3:authType` is `POST`, whatever its URL or headers say.
    pub form_signature: Option<&'static str>,
}

/// The decision of the bucket's policy (and Block Public Access) on a request: `Err` when it
/// is refused, `Ok(true)` when the policy grants it.
///
/// Also returns the bucket it read (`None`: no such bucket, or an operation no policy
/// governs), which the handler uses instead of reading it again.
pub(crate) async fn decide(
    store: &ferry_store::Store,
    users: &Users,
    asked: &Asked<'_>,
) -> S3Result<(bool, Option<BucketRecord>)> {
    if policy::of_operation(asked.op, asked.version_id.is_some()).is_none() {
        return Ok((false, None));
    }
    let Some(bucket) = read_bucket(store, asked.bucket).await? else { return Ok((false, None)) };
    let granted = judge_bucket(store, users, &bucket, asked).await?;
    Ok((granted, Some(bucket)))
}

/// A bucket's record, `None` when there is no such bucket (no permission check).
pub(crate) async fn read_bucket(store: &ferry_store::Store, name: &str) -> S3Result<Option<BucketRecord>> {
    let name = name.to_owned();
    store.meta.read(move |r| r.get_bucket(&name)).await.s3()
}

/// A bucket's policy, parsed. A stored policy was checked when put; one that no longer parses
/// (written by a newer build) denies nothing and grants nothing.
pub(crate) fn policy_of(bucket: &BucketRecord) -> Option<Policy> {
    let text = bucket.config.policy.as_deref()?;
    Policy::parse(text, &bucket.name)
        .inspect_err(
            |e| tracing::warn!(bucket = %bucket.name, error = %e, "the stored bucket policy does not parse; it is ignored"),
        )
        .ok()
}

/// The decision of `bucket`'s policy, if any, on `asked`: `Err` when it denies it, `Ok(true)`
/// when it grants it.
pub(crate) async fn judge_bucket(
    store: &ferry_store::Store,
    users: &Users,
    bucket: &BucketRecord,
    asked: &Asked<'_>,
) -> S3Result<bool> {
    match policy_of(bucket) {
        Some(policy) => judge(store, users, bucket, &policy, asked).await,
        None => Ok(false),
    }
}

/// `policy`'s decision on `asked`: `Err` when it denies it, `Ok(true)` when it grants it.
pub(crate) async fn judge(
    store: &ferry_store::Store,
    users: &Users,
    bucket: &BucketRecord,
    policy: &Policy,
    asked: &Asked<'_>,
) -> S3Result<bool> {
    let Some(action) = policy::of_operation(asked.op, asked.version_id.is_some()) else { return Ok(false) };
    let user = asked.access_key.and_then(|k| users.account(k));
    let is_owner = user.is_some_and(|u| u.owner.id == bucket.owner.id);
    if is_owner && policy::owner_always_may(asked.op) {
        return Ok(false);
    }
    let mut context = context(asked, &Query::of(asked.uri), user.is_some());
    if let (Some(key), true) = (asked.key, policy.uses_key("s3:existingobjecttag/")) {
        add_existing_tags(store, bucket, key, asked.version_id, &mut context).await?;
    }
    let resource = policy::resource_arn(&bucket.name, asked.key);
    let requester = user.map(|u| policy::Requester {
        id: &u.owner.id,
        access_key: &u.access_key,
        display_name: &u.owner.display_name,
        replication: false,
    });
    match policy.evaluate(&policy::Request { action, resource: &resource, requester, context: &context }) {
        Decision::Deny => Err(access_denied()),
        Decision::Allow if users.public_access_block(bucket).restrict_public_buckets && policy.is_public() && !is_owner => {
            Ok(false)
        }
        Decision::Allow => Ok(true),
        Decision::NotApplicable => Ok(false),
    }
}

/// The [`Asked`] of a request for `op` on `key`, from its handler.
pub(crate) fn asked_of<'a, T>(
    req: &'a S3Request<T>,
    op: &'a str,
    bucket: &'a str,
    key: Option<&'a str>,
    version_id: Option<&'a str>,
) -> Asked<'a> {
    Asked {
        op,
        bucket,
        key,
        version_id,
        access_key: req.credentials.as_ref().map(|c| c.access_key.as_str()),
        uri: &req.uri,
        headers: &req.headers,
        client: req.extensions.get::<ClientInfo>().copied(),
        listed_prefix: None,
        request_tags: None,
        form_signature: None,
    }
}

/// What the policies grant a request.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    /// Its bucket's policy allows it.
    target: bool,
    /// A copy's source bucket's policy allows reading the source.
    source: bool,
    /// The request's bucket, as read for the check.
    bucket: Option<BucketRecord>,
    /// A GET or HEAD: the handler makes the check when it reads the bucket and version.
    deferred: Option<&'static str>,
}

/// The request's bucket as the access check read it, for the handler's permission check (the
/// same moment's record; a write reads it again in its own transaction).
#[derive(Debug, Clone)]
pub(crate) struct CheckedBucket(pub(crate) BucketRecord);

impl Grants {
    /// Records the grants (and the bucket read) on the request, for its handler.
    pub(crate) fn record(self, extensions: &mut http::Extensions) {
        if self.target {
            extensions.insert(PolicyGrant);
        }
        if self.source {
            extensions.insert(CopySourceGrant);
        }
        if let Some(b) = self.bucket {
            extensions.insert(CheckedBucket(b));
        }
        if let Some(op) = self.deferred {
            extensions.insert(PolicyDeferred(op));
        }
    }
}

/// Checks a request against the policies that govern it: its bucket's, and for a copy the
/// source bucket's (reading the source).
///
/// # Errors
/// AccessDenied when a policy denies it; store errors.
pub(crate) async fn check(store: &ferry_store::Store, users: &Users, asked: &Asked<'_>) -> S3Result<Grants> {
    // GET and HEAD read the bucket with the version anyway: the policy is checked there.
    let expects_owner = asked.headers.contains_key("x-amz-expected-bucket-owner");
    let deferred = match asked.op {
        "GetObject" if !expects_owner => Some("GetObject"),
        "HeadObject" if !expects_owner => Some("HeadObject"),
        _ => None,
    };
    if deferred.is_some() {
        return Ok(Grants { deferred, ..Grants::default() });
    }
    let (target, bucket) = match asked.op {
        // Under a policy that names s3:RequestObjectTag, PutObjectTagging is judged on the tags
        // of its body, by its handler ([`judge_tagging`]); the bucket is read, and its policy
        // parsed, once either way.
        "PutObjectTagging" => match read_bucket(store, asked.bucket).await? {
            Some(bucket) => match policy_of(&bucket) {
                Some(p) if p.uses_key("s3:requestobjecttag") => {
                    check_expected_owner(store, asked.headers.get("x-amz-expected-bucket-owner"), asked.bucket, Some(&bucket))
                        .await?;
                    return Ok(Grants { deferred: Some("PutObjectTagging"), bucket: Some(bucket), ..Grants::default() });
                }
                Some(p) => (judge(store, users, &bucket, &p, asked).await?, Some(bucket)),
                None => (false, Some(bucket)),
            },
            None => (false, None),
        },
        _ => decide(store, users, asked).await?,
    };
    check_expected_owner(store, asked.headers.get("x-amz-expected-bucket-owner"), asked.bucket, bucket.as_ref()).await?;
    let mut grants = Grants { target, source: false, bucket, deferred: None };
    if matches!(asked.op, "CopyObject" | "UploadPartCopy")
        && let Some((bucket, key, version_id)) =
            asked.headers.get("x-amz-copy-source").and_then(|v| copy_source(v.to_str().ok()?))
    {
        let source = Asked { op: "GetObject", bucket: &bucket, key: Some(&key), version_id: version_id.as_deref(), ..*asked };
        let (granted, record) = decide(store, users, &source).await?;
        check_expected_owner(store, asked.headers.get("x-amz-source-expected-bucket-owner"), &bucket, record.as_ref()).await?;
        grants.source = granted;
    }
    Ok(grants)
}

/// `x-amz-expected-bucket-owner` (or `x-amz-source-expected-bucket-owner` for a copy's source):
/// a request whose bucket belongs to another account than the one it names is refused with
/// AccessDenied, before it runs. `read` is the bucket when the check already read it.
async fn check_expected_owner(
    store: &ferry_store::Store,
    expected: Option<&http::HeaderValue>,
    bucket: &str,
    read: Option<&BucketRecord>,
) -> S3Result<()> {
    let Some(expected) = expected else { return Ok(()) };
    let owner = match read {
        Some(b) => Some(b.owner.id.clone()),
        None => read_bucket(store, bucket).await?.map(|b| b.owner.id),
    };
    match owner {
        Some(id) if expected.as_bytes() != id.as_bytes() => Err(access_denied()),
        // No such bucket: the operation answers NoSuchBucket.
        _ => Ok(()),
    }
}

/// `bucket/key[?versionId=v]` of an `x-amz-copy-source` header (URL-encoded, with or without
/// a leading slash).
fn copy_source(header: &str) -> Option<(String, String, Option<String>)> {
    let (path, query) = header.split_once('?').unwrap_or((header, ""));
    let path = percent_encoding::percent_decode_str(path.strip_prefix('/').unwrap_or(path)).decode_utf8().ok()?;
    let (bucket, key) = path.split_once('/')?;
    let version_id = Query::parse(query).get("versionId").map(str::to_owned);
    Some((bucket.to_owned(), key.to_owned(), version_id))
}

/// What `bucket`'s policy says about a replica from `source` (its replication principal is the
/// source bucket's account: `arn:aws:iam::<account>:role/<any>`, `...:root` or the account id)
/// doing `action` (`s3:ReplicateObject`, ...) on the bucket's objects. The condition keys
/// `aws:SourceAccount` and `aws:SourceArn` (the source bucket) are set.
pub(crate) fn replication_decision(
    bucket: &BucketRecord,
    source: &ferry_store::replication::SourceRef,
    action: &str,
) -> Decision {
    let Some(policy) = policy_of(bucket) else { return Decision::NotApplicable };
    let mut context = policy::Context::default();
    context.add("aws:SourceAccount", source.account.clone());
    context.add("aws:SourceArn", policy::resource_arn(&source.bucket, None));
    let resource = format!("{}/*", policy::resource_arn(&bucket.name, None));
    let requester = policy::Requester { id: &source.account, access_key: "", display_name: "", replication: true };
    policy.evaluate(&policy::Request { action, resource: &resource, requester: Some(requester), context: &context })
}

/// The operations that list a bucket's keys, whose parameters are the `s3:prefix`,
/// `s3:delimiter` and `s3:max-keys` condition keys.
const LISTINGS: [&str; 4] = ["ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads"];

/// The condition keys of a request.
fn context(asked: &Asked<'_>, query: &Query, signed: bool) -> policy::Context {
    let mut c = policy::Context::default();
    let now = time::OffsetDateTime::now_utc();
    if let Ok(t) = now.format(&time::format_description::well_known::Rfc3339) {
        c.add("aws:CurrentTime", t);
    }
    c.add("aws:EpochTime", now.unix_timestamp().to_string());
    if let Some(client) = asked.client {
        c.add("aws:SecureTransport", client.secure.to_string());
        c.add("aws:SourceIp", client.ip.to_canonical().to_string());
    }
    c.add("aws:PrincipalType", if signed { "Account" } else { "Anonymous" });
    let header = |name: &str| asked.headers.get(name).and_then(|v| v.to_str().ok());
    for (key, name) in [("aws:Referer", "referer"), ("aws:UserAgent", "user-agent")] {
        if let Some(v) = header(name) {
            c.add(key, v);
        }
    }
    for name in [
        "x-amz-acl",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-server-side-encryption-customer-algorithm",
        "x-amz-copy-source",
        "x-amz-metadata-directive",
        "x-amz-storage-class",
        "x-amz-grant-read",
        "x-amz-grant-write",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "x-amz-grant-full-control",
        "x-amz-content-sha256",
    ] {
        if let Some(v) = header(name) {
            c.add(&format!("s3:{name}"), v);
        }
    }
    // A write's Object Lock headers (PutObjectRetention's body is not read before this check:
    // its retention is not seen here).
    for (key, name) in [
        ("s3:object-lock-mode", "x-amz-object-lock-mode"),
        ("s3:object-lock-retain-until-date", "x-amz-object-lock-retain-until-date"),
        ("s3:object-lock-legal-hold", "x-amz-object-lock-legal-hold"),
    ] {
        if let Some(v) = header(name) {
            c.add(key, v);
        }
    }
    if let Some(until) = header("x-amz-object-lock-retain-until-date")
        .and_then(|d| time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok())
    {
        let seconds = (until - now).whole_seconds().max(0);
        c.add("s3:object-lock-remaining-retention-days", ((seconds + 86_399) / 86_400).to_string());
    }
    // The listing keys come from a listing's own parameters (any other request could carry
    // them in its query string without effect), or from the key a missing-key answer is about.
    match asked.listed_prefix {
        Some(p) => c.add("s3:prefix", p),
        None if LISTINGS.contains(&asked.op) => {
            for (key, param) in [("s3:prefix", "prefix"), ("s3:delimiter", "delimiter"), ("s3:max-keys", "max-keys")] {
                if let Some(v) = query.get(param) {
                    c.add(key, v);
                }
            }
        }
        None => {}
    }
    if let Some(v) = asked.version_id {
        c.add("s3:VersionId", v);
    }
    // The tags a request sets: PutObjectTagging's body, or `x-amz-tagging` of a write that
    // takes it (elsewhere the header sets nothing, so it says nothing).
    let header_tags = match asked.op {
        "PutObject" | "CopyObject" | "CreateMultipartUpload" => header("x-amz-tagging").map(|t| Query::parse(t).pairs),
        _ => None,
    };
    for (k, v) in asked.request_tags.map(<[_]>::to_vec).or(header_tags).unwrap_or_default() {
        c.add("s3:RequestObjectTagKeys", k.clone());
        c.add(&format!("s3:RequestObjectTag/{k}"), v);
    }
    let presigned = query.get("X-Amz-Signature").is_some();
    if let Some(version) = asked.form_signature {
        c.add("s3:authType", "POST");
        c.add("s3:signatureversion", version);
    } else if signed {
        c.add("s3:authType", if presigned { "REST-QUERY-STRING" } else { "REST-HEADER" });
        let v2 = header("authorization").is_some_and(|a| a.starts_with("AWS ")) || query.get("Signature").is_some();
        c.add("s3:signatureversion", if v2 { "AWS" } else { "AWS4-HMAC-SHA256" });
    }
    c
}

/// Adds `s3:ExistingObjectTag/<key>` for each tag of the object (the version asked for, or the
/// latest).
async fn add_existing_tags(
    store: &ferry_store::Store,
    bucket: &BucketRecord,
    key: &str,
    version_id: Option<&str>,
    context: &mut policy::Context,
) -> S3Result<()> {
    let (b, k, v) = (bucket.name.clone(), key.to_owned(), version_id.map(str::to_owned));
    let version = store
        .meta
        .read(move |r| match &v {
            Some(v) => r.get_version(&b, &k, v),
            None => r.get_latest(&b, &k),
        })
        .await
        .s3()?;
    for (k, v) in version.map(|v| v.attrs.tags).unwrap_or_default() {
        context.add(&format!("s3:ExistingObjectTag/{k}"), v);
    }
    Ok(())
}

/// A request's query parameters, percent-decoded.
struct Query {
    pairs: Vec<(String, String)>,
}

/// A query parameter of `uri`, percent-decoded.
pub(crate) fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    Query::of(uri).get(name).map(str::to_owned)
}

impl Query {
    fn of(uri: &http::Uri) -> Self {
        Self::parse(uri.query().unwrap_or(""))
    }

    fn parse(query: &str) -> Self {
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        Self { pairs }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl FerryS3 {
    pub(crate) async fn put_bucket_policy(
        &self,
        req: S3Request<PutBucketPolicyInput>,
    ) -> S3Result<S3Response<PutBucketPolicyOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let text = req.input.policy;
        let parsed = Policy::parse(&text, &b.name)
            .and_then(|p| Policy::check_supported(&text).map(|()| p))
            .map_err(|m| s3_error!(MalformedPolicy, "{m}"))?;
        if self.users.public_access_block(&b).block_public_policy && parsed.is_public() {
            return Err(s3_error!(
                AccessDenied,
                "Block Public Access refuses a public bucket policy on this bucket"
            ));
        }
        self.update_bucket(b.name, move |bucket| bucket.config.policy = Some(text)).await?;
        Ok(S3Response::with_status(PutBucketPolicyOutput::default(), http::StatusCode::NO_CONTENT))
    }

    pub(crate) async fn get_bucket_policy(
        &self,
        req: S3Request<GetBucketPolicyInput>,
    ) -> S3Result<S3Response<GetBucketPolicyOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        match b.config.policy {
            Some(policy) => Ok(S3Response::new(GetBucketPolicyOutput { policy: Some(policy) })),
            None => Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist")),
        }
    }

    pub(crate) async fn delete_bucket_policy(
        &self,
        req: S3Request<DeleteBucketPolicyInput>,
    ) -> S3Result<S3Response<DeleteBucketPolicyOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.policy = None).await?;
        Ok(S3Response::with_status(DeleteBucketPolicyOutput::default(), http::StatusCode::NO_CONTENT))
    }

    pub(crate) async fn get_bucket_policy_status(
        &self,
        req: S3Request<GetBucketPolicyStatusInput>,
    ) -> S3Result<S3Response<GetBucketPolicyStatusOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(text) = b.config.policy.as_deref() else {
            return Err(s3_error!(NoSuchBucketPolicy, "The bucket policy does not exist"));
        };
        let public = Policy::parse(text, &b.name).is_ok_and(|p| p.is_public());
        Ok(S3Response::new(GetBucketPolicyStatusOutput {
            policy_status: Some(PolicyStatus { is_public: Some(public) }),
        }))
    }

    pub(crate) async fn put_public_access_block(
        &self,
        req: S3Request<PutPublicAccessBlockInput>,
    ) -> S3Result<S3Response<PutPublicAccessBlockOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let c = req.input.public_access_block_configuration;
        let block = PublicAccessBlock {
            block_public_acls: c.block_public_acls.unwrap_or(false),
            ignore_public_acls: c.ignore_public_acls.unwrap_or(false),
            block_public_policy: c.block_public_policy.unwrap_or(false),
            restrict_public_buckets: c.restrict_public_buckets.unwrap_or(false),
        };
        self.update_bucket(b.name, move |bucket| bucket.config.public_access_block = Some(block)).await?;
        Ok(S3Response::new(PutPublicAccessBlockOutput::default()))
    }

    pub(crate) async fn get_public_access_block(
        &self,
        req: S3Request<GetPublicAccessBlockInput>,
    ) -> S3Result<S3Response<GetPublicAccessBlockOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(p) = b.config.public_access_block else {
            return Err(crate::dto::custom_error(
                "NoSuchPublicAccessBlockConfiguration",
                http::StatusCode::NOT_FOUND,
                "The public access block configuration was not found",
            ));
        };
        Ok(S3Response::new(GetPublicAccessBlockOutput {
            public_access_block_configuration: Some(PublicAccessBlockConfiguration {
                block_public_acls: Some(p.block_public_acls),
                ignore_public_acls: Some(p.ignore_public_acls),
                block_public_policy: Some(p.block_public_policy),
                restrict_public_buckets: Some(p.restrict_public_buckets),
            }),
        }))
    }

    pub(crate) async fn delete_public_access_block(
        &self,
        req: S3Request<DeletePublicAccessBlockInput>,
    ) -> S3Result<S3Response<DeletePublicAccessBlockOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.public_access_block = None).await?;
        Ok(S3Response::with_status(
            DeletePublicAccessBlockOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }
}

/// The Object Ownership of an `OwnershipControls` document (exactly one rule).
fn ownership_of(controls: &OwnershipControls) -> S3Result<ObjectOwnership> {
    let [rule] = controls.rules.as_slice() else {
        return Err(s3_error!(MalformedXML, "OwnershipControls has exactly one rule"));
    };
    ObjectOwnership::parse(rule.object_ownership.as_str())
        .ok_or_else(|| s3_error!(MalformedXML, "Unknown ObjectOwnership {}", rule.object_ownership.as_str()))
}

/// Refuses turning ACLs off on a bucket whose ACL grants to anyone but its owner (as S3 does:
/// the grants would silently stop counting).
pub(crate) fn check_ownership_acl(
    ownership: ObjectOwnership,
    owner: &ferry_store::model::Owner,
    acl: &ferry_store::model::Acl,
) -> S3Result<()> {
    if ownership == ObjectOwnership::BucketOwnerEnforced && *acl != ferry_store::model::Acl::private(owner) {
        return Err(crate::dto::custom_error(
            "InvalidBucketAclWithObjectOwnership",
            http::StatusCode::BAD_REQUEST,
            "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting",
        ));
    }
    Ok(())
}

impl FerryS3 {
    pub(crate) async fn put_bucket_ownership_controls(
        &self,
        req: S3Request<PutBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<PutBucketOwnershipControlsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let ownership = ownership_of(&req.input.ownership_controls)?;
        check_ownership_acl(ownership, &b.owner, &b.acl)?;
        self.update_bucket(b.name, move |bucket| bucket.config.ownership = Some(ownership)).await?;
        Ok(S3Response::new(PutBucketOwnershipControlsOutput::default()))
    }

    pub(crate) async fn get_bucket_ownership_controls(
        &self,
        req: S3Request<GetBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<GetBucketOwnershipControlsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(ownership) = b.config.ownership else {
            return Err(crate::dto::custom_error(
                "OwnershipControlsNotFoundError",
                http::StatusCode::NOT_FOUND,
                "The bucket ownership controls were not found",
            ));
        };
        let rule = OwnershipControlsRule { object_ownership: s3s::dto::ObjectOwnership::from(ownership.as_str().to_owned()) };
        Ok(S3Response::new(GetBucketOwnershipControlsOutput {
            ownership_controls: Some(OwnershipControls { rules: vec![rule] }),
        }))
    }

    pub(crate) async fn delete_bucket_ownership_controls(
        &self,
        req: S3Request<DeleteBucketOwnershipControlsInput>,
    ) -> S3Result<S3Response<DeleteBucketOwnershipControlsOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.ownership = None).await?;
        Ok(S3Response::with_status(
            DeleteBucketOwnershipControlsOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }
}
