//! The progress monitor: every few seconds, computes each replicated bucket's progress, sets
//! the gauges (pending operations and bytes, lag, backfill ratio), and watches each rule's
//! recovery point objective: when the lag goes over it, a warning is logged, a counter
//! incremented and an `OperationMissedThreshold` event recorded (shown by `ferry replication
//! status` and the admin API); when the lag comes back under it, an
//! `OperationReplicatedAfterThreshold` event.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState};
use ferry_core::metrics::{RegionMetrics, RuleLabels};
use ferry_store::Store;
use ferry_store::progress::bucket_progress;
use tokio_util::sync::CancellationToken;

/// How often progress is computed.
const PERIOD: Duration = Duration::from_secs(2);

/// Event kind recorded when a rule's lag goes over its RPO.
pub const MISSED: &str = "OperationMissedThreshold";
/// Event kind recorded when it comes back under.
pub const RECOVERED: &str = "OperationReplicatedAfterThreshold";

/// Updates gauges and RPO events of a region.
pub struct Monitor {
    store: Arc<Store>,
    region: String,
    metrics: Arc<RegionMetrics>,
    /// (bucket, rule) currently over their RPO.
    over: HashSet<(String, String)>,
    loaded: bool,
}

impl Monitor {
    /// A monitor of `store`.
    #[must_use]
    pub fn new(store: Arc<Store>, region: String, metrics: Arc<RegionMetrics>) -> Self {
        Self { store, region, metrics, over: HashSet::new(), loaded: false }
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
        if !self.loaded {
            self.load_state().await?;
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
                if over && !self.over.contains(&key) {
                    let detail = format!(
                        "lag {:.0} s is over the recovery point objective of {} s ({} operations pending to {}/{})",
                        r.lag_seconds, r.rpo_seconds, r.pending_ops, r.destination_region, r.destination_bucket
                    );
                    tracing::warn!(bucket = %b.name, rule = %r.id, %detail, "replication missed its RPO");
                    self.metrics.replication_rpo_missed.get_or_create(&labels).inc();
                    let (bn, rid) = key.clone();
                    self.store.meta.write(move |tx| tx.add_event(&bn, &rid, MISSED, &detail)).await?;
                    self.over.insert(key);
                } else if !over && self.over.contains(&key) {
                    let detail = format!(
                        "lag {:.3} s is back under the recovery point objective of {} s",
                        r.lag_seconds, r.rpo_seconds
                    );
                    tracing::info!(bucket = %b.name, rule = %r.id, %detail, "replication back within its RPO");
                    let (bn, rid) = key.clone();
                    self.store.meta.write(move |tx| tx.add_event(&bn, &rid, RECOVERED, &detail)).await?;
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
