//! Lifecycle rules: what a bucket's rules (S3's PutBucketLifecycleConfiguration) expire, and
//! when. This module decides; the lifecycle worker acts, in bounded batches.
//!
//! # Invariants
//! 1. Decisions are pure functions of the rules, the version and the time: the same inputs give
//!    the same answer on every node and every run, so a scan may stop and resume anywhere.
//! 2. An expiry is S3's: the start time plus the days, rounded up to the next midnight UTC (a
//!    1-day rule on an object written at 10:00 on the 1st expires it at 00:00 on the 3rd). A
//!    date rule expires matching objects from that midnight on, whatever their age.
//! 3. A noncurrent version's age counts from when it stopped being current: the time of the
//!    version that replaced it. `newer_versions` keeps that many newer noncurrent versions
//!    whatever their age.
//! 4. A disabled rule decides nothing. Of several rules, the earliest expiry wins.
//! 5. Lifecycle actions are this region's own: they are never replicated (each side of a
//!    replication rule has its own lifecycle, as on S3).
//! 6. A transition changes a version's storage class and nothing else (every class of Ferry
//!    lives on the same disks). Classes only move down S3's order ([`TRANSITION_CLASSES`]):
//!    of the transitions due, the one furthest down wins, and a version already there or
//!    further down stays as it is. An expiration due at the same time wins over a transition.
//!
//! The length of a day is a parameter: 24 hours, except in tests, which shorten it (as Ceph's
//! `rgw_lc_debug_interval` does) so that "1 day" passes in seconds.
//!
//! # The worker
//! - One process of a region runs passes: the single process, or the leading node of a region
//!   on PostgreSQL ([`crate::Meta::leads`]); the others wait and take over if it goes.
//! - A pass's position (buckets left, the cursor in the current bucket) and its history are
//!   saved in the region's settings ([`SETTINGS_KEY`], [`WorkerRecord`]) after every step,
//!   after the step's actions: a restart, or a new leader, resumes the pass where it was (the
//!   last step may be done again: its actions check first, so they are idempotent).
//! - `ferry lifecycle status` reads that record through the admin API ([`status`]).

use serde::{Deserialize, Serialize};

/// A day, in microseconds.
pub const DAY_US: i64 = 86_400_000_000;

/// Consecutive failures of one step (with the runner's backoff between them) after which the
/// worker leaves that bucket until the next pass.
const MAX_STEP_FAILURES: u32 = 5;

/// One rule of a bucket's lifecycle configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleRule {
    pub id: String,
    pub enabled: bool,
    #[serde(default)]
    pub filter: LifecycleFilter,
    /// What happens to the current version (or to a lone delete marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Expiration>,
    /// When noncurrent versions are removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noncurrent: Option<NoncurrentExpiration>,
    /// Days after which an incomplete multipart upload is aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_incomplete_days: Option<u32>,
    /// When current versions change storage class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// When noncurrent versions change storage class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noncurrent_transitions: Vec<NoncurrentTransition>,
}

/// The storage classes a rule may move versions to, in S3's order: a version only moves to a
/// class after its own (`STANDARD` and `REDUCED_REDUNDANCY` come before them all).
pub const TRANSITION_CLASSES: &[&str] =
    &["STANDARD_IA", "INTELLIGENT_TIERING", "ONEZONE_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"];

/// Where `class` is in [`TRANSITION_CLASSES`], counting from 1; 0 for the classes before them
/// (`None` is `STANDARD`), and for those no rule moves versions to or from.
#[must_use]
pub fn class_rank(class: Option<&str>) -> usize {
    class.and_then(|c| TRANSITION_CLASSES.iter().position(|t| *t == c)).map_or(0, |i| i + 1)
}

/// A rule's change of the current version's storage class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub when: TransitionTime,
    pub storage_class: String,
}

/// When a [`Transition`] is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransitionTime {
    /// This many days after the version was written.
    Days(u32),
    /// From this midnight UTC on (microseconds since the epoch).
    Date(i64),
}

/// A rule's change of noncurrent versions' storage class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoncurrentTransition {
    /// Days after the version stopped being current.
    pub days: u32,
    /// How many newer noncurrent versions keep their class whatever their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_versions: Option<u32>,
    pub storage_class: String,
}

/// Which objects a rule is about: all of these must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LifecycleFilter {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Tags the object must have, each with this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_greater_than: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_less_than: Option<u64>,
    /// Given as the rule's own `Prefix` (S3's form before filters), and answered so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_prefix: bool,
}

/// A rule's expiration of current versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiration {
    /// This many days after the version was written.
    Days(u32),
    /// From this midnight UTC on (microseconds since the epoch).
    Date(i64),
    /// Only removes a delete marker that is a key's last version (nothing left to hide).
    ExpiredDeleteMarker,
}

/// A rule's removal of noncurrent versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoncurrentExpiration {
    /// Days after the version stopped being current.
    pub days: u32,
    /// How many newer noncurrent versions are kept whatever their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newer_versions: Option<u32>,
}

/// What a version is, as far as rules care.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub key: &'a str,
    pub tags: &'a [(String, String)],
    pub size: u64,
}

impl LifecycleFilter {
    /// Whether `s` is one of the objects the filter names.
    #[must_use]
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        s.key.starts_with(&self.prefix)
            && self.tags.iter().all(|t| s.tags.contains(t))
            && self.size_greater_than.is_none_or(|n| s.size > n)
            && self.size_less_than.is_none_or(|n| s.size < n)
    }
}

/// `start` plus `days`, rounded up to the end of a day (`day_us` long; midnight UTC for real
/// days).
#[must_use]
pub fn expiry(start_us: i64, days: u32, day_us: i64) -> i64 {
    let t = start_us.saturating_add(i64::from(days).saturating_mul(day_us));
    match t.rem_euclid(day_us) {
        0 => t,
        r => t.saturating_add(day_us - r),
    }
}

/// When the current version `s`, written at `mtime_us`, expires, and by which rule: the
/// earliest of the enabled rules that expire it.
#[must_use]
pub fn current_expiry<'r>(rules: &'r [LifecycleRule], s: &Subject<'_>, mtime_us: i64, day_us: i64) -> Option<(i64, &'r str)> {
    rules
        .iter()
        .filter(|r| r.enabled && r.filter.matches(s))
        .filter_map(|r| {
            let at = match r.expiration? {
                Expiration::Days(d) => expiry(mtime_us, d, day_us),
                Expiration::Date(at) => at,
                Expiration::ExpiredDeleteMarker => return None,
            };
            Some((at, r.id.as_str()))
        })
        .min()
}

/// The rule that removes a noncurrent version `s` at `now_us`, if one does: it stopped being
/// current at `noncurrent_since_us`, and `newer` noncurrent versions of its key are newer.
#[must_use]
pub fn noncurrent_due<'r>(
    rules: &'r [LifecycleRule],
    s: &Subject<'_>,
    noncurrent_since_us: i64,
    newer: u32,
    now_us: i64,
    day_us: i64,
) -> Option<&'r str> {
    rules.iter().filter(|r| r.enabled && r.filter.matches(s)).find_map(|r| {
        let n = r.noncurrent?;
        let old_enough = expiry(noncurrent_since_us, n.days, day_us) <= now_us;
        let beyond_kept = n.newer_versions.is_none_or(|k| newer >= k);
        (old_enough && beyond_kept).then_some(r.id.as_str())
    })
}

/// The storage class the rules move the current version `s`, written at `mtime_us` and now of
/// class `class`, to at `now_us`: the class furthest down of the transitions due, if it is
/// further down than `class`.
#[must_use]
pub fn current_transition<'r>(
    rules: &'r [LifecycleRule],
    s: &Subject<'_>,
    class: Option<&str>,
    mtime_us: i64,
    now_us: i64,
    day_us: i64,
) -> Option<&'r str> {
    let due = rules.iter().filter(|r| r.enabled && r.filter.matches(s)).flat_map(|r| &r.transitions).filter(|t| {
        let at = match t.when {
            TransitionTime::Days(d) => expiry(mtime_us, d, day_us),
            TransitionTime::Date(at) => at,
        };
        at <= now_us
    });
    furthest_down(due.map(|t| t.storage_class.as_str()), class)
}

/// The storage class the rules move a noncurrent version `s` of class `class` to at `now_us`:
/// it stopped being current at `noncurrent_since_us`, and `newer` noncurrent versions of its
/// key are newer (as for [`noncurrent_due`]).
#[must_use]
pub fn noncurrent_transition<'r>(
    rules: &'r [LifecycleRule],
    s: &Subject<'_>,
    class: Option<&str>,
    noncurrent_since_us: i64,
    newer: u32,
    now_us: i64,
    day_us: i64,
) -> Option<&'r str> {
    let due = rules
        .iter()
        .filter(|r| r.enabled && r.filter.matches(s))
        .flat_map(|r| &r.noncurrent_transitions)
        .filter(|t| expiry(noncurrent_since_us, t.days, day_us) <= now_us && t.newer_versions.is_none_or(|k| newer >= k));
    furthest_down(due.map(|t| t.storage_class.as_str()), class)
}

/// Of `classes`, the one furthest down S3's order, if it is further down than `class`.
fn furthest_down<'r>(classes: impl Iterator<Item = &'r str>, class: Option<&str>) -> Option<&'r str> {
    classes.max_by_key(|c| class_rank(Some(c))).filter(|c| class_rank(Some(c)) > class_rank(class))
}

/// The rule that removes a delete marker written at `mtime_us` which is its key's only
/// version, if one does at `now_us`: an `ExpiredDeleteMarker` rule at once, or (as on S3) a
/// rule that expires current versions by age once the marker is that old.
#[must_use]
pub fn lone_delete_marker_due<'r>(
    rules: &'r [LifecycleRule],
    key: &str,
    mtime_us: i64,
    now_us: i64,
    day_us: i64,
) -> Option<&'r str> {
    let s = Subject { key, tags: &[], size: 0 };
    rules
        .iter()
        .filter(|r| r.enabled && r.filter.tags.is_empty() && r.filter.matches(&s))
        .find(|r| match r.expiration {
            Some(Expiration::ExpiredDeleteMarker) => true,
            Some(Expiration::Days(d)) => expiry(mtime_us, d, day_us) <= now_us,
            _ => false,
        })
        .map(|r| r.id.as_str())
}

/// The rule that aborts an upload of `key` begun at `initiated_us`, if one does at `now_us`.
#[must_use]
pub fn upload_due<'r>(rules: &'r [LifecycleRule], key: &str, initiated_us: i64, now_us: i64, day_us: i64) -> Option<&'r str> {
    rules
        .iter()
        .filter(|r| r.enabled && key.starts_with(&r.filter.prefix))
        .find(|r| r.abort_incomplete_days.is_some_and(|d| expiry(initiated_us, d, day_us) <= now_us))
        .map(|r| r.id.as_str())
}

// ---------------------------------------------------------------------------------------------
// The worker.
// ---------------------------------------------------------------------------------------------

/// How the worker goes through the rules (`[lifecycle]` in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Between the starts of two passes.
    pub interval: std::time::Duration,
    /// Versions read per step.
    pub batch: usize,
    /// A rule's day, in microseconds.
    pub day_us: i64,
}

/// What the worker has done since start, for its status line and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Done {
    pub versions_scanned: u64,
    pub current_expired: u64,
    pub noncurrent_removed: u64,
    pub delete_markers_removed: u64,
    pub uploads_aborted: u64,
    /// Versions a rule had expired but Object Lock protects (counted each pass they are seen).
    pub locked_skipped: u64,
    /// Versions moved to another storage class.
    pub transitioned: u64,
}

/// How often a process that does not lead its region checks whether it now does.
const LEADER_RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Carries out every bucket's lifecycle rules, in passes over the buckets that have rules.
///
/// Each step reads at most `batch` versions (one read transaction) and makes each action in a
/// transaction of its own, which first checks that the version is still what the rule decided
/// about; then the pass's position is saved ([`WorkerRecord`]). Actions are idempotent, so a
/// crash at any point, or a change of leading node, only does the last step again.
pub struct LifecycleWorker {
    store: std::sync::Arc<crate::Store>,
    /// Consecutive failures of the current step.
    failures: u32,
    settings: Settings,
    metrics: std::sync::Arc<ferry_core::metrics::RegionMetrics>,
    pass: Option<Pass>,
    next_pass: tokio::time::Instant,
    done: Done,
    /// The saved record, as last read or written; `None` until this process leads and has
    /// read it.
    record: Option<WorkerRecord>,
}

/// A pass: its time, the buckets left, and where it is in the current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pass {
    /// When it started (µs): what its decisions count time up to.
    pub now_us: i64,
    pub buckets: std::collections::VecDeque<String>,
    pub scan: Option<BucketScan>,
}

/// Where a pass is in one bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketScan {
    pub bucket: String,
    cursor: crate::meta::VersionCursor,
    /// The key being gone through: the time of its last version seen (the one that replaced
    /// the next) and how many noncurrent versions came before.
    key: Option<(String, i64, u32)>,
    /// Versions done; then the uploads, after this one.
    uploads_after: Option<Option<(String, String)>>,
}

impl BucketScan {
    /// The last key judged, if any.
    #[must_use]
    pub fn position(&self) -> Option<&str> {
        self.cursor.after_key.as_deref()
    }
}

/// The region's settings key of the worker's [`WorkerRecord`].
pub const SETTINGS_KEY: &str = "lifecycle";

/// What the region's lifecycle worker saves after each step: the pass under way and the
/// history a status shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The pass under way, if any.
    pub pass: Option<Pass>,
    /// Passes completed.
    pub passes: u64,
    /// When the last pass started, and when the last complete one ended (µs).
    pub last_pass_start_us: Option<i64>,
    pub last_pass_end_us: Option<i64>,
    /// The configured time between pass starts (µs), for the next pass's estimate.
    pub interval_us: i64,
}

impl WorkerRecord {
    /// The saved record (a default one when none was saved, or one a newer build wrote).
    ///
    /// # Errors
    /// Database errors.
    pub fn load(r: &dyn crate::meta::ReadTx) -> crate::error::Result<Self> {
        Ok(r.get_setting(SETTINGS_KEY)?.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default())
    }
}

/// What `ferry lifecycle status` shows for one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketLifecycleStatus {
    pub bucket: String,
    /// Its enabled rules.
    pub rules: usize,
    /// `scanning` (the pass is in this bucket), `queued` (the pass will reach it), `done` (the
    /// pass went through it, or none is running).
    pub state: String,
    /// While scanning: the last key judged.
    pub position: Option<String>,
    pub pass_started_us: Option<i64>,
    pub last_pass_end_us: Option<i64>,
    /// When the next pass should start (µs), when none is running.
    pub next_pass_us: Option<i64>,
    pub passes: u64,
}

/// The lifecycle status of `bucket`, from the worker's saved record.
///
/// # Errors
/// NoSuchBucket, database errors.
pub fn status(r: &dyn crate::meta::ReadTx, bucket: &str) -> crate::error::Result<BucketLifecycleStatus> {
    let b = r.get_bucket(bucket)?.ok_or(crate::error::Error::NoSuchBucket)?;
    let rules = b.config.lifecycle.as_ref().map_or(0, |rules| rules.iter().filter(|r| r.enabled).count());
    let w = WorkerRecord::load(r)?;
    let (state, position) = match &w.pass {
        Some(p) => match &p.scan {
            Some(s) if s.bucket == bucket => ("scanning", s.position().map(str::to_owned)),
            _ if p.buckets.iter().any(|q| q == bucket) => ("queued", None),
            _ => ("done", None),
        },
        None => ("done", None),
    };
    let next_pass_us = match (&w.pass, w.last_pass_start_us) {
        (None, Some(start)) => Some(start.saturating_add(w.interval_us)),
        _ => None,
    };
    Ok(BucketLifecycleStatus {
        bucket: bucket.to_owned(),
        rules,
        state: state.to_owned(),
        position,
        pass_started_us: w.pass.as_ref().map(|p| p.now_us),
        last_pass_end_us: w.last_pass_end_us,
        next_pass_us,
        passes: w.passes,
    })
}

#[async_trait::async_trait]
impl ferry_core::background::Worker for LifecycleWorker {
    fn name(&self) -> String {
        "lifecycle".into()
    }

    fn status(&self) -> ferry_core::background::WorkerStatus {
        let d = self.done;
        let passes = self.record.as_ref().map_or(0, |r| r.passes);
        let pass = match &self.pass {
            Some(p) => format!("pass running, {} buckets left", p.buckets.len() + usize::from(p.scan.is_some())),
            None => "waiting for the next pass".to_owned(),
        };
        ferry_core::background::WorkerStatus {
            progress: Some(format!(
                "{pass}; {} passes: {} versions scanned, {} current versions expired, {} noncurrent versions and {} delete markers removed, {} versions moved to another storage class, {} uploads aborted, {} locked versions passed by",
                passes,
                d.versions_scanned,
                d.current_expired,
                d.noncurrent_removed,
                d.delete_markers_removed,
                d.transitioned,
                d.uploads_aborted,
                d.locked_skipped
            )),
            ..ferry_core::background::WorkerStatus::default()
        }
    }

    async fn work(
        &mut self,
        _stop: &tokio_util::sync::CancellationToken,
    ) -> std::result::Result<ferry_core::background::WorkerState, ferry_core::background::WorkerError> {
        use ferry_core::background::WorkerState;
        // One process of the region runs passes; another takes over the saved one if it goes.
        if !self.store.meta.leads().await? {
            (self.pass, self.record) = (None, None);
            return Ok(WorkerState::Throttled(self.settings.interval.min(LEADER_RECHECK)));
        }
        if self.record.is_none() {
            self.resume().await?;
        }
        if self.pass.is_none() {
            let now = tokio::time::Instant::now();
            if now < self.next_pass {
                return Ok(WorkerState::Throttled(self.next_pass - now));
            }
            self.start_pass().await?;
        }
        match self.step().await {
            Ok(_) => self.failures = 0,
            Err(e) => {
                self.failures += 1;
                if self.failures < MAX_STEP_FAILURES {
                    return Err(e.into());
                }
                // A bucket whose step keeps failing waits for the next pass; the others go on.
                let bucket = self.pass.as_mut().and_then(|p| p.scan.take()).map(|s| s.bucket);
                tracing::warn!(bucket = ?bucket, error = %e, failures = self.failures, "lifecycle: bucket left until the next pass");
                self.failures = 0;
            }
        }
        self.save().await?;
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) -> ferry_core::background::WorkerState {
        ferry_core::background::WorkerState::Busy
    }
}

/// One action a step decided on.
enum Action {
    ExpireCurrent {
        key: String,
        version_id: String,
        mtime_us: i64,
    },
    RemoveNoncurrent {
        key: String,
        version_id: String,
        mtime_us: i64,
    },
    RemoveLoneMarker {
        key: String,
        version_id: String,
        mtime_us: i64,
    },
    AbortUpload {
        upload_id: String,
    },
    /// A transition of a current (or a noncurrent) version to `class`.
    Move {
        key: String,
        version_id: String,
        mtime_us: i64,
        current: bool,
        class: String,
    },
}

impl LifecycleWorker {
    /// A worker for `store`, counting what it does in `metrics` (and in its status line).
    #[must_use]
    pub fn new(
        store: std::sync::Arc<crate::Store>,
        settings: Settings,
        metrics: std::sync::Arc<ferry_core::metrics::RegionMetrics>,
    ) -> Self {
        Self {
            store,
            settings,
            metrics,
            failures: 0,
            pass: None,
            next_pass: tokio::time::Instant::now(),
            done: Done::default(),
            record: None,
        }
    }

    /// Reads the saved record: the pass under way is resumed, and the next one is due one
    /// interval after the last one started.
    async fn resume(&mut self) -> crate::error::Result<()> {
        let record = self.store.meta.read(|r| WorkerRecord::load(r)).await?;
        self.pass.clone_from(&record.pass);
        let wait_us = record.last_pass_start_us.map_or(0, |start| {
            let interval_us = i64::try_from(self.settings.interval.as_micros()).unwrap_or(i64::MAX);
            start.saturating_add(interval_us).saturating_sub(ferry_core::time::now_micros())
        });
        self.next_pass = tokio::time::Instant::now() + std::time::Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
        self.record = Some(record);
        Ok(())
    }

    /// Saves the pass's position and the history (one small write, after a step's actions).
    async fn save(&mut self) -> crate::error::Result<()> {
        let Some(record) = self.record.as_mut() else { return Ok(()) };
        record.pass.clone_from(&self.pass);
        record.interval_us = i64::try_from(self.settings.interval.as_micros()).unwrap_or(i64::MAX);
        let text = serde_json::to_string(record)?;
        self.store.meta.write(move |tx| tx.set_setting(SETTINGS_KEY, &text)).await
    }

    /// Starts a pass over the buckets that have rules.
    async fn start_pass(&mut self) -> crate::error::Result<()> {
        let buckets = self
            .store
            .meta
            .read(|r| r.list_buckets())
            .await?
            .into_iter()
            .filter(|b| b.config.lifecycle.as_ref().is_some_and(|rules| rules.iter().any(|r| r.enabled)))
            .map(|b| b.name)
            .collect();
        let now_us = ferry_core::time::now_micros();
        self.pass = Some(Pass { now_us, buckets, scan: None });
        if let Some(r) = self.record.as_mut() {
            r.last_pass_start_us = Some(now_us);
        }
        self.next_pass = tokio::time::Instant::now() + self.settings.interval;
        Ok(())
    }

    /// One step of the pass: decides on up to `batch` versions or uploads, then acts.
    async fn step(&mut self) -> crate::error::Result<bool> {
        let day_us = self.settings.day_us;
        let limit = self.settings.batch.max(1);
        let metrics = self.metrics.clone();
        let Some(pass) = self.pass.as_mut() else { return Ok(false) };
        let now_us = pass.now_us;
        if pass.scan.is_none() {
            let Some(bucket) = pass.buckets.pop_front() else {
                self.pass = None;
                let end_us = ferry_core::time::now_micros();
                if let Some(r) = self.record.as_mut() {
                    r.passes += 1;
                    r.last_pass_end_us = Some(end_us);
                }
                #[allow(clippy::cast_precision_loss)] // a time in seconds: microseconds do not matter
                metrics.lifecycle_last_pass_end.set(end_us as f64 / 1e6);
                return Ok(false);
            };
            pass.scan =
                Some(BucketScan { bucket, cursor: crate::meta::VersionCursor::default(), key: None, uploads_after: None });
            return Ok(true);
        }
        let Some(scan) = pass.scan.as_mut() else { return Ok(true) };
        let bucket = scan.bucket.clone();
        // The rules as they are now: a change made during a long scan counts from its next step.
        let name = bucket.clone();
        let record = self.store.meta.read(move |r| r.get_bucket(&name)).await?;
        let object_lock = record.as_ref().is_some_and(crate::model::BucketRecord::object_lock);
        let rules: Vec<LifecycleRule> =
            record.and_then(|b| b.config.lifecycle).unwrap_or_default().into_iter().filter(|r| r.enabled).collect();
        if rules.is_empty() {
            pass.scan = None;
            return Ok(true);
        }
        let mut actions = Vec::new();
        match scan.uploads_after.clone() {
            None => {
                let (bucket, cursor) = (scan.bucket.clone(), scan.cursor.clone());
                let with_tags = rules.iter().any(|r| !r.filter.tags.is_empty());
                let entries = self
                    .store
                    .meta
                    .read(move |r| {
                        let entries = r.scan_versions(&bucket, b"", &cursor, None, limit)?;
                        entries
                            .into_iter()
                            .map(|e| {
                                let tags = if with_tags {
                                    r.get_version(&bucket, &e.key, &e.version_id)?.map(|v| v.attrs.tags).unwrap_or_default()
                                } else {
                                    Vec::new()
                                };
                                Ok((e, tags))
                            })
                            .collect::<crate::error::Result<Vec<_>>>()
                    })
                    .await?;
                let n = entries.len();
                for (e, tags) in &entries {
                    let subject = Subject { key: &e.key, tags, size: e.size };
                    let version_id = e.version_id.clone();
                    let key = e.key.clone();
                    match scan.key.as_mut().filter(|(k, _, _)| *k == e.key) {
                        None => {
                            // The key's newest version.
                            if e.delete_marker {
                                if lone_delete_marker_due(&rules, &e.key, e.mtime_us, now_us, day_us).is_some() {
                                    actions.push(Action::RemoveLoneMarker { key, version_id, mtime_us: e.mtime_us });
                                }
                            } else if current_expiry(&rules, &subject, e.mtime_us, day_us).is_some_and(|(at, _)| at <= now_us) {
                                actions.push(Action::ExpireCurrent { key, version_id, mtime_us: e.mtime_us });
                            } else if let Some(class) =
                                current_transition(&rules, &subject, e.storage_class.as_deref(), e.mtime_us, now_us, day_us)
                            {
                                let class = class.to_owned();
                                actions.push(Action::Move { key, version_id, mtime_us: e.mtime_us, current: true, class });
                            }
                            scan.key = Some((e.key.clone(), e.mtime_us, 0));
                        }
                        Some((_, replaced_at, newer)) => {
                            let class = e.storage_class.as_deref();
                            if noncurrent_due(&rules, &subject, *replaced_at, *newer, now_us, day_us).is_some() {
                                actions.push(Action::RemoveNoncurrent { key, version_id, mtime_us: e.mtime_us });
                            } else if !e.delete_marker
                                && let Some(class) =
                                    noncurrent_transition(&rules, &subject, class, *replaced_at, *newer, now_us, day_us)
                            {
                                let class = class.to_owned();
                                actions.push(Action::Move { key, version_id, mtime_us: e.mtime_us, current: false, class });
                            }
                            *replaced_at = e.mtime_us;
                            *newer += 1;
                        }
                    }
                }
                if let Some((e, _)) = entries.last() {
                    scan.cursor = crate::meta::VersionCursor {
                        after_key: Some(e.key.clone()),
                        after_version: Some((e.mtime_us, e.version_id.clone())),
                    };
                }
                self.done.versions_scanned += n as u64;
                metrics.lifecycle_versions_scanned.inc_by(n as u64);
                if n < limit {
                    scan.uploads_after = Some(None);
                }
            }
            Some(after) => {
                let after_kept = after.clone();
                let bucket = scan.bucket.clone();
                let uploads = self
                    .store
                    .meta
                    .read(move |r| {
                        let after = after.as_ref().map(|(k, u)| (k.as_str(), Some(u.as_str())));
                        r.scan_uploads(&bucket, b"", after, None, limit)
                    })
                    .await?;
                // The next step resumes after the last upload left in place: one aborted here
                // is gone, and could not be resumed after.
                let mut kept = after_kept;
                for u in &uploads {
                    if upload_due(&rules, &u.key, u.initiated_us, now_us, day_us).is_some() {
                        actions.push(Action::AbortUpload { upload_id: u.upload_id.clone() });
                    } else {
                        kept = Some((u.key.clone(), u.upload_id.clone()));
                    }
                }
                scan.uploads_after = Some(kept);
                if uploads.len() < limit {
                    pass.scan = None;
                }
            }
        }
        if object_lock {
            actions = self.pass_locked_by(&bucket, actions).await?;
        }
        match self.act(&bucket, actions).await {
            // Deleted during the pass: nothing of it is left to act on.
            Err(crate::error::Error::NoSuchBucket) => {
                if let Some(p) = self.pass.as_mut() {
                    p.scan = None;
                }
                Ok(true)
            }
            other => other.map(|()| true),
        }
    }

    /// The actions of a step in a bucket with Object Lock, without the removals of noncurrent
    /// versions a lock protects now: one read for the step, rather than a write transaction
    /// per locked version that would find it locked (each pass, until its lock ends). Those
    /// passed by are counted as `skip_locked`. The removal itself checks again (a lock set
    /// since this read holds).
    async fn pass_locked_by(&mut self, bucket: &str, actions: Vec<Action>) -> crate::error::Result<Vec<Action>> {
        let candidates: Vec<(String, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveNoncurrent { key, version_id, .. } => Some((key.clone(), version_id.clone())),
                _ => None,
            })
            .collect();
        if candidates.is_empty() {
            return Ok(actions);
        }
        let b = bucket.to_owned();
        let now_us = ferry_core::time::now_micros();
        let locked = self
            .store
            .meta
            .read(move |r| {
                let mut locked = std::collections::HashSet::new();
                for (key, version_id) in candidates {
                    if r.get_version(&b, &key, &version_id)?.is_some_and(|v| crate::lock::is_protected(&v, now_us)) {
                        locked.insert((key, version_id));
                    }
                }
                Ok(locked)
            })
            .await?;
        let n = locked.len() as u64;
        if n > 0 {
            let labels = ferry_core::metrics::ActionLabels { action: "skip_locked".into() };
            self.metrics.lifecycle_actions.get_or_create(&labels).inc_by(n);
            self.done.locked_skipped += n;
        }
        Ok(actions
            .into_iter()
            .filter(|a| match a {
                Action::RemoveNoncurrent { key, version_id, .. } => !locked.contains(&(key.clone(), version_id.clone())),
                _ => true,
            })
            .collect())
    }

    /// Carries out a step's actions, each in its own transaction.
    async fn act(&mut self, bucket: &str, actions: Vec<Action>) -> crate::error::Result<()> {
        use crate::objects::{Expired, abort_upload, expire_current, expire_version, transition_version};
        for a in actions {
            let (b, name) = (bucket.to_owned(), a.name());
            let meta = &self.store.meta;
            let outcome = match a {
                Action::ExpireCurrent { key, version_id, mtime_us } => {
                    meta.write(move |tx| expire_current(tx, &b, &key, &version_id, mtime_us)).await?
                }
                Action::RemoveNoncurrent { key, version_id, mtime_us } => {
                    meta.write(move |tx| expire_version(tx, &b, &key, &version_id, mtime_us, false)).await?
                }
                Action::RemoveLoneMarker { key, version_id, mtime_us } => {
                    meta.write(move |tx| expire_version(tx, &b, &key, &version_id, mtime_us, true)).await?
                }
                Action::Move { key, version_id, mtime_us, current, class } => {
                    meta.write(move |tx| transition_version(tx, &b, &key, &version_id, mtime_us, current, &class)).await?
                }
                Action::AbortUpload { upload_id } => {
                    meta.write(move |tx| match abort_upload(tx, &upload_id) {
                        Ok(()) => Ok(Expired::Removed),
                        Err(crate::error::Error::NoSuchUpload) => Ok(Expired::Unchanged),
                        Err(e) => Err(e),
                    })
                    .await?
                }
            };
            // A locked version is passed by, and counted as such (it is looked at again next pass).
            let name = if outcome == Expired::Locked { "skip_locked" } else { name };
            if outcome != Expired::Unchanged {
                let labels = ferry_core::metrics::ActionLabels { action: name.into() };
                self.metrics.lifecycle_actions.get_or_create(&labels).inc();
                self.done.add(name);
            }
        }
        Ok(())
    }
}

impl Action {
    /// Its name in metrics.
    fn name(&self) -> &'static str {
        match self {
            Self::ExpireCurrent { .. } => "expire_current",
            Self::RemoveNoncurrent { .. } => "remove_noncurrent",
            Self::RemoveLoneMarker { .. } => "remove_delete_marker",
            Self::AbortUpload { .. } => "abort_upload",
            Self::Move { .. } => "transition",
        }
    }
}

impl Done {
    /// Counts an action (by [`Action::name`]).
    fn add(&mut self, action: &str) {
        match action {
            "expire_current" => self.current_expired += 1,
            "remove_noncurrent" => self.noncurrent_removed += 1,
            "remove_delete_marker" => self.delete_markers_removed += 1,
            "skip_locked" => self.locked_skipped += 1,
            "transition" => self.transitioned += 1,
            _ => self.uploads_aborted += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, prefix: &str) -> LifecycleRule {
        LifecycleRule {
            id: id.into(),
            enabled: true,
            filter: LifecycleFilter { prefix: prefix.into(), ..LifecycleFilter::default() },
            expiration: None,
            noncurrent: None,
            abort_incomplete_days: None,
            transitions: Vec::new(),
            noncurrent_transitions: Vec::new(),
        }
    }

    const H: i64 = 3_600_000_000;

    #[test]
    fn an_expiry_is_rounded_up_to_midnight() {
        // Written at 10:00 on day 1 (day 0 is the epoch's), one day: midnight ending day 2.
        assert_eq!(expiry(DAY_US + 10 * H, 1, DAY_US), 3 * DAY_US);
        // Written exactly at midnight: exactly the days later.
        assert_eq!(expiry(DAY_US, 1, DAY_US), 2 * DAY_US);
        // A shortened day rounds the same way.
        assert_eq!(expiry(15, 1, 10), 30);
    }

    #[test]
    fn the_earliest_enabled_matching_rule_expires_a_current_version() {
        let mut a = rule("a", "logs/");
        a.expiration = Some(Expiration::Days(30));
        let mut b = rule("b", "logs/debug/");
        b.expiration = Some(Expiration::Days(7));
        let mut off = rule("off", "");
        off.expiration = Some(Expiration::Days(1));
        off.enabled = false;
        let rules = [a, b, off];
        let s = |key| Subject { key, tags: &[], size: 10 };
        assert_eq!(current_expiry(&rules, &s("logs/debug/x"), 0, DAY_US), Some((7 * DAY_US, "b")));
        assert_eq!(current_expiry(&rules, &s("logs/x"), 0, DAY_US), Some((30 * DAY_US, "a")));
        assert_eq!(current_expiry(&rules, &s("data/x"), 0, DAY_US), None);
    }

    #[test]
    fn filters_need_every_tag_and_the_size_bounds() {
        let f = LifecycleFilter {
            prefix: "p/".into(),
            tags: vec![("k".into(), "v".into()), ("team".into(), "web".into())],
            size_greater_than: Some(10),
            size_less_than: Some(100),
            legacy_prefix: false,
        };
        let both = [("k".to_owned(), "v".to_owned()), ("team".to_owned(), "web".to_owned()), ("x".to_owned(), "y".to_owned())];
        assert!(f.matches(&Subject { key: "p/a", tags: &both, size: 50 }));
        assert!(!f.matches(&Subject { key: "p/a", tags: &both[..1], size: 50 }));
        assert!(!f.matches(&Subject { key: "p/a", tags: &both, size: 10 }));
        assert!(!f.matches(&Subject { key: "p/a", tags: &both, size: 100 }));
        assert!(!f.matches(&Subject { key: "q/a", tags: &both, size: 50 }));
    }

    #[test]
    fn noncurrent_versions_age_from_their_replacement_and_the_newest_are_kept() {
        let mut r = rule("nc", "");
        r.noncurrent = Some(NoncurrentExpiration { days: 2, newer_versions: Some(1) });
        let rules = [r];
        let s = Subject { key: "k", tags: &[], size: 1 };
        // Replaced at day 1: due from day 3, and only with one newer noncurrent version.
        assert_eq!(noncurrent_due(&rules, &s, DAY_US, 1, 3 * DAY_US, DAY_US), Some("nc"));
        assert_eq!(noncurrent_due(&rules, &s, DAY_US, 1, 3 * DAY_US - 1, DAY_US), None);
        assert_eq!(noncurrent_due(&rules, &s, DAY_US, 0, 10 * DAY_US, DAY_US), None);
    }

    #[test]
    fn transitions_move_versions_down_the_classes_only() {
        let mut r = rule("t", "");
        let to = |days, class: &str| Transition { when: TransitionTime::Days(days), storage_class: class.into() };
        r.transitions = vec![to(1, "STANDARD_IA"), to(5, "GLACIER")];
        r.noncurrent_transitions =
            vec![NoncurrentTransition { days: 2, newer_versions: Some(1), storage_class: "ONEZONE_IA".into() }];
        let rules = [r];
        let s = Subject { key: "k", tags: &[], size: 1 };
        // Written at day 0: nothing due before day 1; then IA; from day 5 on, Glacier.
        assert_eq!(current_transition(&rules, &s, None, 0, DAY_US - 1, DAY_US), None);
        assert_eq!(current_transition(&rules, &s, None, 0, DAY_US, DAY_US), Some("STANDARD_IA"));
        assert_eq!(current_transition(&rules, &s, None, 0, 5 * DAY_US, DAY_US), Some("GLACIER"));
        assert_eq!(
            current_transition(&rules, &s, Some("STANDARD_IA"), 0, 5 * DAY_US, DAY_US),
            Some("GLACIER")
        );
        // Already there, or further down: stays.
        assert_eq!(current_transition(&rules, &s, Some("STANDARD_IA"), 0, DAY_US, DAY_US), None);
        assert_eq!(current_transition(&rules, &s, Some("DEEP_ARCHIVE"), 0, 9 * DAY_US, DAY_US), None);
        // A class no rule moves from (REDUCED_REDUNDANCY) counts as the top.
        assert_eq!(
            current_transition(&rules, &s, Some("REDUCED_REDUNDANCY"), 0, DAY_US, DAY_US),
            Some("STANDARD_IA")
        );
        // Noncurrent: from its replacement, and only beyond the newest one kept.
        assert_eq!(noncurrent_transition(&rules, &s, None, DAY_US, 1, 3 * DAY_US, DAY_US), Some("ONEZONE_IA"));
        assert_eq!(noncurrent_transition(&rules, &s, None, DAY_US, 0, 3 * DAY_US, DAY_US), None);
        assert_eq!(noncurrent_transition(&rules, &s, None, DAY_US, 1, 3 * DAY_US - 1, DAY_US), None);
    }

    #[test]
    fn lone_delete_markers_and_old_uploads() {
        let mut m = rule("markers", "tmp/");
        m.expiration = Some(Expiration::ExpiredDeleteMarker);
        m.abort_incomplete_days = Some(1);
        let rules = [m];
        assert_eq!(lone_delete_marker_due(&rules, "tmp/a", 0, 0, DAY_US), Some("markers"));
        assert_eq!(lone_delete_marker_due(&rules, "keep/a", 0, 0, DAY_US), None);
        // A rule with days removes a lone marker once the marker is that old.
        let mut by_age = rule("age", "");
        by_age.expiration = Some(Expiration::Days(2));
        let aged = [by_age];
        assert_eq!(lone_delete_marker_due(&aged, "k", DAY_US, 3 * DAY_US - 1, DAY_US), None);
        assert_eq!(lone_delete_marker_due(&aged, "k", DAY_US, 3 * DAY_US, DAY_US), Some("age"));
        assert_eq!(upload_due(&rules, "tmp/a", 0, DAY_US, DAY_US), Some("markers"));
        assert_eq!(upload_due(&rules, "tmp/a", 1, DAY_US, DAY_US), None);
    }
}
