//! The `ferry` command line: start-up errors, help, signals.

use crate::common::*;

#[test]
fn serve_help_documents_every_option() {
    let (code, out) = run_ferry(&["serve", "--help"]);
    assert_eq!(code, 0);
    for opt in [
        "--config",
        "--listen",
        "--data-dir",
        "--access-key",
        "--secret-key",
        "--shutdown-timeout",
        "FERRY_ACCESS_KEY",
        "SIGTERM",
    ] {
        assert!(out.contains(opt), "--help should mention {opt}:\n{out}");
    }
}

#[test]
fn config_errors_are_one_line_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[region]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\ncolour = \"blue\"\n",
            "colour",
        ),
        ("[[region]]\nname = \"a\"\nlisten = \"not-an-address\"\ndata_dir = \"d\"\n", "listen"),
        (
            "[[credential]]\naccess_key = \"\"\nsecret_key = \"x\"\n[[region]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"d\"\n",
            "access_key",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, err) = run_ferry(&["serve", "--config", path.to_str().unwrap()]);
        assert_ne!(code, 0);
        let line = err.lines().find(|l| l.starts_with("ferry:")).unwrap_or_else(|| panic!("no error line: {err}"));
        assert!(line.contains(key), "error should name `{key}`: {line}");
    }
    let (code, err) = run_ferry(&["serve", "--config", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn unwritable_or_locked_data_dir_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let env = [("FERRY_ACCESS_KEY", MAIN_AK), ("FERRY_SECRET_KEY", MAIN_SK)];
    let first = FerryProcess::spawn(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s], &env, 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s])
        .envs(env)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked") && err.contains(data_s), "{err}");
    drop(first);

    // A data dir under a regular file cannot be created.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", bad.to_str().unwrap()])
        .envs(env)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(bad.to_str().unwrap()));
}

#[test]
fn listen_address_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_ferry(&[
        "serve",
        "--listen",
        &addr,
        "--data-dir",
        dir.path().join("d").to_str().unwrap(),
        "--access-key",
        "a",
        "--secret-key",
        "b",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains(&addr) && err.contains("listen"), "{err}");
}

#[tokio::test]
async fn sigterm_exits_zero_and_generated_credentials_persist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let p = FerryProcess::spawn(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s], &[], 1);
    let printed = p.stderr.lock().unwrap().join("\n");
    assert!(printed.contains("generated credentials"), "{printed}");
    let creds: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("credentials.json")).unwrap()).unwrap();
    let (ak, sk) = (
        creds["access_key"].as_str().unwrap().to_owned(),
        creds["secret_key"].as_str().unwrap().to_owned(),
    );
    let c = client_for(&format!("http://{}", p.addr()), &ak, &sk, "us-east-1", Mode::Default);
    create_bucket(&c, "after-restart").await;
    put(&c, "after-restart", "k", b"v").await;
    let status = p.terminate();
    assert_eq!(status.code(), Some(0));

    // Same credentials after a restart, printed no more.
    let p = FerryProcess::spawn(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data_s], &[], 1);
    assert!(!p.stderr.lock().unwrap().join("\n").contains("generated credentials"));
    let c = client_for(&format!("http://{}", p.addr()), &ak, &sk, "us-east-1", Mode::Default);
    assert_eq!(get_bytes(&c, "after-restart", "k").await, b"v");
    assert_eq!(p.terminate().code(), Some(0));
}

#[tokio::test]
async fn two_regions_from_one_config_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[credential]]\naccess_key = \"{MAIN_AK}\"\nsecret_key = \"{MAIN_SK}\"\n\n\
             [[region]]\nname = \"us-east-1\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data/us\"\n\n\
             [[region]]\nname = \"eu-west-1\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data/eu\"\n"
        ),
    )
    .unwrap();
    let p = FerryProcess::spawn(&["serve", "--config", cfg.to_str().unwrap()], &[], 2);
    let addr = |name: &str| p.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap();
    let us = client_for(&format!("http://{}", addr("us-east-1")), MAIN_AK, MAIN_SK, "us-east-1", Mode::Default);
    let eu = client_for(&format!("http://{}", addr("eu-west-1")), MAIN_AK, MAIN_SK, "eu-west-1", Mode::Default);
    create_bucket(&us, "only-in-us").await;
    assert!(eu.list_buckets().send().await.unwrap().buckets().is_empty());
    let loc = eu.get_bucket_location().bucket("only-in-us").send().await;
    assert!(loc.is_err());
    create_bucket(&eu, "only-in-us").await;
    assert_eq!(
        eu.get_bucket_location().bucket("only-in-us").send().await.unwrap().location_constraint().map(|l| l.as_str()),
        Some("eu-west-1")
    );
    assert!(dir.path().join("data/us/meta.db").exists() && dir.path().join("data/eu/meta.db").exists());
    assert_eq!(p.terminate().code(), Some(0));
}

/// `ferry netem` in front of a region: S3 traffic goes through it, the control listener cuts
/// and heals the link and reports byte counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netem_proxies_a_region_and_obeys_its_control_listener() {
    let region = TestServer::start().await;
    let upstream = region.endpoint().trim_start_matches("http://").to_owned();
    let p = FerryProcess::spawn(
        &["netem", "--upstream", &upstream, "--delay", "20ms", "--jitter", "1ms", "--rate", "50MiB", "--control", "127.0.0.1:0"],
        &[],
        0,
    );
    // Both addresses are printed at start.
    let find = |prefix: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let lines = p.stderr.lock().unwrap().clone();
            if let Some(rest) = lines.iter().find_map(|l| l.strip_prefix(prefix)) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "no `{prefix}` line: {lines:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let listen = find("ferry netem: ");
    let control: std::net::SocketAddr = find("ferry netem: control on http://").parse().unwrap();
    let c = client_for(&format!("http://{listen}"), MAIN_AK, MAIN_SK, "us-east-1", Mode::WhenRequired);
    let t = std::time::Instant::now();
    create_bucket(&c, "through-netem").await;
    put(&c, "through-netem", "k", b"over the emulated WAN").await;
    assert_eq!(get_bytes(&c, "through-netem", "k").await, b"over the emulated WAN");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(40),
        "at least one delayed round trip: {:?}",
        t.elapsed()
    );
    let post = |path: &str| {
        let req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        async move { raw_http(control, req.as_bytes()).await }
    };
    let r = post("/partition?mode=reset").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"partition\":\"reset\""), "{}", r.body);
    assert!(c.head_bucket().bucket("through-netem").send().await.is_err(), "the link is cut");
    let r = post("/partition?mode=none").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(c.head_bucket().bucket("through-netem").send().await.is_ok(), "healed");
    let r = post("/link?delay=0ms&rate=none").await;
    assert!(r.body.contains("\"rate_bytes_per_sec\":null"), "{}", r.body);
    assert_eq!(post("/partition?mode=sideways").await.status, 400);
    assert_eq!(post("/link?colour=blue").await.status, 400);
    let r = raw_http(control, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let v: serde_json::Value = serde_json::from_str(r.body.trim()).unwrap();
    assert!(
        v["stats"]["bytes_up"].as_u64().unwrap() > 0 && v["stats"]["bytes_down"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(p.terminate().code(), Some(0));
}

/// Every data-path mode of `ferry bench` runs against a real region and reports sensible JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_modes_report_json() {
    let region = TestServer::start().await;
    let endpoint = region.endpoint();
    for mode in ["put", "get", "stat", "delete", "list", "mixed"] {
        let bucket = format!("bench-{mode}");
        let args = ferry_cli(
            &["bench"],
            &endpoint,
            &bucket,
            &["--mode", mode, "--size", "1KiB-64KiB", "--concurrency", "4", "--objects", "40", "--count", "60", "--json"],
        );
        let (code, out) = run_ferry_async(&args).await;
        assert_eq!(code, 0, "{mode}: {out}");
        let start = out.find('{').unwrap();
        let v: serde_json::Value = serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("{mode}: {e}: {out}"));
        assert_eq!(v["mode"], mode, "{v}");
        assert_eq!(v["errors"], 0, "{mode}: {v}");
        assert_eq!(v["size"]["min"], 1024);
        assert_eq!(v["size"]["max"], 65536);
        // delete: each of the 40 objects once; the others: the 60 requests asked for.
        assert_eq!(v["ops"], if mode == "delete" { 40 } else { 60 }, "{mode}: {v}");
        if mode == "mixed" {
            let ops: Vec<&str> = v["by_op"].as_array().unwrap().iter().map(|o| o["op"].as_str().unwrap()).collect();
            assert!(ops.contains(&"GET") && ops.contains(&"HEAD"), "{v}");
        }
    }
    let c = region.client();
    let listed = c.list_objects_v2().bucket("bench-delete").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "delete mode deleted every object it wrote");
}

/// `ferry bench --mode replication` measures every object's arrival with one watcher and
/// reports the PUT rate it achieved next to the rate asked; with `--strict`, a run that falls
/// behind the rate asked fails instead of reporting the figures of a lower rate as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_replication_reports_the_rate_it_achieved() {
    let cl = TestCluster::start(&["us-east-1", "eu-west-1"], |_, _| {}).await;
    let (us, eu) = (cl.url("us-east-1"), cl.url("eu-west-1"));
    let run = |bucket: &str, extra: &[&str]| {
        let mut args = ferry_cli(&["bench"], &us, bucket, &["--mode", "replication", "--dest-endpoint", &eu, "--setup"]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(["--dest-bucket".to_owned(), format!("{bucket}-dr"), "--size".to_owned(), "1KiB".to_owned()]);
        args
    };
    let (code, out) = run_ferry_async(&run("lagsrc", &["--rate", "40", "--count", "40", "--json"])).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = &v["replication"];
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["ops"], 40, "every object's arrival measured: {v}");
    assert_eq!(r["target_rate"], 40.0, "{v}");
    let achieved = r["achieved_rate"].as_f64().unwrap();
    assert!(achieved > 0.0 && achieved <= 41.0, "{v}");
    assert!(r["list_requests"].as_u64().unwrap() >= 1, "{v}");
    // Every object is at the destination, as the watcher said.
    let listed = cl.client("eu-west-1").list_objects_v2().bucket("lagsrc-dr").send().await.unwrap();
    assert_eq!(listed.key_count(), Some(40));

    // A rate no region on this machine serves: the run says so, and fails with --strict.
    let (code, out) = run_ferry_async(&run("fastsrc", &["--rate", "100000", "--count", "200"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: achieved"), "{out}");
    let (code, out) = run_ferry_async(&run("strictsrc", &["--rate", "100000", "--count", "200", "--strict"])).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("of the 100000 asked"), "{out}");
}

/// `ferry region nodes` lists a PostgreSQL region's nodes with their epochs, states, closed
/// timestamps and leases, and the region's committed clock; `--json` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_nodes_lists_the_nodes_of_a_postgresql_region() {
    use ferry_store::meta::pg::{PgMeta, leases, nodes, test_cluster::TestCluster};
    let Some(pg) = TestCluster::start(&[]) else { return };
    let meta = PgMeta::open(&pg.url(), 2, false).await.unwrap();
    let mut pooled = meta.client().await.unwrap();
    let c: &mut tokio_postgres::Client = &mut pooled;
    let now = ferry_core::time::now_micros();
    let a = nodes::join(c, "node-a", 1, now).await.unwrap();
    nodes::join(c, "node-b", 1, now).await.unwrap();
    a.publish(&*c, a.floor + 5, now).await.unwrap();
    c.execute(
        "INSERT INTO repl_jobs (fmt, bucket, key, version_id, op, peer, dest_bucket, rule_id, created_us, size, state,
                                attempts, next_attempt_us, priority, key_seq)
         VALUES (1, 'b', 'k'::bytea, 'v', 0, 'eu', 'd', 'r', 10, 5, 0, 0, 0, 0, 1)",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(leases::claim(&*c, "eu", "d", "node-a", now, 600_000_000, 10).await.unwrap().len(), 1);
    // node-b has stopped: fenced by node-a.
    assert!(nodes::fence(c, "node-b", now + 1).await.unwrap());
    let (code, out) = run_ferry_async(&["region", "nodes", "--meta", &pg.url()]).await;
    assert_eq!(code, 0, "{out}");
    let row = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let na = row("node-a");
    assert_eq!((na[1], na[2], *na.last().unwrap()), ("1", "live", "1"), "{out}");
    let nb = row("node-b");
    assert_eq!((nb[1], nb[2], nb[3]), ("2", "gone", "-"), "fenced: a new epoch, no clock: {out}");
    let closed = ferry_core::time::rfc3339_us(a.floor + 5);
    assert!(out.contains(&format!("region committed clock: {closed}")), "node-a's closed time: {out}");
    let (code, json) = run_ferry_async(&["region", "nodes", "--meta", &pg.url(), "--json"]).await;
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json[json.find('{').unwrap()..]).unwrap();
    assert_eq!(v["committed_clock_us"], serde_json::json!(a.floor + 5));
    assert_eq!(v["nodes"][0]["leases"], serde_json::json!(1));
    let (code, out) = run_ferry_async(&["region", "nodes", "--meta", "postgres://ferry@127.0.0.1:1/none"]).await;
    assert_ne!(code, 0);
    assert!(out.contains("connecting to the metadata database"), "{out}");
}
