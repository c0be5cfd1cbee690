//! The replica wire format: what a Ferry region adds to standard S3 requests when it sends a
//! replica to a Ferry peer, and how the peer reads it. Every header is versioned (`format`);
//! a reader that meets a newer format refuses it.
//!
//! - [`SOURCE_HEADER`] on every request from a peer: on whose behalf it comes ([`SourceRef`]).
//! - [`REPLICA_HEADER`] on a replica write: the identity to keep ([`ReplicaMeta`]: version id,
//!   time, owner, ACL, checksums).
//! - [`REPLICA_PART_HEADER`] on a replica's UploadPart.
//!
//! Who may send them, and what a destination checks, is in docs/REPLICATION.md ("Security").

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Header that marks a request as a replica write from a Ferry peer. Its value is the
/// base64url (no padding) of the JSON [`ReplicaMeta`]. The destination honours it only from a
/// replication credential, under SigV4 header authentication with the header signed (never on
/// presigned, POST-form or SigV2 requests), and only into a bucket that accepts the source
/// named by [`SOURCE_HEADER`].
pub const REPLICA_HEADER: &str = "x-ferry-replica";

/// On an UploadPart from a Ferry peer: the part's MD5 (hex) as the source knows it, or empty
/// when the source cut the part out of a larger body and does not know it. The part must then
/// carry a checksum (header or trailer) that the destination verifies instead of computing MD5.
pub const REPLICA_PART_HEADER: &str = "x-ferry-replica-part";

/// On every request from a Ferry peer: on whose behalf it comes, as the base64url JSON of a
/// [`SourceRef`] (the source region, bucket, and the account that owns that bucket). The
/// destination bucket must accept that account (its owner, or a grant in its replica sources).
pub const SOURCE_HEADER: &str = "x-ferry-source";

/// The source of a replication request: which region's bucket, owned by which account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Format version of this record.
    pub format: u32,
    /// The source region.
    pub region: String,
    /// The source bucket.
    pub bucket: String,
    /// The account (user id) that owns the source bucket.
    pub account: String,
}

impl SourceRef {
    /// The source of `bucket` (owned by `account`) in `region`.
    #[must_use]
    pub fn new(region: &str, bucket: &str, account: &str) -> Self {
        Self { format: 1, region: region.to_owned(), bucket: bucket.to_owned(), account: account.to_owned() }
    }

    /// Encodes for the header.
    ///
    /// # Errors
    /// Never in practice.
    pub fn encode(&self) -> Result<String> {
        encode_header(self)
    }

    /// Decodes a header value.
    ///
    /// # Errors
    /// When the value is not base64url JSON of this record, or of a newer format.
    pub fn decode(value: &str) -> Result<Self> {
        let s: Self = decode_header(SOURCE_HEADER, value)?;
        if s.format > 1 {
            return Err(Error::unknown("x-ferry-source format", s.format));
        }
        if s.region.is_empty() || s.bucket.is_empty() || s.account.is_empty() {
            return Err(Error::Other(format!(
                "bad {SOURCE_HEADER} header: region, bucket and account are required"
            )));
        }
        Ok(s)
    }
}

fn encode_header<T: Serialize>(value: &T) -> Result<String> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value)?))
}

fn decode_header<T: serde::de::DeserializeOwned>(name: &str, value: &str) -> Result<T> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim())
        .map_err(|e| Error::Other(format!("bad {name} header: {e}")))?;
    serde_json::from_slice(&raw).map_err(|e| Error::Other(format!("bad {name} header: {e}")))
}

/// What a replica carries beyond the standard S3 headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicaMeta {
    /// Format version of this record.
    pub format: u32,
    /// The region the change comes from.
    pub source_region: String,
    /// The source version id (kept on the replica).
    pub version_id: String,
    /// The source last-modified, µs since epoch (kept on the replica).
    pub mtime_us: i64,
    /// The source ETag, when the replica's bytes arrive in a different part layout.
    #[serde(default)]
    pub etag: Option<String>,
    /// The source owner; `None` when the rule gives replicas to the destination bucket's owner.
    #[serde(default)]
    pub owner: Option<crate::model::Owner>,
    /// The source ACL; `None` with an owner override (replicas get the owner's private ACL).
    #[serde(default)]
    pub acl: Option<crate::model::Acl>,
    /// The source's stored checksums, kept on the replica (whatever part layout it arrives in).
    #[serde(default)]
    pub checksums: Option<crate::model::Checksums>,
    /// When the tags were last changed at the source (last writer wins on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_us: Option<i64>,
    /// When the ACL was last changed at the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_us: Option<i64>,
    /// The version's Object Lock settings at the source, with their change times (kept on the
    /// replica; the newer change wins on both sides, within [`crate::lock`]'s limits).
    #[serde(flatten)]
    pub lock: crate::lock::LockAttrs,
}

impl ReplicaMeta {
    /// Encodes for the header.
    ///
    /// # Errors
    /// Never in practice.
    pub fn encode(&self) -> Result<String> {
        encode_header(self)
    }

    /// Decodes a header value.
    ///
    /// # Errors
    /// When the value is not base64url JSON of this record, or of a newer format, or names an
    /// invalid version id or a negative time.
    pub fn decode(value: &str) -> Result<Self> {
        let meta: Self = decode_header(REPLICA_HEADER, value)?;
        if meta.format > 1 {
            return Err(Error::unknown("x-ferry-replica format", meta.format));
        }
        if !ferry_core::ids::is_valid_version_id(&meta.version_id) {
            return Err(Error::Other(format!("bad {REPLICA_HEADER} header: invalid version id")));
        }
        if [Some(meta.mtime_us), meta.tags_us, meta.acl_us, meta.lock.retention_us, meta.lock.legal_hold_us]
            .into_iter()
            .flatten()
            .any(|t| t < 0)
        {
            return Err(Error::Other(format!("bad {REPLICA_HEADER} header: negative time")));
        }
        Ok(meta)
    }

    /// The latest time the replica carries (its version's, or a tag, ACL or lock change's).
    /// A retention's date is not a time anything happened: it is not counted.
    #[must_use]
    pub fn latest_time(&self) -> i64 {
        [self.tags_us, self.acl_us, self.lock.retention_us, self.lock.legal_hold_us]
            .into_iter()
            .flatten()
            .fold(self.mtime_us, i64::max)
    }
}
