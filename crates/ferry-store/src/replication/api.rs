//! The answers of Ferry's replication admin API (`ferry-s3`'s `replication/admin.rs` serves
//! them as JSON; the `ferry replication` commands and the console read them back), as types
//! both ends share. What each request is: the admin module's table.
//!
//! - status: [`BucketProgress`](super::progress::BucketProgress);
//! - explain: [`Explain`] ([`explain`] computes it);
//! - retry: [`Retried`]; backfill start: [`BackfillStarted`] (request:
//!   [`BackfillRequest`](super::backfill::BackfillRequest)); backfill control: the
//!   [`Backfill`](super::backfill::Backfill);
//! - replica sources: [`Sources`], both ways;
//! - verify: a stream of [`VerifyLine`]s, one JSON object per line.

use ferry_core::time::rfc3339_us;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::meta::ReadTx;
use crate::model::{BucketRecord, ReplStatus, ReplicaSourceGrant};
use crate::replication::outbox::{JobOp, JobState};
use crate::replication::rules::ReplicationConfig;

/// `POST ?ferry-replication-retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retried {
    /// Failed jobs made pending again.
    pub retried: u64,
}

/// `POST ?ferry-backfill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillStarted {
    pub id: i64,
}

/// `GET` / `PUT ?ferry-replication-sources`: the other accounts a bucket accepts replicas from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sources {
    pub sources: Vec<ReplicaSourceGrant>,
}

/// `GET ?ferry-replication-explain&key=K[&version-id=V]`: why a version is (not) replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explain {
    pub bucket: String,
    pub key: String,
    /// The version explained (the latest when none was asked); `None` when there is none.
    pub version_id: Option<String>,
    pub delete_marker: bool,
    /// Its `x-amz-replication-status`.
    pub status: Option<ReplStatus>,
    /// One sentence.
    pub summary: String,
    pub rules: Vec<ExplainRule>,
    pub jobs: Vec<ExplainJob>,
    /// Destinations (`peer/bucket`) that have the version.
    pub delivered_to: Vec<String>,
}

/// Whether one rule selects the version, and why (not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRule {
    pub rule: String,
    pub matches: bool,
    pub why: String,
    /// `peer/bucket`.
    pub destination: String,
}

/// A job of the version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainJob {
    /// `peer/bucket`.
    pub destination: String,
    pub rule: String,
    pub op: JobOp,
    pub state: JobState,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When it was recorded (commit clock, RFC 3339).
    pub recorded: String,
    /// When it is tried next (RFC 3339), if scheduled.
    pub next_attempt: Option<String>,
    pub backfill: Option<i64>,
}

/// Explains version `version_id` of `key` (its latest when `None`) in `bucket`, from one
/// snapshot.
///
/// # Errors
/// Database errors; a stored configuration that does not parse.
pub fn explain(r: &dyn ReadTx, bucket: &BucketRecord, key: &str, version_id: Option<&str>) -> Result<Explain> {
    let b = &bucket.name;
    let version = match version_id {
        Some(v) => r.get_version(b, key, v)?,
        None => r.get_latest(b, key)?,
    };
    let (jobs, delivered_to) = match &version {
        Some(v) => (r.jobs_for_version(b, key, &v.version_id)?, r.delivered_to(b, key, &v.version_id)?),
        None => (Vec::new(), Vec::new()),
    };
    let cfg = match &bucket.replication {
        Some(s) => ReplicationConfig::from_stored(s)?,
        None => ReplicationConfig::default(),
    };
    let (tags, dm) = version.as_ref().map_or((Vec::new(), false), |v| (v.attrs.tags.clone(), v.delete_marker));
    let op = if dm { JobOp::DeleteMarker } else { JobOp::Put };
    let selected: Vec<&str> = cfg.select(key, &tags, op).iter().map(|r| r.id.as_str()).collect();
    let rules = cfg
        .rules
        .iter()
        .map(|r| {
            let why = if !r.enabled {
                "the rule is disabled".to_owned()
            } else if !key.starts_with(&r.filter.prefix) {
                format!("the key does not start with the rule's prefix `{}`", r.filter.prefix)
            } else if let Some((tk, tv)) = r.filter.tags.iter().find(|t| !tags.contains(t)) {
                format!("the object lacks the tag {tk}={tv}")
            } else if dm && !r.delete_markers {
                "the rule does not replicate delete markers".to_owned()
            } else if dm && !r.filter.tags.is_empty() {
                "rules with tag filters do not replicate delete markers".to_owned()
            } else if !selected.contains(&r.id.as_str()) {
                "another matching rule for the same destination has a higher priority".to_owned()
            } else {
                "matches".to_owned()
            };
            ExplainRule { rule: r.id.clone(), matches: selected.contains(&r.id.as_str()), why, destination: r.destination.key() }
        })
        .collect();
    let summary = match (&version, bucket.replication.is_some()) {
        (None, _) => "no such key or version",
        (Some(_), false) => "the bucket has no replication configuration",
        (Some(v), true) if v.repl_status == Some(ReplStatus::Replica) => {
            "this version is a replica: it arrived by replication and is not replicated further"
        }
        (Some(_), true) if jobs.is_empty() && selected.is_empty() => "no rule selects this version",
        (Some(_), true) if jobs.is_empty() => "delivered to every destination (no job left)",
        _ => "jobs pending or failed: see jobs",
    };
    let jobs = jobs
        .into_iter()
        .map(|j| ExplainJob {
            destination: j.dest(),
            rule: j.rule_id,
            op: j.op,
            state: j.state,
            attempts: j.attempts,
            last_error: j.last_error,
            recorded: rfc3339_us(j.created_us),
            next_attempt: (j.next_attempt_us > 0).then(|| rfc3339_us(j.next_attempt_us)),
            backfill: j.backfill_id,
        })
        .collect();
    Ok(Explain {
        bucket: b.clone(),
        key: key.to_owned(),
        version_id: version.as_ref().map(|v| v.version_id.clone()),
        delete_marker: dm,
        status: version.as_ref().and_then(|v| v.repl_status),
        summary: summary.to_owned(),
        rules,
        jobs,
        delivered_to,
    })
}

/// Counts of one rule's comparison so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VerifyCounts {
    pub checked: u64,
    pub missing: u64,
    pub extra: u64,
    pub mismatched: u64,
}

impl VerifyCounts {
    /// No difference found.
    #[must_use]
    pub fn clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.mismatched == 0
    }
}

/// One line of `GET ?ferry-replication-verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum VerifyLine {
    /// Counts so far (about every 1,000 versions).
    Progress {
        rule: String,
        /// `peer/bucket`.
        destination: String,
        #[serde(flatten)]
        counts: VerifyCounts,
    },
    /// A version the destination lacks.
    Missing {
        rule: String,
        key: String,
        version_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delete_marker: Option<bool>,
    },
    /// A version only the destination has.
    Extra {
        rule: String,
        key: String,
        version_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delete_marker: Option<bool>,
    },
    /// A version that differs: which field, and the two values.
    Mismatch {
        rule: String,
        key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version_id: Option<String>,
        field: String,
        source: serde_json::Value,
        destination: serde_json::Value,
    },
    /// A rule's result.
    Summary {
        rule: String,
        destination: String,
        #[serde(flatten)]
        counts: VerifyCounts,
        clean: bool,
    },
    /// The comparison stopped.
    Error { error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines keep the shape operators' scripts read (`type` plus flat fields).
    #[test]
    fn verify_lines_are_flat_json_objects() {
        let counts = VerifyCounts { checked: 3, missing: 1, extra: 0, mismatched: 0 };
        let line = VerifyLine::Summary { rule: "r".into(), destination: "eu/d".into(), counts, clean: false };
        let text = serde_json::to_string(&line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["checked"].as_u64(), v["clean"].as_bool()),
            (Some("summary"), Some(3), Some(false))
        );
        assert_eq!(serde_json::from_str::<VerifyLine>(&text).unwrap(), line);
        assert!(
            serde_json::from_str::<VerifyLine>(r#"{"type":"unheard-of"}"#).is_err(),
            "unknown lines are refused"
        );
    }
}
