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

/// The batch of small replicas one request carries to a Ferry peer:
/// `POST /BUCKET?ferry-replicas`, signed by a replication credential with the payload's
/// SHA-256 and the [`SOURCE_HEADER`] every entry shares. Each entry is a PutObject as the
/// single-request path would send it: its key, its headers (lowercase names, the
/// [`REPLICA_HEADER`] among them, never the source header) and its body. The peer applies each
/// as that PutObject and answers one [`BatchResult`] per entry, in order
/// ([`BatchAnswer`]); an entry's failure is its own. A peer refuses an entry header it does not
/// know, so a sender that adds one needs a new [`BATCH_MAGIC`].
///
/// Body layout (all lengths big-endian):
/// `BATCH_MAGIC`, then per entry: a `u32` length and that many bytes of the JSON
/// [`BatchEntryHead`], a `u64` length and that many bytes of body.
pub mod batch {
    use serde::{Deserialize, Serialize};

    use crate::error::{Error, Result};

    /// The query parameter that names the batch request.
    pub const BATCH_QUERY: &str = "ferry-replicas";
    /// The first bytes of a batch body; a newer layout gets another.
    pub const BATCH_MAGIC: &[u8; 8] = b"FERRYB1\n";
    /// Most entries in one batch.
    pub const MAX_BATCH_ENTRIES: usize = 64;
    /// Most bytes in one batch body (what the peer reads into memory, at most).
    pub const MAX_BATCH_BYTES: usize = 4 << 20;
    /// Most bytes of one entry's JSON head (a sender keeps larger ones out of batches).
    pub const MAX_HEAD_BYTES: usize = 64 << 10;

    /// An entry's key and headers.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BatchEntryHead {
        pub key: String,
        /// `(name, value)`, names lowercase.
        pub headers: Vec<(String, String)>,
    }

    /// One entry as read from a batch body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BatchEntry {
        pub head: BatchEntryHead,
        pub body: bytes::Bytes,
    }

    /// The outcome of one entry: the status and S3 error code the single PutObject would have
    /// answered (200 and no code when applied).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BatchResult {
        pub status: u16,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub code: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub message: String,
    }

    /// The JSON answer to a batch: one result per entry, in the order sent.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct BatchAnswer {
        pub results: Vec<BatchResult>,
    }

    /// Appends one entry to `out` (which starts with [`BATCH_MAGIC`]).
    ///
    /// # Errors
    /// A head that does not encode (never in practice).
    pub fn push_entry(out: &mut Vec<u8>, head: &BatchEntryHead, body: &[u8]) -> Result<()> {
        let text = serde_json::to_vec(head)?;
        let len = u32::try_from(text.len()).map_err(|_| Error::Other("batch entry head too large".to_owned()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&text);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        out.extend_from_slice(body);
        Ok(())
    }

    /// Reads a batch body. Refuses (InvalidRequest) a body that is not exactly a sequence of
    /// well-formed entries, or that has more than [`MAX_BATCH_ENTRIES`].
    ///
    /// # Errors
    /// InvalidRequest, with what is wrong.
    pub fn decode(body: &bytes::Bytes) -> Result<Vec<BatchEntry>> {
        let bad = |what: &str| Error::InvalidRequest(format!("malformed replica batch: {what}"));
        let rest = body.strip_prefix(BATCH_MAGIC.as_slice()).ok_or_else(|| bad("unknown layout"))?;
        let mut at = body.len() - rest.len();
        let mut entries = Vec::new();
        while at < body.len() {
            if entries.len() == MAX_BATCH_ENTRIES {
                return Err(bad(&format!("more than {MAX_BATCH_ENTRIES} entries")));
            }
            let head_len = take_len::<4>(body, &mut at).ok_or_else(|| bad("truncated head length"))?;
            if head_len > MAX_HEAD_BYTES as u64 {
                return Err(bad("entry head too large"));
            }
            let head = take(body, &mut at, head_len).ok_or_else(|| bad("truncated head"))?;
            let head: BatchEntryHead = serde_json::from_slice(&head).map_err(|e| bad(&format!("entry head: {e}")))?;
            let body_len = take_len::<8>(body, &mut at).ok_or_else(|| bad("truncated body length"))?;
            let data = take(body, &mut at, body_len).ok_or_else(|| bad("truncated body"))?;
            entries.push(BatchEntry { head, body: data });
        }
        Ok(entries)
    }

    /// A big-endian length of `N` bytes at `*at`.
    fn take_len<const N: usize>(body: &[u8], at: &mut usize) -> Option<u64> {
        let bytes: [u8; N] = body.get(*at..at.checked_add(N)?)?.try_into().ok()?;
        *at += N;
        let mut wide = [0u8; 8];
        wide[8 - N..].copy_from_slice(&bytes);
        Some(u64::from_be_bytes(wide))
    }

    /// `len` bytes at `*at`, shared with `body`.
    fn take(body: &bytes::Bytes, at: &mut usize, len: u64) -> Option<bytes::Bytes> {
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        if end > body.len() {
            return None;
        }
        let out = body.slice(*at..end);
        *at = end;
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn head(key: &str) -> BatchEntryHead {
            BatchEntryHead { key: key.to_owned(), headers: vec![("content-type".to_owned(), "text/plain".to_owned())] }
        }

        #[test]
        fn a_batch_reads_back_as_written() {
            let mut out = BATCH_MAGIC.to_vec();
            push_entry(&mut out, &head("a/b"), b"hello").unwrap();
            push_entry(&mut out, &head("empty"), b"").unwrap();
            let entries = decode(&bytes::Bytes::from(out)).unwrap();
            assert_eq!(entries.len(), 2);
            assert_eq!(entries[0].head, head("a/b"));
            assert_eq!(&entries[0].body[..], b"hello");
            assert_eq!(entries[1].head.key, "empty");
            assert!(entries[1].body.is_empty());
            // No entries at all is a valid (empty) batch.
            assert!(decode(&bytes::Bytes::from_static(BATCH_MAGIC)).unwrap().is_empty());
        }

        #[test]
        fn malformed_batches_are_refused_not_misread() {
            let mut good = BATCH_MAGIC.to_vec();
            push_entry(&mut good, &head("k"), b"body").unwrap();
            // Every truncation of a good batch but the two ends is refused.
            for cut in BATCH_MAGIC.len() + 1..good.len() {
                let r = decode(&bytes::Bytes::copy_from_slice(&good[..cut]));
                assert!(matches!(r, Err(Error::InvalidRequest(_))), "cut at {cut}: {r:?}");
            }
            assert!(decode(&bytes::Bytes::from_static(b"FERRYB2\n")).is_err());
            assert!(decode(&bytes::Bytes::new()).is_err());
            // A body length beyond the end, even one that would overflow.
            let mut huge = BATCH_MAGIC.to_vec();
            let text = serde_json::to_vec(&head("k")).unwrap();
            huge.extend_from_slice(&u32::try_from(text.len()).unwrap().to_be_bytes());
            huge.extend_from_slice(&text);
            huge.extend_from_slice(&u64::MAX.to_be_bytes());
            assert!(decode(&bytes::Bytes::from(huge)).is_err());
            // A head that is not the JSON of a head.
            let mut junk = BATCH_MAGIC.to_vec();
            junk.extend_from_slice(&3u32.to_be_bytes());
            junk.extend_from_slice(b"{x}");
            junk.extend_from_slice(&0u64.to_be_bytes());
            assert!(decode(&bytes::Bytes::from(junk)).is_err());
            // Too many entries.
            let mut many = BATCH_MAGIC.to_vec();
            for i in 0..=MAX_BATCH_ENTRIES {
                push_entry(&mut many, &head(&i.to_string()), b"").unwrap();
            }
            assert!(decode(&bytes::Bytes::from(many)).is_err());
        }
    }
}
