//! One worker per peer: drains the peer's jobs from the outbox.
//!
//! - Wakes on commit (the metadata writer signals every commit that recorded jobs) and, as a
//!   backstop, every second.
//! - Keeps up to `concurrency` transfers in flight, never two for the same key (per-key order:
//!   the outbox query also holds back a job while an earlier one for its key is pending).
//! - Each transfer records its own result in the store (completion and status in one
//!   transaction, batched with others by the group commit).
//! - Transient failures retry without limit, with per-job exponential backoff (200 ms × 2ⁿ,
//!   at most 30 s, jittered). After several transient failures in a row the peer is
//!   considered down: one probe transfer at a time, with peer-level backoff, until one
//!   succeeds; then the full concurrency resumes. Permanent failures mark the job FAILED
//!   with the reason.
//! - Memory: at most `concurrency` jobs in memory; bodies stream from blob files (inline
//!   bodies are at most the inline threshold).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus, error_backoff};
use ferry_core::time::now_micros;
use ferry_store::replication::{Job, JobState, complete, fail};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transfer::{Ctx, Outcome, run};

/// Consecutive transient failures after which the peer is treated as down.
const DOWN_AFTER: u32 = 3;
/// Longest per-job retry delay.
const MAX_JOB_BACKOFF_US: i64 = 30_000_000;

/// Per-job retry delay after `attempts` failed attempts.
fn job_backoff_us(attempts: u32) -> i64 {
    let base = 200_000i64.saturating_mul(1i64 << attempts.min(20)).min(MAX_JOB_BACKOFF_US);
    let jitter = rand::random_range(0.8..1.2);
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)] // bounded by 36 s
    let us = (base as f64 * jitter) as i64;
    us
}

/// Counters shown by the runner.
#[derive(Debug, Default, Clone)]
struct Stats {
    sent: u64,
    transient: u64,
    failed: u64,
}

/// Drains one peer's jobs.
pub struct PeerWorker {
    peer: String,
    ctx: Arc<Ctx>,
    concurrency: usize,
    signal: tokio::sync::watch::Receiver<u64>,
    inflight: JoinSet<(i64, (String, String), Outcome)>,
    inflight_ids: Vec<i64>,
    inflight_keys: HashSet<(String, String)>,
    consecutive_transient: u32,
    down_until: Option<Instant>,
    stats: Stats,
}

impl PeerWorker {
    /// A worker for `peer`.
    pub fn new(peer: &str, ctx: Arc<Ctx>, concurrency: usize) -> Self {
        let signal = ctx.store.meta.subscribe_jobs();
        Self {
            peer: peer.to_owned(),
            ctx,
            concurrency: concurrency.max(1),
            signal,
            inflight: JoinSet::new(),
            inflight_ids: Vec::new(),
            inflight_keys: HashSet::new(),
            consecutive_transient: 0,
            down_until: None,
            stats: Stats::default(),
        }
    }

    fn peer_down(&self) -> bool {
        self.consecutive_transient >= DOWN_AFTER
    }

    /// How many transfers may be in flight now.
    fn capacity(&self) -> usize {
        match self.down_until {
            Some(t) if Instant::now() < t => 0,
            _ if self.peer_down() => 1,
            _ => self.concurrency,
        }
    }

    fn settle(&mut self, id: i64, key: &(String, String), outcome: &Outcome) {
        self.inflight_ids.retain(|i| *i != id);
        self.inflight_keys.remove(key);
        match outcome {
            Outcome::Done => {
                self.stats.sent += 1;
                if self.peer_down() {
                    tracing::info!(peer = %self.peer, "peer reachable again; resuming full concurrency");
                }
                self.consecutive_transient = 0;
                self.down_until = None;
            }
            Outcome::Transient(why) => {
                self.stats.transient += 1;
                self.consecutive_transient = self.consecutive_transient.saturating_add(1);
                if self.peer_down() {
                    let wait = error_backoff(self.consecutive_transient - DOWN_AFTER + 1).min(Duration::from_secs(30));
                    if self.consecutive_transient == DOWN_AFTER {
                        tracing::warn!(peer = %self.peer, error = %why, "peer looks down; probing with one transfer at a time");
                    }
                    self.down_until = Some(Instant::now() + wait);
                }
            }
            Outcome::Permanent(_) => {
                self.stats.failed += 1;
                self.consecutive_transient = 0;
                self.down_until = None;
            }
        }
    }

    /// Starts transfers for runnable jobs, up to the current capacity. Returns how many.
    async fn dispatch(&mut self) -> Result<usize, WorkerError> {
        let free = self.capacity().saturating_sub(self.inflight.len());
        // Refill in batches of a quarter of the capacity (at once when idle): one outbox query
        // per transfer would cost more CPU than the transfers themselves under a backlog.
        if free == 0 || (free < (self.capacity() / 4).max(1) && !self.inflight.is_empty()) {
            return Ok(0);
        }
        let (peer, exclude) = (self.peer.clone(), self.inflight_ids.clone());
        let jobs = self.ctx.store.meta.read(move |r| r.runnable_jobs(&peer, now_micros(), &exclude, free)).await?;
        let mut started = 0;
        for job in jobs {
            let key = (job.bucket.clone(), job.key.clone());
            if self.inflight_keys.contains(&key) {
                continue;
            }
            self.inflight_ids.push(job.id);
            self.inflight_keys.insert(key.clone());
            let ctx = self.ctx.clone();
            self.inflight.spawn(async move {
                let outcome = run(&ctx, &job).await;
                record(&ctx, &job, &outcome).await;
                (job.id, key, outcome)
            });
            started += 1;
        }
        Ok(started)
    }
}

/// Stores a transfer's result: completion (and the version's status), a retry time, or the
/// permanent failure. A failure to record is logged; the job stays pending and runs again.
async fn record(ctx: &Ctx, job: &Job, outcome: &Outcome) {
    let labels = ferry_core::metrics::RuleLabels {
        bucket: job.bucket.clone(),
        rule: job.rule_id.clone(),
        destination: format!("{}/{}", job.peer, job.dest_bucket),
    };
    match outcome {
        Outcome::Done => {
            if job.backfill_id.is_none() {
                #[allow(clippy::cast_precision_loss)] // seconds
                let secs = (now_micros() - job.created_us).max(0) as f64 / 1e6;
                ctx.metrics.replication_latency.get_or_create(&labels).observe(secs);
            }
            ctx.metrics.replication_sent_bytes.get_or_create(&labels).inc_by(job.size);
        }
        Outcome::Permanent(_) => {
            ctx.metrics.replication_failed_operations.get_or_create(&labels).inc();
        }
        Outcome::Transient(_) => {}
    }
    let j = job.clone();
    let result = match outcome {
        Outcome::Done => ctx.store.meta.write(move |tx| complete(tx, &j)).await,
        Outcome::Transient(why) => {
            let why = why.clone();
            let next = now_micros() + job_backoff_us(j.attempts);
            ctx.store
                .meta
                .write(move |tx| {
                    // Keep the transfer progress the attempt may have saved meanwhile.
                    let progress = tx.get_job(j.id)?.and_then(|c| c.progress);
                    tx.update_job(j.id, JobState::Pending, j.attempts + 1, next, Some(&why), progress.as_deref())
                })
                .await
        }
        Outcome::Permanent(why) => {
            let why = why.clone();
            tracing::warn!(bucket = %j.bucket, key = %j.key, version = %j.version_id, peer = %j.peer, error = %why, "replication failed permanently");
            ctx.store
                .meta
                .write(move |tx| {
                    let current = tx.get_job(j.id)?.unwrap_or(j);
                    fail(tx, &current, &why)
                })
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(job = job.id, error = %e, "could not record a replication result");
    }
}

#[async_trait::async_trait]
impl Worker for PeerWorker {
    fn name(&self) -> String {
        format!("replicate:{}", self.peer)
    }

    fn status(&self) -> WorkerStatus {
        WorkerStatus {
            queue_length: Some(self.inflight.len() as u64),
            persistent_errors: Some(self.stats.failed),
            progress: Some(format!("{} sent, {} retried", self.stats.sent, self.stats.transient)),
            freeform: if self.peer_down() { vec!["peer down: probing".to_owned()] } else { Vec::new() },
        }
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        self.signal.borrow_and_update();
        let started = if stop.is_cancelled() { 0 } else { self.dispatch().await? };
        if self.inflight.is_empty() {
            if started > 0 {
                return Ok(WorkerState::Busy);
            }
            return Ok(match self.down_until {
                Some(t) if Instant::now() < t => WorkerState::Throttled(t - Instant::now()),
                _ => WorkerState::Idle,
            });
        }
        // Wait for a transfer to finish, new jobs, or (when the peer is down) the next probe.
        let wake = self.down_until.map_or(Duration::from_millis(500), |t| {
            t.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
        });
        tokio::select! {
            Some(done) = self.inflight.join_next() => {
                match done {
                    Ok((id, key, outcome)) => self.settle(id, &key, &outcome),
                    Err(e) => {
                        // A transfer task panicked or was aborted: forget its claim; the job is
                        // still pending in the store and will run again.
                        tracing::error!(error = %e, "replication transfer task failed");
                        self.inflight_ids.clear();
                        self.inflight_keys.clear();
                    }
                }
            }
            _ = self.signal.changed() => {}
            () = tokio::time::sleep(wake) => {}
        }
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        tokio::select! {
            _ = self.signal.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        WorkerState::Busy
    }
}
