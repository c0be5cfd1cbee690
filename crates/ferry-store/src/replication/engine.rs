//! The port through which the S3 layer asks the replication engine about other regions
//! (implemented by `ferry-replication`, which talks to the peers), so that neither crate
//! depends on the other. Its questions are coarse: the S3 layer never lists or reads a peer.

use tokio::sync::mpsc;

use crate::replication::api::VerifyLine;
use crate::replication::wire::SourceRef;

/// Why a destination cannot take a rule's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationRefused {
    /// The source's account may not replicate there.
    AccessDenied(String),
    /// The destination is missing, unversioned, or unreachable.
    Invalid(String),
}

impl std::fmt::Display for DestinationRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AccessDenied(m) | Self::Invalid(m) => f.write_str(m),
        }
    }
}

/// What the S3 layer needs from the replication engine: to validate a configuration (where
/// buckets are, whether a destination takes replicas from a source, the destinations of other
/// buckets to refuse cycles) and to verify one. Every question is asked on behalf of `source`
/// (the bucket whose rules are concerned, and its owner's account): a destination answers only
/// what that account may see.
#[async_trait::async_trait]
pub trait ReplicationEngine: Send + Sync {
    /// The regions (this one and the peers) that hold a bucket named `bucket`.
    async fn locate_bucket(&self, source: &SourceRef, bucket: &str) -> Vec<String>;
    /// Checks that `bucket` on `peer` exists, has versioning enabled, and accepts replicas from
    /// `source`'s account (a Ferry peer decides; for an S3 peer, the peer's `accounts`).
    ///
    /// `object_lock`: the source bucket has Object Lock, so the destination must have it too
    /// (it would refuse the source's locked versions).
    async fn check_destination(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        object_lock: bool,
    ) -> Result<(), DestinationRefused>;
    /// The destinations (peer, bucket) that `bucket` on `peer` replicates to; empty when none
    /// or unknown (a non-Ferry peer, or not visible to `source`'s account).
    async fn destinations_of(&self, source: &SourceRef, peer: &str, bucket: &str) -> Vec<(String, String)>;
    /// True when `name` is this region or a known peer.
    fn knows(&self, name: &str) -> bool;
    /// Compares this region's `bucket` with the destinations of its enabled rules (or of rule
    /// `rule_id`), streaming the result; the comparison stops when the receiver is dropped.
    fn verify(&self, bucket: &str, rule_id: Option<&str>) -> mpsc::Receiver<VerifyLine>;
}
