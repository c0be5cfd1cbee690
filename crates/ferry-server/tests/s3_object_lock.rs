//! Object Lock through aws-sdk-s3: buckets with it, retention and legal holds on versions,
//! what they refuse, who may bypass governance, what lifecycle rules do to locked versions, and
//! how locks travel with replication.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    BucketVersioningStatus, CompletedMultipartUpload, CompletedPart, DefaultRetention, Delete, ExpirationStatus, LifecycleRule,
    LifecycleRuleFilter, NoncurrentVersionExpiration, ObjectIdentifier, ObjectLockConfiguration, ObjectLockEnabled,
    ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode, ObjectLockRule,
    VersioningConfiguration,
};

use crate::common::*;

/// Seconds since the epoch, `days` from now.
fn in_days(days: i64) -> DateTime {
    DateTime::from_secs(now_us() / 1_000_000 + days * 86_400)
}

async fn create_locked_bucket(c: &Client, b: &str) {
    c.create_bucket().bucket(b).object_lock_enabled_for_bucket(true).send().await.expect("create a locked bucket");
}

fn retention(mode: ObjectLockRetentionMode, until: DateTime) -> ObjectLockRetention {
    ObjectLockRetention::builder().mode(mode).retain_until_date(until).build()
}

async fn set_retention(c: &Client, b: &str, key: &str, r: ObjectLockRetention, bypass: bool) -> Result<(), String> {
    c.put_object_retention()
        .bucket(b)
        .key(key)
        .retention(r)
        .set_bypass_governance_retention(bypass.then_some(true))
        .send()
        .await
        .map(drop)
        .map_err(|e| code(&e))
}

async fn set_hold(c: &Client, b: &str, key: &str, version: Option<&str>, on: bool) {
    let status = if on { ObjectLockLegalHoldStatus::On } else { ObjectLockLegalHoldStatus::Off };
    c.put_object_legal_hold()
        .bucket(b)
        .key(key)
        .set_version_id(version.map(str::to_owned))
        .legal_hold(ObjectLockLegalHold::builder().status(status).build())
        .send()
        .await
        .expect("put a legal hold");
}

async fn delete_version(c: &Client, b: &str, key: &str, version: &str, bypass: bool) -> Result<(), String> {
    c.delete_object()
        .bucket(b)
        .key(key)
        .version_id(version)
        .set_bypass_governance_retention(bypass.then_some(true))
        .send()
        .await
        .map(drop)
        .map_err(|e| code(&e))
}

/// PUTs `key` with a retention (`mode` until a date) and a legal hold if `hold`: the new
/// version's id, or the error code.
async fn put_locked(
    c: &Client,
    b: &str,
    key: &str,
    retention: Option<(ObjectLockMode, DateTime)>,
    hold: bool,
) -> Result<String, String> {
    let (mode, until) = retention.unzip();
    c.put_object()
        .bucket(b)
        .key(key)
        .body(b"locked".to_vec().into())
        .set_object_lock_mode(mode)
        .set_object_lock_retain_until_date(until)
        .set_object_lock_legal_hold_status(hold.then_some(ObjectLockLegalHoldStatus::On))
        .send()
        .await
        .map(|out| out.version_id().unwrap_or_default().to_owned())
        .map_err(|e| code(&e))
}

fn default_rule(mode: ObjectLockRetentionMode, days: i32) -> ObjectLockConfiguration {
    ObjectLockConfiguration::builder()
        .object_lock_enabled(ObjectLockEnabled::Enabled)
        .rule(ObjectLockRule::builder().default_retention(DefaultRetention::builder().mode(mode).days(days).build()).build())
        .build()
}

/// Retention and legal holds refuse what S3 refuses, to everyone S3 refuses it to; a delete
/// marker may always go on top; governance yields only to a bypass its principal may make.
#[tokio::test]
async fn locked_versions_refuse_what_s3_refuses() {
    let s = TestServer::start().await;
    let (c, alt) = (s.client(), s.alt_client());
    let b = bucket_name("lock");
    create_locked_bucket(&c, &b).await;
    let v = c.get_bucket_versioning().bucket(&b).send().await.unwrap();
    assert_eq!(v.status(), Some(&BucketVersioningStatus::Enabled), "Object Lock enables versioning");
    let suspend = c
        .put_bucket_versioning()
        .bucket(&b)
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Suspended).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&suspend), "InvalidBucketState");
    let cfg = c.get_object_lock_configuration().bucket(&b).send().await.unwrap();
    let cfg = cfg.object_lock_configuration().unwrap();
    assert_eq!((cfg.object_lock_enabled(), cfg.rule()), (Some(&ObjectLockEnabled::Enabled), None));

    // A governance retention and a legal hold, given at PUT, show on HEAD.
    let until = in_days(1);
    let gov = put_locked(&c, &b, "gov", Some((ObjectLockMode::Governance, until)), true).await.unwrap();
    let gov_v = gov;
    let head = c.head_object().bucket(&b).key("gov").send().await.unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Governance));
    assert_eq!(head.object_lock_retain_until_date().map(DateTime::secs), Some(until.secs()));
    assert_eq!(head.object_lock_legal_hold_status(), Some(&ObjectLockLegalHoldStatus::On));
    // The legal hold refuses even the owner's bypass; then governance refuses without one.
    assert_eq!(delete_version(&c, &b, "gov", &gov_v, true).await, Err("AccessDenied".into()));
    set_hold(&c, &b, "gov", None, false).await;
    assert_eq!(delete_version(&c, &b, "gov", &gov_v, false).await, Err("AccessDenied".into()));
    // A delete marker is not a removal: it goes on top of the locked version.
    let marker = c.delete_object().bucket(&b).key("gov").send().await.unwrap();
    assert_eq!(marker.delete_marker(), Some(true));
    assert_eq!(delete_version(&c, &b, "gov", &gov_v, false).await, Err("AccessDenied".into()));

    // Another account allowed to delete versions may not bypass governance unless the policy
    // also allows s3:BypassGovernanceRetention.
    let alt_id = account_of(ALT_AK);
    let policy = |actions: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"{alt_id}"}},"Action":[{actions}],"Resource":"arn:aws:s3:::{b}/*"}}]}}"#
        )
    };
    c.put_bucket_policy().bucket(&b).policy(policy(r#""s3:DeleteObjectVersion""#)).send().await.unwrap();
    assert_eq!(delete_version(&alt, &b, "gov", &gov_v, true).await, Err("AccessDenied".into()));
    c.put_bucket_policy()
        .bucket(&b)
        .policy(policy(r#""s3:DeleteObjectVersion","s3:BypassGovernanceRetention""#))
        .send()
        .await
        .unwrap();
    assert_eq!(delete_version(&alt, &b, "gov", &gov_v, true).await, Ok(()));
    // DeleteObjects judges the bypass per key, against the object's ARN the policy names.
    let g3 = put_locked(&c, &b, "gov3", Some((ObjectLockMode::Governance, in_days(1))), false).await.unwrap();
    let id = ObjectIdentifier::builder().key("gov3").version_id(g3).build().unwrap();
    let out = alt
        .delete_objects()
        .bucket(&b)
        .bypass_governance_retention(true)
        .delete(Delete::builder().objects(id).build().unwrap())
        .send()
        .await
        .unwrap();
    assert!(out.errors().is_empty(), "{:?}", out.errors());
    assert_eq!(out.deleted().len(), 1);
    // Writing with lock headers takes the right to set them, not only the right to write.
    let alt_lock = || put_locked(&alt, &b, "alt-locked", Some((ObjectLockMode::Compliance, in_days(3650))), false);
    c.put_bucket_policy().bucket(&b).policy(policy(r#""s3:PutObject""#)).send().await.unwrap();
    assert_eq!(alt_lock().await, Err("AccessDenied".into()));
    assert_eq!(put_locked(&alt, &b, "alt-held", None, true).await, Err("AccessDenied".into()));
    put(&alt, &b, "alt-plain", b"a").await;
    // Allowed to lock for 30 days at most: the policy reads the write's lock headers.
    let capped = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Principal":{{"AWS":"{alt_id}"}},"Action":"s3:PutObject","Resource":"arn:aws:s3:::{b}/*"}},
            {{"Effect":"Allow","Principal":{{"AWS":"{alt_id}"}},"Action":"s3:PutObjectRetention","Resource":"arn:aws:s3:::{b}/*",
              "Condition":{{"NumericLessThanEquals":{{"s3:object-lock-remaining-retention-days":"30"}}}}}}]}}"#
    );
    c.put_bucket_policy().bucket(&b).policy(capped).send().await.unwrap();
    assert_eq!(alt_lock().await, Err("AccessDenied".into()), "3650 days under a 30-day cap");
    put_locked(&alt, &b, "alt-locked", Some((ObjectLockMode::Governance, in_days(10))), false).await.unwrap();
    // A Deny binds the owner too: no bypass for it then.
    let owner_id = account_of(MAIN_AK);
    let deny = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":{{"AWS":"{owner_id}"}},"Action":"s3:BypassGovernanceRetention","Resource":"arn:aws:s3:::{b}/*"}}]}}"#
    );
    c.put_bucket_policy().bucket(&b).policy(deny).send().await.unwrap();
    let g4 = put_locked(&c, &b, "gov4", Some((ObjectLockMode::Governance, in_days(1))), false).await.unwrap();
    assert_eq!(delete_version(&c, &b, "gov4", &g4, true).await, Err("AccessDenied".into()));
    c.delete_bucket_policy().bucket(&b).send().await.unwrap();
    assert_eq!(delete_version(&c, &b, "gov4", &g4, true).await, Ok(()));

    // Compliance: nobody shortens it, removes it, turns it into governance or bypasses it;
    // lengthening is allowed.
    let comp = put_locked(&c, &b, "comp", Some((ObjectLockMode::Compliance, in_days(2))), false).await.unwrap();
    let comp_v = comp;
    use ObjectLockRetentionMode::{Compliance, Governance};
    for (r, bypass) in [
        (retention(Compliance, in_days(1)), true),
        (retention(Governance, in_days(3)), true),
        (ObjectLockRetention::builder().build(), true),
    ] {
        assert_eq!(
            set_retention(&c, &b, "comp", r.clone(), bypass).await,
            Err("AccessDenied".into()),
            "{r:?}"
        );
    }
    set_retention(&c, &b, "comp", retention(Compliance, in_days(3)), false).await.unwrap();
    let got = c.get_object_retention().bucket(&b).key("comp").send().await.unwrap();
    assert_eq!(
        got.retention().and_then(|r| r.retain_until_date()).map(DateTime::secs),
        Some(in_days(3).secs())
    );
    assert_eq!(delete_version(&c, &b, "comp", &comp_v, true).await, Err("AccessDenied".into()));
    // Governance is shortened only with a bypass.
    let g2 = put(&c, &b, "gov2", b"x").await.version_id().unwrap().to_owned();
    set_retention(&c, &b, "gov2", retention(Governance, in_days(2)), false).await.unwrap();
    assert_eq!(
        set_retention(&c, &b, "gov2", retention(Governance, in_days(1)), false).await,
        Err("AccessDenied".into())
    );
    set_retention(&c, &b, "gov2", retention(Governance, in_days(1)), true).await.unwrap();

    // DeleteObjects answers per key: the locked one refused, the free one deleted.
    let free = put(&c, &b, "free", b"f").await.version_id().unwrap().to_owned();
    let ids = [("gov2", g2.as_str()), ("free", free.as_str())]
        .iter()
        .map(|(k, v)| ObjectIdentifier::builder().key(*k).version_id(*v).build().unwrap())
        .collect();
    let out =
        c.delete_objects().bucket(&b).delete(Delete::builder().set_objects(Some(ids)).build().unwrap()).send().await.unwrap();
    assert_eq!(out.deleted().iter().map(|d| d.key().unwrap_or_default()).collect::<Vec<_>>(), ["free"]);
    assert_eq!(
        out.errors().iter().map(|e| (e.key(), e.code())).collect::<Vec<_>>(),
        [(Some("gov2"), Some("AccessDenied"))]
    );

    // Bad lock headers, with S3's codes.
    let bad_put = |mode: Option<ObjectLockMode>, until: Option<DateTime>| {
        c.put_object()
            .bucket(&b)
            .key("bad")
            .body(b"x".to_vec().into())
            .set_object_lock_mode(mode)
            .set_object_lock_retain_until_date(until)
            .send()
    };
    for (mode, until) in [
        (Some(ObjectLockMode::Governance), None),
        (None, Some(in_days(1))),
        (Some(ObjectLockMode::Governance), Some(in_days(-1))),
    ] {
        assert_eq!(
            code(&bad_put(mode.clone(), until).await.unwrap_err()),
            "InvalidArgument",
            "{mode:?} {until:?}"
        );
    }
    assert_eq!(
        set_retention(&c, &b, "free", retention(Governance, in_days(1)), false).await,
        Err("NoSuchKey".into()),
        "the key's only version was deleted"
    );

    // Without Object Lock: lock headers and requests are refused.
    let plain = bucket_name("plain");
    create_versioned_bucket(&c, &plain).await;
    let e = c
        .put_object()
        .bucket(&plain)
        .key("k")
        .body(b"x".to_vec().into())
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    put(&c, &plain, "k", b"x").await;
    assert_eq!(
        code(&c.get_object_retention().bucket(&plain).key("k").send().await.unwrap_err()),
        "InvalidRequest"
    );
    let e = c.get_object_lock_configuration().bucket(&plain).send().await.unwrap_err();
    assert_eq!(code(&e), "ObjectLockConfigurationNotFoundError");
    // Another account may not read or change a bucket's lock settings.
    assert_eq!(
        code(&alt.get_object_lock_configuration().bucket(&b).send().await.unwrap_err()),
        "AccessDenied"
    );
    assert_eq!(
        set_retention(&alt, &b, "comp", retention(Compliance, in_days(9)), false).await,
        Err("AccessDenied".into())
    );
}

/// A bucket's default retention applies to writes that name none, counted from the version's
/// time; a copy takes the lock its request asks for, never its source's; a multipart upload
/// keeps the lock given when it was created.
#[tokio::test]
async fn default_retention_copies_and_multipart_uploads() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("lockdef");
    // Object Lock on an existing bucket: only while its versioning is enabled.
    create_bucket(&c, &b).await;
    let cfg = default_rule(ObjectLockRetentionMode::Governance, 2);
    let e = c.put_object_lock_configuration().bucket(&b).object_lock_configuration(cfg.clone()).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidBucketState");
    enable_versioning(&c, &b).await;
    c.put_object_lock_configuration().bucket(&b).object_lock_configuration(cfg).send().await.unwrap();
    let got = c.get_object_lock_configuration().bucket(&b).send().await.unwrap();
    let rule = got.object_lock_configuration().and_then(|c| c.rule()).and_then(|r| r.default_retention()).unwrap();
    assert_eq!(
        (rule.mode(), rule.days(), rule.years()),
        (Some(&ObjectLockRetentionMode::Governance), Some(2), None)
    );

    put(&c, &b, "d", b"x").await;
    let head = c.head_object().bucket(&b).key("d").send().await.unwrap();
    let written = head.last_modified().unwrap().secs();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Governance));
    assert_eq!(head.object_lock_retain_until_date().map(DateTime::secs), Some(written + 2 * 86_400));

    // A compliance-locked source, copied: the copy gets the bucket's default, not COMPLIANCE.
    put_locked(&c, &b, "src", Some((ObjectLockMode::Compliance, in_days(5))), true).await.unwrap();
    c.copy_object().bucket(&b).key("copy").copy_source(format!("{b}/src")).send().await.unwrap();
    let head = c.head_object().bucket(&b).key("copy").send().await.unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Governance));
    assert_eq!(head.object_lock_legal_hold_status(), None);

    // Multipart: the lock asked for at creation is the completed version's.
    let up = c
        .create_multipart_upload()
        .bucket(&b)
        .key("mp")
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap();
    let id = up.upload_id().unwrap();
    let part = c.upload_part().bucket(&b).key("mp").upload_id(id).part_number(1).body(b"p".to_vec().into()).send().await.unwrap();
    let done = c
        .complete_multipart_upload()
        .bucket(&b)
        .key("mp")
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(part.e_tag().unwrap()).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mp_v = done.version_id().unwrap();
    let hold = c.get_object_legal_hold().bucket(&b).key("mp").send().await.unwrap();
    assert_eq!(hold.legal_hold().and_then(|h| h.status()), Some(&ObjectLockLegalHoldStatus::On));
    assert_eq!(delete_version(&c, &b, "mp", mp_v, true).await, Err("AccessDenied".into()));
}

/// Lifecycle rules never remove a locked version: they pass it by (and count it), and remove
/// the unlocked ones of the same rule.
#[tokio::test]
async fn lifecycle_passes_locked_versions_by() {
    let s = TestServer::start_with(|o| {
        o.lifecycle.day = Duration::from_secs(1);
        o.lifecycle.interval = Duration::from_millis(100);
    })
    .await;
    let c = s.client();
    let b = bucket_name("locklc");
    create_locked_bucket(&c, &b).await;
    // "a/locked" sorts before "b/free": a pass that reached b/free has judged a/locked.
    let locked = put(&c, &b, "a/locked", b"old").await.version_id().unwrap().to_owned();
    set_hold(&c, &b, "a/locked", Some(&locked), true).await;
    let free = put(&c, &b, "b/free", b"old").await.version_id().unwrap().to_owned();
    put(&c, &b, "a/locked", b"new").await;
    put(&c, &b, "b/free", b"new").await;
    let rule = LifecycleRule::builder()
        .id("old")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .noncurrent_version_expiration(NoncurrentVersionExpiration::builder().noncurrent_days(1).build())
        .build()
        .unwrap();
    c.put_bucket_lifecycle_configuration()
        .bucket(&b)
        .lifecycle_configuration(aws_sdk_s3::types::BucketLifecycleConfiguration::builder().rules(rule).build().unwrap())
        .send()
        .await
        .unwrap();
    wait_until("the free noncurrent version is removed", 30, || async {
        !all_versions(&c, &b).await.iter().any(|v| v.version_id == free)
    })
    .await;
    assert!(
        all_versions(&c, &b).await.iter().any(|v| v.version_id == locked),
        "a locked version was removed"
    );
    assert!(s.metrics().contains("action=\"skip_locked\"}"), "{}", s.metrics());
}

/// A version's lock travels with it and with its later changes; a destination without Object
/// Lock is refused when the rule is put, and when the source would get Object Lock later.
#[tokio::test]
async fn locks_replicate_with_their_versions() {
    let cl = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (cl.client(US), cl.client(EU));
    create_locked_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    let rules = simple_rules(&["arn:aws:s3:::dst"]);
    let e = us.put_bucket_replication().bucket("src").replication_configuration(rules.clone()).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    assert!(format!("{e:?}").contains("Object Lock"), "{e:?}");
    eu.put_object_lock_configuration()
        .bucket("dst")
        .object_lock_configuration(ObjectLockConfiguration::builder().object_lock_enabled(ObjectLockEnabled::Enabled).build())
        .send()
        .await
        .unwrap();
    us.put_bucket_replication().bucket("src").replication_configuration(rules).send().await.unwrap();

    let until = in_days(3);
    let out = put_locked(&us, "src", "k", Some((ObjectLockMode::Compliance, until)), true).await.unwrap();
    let v = out;
    wait_for_version("k at dst", 30, &eu, "dst", "k", &v).await;
    let head = eu.head_object().bucket("dst").key("k").version_id(&v).send().await.unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    assert_eq!(head.object_lock_retain_until_date().map(DateTime::secs), Some(until.secs()));
    assert_eq!(head.object_lock_legal_hold_status(), Some(&ObjectLockLegalHoldStatus::On));
    assert_eq!(delete_version(&eu, "dst", "k", &v, true).await, Err("AccessDenied".into()));

    // Later changes follow: the hold released, the retention lengthened.
    set_hold(&us, "src", "k", Some(&v), false).await;
    let later = in_days(4);
    set_retention(&us, "src", "k", retention(ObjectLockRetentionMode::Compliance, later), false).await.unwrap();
    wait_until("the lock changes at dst", 30, || async {
        let h = eu.head_object().bucket("dst").key("k").version_id(&v).send().await.unwrap();
        h.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::Off)
            && h.object_lock_retain_until_date().map(DateTime::secs) == Some(later.secs())
    })
    .await;

    // Object Lock cannot be enabled on a source whose destination lacks it: every locked
    // version would fail there.
    create_versioned_bucket(&us, "src2").await;
    create_versioned_bucket(&eu, "dst2").await;
    us.put_bucket_replication()
        .bucket("src2")
        .replication_configuration(simple_rules(&["arn:aws:s3:::dst2"]))
        .send()
        .await
        .unwrap();
    let enable = || ObjectLockConfiguration::builder().object_lock_enabled(ObjectLockEnabled::Enabled).build();
    let e = us.put_object_lock_configuration().bucket("src2").object_lock_configuration(enable()).send().await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    assert!(format!("{e:?}").contains("Object Lock"), "{e:?}");
    eu.put_object_lock_configuration().bucket("dst2").object_lock_configuration(enable()).send().await.unwrap();
    us.put_object_lock_configuration().bucket("src2").object_lock_configuration(enable()).send().await.unwrap();
    let held = us
        .put_object()
        .bucket("src2")
        .key("held")
        .body(b"h".to_vec().into())
        .object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On)
        .send()
        .await
        .unwrap();
    let held = held.version_id().unwrap();
    wait_for_version("held at dst2", 30, &eu, "dst2", "held", held).await;
    let hold = eu.get_object_legal_hold().bucket("dst2").key("held").version_id(held).send().await.unwrap();
    assert_eq!(hold.legal_hold().and_then(|h| h.status()), Some(&ObjectLockLegalHoldStatus::On));
}
