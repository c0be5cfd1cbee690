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

/// A node is killed with SIGKILL while it holds leased jobs (the link to the destination is
/// slow, so transfers stay in flight) and writes stream in: the other nodes fence it once its
/// heartbeat stops, take its jobs over, and every acknowledged version reaches the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_its_jobs_are_taken_over() {
    let slow = LinkSpec { rate: Some(512 << 10), ..LinkSpec::default() };
    let Some(mut rig) = ScaleOut::start(3, Some(slow)).await else { return };
    let n0 = rig.node(0);
    replicated_pair(&n0, "src", &rig.eu(), "dst").await;
    let mut acked = Vec::new();
    let clients: Vec<aws_sdk_s3::Client> = (0..3).map(|i| rig.node(i)).collect();
    let put_on = |i: usize, node: usize| {
        let client = clients[node].clone();
        async move {
            let key = format!("k{i:03}");
            let out = client.put_object().bucket("src").key(&key).body(body(i, 100_000).into()).send().await.unwrap();
            (key, out.version_id().unwrap().to_owned())
        }
    };
    for i in 0..60 {
        acked.push(put_on(i, i % 3).await);
    }
    // Barrier: node 1 holds leases on jobs in flight.
    wait_until("node1 holds job leases", 60, || async {
        let listed = rig.region_nodes().await;
        listed["nodes"].as_array().unwrap().iter().any(|n| n["node"] == "node1" && n["leases"].as_i64().unwrap_or(0) > 0)
    })
    .await;
    rig.kill9(1);
    // Writes go on through the two nodes left (as a load balancer would send them).
    for i in 60..90 {
        acked.push(put_on(i, if i % 2 == 0 { 0 } else { 2 }).await);
    }
    let eu = rig.eu();
    for (key, vid) in &acked {
        wait_for_version(&format!("{key} {vid} at the destination"), 180, &eu, "dst", key, vid).await;
    }
    let n2 = rig.node(2);
    let diffs = compare_buckets(&n2, "src", &eu, "dst").await;
    assert!(diffs.is_empty(), "{diffs:?}");
    let listed = rig.region_nodes().await;
    let node1 = listed["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "node1").cloned().unwrap();
    assert_ne!(node1["state"], "live", "fenced by the others: {listed}");
    assert_eq!(node1["leases"], 0, "its leases were freed: {listed}");
    assert!(replication_failures(&rig, "src").await.is_empty());
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
