//! The outbox: the replication jobs a change records in its own transaction, and their life
//! until delivery. See the invariants in the [module above](super).
//!
//! A job is born in [`enqueue`] (a live change) or in a backfill step, is attempted by a
//! worker, and ends in [`complete`] (deleted, its delivery recorded), [`fail`] (kept FAILED with
//! its reason until [`retry_failed`]) or [`drop_jobs`] (its configuration was removed).
//! [`retry_later`] reschedules a transient failure and gives up after `give_up_after`. Every
//! function here that makes a job runnable wakes the workers after the commit, through an
//! on-commit hook of the transaction ([`Wakeup`]), with one exception: a live job the backend
//! knows at once to be runnable (the oldest pending one of its destination and key) is handed
//! to its peer's worker instead ([`Handoff`]), so the worker starts it without reading the
//! outbox; a job the worker cannot take wakes the workers as any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::meta::{WriteTx, to_i64};
use crate::model::{BucketRecord, ReplStatus, VersionRecord};
use crate::replication::rules::{ReplicationConfig, Rule, dest_key};

/// What a job replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobOp {
    /// A new version (body, metadata, tags, ACL).
    Put,
    /// A delete marker.
    DeleteMarker,
    /// The permanent deletion of a version.
    DeleteVersion,
    /// Tags or ACL of an existing version changed.
    Metadata,
}

impl JobOp {
    /// The stored code.
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            Self::Put => 0,
            Self::DeleteMarker => 1,
            Self::DeleteVersion => 2,
            Self::Metadata => 3,
        }
    }
    /// Lowercase name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::DeleteMarker => "delete-marker",
            Self::DeleteVersion => "delete-version",
            Self::Metadata => "metadata",
        }
    }
    /// True for jobs that send a version itself (its delivery is recorded).
    #[must_use]
    pub fn sends_version(self) -> bool {
        matches!(self, Self::Put | Self::DeleteMarker)
    }
}

/// A job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be sent (or being sent, or waiting for a retry).
    Pending,
    /// Failed permanently; waits for `ferry replication retry`.
    Failed,
}

impl TryFrom<i64> for JobOp {
    type Error = Error;
    fn try_from(code: i64) -> Result<Self> {
        Ok(match code {
            0 => Self::Put,
            1 => Self::DeleteMarker,
            2 => Self::DeleteVersion,
            3 => Self::Metadata,
            _ => return Err(Error::unknown("job operation", code)),
        })
    }
}

impl JobState {
    /// The stored code.
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            Self::Pending => 0,
            Self::Failed => 1,
        }
    }
}

impl TryFrom<i64> for JobState {
    type Error = Error;
    fn try_from(code: i64) -> Result<Self> {
        match code {
            0 => Ok(Self::Pending),
            1 => Ok(Self::Failed),
            _ => Err(Error::unknown("job state", code)),
        }
    }
}

/// What a job's transfer takes from its rule, fixed when the job is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobOptions {
    /// Replicas are owned by the destination bucket's owner, with its private ACL.
    #[serde(default)]
    pub owner_override: bool,
    /// Storage class of the replica (else the source version's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl JobOptions {
    /// The options `rule` gives its jobs.
    #[must_use]
    pub fn of(rule: &Rule) -> Self {
        Self { owner_override: rule.destination.owner_override, storage_class: rule.destination.storage_class.clone() }
    }
}

/// A replication job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub bucket: String,
    pub key: String,
    pub version_id: String,
    pub op: JobOp,
    pub peer: String,
    pub dest_bucket: String,
    /// The rule that recorded it (a label: the transfer uses `opts`).
    pub rule_id: String,
    pub opts: JobOptions,
    pub created_us: i64,
    pub size: u64,
    pub state: JobState,
    /// A live change ("replicated up to T" waits for it), not a backfill's.
    pub live: bool,
    pub attempts: u32,
    pub next_attempt_us: i64,
    /// When the current run of transient failures started.
    pub since_us: Option<i64>,
    pub last_error: Option<String>,
    pub progress: Option<String>,
    /// The backfill that recorded (or re-drove) it, if any.
    pub backfill_id: Option<i64>,
    /// A job handed over by its commit: what its transfer would read first, as that commit
    /// wrote it. Never stored; a job read from the outbox has none.
    pub snapshot: Option<Snapshot>,
}

/// The version a handed job sends, as the commit that recorded the job wrote it, and the
/// owner of its bucket: the transfer of a handed job starts without a metadata read. Only a
/// new version held inline (a PutObject's whole state, no blob that could go meanwhile) gets
/// one. A snapshot is used only while nothing it would not show has happened since
/// ([`SnapshotEpoch`]: a version deleted or its tags, ACL or lock changed, a replication
/// configuration put or removed, in any bucket with rules); otherwise the transfer reads, as a
/// job read from the outbox does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Arc<(String, VersionRecord, u64)>);

impl Snapshot {
    /// The snapshot of `version`, a new version of a bucket owned by `owner` (its key's latest
    /// when committed), when it is one a transfer may use (held inline, not a delete marker).
    #[must_use]
    pub fn of(tx: &dyn WriteTx, owner: &str, version: &VersionRecord) -> Option<Self> {
        let inline = matches!(version.layout, crate::model::BodyLayout::Inline(_));
        let epoch = tx.signals().snapshots.current();
        (inline && !version.delete_marker)
            .then(|| Self(Arc::new((owner.to_owned(), VersionRecord { is_latest: true, ..version.clone() }, epoch))))
    }

    /// True while nothing the snapshot would not show has happened since it was taken.
    #[must_use]
    pub fn is_current(&self, epoch: &SnapshotEpoch) -> bool {
        self.0.2 == epoch.current()
    }

    /// The owner (account id) of the source bucket.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.0.0
    }

    /// The version, as committed.
    #[must_use]
    pub fn version(&self) -> &VersionRecord {
        &self.0.1
    }
}

impl Job {
    /// A job with every field empty (backends fill in what a query needs).
    pub(crate) fn blank() -> Self {
        Self {
            id: 0,
            bucket: String::new(),
            key: String::new(),
            version_id: String::new(),
            op: JobOp::Put,
            peer: String::new(),
            dest_bucket: String::new(),
            rule_id: String::new(),
            opts: JobOptions::default(),
            created_us: 0,
            size: 0,
            state: JobState::Pending,
            live: true,
            attempts: 0,
            next_attempt_us: 0,
            since_us: None,
            last_error: None,
            progress: None,
            backfill_id: None,
            snapshot: None,
        }
    }
}

impl Job {
    /// The destination's name, `peer/bucket`.
    #[must_use]
    pub fn dest(&self) -> String {
        dest_key(&self.peer, &self.dest_bucket)
    }
}

/// Replication figures of one destination of a bucket (every rule that sends there).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestStats {
    pub peer: String,
    pub dest_bucket: String,
    pub pending_ops: u64,
    pub pending_bytes: u64,
    pub failed_ops: u64,
    /// Commit time of the oldest live (not backfill) job not yet delivered, pending or failed.
    pub oldest_undelivered_us: Option<i64>,
    pub last_error: Option<String>,
}

/// A job about to be recorded.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub bucket: &'a str,
    pub key: &'a str,
    pub version_id: &'a str,
    pub op: JobOp,
    pub peer: &'a str,
    pub dest_bucket: &'a str,
    pub rule_id: &'a str,
    pub opts: &'a JobOptions,
    pub created_us: i64,
    pub size: u64,
    /// The backfill this job belongs to (`None`: a live change). Backfill jobs run after live ones.
    pub backfill_id: Option<i64>,
}

impl NewJob<'_> {
    /// The job as its row reads once recorded with `id`: pending, due now, never attempted.
    #[must_use]
    pub fn recorded(&self, id: i64) -> Job {
        Job {
            id,
            bucket: self.bucket.to_owned(),
            key: self.key.to_owned(),
            version_id: self.version_id.to_owned(),
            op: self.op,
            peer: self.peer.to_owned(),
            dest_bucket: self.dest_bucket.to_owned(),
            rule_id: self.rule_id.to_owned(),
            opts: self.opts.clone(),
            created_us: self.created_us,
            size: self.size,
            live: self.backfill_id.is_none(),
            backfill_id: self.backfill_id,
            ..Job::blank()
        }
    }

    /// The job's options as stored: `None` for the defaults.
    ///
    /// # Errors
    /// Serialization errors.
    pub(crate) fn stored_opts(&self) -> Result<Option<String>> {
        Ok((*self.opts != JobOptions::default()).then(|| serde_json::to_string(self.opts)).transpose()?)
    }
}

/// What a change of a job's row does to the outbox's derived facts: its destination's counters
/// and its key's order (one runnable job per destination and key, the oldest; the others
/// `blocked`). Decided here, applied by each backend with its own statements, so that both keep
/// the same facts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bookkeeping<'a> {
    /// Added to the destination's pending jobs.
    pub pending: i64,
    /// Added to the destination's pending bytes.
    pub bytes: i64,
    /// Added to the destination's failed jobs.
    pub failed: i64,
    /// The destination's last error, when the change brings a new one.
    pub error: Option<&'a str>,
    /// The job was its key's runnable one and no longer is: the oldest waiting job runs next.
    pub unblock_next: bool,
}

impl<'a> Bookkeeping<'a> {
    const NONE: Self = Self { pending: 0, bytes: 0, failed: 0, error: None, unblock_next: false };

    /// A new job: pending.
    pub(crate) fn of_insert(n: &NewJob<'_>) -> Self {
        Self { pending: 1, bytes: to_i64(n.size), ..Self::NONE }
    }

    /// Job `j` removed (delivered, or dropped); `blocked` is whether it was waiting.
    pub(crate) fn of_removal(j: &Job, blocked: bool) -> Self {
        match j.state {
            JobState::Pending => Self { pending: -1, bytes: -to_i64(j.size), unblock_next: !blocked, ..Self::NONE },
            JobState::Failed => Self { failed: -1, ..Self::NONE },
        }
    }

    /// Job `old` rewritten as `new` (a retry scheduled, a failure, a re-arm, progress saved);
    /// `was_head` is whether `old` was its key's runnable job.
    pub(crate) fn of_update(old: &Job, was_head: bool, new: &'a Job) -> Self {
        let size = to_i64(old.size);
        let error = if new.last_error != old.last_error { new.last_error.as_deref() } else { None };
        let unblock_next = was_head && new.state == JobState::Failed;
        match (old.state, new.state) {
            (JobState::Pending, JobState::Failed) => Self { pending: -1, bytes: -size, failed: 1, error, unblock_next },
            (JobState::Failed, JobState::Pending) => Self { pending: 1, bytes: size, failed: -1, error, unblock_next },
            _ => Self { error, unblock_next, ..Self::NONE },
        }
    }

    /// Whether the destination's counters change.
    pub(crate) fn counts(&self) -> bool {
        self.pending != 0 || self.bytes != 0 || self.failed != 0 || self.error.is_some()
    }
}

/// Whether job `old`, rewritten in state `new`, waits behind another job of its destination and
/// key: a pending job keeps its place; a failed one waits for nothing; a failed job made pending
/// again waits when another is pending (`key_has_other_pending`, asked only then).
///
/// # Errors
/// Those of `key_has_other_pending`.
pub(crate) fn blocked_after_update(
    old: JobState,
    was_head: bool,
    new: JobState,
    key_has_other_pending: impl FnOnce() -> Result<bool>,
) -> Result<bool> {
    Ok(match (old, new) {
        (JobState::Pending, JobState::Pending) => !was_head,
        (_, JobState::Failed) => false,
        (JobState::Failed, JobState::Pending) => key_has_other_pending()?,
    })
}

/// True when a change made on a replica goes back along `rule`: only to where the replica came
/// from, and only the changes the rule asks for (tag and ACL changes with
/// `ReplicaModifications`, version deletions with `DeleteReplication`).
fn replica_change_goes_back(rule: &Rule, version: &VersionRecord, op: JobOp) -> bool {
    let to_origin =
        version.attrs.origin.as_ref().is_none_or(|o| o.region == rule.destination.peer && o.bucket == rule.destination.bucket);
    to_origin
        && match op {
            JobOp::Metadata => rule.replica_modifications,
            JobOp::DeleteVersion => rule.deletes,
            JobOp::Put | JobOp::DeleteMarker => false,
        }
}

/// Records the jobs `version`'s change needs, per the bucket's rules, inside the caller's
/// transaction, and marks the version PENDING when there are any. A replica's changes go back
/// only where it came from (see [`replica_change_goes_back`]). A tag or ACL change of a version
/// a destination never received (nor has a pending job for) sends the whole version there: a
/// metadata update alone would have nothing to apply to. Returns the number of jobs.
///
/// # Errors
/// Database errors, or a stored configuration that does not parse.
pub fn enqueue(tx: &mut dyn WriteTx, bucket: &BucketRecord, version: &VersionRecord, op: JobOp) -> Result<usize> {
    let Some(stored) = &bucket.replication else { return Ok(0) };
    if matches!(op, JobOp::DeleteVersion | JobOp::Metadata) {
        // A handed job's snapshot would not show it, whether or not a rule sends it.
        snapshots_stale(tx);
    }
    let cfg = ReplicationConfig::from_stored(stored)?;
    let is_replica = version.repl_status == Some(ReplStatus::Replica);
    let tags: &[(String, String)] = if version.delete_marker { &[] } else { &version.attrs.tags };
    let rules: Vec<&Rule> = cfg
        .select(&version.key, tags, op)
        .into_iter()
        .filter(|r| !is_replica || replica_change_goes_back(r, version, op))
        .collect();
    if rules.is_empty() {
        return Ok(0);
    }
    let (delivered, jobs) = if op == JobOp::Metadata && !is_replica {
        (
            tx.delivered_to(&bucket.name, &version.key, &version.version_id)?,
            tx.jobs_for_version(&bucket.name, &version.key, &version.version_id)?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    // The job's time is the change's commit time: the version's own for new versions and
    // markers (so "replicated up to T" compares with last-modified times), a fresh tick for
    // changes that have none.
    let tick = match op {
        JobOp::Put | JobOp::DeleteMarker => version.mtime_us,
        JobOp::DeleteVersion | JobOp::Metadata => tx.now(),
    };
    // A new version's jobs carry it to their transfers (the jobs of a change made later read it).
    let snapshot = if op == JobOp::Put { Snapshot::of(tx, &bucket.owner.id, version) } else { None };
    for rule in &rules {
        let dest = rule.destination.key();
        let will_arrive = delivered.contains(&dest)
            || jobs.iter().any(|j| j.op == JobOp::Put && j.state == JobState::Pending && j.dest() == dest);
        let job_op = if op == JobOp::Metadata && !is_replica && !will_arrive { JobOp::Put } else { op };
        let snapshot = snapshot.clone().filter(|_| job_op == JobOp::Put);
        record(tx, version, rule, job_op, tick, None, snapshot)?;
    }
    if op != JobOp::DeleteVersion && !is_replica {
        tx.set_repl_status(&bucket.name, &version.key, &version.version_id, Some(ReplStatus::Pending))?;
    }
    Ok(rules.len())
}

/// Finishes a job: removes it, records the delivery when it sent its version (`delivered`:
/// false when there was nothing to send, e.g. the version is gone or superseded at an S3
/// target) and recomputes the source version's status. A job that no longer exists (its
/// configuration was removed meanwhile) changes nothing.
///
/// # Errors
/// Database errors.
pub fn complete(tx: &mut dyn WriteTx, job: &Job, delivered: bool) -> Result<()> {
    let Some(current) = tx.delete_job(job.id)? else { return Ok(()) };
    if delivered && current.op.sends_version() {
        tx.mark_delivered(&current.bucket, &current.key, &current.version_id, &current.dest())?;
    }
    if let Some(b) = current.backfill_id {
        tx.backfill_progress(b, 1, current.size, 0)?;
    }
    wake_the_next_of_key(tx, &current)?;
    refresh_status(tx, &current.bucket, &current.key, &current.version_id)
}

/// Marks a job failed for good (permanent error), keeping the reason. A job that no longer
/// exists changes nothing.
///
/// # Errors
/// Database errors.
pub fn fail(tx: &mut dyn WriteTx, job: &Job, error: &str) -> Result<()> {
    let Some(mut current) = tx.get_job(job.id)? else { return Ok(()) };
    current.state = JobState::Failed;
    current.attempts = current.attempts.saturating_add(1);
    current.last_error = Some(error.to_owned());
    tx.update_job(&current)?;
    if let Some(b) = current.backfill_id {
        tx.backfill_progress(b, 0, 0, 1)?;
    }
    wake_the_next_of_key(tx, &current)?;
    refresh_status(tx, &current.bucket, &current.key, &current.version_id)
}

/// `job` left the pending jobs of its destination and key: when another one waits there, it is
/// runnable now, so the workers wake after the commit (a worker that found nothing more to run
/// does not read the outbox again until woken).
fn wake_the_next_of_key(tx: &mut dyn WriteTx, job: &Job) -> Result<()> {
    if tx.key_has_pending_job(job)? {
        wake_on_commit(tx);
    }
    Ok(())
}

/// Schedules another attempt of a job that failed with a transient error, keeping the transfer
/// progress the attempt may have saved. A job that has been failing for longer than
/// `give_up_us` becomes FAILED instead, with the reason; returns true then.
///
/// # Errors
/// Database errors.
pub fn retry_later(
    tx: &mut dyn WriteTx,
    job: &Job,
    error: &str,
    next_attempt_us: i64,
    now_us: i64,
    give_up_us: i64,
) -> Result<bool> {
    let Some(mut current) = tx.get_job(job.id)? else { return Ok(false) };
    let since = *current.since_us.get_or_insert(now_us);
    if now_us.saturating_sub(since) >= give_up_us {
        let secs = now_us.saturating_sub(since) / 1_000_000;
        fail(tx, &current, &format!("gave up after {secs} s of transient errors; last: {error}"))?;
        return Ok(true);
    }
    current.attempts = current.attempts.saturating_add(1);
    current.next_attempt_us = next_attempt_us;
    current.last_error = Some(error.to_owned());
    tx.update_job(&current)?;
    wake_on_commit(tx);
    Ok(false)
}

/// Makes up to `limit` failed jobs of a bucket pending again (`ferry replication retry`);
/// returns how many. Called in batches, so a large backlog never holds the writer for long.
///
/// # Errors
/// Database errors.
pub fn retry_failed(tx: &mut dyn WriteTx, bucket: &str, limit: usize) -> Result<u64> {
    let failed = tx.failed_jobs(bucket, limit)?;
    for j in &failed {
        rearm(tx, j, j.backfill_id)?;
        refresh_status(tx, &j.bucket, &j.key, &j.version_id)?;
    }
    Ok(failed.len() as u64)
}

/// Makes failed job `id` of `bucket` pending again; false when there is no such failed job.
///
/// # Errors
/// Database errors.
pub fn retry_job(tx: &mut dyn WriteTx, bucket: &str, id: i64) -> Result<bool> {
    let Some(j) = tx.get_job(id)? else { return Ok(false) };
    if j.bucket != bucket || j.state != JobState::Failed {
        return Ok(false);
    }
    rearm(tx, &j, j.backfill_id)?;
    refresh_status(tx, &j.bucket, &j.key, &j.version_id)?;
    Ok(true)
}

/// Drops up to `limit` jobs of a bucket with ids up to `up_to_id` (its replication
/// configuration was removed when the last id was `up_to_id`); versions left without a job no
/// longer claim PENDING or FAILED. Returns how many were dropped.
///
/// # Errors
/// Database errors.
pub fn drop_jobs(tx: &mut dyn WriteTx, bucket: &str, up_to_id: i64, limit: usize) -> Result<u64> {
    let jobs: Vec<Job> = tx.bucket_jobs(bucket, 0, limit)?.into_iter().filter(|j| j.id <= up_to_id).collect();
    for j in &jobs {
        tx.delete_job(j.id)?;
    }
    if !jobs.is_empty() {
        // Jobs of the keys recorded after `up_to_id` (a new configuration's) may run now.
        wake_on_commit(tx);
    }
    for j in &jobs {
        if let Some(v) = tx.get_version(&j.bucket, &j.key, &j.version_id)?
            && matches!(v.repl_status, Some(ReplStatus::Pending | ReplStatus::Failed))
            && tx.jobs_for_version(&j.bucket, &j.key, &j.version_id)?.is_empty()
        {
            tx.set_repl_status(&j.bucket, &j.key, &j.version_id, None)?;
        }
    }
    Ok(jobs.len() as u64)
}

/// Saves a running transfer's progress with its job (a multipart upload's id and part plan),
/// so an attempt after a restart resumes it. A job that no longer exists changes nothing.
///
/// # Errors
/// Database errors.
pub fn save_progress(tx: &mut dyn WriteTx, id: i64, progress: Option<String>) -> Result<()> {
    let Some(mut j) = tx.get_job(id)? else { return Ok(()) };
    j.progress = progress;
    tx.update_job(&j)
}

/// Records one job for `version` to `rule`'s destination, and, when the transaction commits,
/// hands it to its peer's worker (a live job the backend knows to be runnable, with
/// `snapshot`) or wakes the workers.
pub(super) fn record(
    tx: &mut dyn WriteTx,
    version: &VersionRecord,
    rule: &Rule,
    op: JobOp,
    created_us: i64,
    backfill_id: Option<i64>,
    snapshot: Option<Snapshot>,
) -> Result<()> {
    let job = NewJob {
        bucket: &version.bucket,
        key: &version.key,
        version_id: &version.version_id,
        op,
        peer: &rule.destination.peer,
        dest_bucket: &rule.destination.bucket,
        rule_id: &rule.id,
        opts: &JobOptions::of(rule),
        created_us,
        size: if op == JobOp::Put { version.size } else { 0 },
        backfill_id,
    };
    match tx.record_runnable_job(&job)? {
        Some(id) if backfill_id.is_none() => hand_off_on_commit(tx, Job { snapshot, ..job.recorded(id) }),
        _ => wake_on_commit(tx),
    }
    Ok(())
}

/// Makes a failed job pending again from scratch (attempts, due time and failure time reset),
/// counted by `backfill_id`, and wakes the workers when the transaction commits.
pub(super) fn rearm(tx: &mut dyn WriteTx, failed: &Job, backfill_id: Option<i64>) -> Result<()> {
    let mut j = failed.clone();
    j.state = JobState::Pending;
    j.attempts = 0;
    j.next_attempt_us = 0;
    j.since_us = None;
    j.backfill_id = backfill_id;
    tx.update_job(&j)?;
    wake_on_commit(tx);
    Ok(())
}

/// Wakes the replication workers once the enclosing transaction commits (never if it rolls
/// back): the hook runs before the writer answers the caller, so a write that returned has
/// woken its workers. One wake-up per transaction, however many jobs it records.
fn wake_on_commit(tx: &mut dyn WriteTx) {
    let wakeup = tx.signals().outbox.clone();
    tx.on_commit_once("outbox-wakeup", Box::new(move || wakeup.wake()));
}

/// Hands `job` to its peer's worker once the enclosing transaction commits; wakes the workers
/// instead when that worker cannot take it.
fn hand_off_on_commit(tx: &mut dyn WriteTx, job: Job) {
    let (handoff, wakeup) = (tx.signals().handoff.clone(), tx.signals().outbox.clone());
    tx.on_commit(Box::new(move || {
        if !handoff.offer(job) {
            wakeup.wake();
        }
    }));
}

/// A counter that moves on with every change a [`Snapshot`] would not show: a version
/// deleted, its tags, ACL or lock changed (in a bucket with replication rules), a replication
/// configuration put or removed (its jobs are dropped after). Moved inside the transaction
/// that makes the change, so a snapshot taken before it (even one committed in the same
/// group) is stale from then on; a change that rolls back only costs a read.
#[derive(Debug, Clone, Default)]
pub struct SnapshotEpoch(Arc<std::sync::atomic::AtomicU64>);

impl SnapshotEpoch {
    /// The current value.
    #[must_use]
    pub fn current(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes every snapshot taken so far stale.
    pub fn advance(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Makes the snapshots of handed jobs stale: called by a write that changes what they show.
pub fn snapshots_stale(tx: &mut dyn WriteTx) {
    tx.signals().snapshots.advance();
}

/// Runnable live jobs on their way from the commit that recorded them to their peer's worker
/// ([`Handoff::subscribe`]), which then starts them without reading the outbox. A hand-off is
/// only a shortcut: the job is in the outbox either way, and one that cannot be handed over
/// (no worker for its peer, its queue full) wakes the workers as any other. Memory: at most the
/// queue's capacity per peer.
#[derive(Debug, Clone, Default)]
pub struct Handoff(Arc<Mutex<HashMap<String, mpsc::Sender<Job>>>>);

impl Handoff {
    /// The jobs handed to `peer`'s worker from now on, at most `capacity` waiting (a later
    /// subscription for the same peer replaces this one).
    #[must_use]
    pub fn subscribe(&self, peer: &str, capacity: usize) -> mpsc::Receiver<Job> {
        let (send, receive) = mpsc::channel(capacity.max(1));
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(peer.to_owned(), send);
        receive
    }

    /// Queues `job` for its peer's worker; false when it has none or its queue is full.
    pub fn offer(&self, job: Job) -> bool {
        let workers = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        workers.get(&job.peer).is_some_and(|w| w.try_send(job).is_ok())
    }
}

/// The outbox's wake-up: a counter that changes after every commit that made a job runnable.
/// Workers wait on it ([`Wakeup::subscribe`]), with a timeout as a backstop.
#[derive(Debug, Clone)]
pub struct Wakeup(Arc<watch::Sender<u64>>);

impl Default for Wakeup {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

impl Wakeup {
    /// A receiver that changes at every wake-up.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Wakes every subscriber.
    pub fn wake(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Derives a version's replication status from its remaining jobs.
/// A replica keeps REPLICA (`set_repl_status` never overwrites it); a version that is gone has
/// no row to update.
fn refresh_status(tx: &mut dyn WriteTx, bucket: &str, key: &str, version_id: &str) -> Result<()> {
    let jobs = tx.jobs_for_version(bucket, key, version_id)?;
    let status = if jobs.iter().any(|j| j.state == JobState::Pending) {
        ReplStatus::Pending
    } else if jobs.iter().any(|j| j.state == JobState::Failed) {
        ReplStatus::Failed
    } else {
        ReplStatus::Completed
    };
    tx.set_repl_status(bucket, key, version_id, Some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::conformance::{new_object, replication_config};
    use crate::meta::sqlite::SqliteMeta;
    use crate::model::Acl;
    use crate::model::*;
    use crate::objects::*;

    fn owner() -> Owner {
        Owner { id: "u".into(), display_name: "u".into() }
    }

    async fn setup(dests: &[&str], deletes: bool) -> (tempfile::TempDir, SqliteMeta) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteMeta::open(&dir.path().join("meta.db"), None).unwrap();
        let replication = Some(replication_config(dests, deletes));
        meta.write(move |tx| {
            tx.put_bucket(&BucketRecord {
                name: "src".into(),
                created_us: 1,
                owner: owner(),
                versioning: Versioning::Enabled,
                acl: Acl::private(&owner()),
                tagging: None,
                replication,
                replica_sources: Vec::new(),
                config: Default::default(),
            })
        })
        .await
        .unwrap();
        (dir, meta)
    }

    async fn status(meta: &SqliteMeta, vid: &str) -> Option<ReplStatus> {
        let vid = vid.to_owned();
        meta.read(move |r| r.get_version("src", "k", &vid)).await.unwrap().and_then(|v| v.repl_status)
    }

    /// A live job that is runnable at once goes from its commit to its peer's worker, with no
    /// wake-up; one that waits behind its key, or finds the worker's queue full, wakes the
    /// workers instead. The end of a key's head wakes them only when another job waits there.
    #[tokio::test]
    async fn a_runnable_live_job_is_handed_over_and_the_next_of_its_key_wakes_the_workers() {
        let (_d, meta) = setup(&["d1"], false).await;
        let mut handed = meta.signals().handoff.subscribe("eu", 1);
        let mut signal = meta.signals().outbox.subscribe();
        let mut woken = || {
            let changed = signal.has_changed().unwrap();
            signal.borrow_and_update();
            changed
        };
        let put = |key: &'static str| meta.write(move |tx| put_version(tx, "src", new_object(key), &WriteConditions::default()));
        put("k").await.unwrap();
        let head = handed.try_recv().expect("handed over");
        let id = head.id;
        let stored = meta.read(move |r| r.get_job(id)).await.unwrap();
        assert!(
            stored.as_ref().is_some_and(|j| j.snapshot.is_none()),
            "a job read from the outbox has no snapshot"
        );
        assert_eq!(
            Some(Job { snapshot: None, ..head.clone() }),
            stored,
            "the job handed over is the job as stored"
        );
        assert!(!woken(), "a job handed over wakes nobody");
        // It carries its version (held inline) as committed, and the bucket's owner.
        let snapshot = head.snapshot.clone().expect("a new inline version travels with its job");
        let (b, k, vid) = ("src".to_owned(), "k".to_owned(), head.version_id.clone());
        let version = meta.read(move |r| r.get_version(&b, &k, &vid)).await.unwrap().unwrap();
        let owner = meta.read(|r| r.get_bucket("src")).await.unwrap().unwrap().owner.id;
        // The stored status moved to PENDING after the job was recorded; nothing else differs.
        assert_eq!(VersionRecord { repl_status: version.repl_status, ..snapshot.version().clone() }, version);
        assert_eq!(snapshot.owner(), owner);
        let large =
            VersionRecord { layout: crate::model::BodyLayout::Parts { parts: Vec::new(), multipart: false }, ..version.clone() };
        let (o, l) = (owner.clone(), large.clone());
        let none = meta.write(move |tx| Ok(Snapshot::of(tx, &o, &l).is_none())).await.unwrap();
        assert!(none, "a version in blobs is read by its transfer");
        // Current until a change it would not show: here a tag change of this version.
        let epoch = meta.signals().snapshots.clone();
        assert!(snapshot.is_current(&epoch));
        let mut tagged = version.clone();
        tagged.attrs.tags = vec![("t".into(), "1".into())];
        meta.write(move |tx| {
            let b = tx.get_bucket("src")?.unwrap();
            enqueue(tx, &b, &tagged, JobOp::Metadata).map(drop)
        })
        .await
        .unwrap();
        assert!(!snapshot.is_current(&epoch), "a tag change makes it stale: its transfer reads");
        // The tag change's job wakes the workers; what follows counts wake-ups from here.
        woken();

        put("k").await.unwrap();
        assert!(handed.try_recv().is_err(), "a job waiting behind its key is not handed over");
        assert!(woken(), "it wakes the workers");

        put("a").await.unwrap();
        assert!(!woken());
        put("b").await.unwrap();
        assert!(woken(), "the worker's queue is full: a wake-up instead");
        let a = handed.try_recv().expect("a was handed over");
        assert_eq!(a.key, "a");
        assert!(handed.try_recv().is_err(), "b was not");

        meta.write(move |tx| complete(tx, &head, true)).await.unwrap();
        assert!(woken(), "the next job of k is runnable now");
        meta.write(move |tx| complete(tx, &a, true)).await.unwrap();
        assert!(!woken(), "nothing waited behind a");
    }

    #[tokio::test]
    async fn jobs_are_recorded_with_the_write_and_drive_the_status() {
        let (_d, meta) = setup(&["d1", "d2"], true).await;
        let mut signal = meta.signals().outbox.subscribe();
        let v = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        assert_eq!(v.repl_status, Some(ReplStatus::Pending));
        assert!(signal.has_changed().unwrap(), "workers are woken on commit");
        signal.borrow_and_update();
        let (b, k, vid) = ("src".to_owned(), "k".to_owned(), v.version_id.clone());
        let jobs = meta.read(move |r| r.jobs_for_version(&b, &k, &vid)).await.unwrap();
        assert_eq!(jobs.len(), 2, "one job per destination");
        let runnable = |dest: &'static str| meta.read(move |r| r.runnable_jobs("eu", dest, 0, i64::MAX, &[], 10));
        assert_eq!(runnable("d1").await.unwrap().len(), 1, "each destination has its own queue");
        assert_eq!(runnable("d2").await.unwrap().len(), 1);
        let v2 = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        assert_eq!(
            runnable("d1").await.unwrap().len(),
            1,
            "per-key order: the second job waits for the first"
        );
        let (j1, j2) = (jobs[0].clone(), jobs[1].clone());
        meta.write(move |tx| complete(tx, &j1, true)).await.unwrap();
        let next = runnable("d1").await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].version_id, v2.version_id, "delivering the head unblocks the next job of the key");
        let (b, k, vid) = ("src".to_owned(), "k".to_owned(), v.version_id.clone());
        let delivered = meta.read(move |r| r.delivered_to(&b, &k, &vid)).await.unwrap();
        assert_eq!(delivered, vec!["eu/d1".to_owned()], "delivery is recorded per destination");

        assert_eq!(status(&meta, &v.version_id).await, Some(ReplStatus::Pending));
        meta.write(move |tx| fail(tx, &j2, "AccessDenied")).await.unwrap();
        assert_eq!(status(&meta, &v.version_id).await, Some(ReplStatus::Failed));
        let n = meta.write(|tx| crate::replication::retry_failed(tx, "src", 100)).await.unwrap();
        assert_eq!(n, 1);
        // A failed job did not hold the key: the later job became the head, and the retried one
        // queues behind it.
        let head = runnable("d2").await.unwrap();
        assert_eq!(head.len(), 1);
        assert_eq!(head[0].version_id, v2.version_id);
        let h = head[0].clone();
        meta.write(move |tx| complete(tx, &h, true)).await.unwrap();
        let again = runnable("d2").await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].state, JobState::Pending);
        assert_eq!(again[0].version_id, v.version_id);
        let j = again[0].clone();
        meta.write(move |tx| complete(tx, &j, true)).await.unwrap();
        assert_eq!(status(&meta, &v.version_id).await, Some(ReplStatus::Completed));
        let stats = meta.read(|r| r.dest_stats("src")).await.unwrap();
        let figures: Vec<_> = stats.iter().map(|s| (s.dest_bucket.as_str(), s.pending_ops, s.failed_ops)).collect();
        assert_eq!(figures, vec![("d1", 1, 0), ("d2", 0, 0)], "counters follow the jobs");
    }

    #[tokio::test]
    async fn deletes_markers_metadata_and_replicas() {
        let (_d, meta) = setup(&["d1"], true).await;
        let v = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        meta.write(|tx| delete_current(tx, "src", "k", &owner(), &Default::default()).map(|_| ())).await.unwrap();
        let vid = v.version_id.clone();
        meta.write(move |tx| {
            update_attrs(tx, "src", "k", &vid, AttrChange::Tags(vec![("t".into(), "1".into())]), None).map(|_| ())
        })
        .await
        .unwrap();
        let vid = v.version_id.clone();
        meta.write(move |tx| delete_version(tx, "src", "k", &vid, None, &Default::default()).map(|_| ())).await.unwrap();
        let ops: Vec<_> = meta.read(|r| r.bucket_jobs("src", 0, 10)).await.unwrap().into_iter().map(|j| j.op).collect();
        assert_eq!(ops, vec![JobOp::Put, JobOp::DeleteMarker, JobOp::Metadata, JobOp::DeleteVersion]);
        // A replica records nothing, and a second delivery of it is a no-op.
        let mut r = new_object("r");
        r.replica = Some(crate::objects::tests::replica_identity("abc", 5));
        r.repl_status = Some(ReplStatus::Replica);
        let r2 = r.clone();
        meta.write(move |tx| put_version(tx, "src", r, &WriteConditions::default())).await.unwrap();
        meta.write(move |tx| put_version(tx, "src", r2, &WriteConditions::default())).await.unwrap();
        assert_eq!(meta.read(|r| r.bucket_jobs("src", 0, 10)).await.unwrap().len(), 4);
        for _ in 0..2 {
            let dm = crate::objects::tests::replica_identity("dm1", 10);
            meta.write(move |tx| put_replica_delete_marker(tx, "src", "r", &dm, owner()).map(|_| ())).await.unwrap();
        }
        let versions =
            meta.read(|r| r.scan_versions("src", b"r", &crate::meta::VersionCursor::default(), None, 10)).await.unwrap();
        assert_eq!(versions.len(), 2, "one replica version, one replica marker");
        assert_eq!(meta.read(|r| r.bucket_jobs("src", 0, 10)).await.unwrap().len(), 4);
    }

    /// A live change recorded behind a waiting backfill job of its key promotes that job: it
    /// runs among live jobs, in order, instead of after every one of them (priority inversion).
    #[tokio::test]
    async fn a_live_change_promotes_the_backfill_job_it_waits_behind() {
        let (_d, meta) = setup(&["d1"], false).await;
        let v = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        let backfilled = v.clone();
        meta.write(move |tx| {
            // What the backfill records for an old version (the live job is delivered).
            for j in tx.jobs_for_version("src", "k", &backfilled.version_id)? {
                tx.delete_job(j.id)?;
            }
            tx.insert_job(&crate::replication::NewJob {
                bucket: "src",
                key: "k",
                version_id: &backfilled.version_id,
                op: JobOp::Put,
                peer: "eu",
                dest_bucket: "d1",
                rule_id: "r0",
                opts: &crate::replication::JobOptions::default(),
                created_us: backfilled.mtime_us,
                size: 1,
                backfill_id: Some(7),
            })
            .map(|_| ())
        })
        .await
        .unwrap();
        // Live traffic on other keys, then a live overwrite of `k`.
        for i in 0..5 {
            meta.write(move |tx| put_version(tx, "src", new_object(&format!("other{i}")), &WriteConditions::default()))
                .await
                .unwrap();
        }
        meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        let live = meta.read(|r| r.runnable_jobs("eu", "d1", 0, i64::MAX, &[], 100)).await.unwrap();
        assert_eq!(live.first().map(|j| (j.key.as_str(), j.backfill_id)), Some(("k", Some(7))), "{live:?}");
        assert!(
            !live.iter().any(|j| j.key == "k" && j.backfill_id.is_none()),
            "the live job still waits its turn"
        );
        assert!(meta.read(|r| r.runnable_jobs("eu", "d1", 1, i64::MAX, &[], 100)).await.unwrap().is_empty());
    }

    /// Completing or failing a job that was dropped meanwhile (its configuration removed) must
    /// not invent a status: COMPLETED is only for versions every destination acknowledged.
    #[tokio::test]
    async fn results_of_dropped_jobs_change_nothing() {
        let (_d, meta) = setup(&["d1"], false).await;
        let v = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        let vid = v.version_id.clone();
        let jobs = meta.read(move |r| r.jobs_for_version("src", "k", &vid)).await.unwrap();
        let last = meta.read(|r| r.max_job_id()).await.unwrap();
        assert_eq!(meta.write(move |tx| crate::replication::drop_jobs(tx, "src", last, 10)).await.unwrap(), 1);
        assert_eq!(status(&meta, &v.version_id).await, None, "dropped: no status it will not reach");
        let (j1, j2) = (jobs[0].clone(), jobs[0].clone());
        meta.write(move |tx| fail(tx, &j1, "AccessDenied")).await.unwrap();
        meta.write(move |tx| complete(tx, &j2, true)).await.unwrap();
        assert_eq!(status(&meta, &v.version_id).await, None);
        let stats = meta.read(|r| r.dest_stats("src")).await.unwrap();
        assert_eq!((stats[0].pending_ops, stats[0].failed_ops), (0, 0));
    }

    /// A job failing with transient errors for longer than the give-up time becomes FAILED
    /// with the reason; until then it waits for its next attempt.
    #[tokio::test]
    async fn transient_failures_give_up_with_a_reason() {
        let (_d, meta) = setup(&["d1"], false).await;
        let v = meta.write(|tx| put_version(tx, "src", new_object("k"), &WriteConditions::default())).await.unwrap();
        let vid = v.version_id.clone();
        let job = meta.read(move |r| r.jobs_for_version("src", "k", &vid)).await.unwrap().remove(0);
        let (j, t0) = (job.clone(), 1_000_000_000);
        let gave_up =
            meta.write(move |tx| crate::replication::retry_later(tx, &j, "connection refused", t0 + 5, t0, 60_000_000)).await;
        assert!(!gave_up.unwrap());
        let j = job.clone();
        let gave_up = meta
            .write(move |tx| crate::replication::retry_later(tx, &j, "connection refused", t0 + 9, t0 + 61_000_000, 60_000_000));
        assert!(gave_up.await.unwrap());
        let id = job.id;
        let failed = meta.read(move |r| r.get_job(id)).await.unwrap().unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert!(failed.last_error.unwrap().contains("gave up after 61 s of transient errors; last: connection refused"));
        assert_eq!(status(&meta, &v.version_id).await, Some(ReplStatus::Failed));
    }
}
