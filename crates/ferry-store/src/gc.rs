//! Background collection: released blob files are unlinked once their grace period has
//! passed, and multipart uploads that peers opened here and left idle are aborted.
//!
//! Crash behaviour: a file is unlinked before its `garbage` row is forgotten, so a crash in
//! between only leaves a row whose file is already gone (removing it again is a no-op). In a
//! region of several nodes each due row is taken by one node's collector for a while
//! ([`crate::Meta::take_garbage`]); a node that dies with rows taken leaves them to the others
//! once that while has passed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::meta::WriteTx;
use crate::{Store, objects};
use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus};

/// How long a released blob is kept before it is unlinked, so that reads which looked it up just
/// before can still open it.
pub const GARBAGE_GRACE_US: i64 = 30_000_000;

/// Records that nothing references `blob` any more: it is unlinked once the grace period has
/// passed. The grace period is wall-clock time: readers that looked the blob up just before
/// need real time to finish, whatever the commit clock says.
///
/// # Errors
/// Database errors.
pub fn release_blob(tx: &mut dyn WriteTx, blob: &str) -> Result<()> {
    tx.release_blob(blob, ferry_core::time::now_micros().saturating_add(GARBAGE_GRACE_US))
}

/// Unlinks released blob files once their grace period has passed, and aborts the multipart
/// uploads peers opened here and left idle (a transfer whose job was dropped, or whose source
/// version vanished, or a source that never came back): their parts are released.
pub struct GcWorker {
    store: Arc<Store>,
    collected: u64,
    /// Replica uploads idle this long are aborted.
    replica_upload_expiry: Duration,
    expired: u64,
}

impl GcWorker {
    /// A collector for `store`; replica uploads idle for `replica_upload_expiry` are aborted.
    #[must_use]
    pub fn new(store: Arc<Store>, replica_upload_expiry: Duration) -> Self {
        Self { store, collected: 0, replica_upload_expiry, expired: 0 }
    }

    /// Aborts idle replica uploads; returns how many.
    async fn expire_replica_uploads(&mut self) -> Result<u64> {
        let expiry = i64::try_from(self.replica_upload_expiry.as_micros()).unwrap_or(i64::MAX);
        let before = ferry_core::time::now_micros().saturating_sub(expiry);
        let idle = self.store.meta.read(move |r| r.idle_uploads(before, 100)).await?;
        let ids: Vec<String> = idle.into_iter().filter(|u| u.attrs.origin.is_some()).map(|u| u.upload_id).collect();
        let n = ids.len() as u64;
        if n > 0 {
            tracing::info!(uploads = n, "aborting replica uploads left idle");
            self.store
                .meta
                .write(move |tx| {
                    for id in &ids {
                        match objects::abort_upload(tx, id) {
                            Ok(()) | Err(Error::NoSuchUpload) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
                .await?;
        }
        self.expired += n;
        Ok(n)
    }
}

#[async_trait::async_trait]
impl Worker for GcWorker {
    fn name(&self) -> String {
        "blob-gc".into()
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            progress: Some(format!(
                "{} blobs collected, {} idle replica uploads aborted",
                self.collected, self.expired
            )),
            ..WorkerStatus::default()
        }
    }

    async fn work(&mut self, _stop: &CancellationToken) -> std::result::Result<WorkerState, WorkerError> {
        self.expire_replica_uploads().await?;
        let now = ferry_core::time::now_micros();
        // Blobs a dead node uploaded but never committed (a region of several nodes).
        let swept = self.store.blobs.sweep_intents(now - INTENT_GRACE_US).await?;
        if swept > 0 {
            tracing::info!(swept, "deleted blobs left uncommitted by nodes that are gone");
        }
        let due = self.store.meta.read(move |r| r.due_garbage(now, 500)).await?;
        if due.is_empty() {
            return Ok(WorkerState::Idle);
        }
        // In a region of several nodes, one collector takes each (the others pass it by).
        let due = self.store.meta.take_garbage(due, now, GARBAGE_LEASE_US).await?;
        for id in &due {
            self.store.blobs.remove(id).await?;
        }
        let n = due.len() as u64;
        self.store.meta.write(move |tx| tx.forget_garbage(&due)).await?;
        self.collected += n;
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::time::sleep(Duration::from_secs(5)).await;
        WorkerState::Busy
    }
}

/// How long a node's collector holds the released blobs it took before another node's may
/// take them (it died meanwhile).
const GARBAGE_LEASE_US: i64 = 300_000_000;

/// An intent younger than this is never swept, whatever its node's state (µs): a node's clock
/// and the sweeper's may differ by a little.
const INTENT_GRACE_US: i64 = 60_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::sqlite::SqliteMeta;

    /// A released blob is kept for the grace period of wall-clock time from its release, even
    /// in a region whose commit clock last ticked long before (an idle region).
    #[tokio::test]
    async fn the_garbage_grace_period_runs_on_the_wall_clock() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db"), None).unwrap();
        meta.write(|tx| {
            tx.now();
            tx.add_blob("b1")
        })
        .await
        .unwrap();
        // Time passes without a commit that ticks the clock.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let released_at = ferry_core::time::now_micros();
        meta.write(|tx| release_blob(tx, "b1")).await.unwrap();
        let early = meta.read(move |r| r.due_garbage(released_at + GARBAGE_GRACE_US - 1, 10)).await.unwrap();
        assert!(early.is_empty(), "unlinked before its grace period: {early:?}");
        let due = meta.read(move |r| r.due_garbage(ferry_core::time::now_micros() + GARBAGE_GRACE_US, 10)).await.unwrap();
        assert_eq!(due, vec!["b1".to_owned()]);
    }
}
