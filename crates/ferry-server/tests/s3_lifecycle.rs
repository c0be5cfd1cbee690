//! Lifecycle configurations through aws-sdk-s3, and the worker carrying them out (with a
//! one-second "day", as Ceph's tests shorten theirs).

use std::time::Duration;

use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleAndOperator, LifecycleRuleFilter, NoncurrentVersionExpiration, NoncurrentVersionTransition, StorageClass, Tag,
    Transition, TransitionStorageClass,
};

use crate::common::*;

fn rule(id: &str, prefix: &str) -> aws_sdk_s3::types::builders::LifecycleRuleBuilder {
    LifecycleRule::builder()
        .id(id)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
}

fn days(n: i32) -> LifecycleExpiration {
    LifecycleExpiration::builder().days(n).build()
}

fn to(days: i32, class: TransitionStorageClass) -> Transition {
    Transition::builder().days(days).storage_class(class).build()
}

async fn put_rules(c: &aws_sdk_s3::Client, b: &str, rules: Vec<LifecycleRule>) -> Result<(), String> {
    let config = BucketLifecycleConfiguration::builder().set_rules(Some(rules)).build().unwrap();
    c.put_bucket_lifecycle_configuration().bucket(b).lifecycle_configuration(config).send().await.map(drop).map_err(|e| code(&e))
}

#[tokio::test]
async fn a_lifecycle_configuration_is_put_read_checked_and_deleted() {
    let s = TestServer::start().await;
    let c = s.client();
    let b = bucket_name("lc");
    create_versioned_bucket(&c, &b).await;
    let e = c.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchLifecycleConfiguration");

    let tagged = LifecycleRuleFilter::builder()
        .and(
            LifecycleRuleAndOperator::builder()
                .prefix("logs/")
                .tags(Tag::builder().key("temp").value("yes").build().unwrap())
                .object_size_greater_than(10)
                .build(),
        )
        .build();
    let rules = vec![
        rule("logs", "logs/").expiration(days(30)).build().unwrap(),
        LifecycleRule::builder()
            .id("tagged")
            .status(ExpirationStatus::Disabled)
            .filter(tagged)
            .expiration(days(1))
            .build()
            .unwrap(),
        rule("old-versions", "")
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder().noncurrent_days(7).newer_noncurrent_versions(2).build(),
            )
            .abort_incomplete_multipart_upload(AbortIncompleteMultipartUpload::builder().days_after_initiation(3).build())
            .build()
            .unwrap(),
        rule("markers", "tmp/")
            .expiration(LifecycleExpiration::builder().expired_object_delete_marker(true).build())
            .build()
            .unwrap(),
        // Given out of order: answered in the order they happen.
        rule("tiers", "tiers/")
            .transitions(to(90, TransitionStorageClass::Glacier))
            .transitions(to(30, TransitionStorageClass::StandardIa))
            .noncurrent_version_transitions(
                NoncurrentVersionTransition::builder()
                    .noncurrent_days(5)
                    .newer_noncurrent_versions(1)
                    .storage_class(TransitionStorageClass::GlacierIr)
                    .build(),
            )
            .expiration(days(365))
            .build()
            .unwrap(),
    ];
    put_rules(&c, &b, rules.clone()).await.unwrap();
    let got = c.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap();
    let got = got.rules();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].id(), Some("logs"));
    assert_eq!(got[0].expiration().and_then(|e| e.days()), Some(30));
    assert_eq!(got[1].status(), &ExpirationStatus::Disabled);
    let and = got[1].filter().and_then(|f| f.and()).expect("an And filter");
    assert_eq!((and.prefix(), and.object_size_greater_than()), (Some("logs/"), Some(10)));
    assert_eq!(and.tags()[0].key(), "temp");
    let nc = got[2].noncurrent_version_expiration().expect("noncurrent expiration");
    assert_eq!((nc.noncurrent_days(), nc.newer_noncurrent_versions()), (Some(7), Some(2)));
    assert_eq!(
        got[2].abort_incomplete_multipart_upload().and_then(|a| a.days_after_initiation()),
        Some(3)
    );
    assert_eq!(got[3].expiration().and_then(|e| e.expired_object_delete_marker()), Some(true));
    let moves: Vec<_> = got[4].transitions().iter().map(|t| (t.days(), t.storage_class().map(|c| c.as_str()))).collect();
    assert_eq!(moves, [(Some(30), Some("STANDARD_IA")), (Some(90), Some("GLACIER"))]);
    let nc = &got[4].noncurrent_version_transitions()[0];
    assert_eq!(
        (
            nc.noncurrent_days(),
            nc.newer_noncurrent_versions(),
            nc.storage_class().map(|c| c.as_str())
        ),
        (Some(5), Some(1), Some("GLACIER_IR"))
    );

    // Refused whole, with S3's codes: what is stored is what will happen.
    // Noon, 1 January 2030.
    let midnight = aws_sdk_s3::primitives::DateTime::from_secs(1_893_456_000);
    let midday = aws_sdk_s3::primitives::DateTime::from_secs(1_893_456_000 + 43_200);
    for (bad, want) in [
        (vec![rule("zero", "").expiration(days(0)).build().unwrap()], "InvalidArgument"),
        (
            vec![
                rule("same", "a/").expiration(days(1)).build().unwrap(),
                rule("same", "b/").expiration(days(1)).build().unwrap(),
            ],
            "InvalidArgument",
        ),
        (vec![rule("nothing", "").build().unwrap()], "InvalidRequest"),
        (
            vec![rule("noon", "").expiration(LifecycleExpiration::builder().date(midday).build()).build().unwrap()],
            "InvalidArgument",
        ),
        // Only to the classes S3 moves versions to (STANDARD is where they start)...
        (
            vec![rule("up", "").transitions(to(1, TransitionStorageClass::from("STANDARD"))).build().unwrap()],
            "InvalidStorageClass",
        ),
        (
            vec![rule("unknown", "").transitions(to(1, TransitionStorageClass::from("TAPE"))).build().unwrap()],
            "InvalidStorageClass",
        ),
        (
            vec![rule("classless", "").transitions(Transition::builder().days(1).build()).build().unwrap()],
            "MalformedXML",
        ),
        (
            vec![rule("negative", "").transitions(to(-1, TransitionStorageClass::Glacier)).build().unwrap()],
            "InvalidArgument",
        ),
        // ...each class once, further down the later...
        (
            vec![
                rule("twice", "")
                    .transitions(to(1, TransitionStorageClass::Glacier))
                    .transitions(to(2, TransitionStorageClass::Glacier))
                    .build()
                    .unwrap(),
            ],
            "InvalidRequest",
        ),
        (
            vec![
                rule("back-up", "")
                    .transitions(to(1, TransitionStorageClass::Glacier))
                    .transitions(to(2, TransitionStorageClass::StandardIa))
                    .build()
                    .unwrap(),
            ],
            "InvalidArgument",
        ),
        (
            vec![
                rule("mixed", "")
                    .transitions(to(1, TransitionStorageClass::StandardIa))
                    .transitions(Transition::builder().date(midnight).storage_class(TransitionStorageClass::Glacier).build())
                    .build()
                    .unwrap(),
            ],
            "InvalidRequest",
        ),
        // ...and before the expiration.
        (
            vec![rule("late", "").transitions(to(30, TransitionStorageClass::Glacier)).expiration(days(30)).build().unwrap()],
            "InvalidArgument",
        ),
    ] {
        let id = bad[0].id().unwrap_or_default().to_owned();
        assert_eq!(put_rules(&c, &b, bad).await, Err(want.to_owned()), "{id}");
    }
    assert_eq!(c.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap().rules().len(), 5);
    // Another account may not read or change it.
    let alt = s.alt_client();
    assert_eq!(
        code(&alt.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap_err()),
        "AccessDenied"
    );
    assert_eq!(put_rules(&alt, &b, rules).await, Err("AccessDenied".to_owned()));

    // What a rule will do shows on writes and reads of the current version: the first
    // midnight UTC 30 days after it was written, and the rule's id.
    let out = put(&c, &b, "logs/today", b"x").await;
    let expected = |e: Option<&str>| {
        let e = e.unwrap_or_default().to_owned();
        assert!(e.starts_with("expiry-date=\"") && e.ends_with("GMT\", rule-id=\"logs\""), "{e}");
        assert!(e.contains(" 00:00:00 GMT"), "not at midnight: {e}");
        e
    };
    let on_put = expected(out.expiration());
    let head = c.head_object().bucket(&b).key("logs/today").send().await.unwrap();
    assert_eq!(expected(head.expiration()), on_put);
    let written = head.last_modified().unwrap().secs();
    let day = (written + 30 * 86_400) / 86_400 + 1;
    let at = time::OffsetDateTime::from_unix_timestamp(day * 86_400).unwrap();
    let format = time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] 00:00:00 GMT");
    assert!(
        on_put.contains(&at.format(&format).unwrap()),
        "{on_put} is not the day after {written} + 30 days"
    );
    let head = c.head_object().bucket(&b).key("logs/today").version_id(out.version_id().unwrap()).send().await.unwrap();
    assert_eq!(head.expiration(), Some(on_put.as_str()));
    assert_eq!(put(&c, &b, "data/x", b"x").await.expiration(), None);
    // A rule id is percent-encoded in the header (S3's form), so any id makes a valid one; an
    // id with a control character is refused.
    put_rules(&c, &b, vec![rule("logs \"all\"", "logs/").expiration(days(30)).build().unwrap()]).await.unwrap();
    let head = c.head_object().bucket(&b).key("logs/today").send().await.unwrap();
    assert!(
        head.expiration().unwrap_or_default().ends_with("rule-id=\"logs%20%22all%22\""),
        "{:?}",
        head.expiration()
    );
    let bad = rule("two\nlines", "logs/").expiration(days(1)).build().unwrap();
    assert_eq!(put_rules(&c, &b, vec![bad]).await, Err("InvalidArgument".to_owned()));

    c.delete_bucket_lifecycle().bucket(&b).send().await.unwrap();
    let e = c.get_bucket_lifecycle_configuration().bucket(&b).send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchLifecycleConfiguration");
}

/// The worker carries the rules out: current versions expire into delete markers, old
/// noncurrent versions go (the newest kept), lone delete markers go, old uploads are aborted;
/// nothing outside the rules is touched.
#[tokio::test]
async fn the_lifecycle_worker_expires_what_the_rules_say() {
    let s = TestServer::start_with(|o| {
        o.lifecycle.day = Duration::from_secs(1);
        o.lifecycle.interval = Duration::from_millis(100);
        o.lifecycle.batch = 2;
    })
    .await;
    let c = s.client();
    let b = bucket_name("lcrun");
    create_versioned_bucket(&c, &b).await;
    put(&c, &b, "keep/a", b"kept").await;
    put(&c, &b, "logs/a", b"expires").await;
    for n in 0..3 {
        put(&c, &b, "nc/k", format!("version {n}").as_bytes()).await;
    }
    c.delete_object().bucket(&b).key("tmp/gone").send().await.unwrap();
    c.put_object().bucket(&b).key("tagged/temp").tagging("temp=yes").body(b"t".to_vec().into()).send().await.unwrap();
    c.put_object().bucket(&b).key("tagged/kept").tagging("temp=no").body(b"k".to_vec().into()).send().await.unwrap();
    let upload = c.create_multipart_upload().bucket(&b).key("up/big").send().await.unwrap();
    for n in 0..2 {
        put(&c, &b, "tiers/k", format!("version {n}").as_bytes()).await;
    }
    let deep = c.put_object().bucket(&b).key("tiers/deep").storage_class(StorageClass::DeepArchive).body(b"d".to_vec().into());
    deep.send().await.unwrap();
    let rules = vec![
        rule("logs", "logs/").expiration(days(1)).build().unwrap(),
        rule("nc", "nc/")
            .noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder().noncurrent_days(1).newer_noncurrent_versions(1).build(),
            )
            .build()
            .unwrap(),
        rule("markers", "tmp/")
            .expiration(LifecycleExpiration::builder().expired_object_delete_marker(true).build())
            .build()
            .unwrap(),
        LifecycleRule::builder()
            .id("tagged")
            .status(ExpirationStatus::Enabled)
            .filter(
                LifecycleRuleFilter::builder()
                    .and(
                        LifecycleRuleAndOperator::builder()
                            .prefix("tagged/")
                            .tags(Tag::builder().key("temp").value("yes").build().unwrap())
                            .build(),
                    )
                    .build(),
            )
            .expiration(days(1))
            .build()
            .unwrap(),
        rule("uploads", "up/")
            .abort_incomplete_multipart_upload(AbortIncompleteMultipartUpload::builder().days_after_initiation(1).build())
            .build()
            .unwrap(),
        rule("tiers", "tiers/")
            .transitions(to(1, TransitionStorageClass::Glacier))
            .noncurrent_version_transitions(
                NoncurrentVersionTransition::builder()
                    .noncurrent_days(1)
                    .storage_class(TransitionStorageClass::StandardIa)
                    .build(),
            )
            .build()
            .unwrap(),
    ];
    put_rules(&c, &b, rules).await.unwrap();
    let class_of = |versions: &[Listed], current: bool| {
        versions.iter().find(|v| v.key == "tiers/k" && v.is_latest == current).map(|v| v.storage_class.clone())
    };

    wait_until("the rules are carried out", 30, || {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let versions = all_versions(&c, &b).await;
            let of = |key: &str| versions.iter().filter(|v| v.key == key).count();
            let uploads = c.list_multipart_uploads().bucket(&b).send().await.unwrap();
            versions.iter().any(|v| v.key == "logs/a" && v.is_latest && v.delete_marker)
                && versions.iter().any(|v| v.key == "tagged/temp" && v.is_latest && v.delete_marker)
                && of("nc/k") == 2
                && of("tmp/gone") == 0
                && uploads.uploads().is_empty()
                && class_of(&versions, true).as_deref() == Some("GLACIER")
                && class_of(&versions, false).as_deref() == Some("STANDARD_IA")
        }
    })
    .await;
    // The newest noncurrent version is kept, and the current one.
    let versions = all_versions(&c, &b).await;
    let nc: Vec<_> = versions.iter().filter(|v| v.key == "nc/k").collect();
    assert!(nc.iter().all(|v| !v.delete_marker), "{nc:?}");
    assert_eq!(get_bytes(&c, &b, "nc/k").await, b"version 2");
    // Outside every rule: untouched, though scanned in the same passes (it sorts first).
    assert_eq!(get_bytes(&c, &b, "keep/a").await, b"kept");
    assert_eq!(versions.iter().filter(|v| v.key == "keep/a").count(), 1);
    assert_eq!(get_bytes(&c, &b, "tagged/kept").await, b"k", "its tag is not the rule's");
    // A transition changes the class and nothing else; and never moves a version up.
    assert_eq!(get_bytes(&c, &b, "tiers/k").await, b"version 1");
    let head = c.head_object().bucket(&b).key("tiers/k").send().await.unwrap();
    assert_eq!(head.storage_class(), Some(&StorageClass::Glacier));
    assert_eq!(versions.iter().filter(|v| v.key == "tiers/k").count(), 2);
    let deep = versions.iter().find(|v| v.key == "tiers/deep").map(|v| v.storage_class.as_str());
    assert_eq!(deep, Some("DEEP_ARCHIVE"));
    // The expired object's version is still there, behind its marker.
    assert_eq!(versions.iter().filter(|v| v.key == "logs/a").count(), 2);
    let e = c
        .upload_part()
        .bucket(&b)
        .key("up/big")
        .upload_id(upload.upload_id().unwrap())
        .part_number(1)
        .body(b"x".to_vec().into())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "NoSuchUpload");
    // What was done is counted: one of each action.
    let metrics = s.metrics();
    for (action, n) in
        [("expire_current", 2), ("remove_noncurrent", 1), ("remove_delete_marker", 1), ("abort_upload", 1), ("transition", 2)]
    {
        assert!(metrics.contains(&format!("action=\"{action}\"}} {n}\n")), "{action}:\n{metrics}");
    }
    assert!(metrics.contains("ferry_lifecycle_versions_scanned_total"), "{metrics}");
}

/// Lifecycle actions are each region's own, as on S3: an expiration at the source adds a
/// delete marker there that is not replicated, though the bucket replicates delete markers,
/// nor sent by a backfill.
#[tokio::test]
async fn lifecycle_expirations_are_not_replicated() {
    let c = TestCluster::start(&[US, EU], |o, _| {
        o.lifecycle.day = Duration::from_secs(1);
        o.lifecycle.interval = Duration::from_millis(100);
    })
    .await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    let v1 = put(&us, "src", "logs/a", b"expires at the source only").await.version_id().unwrap().to_owned();
    wait_for_version("logs/a replicated", 20, &eu, "dst", "logs/a", &v1).await;
    let tiered = put(&us, "src", "tiers/a", b"moves at the source only").await.version_id().unwrap().to_owned();
    wait_for_version("tiers/a replicated", 20, &eu, "dst", "tiers/a", &tiered).await;
    let rules = vec![
        rule("logs", "logs/").expiration(days(1)).build().unwrap(),
        rule("tiers", "tiers/").transitions(to(1, TransitionStorageClass::Glacier)).build().unwrap(),
    ];
    put_rules(&us, "src", rules).await.unwrap();
    wait_until("logs/a expired and tiers/a moved at the source", 30, || async {
        let versions = all_versions(&us, "src").await;
        versions.iter().any(|v| v.key == "logs/a" && v.is_latest && v.delete_marker)
            && versions.iter().any(|v| v.key == "tiers/a" && v.storage_class == "GLACIER")
    })
    .await;
    // Everything recorded for logs/a before the barrier has been carried out at dst.
    barrier(&us, "src", "logs/a", None, &[(&eu, "dst")]).await;
    barrier(&us, "src", "tiers/a", None, &[(&eu, "dst")]).await;
    let at_dst = all_versions(&eu, "dst").await;
    assert!(at_dst.iter().all(|v| !v.delete_marker), "the expiration was replicated: {at_dst:?}");
    assert!(at_dst.iter().any(|v| v.version_id == v1));
    let class = at_dst.iter().find(|v| v.version_id == tiered).map(|v| v.storage_class.as_str());
    assert_eq!(class, Some("STANDARD"), "the transition was replicated");
    // Nor does a backfill (which sends what the source holds) send its delete marker.
    let (code, out) = c.ferry_replication(US, "resync", "src", &["--wait"]).await;
    assert_eq!(code, 0, "{out}");
    barrier(&us, "src", "logs/a", None, &[(&eu, "dst")]).await;
    barrier(&us, "src", "tiers/a", None, &[(&eu, "dst")]).await;
    let at_dst = all_versions(&eu, "dst").await;
    assert!(
        at_dst.iter().all(|v| !v.delete_marker),
        "the expiration was sent by a backfill: {at_dst:?}"
    );
    let class = at_dst.iter().find(|v| v.version_id == tiered).map(|v| v.storage_class.as_str());
    assert_eq!(class, Some("STANDARD"), "the transition was sent by a backfill");
}

/// `ferry lifecycle status` of a bucket, as JSON.
async fn lifecycle_status(c: &TestCluster, bucket: &str) -> ferry_store::lifecycle::BucketLifecycleStatus {
    let (code, out) = run_ferry_async(&ferry_cli(&["lifecycle", "status"], &c.url(US), bucket, &["--json"])).await;
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The worker saves its pass after each step and resumes it after a restart, from where it
/// was; a pass is not started again before its interval, restart or not; `ferry lifecycle
/// status` shows it all.
#[tokio::test]
async fn a_pass_resumes_where_it_was_after_a_restart() {
    let c = TestCluster::start(&[US], |o, _| {
        o.lifecycle.day = Duration::from_secs(1);
        o.lifecycle.interval = Duration::from_secs(3600);
    })
    .await;
    let s3 = c.client(US);
    create_versioned_bucket(&s3, "lcres").await;
    // The first pass runs at start, before any rule: wait for it to end.
    wait_until("the first pass", 30, || async { lifecycle_status(&c, "lcres").await.passes >= 1 }).await;
    let st = lifecycle_status(&c, "lcres").await;
    assert_eq!((st.state.as_str(), st.rules, st.passes), ("done", 0, 1), "{st:?}");
    let next = st.next_pass_us.expect("the next pass is due");
    assert!(
        next > now_us() + 3_000_000_000,
        "the next pass is an hour after the first started: {st:?}"
    );
    for k in ["a", "b", "c", "d"] {
        put(&s3, "lcres", k, b"x").await;
    }
    put_rules(&s3, "lcres", vec![rule("all", "").expiration(days(1)).build().unwrap()]).await.unwrap();

    // A pass stopped after key "b" (as a crash would leave it), due far enough ahead that the
    // objects have expired by its time.
    let pass_now = now_us() + 10_000_000;
    let record = serde_json::json!({
        "pass": {"now_us": pass_now, "buckets": [],
                 "scan": {"bucket": "lcres", "cursor": {"after_key": "b", "after_version": null}, "key": null, "uploads_after": null}},
        "passes": 1, "last_pass_start_us": now_us(), "last_pass_end_us": now_us(), "interval_us": 3_600_000_000i64
    })
    .to_string();
    c.store(US).meta.write(move |tx| tx.set_setting(ferry_store::lifecycle::SETTINGS_KEY, &record)).await.unwrap();
    let c = c.restart().await;
    let s3 = c.client(US);
    wait_until("the resumed pass ends", 30, || async { lifecycle_status(&c, "lcres").await.passes >= 2 }).await;
    let st = lifecycle_status(&c, "lcres").await;
    assert_eq!((st.state.as_str(), st.rules, st.passes), ("done", 1, 2), "{st:?}");
    let versions = all_versions(&s3, "lcres").await;
    let expired = |k: &str| versions.iter().any(|v| v.key == k && v.is_latest && v.delete_marker);
    // After the saved position: expired by the resumed pass. Before it: untouched, as the
    // resumed pass started after them and no new pass is due for an hour.
    assert!(expired("c") && expired("d"), "{versions:?}");
    assert!(!expired("a") && !expired("b"), "a new pass ran instead of the saved one: {versions:?}");
}
