//! One worker per peer: drains the jobs of the peer's destinations from the outbox.
//!
//! - Wakes on commit (the metadata writer signals every commit that recorded or released
//!   jobs) and, as a backstop, every second.
//! - Keeps up to `concurrency` transfers in flight for the peer, shared fairly between its
//!   destination buckets (round robin), never two for the same destination and key (per-key
//!   order: the outbox holds back a job while an earlier one for its key is pending).
//! - Each destination bucket has its own failure state: after several transient failures in a
//!   row it is treated as down (one probe transfer at a time, with backoff) until one succeeds,
//!   while the peer's other destinations keep their full share. One throttling bucket never
//!   slows the others.
//! - Live jobs run before backfill jobs, but backfills always get at least an eighth of a
//!   destination's share when they have work, so history migrates under continuous load.
//! - Each transfer records its own result in the store (completion and status in one
//!   transaction, batched with others by the group commit). Transient failures retry with
//!   per-job exponential backoff (200 ms × 2ⁿ, at most 30 s, jittered) until the job has been
//!   failing for `give_up_after`, then it is FAILED with its last error; a change whose version
//!   is not at the destination retries [`MAX_MISSING_ATTEMPTS`] times, then fails. Permanent
//!   failures mark the job FAILED with the reason.
//! - A transfer task that panics releases only its own claim; the job stays pending.
//! - Memory: at most `concurrency` jobs in memory; bodies stream from blob files (inline
//!   bodies are at most the inline threshold).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus, error_backoff};
use ferry_core::time::now_micros;
use ferry_store::replication::{Job, complete, fail, retry_later};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::transfer::{Ctx, Outcome, run};

/// Consecutive transient failures after which a destination is treated as down.
const DOWN_AFTER: u32 = 3;
/// Longest per-job retry delay.
const MAX_JOB_BACKOFF_US: i64 = 30_000_000;
/// Attempts of a change whose version is not at the destination before it fails.
pub const MAX_MISSING_ATTEMPTS: u32 = 20;

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

/// The failure state of one destination bucket.
#[derive(Debug, Default)]
struct DestState {
    consecutive_transient: u32,
    down_until: Option<Instant>,
    inflight: usize,
}

impl DestState {
    fn down(&self) -> bool {
        self.consecutive_transient >= DOWN_AFTER
    }

    /// How many transfers may be in flight to this destination now.
    fn capacity(&self, concurrency: usize) -> usize {
        match self.down_until {
            Some(t) if Instant::now() < t => 0,
            _ if self.down() => 1,
            _ => concurrency,
        }
    }
}

/// (destination bucket, source bucket, key): what per-key order is kept for.
type Key = (String, String, String);

/// Drains one peer's jobs.
pub struct PeerWorker {
    peer: String,
    ctx: Arc<Ctx>,
    concurrency: usize,
    signal: tokio::sync::watch::Receiver<u64>,
    inflight: JoinSet<(i64, Key, Outcome)>,
    /// The claim of each running transfer task.
    tasks: HashMap<tokio::task::Id, (i64, Key)>,
    dests: HashMap<String, DestState>,
    /// Where the next dispatch starts among the destinations (round robin).
    next_dest: usize,
    stats: Stats,
}

impl PeerWorker {
    /// A worker for `peer`.
    pub fn new(peer: &str, ctx: Arc<Ctx>, concurrency: usize) -> Self {
        let signal = ctx.store.meta.signals().outbox.subscribe();
        Self {
            peer: peer.to_owned(),
            ctx,
            concurrency: concurrency.max(1),
            signal,
            inflight: JoinSet::new(),
            tasks: HashMap::new(),
            dests: HashMap::new(),
            next_dest: 0,
            stats: Stats::default(),
        }
    }

    fn release(&mut self, id: tokio::task::Id) -> Option<(i64, Key)> {
        let claim = self.tasks.remove(&id)?;
        if let Some(d) = self.dests.get_mut(&claim.1.0) {
            d.inflight = d.inflight.saturating_sub(1);
        }
        Some(claim)
    }

    fn settle(&mut self, dest: &str, outcome: &Outcome) {
        let d = self.dests.entry(dest.to_owned()).or_default();
        match outcome {
            Outcome::Done | Outcome::Skipped(_) => {
                self.stats.sent += u64::from(matches!(outcome, Outcome::Done));
                if d.down() {
                    tracing::info!(peer = %self.peer, bucket = %dest, "destination reachable again; resuming full concurrency");
                }
                d.consecutive_transient = 0;
                d.down_until = None;
            }
            Outcome::Transient(why) => {
                self.stats.transient += 1;
                d.consecutive_transient = d.consecutive_transient.saturating_add(1);
                if d.down() {
                    let wait = error_backoff(d.consecutive_transient - DOWN_AFTER + 1).min(Duration::from_secs(30));
                    if d.consecutive_transient == DOWN_AFTER {
                        tracing::warn!(peer = %self.peer, bucket = %dest, error = %why, "destination looks down; probing with one transfer at a time");
                    }
                    d.down_until = Some(Instant::now() + wait);
                }
            }
            // The destination answered: what is missing is the change's own business.
            Outcome::Missing(_) => self.stats.transient += 1,
            Outcome::Permanent(_) => {
                self.stats.failed += 1;
                d.consecutive_transient = 0;
                d.down_until = None;
            }
        }
    }

    /// The earliest time a destination in backoff may be probed again.
    fn next_probe(&self) -> Option<Instant> {
        self.dests.values().filter_map(|d| d.down_until).filter(|t| *t > Instant::now()).min()
    }

    /// Starts transfers for runnable jobs, up to the current capacity. Returns how many.
    async fn dispatch(&mut self) -> Result<usize, WorkerError> {
        let free = self.concurrency.saturating_sub(self.inflight.len());
        // Refill in batches of a quarter of the capacity (at once when idle): one outbox query
        // per transfer would cost more CPU than the transfers themselves under a backlog.
        if free == 0 || (free < (self.concurrency / 4).max(1) && !self.inflight.is_empty()) {
            return Ok(0);
        }
        // One read: the destinations with work, in turn, each up to its fair share of `free`
        // and its own room (a destination that is down takes one probe at a time).
        let rooms: HashMap<String, usize> =
            self.dests.iter().map(|(d, s)| (d.clone(), s.capacity(self.concurrency).saturating_sub(s.inflight))).collect();
        let (peer, concurrency, start) = (self.peer.clone(), self.concurrency, self.next_dest);
        self.next_dest = self.next_dest.wrapping_add(1);
        let exclude: Vec<i64> = self.tasks.values().map(|(id, _)| *id).collect();
        let now = now_micros();
        let jobs = self
            .ctx
            .store
            .meta
            .read(move |r| {
                let mut dests = r.due_destinations(&peer)?;
                if dests.is_empty() {
                    return Ok(Vec::new());
                }
                let first = start % dests.len();
                dests.rotate_left(first);
                let (mut budget, n, mut jobs) = (free, dests.len(), Vec::new());
                for (i, dest) in dests.iter().enumerate() {
                    let room = rooms.get(dest).copied().unwrap_or(concurrency);
                    let share = budget.div_ceil(n - i).min(room);
                    if share == 0 {
                        continue;
                    }
                    let got = runnable(r, &peer, dest, now, &exclude, share)?;
                    budget = budget.saturating_sub(got.len());
                    jobs.extend(got);
                    if budget == 0 {
                        break;
                    }
                }
                Ok(jobs)
            })
            .await?;
        let mut started = 0;
        for job in jobs {
            started += usize::from(self.start(job));
        }
        Ok(started)
    }

    /// Starts a transfer, unless one for the same destination and key runs; returns whether.
    fn start(&mut self, job: Job) -> bool {
        let key = (job.dest_bucket.clone(), job.bucket.clone(), job.key.clone());
        if self.tasks.values().any(|(_, k)| *k == key) {
            return false;
        }
        self.dests.entry(key.0.clone()).or_default().inflight += 1;
        let (id, ctx, claim) = (job.id, self.ctx.clone(), key.clone());
        let handle = self.inflight.spawn(async move {
            let outcome = run(&ctx, &job).await;
            record(&ctx, &job, &outcome).await;
            (job.id, claim, outcome)
        });
        self.tasks.insert(handle.id(), (id, key));
        true
    }
}

/// Up to `limit` runnable jobs of one destination: live ones first, and at least an eighth of
/// the share for backfill jobs when there are some.
fn runnable(
    r: &dyn ferry_store::meta::ReadTx,
    peer: &str,
    dest: &str,
    now: i64,
    exclude: &[i64],
    limit: usize,
) -> ferry_store::Result<Vec<Job>> {
    let mut jobs = r.runnable_jobs(peer, dest, 1, now, exclude, limit / 8)?;
    jobs.extend(r.runnable_jobs(peer, dest, 0, now, exclude, limit - jobs.len())?);
    if jobs.len() < limit {
        let mut taken = exclude.to_vec();
        taken.extend(jobs.iter().map(|j| j.id));
        jobs.extend(r.runnable_jobs(peer, dest, 1, now, &taken, limit - jobs.len())?);
    }
    Ok(jobs)
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
            if job.live {
                #[allow(clippy::cast_precision_loss)] // seconds
                let secs = (now_micros() - job.created_us).max(0) as f64 / 1e6;
                ctx.metrics.replication_latency.get_or_create(&labels).observe(secs);
            }
            ctx.metrics.replication_sent_bytes.get_or_create(&labels).inc_by(job.size);
        }
        Outcome::Permanent(_) => {
            ctx.metrics.replication_failed_operations.get_or_create(&labels).inc();
        }
        Outcome::Skipped(_) | Outcome::Transient(_) | Outcome::Missing(_) => {}
    }
    tracing::debug!(job = job.id, op = job.op.name(), bucket = %job.bucket, key = %job.key, version = %job.version_id, destination = %job.dest(), ?outcome, "transfer");
    let j = job.clone();
    let give_up_us = i64::try_from(ctx.settings.give_up_after.as_micros()).unwrap_or(i64::MAX);
    let result = match outcome.clone() {
        Outcome::Done => ctx.store.meta.write(move |tx| complete(tx, &j, true)).await,
        Outcome::Skipped(why) => {
            tracing::debug!(bucket = %j.bucket, key = %j.key, version = %j.version_id, reason = %why, "nothing to replicate");
            ctx.store.meta.write(move |tx| complete(tx, &j, false)).await
        }
        Outcome::Missing(why) if j.attempts + 1 >= MAX_MISSING_ATTEMPTS => {
            let why =
                format!("{why} (after {MAX_MISSING_ATTEMPTS} attempts: the object it applies to is not at the destination)");
            ctx.store.meta.write(move |tx| fail(tx, &j, &why)).await
        }
        Outcome::Transient(why) | Outcome::Missing(why) => {
            let now = now_micros();
            let next = now + job_backoff_us(j.attempts);
            ctx.store.meta.write(move |tx| retry_later(tx, &j, &why, next, now, give_up_us).map(|_| ())).await
        }
        Outcome::Permanent(why) => {
            tracing::warn!(bucket = %j.bucket, key = %j.key, version = %j.version_id, peer = %j.peer, error = %why, "replication failed permanently");
            ctx.store.meta.write(move |tx| fail(tx, &j, &why)).await
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
        let down: Vec<String> =
            self.dests.iter().filter(|(_, d)| d.down()).map(|(b, _)| format!("destination {b} down: probing")).collect();
        WorkerStatus {
            queue_length: Some(self.inflight.len() as u64),
            persistent_errors: Some(self.stats.failed),
            progress: Some(format!("{} sent, {} retried", self.stats.sent, self.stats.transient)),
            freeform: down,
        }
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        self.signal.borrow_and_update();
        let started = if stop.is_cancelled() { 0 } else { self.dispatch().await? };
        if self.inflight.is_empty() {
            if started > 0 {
                return Ok(WorkerState::Busy);
            }
            return Ok(match self.next_probe() {
                Some(t) => WorkerState::Throttled(t - Instant::now()),
                None => WorkerState::Idle,
            });
        }
        // Wait for a transfer to finish, new jobs, or the next probe of a destination that is down.
        let wake = self.next_probe().map_or(Duration::from_millis(500), |t| {
            t.saturating_duration_since(Instant::now()).max(Duration::from_millis(10))
        });
        tokio::select! {
            Some(done) = self.inflight.join_next_with_id() => {
                match done {
                    Ok((task, (_, key, outcome))) => {
                        self.release(task);
                        self.settle(&key.0, &outcome);
                    }
                    Err(e) => {
                        // A transfer task panicked or was aborted: release its claim only; the
                        // job is still pending in the store and will run again.
                        tracing::error!(error = %e, "replication transfer task failed");
                        self.release(e.id());
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
