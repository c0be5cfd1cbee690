//! Replication between regions run as separate `ferry serve` processes: a destination that
//! goes away and comes back, a source killed with SIGKILL mid-replication, a large object whose
//! transfer resumes after a crash, and a third-party S3 target (moto).

use std::time::Duration;

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

struct Two {
    dir: tempfile::TempDir,
    us_cfg: std::path::PathBuf,
    eu_cfg: std::path::PathBuf,
    us_port: u16,
    eu_port: u16,
}

/// Configs for two processes that know each other as peers. `us_to_eu` is the URL the US
/// process uses for the EU peer (a proxy, or EU directly).
fn two(us_to_eu: Option<String>, extra_us: &str) -> Two {
    let dir = tempfile::tempdir().unwrap();
    let (us_port, eu_port) = (free_port(), free_port());
    let eu_url = us_to_eu.unwrap_or_else(|| format!("http://127.0.0.1:{eu_port}"));
    let us_cfg = process_config(dir.path(), US, us_port, &[(EU, eu_url, "ferry")], extra_us);
    let eu_cfg = process_config(dir.path(), EU, eu_port, &[(US, format!("http://127.0.0.1:{us_port}"), "ferry")], "");
    Two { dir, us_cfg, eu_cfg, us_port, eu_port }
}

fn spawn(cfg: &std::path::Path) -> FerryProcess {
    FerryProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[], 1)
}

fn client(port: u16, region: &str) -> aws_sdk_s3::Client {
    client_for(&format!("http://127.0.0.1:{port}"), MAIN_AK, MAIN_SK, region, Mode::WhenRequired)
}

async fn setup(t: &Two) -> (aws_sdk_s3::Client, aws_sdk_s3::Client) {
    let (us, eu) = (client(t.us_port, US), client(t.eu_port, EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    us.put_bucket_replication()
        .bucket("src")
        .replication_configuration(simple_rules(&["arn:aws:s3:::dst"]))
        .send()
        .await
        .unwrap();
    (us, eu)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_stopped_mid_stream_then_restarted() {
    let t = two(None, "");
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
    tokio::time::sleep(Duration::from_secs(2)).await;
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
    // A 20 MiB/s link, so replication is still under way when the source is killed.
    let eu_port = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{eu_port}").parse().unwrap(), Some(20 << 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let us_port = free_port();
    let us_cfg = process_config(dir.path(), US, us_port, &[(EU, format!("http://127.0.0.1:{}", proxy.port), "ferry")], "");
    let eu_cfg = process_config(dir.path(), EU, eu_port, &[(US, format!("http://127.0.0.1:{us_port}"), "ferry")], "");
    let t = Two { dir, us_cfg, eu_cfg, us_port, eu_port };
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
    let _us_p = spawn(&t.us_cfg);
    let us = client(t.us_port, US);
    wait_until("every acknowledged write replicated after the restart", 90, || async {
        compare_buckets(&us, "src", &eu, "dst").await.is_empty()
    })
    .await;
    let dst = all_versions(&eu, "dst").await;
    for (k, v) in &acked {
        assert!(dst.iter().any(|x| &x.key == k && &x.version_id == v), "{k} {v} missing");
    }
    assert_eq!(dst.len(), acked.len(), "no duplicates");
    drop(t.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_transfer_resumes_from_uploaded_parts_after_a_crash() {
    let eu_port = free_port();
    // 40 MiB/s between the regions, so the 120 MiB transfer takes a few seconds.
    let proxy = Proxy::start(format!("127.0.0.1:{eu_port}").parse().unwrap(), Some(40 << 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let us_port = free_port();
    let us_cfg = process_config(
        dir.path(),
        US,
        us_port,
        &[(EU, format!("http://127.0.0.1:{}", proxy.port), "ferry")],
        "[replication]\npart_size = 8388608\npart_concurrency = 2\n",
    );
    let eu_cfg = process_config(dir.path(), EU, eu_port, &[(US, format!("http://127.0.0.1:{us_port}"), "ferry")], "");
    let us_p = spawn(&us_cfg);
    let _eu_p = spawn(&eu_cfg);
    let t = Two { dir, us_cfg, eu_cfg, us_port, eu_port };
    let (us, eu) = setup(&t).await;
    let size: usize = 120 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
    let etag = put(&us, "src", "huge", &body).await.e_tag().unwrap().to_owned();
    // Wait until about half has crossed the link, then crash the source.
    wait_until("half the object sent", 60, || async { proxy.bytes() > (size as u64) / 2 }).await;
    us_p.kill9();
    let before = proxy.bytes();
    let uploads = eu.list_multipart_uploads().bucket("dst").send().await.unwrap();
    assert_eq!(uploads.uploads().len(), 1, "an upload is in progress at the destination");
    let _us_p = spawn(&t.us_cfg);
    let us = client(t.us_port, US);
    wait_until("large object replicated after the restart", 120, || async {
        eu.head_object().bucket("dst").key("huge").send().await.is_ok()
    })
    .await;
    let after = proxy.bytes() - before;
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
        "[[peer]]\nname = \"moto\"\nendpoint = \"{}\"\naccess_key = \"testing\"\nsecret_key = \"testing\"\nkind = \"s3\"\n",
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
