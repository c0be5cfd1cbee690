//! The progress monitor: every few seconds, computes each replicated bucket's progress, sets
//! the gauges (pending operations and bytes, lag, backfill ratio), and watches each rule's
//! recovery point objective: when the lag goes over it, a warning is logged, a counter
//! incremented and an `OperationMissedThreshold` event recorded (shown by `ferry replication
//! status` and the admin API); when the lag comes back under it, an
//! `OperationReplicatedAfterThreshold` event.
//!
//! In a region of several nodes every node sets its own gauges, but only the leading node
//! ([`ferry_store::Meta::leads`]) records RPO events and fails orphaned jobs, so an event is
//! recorded once per region; a node that starts leading first reloads the rules' last events.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState};
use ferry_core::metrics::{RegionMetrics, RuleLabels};
use ferry_store::Store;
use ferry_store::replication::fail;
use ferry_store::replication::progress::{bucket_progress, record_event};

use crate::peers::PeerSet;
use tokio_util::sync::CancellationToken;

/// How often progress is computed.
const PERIOD: Duration = Duration::from_secs(2);

/// Event kind recorded when a rule's lag goes over its RPO.
pub const MISSED: &str = "OperationMissedThreshold";
/// Event kind recorded when it comes back under.
pub const RECOVERED: &str = "OperationReplicatedAfterThreshold";

/// Jobs of an unconfigured peer failed per transaction.
const ORPHAN_BATCH: usize = 500;

/// Updates gauges and RPO events of a region, and fails the jobs of peers no longer configured.
pub struct Monitor {
    store: Arc<Store>,
    peers: Arc<PeerSet>,
    region: String,
    metrics: Arc<RegionMetrics>,
    /// (bucket, rule) currently over their RPO.
    over: HashSet<(String, String)>,
    loaded: bool,
}

impl Monitor {
    /// A monitor of `store`.
    #[must_use]
    pub fn new(store: Arc<Store>, peers: Arc<PeerSet>, metrics: Arc<RegionMetrics>) -> Self {
        let region = peers.local().to_owned();
        Self { store, peers, region, metrics, over: HashSet::new(), loaded: false }
    }

    /// Jobs for a peer removed from the configuration would wait for ever: they fail, with the
    /// reason, a batch per transaction.
    async fn fail_orphans(&self) -> Result<(), WorkerError> {
        let peers = self.store.meta.read(|r| r.peers_with_jobs()).await?;
        for peer in peers.into_iter().filter(|p| !self.peers.knows(p)) {
            tracing::warn!(%peer, "jobs for a peer that is not configured: failing them");
            loop {
                let p = peer.clone();
                let n = self
                    .store
                    .meta
                    .write(move |tx| {
                        let jobs = tx.pending_jobs_of_peer(&p, ORPHAN_BATCH)?;
                        let why = format!("peer {p} is not configured (any more): add it back and run `ferry replication retry`");
                        for j in &jobs {
                            fail(tx, j, &why)?;
                        }
                        Ok(jobs.len())
                    })
                    .await?;
                if n < ORPHAN_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Rules that were over their RPO when the process stopped (their last event says so).
    async fn load_state(&mut self) -> Result<(), WorkerError> {
        let buckets = self.store.meta.read(|r| r.list_buckets()).await?;
        for b in buckets.into_iter().filter(|b| b.replication.is_some()) {
            let name = b.name.clone();
            // Newest first: the first RPO event seen for a rule is its current state.
            let events = self.store.meta.read(move |r| r.latest_events(&name, None, Some("Operation"), 10_000)).await?;
            let mut last: std::collections::HashMap<String, String> = std::collections::HashMap::new();
            for e in events {
                last.entry(e.rule_id).or_insert(e.kind);
            }
            for (rule, kind) in last {
                if kind == MISSED {
                    self.over.insert((b.name.clone(), rule));
                }
            }
        }
        self.loaded = true;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Worker for Monitor {
    fn name(&self) -> String {
        "replication-monitor".into()
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let leads = self.store.meta.leads().await?;
        if !leads {
            // What another node recorded meanwhile is reloaded once this one leads.
            self.loaded = false;
        }
        if leads && !self.loaded {
            self.over.clear();
            self.load_state().await?;
        }
        if leads {
            self.fail_orphans().await?;
        }
        let buckets = self.store.meta.read(|r| r.list_buckets()).await?;
        for b in buckets.into_iter().filter(|b| b.replication.is_some()) {
            let p = bucket_progress(&self.store, &b.name, &self.region).await?;
            for r in &p.rules {
                let labels = RuleLabels {
                    bucket: b.name.clone(),
                    rule: r.id.clone(),
                    destination: format!("{}/{}", r.destination_region, r.destination_bucket),
                };
                self.metrics
                    .replication_pending_operations
                    .get_or_create(&labels)
                    .set(i64::try_from(r.pending_ops).unwrap_or(i64::MAX));
                self.metrics
                    .replication_pending_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(r.pending_bytes).unwrap_or(i64::MAX));
                self.metrics.replication_lag.get_or_create(&labels).set(r.lag_seconds);
                if let Some(h) = r.historical_ratio {
                    self.metrics.backfill_progress.get_or_create(&labels).set(h);
                }
                let key = (b.name.clone(), r.id.clone());
                #[allow(clippy::cast_precision_loss)] // seconds
                let over = r.enabled && r.lag_seconds > r.rpo_seconds as f64;
                if !leads {
                    continue;
                }
                if over && !self.over.contains(&key) {
                    let detail = format!(
                        "lag {:.0} s is over the recovery point objective of {} s ({} operations pending to {}/{})",
                        r.lag_seconds, r.rpo_seconds, r.pending_ops, r.destination_region, r.destination_bucket
                    );
                    tracing::warn!(bucket = %b.name, rule = %r.id, %detail, "replication missed its RPO");
                    self.metrics.replication_rpo_missed.get_or_create(&labels).inc();
                    let (bn, rid) = key.clone();
                    self.store.meta.write(move |tx| record_event(tx, &bn, &rid, MISSED, &detail)).await?;
                    self.over.insert(key);
                } else if !over && self.over.contains(&key) {
                    let detail = format!(
                        "lag {:.3} s is back under the recovery point objective of {} s",
                        r.lag_seconds, r.rpo_seconds
                    );
                    tracing::info!(bucket = %b.name, rule = %r.id, %detail, "replication back within its RPO");
                    let (bn, rid) = key.clone();
                    self.store.meta.write(move |tx| record_event(tx, &bn, &rid, RECOVERED, &detail)).await?;
                    self.over.remove(&key);
                }
            }
        }
        Ok(WorkerState::Throttled(PERIOD))
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::time::sleep(PERIOD).await;
        WorkerState::Busy
    }
}
