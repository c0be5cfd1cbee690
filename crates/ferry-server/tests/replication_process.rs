//! Replication between regions run as separate `ferry serve` processes: a destination that
//! goes away and comes back, a source killed with SIGKILL mid-replication, a large object whose
//! transfer resumes after a crash, and a third-party S3 target (moto).

use std::time::Duration;

use crate::common::*;

const US: &str = "us-east-1";

fn spawn(cfg: &std::path::Path) -> FerryProcess {
    FerryProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[], 1)
}

fn client(port: u16, region: &str) -> aws_sdk_s3::Client {
    client_for(&format!("http://127.0.0.1:{port}"), MAIN_AK, MAIN_SK, region, Mode::WhenRequired)
}

async fn setup(t: &TwoProcesses) -> (aws_sdk_s3::Client, aws_sdk_s3::Client) {
    let (us, eu) = (t.us(), t.eu());
    replicated_pair(&us, "src", &eu, "dst").await;
    (us, eu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_stopped_mid_stream_then_restarted() {
    let t = TwoProcesses::configure(Link::Direct, "").await;
    let _us_p = spawn(&t.us_cfg);
    let eu_p = spawn(&t.eu_cfg);
    let (us, eu) = setup(&t).await;
    for i in 0..30 {
        put(&us, "src", &format!("before/{i:03}"), &vec![1u8; 20_000]).await;
    }
    // Stop the destination while the first writes are still flowing.
    eu_p.kill9();
    for i in 0..30 {
        put(&us, "src", &format!("during/{i:03}"), &vec![2u8; 20_000]).await;
    }
    // A version is PENDING before its first attempt too: wait until an attempt has failed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (explained, job) = loop {
        let (code, out) = t.ferry_replication(US, "explain", "src", &["--key", "during/000", "--json"]).await;
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let failed_attempt = v["jobs"].as_array().and_then(|jobs| {
            jobs.iter().find(|j| j["attempts"].as_u64().is_some_and(|n| n > 0) && j["last_error"].is_string()).cloned()
        });
        if let Some(job) = failed_attempt {
            break (v, job);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt to deliver during/000 in 60 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job["state"], "pending", "not failed: the outage is transient: {explained}");
    assert_eq!(
        repl_status(&us, "src", "during/000", None).await.as_deref(),
        Some("PENDING"),
        "not FAILED: the outage is transient"
    );
    let _eu_p = spawn(&t.eu_cfg);
    wait_until("caught up after the destination came back", 60, || async {
        compare_buckets(&us, "src", &eu, "dst").await.is_empty()
    })
    .await;
    for k in ["before/000", "during/029"] {
        wait_until("COMPLETED", 20, || async {
            repl_status(&us, "src", k, None).await.as_deref() == Some("COMPLETED")
        })
        .await;
    }
    drop(t.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_killed_mid_replication_loses_nothing() {
    // A 4 MiB/s link, so replication is still under way when the source is killed: the bodies
    // are about 31 MB, some 7 s of link. At 20 MiB/s (1.5 s of link; the whole test took about
    // 3.5 s) replication was once found finished before the kill.
    let t = TwoProcesses::configure(Link::Wan(LinkSpec { rate: Some(4 << 20), ..LinkSpec::default() }), "").await;
    let us_p = spawn(&t.us_cfg);
    let _eu_p = spawn(&t.eu_cfg);
    let (us, eu) = setup(&t).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let size = if i % 20 == 0 { 3_000_000 } else { 5_000 };
        let out = put(&us, "src", &format!("k{i:04}"), &vec![(i % 251) as u8; size]).await;
        acked.push((format!("k{i:04}"), out.version_id().unwrap().to_owned()));
    }
    // Kill the source while its workers are still sending.
    let replicated_before_kill = all_versions(&eu, "dst").await.len();
    us_p.kill9();
    assert!(
        replicated_before_kill < acked.len(),
        "replication was still in progress at the kill ({replicated_before_kill} done)"
    );
    let us_p = spawn(&t.us_cfg);
    let us = client(t.us_port, US);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let diff = compare_buckets(&us, "src", &eu, "dst").await;
        if diff.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not replicated 90 s after the restart: {} differences, first {:?}\nsource log: {:#?}",
            diff.len(),
            diff.first(),
            us_p.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dst = all_versions(&eu, "dst").await;
    for (k, v) in &acked {
        assert!(dst.iter().any(|x| &x.key == k && &x.version_id == v), "{k} {v} missing");
    }
    assert_eq!(dst.len(), acked.len(), "no duplicates");
    drop(t.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_transfer_resumes_from_uploaded_parts_after_a_crash() {
    // 40 MiB/s between the regions, so the 120 MiB transfer takes a few seconds.
    let t = TwoProcesses::configure(
        Link::Wan(LinkSpec { rate: Some(40 << 20), ..LinkSpec::default() }),
        "[replication]\npart_size = 8388608\npart_concurrency = 2\n",
    )
    .await;
    let us_p = spawn(&t.us_cfg);
    let _eu_p = spawn(&t.eu_cfg);
    let (us, eu) = setup(&t).await;
    let size: usize = 120 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
    let etag = put(&us, "src", "huge", &body).await.e_tag().unwrap().to_owned();
    // Wait until about half has crossed the link, then crash the source.
    wait_until("half the object sent", 60, || async { t.link().stats().bytes_up > (size as u64) / 2 }).await;
    us_p.kill9();
    let before = t.link().stats().bytes_up;
    let uploads = eu.list_multipart_uploads().bucket("dst").send().await.unwrap();
    assert_eq!(uploads.uploads().len(), 1, "an upload is in progress at the destination");
    let _us_p = spawn(&t.us_cfg);
    let us = client(t.us_port, US);
    wait_until("large object replicated after the restart", 120, || async {
        eu.head_object().bucket("dst").key("huge").send().await.is_ok()
    })
    .await;
    let after = t.link().stats().bytes_up - before;
    assert!(
        after < (size as u64) * 3 / 4,
        "resumed: {after} bytes sent after the restart for a {size}-byte object"
    );
    let h = eu.head_object().bucket("dst").key("huge").send().await.unwrap();
    assert_eq!(h.e_tag(), Some(etag.as_str()));
    assert_eq!(get_bytes(&eu, "dst", "huge").await, body);
    assert!(compare_buckets(&us, "src", &eu, "dst").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_to_a_third_party_s3_service() {
    let moto = Moto::start();
    let target = client_for(&moto.url, "testing", "testing", US, Mode::WhenRequired);
    create_versioned_bucket(&target, "archive").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let peer = format!(
        "[[peer]]\nname = \"moto\"\nendpoint = \"{}\"\naccess_key = \"testing\"\nsecret_key = \"testing\"\nkind = \"s3\"\naccounts = [\"{MAIN_AK}\"]\n",
        moto.url
    );
    let cfg = process_config(dir.path(), US, port, &[], &peer);
    let _p = spawn(&cfg);
    let us = client(port, US);
    create_versioned_bucket(&us, "src").await;
    us.put_bucket_replication()
        .bucket("src")
        .replication_configuration(simple_rules(&["arn:aws:s3:moto::archive"]))
        .send()
        .await
        .unwrap();
    us.put_object()
        .bucket("src")
        .key("report.csv")
        .content_type("text/csv")
        .metadata("source", "ferry")
        .tagging("kind=report")
        .body(b"a,b\n1,2\n".to_vec().into())
        .send()
        .await
        .unwrap();
    let big: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 199) as u8).collect();
    put(&us, "src", "big.bin", &big).await;
    put(&us, "src", "gone", b"soon deleted").await;
    wait_until("objects at the S3 target", 60, || async {
        target.head_object().bucket("archive").key("report.csv").send().await.is_ok()
            && target.head_object().bucket("archive").key("big.bin").send().await.is_ok()
            && target.head_object().bucket("archive").key("gone").send().await.is_ok()
    })
    .await;
    let h = target.head_object().bucket("archive").key("report.csv").send().await.unwrap();
    assert_eq!(h.content_type(), Some("text/csv"));
    assert_eq!(h.metadata().and_then(|m| m.get("source")).map(String::as_str), Some("ferry"));
    let tags = target.get_object_tagging().bucket("archive").key("report.csv").send().await.unwrap();
    assert_eq!(tags.tag_set().len(), 1);
    assert_eq!(get_bytes(&target, "archive", "big.bin").await, big);
    wait_until("source COMPLETED", 20, || async {
        repl_status(&us, "src", "big.bin", None).await.as_deref() == Some("COMPLETED")
    })
    .await;
    // A delete marker reaches the target as a plain delete.
    us.delete_object().bucket("src").key("gone").send().await.unwrap();
    wait_until("delete replicated", 30, || async {
        target.get_object().bucket("archive").key("gone").send().await.is_err()
    })
    .await;
}
