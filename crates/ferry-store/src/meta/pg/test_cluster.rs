//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory (as the
//! `postgres` user when the tests run as root, since PostgreSQL refuses to run as root), a
//! server on a free loopback port with its socket in that directory, stopped (`pg_ctl stop -m
//! immediate` on that data directory: only the server this cluster started) when dropped.
//!
//! Debian's `postgresql` package provides the binaries (`.ci/run` installs it). Without them a
//! test says it is skipped, unless `FERRY_REQUIRE_POSTGRES` is set (CI sets it): then a missing
//! PostgreSQL is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest installed server's `bin` directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A free loopback port (also the SeaweedFS rig's).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl TestCluster {
    /// Starts a cluster with `settings` (`-c name=value`) on top of durable defaults; `None`
    /// when PostgreSQL is not installed and CI does not require it.
    pub fn start(settings: &[(&str, &str)]) -> Option<Self> {
        let Some(bin) = server_bin() else {
            assert!(
                std::env::var_os("FERRY_REQUIRE_POSTGRES").is_none(),
                "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
            );
            eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:").arg(dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let cluster = Self { dir, bin, port: free_port(), as_postgres };
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-A", "trust", "-U", "ferry", "--no-sync"]);
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
            cluster.port,
            cluster.dir.path().display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let log = cluster.dir.path().join("server.log");
        cluster.run("pg_ctl", &["-D", &data, "-l", &log.display().to_string(), "-w", "-o", &options, "start"]);
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The connection URL (user `ferry`, trusted on loopback).
    pub fn url(&self) -> String {
        format!("postgres://ferry@127.0.0.1:{}/postgres", self.port)
    }

    #[allow(dead_code)] // for the tests that kill and restart the server
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser").arg("-u").arg("postgres").arg("--").arg(&exe).args(args).output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
