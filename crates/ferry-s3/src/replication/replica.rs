//! Who may write replicas, and into which buckets: the authority model of replication.
//!
//! A replica is an ordinary S3 request carrying Ferry headers that set identity: the version
//! id, times, owner and ACL ([`REPLICA_HEADER`]), a part's MD5 ([`REPLICA_PART_HEADER`]), and
//! on whose behalf it comes ([`SOURCE_HEADER`]: the source region, bucket and the account that
//! owns it). Invariants:
//! - Ferry headers are honoured only from a **replication credential** (`replication = true`
//!   in `[[credential]]`; the regions of one process use one generated at start), only under
//!   SigV4 header authentication with every Ferry header in `SignedHeaders`. Presigned,
//!   POST-form, SigV2 and anonymous requests carrying them, and any request carrying them from
//!   another credential, are refused with AccessDenied before anything runs ([`check_request`]).
//! - A replication credential is not an account: it owns nothing and may call only the
//!   operations replication needs ([`REPLICATION_OPS`]), each with a [`SOURCE_HEADER`].
//! - The target bucket must accept the source: its owner is the source's account (the same
//!   `user_id` in both regions is the same account), or one of its replica-source grants covers
//!   (account, region, bucket), or its bucket policy allows the source's replication principal
//!   the request's replication action (`s3:ReplicateObject`, `s3:ReplicateDelete`,
//!   `s3:ReplicateTags`), as AWS documents cross-account replication. A policy `Deny` of it
//!   refuses the source even when it owns the bucket or a grant covers it. Checked against the
//!   bucket every time it is loaded for the request ([`ReplicationRequest::authorize`]).
//! - A source of another account (accepted by a grant) may only add versions: the store refuses
//!   its replicas that would replace, remove or re-tag versions it did not bring.
//! - A replica's times may be at most `max_clock_skew` ahead of this region's clock; beyond,
//!   RequestTimeTooSkewed (transient for the source), so nothing can move the clock forward.

use std::time::Duration;

use ferry_store::model::{BucketRecord, Origin};
use ferry_store::objects::{AttrChange, ReplicaAuthority, ReplicaChange, ReplicaIdentity};
use ferry_store::replication::{REPLICA_HEADER, REPLICA_PART_HEADER, ReplicaMeta, SOURCE_HEADER, SourceRef};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, s3_error};

use crate::FerryS3;

/// Operations a replication credential may call (writing replicas, and the checks and listings
/// configuration and `verify` need).
pub(crate) const REPLICATION_OPS: &[&str] = &[
    "HeadBucket",
    "GetBucketVersioning",
    "GetBucketReplication",
    "GetObjectLockConfiguration",
    "ListObjectVersions",
    "HeadObject",
    "GetObjectTagging",
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
    "DeleteObject",
    "PutObjectTagging",
    "PutObjectAcl",
];

/// Set by the access check on a request from a replication credential: the source it speaks for.
#[derive(Debug, Clone)]
pub(crate) struct ReplicationRequest {
    pub(crate) source: SourceRef,
    /// The replication action the request is, for the target bucket's policy.
    pub(crate) action: &'static str,
}

/// The replication action of an operation a replication credential may call.
fn replication_action(op: &str) -> &'static str {
    match op {
        "DeleteObject" => "s3:ReplicateDelete",
        "PutObjectTagging" => "s3:ReplicateTags",
        _ => "s3:ReplicateObject",
    }
}

impl ReplicationRequest {
    /// Checks that `bucket` accepts replicas from this source; returns what they may change.
    pub(crate) fn authorize(&self, bucket: &BucketRecord) -> S3Result<ReplicaAuthority> {
        let s = &self.source;
        let owner = bucket.owner.id == s.account;
        let policy = crate::bucket_access::replication_decision(bucket, s, self.action);
        if policy == crate::policy::Decision::Deny {
            return Err(s3_error!(
                AccessDenied,
                "The policy of bucket {} denies {} to replicas from account {} (bucket {} in {})",
                bucket.name,
                self.action,
                s.account,
                s.bucket,
                s.region
            ));
        }
        let granted = policy == crate::policy::Decision::Allow
            || bucket.replica_sources.iter().any(|g| g.covers(&s.account, &s.region, &s.bucket));
        if !owner && !granted {
            return Err(s3_error!(
                AccessDenied,
                "Bucket {} does not accept replicas from account {} (bucket {} in {}): its owner can allow it with `ferry replication sources --add` or a bucket policy",
                bucket.name,
                s.account,
                s.bucket,
                s.region
            ));
        }
        Ok(ReplicaAuthority { origin: Origin { region: s.region.clone(), bucket: s.bucket.clone() }, owner })
    }
}

/// A replica write, checked: what it carries and what it may change.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaWrite {
    pub(crate) meta: ReplicaMeta,
    pub(crate) authority: ReplicaAuthority,
}

impl ReplicaWrite {
    /// The owner and ACL the replica keeps: those it carries (the bucket owner and a private
    /// ACL when it carries none). Where ACLs are off (Object Ownership `BucketOwnerEnforced`),
    /// the bucket owner and a private ACL, as AWS gives replicas in such a bucket.
    pub(crate) fn owner_acl(&self, bucket: &BucketRecord) -> (ferry_store::model::Owner, ferry_store::model::Acl) {
        use ferry_store::model::Acl;
        if bucket.acls_disabled() {
            return (bucket.owner.clone(), Acl::private(&bucket.owner));
        }
        let owner = self.meta.owner.clone().unwrap_or_else(|| bucket.owner.clone());
        let acl = self.meta.acl.clone().unwrap_or_else(|| Acl::private(&owner));
        (owner, acl)
    }

    /// The identity the new version keeps.
    pub(crate) fn identity(&self) -> ReplicaIdentity {
        ReplicaIdentity {
            version_id: self.meta.version_id.clone(),
            mtime_us: self.meta.mtime_us,
            authority: self.authority.clone(),
        }
    }

    /// A tag change (`tags`: true) or an ACL change, as the store applies it.
    pub(crate) fn change(&self, tags: bool) -> ReplicaChange {
        self.change_at(if tags { self.meta.tags_us } else { self.meta.acl_us })
    }

    /// A change made at the source at `at` (`None`: with the version itself).
    fn change_at(&self, at: Option<i64>) -> ReplicaChange {
        ReplicaChange { authority: self.authority.clone(), changed_us: at.unwrap_or(self.meta.mtime_us) }
    }

    /// The Object Lock settings a metadata replica carries, as changes the store applies if
    /// newer (none when it carries none: the destination need not have Object Lock then).
    pub(crate) fn lock_changes(&self) -> Vec<(AttrChange, ReplicaChange)> {
        let m = &self.meta;
        if !m.lock.is_set() {
            return Vec::new();
        }
        vec![
            (
                AttrChange::Retention { retention: m.lock.retention, bypass: false },
                self.change_at(m.lock.retention_us),
            ),
            (AttrChange::LegalHold(m.lock.legal_hold), self.change_at(m.lock.legal_hold_us)),
        ]
    }
}

pub(crate) fn denied(msg: &str) -> S3Error {
    S3Error::with_message(S3ErrorCode::AccessDenied, msg.to_owned())
}

/// The names in `SignedHeaders` of a SigV4 `Authorization` header, lowercase; `None` when the
/// header is not SigV4 header authentication.
fn signed_headers(authorization: &str) -> Option<Vec<String>> {
    let rest = authorization.strip_prefix("AWS4-HMAC-SHA256")?;
    if !rest.starts_with(' ') {
        return None;
    }
    let list = rest.split(',').map(str::trim).find_map(|p| p.strip_prefix("SignedHeaders="))?;
    Some(list.split(';').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect())
}

/// The access check for replication (run by s3s before any operation): refuses Ferry headers
/// that are not signed by a replication credential with header authentication, and confines
/// replication credentials to [`REPLICATION_OPS`]. Returns the source a replication request
/// speaks for.
pub(crate) fn check_request(
    replicator: bool,
    op: &str,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> S3Result<Option<ReplicationRequest>> {
    let ferry: Vec<&str> = headers.keys().map(http::HeaderName::as_str).filter(|h| h.starts_with("x-ferry-")).collect();
    if !replicator {
        if ferry.is_empty() {
            return Ok(None);
        }
        return Err(denied("x-ferry-* headers are accepted only from a replication credential"));
    }
    if !REPLICATION_OPS.contains(&op) {
        return Err(denied("A replication credential may only write replicas"));
    }
    // s3s authenticates a request by the first of: a POST form, SigV2, a presigned query, the
    // Authorization header. Only the last one covers headers by name.
    let query = uri.query().unwrap_or("");
    let presigned = query.split('&').any(|p| {
        let name = p.split('=').next().unwrap_or("");
        ["X-Amz-Signature", "Signature", "AWSAccessKeyId"].contains(&name)
    });
    let form = crate::post_object::is_form_post(method, headers);
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    let signed = match (auth.next().and_then(|v| v.to_str().ok()), auth.next()) {
        (Some(a), None) if !presigned && !form => signed_headers(a),
        _ => None,
    };
    let Some(signed) = signed else {
        return Err(denied("Replication requests must use SigV4 header authentication"));
    };
    if let Some(h) = ferry.iter().find(|h| !signed.iter().any(|s| s == *h)) {
        return Err(denied(&format!("The {h} header must be signed")));
    }
    let value = headers
        .get(SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| denied("A replication request must name its source (x-ferry-source)"))?;
    let source = SourceRef::decode(value).map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
    Ok(Some(ReplicationRequest { source, action: replication_action(op) }))
}

impl FerryS3 {
    /// The replication request the access check established, if this is one.
    pub(crate) fn replication<'a, T>(&self, req: &'a S3Request<T>) -> Option<&'a ReplicationRequest> {
        req.extensions.get::<ReplicationRequest>()
    }

    /// The replica a request writes, or `None` for an ordinary request. `bucket` is the target;
    /// a replication credential must send one on every write.
    pub(crate) fn replica_of<T>(&self, req: &S3Request<T>, bucket: &BucketRecord) -> S3Result<Option<ReplicaWrite>> {
        let Some(r) = self.replication(req) else { return Ok(None) };
        let authority = r.authorize(bucket)?;
        let value = req.headers.get(REPLICA_HEADER).ok_or_else(|| denied("A replication credential may only write replicas"))?;
        let text = value.to_str().map_err(|_| s3_error!(InvalidArgument, "The {REPLICA_HEADER} header is not valid"))?;
        let meta = ReplicaMeta::decode(text).map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
        if meta.source_region != r.source.region {
            return Err(s3_error!(InvalidArgument, "The replica's region does not match its x-ferry-source"));
        }
        self.check_skew(meta.latest_time())?;
        Ok(Some(ReplicaWrite { meta, authority }))
    }

    /// Refuses a replica time further ahead of this region's clock than the configured skew.
    fn check_skew(&self, at_us: i64) -> S3Result<()> {
        let now = ferry_core::time::now_micros();
        let max = i64::try_from(self.max_clock_skew.as_micros()).unwrap_or(i64::MAX);
        if at_us.saturating_sub(now) > max {
            let ahead = Duration::from_micros(u64::try_from(at_us.saturating_sub(now)).unwrap_or(u64::MAX));
            return Err(s3_error!(
                RequestTimeTooSkewed,
                "The replica's time is {} ahead of this region's clock (at most {} is accepted): check the source region's clock",
                humantime::format_duration(Duration::from_secs(ahead.as_secs())),
                humantime::format_duration(self.max_clock_skew)
            ));
        }
        Ok(())
    }

    /// The [`REPLICA_PART_HEADER`] of an UploadPart: `Some("")` when the source does not know
    /// the part's MD5, `Some(md5_hex)` when it does, `None` for an ordinary upload. A
    /// replication credential must send it.
    pub(crate) fn replica_part_of<T>(&self, req: &S3Request<T>, bucket: &BucketRecord) -> S3Result<Option<String>> {
        let Some(r) = self.replication(req) else { return Ok(None) };
        r.authorize(bucket)?;
        let text = req
            .headers
            .get(REPLICA_PART_HEADER)
            .ok_or_else(|| denied("A replication credential may only upload replica parts"))?
            .to_str()
            .unwrap_or("?");
        if !(text.is_empty() || (text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()))) {
            return Err(s3_error!(
                InvalidArgument,
                "The {REPLICA_PART_HEADER} header must be empty or an MD5 in hex"
            ));
        }
        Ok(Some(text.to_ascii_lowercase()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn signed_header_lists_are_read_from_sigv4_header_auth_only() {
        let a = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date;X-Ferry-Replica, Signature=abc";
        assert_eq!(signed_headers(a).unwrap(), vec!["host", "x-amz-date", "x-ferry-replica"]);
        assert_eq!(signed_headers("AWS AK:sig"), None);
        assert_eq!(signed_headers("AWS4-HMAC-SHA256X Credential=a"), None);
    }

    #[test]
    fn ferry_headers_need_a_replication_credential_and_a_signature() {
        let source = SourceRef::new("us-east-1", "src", "acct").encode().unwrap();
        let put = http::Method::PUT;
        let uri: http::Uri = "/b/k".parse().unwrap();
        let signed = "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-ferry-replica;x-ferry-source, Signature=abc";
        let unsigned =
            "AWS4-HMAC-SHA256 Credential=AK/20260101/us-east-1/s3/aws4_request, SignedHeaders=host;x-ferry-source, Signature=abc";
        let h = headers(&[("authorization", signed), ("x-ferry-replica", "x"), ("x-ferry-source", &source)]);
        // Not a replication credential: refused, whatever the signature.
        assert!(check_request(false, "PutObject", &put, &uri, &h).is_err());
        // An ordinary request is untouched.
        assert!(check_request(false, "PutObject", &put, &uri, &headers(&[])).unwrap().is_none());
        let ok = check_request(true, "PutObject", &put, &uri, &h).unwrap().unwrap();
        assert_eq!(ok.source.account, "acct");
        // Unsigned Ferry header, presigned query, other operations, no source: refused.
        let h2 = headers(&[("authorization", unsigned), ("x-ferry-replica", "x"), ("x-ferry-source", &source)]);
        assert!(check_request(true, "PutObject", &put, &uri, &h2).is_err());
        let pre: http::Uri = "/b/k?X-Amz-Signature=abc".parse().unwrap();
        assert!(check_request(true, "PutObject", &put, &pre, &h).is_err());
        assert!(check_request(true, "GetObject", &http::Method::GET, &uri, &h).is_err());
        assert!(check_request(true, "CreateBucket", &put, &uri, &h).is_err());
        let h3 = headers(&[("authorization", "AWS4-HMAC-SHA256 Credential=a, SignedHeaders=host, Signature=x")]);
        assert!(check_request(true, "HeadBucket", &http::Method::HEAD, &uri, &h3).is_err());
        let two = headers(&[("authorization", signed), ("authorization", signed), ("x-ferry-source", &source)]);
        assert!(check_request(true, "HeadBucket", &http::Method::HEAD, &uri, &two).is_err());
    }
}
