//! Historical migration (backfill), progress reporting, mutual replication, verify, and the
//! operator commands, against regions served in process.

use std::time::Duration;

use crate::common::*;

const US: &str = "us-east-1";
const EU: &str = "eu-west-1";

fn existing_objects_rule(dest: &str) -> String {
    format!(
        "<ReplicationConfiguration><Role></Role><Rule><ID>history</ID><Priority>1</Priority><Status>Enabled</Status>\
         <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Enabled</Status></DeleteMarkerReplication>\
         <ExistingObjectReplication><Status>Enabled</Status></ExistingObjectReplication>\
         <Destination><Bucket>{dest}</Bucket></Destination></Rule></ReplicationConfiguration>"
    )
}

async fn put_many(c: &aws_sdk_s3::Client, bucket: &str, n: usize, size: usize) {
    use futures::StreamExt as _;
    let body = bytes::Bytes::from(vec![7u8; size]);
    futures::stream::iter(0..n)
        .map(|i| {
            let (c, b, body) = (c.clone(), bucket.to_owned(), body.clone());
            async move { c.put_object().bucket(b).key(format!("obj/{i:06}")).body(body.into()).send().await.unwrap() }
        })
        .buffer_unordered(48)
        .collect::<Vec<_>>()
        .await;
}

async fn historical(store: &ferry_store::Store, bucket: &str) -> (f64, String) {
    let p = ferry_store::replication::progress::bucket_progress(store, bucket, US).await.unwrap();
    let b = p.backfills.first().cloned();
    (
        b.as_ref().map_or(0.0, ferry_store::replication::Backfill::ratio),
        b.map(|b| b.state.as_str().to_owned()).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_of_ten_thousand_objects_survives_a_restart() {
    // 4 transfers in flight: the workers drain slower than the scan fills the backfill's window.
    let mut c = TestCluster::start(&[US, EU], |o, _| {
        o.replication.backfill_rate = 2_500;
        o.replication.concurrency = 4;
    })
    .await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "history").await;
    create_versioned_bucket(&eu, "history-dr").await;
    put_many(&us, "history", 10_000, 64).await;
    put_replication_xml(&us, "history", &existing_objects_rule("arn:aws:s3:::history-dr")).await.unwrap();
    // Progress only moves forward.
    let mut last = 0.0f64;
    loop {
        let (ratio, _) = historical(&c.store(US), "history").await;
        assert!(ratio + 1e-9 >= last, "progress went back: {last} -> {ratio}");
        last = ratio;
        if ratio > 0.3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last < 0.95, "the restart should happen mid-way ({last})");
    c = c.restart().await;
    let (ratio, state) = historical(&c.store(US), "history").await;
    assert!(ratio + 1e-9 >= last, "progress kept across the restart: {last} -> {ratio} ({state})");
    last = ratio;
    // A live change made during the backfill goes ahead of the backfill's waiting jobs (up to
    // 2,048): only the transfers already in flight (and those finishing while this test polls)
    // complete before it; in recording order it would wait for all of them.
    let done_versions = |s: std::sync::Arc<ferry_store::Store>| async move {
        ferry_store::replication::progress::bucket_progress(&s, "history", US).await.unwrap().backfills[0].done_versions
    };
    let pending = || async {
        ferry_store::replication::progress::bucket_progress(&c.store(US), "history", US).await.unwrap().rules[0].pending_ops
    };
    wait_until("the backfill's window of waiting jobs refilled", 30, || async { pending().await > 1500 }).await;
    let waiting = pending().await;
    let before = done_versions(c.store(US)).await;
    let live = put(&c.client(US), "history", "live/now", b"written during the backfill").await;
    let live_vid = live.version_id().unwrap().to_owned();
    wait_until("the live change replicated", 20, || async {
        c.client(EU).head_object().bucket("history-dr").key("live/now").version_id(&live_vid).send().await.is_ok()
    })
    .await;
    let (ratio, state) = historical(&c.store(US), "history").await;
    let overtaken = done_versions(c.store(US)).await - before;
    eprintln!("backfill versions done while the live change was replicated: {overtaken} of {waiting} waiting");
    assert!(
        state != "done" && overtaken < waiting / 3,
        "the live change waited for {overtaken} of {waiting} backfill versions ({ratio}, {state})"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (ratio, state) = historical(&c.store(US), "history").await;
        assert!(ratio + 1e-9 >= last, "progress went back: {last} -> {ratio}");
        last = ratio;
        if state == "done" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backfill did not finish ({ratio}, {state})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!((last - 1.0).abs() < 1e-9, "ends at 100% ({last})");
    let (us, eu) = (c.client(US), c.client(EU));
    assert_eq!(all_versions(&eu, "history-dr").await.len(), 10_001);
    let (code, out) = c.ferry_replication(US, "verify", "history", &[]).await;
    assert_eq!(code, 0, "verify is clean: {out}");
    assert!(out.contains("10001 versions checked") && out.contains("in sync"), "{out}");
    drop(us);
}

/// The XML progress answer's NewObject time for the first rule, in µs.
async fn new_object_time(url: &str, bucket: &str) -> i64 {
    let ep = ferry_server::cli::client::Endpoint {
        url: url.to_owned(),
        access_key: MAIN_AK.into(),
        secret_key: MAIN_SK.into(),
        region: US.into(),
    };
    let client = ferry_server::cli::admin_client::AdminClient::new(ep, None).unwrap();
    let resp = client.request("GET", &format!("/{bucket}?replicationProgress"), bytes::Bytes::new()).await.unwrap();
    assert!(resp.status.is_success(), "{:?}", resp);
    let text = String::from_utf8_lossy(&resp.body).into_owned();
    let start = text.find("<NewObject>").unwrap() + "<NewObject>".len();
    let end = text[start..].find("</NewObject>").unwrap() + start;
    let t = time::OffsetDateTime::parse(&text[start..end], &time::format_description::well_known::Rfc3339).unwrap();
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_up_to_is_never_ahead_of_the_truth() {
    let t = TwoProcesses::configure(Link::Wan(LinkSpec::default()), "").await;
    let (_us_p, _eu_p) = (t.spawn_us(), t.spawn_eu());
    let (us_url, us, eu, proxy) = (t.us_url(), t.us(), t.eu(), t.link());
    replicated_pair(&us, "src", &eu, "dst").await;
    let mut checks = 0;
    for round in 0..12 {
        // Cut the link every other round, and keep writing.
        proxy.set_partitioned(round % 2 == 1);
        for i in 0..8 {
            put(&us, "src", &format!("r{round:02}/{i}"), b"v").await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        // T first, then the ground truth: the oldest source version not yet at the destination.
        let t = new_object_time(&us_url, "src").await;
        let src = all_versions(&us, "src").await;
        let dst = all_versions(&eu, "dst").await;
        let oldest_missing_ms = src
            .iter()
            .filter(|v| !dst.iter().any(|d| d.version_id == v.version_id))
            .map(|v| {
                aws_sdk_s3::primitives::DateTime::from_str(&v.last_modified, aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                    .unwrap()
                    .to_millis()
                    .unwrap()
            })
            .min();
        if let Some(ms) = oldest_missing_ms {
            assert!(
                t / 1000 <= ms,
                "round {round}: T = {t} µs is later than an unreplicated change at {ms} ms"
            );
            checks += 1;
        }
    }
    assert!(checks >= 3, "the partition left changes unreplicated in several rounds ({checks})");
    proxy.set_partitioned(false);
    wait_until("caught up", 60, || async { compare_buckets(&us, "src", &eu, "dst").await.is_empty() }).await;
    let newest_ms = all_versions(&us, "src")
        .await
        .iter()
        .map(|v| {
            aws_sdk_s3::primitives::DateTime::from_str(&v.last_modified, aws_sdk_s3::primitives::DateTimeFormat::DateTime)
                .unwrap()
                .to_millis()
                .unwrap()
        })
        .max()
        .unwrap();
    wait_until("T passes the newest change once caught up", 20, || async {
        new_object_time(&us_url, "src").await / 1000 >= newest_ms
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_replication_converges_under_concurrent_writers() {
    use rand::{Rng as _, SeedableRng as _};
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    let trials: u64 = std::env::var("FERRY_MUTUAL_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let base_seed: u64 = std::env::var("FERRY_MUTUAL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    for trial in 0..trials {
        let seed = base_seed.wrapping_add(trial);
        let (a, b) = (format!("mutual-a-{trial}"), format!("mutual-b-{trial}"));
        create_versioned_bucket(&us, &a).await;
        create_versioned_bucket(&eu, &b).await;
        us.put_bucket_replication()
            .bucket(&a)
            .replication_configuration(simple_rules(&[&format!("arn:aws:s3:::{b}")]))
            .send()
            .await
            .unwrap();
        eu.put_bucket_replication()
            .bucket(&b)
            .replication_configuration(simple_rules(&[&format!("arn:aws:s3:::{a}")]))
            .send()
            .await
            .unwrap();
        let writer = |client: aws_sdk_s3::Client, bucket: String, seed: u64| async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for op in 0..40 {
                let key = format!("k{}", rng.random_range(0..6));
                if rng.random_bool(0.25) {
                    client.delete_object().bucket(&bucket).key(&key).send().await.unwrap();
                } else {
                    let body = format!("{bucket} op {op} {}", rng.random::<u32>());
                    client.put_object().bucket(&bucket).key(&key).body(body.into_bytes().into()).send().await.unwrap();
                }
                if rng.random_bool(0.3) {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                }
            }
        };
        tokio::join!(writer(us.clone(), a.clone(), seed), writer(eu.clone(), b.clone(), seed ^ 0x5eed));
        let converged = || async {
            let (va, vb) = (all_versions(&us, &a).await, all_versions(&eu, &b).await);
            va == vb && !va.is_empty()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !converged().await {
            assert!(
                std::time::Instant::now() < deadline,
                "trial {trial} (seed {seed}, replay with FERRY_MUTUAL_SEED={seed} FERRY_MUTUAL_TRIALS=1) did not converge"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Same versions, same ids, same latest per key, no duplicate delete markers.
        let va = all_versions(&us, &a).await;
        let ids: std::collections::HashSet<_> = va.iter().map(|v| v.version_id.clone()).collect();
        assert_eq!(ids.len(), va.len(), "trial {trial} (seed {seed}): duplicate versions");
        for k in 0..6 {
            let key = format!("k{k}");
            let (ga, gb) = (
                us.get_object().bucket(&a).key(&key).send().await,
                eu.get_object().bucket(&b).key(&key).send().await,
            );
            match (ga, gb) {
                (Ok(x), Ok(y)) => assert_eq!(x.version_id(), y.version_id(), "trial {trial} (seed {seed}): latest of {key}"),
                (Err(x), Err(y)) => assert_eq!(code(&x), code(&y)),
                _ => panic!("trial {trial} (seed {seed}): {key} exists on one side only"),
            }
        }
    }
    // With ReplicaModifications, a tag change made on a replica flows back to the source.
    let xml = |dest: &str| {
        format!(
            "<ReplicationConfiguration><Role></Role><Rule><ID>m</ID><Priority>1</Priority><Status>Enabled</Status><Filter><Prefix></Prefix></Filter>\
             <SourceSelectionCriteria><ReplicaModifications><Status>Enabled</Status></ReplicaModifications></SourceSelectionCriteria>\
             <Destination><Bucket>{dest}</Bucket></Destination></Rule></ReplicationConfiguration>"
        )
    };
    create_versioned_bucket(&us, "mod-a").await;
    create_versioned_bucket(&eu, "mod-b").await;
    put_replication_xml(&us, "mod-a", &xml("arn:aws:s3:::mod-b")).await.unwrap();
    put_replication_xml(&eu, "mod-b", &xml("arn:aws:s3:::mod-a")).await.unwrap();
    let vid = put(&us, "mod-a", "doc", b"x").await.version_id().unwrap().to_owned();
    wait_until("replica at B", 20, || async {
        eu.head_object().bucket("mod-b").key("doc").send().await.is_ok()
    })
    .await;
    let tagging = aws_sdk_s3::types::Tagging::builder()
        .tag_set(aws_sdk_s3::types::Tag::builder().key("edited").value("in-eu").build().unwrap())
        .build()
        .unwrap();
    eu.put_object_tagging().bucket("mod-b").key("doc").tagging(tagging).send().await.unwrap();
    wait_until("tag flows back to A", 20, || async {
        us.get_object_tagging().bucket("mod-a").key("doc").version_id(&vid).send().await.is_ok_and(|t| t.tag_set().len() == 1)
    })
    .await;
    // Barriers on `doc`, one each way: jobs of one destination and key are delivered in the
    // order they were recorded. Once A's barrier is at B, whatever A recorded for B when the tag
    // change arrived has been delivered; once B's barrier (written after that) is at A, so has
    // whatever B recorded in turn.
    let to_b = barrier(&us, "mod-a", "doc", None, &[(&eu, "mod-b")]).await;
    let to_a = barrier(&eu, "mod-b", "doc", None, &[(&us, "mod-a")]).await;
    // Their jobs complete after the delivery is counted.
    wait_until("both barriers COMPLETED", 20, || async {
        repl_status(&us, "mod-a", "doc", Some(&to_b)).await.as_deref() == Some("COMPLETED")
            && repl_status(&eu, "mod-b", "doc", Some(&to_a)).await.as_deref() == Some("COMPLETED")
    })
    .await;
    let ids: std::collections::BTreeSet<String> = all_versions(&us, "mod-a").await.into_iter().map(|v| v.version_id).collect();
    assert_eq!(ids, [vid, to_b, to_a].into_iter().collect(), "no loop, no new versions");
    // Each side sent the other its own changes only: the tag change that came from B did not go
    // back to B.
    assert_eq!(
        c.delivered(US, "mod-a", "m", "eu-west-1/mod-b"),
        2,
        "A sent B its version and its barrier"
    );
    assert_eq!(
        c.delivered(EU, "mod-b", "m", "us-east-1/mod-a"),
        2,
        "B sent A its tag change and its barrier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_differences_made_behind_ferrys_back() {
    let c = TestCluster::start(&[US, EU], |_, _| {}).await;
    let (us, eu) = (c.client(US), c.client(EU));
    replicated_pair(&us, "src", &eu, "dst").await;
    put(&us, "src", "small", b"inline body").await;
    let big_vid = put(&us, "src", "big", &vec![3u8; 100_000]).await.version_id().unwrap().to_owned();
    put(&us, "src", "other", b"x").await;
    wait_until("replicated", 20, || async { compare_buckets(&us, "src", &eu, "dst").await.is_empty() }).await;
    let args = ferry_cli(&["replication", "verify"], &c.url(US), "src", &[]);
    let status = ferry_cli(&["replication", "status"], &c.url(US), "src", &[]);
    let (code, out) = run_ferry_async(&status).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("last verify       never") && !out.contains("in sync"),
        "no verify yet, no claim: {out}"
    );
    let (code, out) = run_ferry_async(&args).await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = run_ferry_async(&status).await;
    assert!(out.contains("in sync at") && out.contains("3 versions checked"), "{out}");
    // Remove the replica's data file, and overwrite an object directly at the destination.
    let store = c.store(EU);
    let v = store.meta.read(move |r| r.get_version("dst", "big", &big_vid)).await.unwrap().unwrap();
    let blob = v.layout.blobs()[0].clone();
    let path = c.dir.path().join(EU).join("blobs").join(&blob[0..2]).join(&blob[2..4]).join(&blob);
    std::fs::remove_file(&path).unwrap();
    put(&eu, "dst", "other", b"written at the destination").await;
    let (code, out) = run_ferry_async(&args).await;
    assert_ne!(code, 0, "differences make verify fail: {out}");
    assert!(
        out.contains("big") && out.contains("readable"),
        "the missing data file is reported: {out}"
    );
    assert!(out.contains("other") && out.contains("extra"), "the direct overwrite is reported: {out}");
    assert!(out.contains("DIFFERENCES"), "{out}");
    let (_, out) = run_ferry_async(&status).await;
    assert!(out.contains("last verify       DIFFERENCES at") && !out.contains("in sync"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_explain_resync_pause_and_metrics() {
    let c = TestCluster::start(&[US, EU], |o, _| {
        o.regions[0].admin_listen = Some("127.0.0.1:0".into());
        o.replication.backfill_rate = 200;
    })
    .await;
    let (us, eu) = (c.client(US), c.client(EU));
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    // Objects written before the rule: not replicated until a resync.
    for i in 0..20 {
        put(&us, "src", &format!("logs/{i}"), b"old").await;
    }
    use aws_sdk_s3::types::*;
    let rule = ReplicationRule::builder()
        .id("logs")
        .priority(1)
        .status(ReplicationRuleStatus::Enabled)
        .filter(ReplicationRuleFilter::builder().prefix("logs/").build())
        .delete_marker_replication(DeleteMarkerReplication::builder().status(DeleteMarkerReplicationStatus::Enabled).build())
        .destination(Destination::builder().bucket("arn:aws:s3:::dst").build().unwrap())
        .build()
        .unwrap();
    us.put_bucket_replication()
        .bucket("src")
        .replication_configuration(ReplicationConfiguration::builder().role("r").rules(rule).build().unwrap())
        .send()
        .await
        .unwrap();
    put(&us, "src", "logs/new", b"new").await;
    put(&us, "src", "images/cat", b"meow").await;
    wait_until("live change replicated", 20, || async {
        eu.head_object().bucket("dst").key("logs/new").send().await.is_ok()
    })
    .await;
    // The destination holds the version before the source has recorded the
    // destination's answer, so the status may say "replicating" for a moment.
    wait_until("status caught up", 20, || async {
        let (code, out) = c.ferry_replication(US, "status", "src", &["--json"]).await;
        assert_eq!(code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["rules"][0]["id"], "logs");
        assert_ne!(v["rules"][0]["state"], "failing", "{out}");
        v["rules"][0]["state"] == "caught-up"
    })
    .await;
    let (code, out) = c.ferry_replication(US, "status", "src", &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("rule logs -> eu-west-1/dst") && out.contains("replicated up to"), "{out}");
    // Explain: one object the rule takes, one it does not.
    let (code, out) = c.ferry_replication(US, "explain", "src", &["--key", "images/cat"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("does not start with the rule's prefix `logs/`"), "{out}");
    let (_, out) = c.ferry_replication(US, "explain", "src", &["--key", "logs/new"]).await;
    assert!(out.contains("+ logs") && out.contains("delivered to every destination"), "{out}");
    // Resync the old objects, pause and resume it, then wait for it with the progress bar.
    let (code, out) = c.ferry_replication(US, "resync", "src", &["--prefix", "logs/"]).await;
    assert_eq!(code, 0, "{out}");
    let id: String = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out) = c.ferry_replication(US, "pause", "src", &["--id", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("paused"), "{out}");
    let (code, out) = c.ferry_replication(US, "cancel", "src", &["--id", "999999"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("NoSuchBackfill") && out.contains("999999"), "{out}");
    let (code, out) = c.ferry_replication(US, "resume", "src", &["--id", &id]).await;
    assert_eq!(code, 0, "{out}");
    // `status --wait` returns once the backfill is over and nothing is pending.
    let (code, out) = c.ferry_replication(US, "status", "src", &["--wait", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backfills"][0]["state"], "done", "{out}");
    assert_eq!(v["rules"][0]["pending_ops"], 0, "{out}");
    wait_until("resync done", 60, || async {
        let p = ferry_store::replication::progress::bucket_progress(&c.store(US), "src", US).await.unwrap();
        p.backfills.iter().any(|b| b.id.to_string() == id && b.state == ferry_store::replication::BackfillState::Done)
    })
    .await;
    wait_until("old objects replicated", 20, || async { all_versions(&eu, "dst").await.len() == 21 }).await;
    assert!(
        eu.head_object().bucket("dst").key("images/cat").send().await.is_err(),
        "out of the rule's scope"
    );
    // Metrics on the admin listener.
    let admin = c.server.as_ref().unwrap().region(US).unwrap().admin_addr.unwrap();
    // The gauges are refreshed by the progress monitor every 2 s.
    wait_until("gauges published", 20, || async {
        raw_http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .body
            .contains("ferry_backfill_progress_ratio{")
    })
    .await;
    let r = raw_http(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 200);
    for name in [
        "ferry_replication_pending_operations{",
        "ferry_replication_pending_bytes{",
        "ferry_replication_latency_seconds_bucket{",
        "ferry_replication_sent_bytes_total{",
        "ferry_replication_lag_seconds{",
        "ferry_backfill_progress_ratio{",
        "ferry_s3_requests_total{",
    ] {
        assert!(r.body.contains(name), "{name} missing from /metrics:\n{}", r.body);
    }
    assert!(
        r.body.contains("bucket=\"src\",rule=\"logs\",destination=\"eu-west-1/dst\""),
        "{}",
        r.body
    );
}

/// A rule whose lag passes its recovery point objective (here 1 minute, the smallest
/// `ReplicationTime` S3 accepts) records `OperationMissedThreshold`, shown by `status`; when the
/// link is back and the backlog delivered, `OperationReplicatedAfterThreshold`. This test waits
/// out the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpo_missed_and_recovered_events() {
    let t = TwoProcesses::configure(Link::Wan(LinkSpec::default()), "").await;
    let (_us_p, _eu_p) = (t.spawn_us(), t.spawn_eu());
    let (us_url, us, eu, proxy) = (t.us_url(), t.us(), t.eu(), t.link());
    create_versioned_bucket(&us, "src").await;
    create_versioned_bucket(&eu, "dst").await;
    put_replication_xml(
        &us,
        "src",
        "<ReplicationConfiguration><Role></Role><Rule><ID>tight</ID><Priority>1</Priority><Status>Enabled</Status>\
         <Filter><Prefix></Prefix></Filter><DeleteMarkerReplication><Status>Disabled</Status></DeleteMarkerReplication>\
         <Destination><Bucket>arn:aws:s3:::dst</Bucket><ReplicationTime><Status>Enabled</Status><Time><Minutes>1</Minutes></Time>\
         </ReplicationTime></Destination></Rule></ReplicationConfiguration>",
    )
    .await
    .unwrap();
    let status = ferry_cli(&["replication", "status"], &us_url, "src", &[]);
    let (code, out) = run_ferry_async(&status).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("RPO 60 s") && !out.contains("OperationMissedThreshold"), "{out}");
    proxy.set_partitioned(true);
    put(&us, "src", "stuck", b"waits for the link").await;
    wait_until("the RPO is missed", 120, || async {
        run_ferry_async(&status).await.1.contains("OperationMissedThreshold rule tight: lag")
    })
    .await;
    let (_, out) = run_ferry_async(&status).await;
    assert!(
        out.contains("(over the RPO!)") && !out.contains("OperationReplicatedAfterThreshold"),
        "{out}"
    );
    proxy.set_partitioned(false);
    wait_until("back under the RPO", 60, || async {
        run_ferry_async(&status).await.1.contains("OperationReplicatedAfterThreshold rule tight")
    })
    .await;
    assert!(eu.head_object().bucket("dst").key("stuck").send().await.is_ok());
    // One event of each kind: the monitor does not repeat itself while the state holds.
    let (_, out) = run_ferry_async(&status).await;
    assert_eq!(out.matches("OperationMissedThreshold").count(), 1, "{out}");
    assert_eq!(out.matches("OperationReplicatedAfterThreshold").count(), 1, "{out}");
}
