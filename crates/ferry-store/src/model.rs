//! The records the store persists. Every record is written with a format version (`fmt` column,
//! [`FORMAT_VERSION`]); a reader that meets a newer format refuses it instead of guessing.
//!
//! Object keys are bytes (valid UTF-8 in practice) and are compared bytewise, which is S3's
//! listing order. They are never used as file names: bodies live in blob files named by ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checksum::Algorithm;

/// Format version of every record written by this build.
pub const FORMAT_VERSION: i64 = 1;

/// A bucket's versioning state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Versioning {
    /// Never enabled: every write is the `null` version.
    Unversioned,
    /// Every write creates a new version.
    Enabled,
    /// Writes replace the `null` version; older versions are kept.
    Suspended,
}

impl Versioning {
    /// The stored code.
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            Self::Unversioned => 0,
            Self::Enabled => 1,
            Self::Suspended => 2,
        }
    }
    /// True when new writes get a fresh version id.
    #[must_use]
    pub fn is_enabled(self) -> bool {
        self == Self::Enabled
    }
}

/// The owner of a bucket or object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Owner {
    /// Canonical user id.
    pub id: String,
    /// Display name.
    pub display_name: String,
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Grantee {
    /// A canonical user (id, display name).
    User { id: String, display_name: Option<String> },
    /// A predefined group, by URI (AllUsers, AuthenticatedUsers, LogDelivery).
    Group { uri: String },
    /// A user by e-mail address.
    Email { address: String },
}

/// One ACL grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The grantee.
    pub grantee: Grantee,
    /// FULL_CONTROL, READ, WRITE, READ_ACP or WRITE_ACP.
    pub permission: String,
}

/// Group URI of "everyone".
pub const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
/// Group URI of "any authenticated AWS user".
pub const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";
/// Group URI of the log delivery group.
pub const LOG_DELIVERY: &str = "http://acs.amazonaws.com/groups/s3/LogDelivery";

/// An access control list: the owner always has the grants listed explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Acl {
    /// The grants, in the order they are returned.
    pub grants: Vec<Grant>,
}

impl Acl {
    /// The grants a canned ACL stands for, for `owner`. `None` for an unknown name.
    #[must_use]
    pub fn canned(name: &str, owner: &Owner, bucket_owner: Option<&Owner>) -> Option<Self> {
        let full = |o: &Owner| Grant {
            grantee: Grantee::User { id: o.id.clone(), display_name: Some(o.display_name.clone()) },
            permission: "FULL_CONTROL".into(),
        };
        let group = |uri: &str, perm: &str| Grant { grantee: Grantee::Group { uri: uri.into() }, permission: perm.into() };
        // The extra grants first, then the owner's FULL_CONTROL (the order RGW returns them in).
        let mut grants = Vec::new();
        match name {
            "private" => {}
            "public-read" => grants.push(group(ALL_USERS, "READ")),
            "public-read-write" => {
                grants.push(group(ALL_USERS, "READ"));
                grants.push(group(ALL_USERS, "WRITE"));
            }
            "authenticated-read" => grants.push(group(AUTHENTICATED_USERS, "READ")),
            "log-delivery-write" => {
                grants.push(group(LOG_DELIVERY, "WRITE"));
                grants.push(group(LOG_DELIVERY, "READ_ACP"));
            }
            "bucket-owner-read" => {
                if let Some(b) = bucket_owner.filter(|b| *b != owner) {
                    grants.push(Grant {
                        grantee: Grantee::User { id: b.id.clone(), display_name: Some(b.display_name.clone()) },
                        permission: "READ".into(),
                    });
                }
            }
            "bucket-owner-full-control" => {
                if let Some(b) = bucket_owner.filter(|b| *b != owner) {
                    grants.push(full(b));
                }
            }
            _ => return None,
        }
        grants.push(full(owner));
        Some(Self { grants })
    }

    /// The private ACL of `owner`.
    #[must_use]
    pub fn private(owner: &Owner) -> Self {
        Self::canned("private", owner, None).unwrap_or_default()
    }

    /// True when the ACL grants `perm` (or FULL_CONTROL) to everyone, or to authenticated users
    /// when `authenticated` is set, or to the user `user_id`.
    #[must_use]
    pub fn allows(&self, user_id: Option<&str>, perm: &str) -> bool {
        self.grants.iter().any(|g| {
            (g.permission == perm || g.permission == "FULL_CONTROL")
                && match &g.grantee {
                    Grantee::Group { uri } => uri == ALL_USERS || (uri == AUTHENTICATED_USERS && user_id.is_some()),
                    Grantee::User { id, .. } => Some(id.as_str()) == user_id,
                    Grantee::Email { .. } => false,
                }
        })
    }

    /// Whether the ACL grants anything to everyone or to all authenticated users (what Block
    /// Public Access calls a public ACL).
    #[must_use]
    pub fn is_public(&self) -> bool {
        self.grants.iter().any(|g| matches!(&g.grantee, Grantee::Group { uri } if uri == ALL_USERS || uri == AUTHENTICATED_USERS))
    }

    /// This ACL without its grants to everyone and to all authenticated users.
    #[must_use]
    pub fn without_public(&self) -> Self {
        let grants = self
            .grants
            .iter()
            .filter(|g| !matches!(&g.grantee, Grantee::Group { uri } if uri == ALL_USERS || uri == AUTHENTICATED_USERS))
            .cloned()
            .collect();
        Self { grants }
    }
}

/// A source a bucket accepts replicas from although its account does not own the bucket
/// (cross-account replication): the account, and optionally only its buckets in one region, or
/// only one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSourceGrant {
    /// The source account (user id).
    pub account: String,
    /// Only replicas from this region (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only replicas from this bucket (`None`: any of the account's buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
}

impl ReplicaSourceGrant {
    /// True when this grant covers replicas of `account`'s bucket `bucket` in `region`.
    #[must_use]
    pub fn covers(&self, account: &str, region: &str, bucket: &str) -> bool {
        self.account == account
            && self.region.as_deref().is_none_or(|r| r == region)
            && self.bucket.as_deref().is_none_or(|b| b == bucket)
    }
}

/// Where a replica came from: the region and bucket that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub region: String,
    pub bucket: String,
}

/// A bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRecord {
    /// Bucket name.
    pub name: String,
    /// Creation time, µs since epoch.
    pub created_us: i64,
    /// Owner.
    pub owner: Owner,
    /// Versioning state.
    pub versioning: Versioning,
    /// The bucket ACL.
    pub acl: Acl,
    /// Bucket tags, `None` when never set (GetBucketTagging answers NoSuchTagSet).
    pub tagging: Option<Vec<(String, String)>>,
    /// Replication configuration (opaque to the store), if any.
    pub replication: Option<String>,
    /// Other accounts whose buckets may replicate into this one (the owner's always may).
    pub replica_sources: Vec<ReplicaSourceGrant>,
    /// Access settings (policy, Block Public Access), stored together.
    pub config: BucketConfig,
}

/// A bucket's access settings, S3 subresources that are set and read whole. Stored as one
/// JSON document (absent fields are unset), so a new setting needs no schema change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BucketConfig {
    /// The bucket policy as it was put (JSON text; checked when put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Block Public Access, bucket level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_access_block: Option<PublicAccessBlock>,
    /// CORS rules, in order (the first that matches a request answers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Vec<CorsRule>>,
    /// Object Ownership (`None`: never set, which behaves as `ObjectWriter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<ObjectOwnership>,
    /// Lifecycle rules, in the order they were put.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Vec<crate::lifecycle::LifecycleRule>>,
    /// Object Lock: enabled when present (it is never removed), with its default retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::lock::ObjectLockConfig>,
    /// Default encryption (PutBucketEncryption): how writes that ask for none are encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<crate::sse::DefaultEncryption>,
}

/// S3 Object Ownership: who owns the objects written into a bucket, and whether ACLs count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ObjectOwnership {
    /// The writer owns its objects; ACLs count.
    #[default]
    ObjectWriter,
    /// The bucket owner owns an object written with the `bucket-owner-full-control` ACL.
    BucketOwnerPreferred,
    /// ACLs are off: the bucket owner owns every object, and only policies grant access.
    BucketOwnerEnforced,
}

impl ObjectOwnership {
    /// S3's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ObjectWriter => "ObjectWriter",
            Self::BucketOwnerPreferred => "BucketOwnerPreferred",
            Self::BucketOwnerEnforced => "BucketOwnerEnforced",
        }
    }

    /// From S3's name.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        [Self::ObjectWriter, Self::BucketOwnerPreferred, Self::BucketOwnerEnforced].into_iter().find(|o| o.as_str() == name)
    }
}

impl BucketRecord {
    /// Whether Object Lock is enabled.
    #[must_use]
    pub fn object_lock(&self) -> bool {
        self.config.object_lock.is_some()
    }

    /// Whether ACLs are off (Object Ownership `BucketOwnerEnforced`).
    #[must_use]
    pub fn acls_disabled(&self) -> bool {
        self.config.ownership == Some(ObjectOwnership::BucketOwnerEnforced)
    }
}

/// One CORS rule of a bucket, as S3's `CORSRule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CorsRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub allowed_methods: Vec<String>,
    pub allowed_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<i32>,
}

impl BucketConfig {
    /// Whether nothing is set (stored as NULL).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The four switches of S3 Block Public Access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PublicAccessBlock {
    /// PUT requests that set a public ACL are refused.
    pub block_public_acls: bool,
    /// Public ACLs are ignored when authorizing.
    pub ignore_public_acls: bool,
    /// PutBucketPolicy with a public policy is refused.
    pub block_public_policy: bool,
    /// A public policy grants only to the bucket owner's account and AWS services.
    pub restrict_public_buckets: bool,
}

impl PublicAccessBlock {
    /// Each switch on when it is on in either.
    #[must_use]
    pub fn or(self, other: Self) -> Self {
        Self {
            block_public_acls: self.block_public_acls || other.block_public_acls,
            ignore_public_acls: self.ignore_public_acls || other.ignore_public_acls,
            block_public_policy: self.block_public_policy || other.block_public_policy,
            restrict_public_buckets: self.restrict_public_buckets || other.restrict_public_buckets,
        }
    }
}

/// Checksums of an object, by algorithm name (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`),
/// base64 as S3 returns them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Checksums {
    /// Algorithm → base64 value.
    pub values: BTreeMap<Algorithm, String>,
    /// What the values are a checksum of (none when there are none).
    pub kind: Option<ChecksumKind>,
}

/// What stored checksums cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ChecksumKind {
    /// The whole body's bytes.
    FullObject,
    /// The parts' checksums, of a multipart upload (`value-N`).
    Composite,
}

impl ChecksumKind {
    /// The S3 name (`FULL_OBJECT`, `COMPOSITE`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FullObject => "FULL_OBJECT",
            Self::Composite => "COMPOSITE",
        }
    }
}

/// Everything about an object version that is not needed for listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_disposition: Option<String>,
    pub content_language: Option<String>,
    pub cache_control: Option<String>,
    /// `Expires` header exactly as given (HTTP date).
    pub expires: Option<String>,
    pub website_redirect: Option<String>,
    /// `x-amz-meta-*` without the prefix, keys lowercase.
    pub user_metadata: BTreeMap<String, String>,
    pub checksums: Checksums,
    /// Object tags, in the order given.
    pub tags: Vec<(String, String)>,
    pub acl: Acl,
    /// When the tags were last changed (µs, commit clock); `None`: with the version itself.
    /// Mutual replication keeps the newest change on both sides (last writer wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_us: Option<i64>,
    /// When the ACL was last changed, as `tags_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_us: Option<i64>,
    /// For a replica (and a multipart upload a peer opened): the region and bucket it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The multipart upload that made this version: a retried CompleteMultipartUpload whose
    /// answer was lost is answered from it while the version is the key's newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// A delete marker a lifecycle rule wrote: this region's own, never replicated (a backfill
    /// passes it by too).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lifecycle: bool,
    /// Object Lock retention and legal hold ([`crate::lock`]), stored as fields of this record.
    #[serde(flatten)]
    pub lock: crate::lock::LockAttrs,
    /// Encryption at rest: the body is sealed with a data key, kept here wrapped
    /// ([`crate::sse`]). Never copied from another version: every write draws its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<crate::sse::Encryption>,
}

/// One piece of an object's body stored in a blob file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRef {
    /// Blob id (file name).
    pub blob: String,
    /// Size in bytes.
    pub size: u64,
    /// MD5 of this part, hex (the part's ETag).
    pub etag: String,
    /// The part's own checksums (multipart objects with checksums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksums: Option<Checksums>,
}

/// Where an object's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyLayout {
    /// Stored in the metadata database (small bodies, and empty ones).
    Inline(Vec<u8>),
    /// Stored in blob files, read in order. One part for a plain PUT; the uploaded parts, not
    /// copied, for a completed multipart upload.
    Parts { parts: Vec<PartRef>, multipart: bool },
}

impl BodyLayout {
    /// The blob ids this layout references.
    #[must_use]
    pub fn blobs(&self) -> Vec<String> {
        match self {
            Self::Inline(_) => Vec::new(),
            Self::Parts { parts, .. } => parts.iter().map(|p| p.blob.clone()).collect(),
        }
    }
}

impl TryFrom<i64> for Versioning {
    type Error = crate::Error;
    fn try_from(code: i64) -> crate::Result<Self> {
        Ok(match code {
            0 => Self::Unversioned,
            1 => Self::Enabled,
            2 => Self::Suspended,
            _ => return Err(crate::Error::unknown("versioning state", code)),
        })
    }
}

/// Replication status of a version, as `x-amz-replication-status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ReplStatus {
    Pending,
    Completed,
    Failed,
    Replica,
}

impl ReplStatus {
    /// The S3 header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Replica => "REPLICA",
        }
    }
    /// Parses the S3 header value.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "PENDING" => Self::Pending,
            "COMPLETED" | "COMPLETE" => Self::Completed,
            "FAILED" => Self::Failed,
            "REPLICA" => Self::Replica,
            _ => return None,
        })
    }
}

/// One version of an object, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub bucket: String,
    pub key: String,
    /// Version id (`null` for the null version).
    pub version_id: String,
    /// Last-modified, µs since epoch. Also the version's position in the key's history:
    /// versions order by (mtime_us, version_id), newest first.
    pub mtime_us: i64,
    /// True for the key's newest version (maintained by the store).
    pub is_latest: bool,
    pub delete_marker: bool,
    pub size: u64,
    /// ETag without quotes (`<md5 hex>` or `<md5 hex>-<parts>`). Empty for delete markers.
    pub etag: String,
    pub storage_class: Option<String>,
    pub owner: Owner,
    pub repl_status: Option<ReplStatus>,
    pub layout: BodyLayout,
    pub attrs: ObjectAttrs,
}

/// What a bucket holds: its versions that are not delete markers (every stored version, as
/// storage is counted), and their bytes. Kept by the write transactions that add and remove
/// versions, so reading it costs the same whatever the bucket's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketUsage {
    pub versions: u64,
    pub bytes: u64,
}

/// The listing view of a version (no body, no attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub key: String,
    pub version_id: String,
    pub mtime_us: i64,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub size: u64,
    pub etag: String,
    pub storage_class: Option<String>,
    pub owner: Owner,
    /// Algorithms of the stored checksums.
    pub checksum_algorithms: Vec<Algorithm>,
}

/// An in-progress multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub upload_id: String,
    pub bucket: String,
    pub key: String,
    pub initiated_us: i64,
    pub owner: Owner,
    pub storage_class: Option<String>,
    /// Attributes the completed object will get (headers, metadata, tags, ACL, checksum algorithm).
    pub attrs: ObjectAttrs,
    /// Checksum algorithm chosen at creation, if any.
    pub checksum_algorithm: Option<Algorithm>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub upload_id: String,
    pub part_number: u32,
    pub mtime_us: i64,
    pub part: PartRef,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored checksums keep their JSON form (algorithm names as keys, the S3 kind name), and
    /// a name this build does not know is refused, not dropped.
    #[test]
    fn checksums_keep_their_stored_form() {
        let stored = r#"{"values":{"CRC32":"AAAAAA==","SHA256":"x"},"kind":"FULL_OBJECT"}"#;
        let c: Checksums = serde_json::from_str(stored).unwrap();
        assert_eq!(c.values.keys().copied().collect::<Vec<_>>(), vec![Algorithm::Crc32, Algorithm::Sha256]);
        assert_eq!(c.kind, Some(ChecksumKind::FullObject));
        assert_eq!(serde_json::to_string(&c).unwrap(), stored);
        assert!(serde_json::from_str::<Checksums>(r#"{"values":{"CRC128":"x"},"kind":null}"#).is_err());
        assert!(serde_json::from_str::<Checksums>(r#"{"values":{},"kind":"PARTIAL"}"#).is_err());
    }

    /// Enum codes read back from the database are refused when unknown.
    #[test]
    fn unknown_codes_are_refused() {
        assert_eq!(Versioning::try_from(2).ok(), Some(Versioning::Suspended));
        assert!(matches!(Versioning::try_from(3), Err(crate::Error::UnknownFormat { .. })));
        assert!(crate::replication::JobOp::try_from(4).is_err());
        assert!(crate::replication::JobState::try_from(-1).is_err());
        assert!("paused".parse::<crate::replication::BackfillState>().is_ok());
        assert!("stalled".parse::<crate::replication::BackfillState>().is_err());
        assert!("some".parse::<crate::replication::StatusFilter>().is_err());
    }
}
