//! Put/Get/DeleteBucketLifecycleConfiguration: S3's lifecycle XML checked and kept as
//! [`ferry_store::lifecycle`] rules (which decide what expires; the lifecycle worker acts).
//!
//! # Invariants
//! 1. A configuration is refused whole, with S3's error and a message naming the rule, unless
//!    every rule is one Ferry carries out exactly: what is stored is what will happen.
//! 2. Transitions go only to the classes S3 moves versions to
//!    ([`ferry_store::lifecycle::TRANSITION_CLASSES`]), each class once per rule and further
//!    down that order the later it is due; they change the storage class a version is listed
//!    with, nothing else (every class of Ferry lives on the same disks).
//! 3. Reading a configuration gives back what was put (rule ids generated for rules without one).

use ferry_store::lifecycle::{
    Expiration, LifecycleFilter, LifecycleRule, NoncurrentExpiration, NoncurrentTransition, TRANSITION_CLASSES, TransitionTime,
    class_rank,
};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use crate::FerryS3;
use crate::perm::Perm;

/// Rules per configuration, as S3 allows.
const MAX_RULES: usize = 1000;
/// The longest rule id S3 takes.
const MAX_ID_LEN: usize = 255;
/// `NewerNoncurrentVersions` S3 takes.
const MAX_NEWER_VERSIONS: i32 = 100;

impl FerryS3 {
    pub(crate) async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<PutBucketLifecycleConfigurationOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let config =
            req.input.lifecycle_configuration.ok_or_else(|| s3_error!(MalformedXML, "The lifecycle configuration is missing"))?;
        let rules = rules_from(config.rules)?;
        self.update_bucket(b.name, move |bucket| bucket.config.lifecycle = Some(rules)).await?;
        Ok(S3Response::new(PutBucketLifecycleConfigurationOutput::default()))
    }

    pub(crate) async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<GetBucketLifecycleConfigurationOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        let Some(rules) = b.config.lifecycle else {
            return Err(s3_error!(NoSuchLifecycleConfiguration, "The lifecycle configuration does not exist"));
        };
        Ok(S3Response::new(GetBucketLifecycleConfigurationOutput {
            rules: Some(rules.iter().map(rule_dto).collect()),
            ..Default::default()
        }))
    }

    pub(crate) async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<DeleteBucketLifecycleOutput>> {
        let b = self.bucket_for(&req, &req.input.bucket, Perm::Owner).await?;
        self.update_bucket(b.name, |bucket| bucket.config.lifecycle = None).await?;
        Ok(S3Response::with_status(
            DeleteBucketLifecycleOutput::default(),
            http::StatusCode::NO_CONTENT,
        ))
    }
}

/// `x-amz-expiration` for `v` of `bucket`: `expiry-date="<HTTP date>", rule-id="<id>"` when a
/// rule expires it; only current versions (not delete markers) have one.
pub(crate) fn expiration_header(
    bucket: &ferry_store::model::BucketRecord,
    v: &ferry_store::model::VersionRecord,
    day_us: i64,
) -> Option<String> {
    let rules = bucket.config.lifecycle.as_deref()?;
    if !v.is_latest || v.delete_marker {
        return None;
    }
    let subject = ferry_store::lifecycle::Subject { key: &v.key, tags: &v.attrs.tags, size: v.size };
    let (at_us, rule) = ferry_store::lifecycle::current_expiry(rules, &subject, v.mtime_us, day_us)?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(at_us).ok()?);
    // The id as S3 sends it: percent-encoded, so any id is a valid header value.
    let rule = crate::dto::query_encode(rule);
    Some(format!("expiry-date=\"{}\", rule-id=\"{rule}\"", httpdate::fmt_http_date(at)))
}

/// Checks S3's rules and converts them.
pub(crate) fn rules_from(rules: Vec<s3s::dto::LifecycleRule>) -> S3Result<Vec<LifecycleRule>> {
    if rules.is_empty() || rules.len() > MAX_RULES {
        return Err(s3_error!(MalformedXML, "A lifecycle configuration has 1 to {MAX_RULES} rules"));
    }
    let mut out: Vec<LifecycleRule> = Vec::with_capacity(rules.len());
    let given: Vec<String> = rules.iter().filter_map(|r| r.id.clone()).collect();
    for (n, r) in rules.into_iter().enumerate() {
        let mut rule = rule_from(r, n)?;
        // S3 makes up an id for a rule without one; a stable one keeps a re-put configuration
        // the same. It never takes an id the configuration gives another rule.
        if rule.id.is_empty() {
            let mut k = n + 1;
            while given.contains(&format!("rule-{k}")) || out.iter().any(|o| o.id == format!("rule-{k}")) {
                k += 1;
            }
            rule.id = format!("rule-{k}");
        }
        if out.iter().any(|o| o.id == rule.id) {
            return Err(s3_error!(
                InvalidArgument,
                "Rule ID must be unique. Found same ID for more than one rule: {}",
                rule.id
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

/// One rule; its id is left empty when the configuration gives none (see [`rules_from`]).
fn rule_from(r: s3s::dto::LifecycleRule, n: usize) -> S3Result<LifecycleRule> {
    let given_id = r.id.unwrap_or_default();
    if given_id.len() > MAX_ID_LEN {
        return Err(s3_error!(InvalidArgument, "ID length should not exceed allowed limit of {MAX_ID_LEN}"));
    }
    if given_id.chars().any(char::is_control) {
        return Err(s3_error!(InvalidArgument, "Rule ID must not contain control characters"));
    }
    // In messages: the rule by its id, or by its place.
    let id = if given_id.is_empty() { format!("number {}", n + 1) } else { given_id.clone() };
    let enabled = match r.status.as_str() {
        ExpirationStatus::ENABLED => true,
        ExpirationStatus::DISABLED => false,
        other => return Err(s3_error!(MalformedXML, "Rule {id}: Status must be Enabled or Disabled, not {other}")),
    };
    let filter = match (r.filter, r.prefix) {
        (Some(_), Some(_)) => return Err(s3_error!(MalformedXML, "Rule {id}: give Filter or Prefix, not both")),
        (Some(f), None) => filter_from(f, &id)?,
        (None, Some(prefix)) => LifecycleFilter { prefix, legacy_prefix: true, ..LifecycleFilter::default() },
        (None, None) => LifecycleFilter::default(),
    };
    let days = |d: i32, what: &str| {
        u32::try_from(d)
            .ok()
            .filter(|d| *d > 0)
            .ok_or_else(|| s3_error!(InvalidArgument, "Rule {id}: '{what}' must be a positive integer"))
    };
    let expiration = match r.expiration {
        None => None,
        // "Do not remove expired delete markers", alone: no expiration.
        Some(e) if e.days.is_none() && e.date.is_none() && e.expired_object_delete_marker == Some(false) => None,
        Some(e) => Some(match (e.days, e.date, e.expired_object_delete_marker) {
            (Some(d), None, None | Some(false)) => Expiration::Days(days(d, "Days")?),
            (None, Some(date), None | Some(false)) => Expiration::Date(midnight(&date, &id)?),
            (None, None, Some(true)) => {
                if !filter.tags.is_empty() || filter.size_greater_than.is_some() || filter.size_less_than.is_some() {
                    return Err(s3_error!(
                        InvalidRequest,
                        "Rule {id}: ExpiredObjectDeleteMarker cannot be specified with tags or object sizes"
                    ));
                }
                Expiration::ExpiredDeleteMarker
            }
            _ => {
                return Err(s3_error!(
                    MalformedXML,
                    "Rule {id}: Expiration takes one of Days, Date and ExpiredObjectDeleteMarker"
                ));
            }
        }),
    };
    let noncurrent = match r.noncurrent_version_expiration {
        None => None,
        Some(n) => {
            let d = n.noncurrent_days.ok_or_else(|| s3_error!(MalformedXML, "Rule {id}: NoncurrentDays is missing"))?;
            let newer_versions = newer_versions(n.newer_noncurrent_versions, &id)?;
            Some(NoncurrentExpiration { days: days(d, "NoncurrentDays")?, newer_versions })
        }
    };
    let abort_incomplete_days = match r.abort_incomplete_multipart_upload.map(|a| a.days_after_initiation) {
        None => None,
        Some(None) => {
            return Err(s3_error!(
                MalformedXML,
                "Rule {id}: AbortIncompleteMultipartUpload needs DaysAfterInitiation"
            ));
        }
        Some(_) if !filter.tags.is_empty() || filter.size_greater_than.is_some() || filter.size_less_than.is_some() => {
            return Err(s3_error!(
                InvalidRequest,
                "Rule {id}: AbortIncompleteMultipartUpload cannot be specified with tags or object sizes"
            ));
        }
        Some(Some(d)) => Some(days(d, "DaysAfterInitiation")?),
    };
    let transitions = transitions_from(r.transitions.unwrap_or_default(), expiration, &id)?;
    let noncurrent_transitions =
        noncurrent_transitions_from(r.noncurrent_version_transitions.unwrap_or_default(), noncurrent, &id)?;
    if expiration.is_none()
        && noncurrent.is_none()
        && abort_incomplete_days.is_none()
        && transitions.is_empty()
        && noncurrent_transitions.is_empty()
    {
        return Err(s3_error!(
            InvalidRequest,
            "Rule {id}: at least one action needs to be specified in a rule"
        ));
    }
    Ok(LifecycleRule {
        id: given_id,
        enabled,
        filter,
        expiration,
        noncurrent,
        abort_incomplete_days,
        transitions,
        noncurrent_transitions,
    })
}

/// A transition's storage class: one S3 moves versions to.
fn transition_class(class: Option<TransitionStorageClass>, id: &str) -> S3Result<String> {
    let class = class.ok_or_else(|| s3_error!(MalformedXML, "Rule {id}: a transition needs a StorageClass"))?;
    match TRANSITION_CLASSES.iter().find(|c| **c == class.as_str()) {
        Some(c) => Ok((*c).to_owned()),
        None => Err(s3_error!(
            InvalidStorageClass,
            "Rule {id}: versions can be moved to {} only, not {}",
            TRANSITION_CLASSES.join(", "),
            class.as_str()
        )),
    }
}

/// Transition days: 0 or more.
fn transition_days(d: Option<i32>, what: &str, id: &str) -> S3Result<Option<u32>> {
    d.map(|d| u32::try_from(d).map_err(|_| s3_error!(InvalidArgument, "Rule {id}: '{what}' must not be negative"))).transpose()
}

/// Transitions in one rule: each class once, the later the further down S3's order (so
/// sorted by class gives them in time order), and `what` their times are called in messages.
fn check_transition_order<T>(
    list: &mut [T],
    class: impl Fn(&T) -> &str,
    at: impl Fn(&T) -> i64,
    what: &str,
    id: &str,
) -> S3Result<()> {
    list.sort_by_key(|t| class_rank(Some(class(t))));
    for w in list.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if class(a) == class(b) {
            return Err(s3_error!(
                InvalidRequest,
                "Rule {id}: 'StorageClass' must be different for each transition of a rule: {} is given twice",
                class(a)
            ));
        }
        if at(a) >= at(b) {
            return Err(s3_error!(
                InvalidArgument,
                "Rule {id}: '{what}' of the transition to {} must be later than that of the transition to {}",
                class(b),
                class(a)
            ));
        }
    }
    Ok(())
}

/// A rule's `Transition`s: by days or by dates (not both), before its expiration.
fn transitions_from(
    list: Vec<s3s::dto::Transition>,
    expiration: Option<Expiration>,
    id: &str,
) -> S3Result<Vec<ferry_store::lifecycle::Transition>> {
    let mut out = list
        .into_iter()
        .map(|t| {
            let when = match (transition_days(t.days, "Days", id)?, t.date) {
                (Some(d), None) => TransitionTime::Days(d),
                (None, Some(date)) => TransitionTime::Date(midnight(&date, id)?),
                _ => return Err(s3_error!(MalformedXML, "Rule {id}: a Transition takes one of Days and Date")),
            };
            Ok(ferry_store::lifecycle::Transition { when, storage_class: transition_class(t.storage_class, id)? })
        })
        .collect::<S3Result<Vec<_>>>()?;
    let by_days = |t: &ferry_store::lifecycle::Transition| matches!(t.when, TransitionTime::Days(_));
    if out.iter().any(by_days) && !out.iter().all(by_days) {
        return Err(s3_error!(
            InvalidRequest,
            "Rule {id}: found mixed 'Date' and 'Days' based Transition actions"
        ));
    }
    let at = |t: &ferry_store::lifecycle::Transition| match t.when {
        TransitionTime::Days(d) => i64::from(d),
        TransitionTime::Date(us) => us,
    };
    check_transition_order(&mut out, |t| &t.storage_class, at, "Days' or 'Date", id)?;
    let too_late = |t: &ferry_store::lifecycle::Transition| match (t.when, expiration) {
        (TransitionTime::Days(d), Some(Expiration::Days(e))) => d >= e,
        (TransitionTime::Date(d), Some(Expiration::Date(e))) => d >= e,
        _ => false,
    };
    if out.iter().any(too_late) {
        return Err(s3_error!(
            InvalidArgument,
            "Rule {id}: the Expiration must come after every Transition of the rule"
        ));
    }
    Ok(out)
}

/// A rule's `NoncurrentVersionTransition`s, before its noncurrent expiration.
fn noncurrent_transitions_from(
    list: Vec<s3s::dto::NoncurrentVersionTransition>,
    expiration: Option<NoncurrentExpiration>,
    id: &str,
) -> S3Result<Vec<NoncurrentTransition>> {
    let mut out = list
        .into_iter()
        .map(|t| {
            let days = transition_days(t.noncurrent_days, "NoncurrentDays", id)?
                .ok_or_else(|| s3_error!(MalformedXML, "Rule {id}: a NoncurrentVersionTransition needs NoncurrentDays"))?;
            Ok(NoncurrentTransition {
                days,
                newer_versions: newer_versions(t.newer_noncurrent_versions, id)?,
                storage_class: transition_class(t.storage_class, id)?,
            })
        })
        .collect::<S3Result<Vec<_>>>()?;
    check_transition_order(&mut out, |t| &t.storage_class, |t| i64::from(t.days), "NoncurrentDays", id)?;
    if let Some(e) = expiration
        && out.iter().any(|t| t.days >= e.days)
    {
        return Err(s3_error!(
            InvalidArgument,
            "Rule {id}: the NoncurrentVersionExpiration must come after every NoncurrentVersionTransition of the rule"
        ));
    }
    Ok(out)
}

/// `NewerNoncurrentVersions`, if given: 1 to [`MAX_NEWER_VERSIONS`].
fn newer_versions(k: Option<i32>, id: &str) -> S3Result<Option<u32>> {
    match k {
        None => Ok(None),
        Some(k) if (1..=MAX_NEWER_VERSIONS).contains(&k) => Ok(u32::try_from(k).ok()),
        Some(_) => Err(s3_error!(
            InvalidArgument,
            "Rule {id}: NewerNoncurrentVersions must be between 1 and {MAX_NEWER_VERSIONS}"
        )),
    }
}

/// A rule's filter: one of a prefix, a tag, a size bound, or `And` of several.
fn filter_from(f: LifecycleRuleFilter, id: &str) -> S3Result<LifecycleFilter> {
    let others =
        f.prefix.is_some() || f.tag.is_some() || f.object_size_greater_than.is_some() || f.object_size_less_than.is_some();
    // Several conditions without `And` (`<Filter><Prefix>..</Prefix><Tag>..</Tag></Filter>`):
    // S3 wants `And`; Ceph and the clients written for it send this, and its meaning is the
    // same, so it is taken as `And`.
    let (prefix, tags, gt, lt) = match f.and {
        Some(_) if others => {
            return Err(s3_error!(MalformedXML, "Rule {id}: a Filter with And must have nothing beside it"));
        }
        Some(a) => (a.prefix, a.tags.unwrap_or_default(), a.object_size_greater_than, a.object_size_less_than),
        None => (f.prefix, f.tag.into_iter().collect(), f.object_size_greater_than, f.object_size_less_than),
    };
    let size = |n: Option<i64>| {
        n.map(|n| u64::try_from(n).map_err(|_| s3_error!(InvalidArgument, "Rule {id}: object sizes are not negative")))
            .transpose()
    };
    let tags = tags
        .into_iter()
        .map(|t| match (t.key, t.value) {
            (Some(k), v) if !k.is_empty() => Ok((k, v.unwrap_or_default())),
            _ => Err(s3_error!(InvalidArgument, "Rule {id}: a tag needs a key")),
        })
        .collect::<S3Result<Vec<_>>>()?;
    if let Some((k, _)) = tags.iter().enumerate().find_map(|(i, t)| tags[..i].iter().any(|o| o.0 == t.0).then_some(t)) {
        return Err(s3_error!(InvalidArgument, "Rule {id}: the tag key {k} is given twice"));
    }
    let filter = LifecycleFilter {
        prefix: prefix.unwrap_or_default(),
        tags,
        size_greater_than: size(gt)?,
        size_less_than: size(lt)?,
        legacy_prefix: false,
    };
    if let (Some(gt), Some(lt)) = (filter.size_greater_than, filter.size_less_than)
        && gt >= lt
    {
        return Err(s3_error!(
            InvalidArgument,
            "Rule {id}: ObjectSizeGreaterThan must be less than ObjectSizeLessThan"
        ));
    }
    Ok(filter)
}

/// An expiration date, which S3 takes only at midnight UTC, in microseconds.
fn midnight(date: &Timestamp, id: &str) -> S3Result<i64> {
    let mut text = Vec::new();
    date.format(TimestampFormat::DateTime, &mut text)
        .map_err(|_| s3_error!(InvalidArgument, "Rule {id}: the Date is not valid"))?;
    let text = String::from_utf8_lossy(&text);
    let t = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| s3_error!(InvalidArgument, "Rule {id}: the Date is not valid"))?;
    let us = i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| s3_error!(InvalidArgument, "Rule {id}: the Date is out of range"))?;
    if us.rem_euclid(ferry_store::lifecycle::DAY_US) != 0 {
        return Err(s3_error!(InvalidArgument, "Rule {id}: 'Date' must be at midnight GMT"));
    }
    Ok(us)
}

/// A stored rule as S3's.
pub(crate) fn rule_dto(r: &LifecycleRule) -> s3s::dto::LifecycleRule {
    let f = &r.filter;
    // Given as the rule's `Prefix` (before filters existed), it comes back so.
    let (filter, prefix) = if f.legacy_prefix { (None, Some(f.prefix.clone())) } else { (Some(filter_dto(f)), None) };
    let days = |d: u32| i32::try_from(d).ok();
    s3s::dto::LifecycleRule {
        id: Some(r.id.clone()),
        status: ExpirationStatus::from(if r.enabled { ExpirationStatus::ENABLED } else { ExpirationStatus::DISABLED }.to_owned()),
        filter,
        prefix,
        expiration: r.expiration.map(|e| match e {
            Expiration::Days(d) => LifecycleExpiration { days: days(d), ..Default::default() },
            Expiration::Date(us) => LifecycleExpiration { date: timestamp(us), ..Default::default() },
            Expiration::ExpiredDeleteMarker => {
                LifecycleExpiration { expired_object_delete_marker: Some(true), ..Default::default() }
            }
        }),
        noncurrent_version_expiration: r.noncurrent.map(|n| NoncurrentVersionExpiration {
            noncurrent_days: days(n.days),
            newer_noncurrent_versions: n.newer_versions.and_then(days),
        }),
        abort_incomplete_multipart_upload: r
            .abort_incomplete_days
            .map(|d| AbortIncompleteMultipartUpload { days_after_initiation: days(d) }),
        del_marker_expiration: None,
        noncurrent_version_transitions: (!r.noncurrent_transitions.is_empty()).then(|| {
            r.noncurrent_transitions
                .iter()
                .map(|t| NoncurrentVersionTransition {
                    noncurrent_days: days(t.days),
                    newer_noncurrent_versions: t.newer_versions.and_then(days),
                    storage_class: Some(TransitionStorageClass::from(t.storage_class.clone())),
                })
                .collect()
        }),
        transitions: (!r.transitions.is_empty()).then(|| {
            r.transitions
                .iter()
                .map(|t| {
                    let (days, date) = match t.when {
                        TransitionTime::Days(d) => (days(d), None),
                        TransitionTime::Date(us) => (None, timestamp(us)),
                    };
                    s3s::dto::Transition {
                        days,
                        date,
                        storage_class: Some(TransitionStorageClass::from(t.storage_class.clone())),
                    }
                })
                .collect()
        }),
    }
}

/// A stored filter as S3's `Filter`: one condition alone, several under `And`.
fn filter_dto(f: &LifecycleFilter) -> LifecycleRuleFilter {
    let tag = |(k, v): &(String, String)| Tag { key: Some(k.clone()), value: Some(v.clone()) };
    let sized = |n: Option<u64>| n.and_then(|n| i64::try_from(n).ok());
    let parts = usize::from(!f.prefix.is_empty())
        + f.tags.len()
        + usize::from(f.size_greater_than.is_some())
        + usize::from(f.size_less_than.is_some());
    if parts > 1 {
        LifecycleRuleFilter {
            and: Some(LifecycleRuleAndOperator {
                prefix: (!f.prefix.is_empty()).then(|| f.prefix.clone()),
                tags: (!f.tags.is_empty()).then(|| f.tags.iter().map(tag).collect()),
                object_size_greater_than: sized(f.size_greater_than),
                object_size_less_than: sized(f.size_less_than),
            }),
            ..Default::default()
        }
    } else {
        LifecycleRuleFilter {
            prefix: Some(f.prefix.clone()).filter(|p| !p.is_empty() || parts == 0),
            tag: f.tags.first().map(tag),
            object_size_greater_than: sized(f.size_greater_than),
            object_size_less_than: sized(f.size_less_than),
            ..Default::default()
        }
    }
}

/// Microseconds since the epoch as an s3s timestamp.
fn timestamp(us: i64) -> Option<Timestamp> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()?;
    Some(Timestamp::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::xml::Deserialize as _;

    fn parse(xml: &str) -> S3Result<Vec<LifecycleRule>> {
        let mut d = s3s::xml::Deserializer::new(xml.as_bytes());
        let cfg = BucketLifecycleConfiguration::deserialize(&mut d).expect("XML");
        rules_from(cfg.rules)
    }

    /// The fuzz corpus's seed is a configuration Ferry takes (so the fuzzer starts from rules
    /// that get through), and every form of filter comes back as it went in.
    #[test]
    fn every_form_of_rule_survives_its_xml() {
        let seed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/lifecycle_xml/full.xml"));
        let rules = parse(&seed.expect("seed")).expect("taken");
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[1].filter.tags, [("temp".to_owned(), "yes".to_owned())]);
        assert_eq!(
            (rules[1].filter.size_greater_than, rules[1].filter.size_less_than),
            (Some(10), Some(1000))
        );
        assert_eq!(rules[1].expiration, Some(Expiration::Date(1_893_456_000_000_000)));
        assert_eq!(rules[2].id, "rule-3");
        assert_eq!(rules[3].filter.prefix, "old/");
        // Transitions are kept in the order they happen, whatever the order given.
        let classes: Vec<_> = rules[0].transitions.iter().map(|t| (t.when, t.storage_class.as_str())).collect();
        assert_eq!(classes, [(TransitionTime::Days(0), "STANDARD_IA"), (TransitionTime::Days(7), "GLACIER")]);
        assert_eq!(rules[2].noncurrent_transitions[0].storage_class, "GLACIER_IR");
        let again = rules_from(rules.iter().map(rule_dto).collect()).expect("taken back");
        assert_eq!(again, rules);
        // The rule's own Prefix (S3's older form) comes back in that form.
        let legacy = rule_dto(&rules[3]);
        assert_eq!((legacy.prefix.as_deref(), legacy.filter.is_none()), (Some("old/"), true));
    }

    /// Several conditions in a Filter without `And` (as Ceph and its clients write them) mean
    /// their conjunction; beside an `And` they are refused.
    #[test]
    fn a_filter_without_and_is_the_conjunction_of_its_conditions() {
        let rule = |filter: &str| {
            format!(
                "<LifecycleConfiguration><Rule><ID>r</ID><Status>Enabled</Status><Filter>{filter}</Filter>\
                 <Expiration><Days>1</Days></Expiration></Rule></LifecycleConfiguration>"
            )
        };
        let rules = parse(&rule(
            "<Prefix>p/</Prefix><Tag><Key>k</Key><Value>v</Value></Tag><ObjectSizeGreaterThan>5</ObjectSizeGreaterThan>",
        ))
        .expect("taken");
        let f = &rules[0].filter;
        assert_eq!((f.prefix.as_str(), f.tags.len(), f.size_greater_than), ("p/", 1, Some(5)));
        assert!(rule_dto(&rules[0]).filter.and_then(|f| f.and).is_some(), "answered with And");
        let e = parse(&rule("<And><Prefix>a/</Prefix></And><Prefix>b/</Prefix>")).unwrap_err();
        assert_eq!(e.code(), &s3s::S3ErrorCode::MalformedXML);
    }
}
