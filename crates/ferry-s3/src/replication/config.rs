//! Put/Get/DeleteBucketReplication: AWS's `ReplicationConfiguration` XML, validated against
//! the peers, stored with the bucket as Ferry's rule model.
//!
//! Validation at PutBucketReplication: versioning enabled on the source; every destination
//! resolved to exactly one region (`arn:aws:s3:::NAME` is looked up on every peer;
//! `arn:aws:s3:REGION::NAME` pins the region), existing, versioned and writable with Ferry's
//! credentials there; unique priorities among rules whose filters overlap; no replication
//! cycle longer than a pair (A→B→C→A is refused, A↔B is allowed). With [`DRY_RUN_QUERY`]
//! the checks run and nothing is stored.

use std::collections::{BTreeSet, HashSet, VecDeque};

use ferry_store::Error as StoreError;
use ferry_store::model::Versioning;
use ferry_store::replication::backfill::{self, StatusFilter};
use ferry_store::replication::{
    DestinationArn, DestinationRefused, ReplicationConfig, ReplicationEngine, Rule, RuleDestination, RuleFilter, SourceRef,
    drop_jobs,
};
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::dto::{tags_from_dto, tags_to_dto};
use crate::error::StoreResultExt;
use crate::perm::Perm;
use crate::put::storage_class;

/// A PutBucketReplication with this query parameter (`PUT /BUCKET?replication&ferry-dry-run`)
/// is checked in full (the destinations exist, are versioned and accept the source's replicas;
/// no cycle; priorities) but not stored: the console's pre-flight check. It changes nothing, so
/// any caller allowed to put the configuration may ask for it.
pub const DRY_RUN_QUERY: &str = "ferry-dry-run";

/// Most rules in one configuration (as in S3).
const MAX_RULES: usize = 1000;
/// How deep the cycle check follows other buckets' replication.
const MAX_CYCLE_DEPTH: usize = 16;
/// Jobs dropped or retried per transaction.
pub(crate) const JOB_BATCH: usize = 1000;

/// A destination ARN ([`DestinationArn`]) whose bucket is a valid S3 bucket name.
pub(crate) fn parse_arn(arn: &str) -> S3Result<(Option<String>, String)> {
    let parsed = DestinationArn::parse(arn).map_err(|why| s3_error!(InvalidArgument, "{why}"))?;
    if !s3s::path::check_bucket_name(&parsed.bucket) {
        return Err(s3_error!(
            InvalidArgument,
            "Invalid destination bucket ARN `{arn}`: `{}` is not a bucket name",
            parsed.bucket
        ));
    }
    Ok((parsed.region, parsed.bucket))
}

fn enabled(status: &str) -> bool {
    status == "Enabled"
}

/// Two filters select a common object when one prefix extends the other (tags are ignored:
/// an object could carry both tag sets).
fn overlap(a: &RuleFilter, b: &RuleFilter) -> bool {
    a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix)
}

/// The rule model of one XML rule, before its destination is resolved.
pub(crate) fn rule_from_dto(r: ReplicationRule, index: usize) -> S3Result<(Rule, Option<String>)> {
    let id = r.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("rule-{}", index + 1));
    if id.len() > 255 {
        return Err(s3_error!(InvalidArgument, "Rule ID must be at most 255 characters"));
    }
    let status = r.status.as_str();
    if status != "Enabled" && status != "Disabled" {
        return Err(s3_error!(MalformedXML, "Rule {id}: Status must be Enabled or Disabled"));
    }
    let (v2, filter) = match (r.filter, r.prefix) {
        (Some(_), Some(_)) => return Err(s3_error!(InvalidArgument, "Rule {id}: use Filter or Prefix, not both")),
        (Some(f), None) => {
            let (prefix, tags) = match (f.prefix, f.tag, f.and) {
                (p, None, None) => (p.unwrap_or_default(), Vec::new()),
                (None, Some(t), None) => (String::new(), tags_from_dto(vec![t])),
                (None, None, Some(and)) => (and.prefix.unwrap_or_default(), tags_from_dto(and.tags.unwrap_or_default())),
                _ => return Err(s3_error!(MalformedXML, "Rule {id}: a Filter holds one of Prefix, Tag or And")),
            };
            (true, RuleFilter { prefix, tags })
        }
        (None, p) => (false, RuleFilter { prefix: p.unwrap_or_default(), tags: Vec::new() }),
    };
    let delete_markers = r.delete_marker_replication.and_then(|d| d.status).is_some_and(|s| enabled(s.as_str()));
    if delete_markers && !filter.tags.is_empty() {
        return Err(s3_error!(
            InvalidRequest,
            "Rule {id}: delete marker replication is not supported with a Tag filter"
        ));
    }
    let d = r.destination;
    if d.encryption_configuration.is_some() {
        return Err(s3_error!(NotImplemented, "Rule {id}: encrypted replicas are not supported"));
    }
    let owner_override = match &d.access_control_translation {
        Some(a) if a.owner.as_str() == "Destination" => true,
        Some(_) => {
            return Err(s3_error!(
                InvalidArgument,
                "Rule {id}: AccessControlTranslation Owner must be Destination"
            ));
        }
        None => false,
    };
    let rpo_minutes = d
        .replication_time
        .as_ref()
        .filter(|t| enabled(t.status.as_str()))
        .map(|t| t.time.minutes.unwrap_or(15).max(1).unsigned_abs());
    let rule = Rule {
        id,
        priority: r.priority.unwrap_or(0),
        enabled: enabled(status),
        v2,
        filter,
        delete_markers,
        deletes: r.delete_replication.is_some_and(|d| enabled(d.status.as_str())),
        existing_objects: r.existing_object_replication.is_some_and(|e| enabled(e.status.as_str())),
        replica_modifications: r
            .source_selection_criteria
            .and_then(|s| s.replica_modifications)
            .is_some_and(|m| enabled(m.status.as_str())),
        destination: RuleDestination {
            peer: String::new(),
            bucket: d.bucket.clone(),
            storage_class: storage_class(d.storage_class.as_ref().map(StorageClass::as_str))?,
            account: d.account,
            owner_override,
            rpo_minutes,
            metrics: d.metrics.is_some_and(|m| enabled(m.status.as_str())),
        },
    };
    Ok((rule, Some(d.bucket)))
}

fn status_dto<T: From<String>>(on: bool) -> T {
    T::from(if on { "Enabled".to_owned() } else { "Disabled".to_owned() })
}

pub(crate) fn rule_to_dto(r: &Rule) -> ReplicationRule {
    let filter = r.filter.clone();
    let (filter_dto, prefix) = if r.v2 {
        let f = match filter.tags.len() {
            0 => ReplicationRuleFilter { prefix: Some(filter.prefix), ..Default::default() },
            1 if filter.prefix.is_empty() => ReplicationRuleFilter { tag: tags_to_dto(&filter.tags).pop(), ..Default::default() },
            _ => ReplicationRuleFilter {
                and: Some(ReplicationRuleAndOperator {
                    prefix: (!filter.prefix.is_empty()).then_some(filter.prefix),
                    tags: Some(tags_to_dto(&filter.tags)),
                }),
                ..Default::default()
            },
        };
        (Some(f), None)
    } else {
        (None, Some(filter.prefix))
    };
    let d = &r.destination;
    ReplicationRule {
        id: Some(r.id.clone()),
        // A legacy (Prefix) rule may carry a Priority too; it still decides between rules, so it
        // is shown as stored.
        priority: (r.v2 || r.priority != 0).then_some(r.priority),
        status: status_dto(r.enabled),
        filter: filter_dto,
        prefix,
        delete_marker_replication: Some(DeleteMarkerReplication { status: Some(status_dto(r.delete_markers)) }),
        delete_replication: r.deletes.then(|| DeleteReplication { status: status_dto(true) }),
        existing_object_replication: r.existing_objects.then(|| ExistingObjectReplication { status: status_dto(true) }),
        source_selection_criteria: r.replica_modifications.then(|| SourceSelectionCriteria {
            replica_modifications: Some(ReplicaModifications { status: status_dto(true) }),
            sse_kms_encrypted_objects: None,
        }),
        destination: Destination {
            bucket: d.arn(),
            storage_class: d.storage_class.clone().map(StorageClass::from),
            account: d.account.clone(),
            access_control_translation: d
                .owner_override
                .then(|| AccessControlTranslation { owner: OwnerOverride::from("Destination".to_owned()) }),
            replication_time: d.rpo_minutes.map(|m| ReplicationTime {
                status: status_dto(true),
                time: ReplicationTimeValue { minutes: Some(i32::try_from(m).unwrap_or(i32::MAX)) },
            }),
            metrics: d.metrics.then(|| Metrics { status: status_dto(true), event_threshold: None }),
            encryption_configuration: None,
        },
    }
}

/// The `ReplicationConfiguration` XML of a stored configuration, as GetBucketReplication
/// answers it and PutBucketReplication reads it back (the console shows and sends it), one
/// element per line.
#[must_use]
pub fn replication_xml(cfg: &ReplicationConfig) -> String {
    use s3s::xml::Serialize as _;
    let dto = ReplicationConfiguration { role: cfg.role.clone(), rules: cfg.rules.iter().map(rule_to_dto).collect() };
    let mut out = Vec::new();
    let mut ser = s3s::xml::Serializer::new(&mut out);
    if dto.serialize(&mut ser).is_err() {
        return String::new();
    }
    indent(&String::from_utf8_lossy(&out))
}

/// One element per line, indented by depth (the XML has no mixed content).
fn indent(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len() * 2);
    let mut depth = 0usize;
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').map_or(rest.len(), |e| start + e + 1);
        let tag = &rest[start..end];
        let closing = tag.starts_with("</");
        // An element holding text is written whole on its line.
        let text_end = rest[end..].find('<').map_or(rest.len(), |e| end + e);
        if !closing && !tag.ends_with("/>") && rest[text_end..].starts_with("</") {
            let close_end = rest[text_end..].find('>').map_or(rest.len(), |e| text_end + e + 1);
            out.push_str(&"  ".repeat(depth));
            out.push_str(&rest[start..close_end]);
            out.push('\n');
            rest = &rest[close_end..];
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        }
        out.push_str(&"  ".repeat(depth));
        out.push_str(tag);
        out.push('\n');
        if !closing && !tag.ends_with("/>") {
            depth += 1;
        }
        rest = &rest[end..];
    }
    out
}

/// The answer to a PutBucketReplication (or PutObjectLockConfiguration) whose rule `rule_id`
/// names a destination that refuses: AccessDenied or InvalidRequest, with the reason.
pub(crate) fn destination_refused(rule_id: &str, bucket: &str, peer: &str, refused: &DestinationRefused) -> S3Error {
    let msg = format!("Rule {rule_id}: destination {bucket} in {peer}: {refused}");
    match refused {
        DestinationRefused::AccessDenied(_) => S3Error::with_message(S3ErrorCode::AccessDenied, msg),
        DestinationRefused::Invalid(_) => S3Error::with_message(S3ErrorCode::InvalidRequest, msg),
    }
}

impl FerryS3 {
    pub(crate) async fn put_bucket_replication(
        &self,
        req: S3Request<PutBucketReplicationInput>,
    ) -> S3Result<S3Response<PutBucketReplicationOutput>> {
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let dry_run = req.uri.query().is_some_and(|q| q.split('&').any(|p| p.split('=').next() == Some(DRY_RUN_QUERY)));
        let peers = self.engine.clone().ok_or_else(|| s3_error!(NotImplemented, "Replication is not enabled on this server"))?;
        if bucket.versioning != Versioning::Enabled {
            return Err(s3_error!(
                InvalidRequest,
                "Versioning must be 'Enabled' on the bucket to apply a replication configuration"
            ));
        }
        let cfg = req.input.replication_configuration;
        if cfg.rules.is_empty() || cfg.rules.len() > MAX_RULES {
            return Err(s3_error!(MalformedXML, "A replication configuration holds 1 to 1000 rules"));
        }
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut ids = HashSet::new();
        for (i, r) in cfg.rules.into_iter().enumerate() {
            let (rule, _) = rule_from_dto(r, i)?;
            if !ids.insert(rule.id.clone()) {
                return Err(s3_error!(InvalidArgument, "Rule ID {} is used twice", rule.id));
            }
            rules.push(rule);
        }
        for (i, a) in rules.iter().enumerate() {
            for b in &rules[i + 1..] {
                if a.priority == b.priority && (a.v2 || b.v2) && overlap(&a.filter, &b.filter) {
                    return Err(s3_error!(
                        InvalidRequest,
                        "Found overlapping rules {} and {} with the same priority {}",
                        a.id,
                        b.id,
                        a.priority
                    ));
                }
            }
        }
        // Resolve every destination to one region and check it takes replicas from this bucket
        // (owned by the caller, who is its owner).
        let source = SourceRef::new(&self.region, &bucket.name, &bucket.owner.id);
        // A bucket with Object Lock needs destinations with it (checked again when stored).
        let locked = bucket.object_lock();
        let mut same_region = false;
        for rule in &mut rules {
            let (pinned, name) = parse_arn(&rule.destination.bucket)?;
            let peer = match pinned {
                Some(region) => {
                    if !peers.knows(&region) {
                        return Err(s3_error!(
                            InvalidRequest,
                            "Rule {}: region `{region}` is neither this region nor a configured peer",
                            rule.id
                        ));
                    }
                    region
                }
                None => {
                    let found = peers.locate_bucket(&source, &name).await;
                    match found.as_slice() {
                        [one] => one.clone(),
                        [] => return Err(s3_error!(InvalidRequest, "Rule {}: no region holds a bucket named {name}", rule.id)),
                        many => {
                            return Err(s3_error!(
                                InvalidRequest,
                                "Rule {}: buckets named {name} exist in several regions ({}); pin one with arn:aws:s3:REGION::{name}",
                                rule.id,
                                many.join(", ")
                            ));
                        }
                    }
                }
            };
            if peer == self.region && name == bucket.name {
                return Err(s3_error!(InvalidRequest, "Rule {}: a bucket cannot replicate to itself", rule.id));
            }
            same_region |= peer == self.region;
            peers
                .check_destination(&source, &peer, &name, locked)
                .await
                .map_err(|refused| destination_refused(&rule.id, &name, &peer, &refused))?;
            rule.destination.peer = peer;
            rule.destination.bucket = name;
        }
        self.refuse_cycles(peers.as_ref(), &source, &rules).await?;
        if dry_run {
            return Ok(S3Response::new(PutBucketReplicationOutput::default()));
        }
        let backfill_rules: Vec<String> =
            rules.iter().filter(|r| r.enabled && r.existing_objects).map(|r| r.id.clone()).collect();
        let stored = ReplicationConfig { role: cfg.role, rules }.to_stored().s3()?;
        let name = bucket.name.clone();
        self.store
            .meta
            .write(move |tx| {
                let mut b = tx.lock_bucket(&name)?.ok_or(StoreError::NoSuchBucket)?;
                if b.versioning != Versioning::Enabled {
                    return Err(StoreError::InvalidBucketState("versioning was suspended meanwhile".into()));
                }
                if b.object_lock() != locked {
                    return Err(StoreError::InvalidBucketState(
                        "Object Lock was enabled on the bucket meanwhile: put the replication configuration again".into(),
                    ));
                }
                let before = match &b.replication {
                    Some(s) => ReplicationConfig::from_stored(s)?,
                    None => ReplicationConfig::default(),
                };
                b.replication = Some(stored);
                tx.put_bucket(&b)?;
                // Jobs in flight may now belong to no rule: they read the bucket again.
                ferry_store::replication::snapshots_stale(tx);
                // A rule that starts replicating existing objects starts a backfill (once: not
                // again when the same rule is put again).
                for id in backfill_rules {
                    if !before.rules.iter().any(|r| r.id == id && r.enabled && r.existing_objects) {
                        backfill::start(tx, &name, Some(&id), "", StatusFilter::None, None)?;
                    }
                }
                Ok(())
            })
            .await
            .s3()?;
        let mut resp = S3Response::new(PutBucketReplicationOutput::default());
        if same_region {
            resp.headers.insert("x-ferry-same-region-replication", http::HeaderValue::from_static("true"));
            tracing::info!(bucket = %bucket.name, "same-region replication configured");
        }
        Ok(resp)
    }

    /// Refuses configurations that close a replication cycle longer than a pair: follows the
    /// destinations' own replication (breadth first, up to [`MAX_CYCLE_DEPTH`] hops).
    async fn refuse_cycles(&self, peers: &dyn ReplicationEngine, source: &SourceRef, rules: &[Rule]) -> S3Result<()> {
        let origin = (self.region.clone(), source.bucket.clone());
        for rule in rules.iter().filter(|r| r.enabled) {
            let start = (rule.destination.peer.clone(), rule.destination.bucket.clone());
            let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
            let mut queue: VecDeque<(Vec<(String, String)>, usize)> = VecDeque::from([(vec![start], 1)]);
            while let Some((path, depth)) = queue.pop_front() {
                let Some(node) = path.last().cloned() else { continue };
                if depth > MAX_CYCLE_DEPTH || !seen.insert(node.clone()) {
                    continue;
                }
                for next in peers.destinations_of(source, &node.0, &node.1).await {
                    if next == origin {
                        if path.len() >= 2 {
                            let chain: Vec<String> = std::iter::once(&origin)
                                .chain(path.iter())
                                .chain(std::iter::once(&origin))
                                .map(|(r, b)| format!("{b}@{r}"))
                                .collect();
                            return Err(s3_error!(
                                InvalidRequest,
                                "Rule {}: this would create a replication cycle {} (only two buckets may replicate to each other)",
                                rule.id,
                                chain.join(" -> ")
                            ));
                        }
                        continue;
                    }
                    let mut p = path.clone();
                    p.push(next);
                    queue.push_back((p, depth + 1));
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn get_bucket_replication(
        &self,
        req: S3Request<GetBucketReplicationInput>,
    ) -> S3Result<S3Response<GetBucketReplicationOutput>> {
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(stored) = bucket.replication else {
            return Err(s3_error!(
                ReplicationConfigurationNotFoundError,
                "The replication configuration was not found"
            ));
        };
        let cfg = ReplicationConfig::from_stored(&stored).s3()?;
        Ok(S3Response::new(GetBucketReplicationOutput {
            replication_configuration: Some(ReplicationConfiguration {
                role: cfg.role.clone(),
                rules: cfg.rules.iter().map(rule_to_dto).collect(),
            }),
        }))
    }

    pub(crate) async fn delete_bucket_replication(
        &self,
        req: S3Request<DeleteBucketReplicationInput>,
    ) -> S3Result<S3Response<DeleteBucketReplicationOutput>> {
        let bucket = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let name = bucket.name;
        let n = name.clone();
        let last_job = self
            .store
            .meta
            .write(move |tx| {
                let mut b = tx.lock_bucket(&n)?.ok_or(StoreError::NoSuchBucket)?;
                b.replication = None;
                tx.put_bucket(&b)?;
                ferry_store::replication::snapshots_stale(tx);
                // Nothing is left to replicate to: the bucket's backfills end here.
                backfill::cancel_all(tx, &n)?;
                tx.max_job_id()
            })
            .await
            .s3()?;
        // Jobs of the removed rules are dropped, a batch per transaction (a backlog of millions
        // never holds the writer); their versions no longer claim a status they will not reach.
        // Only jobs recorded before the removal: a configuration put meanwhile keeps its own.
        loop {
            let n = name.clone();
            let dropped = self.store.meta.write(move |tx| drop_jobs(tx, &n, last_job, JOB_BATCH)).await.s3()?;
            if dropped == 0 {
                break;
            }
        }
        let mut resp = S3Response::new(DeleteBucketReplicationOutput::default());
        resp.status = Some(http::StatusCode::NO_CONTENT);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns() {
        assert_eq!(parse_arn("arn:aws:s3:::bk1").unwrap(), (None, "bk1".to_owned()));
        assert_eq!(
            parse_arn("arn:aws:s3:eu-west-1::bk1").unwrap(),
            (Some("eu-west-1".to_owned()), "bk1".to_owned())
        );
        assert_eq!(parse_arn("arn:aws:s3:eu-west-1:123456789012:bk1").unwrap().1, "bk1");
        for bad in ["bk1", "arn:aws:s3:::", "arn:aws:s3:::B_1", "arn:aws:sqs:::bk1", "arn:aws:s3:::bk1/x"] {
            assert!(parse_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlaps() {
        let f = |p: &str| RuleFilter { prefix: p.into(), tags: Vec::new() };
        assert!(overlap(&f(""), &f("a/")));
        assert!(overlap(&f("a/b"), &f("a/")));
        assert!(!overlap(&f("a/"), &f("b/")));
    }
}
