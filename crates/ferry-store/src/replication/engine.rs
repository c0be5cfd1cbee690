//! The port through which the S3 layer asks the replication engine about other regions
//! (implemented by `ferry-replication`, which talks to the peers), so that neither depends on
//! the other.

use crate::replication::wire::SourceRef;

/// What the S3 layer needs from the replication engine to validate a configuration and to
/// verify one: where buckets are, whether a destination takes replicas from a source, the
/// destinations of other buckets (to refuse cycles), and listings. Implemented by the engine,
/// which talks to the peers. Every question is asked on behalf of `source` (the bucket whose
/// rules are concerned, and its owner's account): a destination answers only what that account
/// may see.
#[async_trait::async_trait]
pub trait PeerDirectory: Send + Sync {
    /// The regions (this one and the peers) that hold a bucket named `bucket`.
    async fn locate_bucket(&self, source: &SourceRef, bucket: &str) -> Vec<String>;
    /// Checks that `bucket` on `peer` exists, has versioning enabled, and accepts replicas from
    /// `source`'s account (a Ferry peer decides; for an S3 peer, the peer's `accounts`). The
    /// error says why not; `Err((true, why))` when the account is not allowed.
    async fn check_destination(&self, source: &SourceRef, peer: &str, bucket: &str) -> std::result::Result<(), (bool, String)>;
    /// The destinations (peer, bucket) that `bucket` on `peer` replicates to; empty when none
    /// or unknown (a non-Ferry peer, or not visible to `source`'s account).
    async fn destinations_of(&self, source: &SourceRef, peer: &str, bucket: &str) -> Vec<(String, String)>;
    /// True when `name` is this region or a known peer.
    fn knows(&self, name: &str) -> bool;
    /// True when `name` is a Ferry peer (version ids are kept there).
    fn is_ferry(&self, name: &str) -> bool;
    /// One page of the versions of `bucket` on `peer` under `prefix`, after the marker; and the
    /// marker of the next page.
    async fn list_versions(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        prefix: &str,
        after: Option<(String, String)>,
    ) -> std::result::Result<(Vec<RemoteVersion>, Option<(String, String)>), String>;
    /// Metadata of one version on `peer` (`version_id` `None`: the latest), `None` if absent.
    async fn head(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> std::result::Result<Option<RemoteHead>, String>;
}

/// A version as a peer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub etag: String,
    pub size: u64,
    /// Last-modified, milliseconds since the epoch (listings have millisecond precision).
    pub mtime_ms: i64,
}

/// What a HEAD on a peer tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteHead {
    pub etag: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub user_metadata: std::collections::BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
}
