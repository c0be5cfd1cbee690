//! The backfill worker: replicates versions that existed before a rule (`ExistingObjectReplication`)
//! or that an operator asks to re-sync (`ferry replication resync`).
//!
//! A backfill is a row in the `backfills` table: its filters, the cursor of its scan in key
//! order, and its counters. The worker counts the versions in scope once (for the percentage),
//! then scans in batches; each batch records its jobs and advances the cursor in one
//! transaction, so a restart continues where it stopped. Backfill jobs run after live ones
//! (lower priority in the outbox query), at most `window` of them wait at a time, and the scan
//! is rate-limited, so memory and the live replication lag stay flat whatever the bucket size.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus};
use ferry_store::Store;
use ferry_store::replication::{BackfillStep, backfill_counted, backfill_range, backfill_step};
use tokio_util::sync::CancellationToken;

/// Versions scanned per transaction.
const BATCH: usize = 256;
/// Backfill jobs allowed to wait at once, per backfill.
const WINDOW: u64 = 2048;

/// Drives every counting or running backfill of a region.
pub struct BackfillWorker {
    store: Arc<Store>,
    /// Versions scanned per second at most.
    rate: u64,
    status: String,
}

impl BackfillWorker {
    /// A worker scanning at most `rate` versions per second.
    #[must_use]
    pub fn new(store: Arc<Store>, rate: u64) -> Self {
        Self { store, rate: rate.max(1), status: String::new() }
    }
}

#[async_trait::async_trait]
impl Worker for BackfillWorker {
    fn name(&self) -> String {
        "backfill".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus { progress: Some(self.status.clone()), ..WorkerStatus::default() }
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        let active: Vec<_> = self
            .store
            .meta
            .read(|r| r.list_backfills(None))
            .await?
            .into_iter()
            .filter(|b| b.state == "counting" || b.state == "running")
            .collect();
        let Some(b) = active.last().cloned() else {
            self.status = "idle".to_owned();
            return Ok(WorkerState::Idle);
        };
        if b.state == "counting" {
            let (bucket, (from, to)) = (b.bucket.clone(), backfill_range(&b));
            let total = self.store.meta.read(move |r| r.count_versions(&bucket, &from, to.as_deref())).await?;
            self.store.meta.write(move |tx| backfill_counted(tx, b.id, total)).await?;
            return Ok(WorkerState::Busy);
        }
        let id = b.id;
        let step = self.store.meta.write(move |tx| backfill_step(tx, id, BATCH, WINDOW)).await?;
        self.status = format!("backfill {id} of {}: {:.1}%", b.bucket, b.ratio() * 100.0);
        Ok(match step {
            #[allow(clippy::cast_precision_loss)] // a delay, not a count
            BackfillStep::Progress(n) => WorkerState::Throttled(Duration::from_secs_f64(n as f64 / self.rate as f64)),
            BackfillStep::Throttle => WorkerState::Throttled(Duration::from_millis(100)),
            BackfillStep::Finished => {
                tracing::info!(backfill = id, bucket = %b.bucket, "backfill finished");
                WorkerState::Busy
            }
            BackfillStep::Inactive => WorkerState::Busy,
        })
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::time::sleep(Duration::from_secs(1)).await;
        WorkerState::Busy
    }
}
