//! One worker per peer: drains the jobs of the peer's destinations from the outbox.
//!
//! - Takes the runnable live jobs its peer's commits hand it (the outbox's hand-off) and starts
//!   them without reading the outbox. It reads the outbox when that may hold more than it was
//!   handed: when woken (a commit recorded jobs it was not handed, made a waiting job
//!   runnable, scheduled a retry), when a retry it scheduled falls due, when it had to leave a
//!   handed job (no room), after its last read filled a share, and as a backstop every 500 ms
//!   while transfers run and every second when idle.
//! - Keeps up to `concurrency` transfers in flight for the peer, shared fairly between its
//!   destination buckets (round robin), never two for the same destination and key (per-key
//!   order: the outbox holds back a job while an earlier one for its key is pending).
//! - Each destination bucket has its own failure state: after several transient failures in a
//!   row it is treated as down (one probe transfer at a time, with backoff) until one succeeds,
//!   while the peer's other destinations keep their full share. One throttling bucket never
//!   slows the others.
//! - Live jobs run before backfill jobs, but backfills always get at least an eighth of a
//!   destination's share when they have work, so history migrates under continuous load (a
//!   handed job starts only while more than a quarter of the transfer slots are free; the last
//!   quarter is filled from the outbox, shares and floors kept).
//! - Each transfer records its own result in the store (completion and status in one
//!   transaction), as a deferred write: it commits with the region's next write, or with other
//!   results within 10 ms, sharing that commit's fsync. Transient failures retry with
//!   per-job exponential backoff (200 ms × 2ⁿ, at most 30 s, jittered) until the job has been
//!   failing for `give_up_after`, then it is FAILED with its last error; a change whose version
//!   is not at the destination retries [`MAX_MISSING_ATTEMPTS`] times, then fails. Permanent
//!   failures mark the job FAILED with the reason.
//! - A transfer task that panics releases only its own claim; the job stays pending.
//! - Memory: at most `concurrency` jobs in memory; bodies stream from blob files (inline
//!   bodies are at most the inline threshold).
//!
//! # Crash behaviour
//! The worker holds nothing durable: jobs, their attempts, due times and multipart progress are
//! in the store. A crash mid-transfer leaves the job pending; it runs again after the restart
//! (a multipart transfer resumes its saved upload), and the replica is applied idempotently.
//! The per-destination outage state is memory only: after a restart a down destination is
//! found down again by its first failures.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::background::{Worker, WorkerError, WorkerState, WorkerStatus, error_backoff};
use ferry_core::time::now_micros;
use ferry_store::replication::{Job, complete, fail, retry_later};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::transfer::{Ctx, Outcome, run};

/// One delivery attempt of a job: the transfer to its peer ([`transfer::run`](run)). The
/// worker only schedules attempts and records their outcomes; tests drive it with their own.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, job: &Job) -> Outcome;
}

/// The wall clock, µs since the epoch, as job due times are stored.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The real delivery: a transfer to the peer.
struct Transfers(Arc<Ctx>);

#[async_trait::async_trait]
impl Deliver for Transfers {
    async fn deliver(&self, job: &Job) -> Outcome {
        run(&self.0, job).await
    }
}

/// How often a worker reads the outbox, woken or not, while transfers run and while idle (jobs
/// another node of the region left when its lease ran out, anything a wake-up missed).
const BACKSTOP_BUSY: Duration = Duration::from_millis(500);
const BACKSTOP_IDLE: Duration = Duration::from_secs(1);

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
    /// Jobs started from a hand-off.
    handed: u64,
    /// Outbox reads (one per dispatch that read).
    reads: u64,
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

    /// How many more transfers may start to this destination now.
    fn room(&self, concurrency: usize) -> usize {
        self.capacity(concurrency).saturating_sub(self.inflight)
    }
}

/// (destination bucket, source bucket, key): what per-key order is kept for.
type Key = (String, String, String);

/// Drains one peer's jobs.
pub struct PeerWorker {
    peer: String,
    ctx: Arc<Ctx>,
    deliver: Arc<dyn Deliver>,
    /// When jobs are due (the wall clock; tests give a clock that follows a paused one).
    now: Clock,
    concurrency: usize,
    signal: tokio::sync::watch::Receiver<u64>,
    /// Runnable live jobs handed over by the commits that recorded them.
    handed: tokio::sync::mpsc::Receiver<Job>,
    /// Handed jobs received while waiting, to start at the next turn.
    arrived: Vec<Job>,
    /// The last outbox read found every runnable job of the peer, and nothing has happened
    /// since that could make another one runnable without a hand-off: no read is needed.
    drained: bool,
    /// When the earliest retry this worker scheduled falls due.
    next_retry: Option<Instant>,
    /// Ids of the jobs last started from an outbox read: a job the read found before its
    /// hand-off arrived is not started twice.
    read_ids: VecDeque<i64>,
    inflight: JoinSet<(i64, Key, Outcome, Option<i64>)>,
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
        Self::with_delivery(peer, ctx.clone(), concurrency, Arc::new(Transfers(ctx)), Arc::new(now_micros))
    }

    /// A worker for `peer` whose attempts are made by `deliver`, on `now`'s time.
    pub fn with_delivery(peer: &str, ctx: Arc<Ctx>, concurrency: usize, deliver: Arc<dyn Deliver>, now: Clock) -> Self {
        let signal = ctx.store.meta.signals().outbox.subscribe();
        let handed = ctx.store.meta.signals().handoff.subscribe(peer, concurrency.max(1) * 2);
        Self {
            peer: peer.to_owned(),
            ctx,
            deliver,
            now,
            concurrency: concurrency.max(1),
            signal,
            handed,
            arrived: Vec::new(),
            drained: false,
            next_retry: None,
            read_ids: VecDeque::new(),
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

    /// Notes when a job this worker scheduled for a retry falls due (`due`: the job clock's µs).
    fn retry_at(&mut self, due: Option<i64>) {
        let Some(due) = due else { return };
        let wait = Duration::from_micros(u64::try_from(due.saturating_sub((self.now)())).unwrap_or(0));
        let at = Instant::now() + wait;
        self.next_retry = Some(self.next_retry.map_or(at, |t| t.min(at)));
    }

    /// The earliest time a destination in backoff may be probed again.
    fn next_probe(&self) -> Option<Instant> {
        self.dests.values().filter_map(|d| d.down_until).filter(|t| *t > Instant::now()).min()
    }

    /// How many more transfers may start to `dest` now (its own capacity; a destination not
    /// seen yet has the peer's).
    fn room_for(&self, dest: &str) -> usize {
        self.dests.get(dest).map_or(self.concurrency, |s| s.room(self.concurrency))
    }

    /// Starts the jobs handed over since the last turn while more than a quarter of the slots
    /// are free (the rest is the outbox reads', which keep the backfills' floor). A job left
    /// here is still in the outbox: the next read finds it. Returns how many started.
    async fn start_handed(&mut self) -> Result<usize, WorkerError> {
        while let Ok(job) = self.handed.try_recv() {
            self.arrived.push(job);
        }
        if self.arrived.is_empty() {
            return Ok(0);
        }
        let reserve = self.concurrency / 4;
        let mut jobs: Vec<Job> = Vec::new();
        for job in std::mem::take(&mut self.arrived) {
            let free = self.concurrency.saturating_sub(self.inflight.len() + jobs.len());
            let to_dest = jobs.iter().filter(|j| j.dest_bucket == job.dest_bucket).count();
            if free > reserve && self.room_for(&job.dest_bucket) > to_dest && !self.read_ids.contains(&job.id) {
                jobs.push(job);
            } else {
                self.drained = false;
            }
        }
        let (started, all_started) = self.start_taken(jobs).await?;
        self.drained &= all_started;
        self.stats.handed += started as u64;
        Ok(started)
    }

    /// Leases `jobs` (a node of a region shares the outbox with the other nodes; one process
    /// gets them all) and starts those it got. Returns how many started and whether every job
    /// it got started.
    async fn start_taken(&mut self, jobs: Vec<Job>) -> Result<(usize, bool), WorkerError> {
        if jobs.is_empty() {
            return Ok((0, true));
        }
        let ids = jobs.iter().map(|j| j.id).collect();
        let taken =
            self.ctx.store.meta.take_jobs(ids, ferry_core::time::now_micros(), ferry_store::meta::pg::JOB_LEASE_US).await?;
        let (mut started, mut all) = (0, true);
        for job in jobs.into_iter().filter(|j| taken.contains(&j.id)) {
            let ok = self.start(job);
            started += usize::from(ok);
            all &= ok;
        }
        Ok((started, all))
    }

    /// Starts transfers for runnable jobs read from the outbox, up to the current capacity.
    /// Returns how many.
    async fn dispatch(&mut self) -> Result<usize, WorkerError> {
        let free = self.concurrency.saturating_sub(self.inflight.len());
        // Refill in batches of a quarter of the capacity (at once when idle): one outbox query
        // per transfer would cost more CPU than the transfers themselves under a backlog.
        if free == 0 || (free < (self.concurrency / 4).max(1) && !self.inflight.is_empty()) {
            return Ok(0);
        }
        // One read: the destinations with work, in turn, each up to its fair share of `free`
        // and its own room (a destination that is down takes one probe at a time).
        let rooms: HashMap<String, usize> = self.dests.iter().map(|(d, s)| (d.clone(), s.room(self.concurrency))).collect();
        let (peer, concurrency, start) = (self.peer.clone(), self.concurrency, self.next_dest);
        self.next_dest = self.next_dest.wrapping_add(1);
        let exclude: Vec<i64> = self.tasks.values().map(|(id, _)| *id).collect();
        let now = (self.now)();
        // Also whether every destination got less than its share: then nothing else is
        // runnable (a destination without room may have more).
        let (jobs, all_read) = self
            .ctx
            .store
            .meta
            .read(move |r| {
                let mut dests = r.due_destinations(&peer)?;
                if dests.is_empty() {
                    return Ok((Vec::new(), true));
                }
                let first = start % dests.len();
                dests.rotate_left(first);
                let (mut budget, n, mut jobs, mut all_read) = (free, dests.len(), Vec::new(), true);
                for (i, dest) in dests.iter().enumerate() {
                    let room = rooms.get(dest).copied().unwrap_or(concurrency);
                    let share = budget.div_ceil(n - i).min(room);
                    if share == 0 {
                        all_read = false;
                        continue;
                    }
                    let got = runnable(r, &peer, dest, now, &exclude, share)?;
                    all_read &= got.len() < share;
                    budget = budget.saturating_sub(got.len());
                    jobs.extend(got);
                    if budget == 0 {
                        break;
                    }
                }
                Ok((jobs, all_read))
            })
            .await?;
        self.stats.reads += 1;
        let read: Vec<i64> = jobs.iter().map(|j| j.id).collect();
        let (started, all_started) = self.start_taken(jobs).await?;
        self.drained = all_read && all_started;
        let keep = self.concurrency * 4;
        self.read_ids.extend(read);
        let excess = self.read_ids.len().saturating_sub(keep);
        self.read_ids.drain(..excess);
        Ok(started)
    }

    /// Starts a transfer, unless one for the same destination and key runs; returns whether.
    fn start(&mut self, job: Job) -> bool {
        let key = (job.dest_bucket.clone(), job.bucket.clone(), job.key.clone());
        if self.tasks.values().any(|(_, k)| *k == key) {
            return false;
        }
        self.dests.entry(key.0.clone()).or_default().inflight += 1;
        let (id, ctx, deliver, now, claim) = (job.id, self.ctx.clone(), self.deliver.clone(), self.now.clone(), key.clone());
        let handle = self.inflight.spawn(async move {
            let outcome = deliver.deliver(&job).await;
            let retry = record(&ctx, &job, &outcome, now()).await;
            (job.id, claim, outcome, retry)
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
    let floor = limit / 8;
    let mut jobs = r.runnable_jobs(peer, dest, 1, now, exclude, floor)?;
    // Fewer backfill jobs than the floor asked: there are no more (one snapshot).
    let more_backfill = jobs.len() == floor;
    jobs.extend(r.runnable_jobs(peer, dest, 0, now, exclude, limit - jobs.len())?);
    if jobs.len() < limit && more_backfill {
        let mut taken = exclude.to_vec();
        taken.extend(jobs.iter().map(|j| j.id));
        jobs.extend(r.runnable_jobs(peer, dest, 1, now, &taken, limit - jobs.len())?);
    }
    Ok(jobs)
}

/// Stores a transfer's result: completion (and the version's status), a retry time, or the
/// permanent failure, as a deferred write (it commits with the region's next write, within
/// milliseconds). A failure to record is logged; the job stays pending and runs again.
/// Returns when the job is due again, if it was scheduled for a retry.
async fn record(ctx: &Ctx, job: &Job, outcome: &Outcome, now: i64) -> Option<i64> {
    let labels = ferry_core::metrics::RuleLabels {
        bucket: job.bucket.clone(),
        rule: job.rule_id.clone(),
        destination: format!("{}/{}", job.peer, job.dest_bucket),
    };
    match outcome {
        Outcome::Done => {
            if job.live {
                #[allow(clippy::cast_precision_loss)] // seconds
                let secs = (now - job.created_us).max(0) as f64 / 1e6;
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
    let mut retry = None;
    let result = match outcome.clone() {
        Outcome::Done => ctx.store.meta.write_deferred(move |tx| complete(tx, &j, true)).await,
        Outcome::Skipped(why) => {
            tracing::debug!(bucket = %j.bucket, key = %j.key, version = %j.version_id, reason = %why, "nothing to replicate");
            ctx.store.meta.write_deferred(move |tx| complete(tx, &j, false)).await
        }
        Outcome::Missing(why) if j.attempts + 1 >= MAX_MISSING_ATTEMPTS => {
            let why =
                format!("{why} (after {MAX_MISSING_ATTEMPTS} attempts: the object it applies to is not at the destination)");
            ctx.store.meta.write_deferred(move |tx| fail(tx, &j, &why)).await
        }
        Outcome::Transient(why) | Outcome::Missing(why) => {
            let next = now + job_backoff_us(j.attempts);
            retry = Some(next);
            ctx.store.meta.write_deferred(move |tx| retry_later(tx, &j, &why, next, now, give_up_us).map(|_| ())).await
        }
        Outcome::Permanent(why) => {
            tracing::warn!(bucket = %j.bucket, key = %j.key, version = %j.version_id, peer = %j.peer, error = %why, "replication failed permanently");
            ctx.store.meta.write_deferred(move |tx| fail(tx, &j, &why)).await
        }
    };
    if let Err(e) = result {
        tracing::error!(job = job.id, error = %e, "could not record a replication result");
        // Still pending and due: the next outbox read runs it again.
        return Some(now);
    }
    retry
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
            progress: Some(format!(
                "{} sent, {} retried; {} started as handed over, {} outbox reads",
                self.stats.sent, self.stats.transient, self.stats.handed, self.stats.reads
            )),
            freeform: down,
        }
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<WorkerState, WorkerError> {
        if self.signal.has_changed().unwrap_or(false) {
            self.signal.borrow_and_update();
            self.drained = false;
        }
        if self.next_retry.is_some_and(|t| t <= Instant::now()) {
            self.next_retry = None;
            self.drained = false;
        }
        let mut started = 0;
        if !stop.is_cancelled() {
            started += self.start_handed().await?;
            if !self.drained {
                started += self.dispatch().await?;
            }
        }
        if self.inflight.is_empty() {
            if started > 0 {
                return Ok(WorkerState::Busy);
            }
            return Ok(match self.next_probe() {
                Some(t) => WorkerState::Throttled(t - Instant::now()),
                None => WorkerState::Idle,
            });
        }
        let next_timer = [self.next_probe(), self.next_retry].into_iter().flatten().min();
        // Wait for a transfer to finish, a hand-off, new jobs, a retry or probe falling due, or
        // the backstop.
        let wake = next_timer.map_or(BACKSTOP_BUSY, |t| {
            t.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(10), BACKSTOP_BUSY)
        });
        tokio::select! {
            Some(done) = self.inflight.join_next_with_id() => {
                match done {
                    Ok((task, (_, key, outcome, retry))) => {
                        self.release(task);
                        self.settle(&key.0, &outcome);
                        self.retry_at(retry);
                    }
                    Err(e) => {
                        // A transfer task panicked or was aborted: release its claim only; the
                        // job is still pending in the store and will run again.
                        tracing::error!(error = %e, "replication transfer task failed");
                        self.release(e.id());
                        self.drained = false;
                    }
                }
            }
            Some(job) = self.handed.recv() => self.arrived.push(job),
            _ = self.signal.changed() => self.drained = false,
            () = tokio::time::sleep(wake) => self.drained = false,
        }
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) -> WorkerState {
        let wake = self.next_retry.map_or(BACKSTOP_IDLE, |t| t.saturating_duration_since(Instant::now()).min(BACKSTOP_IDLE));
        tokio::select! {
            Some(job) = self.handed.recv() => self.arrived.push(job),
            _ = self.signal.changed() => self.drained = false,
            () = tokio::time::sleep(wake) => self.drained = false,
        }
        WorkerState::Busy
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ferry_core::config::ReplicationSettings;
    use ferry_store::Store;
    use ferry_store::replication::{JobOp, JobOptions, NewJob};

    use super::*;
    use crate::peers::PeerSet;

    /// A peer whose bucket `down` refuses connections while `down` is set; every attempt takes
    /// 20 ms. Records, per attempt to `down`, when it started and how many attempts to `down`
    /// were in flight then (itself included).
    #[derive(Default)]
    struct FlakyPeer {
        down: AtomicBool,
        // std Mutex: short sections, never held across an await.
        state: Mutex<FlakyState>,
    }

    #[derive(Default)]
    struct FlakyState {
        inflight_down: usize,
        down_starts: Vec<(Instant, usize)>,
        delivered: HashMap<String, usize>,
    }

    #[async_trait::async_trait]
    impl Deliver for FlakyPeer {
        async fn deliver(&self, job: &Job) -> Outcome {
            let to_down = job.dest_bucket == "down";
            if to_down {
                let mut s = self.state.lock().unwrap();
                s.inflight_down += 1;
                let n = s.inflight_down;
                s.down_starts.push((Instant::now(), n));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut s = self.state.lock().unwrap();
            if to_down {
                s.inflight_down -= 1;
                if self.down.load(Ordering::SeqCst) {
                    return Outcome::Transient("connection refused".into());
                }
            }
            *s.delivered.entry(job.dest_bucket.clone()).or_default() += 1;
            Outcome::Done
        }
    }

    async fn worker_with_jobs(dir: &std::path::Path, flaky: Arc<FlakyPeer>, per_dest: usize) -> PeerWorker {
        let store = Store::open(dir, 0).unwrap();
        let opts = JobOptions::default();
        store
            .meta
            .write(move |tx| {
                for dest in ["down", "up"] {
                    for i in 0..per_dest {
                        let key = format!("k{i}");
                        tx.insert_job(&NewJob {
                            bucket: "src",
                            key: &key,
                            version_id: "v",
                            op: JobOp::Put,
                            peer: "eu",
                            dest_bucket: dest,
                            rule_id: "r",
                            opts: &opts,
                            created_us: 1,
                            size: 1,
                            backfill_id: None,
                        })?;
                    }
                }
                Ok(())
            })
            .await
            .unwrap();
        let ctx = Arc::new(Ctx {
            store,
            peers: Arc::new(PeerSet::new("us", &[]).unwrap()),
            settings: ReplicationSettings::default(),
            metrics: Arc::new(ferry_core::metrics::RegionMetrics::new("us")),
        });
        // Job due times follow the paused clock, so waiting for a retry takes no real time.
        let (base, start) = (now_micros(), Instant::now());
        let now: Clock = Arc::new(move || base + i64::try_from((Instant::now() - start).as_micros()).unwrap_or(i64::MAX));
        PeerWorker::with_delivery("eu", ctx, 4, flaky, now)
    }

    /// Records one live job of `key` to destination `dest`, and hands it to the worker as its
    /// commit would; returns its id.
    async fn hand_over(w: &PeerWorker, dest: &str, key: &str) -> i64 {
        let (dest, key) = (dest.to_owned(), key.to_owned());
        let job = w
            .ctx
            .store
            .meta
            .write(move |tx| {
                let new = NewJob {
                    bucket: "src",
                    key: &key,
                    version_id: "v",
                    op: JobOp::Put,
                    peer: "eu",
                    dest_bucket: &dest,
                    rule_id: "r",
                    opts: &JobOptions::default(),
                    created_us: 1,
                    size: 1,
                    backfill_id: None,
                };
                Ok(new.recorded(tx.insert_job(&new)?))
            })
            .await
            .unwrap();
        let id = job.id;
        assert!(w.ctx.store.meta.signals().handoff.offer(job));
        id
    }

    /// A job handed over by its commit starts at the worker's next turn without an outbox
    /// read, once a read has found nothing more to run; a job a read found first is not
    /// started again when its hand-off arrives.
    #[tokio::test(start_paused = true)]
    async fn a_handed_job_starts_without_an_outbox_read_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(FlakyPeer::default());
        let mut w = worker_with_jobs(dir.path(), flaky.clone(), 0).await;
        let stop = CancellationToken::new();
        assert!(matches!(w.work(&stop).await.unwrap(), WorkerState::Idle), "nothing to run");
        assert_eq!((w.stats.reads, w.drained), (1, true), "one read found the outbox empty");

        hand_over(&w, "up", "k1").await;
        w.work(&stop).await.unwrap();
        assert_eq!((w.stats.handed, w.stats.reads), (1, 1), "started from the hand-off, no read");
        run_until(&mut w, || flaky.state.lock().unwrap().delivered.get("up").copied() == Some(1)).await;

        // The read comes first (the job committed between a turn's hand-offs and its read).
        w.drained = false;
        let id = hand_over(&w, "up", "k2").await;
        w.dispatch().await.unwrap();
        assert!(w.read_ids.contains(&id), "the read started it");
        run_until(&mut w, || flaky.state.lock().unwrap().delivered.get("up").copied() == Some(2)).await;
        while !matches!(w.work(&stop).await.unwrap(), WorkerState::Idle) {}
        assert!(w.handed.is_empty() && w.arrived.is_empty(), "the late hand-off was taken");
        assert_eq!(flaky.state.lock().unwrap().delivered.get("up").copied(), Some(2), "k2 went once");
        assert_eq!(w.stats.handed, 1, "the late hand-off was left");
    }

    /// Jobs handed over together to a destination that is down start one probe, not one each.
    #[tokio::test(start_paused = true)]
    async fn a_down_destination_takes_one_handed_job_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = worker_with_jobs(dir.path(), Arc::new(FlakyPeer::default()), 0).await;
        let stop = CancellationToken::new();
        assert!(matches!(w.work(&stop).await.unwrap(), WorkerState::Idle), "nothing to run");
        for _ in 0..DOWN_AFTER {
            w.settle("down", &Outcome::Transient("connection refused".into()));
        }
        tokio::time::advance(w.next_probe().expect("a probe is scheduled") - Instant::now()).await;
        assert_eq!(w.dests["down"].capacity(4), 1, "one probe at a time");
        hand_over(&w, "down", "k1").await;
        hand_over(&w, "down", "k2").await;
        w.work(&stop).await.unwrap();
        assert_eq!(w.dests["down"].inflight, 1, "one probe started, the other job left in the outbox");
    }

    /// A destination's share: live jobs first, at least an eighth of it for backfill jobs when
    /// there are some, the rest to backfill jobs when the live ones run out; jobs in flight are
    /// never handed out again.
    #[tokio::test]
    async fn a_share_mixes_live_and_backfill_jobs_and_skips_those_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 0).unwrap();
        let opts = JobOptions::default();
        let ids = store
            .meta
            .write(move |tx| {
                let mut ids = Vec::new();
                for (key, backfill_id) in
                    (0..10).map(|i| (format!("l{i}"), None)).chain((0..3).map(|i| (format!("b{i}"), Some(1))))
                {
                    ids.push(tx.insert_job(&NewJob {
                        bucket: "src",
                        key: &key,
                        version_id: "v",
                        op: JobOp::Put,
                        peer: "eu",
                        dest_bucket: "d",
                        rule_id: "r",
                        opts: &opts,
                        created_us: 1,
                        size: 1,
                        backfill_id,
                    })?);
                }
                Ok(ids)
            })
            .await
            .unwrap();
        let share = |exclude: Vec<i64>, limit: usize| {
            store.meta.read(move |r| {
                let jobs = runnable(r, "eu", "d", i64::MAX, &exclude, limit)?;
                Ok(jobs.iter().map(|j| j.key.clone()).collect::<Vec<_>>())
            })
        };
        let keys = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            share(Vec::new(), 8).await.unwrap(),
            keys(&["b0", "l0", "l1", "l2", "l3", "l4", "l5", "l6"])
        );
        assert_eq!(
            share(Vec::new(), 16).await.unwrap(),
            keys(&["b0", "b1", "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "b2"]),
            "the live jobs run out: the rest of the share to backfill"
        );
        assert_eq!(
            share(Vec::new(), 4).await.unwrap(),
            keys(&["l0", "l1", "l2", "l3"]),
            "a share under 8 has no floor"
        );
        let in_flight = vec![ids[0], ids[1], ids[2], ids[3], ids[4], ids[10]];
        assert_eq!(
            share(in_flight, 16).await.unwrap(),
            keys(&["b1", "b2", "l5", "l6", "l7", "l8", "l9"]),
            "jobs in flight are skipped"
        );
    }

    /// Runs the worker until `done` holds, or fails after a virtual hour.
    async fn run_until(w: &mut PeerWorker, mut done: impl FnMut() -> bool) {
        let stop = CancellationToken::new();
        let deadline = Instant::now() + Duration::from_secs(3600);
        while !done() {
            assert!(Instant::now() < deadline, "the worker made no progress");
            match w.work(&stop).await.unwrap() {
                WorkerState::Busy => {}
                WorkerState::Throttled(d) => tokio::time::sleep(d).await,
                WorkerState::Idle | WorkerState::Done => {
                    w.wait_for_work().await;
                }
            }
        }
    }

    /// A destination that keeps failing is probed with one transfer at a time while the peer's
    /// other destination drains at full concurrency; once a probe succeeds, the destination
    /// gets its full share again. (The store's blocking I/O lets a paused clock jump, so the
    /// spacing of probes is checked on the destination state below, not here.)
    #[tokio::test(start_paused = true)]
    async fn a_down_destination_is_probed_alone_while_the_others_drain() {
        let dir = tempfile::tempdir().unwrap();
        let flaky = Arc::new(FlakyPeer::default());
        flaky.down.store(true, Ordering::SeqCst);
        let mut w = worker_with_jobs(dir.path(), flaky.clone(), 12).await;

        // Down: until `up` is drained and `down` has been probed a few times.
        let probes = DOWN_AFTER as usize + 4;
        run_until(&mut w, || {
            let s = flaky.state.lock().unwrap();
            s.delivered.get("up").copied().unwrap_or(0) == 12 && s.down_starts.len() >= probes
        })
        .await;
        assert!(
            w.dests.get("down").is_some_and(DestState::down),
            "three transient failures in a row mark it down"
        );
        assert!(!w.dests.get("up").is_some_and(DestState::down), "the other destination is unaffected");
        let starts = flaky.state.lock().unwrap().down_starts.clone();
        // The attempts in flight when it went down may overlap; every later one is alone.
        let late = &starts[DOWN_AFTER as usize + 1..];
        assert!(late.iter().all(|(_, inflight)| *inflight == 1), "probes overlap: {starts:?}");

        // Back up: the next probe succeeds and the rest drains, several at a time.
        flaky.down.store(false, Ordering::SeqCst);
        run_until(&mut w, || flaky.state.lock().unwrap().delivered.get("down").copied().unwrap_or(0) == 12).await;
        assert!(!w.dests.get("down").is_some_and(DestState::down));
        let s = flaky.state.lock().unwrap();
        let recovered = &s.down_starts[starts.len()..];
        assert!(
            recovered.iter().any(|(_, inflight)| *inflight > 1),
            "full share after recovery: {recovered:?}"
        );
    }

    /// After three transient failures in a row a destination takes no transfer until its
    /// backoff has passed, then one probe; each further failure backs off longer; a success
    /// gives it its full share at once.
    #[tokio::test(start_paused = true)]
    async fn probes_back_off_and_a_success_restores_the_share() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = worker_with_jobs(dir.path(), Arc::new(FlakyPeer::default()), 0).await;
        let refused = Outcome::Transient("connection refused".into());
        let wait = |w: &PeerWorker| w.next_probe().map(|t| t - Instant::now());
        for _ in 0..DOWN_AFTER - 1 {
            w.settle("down", &refused);
        }
        assert_eq!(w.dests["down"].capacity(4), 4, "two failures are not an outage");
        w.settle("down", &refused);
        assert_eq!(w.dests["down"].capacity(4), 0, "down: no transfer during the backoff");
        let first = wait(&w).expect("a probe is scheduled");
        assert!((Duration::from_millis(800)..=Duration::from_millis(1200)).contains(&first), "{first:?}");
        tokio::time::advance(first).await;
        assert_eq!(w.dests["down"].capacity(4), 1, "after the backoff: one probe");
        w.settle("down", &refused);
        w.settle("down", &refused);
        let third = wait(&w).expect("a probe is scheduled");
        assert!(third >= Duration::from_millis(1800), "the backoff grows: {first:?} then {third:?}");
        w.settle("down", &Outcome::Done);
        assert_eq!((w.dests["down"].capacity(4), wait(&w)), (4, None), "a success ends the outage");
    }
}
