//! The backfill worker: replicates versions that existed before a rule (`ExistingObjectReplication`)
//! or that an operator asks to re-sync (`ferry replication resync`).
//!
//! A backfill is a row in the `backfills` table: its filters, the cursor of its scan in key
//! order, and its counters. The worker counts the versions in scope once (for the percentage),
//! then scans in batches; each batch records its jobs and advances the cursor in one
//! transaction, so a restart continues where it stopped. Backfill jobs run after live ones
//! (lower priority in the outbox query, with a minimum share), at most `window` of them wait at
//! a time, and the scan is rate-limited, so memory and the live replication lag stay flat
//! whatever the bucket size. Active backfills take turns (round robin): one whose window is
//! full (its peer is down, say) never holds back the others.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus};
use ferry_store::Store;
use ferry_store::replication::backfill::{self as store_backfill, BackfillState, BackfillStep};
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
    /// Whose turn it is among the active backfills.
    turn: usize,
    /// Active backfills stepped in a row without progress (all waiting: then sleep a little).
    idle_turns: usize,
}

impl BackfillWorker {
    /// A worker scanning at most `rate` versions per second.
    #[must_use]
    pub fn new(store: Arc<Store>, rate: u64) -> Self {
        Self { store, rate: rate.max(1), status: String::new(), turn: 0, idle_turns: 0 }
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
        let active = self.store.meta.read(|r| r.active_backfills()).await?;
        if active.is_empty() {
            self.status = "idle".to_owned();
            return Ok(WorkerState::Idle);
        }
        self.turn = self.turn.wrapping_add(1);
        let b = active[self.turn % active.len()].clone();
        // In a region of several nodes one node steps a backfill at a time.
        let lease = ferry_store::meta::pg::JOB_LEASE_US;
        if !self.store.meta.take_backfill(b.id, ferry_core::time::now_micros(), lease).await? {
            self.idle_turns += 1;
            if self.idle_turns < active.len() {
                return Ok(WorkerState::Busy);
            }
            self.idle_turns = 0;
            return Ok(WorkerState::Throttled(Duration::from_secs(1)));
        }
        if b.state == BackfillState::Counting {
            let (bucket, (from, to)) = (b.bucket.clone(), store_backfill::range(&b));
            let total = self.store.meta.read(move |r| r.count_versions(&bucket, &from, to.as_deref())).await?;
            self.store.meta.write(move |tx| store_backfill::counted(tx, b.id, total)).await?;
            return Ok(WorkerState::Busy);
        }
        let id = b.id;
        let step = match self.store.meta.write(move |tx| store_backfill::step(tx, id, BATCH, WINDOW)).await {
            // Paused or cancelled during the step (on another node): nothing of it was kept.
            Err(ferry_store::Error::Busy(why)) => {
                tracing::debug!(backfill = id, %why, "backfill step given up");
                return Ok(WorkerState::Busy);
            }
            step => step?,
        };
        self.status = format!("backfill {id} of {}: {:.1}%", b.bucket, b.ratio() * 100.0);
        if step == BackfillStep::Throttle {
            self.idle_turns += 1;
        } else {
            self.idle_turns = 0;
        }
        Ok(match step {
            #[allow(clippy::cast_precision_loss)] // a delay, not a count
            BackfillStep::Progress(n) => WorkerState::Throttled(Duration::from_secs_f64(n as f64 / self.rate as f64)),
            // Waiting for its jobs: the next backfill's turn, unless every one is waiting.
            BackfillStep::Throttle if self.idle_turns < active.len() => WorkerState::Busy,
            BackfillStep::Throttle => {
                self.idle_turns = 0;
                WorkerState::Throttled(Duration::from_millis(100))
            }
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
