//! Helpers shared by the operation files: identities and permissions, conversions between store
//! records and s3s DTOs, and input validation.

use std::collections::BTreeMap;

use ferry_core::time::micros_to_datetime;
use ferry_store::model::{Acl, BucketRecord, Grant, Grantee, Owner};
use s3s::dto::{ETag, Timestamp};
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, s3_error};

use crate::FerryS3;
use crate::auth::User;
use crate::error::StoreResultExt;

/// The raw value of a header that s3s does not model for an operation.
pub fn raw_header<'a, T>(req: &'a S3Request<T>, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Longest object key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest total size of user metadata (keys + values), in bytes.
pub const MAX_METADATA_SIZE: usize = 2048;
/// Largest single PUT (5 GiB).
pub const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Most tags on an object.
pub const MAX_OBJECT_TAGS: usize = 10;

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
    /// credentials (not accounts: their rights come from [`crate::replica::ReplicationRequest`]).
    pub(crate) fn user<T>(&self, req: &S3Request<T>) -> Option<&User> {
        req.credentials.as_ref().and_then(|c| self.users.account(&c.access_key))
    }

    /// The signed-in user or AccessDenied.
    pub(crate) fn require_user<T>(&self, req: &S3Request<T>) -> S3Result<&User> {
        self.user(req).ok_or_else(access_denied)
    }

    /// Loads a bucket (no permission check).
    pub(crate) async fn load_bucket(&self, name: &str) -> S3Result<BucketRecord> {
        let n = name.to_owned();
        let bucket = self.store.meta.read(move |r| r.get_bucket(&n)).await.s3()?;
        bucket.ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))
    }

    /// Loads a bucket and checks that the requester has `perm` on it. A replication request
    /// (confined to the operations replication needs by the access check) is allowed when the
    /// bucket accepts its source.
    pub(crate) async fn bucket_for<T>(&self, req: &S3Request<T>, name: &str, perm: Perm) -> S3Result<BucketRecord> {
        let bucket = self.load_bucket(name).await?;
        match self.replication(req) {
            Some(r) => {
                r.authorize(&bucket)?;
            }
            None => check_perm(self.user(req).map(|u| &u.owner), &bucket.owner, &bucket.acl, perm)?,
        }
        Ok(bucket)
    }
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

/// Microseconds since the epoch → s3s timestamp.
pub fn ts(us: i64) -> Timestamp {
    Timestamp::from(micros_to_datetime(us))
}

/// Microseconds → whole seconds (the precision of HTTP dates).
pub fn secs(us: i64) -> i64 {
    us.div_euclid(1_000_000)
}

/// s3s timestamp → whole seconds since the epoch.
pub fn ts_secs(t: &Timestamp) -> i64 {
    time::OffsetDateTime::from(t.clone()).unix_timestamp()
}

/// A stored ETag (no quotes) → s3s ETag.
pub fn etag(s: &str) -> ETag {
    ETag::Strong(s.to_owned())
}

/// A store owner → s3s owner.
pub fn owner_dto(o: &Owner) -> s3s::dto::Owner {
    s3s::dto::Owner { display_name: Some(o.display_name.clone()), id: Some(o.id.clone()) }
}

/// Validates an object key.
pub fn check_key(key: &str) -> S3Result<()> {
    if key.is_empty() {
        return Err(s3_error!(InvalidArgument, "The object key must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(s3_error!(KeyTooLongError, "Your key is too long"));
    }
    Ok(())
}

/// Validates user metadata and normalizes keys to lowercase.
pub fn user_metadata(meta: Option<s3s::dto::Metadata>) -> S3Result<BTreeMap<String, String>> {
    let meta: BTreeMap<String, String> = meta.unwrap_or_default().into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    let size: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_SIZE {
        return Err(s3_error!(
            MetadataTooLarge,
            "Your metadata headers exceed the maximum allowed metadata size"
        ));
    }
    Ok(meta)
}

/// Parses and validates a tag set given as a URL-encoded query string (`x-amz-tagging`).
pub fn parse_tagging_header(s: &str) -> S3Result<Vec<(String, String)>> {
    let mut tags = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |x: &str| {
            percent_encoding::percent_decode_str(&x.replace('+', " "))
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| s3_error!(InvalidArgument, "The tagging header is not valid UTF-8"))
        };
        tags.push((dec(k)?, dec(v)?));
    }
    validate_tags(&tags, MAX_OBJECT_TAGS)?;
    tags.sort();
    Ok(tags)
}

/// Validates a tag set: count, lengths, unique keys.
pub fn validate_tags(tags: &[(String, String)], max: usize) -> S3Result<()> {
    if tags.len() > max {
        return Err(s3_error!(InvalidTag, "Object tags cannot be greater than {max}"));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 {
            return Err(s3_error!(InvalidTag, "The TagKey you have provided is invalid"));
        }
        if v.chars().count() > 256 {
            return Err(s3_error!(InvalidTag, "The TagValue you have provided is invalid"));
        }
        if !seen.insert(k) {
            return Err(s3_error!(InvalidTag, "Cannot provide multiple Tags with the same key"));
        }
    }
    Ok(())
}

/// The s3s tag list → (key, value) pairs, sorted by key (tags are a set; stored sorted).
pub fn tags_from_dto(set: Vec<s3s::dto::Tag>) -> Vec<(String, String)> {
    let mut tags: Vec<_> = set.into_iter().map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default())).collect();
    tags.sort();
    tags
}

/// (key, value) pairs → s3s tag list.
pub fn tags_to_dto(tags: &[(String, String)]) -> Vec<s3s::dto::Tag> {
    tags.iter().map(|(k, v)| s3s::dto::Tag { key: Some(k.clone()), value: Some(v.clone()) }).collect()
}

/// Grant headers (`x-amz-grant-read: id="..", uri="..", emailAddress=".."`) of a request.
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

/// URL-encodes a key or prefix for `encoding-type=url` listings (everything but unreserved
/// characters and `/`).
pub fn url_encode(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub use ferry_store::meta::prefix_end;

/// An S3 error with a custom code and HTTP status.
pub fn custom_error(code: &str, status: http::StatusCode, msg: &str) -> S3Error {
    let mut e = S3Error::with_message(S3ErrorCode::Custom(code.to_owned().into()), msg.to_owned());
    e.set_status_code(status);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_cases() {
        assert_eq!(prefix_end(b"abc"), Some(b"abd".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn tagging_header() {
        let t = parse_tagging_header("a=1&b%20c=x+y&empty=").unwrap();
        assert_eq!(
            t,
            vec![("a".into(), "1".into()), ("b c".into(), "x y".into()), ("empty".into(), String::new())]
        );
        assert!(parse_tagging_header("a=1&a=2").is_err());
        assert_eq!(parse_tagging_header("z=1&a=2").unwrap()[0].0, "a", "sorted by key");
        let many: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(parse_tagging_header(&many.join("&")).is_err());
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode("a b/c+d%"), "a%20b/c%2Bd%25");
    }

    #[test]
    fn metadata_limit() {
        let mut m = s3s::dto::Metadata::new();
        m.insert("K".into(), "v".repeat(2000));
        assert_eq!(user_metadata(Some(m.clone())).unwrap().keys().next().map(String::as_str), Some("k"));
        m.insert("k2".into(), "v".repeat(100));
        assert!(user_metadata(Some(m)).is_err());
    }
}
