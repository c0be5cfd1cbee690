//! Replication between regions served in one process (each region has its own listener, data
//! directory and peer clients; they talk over HTTP like separate processes).

use aws_sdk_s3::types::{BucketVersioningStatus, ObjectCannedAcl, Tag, Tagging, VersioningConfiguration};

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// Two regions with a versioned bucket each and `src` (US) replicating to `dst` (EU).
async fn pair() -> (TestCluster, aws_sdk_s3::Client, aws_sdk_s3::Client) {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    (c, us, eu)
}

async fn converged(us: &aws_sdk_s3::Client, sb: &str, eu: &aws_sdk_s3::Client, db: &str) -> bool {
    compare_buckets(us, sb, eu, db).await.is_empty()
}

#[tokio::test]
async fn puts_replicate_with_version_ids_times_metadata_and_status() {
    let (_c, us, eu) = pair().await;
    let out = us
        .put_object()
        .bucket("src")
        .key("docs/a.txt")
        .body(b"hello replication".to_vec().into())
        .content_type("text/plain")
        .cache_control("max-age=5")
        .metadata("team", "storage")
        .tagging("env=prod&tier=1")
        .send()
        .await
        .unwrap();
    let vid = out.version_id().unwrap().to_owned();
    for i in 0..20 {
        put(&us, "src", &format!("bulk/{i:03}"), format!("body {i}").as_bytes()).await;
    }
    wait_until("replication converges", 30, || converged(&us, "src", &eu, "dst")).await;
    let got = eu.get_object().bucket("dst").key("docs/a.txt").send().await.unwrap();
    assert_eq!(got.version_id(), Some(vid.as_str()), "the replica keeps the version id");
    assert_eq!(got.replication_status().map(|s| s.as_str()), Some("REPLICA"));
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"hello replication");
    let src_head = us.head_object().bucket("src").key("docs/a.txt").send().await.unwrap();
    let dst_head = eu.head_object().bucket("dst").key("docs/a.txt").send().await.unwrap();
    assert_eq!(
        src_head.last_modified(),
        dst_head.last_modified(),
        "the replica keeps the last-modified time"
    );
    assert_eq!(src_head.e_tag(), dst_head.e_tag());
    // Checksums are kept: the SDK's default CRC32 here, verified and stored at the destination.
    let src_ck = us
        .head_object()
        .bucket("src")
        .key("docs/a.txt")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    let dst_ck = eu
        .head_object()
        .bucket("dst")
        .key("docs/a.txt")
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(src_ck.checksum_crc32().is_some());
    assert_eq!(src_ck.checksum_crc32(), dst_ck.checksum_crc32());
    wait_until("source status COMPLETED", 10, || async {
        repl_status(&us, "src", "docs/a.txt", None).await.as_deref() == Some("COMPLETED")
    })
    .await;
    // The replica is not replicated further, and the destination has no jobs.
    let jobs = _c.store(EU).meta.read(|r| r.bucket_jobs("dst", 0, 10)).await.unwrap();
    assert!(jobs.is_empty());
}

/// A small version (held inline: the lean client sends it) and a larger one (the SDK sends
/// it) with the same odd key characters and every object header arrive with the same
/// headers, the same body and the same identity: the two ways of sending agree.
#[tokio::test]
async fn small_and_large_versions_arrive_alike() {
    let (c, us, eu) = pair().await;
    let expires = aws_sdk_s3::primitives::DateTime::from_secs(1_900_000_000);
    let mut versions = Vec::new();
    for (key, size) in [("odd/ünï cødé +%~=&?#;.txt", 100), ("odd/ünï cødé +%~=&?#;.bin", 64 * 1024)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let out = us
            .put_object()
            .bucket("src")
            .key(key)
            .body(body.into())
            .content_type("text/x-odd; charset=utf-8")
            .content_encoding("identity")
            .content_disposition("attachment; filename=\"a b.txt\"")
            .content_language("fr-CA")
            .cache_control("no-cache, max-age=0")
            .expires(expires)
            .website_redirect_location("/elsewhere")
            .metadata("team", "storage team")
            .metadata("empty", "")
            .tagging("env=prod&note=a%20b")
            .storage_class(aws_sdk_s3::types::StorageClass::StandardIa)
            .send()
            .await
            .unwrap();
        versions.push((key, out.version_id().unwrap().to_owned()));
    }
    for (key, vid) in &versions {
        wait_for_version(key, 30, &eu, "dst", key, vid).await;
        let s = us.head_object().bucket("src").key(*key).send().await.unwrap();
        let d = eu.head_object().bucket("dst").key(*key).send().await.unwrap();
        assert_eq!(d.version_id(), Some(vid.as_str()), "{key}");
        assert_eq!(
            (s.e_tag(), s.content_length(), s.last_modified(), s.content_type(), s.content_encoding()),
            (d.e_tag(), d.content_length(), d.last_modified(), d.content_type(), d.content_encoding()),
            "{key}"
        );
        assert_eq!(
            (s.content_disposition(), s.content_language(), s.cache_control(), s.expires_string()),
            (d.content_disposition(), d.content_language(), d.cache_control(), d.expires_string()),
            "{key}"
        );
        assert_eq!(
            (s.website_redirect_location(), s.metadata(), s.storage_class(), s.tag_count()),
            (d.website_redirect_location(), d.metadata(), d.storage_class(), d.tag_count()),
            "{key}"
        );
        assert_eq!(d.storage_class(), Some(&aws_sdk_s3::types::StorageClass::StandardIa));
        assert_eq!(d.metadata().and_then(|m| m.get("team")).map(String::as_str), Some("storage team"));
        let tags = eu.get_object_tagging().bucket("dst").key(*key).send().await.unwrap();
        let tags: Vec<_> = tags.tag_set().iter().map(|t| (t.key(), t.value())).collect();
        assert_eq!(tags, [("env", "prod"), ("note", "a b")], "{key}");
        assert_eq!(get_bytes(&us, "src", key).await, get_bytes(&eu, "dst", key).await, "{key}");
    }
    // The small one went in a batch through the lean client (only an inline version can), the
    // large one through the SDK.
    let (batch, sdk) = (puts_sent(&c, "batch"), puts_sent(&c, "sdk"));
    assert!(batch >= 1 && sdk >= 1, "batch {batch}, sdk {sdk}");
}

/// `batches_in_flight = 0`: small versions go one PutObject each, through the lean client, and
/// arrive as in a batch.
#[tokio::test]
async fn batches_can_be_turned_off() {
    let c = TestCluster::start(&[US, EU], |o, _| o.replication.batches_in_flight = 0).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    let vid = put(&us, "src", "small", b"a few bytes").await.version_id().unwrap().to_owned();
    wait_for_version("small", 30, &eu, "dst", "small", &vid).await;
    assert_eq!(get_bytes(&eu, "dst", "small").await, b"a few bytes");
    assert_eq!((puts_sent(&c, "batch"), puts_sent(&c, "lean") >= 1), (0, true));
}

/// Replica PUTs the source region sent through `sender` (`batch`, `lean` or `sdk`).
fn puts_sent(c: &TestCluster, sender: &str) -> u64 {
    let labels = ferry_core::metrics::SenderLabels { sender: sender.into() };
    c.server.as_ref().unwrap().region(US).unwrap().metrics.replication_object_puts.get_or_create(&labels).get()
}

/// `lean_client = false` sends every replica through the SDK.
#[tokio::test]
async fn the_lean_client_can_be_turned_off() {
    let c = TestCluster::start(&[US, EU], |o, _| o.replication.lean_client = false).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    let vid = put(&us, "src", "small", b"a few bytes").await.version_id().unwrap().to_owned();
    wait_for_version("small", 30, &eu, "dst", "small", &vid).await;
    assert_eq!((puts_sent(&c, "lean"), puts_sent(&c, "sdk") >= 1), (0, true));
}

#[tokio::test]
async fn status_is_pending_until_delivered() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    // Suspend the destination's versioning: replicas are refused (permanent), the source says FAILED.
    eu.put_bucket_versioning()
        .bucket("dst")
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Suspended).build())
        .send()
        .await
        .unwrap();
    put(&us, "src", "k", b"v").await;
    wait_until("status FAILED", 20, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("FAILED")
    })
    .await;
    let jobs = c.store(US).meta.read(|r| r.bucket_jobs("src", 0, 10)).await.unwrap();
    assert!(
        jobs[0].last_error.as_deref().unwrap_or("").contains("InvalidBucketState"),
        "{:?}",
        jobs[0].last_error
    );
    // Fix the cause, then re-drive with the CLI.
    eu.put_bucket_versioning()
        .bucket("dst")
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build())
        .send()
        .await
        .unwrap();
    let (code, out) = c.ferry_replication(US, "retry", "src", &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 failed job(s)"), "{out}");
    wait_until("status COMPLETED after retry", 20, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("COMPLETED")
    })
    .await;
    assert!(converged(&us, "src", &eu, "dst").await);
}

#[tokio::test]
async fn delete_markers_replicate_and_version_deletes_only_with_the_extension() {
    let (c, us, eu) = pair().await;
    let v1 = put(&us, "src", "k", b"one").await.version_id().unwrap().to_owned();
    put(&us, "src", "k", b"two").await;
    us.delete_object().bucket("src").key("k").send().await.unwrap();
    wait_until("marker replicated", 20, || converged(&us, "src", &eu, "dst")).await;
    let e = eu.get_object().bucket("dst").key("k").send().await.unwrap_err();
    assert_eq!(code(&e), "NoSuchKey");
    // Deleting a specific version is not replicated by default (AWS semantics)...
    us.delete_object().bucket("src").key("k").version_id(&v1).send().await.unwrap();
    // A new version of `k` through the same rule to `dst` arrives after any job recorded for `k`
    // before it, a deletion of v1 included.
    barrier(&us, "src", "k", None, &[(&eu, "dst")]).await;
    assert!(
        all_versions(&eu, "dst").await.iter().any(|v| v.version_id == v1),
        "version delete not replicated"
    );
    // ...but is with the DeleteReplication extension.
    let xml = r#"<ReplicationConfiguration><Role></Role><Rule><ID>all</ID><Priority>1</Priority><Status>Enabled</Status>
        <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>
        <DeleteReplication><Status>Enabled</Status></DeleteReplication>
        <Destination><Bucket>arn:aws:s3:::dst</Bucket></Destination></Rule></ReplicationConfiguration>"#;
    put_replication_xml(&us, "src", xml).await.unwrap();
    let got = us.get_bucket_replication().bucket("src").send().await.unwrap();
    assert_eq!(
        got.replication_configuration().unwrap().rules()[0].destination().unwrap().bucket(),
        "arn:aws:s3:eu-west-1::dst",
        "the resolved region is pinned"
    );
    let v3 = put(&us, "src", "k2", b"three").await.version_id().unwrap().to_owned();
    wait_until("k2 replicated", 20, || async {
        all_versions(&eu, "dst").await.iter().any(|v| v.version_id == v3)
    })
    .await;
    us.delete_object().bucket("src").key("k2").version_id(&v3).send().await.unwrap();
    wait_until("version delete replicated", 20, || async {
        !all_versions(&eu, "dst").await.iter().any(|v| v.version_id == v3)
    })
    .await;
    drop(c);
}

#[tokio::test]
async fn filters_priorities_disabled_rules_and_fan_out() {
    use aws_sdk_s3::types::*;
    let c = TestCluster::start(&[US, EU, "ap-south-1"], |_, _| {}).await;
    let (us, eu, ap) = (c.client(US), c.client(EU), c.client("ap-south-1"));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "logs-dst").await;
    create_versioned_bucket(&ap, "gold-dst").await;
    create_versioned_bucket(&ap, "off-dst").await;
    let rule = |id: &str, prio: i32, filter: ReplicationRuleFilter, dest: &str, on: bool| {
        ReplicationRule::builder()
            .id(id)
            .priority(prio)
            .status(if on { ReplicationRuleStatus::Enabled } else { ReplicationRuleStatus::Disabled })
            .filter(filter)
            .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Disabled).build())
            .destination(Destination::builder().bucket(dest).build().unwrap())
            .build()
            .unwrap()
    };
    let barrier_tag =
        || ReplicationRuleFilter::builder().tag(Tag::builder().key("barrier").value("yes").build().unwrap()).build();
    let gold = ReplicationRuleFilter::builder()
        .and(
            ReplicationRuleAndOperator::builder()
                .prefix("data/")
                .tags(Tag::builder().key("class").value("gold").build().unwrap())
                .build(),
        )
        .build();
    let cfg = ReplicationConfiguration::builder()
        .role("r")
        .rules(rule(
            "logs",
            1,
            ReplicationRuleFilter::builder().prefix("logs/").build(),
            "arn:aws:s3:::logs-dst",
            true,
        ))
        .rules(rule("gold", 2, gold, "arn:aws:s3:ap-south-1::gold-dst", true))
        .rules(rule(
            "off",
            3,
            ReplicationRuleFilter::builder().prefix("").build(),
            "arn:aws:s3:::off-dst",
            false,
        ))
        // Barrier rules: objects tagged barrier=yes go to each destination. They take none of
        // the objects under test (untagged, or tagged class=...).
        .rules(rule("barrier-eu", 4, barrier_tag(), "arn:aws:s3:::logs-dst", true))
        .rules(rule("barrier-gold", 5, barrier_tag(), "arn:aws:s3:ap-south-1::gold-dst", true))
        .rules(rule("barrier-off", 6, barrier_tag(), "arn:aws:s3:::off-dst", true))
        .build()
        .unwrap();
    us.put_bucket_replication().bucket("src").replication_configuration(cfg).send().await.unwrap();
    put(&us, "src", "logs/1", b"l").await;
    let other = put(&us, "src", "other/1", b"o").await.version_id().unwrap().to_owned();
    us.put_object().bucket("src").key("data/g").tagging("class=gold").body(b"g".to_vec().into()).send().await.unwrap();
    let silver = us
        .put_object()
        .bucket("src")
        .key("data/s")
        .tagging("class=silver")
        .body(b"s".to_vec().into())
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    wait_until("logs/1 in EU", 20, || async { all_versions(&eu, "logs-dst").await.len() == 1 }).await;
    wait_until("data/g in AP", 20, || async { all_versions(&ap, "gold-dst").await.len() == 1 }).await;
    // A barrier version of every key goes to all three destinations. Jobs of one destination
    // and key are delivered in the order they were recorded, so once the barriers are there,
    // any job recorded for the objects above (by the disabled rule, or by a filter that should
    // not have matched) has been delivered too.
    let mut barriers = Vec::new();
    for key in ["logs/1", "other/1", "data/g", "data/s"] {
        let dests = [(&eu, "logs-dst"), (&ap, "gold-dst"), (&ap, "off-dst")];
        barriers.push(barrier(&us, "src", key, Some("barrier=yes"), &dests).await);
    }
    let keys = |listed: Vec<Listed>| -> Vec<String> {
        listed.into_iter().filter(|v| !barriers.contains(&v.version_id)).map(|v| v.key).collect()
    };
    assert_eq!(keys(all_versions(&eu, "logs-dst").await), ["logs/1"]);
    assert_eq!(keys(all_versions(&ap, "gold-dst").await), ["data/g"]);
    assert!(keys(all_versions(&ap, "off-dst").await).is_empty(), "disabled rule");
    // A version's status is set in the transaction that records its jobs: no job, no status.
    assert_eq!(repl_status(&us, "src", "other/1", Some(&other)).await, None, "no rule matched: no status");
    assert_eq!(repl_status(&us, "src", "data/s", Some(&silver)).await, None);

    // Fan-out: one object, two destinations, COMPLETED only when both are done.
    create_versioned_bucket(&us, "fan").await;
    create_versioned_bucket(&eu, "fan-eu").await;
    create_versioned_bucket(&ap, "fan-ap").await;
    us.put_bucket_replication()
        .bucket("fan")
        .replication_configuration(simple_rules(&["arn:aws:s3:::fan-eu", "arn:aws:s3:::fan-ap"]))
        .send()
        .await
        .unwrap();
    put(&us, "fan", "x", b"both").await;
    wait_until("fan-out converges", 20, || async {
        converged(&us, "fan", &eu, "fan-eu").await && converged(&us, "fan", &ap, "fan-ap").await
    })
    .await;
    wait_until("COMPLETED", 10, || async {
        repl_status(&us, "fan", "x", None).await.as_deref() == Some("COMPLETED")
    })
    .await;
}

#[tokio::test]
async fn tag_and_acl_changes_replicate() {
    let (_c, us, eu) = pair().await;
    let vid = put(&us, "src", "k", b"v").await.version_id().unwrap().to_owned();
    wait_until("replicated", 20, || converged(&us, "src", &eu, "dst")).await;
    let tagging = Tagging::builder().tag_set(Tag::builder().key("state").value("reviewed").build().unwrap()).build().unwrap();
    us.put_object_tagging().bucket("src").key("k").tagging(tagging).send().await.unwrap();
    us.put_object_acl().bucket("src").key("k").acl(ObjectCannedAcl::PublicRead).send().await.unwrap();
    wait_until("tags replicated", 20, || async {
        eu.get_object_tagging().bucket("dst").key("k").version_id(&vid).send().await.is_ok_and(|t| t.tag_set().len() == 1)
    })
    .await;
    wait_until("ACL replicated", 20, || async {
        eu.get_object_acl().bucket("dst").key("k").send().await.is_ok_and(|a| a.grants().len() == 2)
    })
    .await;
    // Versions did not multiply.
    assert_eq!(all_versions(&eu, "dst").await.len(), 1);
}

#[tokio::test]
async fn multipart_objects_keep_their_etag() {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let (_c, us, eu) = pair().await;
    let up = us.create_multipart_upload().bucket("src").key("mp").content_type("video/mp4").send().await.unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for n in 1..=3 {
        let data = vec![n as u8; if n < 3 { 5 * 1024 * 1024 } else { 1000 }];
        let out = us.upload_part().bucket("src").key("mp").upload_id(id).part_number(n).body(data.into()).send().await.unwrap();
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
    }
    us.complete_multipart_upload()
        .bucket("src")
        .key("mp")
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    wait_until("multipart replicated", 30, || converged(&us, "src", &eu, "dst")).await;
    let h = eu.head_object().bucket("dst").key("mp").part_number(2).send().await.unwrap();
    assert_eq!(h.parts_count(), Some(3), "same part layout at the destination");
    assert_eq!(get_bytes(&us, "src", "mp").await, get_bytes(&eu, "dst", "mp").await);
}

#[tokio::test]
async fn owner_override_and_storage_class() {
    use aws_sdk_s3::types::*;
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    let alt_us = client_for(&c.url(US), ALT_AK, ALT_SK, US, Mode::Default);
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    // The alt user may write into src (bucket ACL), so its objects are owned by alt.
    us.put_bucket_acl().bucket("src").acl(BucketCannedAcl::PublicReadWrite).send().await.unwrap();
    let rule = ReplicationRule::builder()
        .id("r")
        .priority(1)
        .status(ReplicationRuleStatus::Enabled)
        .filter(ReplicationRuleFilter::builder().prefix("").build())
        .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Disabled).build())
        .destination(
            Destination::builder()
                .bucket("arn:aws:s3:::dst")
                .storage_class(StorageClass::StandardIa)
                .account("000000000000")
                .access_control_translation(
                    AccessControlTranslation::builder().owner(OwnerOverride::Destination).build().unwrap(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    us.put_bucket_replication()
        .bucket("src")
        .replication_configuration(ReplicationConfiguration::builder().role("r").rules(rule).build().unwrap())
        .send()
        .await
        .unwrap();
    alt_us.put_object().bucket("src").key("k").body(b"by alt".to_vec().into()).send().await.unwrap();
    wait_until("replicated", 20, || async {
        eu.head_object().bucket("dst").key("k").send().await.is_ok()
    })
    .await;
    let h = eu.head_object().bucket("dst").key("k").send().await.unwrap();
    assert_eq!(h.storage_class().map(|s| s.as_str()), Some("STANDARD_IA"));
    let acl = eu.get_object_acl().bucket("dst").key("k").send().await.unwrap();
    assert_eq!(
        acl.owner().and_then(|o| o.display_name()),
        Some("main"),
        "the destination owner owns the replica"
    );
    let src_acl = us.get_object_acl().bucket("src").key("k").send().await;
    assert!(src_acl.is_err() || src_acl.unwrap().owner().and_then(|o| o.display_name()) == Some("alt"));
}

#[tokio::test]
async fn bad_rules_are_refused_with_clear_errors() {
    let c = TestCluster::start(&[US, EU, "ap-south-1"], |_, _| {}).await;
    let (us, eu, ap) = (c.client(US), c.client(EU), c.client("ap-south-1"));
    let put_cfg = |client: &aws_sdk_s3::Client, bucket: &str, dests: &[&str]| {
        client.put_bucket_replication().bucket(bucket).replication_configuration(simple_rules(dests)).send()
    };
    create_bucket(&us, "plain").await;
    let e = put_cfg(&us, "plain", &["arn:aws:s3:::whatever"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "source versioning off");
    create_versioned_bucket(&us, "src").await;
    let e = put_cfg(&us, "src", &["arn:aws:s3:::nowhere"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "no such destination");
    create_bucket(&eu, "unversioned").await;
    let e = put_cfg(&us, "src", &["arn:aws:s3:::unversioned"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "destination versioning off");
    create_versioned_bucket(&eu, "twice").await;
    create_versioned_bucket(&ap, "twice").await;
    let e = put_cfg(&us, "src", &["arn:aws:s3:::twice"]).await.unwrap_err();
    assert!(
        format!("{e:?}").contains("eu-west-1") && format!("{e:?}").contains("ap-south-1"),
        "candidates named: {e:?}"
    );
    put_cfg(&us, "src", &["arn:aws:s3:ap-south-1::twice"]).await.unwrap();
    let e = put_cfg(&us, "src", &["arn:aws:s3:mars-1::twice"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "unknown region");
    let e = put_cfg(&us, "src", &["not-an-arn"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidArgument");
    // Same priority on overlapping filters.
    let e = put_replication_xml(
        &us,
        "src",
        r"<ReplicationConfiguration><Role></Role>
        <Rule><ID>a</ID><Priority>1</Priority><Status>Enabled</Status><Filter><Prefix>x/</Prefix></Filter><Destination><Bucket>arn:aws:s3:eu-west-1::twice</Bucket></Destination></Rule>
        <Rule><ID>b</ID><Priority>1</Priority><Status>Enabled</Status><Filter><Prefix>x/y</Prefix></Filter><Destination><Bucket>arn:aws:s3:ap-south-1::twice</Bucket></Destination></Rule>
        </ReplicationConfiguration>",
    )
    .await
    .unwrap_err();
    assert_eq!(e, "InvalidRequest");
    let e = put_replication_xml(&us, "src", "<ReplicationConfiguration><Rule>").await.unwrap_err();
    assert_eq!(e, "MalformedXML");
    // Versioning cannot be suspended while replication is configured.
    let e = us
        .put_bucket_versioning()
        .bucket("src")
        .versioning_configuration(VersioningConfiguration::builder().status(BucketVersioningStatus::Suspended).build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidBucketState");
    // Cycles: A->B and B->A is allowed; A->B->C->A is refused.
    create_versioned_bucket(&us, "aaa").await;
    create_versioned_bucket(&eu, "bbb").await;
    create_versioned_bucket(&ap, "ccc").await;
    put_cfg(&us, "aaa", &["arn:aws:s3:::bbb"]).await.unwrap();
    put_cfg(&eu, "bbb", &["arn:aws:s3:::aaa"]).await.unwrap();
    put_cfg(&eu, "bbb", &["arn:aws:s3:::ccc"]).await.unwrap();
    let e = put_cfg(&ap, "ccc", &["arn:aws:s3:::aaa"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest");
    assert!(format!("{e:?}").contains("cycle"), "{e:?}");
    // Same-region replication is allowed.
    create_versioned_bucket(&us, "same-region-copy").await;
    put_cfg(&us, "src", &["arn:aws:s3:::same-region-copy"]).await.unwrap();
    let e = put_cfg(&us, "src", &["arn:aws:s3:us-east-1::src"]).await.unwrap_err();
    assert_eq!(code(&e), "InvalidRequest", "a bucket cannot replicate to itself");
    // Get and delete.
    assert!(us.get_bucket_replication().bucket("src").send().await.is_ok());
    us.delete_bucket_replication().bucket("src").send().await.unwrap();
    assert_eq!(
        code(&us.get_bucket_replication().bucket("src").send().await.unwrap_err()),
        "ReplicationConfigurationNotFoundError"
    );
}

#[tokio::test]
async fn replication_over_tls_with_a_private_ca() {
    let c = TestCluster::start(&[US, EU], |opts, dir| {
        let (ca, cert, key) = tls_files(dir);
        for r in &mut opts.regions {
            r.tls_cert = Some(cert.clone());
            r.tls_key = Some(key.clone());
            r.tls_ca = Some(ca.clone());
        }
    })
    .await;
    assert!(c.url(US).starts_with("https://") && c.url(EU).starts_with("https://"));
    let ca = std::fs::read(c.dir.path().join("ca.pem")).unwrap();
    let (us, eu) = (client_with_ca(&c.url(US), US, &ca), client_with_ca(&c.url(EU), EU, &ca));
    replicated_pair(&us, "src", &eu, "dst").await;
    for i in 0..5 {
        put(&us, "src", &format!("k{i}"), &vec![i as u8; 100_000]).await;
    }
    wait_until("replicated over TLS", 30, || converged(&us, "src", &eu, "dst")).await;
    // A client that does not trust the CA cannot talk to the regions.
    let untrusting = client_for(&c.url(US), MAIN_AK, MAIN_SK, US, Mode::Default);
    assert!(untrusting.list_buckets().send().await.is_err());
}

#[tokio::test]
async fn a_large_object_replicates_as_parallel_parts() {
    let c = TestCluster::start(&[US, EU], |opts, _| {
        opts.replication.multipart_threshold = 8 << 20;
        opts.replication.part_size = 5 << 20;
    })
    .await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    let body: Vec<u8> = (0..23 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let etag = put(&us, "src", "big", &body).await.e_tag().unwrap().to_owned();
    wait_until("large object replicated", 60, || converged(&us, "src", &eu, "dst")).await;
    let h =
        eu.head_object().bucket("dst").key("big").checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(h.e_tag(), Some(etag.as_str()), "the replica reports the source ETag");
    let s =
        us.head_object().bucket("src").key("big").checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled).send().await.unwrap();
    assert!(s.checksum_crc32().is_some());
    assert_eq!(
        h.checksum_crc32(),
        s.checksum_crc32(),
        "the full-object checksum survives the multipart transfer"
    );
    assert_eq!(h.content_length(), Some(body.len() as i64));
    assert_eq!(get_bytes(&eu, "dst", "big").await, body);
}

#[tokio::test]
async fn every_rule_element_round_trips() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    let xml = r"<ReplicationConfiguration><Role>arn:aws:iam::123456789012:role/replication</Role>
      <Rule><ID>full</ID><Priority>7</Priority><Status>Enabled</Status>
        <Filter><And><Prefix>p/</Prefix><Tag><Key>a</Key><Value>1</Value></Tag><Tag><Key>b</Key><Value>2</Value></Tag></And></Filter>
        <DeleteMarkerReplication><Status>Disabled</Status></DeleteMarkerReplication>
        <DeleteReplication><Status>Enabled</Status></DeleteReplication>
        <ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>
        <SourceSelectionCriteria><ReplicaModifications><Status>Enabled</Status></ReplicaModifications></SourceSelectionCriteria>
        <Destination><Bucket>arn:aws:s3:::dst</Bucket><Account>123456789012</Account><StorageClass>GLACIER_IR</StorageClass>
          <AccessControlTranslation><Owner>Destination</Owner></AccessControlTranslation>
          <ReplicationTime><Status>Enabled</Status><Time><Minutes>15</Minutes></Time></ReplicationTime>
          <Metrics><Status>Enabled</Status></Metrics></Destination></Rule>
      <Rule><ID>legacy</ID><Status>Disabled</Status><Prefix>old/</Prefix><Destination><Bucket>arn:aws:s3:eu-west-1::dst</Bucket></Destination></Rule>
      </ReplicationConfiguration>";
    put_replication_xml(&us, "src", xml).await.unwrap();
    let got = us.get_bucket_replication().bucket("src").send().await.unwrap();
    let cfg = got.replication_configuration().unwrap();
    assert_eq!(cfg.role(), "arn:aws:iam::123456789012:role/replication");
    let r = &cfg.rules()[0];
    assert_eq!(r.id(), Some("full"));
    assert_eq!(r.priority(), Some(7));
    let and = r.filter().and_then(|f| f.and()).unwrap();
    assert_eq!(and.prefix(), Some("p/"));
    assert_eq!(and.tags().len(), 2);
    assert_eq!(r.existing_object_replication().map(|e| e.status().as_str()), Some("Enabled"));
    assert_eq!(
        r.source_selection_criteria().and_then(|s| s.replica_modifications()).map(|m| m.status().as_str()),
        Some("Enabled")
    );
    let d = r.destination().unwrap();
    assert_eq!(d.bucket(), "arn:aws:s3:eu-west-1::dst");
    assert_eq!(d.account(), Some("123456789012"));
    assert_eq!(d.storage_class().map(|s| s.as_str()), Some("GLACIER_IR"));
    assert!(d.access_control_translation().is_some());
    assert_eq!(d.replication_time().and_then(|t| t.time()).and_then(|t| t.minutes()), Some(15));
    assert!(d.metrics().is_some());
    let legacy = &cfg.rules()[1];
    #[allow(deprecated)] // the legacy top-level Prefix is what this rule uses
    let legacy_prefix = legacy.prefix();
    assert_eq!(legacy_prefix, Some("old/"));
    assert_eq!(legacy.status().as_str(), "Disabled");
    // Tag filters match only objects with every tag.
    us.put_object().bucket("src").key("p/yes").tagging("a=1&b=2").body(b"y".to_vec().into()).send().await.unwrap();
    us.put_object().bucket("src").key("p/no").tagging("a=1").body(b"n".to_vec().into()).send().await.unwrap();
    wait_until("p/yes replicated", 20, || async {
        eu.head_object().bucket("dst").key("p/yes").send().await.is_ok()
    })
    .await;
    assert!(eu.head_object().bucket("dst").key("p/no").send().await.is_err());
}

/// Replica headers set identity (version ids, times, owners, ACLs): only a replication
/// credential may send them, and only into a bucket that accepts the source it names. Bucket
/// owners, writers granted by ACLs, and replication credentials elsewhere are refused.
#[tokio::test]
async fn only_replication_credentials_may_write_replicas() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "open").await;
    us.put_bucket_acl().bucket("open").acl(aws_sdk_s3::types::BucketCannedAcl::PublicReadWrite).send().await.unwrap();
    create_versioned_bucket(&c.client_alt(US), "theirs").await;
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::Default);
    let meta = replica_header(&serde_json::json!({
        "format": 1, "source_region": "elsewhere", "version_id": "forged-version", "mtime_us": 1,
    }));
    let source = source_header("elsewhere", "src", MAIN_AK);
    let send = |client: &aws_sdk_s3::Client, bucket: &str, with_source: bool| {
        let (m, src) = (meta.clone(), source.clone());
        client
            .put_object()
            .bucket(bucket)
            .key("k")
            .body(b"x".to_vec().into())
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica", m.clone());
                if with_source {
                    r.headers_mut().insert("x-ferry-source", src.clone());
                }
            })
            .send()
    };
    let alt = c.client_alt(US);
    for (who, client) in [("a writer granted by the ACL", &alt), ("the bucket owner", &us)] {
        let e = send(client, "open", true).await.unwrap_err();
        assert_eq!(code(&e), "AccessDenied", "{who} cannot forge version ids");
    }
    let e = send(&repl, "open", false).await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "a replication request names its source");
    let e = send(&repl, "theirs", true).await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "a bucket of another account does not accept the source");
    // A replication credential writing for the bucket owner's account: accepted, and a second
    // delivery changes nothing.
    for _ in 0..2 {
        let out = send(&repl, "open", true).await.unwrap();
        assert_eq!(out.version_id(), Some("forged-version"));
    }
    assert_eq!(all_versions(&us, "open").await.len(), 1);
    assert_eq!(repl_status(&us, "open", "k", None).await.as_deref(), Some("REPLICA"));
    // It may do nothing else: no reads of data, no plain writes, no buckets.
    let src = source.clone();
    let e = repl.get_object().bucket("open").key("k").customize().mutate_request(with_source(src)).send().await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    let src = source.clone();
    let e = repl
        .put_object()
        .bucket("open")
        .key("plain")
        .body(b"x".to_vec().into())
        .customize()
        .mutate_request(with_source(src))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    assert_eq!(code(&repl.create_bucket().bucket("mine").send().await.unwrap_err()), "AccessDenied");
    assert_eq!(code(&repl.list_buckets().send().await.unwrap_err()), "AccessDenied");
}

/// A replica that brings its ETag and a full-object checksum is verified by the checksum (the
/// destination skips MD5): a body that does not match is refused, a matching one is stored with
/// the source's ETag.
#[tokio::test]
async fn replica_bodies_are_verified_by_their_checksum() {
    use ferry_store::checksum::{Algorithm, BodyDigest};
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let body = vec![9u8; 100_000];
    let crc = {
        let mut d = BodyDigest::new(&[Algorithm::Crc64Nvme]);
        d.update(&body);
        d.finish().checksum(Algorithm::Crc64Nvme).unwrap().to_owned()
    };
    let header = |vid: &str| {
        replica_header(&serde_json::json!({
            "format": 1, "source_region": "elsewhere", "version_id": vid, "mtime_us": 1_700_000_000_000_000i64,
            "etag": "0123456789abcdef0123456789abcdef",
        }))
    };
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::Default);
    let source = source_header("elsewhere", "src", MAIN_AK);
    let send = |vid: &'static str, data: Vec<u8>| {
        let (h, crc, src) = (header(vid), crc.clone(), source.clone());
        repl.put_object()
            .bucket("dst")
            .key("k")
            .checksum_crc64_nvme(crc)
            .body(data.into())
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica", h.clone());
                r.headers_mut().insert("x-ferry-source", src.clone());
            })
            .send()
    };
    let mut corrupted = body.clone();
    corrupted[50_000] ^= 1;
    let e = send("v-corrupt", corrupted).await.unwrap_err();
    assert_eq!(code(&e), "BadDigest", "{e:?}");
    assert!(all_versions(&us, "dst").await.is_empty(), "nothing stored from a corrupted replica");
    let out = send("v-good", body.clone()).await.unwrap();
    assert_eq!(out.version_id(), Some("v-good"));
    let h = us.head_object().bucket("dst").key("k").send().await.unwrap();
    assert_eq!(
        h.e_tag(),
        Some("\"0123456789abcdef0123456789abcdef\""),
        "the source's ETag, not a recomputed one"
    );
    assert_eq!(get_bytes(&us, "dst", "k").await, body);
}

/// A replica part carrying [`x-ferry-replica-part`] is verified by its checksum instead of MD5:
/// the part keeps the MD5 the source sent, or (cut from a larger body, MD5 unknown) the hex of
/// its checksum; a mismatching body is refused; the completed replica reads back whole.
#[tokio::test]
async fn replica_parts_are_verified_by_their_checksum() {
    use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
    use ferry_store::checksum::{Algorithm, BodyDigest};
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let one = vec![1u8; 5 << 20];
    let two = vec![2u8; 1000];
    let (md5_one, crc_one) = {
        let mut d = BodyDigest::new(&[Algorithm::Crc32]);
        d.update(&one);
        let r = d.finish();
        (r.md5_hex(), r.checksum(Algorithm::Crc32).unwrap().to_owned())
    };
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::Default);
    let source = source_header("elsewhere", "src", MAIN_AK);
    let src = source.clone();
    let up =
        repl.create_multipart_upload().bucket("dst").key("k").customize().mutate_request(with_source(src)).send().await.unwrap();
    let id = up.upload_id().unwrap().to_owned();
    // `crc32`: a stored checksum sent as a header; `None`: a CRC64NVME trailer computed while
    // sending (what a source does for a part whose checksum it does not have).
    let part = |n: i32, data: Vec<u8>, header: String, crc32: Option<String>| {
        let req = repl.upload_part().bucket("dst").key("k").upload_id(&id).part_number(n).body(data.into());
        let req = match crc32 {
            Some(c) => req.checksum_crc32(c),
            None => req.checksum_algorithm(ChecksumAlgorithm::Crc64Nvme),
        };
        let src = source.clone();
        req.customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica-part", header.clone());
                r.headers_mut().insert("x-ferry-source", src.clone());
            })
            .send()
    };
    let e = part(1, one.clone(), "zz".into(), Some(crc_one.clone())).await.unwrap_err();
    assert_eq!(code(&e), "InvalidArgument", "{e:?}");
    let mut corrupted = one.clone();
    corrupted[4096] ^= 0x10;
    let e = part(1, corrupted, String::new(), Some(crc_one.clone())).await.unwrap_err();
    assert_eq!(code(&e), "BadDigest", "{e:?}");
    // The source's MD5 given, the body checked against the source part's stored CRC32.
    let p1 = part(1, one.clone(), md5_one.clone(), Some(crc_one.clone())).await.unwrap();
    assert_eq!(p1.e_tag(), Some(format!("\"{md5_one}\"").as_str()));
    // MD5 unknown: a CRC64NVME trailer computed while sending checks the body and names the part.
    let p2 = part(2, two.clone(), String::new(), None).await.unwrap();
    let etag2 = p2.e_tag().unwrap().trim_matches('"').to_owned();
    assert_eq!(etag2.len(), 16, "hex of the 8-byte CRC64NVME, not an MD5: {etag2}");
    let header = replica_header(&serde_json::json!({
        "format": 1, "source_region": "elsewhere", "version_id": "v-mp", "mtime_us": 1_700_000_000_000_000i64,
        "etag": "00112233445566778899aabbccddeeff-2",
    }));
    let parts = vec![
        CompletedPart::builder().part_number(1).e_tag(p1.e_tag().unwrap()).build(),
        CompletedPart::builder().part_number(2).e_tag(p2.e_tag().unwrap()).build(),
    ];
    repl.complete_multipart_upload()
        .bucket("dst")
        .key("k")
        .upload_id(&id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .customize()
        .mutate_request(move |r| {
            r.headers_mut().insert("x-ferry-replica", header.clone());
            r.headers_mut().insert("x-ferry-source", source.clone());
        })
        .send()
        .await
        .unwrap();
    let h = us.head_object().bucket("dst").key("k").send().await.unwrap();
    assert_eq!(h.version_id(), Some("v-mp"));
    assert_eq!(h.e_tag(), Some("\"00112233445566778899aabbccddeeff-2\""));
    assert_eq!(get_bytes(&us, "dst", "k").await, [one, two].concat());
}

/// A source uploaded in parts with per-part checksums replicates each part checked against the
/// checksum stored with it at the source; the object keeps its checksum and its type, composite
/// (SHA-256) or full-object (CRC32, the parts' CRCs combined).
#[tokio::test]
async fn multipart_objects_with_part_checksums_replicate() {
    use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
    let (_c, us, eu) = pair().await;
    for (alg, kind) in
        [(ChecksumAlgorithm::Sha256, ChecksumType::Composite), (ChecksumAlgorithm::Crc32, ChecksumType::FullObject)]
    {
        let key = format!("mp-{}", alg.as_str());
        let up = us
            .create_multipart_upload()
            .bucket("src")
            .key(&key)
            .checksum_algorithm(alg.clone())
            .checksum_type(kind.clone())
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap();
        let mut parts = Vec::new();
        for n in 1..=2 {
            let data = vec![n as u8 + 40; if n < 2 { 5 * 1024 * 1024 } else { 777 }];
            let out = us
                .upload_part()
                .bucket("src")
                .key(&key)
                .upload_id(id)
                .part_number(n)
                .checksum_algorithm(alg.clone())
                .body(data.into())
                .send()
                .await
                .unwrap();
            let part = CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap());
            parts.push(
                match alg {
                    ChecksumAlgorithm::Sha256 => part.checksum_sha256(out.checksum_sha256().unwrap()),
                    _ => part.checksum_crc32(out.checksum_crc32().unwrap()),
                }
                .build(),
            );
        }
        us.complete_multipart_upload()
            .bucket("src")
            .key(&key)
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .unwrap();
        wait_until("multipart replicated", 30, || converged(&us, "src", &eu, "dst")).await;
        let s = us.head_object().bucket("src").key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        let d = eu.head_object().bucket("dst").key(&key).checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
        assert_eq!(d.e_tag(), s.e_tag());
        assert_eq!(s.checksum_type(), Some(&kind), "{key}");
        assert_eq!(d.checksum_type(), Some(&kind), "{key}");
        let value = |h: &aws_sdk_s3::operation::head_object::HeadObjectOutput| {
            h.checksum_sha256().or(h.checksum_crc32()).map(str::to_owned)
        };
        assert!(value(&s).is_some(), "{key}");
        assert_eq!(value(&d), value(&s), "{key}: the object's checksum is the source's");
        assert_eq!(get_bytes(&us, "src", &key).await, get_bytes(&eu, "dst", &key).await);
    }
}
