//! Replication rules and the replication outbox.
//!
//! # Rules
//! A bucket's replication configuration (the S3 `ReplicationConfiguration`, parsed by the S3
//! layer) is stored with the bucket as JSON ([`ReplicationConfig`]). Destinations are resolved
//! to a peer (a region name) when the configuration is put, so matching a change needs no
//! network. A destination is the pair (peer, bucket), written `peer/bucket` ([`dest_key`]).
//!
//! # Outbox
//! Every change a rule matches (a new version, a delete marker, a version deletion when the
//! rule asks for it, a tag or ACL change) records one job per destination in the **same
//! transaction** as the change ([`enqueue`]): a committed change always has its jobs, and a
//! job never exists for a change that did not commit. Nothing is discovered by scanning.
//!
//! Invariants:
//! - Delivery is tracked per (version, destination): completing a job that sent a version
//!   records the destination in `repl_delivered`, in the transaction that deletes the job.
//!   Backfills, resyncs and the choice between a metadata job and a whole-version job read it.
//! - A job carries what its transfer needs from its rule (owner override, storage class:
//!   [`JobOptions`]), fixed when it is recorded; renumbering or editing rules later never
//!   changes how an already acknowledged change is sent.
//! - Per destination and key, pending jobs are delivered in the order they were recorded:
//!   exactly one of them is unblocked (the head); the others wait. A FAILED job does not hold
//!   the key. A live job recorded behind a waiting backfill job promotes it to live priority.
//! - No job waits for ever: a job failing with transient errors for longer than the configured
//!   `give_up_after` becomes FAILED with its last error ([`retry_later`]); a metadata change for
//!   a version a destination never received is sent as the whole version ([`enqueue`]).
//! - Counters per (source bucket, destination) (pending operations and bytes, failed
//!   operations, last error) change in the same transactions as the jobs, so status costs
//!   O(destinations), not O(backlog).
//!
//! Table `repl_jobs`: `id` (enqueue order), the source version (`bucket`, `key`,
//! `version_id`), `op`, the destination (`peer`, `dest_bucket`), `rule_id` (a label), `opts`,
//! `created_us` (commit clock), `size`, `state` (pending / failed), `blocked`, `live` (a live
//! change, which "replicated up to T" waits for, or a backfill's), `priority`, `attempts`,
//! `next_attempt_us`, `since_us` (first transient failure), `last_error`, `progress` (JSON: a
//! multipart transfer's upload id and part plan, so a restart resumes it), `backfill_id`.
//! Completed jobs are deleted, in the same transaction that updates the source version's
//! replication status.
//!
//! # Status
//! A version's `x-amz-replication-status` is derived from its jobs: PENDING while any is
//! pending, FAILED if one failed permanently (and none is pending), COMPLETED when all are done.
//! Replicas are REPLICA and record jobs only to go back to where they came from (tag and ACL
//! changes under `ReplicaModifications`, version deletions under `DeleteReplication`).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::meta::{WriteTx, prefix_end};
use crate::model::{BucketRecord, ReplStatus, VersionRecord};

/// A bucket's replication configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicationConfig {
    /// The IAM role ARN given by the client (kept, not used).
    pub role: String,
    /// The rules.
    pub rules: Vec<Rule>,
}

/// One replication rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub priority: i32,
    pub enabled: bool,
    /// The rule used the V2 schema (`Filter`) rather than the legacy top-level `Prefix`.
    pub v2: bool,
    pub filter: RuleFilter,
    /// Replicate delete markers (`DeleteMarkerReplication`).
    pub delete_markers: bool,
    /// Replicate deletions of specific versions (the `DeleteReplication` extension).
    pub deletes: bool,
    /// Backfill objects that existed before the rule (`ExistingObjectReplication`).
    pub existing_objects: bool,
    /// Replicate metadata changes made on replicas back (`ReplicaModifications`).
    pub replica_modifications: bool,
    pub destination: RuleDestination,
}

/// Which objects a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RuleFilter {
    pub prefix: String,
    /// Every tag listed must be on the object.
    pub tags: Vec<(String, String)>,
}

/// Where a rule replicates to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDestination {
    /// The peer (region name) holding the destination bucket, resolved at configuration time.
    pub peer: String,
    /// Destination bucket name.
    pub bucket: String,
    /// Storage class override for replicas.
    pub storage_class: Option<String>,
    /// Destination account (kept).
    pub account: Option<String>,
    /// `AccessControlTranslation{Owner=Destination}`: replicas are owned by the destination.
    pub owner_override: bool,
    /// `ReplicationTime`: the recovery point objective in minutes, if given.
    pub rpo_minutes: Option<u32>,
    /// `Metrics` enabled.
    pub metrics: bool,
}

/// The name of a destination: `peer/bucket` (neither contains `/`).
#[must_use]
pub fn dest_key(peer: &str, bucket: &str) -> String {
    format!("{peer}/{bucket}")
}

impl RuleDestination {
    /// The ARN Ferry reports for this destination (region pinned).
    #[must_use]
    pub fn arn(&self) -> String {
        format!("arn:aws:s3:{}::{}", self.peer, self.bucket)
    }

    /// The destination's name, `peer/bucket`.
    #[must_use]
    pub fn key(&self) -> String {
        dest_key(&self.peer, &self.bucket)
    }
}

impl RuleFilter {
    /// True when the filter selects `key` with `tags`.
    #[must_use]
    pub fn matches(&self, key: &str, tags: &[(String, String)]) -> bool {
        key.starts_with(&self.prefix) && self.tags.iter().all(|t| tags.contains(t))
    }
}

impl ReplicationConfig {
    /// Parses the stored JSON.
    ///
    /// # Errors
    /// When the JSON is invalid.
    pub fn from_stored(s: &str) -> Result<Self> {
        Ok(serde_json::from_str(s)?)
    }

    /// The stored JSON.
    ///
    /// # Errors
    /// Never in practice (plain data).
    pub fn to_stored(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// The rules a change selects: for each destination, the enabled matching rule with the
    /// highest priority (the first one listed on a tie), if it replicates this kind of change.
    #[must_use]
    pub fn select(&self, key: &str, tags: &[(String, String)], op: JobOp) -> Vec<&Rule> {
        let mut chosen: Vec<&Rule> = Vec::new();
        for rule in self.rules.iter().filter(|r| r.enabled && r.filter.matches(key, tags)) {
            match chosen
                .iter_mut()
                .find(|c| c.destination.peer == rule.destination.peer && c.destination.bucket == rule.destination.bucket)
            {
                Some(c) if rule.priority > c.priority => *c = rule,
                Some(_) => {}
                None => chosen.push(rule),
            }
        }
        chosen.retain(|r| match op {
            JobOp::Put | JobOp::Metadata => true,
            // Delete markers have no tags: rules that filter on tags do not replicate them (as in S3).
            JobOp::DeleteMarker => r.delete_markers && r.filter.tags.is_empty(),
            JobOp::DeleteVersion => r.deletes,
        });
        chosen
    }
}

/// What a job replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub(crate) fn to_i64(self) -> i64 {
        match self {
            Self::Put => 0,
            Self::DeleteMarker => 1,
            Self::DeleteVersion => 2,
            Self::Metadata => 3,
        }
    }
    pub(crate) fn from_i64(v: i64) -> Self {
        match v {
            1 => Self::DeleteMarker,
            2 => Self::DeleteVersion,
            3 => Self::Metadata,
            _ => Self::Put,
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
pub enum JobState {
    /// Waiting to be sent (or being sent, or waiting for a retry).
    Pending,
    /// Failed permanently; waits for `ferry replication retry`.
    Failed,
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
}

impl Job {
    /// The destination's name, `peer/bucket`.
    #[must_use]
    pub fn dest(&self) -> String {
        dest_key(&self.peer, &self.dest_bucket)
    }
}

/// A backfill: replication of versions that existed before a rule (or a re-sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub id: i64,
    pub bucket: String,
    /// Only this rule's destinations (`None`: every rule).
    pub rule_id: Option<String>,
    /// Only keys under this prefix.
    pub prefix: String,
    /// Which versions, per destination: `none` (never delivered there), `failed` (its job
    /// there failed), or `all`.
    pub status_filter: String,
    /// Only versions last modified before this time (µs), if set.
    pub older_than_us: Option<i64>,
    /// `counting`, `running`, `paused`, `cancelled` or `done`.
    pub state: String,
    /// Where the scan stopped: after this key, and after this version of it.
    pub cursor_key: Option<String>,
    pub cursor_version: Option<(i64, String)>,
    /// Versions and bytes in scope when the backfill started.
    pub total_versions: u64,
    pub total_bytes: u64,
    pub scanned_versions: u64,
    pub scanned_bytes: u64,
    /// Jobs recorded for it.
    pub enqueued_versions: u64,
    /// Versions handled: replicated, or needing nothing.
    pub done_versions: u64,
    pub done_bytes: u64,
    pub failed_versions: u64,
    pub created_us: i64,
    pub updated_us: i64,
    pub finished_us: Option<i64>,
}

impl Backfill {
    /// Fraction of the versions in scope that are handled (0..=1).
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // a ratio for display
    pub fn ratio(&self) -> f64 {
        if self.total_versions == 0 {
            return if self.state == "counting" { 0.0 } else { 1.0 };
        }
        (self.done_versions as f64 / self.total_versions as f64).min(1.0)
    }

    /// True while it scans or has jobs to wait for.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.state == "counting" || self.state == "running"
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

/// An event worth showing operators (RPO misses and recoveries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub time_us: i64,
    pub bucket: String,
    pub rule_id: String,
    /// e.g. `OperationMissedThreshold`, `OperationReplicatedAfterThreshold`.
    pub kind: String,
    pub detail: String,
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
    for rule in &rules {
        let dest = rule.destination.key();
        let will_arrive = delivered.contains(&dest)
            || jobs.iter().any(|j| j.op == JobOp::Put && j.state == JobState::Pending && j.dest() == dest);
        let job_op = if op == JobOp::Metadata && !is_replica && !will_arrive { JobOp::Put } else { op };
        tx.insert_job(&NewJob {
            bucket: &bucket.name,
            key: &version.key,
            version_id: &version.version_id,
            op: job_op,
            peer: &rule.destination.peer,
            dest_bucket: &rule.destination.bucket,
            rule_id: &rule.id,
            opts: &JobOptions::of(rule),
            created_us: tick,
            size: if job_op == JobOp::Put { version.size } else { 0 },
            backfill_id: None,
        })?;
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
    refresh_status(tx, &current.bucket, &current.key, &current.version_id)
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
    Ok(false)
}

/// Makes up to `limit` failed jobs of a bucket pending again (`ferry replication retry`);
/// returns how many. Called in batches, so a large backlog never holds the writer for long.
///
/// # Errors
/// Database errors.
pub fn retry_failed(tx: &mut dyn WriteTx, bucket: &str, limit: usize) -> Result<u64> {
    let failed = tx.failed_jobs(bucket, limit)?;
    for mut j in failed.iter().cloned() {
        j.state = JobState::Pending;
        j.attempts = 0;
        j.next_attempt_us = 0;
        j.since_us = None;
        tx.update_job(&j)?;
        refresh_status(tx, &j.bucket, &j.key, &j.version_id)?;
    }
    Ok(failed.len() as u64)
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
/// Header that marks a request as a replica write from a Ferry peer. Its value is the
/// base64url (no padding) of the JSON [`ReplicaMeta`]. The destination honours it only from a
/// replication credential, under SigV4 header authentication with the header signed (never on
/// presigned, POST-form or SigV2 requests), and only into a bucket that accepts the source
/// named by [`SOURCE_HEADER`].
pub const REPLICA_HEADER: &str = "x-ferry-replica";

/// On an UploadPart from a Ferry peer: the part's MD5 (hex) as the source knows it, or empty
/// when the source cut the part out of a larger body and does not know it. The part must then
/// carry a checksum (header or trailer) that the destination verifies instead of computing MD5.
pub const REPLICA_PART_HEADER: &str = "x-ferry-replica-part";

/// On every request from a Ferry peer: on whose behalf it comes, as the base64url JSON of a
/// [`SourceRef`] (the source region, bucket, and the account that owns that bucket). The
/// destination bucket must accept that account (its owner, or a grant in its replica sources).
pub const SOURCE_HEADER: &str = "x-ferry-source";

/// The source of a replication request: which region's bucket, owned by which account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// Format version of this record.
    pub format: u32,
    /// The source region.
    pub region: String,
    /// The source bucket.
    pub bucket: String,
    /// The account (user id) that owns the source bucket.
    pub account: String,
}

impl SourceRef {
    /// The source of `bucket` (owned by `account`) in `region`.
    #[must_use]
    pub fn new(region: &str, bucket: &str, account: &str) -> Self {
        Self { format: 1, region: region.to_owned(), bucket: bucket.to_owned(), account: account.to_owned() }
    }

    /// Encodes for the header.
    ///
    /// # Errors
    /// Never in practice.
    pub fn encode(&self) -> Result<String> {
        encode_header(self)
    }

    /// Decodes a header value.
    ///
    /// # Errors
    /// When the value is not base64url JSON of this record, or of a newer format.
    pub fn decode(value: &str) -> Result<Self> {
        let s: Self = decode_header(SOURCE_HEADER, value)?;
        if s.format > 1 {
            return Err(crate::Error::UnknownFormat(i64::from(s.format)));
        }
        if s.region.is_empty() || s.bucket.is_empty() || s.account.is_empty() {
            return Err(crate::Error::Other(format!(
                "bad {SOURCE_HEADER} header: region, bucket and account are required"
            )));
        }
        Ok(s)
    }
}

fn encode_header<T: Serialize>(value: &T) -> Result<String> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value)?))
}

fn decode_header<T: serde::de::DeserializeOwned>(name: &str, value: &str) -> Result<T> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim())
        .map_err(|e| crate::Error::Other(format!("bad {name} header: {e}")))?;
    serde_json::from_slice(&raw).map_err(|e| crate::Error::Other(format!("bad {name} header: {e}")))
}

/// What a replica carries beyond the standard S3 headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaMeta {
    /// Format version of this record.
    pub format: u32,
    /// The region the change comes from.
    pub source_region: String,
    /// The source version id (kept on the replica).
    pub version_id: String,
    /// The source last-modified, µs since epoch (kept on the replica).
    pub mtime_us: i64,
    /// The source ETag, when the replica's bytes arrive in a different part layout.
    #[serde(default)]
    pub etag: Option<String>,
    /// The source owner; `None` when the rule gives replicas to the destination bucket's owner.
    #[serde(default)]
    pub owner: Option<crate::model::Owner>,
    /// The source ACL; `None` with an owner override (replicas get the owner's private ACL).
    #[serde(default)]
    pub acl: Option<crate::model::Acl>,
    /// The source's stored checksums, kept on the replica (whatever part layout it arrives in).
    #[serde(default)]
    pub checksums: Option<crate::model::Checksums>,
    /// When the tags were last changed at the source (last writer wins on both sides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags_us: Option<i64>,
    /// When the ACL was last changed at the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_us: Option<i64>,
}

impl ReplicaMeta {
    /// Encodes for the header.
    ///
    /// # Errors
    /// Never in practice.
    pub fn encode(&self) -> Result<String> {
        encode_header(self)
    }

    /// Decodes a header value.
    ///
    /// # Errors
    /// When the value is not base64url JSON of this record, or of a newer format, or names an
    /// invalid version id or a negative time.
    pub fn decode(value: &str) -> Result<Self> {
        let meta: Self = decode_header(REPLICA_HEADER, value)?;
        if meta.format > 1 {
            return Err(crate::Error::UnknownFormat(i64::from(meta.format)));
        }
        if !ferry_core::ids::is_valid_version_id(&meta.version_id) {
            return Err(crate::Error::Other(format!("bad {REPLICA_HEADER} header: invalid version id")));
        }
        if [Some(meta.mtime_us), meta.tags_us, meta.acl_us].into_iter().flatten().any(|t| t < 0) {
            return Err(crate::Error::Other(format!("bad {REPLICA_HEADER} header: negative time")));
        }
        Ok(meta)
    }

    /// The latest time the replica carries (its version's, or a tag or ACL change's).
    #[must_use]
    pub fn latest_time(&self) -> i64 {
        [self.tags_us, self.acl_us].into_iter().flatten().fold(self.mtime_us, i64::max)
    }
}

/// What the S3 layer needs from the replication engine to validate a configuration and to
/// verify one: where buckets are, whether a destination takes replicas from a source, the
/// destinations of other buckets (to refuse cycles), and listings. Implemented by the engine,
/// which talks to the peers. Every question is asked on behalf of `source` (the bucket whose
/// rules are concerned, and its owner's account): a destination answers only what that account
/// may see.
#[async_trait::async_trait]
pub trait PeerDirectory: Send + Sync {
    /// The regions (this one and the peers) that hold a bucket named `bucket`.
    async fn locate_bucket(&self, source: &SourceRef, bucket: &str) -> Vec<String>;
    /// Checks that `bucket` on `peer` exists, has versioning enabled, and accepts replicas from
    /// `source`'s account (a Ferry peer decides; for an S3 peer, the peer's `accounts`). The
    /// error says why not; `Err((true, why))` when the account is not allowed.
    async fn check_destination(&self, source: &SourceRef, peer: &str, bucket: &str) -> std::result::Result<(), (bool, String)>;
    /// The destinations (peer, bucket) that `bucket` on `peer` replicates to; empty when none
    /// or unknown (a non-Ferry peer, or not visible to `source`'s account).
    async fn destinations_of(&self, source: &SourceRef, peer: &str, bucket: &str) -> Vec<(String, String)>;
    /// True when `name` is this region or a known peer.
    fn knows(&self, name: &str) -> bool;
    /// True when `name` is a Ferry peer (version ids are kept there).
    fn is_ferry(&self, name: &str) -> bool;
    /// One page of the versions of `bucket` on `peer` under `prefix`, after the marker; and the
    /// marker of the next page.
    async fn list_versions(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        prefix: &str,
        after: Option<(String, String)>,
    ) -> std::result::Result<(Vec<RemoteVersion>, Option<(String, String)>), String>;
    /// Metadata of one version on `peer` (`version_id` `None`: the latest), `None` if absent.
    async fn head(
        &self,
        source: &SourceRef,
        peer: &str,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> std::result::Result<Option<RemoteHead>, String>;
}

/// A version as a peer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteVersion {
    pub key: String,
    pub version_id: String,
    pub is_latest: bool,
    pub delete_marker: bool,
    pub etag: String,
    pub size: u64,
    /// Last-modified, milliseconds since the epoch (listings have millisecond precision).
    pub mtime_ms: i64,
}

/// What a HEAD on a peer tells.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteHead {
    pub etag: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub user_metadata: std::collections::BTreeMap<String, String>,
    pub tags: Vec<(String, String)>,
}

/// What one backfill step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillStep {
    /// Versions were scanned (the count); call again.
    Progress(usize),
    /// Enough of its jobs are waiting: call again later.
    Throttle,
    /// Scan finished and every job delivered (or failed): the backfill is done.
    Finished,
    /// Not running (paused, cancelled, done, or gone).
    Inactive,
}

/// Starts a backfill of `bucket` (state `counting`). `status_filter` is `none`, `failed` or `all`.
///
/// # Errors
/// Database errors.
pub fn start_backfill(
    tx: &mut dyn WriteTx,
    bucket: &str,
    rule_id: Option<&str>,
    prefix: &str,
    status_filter: &str,
    older_than_us: Option<i64>,
) -> Result<i64> {
    let now = tx.now();
    tx.put_backfill(&Backfill {
        id: 0,
        bucket: bucket.to_owned(),
        rule_id: rule_id.map(str::to_owned),
        prefix: prefix.to_owned(),
        status_filter: status_filter.to_owned(),
        older_than_us: older_than_us.map(|d| now - d),
        state: "counting".to_owned(),
        cursor_key: None,
        cursor_version: None,
        total_versions: 0,
        total_bytes: 0,
        scanned_versions: 0,
        scanned_bytes: 0,
        enqueued_versions: 0,
        done_versions: 0,
        done_bytes: 0,
        failed_versions: 0,
        created_us: now,
        updated_us: now,
        finished_us: None,
    })
}

/// Fixes a counting backfill's totals and sets it running. `total` is (versions, bytes) under
/// its prefix, counted by the caller outside the write transaction.
///
/// # Errors
/// Database errors.
pub fn backfill_counted(tx: &mut dyn WriteTx, id: i64, total: (u64, u64)) -> Result<()> {
    let Some(mut b) = tx.get_backfill(id)? else { return Ok(()) };
    if b.state != "counting" {
        return Ok(());
    }
    b.total_versions = total.0;
    b.total_bytes = total.1;
    b.state = "running".to_owned();
    b.updated_us = tx.now();
    tx.put_backfill(&b).map(|_| ())
}

/// The key range a backfill scans.
#[must_use]
pub fn backfill_range(b: &Backfill) -> (Vec<u8>, Option<Vec<u8>>) {
    (b.prefix.as_bytes().to_vec(), prefix_end(b.prefix.as_bytes()))
}

/// One step of a running backfill: scans up to `batch` versions after its cursor and, for each
/// destination of the rules that select a version, records a job (at backfill priority, below
/// live changes) when its filter keeps the version *for that destination*: `none`, never
/// delivered there and no job there; `failed`, its job there failed (that job is made pending
/// again, counted by this backfill); `all`, no pending job there. The cursor advances in the
/// same transaction: after a restart the scan continues where it stopped and never records a
/// version twice. Waits while `window` of its jobs are pending, so its backlog stays bounded.
///
/// # Errors
/// Database errors.
pub fn backfill_step(tx: &mut dyn WriteTx, id: i64, batch: usize, window: u64) -> Result<BackfillStep> {
    let Some(mut b) = tx.get_backfill(id)? else { return Ok(BackfillStep::Inactive) };
    if b.state != "running" {
        return Ok(BackfillStep::Inactive);
    }
    let pending = tx.backfill_pending(id)?;
    if pending >= window {
        return Ok(BackfillStep::Throttle);
    }
    let bucket = tx.get_bucket(&b.bucket)?;
    let cfg = match bucket.as_ref().and_then(|bk| bk.replication.as_ref()) {
        Some(s) => ReplicationConfig::from_stored(s)?,
        None => ReplicationConfig::default(),
    };
    let (from, to) = backfill_range(&b);
    let cursor = crate::meta::VersionCursor { after_key: b.cursor_key.clone(), after_version: b.cursor_version.clone() };
    let entries = if bucket.is_some() { tx.scan_versions(&b.bucket, &from, &cursor, to.as_deref(), batch)? } else { Vec::new() };
    let now = tx.now();
    b.updated_us = now;
    if entries.is_empty() {
        let finished = pending == 0;
        if finished {
            b.state = "done".to_owned();
            b.finished_us = Some(now);
        }
        tx.put_backfill(&b)?;
        return Ok(if finished { BackfillStep::Finished } else { BackfillStep::Throttle });
    }
    let n = entries.len();
    for e in entries {
        b.scanned_versions += 1;
        b.scanned_bytes += e.size;
        b.cursor_key = Some(e.key.clone());
        b.cursor_version = Some((e.mtime_us, e.version_id.clone()));
        let Some(v) = tx.get_version(&b.bucket, &e.key, &e.version_id)? else { continue };
        let sent = if v.repl_status == Some(ReplStatus::Replica) || b.older_than_us.is_some_and(|cut| v.mtime_us >= cut) {
            0
        } else {
            backfill_version(tx, &b, &cfg, &v)?
        };
        if sent == 0 {
            // Out of scope, or nothing to send anywhere: handled.
            b.done_versions += 1;
            b.done_bytes += v.size;
            continue;
        }
        // Progress counts jobs: a version sent to several destinations counts once per destination.
        b.total_versions += sent - 1;
        b.enqueued_versions += sent;
        if !v.delete_marker {
            tx.set_repl_status(&b.bucket, &v.key, &v.version_id, Some(ReplStatus::Pending))?;
        }
    }
    // Versions written after the count was taken can make the scan exceed it.
    b.total_versions = b.total_versions.max(b.scanned_versions);
    tx.put_backfill(&b)?;
    Ok(BackfillStep::Progress(n))
}

/// Records (or re-drives) the jobs backfill `b` needs for version `v`; returns how many.
fn backfill_version(tx: &mut dyn WriteTx, b: &Backfill, cfg: &ReplicationConfig, v: &VersionRecord) -> Result<u64> {
    let op = if v.delete_marker { JobOp::DeleteMarker } else { JobOp::Put };
    let tags: &[(String, String)] = if v.delete_marker { &[] } else { &v.attrs.tags };
    let rules: Vec<&Rule> =
        cfg.select(&v.key, tags, op).into_iter().filter(|r| b.rule_id.as_deref().is_none_or(|id| id == r.id)).collect();
    if rules.is_empty() {
        return Ok(0);
    }
    let delivered = tx.delivered_to(&b.bucket, &v.key, &v.version_id)?;
    let jobs = tx.jobs_for_version(&b.bucket, &v.key, &v.version_id)?;
    let mut sent = 0;
    for rule in rules {
        let dest = rule.destination.key();
        let here = |state: JobState| jobs.iter().find(|j| j.state == state && j.dest() == dest && j.op != JobOp::DeleteVersion);
        let (pending, failed) = (here(JobState::Pending), here(JobState::Failed));
        let record = match b.status_filter.as_str() {
            "failed" => {
                if let Some(f) = failed {
                    let mut j = f.clone();
                    j.state = JobState::Pending;
                    j.attempts = 0;
                    j.next_attempt_us = 0;
                    j.since_us = None;
                    j.backfill_id = Some(b.id);
                    tx.update_job(&j)?;
                    sent += 1;
                }
                false
            }
            "all" => pending.is_none(),
            _ => pending.is_none() && failed.is_none() && !delivered.contains(&dest),
        };
        if record {
            tx.insert_job(&NewJob {
                bucket: &b.bucket,
                key: &v.key,
                version_id: &v.version_id,
                op,
                peer: &rule.destination.peer,
                dest_bucket: &rule.destination.bucket,
                rule_id: &rule.id,
                opts: &JobOptions::of(rule),
                created_us: v.mtime_us,
                size: if op == JobOp::Put { v.size } else { 0 },
                backfill_id: Some(b.id),
            })?;
            sent += 1;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, prio: i32, prefix: &str, tags: &[(&str, &str)], dest: &str) -> Rule {
        Rule {
            id: id.into(),
            priority: prio,
            enabled: true,
            v2: true,
            filter: RuleFilter { prefix: prefix.into(), tags: tags.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect() },
            delete_markers: true,
            deletes: false,
            existing_objects: false,
            replica_modifications: false,
            destination: RuleDestination {
                peer: "eu".into(),
                bucket: dest.into(),
                storage_class: None,
                account: None,
                owner_override: false,
                rpo_minutes: None,
                metrics: false,
            },
        }
    }

    #[test]
    fn selection_by_prefix_tags_priority_and_op() {
        let cfg = ReplicationConfig {
            role: String::new(),
            rules: vec![
                rule("all", 1, "", &[], "d1"),
                rule("logs", 5, "logs/", &[], "d1"),
                rule("tagged", 2, "", &[("class", "gold")], "d2"),
            ],
        };
        let ids =
            |key: &str, tags: &[(String, String)], op| cfg.select(key, tags, op).iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids("a", &[], JobOp::Put), vec!["all"]);
        assert_eq!(ids("logs/x", &[], JobOp::Put), vec!["logs"], "higher priority wins per destination");
        let gold = vec![("class".to_owned(), "gold".to_owned())];
        assert_eq!(ids("a", &gold, JobOp::Put), vec!["all", "tagged"], "fan-out to two destinations");
        assert_eq!(ids("a", &gold, JobOp::DeleteMarker), vec!["all"], "tag rules skip delete markers");
        assert!(ids("a", &[], JobOp::DeleteVersion).is_empty(), "version deletes only with the extension");
    }

    #[test]
    fn disabled_rules_match_nothing() {
        let mut r = rule("x", 1, "", &[], "d");
        r.enabled = false;
        let cfg = ReplicationConfig { role: String::new(), rules: vec![r] };
        assert!(cfg.select("k", &[], JobOp::Put).is_empty());
    }
}
