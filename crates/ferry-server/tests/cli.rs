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
