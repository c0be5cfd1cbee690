//! Replication an operator can trust: who may write replicas and where, clock bounds, delivery
//! tracked per destination, keys that never wedge, and S3 targets that end in the source's
//! state. Each test reproduces something a user could do to break that promise.

use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{Tag, Tagging};
use serde_json::json;

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

/// 900 years from now, in microseconds.
fn far_future_us() -> i64 {
    now_us() + 900 * 365 * 24 * 3600 * 1_000_000
}

/// Last-Modified of the latest version of `key`, µs.
async fn last_modified_us(c: &aws_sdk_s3::Client, bucket: &str, key: &str) -> i64 {
    let h = c.head_object().bucket(bucket).key(key).send().await.unwrap();
    h.last_modified().unwrap().to_millis().unwrap() * 1000
}

/// The holder of a presigned PUT URL adds an `x-ferry-replica` header the signature does not
/// cover, naming the key's pre-versioning `null` version and a time 900 years ahead. It must be
/// refused, change nothing, and leave the region's clock alone.
#[tokio::test]
async fn a_presigned_put_cannot_rewrite_history_with_a_replica_header() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_bucket(&us, "docs").await;
    put(&us, "docs", "report.pdf", b"the original report").await;
    enable_versioning(&us, "docs").await;
    let presigned = us
        .put_object()
        .bucket("docs")
        .key("report.pdf")
        .presigned(PresigningConfig::expires_in(Duration::from_secs(300)).unwrap())
        .await
        .unwrap();
    let forged = replica_header(&json!({
        "format": 1, "source_region": "elsewhere", "version_id": "null", "mtime_us": far_future_us(),
    }));
    let r = send_presigned_with(&presigned, &[("x-ferry-replica", &forged)], b"forged bytes").await;
    assert_eq!((r.status, r.code()), (403, Some("AccessDenied")), "{}", r.body);
    let null = us.get_object().bucket("docs").key("report.pdf").version_id("null").send().await.unwrap();
    assert_eq!(null.body.collect().await.unwrap().into_bytes().as_ref(), b"the original report");
    // The same URL without the header still works: it adds a version.
    let r = send_presigned(&presigned, b"a new version").await;
    assert_eq!(r.status, 200, "{}", r.body);
    put(&us, "docs", "later.txt", b"x").await;
    let t = last_modified_us(&us, "docs", "later.txt").await;
    assert!(t < now_us() + 3_600_000_000, "the region's clock moved: Last-Modified {t}");
}

/// A bucket owner signs a PutObject carrying a replica header with a far-future time: bucket
/// owners are not replication principals, and nothing a client sends can move the clock.
#[tokio::test]
async fn a_bucket_owner_cannot_forge_replicas_or_move_the_clock() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "mine").await;
    let forged = replica_header(&json!({
        "format": 1, "source_region": "elsewhere", "version_id": "0193aaaa-forged", "mtime_us": far_future_us(),
    }));
    let e = us
        .put_object()
        .bucket("mine")
        .key("k")
        .body(b"x".to_vec().into())
        .customize()
        .mutate_request(move |r| {
            r.headers_mut().insert("x-ferry-replica", forged.clone());
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDenied");
    assert!(all_versions(&us, "mine").await.is_empty(), "nothing was written");
    create_versioned_bucket(&c.client_alt(US), "theirs").await;
    put(&c.client_alt(US), "theirs", "k", b"x").await;
    let t = last_modified_us(&c.client_alt(US), "theirs", "k").await;
    assert!(t < now_us() + 3_600_000_000, "another tenant's object got Last-Modified {t}");
}

/// With two credentials in one file, user B puts a rule whose destination is a bucket user A
/// owns in another region. It must be refused: B may not write there.
#[tokio::test]
async fn a_tenant_cannot_replicate_into_another_tenants_bucket() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (a_eu, b_us) = (c.client(EU), c.client_alt(US));
    create_versioned_bucket(&a_eu, "admin-data").await;
    put(&a_eu, "admin-data", "payroll.csv", b"name,salary\n").await;
    create_versioned_bucket(&b_us, "x-src").await;
    let e = b_us
        .put_bucket_replication()
        .bucket("x-src")
        .replication_configuration(simple_rules(&["arn:aws:s3:::admin-data"]))
        .send()
        .await
        .expect_err("a rule into another tenant's bucket must be refused");
    assert_eq!(code(&e), "AccessDenied");
    // Pinned to the region, the answer is the same.
    let e = b_us
        .put_bucket_replication()
        .bucket("x-src")
        .replication_configuration(simple_rules(&["arn:aws:s3:eu-west-1::admin-data"]))
        .send()
        .await
        .expect_err("a rule into another tenant's bucket must be refused");
    assert_eq!(code(&e), "AccessDenied");
    assert_eq!(all_versions(&a_eu, "admin-data").await.len(), 1);
}

/// `photos` replicates to `dr-one`; a second rule to `dr-two` with ExistingObjectReplication
/// must copy the 50 objects `dr-one` already has, and status must not claim 100 % before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_destination_receives_the_existing_objects() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "photos", &eu, "dr-one").await;
    create_versioned_bucket(&eu, "dr-two").await;
    for i in 0..50 {
        put(&us, "photos", &format!("img/{i:03}.jpg"), format!("photo {i}").as_bytes()).await;
    }
    wait_until("50 objects at dr-one", 30, || async { all_versions(&eu, "dr-one").await.len() == 50 }).await;
    let xml = "<ReplicationConfiguration><Role></Role>\
        <Rule><ID>one</ID><Priority>1</Priority><Status>Enabled</Status><Filter><Prefix></Prefix></Filter>\
        <DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
        <Destination><Bucket>arn:aws:s3:::dr-one</Bucket></Destination></Rule>\
        <Rule><ID>two</ID><Priority>2</Priority><Status>Enabled</Status><Filter><Prefix></Prefix></Filter>\
        <DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
        <ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>\
        <Destination><Bucket>arn:aws:s3:::dr-two</Bucket></Destination></Rule></ReplicationConfiguration>";
    put_replication_xml(&us, "photos", xml).await.unwrap();
    let store = c.store(US);
    wait_until("the backfill for dr-two finishes", 30, || async {
        let p = ferry_store::replication::progress::bucket_progress(&store, "photos", US).await.unwrap();
        p.backfills.first().is_some_and(|b| b.state == ferry_store::replication::BackfillState::Done)
    })
    .await;
    let p = ferry_store::replication::progress::bucket_progress(&store, "photos", US).await.unwrap();
    let two = p.rules.iter().find(|r| r.id == "two").unwrap();
    assert_eq!(two.historical_ratio, Some(1.0));
    assert_eq!(all_versions(&eu, "dr-two").await.len(), 50, "a finished backfill has copied every object");
    assert!(compare_buckets(&us, "photos", &eu, "dr-two").await.is_empty());
}

/// An object written before its rule is tagged, then overwritten: the tag change must not wedge
/// the key, and the new version must replicate.
#[tokio::test]
async fn tagging_an_old_object_does_not_wedge_its_key() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "docs").await;
    create_versioned_bucket(&eu, "docs-dr").await;
    let old = put(&us, "docs", "docs/old.txt", b"written before the rule").await;
    us.put_bucket_replication()
        .bucket("docs")
        .replication_configuration(simple_rules(&["arn:aws:s3:::docs-dr"]))
        .send()
        .await
        .unwrap();
    let tagging = Tagging::builder().tag_set(Tag::builder().key("class").value("old").build().unwrap()).build().unwrap();
    us.put_object_tagging().bucket("docs").key("docs/old.txt").tagging(tagging).send().await.unwrap();
    let new = put(&us, "docs", "docs/old.txt", b"the new version").await;
    let new_vid = new.version_id().unwrap().to_owned();
    wait_for_version("the new version replicates", 20, &eu, "docs-dr", "docs/old.txt", &new_vid).await;
    // The tagged version went as a whole: the destination has it, with its tag.
    let old_vid = old.version_id().unwrap().to_owned();
    wait_until("the tagged old version replicates whole", 20, || async {
        eu.get_object_tagging()
            .bucket("docs-dr")
            .key("docs/old.txt")
            .version_id(&old_vid)
            .send()
            .await
            .is_ok_and(|t| t.tag_set().len() == 1)
    })
    .await;
    wait_until("nothing pending", 20, || async {
        repl_status(&us, "docs", "docs/old.txt", Some(&old_vid)).await.as_deref() == Some("COMPLETED")
    })
    .await;
}

/// A backfill to a third-party S3 target (its own version ids, arrival order decides the
/// current object) must end with the source's current state: v3 current, a deleted key deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_to_an_s3_target_ends_with_the_current_version() {
    let moto = Moto::start();
    let target = client_for(&moto.url, "testing", "testing", US, Mode::WhenRequired);
    create_versioned_bucket(&target, "archive").await;
    let url = moto.url.clone();
    let c = TestCluster::start(&[US], move |o, _| {
        o.peers.push(moto_peer(&url));
    })
    .await;
    let us = c.client(US);
    create_versioned_bucket(&us, "src").await;
    for v in ["v1", "v2", "v3"] {
        put(&us, "src", "k", v.as_bytes()).await;
    }
    put(&us, "src", "d", b"d1").await;
    put(&us, "src", "d", b"d2").await;
    us.delete_object().bucket("src").key("d").send().await.unwrap();
    let xml = "<ReplicationConfiguration><Role></Role><Rule><ID>all</ID><Priority>1</Priority><Status>Enabled</Status>\
        <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
        <ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>\
        <Destination><Bucket>arn:aws:s3:moto::archive</Bucket></Destination></Rule></ReplicationConfiguration>";
    put_replication_xml(&us, "src", xml).await.unwrap();
    let store = c.store(US);
    wait_until("the backfill finishes", 30, || async {
        let p = ferry_store::replication::progress::bucket_progress(&store, "src", US).await.unwrap();
        p.backfills.first().is_some_and(|b| b.state == ferry_store::replication::BackfillState::Done)
    })
    .await;
    assert_eq!(
        get_bytes(&target, "archive", "k").await,
        b"v3",
        "the target's current object is the source's"
    );
    assert!(
        target.get_object().bucket("archive").key("d").send().await.is_err(),
        "a deleted key stays deleted"
    );
}

/// A replica whose time is further ahead of this region's clock than `max_clock_skew` is
/// refused with RequestTimeTooSkewed (a transient error for its source); within the bound it is
/// accepted, and the region's next write orders after it.
#[tokio::test]
async fn replica_times_beyond_the_clock_skew_are_refused() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::WhenRequired);
    let send = |vid: &str, mtime_us: i64| {
        let h = replica_header(&json!({"format": 1, "source_region": "elsewhere", "version_id": vid, "mtime_us": mtime_us}));
        let src = source_header("elsewhere", "src", MAIN_AK);
        repl.put_object()
            .bucket("dst")
            .key("k")
            .body(b"x".to_vec().into())
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica", h.clone());
                r.headers_mut().insert("x-ferry-source", src.clone());
            })
            .send()
    };
    let e = send("v-ahead", now_us() + 3_600_000_000).await.unwrap_err();
    assert_eq!(code(&e), "RequestTimeTooSkewed");
    assert!(all_versions(&us, "dst").await.is_empty());
    let ahead = now_us() + 60_000_000;
    send("v-near", ahead).await.unwrap();
    put(&us, "dst", "later", b"y").await;
    let t = last_modified_us(&us, "dst", "later").await;
    // Last-Modified has second precision.
    assert!(
        t >= ahead / 1_000_000 * 1_000_000 && t < ahead + 3_600_000_000,
        "the clock observed the replica, within bounds: {t}"
    );
}

/// Another account may replicate into a bucket whose owner allows it (`ferry replication
/// sources`), but only adds: its replicas never replace what the owner wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_account_may_only_add_versions() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (a_eu, b_us) = (c.client(EU), c.client_alt(US));
    create_bucket(&a_eu, "shared").await;
    put(&a_eu, "shared", "report", b"written by the owner").await;
    enable_versioning(&a_eu, "shared").await;
    create_bucket(&b_us, "b-src").await;
    put(&b_us, "b-src", "report", b"written by the other account").await;
    enable_versioning(&b_us, "b-src").await;
    let xml = "<ReplicationConfiguration><Role></Role><Rule><ID>in</ID><Priority>1</Priority><Status>Enabled</Status>\
        <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
        <ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>\
        <Destination><Bucket>arn:aws:s3:::shared</Bucket></Destination></Rule></ReplicationConfiguration>";
    assert_eq!(put_replication_xml(&b_us, "b-src", xml).await, Err("AccessDenied".to_owned()));
    let (code, out) = c.ferry_replication(EU, "sources", "shared", &["--add", &format!("{ALT_AK}@{US}")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&account_of(ALT_AK)), "{out}");
    put_replication_xml(&b_us, "b-src", xml).await.unwrap();
    put(&b_us, "b-src", "planted.txt", b"new").await;
    // (The replica belongs to the other account, as at its source: the owner sees it listed.)
    let listed = |key: &'static str| {
        let a_eu = a_eu.clone();
        async move { all_versions(&a_eu, "shared").await.iter().any(|v| v.key == key) }
    };
    wait_until("the new object arrives", 20, || listed("planted.txt")).await;
    // The other account's `null` version of `report` may not replace the owner's.
    wait_until("the backfill's null version fails", 30, || async {
        c.dest_stats(US, "b-src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = c.dest_stats(US, "b-src").await;
    assert!(s[0].last_error.as_deref().is_some_and(|e| e.contains("AccessDenied")), "{s:?}");
    let null = a_eu.get_object().bucket("shared").key("report").version_id("null").send().await.unwrap();
    assert_eq!(null.body.collect().await.unwrap().into_bytes().as_ref(), b"written by the owner");
    // Removing the grant stops it.
    let (code, out) = c.ferry_replication(EU, "sources", "shared", &["--remove", &format!("{}@{US}", account_of(ALT_AK))]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("only from its owner"), "{out}");
    put(&b_us, "b-src", "after.txt", b"refused").await;
    wait_until("refused at the destination", 30, || async {
        c.dest_stats(US, "b-src").await.iter().any(|s| s.failed_ops == 2)
    })
    .await;
    assert!(!listed("after.txt").await);
}

/// Cross-account replication allowed the AWS way: the destination bucket's policy names the
/// source account's replication role. A Deny of it stops the replicas again, and the source
/// reports why.
#[tokio::test]
async fn a_destination_policy_can_accept_another_accounts_replicas() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (a_eu, b_us) = (c.client(EU), c.client_alt(US));
    create_bucket(&a_eu, "by-policy").await;
    enable_versioning(&a_eu, "by-policy").await;
    create_bucket(&b_us, "b-pol-src").await;
    enable_versioning(&b_us, "b-pol-src").await;
    let xml = "<ReplicationConfiguration><Role></Role><Rule><ID>in</ID><Priority>1</Priority><Status>Enabled</Status>\
        <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
        <Destination><Bucket>arn:aws:s3:::by-policy</Bucket></Destination></Rule></ReplicationConfiguration>";
    assert_eq!(put_replication_xml(&b_us, "b-pol-src", xml).await, Err("AccessDenied".to_owned()));
    let statement = |effect: &str| {
        format!(
            r#"{{"Sid": "{effect}", "Effect": "{effect}", "Principal": {{"AWS": "arn:aws:iam::{}:role/replication"}},
                "Action": ["s3:ReplicateObject", "s3:ReplicateDelete", "s3:ReplicateTags"], "Resource": "arn:aws:s3:::by-policy/*"}}"#,
            account_of(ALT_AK)
        )
    };
    let allow = format!(r#"{{"Version": "2012-10-17", "Statement": [{}]}}"#, statement("Allow"));
    a_eu.put_bucket_policy().bucket("by-policy").policy(&allow).send().await.unwrap();
    put_replication_xml(&b_us, "b-pol-src", xml).await.unwrap();
    put(&b_us, "b-pol-src", "allowed.txt", b"by policy").await;
    let listed = |key: &'static str| {
        let a_eu = a_eu.clone();
        async move { all_versions(&a_eu, "by-policy").await.iter().any(|v| v.key == key) }
    };
    wait_until("the replica arrives", 20, || listed("allowed.txt")).await;

    let deny = format!(
        r#"{{"Version": "2012-10-17", "Statement": [{}, {}]}}"#,
        statement("Allow"),
        statement("Deny")
    );
    a_eu.put_bucket_policy().bucket("by-policy").policy(&deny).send().await.unwrap();
    put(&b_us, "b-pol-src", "denied.txt", b"refused").await;
    wait_until("refused at the destination", 30, || async {
        c.dest_stats(US, "b-pol-src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = c.dest_stats(US, "b-pol-src").await;
    assert!(
        s[0].last_error.as_deref().is_some_and(|e| e.contains("denies s3:ReplicateObject")),
        "{s:?}"
    );
    assert!(!listed("denied.txt").await);
}

/// A copy the bucket owner makes of another account's replica is the owner's object: it does
/// not keep the replica's origin, so that account's source can no more remove or re-tag the
/// copy than anything else the owner wrote (it may only change what it replicated).
#[tokio::test]
async fn a_copy_of_another_accounts_replica_is_not_that_accounts_to_change() {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let (rc, out) = c.ferry_replication(US, "sources", "dst", &["--add", &format!("{ALT_AK}@elsewhere")]).await;
    assert_eq!(rc, 0, "{out}");
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::WhenRequired);
    let src = source_header("elsewhere", "src", ALT_AK);
    let h = replica_header(&json!({"format": 1, "source_region": "elsewhere", "version_id": "v-alt", "mtime_us": now_us()}));
    let s = src.clone();
    repl.put_object()
        .bucket("dst")
        .key("k")
        .body(b"from the other account".to_vec().into())
        .customize()
        .mutate_request(move |r| {
            r.headers_mut().insert("x-ferry-replica", h.clone());
            r.headers_mut().insert("x-ferry-source", s.clone());
        })
        .send()
        .await
        .unwrap();
    let copy = us.copy_object().bucket("dst").key("copy").copy_source("dst/k").send().await.unwrap();
    let copy_vid = copy.version_id().unwrap().to_owned();
    // A version deletion as a source sends it.
    let delete = |key: &'static str, vid: String| {
        let s = src.clone();
        let h = replica_header(&json!({"format": 1, "source_region": "elsewhere", "version_id": vid, "mtime_us": 0}));
        repl.delete_object()
            .bucket("dst")
            .key(key)
            .version_id(vid)
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica", h.clone());
                r.headers_mut().insert("x-ferry-source", s.clone());
            })
            .send()
    };
    let e = delete("copy", copy_vid.clone()).await.unwrap_err();
    assert_eq!(code(&e), "AccessDenied", "the owner's copy is not the other account's replica");
    let kept = us.head_object().bucket("dst").key("copy").version_id(&copy_vid).send().await.unwrap();
    assert_eq!(kept.version_id(), Some(copy_vid.as_str()));
    // What it replicated it may still remove.
    delete("k", "v-alt".to_owned()).await.unwrap();
}
