//! A region of several `ferry serve` nodes on one PostgreSQL and one SeaweedFS, replicating to
//! a second region (docs/SCALE-OUT.md): clients spread over the nodes, any node serves any
//! object, every change reaches the destination once, and a node killed with SIGKILL loses
//! nothing (its leased jobs are taken over by the others).

use crate::common::*;

/// A body of `len` bytes that differs per `seed`.
fn body(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// Three nodes: objects written through one node (inline and blob-sized, and a multipart
/// upload whose parts go through different nodes) read back whole from the others; all of
/// them reach the other region; the nodes are listed live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_region_and_replicate_it() {
    let Some(rig) = ScaleOut::start(3, None).await else { return };
    let (n0, n1, n2) = (rig.node(0), rig.node(1), rig.node(2));
    replicated_pair(&n0, "src", &rig.eu(), "dst").await;
    let nodes = [&n0, &n1, &n2];
    for i in 0..24 {
        // Every third body is above the inline threshold: a blob in SeaweedFS.
        let len = if i % 3 == 0 { 200_000 } else { 1_000 };
        put(nodes[i % 3], "src", &format!("k{i:02}"), &body(i, len)).await;
    }
    // A multipart upload started on one node, its parts sent to two others, completed on the third.
    let up = n1.create_multipart_upload().bucket("src").key("big").send().await.unwrap();
    let upload_id = up.upload_id().unwrap().to_owned();
    let (p1, p2) = (body(100, 5 << 20), body(101, 1 << 20));
    let mut parts = Vec::new();
    for (n, (client, data)) in [(&n2, &p1), (&n0, &p2)].into_iter().enumerate() {
        let number = i32::try_from(n + 1).unwrap();
        let out = client
            .upload_part()
            .bucket("src")
            .key("big")
            .upload_id(&upload_id)
            .part_number(number)
            .body(data.clone().into())
            .send()
            .await
            .unwrap();
        parts.push(aws_sdk_s3::types::CompletedPart::builder().part_number(number).e_tag(out.e_tag().unwrap()).build());
    }
    n1.complete_multipart_upload()
        .bucket("src")
        .key("big")
        .upload_id(&upload_id)
        .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    for i in 0..24 {
        let len = if i % 3 == 0 { 200_000 } else { 1_000 };
        let reader = nodes[(i + 1) % 3];
        assert_eq!(
            get_bytes(reader, "src", &format!("k{i:02}")).await,
            body(i, len),
            "k{i:02} read on another node"
        );
    }
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    assert_eq!(get_bytes(&n0, "src", "big").await, whole);
    let eu = rig.eu();
    wait_until("every version at the destination", 120, || async {
        compare_buckets(&n2, "src", &eu, "dst").await.is_empty()
    })
    .await;
    assert_eq!(get_bytes(&eu, "dst", "big").await, whole);
    let listed = rig.region_nodes().await;
    let live: Vec<&str> =
        listed["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "live").filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(live, ["node0", "node1", "node2"], "{listed}");
    let failed = replication_failures(&rig, "src").await;
    assert!(failed.is_empty(), "{failed:?}");
}

/// The failed jobs of `bucket`, as `ferry replication status` reports them (any node).
async fn replication_failures(rig: &ScaleOut, bucket: &str) -> Vec<serde_json::Value> {
    let url = format!("http://127.0.0.1:{}", rig.ports[0]);
    let (code, out) = run_ferry_async(&ferry_cli(&["replication", "status"], &url, bucket, &["--json"])).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["destinations"]
        .as_array()
        .map(|d| d.iter().filter(|d| d["failed_ops"].as_u64().unwrap_or(0) > 0).cloned().collect())
        .unwrap_or_default()
}

/// A node is killed with SIGKILL while it holds about a hundred leased jobs (the link to the
/// destination is a blackhole, so transfers stay in flight), while a PUT streams through it,
/// and with a multipart upload it started: the other nodes fence it once its heartbeat stops
/// and take its jobs over, the upload is finished through them, and every acknowledged
/// version reaches the destination once the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_its_jobs_are_taken_over() {
    let Some(mut rig) = ScaleOut::start(3, Some(LinkSpec::default())).await else { return };
    let n0 = rig.node(0);
    replicated_pair(&n0, "src", &rig.eu(), "dst").await;
    // Transfers hang in the blackhole with their leases held (and renewed).
    rig.link.as_ref().unwrap().set_partition(Partition::Blackhole);
    let mut acked = Vec::new();
    let clients: Vec<aws_sdk_s3::Client> = (0..3).map(|i| rig.node(i)).collect();
    let put_on = |i: usize, node: usize, len: usize| {
        let client = clients[node].clone();
        async move {
            let key = format!("k{i:03}");
            let out = client.put_object().bucket("src").key(&key).body(body(i, len).into()).send().await.unwrap();
            (key, out.version_id().unwrap().to_owned())
        }
    };
    // More jobs than the three nodes' 128 transfer slots each, some of them blob-sized.
    for i in 0..400 {
        acked.push(put_on(i, i % 3, if i % 10 == 0 { 100_000 } else { 2_000 }).await);
    }
    // A multipart upload started on node 1, its first part sent there too.
    let up = clients[1].create_multipart_upload().bucket("src").key("mp").send().await.unwrap();
    let upload_id = up.upload_id().unwrap().to_owned();
    let (p1, p2) = (body(500, 5 << 20), body(501, 300_000));
    let part = |client: &aws_sdk_s3::Client, n: i32, data: &Vec<u8>| {
        client.upload_part().bucket("src").key("mp").upload_id(&upload_id).part_number(n).body(data.clone().into()).send()
    };
    let e1 = part(&clients[1], 1, &p1).await.unwrap().e_tag().unwrap().to_owned();
    // Barrier: node 1 holds about a hundred leases on jobs in flight (it refills its 128 slots
    // while a quarter of them is free, so it stops between 97 and 128).
    wait_until("node1 holds 90 job leases or more", 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == "node1" && n["leases"].as_i64().unwrap_or(0) >= 90)
    })
    .await;
    // Killed while a streamed PUT is under way through it (not acknowledged: not counted).
    let streaming = {
        let c = clients[1].clone();
        tokio::spawn(async move { c.put_object().bucket("src").key("in-flight").body(body(9, 8 << 20).into()).send().await })
    };
    rig.kill9(1);
    if let Ok(Ok(out)) = streaming.await {
        acked.push(("in-flight".to_owned(), out.version_id().unwrap().to_owned()));
    }
    rig.link.as_ref().unwrap().set_partition(Partition::None);
    // Writes go on through the two nodes left (as a load balancer would send them), and the
    // multipart upload is finished through them.
    for i in 400..430 {
        acked.push(put_on(i, if i % 2 == 0 { 0 } else { 2 }, 100_000).await);
    }
    let e2 = part(&clients[0], 2, &p2).await.unwrap().e_tag().unwrap().to_owned();
    let parts = [(1, e1), (2, e2)]
        .into_iter()
        .map(|(n, e)| aws_sdk_s3::types::CompletedPart::builder().part_number(n).e_tag(e).build())
        .collect();
    let done = clients[2]
        .complete_multipart_upload()
        .bucket("src")
        .key("mp")
        .upload_id(&upload_id)
        .multipart_upload(aws_sdk_s3::types::CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();
    acked.push(("mp".to_owned(), done.version_id().unwrap().to_owned()));
    let mut whole = p1.clone();
    whole.extend_from_slice(&p2);
    assert!(
        get_bytes(&clients[0], "src", "mp").await == whole,
        "the multipart object reads back whole"
    );
    converges(&rig, &acked, &[0, 2]).await;
    assert!(get_bytes(&rig.eu(), "dst", "mp").await == whole, "and so at the destination");
    let listed = rig.region_nodes().await;
    let node1 = listed["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "node1").cloned().unwrap();
    assert_ne!(node1["state"], "live", "fenced by the others: {listed}");
    assert_eq!(node1["leases"], 0, "its leases were freed: {listed}");
}

/// A node restarted with the same id (after SIGKILL) joins as a new life of itself: a new
/// epoch, and it serves reads and writes of the region at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_comes_back_as_a_new_epoch() {
    let Some(mut rig) = ScaleOut::start(2, None).await else { return };
    let n0 = rig.node(0);
    create_versioned_bucket(&n0, "bkt").await;
    put(&n0, "bkt", "before", b"written before the restart").await;
    rig.restart(1);
    let n1 = rig.node(1);
    assert_eq!(get_bytes(&n1, "bkt", "before").await, b"written before the restart");
    put(&n1, "bkt", "after", &body(7, 150_000)).await;
    assert_eq!(get_bytes(&n0, "bkt", "after").await, body(7, 150_000));
    let listed = rig.region_nodes().await;
    let node1 = listed["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "node1").cloned().unwrap();
    assert_eq!((node1["epoch"].as_i64(), node1["state"].as_str()), (Some(2), Some("live")), "{listed}");
    assert!(rig.meta_url().starts_with("postgres://"));
}

/// The watermark oracle: "replicated up to T" read from node `via` never claims a version that
/// is not at the destination. Every version of `src` whose time is before T (to the
/// millisecond S3 lists, rounded up) must be in `dst` once T was read. Returns T and how many
/// versions the claim covered.
async fn watermark_holds(rig: &ScaleOut, via: usize) -> (i64, usize) {
    let url = format!("http://127.0.0.1:{}", rig.ports[via]);
    let (code, out) = run_ferry_async(&ferry_cli(&["replication", "status"], &url, "src", &["--json"])).await;
    if code != 0 {
        // The node is down or shut out: no claim, nothing to check.
        return (0, 0);
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let t = v["destinations"][0]["replicated_up_to_us"].as_i64().unwrap_or(0);
    let at_dest: std::collections::HashSet<String> =
        all_versions(&rig.eu(), "dst").await.into_iter().map(|l| l.version_id).collect();
    // Listed through another running node than the one asked.
    let n = rig.ports.len();
    let other = (1..n).map(|d| (via + d) % n).find(|&i| rig.nodes[i].is_some()).unwrap_or(via);
    let source = rig.node(other);
    let mut covered = 0;
    let mut marker: (Option<String>, Option<String>) = (None, None);
    loop {
        let page = source
            .list_object_versions()
            .bucket("src")
            .set_key_marker(marker.0.clone())
            .set_version_id_marker(marker.1.clone())
            .send()
            .await
            .expect("list versions");
        for ver in page.versions() {
            let ms = ver.last_modified().map_or(i64::MAX / 2000, |d| d.to_millis().unwrap_or(i64::MAX / 2000));
            if (ms + 1) * 1000 <= t {
                let id = ver.version_id().unwrap_or_default();
                assert!(
                    at_dest.contains(id),
                    "replicated up to {t} claims {} {id} (at {ms} ms), not at the destination",
                    ver.key().unwrap_or_default()
                );
                covered += 1;
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        marker = (
            page.next_key_marker().map(str::to_owned),
            page.next_version_id_marker().map(str::to_owned),
        );
    }
    (t, covered)
}

/// Waits for every acknowledged version at the destination, checking the watermark oracle
/// through each node in turn meanwhile; then the buckets are identical and nothing failed.
async fn converges(rig: &ScaleOut, acked: &[(String, String)], via: &[usize]) {
    let eu = rig.eu();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let mut samples = 0;
    loop {
        let (t, covered) = watermark_holds(rig, via[samples % via.len()]).await;
        samples += 1;
        let at_dest: std::collections::HashSet<String> =
            all_versions(&eu, "dst").await.into_iter().map(|l| l.version_id).collect();
        let missing: Vec<&(String, String)> = acked.iter().filter(|(_, vid)| !at_dest.contains(vid)).collect();
        // Done when everything arrived and the watermark says so (covering every version).
        if missing.is_empty() && covered >= acked.len() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let url = format!("http://127.0.0.1:{}", rig.ports[via[0]]);
            let (_, status) = run_ferry_async(&ferry_cli(&["replication", "status"], &url, "src", &["--json"])).await;
            panic!(
                "not converged in 300 s: {} of {} acknowledged versions missing at the destination ({:?}), watermark {t} \
                 covering {covered}; nodes {}; status {status}",
                missing.len(),
                acked.len(),
                missing.iter().take(5).collect::<Vec<_>>(),
                rig.region_nodes().await
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let diffs = compare_buckets(&rig.node(via[0]), "src", &eu, "dst").await;
    assert!(diffs.is_empty(), "{diffs:?}");
    assert!(replication_failures(rig, "src").await.is_empty());
}

/// A PUT through node `node`, acknowledged: (key, version id).
async fn put_acked(rig: &ScaleOut, node: usize, i: usize, len: usize) -> (String, String) {
    let key = format!("k{i:03}");
    let out = rig.node(node).put_object().bucket("src").key(&key).body(body(i, len).into()).send().await.unwrap();
    (key, out.version_id().unwrap().to_owned())
}

/// The postmaster is killed with SIGKILL and started again: meanwhile the nodes answer 503
/// (S3 clients retry), then they go on by themselves, neither fencing the other after the
/// outage; nothing acknowledged is lost and the watermark never runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_killed_and_restarted_loses_nothing() {
    let Some(rig) = ScaleOut::start(2, None).await else { return };
    replicated_pair(&rig.node(0), "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(put_acked(&rig, i % 2, i, if i % 4 == 0 { 80_000 } else { 3_000 }).await);
    }
    rig.pg.kill9();
    let refused = rig.node(1).put_object().bucket("src").key("during").body(b"x".to_vec().into()).send().await;
    let status = refused.as_ref().err().and_then(|e| e.raw_response()).map(|r| r.status().as_u16());
    assert_eq!(status, Some(503), "{refused:?}");
    rig.pg.restart();
    wait_until("the nodes write again", 60, || async {
        rig.node(0).put_object().bucket("src").key("after").body(b"y".to_vec().into()).send().await.is_ok()
    })
    .await;
    for i in 20..40 {
        acked.push(put_acked(&rig, i % 2, i, 3_000).await);
    }
    converges(&rig, &acked, &[0, 1]).await;
    let listed = rig.region_nodes().await;
    let live = listed["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "live").count();
    assert_eq!(live, 2, "no node fenced another after the outage: {listed}");
}

/// A node paused (SIGSTOP) past its heartbeat timeout while it holds job leases is fenced by
/// the others, which take its jobs over; resumed (SIGCONT), its old life writes nothing (a
/// write it takes before it notices is refused with 503 and leaves nothing), it rejoins by
/// itself as a new epoch and serves again, and its late completions change nothing: every
/// acknowledged version arrives, none fails, the watermark never runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_fenced_and_refused_when_it_wakes() {
    let slow = LinkSpec { rate: Some(512 << 10), ..LinkSpec::default() };
    let Some(rig) = ScaleOut::start(3, Some(slow)).await else { return };
    replicated_pair(&rig.node(0), "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    for i in 0..45 {
        acked.push(put_acked(&rig, i % 3, i, 100_000).await);
    }
    wait_until("node1 holds job leases", 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == "node1" && n["leases"].as_i64().unwrap_or(0) > 0)
    })
    .await;
    rig.signal(1, "STOP");
    wait_until("node1 fenced by the others", 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == "node1" && n["state"] != "live")
    })
    .await;
    for i in 45..60 {
        acked.push(put_acked(&rig, if i % 2 == 0 { 0 } else { 2 }, i, 20_000).await);
    }
    rig.signal(1, "CONT");
    // Sent as it wakes: refused if its old life takes it, acknowledged if it has rejoined.
    let refused = put_fenced_or_acked(&rig, 1, "zombie", &mut acked).await;
    rejoined(&rig, "node1").await;
    acked.push(put_acked(&rig, 1, 99, 20_000).await);
    converges(&rig, &acked, &[0, 1, 2]).await;
    if refused {
        assert!(
            rig.node(0).head_object().bucket("src").key("zombie").send().await.is_err(),
            "nothing of the refused write stands"
        );
    }
}

/// A PUT of `key` through node `node`, which may have been fenced: either acknowledged (added
/// to `acked`, owed to the destination) or refused with 503. Returns whether it was refused.
async fn put_fenced_or_acked(rig: &ScaleOut, node: usize, key: &str, acked: &mut Vec<(String, String)>) -> bool {
    let out = rig.node(node).put_object().bucket("src").key(key).body(key.as_bytes().to_vec().into()).send().await;
    match &out {
        Ok(o) => {
            acked.push((key.to_owned(), o.version_id().unwrap().to_owned()));
            false
        }
        Err(e) => {
            assert_eq!(e.raw_response().map(|r| r.status().as_u16()), Some(503), "{out:?}");
            true
        }
    }
}

/// Waits until `node` has rejoined the region by itself: epoch 1 at start, 2 when the others
/// fenced it, 3 once it rejoined.
async fn rejoined(rig: &ScaleOut, node: &str) {
    wait_until(&format!("{node} rejoined as epoch 3"), 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == node && n["state"] == "live" && n["epoch"] == 3)
    })
    .await;
}

/// One node's link to PostgreSQL is blackholed for 15 s (nothing moves, nothing is closed):
/// the other nodes go on writing (the cut node's open transaction is ended by the server, so
/// its rows are freed) and fence it; when the link comes back, the node's old life writes
/// nothing (503), and it rejoins by itself and serves again. Nothing acknowledged is lost,
/// nothing fails, the watermark never runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_database_is_fenced_and_the_others_go_on() {
    let Some(rig) = ScaleOut::start_with(3, None, Some(1)).await else { return };
    replicated_pair(&rig.node(0), "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    for i in 0..21 {
        acked.push(put_acked(&rig, i % 3, i, if i % 3 == 0 { 70_000 } else { 2_000 }).await);
    }
    let link = rig.pg_link.as_ref().unwrap();
    let cut_at = std::time::Instant::now();
    link.set_partition(Partition::Blackhole);
    for i in 21..41 {
        acked.push(put_acked(&rig, if i % 2 == 0 { 0 } else { 2 }, i, 2_000).await);
    }
    wait_until("node1 fenced by the others", 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == "node1" && n["state"] != "live")
    })
    .await;
    // The fault lasts 15 s.
    tokio::time::sleep(std::time::Duration::from_secs(15).saturating_sub(cut_at.elapsed())).await;
    link.set_partition(Partition::None);
    put_fenced_or_acked(&rig, 1, "late", &mut acked).await;
    rejoined(&rig, "node1").await;
    acked.push(put_acked(&rig, 1, 99, 2_000).await);
    converges(&rig, &acked, &[0, 1, 2]).await;
}

/// One of SeaweedFS's volume servers is killed with SIGKILL while the region runs: every blob
/// has a second copy (replication 001), so every object still reads back through any node, and
/// writes go on (a client retries the ones refused while the store notices); nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_volume_server_loses_no_object() {
    let Some(mut rig) = ScaleOut::start(2, None).await else { return };
    replicated_pair(&rig.node(0), "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    for i in 0..12 {
        acked.push(put_acked(&rig, i % 2, i, 120_000).await);
    }
    rig.kill_volume_server(0);
    for i in 12..24 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let key = format!("k{i:03}");
            match rig.node(i % 2).put_object().bucket("src").key(&key).body(body(i, 120_000).into()).send().await {
                Ok(out) => {
                    acked.push((key, out.version_id().unwrap().to_owned()));
                    break;
                }
                Err(e) => assert!(std::time::Instant::now() < deadline, "writes did not resume: {e:?}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
    for i in 0..24 {
        assert_eq!(
            get_bytes(&rig.node((i + 1) % 2), "src", &format!("k{i:03}")).await,
            body(i, 120_000),
            "k{i:03}"
        );
    }
    converges(&rig, &acked, &[0, 1]).await;
}

/// Three nodes whose clocks are 5 s ahead, 5 s behind and right write the same keys in turn:
/// each key's versions still order as they were written (the key's row carries its latest
/// time), both regions agree on every latest version, and the watermark read through any of
/// the nodes never runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_skewed_clocks_keep_each_keys_order() {
    let Some(rig) = ScaleOut::start_skewed(&["+5s", "-5s", ""]).await else { return };
    replicated_pair(&rig.node(1), "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    for round in 0..3 {
        for k in 0..8 {
            // Version `round` of key `k`, through a different node each round.
            let node = (k + round) % 3;
            let key = format!("k{k:03}");
            let data = body(k * 10 + round, 3_000);
            let out = rig.node(node).put_object().bucket("src").key(&key).body(data.into()).send().await.unwrap();
            acked.push((key, out.version_id().unwrap().to_owned()));
        }
    }
    for k in 0..8 {
        let latest = get_bytes(&rig.node(2), "src", &format!("k{k:03}")).await;
        assert!(latest == body(k * 10 + 2, 3_000), "k{k:03}: the version written last is not the latest");
    }
    converges(&rig, &acked, &[0, 1, 2]).await;
    for k in 0..8 {
        assert!(
            get_bytes(&rig.eu(), "dst", &format!("k{k:03}")).await == body(k * 10 + 2, 3_000),
            "k{k:03} at the destination"
        );
    }
}
