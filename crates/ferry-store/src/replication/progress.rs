//! Replication progress of a bucket, per rule: what is pending or failed, and the exact point
//! in time up to which every change has been replicated.
//!
//! Figures are per **destination** (peer and bucket), over every rule that sends there: a rule
//! shows its destination's. "Replicated up to T" means every change committed before T has
//! reached the destination. T is the commit time of the oldest live job to that destination
//! that is not yet delivered (pending, or failed: a failed change is not replicated), whatever
//! rule recorded it (two rules to one destination, renumbered rule ids); with none, T is just
//! past the commit clock's value at the last committed transaction, which every future commit
//! exceeds. Both come from the same database snapshot, so T is never ahead of the truth.
//! Backfill jobs (changes made before the rule) are reported as historical progress instead.
//! Everything here reads per-destination counters and one index probe per destination: the
//! cost does not grow with the backlog.

use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::Result;
use crate::meta::WriteTx;
use crate::replication::backfill::Backfill;
use crate::replication::outbox::DestStats;
use crate::replication::rules::{ReplicationConfig, Rule};
use ferry_core::time::{now_micros, rfc3339_us};

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

/// Records an event, at the commit clock's time.
///
/// # Errors
/// Database errors.
pub fn record_event(tx: &mut dyn WriteTx, bucket: &str, rule_id: &str, kind: &str, detail: &str) -> Result<i64> {
    let now = tx.now();
    tx.add_event(now, bucket, rule_id, kind, detail)
}

/// What a rule is doing, as status shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleState {
    /// The rule is disabled: it records nothing.
    Disabled,
    /// Its destination has failed changes.
    Failing,
    /// Changes are on their way.
    Replicating,
    /// Nothing is pending or failed at its destination.
    CaughtUp,
}

impl RuleState {
    /// The displayed name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Failing => "failing",
            Self::Replicating => "replicating",
            Self::CaughtUp => "caught-up",
        }
    }
}

/// Progress of one rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleProgress {
    pub id: String,
    pub enabled: bool,
    pub priority: i32,
    pub prefix: String,
    pub tags: Vec<(String, String)>,
    pub delete_markers: bool,
    pub destination_region: String,
    pub destination_bucket: String,
    pub state: RuleState,
    /// Every change committed before this time (µs since epoch) is replicated.
    pub replicated_up_to_us: i64,
    /// The same, as RFC 3339 with microseconds.
    pub replicated_up_to: String,
    /// Now minus `replicated_up_to`, in seconds (0 when caught up).
    pub lag_seconds: f64,
    pub pending_ops: u64,
    pub pending_bytes: u64,
    pub failed_ops: u64,
    pub last_error: Option<String>,
    /// Recovery point objective in seconds (`ReplicationTime`, default 15 minutes).
    pub rpo_seconds: u64,
    /// Historical objects: the rule asks for them.
    pub existing_objects: bool,
    /// Fraction of the latest backfill covering this rule that is done (0..1), if any.
    pub historical_ratio: Option<f64>,
    /// The latest `ferry replication verify` of this rule (`VerifyClean` or
    /// `VerifyFoundDifferences`), if any: the only source of an "in sync" claim.
    pub last_verify: Option<Event>,
}

/// Progress of one destination, over every rule that sends there (and jobs of rules removed
/// since, which are still delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationProgress {
    pub region: String,
    pub bucket: String,
    pub pending_ops: u64,
    pub pending_bytes: u64,
    pub failed_ops: u64,
    /// Every change committed before this time (µs since epoch) has reached this destination.
    pub replicated_up_to_us: i64,
    pub replicated_up_to: String,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
}

/// Everything the status command shows for a bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketProgress {
    pub bucket: String,
    pub region: String,
    pub now_us: i64,
    pub rules: Vec<RuleProgress>,
    /// Every destination with jobs, recorded by the current rules or earlier ones.
    pub destinations: Vec<DestinationProgress>,
    pub backfills: Vec<Backfill>,
    pub events: Vec<Event>,
}

/// Default recovery point objective.
pub const DEFAULT_RPO_SECONDS: u64 = 15 * 60;

fn rule_progress(rule: &Rule, stats: &[DestStats], committed: i64, now: i64, backfills: &[Backfill]) -> RuleProgress {
    let d = &rule.destination;
    let s = stats.iter().find(|s| s.peer == d.peer && s.dest_bucket == d.bucket).cloned().unwrap_or_default();
    let (t, lag_seconds) = watermark(&s, committed, now);
    let state = if !rule.enabled {
        RuleState::Disabled
    } else if s.failed_ops > 0 {
        RuleState::Failing
    } else if s.pending_ops > 0 {
        RuleState::Replicating
    } else {
        RuleState::CaughtUp
    };
    let historical_ratio = backfills.iter().find(|b| b.rule_id.as_deref().is_none_or(|r| r == rule.id)).map(Backfill::ratio);
    RuleProgress {
        id: rule.id.clone(),
        enabled: rule.enabled,
        priority: rule.priority,
        prefix: rule.filter.prefix.clone(),
        tags: rule.filter.tags.clone(),
        delete_markers: rule.delete_markers,
        destination_region: d.peer.clone(),
        destination_bucket: d.bucket.clone(),
        state,
        replicated_up_to_us: t,
        replicated_up_to: rfc3339_us(t),
        lag_seconds,
        pending_ops: s.pending_ops,
        pending_bytes: s.pending_bytes,
        failed_ops: s.failed_ops,
        last_error: s.last_error,
        rpo_seconds: d.rpo_minutes.map_or(DEFAULT_RPO_SECONDS, |m| u64::from(m) * 60),
        existing_objects: rule.existing_objects,
        historical_ratio,
        last_verify: None,
    }
}

/// "Replicated up to T" of a destination, and the lag (now − T, 0 when nothing is undelivered).
fn watermark(s: &DestStats, committed: i64, now: i64) -> (i64, f64) {
    let caught_up_at = committed.saturating_add(1).min(now);
    let t = s.oldest_undelivered_us.map_or(caught_up_at, |o| o.min(caught_up_at));
    #[allow(clippy::cast_precision_loss)] // seconds for display
    let lag = if s.oldest_undelivered_us.is_some() { (now - t).max(0) as f64 / 1e6 } else { 0.0 };
    (t, lag)
}

/// The progress of `bucket`'s replication, read from one snapshot.
///
/// # Errors
/// Database errors; NoSuchBucket.
pub async fn bucket_progress(store: &Store, bucket: &str, region: &str) -> Result<BucketProgress> {
    let name = bucket.to_owned();
    let (b, stats, committed, backfills, events, mut verifies) = store
        .meta
        .read(move |r| {
            let b = r.get_bucket(&name)?.ok_or(crate::Error::NoSuchBucket)?;
            let events = r.latest_events(&name, None, None, 50)?;
            let mut verifies = std::collections::HashMap::new();
            if let Some(cfg) = &b.replication {
                for rule in ReplicationConfig::from_stored(cfg)?.rules {
                    if let Some(e) = r.latest_events(&name, Some(&rule.id), Some("Verify"), 1)?.pop() {
                        verifies.insert(rule.id, e);
                    }
                }
            }
            Ok((
                b,
                r.dest_stats(&name)?,
                r.committed_clock()?,
                r.list_backfills(Some(&name))?,
                events,
                verifies,
            ))
        })
        .await?;
    let now = now_micros();
    let cfg = match &b.replication {
        Some(s) => ReplicationConfig::from_stored(s)?,
        None => ReplicationConfig::default(),
    };
    let rules = cfg
        .rules
        .iter()
        .map(|r| RuleProgress { last_verify: verifies.remove(&r.id), ..rule_progress(r, &stats, committed, now, &backfills) })
        .collect();
    let destinations = stats
        .iter()
        .map(|s| {
            let (t, lag_seconds) = watermark(s, committed, now);
            DestinationProgress {
                region: s.peer.clone(),
                bucket: s.dest_bucket.clone(),
                pending_ops: s.pending_ops,
                pending_bytes: s.pending_bytes,
                failed_ops: s.failed_ops,
                replicated_up_to_us: t,
                replicated_up_to: rfc3339_us(t),
                lag_seconds,
                last_error: s.last_error.clone(),
            }
        })
        .collect();
    Ok(BucketProgress {
        bucket: bucket.to_owned(),
        region: region.to_owned(),
        now_us: now,
        rules,
        destinations,
        backfills,
        events,
    })
}
