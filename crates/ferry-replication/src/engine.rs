//! The engine's side of the store's [`ReplicationEngine`] port: what the S3 layer asks about
//! other regions when a configuration is put (where a bucket is, whether a destination takes
//! replicas, cycles), and verify.

use std::sync::Arc;

use aws_sdk_s3::error::SdkError;
use ferry_store::Store;
use ferry_store::replication::api::VerifyLine;
use ferry_store::replication::{DestinationArn, DestinationRefused, ReplicationEngine, SourceRef};
use tokio::sync::mpsc;

use crate::peers::{PeerSet, describe, http_status, source_header};

/// The replication engine of one region, as the S3 layer sees it.
pub struct Engine {
    store: Arc<Store>,
    peers: Arc<PeerSet>,
}

impl Engine {
    /// The engine of the region whose store and peers these are.
    #[must_use]
    pub fn new(store: Arc<Store>, peers: Arc<PeerSet>) -> Self {
        Self { store, peers }
    }
}

#[async_trait::async_trait]
impl ReplicationEngine for Engine {
    async fn locate_bucket(&self, source: &SourceRef, bucket: &str) -> Vec<String> {
        let mut found = Vec::new();
        for p in self.peers.all() {
            let out = if p.is_ferry() {
                p.client.head_bucket().bucket(bucket).customize().mutate_request(source_header(source)).send().await
            } else {
                p.client.head_bucket().bucket(bucket).send().await
            };
            // 403: the bucket exists there but does not accept this source (said precisely later).
            if out.is_ok() || out.as_ref().err().and_then(http_status) == Some(403) {
                found.push(p.name.clone());
            }
        }
        found
    }

    async fn check_destination(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        object_lock: bool,
    ) -> Result<(), DestinationRefused> {
        let p = self.peers.get(peer).ok_or_else(|| DestinationRefused::Invalid(format!("unknown peer {peer}")))?;
        if !p.is_ferry() && !p.accounts.contains(&source.account) {
            return Err(DestinationRefused::AccessDenied(format!(
                "account {} may not replicate to the S3 service `{peer}`: list it in that [[peer]]'s `accounts`",
                source.account
            )));
        }
        let out = if p.is_ferry() {
            p.client.get_bucket_versioning().bucket(bucket).customize().mutate_request(source_header(source)).send().await
        } else {
            p.client.get_bucket_versioning().bucket(bucket).send().await
        };
        let enabled = match out {
            Ok(v) => v.status().map(aws_sdk_s3::types::BucketVersioningStatus::as_str) == Some("Enabled"),
            // A 200 the SDK could not parse (some S3 servers name the XML root differently):
            // read the status from the body itself.
            Err(SdkError::ServiceError(s)) if s.raw().status().is_success() => {
                s.raw().body().bytes().is_some_and(|b| String::from_utf8_lossy(b).contains("<Status>Enabled</Status>"))
            }
            Err(e) if http_status(&e) == Some(403) => return Err(DestinationRefused::AccessDenied(describe(&e))),
            Err(e) => return Err(DestinationRefused::Invalid(describe(&e))),
        };
        if !enabled {
            return Err(DestinationRefused::Invalid(
                "versioning is not enabled on the destination bucket".to_owned(),
            ));
        }
        if !object_lock {
            return Ok(());
        }
        let out = if p.is_ferry() {
            p.client.get_object_lock_configuration().bucket(bucket).customize().mutate_request(source_header(source)).send().await
        } else {
            p.client.get_object_lock_configuration().bucket(bucket).send().await
        };
        let locked = match out {
            Ok(o) => o.object_lock_configuration().and_then(|c| c.object_lock_enabled()).map(|e| e.as_str()) == Some("Enabled"),
            Err(e) if http_status(&e) == Some(404) => false,
            Err(e) if http_status(&e) == Some(403) => return Err(DestinationRefused::AccessDenied(describe(&e))),
            Err(e) => return Err(DestinationRefused::Invalid(describe(&e))),
        };
        if locked {
            Ok(())
        } else {
            Err(DestinationRefused::Invalid(
                "the source bucket has Object Lock and the destination bucket does not: it could not keep the source's locked versions"
                    .to_owned(),
            ))
        }
    }

    async fn destinations_of(&self, source: &SourceRef, peer: &str, bucket: &str) -> Vec<(String, String)> {
        let Some(p) = self.peers.get(peer) else { return Vec::new() };
        if !p.is_ferry() {
            return Vec::new();
        }
        let Ok(out) =
            p.client.get_bucket_replication().bucket(bucket).customize().mutate_request(source_header(source)).send().await
        else {
            return Vec::new();
        };
        out.replication_configuration()
            .map(|c| {
                c.rules()
                    .iter()
                    .filter_map(|r| {
                        // Ferry reports destinations with their region pinned.
                        let arn = DestinationArn::parse(r.destination()?.bucket()).ok()?;
                        Some((arn.region?, arn.bucket))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn knows(&self, name: &str) -> bool {
        self.peers.knows(name)
    }

    fn verify(&self, bucket: &str, rule_id: Option<&str>) -> mpsc::Receiver<VerifyLine> {
        crate::verify::start(self.store.clone(), self.peers.clone(), bucket.to_owned(), rule_id.map(str::to_owned))
    }
}
