//! Replication rules: a bucket's configuration (the S3 `ReplicationConfiguration`, parsed by the
//! S3 layer) is stored with the bucket as JSON ([`ReplicationConfig`]). Destinations are
//! resolved to a peer (a region name) when the configuration is put, so matching a change
//! needs no network. A destination is the pair (peer, bucket), written `peer/bucket`
//! ([`dest_key`]); [`DestinationArn`] is the one parser of the ARNs that name it.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::replication::outbox::JobOp;

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

/// A destination bucket's ARN: `arn:aws:s3:::BUCKET`, or `arn:aws:s3:REGION:ACCOUNT:BUCKET` with
/// the region pinned (the account is accepted and ignored). The one parser of these ARNs, for
/// the S3 API, the configuration file and the peers' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationArn {
    /// The pinned region, if any.
    pub region: Option<String>,
    pub bucket: String,
}

impl DestinationArn {
    /// Parses an ARN. The bucket must be non-empty and free of `/` and `:`; callers that
    /// need a valid S3 bucket name check it too.
    ///
    /// # Errors
    /// A message saying what form is expected.
    pub fn parse(arn: &str) -> std::result::Result<Self, String> {
        let bad = || format!("invalid destination bucket ARN `{arn}`: use arn:aws:s3:::BUCKET or arn:aws:s3:REGION::BUCKET");
        let mut parts = arn.strip_prefix("arn:aws:s3:").ok_or_else(bad)?.splitn(3, ':');
        let (Some(region), Some(_account), Some(bucket)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if bucket.is_empty() || bucket.contains(['/', ':']) {
            return Err(bad());
        }
        Ok(Self { region: (!region.is_empty()).then(|| region.to_owned()), bucket: bucket.to_owned() })
    }

    /// The ARN of `bucket` in `region` (pinned), as Ferry reports destinations.
    #[must_use]
    pub fn format(region: &str, bucket: &str) -> String {
        format!("arn:aws:s3:{region}::{bucket}")
    }
}

impl RuleDestination {
    /// The ARN Ferry reports for this destination (region pinned).
    #[must_use]
    pub fn arn(&self) -> String {
        DestinationArn::format(&self.peer, &self.bucket)
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
    fn destination_arns() {
        let arn = |s: &str| DestinationArn::parse(s).map(|a| (a.region, a.bucket));
        assert_eq!(arn("arn:aws:s3:::bk1"), Ok((None, "bk1".to_owned())));
        assert_eq!(arn("arn:aws:s3:eu-west-1::bk1"), Ok((Some("eu-west-1".to_owned()), "bk1".to_owned())));
        assert_eq!(arn("arn:aws:s3:eu-west-1:123456789012:bk1").map(|a| a.1), Ok("bk1".to_owned()));
        for bad in ["", "bk1", "arn:aws:s3:::", "arn:aws:s3::bk1", "arn:aws:s3:::a/b", "arn:aws:s3:::a:b", "arn:aws:sqs:::bk1"] {
            assert!(arn(bad).is_err(), "{bad}");
        }
        assert_eq!(
            DestinationArn::parse(&DestinationArn::format("eu", "b")).map(|a| a.region),
            Ok(Some("eu".to_owned()))
        );
    }

    #[test]
    fn disabled_rules_match_nothing() {
        let mut r = rule("x", 1, "", &[], "d");
        r.enabled = false;
        let cfg = ReplicationConfig { role: String::new(), rules: vec![r] };
        assert!(cfg.select("k", &[], JobOp::Put).is_empty());
    }
}
