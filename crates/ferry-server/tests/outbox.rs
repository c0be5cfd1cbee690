//! The outbox under the conditions the review found it failing in: destinations that fail one
//! at a time, rules that share a destination or change under pending jobs, backfills that wait,
//! S3 targets, multipart transfers that resume with other settings or ship corrupt data, mutual
//! replication of deletes and tags, and jobs that would wait for ever.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Tag, Tagging};

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

fn tagging(k: &str, v: &str) -> Tagging {
    Tagging::builder().tag_set(Tag::builder().key(k).value(v).build().unwrap()).build().unwrap()
}

async fn tags(c: &aws_sdk_s3::Client, bucket: &str, key: &str, version: Option<&str>) -> Vec<(String, String)> {
    let t = c.get_object_tagging().bucket(bucket).key(key).set_version_id(version.map(str::to_owned)).send().await.unwrap();
    t.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect()
}

/// A rule's XML: `(id, priority, prefix, destination ARN, extra elements)`.
pub(crate) fn rules_xml(rules: &[(Option<&str>, i32, &str, &str, &str)]) -> String {
    let mut x = String::from("<ReplicationConfiguration><Role></Role>");
    for (id, prio, prefix, dest, extra) in rules {
        x.push_str("<Rule>");
        if let Some(id) = id {
            x.push_str(&format!("<ID>{id}</ID>"));
        }
        x.push_str(&format!(
            "<Priority>{prio}</Priority><Status>Enabled</Status><Filter><Prefix>{prefix}</Prefix></Filter>\
             <DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>{extra}\
             <Destination><Bucket>{dest}</Bucket>"
        ));
        if extra.contains("<!--owner-->") {
            x.push_str(
                "<Account>000000000000</Account><AccessControlTranslation><Owner>Destination</Owner></AccessControlTranslation>",
            );
        }
        x.push_str("</Destination></Rule>");
    }
    x.push_str("</ReplicationConfiguration>");
    x
}

/// One destination bucket answering 503 SlowDown must not hold back another bucket on the same
/// peer: each destination keeps its own queue and failure state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_destination_bucket_does_not_hold_back_the_others() {
    let eu_side = TestCluster::start(&[EU], |_, _| {}).await;
    let eu = eu_side.client(EU);
    create_versioned_bucket(&eu, "slow").await;
    create_versioned_bucket(&eu, "fast").await;
    let proxy = SlowDownProxy::start(eu_side.server.as_ref().unwrap().regions()[0].addr).await;
    let peer_url = proxy.url();
    let us_side = TestCluster::start(&[US], move |o, _| {
        o.peers.push(ferry_core::config::PeerConfig {
            name: "eu-far".into(),
            endpoint: peer_url,
            access_key: REPL_AK.into(),
            secret_key: REPL_SK.into(),
            ca_file: None,
            kind: ferry_core::config::PeerKind::Ferry,
            region: Some(EU.into()),
            accounts: Vec::new(),
        });
    })
    .await;
    let us = us_side.client(US);
    create_versioned_bucket(&us, "src").await;
    let xml = rules_xml(&[
        (Some("to-slow"), 1, "", "arn:aws:s3:eu-far::slow", ""),
        (Some("to-fast"), 2, "", "arn:aws:s3:eu-far::fast", ""),
    ]);
    put_replication_xml(&us, "src", &xml).await.unwrap();
    proxy.refuse("slow");
    for i in 0..100 {
        put(&us, "src", &format!("k{i:03}"), b"x").await;
    }
    wait_until("every object at the destination that works", 60, || async {
        all_versions(&eu, "fast").await.len() == 100
    })
    .await;
    assert!(all_versions(&eu, "slow").await.is_empty());
    let stats = us_side.dest_stats(US, "src").await;
    let slow = stats.iter().find(|s| s.dest_bucket == "slow").unwrap();
    assert_eq!(slow.pending_ops, 100);
    assert!(slow.last_error.as_deref().is_some_and(|e| e.contains("SlowDown")), "{slow:?}");
}

/// Two rules to one destination: the broad rule must not report "caught up" while a change in
/// its scope (recorded under the narrower rule) is undelivered.
#[tokio::test]
async fn replicated_up_to_covers_every_rule_to_a_destination() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    let xml = rules_xml(&[(Some("all"), 1, "", "arn:aws:s3:::dst", ""), (Some("logs"), 5, "logs/", "arn:aws:s3:::dst", "")]);
    put_replication_xml(&us, "src", &xml).await.unwrap();
    // The destination goes away: the change cannot be delivered.
    eu.delete_bucket().bucket("dst").send().await.unwrap();
    put(&us, "src", "logs/x", b"x").await;
    let store = c.store(US);
    wait_until("the job fails", 20, || async {
        c.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let written = store.meta.read(|r| r.get_latest("src", "logs/x")).await.unwrap().unwrap().mtime_us;
    let p = ferry_store::replication::progress::bucket_progress(&store, "src", US).await.unwrap();
    assert_eq!(p.rules.len(), 2);
    for r in &p.rules {
        assert_ne!(
            r.state,
            ferry_store::replication::progress::RuleState::CaughtUp,
            "rule {} claims to be caught up with logs/x undelivered",
            r.id
        );
        assert!(r.replicated_up_to_us <= written, "rule {}: T is after the undelivered change", r.id);
    }
}

/// Rules without IDs are numbered by position; re-ordering them must not change how pending
/// jobs are sent (here: a rule that gives replicas to the destination owner).
#[tokio::test]
async fn pending_jobs_keep_the_options_of_the_rule_that_recorded_them() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    us.put_bucket_acl().bucket("src").acl(aws_sdk_s3::types::BucketCannedAcl::PublicReadWrite).send().await.unwrap();
    create_versioned_bucket(&eu, "dst-one").await;
    create_versioned_bucket(&eu, "dst-two").await;
    let owner_rule = (None, 2, "a/", "arn:aws:s3:::dst-one", "<!--owner-->");
    let plain_rule = (None, 1, "b/", "arn:aws:s3:::dst-two", "");
    put_replication_xml(&us, "src", &rules_xml(&[owner_rule, plain_rule])).await.unwrap();
    eu.delete_bucket().bucket("dst-one").send().await.unwrap();
    // Another account writes under a/: its job (recorded by rule-1, owner override) fails.
    put(&c.client_alt(US), "src", "a/x", b"x").await;
    wait_until("the job fails", 20, || async {
        c.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    create_versioned_bucket(&eu, "dst-one").await;
    // Same rules, other order: rule-1 is now the plain one.
    put_replication_xml(&us, "src", &rules_xml(&[plain_rule, owner_rule])).await.unwrap();
    let (code, out) = c.ferry_replication(US, "retry", "src", &[]).await;
    assert_eq!(code, 0, "{out}");
    wait_until("the replica arrives", 20, || async {
        eu.head_object().bucket("dst-one").key("a/x").send().await.is_ok()
    })
    .await;
    let acl = eu.get_object_acl().bucket("dst-one").key("a/x").send().await.unwrap();
    assert_eq!(
        acl.owner().and_then(|o| o.id()),
        Some(account_of(MAIN_AK).as_str()),
        "the replica belongs to the destination owner, as the rule that recorded the job said"
    );
}

/// Backfills take turns: one that waits for a destination that is down must not stop another
/// bucket's backfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_backfill_does_not_hold_back_the_others() {
    let t = TwoProcesses::configure(Link::Wan(LinkSpec { delay: Duration::from_millis(25), ..LinkSpec::default() }), "").await;
    let _us_p = t.spawn_us();
    let _eu_p = t.spawn_eu();
    let (us, eu) = (t.us(), t.eu());
    create_versioned_bucket(&us, "big").await;
    create_versioned_bucket(&eu, "big-dr").await;
    create_versioned_bucket(&us, "small").await;
    create_versioned_bucket(&us, "small-dr").await;
    {
        use futures::StreamExt as _;
        futures::stream::iter(0..4000)
            .map(|i| {
                let us = us.clone();
                async move { put(&us, "big", &format!("o/{i:05}"), b"x").await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
    }
    for i in 0..20 {
        put(&us, "small", &format!("s/{i:02}"), b"y").await;
    }
    let history = "<ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>";
    put_replication_xml(&us, "big", &rules_xml(&[(Some("h"), 1, "", "arn:aws:s3:eu-west-1::big-dr", history)])).await.unwrap();
    // The destination of the first backfill goes dark: its window fills and it waits.
    t.link().set_partition(Partition::Blackhole);
    put_replication_xml(&us, "small", &rules_xml(&[(Some("h"), 1, "", "arn:aws:s3:us-east-1::small-dr", history)]))
        .await
        .unwrap();
    wait_until("the second backfill completes", 60, || async {
        all_versions(&us, "small-dr").await.len() == 20
    })
    .await;
    t.link().set_partition(Partition::None);
}

/// A version whose data file is gone cannot be sent: FAILED with the reason, not retried for
/// ever.
#[tokio::test]
async fn a_missing_source_blob_fails_with_a_reason() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    put(&us, "src", "big", &vec![5u8; 200_000]).await;
    let v = c.store(US).meta.read(|r| r.get_latest("src", "big")).await.unwrap().unwrap();
    for blob in v.layout.blobs() {
        remove_blob_file(&c.dir.path().join(US), &blob);
    }
    let history = "<ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>";
    put_replication_xml(&us, "src", &rules_xml(&[(Some("h"), 1, "", "arn:aws:s3:::dst", history)])).await.unwrap();
    wait_until("the job fails", 30, || async {
        c.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = c.dest_stats(US, "src").await;
    assert!(s[0].last_error.as_deref().is_some_and(|e| e.contains("source data missing")), "{s:?}");
    let v = c.store(US).meta.read(|r| r.get_latest("src", "big")).await.unwrap().unwrap();
    assert_eq!(v.repl_status, Some(ferry_store::model::ReplStatus::Failed));
}

/// A region with object `src/big` (200,000 bytes, returned) in a blob file (its path, returned).
async fn an_object_in_a_blob_file() -> (TestCluster, Vec<u8>, std::path::PathBuf) {
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "src").await;
    let body = vec![7u8; 200_000];
    put(&us, "src", "big", &body).await;
    let v = c.store(US).meta.read(|r| r.get_latest("src", "big")).await.unwrap().unwrap();
    let blob = v.layout.blobs().into_iter().next().expect("a body in a blob file");
    let file = find_file(&c.dir.path().join(US).join("blobs"), &blob).expect("blob file");
    (c, body, file)
}

/// A blob the disk fails to look up (here a file where its directory should be) is not
/// reported as lost: a GET answers 503 ServiceUnavailable, to be retried, not InternalError
/// "missing from storage"; once the disk is sound again the object reads back whole.
#[tokio::test]
async fn a_blob_the_disk_cannot_look_up_is_not_reported_missing() {
    let (c, body, file) = an_object_in_a_blob_file().await;
    let us = c.client(US);
    let top = file.parent().and_then(std::path::Path::parent).expect("blobs/ab").to_owned();
    let aside = top.with_extension("aside");
    std::fs::rename(&top, &aside).unwrap();
    std::fs::write(&top, b"not a directory").unwrap();
    let err = us.get_object().bucket("src").key("big").send().await.expect_err("not readable");
    assert_eq!(code(&err), "ServiceUnavailable", "{err:?}");
    std::fs::remove_file(&top).unwrap();
    std::fs::rename(&aside, &top).unwrap();
    let got = us.get_object().bucket("src").key("big").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), &body[..]);
}

/// A copy source whose data is there but cannot be read (here a directory where its blob file
/// should be) is the region's fault, not the request's: CopyObject and UploadPartCopy answer
/// 503 ServiceUnavailable, to be retried, not 400 IncompleteBody ("the request body could not
/// be read"); once the disk is sound again both copy the object whole.
#[tokio::test]
async fn a_copy_source_the_disk_cannot_read_is_not_the_clients_fault() {
    let (c, body, file) = an_object_in_a_blob_file().await;
    let us = c.client(US);
    let aside = file.with_extension("aside");
    std::fs::rename(&file, &aside).unwrap();
    std::fs::create_dir(&file).unwrap();
    let copy = || us.copy_object().bucket("src").key("copy").copy_source("src/big").send();
    let err = copy().await.expect_err("not readable");
    assert_eq!(code(&err), "ServiceUnavailable", "CopyObject: {err:?}");
    let upload = us.create_multipart_upload().bucket("src").key("parts").send().await.unwrap();
    let upload_id = upload.upload_id().unwrap();
    let part_copy =
        || us.upload_part_copy().bucket("src").key("parts").upload_id(upload_id).part_number(1).copy_source("src/big").send();
    let err = part_copy().await.expect_err("not readable");
    assert_eq!(code(&err), "ServiceUnavailable", "UploadPartCopy: {err:?}");
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    copy().await.unwrap();
    part_copy().await.unwrap();
    let got = us.get_object().bucket("src").key("copy").send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), &body[..]);
}

/// A copy source whose blob file is shorter than its record (damaged) answers 500
/// InternalError: retrying would not help, and the request is not at fault.
#[tokio::test]
async fn a_copy_source_shorter_than_its_record_is_reported_damaged() {
    let (c, _, file) = an_object_in_a_blob_file().await;
    let us = c.client(US);
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(100_000).unwrap();
    let err = us.copy_object().bucket("src").key("copy").copy_source("src/big").send().await.expect_err("damaged");
    assert_eq!(code(&err), "InternalError", "{err:?}");
}

/// Deletes a blob file from a region's data directory.
fn remove_blob_file(data: &std::path::Path, blob: &str) {
    let path = find_file(&data.join("blobs"), blob).or_else(|| find_file(&data.join("staging"), blob)).expect("blob file");
    std::fs::remove_file(path).unwrap();
}

pub(crate) fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// `resync --status failed` re-drives the failed job itself: once delivered, the version is
/// COMPLETED and the rule is no longer failing.
#[tokio::test]
async fn resync_of_failed_versions_clears_the_failure() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    eu.delete_bucket().bucket("dst").send().await.unwrap();
    put(&us, "src", "k", b"x").await;
    wait_until("FAILED", 20, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("FAILED")
    })
    .await;
    create_versioned_bucket(&eu, "dst").await;
    let (code, out) = c.ferry_replication(US, "resync", "src", &["--status", "failed", "--wait"]).await;
    assert_eq!(code, 0, "{out}");
    wait_until("COMPLETED", 20, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("COMPLETED")
    })
    .await;
    let p = ferry_store::replication::progress::bucket_progress(&c.store(US), "src", US).await.unwrap();
    assert_eq!(p.rules[0].state, ferry_store::replication::progress::RuleState::CaughtUp);
    assert_eq!(p.rules[0].failed_ops, 0);
}

/// A tag change of a version an S3 target does not hold as its current object must not land
/// on that current object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_of_an_old_version_do_not_land_on_an_s3_targets_current_object() {
    let moto = Moto::start();
    let target = client_for(&moto.url, "testing", "testing", US, Mode::WhenRequired);
    create_versioned_bucket(&target, "archive").await;
    let url = moto.url.clone();
    let c = TestCluster::start(&[US], move |o, _| o.peers.push(moto_peer(&url))).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "src").await;
    put_replication_xml(&us, "src", &rules_xml(&[(Some("r"), 1, "", "arn:aws:s3:moto::archive", "")])).await.unwrap();
    let v1 = us.put_object().bucket("src").key("k").tagging("gen=1").body(b"one".to_vec().into()).send().await.unwrap();
    us.put_object().bucket("src").key("k").tagging("gen=2").body(b"two".to_vec().into()).send().await.unwrap();
    wait_until("both delivered", 30, || async {
        c.dest_stats(US, "src").await.iter().all(|s| s.pending_ops == 0)
    })
    .await;
    assert_eq!(tags(&target, "archive", "k", None).await, vec![("gen".to_owned(), "2".to_owned())]);
    let v1 = v1.version_id().unwrap().to_owned();
    us.put_object_tagging().bucket("src").key("k").version_id(&v1).tagging(tagging("gen", "old")).send().await.unwrap();
    wait_until("the change handled", 30, || async {
        repl_status(&us, "src", "k", Some(&v1)).await.as_deref() == Some("COMPLETED")
    })
    .await;
    assert_eq!(tags(&target, "archive", "k", None).await, vec![("gen".to_owned(), "2".to_owned())]);
}

/// At an S3 target the last write wins: a version whose job failed, retried after a newer change
/// reached the target, must not come back as the current object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_old_version_does_not_overwrite_a_newer_change_at_an_s3_target() {
    let moto = Moto::start();
    let target = client_for(&moto.url, "testing", "testing", US, Mode::WhenRequired);
    create_versioned_bucket(&target, "archive").await;
    let url = moto.url.clone();
    let c = TestCluster::start(&[US], move |o, _| o.peers.push(moto_peer(&url))).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "src").await;
    put_replication_xml(&us, "src", &rules_xml(&[(Some("r"), 1, "", "arn:aws:s3:moto::archive", "")])).await.unwrap();
    target.delete_bucket().bucket("archive").send().await.unwrap();
    put(&us, "src", "k", b"v1").await;
    wait_until("v1 FAILED", 30, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("FAILED")
    })
    .await;
    create_versioned_bucket(&target, "archive").await;
    us.delete_object().bucket("src").key("k").send().await.unwrap();
    wait_until("the delete delivered", 30, || async {
        c.dest_stats(US, "src").await.iter().all(|s| s.pending_ops == 0)
    })
    .await;
    let (code, out) = c.ferry_replication(US, "retry", "src", &[]).await;
    assert_eq!(code, 0, "{out}");
    wait_until("the retry handled", 30, || async {
        c.dest_stats(US, "src").await.iter().all(|s| s.pending_ops == 0 && s.failed_ops == 0)
    })
    .await;
    assert!(
        target.get_object().bucket("archive").key("k").send().await.is_err(),
        "the deleted key came back"
    );
}

/// Under DeleteReplication in both directions, permanently deleting a version on the side that
/// received it removes it where it came from too.
#[tokio::test]
async fn mutual_version_deletes_propagate_from_either_side() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    mutual_pair(&us, &eu, ("arn:aws:s3:::right", "arn:aws:s3:::left"), DELETE_REPLICATION).await;
    let v = put(&us, "left", "k", b"from a").await.version_id().unwrap().to_owned();
    wait_for_version("replicated to b", 20, &eu, "right", "k", &v).await;
    eu.delete_object().bucket("right").key("k").version_id(&v).send().await.unwrap();
    wait_until("deleted at a too", 20, || async {
        us.head_object().bucket("left").key("k").version_id(&v).send().await.is_err()
    })
    .await;
    assert!(all_versions(&us, "left").await.is_empty());
}

/// Tag edits made at the same time on both sides of a mutual pair end the same on both sides
/// (the later edit wins), instead of swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tag_edits_in_mutual_replication_converge() {
    let t = TwoProcesses::configure_links(Link::Wan(LinkSpec::default()), Link::Wan(LinkSpec::default()), "", "").await;
    let _us_p = t.spawn_us();
    let _eu_p = t.spawn_eu();
    let (us, eu) = (t.us(), t.eu());
    mutual_pair(
        &us,
        &eu,
        ("arn:aws:s3:eu-west-1::right", "arn:aws:s3:us-east-1::left"),
        REPLICA_MODIFICATIONS,
    )
    .await;
    let v = put(&us, "left", "k", b"x").await.version_id().unwrap().to_owned();
    wait_for_version("replicated", 20, &eu, "right", "k", &v).await;
    // Both links hold what is sent (a blackhole): each side's change is on its way, carrying
    // that side's tags, before the other side's arrives.
    t.link().set_partition(Partition::Blackhole);
    t.back().set_partition(Partition::Blackhole);
    us.put_object_tagging().bucket("left").key("k").version_id(&v).tagging(tagging("edit", "us")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    eu.put_object_tagging().bucket("right").key("k").version_id(&v).tagging(tagging("edit", "eu")).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.link().set_partition(Partition::None);
    t.back().set_partition(Partition::None);
    let want = vec![("edit".to_owned(), "eu".to_owned())];
    wait_until("both sides hold the later edit", 60, || async {
        tags(&us, "left", "k", Some(&v)).await == want && tags(&eu, "right", "k", Some(&v)).await == want
    })
    .await;
    // And they stay so once every job is done.
    wait_until("nothing pending", 60, || async {
        repl_status(&us, "left", "k", Some(&v)).await.as_deref() == Some("COMPLETED")
    })
    .await;
    assert_eq!(tags(&us, "left", "k", Some(&v)).await, want);
    assert_eq!(tags(&eu, "right", "k", Some(&v)).await, want);
}

/// A multipart transfer resumed after a restart with another `part_size` keeps the plan it
/// started with: the destination ends with the source's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_transfer_with_another_part_size_delivers_the_right_bytes() {
    // 40 MiB/s between the regions, 8 parts in parallel: the last, shorter part is there first.
    let t = TwoProcesses::configure(
        Link::Wan(LinkSpec { rate: Some(40 << 20), ..LinkSpec::default() }),
        "[replication]\npart_size = 16777216\npart_concurrency = 8\n",
    )
    .await;
    let us_p = t.spawn_us();
    let _eu_p = t.spawn_eu();
    let (us, eu) = (t.us(), t.eu());
    replicated_pair(&us, "src", &eu, "dst").await;
    let size: usize = 72 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i / 4096 % 251) as u8).collect();
    put(&us, "src", "huge", &body).await;
    wait_until("the last part is at the destination", 60, || async {
        let Ok(up) = eu.list_multipart_uploads().bucket("dst").send().await else { return false };
        let Some(id) = up.uploads().first().and_then(|u| u.upload_id()) else { return false };
        eu.list_parts()
            .bucket("dst")
            .key("huge")
            .upload_id(id)
            .send()
            .await
            .is_ok_and(|p| p.parts().iter().any(|p| p.part_number() == Some(5)))
    })
    .await;
    us_p.kill9();
    let text = std::fs::read_to_string(&t.us_cfg).unwrap().replace("part_size = 16777216", "part_size = 8388608");
    std::fs::write(&t.us_cfg, text).unwrap();
    let _us_p = t.spawn_us();
    wait_until("replicated after the restart", 120, || async {
        eu.head_object().bucket("dst").key("huge").send().await.is_ok()
    })
    .await;
    assert!(
        get_bytes(&eu, "dst", "huge").await == body,
        "the replica's bytes differ from the source's"
    );
}

/// Source data that rotted on disk after it was written is not shipped under its original
/// checksum: the destination refuses the parts, and the job fails with the reason.
#[tokio::test]
async fn corrupt_source_data_is_not_replicated() {
    let c = TestCluster::start(&[US, EU], |o, _| {
        o.replication.multipart_threshold = 6 << 20;
        o.replication.part_size = 5 << 20;
    })
    .await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    let body: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 253) as u8).collect();
    put(&us, "src", "big", &body).await;
    let v = c.store(US).meta.read(|r| r.get_latest("src", "big")).await.unwrap().unwrap();
    let blob = v.layout.blobs().remove(0);
    let path = find_file(&c.dir.path().join(US).join("blobs"), &blob).expect("blob file");
    let mut data = std::fs::read(&path).unwrap();
    data[7 << 20] ^= 0x40;
    std::fs::write(&path, data).unwrap();
    let history = "<ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>";
    put_replication_xml(&us, "src", &rules_xml(&[(Some("h"), 1, "", "arn:aws:s3:::dst", history)])).await.unwrap();
    wait_until("the job fails", 30, || async {
        c.dest_stats(US, "src").await.iter().any(|s| s.failed_ops == 1)
    })
    .await;
    let s = c.dest_stats(US, "src").await;
    assert!(
        s[0].last_error.as_deref().is_some_and(|e| e.contains("does not match its stored checksum")),
        "{s:?}"
    );
    assert!(all_versions(&eu, "dst").await.is_empty(), "nothing stored from corrupt data");
    let uploads = eu.list_multipart_uploads().bucket("dst").send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "the refused upload was aborted");
}

/// A tag change on a replica whose version was deleted for good where it came from (mutual
/// replication without DeleteReplication): nothing left to update there, so nothing waits.
#[tokio::test]
async fn a_replica_change_for_a_version_gone_at_its_origin_does_not_wait_for_ever() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    mutual_pair(&us, &eu, ("arn:aws:s3:::right", "arn:aws:s3:::left"), REPLICA_MODIFICATIONS).await;
    let v = put(&us, "left", "k", b"x").await.version_id().unwrap().to_owned();
    wait_for_version("replicated", 20, &eu, "right", "k", &v).await;
    us.delete_object().bucket("left").key("k").version_id(&v).send().await.unwrap();
    eu.put_object_tagging().bucket("right").key("k").version_id(&v).tagging(tagging("late", "edit")).send().await.unwrap();
    wait_until("nothing pending or failed", 20, || async {
        c.dest_stats(EU, "right").await.iter().all(|s| s.pending_ops == 0 && s.failed_ops == 0)
    })
    .await;
    assert!(
        us.head_object().bucket("left").key("k").version_id(&v).send().await.is_err(),
        "not brought back"
    );
    assert_eq!(repl_status(&eu, "right", "k", Some(&v)).await.as_deref(), Some("REPLICA"));
}

/// A duplicate delivery of a multipart replica (a lost answer, a resync of everything) must
/// release the parts it uploaded: nothing refers to them.
#[tokio::test]
async fn a_duplicate_multipart_replica_releases_its_parts() {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let c = TestCluster::start(&[US], |_, _| {}).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::WhenRequired);
    let source = source_header("elsewhere", "src", MAIN_AK);
    let meta = replica_header(&serde_json::json!({
        "format": 1, "source_region": "elsewhere", "version_id": "v-dup", "mtime_us": 1_700_000_000_000_000i64,
    }));
    let store = c.store(US);
    let mut last_parts = Vec::new();
    for _ in 0..2 {
        let src = source.clone();
        let up = repl
            .create_multipart_upload()
            .bucket("dst")
            .key("k")
            .customize()
            .mutate_request(with_source(src))
            .send()
            .await
            .unwrap();
        let id = up.upload_id().unwrap().to_owned();
        let mut parts = Vec::new();
        for (n, data) in [(1, vec![1u8; 5 << 20]), (2, vec![2u8; 1000])] {
            let crc = ferry_store::checksum::checksum_of(ferry_store::checksum::Algorithm::Crc32, &data);
            let src = source.clone();
            let p = repl
                .upload_part()
                .bucket("dst")
                .key("k")
                .upload_id(&id)
                .part_number(n)
                .checksum_crc32(crc)
                .body(data.into())
                .customize()
                .mutate_request(move |r| {
                    r.headers_mut().insert("x-ferry-replica-part", String::new());
                    r.headers_mut().insert("x-ferry-source", src.clone());
                })
                .send()
                .await
                .unwrap();
            parts.push(CompletedPart::builder().part_number(n).e_tag(p.e_tag().unwrap()).build());
        }
        let upload = id.clone();
        last_parts = store.meta.read(move |r| r.list_parts(&upload, 0, 10)).await.unwrap();
        let (m, src) = (meta.clone(), source.clone());
        repl.complete_multipart_upload()
            .bucket("dst")
            .key("k")
            .upload_id(&id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .customize()
            .mutate_request(move |r| {
                r.headers_mut().insert("x-ferry-replica", m.clone());
                r.headers_mut().insert("x-ferry-source", src.clone());
            })
            .send()
            .await
            .unwrap();
    }
    assert_eq!(all_versions(&us, "dst").await.len(), 1, "one version");
    for p in last_parts {
        let blob = p.part.blob.clone();
        assert!(
            !store.meta.read(move |r| r.blob_is_live(&blob)).await.unwrap(),
            "part {} of the duplicate leaked",
            p.part_number
        );
    }
}

/// A multipart upload a peer opened and left idle (its transfer will not come back) is
/// aborted after `abandoned_upload_after`, its parts released.
#[tokio::test]
async fn an_abandoned_replica_upload_is_aborted() {
    let c = TestCluster::start(&[US], |o, _| o.replication.abandoned_upload_after = Duration::from_secs(1)).await;
    let us = c.client(US);
    create_versioned_bucket(&us, "dst").await;
    // A client's own upload is never touched.
    let mine = us.create_multipart_upload().bucket("dst").key("mine").send().await.unwrap();
    let repl = client_for(&c.url(US), REPL_AK, REPL_SK, US, Mode::WhenRequired);
    let src = source_header("elsewhere", "src", MAIN_AK);
    repl.create_multipart_upload().bucket("dst").key("k").customize().mutate_request(with_source(src)).send().await.unwrap();
    wait_until("the abandoned upload is aborted", 30, || async {
        let ups = us.list_multipart_uploads().bucket("dst").send().await.unwrap();
        ups.uploads().len() == 1
    })
    .await;
    let ups = us.list_multipart_uploads().bucket("dst").send().await.unwrap();
    assert_eq!(ups.uploads()[0].upload_id(), mine.upload_id());
}

/// Status stays true for a replica: retrying or dropping the jobs of its changes (going back to
/// where it came from) never makes it look like an original (which would then replicate on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stays_a_replica_through_retry_and_removed_rules() {
    let t = TwoProcesses::configure_links(Link::Direct, Link::Direct, "", "[replication]\ngive_up_after = \"1s\"\n").await;
    let us_p = t.spawn_us();
    let _eu_p = t.spawn_eu();
    let (us, eu) = (t.us(), t.eu());
    mutual_pair(
        &us,
        &eu,
        ("arn:aws:s3:eu-west-1::right", "arn:aws:s3:us-east-1::left"),
        REPLICA_MODIFICATIONS,
    )
    .await;
    let v = put(&us, "left", "k", b"x").await.version_id().unwrap().to_owned();
    wait_for_version("replicated", 20, &eu, "right", "k", &v).await;
    us_p.kill9();
    eu.put_object_tagging().bucket("right").key("k").version_id(&v).tagging(tagging("x", "1")).send().await.unwrap();
    let (code, out) = t.ferry_replication(EU, "status", "right", &["--json"]).await;
    assert_eq!(code, 0, "{out}");
    wait_until("the change gives up (the origin is down)", 30, || async {
        let (_, out) = t.ferry_replication(EU, "status", "right", &["--json"]).await;
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v["rules"][0]["failed_ops"] == 1)
    })
    .await;
    let (code, out) = t.ferry_replication(EU, "retry", "right", &[]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(repl_status(&eu, "right", "k", Some(&v)).await.as_deref(), Some("REPLICA"), "after retry");
    eu.delete_bucket_replication().bucket("right").send().await.unwrap();
    assert_eq!(
        repl_status(&eu, "right", "k", Some(&v)).await.as_deref(),
        Some("REPLICA"),
        "after the rules are removed"
    );
}

/// A job that fails with transient errors for longer than `give_up_after` (a destination that
/// never comes back) becomes FAILED with the reason, instead of pending for ever; jobs for a
/// peer removed from the configuration fail too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_cannot_succeed_fail_with_a_reason() {
    let t = TwoProcesses::configure(Link::Direct, "[replication]\ngive_up_after = \"2s\"\n").await;
    let us_p = t.spawn_us();
    let eu_p = t.spawn_eu();
    let (us, eu) = (t.us(), t.eu());
    replicated_pair(&us, "src", &eu, "dst").await;
    eu_p.kill9();
    put(&us, "src", "k", b"x").await;
    wait_until("FAILED", 30, || async {
        repl_status(&us, "src", "k", None).await.as_deref() == Some("FAILED")
    })
    .await;
    let (_, out) = t.ferry_replication(US, "explain", "src", &["--key", "k", "--json"]).await;
    assert!(out.contains("gave up after"), "{out}");
    // The peer is removed from the configuration: its jobs fail with that reason.
    us_p.kill9();
    std::fs::write(&t.us_cfg, std::fs::read_to_string(&t.us_cfg).unwrap().split("[[peer]]").next().unwrap()).unwrap();
    let _us_p = t.spawn_us();
    let us = t.us();
    put(&us, "src", "k2", b"y").await;
    wait_until("FAILED", 30, || async {
        repl_status(&us, "src", "k2", None).await.as_deref() == Some("FAILED")
    })
    .await;
    let (_, out) = t.ferry_replication(US, "explain", "src", &["--key", "k2", "--json"]).await;
    assert!(out.contains("is not configured"), "{out}");
}

const REPLICA_MODIFICATIONS: &str =
    "<SourceSelectionCriteria><ReplicaModifications><Status>Enabled</Status></ReplicaModifications></SourceSelectionCriteria>";
const DELETE_REPLICATION: &str = "<DeleteReplication><Status>Enabled</Status></DeleteReplication>";

/// Creates `left` at `us` and `right` at `eu` (versioned), replicating to each other under rules
/// with `extra` XML (ReplicaModifications, DeleteReplication, ...): `arns` are the destination
/// ARNs of `left`'s rule and of `right`'s.
async fn mutual_pair(us: &Client, eu: &Client, arns: (&str, &str), extra: &str) {
    create_versioned_bucket(us, "left").await;
    create_versioned_bucket(eu, "right").await;
    put_replication_xml(us, "left", &rules_xml(&[(Some("lr"), 1, "", arns.0, extra)])).await.unwrap();
    put_replication_xml(eu, "right", &rules_xml(&[(Some("rl"), 1, "", arns.1, extra)])).await.unwrap();
}
