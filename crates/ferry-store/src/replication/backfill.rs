//! Backfill: replication of versions that existed before a rule (`ExistingObjectReplication`),
//! or again (`ferry replication resync`), as a resumable scan.
//!
//! A backfill is a row with a cursor. It is born `counting` ([`start`]); the engine counts the
//! versions in scope outside the writer and sets it `running` ([`counted`]); each [`step`]
//! scans a batch after the cursor and records jobs at backfill priority, moving the cursor in
//! the same transaction, so a restart resumes exactly where it stopped and never records a
//! version twice. It ends `done` when the scan is over and its jobs are delivered or failed;
//! an operator can pause, resume or cancel it.
//!
//! On PostgreSQL an operator's request and a step can run at once on two nodes, and neither
//! holds the row while it works. So each write is conditional on the state its writer read:
//! [`control`] writes only the state, and only if it is still the one it judged; [`step`] and
//! [`counted`] write the row only while it is still `running` (`counting`). A step that loses
//! gives its whole transaction up, its jobs with it; nothing an operator decided is undone.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meta::{VersionCursor, WriteTx, prefix_end};
use crate::model::{ReplStatus, VersionRecord};
use crate::replication::outbox::{self, JobOp, JobState};
use crate::replication::rules::{ReplicationConfig, Rule};

/// Where a backfill is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillState {
    /// Counting the versions in scope (progress has no total yet).
    Counting,
    /// Scanning, or waiting for its jobs.
    Running,
    /// Stopped by an operator; resumes where it stopped.
    Paused,
    /// Stopped for good by an operator (or its configuration was removed).
    Cancelled,
    /// Scan finished and every job delivered or failed.
    Done,
}

impl BackfillState {
    /// Whether a backfill in this state has ended for good.
    #[must_use]
    pub fn ends(self) -> bool {
        matches!(self, Self::Cancelled | Self::Done)
    }

    /// The stored and displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counting => "counting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
            Self::Done => "done",
        }
    }
}

impl std::str::FromStr for BackfillState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "counting" => Self::Counting,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "cancelled" => Self::Cancelled,
            "done" => Self::Done,
            _ => return Err(Error::unknown("backfill state", s)),
        })
    }
}

/// Which versions a backfill sends, decided per destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Versions never delivered there and with no job there (what a new rule needs).
    #[default]
    None,
    /// Versions whose job there failed (the job is made pending again).
    Failed,
    /// Every version without a pending job there (a full resync).
    All,
}

impl StatusFilter {
    /// The stored and displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Failed => "failed",
            Self::All => "all",
        }
    }
}

impl std::str::FromStr for StatusFilter {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "failed" => Self::Failed,
            "all" => Self::All,
            _ => return Err(Error::unknown("status filter", s)),
        })
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
    /// Which versions, per destination.
    pub status_filter: StatusFilter,
    /// Only versions last modified before this time (µs), if set.
    pub older_than_us: Option<i64>,
    pub state: BackfillState,
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
            return if self.state == BackfillState::Counting { 0.0 } else { 1.0 };
        }
        (self.done_versions as f64 / self.total_versions as f64).min(1.0)
    }

    /// True while it scans or has jobs to wait for.
    #[must_use]
    pub fn is_active(&self) -> bool {
        matches!(self.state, BackfillState::Counting | BackfillState::Running)
    }
}

/// What an operator asks for (`ferry replication resync`, the console, the admin API).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillRequest {
    /// Only this rule's destinations (else every rule's).
    #[serde(default)]
    pub rule: Option<String>,
    /// Only keys under this prefix.
    #[serde(default)]
    pub prefix: String,
    /// Which versions, per destination.
    #[serde(default)]
    pub status: StatusFilter,
    /// Only versions last modified more than this long before the start.
    #[serde(default)]
    pub older_than_secs: Option<i64>,
}

/// What an operator does to a running backfill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackfillAction {
    Pause,
    Resume,
    Cancel,
}

impl std::str::FromStr for BackfillAction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pause" => Self::Pause,
            "resume" => Self::Resume,
            "cancel" => Self::Cancel,
            _ => return Err(Error::InvalidArgument(format!("unknown action `{s}`: use pause, resume or cancel"))),
        })
    }
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

/// Starts a backfill of `bucket` (state `counting`).
///
/// # Errors
/// Database errors.
pub fn start(
    tx: &mut dyn WriteTx,
    bucket: &str,
    rule_id: Option<&str>,
    prefix: &str,
    status_filter: StatusFilter,
    older_than_us: Option<i64>,
) -> Result<i64> {
    let now = tx.now();
    tx.insert_backfill(&Backfill {
        id: 0,
        bucket: bucket.to_owned(),
        rule_id: rule_id.map(str::to_owned),
        prefix: prefix.to_owned(),
        status_filter,
        older_than_us: older_than_us.map(|d| now - d),
        state: BackfillState::Counting,
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

/// Starts the backfill an operator asked for, after checking that the bucket has a replication
/// configuration with the rule named.
///
/// # Errors
/// NoSuchBucket; InvalidBucketState without a configuration or with an unknown rule.
pub fn request(tx: &mut dyn WriteTx, bucket: &str, req: &BackfillRequest) -> Result<i64> {
    let b = tx.get_bucket(bucket)?.ok_or(Error::NoSuchBucket)?;
    let Some(stored) = &b.replication else {
        return Err(Error::InvalidBucketState("the bucket has no replication configuration".into()));
    };
    if let Some(r) = &req.rule
        && !ReplicationConfig::from_stored(stored)?.rules.iter().any(|x| &x.id == r)
    {
        return Err(Error::InvalidBucketState(format!("no rule {r}")));
    }
    let older = req.older_than_secs.map(|s| s.saturating_mul(1_000_000));
    start(tx, bucket, req.rule.as_deref(), &req.prefix, req.status, older)
}

/// How many times [`control`] reads a backfill again when a step on another node changed its
/// state between its read and its write.
const CONTROL_TRIES: usize = 3;

/// Pauses, resumes or cancels backfill `id` of `bucket`; returns it as it now is. A resumed
/// backfill that never counted counts again. Only the state is written: a step committed
/// meanwhile keeps its cursor and counters, and a step in flight gives way
/// ([`step`] writes only a backfill still running).
///
/// # Errors
/// NoSuchBackfill; InvalidBucketState when the action does not apply in its state; Busy when
/// its state kept changing under it.
pub fn control(tx: &mut dyn WriteTx, bucket: &str, id: i64, action: BackfillAction) -> Result<Backfill> {
    use BackfillState::{Cancelled, Counting, Paused, Running};
    for _ in 0..CONTROL_TRIES {
        let mut b = tx.get_backfill(id)?.filter(|b| b.bucket == bucket).ok_or(Error::NoSuchBackfill(id))?;
        let next = match (action, b.state) {
            (BackfillAction::Pause, Running | Counting) => Paused,
            (BackfillAction::Resume, Paused) if b.total_versions == 0 && b.scanned_versions == 0 => Counting,
            (BackfillAction::Resume, Paused) => Running,
            (BackfillAction::Cancel, Running | Counting | Paused) => Cancelled,
            (a, s) => {
                let a = format!("{a:?}").to_lowercase();
                return Err(Error::InvalidBucketState(format!("cannot {a} a backfill that is {}", s.as_str())));
            }
        };
        let now = tx.now();
        if tx.set_backfill_state(id, &[b.state], next, now)? {
            b.state = next;
            b.updated_us = now;
            if next.ends() {
                b.finished_us = Some(now);
            }
            return Ok(b);
        }
    }
    Err(Error::Busy(format!(
        "backfill {id} changed state {CONTROL_TRIES} times during the request"
    )))
}

/// Cancels every backfill of `bucket` that has not ended (its configuration was removed:
/// nothing is left to replicate to).
///
/// # Errors
/// Database errors.
pub fn cancel_all(tx: &mut dyn WriteTx, bucket: &str) -> Result<()> {
    use BackfillState::{Cancelled, Counting, Paused, Running};
    let now = tx.now();
    for b in tx.list_backfills(Some(bucket))?.into_iter().filter(|b| !b.state.ends()) {
        tx.set_backfill_state(b.id, &[Counting, Running, Paused], Cancelled, now)?;
    }
    Ok(())
}

/// Fixes a counting backfill's totals and sets it running. `total` is (versions, bytes) under
/// its prefix, counted by the caller outside the write transaction.
///
/// # Errors
/// Database errors.
pub fn counted(tx: &mut dyn WriteTx, id: i64, total: (u64, u64)) -> Result<()> {
    let Some(mut b) = tx.get_backfill(id)? else { return Ok(()) };
    if b.state != BackfillState::Counting {
        return Ok(());
    }
    b.total_versions = total.0;
    b.total_bytes = total.1;
    b.state = BackfillState::Running;
    b.updated_us = tx.now();
    // Paused meanwhile: it counts again when resumed.
    tx.update_backfill(&b, BackfillState::Counting).map(drop)
}

/// The key range a backfill scans.
#[must_use]
pub fn range(b: &Backfill) -> (Vec<u8>, Option<Vec<u8>>) {
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
pub fn step(tx: &mut dyn WriteTx, id: i64, batch: usize, window: u64) -> Result<BackfillStep> {
    let Some(mut b) = tx.get_backfill(id)? else { return Ok(BackfillStep::Inactive) };
    if b.state != BackfillState::Running {
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
    let (from, to) = range(&b);
    let cursor = VersionCursor { after_key: b.cursor_key.clone(), after_version: b.cursor_version.clone() };
    let entries = if bucket.is_some() { tx.scan_versions(&b.bucket, &from, &cursor, to.as_deref(), batch)? } else { Vec::new() };
    let now = tx.now();
    b.updated_us = now;
    if entries.is_empty() {
        let finished = pending == 0;
        if finished {
            b.state = BackfillState::Done;
            b.finished_us = Some(now);
        }
        save_step(tx, &b)?;
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
    save_step(tx, &b)?;
    Ok(BackfillStep::Progress(n))
}

/// Writes what a step did, if the backfill is still running: paused or cancelled by an
/// operator (on another node of the region) since the step read it, the step's transaction
/// is given up ([`Error::Busy`]), its jobs with it, and the scan goes on from the cursor as it
/// was when resumed.
fn save_step(tx: &mut dyn WriteTx, b: &Backfill) -> Result<()> {
    if tx.update_backfill(b, BackfillState::Running)? {
        return Ok(());
    }
    Err(Error::Busy(format!("backfill {} was paused or cancelled during a step", b.id)))
}

/// Records (or re-drives) the jobs backfill `b` needs for version `v`; returns how many.
fn backfill_version(tx: &mut dyn WriteTx, b: &Backfill, cfg: &ReplicationConfig, v: &VersionRecord) -> Result<u64> {
    // Lifecycle actions are this region's own.
    if v.attrs.lifecycle {
        return Ok(0);
    }
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
        let record = match b.status_filter {
            StatusFilter::Failed => {
                if let Some(f) = failed {
                    outbox::rearm(tx, f, Some(b.id))?;
                    sent += 1;
                }
                false
            }
            StatusFilter::All => pending.is_none(),
            StatusFilter::None => pending.is_none() && failed.is_none() && !delivered.contains(&dest),
        };
        if record {
            outbox::record(tx, v, rule, op, v.mtime_us, Some(b.id), None)?;
            sent += 1;
        }
    }
    Ok(sent)
}
